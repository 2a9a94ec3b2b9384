//! The PF control state machine: preconditions, errnos, FLR, faults.

mod common;
use common::*;
use mig_io::Errno;
use std::sync::Arc;
use std::time::Duration;
use xe_pf::control::CtlState;
use xe_pf::hw as vf;
use xe_pf::{Fault, GucOp, PfConfig, Platform, SriovVfio, XePf};

type Step = (
    &'static str,
    fn(&XePf) -> Result<(), Errno>,
    Result<(), Errno>,
);

fn pause(pf: &XePf) -> Result<(), Errno> {
    pf.suspend_device(1)
}
fn resume(pf: &XePf) -> Result<(), Errno> {
    pf.resume_device(1)
}
fn stop(pf: &XePf) -> Result<(), Errno> {
    pf.error(1)
}
fn save(pf: &XePf) -> Result<(), Errno> {
    pf.stop_copy_enter(1)
}
fn save_end(pf: &XePf) -> Result<(), Errno> {
    pf.stop_copy_exit(1)
}
fn restore(pf: &XePf) -> Result<(), Errno> {
    pf.resume_data_enter(1)
}
fn do_flr(pf: &XePf) -> Result<(), Errno> {
    flr(pf, 1)
}

/// Each row: a sequence from a fresh VF, with the result expected at every step.
#[test]
fn preconditions_table() {
    let ok = Ok(());
    let table: Vec<Vec<Step>> = vec![
        vec![
            ("pause", pause, ok),
            ("pause again", pause, Err(Errno::ESTALE)),
        ],
        vec![("resume running", resume, Err(Errno::EPERM))],
        vec![
            ("pause", pause, ok),
            ("resume", resume, ok),
            ("resume again", resume, Err(Errno::EPERM)),
        ],
        vec![("stop", stop, ok), ("stop again", stop, Err(Errno::ESTALE))],
        vec![
            ("stop", stop, ok),
            ("pause stopped", pause, Err(Errno::EPERM)),
        ],
        vec![
            ("stop", stop, ok),
            ("resume stopped", resume, Err(Errno::EPERM)),
        ],
        vec![
            ("stop", stop, ok),
            ("save stopped", save, Err(Errno::EPERM)),
        ],
        vec![
            ("stop", stop, ok),
            ("restore stopped", restore, Err(Errno::EPERM)),
        ],
        vec![("save running", save, Err(Errno::EPERM))],
        vec![("restore running", restore, Err(Errno::EPERM))],
        vec![
            ("pause", pause, ok),
            ("save", save, ok),
            ("resume saving", resume, Err(Errno::EBUSY)),
        ],
        vec![
            ("pause", pause, ok),
            ("save", save, ok),
            ("pause saving", pause, Err(Errno::ESTALE)),
        ],
        vec![
            ("pause", pause, ok),
            ("save", save, ok),
            ("restore while saving", restore, Err(Errno::EBUSY)),
        ],
        vec![
            ("pause", pause, ok),
            ("restore", restore, ok),
            ("resume restoring", resume, Err(Errno::EBUSY)),
        ],
        vec![
            ("pause", pause, ok),
            ("save", save, ok),
            ("save end", save_end, ok),
            ("resume", resume, ok),
        ],
        vec![
            ("stop", stop, ok),
            ("flr", do_flr, ok),
            ("pause after flr", pause, ok),
        ],
        vec![
            ("pause", pause, ok),
            ("flr", do_flr, ok),
            ("resume after flr", resume, Err(Errno::EPERM)),
            ("pause", pause, ok),
        ],
    ];
    for (i, row) in table.iter().enumerate() {
        let pf = pf_with(Platform::Ptl, 2, 0);
        for (name, f, want) in row {
            assert_eq!(f(&pf), *want, "row {i}: {name}");
        }
    }
}

#[test]
fn vfid_and_pf_checks() {
    let pf = pf_with(Platform::Bmg, 2, 4 << 20);
    for vfid in [0, 3, u32::MAX] {
        assert_eq!(pf.suspend_device(vfid), Err(Errno::EINVAL));
        assert_eq!(pf.stop_copy_size(vfid), Err(Errno::EINVAL));
        assert_eq!(pf.data_read(vfid, &mut [0; 4]), Err(Errno::EINVAL));
        assert_eq!(pf.flr_prepare(vfid), Err(Errno::EINVAL));
    }
    let mut cfg = PfConfig::new(Platform::Ptl);
    cfg.sriov_pf = false;
    let native = XePf::new(cfg).unwrap();
    assert_eq!(native.suspend_device(1), Err(Errno::EPERM));
    assert_eq!(native.wait_flr_done(1), Err(Errno::EPERM));
    assert!(!SriovVfio::migration_supported(&*native));
}

#[test]
fn pause_in_progress_is_ealready() {
    let pf = pf_with(Platform::Ptl, 1, 0);
    pf.faults()
        .inject(1, Some(0), GucOp::Pause, Fault::Timeout, 1);
    let p2 = pf.clone();
    let t = std::thread::spawn(move || p2.suspend_device(1));
    // The GT worker consumed the fault: the pause is in progress and will not be answered.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pf.faults().armed(1, Some(0), GucOp::Pause) {
        assert!(
            std::time::Instant::now() < deadline,
            "the pause never started"
        );
        std::thread::yield_now();
    }
    assert_eq!(pf.suspend_device(1), Err(Errno::EALREADY));
    assert_eq!(t.join().unwrap(), Err(Errno::ETIMEDOUT));
}

#[test]
fn guc_timeout_is_etimedout_and_flr_recovers() {
    let pf = pf_with(Platform::Bmg, 1, 8 << 20);
    let mut w = workload(&pf, 1, 3);
    pf.faults().inject(1, None, GucOp::Pause, Fault::Timeout, 2);
    assert_eq!(pf.suspend_device(1), Err(Errno::ETIMEDOUT));
    flr(&pf, 1).unwrap();
    let vf = pf.vf(1).unwrap();
    assert_eq!(vf.control_states(), vec![CtlState::Ready; 2]);
    // Runtime state cleared; the VF works again.
    assert_eq!(vf.hw.read_reg(vf::RING_SIZE), 0);
    pf.suspend_device(1).unwrap();
    pf.resume_device(1).unwrap();
    let _ = &mut w;
}

#[test]
fn busy_guc_is_retried_then_ebusy() {
    let pf = pf_with(Platform::Ptl, 1, 0);
    pf.faults().inject(1, Some(0), GucOp::Pause, Fault::Busy, 2);
    assert_eq!(pf.suspend_device(1), Ok(()), "two busy answers are retried");
    pf.resume_device(1).unwrap();
    pf.faults()
        .inject(1, Some(0), GucOp::Pause, Fault::Busy, 100);
    assert_eq!(pf.suspend_device(1), Err(Errno::EBUSY));
    pf.faults().clear();
}

#[test]
fn distinct_errors_on_two_gts_are_euclean() {
    let pf = pf_with(Platform::Ptl, 1, 0);
    pf.faults()
        .inject(1, Some(0), GucOp::Pause, Fault::Fail(Errno::EIO), 1);
    pf.faults()
        .inject(1, Some(1), GucOp::Pause, Fault::Fail(Errno::EPROTO), 1);
    assert_eq!(pf.suspend_device(1), Err(Errno::EUCLEAN));
    pf.faults()
        .inject(1, Some(0), GucOp::Resume, Fault::Fail(Errno::EIO), 1);
    pf.faults()
        .inject(1, Some(1), GucOp::Resume, Fault::Fail(Errno::EIO), 1);
    flr(&pf, 1).unwrap();
    pf.suspend_device(1).unwrap();
    assert_eq!(
        pf.resume_device(1),
        Err(Errno::EIO),
        "same error twice stays EIO"
    );
}

#[test]
fn flr_during_pause_and_save_ends_ready_and_cleared() {
    for during_save in [false, true] {
        let pf = pf_with(Platform::Bmg, 1, 8 << 20);
        let mut w = workload(&pf, 1, 5);
        let vf = pf.vf(1).unwrap();
        vf.hw.write_reg(vf::vf_sw_flag(0), 0xdead_beef);
        pf.suspend_device(1).unwrap();
        w.submit_random(5).unwrap();
        if during_save {
            pf.stop_copy_enter(1).unwrap();
            let mut b = [0u8; 100];
            assert_eq!(pf.data_read(1, &mut b), Ok(100));
        }
        flr(&pf, 1).unwrap();
        assert_eq!(vf.control_states(), vec![CtlState::Ready; 2]);
        assert_eq!(vf.hw.read_reg(vf::vf_sw_flag(0)), 0, "registers cleared");
        assert_eq!(
            vf.hw.engine_regs(),
            Default::default(),
            "engine queue cleared"
        );
        assert!(vf.hw.engine_running());
        // The save session is gone.
        assert_eq!(pf.data_read(1, &mut [0; 8]), Err(Errno::EINVAL));
        // Usable again.
        pf.suspend_device(1).unwrap();
        pf.stop_copy_enter(1).unwrap();
        pf.stop_copy_exit(1).unwrap();
        pf.resume_device(1).unwrap();
    }
}

#[test]
fn flr_timeout_then_recovery() {
    let pf = pf_with(Platform::Ptl, 1, 0);
    pf.faults()
        .inject(1, Some(1), GucOp::Flr, Fault::Timeout, 1);
    assert_eq!(flr(&pf, 1), Err(Errno::ETIMEDOUT));
    flr(&pf, 1).unwrap();
    let pf2: Arc<XePf> = pf.clone();
    assert_eq!(
        pf2.vf(1).unwrap().control_states(),
        vec![CtlState::Ready; 2]
    );
    pf.faults()
        .inject(1, Some(0), GucOp::Flr, Fault::Fail(Errno::EPROTO), 1);
    assert_eq!(flr(&pf, 1), Err(Errno::EIO));
    flr(&pf, 1).unwrap();
}

#[test]
fn a_trigger_failing_on_one_gt_changes_nothing() {
    let pf = pf_with(Platform::Ptl, 1, 0);
    pf.suspend_device(1).unwrap();
    pf.faults()
        .inject(1, Some(1), GucOp::Save, Fault::Fail(Errno::EPROTO), 1);
    assert_eq!(pf.stop_copy_enter(1), Err(Errno::EPROTO));
    assert_eq!(
        pf.vf(1).unwrap().control_states(),
        vec![CtlState::Paused; 2]
    );
    pf.faults()
        .inject(1, Some(1), GucOp::Restore, Fault::Timeout, 1);
    assert_eq!(pf.resume_data_enter(1), Err(Errno::ETIMEDOUT));
    assert_eq!(
        pf.vf(1).unwrap().control_states(),
        vec![CtlState::Paused; 2]
    );
    // Nothing is stuck: the VF resumes, and a save works.
    pf.resume_device(1).unwrap();
    pf.suspend_device(1).unwrap();
    pf.stop_copy_enter(1).unwrap();
    pf.stop_copy_exit(1).unwrap();
}
