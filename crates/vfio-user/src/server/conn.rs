//! One client connection: framing, dispatch by command, replies.

use super::options::ServerOptions;
use crate::msg::{self, cmd, Header, Request, HEADER_LEN};
use crate::sock;
use rustix::fd::{BorrowedFd, OwnedFd};
use std::io;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use vfio_core::{Errno, VfioDevice};

/// A DMA mapping the client announced.
#[derive(Debug)]
pub(super) struct DmaMapping {
    pub(super) address: u64,
    pub(super) size: u64,
    pub(super) flags: u32,
    /// Kept open while mapped; the device model does no DMA yet.
    pub(super) _fd: Option<OwnedFd>,
}

/// One client connection.
pub(super) struct Conn<'a> {
    pub(super) stream: UnixStream,
    pub(super) dev: &'a dyn VfioDevice,
    pub(super) opts: &'a ServerOptions,
    /// Negotiated `max_data_xfer_size` (the spec default until VERSION says otherwise).
    pub(super) max_xfer: u32,
    pub(super) negotiated: bool,
    pub(super) dma: Vec<DmaMapping>,
    /// The reply being built: a header placeholder, then the payload.
    pub(super) out: Vec<u8>,
    /// Request buffer, reused.
    inbuf: Vec<u8>,
}

/// What a handler answers: the reply payload is in `Conn::out`; `Some(i)` passes the fd of
/// region `i` with it.
pub(super) type Reply = Result<Option<u32>, Errno>;

/// How a request was answered.
pub(super) enum Handled {
    /// A reply (or error reply) to send, built in `Conn::out`.
    Reply(Reply),
    /// Already answered on the socket (the streamed migration data paths).
    Sent,
}

impl<'a> Conn<'a> {
    pub(super) fn new(
        stream: UnixStream,
        dev: &'a dyn VfioDevice,
        opts: &'a ServerOptions,
    ) -> Conn<'a> {
        Conn {
            stream,
            dev,
            opts,
            max_xfer: msg::DEFAULT_MAX_DATA_XFER.min(opts.max_data_xfer),
            negotiated: false,
            dma: Vec::new(),
            out: Vec::with_capacity(HEADER_LEN + 64),
            inbuf: Vec::new(),
        }
    }

    /// Serves requests until the client hangs up (`Ok`), the framing breaks or the socket
    /// fails (`Err`), or `stop` is set.
    pub(super) fn serve(&mut self, stop: &AtomicBool) -> io::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            if !sock::readable(&self.stream, 100)? {
                continue;
            }
            let mut hb = [0u8; HEADER_LEN];
            let mut fds = Vec::new();
            if sock::recv_exact(&self.stream, &mut hb, &mut fds)? == 0 {
                return Ok(());
            }
            let h = Header::decode(&hb);
            let limit = msg::max_message_size(self.opts.max_data_xfer.max(self.max_xfer));
            let len = match h.check_size(limit) {
                Ok(n) => n,
                Err(e) => {
                    // The stream cannot be resynchronised: say why, then hang up.
                    tracing::warn!(size = h.size, %e, "unparseable framing; closing");
                    let _ = sock::send_all(&self.stream, &[&h.error_reply(e).encode()], &[]);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad message size",
                    ));
                }
            };
            let handled = self.request(&h, len, fds)?;
            if let Handled::Reply(r) = handled {
                self.respond(&h, r)?;
            }
        }
        Ok(())
    }

    /// Reads the rest of a request whose header arrived, and handles it.
    fn request(&mut self, h: &Header, len: usize, mut fds: Vec<OwnedFd>) -> io::Result<Handled> {
        if h.kind() != msg::TYPE_COMMAND {
            tracing::warn!(command = h.command, "ignoring a non-command message");
            self.discard(len)?;
            return Ok(Handled::Sent);
        }
        if !self.negotiated && h.command != cmd::VERSION {
            self.discard(len)?;
            return Ok(Handled::Reply(Err(Errno::EINVAL)));
        }
        match h.command {
            // Migration data never passes through a buffer of ours.
            cmd::MIG_DATA_READ => return self.mig_data_read(h, len),
            cmd::MIG_DATA_WRITE => return self.mig_data_write(len),
            _ => {}
        }
        let mut payload = std::mem::take(&mut self.inbuf);
        payload.resize(len, 0);
        if len > 0 {
            sock::recv_rest(&self.stream, &mut payload, &mut fds)?;
        }
        self.out.clear();
        self.out.extend_from_slice(&[0u8; HEADER_LEN]);
        let r = match Request::decode(h.command, &payload, self.max_xfer) {
            Ok(req) => self.dispatch(req, fds),
            Err(e) => {
                tracing::debug!(command = h.command, error = %e, "undecodable request");
                Err(e.errno())
            }
        };
        self.inbuf = payload;
        Ok(Handled::Reply(r))
    }

    fn dispatch(&mut self, req: Request<'_>, fds: Vec<OwnedFd>) -> Reply {
        match req {
            Request::Version(v) => self.version(v),
            Request::DmaMap(m) => self.dma_map(m, fds.into_iter().next()),
            Request::DmaUnmap(m) => self.dma_unmap(m),
            Request::DeviceInfo(i) => self.device_info(i),
            Request::RegionInfo(i) => self.region_info(i),
            Request::IrqInfo(i) => self.irq_info(i),
            Request::SetIrqs(s) => self.set_irqs(s),
            Request::RegionRead(r) => self.region_read(r),
            Request::RegionWrite(r, data) => self.region_write(r, data),
            Request::Reset => self.reset(),
            Request::Feature(f, data) => self.feature(f, data),
            Request::MigPrecopyInfo(r) => self.precopy_info(r),
            // Streamed by `request`, never decoded from a buffer.
            Request::MigDataRead(_) | Request::MigDataWrite(..) => Err(Errno::EINVAL),
        }
    }

    /// Sends the reply built in `out` (or the error), unless the client asked for none.
    pub(super) fn respond(&mut self, h: &Header, r: Reply) -> io::Result<()> {
        if h.no_reply() {
            return Ok(());
        }
        match r {
            Ok(fd_region) => {
                let size = self.out.len();
                self.out[..HEADER_LEN].copy_from_slice(&h.reply(size - HEADER_LEN).encode());
                let dev = self.dev;
                let fds: Vec<BorrowedFd<'_>> = fd_region
                    .and_then(|i| dev.region_fd(i))
                    .map(|(f, _)| vec![f])
                    .unwrap_or_default();
                sock::send_all(&self.stream, &[&self.out], &fds)
            }
            Err(e) => {
                tracing::debug!(command = h.command, %e, "error reply");
                sock::send_all(&self.stream, &[&h.error_reply(e).encode()], &[])
            }
        }
    }

    /// Appends reply payload bytes.
    pub(super) fn put(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Reads and drops `n` bytes of the current message.
    pub(super) fn discard(&mut self, n: usize) -> io::Result<()> {
        sock::discard(&self.stream, n)
    }
}
