//! The guest machinery shared by the tests that boot QEMU: the cached Debian trixie root
//! (QEMU 11 from trixie-backports, the guest kernel, busybox), a tiny initramfs, a bounded run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const MIRROR: &str = "http://deb.debian.org/debian";

pub fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let tail = |b: &[u8]| {
            let s = String::from_utf8_lossy(b).to_string();
            s.lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        Err(format!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            tail(&out.stdout),
            tail(&out.stderr)
        ))
    }
}

/// Prepares (or reuses) the cached trixie root. Returns its path.
pub fn prepare_root() -> Result<PathBuf, String> {
    let root = PathBuf::from(
        std::env::var("XE_QEMU_ROOT").unwrap_or_else(|_| "/var/cache/xe-vfio/qemu-trixie".into()),
    );
    if !rustix::process::geteuid().is_root() {
        return Err("QEMU runs chrooted in a Debian root, which needs root".into());
    }
    let ready = root.join(".xe-vfio-ready");
    if ready.exists() {
        return Ok(root);
    }
    if Command::new("debootstrap")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(
            "debootstrap is not installed (apt-get install debootstrap; .ci/run does)".into(),
        );
    }
    eprintln!(
        "qemu: building the trixie root in {} (once per machine) ...",
        root.display()
    );
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.parent().unwrap_or(Path::new("/"))).map_err(|e| e.to_string())?;
    run(
        Command::new("debootstrap")
            .args(["--variant=minbase", "trixie"])
            .arg(&root)
            .arg(MIRROR),
        "debootstrap trixie",
    )?;
    std::fs::write(
        root.join("etc/apt/sources.list.d/backports.list"),
        format!("deb {MIRROR} trixie-backports main\n"),
    )
    .map_err(|e| e.to_string())?;
    let chroot_apt = |args: &[&str], what: &str| {
        run(
            Command::new("chroot")
                .arg(&root)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(args),
            what,
        )
    };
    chroot_apt(&["apt-get", "update", "-qq"], "apt-get update in the root")?;
    chroot_apt(
        &[
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "-t",
            "trixie-backports",
            "qemu-system-x86",
        ],
        "installing qemu-system-x86 from trixie-backports",
    )?;
    chroot_apt(
        &[
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "linux-image-amd64",
            "busybox-static",
        ],
        "installing linux-image-amd64 and busybox-static",
    )?;
    std::fs::write(&ready, "ok\n").map_err(|e| e.to_string())?;
    Ok(root)
}

pub fn kernel(root: &Path) -> Result<String, String> {
    let mut k: Vec<String> = std::fs::read_dir(root.join("boot"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("vmlinuz-"))
        .collect();
    k.sort();
    k.pop()
        .map(|n| format!("/boot/{n}"))
        .ok_or_else(|| "no guest kernel in the root".into())
}

/// A newc cpio archive (what the kernel unpacks as initramfs), built here: no cpio tool needed.
pub fn cpio(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entry = |name: &str, mode: u32, data: &[u8], ino: u32| {
        let hdr = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
        );
        out.extend_from_slice(hdr.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for (i, (name, mode, data)) in files.iter().enumerate() {
        entry(name, *mode, data, i as u32 + 1);
    }
    entry("TRAILER!!!", 0, &[], 0);
    out
}

/// Boots the root's kernel in QEMU (q35, 512 MiB, TCG, serial console) with an initramfs of
/// `files` (plus the bin/proc/sys/dev directories) and `args`; returns the console once the
/// guest printed `done` and powered off. At most 300 s.
pub fn run_guest(
    root: &Path,
    files: &[(&str, u32, &[u8])],
    args: &[&str],
    done: &str,
) -> Result<String, String> {
    let mut all: Vec<(&str, u32, &[u8])> = vec![
        ("bin", 0o40755, &[]),
        ("proc", 0o40755, &[]),
        ("sys", 0o40755, &[]),
        ("dev", 0o40755, &[]),
        ("tmp", 0o41777, &[]),
    ];
    all.extend_from_slice(files);
    let initrd = cpio(&all);
    let name = format!("tmp/xe-initrd-{}.cpio", std::process::id());
    std::fs::write(root.join(&name), initrd).map_err(|e| e.to_string())?;
    let child = Command::new("chroot")
        .arg(root)
        .args([
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-m",
            "512",
            "-nographic",
            "-no-reboot",
        ])
        .args([
            "-object",
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "-machine",
            "memory-backend=mem",
        ])
        .args(["-kernel", &kernel(root)?, "-initrd", &format!("/{name}")])
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting QEMU: {e}"))?;
    // Wait for QEMU's exit on a thread (which also drains its output), up to 300 s.
    let pid = rustix::process::Pid::from_child(&child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(r) => r.map_err(|e| e.to_string())?,
        Err(_) => {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            return Err("QEMU did not finish within 300 s".into());
        }
    };
    let _ = std::fs::remove_file(root.join(&name));
    let console = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    if !console.contains(done) {
        return Err(format!(
            "the guest did not finish its script:\n{console}\n{err}"
        ));
    }
    Ok(console)
}

/// The first console line holding `tag`: the words after it.
pub fn line<'a>(console: &'a str, tag: &str) -> Vec<&'a str> {
    console
        .lines()
        .find_map(|l| l.find(tag).map(|i| &l[i + tag.len()..]))
        .unwrap_or_else(|| panic!("{tag} missing from the guest console:\n{console}"))
        .split_whitespace()
        .collect()
}

/// `prepare_root`, or the reason the test skips (it fails instead with XE_QEMU_REQUIRED=1).
pub fn root_or_skip(test: &str) -> Option<PathBuf> {
    match prepare_root() {
        Ok(root) => Some(root),
        Err(e) if std::env::var("XE_QEMU_REQUIRED").as_deref() != Ok("1") => {
            eprintln!("SKIPPED {test}: cannot prepare the QEMU environment: {e}");
            eprintln!("  (set XE_QEMU_REQUIRED=1 to make this a failure; .ci/run does)");
            None
        }
        Err(e) => panic!("cannot prepare the QEMU environment (XE_QEMU_REQUIRED=1): {e}"),
    }
}

/// The root's kernel version (its one /lib/modules entry).
pub fn kernel_version(root: &Path) -> Result<String, String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("lib/modules"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    v.sort();
    v.pop()
        .ok_or_else(|| "no kernel modules in the root".into())
}

/// Runs `script` (saved as the root's /tmp/`name`) in the root, with the guest kernel's
/// version as its argument.
pub fn run_for_kernel(root: &Path, name: &str, script: &str, what: &str) -> Result<(), String> {
    let k = kernel_version(root)?;
    std::fs::write(root.join("tmp").join(name), script).map_err(|e| e.to_string())?;
    run(
        Command::new("chroot")
            .arg(root)
            .args(["/bin/sh", &format!("/tmp/{name}"), &k]),
        what,
    )
}

/// A statically linked xe-vfio for the guest (it has no libc of ours).
pub fn static_xe_vfio() -> Result<PathBuf, String> {
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("static");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = "x86_64-unknown-linux-gnu";
    run(
        Command::new(cargo)
            .args(["build", "-q", "--bin", "xe-vfio", "--target", target])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir)
            .env(
                "RUSTFLAGS",
                "-C target-feature=+crt-static -C debuginfo=0 -C strip=symbols",
            ),
        "building a static xe-vfio",
    )?;
    Ok(target_dir.join(target).join("debug/xe-vfio"))
}

/// The kernel modules `names` (`NAME.ko` in `dir`) as initramfs files `m/NAME.ko`.
pub fn module_files(dir: &Path, names: &[&str]) -> Vec<(String, Vec<u8>)> {
    names
        .iter()
        .map(|m| {
            let p = dir.join(format!("{m}.ko"));
            let d = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (format!("m/{m}.ko"), d)
        })
        .collect()
}
