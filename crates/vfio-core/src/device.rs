//! The VFIO device API, as a trait: what a VMM can do with a device fd.
//!
//! `vfio-user` serves any [`VfioDevice`] on a socket; `vfio-pci-core` implements it for PCI
//! functions. Region and IRQ indices are VFIO PCI's (`VFIO_PCI_*_REGION_INDEX`).

use crate::core::MigrationCore;
use crate::Errno;
use std::os::fd::BorrowedFd;

/// `VFIO_DEVICE_FLAGS_RESET`.
pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// `VFIO_DEVICE_FLAGS_PCI`.
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;

/// `VFIO_REGION_INFO_FLAG_READ`.
pub const REGION_INFO_FLAG_READ: u32 = 1 << 0;
/// `VFIO_REGION_INFO_FLAG_WRITE`.
pub const REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_REGION_INFO_FLAG_MMAP`.
pub const REGION_INFO_FLAG_MMAP: u32 = 1 << 2;

/// `VFIO_IRQ_INFO_EVENTFD`.
pub const IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// `VFIO_IRQ_INFO_MASKABLE`.
pub const IRQ_INFO_MASKABLE: u32 = 1 << 1;
/// `VFIO_IRQ_INFO_NORESIZE`.
pub const IRQ_INFO_NORESIZE: u32 = 1 << 3;

/// PCI region indices.
pub mod region {
    pub const BAR0: u32 = 0;
    pub const BAR2: u32 = 2;
    pub const ROM: u32 = 6;
    pub const CONFIG: u32 = 7;
    pub const VGA: u32 = 8;
    /// Number of PCI regions (`VFIO_PCI_NUM_REGIONS`).
    pub const COUNT: u32 = 9;
}

/// PCI IRQ indices.
pub mod irq {
    pub const INTX: u32 = 0;
    pub const MSI: u32 = 1;
    pub const MSIX: u32 = 2;
    pub const ERR: u32 = 3;
    pub const REQ: u32 = 4;
    /// Number of PCI IRQ indices (`VFIO_PCI_NUM_IRQS`).
    pub const COUNT: u32 = 5;
}

/// `struct vfio_device_info`, less argsz.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

/// `struct vfio_region_info`, less argsz and offset (the transport chooses offsets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    pub index: u32,
    pub flags: u32,
    pub size: u64,
}

/// `struct vfio_irq_info`, less argsz.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqInfo {
    pub index: u32,
    pub flags: u32,
    pub count: u32,
}

/// A VFIO device.
///
/// Every method may be called with values a client controls: implementations check offsets,
/// sizes and indices and answer with an errno, never a panic.
pub trait VfioDevice: Send + Sync {
    /// `VFIO_DEVICE_GET_INFO`.
    fn info(&self) -> DeviceInfo;
    /// `VFIO_DEVICE_GET_REGION_INFO`; `EINVAL` for an index out of range.
    fn region_info(&self, index: u32) -> Result<RegionInfo, Errno>;
    /// A read of `buf.len()` bytes at `offset` in region `index`.
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// A write of `data` at `offset` in region `index`.
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;
    /// A file descriptor and offset through which `[offset, offset+len)` of region `index` can be
    /// mapped (sparse mmap / `DEVICE_GET_REGION_IO_FDS`), if the region is backed by one.
    fn region_fd(&self, _index: u32) -> Option<(BorrowedFd<'_>, u64)> {
        None
    }
    /// `VFIO_DEVICE_GET_IRQ_INFO`.
    fn irq_info(&self, index: u32) -> Result<IrqInfo, Errno>;
    /// `VFIO_DEVICE_SET_IRQS` (without eventfds: the transport keeps those).
    fn set_irqs(&self, index: u32, flags: u32, start: u32, count: u32) -> Result<(), Errno>;
    /// `VFIO_DEVICE_RESET` (a function-level reset).
    fn reset(&self) -> Result<(), Errno>;
    /// The device fd was opened.
    fn open(&self) -> Result<(), Errno>;
    /// The device fd was closed.
    fn close(&self);
    /// The migration core, if the device supports migration.
    fn migration(&self) -> Option<&MigrationCore>;
}
