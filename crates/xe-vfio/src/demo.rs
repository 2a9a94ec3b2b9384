//! `xe-vfio demo`: a live migration of a busy GPU VF between two emulated hosts, verified.
//!
//! Two PFs stand for two hosts; every VF is served on a real vfio-user socket. A guest driver
//! (the same one the tests use) works on VF1 of host A through the VMM's connection — GGTT
//! mappings, a job ring in LMEM, a data area, registers — and leaves jobs in flight when its
//! vCPUs stop. The VMM migrates the VF to VF3 of host B; the guest, resumed there, fixes up its
//! GGTT references, its queued jobs complete, and everything is checked against a reference.

use crate::ops;
use crate::remote::RemoteGuest;
use crate::serve::{start_host, HostSpec};
use crate::util::{human, CliError, Context};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vfio_user::{Client, ServerOptions};
use xe_guest::{GuestAccess, Workload};
use xe_pf::hw as vf;
use xe_pf::hw::mem::Commit;
use xe_pf::Platform;

const LMEM: u64 = 256 << 20;
const PATTERN_AT: u64 = 64 << 20;
const PATTERN_LEN: usize = 16 << 20;

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 11) as u8
}

fn step(n: u32, text: String) {
    println!("  [{n}/6] {text}");
}

/// Runs the demo; `Ok(())` only if everything verified.
pub fn demo() -> Result<(), CliError> {
    let dir = tempfile::tempdir().ctx(|| "creating a temporary directory".into())?;
    let stop = Arc::new(AtomicBool::new(false));
    let opts = ServerOptions::default();
    let spec = |vfs| HostSpec {
        platform: Platform::Bmg,
        vfs,
        lmem_per_vf: LMEM,
        lmem_commit: Commit::Reserved,
        pre_copy: false,
        ggtt_per_vf: xe_pf::pf::DEFAULT_VF_GGTT,
    };
    let a = start_host(&spec(2), &dir.path().join("host-a"), &stop, &opts)?;
    let b = start_host(&spec(3), &dir.path().join("host-b"), &stop, &opts)?;
    println!(
        "xe-vfio demo — live migration of an Intel Xe SR-IOV VF ({} {:#06x}, emulated)",
        Platform::Bmg.long_name(),
        a.pf.device_id()
    );
    println!(
        "  host A: PF with 2 VFs, host B: PF with 3 VFs, {} LMEM per VF, VFs on vfio-user sockets",
        human(LMEM)
    );
    let result = run(&a.sockets[0], &b.sockets[2]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in a.threads.into_iter().chain(b.threads) {
        let _ = t.join();
    }
    match &result {
        Ok(()) => println!(
            "PASS: the VF, its memory, registers and in-flight jobs survived the migration"
        ),
        Err(_) => println!("FAIL"),
    }
    result
}

fn run(src_sock: &std::path::Path, dst_sock: &std::path::Path) -> Result<(), CliError> {
    // The VMM's connections: one per VF, used for the guest's MMIO and for migration.
    let src = Arc::new(Mutex::new(
        Client::connect(src_sock).ctx(|| format!("connecting to {}", src_sock.display()))?,
    ));
    let dst = Arc::new(Mutex::new(
        Client::connect(dst_sock).ctx(|| format!("connecting to {}", dst_sock.display()))?,
    ));
    let guest_a = RemoteGuest(src.clone());

    // 1. The guest sets up its driver state on host A.
    let mut w = Workload::setup(guest_a.clone(), true, 64 << 10, 4 << 20, 0x5eed)
        .ctx(|| "guest: setting up the job ring".into())?;
    let pat: Vec<u8> = (0..PATTERN_LEN).map(pattern).collect();
    guest_a
        .mem_write(true, PATTERN_AT, &pat)
        .ctx(|| "guest: writing LMEM".into())?;
    guest_a
        .mmio_write32(vf::vf_sw_flag(0), 0xC0FF_EE00)
        .ctx(|| "guest: writing VF_SW_FLAG".into())?;
    guest_a
        .mmio_write32(vf::med_vf_sw_flag(1), 0x00DD_BA11)
        .ctx(|| "guest: writing MED_VF_SW_FLAG".into())?;
    let base_a = guest_a
        .mmio_read32(vf::GGTT_BASE_LO)
        .ctx(|| "guest: reading GGTT base".into())?;
    step(1, format!(
        "guest on A/vf1: 64 KiB job ring + 4 MiB data mapped at GGTT {base_a:#x}, {} pattern in LMEM, 2 scratch registers",
        human(PATTERN_LEN as u64)
    ));

    // 2. The guest keeps the GPU busy, then its vCPUs stop with work still queued.
    w.submit_random(300)
        .ctx(|| "guest: submitting jobs".into())?;
    w.wait_idle(Duration::from_secs(30))
        .ctx(|| "guest: waiting for jobs".into())?;
    for _ in 0..400 {
        let j = w.random_job();
        w.queue(j).ctx(|| "guest: queueing jobs".into())?;
    }
    w.doorbell().ctx(|| "guest: ringing the doorbell".into())?;

    // 3. Migrate (the VMM's sequence), timing the downtime.
    let report = {
        let mut s = src.lock().unwrap_or_else(|p| p.into_inner());
        let mut d = dst.lock().unwrap_or_else(|p| p.into_inner());
        ops::migrate(
            &mut *s,
            &mut *d,
            ops::MigrateOpts::default(),
            &mut |_, _| {},
        )?
    };
    let in_flight = w.in_flight().unwrap_or(0);
    step(
        2,
        format!(
            "guest submitted {} jobs; {} still in flight when the source stopped",
            w.last_seqno(),
            in_flight
        ),
    );
    step(
        3,
        format!(
            "migrated A/vf1 → B/vf3 over vfio-user: {} in {:.3} s ({:.0} MiB/s), downtime {:.1} ms",
            human(report.bytes),
            report.transfer_seconds,
            report.throughput_mib_s,
            report.downtime_ms
        ),
    );

    // 4. The guest runs on host B: GGTT fixups, then its queued jobs complete.
    let guest_b = RemoteGuest(dst.clone());
    w.set_access(guest_b.clone());
    let held = guest_b
        .mmio_read32(vf::STATUS)
        .ctx(|| "guest: reading STATUS".into())?
        & vf::STATUS_FIXUP_HOLD
        != 0;
    let base_b = guest_b
        .mmio_read32(vf::GGTT_BASE_LO)
        .ctx(|| "guest: reading GGTT base".into())?;
    w.fixups().ctx(|| "guest: GGTT fixups".into())?;
    w.wait_idle(Duration::from_secs(30))
        .ctx(|| "guest: waiting for jobs on B".into())?;
    step(4, format!(
        "guest on B/vf3: engine {} until fixups; GGTT {base_a:#x} → {base_b:#x} relocated; queued jobs completed",
        if held { "held" } else { "NOT held" }
    ));
    if !held {
        return Err(CliError::new(
            "the engine on B ran before the guest's GGTT fixups",
        ));
    }

    // 5. Verify everything on B.
    w.verify()
        .map_err(|e| CliError::new("job results on B differ from the reference").cause(e))?;
    let mut back = vec![0u8; PATTERN_LEN];
    guest_b
        .mem_read(true, PATTERN_AT, &mut back)
        .ctx(|| "reading LMEM on B".into())?;
    if back != pat {
        return Err(CliError::new("the LMEM pattern differs on B"));
    }
    let r0 = guest_b
        .mmio_read32(vf::vf_sw_flag(0))
        .ctx(|| "reading VF_SW_FLAG".into())?;
    let r1 = guest_b
        .mmio_read32(vf::med_vf_sw_flag(1))
        .ctx(|| "reading MED_VF_SW_FLAG".into())?;
    if (r0, r1) != (0xC0FF_EE00, 0x00DD_BA11) {
        return Err(CliError::new(format!(
            "registers differ on B: {r0:#x} {r1:#x}"
        )));
    }
    let seq = guest_b
        .mmio_read32(vf::SEQNO)
        .ctx(|| "reading SEQNO".into())?;
    step(5, format!(
        "verified on B: 4 MiB data area equals the reference, {} pattern intact, registers, seqno {seq}",
        human(PATTERN_LEN as u64)
    ));

    // 6. And the VF keeps working on B.
    w.submit_random(200)
        .ctx(|| "guest: submitting jobs on B".into())?;
    w.wait_idle(Duration::from_secs(30))
        .ctx(|| "guest: waiting on B".into())?;
    w.verify()
        .map_err(|e| CliError::new("new jobs on B differ from the reference").cause(e))?;
    let state = dst
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .device_state()
        .ctx(|| "reading B's state".into())?;
    step(
        6,
        format!(
            "200 more jobs ran correctly on B; B/vf3 is {state}, A/vf1 is {}",
            report.source_state
        ),
    );
    Ok(())
}
