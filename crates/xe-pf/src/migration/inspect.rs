//! `inspect`: a validated, structured summary of a migration stream.
//!
//! Reads a stream from any `Read` (a file of many GiB is fine: payloads other than the
//! descriptor are skipped, not loaded) and reports packets per GT and type, sizes, the
//! descriptor's KLVs, VRAM coverage and gaps, and the first structural error with its byte
//! offset. It checks what can be checked without a target device: header fields, order
//! (descriptor first and once, trailer last), KLV framing, MMIO size and overlapping VRAM.

use super::wire::{
    Descriptor, Header, HeaderRepr, PacketType, WireError, DESCRIPTOR_MAX, HEADER_LEN,
};
use std::collections::BTreeMap;
use std::io::{self, Read};

/// One packet as found in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    /// Byte offset of the header in the stream.
    pub at: u64,
    pub header: HeaderRepr,
}

/// Totals for one (GT, type).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
}

/// The summary.
#[derive(Clone, Debug, Default)]
pub struct Inspection {
    pub packets: Vec<PacketInfo>,
    /// Keyed by (tile, gt, type).
    pub totals: BTreeMap<(u8, u8, PacketType), Totals>,
    pub descriptor: Option<Descriptor>,
    /// Merged VRAM ranges `[start, end)`.
    pub vram_coverage: Vec<(u64, u64)>,
    /// Holes between 0 and the end of the last VRAM range.
    pub vram_gaps: Vec<(u64, u64)>,
    pub has_trailer: bool,
    pub total_bytes: u64,
    /// The first structural problem and where (byte offset) it was found.
    pub error: Option<(u64, WireError)>,
}

impl Inspection {
    /// Whether the stream is complete and structurally valid.
    pub fn is_valid(&self) -> bool {
        self.error.is_none() && self.has_trailer
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Inspects a stream. I/O errors are returned; format errors are reported in the result.
pub fn inspect(mut r: impl Read) -> io::Result<Inspection> {
    let mut out = Inspection::default();
    let mut at = 0u64;
    let mut vram: Vec<(u64, u64)> = Vec::new();
    let fail = |out: &mut Inspection, at: u64, e: WireError| {
        out.error = Some((at, e));
    };
    loop {
        let mut hdr = [0u8; HEADER_LEN];
        let n = read_full(&mut r, &mut hdr)?;
        if n == 0 {
            if !out.has_trailer {
                fail(&mut out, at, WireError::NoTrailer);
            }
            break;
        }
        if out.has_trailer {
            fail(&mut out, at, WireError::AfterTrailer);
            break;
        }
        let h = match Header::new_checked(&hdr[..n]).and_then(|h| HeaderRepr::parse(&h)) {
            Ok(h) => h,
            Err(e) => {
                fail(&mut out, at, e);
                break;
            }
        };
        let first = out.packets.is_empty();
        let err = match h.kind {
            _ if h.tile != 0 || h.gt > 1 => Some(WireError::Route {
                what: h.kind.name(),
                tile: h.tile,
                gt: h.gt,
            }),
            PacketType::Descriptor if !first => Some(WireError::DescriptorDuplicated),
            PacketType::Descriptor if h.size % 4 != 0 || h.size > DESCRIPTOR_MAX => {
                Some(WireError::DescriptorSize(h.size))
            }
            k if first && k != PacketType::Descriptor => {
                Some(WireError::DescriptorNotFirst(k.name()))
            }
            PacketType::Trailer if h.gt != 0 || h.offset != 0 || h.size != 0 => {
                Some(WireError::BadTrailer)
            }
            PacketType::Mmio if h.size != 16 => Some(WireError::Size {
                what: "MMIO",
                size: h.size,
                expected: "16".into(),
            }),
            PacketType::Vram if h.offset.checked_add(h.size).is_none() => {
                Some(WireError::VramRange {
                    offset: h.offset,
                    size: h.size,
                    lmem: u64::MAX,
                })
            }
            _ => None,
        };
        if let Some(e) = err {
            fail(&mut out, at, e);
            break;
        }
        out.packets.push(PacketInfo { at, header: h });
        let t = out.totals.entry((h.tile, h.gt, h.kind)).or_default();
        t.packets += 1;
        t.bytes += h.size;
        at += HEADER_LEN as u64;
        match h.kind {
            PacketType::Descriptor => {
                let mut payload = vec![0u8; h.size as usize]; // bounded by DESCRIPTOR_MAX above
                let got = read_full(&mut r, &mut payload)?;
                if got < payload.len() {
                    fail(
                        &mut out,
                        at + got as u64,
                        WireError::Truncated {
                            need: h.size,
                            have: got as u64,
                        },
                    );
                    break;
                }
                match Descriptor::parse(&payload) {
                    Ok(d) => out.descriptor = Some(d),
                    Err(e) => {
                        fail(&mut out, at, e);
                        break;
                    }
                }
            }
            _ => {
                let skipped = io::copy(&mut (&mut r).take(h.size), &mut io::sink())?;
                if skipped < h.size {
                    fail(
                        &mut out,
                        at + skipped,
                        WireError::Truncated {
                            need: h.size,
                            have: skipped,
                        },
                    );
                    break;
                }
                if h.kind == PacketType::Trailer {
                    out.has_trailer = true;
                }
                if h.kind == PacketType::Vram && h.size > 0 {
                    vram.push((h.offset, h.offset + h.size));
                }
            }
        }
        at += h.size;
    }
    out.total_bytes = at;
    vram.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in vram {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut cursor = 0;
    for &(s, e) in &merged {
        if s > cursor {
            out.vram_gaps.push((cursor, s));
        }
        cursor = e;
    }
    out.vram_coverage = merged;
    Ok(out)
}
