//! # vfio-pci-core — an emulated PCI function behind the VFIO device API
//!
//! The user-space twin of `drivers/vfio/pci/vfio_pci_core.c` for one function: a 4 KiB config
//! space with the function's identity, standard BAR sizing, a PCI Express capability advertising
//! FLR and an MSI-X capability; region dispatch of BAR accesses to the variant driver; and the
//! reset path (FLR through config space or `VFIO_DEVICE_RESET`): `reset_prepare` → function
//! reset → config-space reset → `reset_done`.
//!
//! A variant plugs in through [`PciVariant`]; [`PciDevice`] implements
//! [`vfio_core::VfioDevice`] for any variant. This crate knows nothing of Xe.
//!
//! # Config space layout
//!
//! | offset | what |
//! |---|---|
//! | 0x00..0x40 | type-0 header: ids, command/status, class, BARs, subsystem ids, capabilities pointer |
//! | 0x40 | PCI Express capability (v2, endpoint; DevCap.FLR, DevCtl.InitiateFLR) |
//! | 0x70 | MSI-X capability (table in BAR0 at 0x4000, PBA at 0x5000) |
//! | 0x100..0x1000 | extended space: empty |
//!
//! Writable: command (I/O, memory, bus master, INTx disable), BAR address bits, interrupt line,
//! MSI-X enable/mask, PCIe device control. Everything else is read-only.

use std::os::fd::BorrowedFd;
use std::sync::Mutex;
use vfio_core::device::{irq, region, IrqInfo, RegionInfo};
use vfio_core::{DeviceInfo, Errno, MigrationCore, VfioDevice};

/// Config space size.
pub const CONFIG_SIZE: usize = 4096;
/// Offset of the PCI Express capability.
pub const PCIE_CAP: usize = 0x40;
/// Offset of the MSI-X capability.
pub const MSIX_CAP: usize = 0x70;
/// PCIe Device Capabilities: Function Level Reset capable.
pub const DEVCAP_FLR: u32 = 1 << 28;
/// PCIe Device Control: Initiate Function Level Reset.
pub const DEVCTL_BCR_FLR: u16 = 1 << 15;
/// Offset of the MSI-X table in BAR0.
pub const MSIX_TABLE_OFFSET: u32 = 0x4000;
/// Offset of the MSI-X PBA in BAR0.
pub const MSIX_PBA_OFFSET: u32 = 0x5000;
/// MSI-X vectors.
pub const MSIX_VECTORS: u16 = 1;

/// The identity a function shows in config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIdentity {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// 24-bit class code (base class, subclass, prog-if), e.g. 0x038000.
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

/// A memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Size in bytes: a power of two (PCI requires it; QEMU refuses anything else).
    pub size: u64,
    pub prefetchable: bool,
}

/// What a variant driver provides to the PCI core.
pub trait PciVariant: Send + Sync {
    /// Config-space identity.
    fn identity(&self) -> PciIdentity;
    /// Memory BARs by index (0, 2, 4 for 64-bit BARs). Each is 64-bit.
    fn bars(&self) -> [Option<Bar>; 6];
    /// A read inside BAR `bar` (offset and length already checked against the BAR size).
    fn bar_read(&self, bar: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// A write inside BAR `bar`.
    fn bar_write(&self, bar: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;
    /// A file descriptor backing BAR `bar` (for mmap), with its offset.
    fn bar_fd(&self, _bar: u32) -> Option<(BorrowedFd<'_>, u64)> {
        None
    }
    /// Before the function reset (`reset_prepare` of the PCI error handlers).
    fn reset_prepare(&self) {}
    /// The function-level reset itself (the hardware side).
    fn function_reset(&self) -> Result<(), Errno>;
    /// After the function reset (`reset_done`).
    fn reset_done(&self) {}
    /// The device fd was opened.
    fn open(&self) -> Result<(), Errno> {
        Ok(())
    }
    /// The device fd was closed.
    fn close(&self) {}
    /// The migration core, if this variant supports migration.
    fn migration(&self) -> Option<&MigrationCore> {
        None
    }
}

/// Writable masks and emulated registers of the config space.
#[derive(Clone)]
struct Config {
    bytes: [u8; CONFIG_SIZE],
    /// Per-byte writable masks.
    wmask: [u8; CONFIG_SIZE],
}

/// An emulated PCI function.
pub struct PciDevice<V: PciVariant> {
    variant: V,
    bars: [Option<Bar>; 6],
    /// Config lock: the config space. Never held while calling into the variant.
    config: Mutex<Config>,
    /// The pristine config space, for resets.
    initial: Config,
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<V: PciVariant> PciDevice<V> {
    /// Builds the function. `EINVAL` if a BAR size is not a power of two (≥ 4 KiB) or a BAR sits
    /// at an odd index (64-bit BARs take two slots).
    pub fn new(variant: V) -> Result<PciDevice<V>, Errno> {
        let bars = variant.bars();
        for (i, b) in bars.iter().enumerate() {
            if let Some(b) = b {
                if i % 2 != 0 || !b.size.is_power_of_two() || b.size < 4096 {
                    return Err(Errno::EINVAL);
                }
            }
        }
        let id = variant.identity();
        let mut c = Config {
            bytes: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
        };
        let b = &mut c.bytes;
        put16(b, 0x00, id.vendor);
        put16(b, 0x02, id.device);
        put16(b, 0x06, 1 << 4); // status: capabilities list
        b[0x08] = id.revision;
        b[0x09] = id.class as u8;
        b[0x0a] = (id.class >> 8) as u8;
        b[0x0b] = (id.class >> 16) as u8;
        b[0x0e] = 0; // header type 0
        for (i, bar) in bars.iter().enumerate() {
            if let Some(bar) = bar {
                let flags = 0b100 | if bar.prefetchable { 0b1000 } else { 0 };
                put32(b, 0x10 + 4 * i, flags);
            }
        }
        put16(b, 0x2c, id.subsystem_vendor);
        put16(b, 0x2e, id.subsystem);
        b[0x34] = PCIE_CAP as u8;
        b[0x3d] = 0; // no INTx pin: a VF signals through MSI-X
                     // PCI Express capability: id 0x10, next MSI-X, version 2, endpoint.
        b[PCIE_CAP] = 0x10;
        b[PCIE_CAP + 1] = MSIX_CAP as u8;
        put16(b, PCIE_CAP + 2, 0x0002);
        put32(b, PCIE_CAP + 4, DEVCAP_FLR);
        // MSI-X: id 0x11, last capability, table size N-1, table/PBA in BAR0.
        b[MSIX_CAP] = 0x11;
        b[MSIX_CAP + 1] = 0;
        put16(b, MSIX_CAP + 2, MSIX_VECTORS - 1);
        put32(b, MSIX_CAP + 4, MSIX_TABLE_OFFSET);
        put32(b, MSIX_CAP + 8, MSIX_PBA_OFFSET);

        let w = &mut c.wmask;
        put16(w, 0x04, 0x0407); // command: I/O, memory, bus master, INTx disable
        w[0x3c] = 0xff; // interrupt line
        put16(w, PCIE_CAP + 8, 0x7cff | DEVCTL_BCR_FLR); // device control
        put16(w, MSIX_CAP + 2, 0xc000); // MSI-X enable, function mask
        let initial = c.clone();
        Ok(PciDevice {
            variant,
            bars,
            config: Mutex::new(c),
            initial,
        })
    }

    /// The variant driver.
    pub fn variant(&self) -> &V {
        &self.variant
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Config> {
        self.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// BAR register value as read: address bits masked by size, flag bits.
    fn bar_reg(&self, c: &Config, slot: usize) -> u32 {
        let raw = get32(&c.bytes, 0x10 + 4 * slot);
        let (bar, high) = if slot % 2 == 0 {
            (self.bars[slot], false)
        } else {
            (self.bars[slot - 1], true)
        };
        let Some(bar) = bar else {
            return 0;
        };
        let mask = !(bar.size - 1);
        if high {
            raw & (mask >> 32) as u32
        } else {
            (raw & mask as u32 & !0xf) | (raw & 0xf)
        }
    }

    fn config_read(&self, offset: usize, buf: &mut [u8]) {
        let c = self.lock();
        for (i, out) in buf.iter_mut().enumerate() {
            let at = offset + i;
            *out = if (0x10..0x28).contains(&at) {
                let slot = (at - 0x10) / 4;
                self.bar_reg(&c, slot).to_le_bytes()[(at - 0x10) % 4]
            } else {
                c.bytes[at]
            };
        }
    }

    /// Writes config space; returns whether the write asked for an FLR.
    fn config_write(&self, offset: usize, data: &[u8]) -> bool {
        let mut c = self.lock();
        for (i, &v) in data.iter().enumerate() {
            let at = offset + i;
            if (0x10..0x28).contains(&at) {
                // BAR address bits: any write is kept; reads mask by size (sizing protocol).
                let slot = (at - 0x10) / 4;
                let byte_in = (at - 0x10) % 4;
                let present = if slot % 2 == 0 {
                    self.bars[slot].is_some()
                } else {
                    self.bars[slot - 1].is_some()
                };
                if present {
                    let flags_mask = if slot % 2 == 0 && byte_in == 0 {
                        0xf0
                    } else {
                        0xff
                    };
                    c.bytes[at] = (c.bytes[at] & !flags_mask) | (v & flags_mask);
                }
                continue;
            }
            let m = c.wmask[at];
            c.bytes[at] = (c.bytes[at] & !m) | (v & m);
        }
        let ctl = get16(&c.bytes, PCIE_CAP + 8);
        if ctl & DEVCTL_BCR_FLR != 0 {
            // Initiate-FLR reads back as zero.
            put16(&mut c.bytes, PCIE_CAP + 8, ctl & !DEVCTL_BCR_FLR);
            return true;
        }
        false
    }

    /// The function-level reset: `reset_prepare`, the function's reset, config space back to
    /// its reset values (BAR addresses kept), `reset_done`.
    pub fn flr(&self) -> Result<(), Errno> {
        self.variant.reset_prepare();
        let r = self.variant.function_reset();
        {
            let mut c = self.lock();
            let bars: Vec<u8> = c.bytes[0x10..0x28].to_vec();
            c.bytes = self.initial.bytes;
            c.bytes[0x10..0x28].copy_from_slice(&bars);
        }
        self.variant.reset_done();
        r
    }

    fn bar_of_region(&self, index: u32) -> Option<Bar> {
        if index < 6 {
            self.bars[index as usize]
        } else {
            None
        }
    }

    fn check(size: u64, offset: u64, len: usize) -> Result<(), Errno> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Errno::EINVAL),
        }
    }
}

impl<V: PciVariant> VfioDevice for PciDevice<V> {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: vfio_core::device::DEVICE_FLAGS_PCI | vfio_core::device::DEVICE_FLAGS_RESET,
            num_regions: region::COUNT,
            num_irqs: irq::COUNT,
        }
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo, Errno> {
        use vfio_core::device::{
            REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ, REGION_INFO_FLAG_WRITE,
        };
        let rw = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE;
        let (flags, size) = match index {
            region::CONFIG => (rw, CONFIG_SIZE as u64),
            i if i < 6 => match self.bar_of_region(i) {
                Some(b) => {
                    let mmap = if self.variant.bar_fd(i).is_some() {
                        REGION_INFO_FLAG_MMAP
                    } else {
                        0
                    };
                    (rw | mmap, b.size)
                }
                None => (0, 0),
            },
            region::ROM | region::VGA => (0, 0),
            _ => return Err(Errno::EINVAL),
        };
        Ok(RegionInfo { index, flags, size })
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if index == region::CONFIG {
            Self::check(CONFIG_SIZE as u64, offset, buf.len())?;
            self.config_read(offset as usize, buf);
            return Ok(());
        }
        let bar = self.bar_of_region(index).ok_or(Errno::EINVAL)?;
        Self::check(bar.size, offset, buf.len())?;
        self.variant.bar_read(index, offset, buf)
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        if index == region::CONFIG {
            Self::check(CONFIG_SIZE as u64, offset, data.len())?;
            if self.config_write(offset as usize, data) {
                tracing::info!("FLR initiated through config space");
                return self.flr();
            }
            return Ok(());
        }
        let bar = self.bar_of_region(index).ok_or(Errno::EINVAL)?;
        Self::check(bar.size, offset, data.len())?;
        self.variant.bar_write(index, offset, data)
    }

    fn region_fd(&self, index: u32) -> Option<(BorrowedFd<'_>, u64)> {
        self.bar_of_region(index)?;
        self.variant.bar_fd(index)
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo, Errno> {
        use vfio_core::device::{IRQ_INFO_EVENTFD, IRQ_INFO_NORESIZE};
        let count = match index {
            irq::MSIX => u32::from(MSIX_VECTORS),
            irq::INTX | irq::MSI | irq::ERR | irq::REQ => 0,
            _ => return Err(Errno::EINVAL),
        };
        let flags = if count > 0 {
            IRQ_INFO_EVENTFD | IRQ_INFO_NORESIZE
        } else {
            0
        };
        Ok(IrqInfo {
            index,
            flags,
            count,
        })
    }

    fn set_irqs(&self, index: u32, _flags: u32, start: u32, count: u32) -> Result<(), Errno> {
        let info = self.irq_info(index)?;
        if count == 0 && start == 0 {
            return Ok(()); // disable / no-op
        }
        match start.checked_add(count) {
            Some(end) if end <= info.count => Ok(()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn reset(&self) -> Result<(), Errno> {
        self.flr()
    }

    fn open(&self) -> Result<(), Errno> {
        self.variant.open()
    }

    fn close(&self) {
        self.variant.close()
    }

    fn migration(&self) -> Option<&MigrationCore> {
        self.variant.migration()
    }
}
