#![allow(dead_code)]
//! In-process hosts and helpers for the CLI crate's tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vfio_core::VfioDevice;
use vfio_user::{Server, ServerOptions};
use xe_pf::hw::mem::Commit;
use xe_pf::pf::VfProvision;
use xe_pf::{PfConfig, Platform, XePf};
use xe_vfio_pci::{PciFunction, XeVfioPci};

pub struct Host {
    pub pf: Arc<XePf>,
    pub stop: Arc<AtomicBool>,
    pub threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
    pub sockets: Vec<PathBuf>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub fn host(dir: &Path, platform: Platform, vfs: u32, lmem: u64) -> Host {
    host_committed(dir, platform, vfs, lmem, Commit::Lazy)
}

/// `host`, with the LMEM committed as `commit` says.
pub fn host_committed(dir: &Path, platform: Platform, vfs: u32, lmem: u64, commit: Commit) -> Host {
    host_with(dir, platform, vfs, lmem, commit, false)
}

/// `host`, offering PRE_COPY.
pub fn host_pre_copy(dir: &Path, platform: Platform, vfs: u32, lmem: u64) -> Host {
    host_with(dir, platform, vfs, lmem, Commit::Lazy, true)
}

pub fn host_with(
    dir: &Path,
    platform: Platform,
    vfs: u32,
    lmem: u64,
    commit: Commit,
    pre_copy: bool,
) -> Host {
    host_served(
        dir,
        platform,
        vfs,
        lmem,
        commit,
        pre_copy,
        ServerOptions::default(),
    )
}

/// `host_with`, its VFs served with `opts`.
pub fn host_served(
    dir: &Path,
    platform: Platform,
    vfs: u32,
    lmem: u64,
    commit: Commit,
    pre_copy: bool,
    opts: ServerOptions,
) -> Host {
    let mut cfg = PfConfig::sized_for(platform, vfs, lmem).unwrap();
    cfg.lmem_commit = commit;
    cfg.pre_copy = pre_copy;
    host_provisioned(
        dir,
        cfg,
        vfs,
        VfProvision {
            lmem,
            ggtt: 8 << 20,
        },
        opts,
    )
}

/// A host as `xe-vfio serve` makes it (the default GGTT share, LMEM reserved): its VFs'
/// streams restore into a served VF.
pub fn host_as_served(dir: &Path, platform: Platform, vfs: u32, lmem: u64) -> Host {
    let mut cfg = PfConfig::sized_for(platform, vfs, lmem).unwrap();
    cfg.lmem_commit = Commit::Reserved;
    let ggtt = xe_pf::pf::DEFAULT_VF_GGTT;
    let opts = ServerOptions::default();
    host_provisioned(dir, cfg, vfs, VfProvision { lmem, ggtt }, opts)
}

fn host_provisioned(
    dir: &Path,
    cfg: PfConfig,
    vfs: u32,
    prov: VfProvision,
    opts: ServerOptions,
) -> Host {
    let pf = XePf::with_vfs(cfg, vfs, prov).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut sockets = Vec::new();
    std::fs::create_dir_all(dir).unwrap();
    for vfid in 1..=vfs {
        let dev = XeVfioPci::probe(PciFunction::vf_of(&pf, vfid).unwrap()).unwrap();
        let path = dir.join(format!("vf{vfid}.sock"));
        let s = Server::bind(&path, Arc::new(dev) as Arc<dyn VfioDevice>, opts.clone()).unwrap();
        threads.push(s.spawn(stop.clone()));
        sockets.push(path);
    }
    Host {
        pf,
        stop,
        threads,
        sockets,
    }
}

/// A `xe-vfio serve` child process; killed with SIGTERM on drop.
pub struct Serve {
    pub child: Child,
    pub dir: PathBuf,
}

impl Serve {
    pub fn start(dir: &Path, args: &[&str]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xe-vfio"))
            .arg("serve")
            .args(args)
            .arg("--socket-dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Wait for "ready".
        use std::io::BufRead;
        let out = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(out).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "serve did not become ready");
            match lines.next() {
                Some(Ok(l)) if l.contains("ready") => break,
                Some(Ok(_)) => {}
                _ => panic!("serve exited before ready"),
            }
        }
        Serve {
            child,
            dir: dir.to_path_buf(),
        }
    }

    pub fn sock(&self, vfid: u32) -> PathBuf {
        self.dir.join(format!("vf{vfid}.sock"))
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = rustix_pid(self.child.id());
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let st = self.child.wait().unwrap();
        std::mem::forget(self);
        st
    }
}

fn rustix_pid(id: u32) -> u32 {
    id
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn xe_vfio(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xe-vfio"))
        .args(args)
        .output()
        .unwrap()
}
