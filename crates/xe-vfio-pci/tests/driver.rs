//! The variant driver: arcs → PF calls, refusals, binding rules, config space.

mod common;
use common::*;
use std::sync::Arc;
use vfio_core::device::region;
use vfio_core::{DeviceState as S, Errno, MigrationFlags, VfioDevice};
use xe_pf::{GucVersion, PfConfig, Platform, SriovVfio, XePf};
use xe_vfio_pci::{PciFunction, VirtFn, XeVfioPci};

fn set(dev: &impl VfioDevice, s: S) -> Result<Option<vfio_core::MigStream>, Errno> {
    dev.migration().unwrap().set_state(s)
}

#[test]
fn every_arc_makes_exactly_its_pf_call() {
    let pf = pf(Platform::Bmg, 2, 4 << 20);
    let (dev, rec) = recorded(&pf, 2);
    let core = dev.migration().unwrap();
    assert_eq!(
        core.flags(),
        MigrationFlags::STOP_COPY | MigrationFlags::P2P
    );
    assert_eq!(core.state(), S::Running);

    set(&dev, S::RunningP2p).unwrap();
    assert_eq!(rec.take(), ["suspend_device(2)"]);
    set(&dev, S::Stop).unwrap();
    assert_eq!(
        rec.take(),
        Vec::<String>::new(),
        "RUNNING_P2P → STOP does nothing"
    );
    set(&dev, S::RunningP2p).unwrap();
    assert_eq!(
        rec.take(),
        Vec::<String>::new(),
        "STOP → RUNNING_P2P does nothing"
    );
    set(&dev, S::Running).unwrap();
    assert_eq!(rec.take(), ["resume_device(2)"]);

    let s = set(&dev, S::StopCopy)
        .unwrap()
        .unwrap()
        .into_save()
        .unwrap();
    assert_eq!(rec.take(), ["suspend_device(2)", "stop_copy_enter(2)"]);
    let mut data = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
    }
    assert_eq!(data.len() as u64, pf.stream_len(2).unwrap());
    set(&dev, S::Stop).unwrap();
    assert_eq!(rec.take(), ["stop_copy_exit(2)"]);
    assert_eq!(s.read(&mut buf), Err(Errno::ENODEV));

    let r = set(&dev, S::Resuming)
        .unwrap()
        .unwrap()
        .into_resume()
        .unwrap();
    assert_eq!(rec.take(), ["resume_data_enter(2)"]);
    r.write(&data).unwrap();
    set(&dev, S::Stop).unwrap();
    assert_eq!(rec.take(), ["resume_data_exit(2)"]);
    set(&dev, S::Running).unwrap();
    assert_eq!(rec.take(), ["resume_device(2)"]);

    assert_eq!(core.data_size().unwrap(), pf.stop_copy_size(2).unwrap());
    assert_eq!(rec.take(), ["stop_copy_size(2)"]);
}

#[test]
fn refused_requests_stop_the_vf() {
    let pf = pf(Platform::Ptl, 1, 0);
    let (dev, rec) = recorded(&pf, 1);
    assert_eq!(set(&dev, S::PreCopy).unwrap_err(), Errno::EINVAL);
    assert_eq!(rec.take(), ["error(1)"]);
    // The PF stopped the VF: pausing is refused until an FLR.
    assert_eq!(set(&dev, S::RunningP2p).unwrap_err(), Errno::EPERM);
    assert_eq!(rec.take(), ["suspend_device(1)"]);
    assert_eq!(dev.migration().unwrap().state(), S::Running);
    dev.reset().unwrap();
    assert_eq!(rec.take(), ["flr_prepare(1)", "wait_flr_done(1)"]);
    set(&dev, S::Stop).unwrap();
    assert_eq!(rec.take(), ["suspend_device(1)"]);
    // STOP_COPY → PRE_COPY: refused by the state machine.
    set(&dev, S::StopCopy).unwrap();
    rec.take();
    assert_eq!(set(&dev, S::PreCopyP2p).unwrap_err(), Errno::EINVAL);
    assert_eq!(rec.take(), ["error(1)"]);
}

#[test]
fn failing_resume_data_exit_keeps_resuming() {
    let pf = pf(Platform::Ptl, 1, 0);
    let (dev, rec) = recorded(&pf, 1);
    let r = set(&dev, S::Resuming)
        .unwrap()
        .unwrap()
        .into_resume()
        .unwrap();
    r.write(&xe_pf::migration::wire::trailer()[..10]).unwrap();
    assert_eq!(set(&dev, S::Stop).unwrap_err(), Errno::EIO);
    assert_eq!(dev.migration().unwrap().state(), S::Resuming);
    assert_eq!(
        rec.take(),
        [
            "suspend_device(1)",
            "resume_data_enter(1)",
            "resume_data_exit(1)"
        ]
    );
    assert_eq!(
        r.write(b"x"),
        Err(Errno::ENODEV),
        "stream disabled when leaving"
    );
    dev.reset().unwrap();
    assert_eq!(dev.migration().unwrap().state(), S::Running);
}

#[test]
fn binding_rules() {
    // A PF without migration support: the VF binds, without migration.
    let mut cfg = PfConfig::new(Platform::Bmg);
    cfg.guc_versions = vec![GucVersion::new(70, 53, 9); 2];
    let old = XePf::new(cfg).unwrap();
    old.enable_vfs(
        1,
        xe_pf::pf::VfProvision {
            lmem: 1 << 20,
            ggtt: 1 << 20,
        },
    )
    .unwrap();
    let dev = bound(&old, 1);
    assert!(dev.migration().is_none());
    assert_eq!(dev.variant().vfid(), Some(1));

    let good = pf(Platform::Bmg, 3, 1 << 20);
    let f = PciFunction::vf_of(&good, 3).unwrap();
    // Not in the id table.
    let mut other = f.clone();
    other.device = 0x56a0;
    assert_eq!(XeVfioPci::probe(other).err(), Some(Errno::ENODEV));
    let mut amd = f.clone();
    amd.vendor = 0x1002;
    assert_eq!(XeVfioPci::probe(amd).err(), Some(Errno::ENODEV));
    // A VF whose PF is not bound to xe.
    let mut orphan = f.clone();
    orphan.virtfn = Some(VirtFn { index: 2, pf: None });
    assert_eq!(XeVfioPci::probe(orphan).err(), Some(Errno::ENODEV));
    // Not a VF: plain vfio-pci behaviour.
    let mut physfn = f.clone();
    physfn.virtfn = None;
    let plain = XeVfioPci::probe(physfn).unwrap();
    assert!(plain.migration().is_none() && plain.variant().vfid().is_none());
    // VF index 2 is vfid 3.
    assert_eq!(XeVfioPci::probe(f).unwrap().variant().vfid(), Some(3));
    assert!(xe_vfio_pci::id_table().count() == 27);
}

fn cfg16(dev: &impl VfioDevice, at: u64) -> u16 {
    let mut b = [0u8; 2];
    dev.region_read(region::CONFIG, at, &mut b).unwrap();
    u16::from_le_bytes(b)
}
fn cfg32(dev: &impl VfioDevice, at: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.region_read(region::CONFIG, at, &mut b).unwrap();
    u32::from_le_bytes(b)
}
fn wcfg32(dev: &impl VfioDevice, at: u64, v: u32) {
    dev.region_write(region::CONFIG, at, &v.to_le_bytes())
        .unwrap();
}

#[test]
fn config_space_identity_bars_and_flr() {
    let pf = pf(Platform::Bmg, 1, 3 << 20);
    let dev = bound(&pf, 1);
    assert_eq!(cfg16(&dev, 0), 0x8086);
    assert_eq!(cfg16(&dev, 2), pf.device_id());
    assert_eq!(cfg32(&dev, 8), 0x0380_0000 | u32::from(pf.revision()));
    assert_eq!(dev.region_info(region::BAR0).unwrap().size, 16 << 20);
    assert_eq!(
        dev.region_info(region::BAR2).unwrap().size,
        4 << 20,
        "3 MiB quota → 4 MiB BAR"
    );
    assert_eq!(dev.region_info(1).unwrap().size, 0);
    assert_eq!(dev.region_info(region::CONFIG).unwrap().size, 4096);
    assert_eq!(dev.region_info(9), Err(Errno::EINVAL));
    // BAR sizing: all-ones → size mask with flag bits.
    assert_eq!(cfg32(&dev, 0x10), 0b0100);
    wcfg32(&dev, 0x10, 0xffff_ffff);
    wcfg32(&dev, 0x14, 0xffff_ffff);
    assert_eq!(cfg32(&dev, 0x10), 0xff00_0004);
    assert_eq!(cfg32(&dev, 0x14), 0xffff_ffff);
    wcfg32(&dev, 0x18, 0xffff_ffff);
    assert_eq!(
        cfg32(&dev, 0x18),
        0xffc0_000c,
        "BAR2: 4 MiB, 64-bit, prefetchable"
    );
    wcfg32(&dev, 0x20, 0xffff_ffff);
    assert_eq!(cfg32(&dev, 0x20), 0, "no BAR4");
    wcfg32(&dev, 0x10, 0xfe00_0000);
    assert_eq!(cfg32(&dev, 0x10), 0xfe00_0004);
    // Read-only fields stay read-only.
    wcfg32(&dev, 0, 0x1234_5678);
    wcfg32(&dev, 8, 0);
    assert_eq!(cfg16(&dev, 0), 0x8086);
    assert_eq!(cfg32(&dev, 8) >> 8, 0x038000);
    // Capabilities: PCIe with FLR, then MSI-X.
    let cap = cfg16(&dev, 0x34) as u64 & 0xff;
    assert_eq!(cfg16(&dev, cap) & 0xff, 0x10);
    assert_ne!(cfg32(&dev, cap + 4) & (1 << 28), 0, "FLR capable");
    let msix = cfg16(&dev, cap) as u64 >> 8;
    assert_eq!(cfg16(&dev, msix) & 0xff, 0x11);
    // Out of bounds.
    let mut b = [0u8; 8];
    assert_eq!(
        dev.region_read(region::CONFIG, 4092, &mut b),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        dev.region_read(region::BAR2, 4 << 20, &mut b[..1]),
        Err(Errno::EINVAL)
    );
    // BAR2 past the quota reads zero.
    dev.region_read(region::BAR2, (3 << 20) + 8, &mut b)
        .unwrap();
    assert_eq!(b, [0; 8]);
    // FLR through config space: command register cleared, VF state cleared.
    wcfg32(&dev, 4, 0x0006);
    dev.region_write(region::BAR0, 0x190240, &7u32.to_le_bytes())
        .unwrap();
    let devctl = cap + 8;
    dev.region_write(region::CONFIG, devctl, &0x8000u16.to_le_bytes())
        .unwrap();
    assert_eq!(
        cfg16(&dev, devctl) & 0x8000,
        0,
        "initiate-FLR reads as zero"
    );
    assert_eq!(cfg16(&dev, 4), 0);
    dev.region_read(region::BAR0, 0x190240, &mut b[..4])
        .unwrap();
    assert_eq!(b[..4], [0; 4]);
    assert_eq!(cfg32(&dev, 0x10), 0xfe00_0004, "BAR address survives FLR");
}

#[test]
fn ptl_has_no_bar2() {
    let pf = pf(Platform::Ptl, 1, 0);
    let dev = bound(&pf, 1);
    assert_eq!(dev.region_info(region::BAR2).unwrap().size, 0);
    assert_eq!(cfg32(&dev, 0x18), 0);
    let mut b = [0u8; 4];
    assert_eq!(dev.region_read(region::BAR2, 0, &mut b), Err(Errno::EINVAL));
    let _ = Arc::strong_count(&pf);
}

#[test]
fn close_returns_the_vf_to_running() {
    let pf = pf(Platform::Bmg, 1, 1 << 20);
    let (dev, rec) = recorded(&pf, 1);
    let hw = dev.variant().hw().clone();
    hw.write_reg(xe_pf::hw::vf_sw_flag(0), 9);
    // Closed in STOP_COPY: the save is cancelled and the VF resumed through the real arcs.
    set(&dev, S::StopCopy).unwrap();
    rec.take();
    dev.close();
    assert_eq!(
        rec.take(),
        ["stop_copy_exit(1)", "resume_device(1)"],
        "STOP_COPY → STOP → RUNNING_P2P → RUNNING"
    );
    assert!(hw.engine_running());
    assert_eq!(
        hw.read_reg(xe_pf::hw::vf_sw_flag(0)),
        9,
        "registers persist across close"
    );
    // Closed in RESUMING with an incomplete stream: the walk fails, an FLR recovers the VF.
    dev.open().unwrap();
    set(&dev, S::Resuming).unwrap();
    rec.take();
    dev.close();
    assert_eq!(
        rec.take(),
        ["resume_data_exit(1)", "flr_prepare(1)", "wait_flr_done(1)"]
    );
    assert_eq!(dev.migration().unwrap().state(), S::Running);
    assert!(hw.engine_running());
    set(&dev, S::Stop).unwrap();
}
