//! `xe-vfio bench --pre-copy`: downtime and total time of stop-copy and pre-copy migrations of
//! a busy VF, at set dirty rates, over vfio-user.
//!
//! Two emulated hosts in this process, each serving one BMG VF (reserved LMEM, PRE_COPY
//! offered) on a UNIX socket; this process is the orchestrator (`ops::migrate`, the code of
//! `xe-vfio migrate`) and the guest. The guest maps `MAPPED` bytes of LMEM through its GGTT
//! (the engine addresses 32 bits of GGTT, so not all of a 4 GiB LMEM) and keeps the engine
//! busy with FILL jobs on random 64 KiB blocks of it, paced to dirty `rate` % of the LMEM size
//! per second: one block per job up to 4096 jobs a second, several contiguous blocks per job
//! above (so the fastest rates dirty faster than the link drains, and pre-copy cannot
//! converge). Its ring writes go through the device (tracked, as BAR2 region
//! writes are). For each rate, a stop-copy migration and a pre-copy one (`--max-downtime
//! 50ms`), back and forth between the hosts; after each the guest does its GGTT fixups on the
//! destination and goes on there. At the end, the guest's data is checked against its
//! reference model: every job of every run, in order, on whichever host ran it.
//!
//! Peak RSS growth is this process's (`VmHWM` reset before each migration): both servers live
//! here, so it bounds the two together.

use crate::ops::{self, PreCopyOpts};
use crate::serve::{start_host, Host, HostSpec};
use crate::util::{human, CliError, Context};
use plotters::prelude::*;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vfio_core::Errno;
use vfio_user::{Client, ServerOptions};
use xe_guest::{DirectAccess, GuestAccess, Job, Rng, Workload};
use xe_pf::hw::mem::Commit;
use xe_pf::hw::VfHw;
use xe_pf::Platform;

/// LMEM the guest maps and dirties.
const MAPPED: u32 = 1 << 30;
/// The dirtied block.
const BLOCK: u32 = 64 << 10;
/// Jobs per second the guest submits at most; faster rates take several contiguous blocks per
/// FILL job (the engine's per-job cost, not its fill speed, would otherwise cap the rate).
const MAX_JOBS_PER_S: f64 = 4096.0;

/// Work the guest keeps queued at most, in bytes of FILL.
const IN_FLIGHT: u64 = 32 << 20;

/// Blocks per FILL job for `bytes_per_s`.
fn blocks_per_job(bytes_per_s: f64) -> u32 {
    let jobs = bytes_per_s / f64::from(BLOCK);
    ((jobs / MAX_JOBS_PER_S).ceil() as u32).clamp(1, 256)
}

/// The guest's access to its VF in this process: registers, and LMEM writes through the device
/// (tracked for PRE_COPY, like BAR2 region writes).
#[derive(Clone)]
struct Tracked(Arc<VfHw>);

impl GuestAccess for Tracked {
    fn mmio_read32(&self, off: u64) -> Result<u32, Errno> {
        DirectAccess(self.0.clone()).mmio_read32(off)
    }
    fn mmio_write32(&self, off: u64, v: u32) -> Result<(), Errno> {
        DirectAccess(self.0.clone()).mmio_write32(off, v)
    }
    /// Through the device, unlike `DirectAccess`: marked dirty.
    fn mem_write(&self, _lmem: bool, addr: u64, data: &[u8]) -> Result<(), Errno> {
        self.0.lmem_write(addr, data)
    }
    fn mem_read(&self, lmem: bool, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        DirectAccess(self.0.clone()).mem_read(lmem, addr, buf)
    }
}

/// One migration of the benchmark.
#[derive(Debug, Serialize, Clone)]
pub struct Run {
    /// Dirty rate asked for, in % of LMEM per second.
    pub rate_pct_s: f64,
    /// The link's cap in bytes per second (`None`: as fast as the hosts go).
    pub link_bytes_s: Option<u64>,
    pub mode: &'static str,
    pub downtime_ms: f64,
    pub total_seconds: f64,
    pub rounds: usize,
    pub bytes: u64,
    pub converged: Option<bool>,
    /// Dirty bytes the guest's jobs wrote while the migration ran (its achieved rate).
    pub dirtied_bytes: u64,
    pub peak_rss_growth: u64,
}

/// The guest's dirtying thread, for the length of one migration.
struct Dirtier {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Workload<Tracked>, u64)>,
}

impl Dirtier {
    fn start(mut w: Workload<Tracked>, bytes_per_s: f64, seed: u64) -> Dirtier {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            let t = Instant::now();
            let k = blocks_per_job(bytes_per_s);
            let len = k * BLOCK;
            let mut queued = 0u64;
            while !flag.load(Ordering::Relaxed) && bytes_per_s > 0.0 {
                let due = (t.elapsed().as_secs_f64() * bytes_per_s / f64::from(len)) as u64;
                let before = queued;
                while queued < due {
                    // At most IN_FLIGHT bytes of work queued: a guest does not queue seconds of
                    // it (and its model applies each job as it is queued).
                    match w.in_flight() {
                        Ok(n) if u64::from(n) * u64::from(len) < IN_FLIGHT => {}
                        _ => break,
                    }
                    let job = Job::Fill {
                        dst: rng.below(MAPPED / BLOCK - (k - 1)) * BLOCK,
                        len,
                        pattern: rng.next_u64() as u32,
                    };
                    // A full ring (the VF is stopped): the guest waits, as a real one would.
                    if w.queue(job).is_err() {
                        break;
                    }
                    queued += 1;
                }
                if queued > before && w.doorbell().is_err() {
                    break;
                }
                // Pacing: a millisecond's worth of jobs at a time.
                std::thread::sleep(Duration::from_millis(1));
            }
            (w, queued * u64::from(len))
        });
        Dirtier { stop, thread }
    }

    fn finish(self) -> Result<(Workload<Tracked>, u64), CliError> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| CliError::new("the guest's dirtying thread panicked"))
    }
}

/// A field of this process's `/proc/self/status`, in bytes.
fn status(field: &str) -> u64 {
    crate::bench::status(std::process::id(), field)
}

fn host(dir: &Path, size: u64, stop: &Arc<AtomicBool>) -> Result<(Host, Client), CliError> {
    let spec = HostSpec {
        platform: Platform::Bmg,
        vfs: 1,
        lmem_per_vf: size,
        lmem_commit: Commit::Reserved,
        pre_copy: true,
        ggtt_per_vf: u64::from(MAPPED) + (16 << 20),
    };
    let h = start_host(&spec, dir, stop, &ServerOptions::default())?;
    let c = Client::connect(&h.sockets[0])
        .ctx(|| format!("connecting to {}", h.sockets[0].display()))?;
    Ok((h, c))
}

/// Runs the benchmark: `size` bytes of LMEM, each of `rates` (% of LMEM per second).
pub fn bench_pre_copy(
    size: u64,
    rates: &[f64],
    max_precopy: Duration,
    link: Option<u64>,
    plot: Option<&Path>,
    json: bool,
) -> Result<(), CliError> {
    if size < u64::from(MAPPED) + (1 << 20) {
        return Err(CliError::new(format!(
            "--sizes: the pre-copy benchmark needs more than {} of LMEM",
            human(u64::from(MAPPED))
        )));
    }
    let dir = tempfile::tempdir().ctx(|| "creating a socket directory".into())?;
    let stop = Arc::new(AtomicBool::new(false));
    eprintln!(
        "bench --pre-copy: two hosts with {} of reserved LMEM each ...",
        human(size)
    );
    let (ha, mut ca) = host(&dir.path().join("a"), size, &stop)?;
    let (hb, mut cb) = host(&dir.path().join("b"), size, &stop)?;
    let vf = |h: &Host| h.pf.vf(1).map(|v| v.hw.clone()).ctx(|| "the VF".into());
    let hws = [vf(&ha)?, vf(&hb)?];
    // Non-zero LMEM everywhere, then the guest's mapping and its random data.
    let lmem = hws[0].lmem().ok_or_else(|| CliError::new("no LMEM"))?;
    let block: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + 1) as u8).collect();
    for off in (0..size).step_by(block.len()) {
        let n = (size - off).min(block.len() as u64) as usize;
        lmem.write(off, &block[..n]).ctx(|| "filling LMEM".into())?;
    }
    let mut w = Workload::setup(Tracked(hws[0].clone()), true, 64 << 10, MAPPED, 0xd1e7)
        .ctx(|| "guest: mapping LMEM".into())?;
    let opts = PreCopyOpts {
        max_downtime: Duration::from_millis(50),
        max_precopy,
        strict: false,
    };
    let mut runs = Vec::new();
    let mut at = 0usize;
    // Every rate at full speed, then the fastest once more over the capped link.
    let mut cases: Vec<(f64, Option<u64>)> = rates.iter().map(|&r| (r, None)).collect();
    if let (Some(l), Some(&top)) = (link, rates.iter().max_by(|a, b| a.total_cmp(b))) {
        cases.push((top, Some(l)));
    }
    for (rate, link) in cases {
        for pre in [false, true] {
            let bytes_per_s = rate / 100.0 * size as f64;
            let mut dirtier = Some(Dirtier::start(w, bytes_per_s, runs.len() as u64 + 1));
            let mut parked = None;
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            let rss = status("VmRSS");
            let (src, dst) = if at == 0 {
                (&mut ca, &mut cb)
            } else {
                (&mut cb, &mut ca)
            };
            // The vCPUs stop before the source device does: the guest's last write is done.
            let mut stop_guest = || parked = dirtier.take().map(Dirtier::finish);
            let mig = ops::MigrateOpts {
                pre_copy: pre.then_some(opts),
                max_bandwidth: link,
            };
            let r = ops::migrate_with(src, dst, mig, &mut |_, _| {}, &mut stop_guest);
            let growth = status("VmHWM").saturating_sub(rss);
            let (back, dirtied) = match parked.or_else(|| dirtier.take().map(Dirtier::finish)) {
                Some(p) => p?,
                None => return Err(CliError::new("the guest was lost")),
            };
            w = back;
            let r = r?;
            // The guest goes on at the destination: fixups, its queued jobs run there.
            at = 1 - at;
            w.set_access(Tracked(hws[at].clone()));
            w.fixups().ctx(|| "guest: GGTT fixups".into())?;

            w.wait_idle(Duration::from_secs(60))
                .ctx(|| "guest: jobs on the destination".into())?;
            let p = r.pre_copy.as_ref();
            let run = Run {
                rate_pct_s: rate,
                link_bytes_s: link,
                mode: if pre { "pre-copy" } else { "stop-copy" },
                downtime_ms: r.downtime_ms,
                total_seconds: r.total_seconds,
                rounds: p.map_or(0, |p| p.rounds.len()),
                bytes: r.bytes,
                converged: p.map(|p| p.converged),
                dirtied_bytes: dirtied,
                peak_rss_growth: growth,
            };
            if !json {
                eprintln!(
                    "  {:>5.1} %/s{} {:>9}: downtime {:>7.1} ms, total {:>6.3} s, {:>3} rounds, {}{}",
                    rate,
                    link.map_or(String::new(), |l| format!(" over {}/s", human(l))),
                    run.mode,
                    run.downtime_ms,
                    run.total_seconds,
                    run.rounds,
                    human(run.bytes),
                    match run.converged {
                        Some(false) => ", NOT converged",
                        _ => "",
                    }
                );
            }
            runs.push(run);
        }
    }
    w.verify().map_err(|e| {
        CliError::new("the guest's data differs from its reference model after the runs").cause(e)
    })?;
    stop.store(true, Ordering::Relaxed);
    drop((ca, cb));
    drop((ha, hb));
    if json {
        let v = serde_json::json!({ "lmem_bytes": size, "runs": runs, "verified": true });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print_table(size, &runs, max_precopy);
    }
    if let Some(p) = plot {
        write_plot(p, size, &runs)?;
        eprintln!("plot written to {}", p.display());
    }
    Ok(())
}

fn print_table(size: u64, runs: &[Run], max_precopy: Duration) {
    println!(
        "pre-copy, {} LMEM (BMG VF, reserved), {} mapped and dirtied by FILL jobs on 64 KiB blocks; budget 50 ms, max-precopy {:.1} s",
        human(size),
        human(u64::from(MAPPED)),
        max_precopy.as_secs_f64()
    );
    println!("guest data verified against its reference model after all runs");
    println!(
        "  dirty %/s (achieved) link     | stop-copy: downtime   total |  pre-copy: downtime   total rounds   sent   conv | downtime ×sc  total ×sc | peak RSS+"
    );
    let achieved =
        |r: &Run| r.dirtied_bytes as f64 / size as f64 / r.total_seconds.max(1e-9) * 100.0;
    let mut late = Vec::new();
    for pair in runs.chunks(2) {
        let [s, p] = pair else { continue };
        let link = p
            .link_bytes_s
            .map_or("full".to_string(), |l| format!("{}/s", human(l)));
        println!(
            "  {:>9.1} ({:>6.1}) {:>9} | {:>17.1} ms {:>5.2} s | {:>17.1} ms {:>5.2} s {:>6} {:>9} {:>5} | {:>11.3} {:>10.2} | {} / {}",
            s.rate_pct_s,
            achieved(p),
            link,
            s.downtime_ms,
            s.total_seconds,
            p.downtime_ms,
            p.total_seconds,
            p.rounds,
            human(p.bytes),
            if p.converged == Some(true) { "yes" } else { "NO" },
            p.downtime_ms / s.downtime_ms.max(1e-9),
            p.total_seconds / s.total_seconds.max(1e-9),
            human(s.peak_rss_growth),
            human(p.peak_rss_growth),
        );
        if p.converged == Some(false) {
            let bound = max_precopy.as_secs_f64() + s.total_seconds;
            late.push(format!(
                "  {:.1} %/s over {link}: not converged; ended after {:.2} s {} max-precopy {:.1} s + stop-copy {:.2} s",
                p.rate_pct_s,
                p.total_seconds,
                if p.total_seconds <= bound { "≤" } else { "> (LATE)" },
                max_precopy.as_secs_f64(),
                s.total_seconds
            ));
        }
    }
    for l in late {
        println!("{l}");
    }
}

/// Downtime against dirty rate, both modes, as an SVG.
fn write_plot(path: &Path, size: u64, runs: &[Run]) -> Result<(), CliError> {
    let err = |e: &dyn std::fmt::Display| CliError::new(format!("drawing {}: {e}", path.display()));
    let max_rate = runs.iter().map(|r| r.rate_pct_s).fold(1.0, f64::max);
    let max_ms = runs.iter().map(|r| r.downtime_ms).fold(10.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Downtime against dirty rate — {} BMG VF over vfio-user",
                human(size)
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_rate * 1.05, 0f64..max_ms)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("dirty rate (% of LMEM per second)")
        .y_desc("downtime (ms)")
        .draw()
        .map_err(|e| err(&e))?;
    for (mode, color) in [("stop-copy", RED), ("pre-copy", BLUE)] {
        let pts: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.mode == mode && r.link_bytes_s.is_none())
            .map(|r| (r.rate_pct_s, r.downtime_ms))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(mode)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(|e| err(&e))?;
    }
    // The capped-link runs: markers only, labelled with the cap.
    for (mode, color) in [("stop-copy", RED), ("pre-copy", BLUE)] {
        let capped: Vec<&Run> = runs
            .iter()
            .filter(|r| r.mode == mode && r.link_bytes_s.is_some())
            .collect();
        let Some(link) = capped.first().and_then(|r| r.link_bytes_s) else {
            continue;
        };
        chart
            .draw_series(
                capped
                    .iter()
                    .map(|r| TriangleMarker::new((r.rate_pct_s, r.downtime_ms), 7, color.filled())),
            )
            .map_err(|e| err(&e))?
            .label(format!("{mode}, link capped at {}/s", human(link)))
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, color.filled()));
    }
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 50.0), (max_rate * 1.05, 50.0)],
            BLACK.mix(0.4),
        ))
        .map_err(|e| err(&e))?
        .label("budget (50 ms)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
