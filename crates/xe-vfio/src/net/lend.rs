//! Plaintext lent to the destination VFs' sockets by reference.
//!
//! Over TLS the destination must hold each byte in its own memory once, to decrypt it. From
//! there a `sendmsg` into the VF's socket would copy it again — on one CPU per host that copy
//! and its socket buffers cost as much as the decryption. Instead the plaintext is decrypted
//! into page-aligned buffers of this module ([`Lender`]), and each MIG_DATA_WRITE body is
//! handed to the VF's socket by reference: `vmsplice(2)` puts references to the buffer's pages
//! into a pipe, `splice(2)` moves them into the socket, and the VF's server copies them out
//! with its `recv` (straight into its LMEM) — the only copy after the decryption.
//!
//! A lent page must not change until the VF has read it. A body lent to a VF is read when the
//! VF answers its MIG_DATA_WRITE (a vfio-user server reads a message before it replies), so
//! every pass of a body is a [`Ticket`], given back with [`Lender::answered`] once the VF
//! answered; a buffer is written again only when no unanswered ticket refers to it. Until then
//! new plaintext goes into other buffers: as many as the writes in flight need (at most two
//! per write; the caller bounds the writes), kept for reuse. A buffer still lent when the
//! lender is dropped (a migration aborted) is unmapped, never reused by this process: the
//! kernel keeps its pages for the sockets that hold them, and they are freed when the VF's
//! connection drops them.
//!
//! Where the kernel refuses to splice (no pipe, or a socket type that takes no spliced
//! pages), the bytes are written with `sendmsg` instead.

use memmap2::MmapMut;
use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::pipe::{PipeFlags, SpliceFlags};
use std::collections::HashMap;
use std::io;
use tls_records::MAX_CIPHERTEXT;
use vfio_user::send_all;

/// One pass of a body whose bytes were lent: answered when the VF has read them. 0 for a pass
/// that lent nothing (copied, or plain TCP).
pub(super) type Ticket = u64;

/// Nothing was lent.
pub(super) const NOTHING_LENT: Ticket = 0;

/// A plaintext buffer's size: a DATA frame's body and more fit in one.
const PAGE_BUF: usize = 1 << 20;
/// The pipe's capacity asked for (pages; fewer only means more calls).
const PIPE: usize = 1 << 20;

/// A page-aligned plaintext buffer: `[taken, filled)` is plaintext not yet passed on.
struct PageBuf {
    map: MmapMut,
    filled: usize,
    taken: usize,
    /// Unanswered tickets that lent some of this buffer's bytes.
    lent: usize,
}

/// The plaintext buffers of one connection, the pipe that lends them, and what is lent.
pub(super) struct Lender {
    /// Each buffer's size.
    size: usize,
    bufs: Vec<PageBuf>,
    /// The buffer plaintext goes into and is taken from.
    cur: usize,
    /// Buffers neither current nor lent: ready to be filled again.
    free: Vec<usize>,
    /// The buffers each unanswered ticket lent bytes of.
    tickets: HashMap<Ticket, Vec<usize>>,
    next: Ticket,
    /// The pipe's read and write ends; `None` where the kernel refused to splice.
    pipe: Option<(OwnedFd, OwnedFd)>,
}

impl Lender {
    /// A lender with one buffer; `ENOMEM`-like errors if the buffer cannot be mapped.
    pub(super) fn new() -> io::Result<Lender> {
        Lender::with_buffers(PAGE_BUF)
    }

    /// A lender whose buffers are of `size` bytes (at least [`MAX_CIPHERTEXT`]).
    fn with_buffers(size: usize) -> io::Result<Lender> {
        let pipe = pipe();
        Ok(Lender {
            size: size.max(MAX_CIPHERTEXT),
            bufs: vec![PageBuf::new(size.max(MAX_CIPHERTEXT))?],
            cur: 0,
            free: Vec::new(),
            tickets: HashMap::new(),
            next: NOTHING_LENT + 1,
            pipe,
        })
    }

    /// The plaintext not passed on yet.
    pub(super) fn plaintext(&self) -> &[u8] {
        let b = &self.bufs[self.cur];
        &b.map[b.taken..b.filled]
    }

    /// Where the next plaintext goes: at least [`MAX_CIPHERTEXT`] bytes (a whole record
    /// decrypts there) when all plaintext has been passed on — the caller asks only then.
    pub(super) fn room(&mut self) -> io::Result<&mut [u8]> {
        let b = &self.bufs[self.cur];
        if b.taken == b.filled && self.size - b.filled < MAX_CIPHERTEXT {
            self.next_buffer()?;
        }
        let b = &mut self.bufs[self.cur];
        let at = b.filled;
        Ok(&mut b.map[at..])
    }

    /// `n` bytes of plaintext were put into [`Lender::room`].
    pub(super) fn opened(&mut self, n: usize) {
        let b = &mut self.bufs[self.cur];
        b.filled = (b.filled + n).min(self.size);
    }

    /// Passes on the first `n` bytes of [`Lender::plaintext`] without lending them (they
    /// were copied).
    pub(super) fn consume(&mut self, n: usize) {
        let b = &mut self.bufs[self.cur];
        b.taken = (b.taken + n).min(b.filled);
    }

    /// Moves on from the current buffer, whose plaintext has all been passed on: it is
    /// filled again from its start if nothing of it is lent, else a free buffer (or a new
    /// one) takes its place.
    fn next_buffer(&mut self) -> io::Result<()> {
        if self.bufs[self.cur].lent == 0 {
            self.bufs[self.cur].reset();
            return Ok(());
        }
        let next = match self.free.pop() {
            Some(i) => i,
            None => {
                self.bufs.push(PageBuf::new(self.size)?);
                self.bufs.len() - 1
            }
        };
        self.bufs[next].reset();
        self.cur = next;
        Ok(())
    }

    /// Writes the first `n` bytes of [`Lender::plaintext`] into the socket `to` — lent (its
    /// buffer then joins `lent`, the buffers of the pass being built) or, where the kernel
    /// does not splice, copied.
    pub(super) fn lend(
        &mut self,
        to: BorrowedFd<'_>,
        n: usize,
        lent: &mut Vec<usize>,
    ) -> io::Result<()> {
        let cur = self.cur;
        let b = &self.bufs[cur];
        let piece = &b.map[b.taken..b.taken + n.min(b.filled - b.taken)];
        let spliced = match &self.pipe {
            Some((rd, wr)) => splice_out(piece, rd, wr, to),
            None => Err(Refused::Kernel),
        };
        match spliced {
            Ok(()) => {
                if !lent.contains(&cur) {
                    lent.push(cur);
                    self.bufs[cur].lent += 1;
                }
            }
            Err(Refused::Kernel) => {
                if self.pipe.take().is_some() {
                    tracing::info!("splice refused into this socket; plaintext is copied");
                }
                send_all(to, &[piece], &[])?;
            }
            Err(Refused::Io(e)) => {
                // The pipe may hold part of the piece: a fresh pipe for whatever comes next.
                self.pipe = pipe();
                return Err(e);
            }
        }
        self.consume(n);
        Ok(())
    }

    /// The ticket of a pass that lent bytes of the buffers `lent`.
    pub(super) fn ticket(&mut self, lent: Vec<usize>) -> Ticket {
        if lent.is_empty() {
            return NOTHING_LENT;
        }
        let t = self.next;
        self.next += 1;
        self.tickets.insert(t, lent);
        t
    }

    /// The VF read the bytes of pass `t`: the buffers it lent may be filled again.
    pub(super) fn answered(&mut self, t: Ticket) {
        for i in self.tickets.remove(&t).unwrap_or_default() {
            let b = &mut self.bufs[i];
            b.lent -= 1;
            if b.lent == 0 && i != self.cur {
                self.free.push(i);
            }
        }
    }

    /// How many buffers this lender has made (for tests: bounded by the writes in flight).
    #[cfg(test)]
    pub(super) fn buffers(&self) -> usize {
        self.bufs.len()
    }
}

impl Drop for Lender {
    fn drop(&mut self) {
        let lent = self.bufs.iter().filter(|b| b.lent > 0).count();
        tracing::debug!(buffers = self.bufs.len(), lent, "plaintext buffers");
    }
}

impl PageBuf {
    fn new(size: usize) -> io::Result<PageBuf> {
        Ok(PageBuf {
            map: MmapMut::map_anon(size)?,
            filled: 0,
            taken: 0,
            lent: 0,
        })
    }

    fn reset(&mut self) {
        self.filled = 0;
        self.taken = 0;
    }
}

fn pipe() -> Option<(OwnedFd, OwnedFd)> {
    let (rd, wr) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).ok()?;
    // Best effort: a smaller pipe only means more calls.
    let _ = rustix::pipe::fcntl_setpipe_size(&wr, PIPE);
    Some((rd, wr))
}

enum Refused {
    /// The kernel does not splice here (nothing was written to the socket; the pipe may hold
    /// references, and is dropped).
    Kernel,
    Io(io::Error),
}

/// `piece`'s pages into the pipe, and from the pipe into `to`, until all of it is there.
fn splice_out(piece: &[u8], rd: &OwnedFd, wr: &OwnedFd, to: BorrowedFd<'_>) -> Result<(), Refused> {
    let mut at = 0;
    let mut first = true;
    while at < piece.len() {
        let iov = [rustix::pipe::IoSliceRaw::from_slice(&piece[at..])];
        // SAFETY: `wr` is the pipe's write end, so the kernel only reads `piece` (it takes
        // references to its pages: no GIFT). The pages stay mapped and unchanged until the VF
        // has read them: the buffer is written again only once the ticket of this pass is
        // answered, and unmapped (never reused by this process) if that never happens.
        let k = match unsafe { rustix::pipe::vmsplice(wr, &iov, SpliceFlags::empty()) } {
            Ok(k) => k,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) if first => {
                return Err(Refused::Kernel)
            }
            Err(e) => return Err(Refused::Io(e.into())),
        };
        let mut out = 0;
        while out < k {
            match rustix::pipe::splice(rd, None, to, None, k - out, SpliceFlags::empty()) {
                Ok(0) => {
                    let e =
                        io::Error::new(io::ErrorKind::WriteZero, "the VF's socket took nothing");
                    return Err(Refused::Io(e));
                }
                Ok(m) => out += m,
                Err(rustix::io::Errno::INTR) => {}
                // Nothing reached the socket: the caller drops the pipe and copies instead.
                Err(rustix::io::Errno::INVAL) if first && out == 0 => return Err(Refused::Kernel),
                Err(e) => return Err(Refused::Io(e.into())),
            }
        }
        first = false;
        at += k;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fd::AsFd;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    /// Puts plaintext where a decrypter would — up to `n` bytes of pass `pass`'s pattern
    /// into the current room — and returns it.
    fn decrypt_into(l: &mut Lender, pass: u8, n: usize) -> Vec<u8> {
        let room = l.room().unwrap();
        let k = room.len().min(n);
        for (i, b) in room[..k].iter_mut().enumerate() {
            *b = pass ^ (i as u8);
        }
        l.opened(k);
        room_bytes(pass, k)
    }

    fn room_bytes(pass: u8, k: usize) -> Vec<u8> {
        (0..k).map(|i| pass ^ (i as u8)).collect()
    }

    /// Bodies lent and not answered stay as they were while newer plaintext fills other
    /// buffers; once answered, their buffers are filled again instead of new ones made.
    #[test]
    fn lent_bytes_stay_as_lent_until_answered_and_their_buffers_are_reused_after() {
        const BUF: usize = 64 << 10;
        const BODY: usize = 40 << 10;
        let (vf, mut reader) = UnixStream::pair().unwrap();
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&vf, 4 << 20);
        let mut l = Lender::with_buffers(BUF).unwrap();
        let mut tickets = Vec::new();
        let mut want = Vec::new();
        // Six bodies, none answered: 240 KiB through 64 KiB buffers (the VF reads nothing yet).
        for pass in 0..6u8 {
            let mut lent = Vec::new();
            let mut left = BODY;
            while left > 0 {
                if l.plaintext().is_empty() {
                    want.extend(decrypt_into(&mut l, pass, left));
                }
                let k = left.min(l.plaintext().len());
                l.lend(vf.as_fd(), k, &mut lent).unwrap();
                left -= k;
            }
            assert!(!lent.is_empty(), "the bytes were lent, not copied");
            tickets.push(l.ticket(lent));
        }
        let made = l.buffers();
        assert!(made >= 240 / 64, "{made} buffers for 240 KiB unanswered");
        // What the VF reads now is what was lent then: no buffer was filled again.
        let mut got = vec![0u8; want.len()];
        reader.read_exact(&mut got).unwrap();
        assert!(got == want, "lent bytes changed before the VF answered");
        // Answered: the same buffers take the next bodies, three of them unanswered at a time
        // (as a VF's writes in flight), through many rotations.
        let mut tickets: std::collections::VecDeque<Ticket> = tickets.into();
        for pass in 6..60u8 {
            while tickets.len() > 2 {
                l.answered(tickets.pop_front().unwrap());
            }
            let mut lent = Vec::new();
            let want = decrypt_into(&mut l, pass, BODY);
            l.lend(vf.as_fd(), want.len(), &mut lent).unwrap();
            tickets.push_back(l.ticket(lent));
            let mut got = vec![0u8; want.len()];
            reader.read_exact(&mut got).unwrap();
            assert!(got == want);
        }
        assert_eq!(l.buffers(), made, "answered buffers are reused");
    }
}
