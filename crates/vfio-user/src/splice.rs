//! Passing a message's data from one socket to another without it entering this process.
//!
//! A relay reads a message's header itself (to check it and learn the data's length), then
//! moves exactly that many bytes from one socket to the other through a pipe (`splice(2)`),
//! which on Linux hands page references along instead of copying. The two sockets may be of
//! any kind `splice` takes: vfio-user's UNIX sockets, or a TCP connection carrying migration
//! data between hosts. Where the kernel refuses `splice` on these fds, the data is copied
//! through a buffer instead, with the same results.
//!
//! `splice` has no `MSG_NOSIGNAL`: a destination that hangs up raises `SIGPIPE`, which Rust
//! programs ignore (the error then arrives as `EPIPE`); C hosts must ignore it too.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::pipe::{PipeFlags, SpliceFlags};
use std::io;

/// Pipe capacity asked for: one default `max_data_xfer_size` (the unprivileged maximum).
const PIPE_SIZE: usize = 1 << 20;

/// How bytes move between the sockets.
enum Mover {
    Splice {
        rd: OwnedFd,
        wr: OwnedFd,
        cap: usize,
    },
    Copy,
}

/// Which socket failed while a message passed.
#[derive(Debug)]
pub enum PassError {
    /// Reading from the source failed (or it closed): it may hold half a message.
    Source(io::Error),
    /// Writing to the destination failed; `left` bytes of the message's data are still on
    /// the source's socket (see [`Splicer::discard`]).
    Destination { err: io::Error, left: usize },
}

/// Moves message data between two sockets: spliced when the kernel allows it, else copied.
pub struct Splicer {
    mover: Mover,
    /// For the copy fallback and for discarding.
    buf: Vec<u8>,
}

impl Splicer {
    /// A splicer that splices when the kernel allows it.
    pub fn new() -> Splicer {
        let mover = match rustix::pipe::pipe_with(PipeFlags::CLOEXEC) {
            Ok((rd, wr)) => {
                // Best effort: a smaller pipe only means more splice calls.
                let _ = rustix::pipe::fcntl_setpipe_size(&wr, PIPE_SIZE);
                let cap = rustix::pipe::fcntl_getpipe_size(&wr).unwrap_or(64 << 10);
                Mover::Splice { rd, wr, cap }
            }
            Err(e) => {
                tracing::debug!(%e, "no pipe for splicing; data is copied");
                Mover::Copy
            }
        };
        Splicer {
            mover,
            buf: Vec::new(),
        }
    }

    /// A splicer that always copies through a buffer (the fallback, for comparison and tests).
    pub fn copying() -> Splicer {
        Splicer {
            mover: Mover::Copy,
            buf: Vec::new(),
        }
    }

    /// Whether data is spliced (false once the kernel refused and this fell back to copying).
    pub fn splicing(&self) -> bool {
        matches!(self.mover, Mover::Splice { .. })
    }

    /// Sends one message to `to`: `head`, then exactly `n` bytes taken from `from`. Spliced,
    /// the head is sent first and the data follows as it arrives (a peer must read a body in
    /// as many reads as it takes — ours do). Copied, the data is read into a buffer and the
    /// whole message sent with one `sendmsg`, for peers that read a body with one `recv`.
    /// `n` is bounded by the caller (a negotiated transfer size, a checked frame length).
    pub fn pass(
        &mut self,
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        head: &[u8],
        n: usize,
    ) -> Result<(), PassError> {
        if !self.splicing() {
            return self.copy(from, to, head, n);
        }
        send_more(to, head).map_err(|err| PassError::Destination { err, left: n })?;
        let mut left = n;
        while left > 0 {
            let Mover::Splice { rd, wr, cap } = &self.mover else {
                return self.copy(from, to, &[], left);
            };
            let k = match rustix::pipe::splice(from, None, wr, None, left.min(*cap), flags()) {
                Ok(0) => return Err(PassError::Source(eof())),
                Ok(k) => k,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::INVAL) if left == n => {
                    // Nothing was taken from the socket yet: switch to copying for good.
                    tracing::info!("splice refused on these sockets; data is copied");
                    self.mover = Mover::Copy;
                    continue;
                }
                Err(e) => return Err(PassError::Source(e.into())),
            };
            left -= k;
            let mut out = 0;
            while out < k {
                match rustix::pipe::splice(rd, None, to, None, k - out, flags()) {
                    Ok(0) => return Err(PassError::Destination { err: eof(), left }),
                    Ok(m) => out += m,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => {
                        let err = e.into();
                        return Err(PassError::Destination { err, left });
                    }
                }
            }
        }
        Ok(())
    }

    /// `head` and `n` bytes of `from`, copied through the buffer and sent with one `sendmsg`.
    fn copy(
        &mut self,
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        head: &[u8],
        n: usize,
    ) -> Result<(), PassError> {
        if self.buf.len() < n {
            self.buf.resize(n, 0);
        }
        read_exact(from, &mut self.buf[..n]).map_err(PassError::Source)?;
        crate::sock::send_all(to, &[head, &self.buf[..n]], &[])
            .map_err(|err| PassError::Destination { err, left: 0 })
    }

    /// Reads and drops `n` bytes of `from` (best effort: stops at the first error).
    pub fn discard(&mut self, from: impl AsFd, n: usize) {
        if self.buf.len() < PIPE_SIZE {
            self.buf.resize(PIPE_SIZE, 0);
        }
        let mut left = n;
        while left > 0 {
            let k = left.min(self.buf.len());
            if read_exact(from.as_fd(), &mut self.buf[..k]).is_err() {
                return;
            }
            left -= k;
        }
    }
}

impl Default for Splicer {
    fn default() -> Self {
        Splicer::new()
    }
}

/// Sends all of `head` flagged `MSG_MORE`: the data follows at once, so a TCP connection
/// sends the two together instead of the head in a segment of its own (which would wake the
/// peer for a few bytes); a UNIX socket ignores the flag.
fn send_more(to: BorrowedFd<'_>, head: &[u8]) -> io::Result<()> {
    let mut sent = 0;
    while sent < head.len() {
        let flags = rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::MORE;
        match rustix::net::send(to, &head[sent..], flags) {
            Ok(k) => sent += k,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn read_exact(from: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::read(from, &mut buf[done..]) {
            Ok(0) => return Err(eof()),
            Ok(k) => done += k,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn flags() -> SpliceFlags {
    SpliceFlags::MOVE
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed in the middle of migration data",
    )
}
