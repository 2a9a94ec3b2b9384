//! Our server driven by a third-party client: rust-vmm's `vfio_user` crate.
//!
//! Quirks of that crate (0.1.7) worked around here, not in the server:
//! - it ignores error replies (it reads a data payload after them and would block), so only
//!   valid requests are sent through it;
//! - its DEVICE_GET_INFO request puts the whole message size (32) in `argsz`;
//! - `resettable()` is inverted (`flags & RESET != RESET`), so it reports `false` for a device
//!   that advertises reset;
//! - it requires a `capabilities` object, with `migration.pgsize` when present, in the VERSION
//!   reply — our server echoes the migration capability it was offered.

mod common;
use common::*;
use vfio_core::device::{
    region, REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ, REGION_INFO_FLAG_WRITE,
};
use xe_pf::Platform;

#[test]
fn rust_vmm_client_talks_to_our_server() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path(), Platform::Bmg, 1, 4 << 20);
    // VERSION and DEVICE_GET_INFO and every DEVICE_GET_REGION_INFO happen in `new`.
    let mut c = rust_vmm_vfio_user::Client::new(&h.sockets[0]).expect("rust-vmm client connects");
    assert!(
        !c.resettable(),
        "their inverted check; we do advertise RESET"
    );
    let bar0 = c.region(region::BAR0).expect("BAR0");
    assert_eq!(bar0.size, 16 << 20);
    assert_eq!(
        bar0.flags & (REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE),
        3
    );
    let bar2 = c.region(region::BAR2).expect("BAR2");
    assert_eq!(bar2.size, 4 << 20);
    assert_ne!(bar2.flags & REGION_INFO_FLAG_MMAP, 0, "LMEM is mappable");
    assert!(bar2.file_offset.is_some(), "the LMEM fd was passed");
    assert_eq!(c.region(region::CONFIG).unwrap().size, 4096);
    assert_eq!(c.region(1).unwrap().size, 0);

    // REGION_READ of config space.
    let mut id = [0u8; 4];
    c.region_read(region::CONFIG, 0, &mut id).unwrap();
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), 0x8086);
    assert_eq!(u16::from_le_bytes([id[2], id[3]]), h.pf.device_id());
    // REGION_WRITE / READ of VF_SW_FLAG and of LMEM.
    c.region_write(region::BAR0, 0x190244, &0xabad_1deau32.to_le_bytes())
        .unwrap();
    let mut r = [0u8; 4];
    c.region_read(region::BAR0, 0x190244, &mut r).unwrap();
    assert_eq!(u32::from_le_bytes(r), 0xabad_1dea);
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    c.region_write(region::BAR2, 0x1000, &data).unwrap();
    let mut back = vec![0u8; 8192];
    c.region_read(region::BAR2, 0x1000, &mut back).unwrap();
    assert_eq!(back, data);
    // IRQ info.
    let msix = c.get_irq_info(2).unwrap();
    assert_eq!(msix.count, 1);
    // And the write really reached the VF.
    assert_eq!(h.pf.vf(1).unwrap().hw.read_reg(0x190244), 0xabad_1dea);
    c.shutdown().unwrap();
}
