//! The command line, across processes: two `xe-vfio serve`, `xe-vfio migrate`, save, restore,
//! inspect, abort, and the demo.

mod common;
use common::*;
use vfio_core::device::region;
use vfio_core::DeviceState;
use vfio_user::Client;

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn migrate_between_two_serve_processes() {
    let dir = tempfile::tempdir().unwrap();
    let a = Serve::start(
        &dir.path().join("a"),
        &["--platform", "bmg", "--vfs", "2", "--lmem-per-vf", "64M"],
    );
    // The destination reserves its LMEM up front (mapped), the source's is lazy.
    let b = Serve::start(
        &dir.path().join("b"),
        &[
            "--platform",
            "bmg",
            "--vfs",
            "2",
            "--lmem-per-vf",
            "64M",
            "--lmem-commit",
            "reserved",
        ],
    );
    // Sockets are 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(a.sock(1)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A "guest" writes through BAR2 and the scratch registers, then detaches.
    let data = pattern(8 << 20, 3);
    {
        let mut c = Client::connect(&a.sock(2)).unwrap();
        c.region_write(region::BAR2, 5 << 20, &data).unwrap();
        c.write32(region::BAR0, 0x190240, 0x1234_5678).unwrap();
        c.write32(region::BAR0, 0x19031c, 0x9abc_def0).unwrap();
    }
    let out = xe_vfio(&[
        "migrate",
        "--from",
        a.sock(2).to_str().unwrap(),
        "--to",
        b.sock(1).to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["bytes"].as_u64().unwrap() > 64 << 20);
    assert!(report["downtime_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(report["destination_state"], "RUNNING");

    let mut d = Client::connect(&b.sock(1)).unwrap();
    assert_eq!(d.device_state().unwrap(), DeviceState::Running);
    let mut back = vec![0u8; data.len()];
    d.region_read(region::BAR2, 5 << 20, &mut back).unwrap();
    assert!(back == data, "LMEM differs on the destination");
    assert_eq!(d.read32(region::BAR0, 0x190240).unwrap(), 0x1234_5678);
    assert_eq!(d.read32(region::BAR0, 0x19031c).unwrap(), 0x9abc_def0);
    assert_eq!(d.read32(region::BAR0, xe_pf::hw::MIGRATED).unwrap(), 1);
    drop(d);

    // Clean exit on SIGTERM, sockets removed.
    let sock = a.sock(1);
    assert!(a.stop().success());
    assert!(!sock.exists(), "socket removed on exit");
    assert!(b.stop().success());
}

#[test]
fn aborted_migration_leaves_the_source_running_and_intact() {
    let dir = tempfile::tempdir().unwrap();
    let a = Serve::start(
        &dir.path().join("a"),
        &["--platform", "bmg", "--vfs", "1", "--lmem-per-vf", "16M"],
    );
    // A destination of another platform: the stream's descriptor does not match (ENODEV).
    let b = Serve::start(&dir.path().join("b"), &["--platform", "ptl", "--vfs", "1"]);
    let data = pattern(1 << 20, 9);
    {
        let mut c = Client::connect(&a.sock(1)).unwrap();
        c.region_write(region::BAR2, 0, &data).unwrap();
        c.write32(region::BAR0, 0x190248, 42).unwrap();
    }
    let out = xe_vfio(&[
        "migrate",
        "--from",
        a.sock(1).to_str().unwrap(),
        "--to",
        b.sock(1).to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ENODEV"), "{err}");
    assert!(err.contains("source is RUNNING again"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let mut c = Client::connect(&a.sock(1)).unwrap();
    assert_eq!(c.device_state().unwrap(), DeviceState::Running);
    let mut back = vec![0u8; data.len()];
    c.region_read(region::BAR2, 0, &mut back).unwrap();
    assert!(back == data);
    assert_eq!(c.read32(region::BAR0, 0x190248).unwrap(), 42);
    // The destination was reset and is usable.
    let mut d = Client::connect(&b.sock(1)).unwrap();
    assert_eq!(d.device_state().unwrap(), DeviceState::Running);
}

#[test]
fn save_inspect_restore_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let a = Serve::start(
        &dir.path().join("a"),
        &["--platform", "bmg", "--vfs", "2", "--lmem-per-vf", "8M"],
    );
    let data = pattern(3 << 20, 1);
    {
        let mut c = Client::connect(&a.sock(1)).unwrap();
        c.region_write(region::BAR2, 1 << 20, &data).unwrap();
    }
    let file = dir.path().join("vf1.xemig");
    let out = xe_vfio(&[
        "save",
        "--from",
        a.sock(1).to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Saving leaves the VF running.
    assert_eq!(
        Client::connect(&a.sock(1)).unwrap().device_state().unwrap(),
        DeviceState::Running
    );

    let out = xe_vfio(&["inspect", file.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["descriptor"]["platform"], "bmg");
    assert_eq!(v["vram_coverage"][0][1], 8 << 20);
    let text = xe_vfio(&["inspect", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("Battlemage"));

    let out = xe_vfio(&[
        "restore",
        "--to",
        a.sock(2).to_str().unwrap(),
        "-i",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = Client::connect(&a.sock(2)).unwrap();
    let mut back = vec![0u8; data.len()];
    c.region_read(region::BAR2, 1 << 20, &mut back).unwrap();
    assert!(back == data);

    // A corrupted file: inspect says where, restore fails with the errno and resets the VF.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0] = 7;
    let bad = dir.path().join("bad.xemig");
    std::fs::write(&bad, &bytes).unwrap();
    let out = xe_vfio(&["inspect", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not an Xe SR-IOV migration stream"), "{text}");
    assert!(text.contains(&format!("({} bytes", bytes.len())), "{text}");
    // Corrupt the second packet's version instead (the descriptor packet is 24 + 16 bytes).
    let mut bytes2 = std::fs::read(&file).unwrap();
    bytes2[40] = 7;
    let bad2 = dir.path().join("bad2.xemig");
    std::fs::write(&bad2, &bytes2).unwrap();
    let out = xe_vfio(&["inspect", bad2.to_str().unwrap()]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("INVALID at byte 40"), "{text}");
    drop(c);
    let out = xe_vfio(&[
        "restore",
        "--to",
        a.sock(2).to_str().unwrap(),
        "-i",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("EINVAL"));
}

#[test]
fn demo_passes() {
    let out = xe_vfio(&["demo"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("PASS"), "{text}");
    assert!(text.contains("[6/6]"));
}

#[test]
fn errors_read_like_a_tools() {
    // A command that must fail: what it says.
    let err = |args: &[&str]| {
        let out = xe_vfio(args);
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = err(&[
        "migrate",
        "--from",
        "/nonexistent/a.sock",
        "--to",
        "/nonexistent/b.sock",
    ]);
    assert!(
        e.starts_with("xe-vfio: connecting to /nonexistent/a.sock"),
        "{e}"
    );
    assert!(e.contains("hint:"), "{e}");
    let serve = ["serve", "--vfs", "1", "--socket-dir", "/tmp", "--platform"];
    let e = err(&[&serve[..], &["xyz"]].concat());
    assert!(e.contains("unknown platform"), "{e}");
    let e = err(&[&serve[..], &["bmg", "--lmem-commit", "eager"]].concat());
    assert!(e.contains("unknown LMEM commit mode"), "{e}");
    // The connection's options where there is no connection, or no TLS.
    let migrate = ["migrate", "--from", "a.sock", "--to"];
    let e = err(&[&migrate[..], &["b.sock", "--no-kernel-tls"]].concat());
    assert!(e.contains("are for --to tcp://HOST:PORT"), "{e}");
    let tcp = ["tcp://127.0.0.1:1", "--insecure", "--no-kernel-tls"];
    let e = err(&[&migrate[..], &tcp].concat());
    assert!(
        e.contains("--no-kernel-tls is for TLS, not --insecure"),
        "{e}"
    );
}

#[test]
fn bench_runs_and_reports_json() {
    let out = xe_vfio(&["bench", "--sizes", "8M", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["memcpy_gib_s"].as_f64().unwrap() > 0.0);
    let row = &v["rows"][0];
    assert!(row["socket_gib_s"].as_f64().unwrap() > 0.0);
    assert!(row["socket_hot_gib_s"].as_f64().unwrap() > 0.0);
    assert_eq!(row["vfio_user_runs"].as_array().unwrap().len(), 2);
    assert_eq!(row["lmem_bytes"], 8 << 20);
    assert!(row["stream_bytes"].as_u64().unwrap() > 8 << 20);
    assert!(row["vfio_user_gib_s"].as_f64().unwrap() > 0.0);
    assert!(row["src_peak_rss_growth"].as_u64().unwrap() < 64 << 20);
    assert!(row["dst_peak_rss_growth"].as_u64().unwrap() < 64 << 20);
    assert!(row["inproc_lazy_gib_s"].as_f64().unwrap() > 0.0);
}
