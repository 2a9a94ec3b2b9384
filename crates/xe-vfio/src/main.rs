//! `xe-vfio`: serve emulated Intel Xe SR-IOV VFs over vfio-user and migrate them.

mod bench;
mod bench_net;
mod bench_precopy;
mod demo;
mod endpoint;
mod kernel;
mod net;
mod ops;
mod pki;
mod remote;
mod serve;
mod util;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use util::{human, parse_size, CliError, Context};
use vfio_user::Client;
use xe_pf::hw::mem::Commit;
use xe_pf::migration::inspect::inspect;
use xe_pf::Platform;

#[derive(Parser)]
#[command(
    name = "xe-vfio",
    version,
    about = "Live migration of Intel Xe SR-IOV GPU VFs, emulated, over vfio-user"
)]
struct Cli {
    /// Log more (repeat for more detail); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Seconds to wait for any reply of a vfio-user device (migrate, save, restore) before
    /// giving up; 0 waits forever.
    #[arg(long, global = true, default_value_t = 60)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Emulate a PF and serve each VF on DIR/vfN.sock until SIGTERM/SIGINT.
    Serve {
        /// bmg (discrete, LMEM), ptl or wcl (integrated).
        #[arg(long)]
        platform: Platform,
        /// Number of VFs (1–63).
        #[arg(long)]
        vfs: u32,
        #[arg(long)]
        socket_dir: PathBuf,
        /// LMEM quota of each VF (discrete parts), e.g. 512M, 4G.
        #[arg(long, value_parser = parse_size, default_value = "256M")]
        lmem_per_vf: u64,
        /// LMEM commit: reserved (all committed and mapped at start, as VRAM is reserved at
        /// provisioning: migration at memory speed, the whole LMEM resident) or lazy (pages
        /// appear when written; costs only what is used: for large, sparse setups).
        #[arg(long, default_value = "reserved")]
        lmem_commit: Commit,
        /// Offer PRE_COPY (ours; upstream has none): migration flags STOP_COPY|P2P|PRE_COPY, LMEM
        /// dirty tracking, and BAR2 served without mmap so every write is seen.
        #[arg(long)]
        pre_copy: bool,
        /// Largest max_data_xfer_size the servers agree to.
        #[arg(long, value_parser = parse_size, default_value = "1M")]
        max_xfer: u64,
    },
    /// Live-migrate the VF at --from into the VF at --to, or VFs (comma-separated) into a
    /// `xe-vfio receive` on another host (--to tcp://HOST:PORT).
    Migrate {
        /// A vfio-user socket, or a kernel VFIO device: vfio:/dev/vfio/devices/vfioN,
        /// vfio:/sys/..., a PCI address (0000:03:00.1) or an mdev UUID.
        #[arg(long)]
        from: String,
        /// Same forms as --from.
        #[arg(long)]
        to: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Iterative pre-copy of VRAM while the source runs (the source must offer PRE_COPY).
        #[arg(long)]
        pre_copy: bool,
        /// With --pre-copy: switch over once the estimated stop-copy time fits this.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "50ms", requires = "pre_copy")]
        max_downtime: std::time::Duration,
        /// With --pre-copy: stop iterating after this long.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s", requires = "pre_copy")]
        max_precopy: std::time::Duration,
        /// With --pre-copy: if it has not converged by --max-precopy, abort (the source keeps
        /// running) instead of switching over anyway.
        #[arg(long, requires = "pre_copy")]
        strict: bool,
        /// Relay at most this many bytes per second (e.g. 1G: 1 GiB/s), as QEMU's
        /// max-bandwidth: to share a link, or to model a slower one.
        #[arg(long, value_parser = parse_size)]
        max_bandwidth: Option<u64>,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Receive a migration from another host (`migrate --to tcp://…` there) into local VFs.
    Receive {
        /// ADDR:PORT to listen on.
        #[arg(long)]
        listen: String,
        /// The local VF(s), comma-separated, in the source's order (sockets or kernel devices).
        #[arg(long)]
        to: String,
        /// Stay and take further migrations (each refused or taken whole).
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Save a VF's migration stream to a file (the VF runs again afterwards).
    Save {
        /// A vfio-user socket, or a kernel VFIO device: vfio:/dev/vfio/devices/vfioN,
        /// vfio:/sys/..., a PCI address (0000:03:00.1) or an mdev UUID.
        #[arg(long)]
        from: String,
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Leave the VF stopped after saving.
        #[arg(long)]
        leave_stopped: bool,
    },
    /// Restore a saved stream into a VF and start it.
    Restore {
        /// A vfio-user socket, or a kernel VFIO device: vfio:/dev/vfio/devices/vfioN,
        /// vfio:/sys/..., a PCI address (0000:03:00.1) or an mdev UUID.
        #[arg(long)]
        to: String,
        #[arg(short = 'i', long = "input")]
        input: PathBuf,
    },
    /// Check and summarise a migration stream file.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Two emulated hosts, a busy VF, a live migration, everything verified.
    Demo,
    /// Measure migration throughput, downtime and memory against memcpy and raw-socket
    /// baselines from the same run.
    Bench {
        /// LMEM sizes to migrate, comma-separated (with --pre-copy: one size, default 4G).
        #[arg(long)]
        sizes: Option<String>,
        #[arg(long)]
        json: bool,
        /// Stop-copy against pre-copy migrations of a busy VF at set dirty rates.
        #[arg(long)]
        pre_copy: bool,
        /// Host-to-host migration over loopback TCP (plain and TLS) against a raw TCP copy,
        /// and a group of 4 × 256 MiB VFs against one 1 GiB VF.
        #[arg(long, conflicts_with = "pre_copy")]
        tcp: bool,
        /// With --tcp: TLS sealed in this process even where the kernel has TLS.
        #[arg(long, requires = "tcp")]
        no_kernel_tls: bool,
        /// With --pre-copy: the dirty rates, in % of LMEM per second, comma-separated.
        #[arg(long, default_value = "0,1,5,25,100", requires = "pre_copy")]
        rates: String,
        /// With --pre-copy: the pre-copy time limit of each migration.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s", requires = "pre_copy")]
        max_precopy: std::time::Duration,
        /// With --pre-copy: the fastest rate once more, over a link capped at this many bytes
        /// per second (a VF that dirties faster than the link drains; 0: skip).
        #[arg(long, value_parser = parse_size, default_value = "1G", requires = "pre_copy")]
        link: u64,
        /// With --pre-copy: write a plot of downtime against dirty rate (SVG) to this file.
        #[arg(long, requires = "pre_copy")]
        plot: Option<PathBuf>,
    },
    /// Check a kernel VFIO device's migration state machine against vfio-core's: every
    /// (current, requested) pair on the device, as a matrix; exits 1 on any difference.
    FsmCheck {
        /// vfio:/dev/vfio/devices/vfioN, vfio:/sys/..., a PCI address or an mdev UUID.
        dev: String,
        #[arg(long)]
        json: bool,
    },
    /// Make a CA and a certificate per host (DNS name or IP address) for `migrate --to tcp://`
    /// and `receive`, in DIR: ca.pem, ca.key, HOST.pem, HOST.key. For a test setup.
    Certs {
        dir: PathBuf,
        #[arg(required = true)]
        hosts: Vec<String>,
        /// Validity, in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// (internal, for tests) Read and/or write bytes of a kernel VFIO device's region.
    #[command(hide = true)]
    Region {
        dev: String,
        index: u32,
        /// Offset in the region (decimal or 0x hex).
        offset: String,
        /// Bytes to write first, as hex.
        #[arg(long)]
        write: Option<String>,
        /// Bytes to read then, printed as hex.
        #[arg(long, default_value_t = 0)]
        read: usize,
    },
    /// (internal) The receiving process of the raw-socket baseline.
    #[command(hide = true)]
    BenchSink { path: PathBuf },
}

fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

pub(crate) fn connect(p: &std::path::Path, timeout: u64) -> Result<Client, CliError> {
    let t = (timeout > 0).then(|| std::time::Duration::from_secs(timeout));
    Client::connect(p)
        .and_then(|mut c| c.set_reply_timeout(t).map(|()| c))
        .map_err(|e| {
        // Nobody listening: say how to start a server. Anything else is what the peer
        // answered, which the cause says.
        let nobody = matches!(&e, vfio_user::ClientError::Io(io) if matches!(
            io.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        ));
        let err = CliError::new(format!("connecting to {}", p.display())).cause(e);
        if nobody {
            err.hint("no vfio-user server listens there: is 'xe-vfio serve' (or the device's server) running?")
        } else {
            err
        }
    })
}

/// How a connection between hosts is protected (migrate --to tcp://, receive).
#[derive(clap::Args, Debug)]
struct TlsArgs {
    /// TLS: this side's certificate (PEM), for tcp:// (both sides present one).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// TLS: this side's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// TLS: the CA the peer's certificate must chain to (PEM).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Plain TCP, unencrypted and unauthenticated (said on every run).
    #[arg(long)]
    insecure: bool,
    /// TLS: seal and open the records in this process even where the kernel has TLS (by
    /// default the kernel takes them once the handshake is done, where it can).
    #[arg(long)]
    no_kernel_tls: bool,
}

impl TlsArgs {
    fn given(&self) -> bool {
        self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_ca.is_some()
            || self.insecure
            || self.no_kernel_tls
    }

    fn security(self) -> Result<net::Security, CliError> {
        if self.insecure && self.no_kernel_tls {
            return Err(CliError::new("--no-kernel-tls is for TLS, not --insecure"));
        }
        net::Security::from_args(
            self.tls_cert,
            self.tls_key,
            self.tls_ca,
            self.insecure,
            !self.no_kernel_tls,
        )
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.cmd {
        Cmd::Serve {
            platform,
            vfs,
            socket_dir,
            lmem_per_vf,
            lmem_commit,
            pre_copy,
            max_xfer,
        } => {
            let max_xfer = u32::try_from(max_xfer)
                .ok()
                .filter(|v| *v > 0 && *v <= vfio_user::msg::MAX_DATA_XFER_LIMIT)
                .ok_or_else(|| CliError::new("--max-xfer must be between 1 byte and 16M"))?;
            let spec = serve::HostSpec {
                platform,
                vfs,
                lmem_per_vf,
                lmem_commit,
                pre_copy,
                ggtt_per_vf: xe_pf::pf::DEFAULT_VF_GGTT,
            };
            serve::serve(&spec, &socket_dir, max_xfer)
        }
        Cmd::Migrate {
            from,
            to,
            json,
            pre_copy,
            max_downtime,
            max_precopy,
            strict,
            max_bandwidth,
            tls,
        } => {
            let opts = ops::MigrateOpts {
                pre_copy: pre_copy.then_some(ops::PreCopyOpts {
                    max_downtime,
                    max_precopy,
                    strict,
                }),
                max_bandwidth,
            };
            if to.starts_with("tcp://") {
                let sec = tls.security()?;
                let names: Vec<String> = from.split(',').map(str::to_string).collect();
                let mut srcs = names
                    .iter()
                    .map(|n| endpoint::open(n, cli.timeout))
                    .collect::<Result<Vec<_>, _>>()?;
                let timeout = std::time::Duration::from_secs(cli.timeout.max(1));
                let r = net::migrate_remote(&mut srcs, &names, &to, &sec, timeout, opts)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                } else {
                    print_remote(&r);
                }
                return Ok(());
            }
            if tls.given() {
                return Err(CliError::new(
                    "--tls-*, --insecure and --no-kernel-tls are for --to tcp://HOST:PORT",
                ));
            }
            if from.contains(',') {
                return Err(
                    CliError::new("several --from VFs need --to tcp://HOST:PORT")
                        .hint("locally, migrate one VF at a time"),
                );
            }
            let mut src = endpoint::open(&from, cli.timeout)?;
            let mut dst = endpoint::open(&to, cli.timeout)?;
            let pb = progress_bar(0);
            let r = ops::migrate(&mut *src, &mut *dst, opts, &mut |done, est| {
                pb.set_length(est.max(done));
                pb.set_position(done);
            });
            pb.finish_and_clear();
            let r = r?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print_report(&r, &from, &to);
            }
            Ok(())
        }
        Cmd::Save {
            from,
            output,
            leave_stopped,
        } => {
            let mut src = endpoint::open(&from, cli.timeout)?;
            let f = File::create(&output).ctx(|| format!("creating {}", output.display()))?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            let pb = progress_bar(0);
            let r = ops::save(&mut *src, &mut w, leave_stopped, &mut |d, e| {
                pb.set_length(e.max(d));
                pb.set_position(d);
            });
            pb.finish_and_clear();
            let n = r.inspect_err(|_| {
                let _ = std::fs::remove_file(&output);
            })?;
            println!("saved {} from {} to {}", human(n), from, output.display());
            Ok(())
        }
        Cmd::Restore { to, input } => {
            let f = File::open(&input).ctx(|| format!("opening {}", input.display()))?;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let mut dst = endpoint::open(&to, cli.timeout)?;
            let pb = progress_bar(len);
            let r = ops::restore(
                &mut *dst,
                &mut BufReader::with_capacity(1 << 20, f),
                len,
                &mut |d, _| pb.set_position(d),
            );
            pb.finish_and_clear();
            let n = r?;
            println!(
                "restored {} from {} into {}; the device is RUNNING",
                human(n),
                input.display(),
                to
            );
            Ok(())
        }
        Cmd::Inspect { file, json } => {
            let f = File::open(&file).ctx(|| format!("opening {}", file.display()))?;
            let i = inspect(BufReader::with_capacity(1 << 20, f))
                .ctx(|| format!("reading {}", file.display()))?;
            print_inspection(&file, &i, json);
            if i.is_valid() {
                Ok(())
            } else {
                Err(CliError::new(format!(
                    "{} is not a valid migration stream",
                    file.display()
                )))
            }
        }
        Cmd::Demo => demo::demo(),
        Cmd::Bench {
            json,
            tcp: true,
            no_kernel_tls,
            ..
        } => bench_net::bench_tcp(json, !no_kernel_tls),
        Cmd::Bench {
            sizes,
            json,
            pre_copy: false,
            ..
        } => bench::bench(sizes.as_deref().unwrap_or("256M,1G,4G"), json),
        Cmd::Bench {
            sizes,
            json,
            rates,
            max_precopy,
            link,
            plot,
            ..
        } => {
            let size = parse_size(sizes.as_deref().unwrap_or("4G")).map_err(CliError::new)?;
            let rates = rates
                .split(',')
                .map(|r| r.trim().parse::<f64>().ok().filter(|r| *r >= 0.0))
                .collect::<Option<Vec<f64>>>()
                .ok_or_else(|| {
                    CliError::new(format!("--rates {rates}: not a list of percentages"))
                })?;
            let link = (link > 0).then_some(link);
            bench_precopy::bench_pre_copy(size, &rates, max_precopy, link, plot.as_deref(), json)
        }
        Cmd::BenchSink { path } => bench::sink(&path),
        Cmd::Receive {
            listen,
            to,
            keep,
            json,
            tls,
        } => {
            let sec = tls.security()?;
            let names: Vec<String> = to.split(',').map(str::to_string).collect();
            let mut dsts = names
                .iter()
                .map(|n| endpoint::open(n, cli.timeout))
                .collect::<Result<Vec<_>, _>>()?;
            let opts = net::ReceiveOpts {
                keep,
                json,
                quiet: false,
                timeout: std::time::Duration::from_secs(cli.timeout.max(1)),
            };
            net::receive(&listen, &mut dsts, &names, &sec, opts)
        }
        Cmd::Certs { dir, hosts, days } => {
            for p in pki::make(&dir, &hosts, days)? {
                println!("wrote {}", p.display());
            }
            Ok(())
        }
        Cmd::FsmCheck { dev, json } => {
            let mut d = endpoint::open_kernel(&dev)?;
            let cells = kernel::fsm_matrix(&mut d)?;
            let diff: Vec<&kernel::Cell> =
                cells.iter().filter(|c| c.kernel != c.vfio_core).collect();
            if json {
                let v =
                    serde_json::json!({ "device": dev, "cells": cells, "differences": diff.len() });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print_matrix(&dev, &cells);
            }
            if diff.is_empty() {
                Ok(())
            } else {
                Err(CliError::new(format!(
                    "{} of {} pairs differ from vfio-core's state machine: {}",
                    diff.len(),
                    cells.len(),
                    diff.iter()
                        .map(|c| format!(
                            "{} → {}: kernel {}, vfio-core {}",
                            c.current, c.requested, c.kernel, c.vfio_core
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                )))
            }
        }
        Cmd::Region {
            dev,
            index,
            offset,
            write,
            read,
        } => {
            let d = endpoint::open_kernel(&dev)?;
            let off = parse_number(&offset)?;
            if let Some(hex) = write {
                let data = parse_hex(&hex)?;
                d.region_write(index, off, &data)
                    .ctx(|| format!("{dev}: writing region {index} at {off:#x}"))?;
            }
            if read > 0 {
                let mut buf = vec![0u8; read];
                d.region_read(index, off, &mut buf)
                    .ctx(|| format!("{dev}: reading region {index} at {off:#x}"))?;
                println!(
                    "{}",
                    buf.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
            }
            Ok(())
        }
    }
}

fn parse_number(s: &str) -> Result<u64, CliError> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| CliError::new(format!("'{s}' is not a number")))
}

fn parse_hex(s: &str) -> Result<Vec<u8>, CliError> {
    let bad = || CliError::new(format!("'{s}' is not hex bytes (e.g. 41ff00)"));
    if s.len() % 2 != 0 {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

/// The state-machine matrix: a row per current state, a column per requested value; each
/// cell the kernel's result (`=` where vfio-core agrees, `≠` where not).
fn print_matrix(dev: &str, cells: &[kernel::Cell]) {
    use vfio_core::DeviceState;
    let short = |o: &kernel::Outcome| match o {
        kernel::Outcome::Reached(s) => format!("{s}"),
        kernel::Outcome::Refused(e, _) => format!("{e}"),
    };
    println!("migration state machine of {dev}: kernel result per (current ↓, requested →); '=' vfio-core agrees");
    let cols: Vec<String> = (0..=kernel::INVALID_STATE)
        .map(|r| DeviceState::try_from(r).map_or(format!("{r} (invalid)"), |s| s.to_string()))
        .collect();
    print!("{:>13} |", "");
    for c in &cols {
        print!(" {c:>13}");
    }
    println!();
    let mut row = None;
    for c in cells {
        if row != Some(c.current) {
            if row.is_some() {
                println!();
            }
            row = Some(c.current);
            print!("{:>13} |", c.current.to_string());
        }
        let mark = if c.kernel == c.vfio_core { '=' } else { '≠' };
        print!(" {:>12}{mark}", short(&c.kernel));
    }
    println!();
    let same = cells.iter().filter(|c| c.kernel == c.vfio_core).count();
    println!("{same} of {} pairs as vfio-core decides (ERROR cannot be requested, so it is no current state)", cells.len());
}

fn print_remote(r: &net::RemoteReport) {
    println!(
        "migrated {} VF(s) → {} over {}{}",
        r.vfs.len(),
        r.destination,
        r.transport,
        if r.spliced { ", data spliced" } else { "" }
    );
    if let Some(p) = &r.pre_copy {
        let how = if p.converged {
            format!(
                "converged (estimated stop-copy {:.1} ms)",
                p.estimated_downtime_ms
            )
        } else {
            format!(
                "NOT CONVERGED in {:.1} s (estimated stop-copy {:.1} ms > budget {:.0} ms): switched over anyway",
                p.max_precopy_seconds, p.estimated_downtime_ms, p.max_downtime_ms
            )
        };
        println!(
            "  pre-copy    {} in {} rounds, {:.3} s, sources running; {how}",
            human(p.precopy_bytes),
            p.rounds.len(),
            p.precopy_seconds
        );
    }
    if let Some(b) = r.max_bandwidth {
        println!("  bandwidth   capped at {}/s (--max-bandwidth)", human(b));
    }

    for v in &r.vfs {
        println!(
            "  {:<40} {:>10}  downtime {:>8.1} ms  destination {}",
            v.source,
            human(v.bytes),
            v.downtime_ms,
            v.destination_state
        );
    }
    println!(
        "  group       {} in {:.3} s total, {:.0} MiB/s; downtime {:.1} ms (first VF stopped → all running)",
        human(r.bytes),
        r.total_seconds,
        r.throughput_mib_s,
        r.group_downtime_ms
    );
}

fn print_report(r: &ops::Report, from: &str, to: &str) {
    println!("migrated {from} → {to}");
    if let Some(p) = &r.pre_copy {
        println!(
            "  pre-copy    {} in {} rounds, {:.3} s, source running",
            human(p.precopy_bytes),
            p.rounds.len(),
            p.precopy_seconds
        );
        for (i, x) in p.rounds.iter().enumerate() {
            println!(
                "    round {:>3}  {:>10} in {:.3} s, then {} dirty, {} initial left",
                i + 1,
                human(x.bytes),
                x.seconds,
                human(x.dirty_bytes_after),
                human(x.initial_bytes_after)
            );
        }
        if p.converged {
            println!(
                "  converged   estimated stop-copy {:.1} ms ≤ budget {:.0} ms",
                p.estimated_downtime_ms, p.max_downtime_ms
            );
        } else {
            println!(
                "  NOT CONVERGED in {:.1} s (estimated stop-copy {:.1} ms > budget {:.0} ms): \
                 switched over anyway (--strict aborts instead)",
                p.max_precopy_seconds, p.estimated_downtime_ms, p.max_downtime_ms
            );
        }
        println!("  stop-copy   {}", human(p.stop_copy_bytes));
    }
    println!(
        "  bytes       {} ({} stop-copy estimate before)",
        human(r.bytes),
        human(r.estimated_bytes)
    );
    println!(
        "  transfer    {:.3} s stop-copy, {:.0} MiB/s; total {:.3} s",
        r.transfer_seconds, r.throughput_mib_s, r.total_seconds
    );
    if let Some(b) = r.max_bandwidth {
        println!("  bandwidth   capped at {}/s (--max-bandwidth)", human(b));
    }
    println!(
        "  downtime    {:.1} ms (source leaving RUNNING or PRE_COPY → destination RUNNING)",
        r.downtime_ms
    );
    println!(
        "  source      {}; destination {}",
        r.source_state, r.destination_state
    );
}

fn print_inspection(file: &std::path::Path, i: &xe_pf::migration::inspect::Inspection, json: bool) {
    let platform = i.descriptor.as_ref().and_then(|d| d.platform());
    if json {
        let totals: Vec<_> = i
            .totals
            .iter()
            .map(|((tile, gt, t), v)| serde_json::json!({"tile": tile, "gt": gt, "type": t.name(), "packets": v.packets, "bytes": v.bytes}))
            .collect();
        let v = serde_json::json!({
            "file": file.display().to_string(),
            "valid": i.is_valid(),
            "total_bytes": i.total_bytes,
            "has_trailer": i.has_trailer,
            "error": i.error.as_ref().map(|(at, e)| serde_json::json!({"at": at, "message": e.to_string()})),
            "descriptor": i.descriptor.as_ref().map(|d| serde_json::json!({
                "device_id": d.device_id, "revision": d.revision,
                "platform": platform.map(|p| p.name()),
                "unknown_klvs": d.unknown.iter().map(|(k, v)| serde_json::json!({"key": k, "value": v})).collect::<Vec<_>>(),
            })),
            "packets": i.packets.len(),
            "totals": totals,
            "vram_coverage": i.vram_coverage,
            "vram_gaps": i.vram_gaps,
            "vram_resent": i.vram_resent,
            "flagged_packets": i.flagged,
            "xe_stream": i.is_xe_stream(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    if !i.is_xe_stream() {
        let size = std::fs::metadata(file).map_or(i.total_bytes, |m| m.len());
        println!(
            "{}: not an Xe SR-IOV migration stream ({size} bytes, opaque to this tool)",
            file.display()
        );
        if let Some((_, e)) = &i.error {
            println!("  its first 24 bytes are no version-1 packet header: {e}");
        }
        return;
    }
    println!(
        "{}: {} in {} packets",
        file.display(),
        human(i.total_bytes),
        i.packets.len()
    );
    match &i.error {
        None if i.has_trailer => {
            println!("  valid: descriptor first, trailer last, all headers well-formed")
        }
        None => println!("  INVALID: no trailer"),
        Some((at, e)) => println!("  INVALID at byte {at}: {e}"),
    }
    if let Some(d) = &i.descriptor {
        println!(
            "  descriptor: device {:#06x} rev {:#04x}{}{}",
            d.device_id,
            d.revision,
            platform
                .map(|p| format!(" ({})", p.long_name()))
                .unwrap_or_default(),
            if d.unknown.is_empty() {
                String::new()
            } else {
                format!(", {} unknown KLVs", d.unknown.len())
            }
        );
    }
    println!(
        "  {:<5}{:<4}{:<12}{:>8}{:>14}",
        "tile", "gt", "type", "packets", "bytes"
    );
    for ((tile, gt, t), v) in &i.totals {
        println!(
            "  {:<5}{:<4}{:<12}{:>8}{:>14}",
            tile,
            gt,
            t.name(),
            v.packets,
            v.bytes
        );
    }
    if !i.vram_coverage.is_empty() {
        let covered: u64 = i.vram_coverage.iter().map(|(s, e)| e - s).sum();
        println!(
            "  VRAM: {} covered in {} range(s), {} gap(s)",
            human(covered),
            i.vram_coverage.len(),
            i.vram_gaps.len()
        );
        for (s, e) in &i.vram_gaps {
            println!("    gap {s:#x}..{e:#x} ({})", human(e - s));
        }
        if i.vram_resent > 0 {
            println!(
                "  VRAM: {} sent more than once (later packets replace earlier ones)",
                human(i.vram_resent)
            );
        }
    }
    if i.flagged > 0 {
        println!(
            "  {} packet(s) with non-zero header flags (ignored, as upstream does)",
            i.flagged
        );
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // vfio-ioctls warns about every IRQ index a device lacks (an mdev has few): not ours to
    // show unless asked for.
    let level = match cli.verbose {
        0 => "warn,vfio_ioctls=error",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xe-vfio: {e}");
            ExitCode::FAILURE
        }
    }
}
