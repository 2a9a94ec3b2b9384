//! LMEM dirty tracking sees every write the device makes: the job engine's writes through the
//! GGTT and BAR2 writes that reach the device as region accesses — and nothing else.

mod common;
use common::pf;
use std::time::Duration;
use vfio_core::device::region;
use vfio_core::VfioDevice;
use xe_guest::{DirectAccess, Job, Workload};
use xe_pf::hw::dirty::DIRTY_GRANULE as G;
use xe_pf::Platform;
use xe_vfio_pci::{PciFunction, XeVfioPci};

#[test]
fn engine_and_bar2_writes_are_marked() {
    let pf = pf(Platform::Bmg, 1, 8 << 20);
    let dev = XeVfioPci::probe(PciFunction::vf_of(&pf, 1).unwrap()).unwrap();
    let hw = pf.vf(1).unwrap().hw.clone();
    // Ring in the first GGTT page (LMEM page 0), data from LMEM offset 4096 on.
    let mut w = Workload::setup(DirectAccess(hw.clone()), true, 4096, 1 << 20, 1).unwrap();
    assert!(hw.wait_engine_settled(Duration::from_secs(10)));
    hw.dirty().start();
    assert_eq!(hw.dirty().dirty_bytes(), 0);

    // A BAR2 write through the device (past the workload's data area).
    dev.region_write(region::BAR2, 100 * G + 5, &[1, 2, 3])
        .unwrap();
    assert_eq!(hw.dirty().take(), vec![(100 * G, 101 * G)]);

    // An engine FILL of 64 KiB at data offset 5 × 64 KiB: LMEM [4096 + 5G, 4096 + 6G).
    w.queue(Job::Fill {
        dst: (5 * G) as u32,
        len: G as u32,
        pattern: 0xabcd_ef01,
    })
    .unwrap();
    w.doorbell().unwrap();
    w.wait_idle(Duration::from_secs(10)).unwrap();
    w.verify().unwrap();
    let d = hw.dirty().take();
    // The ring page (the job was fetched, not written) is not dirty; the filled range is.
    assert!(d.contains(&(5 * G, 7 * G)), "{d:?}");
    assert!(d.iter().all(|&(s, e)| s >= 5 * G && e <= 7 * G), "{d:?}");

    // Reads mark nothing; after stop nothing is kept.
    let mut b = [0u8; 16];
    dev.region_read(region::BAR2, 0, &mut b).unwrap();
    assert!(hw.dirty().take().is_empty());
    hw.dirty().stop();
    dev.region_write(region::BAR2, 0, &[9]).unwrap();
    assert_eq!(hw.dirty().dirty_bytes(), 0);
}
