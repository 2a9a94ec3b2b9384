//! A vfio-user server for any [`VfioDevice`]: one thread per socket, one client at a time, a new
//! client accepted after a disconnect.
//!
//! A client's disconnect is a close of the device: the migration state goes back to RUNNING and
//! streams are disabled (the VF's memory and registers persist — an emulator convenience).
//! Malformed messages get error replies with their errno and the server keeps serving; only
//! unparseable framing (a size that cannot be a message) ends the connection.
//!
//! Migration data takes direct paths when the device offers them (see `vfio_core::DataSink`):
//! a MIG_DATA_READ reply is written by the device into the socket — LMEM pages by `sendfile` —
//! and MIG_DATA_WRITE data is read by the device from the socket into its memory, with no
//! buffer of the server's in between. `sendfile` cannot suppress `SIGPIPE` as `send` does: a
//! client hanging up mid-reply raises it, which Rust programs ignore (the error is `EPIPE`);
//! a C host embedding this server must ignore it too.

use crate::msg::{self, feature, Fields, Header, Payload, Request, HEADER_LEN};
use crate::sock;
use rustix::fd::{BorrowedFd, OwnedFd};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vfio_core::{DataSink, DataSource, DeviceState, Errno, MigStream, VfioDevice};

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The largest `max_data_xfer_size` this server agrees to.
    pub max_data_xfer: u32,
    /// Offer BAR file descriptors for mmap when the device has them.
    pub mmap: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_data_xfer: msg::DEFAULT_MAX_DATA_XFER,
            mmap: true,
        }
    }
}

/// A listening vfio-user socket for one device. Removes its socket file when dropped.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    device: Arc<dyn VfioDevice>,
    opts: ServerOptions,
}

/// Most DMA mappings tracked per client (`max_dma_maps`).
pub const MAX_DMA_MAPS: usize = 65535;

#[derive(Debug)]
struct DmaMapping {
    address: u64,
    size: u64,
    flags: u32,
    #[allow(dead_code)] // kept open while mapped; the device model does no DMA yet
    fd: Option<OwnedFd>,
    #[allow(dead_code)]
    offset: u64,
}

impl Server {
    /// Binds `path` (mode 0600). An existing socket nobody listens on is replaced; a live one
    /// is `AddrInUse`.
    pub fn bind(
        path: &Path,
        device: Arc<dyn VfioDevice>,
        opts: ServerOptions,
    ) -> io::Result<Server> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running server", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            device,
            opts,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves clients one at a time until `stop` is set (checked every 100 ms).
    pub fn run(&self, stop: &AtomicBool) -> io::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            if !sock::readable(&self.listener, 100)? {
                continue;
            }
            let (stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            tracing::info!(socket = %self.path.display(), "client connected");
            sock::tune(&stream);
            let mut conn = Conn::new(stream, &*self.device, &self.opts);
            if let Err(e) = self.device.open() {
                tracing::warn!(%e, "device open failed");
            }
            let end = conn.serve(stop);
            conn.finish();
            self.device.close();
            match end {
                Ok(()) => tracing::info!(socket = %self.path.display(), "client disconnected"),
                Err(e) => tracing::warn!(socket = %self.path.display(), %e, "client dropped"),
            }
        }
        Ok(())
    }

    /// Runs the server on its own thread.
    pub fn spawn(self, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<io::Result<()>> {
        let name = format!(
            "vfio-user {}",
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("?")
        );
        std::thread::Builder::new()
            .name(name)
            .spawn(move || self.run(&stop))
            .expect("spawning a server thread")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One client connection.
struct Conn<'a> {
    stream: UnixStream,
    dev: &'a dyn VfioDevice,
    opts: &'a ServerOptions,
    /// Negotiated `max_data_xfer_size` (the spec default until VERSION says otherwise).
    max_xfer: u32,
    negotiated: bool,
    dma: Vec<DmaMapping>,
    /// The stream of the current migration session.
    mig: Option<MigStream>,
    /// Reply buffer, reused.
    out: Vec<u8>,
    /// Request buffer, reused.
    inbuf: Vec<u8>,
    /// Migration data of the current MIG_DATA_READ reply, sent after `out` without a copy;
    /// allocated once, to the negotiated transfer size.
    data: Vec<u8>,
    data_len: usize,
}

/// Reads exactly `buf.len()` bytes of a message whose header already arrived.
fn recv_or_truncated(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<()> {
    if sock::recv_exact(stream, buf, fds)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "truncated message",
        ));
    }
    Ok(())
}

/// Pieces smaller than this are gathered and sent with the next large one.
const GATHER: usize = 64 << 10;

/// A MIG_DATA_READ reply written as the device produces it.
struct SocketSink<'s> {
    stream: &'s UnixStream,
    h: &'s Header,
    /// Reply header and small pieces not sent yet.
    pending: &'s mut Vec<u8>,
    began: bool,
    err: Option<io::Error>,
}

impl SocketSink<'_> {
    /// Sends what is pending, then `more`, in one `sendmsg`; pending is empty afterwards.
    fn send_pending(&mut self, more: &[u8]) -> Result<(), Errno> {
        let r = sock::send_all(self.stream, &[self.pending.as_slice(), more], &[]);
        self.pending.clear();
        r.map_err(|e| {
            self.err = Some(e);
            Errno::EPIPE
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            sock::send_all(self.stream, &[self.pending], &[])?;
            self.pending.clear();
        }
        Ok(())
    }
}

impl DataSink for SocketSink<'_> {
    /// `sendfile`: the file's pages are attached to the socket's buffers by reference (Linux
    /// ≥ 6.5 for UNIX sockets; older kernels copy inside the kernel, still one copy fewer
    /// than reading into a buffer).
    fn put_file(&mut self, fd: BorrowedFd<'_>, offset: u64, len: usize) -> Result<bool, Errno> {
        if !self.pending.is_empty() {
            self.send_pending(&[])?;
        }
        let mut off = offset;
        let mut left = len;
        while left > 0 {
            match rustix::fs::sendfile(self.stream, fd, Some(&mut off), left) {
                Ok(0) => {
                    self.err = Some(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "sendfile: the file ended early",
                    ));
                    return Err(Errno::EPIPE);
                }
                Ok(k) => left -= k,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) if left == len => {
                    return Ok(false);
                }
                Err(e) => {
                    self.err = Some(e.into());
                    return Err(Errno::EPIPE);
                }
            }
        }
        Ok(true)
    }

    fn begin(&mut self, n: usize) -> Result<(), Errno> {
        self.began = true;
        self.pending.clear();
        self.pending
            .extend_from_slice(&self.h.reply(8 + n).encode());
        self.pending
            .extend_from_slice(&Payload::new().u32(8 + n as u32).u32(n as u32).0);
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), Errno> {
        if bytes.len() < GATHER {
            self.pending.extend_from_slice(bytes);
            return Ok(());
        }
        self.send_pending(bytes)
    }
}

/// The data of a MIG_DATA_WRITE, read from the socket as the device asks for it.
struct SocketSource<'s> {
    stream: &'s UnixStream,
    /// Bytes of the message not read yet.
    left: usize,
    err: Option<io::Error>,
}

impl SocketSource<'_> {
    /// Reads and drops what is left of the message.
    fn discard(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        let mut fds = Vec::new();
        while self.left > 0 {
            let k = self.left.min(buf.len());
            recv_or_truncated(self.stream, &mut buf[..k], &mut fds)?;
            self.left -= k;
        }
        Ok(())
    }
}

impl DataSource for SocketSource<'_> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), Errno> {
        if buf.len() > self.left {
            // The device asked past this message: a driver bug, not the client's.
            return Err(Errno::EINVAL);
        }
        let mut fds = Vec::new();
        match recv_or_truncated(self.stream, buf, &mut fds) {
            Ok(()) => {
                self.left -= buf.len();
                Ok(())
            }
            Err(e) => {
                self.err = Some(e);
                Err(Errno::EPIPE)
            }
        }
    }
}

/// A reply's payload is left in `Conn::out` after the header; `Ok(Some(i))` asks to pass the
/// fd of region `i` with it.
type Reply = Result<Option<u32>, Errno>;

impl<'a> Conn<'a> {
    fn new(stream: UnixStream, dev: &'a dyn VfioDevice, opts: &'a ServerOptions) -> Conn<'a> {
        Conn {
            stream,
            dev,
            opts,
            max_xfer: msg::DEFAULT_MAX_DATA_XFER.min(opts.max_data_xfer),
            negotiated: false,
            dma: Vec::new(),
            mig: None,
            out: Vec::with_capacity(HEADER_LEN + 64),
            inbuf: Vec::new(),
            data: Vec::new(),
            data_len: 0,
        }
    }

    fn finish(&mut self) {
        self.mig = None;
        self.dma.clear();
    }

    fn serve(&mut self, stop: &AtomicBool) -> io::Result<()> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
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
            let mut payload = std::mem::take(&mut self.inbuf);
            // MIG_DATA_WRITE: the fixed part first, then, if the device can take the data
            // straight from the socket, no payload buffer at all.
            let head = if h.kind() == msg::TYPE_COMMAND
                && h.command == msg::cmd::MIG_DATA_WRITE
                && self.negotiated
                && len >= 8
            {
                payload.resize(8, 0);
                recv_or_truncated(&self.stream, &mut payload, &mut fds)?;
                let size = Fields(&payload).u32(4).unwrap_or(u32::MAX) as usize;
                if size == len - 8 && size <= self.max_xfer as usize {
                    if let Some(r) = self.mig_write_direct(size) {
                        self.inbuf = payload;
                        let r = r?;
                        if !h.no_reply() {
                            let reply = match r {
                                Ok(()) => h.reply(0),
                                Err(e) => {
                                    tracing::debug!(command = h.command, %e, "error reply");
                                    h.error_reply(e)
                                }
                            };
                            sock::send_all(&self.stream, &[&reply.encode()], &[])?;
                        }
                        continue;
                    }
                }
                8
            } else {
                0
            };
            payload.resize(len, 0);
            if len > head {
                recv_or_truncated(&self.stream, &mut payload[head..], &mut fds)?;
            }
            if h.kind() != msg::TYPE_COMMAND {
                tracing::warn!(command = h.command, "ignoring a non-command message");
                self.inbuf = payload;
                continue;
            }
            // MIG_DATA_READ: the data straight from the device to the socket when it can.
            if h.command == msg::cmd::MIG_DATA_READ && self.negotiated && !h.no_reply() {
                if let Ok(Request::MigDataRead { argsz, size }) =
                    msg::decode(&h, &payload, self.max_xfer)
                {
                    if let Some(r) = self.mig_read_direct(&h, argsz, size) {
                        self.inbuf = payload;
                        r?;
                        continue;
                    }
                }
            }
            self.out.clear();
            self.out.extend_from_slice(&[0u8; HEADER_LEN]);
            self.data_len = 0;
            let r = self.handle(&h, &payload, fds);
            self.inbuf = payload;
            let r = match r {
                Ok(fd_region) => {
                    let size = self.out.len() + self.data_len;
                    self.out[..HEADER_LEN].copy_from_slice(&h.reply(size - HEADER_LEN).encode());
                    let dev = self.dev;
                    let fds: Vec<BorrowedFd<'_>> = fd_region
                        .and_then(|i| dev.region_fd(i))
                        .map(|(f, _)| vec![f])
                        .unwrap_or_default();
                    if h.no_reply() {
                        Ok(())
                    } else {
                        sock::send_all(
                            &self.stream,
                            &[&self.out, &self.data[..self.data_len]],
                            &fds,
                        )
                    }
                }
                Err(e) => {
                    tracing::debug!(command = h.command, %e, "error reply");
                    if h.no_reply() {
                        Ok(())
                    } else {
                        sock::send_all(&self.stream, &[&h.error_reply(e).encode()], &[])
                    }
                }
            };
            r?;
        }
    }

    /// MIG_DATA_READ answered by the device writing into the socket (no data buffer): the
    /// reply header with the count, then the bytes. `None` when the device cannot, or the
    /// request is not valid now (the buffered path then answers, with its errors). A device
    /// failure after the header went out cannot be reported in-band: the connection ends.
    fn mig_read_direct(&mut self, h: &Header, argsz: u32, size: u32) -> Option<io::Result<()>> {
        let dev = self.dev;
        let core = dev.migration()?;
        if !matches!(core.state(), DeviceState::PreCopy | DeviceState::StopCopy)
            || (argsz as usize) < 8 + size as usize
        {
            return None;
        }
        let Some(MigStream::Save(s)) = &self.mig else {
            return None;
        };
        let s = s.clone();
        self.out.clear();
        let mut sink = SocketSink {
            stream: &self.stream,
            h,
            pending: &mut self.out,
            began: false,
            err: None,
        };
        Some(match s.read_to(size as usize, &mut sink) {
            Ok(_) => sink.flush(),
            Err(e) if !sink.began => {
                tracing::debug!(command = h.command, %e, "error reply");
                sock::send_all(&self.stream, &[&h.error_reply(e).encode()], &[])
            }
            Err(e) => Err(sink.err.take().unwrap_or_else(|| {
                io::Error::other(format!("the device failed in the middle of a reply: {e}"))
            })),
        })
    }

    /// MIG_DATA_WRITE of `size` bytes still on the socket, taken by the device straight from
    /// it. `None` when the device cannot or the device is not RESUMING (nothing was read);
    /// else the socket's fate and the device's answer. Bytes the device left unread (it
    /// failed part-way) are read and dropped, so the next message is found.
    fn mig_write_direct(&mut self, size: usize) -> Option<io::Result<Result<(), Errno>>> {
        let dev = self.dev;
        let core = dev.migration()?;
        if core.state() != DeviceState::Resuming {
            return None;
        }
        let Some(MigStream::Resume(r)) = &self.mig else {
            return None;
        };
        let r = r.clone();
        let mut src = SocketSource {
            stream: &self.stream,
            left: size,
            err: None,
        };
        let res = r.write_from(size, &mut src);
        if let Some(e) = src.err.take() {
            return Some(Err(e));
        }
        if let Err(e) = src.discard() {
            return Some(Err(e));
        }
        Some(Ok(res))
    }

    fn put(&mut self, p: Payload) {
        self.out.extend_from_slice(&p.0);
    }

    fn handle(&mut self, h: &Header, payload: &[u8], fds: Vec<OwnedFd>) -> Reply {
        let req = msg::decode(h, payload, self.max_xfer)?;
        if !self.negotiated && !matches!(req, Request::Version { .. }) {
            return Err(Errno::EINVAL);
        }
        let mut fds = fds.into_iter();
        match req {
            Request::Version { major, minor, json } => {
                let caps = self.negotiate(major, minor, json)?;
                let text = caps.to_string();
                let p = Payload::new()
                    .u16(msg::VERSION_MAJOR)
                    .u16(minor.min(msg::VERSION_MINOR))
                    .bytes(text.as_bytes())
                    .bytes(&[0]);
                self.put(p);
            }
            Request::DmaMap {
                flags,
                offset,
                address,
                size,
            } => {
                let end = address.checked_add(size).ok_or(Errno::EINVAL)?;
                if size == 0 || flags & !3 != 0 {
                    return Err(Errno::EINVAL);
                }
                if self
                    .dma
                    .iter()
                    .any(|m| address < m.address + m.size && m.address < end)
                {
                    return Err(Errno::EEXIST);
                }
                if self.dma.len() >= MAX_DMA_MAPS {
                    return Err(Errno::ENOSPC);
                }
                self.dma.push(DmaMapping {
                    address,
                    size,
                    flags,
                    fd: fds.next(),
                    offset,
                });
            }
            Request::DmaUnmap {
                argsz,
                flags,
                address,
                size,
            } => {
                let i = self
                    .dma
                    .iter()
                    .position(|m| m.address == address && m.size == size)
                    .ok_or(Errno::EINVAL)?;
                let m = self.dma.remove(i);
                tracing::debug!(address, size, flags = m.flags, "DMA unmapped");
                self.put(
                    Payload::new()
                        .u32(argsz.min(24))
                        .u32(flags)
                        .u64(address)
                        .u64(size),
                );
            }
            Request::GetInfo { argsz } => {
                if argsz < 16 {
                    return Err(Errno::EINVAL);
                }
                let i = self.dev.info();
                self.put(
                    Payload::new()
                        .u32(16)
                        .u32(i.flags)
                        .u32(i.num_regions)
                        .u32(i.num_irqs),
                );
            }
            Request::GetRegionInfo { argsz, index } => {
                if argsz < 32 {
                    return Err(Errno::EINVAL);
                }
                let mut info = self.dev.region_info(index)?;
                let fd = if self.opts.mmap {
                    self.dev.region_fd(index).map(|(_, off)| off)
                } else {
                    None
                };
                let offset = fd.unwrap_or(0);
                if fd.is_none() {
                    info.flags &= !vfio_core::device::REGION_INFO_FLAG_MMAP;
                }
                self.put(
                    Payload::new()
                        .u32(32)
                        .u32(info.flags)
                        .u32(index)
                        .u32(0)
                        .u64(info.size)
                        .u64(offset),
                );
                return Ok(fd.map(|_| index));
            }
            Request::GetIrqInfo { argsz, index } => {
                if argsz < 16 {
                    return Err(Errno::EINVAL);
                }
                let i = self.dev.irq_info(index)?;
                self.put(Payload::new().u32(16).u32(i.flags).u32(index).u32(i.count));
            }
            Request::SetIrqs {
                flags,
                index,
                start,
                count,
            } => {
                // Eventfds are accepted and closed: the device model raises no interrupts yet.
                self.dev.set_irqs(index, flags, start, count)?;
            }
            Request::RegionRead {
                offset,
                region,
                count,
            } => {
                self.put(Payload::new().u64(offset).u32(region).u32(count));
                let at = self.out.len();
                self.out.resize(at + count as usize, 0);
                self.dev.region_read(region, offset, &mut self.out[at..])?;
            }
            Request::RegionWrite {
                offset,
                region,
                data,
            } => {
                self.dev.region_write(region, offset, data)?;
                self.put(
                    Payload::new()
                        .u64(offset)
                        .u32(region)
                        .u32(data.len() as u32),
                );
            }
            Request::Reset => {
                self.dev.reset()?;
                self.forget_stream_if_idle();
            }
            Request::Feature { argsz, flags, data } => self.feature(argsz, flags, data)?,
            Request::MigDataRead { argsz, size } => {
                let core = self.dev.migration().ok_or(Errno::ENOTTY)?;
                if !matches!(core.state(), DeviceState::PreCopy | DeviceState::StopCopy) {
                    return Err(Errno::EINVAL);
                }
                if (argsz as usize) < 8 + size as usize {
                    return Err(Errno::EINVAL);
                }
                let Some(MigStream::Save(s)) = &self.mig else {
                    return Err(Errno::EINVAL);
                };
                let s = s.clone();
                if self.data.len() < size as usize {
                    self.data.resize(size as usize, 0);
                }
                let mut n = 0usize;
                while n < size as usize {
                    let k = s.read(&mut self.data[n..size as usize])?;
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                self.data_len = n;
                self.put(Payload::new().u32(8 + n as u32).u32(n as u32));
            }
            Request::MigDataWrite { data } => {
                let core = self.dev.migration().ok_or(Errno::ENOTTY)?;
                if core.state() != DeviceState::Resuming {
                    return Err(Errno::EINVAL);
                }
                let Some(MigStream::Resume(r)) = &self.mig else {
                    return Err(Errno::EINVAL);
                };
                r.write(data)?;
            }
            Request::Unsupported(c) => {
                tracing::debug!(command = c, "unsupported command");
                return Err(Errno::EOPNOTSUPP);
            }
        }
        Ok(None)
    }

    /// VERSION: our major, the lower minor, and the subset of the client's capabilities we
    /// support (unknown ones are ignored).
    fn negotiate(
        &mut self,
        major: u16,
        _minor: u16,
        json: &str,
    ) -> Result<serde_json::Value, Errno> {
        if major != msg::VERSION_MAJOR {
            return Err(Errno::EOPNOTSUPP);
        }
        let client: serde_json::Value = if json.trim().is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(json).map_err(|_| Errno::EINVAL)?
        };
        let caps = client.get("capabilities");
        let mut out = serde_json::Map::new();
        let num = |k: &str| caps.and_then(|c| c.get(k)).and_then(|v| v.as_u64());
        let xfer = match num("max_data_xfer_size") {
            Some(v) => {
                let v = (v.min(u64::from(u32::MAX)) as u32).min(self.opts.max_data_xfer);
                out.insert("max_data_xfer_size".into(), v.into());
                v
            }
            None => msg::DEFAULT_MAX_DATA_XFER.min(self.opts.max_data_xfer),
        };
        if xfer == 0 {
            return Err(Errno::EINVAL);
        }
        if let Some(v) = num("max_msg_fds") {
            out.insert("max_msg_fds".into(), v.min(sock::MAX_FDS as u64).into());
        }
        if let Some(v) = num("max_dma_maps") {
            out.insert("max_dma_maps".into(), v.min(MAX_DMA_MAPS as u64).into());
        }
        if let Some(v) = num("pgsizes") {
            out.insert("pgsizes".into(), (v & 4096).max(4096).into());
        }
        if let Some(m) = caps.and_then(|c| c.get("migration")) {
            if self.dev.migration().is_some() && m.is_object() {
                out.insert("migration".into(), serde_json::json!({ "pgsize": 4096 }));
            }
        }
        self.max_xfer = xfer;
        self.negotiated = true;
        Ok(serde_json::json!({ "capabilities": out }))
    }

    fn forget_stream_if_idle(&mut self) {
        let in_session = self.dev.migration().is_some_and(|c| {
            matches!(
                c.state(),
                DeviceState::StopCopy
                    | DeviceState::Resuming
                    | DeviceState::PreCopy
                    | DeviceState::PreCopyP2p
            )
        });
        if !in_session {
            self.mig = None;
        }
    }

    /// DEVICE_FEATURE: MIGRATION, MIG_DEVICE_STATE, MIG_DATA_SIZE (ours).
    fn feature(&mut self, argsz: u32, flags: u32, data: &[u8]) -> Result<(), Errno> {
        let index = flags & feature::MASK;
        let (get, set, probe) = (
            flags & feature::GET != 0,
            flags & feature::SET != 0,
            flags & feature::PROBE != 0,
        );
        if get && set && !probe {
            return Err(Errno::EINVAL);
        }
        let core = self.dev.migration().ok_or(Errno::ENOTTY)?;
        // (supports GET, supports SET, GET data size)
        let (can_get, can_set, get_len) = match index {
            feature::MIGRATION => (true, false, 8),
            feature::MIG_DEVICE_STATE => (true, true, 8),
            feature::MIG_DATA_SIZE => (true, false, 8),
            _ => return Err(Errno::ENOTTY),
        };
        if (get && !can_get) || (set && !can_set) || (!get && !set) {
            return Err(Errno::EINVAL);
        }
        if probe {
            self.put(Payload::new().u32(argsz).u32(flags));
            return Ok(());
        }
        if get {
            if (argsz as usize) < 8 + get_len {
                return Err(Errno::EINVAL);
            }
            let p = Payload::new().u32(8 + get_len as u32).u32(flags);
            let p = match index {
                feature::MIGRATION => p.u64(core.flags().bits()),
                feature::MIG_DEVICE_STATE => p.u32(core.state() as u32).u32(u32::MAX),
                _ => p.u64(core.data_size()?),
            };
            self.put(p);
            return Ok(());
        }
        // SET MIG_DEVICE_STATE.
        let state = DeviceState::try_from(Fields(data).need(4)?.u32(0)?)?;
        let r = core.set_state(state);
        match r {
            Ok(Some(s)) => self.mig = Some(s),
            Ok(None) => self.forget_stream_if_idle(),
            Err(e) => {
                self.forget_stream_if_idle();
                return Err(e);
            }
        }
        self.put(Payload::new().u32(argsz).u32(flags).bytes(data));
        Ok(())
    }
}
