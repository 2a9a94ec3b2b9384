//! Socket I/O with file-descriptor passing (`SCM_RIGHTS`), over rustix.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;

/// Most fds accepted with one message (`max_msg_fds`).
pub const MAX_FDS: usize = 8;

/// Reads exactly `buf.len()` bytes, collecting any fds that arrive. Returns 0 on a clean EOF
/// before the first byte; `UnexpectedEof` if the peer closes mid-way.
pub fn recv_exact(sock: impl AsFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf[done..])];
        let r = match rustix::net::recvmsg(&sock, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC) {
            Ok(r) => r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for msg in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = msg {
                for fd in rights {
                    // Beyond MAX_FDS the fds are closed (dropped) rather than kept.
                    if fds.len() < MAX_FDS {
                        fds.push(fd);
                    }
                }
            }
        }
        if r.bytes == 0 {
            if done == 0 {
                return Ok(0);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed in the middle of a message",
            ));
        }
        done += r.bytes;
    }
    Ok(done)
}

/// Reads exactly `buf.len()` bytes of a message whose start already arrived: a clean EOF here
/// is a truncated message too.
pub fn recv_rest(sock: impl AsFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<()> {
    if recv_exact(sock, buf, fds)? == 0 && !buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "truncated message",
        ));
    }
    Ok(())
}

/// Reads and drops the next `n` bytes of a message (its fds, if any, are closed).
pub fn discard(sock: impl AsFd, n: usize) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    let mut fds = Vec::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len());
        recv_rest(&sock, &mut buf[..k], &mut fds)?;
        fds.clear();
        left -= k;
    }
    Ok(())
}

/// Writes every byte of `parts`, passing `fds` with the first chunk.
pub fn send_all(sock: impl AsFd, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut sent = 0usize;
    let mut first = true;
    while sent < total {
        // Rebuild the iovec from the current position.
        let mut skip = sent;
        let mut iov = Vec::with_capacity(parts.len());
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            iov.push(IoSlice::new(&p[skip..]));
            skip = 0;
        }
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        if first && !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds"));
        }
        match rustix::net::sendmsg(&sock, &iov, &mut cmsg, SendFlags::NOSIGNAL) {
            Ok(n) => {
                sent += n;
                first = false;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Waits up to `timeout_ms` for `sock` to become readable (or hung up).
pub fn readable(sock: impl AsFd, timeout_ms: i32) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(&sock, PollFlags::IN)];
    let ts = Timespec {
        tv_sec: i64::from(timeout_ms / 1000),
        tv_nsec: i64::from(timeout_ms % 1000) * 1_000_000,
    };
    match poll(&mut fds, Some(&ts)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Socket buffer size for data connections: a 1 MiB message then moves in one or two wakeups
/// instead of five (the default is about 208 KiB). Best effort: the kernel may clamp it.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Enlarges both socket buffers of `sock` (errors ignored: only a performance hint).
pub fn tune(sock: impl AsFd) {
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&sock, SOCKET_BUFFER);
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&sock, SOCKET_BUFFER);
}
