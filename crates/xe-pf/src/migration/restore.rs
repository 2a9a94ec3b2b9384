//! Restore: `write_from` takes stream bytes at any split and applies packets as they complete.
//!
//! A header is accumulated to its 24 bytes and checked by the stream [`Grammar`] before a
//! single payload byte is accepted. Small payloads (descriptor, GUC, MMIO, GGTT) are buffered up
//! to their already-checked size; VRAM payloads go straight into the target LMEM — filled from
//! the transport in place when the LMEM is reserved, or from the source's own memory (zero pages
//! of a lazy LMEM become holes); unknown types are skipped. The first error poisons the session:
//! every later write returns it, and finishing fails.

use super::grammar::{Grammar, Limits};
use super::wire::{Descriptor, Header, HeaderRepr, PacketType, WireError, HEADER_LEN};
use crate::hw::guc::{Faults, GucOp};
use crate::hw::mem::Backing;
use crate::hw::VfHw;
use crate::platform::Platform;
use mig_io::{DataSource, Errno};
use std::sync::Arc;

/// What happens to a packet's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Buffer,
    Vram,
    Skip,
}

#[derive(Debug)]
struct InPacket {
    repr: HeaderRepr,
    sink: Sink,
    got: u64,
    buf: Vec<u8>,
}

/// The target's identity, checked against the descriptor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub(crate) vfid: u32,
    pub(crate) device_id: u32,
    pub(crate) revision: u32,
    pub(crate) platform: Platform,
}

/// A restore session.
#[derive(Debug)]
pub(crate) struct RestoreSession {
    hw: Arc<VfHw>,
    faults: Arc<Faults>,
    target: Target,
    grammar: Grammar,
    hdr: [u8; HEADER_LEN],
    hdr_len: usize,
    cur: Option<InPacket>,
    failed: Option<Errno>,
    /// Bytes consumed so far (where a stream broke, for the log).
    bytes: u64,
    /// For VRAM payloads from a source into lazy LMEM, and for skipped payloads.
    scratch: Vec<u8>,
}

/// Largest piece taken from a source at once into the scratch buffer.
const SCRATCH: usize = 1 << 20;

/// Why a write failed.
#[derive(Debug)]
enum Failure {
    Wire(WireError),
    Apply(Errno),
}

impl From<WireError> for Failure {
    fn from(w: WireError) -> Self {
        Failure::Wire(w)
    }
}

impl From<Errno> for Failure {
    fn from(e: Errno) -> Self {
        Failure::Apply(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Wire(w) => write!(f, "{w}"),
            Failure::Apply(e) => write!(f, "applying a packet failed: {e}"),
        }
    }
}

/// Takes `k` bytes of `source` into `lmem` at `offset`: in place when the source holds them in
/// memory or the LMEM is reserved, otherwise through `scratch`. Lazy LMEM gets `write_sparse`
/// (zero pages stay holes).
fn take_into_lmem(
    source: &mut dyn DataSource,
    lmem: &Backing,
    offset: u64,
    k: usize,
    scratch: &mut Vec<u8>,
) -> Result<(), Errno> {
    if let Some(r) = lmem.with_slice_mut(offset, k, |s| source.fill(s))? {
        return r;
    }
    if let Some(bytes) = source.take(k) {
        return lmem.write_sparse(offset, bytes);
    }
    let mut at = 0;
    while at < k {
        let m = (k - at).min(SCRATCH);
        scratch.resize(m.max(scratch.len()), 0);
        source.fill(&mut scratch[..m])?;
        lmem.write_sparse(offset + at as u64, &scratch[..m])?;
        at += m;
    }
    Ok(())
}

/// Drops `k` bytes of `source`.
fn skip(source: &mut dyn DataSource, k: usize, scratch: &mut Vec<u8>) -> Result<(), Errno> {
    if source.take(k).is_some() {
        return Ok(());
    }
    let mut at = 0;
    while at < k {
        let m = (k - at).min(SCRATCH);
        scratch.resize(m.max(scratch.len()), 0);
        source.fill(&mut scratch[..m])?;
        at += m;
    }
    Ok(())
}

impl RestoreSession {
    pub(crate) fn new(hw: Arc<VfHw>, faults: Arc<Faults>, target: Target) -> RestoreSession {
        let limits = Limits::of_target(target.platform, hw.ggtt().ptes(), hw.lmem_size());
        RestoreSession {
            hw,
            faults,
            target,
            grammar: Grammar::new(limits),
            hdr: [0; HEADER_LEN],
            hdr_len: 0,
            cur: None,
            failed: None,
            bytes: 0,
            scratch: Vec::new(),
        }
    }

    /// Consumes the next `n` bytes of `source`, or fails with the stream's errno; on error,
    /// part of the `n` bytes may be left in the source.
    pub(crate) fn write_from(
        &mut self,
        n: usize,
        source: &mut dyn DataSource,
    ) -> Result<(), Errno> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        self.consume(n, source).map_err(|err| {
            let e = match &err {
                Failure::Wire(w) => w.errno(),
                Failure::Apply(e) => *e,
            };
            tracing::warn!(vfid = self.target.vfid, at = self.bytes, error = %err,
                "migration stream rejected");
            self.failed = Some(e);
            e
        })
    }

    /// Finishes: `EIO` unless a complete, valid stream was written.
    pub(crate) fn finish(&self) -> Result<(), Errno> {
        if self.failed.is_some() {
            return Err(Errno::EIO);
        }
        if let Err(e) = self.grammar.end() {
            tracing::warn!(vfid = self.target.vfid, bytes = self.bytes, "{e}");
            return Err(e.errno());
        }
        Ok(())
    }

    fn consume(&mut self, mut left: usize, source: &mut dyn DataSource) -> Result<(), Failure> {
        while left > 0 {
            self.grammar.more()?;
            let Some(pkt) = self.cur.as_mut() else {
                let k = (HEADER_LEN - self.hdr_len).min(left);
                source.fill(&mut self.hdr[self.hdr_len..self.hdr_len + k])?;
                self.hdr_len += k;
                self.bytes += k as u64;
                left -= k;
                if self.hdr_len == HEADER_LEN {
                    self.hdr_len = 0;
                    self.begin_packet()?;
                }
                continue;
            };
            let k = ((pkt.repr.size - pkt.got).min(left as u64)) as usize;
            match pkt.sink {
                Sink::Buffer => {
                    let at = pkt.buf.len();
                    pkt.buf.resize(at + k, 0);
                    source.fill(&mut pkt.buf[at..])?;
                }
                Sink::Vram => {
                    let lmem = self.hw.lmem().ok_or(Errno::EINVAL)?;
                    let at = pkt.repr.offset + pkt.got;
                    take_into_lmem(source, lmem, at, k, &mut self.scratch)?;
                }
                Sink::Skip => skip(source, k, &mut self.scratch)?,
            }
            pkt.got += k as u64;
            self.bytes += k as u64;
            left -= k;
            if pkt.got == pkt.repr.size {
                self.complete()?;
            }
        }
        Ok(())
    }

    /// A whole header arrived: check it, and get ready for its payload.
    fn begin_packet(&mut self) -> Result<(), Failure> {
        let repr = HeaderRepr::parse(&Header::new_checked(&self.hdr[..])?)?;
        self.grammar.header(&repr)?;
        let sink = match repr.kind {
            PacketType::Vram => Sink::Vram,
            PacketType::Unknown(_) => Sink::Skip,
            _ => Sink::Buffer,
        };
        // The grammar bounded the size of every buffered type.
        let cap = if sink == Sink::Buffer {
            repr.size as usize
        } else {
            0
        };
        self.cur = Some(InPacket {
            repr,
            sink,
            got: 0,
            buf: Vec::with_capacity(cap),
        });
        if repr.size == 0 {
            self.complete()?;
        }
        Ok(())
    }

    fn complete(&mut self) -> Result<(), Failure> {
        let Some(pkt) = self.cur.take() else {
            return Ok(());
        };
        let r = pkt.repr;
        match r.kind {
            PacketType::Descriptor => {
                let d = Descriptor::parse(&pkt.buf)?;
                let t = self.target;
                if d.device_id != t.device_id || d.revision != t.revision {
                    return Err(WireError::DeviceMismatch {
                        found: d.device_id,
                        found_rev: d.revision,
                        want: t.device_id,
                        want_rev: t.revision,
                    }
                    .into());
                }
                // Ours: pre-copy streams name the VF's sizes, so a destination that cannot
                // take the VF refuses it on the first packet, while the source still runs.
                let sizes = [
                    ("LMEM", d.lmem_size, self.hw.lmem_size()),
                    ("GGTT", d.ggtt_size, self.hw.ggtt().ptes() as u64 * 4096),
                ];
                for (what, found, want) in sizes {
                    if let Some(found) = found.filter(|&f| f != want) {
                        return Err(WireError::SizeMismatch { what, found, want }.into());
                    }
                }
            }
            PacketType::Mmio => {
                let mut v = [0u32; 4];
                for (d, c) in v.iter_mut().zip(pkt.buf.chunks_exact(4)) {
                    *d = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                self.hw.set_sw_flags(r.gt, v);
            }
            PacketType::Ggtt => {
                let ptes: Vec<u64> = pkt
                    .buf
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect();
                self.hw.load_ptes(&ptes)?;
            }
            PacketType::Guc => {
                match self
                    .faults
                    .take(self.target.vfid, r.gt, GucOp::RestoreState)
                {
                    Some(f) => return Err(Failure::Apply(f.errno())),
                    None => self.hw.guc_restore(r.gt, &pkt.buf)?,
                }
            }
            PacketType::Trailer | PacketType::Vram | PacketType::Unknown(_) => {}
        }
        Ok(())
    }
}
