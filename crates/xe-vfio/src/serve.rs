//! `xe-vfio serve`: an emulated PF whose VFs are served on vfio-user sockets.

use crate::util::{human, CliError, Context};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use vfio_core::VfioDevice;
use vfio_user::{Server, ServerOptions};
use xe_pf::hw::mem::Commit;
use xe_pf::pf::VfProvision;
use xe_pf::{PfConfig, Platform, XePf};
use xe_vfio_pci::{PciFunction, XeVfioPci};

/// A host: a PF, its VFs bound to the variant driver, and their servers.
pub struct Host {
    pub pf: Arc<XePf>,
    pub sockets: Vec<PathBuf>,
    pub threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

/// What a host emulates.
#[derive(Clone, Copy, Debug)]
pub struct HostSpec {
    pub platform: Platform,
    pub vfs: u32,
    /// LMEM quota of each VF (ignored on integrated parts).
    pub lmem_per_vf: u64,
    pub lmem_commit: Commit,
    /// Offer PRE_COPY (migration flags 0x7; BAR2 then has no mmap: every access traps).
    pub pre_copy: bool,
    /// GGTT of each VF, bytes.
    pub ggtt_per_vf: u64,
}

/// Builds a PF as `spec` says and serves its VFs under `dir`.
pub fn start_host(
    spec: &HostSpec,
    dir: &Path,
    stop: &Arc<AtomicBool>,
    opts: &ServerOptions,
) -> Result<Host, CliError> {
    let &HostSpec {
        platform,
        vfs,
        lmem_per_vf,
        lmem_commit,
        pre_copy,
        ggtt_per_vf,
    } = spec;
    let lmem = if platform.has_vram() { lmem_per_vf } else { 0 };
    if lmem_commit == Commit::Reserved {
        check_memory(lmem.saturating_mul(u64::from(vfs)))?;
    }
    let mut cfg = PfConfig::sized_for(platform, vfs, lmem)
        .ctx(|| format!("sizing the {platform} PF for {vfs} VFs"))?;
    cfg.lmem_commit = lmem_commit;
    cfg.pre_copy = pre_copy;
    let prov = VfProvision {
        lmem,
        ggtt: ggtt_per_vf,
    };
    let pf = XePf::with_vfs(cfg, vfs, prov).map_err(|e| {
        let err = CliError::new(format!(
            "enabling {vfs} VFs with {} LMEM each ({})",
            human(lmem),
            lmem_commit.name()
        ))
        .cause(e);
        if e == vfio_core::Errno::ENOMEM && lmem_commit == Commit::Reserved {
            err.hint("reserved LMEM is committed up front: use less --lmem-per-vf or fewer VFs, or --lmem-commit lazy")
        } else {
            err
        }
    })?;
    std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let mut sockets = Vec::new();
    let mut threads = Vec::new();
    for vfid in 1..=vfs {
        let dev = XeVfioPci::probe(PciFunction::vf_of(&pf, vfid).ctx(|| format!("VF {vfid}"))?)
            .ctx(|| format!("binding VF {vfid} to xe-vfio-pci"))?;
        let path = dir.join(format!("vf{vfid}.sock"));
        let server = Server::bind(&path, Arc::new(dev) as Arc<dyn VfioDevice>, opts.clone())
            .ctx(|| format!("listening on {}", path.display()))?;
        threads.push(server.spawn(stop.clone()));
        sockets.push(path);
    }
    Ok(Host {
        pf,
        sockets,
        threads,
    })
}

/// Reserved LMEM is committed at provisioning: refuse up front when the machine cannot hold it,
/// rather than be killed by the OOM killer half-way through committing it.
fn check_memory(needed: u64) -> Result<(), CliError> {
    let Some(available) = available_memory() else {
        return Ok(()); // Unknown: provisioning itself still fails cleanly with ENOMEM.
    };
    if needed > available {
        return Err(CliError::new(format!(
            "reserved LMEM needs {} but only {} of memory is available",
            human(needed),
            human(available)
        ))
        .hint("use --lmem-commit lazy (pages are committed only when written), less --lmem-per-vf or fewer --vfs"));
    }
    Ok(())
}

/// Memory this process can still commit: `MemAvailable`, bounded by the cgroup v2 limit.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let mut avail = kib.saturating_mul(1024);
    if let Some(cg) = cgroup_headroom() {
        avail = avail.min(cg);
    }
    Some(avail)
}

/// `memory.max − memory.current` of this process's cgroup (v2), if it has a limit.
fn cgroup_headroom() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?; // "max" (no limit) fails here
    let cur: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(cur))
}

/// `serve`: runs until SIGTERM or SIGINT, then removes the sockets.
pub fn serve(spec: &HostSpec, dir: &Path, max_xfer: u32) -> Result<(), CliError> {
    let HostSpec {
        platform,
        vfs,
        lmem_per_vf,
        lmem_commit,
        pre_copy,
        ..
    } = *spec;
    if vfs == 0 || vfs > 63 {
        return Err(CliError::new(format!(
            "--vfs {vfs}: must be between 1 and 63"
        )));
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .ctx(|| "installing signal handlers".into())?;
    }
    let opts = ServerOptions {
        max_data_xfer: max_xfer,
        ..Default::default()
    };
    if lmem_commit == Commit::Reserved && platform.has_vram() {
        eprintln!(
            "xe-vfio: committing {} of LMEM ({vfs} × {}) ...",
            human(lmem_per_vf.saturating_mul(u64::from(vfs))),
            human(lmem_per_vf)
        );
    }
    let host = start_host(spec, dir, &stop, &opts)?;
    let pf = &host.pf;
    println!(
        "xe-vfio: {} ({:#06x} rev {:#04x}) PF, {} VFs{}, migration {}",
        platform.long_name(),
        pf.device_id(),
        pf.revision(),
        vfs,
        if platform.has_vram() {
            format!(
                ", {} LMEM each ({})",
                human(lmem_per_vf),
                lmem_commit.name()
            )
        } else {
            String::new()
        },
        match (pf.migration_supported(), pre_copy) {
            (true, true) => "supported, with PRE_COPY (flags 0x7; BAR2 not mappable)",
            (true, false) => "supported (STOP_COPY|P2P)",
            (false, _) => "not supported",
        }
    );
    for s in &host.sockets {
        println!("  {}", s.display());
    }
    println!("ready");
    for t in host.threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(CliError::new("a vfio-user server failed").cause(e)),
            Err(_) => return Err(CliError::new("a vfio-user server thread panicked")),
        }
    }
    Ok(())
}
