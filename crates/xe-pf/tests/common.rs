//! Helpers shared by the xe-pf integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use xe_guest::{DirectAccess, Workload};
use xe_pf::hw::mem::{Backing, Commit};
use xe_pf::pf::VfProvision;
use xe_pf::{PfConfig, Platform, SriovVfio, Timeouts, XePf};

/// A PF of `platform` with `n` VFs of `lmem` bytes each (0 on integrated parts), short
/// timeouts and 1 MiB VRAM chunks.
pub fn pf_with(platform: Platform, n: u32, lmem: u64) -> Arc<XePf> {
    pf_committed(platform, n, lmem, Commit::Lazy)
}

/// `pf_with`, with the LMEM committed as `commit` says.
pub fn pf_committed(platform: Platform, n: u32, lmem: u64, commit: Commit) -> Arc<XePf> {
    let mut cfg = PfConfig::new(platform);
    cfg.lmem_commit = commit;
    cfg.timeouts = Timeouts::short();
    cfg.vram_chunk = 1 << 20;
    XePf::with_vfs(
        cfg,
        n,
        VfProvision {
            lmem,
            ggtt: 8 << 20,
        },
    )
    .unwrap()
}

/// A workload on VF `vfid`: LMEM on discrete parts, attached system memory on integrated ones.
pub fn workload(pf: &XePf, vfid: u32, seed: u64) -> Workload<DirectAccess> {
    let vf = pf.vf(vfid).unwrap();
    let lmem = pf.platform().has_vram();
    if !lmem && vf.hw.sysmem().is_none() {
        vf.hw
            .attach_sysmem(Some(Arc::new(Backing::new("sysmem", 4 << 20).unwrap())));
    }
    Workload::setup(DirectAccess(vf.hw.clone()), lmem, 64 << 10, 256 << 10, seed).unwrap()
}

/// Runs FLR the way the variant driver does: event, then wait.
pub fn flr(pf: &XePf, vfid: u32) -> Result<(), mig_io::Errno> {
    pf.flr_prepare(vfid)?;
    pf.vf_flr_event(vfid)?;
    pf.wait_flr_done(vfid)
}

/// VmRSS / VmHWM of this process, in bytes.
pub fn proc_status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Resets VmHWM to the current RSS.
pub fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// Runs the calling test's body in a fresh child process (so that its memory is measured alone)
/// and returns the child's stdout. In the child, returns `None` and the caller runs the body.
pub fn in_child(test_name: &str) -> Option<String> {
    if std::env::var_os("XE_CHILD").is_some() {
        return None;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env("XE_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(stdout)
}

/// Extracts `KEY=value` from child output.
pub fn child_value(out: &str, key: &str) -> u64 {
    out.lines()
        .find_map(|l| l.split_once(&format!("{key}=")).map(|(_, v)| v))
        .unwrap_or_else(|| panic!("{key} missing in child output:\n{out}"))
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} unreadable in child output:\n{out}"))
}
