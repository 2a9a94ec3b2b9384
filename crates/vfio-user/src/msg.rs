//! vfio-user message codec (QEMU `docs/interop/vfio-user.rst`, protocol 0.1).
//!
//! Every message is a 16-byte header in host byte order — `u16 msg_id, u16 command, u32 size`
//! (whole message, header included), `u32 flags` (bits 0–3 type: 0 command, 1 reply; bit 4
//! no_reply; bit 5 error), `u32 error` — then a command-specific payload. Decoding checks every
//! length before use: a payload shorter than its fixed part, a data count that disagrees with the
//! payload, or a size beyond the negotiated maximum is an error, never a panic or an allocation
//! sized by the peer.

use thiserror::Error;
use vfio_core::Errno;

/// Header length.
pub const HEADER_LEN: usize = 16;
/// Protocol version we speak.
pub const VERSION_MAJOR: u16 = 0;
pub const VERSION_MINOR: u16 = 1;
/// Spec default (and ours) for `max_data_xfer_size`.
pub const DEFAULT_MAX_DATA_XFER: u32 = 1 << 20;
/// Largest `max_data_xfer_size` this implementation accepts to negotiate.
pub const MAX_DATA_XFER_LIMIT: u32 = 16 << 20;
/// Largest VERSION payload (JSON) accepted.
pub const MAX_VERSION_PAYLOAD: usize = 64 << 10;
/// Fixed-part slack of the largest data-carrying message (REGION_WRITE: 16, MIG_DATA_WRITE: 8).
pub const DATA_MSG_OVERHEAD: usize = HEADER_LEN + 16;

/// The largest message accepted when `max_data_xfer_size` is `xfer`: the header, the largest
/// fixed part, and `xfer` data bytes — or a VERSION message, whichever is larger.
pub fn max_message_size(xfer: u32) -> usize {
    (DATA_MSG_OVERHEAD + xfer as usize).max(HEADER_LEN + 4 + MAX_VERSION_PAYLOAD)
}

/// Message types (flags bits 0–3).
pub const TYPE_COMMAND: u32 = 0;
pub const TYPE_REPLY: u32 = 1;
/// Flags: no reply wanted.
pub const FLAG_NO_REPLY: u32 = 1 << 4;
/// Flags: the reply carries an error.
pub const FLAG_ERROR: u32 = 1 << 5;

/// Command ids.
pub mod cmd {
    pub const VERSION: u16 = 1;
    pub const DMA_MAP: u16 = 2;
    pub const DMA_UNMAP: u16 = 3;
    pub const DEVICE_GET_INFO: u16 = 4;
    pub const DEVICE_GET_REGION_INFO: u16 = 5;
    pub const DEVICE_GET_REGION_IO_FDS: u16 = 6;
    pub const DEVICE_GET_IRQ_INFO: u16 = 7;
    pub const DEVICE_SET_IRQS: u16 = 8;
    pub const REGION_READ: u16 = 9;
    pub const REGION_WRITE: u16 = 10;
    pub const DMA_READ: u16 = 11;
    pub const DMA_WRITE: u16 = 12;
    pub const DEVICE_RESET: u16 = 13;
    pub const REGION_WRITE_MULTI: u16 = 15;
    pub const DEVICE_FEATURE: u16 = 16;
    pub const MIG_DATA_READ: u16 = 17;
    pub const MIG_DATA_WRITE: u16 = 18;
    /// libvfio-user's proposed migration extension: the kernel's `VFIO_MIG_GET_PRECOPY_INFO`
    /// (an ioctl on the data fd, which vfio-user has not). Answered only by a device that
    /// offers PRE_COPY.
    pub const MIG_PRECOPY_INFO: u16 = 19;
}

/// Device feature indices and flags (`VFIO_DEVICE_FEATURE_*`).
pub mod feature {
    pub const MASK: u32 = 0xffff;
    pub const GET: u32 = 1 << 16;
    pub const SET: u32 = 1 << 17;
    pub const PROBE: u32 = 1 << 18;
    pub const MIGRATION: u32 = 1;
    pub const MIG_DEVICE_STATE: u32 = 2;
    pub const DMA_LOGGING_START: u32 = 6;
    pub const DMA_LOGGING_STOP: u32 = 7;
    pub const DMA_LOGGING_REPORT: u32 = 8;
    /// Ours: `u64` estimated stop-copy length (the kernel's feature 9).
    pub const MIG_DATA_SIZE: u32 = 9;
    /// `VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2`: SET only, no data — the caller opts in to
    /// MIG_PRECOPY_INFO's flags being an output (REINIT). Not a query.
    pub const MIG_PRECOPY_INFO_V2: u32 = 12;
}

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    pub msg_id: u16,
    pub command: u16,
    pub size: u32,
    pub flags: u32,
    pub error: u32,
}

impl Header {
    /// Decodes a header.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            msg_id: u16::from_ne_bytes([b[0], b[1]]),
            command: u16::from_ne_bytes([b[2], b[3]]),
            size: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            flags: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            error: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    /// Encodes a header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&self.msg_id.to_ne_bytes());
        b[2..4].copy_from_slice(&self.command.to_ne_bytes());
        b[4..8].copy_from_slice(&self.size.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&self.error.to_ne_bytes());
        b
    }

    /// Message type (command or reply).
    pub fn kind(&self) -> u32 {
        self.flags & 0xf
    }
    /// Whether the sender wants no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }
    /// The errno of an error reply (`EIO` if the error field is zero).
    pub fn errno(&self) -> Option<Errno> {
        (self.flags & FLAG_ERROR != 0).then(|| Errno::new(self.error as i32))
    }
    /// Checks the framing: size covers the header and stays within `max`.
    pub fn check_size(&self, max: usize) -> Result<usize, Errno> {
        let size = self.size as usize;
        if size < HEADER_LEN {
            return Err(Errno::EINVAL);
        }
        if size > max {
            return Err(Errno::EMSGSIZE);
        }
        Ok(size - HEADER_LEN)
    }

    /// A reply header for this command with `payload_len` bytes.
    pub fn reply(&self, payload_len: usize) -> Header {
        Header {
            msg_id: self.msg_id,
            command: self.command,
            size: (HEADER_LEN + payload_len) as u32,
            flags: TYPE_REPLY,
            error: 0,
        }
    }

    /// An error reply header for this command.
    pub fn error_reply(&self, e: Errno) -> Header {
        Header {
            msg_id: self.msg_id,
            command: self.command,
            size: HEADER_LEN as u32,
            flags: TYPE_REPLY | FLAG_ERROR,
            error: e.raw() as u32,
        }
    }
}

/// Little helpers to read fixed fields from a payload, checking bounds.
#[derive(Clone, Copy)]
pub struct Fields<'a>(pub &'a [u8]);

impl<'a> Fields<'a> {
    /// Fails with `EINVAL` unless the payload holds at least `n` bytes.
    pub fn need(self, n: usize) -> Result<Self, Errno> {
        if self.0.len() < n {
            Err(Errno::EINVAL)
        } else {
            Ok(self)
        }
    }
    pub fn u16(self, at: usize) -> Result<u16, Errno> {
        let b = self.0.get(at..at + 2).ok_or(Errno::EINVAL)?;
        Ok(u16::from_ne_bytes([b[0], b[1]]))
    }
    pub fn u32(self, at: usize) -> Result<u32, Errno> {
        let b = self.0.get(at..at + 4).ok_or(Errno::EINVAL)?;
        Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(self, at: usize) -> Result<u64, Errno> {
        let b = self.0.get(at..at + 8).ok_or(Errno::EINVAL)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_ne_bytes(a))
    }
    pub fn tail(self, at: usize) -> Result<&'a [u8], Errno> {
        self.0.get(at..).ok_or(Errno::EINVAL)
    }
}

/// Builds payloads field by field.
#[derive(Default, Debug, Clone)]
pub struct Payload(pub Vec<u8>);

impl Payload {
    pub fn new() -> Self {
        Payload(Vec::new())
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}

/// Why a message could not be decoded. Each keeps its cause and maps to its own errno.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload is shorter than the message's fixed part (`EINVAL`).
    #[error("{what}: {have} bytes, the fixed part needs {need}")]
    Short {
        what: &'static str,
        need: usize,
        have: usize,
    },
    /// A data count beyond the negotiated `max_data_xfer_size` (`EMSGSIZE`).
    #[error("{what}: {count} bytes exceed max_data_xfer_size {max}")]
    TooLarge {
        what: &'static str,
        count: u32,
        max: u32,
    },
    /// A count that disagrees with the data carried (`EINVAL`).
    #[error("{what}: count {count} but {data} data bytes")]
    CountMismatch {
        what: &'static str,
        count: u32,
        data: usize,
    },
    /// VERSION capabilities that are not UTF-8 (`EINVAL`).
    #[error("VERSION: capabilities are not UTF-8")]
    NotUtf8,
    /// A VERSION payload over 64 KiB (`E2BIG`).
    #[error("VERSION: {0} bytes of capabilities exceed 64 KiB")]
    VersionTooLarge(usize),
    /// A command this implementation does not know (`EOPNOTSUPP`).
    #[error("command {0} is not supported")]
    Unsupported(u16),
}

impl DecodeError {
    /// The errno an error reply carries for this failure.
    pub fn errno(&self) -> Errno {
        match self {
            DecodeError::Short { .. }
            | DecodeError::CountMismatch { .. }
            | DecodeError::NotUtf8 => Errno::EINVAL,
            DecodeError::TooLarge { .. } => Errno::EMSGSIZE,
            DecodeError::VersionTooLarge(_) => Errno::E2BIG,
            DecodeError::Unsupported(_) => Errno::EOPNOTSUPP,
        }
    }
}

impl From<DecodeError> for Errno {
    fn from(e: DecodeError) -> Errno {
        e.errno()
    }
}

fn need(what: &'static str, p: &[u8], n: usize) -> Result<(), DecodeError> {
    if p.len() < n {
        return Err(DecodeError::Short {
            what,
            need: n,
            have: p.len(),
        });
    }
    Ok(())
}

/// The data after a fixed part: exactly `count` bytes, `count` at most `max_xfer`.
fn exact_data<'a>(
    what: &'static str,
    data: &'a [u8],
    count: u32,
    max_xfer: u32,
) -> Result<&'a [u8], DecodeError> {
    within(what, count, max_xfer)?;
    if data.len() != count as usize {
        return Err(DecodeError::CountMismatch {
            what,
            count,
            data: data.len(),
        });
    }
    Ok(data)
}

fn within(what: &'static str, count: u32, max: u32) -> Result<u32, DecodeError> {
    if count > max {
        return Err(DecodeError::TooLarge { what, count, max });
    }
    Ok(count)
}

/// Defines a message whose payload is a fixed list of `u32`/`u64` fields in host byte order:
/// the struct, its length, `parse` (checks the length; bytes past the fixed part are ignored,
/// as VFIO's `argsz` convention allows) and `emit`.
macro_rules! fixed_message {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($field:ident: $ty:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $(pub $field: $ty,)*
        }

        impl $name {
            /// Length of the fixed part.
            pub const LEN: usize = 0 $(+ std::mem::size_of::<$ty>())*;

            /// Parses the fixed part from `p`.
            pub fn parse(p: &[u8]) -> Result<$name, DecodeError> {
                need($what, p, Self::LEN)?;
                let f = Fields(p);
                let mut _at = 0usize;
                $(
                    let $field = f.$ty(_at).unwrap_or_default();
                    _at += std::mem::size_of::<$ty>();
                )*
                Ok($name { $($field,)* })
            }

            /// Appends the fixed part to `out`.
            pub fn emit(&self, out: &mut Vec<u8>) {
                $(out.extend_from_slice(&self.$field.to_ne_bytes());)*
            }

            /// The fixed part as bytes.
            pub fn to_vec(&self) -> Vec<u8> {
                let mut v = Vec::with_capacity(Self::LEN);
                self.emit(&mut v);
                v
            }
        }
    };
}

fixed_message! {
    /// DMA_MAP request: `struct vfio_user_dma_map` (an fd may come with it).
    DmaMap, "DMA_MAP" { argsz: u32, flags: u32, offset: u64, address: u64, size: u64 }
}
fixed_message! {
    /// DMA_UNMAP request and reply: `struct vfio_user_dma_unmap`.
    DmaUnmap, "DMA_UNMAP" { argsz: u32, flags: u32, address: u64, size: u64 }
}
fixed_message! {
    /// DEVICE_GET_INFO request and reply: `struct vfio_device_info`.
    DeviceInfo, "DEVICE_GET_INFO" { argsz: u32, flags: u32, num_regions: u32, num_irqs: u32 }
}
fixed_message! {
    /// DEVICE_GET_REGION_INFO request and reply: `struct vfio_region_info` (`offset` is the
    /// offset to pass to mmap of the fd sent with the reply).
    RegionInfo, "DEVICE_GET_REGION_INFO" {
        argsz: u32, flags: u32, index: u32, cap_offset: u32, size: u64, offset: u64
    }
}
fixed_message! {
    /// DEVICE_GET_IRQ_INFO request and reply: `struct vfio_irq_info`.
    IrqInfo, "DEVICE_GET_IRQ_INFO" { argsz: u32, flags: u32, index: u32, count: u32 }
}
fixed_message! {
    /// DEVICE_SET_IRQS request: `struct vfio_irq_set` (eventfds come as fds).
    SetIrqs, "DEVICE_SET_IRQS" { argsz: u32, flags: u32, index: u32, start: u32, count: u32 }
}
fixed_message! {
    /// The fixed part of REGION_READ and REGION_WRITE, request and reply.
    RegionAccess, "REGION_ACCESS" { offset: u64, region: u32, count: u32 }
}
fixed_message! {
    /// The fixed part of DEVICE_FEATURE, request and reply: `struct vfio_device_feature`.
    Feature, "DEVICE_FEATURE" { argsz: u32, flags: u32 }
}
fixed_message! {
    /// The fixed part of MIG_DATA_READ and MIG_DATA_WRITE, request and reply:
    /// `struct vfio_user_mig_data`.
    MigData, "MIG_DATA" { argsz: u32, size: u32 }
}
fixed_message! {
    /// MIG_PRECOPY_INFO reply, `struct vfio_precopy_info`; its request is the first 8 bytes
    /// (`argsz`, `flags`), a longer one is accepted as VFIO's `argsz` convention allows.
    PrecopyInfo, "MIG_PRECOPY_INFO" { argsz: u32, flags: u32, initial_bytes: u64, dirty_bytes: u64 }
}
fixed_message! {
    /// MIG_PRECOPY_INFO request: `argsz` and the caller's `flags`.
    PrecopyInfoRequest, "MIG_PRECOPY_INFO" { argsz: u32, flags: u32 }
}

/// `VFIO_REGION_INFO_FLAG_CAPS`: the reply carries capabilities from `cap_offset` on.
pub const REGION_INFO_FLAG_CAPS: u32 = 1 << 3;
/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`.
pub const CAP_SPARSE_MMAP: u16 = 1;

/// A region's sparse-mmap capability with one area (`struct vfio_region_info_cap_sparse_mmap`):
/// `u16 id = 1, u16 version = 1, u32 next = 0, u32 nr_areas = 1, u32 reserved`, then the area
/// `u64 offset, u64 size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseMmap {
    pub offset: u64,
    pub size: u64,
}

impl SparseMmap {
    pub const LEN: usize = 32;

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&CAP_SPARSE_MMAP.to_ne_bytes());
        out.extend_from_slice(&1u16.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&1u32.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&self.offset.to_ne_bytes());
        out.extend_from_slice(&self.size.to_ne_bytes());
    }

    /// The first area of a sparse-mmap capability at the start of `p`.
    pub fn parse(p: &[u8]) -> Result<SparseMmap, DecodeError> {
        need("SPARSE_MMAP capability", p, Self::LEN)?;
        let f = Fields(p);
        if f.u16(0).unwrap_or(0) != CAP_SPARSE_MMAP || f.u32(8).unwrap_or(0) == 0 {
            return Err(DecodeError::CountMismatch {
                what: "SPARSE_MMAP capability",
                count: f.u32(8).unwrap_or(0),
                data: p.len(),
            });
        }
        Ok(SparseMmap {
            offset: f.u64(16).unwrap_or(0),
            size: f.u64(24).unwrap_or(0),
        })
    }
}

/// VERSION, request and reply: `u16 major, u16 minor`, then the JSON capabilities
/// (NUL-terminated when sent; accepted with or without the NUL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version<'a> {
    pub major: u16,
    pub minor: u16,
    /// The JSON text without its NUL (empty if absent).
    pub json: &'a str,
}

impl<'a> Version<'a> {
    pub fn parse(p: &'a [u8]) -> Result<Version<'a>, DecodeError> {
        need("VERSION", p, 4)?;
        let raw = &p[4..];
        if raw.len() > MAX_VERSION_PAYLOAD {
            return Err(DecodeError::VersionTooLarge(raw.len()));
        }
        let raw = raw.split(|&b| b == 0).next().unwrap_or(&[]);
        let f = Fields(p);
        Ok(Version {
            major: f.u16(0).unwrap_or_default(),
            minor: f.u16(2).unwrap_or_default(),
            json: std::str::from_utf8(raw).map_err(|_| DecodeError::NotUtf8)?,
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.major.to_ne_bytes());
        out.extend_from_slice(&self.minor.to_ne_bytes());
        out.extend_from_slice(self.json.as_bytes());
        out.push(0);
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(5 + self.json.len());
        self.emit(&mut v);
        v
    }
}

impl RegionAccess {
    /// A REGION_WRITE request (or REGION_READ reply): the fixed part and exactly `count` data
    /// bytes, at most `max_xfer`.
    pub fn parse_with_data(p: &[u8], max_xfer: u32) -> Result<(RegionAccess, &[u8]), DecodeError> {
        let r = RegionAccess::parse(p)?;
        let data = exact_data("REGION_ACCESS", &p[Self::LEN..], r.count, max_xfer)?;
        Ok((r, data))
    }
}

impl MigData {
    /// A MIG_DATA_WRITE request: the fixed part and `size` data bytes (at most `max_xfer`).
    /// Bytes past `size` are not data: refused here, as the message's size must match.
    pub fn parse_write(p: &[u8], max_xfer: u32) -> Result<(MigData, &[u8]), DecodeError> {
        let m = MigData::parse(p)?;
        let data = exact_data("MIG_DATA_WRITE", &p[Self::LEN..], m.size, max_xfer)?;
        Ok((m, data))
    }

    /// A MIG_DATA_READ reply: `size` bytes of data, which may be followed by padding (some
    /// servers always send the requested length); the padding is dropped.
    pub fn parse_read_reply(p: &[u8]) -> Result<(MigData, &[u8]), DecodeError> {
        let m = MigData::parse(p)?;
        let data = &p[Self::LEN..];
        if data.len() < m.size as usize {
            return Err(DecodeError::CountMismatch {
                what: "MIG_DATA_READ reply",
                count: m.size,
                data: data.len(),
            });
        }
        Ok((m, &data[..m.size as usize]))
    }
}

/// A decoded command.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Version(Version<'a>),
    DmaMap(DmaMap),
    DmaUnmap(DmaUnmap),
    DeviceInfo(DeviceInfo),
    RegionInfo(RegionInfo),
    IrqInfo(IrqInfo),
    SetIrqs(SetIrqs),
    RegionRead(RegionAccess),
    RegionWrite(RegionAccess, &'a [u8]),
    Reset,
    Feature(Feature, &'a [u8]),
    MigDataRead(MigData),
    MigDataWrite(MigData, &'a [u8]),
    MigPrecopyInfo(PrecopyInfoRequest),
}

impl<'a> Request<'a> {
    /// Decodes a command's payload. `max_xfer` bounds data counts.
    pub fn decode(command: u16, p: &'a [u8], max_xfer: u32) -> Result<Request<'a>, DecodeError> {
        Ok(match command {
            cmd::VERSION => Request::Version(Version::parse(p)?),
            cmd::DMA_MAP => Request::DmaMap(DmaMap::parse(p)?),
            cmd::DMA_UNMAP => Request::DmaUnmap(DmaUnmap::parse(p)?),
            cmd::DEVICE_GET_INFO => Request::DeviceInfo(DeviceInfo::parse(p)?),
            cmd::DEVICE_GET_REGION_INFO => Request::RegionInfo(RegionInfo::parse(p)?),
            cmd::DEVICE_GET_IRQ_INFO => Request::IrqInfo(IrqInfo::parse(p)?),
            cmd::DEVICE_SET_IRQS => Request::SetIrqs(SetIrqs::parse(p)?),
            cmd::REGION_READ => {
                let r = RegionAccess::parse(p)?;
                within("REGION_READ", r.count, max_xfer)?;
                Request::RegionRead(r)
            }
            cmd::REGION_WRITE => {
                let (r, data) = RegionAccess::parse_with_data(p, max_xfer)?;
                Request::RegionWrite(r, data)
            }
            cmd::DEVICE_RESET => Request::Reset,
            cmd::DEVICE_FEATURE => Request::Feature(Feature::parse(p)?, &p[Feature::LEN..]),
            cmd::MIG_DATA_READ => {
                let m = MigData::parse(p)?;
                within("MIG_DATA_READ", m.size, max_xfer)?;
                Request::MigDataRead(m)
            }
            cmd::MIG_DATA_WRITE => {
                let (m, data) = MigData::parse_write(p, max_xfer)?;
                Request::MigDataWrite(m, data)
            }
            cmd::MIG_PRECOPY_INFO => Request::MigPrecopyInfo(PrecopyInfoRequest::parse(p)?),
            other => return Err(DecodeError::Unsupported(other)),
        })
    }
}

/// The name of a command id, for messages.
pub fn command_name(c: u16) -> &'static str {
    match c {
        cmd::VERSION => "VERSION",
        cmd::DMA_MAP => "DMA_MAP",
        cmd::DMA_UNMAP => "DMA_UNMAP",
        cmd::DEVICE_GET_INFO => "DEVICE_GET_INFO",
        cmd::DEVICE_GET_REGION_INFO => "DEVICE_GET_REGION_INFO",
        cmd::DEVICE_GET_REGION_IO_FDS => "DEVICE_GET_REGION_IO_FDS",
        cmd::DEVICE_GET_IRQ_INFO => "DEVICE_GET_IRQ_INFO",
        cmd::DEVICE_SET_IRQS => "DEVICE_SET_IRQS",
        cmd::REGION_READ => "REGION_READ",
        cmd::REGION_WRITE => "REGION_WRITE",
        cmd::DMA_READ => "DMA_READ",
        cmd::DMA_WRITE => "DMA_WRITE",
        cmd::DEVICE_RESET => "DEVICE_RESET",
        cmd::REGION_WRITE_MULTI => "REGION_WRITE_MULTI",
        cmd::DEVICE_FEATURE => "DEVICE_FEATURE",
        cmd::MIG_DATA_READ => "MIG_DATA_READ",
        cmd::MIG_DATA_WRITE => "MIG_DATA_WRITE",
        cmd::MIG_PRECOPY_INFO => "MIG_PRECOPY_INFO",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors written from the spec's tables (host order = little-endian on x86-64), checked
    // in both directions: emit gives exactly these bytes, parse gives back the same value.

    fn both<T: PartialEq + std::fmt::Debug>(
        v: T,
        bytes: &[u8],
        emit: impl Fn(&T) -> Vec<u8>,
        parse: impl Fn(&[u8]) -> Result<T, DecodeError>,
    ) {
        assert_eq!(emit(&v), bytes, "emit");
        assert_eq!(parse(bytes), Ok(v), "parse");
    }

    #[test]
    fn header_vector() {
        let h = Header {
            msg_id: 0x0102,
            command: cmd::REGION_READ,
            size: 0x20,
            flags: TYPE_REPLY | FLAG_ERROR,
            error: 22,
        };
        let b = [
            0x02, 0x01, 0x09, 0x00, 0x20, 0x00, 0x00, 0x00, 0x21, 0x00, 0x00, 0x00, 0x16, 0x00,
            0x00, 0x00,
        ];
        assert_eq!(h.encode(), b);
        assert_eq!(Header::decode(&b), h);
        assert_eq!(h.errno(), Some(Errno::EINVAL));
        assert_eq!(h.kind(), TYPE_REPLY);
        assert_eq!(h.check_size(64), Ok(16));
        assert_eq!(Header { size: 15, ..h }.check_size(64), Err(Errno::EINVAL));
        assert_eq!(
            Header { size: 65, ..h }.check_size(64),
            Err(Errno::EMSGSIZE)
        );
        let r = Header {
            msg_id: 7,
            command: 4,
            ..Header::default()
        }
        .error_reply(Errno::ENOTTY);
        assert_eq!(
            r.encode(),
            [7, 0, 4, 0, 16, 0, 0, 0, 0x21, 0, 0, 0, 25, 0, 0, 0]
        );
        assert!(Header {
            flags: FLAG_NO_REPLY,
            ..Header::default()
        }
        .no_reply());
    }

    #[test]
    fn fixed_message_vectors() {
        both(
            DeviceInfo {
                argsz: 16,
                flags: 3,
                num_regions: 9,
                num_irqs: 5,
            },
            &[16, 0, 0, 0, 3, 0, 0, 0, 9, 0, 0, 0, 5, 0, 0, 0],
            DeviceInfo::to_vec,
            DeviceInfo::parse,
        );
        let mut ri = vec![32, 0, 0, 0, 7, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        ri.extend_from_slice(&(1u64 << 28).to_le_bytes());
        ri.extend_from_slice(&0x1000u64.to_le_bytes());
        both(
            RegionInfo {
                argsz: 32,
                flags: 7,
                index: 2,
                cap_offset: 0,
                size: 1 << 28,
                offset: 0x1000,
            },
            &ri,
            RegionInfo::to_vec,
            RegionInfo::parse,
        );
        both(
            IrqInfo {
                argsz: 16,
                flags: 9,
                index: 2,
                count: 1,
            },
            &[16, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0],
            IrqInfo::to_vec,
            IrqInfo::parse,
        );
        let mut dm = vec![32, 0, 0, 0, 3, 0, 0, 0];
        for v in [0x10u64, 0x1_0000_0000, 0x2000] {
            dm.extend_from_slice(&v.to_le_bytes());
        }
        both(
            DmaMap {
                argsz: 32,
                flags: 3,
                offset: 0x10,
                address: 0x1_0000_0000,
                size: 0x2000,
            },
            &dm,
            DmaMap::to_vec,
            DmaMap::parse,
        );
        both(
            RegionAccess {
                offset: 0x190240,
                region: 0,
                count: 4,
            },
            &[0x40, 0x02, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0],
            RegionAccess::to_vec,
            RegionAccess::parse,
        );
        // DEVICE_FEATURE: argsz 16, flags GET | MIGRATION.
        both(
            Feature {
                argsz: 16,
                flags: feature::GET | feature::MIGRATION,
            },
            &[16, 0, 0, 0, 1, 0, 1, 0],
            Feature::to_vec,
            Feature::parse,
        );
        // MIG_DATA_READ: argsz 0x100008, size 0x100000.
        both(
            MigData {
                argsz: 0x10_0008,
                size: 0x10_0000,
            },
            &[8, 0, 0x10, 0, 0, 0, 0x10, 0],
            MigData::to_vec,
            MigData::parse,
        );
        // Bytes past the fixed part are ignored; too few are an error naming the message.
        assert!(IrqInfo::parse(&[0; 20]).is_ok());
        assert_eq!(
            RegionInfo::parse(&[0; 31]),
            Err(DecodeError::Short {
                what: "DEVICE_GET_REGION_INFO",
                need: 32,
                have: 31
            })
        );
    }

    #[test]
    fn version_vector() {
        let mut v = vec![0, 0, 1, 0];
        v.extend_from_slice(b"{\"capabilities\":{}}\0");
        let want = Version {
            major: 0,
            minor: 1,
            json: "{\"capabilities\":{}}",
        };
        assert_eq!(want.to_vec(), v);
        assert_eq!(Version::parse(&v), Ok(want));
        assert_eq!(Version::parse(&[0, 0, 1, 0]).unwrap().json, "", "no JSON");
        assert_eq!(
            Version::parse(&[0, 0, 1, 0, 0xff, 0]),
            Err(DecodeError::NotUtf8)
        );
        let big = vec![b' '; 4 + MAX_VERSION_PAYLOAD + 1];
        assert_eq!(
            Version::parse(&big).unwrap_err().errno(),
            Errno::E2BIG,
            "over 64 KiB"
        );
    }

    #[test]
    fn requests_decode_with_distinct_errors() {
        let rd = [0x40, 0x02, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0];
        assert_eq!(
            Request::decode(cmd::REGION_READ, &rd, 1 << 20),
            Ok(Request::RegionRead(RegionAccess {
                offset: 0x190240,
                region: 0,
                count: 4
            }))
        );
        let e = Request::decode(cmd::REGION_READ, &rd, 3).unwrap_err();
        assert_eq!(e.errno(), Errno::EMSGSIZE, "over max_data_xfer_size: {e}");
        let e = Request::decode(cmd::REGION_READ, &rd[..15], 1 << 20).unwrap_err();
        assert_eq!(e.errno(), Errno::EINVAL, "short: {e}");
        let w = [
            0x10, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0xaa, 0xbb,
        ];
        assert_eq!(
            Request::decode(cmd::REGION_WRITE, &w, 1 << 20),
            Ok(Request::RegionWrite(
                RegionAccess {
                    offset: 0x10,
                    region: 2,
                    count: 2
                },
                &[0xaa, 0xbb][..]
            ))
        );
        let e = Request::decode(cmd::REGION_WRITE, &w[..17], 1 << 20).unwrap_err();
        assert!(matches!(e, DecodeError::CountMismatch { .. }), "{e}");
        assert_eq!(e.errno(), Errno::EINVAL);
        // MIG_DATA_WRITE: argsz 8 + 3, size 3, data.
        let mw = [11, 0, 0, 0, 3, 0, 0, 0, 1, 2, 3];
        assert_eq!(
            Request::decode(cmd::MIG_DATA_WRITE, &mw, 8),
            Ok(Request::MigDataWrite(
                MigData { argsz: 11, size: 3 },
                &[1, 2, 3][..]
            ))
        );
        assert_eq!(
            Request::decode(cmd::MIG_DATA_WRITE, &mw, 2)
                .unwrap_err()
                .errno(),
            Errno::EMSGSIZE
        );
        assert_eq!(
            Request::decode(cmd::MIG_DATA_WRITE, &mw[..10], 8)
                .unwrap_err()
                .errno(),
            Errno::EINVAL
        );
        let e = Request::decode(200, &[], 0).unwrap_err();
        assert_eq!(e, DecodeError::Unsupported(200));
        assert_eq!(e.errno(), Errno::EOPNOTSUPP);
        assert_eq!(
            Request::decode(cmd::DEVICE_RESET, &[], 0),
            Ok(Request::Reset)
        );
        assert_eq!(
            Request::decode(cmd::DEVICE_FEATURE, &[16, 0, 0, 0, 2, 0, 2, 0, 9, 9], 0),
            Ok(Request::Feature(
                Feature {
                    argsz: 16,
                    flags: feature::SET | feature::MIG_DEVICE_STATE
                },
                &[9, 9][..]
            ))
        );
    }

    #[test]
    fn mig_data_read_replies_may_be_padded() {
        // size 3, then 5 bytes: 3 of data and 2 of padding (a peer that always sends the
        // requested length).
        let p = [13, 0, 0, 0, 3, 0, 0, 0, 1, 2, 3, 0, 0];
        let (m, d) = MigData::parse_read_reply(&p).unwrap();
        assert_eq!((m.size, d), (3, &[1, 2, 3][..]));
        // A size beyond what the message carries is refused.
        let e = MigData::parse_read_reply(&p[..10]).unwrap_err();
        assert!(matches!(
            e,
            DecodeError::CountMismatch {
                count: 3,
                data: 2,
                ..
            }
        ));
    }

    #[test]
    fn payload_builder_matches_fields() {
        let p = Payload::new().u16(1).u32(2).u64(3).bytes(&[9]).0;
        assert_eq!(p, [1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 9]);
        let f = Fields(&p);
        assert_eq!((f.u16(0), f.u32(2), f.u64(6)), (Ok(1), Ok(2), Ok(3)));
        assert_eq!(f.u64(8), Err(Errno::EINVAL));
        assert_eq!(max_message_size(1 << 20), 32 + (1 << 20));
    }
}
