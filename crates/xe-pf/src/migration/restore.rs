//! Restore: `write` takes stream bytes at any split and applies packets as they complete.
//!
//! A header is accumulated to its 24 bytes and validated — route, order and size rules — before
//! a single payload byte is accepted. Small payloads (descriptor, GUC, MMIO, GGTT) are buffered
//! up to their already-validated size; VRAM payloads go straight into the target LMEM (zero pages
//! of a lazy LMEM become holes); unknown types are skipped. The first error poisons the session:
//! every later write returns it, and finishing fails. `write_from` does the same pulling bytes
//! from a transport, which then writes VRAM payloads directly into a reserved LMEM.

use super::wire::{
    Descriptor, Header, HeaderRepr, PacketType, WireError, DESCRIPTOR_MAX, HEADER_LEN,
};
use crate::guc::{Fault, Faults, GucOp, BLOB_MAX};
use crate::mem::Backing;
use crate::platform::PRIMARY_GT;
use crate::vf::VfHw;
use std::sync::Arc;
use vfio_core::{DataSource, Errno};

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
    pub(crate) device_id: u16,
    pub(crate) revision: u8,
    pub(crate) gt_count: u8,
    pub(crate) has_vram: bool,
}

/// A restore session.
#[derive(Debug)]
pub(crate) struct RestoreSession {
    hw: Arc<VfHw>,
    faults: Arc<Faults>,
    target: Target,
    hdr: [u8; HEADER_LEN],
    hdr_len: usize,
    cur: Option<InPacket>,
    seen_descriptor: bool,
    seen_trailer: bool,
    failed: Option<Errno>,
    /// Bytes consumed so far (where a stream broke, for the log).
    bytes: u64,
    /// For VRAM payloads from a source into lazy LMEM, and for skipped payloads.
    scratch: Vec<u8>,
}

/// Largest piece taken from a source at once into the scratch buffer.
const SCRATCH: usize = 1 << 20;

/// Where stream bytes come from: a caller's buffer or a transport.
enum Input<'a> {
    Slice(&'a [u8]),
    Source {
        source: &'a mut dyn DataSource,
        left: usize,
    },
}

impl Input<'_> {
    fn len(&self) -> usize {
        match self {
            Input::Slice(b) => b.len(),
            Input::Source { left, .. } => *left,
        }
    }

    /// Takes exactly `dst.len()` (≤ `len()`) bytes.
    fn read(&mut self, dst: &mut [u8]) -> Result<(), Failure> {
        match self {
            Input::Slice(b) => {
                let (head, tail) = b.split_at(dst.len());
                dst.copy_from_slice(head);
                *b = tail;
            }
            Input::Source { source, left } => {
                source.fill(dst).map_err(Failure::Apply)?;
                *left -= dst.len();
            }
        }
        Ok(())
    }

    /// Takes `k` bytes into LMEM at `offset`: from a source straight into a reserved LMEM,
    /// otherwise through `write_sparse` (zero pages of a lazy LMEM stay holes).
    fn take_into_lmem(
        &mut self,
        lmem: &Backing,
        offset: u64,
        k: usize,
        scratch: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        match self {
            Input::Slice(b) => {
                let (head, tail) = b.split_at(k);
                lmem.write_sparse(offset, head).map_err(Failure::Apply)?;
                *b = tail;
            }
            Input::Source { source, left } => {
                let direct = lmem
                    .with_slice_mut(offset, k, |s| source.fill(s))
                    .map_err(Failure::Apply)?;
                match direct {
                    Some(r) => r.map_err(Failure::Apply)?,
                    None => {
                        let mut at = 0;
                        while at < k {
                            let m = (k - at).min(SCRATCH);
                            scratch.resize(m.max(scratch.len()), 0);
                            source.fill(&mut scratch[..m]).map_err(Failure::Apply)?;
                            lmem.write_sparse(offset + at as u64, &scratch[..m])
                                .map_err(Failure::Apply)?;
                            at += m;
                        }
                    }
                }
                *left -= k;
            }
        }
        Ok(())
    }

    /// Drops `k` bytes.
    fn skip(&mut self, k: usize, scratch: &mut Vec<u8>) -> Result<(), Failure> {
        match self {
            Input::Slice(b) => *b = &b[k..],
            Input::Source { .. } => {
                let mut at = 0;
                while at < k {
                    let m = (k - at).min(SCRATCH);
                    scratch.resize(m.max(scratch.len()), 0);
                    self.read(&mut scratch[..m])?;
                    at += m;
                }
            }
        }
        Ok(())
    }
}

impl RestoreSession {
    pub(crate) fn new(hw: Arc<VfHw>, faults: Arc<Faults>, target: Target) -> RestoreSession {
        RestoreSession {
            hw,
            faults,
            target,
            hdr: [0; HEADER_LEN],
            hdr_len: 0,
            cur: None,
            seen_descriptor: false,
            seen_trailer: false,
            failed: None,
            bytes: 0,
            scratch: Vec::new(),
        }
    }

    /// Consumes `buf` entirely, or fails with the stream's errno.
    pub(crate) fn write(&mut self, buf: &[u8]) -> Result<usize, Errno> {
        self.take(&mut Input::Slice(buf)).map(|()| buf.len())
    }

    /// Consumes the next `n` bytes of `source`, VRAM payloads going straight into a reserved
    /// LMEM; on error, part of the `n` bytes may be left in the source.
    pub(crate) fn write_from(
        &mut self,
        n: usize,
        source: &mut dyn DataSource,
    ) -> Result<(), Errno> {
        self.take(&mut Input::Source { source, left: n })
    }

    fn take(&mut self, input: &mut Input<'_>) -> Result<(), Errno> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        match self.consume(input) {
            Ok(()) => Ok(()),
            Err(err) => {
                let e = match &err {
                    Failure::Wire(w) => w.errno(),
                    Failure::Apply(e) => *e,
                };
                tracing::warn!(vfid = self.target.vfid, at = self.bytes, error = %err,
                    "migration stream rejected");
                self.failed = Some(e);
                Err(e)
            }
        }
    }

    /// Finishes: `EIO` unless a complete, valid stream was written.
    pub(crate) fn finish(&self) -> Result<(), Errno> {
        if self.failed.is_some() {
            return Err(Errno::EIO);
        }
        if !self.seen_trailer {
            tracing::warn!(
                vfid = self.target.vfid,
                bytes = self.bytes,
                "{}",
                WireError::NoTrailer
            );
            return Err(Errno::EIO);
        }
        Ok(())
    }

    fn consume(&mut self, input: &mut Input<'_>) -> Result<(), Failure> {
        while input.len() > 0 {
            if self.seen_trailer {
                return Err(WireError::AfterTrailer.into());
            }
            let Some(pkt) = self.cur.as_mut() else {
                let k = (HEADER_LEN - self.hdr_len).min(input.len());
                input.read(&mut self.hdr[self.hdr_len..self.hdr_len + k])?;
                self.hdr_len += k;
                self.bytes += k as u64;
                if self.hdr_len == HEADER_LEN {
                    self.hdr_len = 0;
                    let repr = self.validate_header()?;
                    let sink = match repr.kind {
                        PacketType::Vram => Sink::Vram,
                        PacketType::Unknown(_) => Sink::Skip,
                        _ => Sink::Buffer,
                    };
                    // The size was bounded by `validate_header` for every buffered type.
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
                }
                continue;
            };
            let k = ((pkt.repr.size - pkt.got).min(input.len() as u64)) as usize;
            match pkt.sink {
                Sink::Buffer => {
                    let at = pkt.buf.len();
                    pkt.buf.resize(at + k, 0);
                    input.read(&mut pkt.buf[at..])?;
                }
                Sink::Vram => {
                    let lmem = self.hw.lmem().ok_or(Failure::Apply(Errno::EINVAL))?;
                    input.take_into_lmem(lmem, pkt.repr.offset + pkt.got, k, &mut self.scratch)?;
                }
                Sink::Skip => input.skip(k, &mut self.scratch)?,
            }
            pkt.got += k as u64;
            self.bytes += k as u64;
            if pkt.got == pkt.repr.size {
                self.complete()?;
            }
        }
        Ok(())
    }

    fn validate_header(&mut self) -> Result<HeaderRepr, WireError> {
        let h = Header::new_checked(&self.hdr[..])?;
        let r = HeaderRepr::parse(&h)?;
        let t = self.target;
        if r.tile != 0 || r.gt >= t.gt_count {
            return Err(WireError::Route {
                what: r.kind.name(),
                tile: r.tile,
                gt: r.gt,
            });
        }
        if !self.seen_descriptor && r.kind != PacketType::Descriptor {
            return Err(WireError::DescriptorNotFirst(r.kind.name()));
        }
        let size_err = |what: &'static str, expected: String| WireError::Size {
            what,
            size: r.size,
            expected,
        };
        match r.kind {
            PacketType::Descriptor => {
                if self.seen_descriptor {
                    return Err(WireError::DescriptorDuplicated);
                }
                if r.gt != 0 {
                    return Err(WireError::Route {
                        what: r.kind.name(),
                        tile: r.tile,
                        gt: r.gt,
                    });
                }
                if r.size % 4 != 0 || r.size > DESCRIPTOR_MAX {
                    return Err(WireError::DescriptorSize(r.size));
                }
                self.seen_descriptor = true;
            }
            PacketType::Trailer => {
                if r.gt != 0 || r.offset != 0 || r.size != 0 {
                    return Err(WireError::BadTrailer);
                }
            }
            PacketType::Mmio => {
                if r.size != 16 {
                    return Err(size_err("MMIO", "16".into()));
                }
            }
            PacketType::Ggtt => {
                let want = self.hw.ggtt().ptes() as u64 * 8;
                if r.gt != PRIMARY_GT {
                    return Err(WireError::Route {
                        what: r.kind.name(),
                        tile: r.tile,
                        gt: r.gt,
                    });
                }
                if r.size != want {
                    return Err(size_err("GGTT", want.to_string()));
                }
            }
            PacketType::Guc => {
                if r.size == 0 || r.size > BLOB_MAX {
                    return Err(size_err("GUC", format!("1..={BLOB_MAX}")));
                }
            }
            PacketType::Vram => {
                if !t.has_vram || r.gt != PRIMARY_GT {
                    return Err(WireError::Route {
                        what: r.kind.name(),
                        tile: r.tile,
                        gt: r.gt,
                    });
                }
                let lmem = self.hw.lmem_size();
                if r.offset.checked_add(r.size).is_none_or(|end| end > lmem) {
                    return Err(WireError::VramRange {
                        offset: r.offset,
                        size: r.size,
                        lmem,
                    });
                }
            }
            PacketType::Unknown(_) => {}
        }
        Ok(r)
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
            }
            PacketType::Trailer => self.seen_trailer = true,
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
                self.hw.load_ptes(&ptes).map_err(Failure::Apply)?;
            }
            PacketType::Guc => {
                match self
                    .faults
                    .take(self.target.vfid, r.gt, GucOp::RestoreState)
                {
                    Some(Fault::Fail(e)) => return Err(Failure::Apply(e)),
                    Some(Fault::Timeout) => return Err(Failure::Apply(Errno::ETIMEDOUT)),
                    Some(Fault::Busy) => return Err(Failure::Apply(Errno::EBUSY)),
                    None => {}
                }
                self.hw
                    .guc_restore(r.gt, &pkt.buf)
                    .map_err(Failure::Apply)?;
            }
            PacketType::Vram | PacketType::Unknown(_) => {}
        }
        Ok(())
    }
}

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

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Wire(w) => write!(f, "{w}"),
            Failure::Apply(e) => write!(f, "applying a packet failed: {e}"),
        }
    }
}
