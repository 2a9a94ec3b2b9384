//! `MigrationCore`: the state mutex, the arc walk and the deferred reset — once, for every driver.
//!
//! A variant driver implements [`MigrationOps`]: one arc at a time, nothing else. The core owns
//! what every driver upstream re-implements: serialising state changes, walking a request arc by
//! arc (SPEC §1), handing out streams only when the arc that opened them is the final one,
//! disabling streams when their session ends, and resetting the migration state on close and on
//! device reset.
//!
//! # Why the reset is deferred (SPEC §7)
//!
//! In the kernel four paths form a lock cycle if `reset_done` takes the state mutex directly:
//! `set_state` holds the state mutex and takes a stream lock; a stream read holds the stream lock
//! and faults on user memory (`mmap_lock`); DMA pinning holds `mmap_lock` and takes the device's
//! `memory_lock`; a reset holds `memory_lock` and calls `reset_done`. So [`MigrationCore::reset_done`]
//! never blocks on the state mutex: it raises a flag under a small lock and only *tries* the state
//! mutex. If the mutex is held, whoever holds it performs the reset as it unlocks — before any
//! other thread can observe the state — which [`StateGuard`]'s `Drop` guarantees on every path.
//!
//! Lock order: state mutex → stream lock (→ the driver's locks). The reset flag lock is innermost
//! and never held while blocking.

use crate::stream::{DataStream, MigStream, ResumeStream, SaveStream};
use crate::sync::{lock, Mutex, MutexGuard, TryLockError};
use crate::uapi::{next_state, DeviceState, MigrationFlags};
use crate::Errno;

/// What a variant driver implements for migration. The core calls every method with the state
/// mutex held, except [`MigrationOps::data_size`], so arcs never run concurrently.
pub trait MigrationOps: Send + Sync {
    /// The migration flags the device advertises (must contain STOP_COPY).
    fn flags(&self) -> MigrationFlags;

    /// Performs the single arc `cur → next`. Returns a stream when the arc opens a session
    /// (STOP → STOP_COPY, STOP → RESUMING, RUNNING → PRE_COPY). On error the state stays `cur`.
    fn step(&self, cur: DeviceState, next: DeviceState) -> Result<Option<DataStream>, Errno>;

    /// The estimated stop-copy length in bytes (`VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`).
    fn data_size(&self) -> Result<u64, Errno>;

    /// Called when the state machine itself refuses a request (`cur → new` has no path, or a
    /// state is unsupported), before the error is returned.
    fn refused(&self, _cur: DeviceState, _new: DeviceState, _err: Errno) {}

    /// Called, under the state mutex, when a reset (open, close or device reset) has put the
    /// migration state back to RUNNING and disabled the streams.
    fn reset_applied(&self) {}
}

/// The outcome of [`MigrationCore::reset_done`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ResetOutcome {
    /// The state mutex was free: the reset was applied before returning.
    Applied,
    /// The state mutex was held: its holder applies the reset when it unlocks.
    Deferred,
}

/// What the state mutex protects.
struct Inner {
    state: DeviceState,
    /// The stream of the current session, if any; disabled when the session ends.
    stream: Option<MigStream>,
    /// The user opted in to `VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2` since the device was
    /// opened.
    precopy_v2: bool,
}

/// `VFIO_PRECOPY_INFO_REINIT`: new initial data is on the stream (only reported after the
/// PRECOPY_INFOv2 opt-in).
pub const PRECOPY_INFO_REINIT: u32 = 1 << 0;

/// `struct vfio_precopy_info`'s outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrecopyInfo {
    /// Without the v2 opt-in the kernel echoes the caller's flags (bug-compatibility); with it,
    /// the flags are an output: [`PRECOPY_INFO_REINIT`] or 0.
    pub flags: u32,
    /// Initial data not yet read: non-zero at first, decreasing to 0 as it is read. Leaving
    /// PRE_COPY before it reaches 0 is allowed but makes STOP_COPY longer.
    pub initial_bytes: u64,
    /// Data changed since it was read: starts at 0, grows as the device changes state, shrinks
    /// as it is read.
    pub dirty_bytes: u64,
}

/// The migration core of one device.
pub struct MigrationCore {
    ops: Box<dyn MigrationOps>,
    flags: MigrationFlags,
    /// State mutex: the migration state and the current stream.
    inner: Mutex<Inner>,
    /// Reset lock: the deferred-reset flag. Innermost; never held while blocking.
    deferred_reset: Mutex<bool>,
}

/// The state mutex, held. Dropping it applies a pending deferred reset before unlocking.
pub struct StateGuard<'a> {
    core: &'a MigrationCore,
    guard: Option<MutexGuard<'a, Inner>>,
}

impl StateGuard<'_> {
    fn inner(&mut self) -> &mut Inner {
        // `guard` is `Some` from construction until `drop`.
        self.guard.as_mut().expect("state guard used after unlock")
    }

    /// The migration state, as seen under the lock.
    pub fn state(&mut self) -> DeviceState {
        self.inner().state
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        loop {
            let mut pending = lock(&self.core.deferred_reset);
            if *pending {
                *pending = false;
                drop(pending);
                self.core.apply_reset(&mut guard);
                continue;
            }
            // Unlock the state mutex while still holding the reset lock: a `reset_done` that
            // raises the flag after this point finds the mutex free and applies it itself.
            drop(guard);
            drop(pending);
            return;
        }
    }
}

impl MigrationCore {
    /// A core for a device whose driver implements `ops`. The device starts in RUNNING.
    ///
    /// Fails with `EINVAL` if the driver's flags lack STOP_COPY.
    pub fn new(ops: Box<dyn MigrationOps>) -> Result<MigrationCore, Errno> {
        let flags = ops.flags();
        if !flags.contains(MigrationFlags::STOP_COPY) {
            return Err(Errno::EINVAL);
        }
        Ok(MigrationCore {
            ops,
            flags,
            inner: Mutex::new(Inner {
                state: DeviceState::Running,
                stream: None,
                precopy_v2: false,
            }),
            deferred_reset: Mutex::new(false),
        })
    }

    /// The advertised migration flags.
    pub fn flags(&self) -> MigrationFlags {
        self.flags
    }

    /// The driver's ops.
    pub fn ops(&self) -> &dyn MigrationOps {
        &*self.ops
    }

    /// Takes the state mutex.
    pub fn lock(&self) -> StateGuard<'_> {
        StateGuard {
            core: self,
            guard: Some(lock(&self.inner)),
        }
    }

    fn apply_reset(&self, inner: &mut Inner) {
        if let Some(s) = inner.stream.take() {
            s.disable();
        }
        inner.state = DeviceState::Running;
        self.ops.reset_applied();
    }

    /// The current migration state (`VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` GET).
    pub fn state(&self) -> DeviceState {
        self.lock().state()
    }

    /// The stream of the current session, if one is open.
    pub fn current_stream(&self) -> Option<MigStream> {
        let mut g = self.lock();
        g.inner().stream.clone()
    }

    /// The estimated stop-copy data length (`MIG_DATA_SIZE`), valid in any state.
    pub fn data_size(&self) -> Result<u64, Errno> {
        self.ops.data_size()
    }

    /// Moves the device to `new`, arc by arc (`VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` SET).
    ///
    /// Returns the stream opened by the final arc, if it opened one. A failing arc stops the walk
    /// with the state at the last state reached and returns that arc's errno. A request the state
    /// machine refuses calls [`MigrationOps::refused`] and returns `EINVAL`. A stream opened by an
    /// arc in the middle of the path is released and the request fails with `EINVAL`.
    pub fn set_state(&self, new: DeviceState) -> Result<Option<MigStream>, Errno> {
        let mut g = self.lock();
        let inner = g.inner();
        while inner.state != new {
            let cur = inner.state;
            let next = match next_state(cur, new, self.flags) {
                Ok(next) => next,
                Err(e) => {
                    self.ops.refused(cur, new, e);
                    return Err(e);
                }
            };
            // A session ends when its state is left: disable the stream before the driver's
            // exit call, so no read or write races the teardown. (PRE_COPY → PRE_COPY_P2P →
            // STOP_COPY stays in one save session.)
            let ends_session = (cur == DeviceState::Resuming && next != DeviceState::Resuming)
                || (cur.is_saving() && !next.is_saving());
            if ends_session {
                if let Some(s) = inner.stream.take() {
                    s.disable();
                }
            }
            let opened = self.ops.step(cur, next)?;
            inner.state = next;
            tracing::debug!(from = %cur, to = %next, "migration arc");
            if let Some(data) = opened {
                let stream = match data {
                    DataStream::Save(d) => MigStream::Save(SaveStream::new(d)),
                    DataStream::Resume(d) => MigStream::Resume(ResumeStream::new(d)),
                };
                if next != new {
                    // Only the final arc may hand a stream to the caller.
                    stream.disable();
                    tracing::warn!(from = %cur, to = %next, target = %new,
                        "arc opened a stream in the middle of a request");
                    return Err(Errno::EINVAL);
                }
                if let Some(old) = inner.stream.replace(stream.clone()) {
                    old.disable();
                }
                return Ok(Some(stream));
            }
        }
        Ok(None)
    }

    /// Opening the device: migration state RUNNING, no stream, no PRECOPY_INFOv2 opt-in.
    pub fn open(&self) {
        let mut g = self.lock();
        g.inner().precopy_v2 = false;
        self.apply_reset(g.inner());
    }

    /// Closing the device: streams disabled, migration state back to RUNNING.
    pub fn close(&self) {
        let mut g = self.lock();
        g.inner().precopy_v2 = false;
        self.apply_reset(g.inner());
    }

    /// `VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2` SET: the caller opts in to flags as an output
    /// of [`MigrationCore::precopy_info`]. `ENOTTY` on a device without PRE_COPY.
    pub fn set_precopy_info_v2(&self) -> Result<(), Errno> {
        if !self.flags.contains(MigrationFlags::PRE_COPY) {
            return Err(Errno::ENOTTY);
        }
        self.lock().inner().precopy_v2 = true;
        Ok(())
    }

    /// `VFIO_MIG_GET_PRECOPY_INFO` on the save stream, given the caller's `flags`. `ENOTTY` on a
    /// device without PRE_COPY, `EINVAL` outside PRE_COPY and PRE_COPY_P2P (as the kernel's
    /// drivers answer), else the driver's counts.
    pub fn precopy_info(&self, flags: u32) -> Result<PrecopyInfo, Errno> {
        if !self.flags.contains(MigrationFlags::PRE_COPY) {
            return Err(Errno::ENOTTY);
        }
        let mut g = self.lock();
        let inner = g.inner();
        if !matches!(inner.state, DeviceState::PreCopy | DeviceState::PreCopyP2p) {
            return Err(Errno::EINVAL);
        }
        let Some(MigStream::Save(s)) = inner.stream.clone() else {
            return Err(Errno::EINVAL);
        };
        let v2 = inner.precopy_v2;
        let (initial_bytes, dirty_bytes) = s.precopy_info()?;
        Ok(PrecopyInfo {
            // This core's drivers never re-initialise their initial data.
            flags: if v2 { 0 } else { flags },
            initial_bytes,
            dirty_bytes,
        })
    }

    /// After a device reset (FLR): disables streams and returns the state to RUNNING.
    ///
    /// Callable from any thread at any moment, including while another thread holds the state
    /// mutex; never blocks on it (see the module docs).
    pub fn reset_done(&self) -> ResetOutcome {
        let mut pending = lock(&self.deferred_reset);
        *pending = true;
        let guard = match self.inner.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return ResetOutcome::Deferred,
        };
        drop(pending);
        // Unlocking through the guard applies the pending reset.
        drop(StateGuard {
            core: self,
            guard: Some(guard),
        });
        ResetOutcome::Applied
    }
}

impl std::fmt::Debug for MigrationCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationCore")
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}
