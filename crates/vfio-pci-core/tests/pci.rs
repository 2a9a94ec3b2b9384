//! vfio-pci-core on its own, with a fake variant: config space masks, the BAR sizing protocol,
//! the PCIe and MSI-X capabilities, region dispatch, and the FLR sequence.

use std::sync::Mutex;
use vfio_core::device::{irq, region, REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ};
use vfio_core::{Errno, VfioDevice};
use vfio_pci_core::*;

/// A variant with a 16 MiB BAR0 and a 64 KiB prefetchable BAR2 of plain memory, recording the
/// reset hooks in order.
#[derive(Default)]
struct Fake {
    mem: Mutex<Vec<u8>>,
    log: Mutex<Vec<&'static str>>,
}

impl Fake {
    fn log(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl PciVariant for Fake {
    fn identity(&self) -> PciIdentity {
        PciIdentity {
            vendor: 0x8086,
            device: 0xe202,
            revision: 0x01,
            class: 0x038000,
            subsystem_vendor: 0x8086,
            subsystem: 0x1234,
        }
    }
    fn bars(&self) -> [Option<Bar>; 6] {
        let mut b = [None; 6];
        b[0] = Some(Bar {
            size: 16 << 20,
            prefetchable: false,
        });
        b[2] = Some(Bar {
            size: 64 << 10,
            prefetchable: true,
        });
        b
    }
    fn bar_read(&self, bar: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if bar != 2 {
            buf.fill(0xee);
            return Ok(());
        }
        let m = self.mem.lock().unwrap();
        let at = offset as usize;
        buf.copy_from_slice(&m[at..at + buf.len()]);
        Ok(())
    }
    fn bar_write(&self, bar: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        if bar != 2 {
            return Err(Errno::EIO);
        }
        let mut m = self.mem.lock().unwrap();
        let at = offset as usize;
        m[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn reset_prepare(&self) {
        self.log.lock().unwrap().push("reset_prepare");
    }
    fn function_reset(&self) -> Result<(), Errno> {
        self.log.lock().unwrap().push("function_reset");
        self.mem.lock().unwrap().fill(0);
        Ok(())
    }
    fn reset_done(&self) {
        self.log.lock().unwrap().push("reset_done");
    }
}

fn dev() -> PciDevice<Fake> {
    let f = Fake::default();
    *f.mem.lock().unwrap() = vec![0; 64 << 10];
    PciDevice::new(f).unwrap()
}

fn cfg_read(d: &PciDevice<Fake>, at: u64, n: usize) -> u32 {
    let mut b = [0u8; 4];
    d.region_read(region::CONFIG, at, &mut b[..n]).unwrap();
    u32::from_le_bytes(b)
}

fn cfg_write(d: &PciDevice<Fake>, at: u64, v: u32, n: usize) {
    d.region_write(region::CONFIG, at, &v.to_le_bytes()[..n])
        .unwrap();
}

#[test]
fn config_space_identity_and_masks() {
    let d = dev();
    assert_eq!(cfg_read(&d, 0x00, 4), 0xe202_8086);
    assert_eq!(cfg_read(&d, 0x08, 4), 0x0380_0001, "class and revision");
    assert_eq!(cfg_read(&d, 0x2c, 4), 0x1234_8086, "subsystem");
    // Read-only: ids, class, status, capabilities pointer.
    cfg_write(&d, 0x00, 0xffff_ffff, 4);
    cfg_write(&d, 0x08, 0xffff_ffff, 4);
    cfg_write(&d, 0x06, 0xffff, 2);
    cfg_write(&d, 0x34, 0xff, 1);
    assert_eq!(cfg_read(&d, 0x00, 4), 0xe202_8086);
    assert_eq!(cfg_read(&d, 0x08, 4), 0x0380_0001);
    assert_eq!(
        cfg_read(&d, 0x06, 2),
        1 << 4,
        "status: capabilities list only"
    );
    assert_eq!(cfg_read(&d, 0x34, 1), PCIE_CAP as u32);
    // Command: I/O, memory, bus master, INTx disable only.
    cfg_write(&d, 0x04, 0xffff, 2);
    assert_eq!(cfg_read(&d, 0x04, 2), 0x0407);
    // Interrupt line is read-write, the pin read-only (0: no INTx).
    cfg_write(&d, 0x3c, 0xffff, 2);
    assert_eq!(cfg_read(&d, 0x3c, 2), 0x00ff);
    // Extended space reads as zero and ignores writes.
    cfg_write(&d, 0x100, 0xffff_ffff, 4);
    assert_eq!(cfg_read(&d, 0x100, 4), 0);
    // Out of the 4 KiB: EINVAL.
    let mut b = [0u8; 4];
    assert_eq!(
        d.region_read(region::CONFIG, 4094, &mut b),
        Err(Errno::EINVAL)
    );
}

#[test]
fn bar_sizing_protocol() {
    let d = dev();
    // BAR0: 64-bit memory, 16 MiB, not prefetchable.
    assert_eq!(cfg_read(&d, 0x10, 4), 0b0100);
    cfg_write(&d, 0x10, 0xffff_ffff, 4);
    cfg_write(&d, 0x14, 0xffff_ffff, 4);
    assert_eq!(cfg_read(&d, 0x10, 4), !((16u32 << 20) - 1) | 0b0100);
    assert_eq!(cfg_read(&d, 0x14, 4), 0xffff_ffff);
    // BAR2: 64 KiB, prefetchable.
    cfg_write(&d, 0x18, 0xffff_ffff, 4);
    assert_eq!(cfg_read(&d, 0x18, 4), 0xffff_0000 | 0b1100);
    // Absent BARs read 0 whatever is written.
    cfg_write(&d, 0x20, 0xffff_ffff, 4);
    assert_eq!(cfg_read(&d, 0x20, 4), 0);
    // An address is kept, masked to the size; the flag bits never change.
    cfg_write(&d, 0x10, 0xfe12_3456, 4);
    cfg_write(&d, 0x14, 0x0000_0001, 4);
    assert_eq!(cfg_read(&d, 0x10, 4), 0xfe00_0004);
    assert_eq!(cfg_read(&d, 0x14, 4), 1);
}

#[test]
fn pcie_and_msix_capabilities() {
    let d = dev();
    let pcie = PCIE_CAP as u64;
    let msix = MSIX_CAP as u64;
    assert_eq!(
        cfg_read(&d, pcie, 2),
        0x10 | (MSIX_CAP as u32) << 8,
        "id, next"
    );
    assert_eq!(cfg_read(&d, pcie + 2, 2), 0x0002, "v2 endpoint");
    assert_ne!(cfg_read(&d, pcie + 4, 4) & DEVCAP_FLR, 0, "FLR capable");
    assert_eq!(cfg_read(&d, msix, 2), 0x11, "MSI-X, last capability");
    assert_eq!(cfg_read(&d, msix + 2, 2), u32::from(MSIX_VECTORS) - 1);
    assert_eq!(cfg_read(&d, msix + 4, 4), MSIX_TABLE_OFFSET);
    assert_eq!(cfg_read(&d, msix + 8, 4), MSIX_PBA_OFFSET);
    // Enable and function mask are writable; the table size is not.
    cfg_write(&d, msix + 2, 0xffff, 2);
    assert_eq!(
        cfg_read(&d, msix + 2, 2),
        0xc000 | (u32::from(MSIX_VECTORS) - 1)
    );
    let i = d.irq_info(irq::MSIX).unwrap();
    assert_eq!(i.count, u32::from(MSIX_VECTORS));
    assert_eq!(d.irq_info(irq::INTX).unwrap().count, 0);
    assert_eq!(d.irq_info(9).unwrap_err(), Errno::EINVAL);
    assert_eq!(d.set_irqs(irq::MSIX, 0, 0, 2), Err(Errno::EINVAL));
}

#[test]
fn regions_dispatch_to_the_variant() {
    let d = dev();
    let r2 = d.region_info(region::BAR2).unwrap();
    assert_eq!(r2.size, 64 << 10);
    assert_ne!(r2.flags & REGION_INFO_FLAG_READ, 0);
    assert_eq!(r2.flags & REGION_INFO_FLAG_MMAP, 0, "no fd, no mmap");
    assert_eq!(
        d.region_info(region::BAR2 + 2).unwrap().size,
        0,
        "absent BAR4"
    );
    assert_eq!(d.region_info(region::CONFIG).unwrap().size, 4096);
    assert_eq!(d.region_info(region::COUNT).unwrap_err(), Errno::EINVAL);
    d.region_write(region::BAR2, 0x100, b"hello").unwrap();
    let mut b = [0u8; 5];
    d.region_read(region::BAR2, 0x100, &mut b).unwrap();
    assert_eq!(&b, b"hello");
    // Offsets are checked here before the variant sees them.
    assert_eq!(
        d.region_read(region::BAR2, (64 << 10) - 2, &mut b),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        d.region_read(region::BAR2, u64::MAX, &mut b),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        d.region_read(1, 0, &mut b),
        Err(Errno::EINVAL),
        "upper half of BAR0"
    );
    // The variant's errno comes back as it is.
    assert_eq!(d.region_write(region::BAR0, 0, &[1]), Err(Errno::EIO));
}

#[test]
fn flr_through_config_space_and_device_reset() {
    let d = dev();
    cfg_write(&d, 0x04, 0x0006, 2);
    cfg_write(&d, 0x10, 0xfe00_0000, 4);
    cfg_write(&d, 0x3c, 0x0b, 1);
    d.region_write(region::BAR2, 0, &[7; 16]).unwrap();
    let ctl = PCIE_CAP as u64 + 8;
    cfg_write(&d, ctl, u32::from(DEVCTL_BCR_FLR), 2);
    assert_eq!(
        d.variant().log(),
        ["reset_prepare", "function_reset", "reset_done"]
    );
    assert_eq!(
        cfg_read(&d, ctl, 2) & u32::from(DEVCTL_BCR_FLR),
        0,
        "reads back 0"
    );
    assert_eq!(cfg_read(&d, 0x04, 2), 0, "command back to its reset value");
    assert_eq!(cfg_read(&d, 0x3c, 1), 0, "interrupt line reset");
    assert_eq!(cfg_read(&d, 0x10, 4), 0xfe00_0004, "BAR addresses kept");
    let mut b = [1u8; 16];
    d.region_read(region::BAR2, 0, &mut b).unwrap();
    assert_eq!(b, [0; 16], "the function itself was reset");
    // VFIO_DEVICE_RESET takes the same path.
    d.reset().unwrap();
    assert_eq!(
        d.variant().log(),
        ["reset_prepare", "function_reset", "reset_done"]
    );
    // A write without the initiate bit is not an FLR.
    cfg_write(&d, ctl, 0x0010, 2);
    assert!(d.variant().log().is_empty());
}

#[test]
fn bad_bars_are_refused() {
    struct Odd;
    impl PciVariant for Odd {
        fn identity(&self) -> PciIdentity {
            Fake::default().identity()
        }
        fn bars(&self) -> [Option<Bar>; 6] {
            let mut b = [None; 6];
            b[1] = Some(Bar {
                size: 4096,
                prefetchable: false,
            });
            b
        }
        fn bar_read(&self, _: u32, _: u64, _: &mut [u8]) -> Result<(), Errno> {
            Ok(())
        }
        fn bar_write(&self, _: u32, _: u64, _: &[u8]) -> Result<(), Errno> {
            Ok(())
        }
        fn function_reset(&self) -> Result<(), Errno> {
            Ok(())
        }
    }
    assert_eq!(PciDevice::new(Odd).err(), Some(Errno::EINVAL), "odd slot");
}
