//! The VMM-side migration sequences, over vfio-user clients — for any vfio-user device that
//! implements VFIO migration v2, ours or not.
//!
//! `migrate`: destination RUNNING → STOP → RESUMING first (so it is ready), then the source
//! RUNNING → (RUNNING_P2P →) STOP → STOP_COPY, the stream relayed, source → STOP, destination →
//! STOP (which validates the stream) → RUNNING. States are set one arc at a time, along the
//! kernel's table for each device's own flags (P2P states only where offered), so peers that
//! accept single arcs only are driven correctly. Downtime runs from the source leaving RUNNING
//! to the destination reaching RUNNING.
//!
//! The end of a stream is a reply with no data, or an error reply right after a short one
//! (see `vfio_user::Relay::run`).
//!
//! `migrate` with pre-copy (a source offering PRE_COPY): the destination goes to RESUMING,
//! the source RUNNING → PRE_COPY while it runs on, and rounds are relayed — each the initial
//! plus dirty bytes the source's MIG_PRECOPY_INFO reports, ending early at the stream's
//! temporary end. Before each round the stop-copy time is estimated from the source's
//! MIG_DATA_SIZE (in PRE_COPY: what stop-copy will still send; the dirty bytes plus
//! [`FIXED_STOP_COPY_BYTES`] from a device that does not answer it) and the throughput
//! measured so far; once the initial data is sent and the estimate fits `max_downtime`, the
//! source stops (PRE_COPY → PRE_COPY_P2P → STOP_COPY) and the rest is relayed as in a
//! stop-copy migration. If it has not converged by `max_precopy`, the switch happens anyway
//! (the report says so) or, with `strict`, the migration aborts. A round never runs past
//! `max_precopy`: the first is at most [`PROBE_ROUND_BYTES`] (it measures the link) or what
//! the bandwidth cap sends in that time, later ones at most what the measured throughput
//! sends in the time left.
//!
//! Any failure aborts: the source goes back to RUNNING with its state intact, the destination
//! is reset, and the error says what state each is in. A connection that broke in the middle
//! of a message (a socket or protocol error) is never reused: it is reopened first.

use crate::endpoint::{Endpoint, EpError, Piece, StreamReader};
use crate::util::{CliError, Context};
use serde::Serialize;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use vfio_core::{DeviceState, MigrationFlags};
use vfio_user::{Relay, RelayError};

/// What a migration did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every byte of the stream, pre-copy rounds included.
    pub bytes: u64,
    /// The source's stop-copy estimate (MIG_DATA_SIZE) before the migration.
    pub estimated_bytes: u64,
    /// Seconds spent relaying the stop-copy part.
    pub transfer_seconds: f64,
    pub throughput_mib_s: f64,
    /// From the source VF leaving RUNNING (or PRE_COPY) to the destination reaching RUNNING.
    pub downtime_ms: f64,
    /// From the first request to the destination RUNNING.
    pub total_seconds: f64,
    pub source_state: String,
    pub destination_state: String,
    /// Present for a pre-copy migration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_copy: Option<PreCopyReport>,
    /// The bandwidth cap, bytes per second, if one was set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
}

/// How a migration runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrateOpts {
    /// Pre-copy, with these limits (the source must offer PRE_COPY); `None`: stop-copy.
    pub pre_copy: Option<PreCopyOpts>,
    /// Relay no faster than this many bytes per second (QEMU's `max-bandwidth`).
    pub max_bandwidth: Option<u64>,
}

/// How a pre-copy migration decides to switch over.
#[derive(Debug, Clone, Copy)]
pub struct PreCopyOpts {
    /// Switch over once the estimated stop-copy time fits this.
    pub max_downtime: Duration,
    /// Stop iterating after this long in PRE_COPY.
    pub max_precopy: Duration,
    /// If not converged by `max_precopy`: abort (source keeps running) instead of switching.
    pub strict: bool,
}

/// One pre-copy round.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub bytes: u64,
    pub seconds: f64,
    /// MIG_PRECOPY_INFO after the round.
    pub initial_bytes_after: u64,
    pub dirty_bytes_after: u64,
}

/// The pre-copy part of a migration.
#[derive(Debug, Clone, Serialize)]
pub struct PreCopyReport {
    pub rounds: Vec<Round>,
    pub precopy_bytes: u64,
    pub precopy_seconds: f64,
    /// Bytes relayed after the source stopped.
    pub stop_copy_bytes: u64,
    /// Whether the estimate fitted the budget before `max_precopy`.
    pub converged: bool,
    /// The estimated stop-copy time when the switch was decided.
    pub estimated_downtime_ms: f64,
    pub max_downtime_ms: f64,
    pub max_precopy_seconds: f64,
}

/// Stop-copy bytes that are not dirty VRAM (GUC, MMIO and GGTT packets, trailer), allowed for
/// in the downtime estimate of a source that does not answer MIG_DATA_SIZE: a few hundred KiB
/// on these VFs, rounded up.
pub const FIXED_STOP_COPY_BYTES: u64 = 1 << 20;

/// Bytes of the first pre-copy round, sent before any throughput is known.
pub const PROBE_ROUND_BYTES: u64 = 64 << 20;

/// One device being driven: its client, its migration flags, and the state it is in as far as
/// our requests know.
pub(crate) struct Dev<'a> {
    pub(crate) c: &'a mut dyn Endpoint,
    pub(crate) who: String,
    pub(crate) flags: MigrationFlags,
    pub(crate) state: DeviceState,
    /// `MIG_DATA_SIZE`, if the device answers it (our extension over vfio-user: a device that
    /// does is an xe-vfio server).
    data_size: Option<u64>,
}

impl<'a> Dev<'a> {
    /// Whether data may be spliced into this device: its server reads a message's body in as
    /// many pieces as it arrives in, which an xe-vfio server (one that answers MIG_DATA_SIZE)
    /// does; any other gets each MIG_DATA_WRITE whole, in one sendmsg (libvfio-user reads a
    /// body with one recv).
    pub(crate) fn takes_spliced_bodies(&self) -> bool {
        self.data_size.is_some()
    }

    pub(crate) fn open(c: &'a mut dyn Endpoint, who: &str) -> Result<Dev<'a>, CliError> {
        let flags = c
            .migration_flags()
            .ctx(|| format!("{who}: querying migration support"))?;
        if !flags.contains(MigrationFlags::STOP_COPY) {
            return Err(CliError::new(format!(
                "{who}: device does not support STOP_COPY"
            )));
        }
        let state = c
            .device_state()
            .ctx(|| format!("{who}: reading the state"))?;
        let data_size = c.mig_data_size().ok();
        Ok(Dev {
            c,
            who: who.to_string(),
            flags,
            state,
            data_size,
        })
    }

    /// Moves the device to `to`, one arc per request.
    pub(crate) fn walk(&mut self, to: DeviceState) -> Result<(), CliError> {
        let who = self.who.clone();
        let arcs = vfio_core::path(self.state, to, self.flags).map_err(|e| {
            CliError::new(format!(
                "{who}: no way from {} to {to} with migration flags {:#x}",
                self.state,
                self.flags.bits()
            ))
            .cause(e)
        })?;
        for s in arcs {
            self.c
                .set_device_state(s)
                .ctx(|| format!("{who}: setting the device to {s} (from {})", self.state))?;
            self.state = s;
        }
        Ok(())
    }

    /// After a failure: reopens the connection if it broke mid-message (`!in_step`), then
    /// reads the device's real state.
    fn recover(&mut self, in_step: bool) -> Result<(), EpError> {
        if !in_step {
            self.c.reconnect()?;
        }
        self.state = self.c.device_state()?;
        Ok(())
    }

    /// Abort path of a source: back to RUNNING with its state. Returns what to tell the user.
    pub(crate) fn resume_source(&mut self, in_step: bool) -> String {
        let r = self
            .recover(in_step)
            .map_err(|e| e.to_string())
            .and_then(|()| self.walk(DeviceState::Running).map_err(|e| e.to_string()));
        let who = self.who.clone();
        match r {
            Ok(()) => format!("the {who} is RUNNING again with its state intact"),
            Err(e) => format!(
                "the {who} could not be resumed ({e}); it is in {}: reset it to run it again \
                 (its state is lost then)",
                self.state
            ),
        }
    }

    /// Abort path of a destination: reset, and report the state the reset left.
    pub(crate) fn reset_destination(&mut self, in_step: bool) -> String {
        let r = self.recover(in_step).and_then(|()| {
            self.c.reset()?;
            self.state = self.c.device_state()?;
            Ok(())
        });
        let who = self.who.clone();
        match r {
            Ok(()) if self.state == DeviceState::Running => {
                format!("the {who} was reset and is RUNNING")
            }
            // A reset need not reset the migration state (libvfio-user's does not).
            Ok(()) => format!(
                "the {who} was reset but is still in {} (its reset keeps the migration \
                 state): take it out of {} before using it",
                self.state, self.state
            ),
            Err(e) => format!("the {who} could not be reset ({e})"),
        }
    }
}

fn relay_error(e: RelayError) -> CliError {
    match e {
        RelayError::Source { at, err } => {
            CliError::new(format!("source: reading migration data at byte {at}")).cause(err)
        }
        RelayError::Destination { at, err } => {
            CliError::new(format!("destination: writing migration data at byte {at}")).cause(err)
        }
    }
}

/// Live-migrates the device behind `src` into the device behind `dst`, with pre-copy when
/// `opts.pre_copy` is given. `progress(done, estimate)` is called after every chunk.
pub fn migrate(
    src: &mut dyn Endpoint,
    dst: &mut dyn Endpoint,
    opts: MigrateOpts,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report, CliError> {
    migrate_with(src, dst, opts, progress, &mut || {})
}

/// [`migrate`] for a VMM with a guest: `stop_guest` is called right before the source device
/// stops (it leaves RUNNING or PRE_COPY), where a VMM stops the vCPUs — nothing of the guest
/// may touch the device after it. Its time counts as downtime.
pub fn migrate_with(
    src: &mut dyn Endpoint,
    dst: &mut dyn Endpoint,
    opts: MigrateOpts,
    progress: &mut dyn FnMut(u64, u64),
    stop_guest: &mut dyn FnMut(),
) -> Result<Report, CliError> {
    let MigrateOpts {
        pre_copy,
        max_bandwidth,
    } = opts;
    let start = Instant::now();
    let mut s = Dev::open(src, "source")?;
    let mut d = Dev::open(dst, "destination")?;
    if s.state != DeviceState::Running {
        return Err(
            CliError::new(format!("source is in {}, not RUNNING", s.state))
                .hint("reset the source device, or let a running migration finish"),
        );
    }
    if pre_copy.is_some() && !s.flags.contains(MigrationFlags::PRE_COPY) {
        return Err(CliError::new(format!(
            "source does not offer PRE_COPY (migration flags {})",
            s.flags
        ))
        .hint("serve the source with 'xe-vfio serve --pre-copy', or migrate without --pre-copy"));
    }
    // Destination first: ready before the source stops.
    if let Err(e) = d.walk(DeviceState::Resuming) {
        let _ = d.walk(DeviceState::Running);
        return Err(e);
    }
    let estimate = s.data_size.unwrap_or(0);
    let mut relay = if d.takes_spliced_bodies() {
        Relay::new()
    } else {
        Relay::copying()
    };
    relay.set_max_bandwidth(max_bandwidth);
    let mut pre = None;
    if let Some(opts) = pre_copy {
        match pre_copy_rounds(&mut s, &mut d, &mut relay, opts, max_bandwidth, progress) {
            Ok(r) => pre = Some(r),
            Err((mut e, (src_ok, dst_ok))) => {
                let src_note = s.resume_source(src_ok);
                let dst_note = d.reset_destination(dst_ok);
                e.hint = Some(format!("the migration was aborted; {src_note}; {dst_note}"));
                return Err(e);
            }
        }
    }
    let base = pre.as_ref().map_or(0, |p| p.precopy_bytes);
    let mut progress_after = |done: u64, est: u64| progress(base + done, base + est);
    // Downtime starts here: the guest stops, then the source leaves RUNNING (or PRE_COPY).
    let t0 = Instant::now();
    stop_guest();
    match copy_stream(&mut s, &mut d, &mut relay, estimate, &mut progress_after) {
        Ok((bytes, transfer)) => Ok(Report {
            bytes: base + bytes,
            estimated_bytes: estimate,
            transfer_seconds: transfer,
            throughput_mib_s: bytes as f64 / (1 << 20) as f64 / transfer.max(1e-9),
            downtime_ms: t0.elapsed().as_secs_f64() * 1e3,
            total_seconds: start.elapsed().as_secs_f64(),
            source_state: s.state.to_string(),
            destination_state: d.state.to_string(),
            pre_copy: pre.map(|mut p| {
                p.stop_copy_bytes = bytes;
                p
            }),
            max_bandwidth,
        }),
        Err((mut e, (src_ok, dst_ok))) => {
            // Abort: the source keeps its state and runs again; the destination is reset.
            let src_note = s.resume_source(src_ok);
            let dst_note = d.reset_destination(dst_ok);
            e.hint = Some(format!("the migration was aborted; {src_note}; {dst_note}"));
            Err(e)
        }
    }
}

/// Whether each connection is in step after a failure.
type InStep = (bool, bool);

/// The pre-copy phase: the source to PRE_COPY, rounds relayed until the estimated stop-copy
/// time fits the budget (or `max_precopy` passes). Leaves the source in PRE_COPY.
fn pre_copy_rounds(
    s: &mut Dev<'_>,
    d: &mut Dev<'_>,
    relay: &mut Relay,
    opts: PreCopyOpts,
    bandwidth: Option<u64>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PreCopyReport, (CliError, InStep)> {
    let src_err = |e: CliError| {
        let k = (e.in_step, true);
        (e, k)
    };
    s.walk(DeviceState::PreCopy).map_err(src_err)?;
    let mut plan = Planner::new(opts, bandwidth);
    loop {
        let (initial, dirty) = precopy_info(s).map_err(src_err)?;
        plan.after(initial, dirty);
        let rest = stop_copy_bytes(s, dirty);
        let budget = match plan
            .next(initial, dirty, rest)
            .map_err(|e| (e, (true, true)))?
        {
            Next::Switch => break,
            Next::Round(b) => b,
        };
        let limit = (initial + dirty).min(budget).max(1);
        let base = plan.report.precopy_bytes;
        let r0 = Instant::now();
        let moved = transfer(relay, s, d, Some(limit), &mut |done| {
            progress(base + done, base + limit.max(done))
        })?;
        plan.record(moved, r0.elapsed());
    }
    Ok(plan.finish())
}

/// What to do next in pre-copy.
pub(crate) enum Next {
    /// Stop the source(s): converged, or out of time.
    Switch,
    /// A round of at most this many bytes.
    Round(u64),
}

/// The pre-copy decisions, shared by a local migration and a group between hosts: the
/// throughput measured so far, the estimate, the budget, the deadline, and the report.
pub(crate) struct Planner {
    opts: PreCopyOpts,
    bandwidth: Option<u64>,
    t: Instant,
    sending: f64,
    pub(crate) report: PreCopyReport,
}

impl Planner {
    pub(crate) fn new(opts: PreCopyOpts, bandwidth: Option<u64>) -> Planner {
        Planner {
            opts,
            bandwidth,
            t: Instant::now(),
            sending: 0.0,
            report: PreCopyReport {
                rounds: Vec::new(),
                precopy_bytes: 0,
                precopy_seconds: 0.0,
                stop_copy_bytes: 0,
                converged: false,
                estimated_downtime_ms: f64::INFINITY,
                max_downtime_ms: opts.max_downtime.as_secs_f64() * 1e3,
                max_precopy_seconds: opts.max_precopy.as_secs_f64(),
            },
        }
    }

    /// The precopy info after the last round (its report line).
    pub(crate) fn after(&mut self, initial: u64, dirty: u64) {
        if let Some(r) = self.report.rounds.last_mut() {
            r.initial_bytes_after = initial;
            r.dirty_bytes_after = dirty;
        }
    }

    /// With `initial` bytes of initial data left, `dirty` dirty and `rest` for stop-copy to
    /// send: switch once the initial data is sent and `rest` ÷ the throughput so far fits the
    /// budget, or at `max_precopy` (with `strict`: fail); otherwise a round of at most what
    /// fits in the time left — the first a probe of [`PROBE_ROUND_BYTES`] (or what the
    /// bandwidth cap sends), so the switch is never late by a round.
    pub(crate) fn next(&mut self, initial: u64, dirty: u64, rest: u64) -> Result<Next, CliError> {
        let moved = self.report.precopy_bytes;
        let rate = moved as f64 / self.sending.max(1e-9);
        // Before the first round nothing is known: no estimate fits.
        let estimate = if moved == 0 {
            f64::INFINITY
        } else {
            rest as f64 / rate
        };
        self.report.estimated_downtime_ms = estimate * 1e3;
        if initial == 0 && estimate <= self.opts.max_downtime.as_secs_f64() {
            self.report.converged = true;
            return Ok(Next::Switch);
        }
        if self.t.elapsed() >= self.opts.max_precopy {
            if self.opts.strict {
                return Err(CliError::new(format!(
                    "pre-copy did not converge in {:.1} s: the estimated stop-copy time is \
                     {:.0} ms (budget {:.0} ms; {} dirty, {} rounds)",
                    self.opts.max_precopy.as_secs_f64(),
                    estimate * 1e3,
                    self.report.max_downtime_ms,
                    crate::util::human(dirty),
                    self.report.rounds.len()
                )));
            }
            return Ok(Next::Switch);
        }
        let left = self
            .opts
            .max_precopy
            .saturating_sub(self.t.elapsed())
            .as_secs_f64();
        let known = if moved == 0 {
            self.bandwidth.map(|b| b as f64)
        } else {
            Some(rate)
        };
        Ok(Next::Round(match known {
            Some(r) => ((r * left) as u64).max(1 << 20),
            None => PROBE_ROUND_BYTES,
        }))
    }

    /// A round moved `moved` bytes in `took`. An idle poll (0 bytes: nothing was ready) is no
    /// round, and waits a millisecond rather than spin.
    pub(crate) fn record(&mut self, moved: u64, took: Duration) {
        self.sending += took.as_secs_f64();
        self.report.precopy_bytes += moved;
        if moved == 0 {
            std::thread::sleep(Duration::from_millis(1));
            return;
        }
        self.report.rounds.push(Round {
            bytes: moved,
            seconds: took.as_secs_f64(),
            initial_bytes_after: 0,
            dirty_bytes_after: 0,
        });
    }

    pub(crate) fn finish(mut self) -> PreCopyReport {
        self.report.precopy_seconds = self.t.elapsed().as_secs_f64();
        self.report
    }
}

/// The stop-copy bytes to expect from a source in PRE_COPY with `dirty` bytes dirty: its own
/// estimate (`MIG_DATA_SIZE`, which the uAPI defines in PRE_COPY as what stop-copy will still
/// send — ours and the kernel's drivers answer it), or, from a device that does not answer
/// it, the dirty bytes plus [`FIXED_STOP_COPY_BYTES`].
fn stop_copy_bytes(s: &mut Dev<'_>, dirty: u64) -> u64 {
    s.c.mig_data_size().unwrap_or(dirty + FIXED_STOP_COPY_BYTES)
}

/// MIG_PRECOPY_INFO of a source in PRE_COPY.
fn precopy_info(s: &mut Dev<'_>) -> Result<(u64, u64), CliError> {
    let who = s.who.clone();
    s.c.precopy_info()
        .map_err(|e| client_failure(format!("{who}: reading MIG_PRECOPY_INFO"), e))
}

/// A client call failed: `what` with the cause, and whether the connection is still in step.
pub(crate) fn client_failure(what: String, e: EpError) -> CliError {
    let in_step = e.in_step();
    let mut err = CliError::new(what).cause(e);
    err.in_step = in_step;
    err
}

/// Moves the stream from `s` to `d`: all of it (`limit` `None`), or one pre-copy round of at
/// most `limit` bytes. Between two vfio-user devices the data goes from one socket to the
/// other without entering this process (spliced), the source preparing each chunk while the
/// destination applies the previous one; with a kernel device on either side it is read and
/// written through a buffer ([`pump`]).
fn transfer(
    relay: &mut Relay,
    s: &mut Dev<'_>,
    d: &mut Dev<'_>,
    limit: Option<u64>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, (CliError, InStep)> {
    if let (Some(sc), Some(dc)) = (s.c.client(), d.c.client()) {
        let r = match limit {
            Some(l) => relay.run_round(sc, dc, l, progress),
            None => relay.run(sc, dc, progress),
        };
        return r.map_err(|e| (relay_error(e), relay.in_step()));
    }
    pump(relay, s.c, d.c, limit, progress)
}

/// [`transfer`] through a buffer. The end of the stream is a 0-byte read (or, from a vfio-user
/// source, an error right after a short read); a round also ends at `ENOMSG` (no data ready
/// now, as the kernel's PRE_COPY read says it) or at a short read. The relay's bandwidth cap
/// applies.
fn pump(
    relay: &mut Relay,
    src: &mut dyn Endpoint,
    dst: &mut dyn Endpoint,
    limit: Option<u64>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, (CliError, InStep)> {
    let mut buf = vec![0u8; src.chunk().min(dst.chunk()).max(4096)];
    let mut total = 0u64;
    let mut reader = StreamReader::default();
    relay.pace_start();
    loop {
        let want = match limit {
            Some(l) => (l - total).min(buf.len() as u64) as usize,
            None => buf.len(),
        };
        if want == 0 {
            break;
        }
        let n = match reader.read(src, &mut buf[..want], limit.is_some()) {
            Ok(Piece::Data(n)) => n,
            Ok(Piece::End) => break,
            Err(e) => {
                let ok = e.in_step();
                let err =
                    client_failure(format!("source: reading migration data at byte {total}"), e);
                return Err((err, (ok, true)));
            }
        };
        if let Err(e) = dst.write_data(&buf[..n]) {
            let ok = e.in_step();
            let err = client_failure(
                format!("destination: writing migration data at byte {total}"),
                e,
            );
            return Err((err, (true, ok)));
        }
        relay.paced(n);
        total += n as u64;
        progress(total);
        if limit.is_some() && n < want {
            break;
        }
    }
    Ok(total)
}

fn copy_stream(
    s: &mut Dev<'_>,
    d: &mut Dev<'_>,
    relay: &mut Relay,
    estimate: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(u64, f64), (CliError, InStep)> {
    let in_step = |e: &CliError| (e.in_step, true);
    s.walk(DeviceState::StopCopy).map_err(|e| {
        let k = in_step(&e);
        (e, k)
    })?;
    let t = Instant::now();
    let total = transfer(relay, s, d, None, &mut |done| progress(done, estimate))?;
    let transfer = t.elapsed().as_secs_f64();
    s.walk(DeviceState::Stop).map_err(|e| {
        let k = in_step(&e);
        (e, k)
    })?;
    d.walk(DeviceState::Running).map_err(|e| {
        let k = (true, e.in_step);
        (
            e.context("destination: validating the stream and starting the device"),
            k,
        )
    })?;
    Ok((total, transfer))
}

/// Reads the whole stream from `c` into `out`, until a reply with no data (or an error reply
/// right after a short one).
fn read_stream(
    c: &mut dyn Endpoint,
    out: &mut dyn Write,
    estimate: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, CliError> {
    let mut buf = vec![0u8; c.chunk()];
    let mut total = 0u64;
    let mut reader = StreamReader::default();
    loop {
        let n = match reader.read(c, &mut buf, false) {
            Ok(Piece::Data(n)) => n,
            Ok(Piece::End) => break,
            Err(e) => {
                return Err(client_failure(
                    format!("reading migration data at byte {total}"),
                    e,
                ))
            }
        };
        out.write_all(&buf[..n])
            .ctx(|| "writing the output file".into())?;
        total += n as u64;
        progress(total, estimate);
    }
    out.flush().ctx(|| "writing the output file".into())?;
    Ok(total)
}

/// Saves the device's state into `out`; the device runs again afterwards unless `leave_stopped`.
pub fn save(
    src: &mut dyn Endpoint,
    out: &mut dyn Write,
    leave_stopped: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, CliError> {
    let mut s = Dev::open(src, "device")?;
    let estimate = s.data_size.unwrap_or(0);
    s.walk(DeviceState::StopCopy)?;
    match read_stream(s.c, out, estimate, progress) {
        Ok(total) => {
            let end = if leave_stopped {
                DeviceState::Stop
            } else {
                DeviceState::Running
            };
            s.walk(end)?;
            Ok(total)
        }
        Err(mut e) => {
            let note = s.resume_source(e.in_step);
            e.hint = Some(format!("the save was aborted; {note}"));
            Err(e)
        }
    }
}

/// Restores a saved stream into the device and starts it.
pub fn restore(
    dst: &mut dyn Endpoint,
    input: &mut dyn Read,
    len: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, CliError> {
    let mut d = Dev::open(dst, "device")?;
    d.walk(DeviceState::Resuming)?;
    let r = (|| {
        let mut buf = vec![0u8; d.c.chunk()];
        let mut total = 0u64;
        loop {
            let n = input
                .read(&mut buf)
                .ctx(|| "reading the input file".into())?;
            if n == 0 {
                break;
            }
            d.c.write_data(&buf[..n]).map_err(|e| {
                client_failure(format!("writing migration data at byte {total}"), e)
            })?;
            total += n as u64;
            progress(total, len);
        }
        d.walk(DeviceState::Running)
            .map_err(|e| e.context("validating the stream and starting the device"))?;
        Ok(total)
    })();
    r.map_err(|mut e: CliError| {
        let note = d.reset_destination(e.in_step);
        e.hint = Some(format!("the restore was aborted; {note}"));
        e
    })
}

#[cfg(test)]
mod tests {
    //! The buffered data path ([`pump`]) — the one a kernel device takes — exercised between
    //! two of our VFs, by hiding their vfio-user clients from `migrate`.
    use super::*;
    use crate::serve::{start_host, HostSpec};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use vfio_user::{Client, ServerOptions};
    use xe_pf::hw::mem::Commit;
    use xe_pf::Platform;

    /// A vfio-user device seen as any endpoint: no splice relay.
    struct Plain(Client);

    impl Endpoint for Plain {
        fn migration_flags(&mut self) -> Result<MigrationFlags, EpError> {
            Endpoint::migration_flags(&mut self.0)
        }
        fn device_state(&mut self) -> Result<DeviceState, EpError> {
            Endpoint::device_state(&mut self.0)
        }
        fn set_device_state(&mut self, s: DeviceState) -> Result<(), EpError> {
            Endpoint::set_device_state(&mut self.0, s)
        }
        fn mig_data_size(&mut self) -> Result<u64, EpError> {
            Endpoint::mig_data_size(&mut self.0)
        }
        fn precopy_info(&mut self) -> Result<(u64, u64), EpError> {
            Endpoint::precopy_info(&mut self.0)
        }
        fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, EpError> {
            self.0.read_data(buf)
        }
        fn write_data(&mut self, data: &[u8]) -> Result<(), EpError> {
            self.0.write_data(data)
        }
        fn reset(&mut self) -> Result<(), EpError> {
            Endpoint::reset(&mut self.0)
        }
        fn reconnect(&mut self) -> Result<(), EpError> {
            Endpoint::reconnect(&mut self.0)
        }
        fn chunk(&self) -> usize {
            self.0.chunk()
        }
        fn region_read(&mut self, i: u32, off: u64, buf: &mut [u8]) -> Result<(), EpError> {
            Endpoint::region_read(&mut self.0, i, off, buf)
        }
        fn region_size(&mut self, i: u32) -> Result<u64, EpError> {
            Endpoint::region_size(&mut self.0, i)
        }
    }

    fn host(dir: &std::path::Path, stop: &Arc<AtomicBool>) -> crate::serve::Host {
        let spec = HostSpec {
            platform: Platform::Bmg,
            vfs: 1,
            lmem_per_vf: 8 << 20,
            lmem_commit: Commit::Reserved,
            pre_copy: true,
            ggtt_per_vf: xe_pf::pf::DEFAULT_VF_GGTT,
        };
        start_host(&spec, dir, stop, &ServerOptions::default()).unwrap()
    }

    #[test]
    fn the_buffered_path_migrates_stop_copy_and_pre_copy() {
        let dir = tempfile::tempdir().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b) = (
            host(&dir.path().join("a"), &stop),
            host(&dir.path().join("b"), &stop),
        );
        let lmem = |h: &crate::serve::Host| {
            let hw = h.pf.vf(1).unwrap().hw.clone();
            let mut v = vec![0u8; 8 << 20];
            hw.lmem().unwrap().read(0, &mut v).unwrap();
            v
        };
        let data: Vec<u8> = (0..8u32 << 20)
            .map(|i| (i.wrapping_mul(31) >> 3) as u8)
            .collect();
        a.pf.vf(1)
            .unwrap()
            .hw
            .lmem()
            .unwrap()
            .write(0, &data)
            .unwrap();
        let mut s = Plain(Client::connect(&a.sockets[0]).unwrap());
        let mut d = Plain(Client::connect(&b.sockets[0]).unwrap());
        let r = migrate(&mut s, &mut d, MigrateOpts::default(), &mut |_, _| {}).unwrap();
        assert_eq!(r.destination_state, "RUNNING");
        assert!(lmem(&b) == data, "stop-copy through the buffer");

        // Back, with pre-copy and a bandwidth cap (paced by the buffered path too).
        let pre = MigrateOpts {
            pre_copy: Some(PreCopyOpts {
                max_downtime: Duration::from_millis(50),
                max_precopy: Duration::from_secs(30),
                strict: false,
            }),
            max_bandwidth: Some(64 << 20),
        };
        b.pf.vf(1)
            .unwrap()
            .hw
            .lmem_write(4096, &[0xEE; 100])
            .unwrap();
        let mut want = data.clone();
        want[4096..4196].fill(0xEE);
        let r = migrate(&mut d, &mut s, pre, &mut |_, _| {}).unwrap();
        let p = r.pre_copy.unwrap();
        assert!(p.converged && p.precopy_bytes >= 8 << 20, "{p:?}");
        // 8 MiB and more at 64 MiB/s: an eighth of a second at least.
        assert!(r.total_seconds >= 0.125, "{}", r.total_seconds);
        assert!(lmem(&a) == want, "pre-copy through the buffer");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
