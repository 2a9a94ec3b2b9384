//! PRE_COPY end to end (#14): the state machine over vfio-user, dirty tracking of every LMEM
//! write path verified bit for bit on a destination, refusals and aborts that leave the source
//! running with its data, and `xe-vfio migrate --pre-copy` between two `serve` processes.

mod common;

use common::{host, host_pre_copy, xe_vfio, Serve};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vfio_core::{DeviceState, Errno};
use vfio_user::{Client, ClientError, Relay};
use xe_guest::{GuestAccess, Workload};
use xe_pf::hw::{self as vf, VfHw};
use xe_pf::Platform;

const MIB: u64 = 1 << 20;
const BAR0: u32 = 0;
const BAR2: u32 = 2;

/// A guest reaching its VF through the VMM's vfio-user connection (MMIO and BAR2 accesses are
/// region accesses: the only way to write LMEM while PRE_COPY is offered). The connection can
/// be taken away (`None`) while another client — `xe-vfio migrate` — needs the socket.
#[derive(Clone)]
struct RemoteGuest(Arc<Mutex<Option<Client>>>);

impl RemoteGuest {
    fn new(c: Client) -> RemoteGuest {
        RemoteGuest(Arc::new(Mutex::new(Some(c))))
    }
    /// Runs `f` on the connection (the VMM's: migration steps go through it too).
    fn with<R>(&self, f: impl FnOnce(&mut Client) -> R) -> R {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(g.as_mut().expect("guest disconnected"))
    }
    fn set(&self, c: Option<Client>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = c;
    }
}

impl GuestAccess for RemoteGuest {
    fn mmio_read32(&self, off: u64) -> Result<u32, Errno> {
        self.with(|c| c.read32(BAR0, off)).map_err(|e| e.errno())
    }
    fn mmio_write32(&self, off: u64, v: u32) -> Result<(), Errno> {
        self.with(|c| c.write32(BAR0, off, v))
            .map_err(|e| e.errno())
    }
    fn mem_write(&self, lmem: bool, addr: u64, data: &[u8]) -> Result<(), Errno> {
        assert!(lmem, "BMG only");
        self.with(|c| {
            let max = c.max_xfer() as usize;
            for (i, chunk) in data.chunks(max).enumerate() {
                c.region_write(BAR2, addr + (i * max) as u64, chunk)?;
            }
            Ok::<(), ClientError>(())
        })
        .map_err(|e| e.errno())
    }
    fn mem_read(&self, lmem: bool, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        assert!(lmem, "BMG only");
        self.with(|c| {
            let max = c.max_xfer() as usize;
            for (i, chunk) in buf.chunks_mut(max).enumerate() {
                c.region_read(BAR2, addr + (i * max) as u64, chunk)?;
            }
            Ok::<(), ClientError>(())
        })
        .map_err(|e| e.errno())
    }
}

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).to_le_bytes()[1])
        .collect()
}

fn lmem_bytes(hw: &VfHw) -> Vec<u8> {
    let l = hw.lmem().unwrap();
    let mut v = vec![0u8; l.size() as usize];
    l.read(0, &mut v).unwrap();
    v
}

/// LMEM, registers, GuC state and GGTT (VFID field aside) of two VFs are equal.
fn assert_equivalent(src: &VfHw, dst: &VfHw) {
    let (a, b) = (lmem_bytes(src), lmem_bytes(dst));
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!("LMEM differs first at byte {i:#x}");
    }
    assert_eq!(src.sw_flags(), dst.sw_flags(), "registers differ");
    for gt in 0..2 {
        assert_eq!(
            src.guc_save(gt).unwrap(),
            dst.guc_save(gt).unwrap(),
            "GuC gt{gt}"
        );
    }
    let strip = |p: Vec<u64>| -> Vec<u64> {
        p.into_iter()
            .map(|x| vf::ggtt::pte_with_vfid(x, 0))
            .collect()
    };
    assert_eq!(strip(src.ptes()), strip(dst.ptes()), "GGTT differs");
}

fn info(c: &mut Client) -> (u64, u64) {
    let (_, i, d) = c.precopy_info(0).unwrap();
    (i, d)
}

/// One pre-copy round of everything reported ready now; returns the bytes moved.
fn round(relay: &mut Relay, src: &mut Client, dst: &mut Client) -> u64 {
    let (i, d) = info(src);
    relay
        .run_round(src, dst, (i + d).max(1), &mut |_| {})
        .unwrap()
}

#[test]
fn the_state_machine_over_vfio_user_is_the_kernels_with_pre_copy() {
    let dir = tempfile::tempdir().unwrap();
    let h = host_pre_copy(dir.path(), Platform::Bmg, 1, 4 * MIB);
    let mut c = Client::connect(&h.sockets[0]).unwrap();
    let flags = c.migration_flags().unwrap();
    assert_eq!(flags.bits(), 0x7, "STOP_COPY|P2P|PRE_COPY");
    let hw = h.pf.vf(1).unwrap().hw.clone();
    let mut checked = 0;
    for cur in DeviceState::ALL.into_iter().skip(1) {
        for new in DeviceState::ALL {
            // Reach `cur` (a reset returns the device to RUNNING first).
            c.reset().unwrap();
            assert_eq!(c.device_state().unwrap(), DeviceState::Running);
            c.set_device_state(cur).unwrap();
            assert_eq!(c.device_state().unwrap(), cur);
            let want = vfio_core::path(cur, new, flags);
            let got = c.set_device_state(new);
            if cur == DeviceState::Resuming && want.is_ok() && new != cur {
                // Leaving RESUMING validates the stream: nothing was written, so EIO, and the
                // device stays in RESUMING.
                assert_eq!(got.unwrap_err().errno(), Errno::EIO, "{cur} → {new}");
                assert_eq!(c.device_state().unwrap(), cur);
                checked += 1;
                continue;
            }
            match want {
                Ok(_) => {
                    got.unwrap_or_else(|e| panic!("{cur} → {new}: {e}"));
                    assert_eq!(c.device_state().unwrap(), new, "{cur} → {new}");
                    // What the VF does in each state: runs in RUNNING and PRE_COPY, else paused;
                    // dirty tracking exactly while a pre-copy save is open.
                    let runs = matches!(new, DeviceState::Running | DeviceState::PreCopy);
                    assert_eq!(hw.engine_running(), runs, "{cur} → {new}: engine");
                    let pre = matches!(new, DeviceState::PreCopy | DeviceState::PreCopyP2p)
                        || (new == DeviceState::StopCopy
                            && matches!(cur, DeviceState::PreCopy | DeviceState::PreCopyP2p));
                    assert_eq!(hw.dirty().tracking(), pre, "{cur} → {new}: tracking");
                }
                Err(e) => {
                    let got = got.expect_err(&format!("{cur} → {new} must be refused"));
                    assert_eq!(got.errno(), e, "{cur} → {new}");
                    assert_eq!(c.device_state().unwrap(), cur, "{cur} → {new}: refused");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 7 * 8);
    // MIG_PRECOPY_INFO only in the PRE_COPY states; the v2 opt-in turns the flags into an output.
    c.reset().unwrap();
    assert_eq!(c.precopy_info(5).unwrap_err().errno(), Errno::EINVAL);
    c.set_device_state(DeviceState::PreCopy).unwrap();
    let (flags_echo, initial, dirty) = c.precopy_info(5).unwrap();
    assert_eq!(
        (flags_echo, dirty),
        (5, 0),
        "v1: flags echoed, nothing dirty yet"
    );
    assert!(
        initial > 4 * MIB,
        "the initial data is the descriptor and all of LMEM"
    );
    c.set_precopy_info_v2().unwrap();
    assert_eq!(c.precopy_info(5).unwrap().0, 0, "v2: flags are an output");
    c.set_device_state(DeviceState::PreCopyP2p).unwrap();
    assert!(c.precopy_info(0).is_ok(), "valid in PRE_COPY_P2P too");
    c.set_device_state(DeviceState::StopCopy).unwrap();
    assert_eq!(c.precopy_info(0).unwrap_err().errno(), Errno::EINVAL);
}

#[test]
fn without_pre_copy_the_vf_is_exactly_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path(), Platform::Bmg, 1, 4 * MIB);
    let mut c = Client::connect(&h.sockets[0]).unwrap();
    assert_eq!(c.migration_flags().unwrap().bits(), 0x3);
    assert_eq!(
        c.set_device_state(DeviceState::PreCopy)
            .unwrap_err()
            .errno(),
        Errno::EINVAL
    );
    c.reset().unwrap();
    // Command 19 is unknown to a device without PRE_COPY; the v2 feature does not exist.
    assert_eq!(c.precopy_info(0).unwrap_err().errno(), Errno::EOPNOTSUPP);
    assert_eq!(c.set_precopy_info_v2().unwrap_err().errno(), Errno::ENOTTY);
    // BAR2 is mappable (its quota fills the BAR).
    let (info, fd, _) = c.region_info(BAR2).unwrap();
    assert!(fd.is_some() && info.flags & 4 != 0);
}

/// Every path that writes LMEM, between rounds and at the last instant, arrives bit for bit.
#[test]
fn every_lmem_write_path_reaches_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let a = host_pre_copy(&dir.path().join("a"), Platform::Bmg, 1, 16 * MIB);
    let b = host_pre_copy(&dir.path().join("b"), Platform::Bmg, 2, 16 * MIB);
    let mut dst = Client::connect(&b.sockets[1]).unwrap();
    let guest = RemoteGuest::new(Client::connect(&a.sockets[0]).unwrap());
    // BAR2 has no mmap while PRE_COPY is offered: every write traps.
    let (bar2, fd, _) = guest.with(|c| c.region_info(BAR2)).unwrap();
    assert!(
        fd.is_none() && bar2.flags & 4 == 0,
        "BAR2 must not be mappable"
    );
    let mut w = Workload::setup(guest.clone(), true, 64 << 10, 2 << 20, 0xfeed).unwrap();
    w.submit_random(50).unwrap();
    w.wait_idle(Duration::from_secs(10)).unwrap();
    guest.mmio_write32(vf::vf_sw_flag(2), 0x5151_a0a0).unwrap();

    dst.set_device_state(DeviceState::Resuming).unwrap();
    let mut relay = Relay::new();
    guest.with(|s| {
        s.set_device_state(DeviceState::PreCopy).unwrap();
        let first = round(&mut relay, s, &mut dst);
        assert!(
            first > 16 * MIB,
            "the initial data: descriptor and all of LMEM"
        );
        assert_eq!(info(s), (0, 0), "an idle VF has nothing dirty");
        // The temporary end of the stream: nothing ready is ENOMSG.
        let mut buf = [0u8; 64];
        assert_eq!(
            s.mig_data_read(&mut buf).unwrap_err().errno(),
            Errno::ENOMSG
        );
    });

    // Between rounds: the engine (jobs through the GGTT) and region writes to BAR2.
    w.submit_random(40).unwrap();
    w.wait_idle(Duration::from_secs(10)).unwrap();
    guest
        .mem_write(true, 9 * MIB + 123, &pattern(300_000, 1))
        .unwrap();
    guest.with(|s| {
        let (_, dirty) = info(s);
        assert!(dirty > 0, "engine and BAR2 writes are dirty");
        round(&mut relay, s, &mut dst);
    });
    guest.mem_write(true, 15 * MIB, &pattern(4096, 2)).unwrap();
    guest.with(|s| round(&mut relay, s, &mut dst));

    // The last instant: a write in PRE_COPY with no round after it, then the VF pauses and a
    // write lands in PRE_COPY_P2P, right before STOP_COPY; jobs stay queued (in flight).
    guest
        .mem_write(true, 3 * MIB + 7, &pattern(70_000, 3))
        .unwrap();
    guest
        .with(|s| s.set_device_state(DeviceState::PreCopyP2p))
        .unwrap();
    guest
        .mem_write(true, 12 * MIB - 5, &pattern(10, 4))
        .unwrap();
    for _ in 0..20 {
        let j = w.random_job();
        w.queue(j).unwrap();
    }
    w.doorbell().unwrap();
    guest.with(|s| {
        s.set_device_state(DeviceState::StopCopy).unwrap();
        relay.run(s, &mut dst, &mut |_| {}).unwrap();
        s.set_device_state(DeviceState::Stop).unwrap();
    });
    dst.set_device_state(DeviceState::Stop).unwrap();
    let (sh, dh) = (
        a.pf.vf(1).unwrap().hw.clone(),
        b.pf.vf(2).unwrap().hw.clone(),
    );
    assert_equivalent(&sh, &dh);
    assert!(!sh.dirty().tracking(), "tracking ends with the session");

    // The guest runs on the destination: fixups, its queued jobs complete, all as modelled.
    dst.set_device_state(DeviceState::Running).unwrap();
    w.set_access(RemoteGuest::new(dst));
    assert!(w.fixups().unwrap());
    w.wait_idle(Duration::from_secs(10)).unwrap();
    w.verify().unwrap();
}

/// A destination that cannot take the VF refuses it on the descriptor, while the source runs.
#[test]
fn an_incompatible_destination_is_refused_during_pre_copy() {
    let dir = tempfile::tempdir().unwrap();
    let a = host_pre_copy(&dir.path().join("a"), Platform::Bmg, 1, 16 * MIB);
    let small = host(&dir.path().join("small"), Platform::Bmg, 1, 8 * MIB);
    let ptl = host(&dir.path().join("ptl"), Platform::Ptl, 1, 0);
    let sh = a.pf.vf(1).unwrap().hw.clone();
    sh.lmem().unwrap().write(MIB, &pattern(1 << 16, 9)).unwrap();
    let before = lmem_bytes(&sh);
    for (dst, why) in [(&small.sockets[0], "LMEM"), (&ptl.sockets[0], "device")] {
        let out = xe_vfio(&[
            "migrate",
            "--from",
            a.sockets[0].to_str().unwrap(),
            "--to",
            dst.to_str().unwrap(),
            "--pre-copy",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("ENODEV"), "{err}");
        assert!(
            err.contains("the source is RUNNING again with its state intact"),
            "{why}: {err}"
        );
        // Refused on the descriptor: the first round failed at byte 0.
        assert!(err.contains("at byte 0"), "{why}: {err}");
        let mut c = Client::connect(&a.sockets[0]).unwrap();
        assert_eq!(c.device_state().unwrap(), DeviceState::Running);
        assert!(sh.engine_running() && !sh.dirty().tracking());
        assert!(lmem_bytes(&sh) == before, "source LMEM untouched");
    }
}

#[test]
fn reset_and_disconnect_end_a_pre_copy_session() {
    let dir = tempfile::tempdir().unwrap();
    let a = host_pre_copy(dir.path(), Platform::Bmg, 1, 4 * MIB);
    let sh = a.pf.vf(1).unwrap().hw.clone();
    let mut c = Client::connect(&a.sockets[0]).unwrap();
    c.set_device_state(DeviceState::PreCopy).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    assert_eq!(c.mig_data_read(&mut buf).unwrap(), buf.len());
    assert!(sh.dirty().tracking());
    // Reset: the session ends, the VF runs.
    c.reset().unwrap();
    assert_eq!(c.device_state().unwrap(), DeviceState::Running);
    assert_eq!(
        c.mig_data_read(&mut buf).unwrap_err().errno(),
        Errno::EINVAL
    );
    assert!(sh.engine_running() && !sh.dirty().tracking());
    // Disconnect in PRE_COPY_P2P: closing walks back (the VF stays paused in RUNNING_P2P,
    // then RUNNING), the next client finds a running VF and can start again.
    c.set_device_state(DeviceState::PreCopyP2p).unwrap();
    assert!(!sh.engine_running());
    drop(c);
    let mut c = Client::connect(&a.sockets[0]).unwrap();
    assert_eq!(c.device_state().unwrap(), DeviceState::Running);
    assert!(sh.engine_running() && !sh.dirty().tracking());
    c.set_device_state(DeviceState::PreCopy).unwrap();
    c.set_device_state(DeviceState::Running).unwrap();
}

/// `--max-downtime 0` can never be met: `--strict` aborts with the source running and its data
/// intact; without it the switch happens anyway, the report says so, and the data arrives.
#[test]
fn migrate_pre_copy_that_cannot_converge() {
    let dir = tempfile::tempdir().unwrap();
    let a = host_pre_copy(&dir.path().join("a"), Platform::Bmg, 1, 8 * MIB);
    let b = host(&dir.path().join("b"), Platform::Bmg, 1, 8 * MIB);
    let sh = a.pf.vf(1).unwrap().hw.clone();
    sh.lmem().unwrap().write(0, &pattern(8 << 20, 5)).unwrap();
    let (from, to) = (
        a.sockets[0].to_str().unwrap(),
        b.sockets[0].to_str().unwrap(),
    );
    let args = [
        "migrate",
        "--from",
        from,
        "--to",
        to,
        "--pre-copy",
        "--max-downtime",
        "0ms",
        "--max-precopy",
        "100ms",
    ];
    let mut strict = args.to_vec();
    strict.push("--strict");
    let out = xe_vfio(&strict);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("did not converge"), "{err}");
    assert!(
        err.contains("the source is RUNNING again with its state intact"),
        "{err}"
    );
    let mut c = Client::connect(&a.sockets[0]).unwrap();
    assert_eq!(c.device_state().unwrap(), DeviceState::Running);
    drop(c);
    assert!(lmem_bytes(&sh) == pattern(8 << 20, 5));

    let mut json = args.to_vec();
    json.push("--json");
    let out = xe_vfio(&json);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["pre_copy"]["converged"], false);
    assert!(!r["pre_copy"]["rounds"].as_array().unwrap().is_empty());
    assert_eq!(r["destination_state"], "RUNNING");
    let dh = b.pf.vf(1).unwrap().hw.clone();
    assert!(lmem_bytes(&dh) == pattern(8 << 20, 5));
}

/// MIG_DATA_SIZE in PRE_COPY says what stop-copy will still send (the uAPI's definition): all
/// of it before the first round, then the non-VRAM packets plus the dirty VRAM — the number an
/// orchestrator that knows nothing of Xe divides by its throughput.
#[test]
fn data_size_in_pre_copy_is_what_stop_copy_still_sends() {
    let dir = tempfile::tempdir().unwrap();
    let a = host_pre_copy(&dir.path().join("a"), Platform::Bmg, 1, 8 * MIB);
    let b = host(&dir.path().join("b"), Platform::Bmg, 1, 8 * MIB);
    let mut src = Client::connect(&a.sockets[0]).unwrap();
    let mut dst = Client::connect(&b.sockets[0]).unwrap();
    let full = src.mig_data_size().unwrap();
    assert!(full > 8 * MIB, "{full}");
    src.set_device_state(DeviceState::PreCopy).unwrap();
    dst.set_device_state(DeviceState::Resuming).unwrap();
    let (i, d) = info(&mut src);
    let vram = 24 + 8 * MIB;
    assert_eq!(src.mig_data_size().unwrap(), full - vram + i + d);
    let mut relay = Relay::new();
    round(&mut relay, &mut src, &mut dst);
    let rest = src.mig_data_size().unwrap();
    assert_eq!(
        rest,
        full - vram,
        "only GUC, MMIO, GGTT and the trailer's kin are left"
    );
    src.region_write(BAR2, 4096, &[0xAB; 100]).unwrap();
    let (_, d) = info(&mut src);
    assert!(d > 100, "one dirty granule as a VRAM packet: {d}");
    assert_eq!(src.mig_data_size().unwrap(), rest + d);
}

/// `--max-bandwidth` paces the relay (a lower bound on the time, which cannot flake), and a
/// pre-copy round never runs past `--max-precopy`: on a slow link the switch comes in the
/// middle of the initial data, and the stop-copy sends the rest — the destination is whole.
#[test]
fn a_capped_link_paces_the_migration_and_bounds_the_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let a = host_pre_copy(&dir.path().join("a"), Platform::Bmg, 1, 8 * MIB);
    let b = host(&dir.path().join("b"), Platform::Bmg, 1, 8 * MIB);
    let sh = a.pf.vf(1).unwrap().hw.clone();
    sh.lmem().unwrap().write(0, &pattern(8 << 20, 9)).unwrap();
    let (from, to) = (
        a.sockets[0].to_str().unwrap(),
        b.sockets[0].to_str().unwrap(),
    );
    let out = xe_vfio(&[
        "migrate",
        "--from",
        from,
        "--to",
        to,
        "--pre-copy",
        "--max-precopy",
        "200ms",
        "--max-bandwidth",
        "16M",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["max_bandwidth"], 16 * MIB);
    // 8 MiB and more at 16 MiB/s: half a second at least.
    assert!(r["total_seconds"].as_f64().unwrap() >= 0.5, "{r}");
    let p = &r["pre_copy"];
    assert_eq!(p["converged"], false);
    // Rounds sized to the time left: 16 MiB/s × 0.2 s, plus at most one 1 MiB floor.
    let sent = p["precopy_bytes"].as_u64().unwrap();
    assert!(sent > 0 && sent <= 16 * MIB / 5 + 2 * MIB, "{p}");
    let last = p["rounds"].as_array().unwrap().last().unwrap().clone();
    assert!(last["initial_bytes_after"].as_u64().unwrap() > 0, "{p}");
    assert_eq!(r["destination_state"], "RUNNING");
    let dh = b.pf.vf(1).unwrap().hw.clone();
    assert!(lmem_bytes(&dh) == pattern(8 << 20, 9));
}

/// A busy VF — jobs queued and running while pre-copy starts, LMEM and registers set — moved
/// with `xe-vfio migrate --pre-copy` between two `serve` processes; verified on the
/// destination bit for bit over vfio-user, and its queued jobs complete after the fixups.
#[test]
fn a_busy_vf_migrates_with_pre_copy_between_two_serve_processes() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--platform",
        "bmg",
        "--vfs",
        "1",
        "--lmem-per-vf",
        "32M",
        "--pre-copy",
    ];
    let sa = Serve::start(&dir.path().join("a"), &args);
    let sb = Serve::start(&dir.path().join("b"), &args);
    let guest = RemoteGuest::new(Client::connect(&sa.sock(1)).unwrap());
    let mut w = Workload::setup(guest.clone(), true, 256 << 10, 8 << 20, 0xb05e).unwrap();
    w.submit_random(100).unwrap();
    w.wait_idle(Duration::from_secs(20)).unwrap();
    guest
        .mem_write(true, 20 * MIB, &pattern(3 << 20, 7))
        .unwrap();
    guest
        .mmio_write32(vf::med_vf_sw_flag(0), 0x0bad_cafe)
        .unwrap();
    // A ring full of jobs: the engine keeps writing LMEM while pre-copy starts.
    for _ in 0..(256 << 10) / vf::JOB_SIZE - 1 {
        let j = w.random_job();
        w.queue(j).unwrap();
    }
    w.doorbell().unwrap();
    // The migration takes its own connections (one client at a time per socket).
    guest.set(None);
    let out = xe_vfio(&[
        "migrate",
        "--from",
        sa.sock(1).to_str().unwrap(),
        "--to",
        sb.sock(1).to_str().unwrap(),
        "--pre-copy",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["destination_state"], "RUNNING");
    assert!(r["pre_copy"]["precopy_bytes"].as_u64().unwrap() > 32 * MIB);
    // On the destination: GGTT fixups, the queued jobs complete, and everything is as the
    // guest's reference model and its writes say.
    guest.set(Some(Client::connect(&sb.sock(1)).unwrap()));
    assert_eq!(
        guest.mmio_read32(vf::med_vf_sw_flag(0)).unwrap(),
        0x0bad_cafe
    );
    w.fixups().unwrap();
    w.wait_idle(Duration::from_secs(60)).unwrap();
    w.verify().unwrap();
    let mut back = vec![0u8; 3 << 20];
    guest.mem_read(true, 20 * MIB, &mut back).unwrap();
    assert!(back == pattern(3 << 20, 7));
    // The source resumed when the migration's connection closed (this emulator's close walks
    // back to RUNNING) and ran the same queued jobs: both LMEMs, ring aside (fixups rewrite
    // queued jobs there), must now be identical bit for bit.
    let mut s = Client::connect(&sa.sock(1)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while s.read32(BAR0, vf::SEQNO).unwrap() != w.last_seqno() {
        assert!(
            std::time::Instant::now() < deadline,
            "source jobs did not finish"
        );
    }
    let mut a_lmem = vec![0u8; 32 << 20];
    let mut b_lmem = vec![0u8; 32 << 20];
    for (i, chunk) in a_lmem.chunks_mut(1 << 20).enumerate() {
        s.region_read(BAR2, (i << 20) as u64, chunk).unwrap();
    }
    guest.mem_read(true, 0, &mut b_lmem).unwrap();
    let ring = 256 << 10;
    if let Some(i) = a_lmem[ring..]
        .iter()
        .zip(&b_lmem[ring..])
        .position(|(x, y)| x != y)
    {
        panic!(
            "LMEM differs between source and destination at {:#x}",
            ring + i
        );
    }
    drop(s);
    guest.set(None);
    assert!(sa.stop().success() && sb.stop().success());
}
