//! The VF job engine: correctness against a reference, pause semantics, no panics on guest input.

mod common;
use common::*;
use proptest::prelude::*;
use std::time::Duration;
use xe_guest::Job;
use xe_pf::hw as vf;
use xe_pf::{Platform, SriovVfio};

#[test]
fn thousand_mixed_jobs_match_the_reference() {
    for platform in [Platform::Bmg, Platform::Ptl] {
        let lmem = if platform.has_vram() { 8 << 20 } else { 0 };
        let pf = pf_with(platform, 1, lmem);
        let mut w = workload(&pf, 1, 42);
        let mut ops = [0u32; 3];
        for i in 0..1000 {
            let j = w.random_job();
            ops[match j {
                Job::Fill { .. } => 0,
                Job::Copy { .. } => 1,
                Job::Hash { .. } => 2,
            }] += 1;
            // Keep the ring from filling: wait now and then.
            if w.queue(j).is_err() {
                w.wait_idle(Duration::from_secs(10)).unwrap();
                w.queue(j).unwrap();
            }
            if i % 7 == 0 {
                w.doorbell().unwrap();
            }
        }
        w.doorbell().unwrap();
        w.wait_idle(Duration::from_secs(30)).unwrap();
        w.verify().unwrap();
        assert!(ops.iter().all(|&n| n > 250), "mix {ops:?}");
        let hw = pf.vf(1).unwrap().hw.clone();
        assert_eq!(hw.read_reg(vf::SEQNO), 1000);
        assert_eq!(hw.read_reg(vf::JOBS_DONE), 1000);
        assert_eq!(hw.read_reg(vf::STATUS) & vf::STATUS_IDLE, vf::STATUS_IDLE);
    }
}

#[test]
fn paused_vf_records_doorbells_and_runs_them_after_resume() {
    let pf = pf_with(Platform::Bmg, 1, 8 << 20);
    let mut w = workload(&pf, 1, 7);
    w.submit_random(10).unwrap();
    w.wait_idle(Duration::from_secs(10)).unwrap();
    let hw = pf.vf(1).unwrap().hw.clone();
    pf.suspend_device(1).unwrap();
    let bells = hw.read_reg(vf::DOORBELLS);
    w.submit_random(50).unwrap();
    assert!(hw.wait_engine_settled(Duration::from_secs(10)));
    assert_eq!(hw.read_reg(vf::SEQNO), 10, "nothing runs while paused");
    assert_eq!(hw.read_reg(vf::DOORBELLS), bells + 50, "doorbells recorded");
    assert_ne!(hw.read_reg(vf::RING_TAIL), hw.read_reg(vf::RING_HEAD));
    assert_ne!(hw.read_reg(vf::STATUS) & vf::STATUS_PAUSED, 0);
    assert!(
        w.verify().is_err(),
        "the model is ahead of the paused engine"
    );
    pf.resume_device(1).unwrap();
    w.wait_idle(Duration::from_secs(10)).unwrap();
    assert_eq!(hw.read_reg(vf::SEQNO), 60);
    w.verify().unwrap();
}

/// A register once the engine has settled (run what it could, up to 10 s).
fn settled_reg(hw: &xe_pf::hw::VfHw, off: u64) -> u32 {
    assert!(hw.wait_engine_settled(Duration::from_secs(10)));
    hw.read_reg(off)
}

#[test]
fn bad_jobs_report_errors_and_the_engine_keeps_going() {
    let pf = pf_with(Platform::Bmg, 1, 8 << 20);
    let mut w = workload(&pf, 1, 9);
    let hw = pf.vf(1).unwrap().hw.clone();
    // A FILL outside the mapped GGTT pages → GGTT fault.
    w.queue(Job::Fill {
        dst: 7 << 20,
        len: 4,
        pattern: 1,
    })
    .unwrap();
    w.doorbell().unwrap();
    assert_eq!(settled_reg(&hw, vf::ERROR), vf::ERR_FAULT);
    assert_ne!(hw.read_reg(vf::STATUS) & vf::STATUS_ERROR, 0);
    hw.write_reg(vf::ERROR, 0);
    assert_eq!(hw.read_reg(vf::ERROR), 0);
    // A bad ring size drops the queue with ERR_RING.
    hw.write_reg(vf::RING_SIZE, 100);
    hw.write_reg(vf::RING_TAIL, 64);
    assert_eq!(settled_reg(&hw, vf::ERROR), vf::ERR_RING);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Random MMIO writes (registers, GGTT window, anywhere) and random ring contents never
    /// panic, and the VF still answers afterwards.
    #[test]
    fn random_mmio_and_jobs_never_panic(
        writes in prop::collection::vec((0u64..(16 << 20), any::<u32>()), 1..200),
        ring in prop::collection::vec(any::<u32>(), 64),
        lens in prop::collection::vec(0usize..16, 1..20),
    ) {
        let pf = pf_with(Platform::Bmg, 1, 1 << 20);
        let hw = pf.vf(1).unwrap().hw.clone();
        // Map a few pages so jobs can reach memory.
        let base = hw.ggtt().base;
        for i in 0..8u64 {
            let pte = xe_pf::hw::ggtt::make_pte(i * 4096, true, 0);
            hw.mmio_write(vf::GGTT_WINDOW + (base / 4096 + i) * 8, &pte.to_le_bytes()).unwrap();
        }
        let bytes: Vec<u8> = ring.iter().flat_map(|w| w.to_le_bytes()).collect();
        hw.lmem().unwrap().write(0, &bytes).unwrap();
        hw.write_reg(vf::RING_BASE, base as u32);
        hw.write_reg(vf::RING_SIZE, 256);
        for (off, v) in writes {
            let off = off & !3;
            let _ = hw.mmio_write(off, &v.to_le_bytes());
            // Also odd sizes at odd offsets.
            let _ = hw.mmio_write(off | 1, &v.to_le_bytes()[..3]);
        }
        for len in lens {
            let mut b = vec![0u8; len];
            let _ = hw.mmio_read(0x2000 + len as u64, &mut b);
        }
        hw.write_reg(vf::RING_TAIL, 128);
        prop_assert!(hw.wait_engine_settled(Duration::from_secs(10)));
        // Still alive and answering.
        let _ = hw.read_reg(vf::STATUS);
        prop_assert!(flr(&pf, 1).is_ok());
        prop_assert_eq!(hw.read_reg(vf::RING_TAIL), 0);
    }
}
