//! # vfio-core — the VFIO migration uAPI v2 core
//!
//! The user-space twin of `drivers/vfio/vfio_main.c`'s migration support and of
//! `include/uapi/linux/vfio.h`:
//!
//! - [`DeviceState`], [`MigrationFlags`]: the ABI values, checked on the way in.
//! - [`next_state`]: the kernel's next-state table (SPEC §1), including the rule that skips
//!   states a device's flags do not support.
//! - [`MigrationOps`]: what a variant driver implements — one arc at a time.
//! - [`MigrationCore`]: the state mutex, the arc walk, the stream rules and the deferred reset,
//!   implemented once here for every driver (the core-level fix upstream reviewers asked for).
//! - [`SaveStream`] / [`ResumeStream`]: sequential streams with their own lock and disable flag.
//! - [`VfioDevice`]: the device API served over vfio-user.
//! - [`Errno`], [`DataSink`], [`DataSource`]: re-exported from the leaf crate `mig-io`.
//!
//! This crate knows nothing of PCI or of Xe.

mod core;
pub mod device;
mod stream;
mod sync;
mod uapi;

pub use crate::core::{
    MigrationCore, MigrationOps, PrecopyInfo, ResetOutcome, StateGuard, PRECOPY_INFO_REINIT,
};
pub use device::{DeviceInfo, IrqInfo, RegionInfo, VfioDevice};
pub use mig_io::{
    read_into, write_from_slice, DataSink, DataSource, Errno, SliceSink, SliceSource,
};
pub use stream::{DataStream, MigStream, ResumeData, ResumeStream, SaveData, SaveStream};
pub use uapi::{next_state, path, DeviceState, MigrationFlags};
