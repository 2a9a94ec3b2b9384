//! `xe-vfio bench --tcp`: host-to-host migration over loopback TCP against a raw TCP copy of
//! the same bytes (same run), plain and with TLS; and a group of 4 × 256 MiB VFs against one
//! 1 GiB VF. Two emulated hosts in this process (reserved LMEM), `receive` on a thread, the
//! source side as `migrate --to tcp://` runs it; the hosts share every CPU, then each has one
//! of its own ([`Placement`]).

use crate::endpoint::Endpoint;
use crate::net::{self, ReceiveOpts, RemoteReport, Security, TlsFiles};
use crate::serve::{start_host, Host, HostSpec};
use crate::util::{human, CliError, Context};
use rustix::thread::CpuSet;
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vfio_user::{Client, ServerOptions};
use xe_pf::hw::mem::Commit;
use xe_pf::Platform;

const GIB: u64 = 1 << 30;

/// A raw TCP copy of `bytes` over loopback (1 MiB writes and reads, as the migration's
/// frames; the socket buffers as large as the migration's): bytes per second.
fn raw_tcp(bytes: u64, place: &Placement) -> Result<f64, CliError> {
    let l = TcpListener::bind("127.0.0.1:0").ctx(|| "raw TCP: listening".into())?;
    let addr = l.local_addr().ctx(|| "raw TCP".into())?;
    let sink_place = *place;
    let sink = std::thread::spawn(move || -> std::io::Result<u64> {
        sink_place
            .destination(&[0])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let (mut s, _) = l.accept()?;
        vfio_user::tune_socket(&s);
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(n),
                k => n += k as u64,
            }
        }
    });
    let mut s = TcpStream::connect(addr).ctx(|| "raw TCP: connecting".into())?;
    let _ = s.set_nodelay(true);
    vfio_user::tune_socket(&s);
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&buf).ctx(|| "raw TCP: sending".into())?;
        sent += buf.len() as u64;
    }
    drop(s);
    let got = sink
        .join()
        .map_err(|_| CliError::new("raw TCP: the sink panicked"))?
        .ctx(|| "raw TCP: receiving".into())?;
    let secs = t.elapsed().as_secs_f64();
    if got != sent {
        return Err(CliError::new("raw TCP: bytes lost"));
    }
    Ok(sent as f64 / secs)
}

/// Where the two emulated hosts run on this machine's CPUs.
#[derive(Debug, Clone, Copy)]
enum Placement {
    /// Both hosts' threads wherever the scheduler puts them (they share every CPU this
    /// process may use).
    Shared(CpuSet),
    /// Each host on a CPU of its own, as two machines: the source's VF servers and the
    /// migrating thread on CPU `source`, the destination's on CPU `destination` (the raw
    /// copy's sender and receiver likewise).
    OwnCpu { source: usize, destination: usize },
}

impl Placement {
    fn name(&self) -> String {
        match self {
            Placement::Shared(_) => "both hosts on all CPUs (as the scheduler places them)".into(),
            Placement::OwnCpu {
                source,
                destination,
            } => format!(
                "each host on a CPU of its own (source CPU {source}, destination CPU {destination})"
            ),
        }
    }

    /// Each placement this process can make, on the CPUs it may use.
    fn all() -> Result<Vec<Placement>, CliError> {
        let allowed = rustix::thread::sched_getaffinity(None)
            .map_err(|e| CliError::new("reading this process's CPUs").cause(e))?;
        let cpus: Vec<usize> = (0..CpuSet::MAX_CPU)
            .filter(|&c| allowed.is_set(c))
            .collect();
        let mut v = vec![Placement::Shared(allowed)];
        if let [source, destination, ..] = cpus[..] {
            v.push(Placement::OwnCpu {
                source,
                destination,
            });
        } else {
            eprintln!("bench --tcp: one CPU: the hosts cannot have one each; shared only");
        }
        Ok(v)
    }

    fn cpus(&self, destination_side: bool) -> CpuSet {
        match self {
            Placement::Shared(all) => *all,
            Placement::OwnCpu {
                source,
                destination,
            } => {
                let mut set = CpuSet::new();
                set.set(if destination_side {
                    *destination
                } else {
                    *source
                });
                set
            }
        }
    }

    /// Places threads `tids` (0: the calling thread) of the source host.
    fn source(&self, tids: &[i32]) -> Result<(), CliError> {
        pin(tids, &self.cpus(false))
    }

    /// Places threads `tids` (0: the calling thread) of the destination host.
    fn destination(&self, tids: &[i32]) -> Result<(), CliError> {
        pin(tids, &self.cpus(true))
    }
}

/// Sets the CPUs of threads `tids` (0: the calling thread).
fn pin(tids: &[i32], set: &CpuSet) -> Result<(), CliError> {
    for &t in tids {
        rustix::thread::sched_setaffinity(rustix::process::Pid::from_raw(t), set)
            .map_err(|e| CliError::new(format!("placing thread {t} on its CPUs")).cause(e))?;
    }
    Ok(())
}

/// This process's threads.
fn threads() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A host and its threads (those that serve its VFs and run its PF).
fn host_threads(
    dir: &Path,
    vfs: u32,
    lmem: u64,
    stop: &Arc<AtomicBool>,
) -> Result<(Host, Vec<i32>), CliError> {
    let before = threads();
    let h = host(dir, vfs, lmem, stop)?;
    let tids = threads()
        .into_iter()
        .filter(|t| !before.contains(t))
        .collect();
    Ok((h, tids))
}

fn host(dir: &Path, vfs: u32, lmem: u64, stop: &Arc<AtomicBool>) -> Result<Host, CliError> {
    let spec = HostSpec {
        platform: Platform::Bmg,
        vfs,
        lmem_per_vf: lmem,
        lmem_commit: Commit::Reserved,
        pre_copy: false,
        ggtt_per_vf: xe_pf::pf::DEFAULT_VF_GGTT,
    };
    start_host(&spec, dir, stop, &ServerOptions::default())
}

fn clients(socks: &[PathBuf]) -> Result<Vec<Box<dyn Endpoint>>, CliError> {
    socks
        .iter()
        .map(|p| {
            Client::connect(p)
                .map(|c| Box::new(c) as Box<dyn Endpoint>)
                .ctx(|| format!("connecting to {}", p.display()))
        })
        .collect()
}

/// One host-to-host migration of `src`'s VFs into `dst`'s.
fn migrate(
    src: &Host,
    dst: &Host,
    sec: &Security,
    client_sec: &Security,
    place: &Placement,
) -> Result<RemoteReport, CliError> {
    migrate_vfs(&src.sockets, &dst.sockets, sec, client_sec, place)
}

/// One host-to-host migration of the VFs served at `src` into those at `dst`, over one
/// connection.
fn migrate_vfs(
    src: &[PathBuf],
    dst: &[PathBuf],
    sec: &Security,
    client_sec: &Security,
    place: &Placement,
) -> Result<RemoteReport, CliError> {
    let l = TcpListener::bind("127.0.0.1:0").ctx(|| "listening".into())?;
    let url = format!("tcp://{}", l.local_addr().ctx(|| "listening".into())?);
    let (socks, names): (Vec<PathBuf>, Vec<String>) = dst
        .iter()
        .map(|p| (p.clone(), p.display().to_string()))
        .unzip();
    let sec2 = sec.clone();
    let recv_place = *place;
    let recv = std::thread::spawn(move || -> Result<(), CliError> {
        recv_place.destination(&[0])?;
        let mut dsts = clients(&socks)?;
        let opts = ReceiveOpts {
            keep: false,
            json: false,
            quiet: true,
            timeout: Duration::from_secs(60),
        };
        net::receive_on(&l, &mut dsts, &names, &sec2, opts).map(|_| ())
    });
    let mut srcs = clients(src)?;
    let names: Vec<String> = src.iter().map(|p| p.display().to_string()).collect();
    let r = net::migrate_remote(
        &mut srcs,
        &names,
        &url,
        client_sec,
        Duration::from_secs(60),
        crate::ops::MigrateOpts::default(),
    );
    drop(srcs);
    let rr = recv
        .join()
        .map_err(|_| CliError::new("the receiving thread panicked"))?;
    rr?;
    r
}

/// The same VFs as a group's, each over a connection of its own: as many migrations at once,
/// each its own switchover (no P2P ordering across them). Its figures: the time from the
/// first connecting to the last finishing, and each VF's downtime.
fn migrate_apart(
    src: &Host,
    dst: &Host,
    sec: &Security,
    client_sec: &Security,
    place: &Placement,
) -> Result<Apart, CliError> {
    let t = std::time::Instant::now();
    let reports = std::thread::scope(|s| {
        let runs: Vec<_> = src
            .sockets
            .iter()
            .zip(&dst.sockets)
            .map(|(a, b)| {
                s.spawn(move || {
                    place.source(&[0])?;
                    migrate_vfs(
                        std::slice::from_ref(a),
                        std::slice::from_ref(b),
                        sec,
                        client_sec,
                        place,
                    )
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| {
                r.join()
                    .map_err(|_| CliError::new("a migrating thread panicked"))?
            })
            .collect::<Result<Vec<RemoteReport>, CliError>>()
    })?;
    let seconds = t.elapsed().as_secs_f64();
    Ok(Apart {
        seconds,
        bytes: reports.iter().map(|r| r.bytes).sum(),
        downtime_ms: reports.iter().map(|r| r.group_downtime_ms).collect(),
        transport: reports
            .first()
            .map_or(String::new(), |r| r.transport.clone()),
    })
}

/// What [`migrate_apart`] measured.
struct Apart {
    seconds: f64,
    bytes: u64,
    downtime_ms: Vec<f64>,
    transport: String,
}

/// Keeps the better of `best` and `r`, by group downtime.
fn keep_best(best: &mut Option<RemoteReport>, r: RemoteReport) {
    if best
        .as_ref()
        .is_none_or(|b| r.group_downtime_ms < b.group_downtime_ms)
    {
        *best = Some(r);
    }
}

/// Runs of each kind; the best counts.
const ROUNDS: usize = 5;

#[derive(Serialize)]
struct Row {
    name: String,
    bytes: u64,
    gib_s: f64,
    total_seconds: f64,
    group_downtime_ms: f64,
    per_vf_downtime_ms: Vec<f64>,
    transport: String,
}

/// Throughput from the first VF stopping to the last running.
fn gib_s(r: &RemoteReport) -> f64 {
    r.bytes as f64 / GIB as f64 / (r.group_downtime_ms / 1e3).max(1e-9)
}

fn row(name: &str, r: &RemoteReport) -> Row {
    Row {
        name: name.into(),
        bytes: r.bytes,
        gib_s: gib_s(r),
        total_seconds: r.total_seconds,
        group_downtime_ms: r.group_downtime_ms,
        per_vf_downtime_ms: r.vfs.iter().map(|v| v.downtime_ms).collect(),
        transport: if r.spliced {
            format!("{}, spliced", r.transport)
        } else {
            r.transport.clone()
        },
    }
}

/// Non-zero data in VF `vf`'s LMEM (`size` bytes).
fn fill_lmem(h: &Host, vf: u32, size: u64, fill: &[u8]) -> Result<(), CliError> {
    let v = h.pf.vf(vf).ctx(|| format!("VF {vf}"))?;
    let lmem = v.hw.lmem().ok_or_else(|| CliError::new("no LMEM"))?;
    for off in (0..size).step_by(fill.len()) {
        lmem.write(off, fill).ctx(|| "filling LMEM".into())?;
    }
    Ok(())
}

fn aes() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "aes"))
        })
        .unwrap_or(false)
}

/// Runs the benchmark.
pub fn bench_tcp(json: bool, kernel_tls: bool) -> Result<(), CliError> {
    let dir = tempfile::tempdir().ctx(|| "a scratch directory".into())?;
    let stop = Arc::new(AtomicBool::new(false));
    let pki = dir.path().join("pki");
    crate::pki::make(&pki, &["127.0.0.1".into(), "source".into()], 1)?;
    let files = |h: &str| TlsFiles {
        cert: pki.join(format!("{h}.pem")),
        key: pki.join(format!("{h}.key")),
        ca: pki.join("ca.pem"),
        kernel: kernel_tls,
    };
    let (tls_dst, tls_src) = (
        Security::Tls(files("127.0.0.1")),
        Security::Tls(files("source")),
    );
    eprintln!(
        "bench --tcp: four hosts: two with a 1 GiB VF, two with 4 × 256 MiB (reserved LMEM) ..."
    );
    let (a, ta) = host_threads(&dir.path().join("a"), 1, GIB, &stop)?;
    let (b, tb) = host_threads(&dir.path().join("b"), 1, GIB, &stop)?;
    let (c, tc) = host_threads(&dir.path().join("c"), 4, GIB / 4, &stop)?;
    let (d, td) = host_threads(&dir.path().join("d"), 4, GIB / 4, &stop)?;
    let fill: Vec<u8> = (0..1u32 << 20).map(|i| (i * 13 + 7) as u8).collect();
    fill_lmem(&a, 1, GIB, &fill)?;
    for i in 1..=4 {
        fill_lmem(&c, i, GIB / 4, &fill)?;
    }
    let placements = Placement::all()?;
    let mut tables = Vec::new();
    for place in &placements {
        place.source(&[0])?;
        place.source(&[ta.as_slice(), &tc].concat())?;
        place.destination(&[tb.as_slice(), &td].concat())?;
        eprintln!("bench --tcp: {}", place.name());
        let runs = [
            (
                "1 GiB, plain TCP",
                &a,
                &b,
                &Security::Insecure,
                &Security::Insecure,
            ),
            ("1 GiB, TLS", &a, &b, &tls_dst, &tls_src),
            ("4 × 256 MiB, TLS", &c, &d, &tls_dst, &tls_src),
        ];
        tables.push(measure(place, &runs)?);
    }
    // This thread back on every CPU it had (the machine's description counts them).
    placements[0].source(&[0])?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Whether the kernel took the TLS records (see `net::ktls`).
    let kernel = tables
        .iter()
        .flat_map(|t| &t.runs)
        .any(|r| r.transport.ends_with("kernel TLS"));
    if json {
        let v = serde_json::json!({
            "machine": crate::bench::machine(),
            "cpu_aes": aes(),
            "kernel_tls": kernel,
            "placements": tables,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let records = match (kernel, kernel_tls) {
        (true, _) => "the kernel's (kernel TLS)",
        (false, true) => "xe-vfio's (the kernel has no TLS, or refused the keys)",
        (false, false) => "xe-vfio's (--no-kernel-tls)",
    };
    println!(
        "machine: {}; CPU AES instructions: {}; TLS records: {records}",
        crate::bench::machine(),
        if aes() { "yes" } else { "no" }
    );
    for t in &tables {
        t.print();
    }
    Ok(())
}

/// One placement's figures.
#[derive(Serialize)]
struct Table {
    placement: String,
    raw_tcp_gib_s: f64,
    runs: Vec<Row>,
    plain_vs_raw: f64,
    tls_vs_plain: f64,
    group_vs_one_total: f64,
    /// The group's VFs on a connection each, against all on one (total time).
    apart_vs_group_total: f64,
}

/// The runs (plain, TLS, group) and a raw copy take turns in each of [`ROUNDS`] rounds, so all
/// see the same machine (whose speed drifts by half between minutes here); the best of each
/// counts.
fn measure(
    place: &Placement,
    runs: &[(&str, &Host, &Host, &Security, &Security); 3],
) -> Result<Table, CliError> {
    eprintln!("bench --tcp: {ROUNDS} rounds of: a raw TCP copy of 1 GiB; the 1 GiB VF over plain TCP (--insecure), over TLS; the 4 × 256 MiB VFs over TLS as a group on one connection, and apart on a connection each (GiB/s)");
    let mut raw = 0f64;
    let mut best: [Option<RemoteReport>; 3] = [None, None, None];
    let mut apart: Option<Apart> = None;
    for round in 1..=ROUNDS {
        let r = raw_tcp(GIB, place)?;
        // Printed whole at the round's end (the plain run's --insecure warning comes first).
        let mut line = format!("  round {round}: raw {:.2}", r / GIB as f64);
        raw = raw.max(r);
        for ((_, from, to, dst_sec, src_sec), (b, name)) in runs
            .iter()
            .zip(best.iter_mut().zip(["plain", "TLS", "group"]))
        {
            let r = migrate(from, to, dst_sec, src_sec, place)?;
            line += &format!(", {name} {:.2}", gib_s(&r));
            keep_best(b, r);
        }
        let (_, from, to, dst_sec, src_sec) = runs[2];
        let a = migrate_apart(from, to, dst_sec, src_sec, place)?;
        line += &format!(", apart {:.2}", a.bytes as f64 / GIB as f64 / a.seconds);
        if apart.as_ref().is_none_or(|b| a.seconds < b.seconds) {
            apart = Some(a);
        }
        eprintln!("{line}");
    }
    let mut rows = Vec::new();
    for ((name, ..), b) in runs.iter().zip(best) {
        rows.push(row(name, &b.ok_or_else(|| CliError::new("no run"))?));
    }
    let a = apart.ok_or_else(|| CliError::new("no run"))?;
    // Each VF's downtime is its own; no span across them is measured (they are not a group).
    rows.push(Row {
        name: "4 × 256 MiB, apart".into(),
        bytes: a.bytes,
        gib_s: a.bytes as f64 / GIB as f64 / a.seconds,
        total_seconds: a.seconds,
        group_downtime_ms: a.downtime_ms.iter().copied().fold(0.0, f64::max),
        per_vf_downtime_ms: a.downtime_ms,
        transport: format!("{}, a connection each", a.transport),
    });
    let raw_gib = raw / GIB as f64;
    Ok(Table {
        placement: place.name(),
        raw_tcp_gib_s: raw_gib,
        plain_vs_raw: rows[0].gib_s / raw_gib,
        tls_vs_plain: rows[1].gib_s / rows[0].gib_s,
        group_vs_one_total: rows[2].total_seconds / rows[1].total_seconds,
        apart_vs_group_total: rows[3].total_seconds / rows[2].total_seconds,
        runs: rows,
    })
}

impl Table {
    fn print(&self) {
        println!("{}:", self.placement);
        println!(
            "raw TCP copy over loopback, 1 MiB writes (best of {ROUNDS}): {:.2} GiB/s",
            self.raw_tcp_gib_s
        );
        println!("  run                | bytes      GiB/s  ×raw   | total     downtime (group; per VF)          | transport");
        for r in &self.runs {
            let per: Vec<String> = r
                .per_vf_downtime_ms
                .iter()
                .map(|d| format!("{d:.0}"))
                .collect();
            println!(
                "  {:<18} | {:>9} {:>6.2} {:>5.2} | {:>6.3} s {:>8.1} ms ({} ms) | {}",
                r.name,
                human(r.bytes),
                r.gib_s,
                r.gib_s / self.raw_tcp_gib_s,
                r.total_seconds,
                r.group_downtime_ms,
                per.join(", "),
                r.transport
            );
        }
        println!(
            "plain ÷ raw TCP: {:.2} (target ≥ 0.8); TLS ÷ plain: {:.2} (target ≥ 0.5); group total ÷ one 1 GiB VF: {:.2} (target ≤ 1.3)",
            self.plain_vs_raw, self.tls_vs_plain, self.group_vs_one_total
        );
        println!(
            "the group's VFs on a connection each ÷ on one connection (total time): {:.2} (the \"apart\" row's downtime is its slowest VF's: no span across separate migrations)",
            self.apart_vs_group_total
        );
    }
}
