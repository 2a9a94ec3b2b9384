//! The Xe SR-IOV migration packet (version 1): header and descriptor KLVs, smoltcp-style.
//!
//! [`Header`] is a typed view over bytes (`new_checked` validates the length once, getters read
//! straight from the buffer); [`HeaderRepr`] is the parsed, validated meaning with `parse` and
//! `emit`. The same for the descriptor's KLV list ([`Descriptor`]). Nothing here allocates from
//! a length read off the wire, panics on input, or accepts a malformed field silently.
//!
//! ```text
//! offset size field
//!      0    1 version (1)
//!      1    1 type (1 DESCRIPTOR, 2 TRAILER, 3 GGTT, 4 MMIO, 5 GUC, 6 VRAM; 0 invalid)
//!      2    1 tile_id
//!      3    1 gt_id
//!      4    4 flags (0 when written; ignored when read, as upstream does in version 1)
//!      8    8 offset
//!     16    8 size (payload bytes that follow)
//! ```
//! All fields little-endian.

use crate::platform::{Platform, INTEL_VENDOR_ID};
use mig_io::Errno;
use thiserror::Error;

/// Header length.
pub const HEADER_LEN: usize = 24;
/// The only stream version.
pub const VERSION: u8 = 1;
/// KLV key: PCI device id.
pub const KLV_DEVICE_ID: u16 = 0xF001;
/// KLV key: PCI revision id.
pub const KLV_REVISION_ID: u16 = 0xF002;
/// KLV key (ours, 2 dwords, low first): the VF's LMEM size in bytes. Written in pre-copy
/// streams, so that a destination refuses an incompatible VF on the first packet, while the
/// source still runs; an upstream reader skips it like any unknown key.
pub const KLV_LMEM_SIZE: u16 = 0xE501;
/// KLV key (ours, 2 dwords, low first): the VF's GGTT size in bytes (4 KiB per PTE).
pub const KLV_GGTT_SIZE: u16 = 0xE502;
/// Largest descriptor payload a reader accepts (a descriptor is a handful of KLVs).
pub const DESCRIPTOR_MAX: u64 = 4096;

/// Packet types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PacketType {
    Descriptor,
    Trailer,
    Ggtt,
    Mmio,
    Guc,
    Vram,
    /// A type this reader does not know (skipped, still routed by tile and GT).
    Unknown(u8),
}

impl PacketType {
    /// The wire value; `None` for 0 (invalid).
    pub fn from_raw(raw: u8) -> Option<PacketType> {
        Some(match raw {
            0 => return None,
            1 => PacketType::Descriptor,
            2 => PacketType::Trailer,
            3 => PacketType::Ggtt,
            4 => PacketType::Mmio,
            5 => PacketType::Guc,
            6 => PacketType::Vram,
            other => PacketType::Unknown(other),
        })
    }

    /// The wire value.
    pub fn raw(self) -> u8 {
        match self {
            PacketType::Descriptor => 1,
            PacketType::Trailer => 2,
            PacketType::Ggtt => 3,
            PacketType::Mmio => 4,
            PacketType::Guc => 5,
            PacketType::Vram => 6,
            PacketType::Unknown(x) => x,
        }
    }

    /// Upper-case name (`"GGTT"`, `"TYPE_42"`).
    pub fn name(self) -> String {
        match self {
            PacketType::Descriptor => "DESCRIPTOR".into(),
            PacketType::Trailer => "TRAILER".into(),
            PacketType::Ggtt => "GGTT".into(),
            PacketType::Mmio => "MMIO".into(),
            PacketType::Guc => "GUC".into(),
            PacketType::Vram => "VRAM".into(),
            PacketType::Unknown(x) => format!("TYPE_{x}"),
        }
    }
}

/// What is wrong with a packet or a stream.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: u64, have: u64 },
    #[error("unsupported packet version {0} (expected 1)")]
    Version(u8),
    #[error("packet type 0 is invalid")]
    TypeZero,
    #[error("{what}: tile {tile} / gt {gt} does not exist on this device")]
    Route { what: String, tile: u8, gt: u8 },
    #[error("descriptor must be the first packet, got {0}")]
    DescriptorNotFirst(String),
    #[error("second descriptor")]
    DescriptorDuplicated,
    #[error("descriptor size {0} is not a multiple of 4 or exceeds {DESCRIPTOR_MAX}")]
    DescriptorSize(u64),
    #[error("KLV {key:#06x} at dword {at} runs past the end of the descriptor")]
    KlvOverrun { key: u16, at: usize },
    #[error("descriptor lacks KLV {0:#06x}")]
    KlvMissing(u16),
    #[error("KLV {key:#06x} has {len} dwords, expected {want}")]
    KlvLength { key: u16, len: usize, want: usize },
    #[error("stream is for a VF with {what} of {found:#x} bytes, the target has {want:#x}")]
    SizeMismatch {
        what: &'static str,
        found: u64,
        want: u64,
    },
    #[error("stream is for device {found:#06x} rev {found_rev:#04x}, target is {want:#06x} rev {want_rev:#04x}")]
    DeviceMismatch {
        found: u32,
        found_rev: u32,
        want: u32,
        want_rev: u32,
    },
    #[error("trailer must have tile 0, gt 0, offset 0 and size 0")]
    BadTrailer,
    #[error("{what} size {size} is invalid (expected {expected})")]
    Size {
        what: &'static str,
        size: u64,
        expected: String,
    },
    #[error("VRAM offset {offset:#x} + size {size:#x} exceeds LMEM size {lmem:#x}")]
    VramRange { offset: u64, size: u64, lmem: u64 },
    #[error("data after the trailer")]
    AfterTrailer,
    #[error("stream ended without a trailer")]
    NoTrailer,
}

impl WireError {
    /// The errno a destination reports for this error (SPEC §4): `ENODEV` for another
    /// device, `ENODATA` for a KLV cut short (as upstream's descriptor parser), `EIO` for a
    /// stream without its trailer, `EINVAL` for everything else.
    pub fn errno(&self) -> Errno {
        match self {
            WireError::DeviceMismatch { .. } | WireError::SizeMismatch { .. } => Errno::ENODEV,
            WireError::KlvOverrun { .. } => Errno::ENODATA,
            WireError::NoTrailer => Errno::EIO,
            _ => Errno::EINVAL,
        }
    }
}

/// A packet header viewed over a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Header<T: AsRef<[u8]>> {
    buf: T,
}

macro_rules! field {
    ($get:ident, $set:ident, $ty:ty, $at:expr) => {
        pub fn $get(&self) -> $ty {
            const N: usize = std::mem::size_of::<$ty>();
            let b = self.buf.as_ref();
            let mut a = [0u8; N];
            a.copy_from_slice(&b[$at..$at + N]);
            <$ty>::from_le_bytes(a)
        }
    };
}

macro_rules! set_field {
    ($set:ident, $ty:ty, $at:expr) => {
        pub fn $set(&mut self, v: $ty) {
            const N: usize = std::mem::size_of::<$ty>();
            self.buf.as_mut()[$at..$at + N].copy_from_slice(&v.to_le_bytes());
        }
    };
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps `buf` after checking it holds a whole header.
    pub fn new_checked(buf: T) -> Result<Header<T>, WireError> {
        let have = buf.as_ref().len();
        if have < HEADER_LEN {
            return Err(WireError::Truncated {
                need: HEADER_LEN as u64,
                have: have as u64,
            });
        }
        Ok(Header { buf })
    }

    field!(version, set_version, u8, 0);
    field!(kind_raw, set_kind_raw, u8, 1);
    field!(tile, set_tile, u8, 2);
    field!(gt, set_gt, u8, 3);
    field!(flags, set_flags, u32, 4);
    field!(offset, set_offset, u64, 8);
    field!(size, set_size, u64, 16);
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    set_field!(set_version, u8, 0);
    set_field!(set_kind_raw, u8, 1);
    set_field!(set_tile, u8, 2);
    set_field!(set_gt, u8, 3);
    set_field!(set_flags, u32, 4);
    set_field!(set_offset, u64, 8);
    set_field!(set_size, u64, 16);
}

/// A parsed, validated header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderRepr {
    pub kind: PacketType,
    pub tile: u8,
    pub gt: u8,
    pub offset: u64,
    pub size: u64,
}

impl HeaderRepr {
    /// Validates version and type. `flags` is not checked: upstream neither sets nor reads it
    /// in version 1, so a reader that refused non-zero flags would refuse streams an upstream
    /// reader accepts (see `docs/STREAM.md`).
    pub fn parse<T: AsRef<[u8]>>(h: &Header<T>) -> Result<HeaderRepr, WireError> {
        if h.version() != VERSION {
            return Err(WireError::Version(h.version()));
        }
        let kind = PacketType::from_raw(h.kind_raw()).ok_or(WireError::TypeZero)?;
        Ok(HeaderRepr {
            kind,
            tile: h.tile(),
            gt: h.gt(),
            offset: h.offset(),
            size: h.size(),
        })
    }

    /// Writes the header into `h`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut Header<T>) {
        h.set_version(VERSION);
        h.set_kind_raw(self.kind.raw());
        h.set_tile(self.tile);
        h.set_gt(self.gt);
        h.set_flags(0);
        h.set_offset(self.offset);
        h.set_size(self.size);
    }

    /// The header as bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        self.emit(&mut Header { buf: &mut b[..] });
        b
    }
}

/// One KLV of a descriptor, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Klv<'a> {
    pub key: u16,
    /// Value dwords, as little-endian bytes (`len * 4` bytes).
    pub value: &'a [u8],
}

impl Klv<'_> {
    /// The value as dwords.
    pub fn dwords(&self) -> impl Iterator<Item = u32> + '_ {
        self.value
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// Iterates over the KLVs of a descriptor payload, validating as it goes.
pub fn klvs(payload: &[u8]) -> impl Iterator<Item = Result<Klv<'_>, WireError>> + '_ {
    let mut at = 0usize;
    let mut failed = payload.len() % 4 != 0;
    let mut reported = false;
    std::iter::from_fn(move || {
        if failed {
            if reported {
                return None;
            }
            reported = true;
            return Some(Err(WireError::DescriptorSize(payload.len() as u64)));
        }
        if at >= payload.len() {
            return None;
        }
        let w = u32::from_le_bytes(payload[at..at + 4].try_into().ok()?);
        let (key, len) = ((w >> 16) as u16, (w & 0xffff) as usize);
        let start = at + 4;
        let end = start.checked_add(len * 4)?;
        if end > payload.len() {
            failed = true;
            reported = true;
            return Some(Err(WireError::KlvOverrun { key, at: at / 4 }));
        }
        at = end;
        Some(Ok(Klv {
            key,
            value: &payload[start..end],
        }))
    })
}

/// The parsed descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// PCI device id, as the KLV carries it (32 bits; compared at full width).
    pub device_id: u32,
    /// PCI revision id, as the KLV carries it (32 bits; compared at full width).
    pub revision: u32,
    /// The VF's LMEM size ([`KLV_LMEM_SIZE`], ours; pre-copy streams carry it).
    pub lmem_size: Option<u64>,
    /// The VF's GGTT size in bytes ([`KLV_GGTT_SIZE`], ours; pre-copy streams carry it).
    pub ggtt_size: Option<u64>,
    /// Keys this reader does not know, preserved in order (skipped on apply).
    pub unknown: Vec<(u16, Vec<u32>)>,
}

impl Descriptor {
    /// Parses a descriptor payload; device id and revision are required.
    pub fn parse(payload: &[u8]) -> Result<Descriptor, WireError> {
        if payload.len() as u64 > DESCRIPTOR_MAX {
            return Err(WireError::DescriptorSize(payload.len() as u64));
        }
        let (mut dev, mut rev) = (None, None);
        let (mut lmem_size, mut ggtt_size) = (None, None);
        let mut unknown = Vec::new();
        for klv in klvs(payload) {
            let klv = klv?;
            let dwords = |want: usize| -> Result<Vec<u32>, WireError> {
                let n = klv.value.len() / 4;
                if n != want {
                    return Err(WireError::KlvLength {
                        key: klv.key,
                        len: n,
                        want,
                    });
                }
                Ok(klv.dwords().collect())
            };
            let one = || Ok::<u32, WireError>(dwords(1)?[0]);
            let two = || {
                let v = dwords(2)?;
                Ok::<u64, WireError>(u64::from(v[0]) | u64::from(v[1]) << 32)
            };
            match klv.key {
                KLV_DEVICE_ID => dev = Some(one()?),
                KLV_REVISION_ID => rev = Some(one()?),
                KLV_LMEM_SIZE => lmem_size = Some(two()?),
                KLV_GGTT_SIZE => ggtt_size = Some(two()?),
                key => unknown.push((key, klv.dwords().collect())),
            }
        }
        Ok(Descriptor {
            device_id: dev.ok_or(WireError::KlvMissing(KLV_DEVICE_ID))?,
            revision: rev.ok_or(WireError::KlvMissing(KLV_REVISION_ID))?,
            lmem_size,
            ggtt_size,
            unknown,
        })
    }

    /// The Xe platform whose device id this is; `None` for an id of no supported platform
    /// (including one wider than 16 bits).
    pub fn platform(&self) -> Option<Platform> {
        let id = u16::try_from(self.device_id).ok()?;
        Platform::from_pci_id(INTEL_VENDOR_ID, id).ok()
    }

    /// The KLV payload.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut klv = |key: u16, vals: &[u32]| {
            out.extend_from_slice(&((u32::from(key) << 16) | vals.len() as u32).to_le_bytes());
            for v in vals {
                out.extend_from_slice(&v.to_le_bytes());
            }
        };
        klv(KLV_DEVICE_ID, &[self.device_id]);
        klv(KLV_REVISION_ID, &[self.revision]);
        let halves = |v: u64| [v as u32, (v >> 32) as u32];
        if let Some(v) = self.lmem_size {
            klv(KLV_LMEM_SIZE, &halves(v));
        }
        if let Some(v) = self.ggtt_size {
            klv(KLV_GGTT_SIZE, &halves(v));
        }
        for (k, v) in &self.unknown {
            klv(*k, v);
        }
        out
    }

    /// The whole DESCRIPTOR packet (header and payload).
    pub fn packet(&self) -> Vec<u8> {
        let payload = self.emit();
        let h = HeaderRepr {
            kind: PacketType::Descriptor,
            tile: 0,
            gt: 0,
            offset: 0,
            size: payload.len() as u64,
        };
        let mut out = h.to_bytes().to_vec();
        out.extend_from_slice(&payload);
        out
    }
}

/// The TRAILER packet.
pub fn trailer() -> [u8; HEADER_LEN] {
    HeaderRepr {
        kind: PacketType::Trailer,
        tile: 0,
        gt: 0,
        offset: 0,
        size: 0,
    }
    .to_bytes()
}
