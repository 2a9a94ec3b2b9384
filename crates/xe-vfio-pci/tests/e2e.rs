//! In-process live migration end to end, and the failure paths.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vfio_core::device::region;
use vfio_core::{DeviceState as S, Errno, VfioDevice};
use vfio_pci_core::PciDevice;
use xe_guest::{GuestAccess, Workload};
use xe_pf::hw as vf;
use xe_pf::{Fault, GucOp, Platform};
use xe_vfio_pci::XeVfioPci;

/// The guest's view of a VF: through the VFIO regions, like a VMM's guest would be.
#[derive(Clone)]
struct Guest(Arc<PciDevice<XeVfioPci>>);

impl GuestAccess for Guest {
    fn mmio_read32(&self, off: u64) -> Result<u32, Errno> {
        let mut b = [0u8; 4];
        self.0.region_read(region::BAR0, off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn mmio_write32(&self, off: u64, v: u32) -> Result<(), Errno> {
        self.0.region_write(region::BAR0, off, &v.to_le_bytes())
    }
    fn mem_write(&self, _lmem: bool, addr: u64, data: &[u8]) -> Result<(), Errno> {
        self.0.region_write(region::BAR2, addr, data)
    }
    fn mem_read(&self, _lmem: bool, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.0.region_read(region::BAR2, addr, buf)
    }
}

fn read_all(s: &vfio_core::SaveStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn lmem(dev: &PciDevice<XeVfioPci>) -> Vec<u8> {
    let l = dev.variant().hw().lmem().unwrap();
    let mut v = vec![0u8; l.size() as usize];
    l.read(0, &mut v).unwrap();
    v
}

#[test]
fn live_migration_between_two_hosts_preserves_in_flight_work() {
    let host_a = pf(Platform::Bmg, 1, 16 << 20);
    let host_b = pf(Platform::Bmg, 3, 16 << 20);
    let src = Arc::new(bound(&host_a, 1));
    let dst = Arc::new(bound(&host_b, 3));
    let mut w = Workload::setup(Guest(src.clone()), true, 64 << 10, 1 << 20, 2026).unwrap();
    src.region_write(
        region::BAR0,
        vf::vf_sw_flag(2),
        &0xfeed_f00du32.to_le_bytes(),
    )
    .unwrap();
    src.region_write(
        region::BAR0,
        vf::med_vf_sw_flag(0),
        &0x0bad_cafeu32.to_le_bytes(),
    )
    .unwrap();

    // The workload keeps the VF busy: jobs in flight while the VMM starts migrating.
    w.submit_random(300).unwrap();
    let src_core = src.migration().unwrap();
    src_core.set_state(S::RunningP2p).unwrap();
    // A doorbell rung now must not be lost: P2P accepts MMIO but starts no work.
    let done_at_p2p = src.variant().hw().read_reg(vf::SEQNO);
    w.submit_random(25).unwrap();
    assert!(src
        .variant()
        .hw()
        .wait_engine_settled(Duration::from_secs(10)));
    assert_eq!(
        src.variant().hw().read_reg(vf::SEQNO),
        done_at_p2p,
        "no work in P2P"
    );
    src_core.set_state(S::Stop).unwrap();
    let stream = read_all(
        &src_core
            .set_state(S::StopCopy)
            .unwrap()
            .unwrap()
            .into_save()
            .unwrap(),
    );
    src_core.set_state(S::Stop).unwrap();
    let in_flight = w.in_flight().unwrap();
    assert!(in_flight >= 25, "{in_flight} jobs in flight");

    let dst_core = dst.migration().unwrap();
    dst_core.set_state(S::Stop).unwrap();
    let r = dst_core
        .set_state(S::Resuming)
        .unwrap()
        .unwrap()
        .into_resume()
        .unwrap();
    for chunk in stream.chunks(777_777) {
        r.write(chunk).unwrap();
    }
    dst_core.set_state(S::Stop).unwrap();

    // Bit for bit: LMEM, registers, GuC state, GGTT (VFID aside).
    let (sh, dh) = (src.variant().hw(), dst.variant().hw());
    assert!(lmem(&src) == lmem(&dst), "LMEM differs");
    assert_eq!(sh.sw_flags(), dh.sw_flags());
    for gt in 0..2 {
        assert_eq!(sh.guc_save(gt).unwrap(), dh.guc_save(gt).unwrap());
    }
    let strip = |p: Vec<u64>| {
        p.into_iter()
            .map(|x| xe_pf::hw::ggtt::pte_with_vfid(x, 0))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(sh.ptes()), strip(dh.ptes()));
    assert!(dh
        .ptes()
        .iter()
        .filter(|p| **p != 0)
        .all(|p| xe_pf::hw::ggtt::pte_vfid(*p) == 3));
    assert_ne!(sh.ggtt().base, dh.ggtt().base, "different GGTT base on B");

    dst_core.set_state(S::Running).unwrap();
    // Jobs resume only after the workload driver's GGTT fixups.
    let before = dh.read_reg(vf::SEQNO);
    assert!(dh.wait_engine_settled(Duration::from_secs(10)));
    assert_eq!(dh.read_reg(vf::SEQNO), before, "held until fixups");
    assert_ne!(dh.read_reg(vf::STATUS) & vf::STATUS_FIXUP_HOLD, 0);
    w.set_access(Guest(dst.clone()));
    assert!(w.fixups().unwrap());
    w.wait_idle(Duration::from_secs(20)).unwrap();
    w.verify().unwrap();
    assert_eq!(
        dh.read_reg(vf::SEQNO),
        w.last_seqno(),
        "the P2P doorbell's jobs ran on B"
    );
    assert_eq!(dh.read_reg(vf::SEQNO), 325);
    // And B keeps working.
    w.submit_random(50).unwrap();
    w.wait_idle(Duration::from_secs(20)).unwrap();
    w.verify().unwrap();
}

#[test]
fn guc_timeout_during_pause_then_reset_recovers() {
    let host = pf(Platform::Bmg, 1, 4 << 20);
    host.faults()
        .inject(1, Some(0), GucOp::Pause, Fault::Timeout, 1);
    let dev = bound(&host, 1);
    let core = dev.migration().unwrap();
    assert_eq!(core.set_state(S::Stop).unwrap_err(), Errno::ETIMEDOUT);
    assert_eq!(core.state(), S::Running);
    dev.reset().unwrap();
    assert_eq!(core.state(), S::Running);
    core.set_state(S::Stop).unwrap();
    core.set_state(S::Running).unwrap();
}

#[test]
fn flr_during_stop_copy_disables_the_stream() {
    let host = pf(Platform::Bmg, 1, 4 << 20);
    let dev = bound(&host, 1);
    let core = dev.migration().unwrap();
    let s = core
        .set_state(S::StopCopy)
        .unwrap()
        .unwrap()
        .into_save()
        .unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(s.read(&mut buf).unwrap(), 4096);
    dev.reset().unwrap();
    assert_eq!(s.read(&mut buf), Err(Errno::ENODEV));
    assert_eq!(core.state(), S::Running);
    assert!(dev.variant().hw().engine_running());
    // A new migration works.
    let s = core
        .set_state(S::StopCopy)
        .unwrap()
        .unwrap()
        .into_save()
        .unwrap();
    assert!(!read_all(&s).is_empty());
}

#[test]
fn reset_racing_set_state_never_deadlocks() {
    let host = pf(Platform::Ptl, 1, 0);
    let dev = Arc::new(bound(&host, 1));
    let stop = Arc::new(AtomicBool::new(false));
    // Both threads start together, and the racer always makes at least one request, however
    // the two cores are scheduled.
    let start = Arc::new(std::sync::Barrier::new(2));
    let racer = {
        let (dev, stop, start) = (dev.clone(), stop.clone(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            let mut n = 0u32;
            loop {
                let core = dev.migration().unwrap();
                let _ = core.set_state(if n % 2 == 0 { S::Stop } else { S::Running });
                n += 1;
                if stop.load(Ordering::Relaxed) {
                    return n;
                }
            }
        })
    };
    let dev2 = dev.clone();
    let resets = std::thread::spawn(move || {
        start.wait();
        for _ in 0..10_000 {
            dev2.migration().unwrap().reset_done();
        }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        resets.join().unwrap();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("deadlock: resets did not finish");
    stop.store(true, Ordering::Relaxed);
    let n = racer.join().unwrap();
    assert!(n > 0);
    // Still usable, and a final reset is applied.
    dev.migration().unwrap().reset_done();
    assert_eq!(dev.migration().unwrap().state(), S::Running);
}
