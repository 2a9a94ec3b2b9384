//! The host-to-host migration protocol: what `xe-vfio migrate --to tcp://…` and `xe-vfio receive`
//! say to each other over one (TLS) connection. Documented in docs/NETWORK.md.
//!
//! Every frame is a 12-byte header and a payload, little-endian:
//!
//! ```text
//!  0      4     5      6      8        12
//!  | magic | kind | rsvd | vf   | length | payload (length bytes)
//! ```
//!
//! `magic` is `XEMG`; `vf` indexes the VF list of the HELLO (0 where a frame is about no VF);
//! `length` is at most [`MAX_DATA`] for DATA and [`MAX_CONTROL`] for any other kind. The source
//! speaks first:
//!
//! ```text
//! source                                   destination
//! HELLO {version, flags, VF list}  ───▶
//!                                  ◀───  ACCEPT            (or ERROR: refused, source untouched)
//! DATA {vf, bytes} …, END {vf, total} …  ───▶   (the VFs' streams, interleaved)
//!                                  ◀───  RESULT {state of each VF}   (or ERROR)
//! ```
//!
//! Like the migration stream's packets (smoltcp's `wire` style): parse borrows and checks,
//! emit writes into a caller's buffer, and every malformed input is an error, never a panic or an
//! allocation sized by the peer.

use thiserror::Error;

/// `XEMG`, little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"XEMG");
/// The protocol version this crate speaks.
pub const VERSION: u16 = 1;
/// Header length.
pub const HEADER_LEN: usize = 12;
/// Largest DATA payload.
pub const MAX_DATA: u32 = 1 << 20;
/// Largest payload of any other frame.
pub const MAX_CONTROL: u32 = 64 << 10;
/// Most VFs in one migration.
pub const MAX_VFS: u16 = 64;
/// Bytes of one VF's entry in a HELLO.
pub const VF_INFO_LEN: usize = 20;

/// HELLO flag: the source will send pre-copy rounds (the destination may see data before the
/// source stops).
pub const HELLO_PRE_COPY: u32 = 1;

/// Frame kinds.
pub mod kind {
    pub const HELLO: u8 = 1;
    pub const ACCEPT: u8 = 2;
    pub const DATA: u8 = 3;
    pub const END: u8 = 4;
    pub const RESULT: u8 = 5;
    pub const ERROR: u8 = 6;
}

/// What is wrong with a frame.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("bad magic {0:#010x} (not an xe-vfio migration peer?)")]
    Magic(u32),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("reserved byte is {0}, not 0")]
    Reserved(u8),
    #[error("frame kind {kind} of {len} bytes is longer than its limit {max}")]
    TooLong { kind: u8, len: u32, max: u32 },
    #[error("{what}: {len} bytes, expected {expected}")]
    Length {
        what: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("protocol version {0}, this side speaks {VERSION}")]
    Version(u16),
    #[error("{0} VFs in a HELLO (1 to {MAX_VFS})")]
    VfCount(u16),
    #[error("error message is not UTF-8")]
    Utf8,
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub vf: u16,
    pub len: u32,
}

impl Header {
    /// Parses and checks a header: magic, known kind, reserved byte, length within its limit.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
        let magic = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if magic != MAGIC {
            return Err(WireError::Magic(magic));
        }
        let (kind, rsvd) = (b[4], b[5]);
        let max = match kind {
            kind::DATA => MAX_DATA,
            kind::HELLO | kind::ACCEPT | kind::END | kind::RESULT | kind::ERROR => MAX_CONTROL,
            k => return Err(WireError::Kind(k)),
        };
        if rsvd != 0 {
            return Err(WireError::Reserved(rsvd));
        }
        let vf = u16::from_le_bytes([b[6], b[7]]);
        let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if len > max {
            return Err(WireError::TooLong { kind, len, max });
        }
        Ok(Header { kind, vf, len })
    }

    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = self.kind;
        b[6..8].copy_from_slice(&self.vf.to_le_bytes());
        b[8..].copy_from_slice(&self.len.to_le_bytes());
        b
    }
}

/// What the destination must match for one VF: the PCI identity and the size of BAR2 (an Xe
/// VF's LMEM; 0 where there is none), and the migration flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfInfo {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    pub mig_flags: u32,
    pub bar2: u64,
}

impl VfInfo {
    fn parse(b: &[u8]) -> VfInfo {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VfInfo {
            vendor: u16_at(0),
            device: u16_at(2),
            revision: b[4],
            mig_flags: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            bar2: u64::from_le_bytes([b[12], b[13], b[14], b[15], b[16], b[17], b[18], b[19]]),
        }
    }

    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.vendor.to_le_bytes());
        out.extend_from_slice(&self.device.to_le_bytes());
        out.push(self.revision);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.mig_flags.to_le_bytes());
        out.extend_from_slice(&self.bar2.to_le_bytes());
    }
}

/// HELLO: the protocol version, flags and the VFs to migrate, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub flags: u32,
    pub vfs: Vec<VfInfo>,
}

impl Hello {
    /// Parses a HELLO payload: version 1, 1 to [`MAX_VFS`] entries, exactly as long as they say.
    pub fn parse(p: &[u8]) -> Result<Hello, WireError> {
        if p.len() < 8 {
            return Err(WireError::Length {
                what: "HELLO",
                len: p.len(),
                expected: 8,
            });
        }
        let version = u16::from_le_bytes([p[0], p[1]]);
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let count = u16::from_le_bytes([p[2], p[3]]);
        if count == 0 || count > MAX_VFS {
            return Err(WireError::VfCount(count));
        }
        let flags = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
        let expected = 8 + usize::from(count) * VF_INFO_LEN;
        if p.len() != expected {
            return Err(WireError::Length {
                what: "HELLO",
                len: p.len(),
                expected,
            });
        }
        let vfs = p[8..]
            .chunks_exact(VF_INFO_LEN)
            .map(VfInfo::parse)
            .collect();
        Ok(Hello {
            version,
            flags,
            vfs,
        })
    }

    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.vfs.len() * VF_INFO_LEN);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.vfs.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        for v in &self.vfs {
            v.emit(&mut out);
        }
        out
    }
}

/// END: the total of a VF's stream, as the source counted it.
pub fn parse_end(p: &[u8]) -> Result<u64, WireError> {
    let b: [u8; 8] = p.try_into().map_err(|_| WireError::Length {
        what: "END",
        len: p.len(),
        expected: 8,
    })?;
    Ok(u64::from_le_bytes(b))
}

/// RESULT: the migration state of each destination VF afterwards (raw uAPI values).
pub fn parse_result(p: &[u8], vfs: usize) -> Result<Vec<u32>, WireError> {
    if p.len() != vfs * 4 {
        return Err(WireError::Length {
            what: "RESULT",
            len: p.len(),
            expected: vfs * 4,
        });
    }
    Ok(p.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

pub fn emit_result(states: &[u32]) -> Vec<u8> {
    states.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// ERROR: an errno (0 if none applies) and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMsg {
    pub errno: i32,
    pub message: String,
}

impl ErrorMsg {
    pub fn parse(p: &[u8]) -> Result<ErrorMsg, WireError> {
        if p.len() < 4 {
            return Err(WireError::Length {
                what: "ERROR",
                len: p.len(),
                expected: 4,
            });
        }
        let errno = i32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        let message = std::str::from_utf8(&p[4..])
            .map_err(|_| WireError::Utf8)?
            .to_string();
        Ok(ErrorMsg { errno, message })
    }

    /// The payload; a message longer than the control limit is cut at a character boundary.
    pub fn emit(&self) -> Vec<u8> {
        let max = MAX_CONTROL as usize - 4;
        let mut end = self.message.len().min(max);
        while !self.message.is_char_boundary(end) {
            end -= 1;
        }
        let mut out = self.errno.to_le_bytes().to_vec();
        out.extend_from_slice(&self.message.as_bytes()[..end]);
        out
    }
}

/// A whole frame (header + payload) ready to send.
pub fn frame(kind: u8, vf: u16, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        kind,
        vf,
        len: payload.len() as u32,
    };
    let mut out = h.emit().to_vec();
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_exactly() {
        let h = Header {
            kind: kind::DATA,
            vf: 2,
            len: 0x1234,
        };
        assert_eq!(
            h.emit(),
            [b'X', b'E', b'M', b'G', 3, 0, 2, 0, 0x34, 0x12, 0, 0]
        );
        assert_eq!(Header::parse(&h.emit()), Ok(h));
    }

    #[test]
    fn bad_headers_are_named() {
        let ok = Header {
            kind: kind::HELLO,
            vf: 0,
            len: 8,
        }
        .emit();
        let mut b = ok;
        b[0] = b'Y';
        assert!(matches!(Header::parse(&b), Err(WireError::Magic(_))));
        let mut b = ok;
        b[4] = 99;
        assert_eq!(Header::parse(&b), Err(WireError::Kind(99)));
        let mut b = ok;
        b[5] = 1;
        assert_eq!(Header::parse(&b), Err(WireError::Reserved(1)));
        let mut b = ok;
        b[8..].copy_from_slice(&(MAX_CONTROL + 1).to_le_bytes());
        assert!(matches!(Header::parse(&b), Err(WireError::TooLong { .. })));
        let mut b = ok;
        b[4] = kind::DATA;
        b[8..].copy_from_slice(&MAX_DATA.to_le_bytes());
        assert!(Header::parse(&b).is_ok());
        b[8..].copy_from_slice(&(MAX_DATA + 1).to_le_bytes());
        assert!(matches!(Header::parse(&b), Err(WireError::TooLong { .. })));
    }

    #[test]
    fn hello_bytes_exactly() {
        let h = Hello {
            version: VERSION,
            flags: HELLO_PRE_COPY,
            vfs: vec![VfInfo {
                vendor: 0x8086,
                device: 0xe211,
                revision: 0x23,
                mig_flags: 0x7,
                bar2: 4 << 30,
            }],
        };
        let b = h.emit();
        assert_eq!(
            b,
            [
                1, 0, 1, 0, 1, 0, 0, 0, // version, count, flags
                0x86, 0x80, 0x11, 0xe2, 0x23, 0, 0, 0, // vendor, device, revision, pad
                7, 0, 0, 0, // migration flags
                0, 0, 0, 0, 1, 0, 0, 0, // BAR2: 4 GiB
            ]
        );
        assert_eq!(Hello::parse(&b), Ok(h));
    }

    #[test]
    fn bad_hellos_are_named() {
        let mut h = Hello {
            version: VERSION,
            flags: 0,
            vfs: vec![VfInfo {
                vendor: 1,
                device: 2,
                revision: 3,
                mig_flags: 3,
                bar2: 0,
            }],
        }
        .emit();
        assert!(matches!(
            Hello::parse(&h[..7]),
            Err(WireError::Length { .. })
        ));
        assert!(matches!(
            Hello::parse(&h[..27]),
            Err(WireError::Length { .. })
        ));
        h[0] = 2;
        assert_eq!(Hello::parse(&h), Err(WireError::Version(2)));
        h[0] = 1;
        h[2] = 0;
        assert_eq!(Hello::parse(&h), Err(WireError::VfCount(0)));
        h[2] = 65;
        assert_eq!(Hello::parse(&h), Err(WireError::VfCount(65)));
        h[2] = 2;
        assert!(matches!(Hello::parse(&h), Err(WireError::Length { .. })));
    }

    #[test]
    fn end_result_and_error_payloads() {
        assert_eq!(parse_end(&7u64.to_le_bytes()), Ok(7));
        assert!(parse_end(&[0; 7]).is_err());
        assert_eq!(parse_result(&emit_result(&[2, 2, 1]), 3), Ok(vec![2, 2, 1]));
        assert!(parse_result(&[0; 8], 3).is_err());
        let e = ErrorMsg {
            errno: 19,
            message: "VF 1: device 0xe211 ≠ 0x7d67".into(),
        };
        assert_eq!(ErrorMsg::parse(&e.emit()), Ok(e));
        assert_eq!(ErrorMsg::parse(&[0, 0, 0, 0, 0xff]), Err(WireError::Utf8));
        assert!(ErrorMsg::parse(&[0, 0]).is_err());
        // An overlong message is cut to the control limit, on a character boundary.
        let long = ErrorMsg {
            errno: 5,
            message: "é".repeat(40_000),
        };
        let p = long.emit();
        assert!(p.len() <= MAX_CONTROL as usize);
        assert!(ErrorMsg::parse(&p).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn any_header_bytes_parse_or_fail_cleanly(b in proptest::array::uniform12(0u8..)) {
            if let Ok(h) = Header::parse(&b) {
                proptest::prop_assert_eq!(h.emit(), b);
            }
        }

        #[test]
        fn any_hello_bytes_parse_or_fail_cleanly(p in proptest::collection::vec(0u8.., 0..200)) {
            if let Ok(h) = Hello::parse(&p) {
                // Padding bytes are not kept; everything else round-trips.
                let again = Hello::parse(&h.emit()).unwrap();
                proptest::prop_assert_eq!(again, h);
            }
        }
    }
}
