//! The VMM-side migration sequences, over vfio-user clients.
//!
//! `migrate`: destination RUNNING → STOP → RESUMING first (so it is ready), then the source
//! RUNNING → RUNNING_P2P → STOP → STOP_COPY, the stream copied in `max_data_xfer_size` reads,
//! source → STOP, destination → STOP (which validates the stream) → RUNNING. Downtime runs from
//! the source leaving RUNNING to the destination reaching RUNNING. Any failure aborts: the
//! source goes back to RUNNING with its state intact, the destination is reset.

use crate::util::{CliError, Context};
use serde::Serialize;
use std::io::{Read, Write};
use std::time::Instant;
use vfio_core::{DeviceState, MigrationFlags};
use vfio_user::{Client, Relay, RelayError};

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

fn require_migration(c: &mut Client, who: &str) -> Result<MigrationFlags, CliError> {
    let f = c
        .migration_flags()
        .ctx(|| format!("{who}: querying migration support"))?;
    if !f.contains(MigrationFlags::STOP_COPY) {
        return Err(CliError::new(format!(
            "{who}: device does not support STOP_COPY"
        )));
    }
    Ok(f)
}

fn set(c: &mut Client, s: DeviceState, who: &str) -> Result<(), CliError> {
    c.set_device_state(s)
        .ctx(|| format!("{who}: setting the device to {s}"))
}

/// Live-migrates the device behind `src` into the device behind `dst`.
/// `progress(done, estimate)` is called after every chunk.
pub fn migrate(
    src: &mut Client,
    dst: &mut Client,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report, CliError> {
    require_migration(src, "source")?;
    require_migration(dst, "destination")?;
    let src_state = src
        .device_state()
        .ctx(|| "source: reading the state".into())?;
    if src_state != DeviceState::Running {
        return Err(
            CliError::new(format!("source is in {src_state}, not RUNNING"))
                .hint("reset the source device, or let a running migration finish"),
        );
    }
    // Destination first: ready before the source stops.
    set(dst, DeviceState::Stop, "destination")?;
    if let Err(e) = set(dst, DeviceState::Resuming, "destination") {
        let _ = dst.set_device_state(DeviceState::Running);
        return Err(e);
    }
    let estimate = src.mig_data_size().unwrap_or(0);
    let t0 = Instant::now();
    let r = copy_stream(src, dst, estimate, progress, t0);
    match r {
        Ok((bytes, transfer)) => {
            let downtime = t0.elapsed();
            Ok(Report {
                bytes,
                estimated_bytes: estimate,
                transfer_seconds: transfer,
                throughput_mib_s: bytes as f64 / (1 << 20) as f64 / transfer.max(1e-9),
                downtime_ms: downtime.as_secs_f64() * 1e3,
                source_state: DeviceState::Stop.to_string(),
                destination_state: DeviceState::Running.to_string(),
            })
        }
        Err(e) => {
            // Abort: the source keeps its state and runs again; the destination is reset.
            let back = src.set_device_state(DeviceState::Running);
            let _ = dst.reset();
            let mut e = e;
            e.hint = Some(match back {
                Ok(()) => {
                    "the migration was aborted; the source is RUNNING again with its state intact"
                        .into()
                }
                Err(b) => format!(
                    "the migration was aborted and the source could not be resumed ({b}); reset it"
                ),
            });
            Err(e)
        }
    }
}

fn copy_stream(
    src: &mut Client,
    dst: &mut Client,
    estimate: u64,
    progress: &mut dyn FnMut(u64, u64),
    _t0: Instant,
) -> Result<(u64, f64), CliError> {
    set(src, DeviceState::RunningP2p, "source")?;
    set(src, DeviceState::Stop, "source")?;
    set(src, DeviceState::StopCopy, "source")?;
    let t = Instant::now();
    // The data goes from the source's socket to the destination's without entering this
    // process (spliced), and the source prepares each chunk while the destination applies the
    // previous one.
    let total = Relay::new()
        .run(src, dst, &mut |done| progress(done, estimate))
        .map_err(|e| match e {
            RelayError::Source { at, err } => {
                CliError::new(format!("source: reading migration data at byte {at}")).cause(err)
            }
            RelayError::Destination { at, err } => {
                CliError::new(format!("destination: writing migration data at byte {at}"))
                    .cause(err)
            }
        })?;
    let transfer = t.elapsed().as_secs_f64();
    set(src, DeviceState::Stop, "source")?;
    set(
        dst,
        DeviceState::Stop,
        "destination (validating the stream)",
    )?;
    set(dst, DeviceState::Running, "destination")?;
    Ok((total, transfer))
}

/// Saves the device's state into `out`; the device runs again afterwards unless `leave_stopped`.
pub fn save(
    src: &mut Client,
    out: &mut dyn Write,
    leave_stopped: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, CliError> {
    require_migration(src, "device")?;
    let estimate = src.mig_data_size().unwrap_or(0);
    set(src, DeviceState::StopCopy, "device")?;
    let r = (|| {
        let mut buf = vec![0u8; src.max_xfer() as usize];
        let mut total = 0u64;
        loop {
            let n = src
                .mig_data_read(&mut buf)
                .ctx(|| format!("reading migration data at byte {total}"))?;
            out.write_all(&buf[..n])
                .ctx(|| "writing the output file".into())?;
            total += n as u64;
            progress(total, estimate);
            if n < buf.len() {
                break;
            }
        }
        out.flush().ctx(|| "writing the output file".into())?;
        Ok(total)
    })();
    let end = if leave_stopped && r.is_ok() {
        DeviceState::Stop
    } else {
        DeviceState::Running
    };
    let back = set(src, end, "device");
    let total = r?;
    back?;
    Ok(total)
}

/// Restores a saved stream into the device and starts it.
pub fn restore(
    dst: &mut Client,
    input: &mut dyn Read,
    len: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, CliError> {
    require_migration(dst, "device")?;
    set(dst, DeviceState::Resuming, "device")?;
    let r = (|| {
        let mut buf = vec![0u8; dst.max_xfer() as usize];
        let mut total = 0u64;
        loop {
            let n = input
                .read(&mut buf)
                .ctx(|| "reading the input file".into())?;
            if n == 0 {
                break;
            }
            dst.mig_data_write(&buf[..n])
                .ctx(|| format!("writing migration data at byte {total}"))?;
            total += n as u64;
            progress(total, len);
        }
        set(dst, DeviceState::Stop, "device (validating the stream)")?;
        set(dst, DeviceState::Running, "device")?;
        Ok(total)
    })();
    if r.is_err() {
        let _ = dst.reset();
    }
    r
}
