//! Kernel TLS against a kernel that has it: a QEMU guest boots the cached trixie root's kernel
//! (Debian's, `CONFIG_TLS=m`) with its `tls` module and the AES-GCM template, and a statically
//! linked `xe-vfio` migrates VFs between two emulated hosts on loopback over mutual TLS: the
//! kernel sealing and opening the records on both sides (the data spliced end to end), and on
//! one side only, each way, with the other side sealing in xe-vfio — the same TLS 1.3 on the
//! wire (the kernel's side of one of them pre-copying, its rounds written through the kernel's
//! records). First, before the AES-GCM template is loaded, the kernel refuses the keys once the
//! `tls` upper-layer protocol is set: both sides go on sealing in xe-vfio over those sockets.
//! Each destination VF's saved stream must be, byte for byte, the one restored into its
//! source (a VF whose LMEM holds a pattern).
//!
//! The host this runs on may have no kernel TLS (this project's CI machine has none): there,
//! every migration between hosts seals in xe-vfio, and this test is where the kernel path
//! runs. Needs what the QEMU interop test needs (root, debootstrap, the Debian mirror once per
//! machine). Skips with the reason where it cannot run; with `XE_QEMU_REQUIRED=1` (set by
//! `.ci/run`) it fails instead.

mod common;
mod guest;
use common::*;
use guest::*;
use std::path::{Path, PathBuf};
use xe_pf::Platform;

const MODULES: &str = include_str!("guest/ktls-modules.sh");
const INIT: &str = include_str!("guest/ktls-init.sh");
const LMEM: u64 = 8 << 20;

/// The kernel TLS modules of the guest kernel, in the root's /opt/xe-ktls.
fn modules(root: &Path) -> Result<PathBuf, String> {
    let what = "collecting the kernel TLS modules in the root";
    run_for_kernel(root, "xe-ktls-modules.sh", MODULES, what)?;
    Ok(root.join("opt/xe-ktls"))
}

/// A VF's stream with a pattern in its LMEM, saved by `xe-vfio save` from an in-process host
/// made as the guest's `xe-vfio serve` makes its hosts.
fn stream(dir: &Path) -> Vec<u8> {
    let h = host_as_served(dir, Platform::Bmg, 3, LMEM);
    let pattern: Vec<u8> = (0..LMEM as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    h.pf.vf(1)
        .unwrap()
        .hw
        .lmem()
        .unwrap()
        .write(0, &pattern)
        .unwrap();
    let out = dir.join("s.bin");
    let sock = h.sockets[0].to_str().unwrap();
    let r = xe_vfio(&["save", "--from", sock, "-o", out.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    std::fs::read(out).unwrap()
}

#[test]
fn qemu_guest_migrates_between_hosts_with_kernel_tls() {
    let Some(root) = root_or_skip("qemu_guest_migrates_between_hosts_with_kernel_tls") else {
        return;
    };
    let kos = modules(&root).unwrap_or_else(|e| panic!("{e}"));
    let xe = static_xe_vfio().unwrap_or_else(|e| panic!("{e}"));
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let dir = tempfile::tempdir().unwrap();
    let s = stream(dir.path());
    let pki = dir.path().join("pki");
    let r = xe_vfio(&["certs", pki.to_str().unwrap(), "127.0.0.1", "source"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // A source certificate of another CA (`other`).
    let other = dir.path().join("other");
    let r = xe_vfio(&["certs", other.to_str().unwrap(), "source"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let busybox = read(root.join("bin/busybox"));
    let xe = read(xe);
    let certs: Vec<(String, Vec<u8>)> = [
        "ca.pem",
        "127.0.0.1.pem",
        "127.0.0.1.key",
        "source.pem",
        "source.key",
    ]
    .iter()
    .map(|f| (format!("c/{f}"), read(pki.join(f))))
    .chain([
        ("c/other.pem".to_string(), read(other.join("source.pem"))),
        ("c/other.key".to_string(), read(other.join("source.key"))),
    ])
    .collect();
    let mods = module_files(
        &kos,
        &["crypto_null", "gcm", "gf128mul", "ghash_generic", "tls"],
    );
    let mut files: Vec<(&str, u32, &[u8])> = vec![
        ("m", 0o40755, &[]),
        ("c", 0o40755, &[]),
        ("bin/busybox", 0o100755, &busybox),
        ("bin/xe-vfio", 0o100755, &xe),
        ("s.bin", 0o100644, &s),
        ("init", 0o100755, INIT.as_bytes()),
    ];
    for (n, d) in certs.iter().chain(&mods) {
        files.push((n, 0o100644, d));
    }
    let console = run_guest(&root, &files, &[], "KT-DONE").unwrap_or_else(|e| panic!("{e}"));
    let show = || format!("guest console:\n{console}");
    let word = |tag: &str| line(&console, tag).join(" ");

    assert!(word("KT-ULP ").contains("tls"), "{}", show());
    let orig = word("KT-SHA-ORIG ");
    assert_eq!(orig.len(), 64, "{}", show());
    // (tag, the source's records in the kernel, the destination's); NG: the `tls` module
    // without the AES-GCM template, so the kernel refuses the keys.
    let cases = [
        ("NG", false, false),
        ("KK", true, true),
        ("UK", false, true),
        ("KU", true, false),
    ];
    for (t, src_kernel, dst_kernel) in cases {
        assert_eq!(word(&format!("KT-{t}-MIGRATE ")), "rc=0", "{t}: {}", show());
        assert_eq!(word(&format!("KT-{t}-RECEIVE ")), "rc=0", "{t}: {}", show());
        let src = word(&format!("KT-{t}-SRC "));
        let dst = word(&format!("KT-{t}-DST "));
        assert!(src.contains("TLS13_AES_128_GCM_SHA256"), "{t}: {src}");
        assert!(dst.contains("TLS13_AES_128_GCM_SHA256"), "{t}: {dst}");
        assert_eq!(src.contains("kernel TLS"), src_kernel, "{t} source: {src}");
        assert_eq!(
            dst.contains("kernel TLS"),
            dst_kernel,
            "{t} destination: {dst}"
        );
        // With the kernel's records on the source, the data is spliced into the connection.
        let spliced = word(&format!("KT-{t}-SPLICED "));
        assert_eq!(spliced.contains("true"), src_kernel, "{t}: {spliced}");
        // KU pre-copies: its rounds' frames are written through the kernel's records.
        let pre = word(&format!("KT-{t}-PRECOPY "));
        let pre_bytes: u64 = pre
            .trim_start_matches("\"precopy_bytes\":")
            .trim_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap_or(0);
        assert_eq!(pre_bytes > 0, t == "KU", "{t}: {pre}");
        assert!(
            word(&format!("KT-{t}-STATE ")).contains("RUNNING"),
            "{t}: {}",
            show()
        );
        assert_eq!(
            word(&format!("KT-{t}-SHA ")),
            orig,
            "{t}: the destination's stream is not the source's: {}",
            show()
        );
    }
    assert_eq!(word("KT-BADCA-MIGRATE "), "rc=1", "{}", show());
    let out = word("KT-BADCA-OUT ");
    assert!(
        out.contains("received fatal alert") && out.contains("nothing was stopped"),
        "{out}"
    );
    assert!(
        word("KT-BADCA-RECEIVE ").contains("refused 127.0.0.1"),
        "{}",
        show()
    );
}
