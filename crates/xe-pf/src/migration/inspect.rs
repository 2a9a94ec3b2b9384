//! `inspect`: a validated, structured summary of a migration stream.
//!
//! Reads a stream from any `Read` (a file of many GiB is fine: payloads other than the
//! descriptor are skipped, not loaded) and reports packets per GT and type, sizes, the
//! descriptor's KLVs, VRAM coverage, gaps and bytes sent more than once, and the first error
//! with its byte offset. The rules are the stream [`Grammar`]'s, the same that restore applies,
//! checked against the platform the descriptor names (sizes that only a target VF knows — its
//! GGTT range and LMEM size — are left to the restore).
use super::grammar::{Grammar, Limits};
use super::wire::{Descriptor, Header, HeaderRepr, PacketType, WireError, HEADER_LEN};
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
    /// VRAM bytes sent more than once (later packets replace earlier ones).
    pub vram_resent: u64,
    /// Packets whose header flags are not zero (ignored, as upstream does).
    pub flagged: u64,
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

    /// Whether this looks like an Xe stream at all: its first 24 bytes are a version-1 packet
    /// header. A stream of another device (or a short or empty file) is not.
    pub fn is_xe_stream(&self) -> bool {
        !matches!(
            self.error,
            Some((
                0,
                WireError::Version(_) | WireError::TypeZero | WireError::Truncated { .. }
            )) | Some((0, WireError::NoTrailer))
        )
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
    let mut grammar = Grammar::new(Limits::any());
    let mut at = 0u64;
    let mut vram: Vec<(u64, u64)> = Vec::new();
    let error = loop {
        let mut hdr = [0u8; HEADER_LEN];
        let n = read_full(&mut r, &mut hdr)?;
        if n == 0 {
            break grammar.end().err();
        }
        if let Err(e) = grammar.more() {
            break Some(e);
        }
        let parsed = Header::new_checked(&hdr[..n]).and_then(|h| {
            let repr = HeaderRepr::parse(&h)?;
            Ok((repr, h.flags()))
        });
        let (h, flags) = match parsed {
            Ok(p) => p,
            Err(e) => break Some(e),
        };
        if let Err(e) = grammar.header(&h) {
            break Some(e);
        }
        out.flagged += u64::from(flags != 0);
        out.packets.push(PacketInfo { at, header: h });
        let t = out.totals.entry((h.tile, h.gt, h.kind)).or_default();
        t.packets += 1;
        t.bytes += h.size;
        at += HEADER_LEN as u64;
        let got = if h.kind == PacketType::Descriptor {
            // The grammar bounded the size by DESCRIPTOR_MAX.
            let mut payload = vec![0u8; h.size as usize];
            let got = read_full(&mut r, &mut payload)? as u64;
            if got == h.size {
                match Descriptor::parse(&payload) {
                    Ok(d) => {
                        if let Some(p) = d.platform() {
                            grammar.refine(Limits::for_platform(p));
                        }
                        out.descriptor = Some(d);
                    }
                    Err(e) => break Some(e),
                }
            }
            got
        } else {
            io::copy(&mut (&mut r).take(h.size), &mut io::sink())?
        };
        if got < h.size {
            at += got;
            break Some(WireError::Truncated {
                need: h.size,
                have: got,
            });
        }
        if h.kind == PacketType::Vram && h.size > 0 {
            vram.push((h.offset, h.offset + h.size));
        }
        at += h.size;
    };
    out.has_trailer = grammar.complete();
    out.error = error.map(|e| (at, e));
    out.total_bytes = at;
    let total: u64 = vram.iter().map(|(s, e)| e - s).sum();
    vram.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in vram {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    out.vram_resent = total - merged.iter().map(|(s, e)| e - s).sum::<u64>();
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
