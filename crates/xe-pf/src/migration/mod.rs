//! VF migration data: the Xe SR-IOV packet stream (SPEC §4).
//!
//! - [`wire`]: the packet header and descriptor KLV codecs.
//! - [`grammar`]: the stream grammar — packet order, per-type size and route rules, VRAM
//!   ranges — stated once, for restore and inspect alike.
//! - `save`: per-GT producers and bounded rings behind a byte-granular reader.
//! - `restore`: a byte-granular writer that validates every header before its payload.
//! - [`inspect`]: a validated summary of a stream, for tools and people.
//!
//! This module knows the VF's hardware and the wire format, not the PF: the PF's exported calls
//! ([`crate::sriov_vfio`]) drive the control state machine and open and close the sessions
//! kept here in each VF's [`Sessions`] slot.
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
//! which [`crate::XePf::stream_len`] computes and the tests check against real streams.

pub mod grammar;
pub mod inspect;
pub(crate) mod restore;
pub(crate) mod save;
pub mod wire;

use crate::hw::guc::Faults;
use crate::hw::VfHw;
use crate::platform::PRIMARY_GT;
use crate::sync::lock;
use mig_io::{DataSink, DataSource, Errno};
use restore::RestoreSession;
pub(crate) use restore::Target;
pub(crate) use save::SaveParams;
use save::SaveSession;
use std::sync::{Arc, Mutex};
use wire::HEADER_LEN;

/// A VF's migration session.
#[derive(Debug, Default)]
enum Session {
    #[default]
    None,
    Save(Arc<SaveSession>),
    /// Restore lock: the parse position; one writer at a time.
    Restore(Arc<Mutex<RestoreSession>>),
}

/// The PF migration lock of one VF: its save or restore session, if any. Held only to look up
/// or swap the session, never while data moves.
#[derive(Debug, Default)]
pub(crate) struct Sessions(Mutex<Session>);

impl Sessions {
    /// `EBUSY` unless no session is open.
    pub(crate) fn check_idle(&self) -> Result<(), Errno> {
        match *lock(&self.0) {
            Session::None => Ok(()),
            _ => Err(Errno::EBUSY),
        }
    }

    /// Opens a save session: one producer per GT starts (`EBUSY` if a session is open).
    pub(crate) fn start_save(
        &self,
        hw: Arc<VfHw>,
        faults: Arc<Faults>,
        p: SaveParams,
    ) -> Result<(), Errno> {
        self.open(|| Ok(Session::Save(Arc::new(SaveSession::start(hw, faults, p)?))))
    }

    /// Opens a restore session into `hw` (`EBUSY` if a session is open).
    pub(crate) fn start_restore(
        &self,
        hw: Arc<VfHw>,
        faults: Arc<Faults>,
        t: Target,
    ) -> Result<(), Errno> {
        self.open(|| {
            let r = RestoreSession::new(hw, faults, t);
            Ok(Session::Restore(Arc::new(Mutex::new(r))))
        })
    }

    /// Installs the session `make` builds, under the lock, if none is open (`EBUSY`).
    fn open(&self, make: impl FnOnce() -> Result<Session, Errno>) -> Result<(), Errno> {
        let mut s = lock(&self.0);
        if !matches!(*s, Session::None) {
            return Err(Errno::EBUSY);
        }
        *s = make()?;
        Ok(())
    }

    /// Closes the save session: joins a finished one, cancels an unfinished one cleanly (ours:
    /// upstream fails with `EIO`; the source keeps its state and can resume). `EINVAL` if no
    /// save is open.
    pub(crate) fn finish_save(&self, vfid: u32) -> Result<(), Errno> {
        let Session::Save(s) = std::mem::take(&mut *lock(&self.0)) else {
            return Err(Errno::EINVAL);
        };
        if s.finished() {
            s.join();
        } else {
            tracing::info!(vfid, "save cancelled before the end of the stream");
            s.cancel();
        }
        Ok(())
    }

    /// Closes the restore session: `EIO` unless a complete, valid stream was written; `EINVAL`
    /// if no restore is open.
    pub(crate) fn finish_restore(&self) -> Result<(), Errno> {
        let Session::Restore(s) = std::mem::take(&mut *lock(&self.0)) else {
            return Err(Errno::EINVAL);
        };
        let r = lock(&s).finish();
        r
    }

    /// Cancels whatever session is open (FLR, error, VF disable).
    pub(crate) fn cancel(&self) {
        if let Session::Save(s) = std::mem::take(&mut *lock(&self.0)) {
            s.cancel();
        }
    }

    /// Save-stream bytes into `sink` (see [`DataSink`]); `EINVAL` if no save is open.
    pub(crate) fn read_to(&self, max: usize, sink: &mut dyn DataSink) -> Result<usize, Errno> {
        self.save()?.read_to(max, sink)
    }

    /// The open save session; `EINVAL` if none.
    fn save(&self) -> Result<Arc<SaveSession>, Errno> {
        match &*lock(&self.0) {
            Session::Save(s) => Ok(s.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Pre-copy: the VF has stopped; the save goes on with the stop-copy data.
    pub(crate) fn stop_copy(&self) -> Result<(), Errno> {
        self.save()?.stop_copy()
    }

    /// Pre-copy: `(initial_bytes, dirty_bytes)`; `EINVAL` if no pre-copy save is open.
    pub(crate) fn precopy_info(&self) -> Result<(u64, u64), Errno> {
        self.save()?.precopy_info()
    }

    /// Resume-stream bytes from `source`; `EINVAL` if no restore is open.
    pub(crate) fn write_from(&self, n: usize, source: &mut dyn DataSource) -> Result<(), Errno> {
        let s = match &*lock(&self.0) {
            Session::Restore(s) => s.clone(),
            _ => return Err(Errno::EINVAL),
        };
        let mut g = lock(&s);
        g.write_from(n, source)
    }
}

/// Per-item payload sizes of a save of `hw` over `gt_count` GTs: GUC and MMIO of each GT, and
/// on the primary GT, GGTT and VRAM.
pub(crate) fn items(hw: &VfHw, gt_count: u8) -> Result<Vec<u64>, Errno> {
    let mut v = Vec::new();
    for gt in 0..gt_count {
        v.push(hw.guc_state_size(gt)?);
        v.push(16);
        if gt == PRIMARY_GT {
            v.push(hw.ggtt().ptes() as u64 * 8);
            v.push(hw.lmem_size());
        }
    }
    Ok(v)
}

/// Upstream's `stop_copy_size`: `24 + payload` for each non-empty item.
pub(crate) fn stop_copy_size(hw: &VfHw, gt_count: u8) -> Result<u64, Errno> {
    Ok(items(hw, gt_count)?
        .into_iter()
        .filter(|&n| n > 0)
        .map(|n| HEADER_LEN as u64 + n)
        .sum())
}
