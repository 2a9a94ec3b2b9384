//! # xe-pf — an emulated Intel Xe SR-IOV PF and its VFs
//!
//! The "hardware + PF driver" half of xe-vfio: what `drivers/gpu/drm/xe` does for SR-IOV VFs on
//! the PF side, over an emulated device.
//!
//! - [`platform`]: PTL, WCL, BMG — ids, revisions, GTs, VRAM or not.
//! - [`pf`]: a PF that enables VFs and provisions each (GGTT range, LMEM quota), with the PF
//!   properties that decide whether migration is supported (GuC version, memirq).
//! - [`vf`]: VF hardware — BAR0 registers at the real offsets, the GGTT window, LMEM, and a job
//!   engine that does real work, so that migration can be seen to preserve in-flight jobs.
//! - [`control`]: the PF's per-VF, per-GT control state machine, driven by one worker per GT.
//! - [`migration`]: the Xe SR-IOV packet stream (version 1): codec, save, restore, inspect.
//! - [`sriov_vfio`]: the calls the PF exports to the VFIO variant driver (SPEC §3).
//!
//! This crate knows nothing of VFIO beyond the `Errno` type it shares with it.
//!
//! # Threads and locks
//!
//! One worker thread per GT (control requests), one engine thread per VF, and one producer
//! thread per GT for the length of a save. Lock order, outermost first: the VF's migration-session
//! lock (`Vf::mig`, held only to look up or swap the session) → a session's reader or restore lock
//! → the GT ring lock → the VF hardware locks (engine, PTEs, scratch registers, GuC context), which
//! are leaves. The control lock (`VfCtl`) is never held across a GuC request: a caller marks the
//! operation in progress, releases it, and waits for the GT worker's answer with a timeout.

pub mod control;
pub mod hw;
pub mod migration;
pub mod pf;
pub mod platform;
pub mod sriov_vfio;
mod sync;

pub use hw::guc::{Fault, GucOp, GucVersion};
pub use pf::{PfConfig, Timeouts, XePf};
pub use platform::Platform;
pub use sriov_vfio::SriovVfio;
