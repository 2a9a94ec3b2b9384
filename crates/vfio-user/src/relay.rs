//! Moving migration data from one server to another, the data never entering this process.
//!
//! An orchestrator (`xe-vfio migrate`, or a VMM migrating between two local devices) reads
//! MIG_DATA_READ replies from the source and sends the same bytes to the destination as
//! MIG_DATA_WRITE. Through a buffer that costs two copies of every byte in this process;
//! instead, the data part of each reply is spliced from the source's socket into the
//! destination's ([`Splicer`]). Headers are still read and checked here, and only the byte
//! count a reply announced is spliced, so framing is never guessed.
//!
//! The next MIG_DATA_READ goes out as soon as a chunk has been handed to the destination, so
//! the source produces chunk k+1 while the destination applies chunk k.

use crate::client::{Client, ClientError, MigReadHead};
use crate::splice::{PassError, Splicer};
use rustix::fd::AsFd;
use std::collections::VecDeque;
use thiserror::Error;
use vfio_core::Errno;

/// Requests of each kind kept in flight.
pub const DEPTH: usize = 4;

/// Which side failed, and where in the stream.
#[derive(Debug, Error)]
pub enum RelayError {
    #[error("source: reading migration data at byte {at}: {err}")]
    Source { at: u64, err: ClientError },
    #[error("destination: writing migration data at byte {at}: {err}")]
    Destination { at: u64, err: ClientError },
}

impl RelayError {
    /// The underlying client error.
    pub fn client_error(&self) -> &ClientError {
        match self {
            RelayError::Source { err, .. } | RelayError::Destination { err, .. } => err,
        }
    }
}

/// Relays a migration stream from a source server to a destination server.
pub struct Relay {
    splicer: Splicer,
    /// After a failed run: whether each connection (source, destination) is still in step.
    in_step: (bool, bool),
    /// Bytes per second at most ([`Relay::set_max_bandwidth`]), and this run's pace so far.
    pace: Option<Pacer>,
}

/// A bandwidth cap: a run sends no faster than `rate` bytes per second, measured from its
/// start (a run does not bank the time between runs). Used by [`Relay`], and by callers that
/// move data themselves.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: u64,
    start: std::time::Instant,
    sent: u64,
}

impl Pacer {
    /// `None` for a rate of 0 (no cap).
    pub fn new(bytes_per_s: u64) -> Option<Pacer> {
        (bytes_per_s > 0).then(|| Pacer {
            rate: bytes_per_s,
            start: std::time::Instant::now(),
            sent: 0,
        })
    }

    /// A run starts now.
    pub fn restart(&mut self) {
        self.start = std::time::Instant::now();
        self.sent = 0;
    }

    /// `n` more bytes were sent: sleeps until the cap allows them.
    pub fn account(&mut self, n: usize) {
        self.sent += n as u64;
        let due = std::time::Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// A relay failure, and whether the source's and the destination's connections are in step.
type Failure = (RelayError, bool, bool);

impl Relay {
    /// A relay that splices when the kernel allows it.
    pub fn new() -> Relay {
        Relay::with(Splicer::new())
    }

    /// A relay that always copies through a buffer (the fallback, for comparison and tests).
    pub fn copying() -> Relay {
        Relay::with(Splicer::copying())
    }

    fn with(splicer: Splicer) -> Relay {
        Relay {
            splicer,
            in_step: (true, true),
            pace: None,
        }
    }

    /// After a failed [`Relay::run`]: whether the source's and the destination's connections
    /// are still in step — no message half-read or half-sent on them, every answer owed taken —
    /// and so usable for the abort path. A connection that is not must be reopened
    /// ([`Client::reconnect`]) before anything else is asked of it.
    pub fn in_step(&self) -> (bool, bool) {
        self.in_step
    }

    /// Caps the data rate at `bytes_per_s` (`None`: as fast as the peers go), as QEMU's
    /// `max-bandwidth` migration parameter does: a migration that must share a link, or a
    /// slower link modelled on a fast one.
    pub fn set_max_bandwidth(&mut self, bytes_per_s: Option<u64>) {
        self.pace = bytes_per_s.and_then(Pacer::new);
    }

    /// For a caller moving data itself under this relay's bandwidth cap: a run starts now.
    pub fn pace_start(&mut self) {
        if let Some(p) = &mut self.pace {
            p.restart();
        }
    }

    /// For a caller moving data itself: `n` more bytes were sent; sleeps until the cap allows
    /// them.
    pub fn paced(&mut self, n: usize) {
        if let Some(p) = &mut self.pace {
            p.account(n);
        }
    }

    /// Whether data is spliced (false once the kernel refused and the relay fell back).
    pub fn splicing(&self) -> bool {
        self.splicer.splicing()
    }

    /// Moves the whole stream: MIG_DATA_READ from `src` until the end of the stream, each
    /// chunk written to `dst` with MIG_DATA_WRITE. Both devices must already be in a saving
    /// state and RESUMING. `progress(bytes)` is called after each chunk the destination
    /// accepted. Returns the byte count.
    ///
    /// The end is a reply with no data — or an error reply right after a short one. (The spec
    /// text ends the stream at the first short reply; libvfio-user lets a device return short
    /// reads mid-stream and ends it with 0 bytes. Reading on to the 0-byte reply is right under
    /// both readings, and costs one round trip.)
    ///
    /// On error, the answers to requests still in flight are taken (best effort), so both
    /// connections stay usable for the abort path unless the failure was the connection
    /// itself; [`Relay::in_step`] says which.
    pub fn run(
        &mut self,
        src: &mut Client,
        dst: &mut Client,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, RelayError> {
        self.pipeline(src, dst, None, progress)
    }

    /// One pre-copy round: moves at most `limit` bytes of a source in PRE_COPY (or
    /// PRE_COPY_P2P), ending early at the stream's temporary end — a short reply, or an
    /// `ENOMSG` error reply (the kernel's "no data ready now"). Reads already in flight when
    /// the end shows are still answered, and whatever data they bring is passed on: no byte
    /// of the stream is ever dropped. Returns the bytes moved.
    pub fn run_round(
        &mut self,
        src: &mut Client,
        dst: &mut Client,
        limit: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, RelayError> {
        self.pipeline(src, dst, Some(limit), progress)
    }

    fn pipeline(
        &mut self,
        src: &mut Client,
        dst: &mut Client,
        limit: Option<u64>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, RelayError> {
        self.in_step = (true, true);
        self.pace_start();
        let want = src.max_xfer().min(dst.max_xfer()) as usize;
        let mut p = Pipeline {
            reads: MigReads::new(want, limit),
            relay: self,
            src,
            dst,
            writes: VecDeque::new(),
            total: 0,
        };
        let failure = loop {
            let step = p.send_reads().and_then(|()| p.next_chunk());
            let end = match step {
                Ok(n) => p.reads.ended(n),
                Err(f) => break f,
            };
            // Take write answers down to DEPTH - 1 in flight (none once the source ended).
            if let Err(f) = p.take_write_answers(if end { 0 } else { DEPTH - 1 }, progress) {
                break f;
            }
            if end {
                return p.finish();
            }
        };
        Err(p.abort(failure))
    }

    /// Reads and drops `n` bytes of the source's connection (best effort).
    fn discard(&mut self, src: &mut Client, n: usize) {
        self.splicer.discard(src.socket(), n);
    }
}

/// A device's migration stream read with requests kept in flight: the next MIG_DATA_READ
/// goes out before the last one's data is taken, so the source prepares chunk k+1 while chunk
/// k travels on. Servers answer in order. It holds the end-of-stream rule for such a pipeline:
/// the end is a reply with no data — or an error reply right after a short one (the spec text
/// ends the stream at the first short reply; libvfio-user lets a device return short reads
/// mid-stream and ends it with 0 bytes; reading on to the 0-byte reply is right under both
/// readings). In a pre-copy round, a short reply or `ENOMSG` (the kernel's "no data ready
/// now") ends the round: no more reads are sent, those in flight are still answered and their
/// data passed on, so no byte of the stream is ever dropped.
///
/// The caller takes each reply's data off the socket (and then its padding) between
/// [`MigReads::next`] calls.
#[derive(Debug)]
pub struct MigReads {
    /// Bytes asked by a read (at most).
    want: usize,
    /// The size asked by each read sent and not answered yet.
    asks: VecDeque<usize>,
    /// A pre-copy round: a short or `ENOMSG` reply is a temporary end, not the stream's.
    round: bool,
    /// Bytes still to ask for (a round's limit).
    ask_left: u64,
    /// The round's end showed: no more reads are sent.
    stop_asking: bool,
    /// The last reply was short (a server reading the spec literally may refuse the next read).
    short: bool,
}

impl MigReads {
    /// Reads of at most `want` bytes each: the whole stream (`limit` `None`), or one pre-copy
    /// round of at most `limit` bytes.
    pub fn new(want: usize, limit: Option<u64>) -> MigReads {
        MigReads {
            want,
            asks: VecDeque::new(),
            round: limit.is_some(),
            ask_left: limit.unwrap_or(u64::MAX),
            stop_asking: false,
            short: false,
        }
    }

    /// Keeps [`DEPTH`] reads in flight (in a round, while there is something left to ask for).
    /// An error here is the connection's own: it may hold half a message.
    pub fn ask(&mut self, src: &mut Client) -> Result<(), ClientError> {
        while self.asks.len() < DEPTH && !self.stop_asking && self.ask_left > 0 {
            let k = (self.want as u64).min(self.ask_left) as usize;
            src.send_mig_data_read(k)?;
            self.asks.push_back(k);
            self.ask_left -= k as u64;
        }
        Ok(())
    }

    /// The next reply's head; `None` for a read refused at the end (of the stream, or of a
    /// round). Its data (and then its padding) must be taken off the socket before the next
    /// call. After an error, [`ClientError::in_step`] says whether the connection is usable.
    pub fn next(&mut self, src: &mut Client) -> Result<Option<MigReadHead>, ClientError> {
        let Some(&want) = self.asks.front() else {
            return Ok(None);
        };
        let head = match src.recv_mig_data_read_head(want) {
            Ok(h) => h,
            Err(err) if self.round && err.errno() == Errno::ENOMSG && err.in_step() => {
                // Pre-copy: no data ready now. The round ends; the stream goes on.
                self.asks.pop_front();
                self.stop_asking = true;
                return Ok(None);
            }
            Err(err) if self.short && err.in_step() => {
                // Refused after a short reply: the end, as the spec text has it.
                self.asks.pop_front();
                tracing::debug!(%err, "read refused after a short reply: the end of the stream");
                return Ok(None);
            }
            Err(err) => {
                // An error reply is a whole message: the connection stays in step.
                if err.in_step() {
                    self.asks.pop_front();
                }
                return Err(err);
            }
        };
        self.asks.pop_front();
        self.short = head.data < want;
        if self.round && self.short {
            self.stop_asking = true;
        }
        Ok(Some(head))
    }

    /// Whether the stream (or the round) ended with a reply that brought `n` bytes.
    pub fn ended(&self, n: usize) -> bool {
        if self.round {
            self.asks.is_empty()
        } else {
            n == 0
        }
    }

    /// After the end: the reads still in flight must be answered with no data (or refused).
    pub fn finish(&mut self, src: &mut Client) -> Result<(), ClientError> {
        while let Some(want) = self.asks.pop_front() {
            match src.recv_mig_data_read_head(want) {
                Ok(MigReadHead { data: 0, padding }) => src.discard(padding)?,
                Err(err) if err.in_step() => {}
                Ok(MigReadHead { data, .. }) => {
                    let msg = format!("{data} bytes of migration data after the end of the stream");
                    return Err(ClientError::Protocol(msg));
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// After a failure, on a connection still in step: takes and drops the answers to the
    /// reads in flight (best effort).
    pub fn abandon(&mut self, src: &mut Client, splicer: &mut Splicer) {
        while let Some(want) = self.asks.pop_front() {
            if let Ok(h) = src.recv_mig_data_read_head(want) {
                splicer.discard(src.socket(), h.data + h.padding);
            }
        }
    }
}

/// One relay run's requests in flight: reads from the source ([`MigReads`]), and writes to
/// the destination, so the destination takes the next chunk while this one's answer travels
/// back.
struct Pipeline<'a> {
    relay: &'a mut Relay,
    src: &'a mut Client,
    dst: &'a mut Client,
    reads: MigReads,
    /// Sizes of the writes sent and not answered yet.
    writes: VecDeque<usize>,
    /// Bytes the destination accepted.
    total: u64,
}

impl Pipeline<'_> {
    /// A failure of the source's connection itself: it may hold half a message.
    fn source_broke(&self, err: ClientError) -> Failure {
        (
            RelayError::Source {
                at: self.total,
                err,
            },
            false,
            true,
        )
    }

    fn send_reads(&mut self) -> Result<(), Failure> {
        self.reads
            .ask(self.src)
            .map_err(|err| self.source_broke(err))
    }

    /// Takes the next read's answer and passes its data on as a write; returns its size.
    fn next_chunk(&mut self) -> Result<usize, Failure> {
        let head = match self.reads.next(self.src) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(0),
            Err(err) => {
                let ok = err.in_step();
                return Err((
                    RelayError::Source {
                        at: self.total,
                        err,
                    },
                    ok,
                    true,
                ));
            }
        };
        let (n, padding) = (head.data, head.padding);
        if n > 0 {
            let at = self.total + self.writes.iter().sum::<usize>() as u64;
            let head = self.dst.mig_data_write_head(n);
            let (from, to) = (self.src.socket().as_fd(), self.dst.socket().as_fd());
            match self.relay.splicer.pass(from, to, &head, n) {
                Ok(()) => self.relay.paced(n),
                Err(PassError::Source(e)) => {
                    return Err((RelayError::Source { at, err: e.into() }, false, false));
                }
                Err(PassError::Destination { err, left }) => {
                    self.relay.discard(self.src, left + padding);
                    let err = err.into();
                    return Err((RelayError::Destination { at, err }, true, false));
                }
            }
            self.writes.push_back(n);
        }
        if let Err(err) = self.src.discard(padding) {
            return Err(self.source_broke(err));
        }
        Ok(n)
    }

    /// Takes write answers until at most `keep` are in flight.
    fn take_write_answers(
        &mut self,
        keep: usize,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), Failure> {
        while self.writes.len() > keep {
            let r = self.dst.recv_mig_data_write_reply();
            let n = self.writes.pop_front().unwrap_or(0);
            if let Err(err) = r {
                let ok = err.in_step();
                return Err((
                    RelayError::Destination {
                        at: self.total,
                        err,
                    },
                    true,
                    ok,
                ));
            }
            self.total += n as u64;
            progress(self.total);
        }
        Ok(())
    }

    /// After the end: the reads still in flight must be answered with no data (or refused).
    fn finish(&mut self) -> Result<u64, RelayError> {
        let at = self.total;
        self.reads
            .finish(self.src)
            .map_err(|err| RelayError::Source { at, err })?;
        Ok(self.total)
    }

    /// Takes the answers still owed from the connections still in step.
    fn abort(&mut self, (err, src_in_step, dst_in_step): Failure) -> RelayError {
        self.relay.in_step = (src_in_step, dst_in_step);
        if src_in_step {
            self.reads.abandon(self.src, &mut self.relay.splicer);
        }
        if dst_in_step {
            for _ in 0..self.writes.len() {
                let _ = self.dst.recv_mig_data_write_reply();
            }
        }
        err
    }
}

impl Default for Relay {
    fn default() -> Self {
        Relay::new()
    }
}
