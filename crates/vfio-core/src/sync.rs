//! Synchronisation primitives: std normally, shuttle's model-checked ones under
//! `--features shuttle`.
//!
//! Only the primitives whose interleavings matter (the state mutex, the deferred-reset flag and
//! the stream locks) go through here, so that `tests/model.rs` explores the real code.
//!
//! Why shuttle and not loom: loom 0.7 marks a thread whose *pending* operation is a `try_lock`
//! as blocked when another thread acquires that mutex, so it reports a deadlock for the
//! deferred-reset protocol, whose whole point is a `try_lock` that never blocks. Shuttle models
//! `try_lock` as a non-blocking semaphore attempt, which is what the real primitive does.

#[cfg(feature = "shuttle")]
pub(crate) use shuttle::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) use std::sync::TryLockError;
/// Locks `m`, ignoring poisoning: every value behind these locks stays consistent across a
/// panic in a caller (state is only written after an operation succeeded), so a poisoned lock
/// is not a reason to propagate a panic to every later user of the device.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
