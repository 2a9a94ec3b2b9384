//! vfio-user message codec (QEMU `docs/interop/vfio-user.rst`, protocol 0.1).
//!
//! Every message is a 16-byte header in host byte order — `u16 msg_id, u16 command, u32 size`
//! (whole message, header included), `u32 flags` (bits 0–3 type: 0 command, 1 reply; bit 4
//! no_reply; bit 5 error), `u32 error` — then a command-specific payload. Decoding checks every
//! length before use: a payload shorter than its fixed part, a data count that disagrees with the
//! payload, or a size beyond the negotiated maximum is an error, never a panic or an allocation
//! sized by the peer.

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
    /// Ours: `{u32 flags, u32 reserved, u64 initial_bytes, u64 dirty_bytes}` in PRE_COPY.
    pub const PRECOPY_INFO: u32 = 12;
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

/// A decoded command.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Version {
        major: u16,
        minor: u16,
        /// The JSON text without its NUL (empty if absent).
        json: &'a str,
    },
    DmaMap {
        flags: u32,
        offset: u64,
        address: u64,
        size: u64,
    },
    DmaUnmap {
        argsz: u32,
        flags: u32,
        address: u64,
        size: u64,
    },
    GetInfo {
        argsz: u32,
    },
    GetRegionInfo {
        argsz: u32,
        index: u32,
    },
    GetIrqInfo {
        argsz: u32,
        index: u32,
    },
    SetIrqs {
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
    },
    RegionRead {
        offset: u64,
        region: u32,
        count: u32,
    },
    RegionWrite {
        offset: u64,
        region: u32,
        data: &'a [u8],
    },
    Reset,
    Feature {
        argsz: u32,
        flags: u32,
        data: &'a [u8],
    },
    MigDataRead {
        argsz: u32,
        size: u32,
    },
    MigDataWrite {
        data: &'a [u8],
    },
    /// A command this server does not implement (replied with `EOPNOTSUPP`).
    Unsupported(u16),
}

/// Decodes a command payload. `max_xfer` bounds data counts.
pub fn decode<'a>(h: &Header, payload: &'a [u8], max_xfer: u32) -> Result<Request<'a>, Errno> {
    let f = Fields(payload);
    let count_ok = |count: u32| {
        if count > max_xfer {
            Err(Errno::EINVAL)
        } else {
            Ok(count)
        }
    };
    Ok(match h.command {
        cmd::VERSION => {
            let f = f.need(4)?;
            let raw = f.tail(4)?;
            if raw.len() > MAX_VERSION_PAYLOAD {
                return Err(Errno::E2BIG);
            }
            let raw = match raw.iter().position(|&b| b == 0) {
                Some(nul) => &raw[..nul],
                None => raw,
            };
            Request::Version {
                major: f.u16(0)?,
                minor: f.u16(2)?,
                json: std::str::from_utf8(raw).map_err(|_| Errno::EINVAL)?,
            }
        }
        cmd::DMA_MAP => {
            let f = f.need(32)?;
            Request::DmaMap {
                flags: f.u32(4)?,
                offset: f.u64(8)?,
                address: f.u64(16)?,
                size: f.u64(24)?,
            }
        }
        cmd::DMA_UNMAP => {
            let f = f.need(24)?;
            Request::DmaUnmap {
                argsz: f.u32(0)?,
                flags: f.u32(4)?,
                address: f.u64(8)?,
                size: f.u64(16)?,
            }
        }
        cmd::DEVICE_GET_INFO => Request::GetInfo {
            argsz: f.need(16)?.u32(0)?,
        },
        cmd::DEVICE_GET_REGION_INFO => {
            let f = f.need(32)?;
            Request::GetRegionInfo {
                argsz: f.u32(0)?,
                index: f.u32(8)?,
            }
        }
        cmd::DEVICE_GET_IRQ_INFO => {
            let f = f.need(16)?;
            Request::GetIrqInfo {
                argsz: f.u32(0)?,
                index: f.u32(8)?,
            }
        }
        cmd::DEVICE_SET_IRQS => {
            let f = f.need(20)?;
            Request::SetIrqs {
                flags: f.u32(4)?,
                index: f.u32(8)?,
                start: f.u32(12)?,
                count: f.u32(16)?,
            }
        }
        cmd::REGION_READ => {
            let f = f.need(16)?;
            Request::RegionRead {
                offset: f.u64(0)?,
                region: f.u32(8)?,
                count: count_ok(f.u32(12)?)?,
            }
        }
        cmd::REGION_WRITE => {
            let f = f.need(16)?;
            let count = count_ok(f.u32(12)?)?;
            let data = f.tail(16)?;
            if data.len() != count as usize {
                return Err(Errno::EINVAL);
            }
            Request::RegionWrite {
                offset: f.u64(0)?,
                region: f.u32(8)?,
                data,
            }
        }
        cmd::DEVICE_RESET => Request::Reset,
        cmd::DEVICE_FEATURE => {
            let f = f.need(8)?;
            Request::Feature {
                argsz: f.u32(0)?,
                flags: f.u32(4)?,
                data: f.tail(8)?,
            }
        }
        cmd::MIG_DATA_READ => {
            let f = f.need(8)?;
            Request::MigDataRead {
                argsz: f.u32(0)?,
                size: count_ok(f.u32(4)?)?,
            }
        }
        cmd::MIG_DATA_WRITE => {
            let f = f.need(8)?;
            let size = count_ok(f.u32(4)?)?;
            let data = f.tail(8)?;
            if data.len() != size as usize {
                return Err(Errno::EINVAL);
            }
            Request::MigDataWrite { data }
        }
        other => Request::Unsupported(other),
    })
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
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors written from the spec's tables (host order = little-endian on x86-64).

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
        let tiny = Header { size: 15, ..h };
        assert_eq!(tiny.check_size(64), Err(Errno::EINVAL));
        let big = Header { size: 65, ..h };
        assert_eq!(big.check_size(64), Err(Errno::EMSGSIZE));
        let r = Header {
            msg_id: 7,
            command: 4,
            size: 16,
            flags: 0,
            error: 0,
        }
        .error_reply(Errno::ENOTTY);
        assert_eq!(
            r.encode(),
            [7, 0, 4, 0, 16, 0, 0, 0, 0x21, 0, 0, 0, 25, 0, 0, 0]
        );
        let nr = Header {
            flags: FLAG_NO_REPLY,
            ..Header::default()
        };
        assert!(nr.no_reply());
    }

    fn h(command: u16) -> Header {
        Header {
            command,
            ..Header::default()
        }
    }

    #[test]
    fn region_access_vectors() {
        // REGION_READ: offset 0x190240, region 0, count 4.
        let p = [0x40, 0x02, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0];
        assert_eq!(
            decode(&h(cmd::REGION_READ), &p, 1 << 20),
            Ok(Request::RegionRead {
                offset: 0x190240,
                region: 0,
                count: 4
            })
        );
        assert_eq!(
            decode(&h(cmd::REGION_READ), &p, 3),
            Err(Errno::EINVAL),
            "over max_xfer"
        );
        assert_eq!(
            decode(&h(cmd::REGION_READ), &p[..15], 1 << 20),
            Err(Errno::EINVAL)
        );
        // REGION_WRITE: offset 0x10, region 2, count 2, data [0xaa, 0xbb].
        let w = [
            0x10, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0xaa, 0xbb,
        ];
        assert_eq!(
            decode(&h(cmd::REGION_WRITE), &w, 1 << 20),
            Ok(Request::RegionWrite {
                offset: 0x10,
                region: 2,
                data: &[0xaa, 0xbb]
            })
        );
        assert_eq!(
            decode(&h(cmd::REGION_WRITE), &w[..17], 1 << 20),
            Err(Errno::EINVAL),
            "count ≠ data"
        );
    }

    #[test]
    fn info_and_feature_vectors() {
        let gi = [16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            decode(&h(cmd::DEVICE_GET_INFO), &gi, 0),
            Ok(Request::GetInfo { argsz: 16 })
        );
        let mut ri = [0u8; 32];
        ri[0] = 32;
        ri[8] = 7;
        assert_eq!(
            decode(&h(cmd::DEVICE_GET_REGION_INFO), &ri, 0),
            Ok(Request::GetRegionInfo {
                argsz: 32,
                index: 7
            })
        );
        // DEVICE_FEATURE: argsz 16, flags GET | MIGRATION.
        let f = [16, 0, 0, 0, 1, 0, 1, 0];
        assert_eq!(
            decode(&h(cmd::DEVICE_FEATURE), &f, 0),
            Ok(Request::Feature {
                argsz: 16,
                flags: feature::GET | feature::MIGRATION,
                data: &[]
            })
        );
        // MIG_DATA_READ: argsz 0x100008, size 0x100000.
        let r = [8, 0, 0x10, 0, 0, 0, 0x10, 0];
        assert_eq!(
            decode(&h(cmd::MIG_DATA_READ), &r, 1 << 20),
            Ok(Request::MigDataRead {
                argsz: 0x10_0008,
                size: 0x10_0000
            })
        );
        // MIG_DATA_WRITE: argsz 8, size 3, data.
        let w = [8, 0, 0, 0, 3, 0, 0, 0, 1, 2, 3];
        assert_eq!(
            decode(&h(cmd::MIG_DATA_WRITE), &w, 8),
            Ok(Request::MigDataWrite { data: &[1, 2, 3] })
        );
        assert_eq!(
            decode(&h(cmd::MIG_DATA_WRITE), &w[..10], 8),
            Err(Errno::EINVAL)
        );
        // VERSION: 0.1 + JSON + NUL.
        let mut v = vec![0, 0, 1, 0];
        v.extend_from_slice(b"{\"capabilities\":{}}\0");
        assert_eq!(
            decode(&h(cmd::VERSION), &v, 0),
            Ok(Request::Version {
                major: 0,
                minor: 1,
                json: "{\"capabilities\":{}}"
            })
        );
        assert_eq!(
            decode(&h(cmd::VERSION), &[0, 0, 1, 0, 0xff, 0], 0),
            Err(Errno::EINVAL),
            "not UTF-8"
        );
        assert_eq!(decode(&h(200), &[], 0), Ok(Request::Unsupported(200)));
        assert_eq!(decode(&h(cmd::DEVICE_RESET), &[], 0), Ok(Request::Reset));
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
