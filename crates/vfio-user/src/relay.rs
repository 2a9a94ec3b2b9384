//! Moving migration data from one server to another, the data never entering this process.
//!
//! An orchestrator (`xe-vfio migrate`, or a VMM migrating between two local devices) reads
//! MIG_DATA_READ replies from the source and sends the same bytes to the destination as
//! MIG_DATA_WRITE. Through a buffer that costs two copies of every byte in this process;
//! instead, the data part of each reply is spliced from the source's socket into the
//! destination's through a pipe (`splice(2)`), which on Linux hands page references along
//! instead of copying. Headers are still read and checked here, and only the byte count a
//! reply announced is spliced, so framing is never guessed. Where the kernel refuses `splice`
//! on these fds, the relay copies through a buffer instead, with the same results.
//!
//! The next MIG_DATA_READ goes out as soon as a chunk has been handed to the destination, so
//! the source produces chunk k+1 while the destination applies chunk k.
//!
//! `splice` has no `MSG_NOSIGNAL`: a destination that hangs up raises `SIGPIPE`, which Rust
//! programs ignore (the error then arrives as `EPIPE`); C hosts must ignore it too.

use crate::client::{Client, ClientError, MigReadHead};
use rustix::fd::OwnedFd;
use rustix::pipe::{PipeFlags, SpliceFlags};
use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use thiserror::Error;
use vfio_core::Errno;

/// Requests of each kind kept in flight.
const DEPTH: usize = 4;

/// Pipe capacity asked for: one default `max_data_xfer_size` (the unprivileged maximum).
const PIPE_SIZE: usize = 1 << 20;

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

/// How bytes move between the sockets.
enum Mover {
    Splice {
        rd: OwnedFd,
        wr: OwnedFd,
        cap: usize,
    },
    Copy,
}

/// Relays a migration stream from a source server to a destination server.
pub struct Relay {
    mover: Mover,
    /// For the copy fallback and for discarding.
    buf: Vec<u8>,
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

/// Which connection broke while passing data; for the destination, how many bytes of the
/// message are still on the source's connection.
enum Side {
    Src(io::Error),
    Dst(io::Error, usize),
}

impl Relay {
    /// A relay that splices when the kernel allows it.
    pub fn new() -> Relay {
        let mover = match rustix::pipe::pipe_with(PipeFlags::CLOEXEC) {
            Ok((rd, wr)) => {
                // Best effort: a smaller pipe only means more splice calls.
                let _ = rustix::pipe::fcntl_setpipe_size(&wr, PIPE_SIZE);
                let cap = rustix::pipe::fcntl_getpipe_size(&wr).unwrap_or(64 << 10);
                Mover::Splice { rd, wr, cap }
            }
            Err(e) => {
                tracing::debug!(%e, "no pipe for splicing; the relay copies");
                Mover::Copy
            }
        };
        Relay {
            mover,
            buf: Vec::new(),
            in_step: (true, true),
            pace: None,
        }
    }

    /// A relay that always copies through a buffer (the fallback, for comparison and tests).
    pub fn copying() -> Relay {
        Relay {
            mover: Mover::Copy,
            buf: Vec::new(),
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
        matches!(self.mover, Mover::Splice { .. })
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
        let mut p = Pipeline {
            want: src.max_xfer().min(dst.max_xfer()) as usize,
            relay: self,
            src,
            dst,
            asks: VecDeque::new(),
            writes: VecDeque::new(),
            total: 0,
            short: false,
            round: limit.is_some(),
            ask_left: limit.unwrap_or(u64::MAX),
            stop_asking: false,
        };
        let failure = loop {
            let step = p.send_reads().and_then(|()| p.next_chunk());
            let end = match step {
                Ok(n) => n == 0 && !p.round,
                Err(f) => break f,
            };
            let end = end || (p.round && p.asks.is_empty());
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

    /// Sends one message to `to`: `head` (header and fixed part), then exactly `n` bytes taken
    /// from `from`. Spliced, the head is sent first and the data follows, spliced as it
    /// arrives (a peer must read a body in as many `recv`s as it takes — ours does). Copied,
    /// the data is read into a buffer and the whole message sent with one `sendmsg`, for
    /// peers that read a body with one `recv`.
    fn pass_message(
        &mut self,
        from: &UnixStream,
        to: &UnixStream,
        head: &[u8],
        n: usize,
    ) -> Result<(), Side> {
        if !self.splicing() {
            return self.copy_message(from, to, head, n);
        }
        crate::sock::send_all(to, &[head], &[]).map_err(|e| Side::Dst(e, n))?;
        let mut left = n;
        while left > 0 {
            let Mover::Splice { rd, wr, cap } = &self.mover else {
                return self.copy_data(from, to, left);
            };
            let k = match rustix::pipe::splice(from, None, wr, None, left.min(*cap), splice_flags())
            {
                Ok(0) => return Err(Side::Src(eof())),
                Ok(k) => k,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::INVAL) if left == n => {
                    // Nothing was taken from the socket yet: switch to copying for good.
                    tracing::info!("splice refused on these sockets; the relay copies");
                    self.mover = Mover::Copy;
                    continue;
                }
                Err(e) => return Err(Side::Src(e.into())),
            };
            left -= k;
            let mut out = 0;
            while out < k {
                match rustix::pipe::splice(rd, None, to, None, k - out, splice_flags()) {
                    Ok(0) => return Err(Side::Dst(eof(), left)),
                    Ok(m) => out += m,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(Side::Dst(e.into(), left)),
                }
            }
        }
        Ok(())
    }

    /// The rest of a message's data, copied (after splice was refused mid-way).
    fn copy_data(&mut self, mut from: &UnixStream, to: &UnixStream, n: usize) -> Result<(), Side> {
        if self.buf.len() < n {
            self.buf.resize(n, 0);
        }
        from.read_exact(&mut self.buf[..n]).map_err(Side::Src)?;
        crate::sock::send_all(to, &[&self.buf[..n]], &[]).map_err(|e| Side::Dst(e, 0))
    }

    fn copy_message(
        &mut self,
        mut from: &UnixStream,
        to: &UnixStream,
        head: &[u8],
        n: usize,
    ) -> Result<(), Side> {
        // `n` is at most the negotiated max_data_xfer_size (16 MiB at most).
        if self.buf.len() < n {
            self.buf.resize(n, 0);
        }
        from.read_exact(&mut self.buf[..n]).map_err(Side::Src)?;
        crate::sock::send_all(to, &[head, &self.buf[..n]], &[]).map_err(|e| Side::Dst(e, 0))
    }

    /// Reads and drops one MIG_DATA_READ reply (best effort).
    fn discard_reply(&mut self, src: &mut Client, want: usize) {
        if let Ok(h) = src.recv_mig_data_read_head(want) {
            self.discard(src, h.data + h.padding);
        }
    }

    /// Reads and drops `n` bytes of the source's connection (best effort).
    fn discard(&mut self, src: &mut Client, n: usize) {
        if self.buf.len() < PIPE_SIZE {
            self.buf.resize(PIPE_SIZE, 0);
        }
        let mut left = n;
        let mut s = src.socket();
        while left > 0 {
            let k = left.min(self.buf.len());
            if s.read_exact(&mut self.buf[..k]).is_err() {
                return;
            }
            left -= k;
        }
    }
}

/// One relay run's requests in flight. Servers answer in order, so a queued read lets the
/// source start its next chunk at once, and a queued write lets the destination take the next
/// chunk while this one's answer travels back.
struct Pipeline<'a> {
    relay: &'a mut Relay,
    src: &'a mut Client,
    dst: &'a mut Client,
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
    /// Sizes of the writes sent and not answered yet.
    writes: VecDeque<usize>,
    /// Bytes the destination accepted.
    total: u64,
    /// The last reply was short (a server reading the spec literally may refuse the next read).
    short: bool,
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

    /// Keeps DEPTH reads in flight (in a round, while there is something left to ask for).
    fn send_reads(&mut self) -> Result<(), Failure> {
        while self.asks.len() < DEPTH && !self.stop_asking && self.ask_left > 0 {
            let k = (self.want as u64).min(self.ask_left) as usize;
            if let Err(err) = self.src.send_mig_data_read(k) {
                return Err(self.source_broke(err));
            }
            self.asks.push_back(k);
            self.ask_left -= k as u64;
        }
        Ok(())
    }

    /// Takes the next read's answer and passes its data on as a write; returns its size.
    fn next_chunk(&mut self) -> Result<usize, Failure> {
        let Some(&want) = self.asks.front() else {
            return Ok(0);
        };
        let head = match self.src.recv_mig_data_read_head(want) {
            Ok(h) => h,
            Err(err) if self.round && err.errno() == Errno::ENOMSG && err.in_step() => {
                // Pre-copy: no data ready now. The round ends; the stream goes on.
                self.asks.pop_front();
                self.stop_asking = true;
                return Ok(0);
            }
            Err(err) if self.short && err.in_step() => {
                // Refused after a short reply: the end, as the spec text has it.
                self.asks.pop_front();
                tracing::debug!(%err, "read refused after a short reply: the end of the stream");
                return Ok(0);
            }
            Err(err) => {
                // An error reply is a whole message: the connection stays in step.
                let ok = err.in_step();
                if ok {
                    self.asks.pop_front();
                }
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
        self.asks.pop_front();
        let (n, padding) = (head.data, head.padding);
        self.short = n < want;
        if self.round && self.short {
            self.stop_asking = true;
        }
        if n > 0 {
            let at = self.total + self.writes.iter().sum::<usize>() as u64;
            let head = self.dst.mig_data_write_head(n);
            match self
                .relay
                .pass_message(self.src.socket(), self.dst.socket(), &head, n)
            {
                Ok(()) => self.relay.paced(n),
                Err(Side::Src(e)) => {
                    return Err((RelayError::Source { at, err: e.into() }, false, false));
                }
                Err(Side::Dst(e, left)) => {
                    self.relay.discard(self.src, left + padding);
                    return Err((RelayError::Destination { at, err: e.into() }, true, false));
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
        while let Some(want) = self.asks.pop_front() {
            match self.src.recv_mig_data_read_head(want) {
                Ok(MigReadHead { data: 0, padding }) => self
                    .src
                    .discard(padding)
                    .map_err(|err| RelayError::Source { at, err })?,
                Err(err) if err.in_step() => {}
                Ok(MigReadHead { data, .. }) => {
                    let msg = format!("{data} bytes of migration data after the end of the stream");
                    let err = ClientError::Protocol(msg);
                    return Err(RelayError::Source { at, err });
                }
                Err(err) => return Err(RelayError::Source { at, err }),
            }
        }
        Ok(self.total)
    }

    /// Takes the answers still owed from the connections still in step.
    fn abort(&mut self, (err, src_in_step, dst_in_step): Failure) -> RelayError {
        self.relay.in_step = (src_in_step, dst_in_step);
        if src_in_step {
            while let Some(want) = self.asks.pop_front() {
                self.relay.discard_reply(self.src, want);
            }
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

fn splice_flags() -> SpliceFlags {
    SpliceFlags::MOVE
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed in the middle of migration data",
    )
}
