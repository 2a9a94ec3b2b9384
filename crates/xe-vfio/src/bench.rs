//! `xe-vfio bench`: migration throughput, downtime and memory, against baselines measured in the
//! same run on the same machine.
//!
//! - memcpy: the best of several copies between two touched 256 MiB buffers;
//! - raw socket: the same byte count written over a UNIX socket to a second process (1 MiB writes);
//! - in-process: save from PF A and restore into PF B with no sockets — a source thread reads the
//!   stream while a destination thread writes it, as two hosts would;
//! - vfio-user: two `xe-vfio serve` processes and this process as the orchestrator (1 MiB
//!   `MIG_DATA_READ`/`MIG_DATA_WRITE`), with the servers' peak RSS and the downtime.
//!
//! LMEM is filled with non-zero data first (zero pages would flatter the restore path, which
//! turns them into holes).

use crate::ops;
use crate::util::{human, parse_size, CliError, Context};
use serde::Serialize;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vfio_core::device::region;
use vfio_user::Client;
use xe_pf::hw::mem::Commit;
use xe_pf::pf::VfProvision;
use xe_pf::{PfConfig, Platform, SriovVfio, XePf};

const CHUNK: usize = 1 << 20;

#[derive(Debug, Serialize)]
pub struct Row {
    pub lmem_bytes: u64,
    /// Raw UNIX socket between two processes, this many bytes from a buffer of them into a
    /// buffer of them (memory to memory, as a migration moves LMEM), best of three, same run.
    pub socket_gib_s: f64,
    /// The same through one cache-resident 1 MiB buffer at each end (the socket's ceiling).
    pub socket_hot_gib_s: f64,
    /// Writing this much fresh memory (what a lazy destination must commit), same run.
    pub first_touch_gib_s: f64,
    pub stream_bytes: u64,
    /// In-process save+restore, reserved LMEM (committed at provisioning, mapped): the better
    /// of two (A → B, then back).
    pub inproc_gib_s: f64,
    pub inproc_ratio_memcpy: f64,
    /// The same with lazily committed LMEM (pread/pwrite, destination pages found on the way),
    /// into a fresh destination (the first run).
    pub inproc_lazy_gib_s: f64,
    pub inproc_lazy_ratio_memcpy: f64,
    /// The better of the two vfio-user migrations (reserved LMEM), and its ratio.
    pub vfio_user_gib_s: f64,
    pub vfio_user_ratio_socket: f64,
    pub vfio_user_ratio_socket_hot: f64,
    /// Downtime of that migration.
    pub downtime_ms: f64,
    /// Both migrations (A → B first, then back).
    pub vfio_user_runs: Vec<VfioUserRun>,
    /// The servers' RSS when idle, LMEM filled (reserved LMEM is resident).
    pub src_idle_rss: u64,
    pub dst_idle_rss: u64,
    /// The largest peak-RSS growth of a source / destination server over its idle RSS.
    pub src_peak_rss_growth: u64,
    pub dst_peak_rss_growth: u64,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: String,
    pub memcpy_gib_s: f64,
    pub rows: Vec<Row>,
}

/// The best rate of several `(bytes, time)` runs.
fn best_rate(runs: &[(u64, Duration)]) -> f64 {
    runs.iter().map(|&(n, d)| gib_s(n, d)).fold(0.0, f64::max)
}

fn gib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / d.as_secs_f64().max(1e-9)
}

fn memcpy_baseline() -> f64 {
    let n = 256 << 20;
    let src: Vec<u8> = (0..n).map(|i| (i * 13) as u8).collect();
    let mut dst = vec![1u8; n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&dst);
    }
    n as f64 / (1u64 << 30) as f64 / best
}

/// First-touch bandwidth: writing `n` bytes of memory this process never touched (a fresh
/// memfd, like an emulated LMEM). Every restore pays this on the destination; on a VM it
/// includes the hypervisor backing the pages.
fn first_touch_baseline(n: u64) -> Result<f64, CliError> {
    let m = xe_pf::hw::mem::Backing::new("first-touch", n).ctx(|| "creating a memfd".into())?;
    let buf: Vec<u8> = (0..CHUNK).map(|i| (i as u8) | 1).collect();
    let t = Instant::now();
    let mut at = 0u64;
    while at < n {
        let k = ((n - at) as usize).min(CHUNK);
        m.write(at, &buf[..k]).ctx(|| "writing the memfd".into())?;
        at += k as u64;
    }
    Ok(gib_s(n, t.elapsed()))
}

/// The child side of the socket baselines: reads the byte count and the mode (0: into one
/// 1 MiB buffer, 1: into a buffer of the whole count, touched first), says it is ready, reads
/// everything, acknowledges with one byte.
pub fn sink(path: &Path) -> Result<(), CliError> {
    let mut s = UnixStream::connect(path).ctx(|| "bench sink: connecting".into())?;
    vfio_user::tune_socket(&s);
    let mut head = [0u8; 9];
    s.read_exact(&mut head)
        .ctx(|| "bench sink: reading".into())?;
    let total = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
    let whole = head[8] == 1;
    let len = if whole {
        usize::try_from(total).map_err(|_| CliError::new("bench sink: too large"))?
    } else {
        CHUNK
    };
    let mut buf = vec![1u8; len];
    s.write_all(&[1]).ctx(|| "bench sink: ready".into())?;
    let mut got = 0usize;
    while (got as u64) < total {
        let at = if whole { got } else { 0 };
        let end = (at + CHUNK).min(buf.len());
        let n = s
            .read(&mut buf[at..end])
            .ctx(|| "bench sink: reading".into())?;
        if n == 0 {
            return Err(CliError::new("bench sink: early EOF"));
        }
        got += n;
    }
    std::hint::black_box(&buf);
    s.write_all(&[1])
        .ctx(|| "bench sink: acknowledging".into())?;
    Ok(())
}

/// The best of three runs of `socket_once` (this VM's first runs after large frees are often
/// slow: the kernel finds its socket pages in memory the hypervisor took back).
fn socket_baseline(dir: &Path, bytes: u64, whole: bool) -> Result<f64, CliError> {
    let mut best = 0.0f64;
    for _ in 0..3 {
        best = best.max(socket_once(dir, bytes, whole)?);
    }
    Ok(best)
}

/// `bytes` written over a UNIX socket to a second process in 1 MiB writes: with `whole`, from a
/// buffer of all the bytes into one of all the bytes (memory to memory, as migration moves
/// LMEM), else from one 1 MiB buffer into another (cache-resident: the socket's ceiling).
fn socket_once(dir: &Path, bytes: u64, whole: bool) -> Result<f64, CliError> {
    let path = dir.join("baseline.sock");
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).ctx(|| "binding the baseline socket".into())?;
    let mut child = Command::new(std::env::current_exe().ctx(|| "finding myself".into())?)
        .arg("bench-sink")
        .arg(&path)
        .spawn()
        .ctx(|| "starting the sink process".into())?;
    let (mut s, _) = l.accept().ctx(|| "accepting the sink".into())?;
    // Same socket buffers as the vfio-user connections, so the comparison is fair.
    vfio_user::tune_socket(&s);
    let len = if whole {
        usize::try_from(bytes).map_err(|_| CliError::new("too large"))?
    } else {
        CHUNK
    };
    let buf: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let mut head = bytes.to_le_bytes().to_vec();
    head.push(u8::from(whole));
    s.write_all(&head).ctx(|| "writing".into())?;
    let mut ready = [0u8; 1];
    s.read_exact(&mut ready)
        .ctx(|| "waiting for the sink".into())?;
    let t = Instant::now();
    let mut sent = 0usize;
    while (sent as u64) < bytes {
        let n = ((bytes - sent as u64) as usize).min(CHUNK);
        let at = if whole { sent } else { 0 };
        s.write_all(&buf[at..at + n]).ctx(|| "writing".into())?;
        sent += n;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack)
        .ctx(|| "waiting for the sink".into())?;
    let d = t.elapsed();
    let _ = child.wait();
    Ok(gib_s(bytes, d))
}

/// Writes `data` at an offset of the VF's LMEM.
type LmemWriter<'a> = dyn FnMut(u64, &[u8]) -> Result<(), CliError> + 'a;

fn fill(write: &mut LmemWriter<'_>, size: u64) -> Result<(), CliError> {
    let mut buf: Vec<u8> = (0..CHUNK).map(|i| (i as u8) | 1).collect();
    let mut at = 0u64;
    while at < size {
        let n = ((size - at) as usize).min(CHUNK);
        buf[0] = (at >> 20) as u8 | 1; // every chunk a little different
        write(at, &buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

fn bmg(lmem: u64, commit: Commit) -> Result<Arc<XePf>, CliError> {
    let mut cfg = PfConfig::sized_for(Platform::Bmg, 1, lmem).ctx(|| "sizing a PF".into())?;
    cfg.lmem_commit = commit;
    let prov = VfProvision {
        lmem,
        ggtt: xe_pf::pf::DEFAULT_VF_GGTT,
    };
    XePf::with_vfs(cfg, 1, prov).ctx(|| "creating a PF with one VF".into())
}

/// Two in-process save+restores (A → B, then back), each timed from the source entering
/// STOP_COPY to the destination leaving RESUMING: `(stream bytes, time)` of each.
fn in_process(lmem: u64, commit: Commit) -> Result<Vec<(u64, Duration)>, CliError> {
    let (a, b) = (bmg(lmem, commit)?, bmg(lmem, commit)?);
    let src = a.vf(1).ctx(|| "VF".into())?;
    fill(
        &mut |at, d| {
            src.hw
                .lmem()
                .ok_or_else(|| CliError::new("no LMEM"))?
                .write(at, d)
                .ctx(|| "filling LMEM".into())
        },
        lmem,
    )?;
    Ok(vec![one_way(&a, &b, lmem)?, one_way(&b, &a, lmem)?])
}

/// Migrates VF 1 of `a` into VF 1 of `b` in-process; both run again afterwards.
fn one_way(a: &Arc<XePf>, b: &Arc<XePf>, lmem: u64) -> Result<(u64, Duration), CliError> {
    a.suspend_device(1).ctx(|| "pausing the source".into())?;
    b.suspend_device(1)
        .ctx(|| "pausing the destination".into())?;
    b.resume_data_enter(1).ctx(|| "resume_data_enter".into())?;
    let t = Instant::now();
    a.stop_copy_enter(1).ctx(|| "stop_copy_enter".into())?;
    // Source and destination threads, like two hosts, joined by a small pool of buffers.
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(4);
    let (free_tx, free_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    for _ in 0..4 {
        let _ = free_tx.send(vec![0u8; CHUNK]);
    }
    let a2 = a.clone();
    let reader = std::thread::spawn(move || -> Result<u64, vfio_core::Errno> {
        let mut total = 0u64;
        while let Ok(mut buf) = free_rx.recv() {
            let n = a2.data_read(1, &mut buf)?;
            total += n as u64;
            let end = n < buf.len();
            if full_tx.send((buf, n)).is_err() || end {
                break;
            }
        }
        Ok(total)
    });
    while let Ok((buf, n)) = full_rx.recv() {
        b.data_write(1, &buf[..n]).ctx(|| "data_write".into())?;
        let _ = free_tx.send(buf);
    }
    let total = reader
        .join()
        .map_err(|_| CliError::new("reader panicked"))?
        .ctx(|| "data_read".into())?;
    a.stop_copy_exit(1).ctx(|| "stop_copy_exit".into())?;
    b.resume_data_exit(1).ctx(|| "resume_data_exit".into())?;
    let d = t.elapsed();
    a.resume_device(1).ctx(|| "resuming the source".into())?;
    b.resume_device(1)
        .ctx(|| "resuming the destination".into())?;
    // Spot-check the copy.
    let (x, y) = (a.vf(1).ctx(|| "VF".into())?, b.vf(1).ctx(|| "VF".into())?);
    let (xl, yl) = (
        x.hw.lmem().ok_or_else(|| CliError::new("no LMEM"))?,
        y.hw.lmem().ok_or_else(|| CliError::new("no LMEM"))?,
    );
    let mut p = vec![0u8; 4096];
    let mut q = vec![0u8; 4096];
    for at in [0, lmem / 2, lmem - 4096] {
        xl.read(at, &mut p).ctx(|| "checking".into())?;
        yl.read(at, &mut q).ctx(|| "checking".into())?;
        if p != q {
            return Err(CliError::new(format!(
                "in-process restore differs at {at:#x}"
            )));
        }
    }
    Ok((total, d))
}

struct ServeChild(Child);
impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

fn spawn_serve(dir: &Path, lmem: u64) -> Result<ServeChild, CliError> {
    let mut c = Command::new(std::env::current_exe().ctx(|| "finding myself".into())?)
        .args(["serve", "--platform", "bmg", "--vfs", "1", "--lmem-per-vf"])
        .arg(lmem.to_string())
        .args(["--lmem-commit", "reserved"])
        .arg("--socket-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .ctx(|| "starting a server".into())?;
    let mut out = c.stdout.take().ok_or_else(|| CliError::new("no stdout"))?;
    let mut seen = String::new();
    let mut b = [0u8; 256];
    while !seen.contains("ready") {
        let n = out.read(&mut b).ctx(|| "waiting for the server".into())?;
        if n == 0 {
            return Err(CliError::new("the server exited before it was ready"));
        }
        seen.push_str(&String::from_utf8_lossy(&b[..n]));
    }
    Ok(ServeChild(c))
}

/// A `/proc/PID/status` field in bytes (0 when absent).
pub(crate) fn status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// One migration between the two servers.
#[derive(Debug, Serialize)]
pub struct VfioUserRun {
    pub direction: &'static str,
    pub gib_s: f64,
    pub downtime_ms: f64,
    pub src_peak_rss_growth: u64,
    pub dst_peak_rss_growth: u64,
}

/// Fills A's VF, migrates A → B, then B → A (the second run sees warm caches and kernel
/// lists, as every migration after a host's first does). Returns the runs and the servers'
/// idle RSS (after filling).
fn over_vfio_user(dir: &Path, lmem: u64) -> Result<(Vec<VfioUserRun>, u64, u64), CliError> {
    let (da, db) = (dir.join(format!("a{lmem}")), dir.join(format!("b{lmem}")));
    let a = spawn_serve(&da, lmem)?;
    let b = spawn_serve(&db, lmem)?;
    let mut ca = Client::connect(&da.join("vf1.sock")).ctx(|| "connecting to A".into())?;
    let mut cb = Client::connect(&db.join("vf1.sock")).ctx(|| "connecting to B".into())?;
    fill(
        &mut |at, d| {
            ca.region_write(region::BAR2, at, d)
                .ctx(|| "filling LMEM".into())
        },
        lmem,
    )?;
    let (pa, pb) = (a.0.id(), b.0.id());
    let (ia, ib) = (status(pa, "VmRSS"), status(pb, "VmRSS"));
    let mut runs = Vec::new();
    for a_to_b in [true, false] {
        let (direction, src, dst, ps, pd) = if a_to_b {
            ("A->B", &mut ca, &mut cb, pa, pb)
        } else {
            ("B->A", &mut cb, &mut ca, pb, pa)
        };
        let (rs, rd) = (status(ps, "VmRSS"), status(pd, "VmRSS"));
        for p in [ps, pd] {
            let _ = std::fs::write(format!("/proc/{p}/clear_refs"), "5");
        }
        let r = ops::migrate(src, dst, ops::MigrateOpts::default(), &mut |_, _| {})?;
        runs.push(VfioUserRun {
            direction,
            gib_s: gib_s(r.bytes, Duration::from_secs_f64(r.transfer_seconds)),
            downtime_ms: r.downtime_ms,
            src_peak_rss_growth: status(ps, "VmHWM").saturating_sub(rs),
            dst_peak_rss_growth: status(pd, "VmHWM").saturating_sub(rd),
        });
    }
    Ok((runs, ia, ib))
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = status_mem();
    format!("{cpu}, {cores} cores, {} RAM", human(mem))
}

fn status_mem() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Runs the benchmark for each LMEM size.
pub fn bench(sizes: &str, json: bool) -> Result<(), CliError> {
    let sizes: Vec<u64> = sizes
        .split(',')
        .map(parse_size)
        .collect::<Result<_, _>>()
        .map_err(CliError::new)?;
    let dir = tempfile::tempdir().ctx(|| "creating a temporary directory".into())?;
    let say = |s: String| {
        if !json {
            eprintln!("{s}");
        }
    };
    say("measuring memcpy ...".into());
    let memcpy = memcpy_baseline();
    let mut rows = Vec::new();
    for &lmem in &sizes {
        say(format!(
            "{}: raw UNIX socket between two processes ...",
            human(lmem)
        ));
        let socket = socket_baseline(dir.path(), lmem, true)?;
        let socket_hot = socket_baseline(dir.path(), lmem, false)?;
        say(format!(
            "{}: first-touch write of fresh memory ...",
            human(lmem)
        ));
        let first_touch = first_touch_baseline(lmem)?;
        say(format!("{}: in-process save+restore ...", human(lmem)));
        let runs = in_process(lmem, Commit::Reserved)?;
        let bytes = runs[0].0;
        let inproc = best_rate(&runs);
        say(format!(
            "{}: in-process save+restore, lazy LMEM ...",
            human(lmem)
        ));
        // Lazy: the first run, into a destination that never held data (the second would
        // find A's pages already committed).
        let lazy = in_process(lmem, Commit::Lazy)?;
        let inproc_lazy = gib_s(lazy[0].0, lazy[0].1);
        say(format!(
            "{}: vfio-user migrations between two serve processes ...",
            human(lmem)
        ));
        let (runs, ia, ib) = over_vfio_user(dir.path(), lmem)?;
        let best = runs
            .iter()
            .max_by(|x, y| x.gib_s.total_cmp(&y.gib_s))
            .ok_or_else(|| CliError::new("no migration ran"))?;
        // Server A is the source of the first run, the destination of the second.
        let src_growth = runs[0].src_peak_rss_growth.max(runs[1].src_peak_rss_growth);
        let dst_growth = runs[0].dst_peak_rss_growth.max(runs[1].dst_peak_rss_growth);
        rows.push(Row {
            lmem_bytes: lmem,
            socket_gib_s: socket,
            socket_hot_gib_s: socket_hot,
            first_touch_gib_s: first_touch,
            stream_bytes: bytes,
            inproc_gib_s: inproc,
            inproc_ratio_memcpy: inproc / memcpy,
            inproc_lazy_gib_s: inproc_lazy,
            inproc_lazy_ratio_memcpy: inproc_lazy / memcpy,
            vfio_user_gib_s: best.gib_s,
            vfio_user_ratio_socket: best.gib_s / socket,
            vfio_user_ratio_socket_hot: best.gib_s / socket_hot,
            downtime_ms: best.downtime_ms,
            vfio_user_runs: Vec::new(),
            src_idle_rss: ia,
            dst_idle_rss: ib,
            src_peak_rss_growth: src_growth,
            dst_peak_rss_growth: dst_growth,
        });
        if let Some(r) = rows.last_mut() {
            r.vfio_user_runs = runs;
        }
    }
    let res = Results {
        machine: machine(),
        memcpy_gib_s: memcpy,
        rows,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&res).unwrap_or_default());
        return Ok(());
    }
    println!("machine: {}", res.machine);
    println!("memcpy (best of 5, 256 MiB): {memcpy:.2} GiB/s. LMEM reserved unless marked lazy.");
    println!(
        "socket: raw UNIX socket, memory to memory; hot: through 1 MiB cache-resident buffers."
    );
    println!(
        "{:>9} | {:>10} {:>10} | {:>16} | {:>16} | {:>10} {:>5} {:>5} {:>11} | {:>8} | {:>19} | {:>19}",
        "LMEM",
        "socket",
        "hot",
        "in-proc  ×mcpy",
        "lazy  ×mcpy",
        "vfio-user",
        "×sock",
        "×hot",
        "(1st run)",
        "downtime",
        "idle RSS src/dst",
        "peak RSS+ src/dst"
    );
    for r in &res.rows {
        let first = r.vfio_user_runs.first().map_or(0.0, |x| x.gib_s);
        println!(
            "{:>9} | {:>5.2} GiB/s {:>5.2} GiB/s | {:>5.2} GiB/s {:>5.2} | {:>5.2} GiB/s {:>5.2} | {:>5.2} GiB/s {:>5.2} {:>5.2} {:>5.2} GiB/s | {:>5.0} ms | {:>9} {:>9} | {:>9} {:>9}",
            human(r.lmem_bytes),
            r.socket_gib_s,
            r.socket_hot_gib_s,
            r.inproc_gib_s,
            r.inproc_ratio_memcpy,
            r.inproc_lazy_gib_s,
            r.inproc_lazy_ratio_memcpy,
            r.vfio_user_gib_s,
            r.vfio_user_ratio_socket,
            r.vfio_user_ratio_socket_hot,
            first,
            r.downtime_ms,
            human(r.src_idle_rss),
            human(r.dst_idle_rss),
            human(r.src_peak_rss_growth),
            human(r.dst_peak_rss_growth)
        );
    }
    Ok(())
}
