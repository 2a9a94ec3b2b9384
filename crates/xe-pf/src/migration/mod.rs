//! VF migration data: the Xe SR-IOV packet stream (SPEC §4).
//!
//! - [`wire`]: the packet header and descriptor KLV codecs.
//! - `save`: per-GT producers and bounded rings behind a byte-granular reader.
//! - `restore`: a byte-granular writer that validates every header before its payload.
//! - [`inspect`]: a validated summary of a stream, for tools and people.
//!
//! # `stop_copy_size` and the real stream length
//!
//! Like upstream, [`stop_copy_size`](crate::SriovVfio::stop_copy_size) is the sum, over GTs, of
//! `24 + payload` for each non-empty GUC, GGTT, MMIO and VRAM item, counting VRAM as one item.
//! The stream is longer by the descriptor packet, the trailer (24) and one 24-byte header per
//! VRAM chunk after the first:
//!
//! `stream_len = stop_copy_size + (24 + descriptor payload) + 24 + 24 × (vram_chunks − 1)`
//!
//! which [`stream_len`] computes and the tests check against real streams.

pub mod inspect;
pub(crate) mod restore;
pub(crate) mod save;
pub mod wire;

use crate::pf::{Vf, XePf};
use crate::sync::lock;
use restore::{RestoreSession, Target};
use save::{SaveParams, SaveSession};
use std::sync::Arc;
use vfio_core::{DataSink, DataSource, Errno};
use wire::{Descriptor, HEADER_LEN};

/// A VF's migration session (behind the PF migration lock).
#[derive(Debug, Default)]
pub(crate) enum Session {
    #[default]
    None,
    Save(Arc<SaveSession>),
    /// Restore lock: the parse position; one writer at a time.
    Restore(Arc<std::sync::Mutex<RestoreSession>>),
}

pub(crate) fn descriptor(pf: &XePf) -> Descriptor {
    Descriptor {
        device_id: pf.device_id(),
        revision: pf.revision(),
        unknown: Vec::new(),
    }
}

/// Cancels whatever session the VF has (FLR, VF disable).
pub(crate) fn cancel(vf: &Vf) {
    let s = std::mem::take(&mut *lock(&vf.mig));
    if let Session::Save(s) = s {
        s.cancel();
    }
}

pub(crate) fn stop_copy_enter(pf: &XePf, vf: &Vf) -> Result<(), Errno> {
    let mut mig = lock(&vf.mig);
    if !matches!(*mig, Session::None) {
        return Err(Errno::EBUSY);
    }
    if let Err(e) = pf.control(vf).save_trigger() {
        // GTs that did enter the save go back to Paused: a failed trigger changes nothing.
        pf.control(vf).session_finish();
        return Err(e);
    }
    let s = SaveSession::start(
        vf.hw.clone(),
        pf.faults_arc(),
        SaveParams {
            vfid: vf.vfid(),
            gt_count: pf.gt_count(),
            descriptor: descriptor(pf),
            vram_chunk: pf.config().vram_chunk,
        },
    );
    *mig = Session::Save(Arc::new(s));
    Ok(())
}

pub(crate) fn stop_copy_exit(pf: &XePf, vf: &Vf) -> Result<(), Errno> {
    let s = std::mem::take(&mut *lock(&vf.mig));
    let Session::Save(s) = s else {
        return Err(Errno::EINVAL);
    };
    if s.finished() {
        s.join();
    } else {
        // Ours: an unfinished save is cancelled cleanly (upstream fails with EIO); the source
        // keeps its state and can resume.
        tracing::info!(
            vfid = vf.vfid(),
            "save cancelled before the end of the stream"
        );
        s.cancel();
    }
    pf.control(vf).session_finish();
    Ok(())
}

pub(crate) fn resume_data_enter(pf: &XePf, vf: &Vf) -> Result<(), Errno> {
    let mut mig = lock(&vf.mig);
    if !matches!(*mig, Session::None) {
        return Err(Errno::EBUSY);
    }
    if let Err(e) = pf.control(vf).restore_trigger() {
        pf.control(vf).session_finish();
        return Err(e);
    }
    let target = Target {
        vfid: vf.vfid(),
        device_id: pf.device_id(),
        revision: pf.revision(),
        gt_count: pf.gt_count(),
        has_vram: pf.platform().has_vram(),
    };
    *mig = Session::Restore(Arc::new(std::sync::Mutex::new(RestoreSession::new(
        vf.hw.clone(),
        pf.faults_arc(),
        target,
    ))));
    Ok(())
}

pub(crate) fn resume_data_exit(pf: &XePf, vf: &Vf) -> Result<(), Errno> {
    let s = std::mem::take(&mut *lock(&vf.mig));
    let Session::Restore(s) = s else {
        return Err(Errno::EINVAL);
    };
    let r = lock(&s).finish();
    pf.control(vf).session_finish();
    if r.is_ok() {
        vf.hw.set_migrated();
        tracing::info!(vfid = vf.vfid(), "restore complete");
    }
    r
}

/// The VF's open save session; `EINVAL` if none.
fn save_session(vf: &Vf) -> Result<Arc<SaveSession>, Errno> {
    match &*lock(&vf.mig) {
        Session::Save(s) => Ok(s.clone()),
        _ => Err(Errno::EINVAL),
    }
}

/// The VF's open restore session; `EINVAL` if none.
fn restore_session(vf: &Vf) -> Result<Arc<std::sync::Mutex<RestoreSession>>, Errno> {
    match &*lock(&vf.mig) {
        Session::Restore(s) => Ok(s.clone()),
        _ => Err(Errno::EINVAL),
    }
}

pub(crate) fn data_read(vf: &Vf, buf: &mut [u8]) -> Result<usize, Errno> {
    save_session(vf)?.read(buf)
}

pub(crate) fn data_read_to(vf: &Vf, max: usize, sink: &mut dyn DataSink) -> Result<usize, Errno> {
    save_session(vf)?.read_to(max, sink)
}

pub(crate) fn data_write(vf: &Vf, buf: &[u8]) -> Result<usize, Errno> {
    let s = restore_session(vf)?;
    let mut g = lock(&s);
    g.write(buf)
}

pub(crate) fn data_write_from(vf: &Vf, n: usize, source: &mut dyn DataSource) -> Result<(), Errno> {
    let s = restore_session(vf)?;
    let mut g = lock(&s);
    g.write_from(n, source)
}

/// Per-item sizes of a save of `vf`, over GTs: (GUC, MMIO, GGTT, VRAM) payload bytes.
fn items(pf: &XePf, vf: &Vf) -> Result<Vec<u64>, Errno> {
    let mut v = Vec::new();
    for gt in 0..pf.gt_count() {
        v.push(vf.hw.guc_state_size(gt)?);
        v.push(16);
        if gt == crate::platform::PRIMARY_GT {
            v.push(vf.hw.ggtt().ptes() as u64 * 8);
            v.push(vf.hw.lmem_size());
        }
    }
    Ok(v)
}

pub(crate) fn stop_copy_size(pf: &XePf, vf: &Vf) -> Result<u64, Errno> {
    Ok(items(pf, vf)?
        .into_iter()
        .filter(|&n| n > 0)
        .map(|n| HEADER_LEN as u64 + n)
        .sum())
}

/// The exact length of the stream a save of `vf` produces now (see the module docs).
pub fn stream_len(pf: &XePf, vfid: u32) -> Result<u64, Errno> {
    let vf = pf.vf(vfid)?;
    let lmem = vf.hw.lmem_size();
    let chunks = lmem.div_ceil(pf.config().vram_chunk);
    Ok(stop_copy_size(pf, &vf)?
        + descriptor(pf).packet().len() as u64
        + HEADER_LEN as u64
        + HEADER_LEN as u64 * chunks.saturating_sub(1))
}
