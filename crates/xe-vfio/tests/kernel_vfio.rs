//! The kernel VFIO backend against the real Linux VFIO core: a QEMU guest (the cached trixie
//! root's kernel) loads vfio, vfio_iommu_type1, mdev and the kernel's `mtty` sample driver
//! (built here from Debian's linux-source package against the matching headers), and a
//! statically linked `xe-vfio` migrates one mtty mdev into another through the kernel — live
//! with PRE_COPY, and through a file — then walks every (current, requested) pair of states
//! on a real device against vfio-core's table. mtty implements migration v2 with PRE_COPY;
//! a migration between two mtty mdevs takes the same kernel paths (uAPI, state machine, data
//! fd) as one between two `xe-vfio-pci` VFs, and nothing Xe-specific runs.
//!
//! Needs what the QEMU interop test needs (root, debootstrap, the Debian mirror once per
//! machine), plus, once, about 300 MiB in the root (headers, gcc) and a 153 MB download of
//! linux-source (deleted once mtty.c is out). Skips with the reason where it cannot run; with
//! `XE_QEMU_REQUIRED=1` (set by `.ci/run`) it fails instead.

mod guest;
use guest::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

const BUILD: &str = include_str!("guest/mtty-build.sh");
const INIT: &str = include_str!("guest/mtty-init.sh");

/// mtty.ko and the VFIO modules for the guest kernel, in the root's /opt/xe-mtty.
fn build_modules(root: &Path) -> Result<PathBuf, String> {
    run_for_kernel(
        root,
        "xe-mtty-build.sh",
        BUILD,
        "building mtty.ko in the root",
    )?;
    Ok(root.join("opt/xe-mtty"))
}

/// The words after `tag` on its console line, joined.
fn word(console: &str, tag: &str) -> String {
    line(console, tag).join(" ")
}

#[test]
fn qemu_guest_migrates_mtty_through_the_kernel() {
    let t0 = Instant::now();
    let Some(root) = root_or_skip("qemu_guest_migrates_mtty_through_the_kernel") else {
        return;
    };
    let modules = build_modules(&root).unwrap_or_else(|e| panic!("{e}"));
    let xe = static_xe_vfio().unwrap_or_else(|e| panic!("{e}"));
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let busybox = read(root.join("bin/busybox"));
    let xe = read(xe);
    let kos = module_files(
        &modules,
        &["vfio", "vfio_iommu_type1", "mdev", "mtty", "mdpy"],
    );
    let mut files: Vec<(&str, u32, &[u8])> = vec![
        ("m", 0o40755, &[]),
        ("etc", 0o40755, &[]),
        ("bin/busybox", 0o100755, &busybox),
        ("bin/xe-vfio", 0o100755, &xe),
        ("init", 0o100755, INIT.as_bytes()),
    ];
    for (n, d) in &kos {
        files.push((n, 0o100644, d));
    }
    let console = run_guest(&root, &files, &[], "MT-DONE").unwrap_or_else(|e| panic!("{e}"));
    let show = || format!("guest console:\n{console}");

    // State put into A through region writes came across, both ways.
    let a = word(&console, "MT-SNAP-A ");
    assert_eq!(a.len(), 24, "12 registers: {}", show());
    assert_eq!(word(&console, "MT-MIGRATE "), "rc=0", "{}", show());
    let m: serde_json::Value = serde_json::from_str(&word(&console, "MT-MIGRATE-JSON "))
        .unwrap_or_else(|e| panic!("migrate --json: {e}\n{}", show()));
    assert_eq!(m["destination_state"], "RUNNING");
    assert_eq!(m["source_state"], "STOP");
    let p = &m["pre_copy"];
    assert_eq!(p["converged"], true, "{m}");
    assert!(
        p["precopy_bytes"].as_u64().unwrap() > 0,
        "mtty sends its header in PRE_COPY: {m}"
    );
    assert!(
        m["bytes"].as_u64().unwrap() > p["precopy_bytes"].as_u64().unwrap(),
        "{m}"
    );
    assert_eq!(
        word(&console, "MT-SNAP-B "),
        a,
        "B after migrate: {}",
        show()
    );
    for t in ["MT-SAVE ", "MT-INSPECT ", "MT-RESTORE "] {
        // inspect says a non-Xe stream is opaque and exits 1: it is not an Xe stream.
        let want = if t == "MT-INSPECT " { "rc=1" } else { "rc=0" };
        assert_eq!(word(&console, t), want, "{t}{}", show());
    }
    assert!(
        word(&console, "MT-INSPECT-OUT ").contains("not an Xe SR-IOV migration stream"),
        "{}",
        show()
    );
    assert_eq!(
        word(&console, "MT-SNAP-C "),
        a,
        "C after save + restore: {}",
        show()
    );
    // "XE" in port 0's FIFO, "mt" in port 1's.
    assert_eq!(word(&console, "MT-FIFO-B "), "58456d74", "{}", show());
    assert_eq!(word(&console, "MT-FIFO-C "), "58456d74", "{}", show());

    // Failures: clear, and the source runs on with its state.
    assert_eq!(word(&console, "MT-BADDST "), "rc=1", "{}", show());
    let bad = word(&console, "MT-BADDST-OUT ");
    assert!(
        bad.contains("the source is RUNNING again with its state intact"),
        "{bad}"
    );
    assert!(
        bad.contains("the destination was reset and is RUNNING"),
        "{bad}"
    );
    assert_eq!(
        word(&console, "MT-SNAP-C3 "),
        word(&console, "MT-SNAP-C2 "),
        "C after the failed migration"
    );
    assert_eq!(word(&console, "MT-BUSY "), "rc=1", "{}", show());
    let busy = word(&console, "MT-BUSY-OUT ");
    assert!(busy.contains("in use") && busy.contains("hint:"), "{busy}");
    assert_eq!(word(&console, "MT-NOVFIO "), "rc=1", "{}", show());
    let novfio = word(&console, "MT-NOVFIO-OUT ");
    assert!(
        novfio.contains("0000:00:00.0") && novfio.contains("hint:"),
        "{novfio}"
    );

    assert_eq!(word(&console, "MT-NOMIG "), "rc=1", "{}", show());
    let nomig = word(&console, "MT-NOMIG-OUT ");
    assert!(
        nomig.contains("does not support VFIO migration v2") && nomig.contains("hint:"),
        "{nomig}"
    );
    assert_eq!(word(&console, "MT-PERM "), "rc=1", "{}", show());
    let perm = word(&console, "MT-PERM-OUT ");
    assert!(
        perm.contains("permission denied") && perm.contains("hint:"),
        "{perm}"
    );

    // The real kernel's state machine equals vfio-core's on every pair.
    let fsm: Vec<&str> = console
        .lines()
        .skip_while(|l| !l.contains("migration state machine of"))
        .take_while(|l| !l.contains("MT-DONE"))
        .collect();
    eprintln!("{}", fsm.join("\n"));
    assert_eq!(word(&console, "MT-FSM "), "rc=0", "{}", show());
    assert!(
        console.contains("63 of 63 pairs as vfio-core decides"),
        "{}",
        show()
    );
    eprintln!(
        "kernel VFIO test: {:.1} s (root cached: {})",
        t0.elapsed().as_secs_f64(),
        root.display()
    );
}
