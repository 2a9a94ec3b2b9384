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
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use thiserror::Error;

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
        }
    }

    /// A relay that always copies through a buffer (the fallback, for comparison and tests).
    pub fn copying() -> Relay {
        Relay {
            mover: Mover::Copy,
            buf: Vec::new(),
        }
    }

    /// Whether data is spliced (false once the kernel refused and the relay fell back).
    pub fn splicing(&self) -> bool {
        matches!(self.mover, Mover::Splice { .. })
    }

    /// Moves the whole stream: MIG_DATA_READ from `src` until a short reply, each chunk
    /// written to `dst` with MIG_DATA_WRITE. Both devices must already be in STOP_COPY and
    /// RESUMING. `progress(bytes)` is called after each chunk the destination accepted.
    /// Returns the byte count. On error, the answers to requests still in flight are taken
    /// (best effort), so both connections stay usable for the abort path unless the failure
    /// was the connection itself.
    pub fn run(
        &mut self,
        src: &mut Client,
        dst: &mut Client,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, RelayError> {
        let want = src.max_xfer().min(dst.max_xfer()) as usize;
        let mut total = 0u64;
        // Requests in flight: reads not yet answered, and the sizes of writes not yet
        // answered. Servers answer in order, so a queued read lets the source start its next
        // chunk at once, and a queued write lets the destination take the next chunk while
        // this one's answer travels back.
        let mut reads = 0usize;
        let mut writes: VecDeque<usize> = VecDeque::new();
        // On failure: the error, and whether each connection is still in step (no message
        // half-sent or half-read on it), so that the answers still owed can be taken.
        let remote = |e: &ClientError| matches!(e, ClientError::Remote { .. });
        let failure: Failure = loop {
            let mut unsent = None;
            while reads < DEPTH {
                if let Err(err) = src.send_mig_data_read(want) {
                    unsent = Some(err);
                    break;
                }
                reads += 1;
            }
            if let Some(err) = unsent {
                break (RelayError::Source { at: total, err }, false, true);
            }
            let (n, padding) = match src.recv_mig_data_read_head(want) {
                Ok(h) => (h.data, h.padding),
                Err(err) => {
                    // An error reply is a whole message: the connection stays in step.
                    let ok = remote(&err);
                    reads -= usize::from(ok);
                    break (RelayError::Source { at: total, err }, ok, true);
                }
            };
            reads -= 1;
            if n > 0 {
                let at = total + writes.iter().sum::<usize>() as u64;
                if let Err(err) = dst.send_mig_data_write_head(n) {
                    // The destination is gone; take the data off the source's connection.
                    self.discard(src, n + padding);
                    break (RelayError::Destination { at, err }, true, false);
                }
                match self.pass(src.socket(), dst.socket(), n) {
                    Ok(()) => {}
                    Err(Side::Src(e)) => {
                        break (RelayError::Source { at, err: e.into() }, false, false);
                    }
                    Err(Side::Dst(e, left)) => {
                        self.discard(src, left + padding);
                        break (RelayError::Destination { at, err: e.into() }, true, false);
                    }
                }
                writes.push_back(n);
            }
            if padding > 0 {
                if let Err(err) = src.discard(padding) {
                    break (RelayError::Source { at: total, err }, false, true);
                }
            }
            let end = n < want;
            // Take write answers down to DEPTH - 1 in flight (none once the source ended).
            let keep = if end { 0 } else { DEPTH - 1 };
            let mut failed = None;
            while writes.len() > keep {
                let r = dst.recv_mig_data_write_reply();
                let n = writes.pop_front().unwrap_or(0);
                if let Err(err) = r {
                    let ok = remote(&err);
                    failed = Some((RelayError::Destination { at: total, err }, true, ok));
                    break;
                }
                total += n as u64;
                progress(total);
            }
            if let Some(f) = failed {
                break f;
            }
            if end {
                // Reads sent after the last chunk are answered with no data.
                for _ in 0..reads {
                    match src.recv_mig_data_read_head(want) {
                        Ok(h) if h.data == 0 => {
                            if let Err(err) = src.discard(h.padding) {
                                return Err(RelayError::Source { at: total, err });
                            }
                        }
                        Ok(MigReadHead { data: n, .. }) => {
                            return Err(RelayError::Source {
                                at: total,
                                err: ClientError::Protocol(format!(
                                    "{n} bytes of migration data after the end of the stream"
                                )),
                            })
                        }
                        Err(err) => return Err(RelayError::Source { at: total, err }),
                    }
                }
                return Ok(total);
            }
        };
        // Take the answers still owed from the connections still in step.
        let (err, src_in_step, dst_in_step) = failure;
        if src_in_step {
            for _ in 0..reads {
                self.discard_reply(src, want);
            }
        }
        if dst_in_step {
            for _ in 0..writes.len() {
                let _ = dst.recv_mig_data_write_reply();
            }
        }
        Err(err)
    }

    /// Moves exactly `n` bytes from `from` to `to`.
    fn pass(&mut self, from: &UnixStream, to: &UnixStream, n: usize) -> Result<(), Side> {
        let mut left = n;
        while left > 0 {
            let Mover::Splice { rd, wr, cap } = &self.mover else {
                return self.copy(from, to, left);
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

    fn copy(&mut self, mut from: &UnixStream, mut to: &UnixStream, n: usize) -> Result<(), Side> {
        if self.buf.len() < PIPE_SIZE {
            self.buf.resize(PIPE_SIZE, 0);
        }
        let mut left = n;
        while left > 0 {
            let k = left.min(self.buf.len());
            from.read_exact(&mut self.buf[..k]).map_err(Side::Src)?;
            left -= k;
            to.write_all(&self.buf[..k])
                .map_err(|e| Side::Dst(e, left))?;
        }
        Ok(())
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
