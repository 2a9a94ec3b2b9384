//! Platforms, provisioning, migration support, BAR0 and GGTT, idle memory.

mod common;
use common::*;
use mig_io::Errno;
use xe_pf::hw::ggtt::{make_pte, pte_vfid, PTE_LM, PTE_PRESENT};
use xe_pf::hw::{self as vf, med_vf_sw_flag, vf_sw_flag};
use xe_pf::pf::VfProvision;
use xe_pf::{GucVersion, PfConfig, Platform, SriovVfio, XePf};

#[test]
fn every_spec_id_maps_to_its_platform() {
    let table: &[(Platform, &[u16])] = &[
        (
            Platform::Ptl,
            &[
                0xB080, 0xB081, 0xB082, 0xB083, 0xB084, 0xB085, 0xB086, 0xB087, 0xB08F, 0xB090,
                0xB0A0, 0xB0B0,
            ],
        ),
        (Platform::Wcl, &[0xFD80, 0xFD81]),
        (
            Platform::Bmg,
            &[
                0xE202, 0xE209, 0xE20B, 0xE20C, 0xE20D, 0xE210, 0xE211, 0xE212, 0xE216, 0xE220,
                0xE221, 0xE222, 0xE223,
            ],
        ),
    ];
    let mut n = 0;
    for (p, ids) in table {
        assert_eq!(p.device_ids(), *ids);
        for &id in *ids {
            assert_eq!(Platform::from_pci_id(0x8086, id), Ok(*p), "{id:#x}");
            n += 1;
        }
    }
    assert_eq!(n, 27);
    assert!(Platform::Bmg.has_vram() && !Platform::Ptl.has_vram() && !Platform::Wcl.has_vram());
    assert!(Platform::ALL.iter().all(|p| p.gt_count() == 2));
    // Unknown ids and other vendors are refused.
    assert_eq!(Platform::from_pci_id(0x8086, 0x56A0), Err(Errno::ENODEV));
    assert_eq!(Platform::from_pci_id(0x10DE, 0xE202), Err(Errno::ENODEV));
    assert_eq!(Platform::from_pci_id(0x1002, 0xB080), Err(Errno::ENODEV));
    // A PF cannot be built with another platform's id.
    let mut cfg = PfConfig::new(Platform::Bmg);
    cfg.device_id = 0xB080;
    assert_eq!(XePf::new(cfg).unwrap_err(), Errno::ENODEV);
}

#[test]
fn migration_supported_follows_guc_and_memirq() {
    let with = |v: GucVersion, memirq: bool, force: bool| {
        let mut cfg = PfConfig::new(Platform::Ptl);
        cfg.guc_versions = vec![GucVersion::new(70, 60, 0), v];
        cfg.memirq = memirq;
        cfg.force_migration = force;
        SriovVfio::migration_supported(&*XePf::new(cfg).unwrap())
    };
    assert!(!with(GucVersion::new(70, 53, 9), true, false));
    assert!(with(GucVersion::new(70, 54, 0), true, false));
    assert!(with(GucVersion::new(71, 0, 0), true, false));
    assert!(!with(GucVersion::new(70, 54, 0), false, false));
    assert!(
        with(GucVersion::new(70, 53, 9), false, true),
        "debug override"
    );
    assert!(
        with(GucVersion::new(69, 0, 0), true, true),
        "debug override"
    );
}

#[test]
fn provisioning_rules() {
    let mut cfg = PfConfig::new(Platform::Bmg);
    cfg.lmem_size = 1 << 30;
    let pf = XePf::new(cfg).unwrap();
    let p = |lmem| VfProvision {
        lmem,
        ggtt: 64 << 20,
    };
    assert_eq!(
        pf.enable_vfs(4, p(512 << 20)),
        Err(Errno::ENOSPC),
        "LMEM over-provisioned"
    );
    assert_eq!(pf.enable_vfs(0, p(0)), Err(Errno::EINVAL));
    assert_eq!(pf.enable_vfs(2, p(4097)), Err(Errno::EINVAL));
    // 4 GiB GGTT less the PF's 256 MiB holds 60 ranges of 64 MiB, not 61.
    let big = VfProvision {
        lmem: 0,
        ggtt: 64 << 20,
    };
    assert_eq!(
        pf.enable_vfs(61, big),
        Err(Errno::ENOSPC),
        "GGTT over-provisioned"
    );
    pf.enable_vfs(60, big).unwrap();
    assert_eq!(pf.enable_vfs(1, big), Err(Errno::EBUSY));
    let ranges: Vec<_> = (1..=60).map(|i| pf.vf(i).unwrap().hw.ggtt()).collect();
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            assert!(a.end() <= b.base || b.end() <= a.base);
        }
    }
    pf.disable_vfs();
    assert_eq!(pf.num_vfs(), 0);
    pf.enable_vfs(2, p(512 << 20)).unwrap();
    assert_eq!(pf.vf(2).unwrap().hw.lmem_size(), 512 << 20);
    assert_eq!(pf.vf(3).unwrap_err(), Errno::EINVAL);

    let ptl = XePf::new(PfConfig::new(Platform::Ptl)).unwrap();
    assert_eq!(
        ptl.enable_vfs(1, p(4096)),
        Err(Errno::EINVAL),
        "no LMEM on PTL"
    );
    let mut native = PfConfig::new(Platform::Ptl);
    native.sriov_pf = false;
    assert_eq!(
        XePf::new(native).unwrap().enable_vfs(1, p(0)),
        Err(Errno::EPERM)
    );
}

#[test]
fn bar0_registers_round_trip_at_real_offsets() {
    let pf = pf_with(Platform::Bmg, 2, 4 << 20);
    let hw = pf.vf(1).unwrap().hw.clone();
    for n in 0..4 {
        hw.mmio_write(vf_sw_flag(n), &(0x1111_0000 + n as u32).to_le_bytes())
            .unwrap();
        hw.mmio_write(med_vf_sw_flag(n), &(0x2222_0000 + n as u32).to_le_bytes())
            .unwrap();
    }
    assert_eq!(vf_sw_flag(0), 0x190240);
    assert_eq!(med_vf_sw_flag(3), 0x19031c);
    let mut b = [0u8; 16];
    hw.mmio_read(0x190240, &mut b).unwrap();
    assert_eq!(
        b,
        [0, 0, 0x11, 0x11, 1, 0, 0x11, 0x11, 2, 0, 0x11, 0x11, 3, 0, 0x11, 0x11]
    );
    let f = hw.sw_flags();
    assert_eq!(
        f.media,
        [0x2222_0000, 0x2222_0001, 0x2222_0002, 0x2222_0003]
    );
    // Unaligned reads assemble bytes; odd writes are ignored; unknown offsets read zero.
    let mut two = [0u8; 2];
    hw.mmio_read(0x190241, &mut two).unwrap();
    assert_eq!(two, [0x00, 0x11]);
    hw.mmio_write(0x190242, &[0xff]).unwrap();
    assert_eq!(hw.read_reg(0x190240), 0x1111_0000);
    assert_eq!(hw.read_reg(0x10), 0);
    // Out of BAR bounds.
    assert_eq!(hw.mmio_read(16 << 20, &mut b[..4]), Err(Errno::EINVAL));
    assert_eq!(hw.mmio_write(u64::MAX - 1, &[0; 4]), Err(Errno::EINVAL));
    // The other VF's registers are its own.
    assert_eq!(pf.vf(2).unwrap().hw.read_reg(0x190240), 0);
    // GGTT base/size registers.
    let g = hw.ggtt();
    assert_eq!(
        u64::from(hw.read_reg(vf::GGTT_BASE_LO)),
        g.base & 0xffff_ffff
    );
    assert_eq!(u64::from(hw.read_reg(vf::GGTT_SIZE_LO)), g.size);
}

#[test]
fn ggtt_writes_outside_the_range_have_no_effect() {
    let pf = pf_with(Platform::Bmg, 2, 4 << 20);
    let vf1 = pf.vf(1).unwrap().hw.clone();
    let vf2 = pf.vf(2).unwrap().hw.clone();
    let r1 = vf1.ggtt();
    let r2 = vf2.ggtt();
    let win = |addr: u64| vf::GGTT_WINDOW + addr / 4096 * 8;
    // In range: written, VFID forced to the VF's own (the guest tried 7).
    let pte = make_pte(0x5000, true, 7);
    vf1.mmio_write(win(r1.base), &pte.to_le_bytes()).unwrap();
    let got = vf1.ptes()[0];
    assert_eq!(got & !0xffc, 0x5000 | PTE_LM | PTE_PRESENT);
    assert_eq!(pte_vfid(got), 1);
    let mut b = [0u8; 8];
    vf1.mmio_read(win(r1.base), &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b), got);
    // Into VF2's range, below and above: nothing changes anywhere.
    let before2 = vf2.ptes();
    for addr in [r2.base, r2.base + 4096, r1.base - 4096, r1.end(), 0] {
        vf1.mmio_write(win(addr), &make_pte(0x9000, true, 1).to_le_bytes())
            .unwrap();
        vf1.mmio_read(win(addr), &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 0, "read outside range at {addr:#x}");
    }
    assert_eq!(vf2.ptes(), before2);
    assert_eq!(vf1.ptes().iter().filter(|&&p| p != 0).count(), 1);
    assert!(vf1.saw_bad_access());
}

/// A 16 GiB-LMEM BMG PF with 4 VFs, nothing touched, costs < 64 MiB of RSS (child process).
#[test]
fn idle_pf_costs_little_memory() {
    if let Some(out) = in_child("idle_pf_costs_little_memory") {
        let grew = child_value(&out, "RSS_GROWTH");
        eprintln!("idle 16 GiB BMG PF with 4 VFs: RSS +{} KiB", grew / 1024);
        assert!(grew < 64 << 20, "RSS grew by {grew} bytes");
        return;
    }
    let before = proc_status("VmRSS");
    let mut cfg = PfConfig::new(Platform::Bmg);
    cfg.lmem_size = 16 << 30;
    let pf = XePf::new(cfg).unwrap();
    pf.enable_vfs(
        4,
        VfProvision {
            lmem: 4 << 30,
            ggtt: 64 << 20,
        },
    )
    .unwrap();
    assert_eq!(pf.vf(4).unwrap().hw.lmem_size(), 4 << 30);
    let after = proc_status("VmHWM");
    println!("RSS_GROWTH={}", after.saturating_sub(before));
}
