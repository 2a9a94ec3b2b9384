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
//! Any failure aborts: the source goes back to RUNNING with its state intact, the destination
//! is reset, and the error says what state each is in. A connection that broke in the middle
//! of a message (a socket or protocol error) is never reused: it is reopened first.

use crate::util::{CliError, Context};
use serde::Serialize;
use std::io::{Read, Write};
use std::time::Instant;
use vfio_core::{DeviceState, MigrationFlags};
use vfio_user::{Client, ClientError, Relay, RelayError};

/// What a migration did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub bytes: u64,
    pub estimated_bytes: u64,
    pub transfer_seconds: f64,
    pub throughput_mib_s: f64,
    pub downtime_ms: f64,
    pub source_state: String,
    pub destination_state: String,
}

/// One device being driven: its client, its migration flags, and the state it is in as far as
/// our requests know.
struct Dev<'a> {
    c: &'a mut Client,
    who: &'static str,
    flags: MigrationFlags,
    state: DeviceState,
    /// `MIG_DATA_SIZE`, if the device answers it (our extension over vfio-user: a device that
    /// does is an xe-vfio server).
    data_size: Option<u64>,
}

impl<'a> Dev<'a> {
    fn open(c: &'a mut Client, who: &'static str) -> Result<Dev<'a>, CliError> {
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
            who,
            flags,
            state,
            data_size,
        })
    }

    /// Moves the device to `to`, one arc per request.
    fn walk(&mut self, to: DeviceState) -> Result<(), CliError> {
        let who = self.who;
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
    fn recover(&mut self, in_step: bool) -> Result<(), ClientError> {
        if !in_step {
            self.c.reconnect()?;
        }
        self.state = self.c.device_state()?;
        Ok(())
    }

    /// Abort path of a source: back to RUNNING with its state. Returns what to tell the user.
    fn resume_source(&mut self, in_step: bool) -> String {
        let r = self
            .recover(in_step)
            .map_err(|e| e.to_string())
            .and_then(|()| self.walk(DeviceState::Running).map_err(|e| e.to_string()));
        let who = self.who;
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
    fn reset_destination(&mut self, in_step: bool) -> String {
        let r = self.recover(in_step).and_then(|()| {
            self.c.reset()?;
            self.state = self.c.device_state()?;
            Ok(())
        });
        let who = self.who;
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

/// Live-migrates the device behind `src` into the device behind `dst`.
/// `progress(done, estimate)` is called after every chunk.
pub fn migrate(
    src: &mut Client,
    dst: &mut Client,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report, CliError> {
    let mut s = Dev::open(src, "source")?;
    let mut d = Dev::open(dst, "destination")?;
    if s.state != DeviceState::Running {
        return Err(
            CliError::new(format!("source is in {}, not RUNNING", s.state))
                .hint("reset the source device, or let a running migration finish"),
        );
    }
    // Destination first: ready before the source stops.
    if let Err(e) = d.walk(DeviceState::Resuming) {
        let _ = d.walk(DeviceState::Running);
        return Err(e);
    }
    let estimate = s.data_size.unwrap_or(0);
    let t0 = Instant::now();
    // Splice into an xe-vfio server, which reads a message body in as many pieces as it
    // arrives in; any other destination gets each MIG_DATA_WRITE whole, in one sendmsg
    // (libvfio-user reads a body with one recv).
    let mut relay = if d.data_size.is_some() {
        Relay::new()
    } else {
        Relay::copying()
    };
    match copy_stream(&mut s, &mut d, &mut relay, estimate, progress) {
        Ok((bytes, transfer)) => Ok(Report {
            bytes,
            estimated_bytes: estimate,
            transfer_seconds: transfer,
            throughput_mib_s: bytes as f64 / (1 << 20) as f64 / transfer.max(1e-9),
            downtime_ms: t0.elapsed().as_secs_f64() * 1e3,
            source_state: s.state.to_string(),
            destination_state: d.state.to_string(),
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
    // The data goes from the source's socket to the destination's without entering this
    // process (spliced), and the source prepares each chunk while the destination applies the
    // previous one.
    let total = relay
        .run(s.c, d.c, &mut |done| progress(done, estimate))
        .map_err(|e| (relay_error(e), relay.in_step()))?;
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
    c: &mut Client,
    out: &mut dyn Write,
    estimate: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, CliError> {
    let mut buf = vec![0u8; c.max_xfer() as usize];
    let mut total = 0u64;
    let mut short = false;
    loop {
        let n = match c.mig_data_read(&mut buf) {
            Ok(n) => n,
            Err(e) if short && e.in_step() => {
                tracing::debug!(%e, "read refused after a short reply: the end of the stream");
                break;
            }
            Err(e) => {
                let in_step = e.in_step();
                let mut err =
                    CliError::new(format!("reading migration data at byte {total}")).cause(e);
                err.in_step = in_step;
                return Err(err);
            }
        };
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .ctx(|| "writing the output file".into())?;
        total += n as u64;
        progress(total, estimate);
        short = n < buf.len();
    }
    out.flush().ctx(|| "writing the output file".into())?;
    Ok(total)
}

/// Saves the device's state into `out`; the device runs again afterwards unless `leave_stopped`.
pub fn save(
    src: &mut Client,
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
    dst: &mut Client,
    input: &mut dyn Read,
    len: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, CliError> {
    let mut d = Dev::open(dst, "device")?;
    d.walk(DeviceState::Resuming)?;
    let r = (|| {
        let mut buf = vec![0u8; d.c.max_xfer() as usize];
        let mut total = 0u64;
        loop {
            let n = input
                .read(&mut buf)
                .ctx(|| "reading the input file".into())?;
            if n == 0 {
                break;
            }
            d.c.mig_data_write(&buf[..n]).map_err(|e| {
                let in_step = e.in_step();
                let mut err =
                    CliError::new(format!("writing migration data at byte {total}")).cause(e);
                err.in_step = in_step;
                err
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
