//! A vfio-user client: what the CLI and the tests use to drive a server.
//!
//! Requests are built and replies parsed with the typed messages of [`crate::msg`]. Every
//! request goes out in one `sendmsg` (header, fixed part and data together), so a peer that
//! reads a message body with one `recv` sees it whole. Migration data can also be moved in
//! pieces, for a relay that keeps requests in flight and passes data between sockets without
//! reading it: [`Client::send_mig_data_read`], [`Client::recv_mig_data_read_head`],
//! [`Client::mig_data_write_head`], [`Client::recv_mig_data_write_reply`].

use crate::msg::{
    self, cmd, feature, DecodeError, DeviceInfo as DeviceInfoMsg, Feature, Header,
    IrqInfo as IrqInfoMsg, MigData, PrecopyInfo, PrecopyInfoRequest, RegionAccess,
    RegionInfo as RegionInfoMsg, Version, HEADER_LEN,
};
use crate::sock;
use rustix::fd::OwnedFd;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use vfio_core::{DeviceInfo, DeviceState, Errno, IrqInfo, MigrationFlags, RegionInfo};

/// What went wrong talking to a server.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    #[error("{command} failed: {errno}")]
    Remote { command: &'static str, errno: Errno },
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The errno behind the error (`EPROTO` for protocol errors).
    pub fn errno(&self) -> Errno {
        match self {
            ClientError::Remote { errno, .. } => *errno,
            ClientError::Io(e) => Errno::from_io(e),
            ClientError::Protocol(_) => Errno::EPROTO,
        }
    }

    /// Whether the connection is still in step after this error: an error *reply* is a whole
    /// message; a socket or protocol error may leave part of a message unread.
    pub fn in_step(&self) -> bool {
        matches!(self, ClientError::Remote { .. })
    }
}

impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// How long a reply may take by default before the client gives up (a peer that lost track of
/// the conversation would otherwise be waited for forever).
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A connected, version-negotiated client.
pub struct Client {
    sock: UnixStream,
    /// Where the client connected, and the transfer size it asked for (to reconnect).
    path: std::path::PathBuf,
    asked_xfer: u32,
    /// The reply timeout in force (kept across a reconnect).
    timeout: Option<Duration>,
    next_id: u16,
    max_xfer: u32,
    server_caps: serde_json::Value,
}

/// A reply: header, payload, fds.
pub struct ReplyMsg {
    pub header: Header,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// The head of a MIG_DATA_READ reply; its data follows on the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigReadHead {
    /// Data bytes (the reply's `size`).
    pub data: usize,
    /// Bytes after the data that are not data (a peer that pads its replies to the requested
    /// length); the reader drops them.
    pub padding: usize,
}

impl Client {
    /// Connects and negotiates (asking for `max_data_xfer_size` = 1 MiB).
    pub fn connect(path: &Path) -> Result<Client> {
        Self::connect_with(path, msg::DEFAULT_MAX_DATA_XFER)
    }

    /// Connects and negotiates asking for `max_xfer`.
    pub fn connect_with(path: &Path, max_xfer: u32) -> Result<Client> {
        let sock = UnixStream::connect(path)?;
        sock::tune(&sock);
        // A server serves one client at a time: if another is attached, our VERSION waits in
        // the backlog. Say so instead of hanging.
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let mut c = Client {
            sock,
            path: path.to_path_buf(),
            asked_xfer: max_xfer,
            timeout: None,
            next_id: 0,
            max_xfer: msg::DEFAULT_MAX_DATA_XFER,
            server_caps: serde_json::Value::Null,
        };
        let caps = serde_json::json!({"capabilities": {
            "max_msg_fds": sock::MAX_FDS,
            "max_data_xfer_size": max_xfer,
            "migration": {"pgsize": 4096},
        }})
        .to_string();
        let req = Version {
            major: msg::VERSION_MAJOR,
            minor: msg::VERSION_MINOR,
            json: &caps,
        };
        let r = match c.call(cmd::VERSION, &[&req.to_vec()]) {
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(proto(&format!(
                    "{} did not answer VERSION within 5 s: another client is probably attached",
                    path.display()
                )));
            }
            r => r?,
        };
        c.set_reply_timeout(Some(DEFAULT_REPLY_TIMEOUT))?;
        let v = Version::parse(&r.payload)?;
        if v.major != msg::VERSION_MAJOR {
            return Err(proto(&format!(
                "server speaks vfio-user {}.{}, we speak {}.{}",
                v.major,
                v.minor,
                msg::VERSION_MAJOR,
                msg::VERSION_MINOR
            )));
        }
        c.server_caps =
            serde_json::from_str(v.json).map_err(|e| proto(&format!("bad capabilities: {e}")))?;
        c.max_xfer = c
            .server_caps
            .pointer("/capabilities/max_data_xfer_size")
            .and_then(|v| v.as_u64())
            .map_or(msg::DEFAULT_MAX_DATA_XFER, |v| {
                v.min(u64::from(max_xfer)) as u32
            })
            .max(1);
        Ok(c)
    }

    /// Drops this connection and opens a new one to the same server (negotiating again). After
    /// a protocol or socket error the old connection may hold half a message, so it is never
    /// reused: the next request on it would read the wrong reply.
    pub fn reconnect(&mut self) -> Result<()> {
        // Hang up first: a server that serves one client at a time answers the new connection
        // only once the old one is gone.
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let timeout = self.timeout;
        *self = Client::connect_with(&self.path, self.asked_xfer)?;
        self.set_reply_timeout(timeout)
    }

    /// How long to wait for a reply (and for the socket to take a request) before failing
    /// with `TimedOut`; `None` waits forever. Kept across [`Client::reconnect`] only as the
    /// default.
    pub fn set_reply_timeout(&mut self, t: Option<Duration>) -> Result<()> {
        self.sock.set_read_timeout(t)?;
        self.sock.set_write_timeout(t)?;
        self.timeout = t;
        Ok(())
    }

    /// The socket path this client connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The negotiated `max_data_xfer_size`.
    pub fn max_xfer(&self) -> u32 {
        self.max_xfer
    }

    /// The server's capabilities object.
    pub fn server_caps(&self) -> &serde_json::Value {
        &self.server_caps
    }

    /// The socket (for moving migration data between two servers without reading it).
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    fn take_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Sends one command whose payload is `parts`, in one `sendmsg`.
    fn send(&mut self, command: u16, flags: u32, parts: &[&[u8]]) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let h = Header {
            msg_id: self.take_id(),
            command,
            size: (HEADER_LEN + len) as u32,
            flags,
            error: 0,
        };
        let hb = h.encode();
        let mut iov: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        iov.push(&hb);
        iov.extend_from_slice(parts);
        sock::send_all(&self.sock, &iov, &[])?;
        Ok(())
    }

    /// Sends any message and returns the reply (for tools and tests): no checks on the reply
    /// beyond framing.
    pub fn raw(&mut self, command: u16, flags: u32, payload: &[u8]) -> Result<ReplyMsg> {
        self.send(command, flags, &[payload])?;
        self.recv()
    }

    /// Sends raw bytes (possibly malformed framing) as they are.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        sock::send_all(&self.sock, &[bytes], &[])?;
        Ok(())
    }

    /// Receives one message's header.
    fn recv_header(&mut self, fds: &mut Vec<OwnedFd>) -> Result<Header> {
        let mut hb = [0u8; HEADER_LEN];
        let got = sock::recv_exact(&self.sock, &mut hb, fds).map_err(|e| self.timed_out(e))?;
        if got == 0 {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            )));
        }
        Ok(Header::decode(&hb))
    }

    /// Names a timeout for what it is.
    fn timed_out(&self, e: io::Error) -> io::Error {
        match (e.kind(), self.timeout) {
            (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, Some(t)) => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} did not answer within {} s",
                    self.path.display(),
                    t.as_secs_f64()
                ),
            ),
            _ => e,
        }
    }

    /// Receives one reply.
    pub fn recv(&mut self) -> Result<ReplyMsg> {
        let mut fds = Vec::new();
        let header = self.recv_header(&mut fds)?;
        let limit = msg::max_message_size(self.max_xfer.max(msg::DEFAULT_MAX_DATA_XFER));
        let len = header
            .check_size(limit)
            .map_err(|e| proto(&format!("reply size {}: {e}", header.size)))?;
        let mut payload = vec![0u8; len];
        sock::recv_rest(&self.sock, &mut payload, &mut fds)?;
        Ok(ReplyMsg {
            header,
            payload,
            fds,
        })
    }

    /// Checks that `h` answers `command`; an error reply becomes `Remote`.
    fn check_reply(h: &Header, command: u16) -> Result<()> {
        if h.command != command || h.kind() != msg::TYPE_REPLY {
            return Err(proto(&format!(
                "expected the reply to {}, got {} (type {})",
                msg::command_name(command),
                msg::command_name(h.command),
                h.kind()
            )));
        }
        if let Some(errno) = h.errno() {
            return Err(ClientError::Remote {
                command: msg::command_name(command),
                errno,
            });
        }
        Ok(())
    }

    /// One request and its reply.
    fn call(&mut self, command: u16, parts: &[&[u8]]) -> Result<ReplyMsg> {
        self.send(command, msg::TYPE_COMMAND, parts)?;
        let r = self.recv()?;
        Self::check_reply(&r.header, command)?;
        Ok(r)
    }

    /// DEVICE_GET_INFO.
    pub fn device_info(&mut self) -> Result<DeviceInfo> {
        let req = DeviceInfoMsg {
            argsz: DeviceInfoMsg::LEN as u32,
            ..Default::default()
        };
        let r = self.call(cmd::DEVICE_GET_INFO, &[&req.to_vec()])?;
        let i = DeviceInfoMsg::parse(&r.payload)?;
        Ok(DeviceInfo {
            flags: i.flags,
            num_regions: i.num_regions,
            num_irqs: i.num_irqs,
        })
    }

    /// DEVICE_GET_REGION_INFO, with the region's fd and mmap offset if it is mappable. Asks
    /// with the fixed size first and again with the size the server says it needs (for its
    /// capabilities), as with the kernel's ioctl.
    pub fn region_info(&mut self, index: u32) -> Result<(RegionInfo, Option<OwnedFd>, u64)> {
        let mut argsz = RegionInfoMsg::LEN as u32;
        let (i, mut r) = loop {
            let req = RegionInfoMsg {
                argsz,
                index,
                ..Default::default()
            };
            let r = self.call(cmd::DEVICE_GET_REGION_INFO, &[&req.to_vec()])?;
            let i = RegionInfoMsg::parse(&r.payload)?;
            if i.argsz <= argsz || argsz != RegionInfoMsg::LEN as u32 || i.argsz > 4096 {
                break (i, r);
            }
            argsz = i.argsz;
        };
        let info = RegionInfo {
            index: i.index,
            flags: i.flags,
            size: i.size,
        };
        Ok((info, r.fds.pop(), i.offset))
    }

    /// DEVICE_GET_IRQ_INFO.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfo> {
        let req = IrqInfoMsg {
            argsz: IrqInfoMsg::LEN as u32,
            index,
            ..Default::default()
        };
        let r = self.call(cmd::DEVICE_GET_IRQ_INFO, &[&req.to_vec()])?;
        let i = IrqInfoMsg::parse(&r.payload)?;
        Ok(IrqInfo {
            index,
            flags: i.flags,
            count: i.count,
        })
    }

    /// REGION_READ, split into `max_xfer` pieces.
    pub fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let step = self.max_xfer as usize;
        for (k, chunk) in buf.chunks_mut(step).enumerate() {
            let req = RegionAccess {
                offset: offset + (k * step) as u64,
                region: index,
                count: chunk.len() as u32,
            };
            let r = self.call(cmd::REGION_READ, &[&req.to_vec()])?;
            let (_, data) = RegionAccess::parse_with_data(&r.payload, self.max_xfer)?;
            if data.len() != chunk.len() {
                return Err(proto("REGION_READ returned a different count"));
            }
            chunk.copy_from_slice(data);
        }
        Ok(())
    }

    /// REGION_WRITE, split into `max_xfer` pieces.
    pub fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let step = self.max_xfer as usize;
        for (k, chunk) in data.chunks(step).enumerate() {
            let req = RegionAccess {
                offset: offset + (k * step) as u64,
                region: index,
                count: chunk.len() as u32,
            };
            self.call(cmd::REGION_WRITE, &[&req.to_vec(), chunk])?;
        }
        Ok(())
    }

    /// Reads a 32-bit register of a region.
    pub fn read32(&mut self, index: u32, offset: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.region_read(index, offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes a 32-bit register of a region.
    pub fn write32(&mut self, index: u32, offset: u64, v: u32) -> Result<()> {
        self.region_write(index, offset, &v.to_le_bytes())
    }

    /// DEVICE_RESET.
    pub fn reset(&mut self) -> Result<()> {
        self.call(cmd::DEVICE_RESET, &[]).map(|_| ())
    }

    /// DMA_MAP without an fd (tracked by the server).
    pub fn dma_map(&mut self, address: u64, size: u64, flags: u32) -> Result<()> {
        let req = msg::DmaMap {
            argsz: msg::DmaMap::LEN as u32,
            flags,
            offset: 0,
            address,
            size,
        };
        self.call(cmd::DMA_MAP, &[&req.to_vec()]).map(|_| ())
    }

    /// DMA_UNMAP.
    pub fn dma_unmap(&mut self, address: u64, size: u64) -> Result<()> {
        let req = msg::DmaUnmap {
            argsz: msg::DmaUnmap::LEN as u32,
            flags: 0,
            address,
            size,
        };
        self.call(cmd::DMA_UNMAP, &[&req.to_vec()]).map(|_| ())
    }

    /// DEVICE_FEATURE GET of `index`: its 8 bytes of data.
    fn feature_get(&mut self, index: u32) -> Result<[u8; 8]> {
        let req = Feature {
            argsz: (Feature::LEN + 8) as u32,
            flags: index | feature::GET,
        };
        let r = self.call(cmd::DEVICE_FEATURE, &[&req.to_vec()])?;
        Feature::parse(&r.payload)?;
        r.payload
            .get(Feature::LEN..Feature::LEN + 8)
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| proto("DEVICE_FEATURE reply without its 8 bytes of data"))
    }

    /// VFIO_DEVICE_FEATURE_MIGRATION: the device's migration flags.
    pub fn migration_flags(&mut self) -> Result<MigrationFlags> {
        let raw = u64::from_ne_bytes(self.feature_get(feature::MIGRATION)?);
        MigrationFlags::try_from(raw).map_err(|_| proto(&format!("bad migration flags {raw:#x}")))
    }

    /// MIG_DEVICE_STATE GET.
    pub fn device_state(&mut self) -> Result<DeviceState> {
        let d = self.feature_get(feature::MIG_DEVICE_STATE)?;
        let raw = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]);
        DeviceState::try_from(raw).map_err(|_| proto(&format!("bad device state {raw}")))
    }

    /// MIG_DEVICE_STATE SET.
    pub fn set_device_state(&mut self, s: DeviceState) -> Result<()> {
        let req = Feature {
            argsz: (Feature::LEN + 8) as u32,
            flags: feature::MIG_DEVICE_STATE | feature::SET,
        };
        let mut data = [0u8; 8];
        data[..4].copy_from_slice(&(s as u32).to_ne_bytes());
        data[4..].copy_from_slice(&u32::MAX.to_ne_bytes());
        self.call(cmd::DEVICE_FEATURE, &[&req.to_vec(), &data])
            .map(|_| ())
    }

    /// MIG_DATA_SIZE (ours): the estimated stop-copy length.
    pub fn mig_data_size(&mut self) -> Result<u64> {
        Ok(u64::from_ne_bytes(
            self.feature_get(feature::MIG_DATA_SIZE)?,
        ))
    }

    /// MIG_PRECOPY_INFO (command 19): `(flags, initial_bytes, dirty_bytes)` of a device in
    /// PRE_COPY or PRE_COPY_P2P. `flags` is sent as the caller's; without the v2 opt-in the
    /// server echoes it, as the kernel does.
    pub fn precopy_info(&mut self, flags: u32) -> Result<(u32, u64, u64)> {
        let req = PrecopyInfoRequest {
            argsz: PrecopyInfo::LEN as u32,
            flags,
        };
        let r = self.call(cmd::MIG_PRECOPY_INFO, &[&req.to_vec()])?;
        let i = PrecopyInfo::parse(&r.payload)?;
        Ok((i.flags, i.initial_bytes, i.dirty_bytes))
    }

    /// DEVICE_FEATURE SET MIG_PRECOPY_INFOv2: opt in to MIG_PRECOPY_INFO's flags as an output.
    pub fn set_precopy_info_v2(&mut self) -> Result<()> {
        let req = Feature {
            argsz: Feature::LEN as u32,
            flags: feature::MIG_PRECOPY_INFO_V2 | feature::SET,
        };
        self.call(cmd::DEVICE_FEATURE, &[&req.to_vec()]).map(|_| ())
    }

    /// One MIG_DATA_READ of up to `buf.len()` (≤ max_xfer) bytes, straight into `buf`.
    /// A result shorter than asked means the end of the stream.
    pub fn mig_data_read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let want = buf.len().min(self.max_xfer as usize);
        self.send_mig_data_read(want)?;
        let head = self.recv_mig_data_read_head(want)?;
        // The data straight into the caller's buffer (no intermediate copy), then any padding.
        let mut fds = Vec::new();
        sock::recv_rest(&self.sock, &mut buf[..head.data], &mut fds)?;
        self.discard(head.padding)?;
        Ok(head.data)
    }

    /// MIG_DATA_WRITE of all of `data`, split into `max_xfer` pieces, each one message sent
    /// with one `sendmsg`.
    pub fn mig_data_write(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(self.max_xfer as usize) {
            let fixed = mig_write_fixed(chunk.len());
            self.send(cmd::MIG_DATA_WRITE, msg::TYPE_COMMAND, &[&fixed, chunk])?;
            self.recv_mig_data_write_reply()?;
        }
        Ok(())
    }

    /// Sends a MIG_DATA_READ request for `want` bytes; the reply is taken later with
    /// [`Client::recv_mig_data_read_head`] (requests may be kept in flight).
    pub fn send_mig_data_read(&mut self, want: usize) -> Result<()> {
        let req = MigData {
            argsz: (MigData::LEN + want) as u32,
            size: want as u32,
        };
        self.send(cmd::MIG_DATA_READ, msg::TYPE_COMMAND, &[&req.to_vec()])
    }

    /// Receives a MIG_DATA_READ reply up to its data: how many data bytes follow on the
    /// socket (≤ `want`), and how many bytes of padding follow them.
    pub fn recv_mig_data_read_head(&mut self, want: usize) -> Result<MigReadHead> {
        let mut fds = Vec::new();
        let h = self.recv_header(&mut fds)?;
        Self::check_reply(&h, cmd::MIG_DATA_READ)?;
        let len = (h.size as usize).saturating_sub(HEADER_LEN);
        if len < MigData::LEN || len > MigData::LEN + want {
            return Err(proto(&format!(
                "MIG_DATA_READ reply of {} bytes for {want} asked",
                h.size
            )));
        }
        let mut fixed = [0u8; MigData::LEN];
        sock::recv_rest(&self.sock, &mut fixed, &mut fds)?;
        let m = MigData::parse(&fixed)?;
        let room = len - MigData::LEN;
        if m.size as usize > room {
            return Err(proto(&format!(
                "MIG_DATA_READ reply says {} bytes but carries {room}",
                m.size
            )));
        }
        Ok(MigReadHead {
            data: m.size as usize,
            padding: room - m.size as usize,
        })
    }

    /// The header and fixed part of a MIG_DATA_WRITE of `n` bytes (taking the next message
    /// id), for a relay that sends them itself, followed by exactly `n` bytes of data.
    pub fn mig_data_write_head(&mut self, n: usize) -> [u8; HEADER_LEN + MigData::LEN] {
        let h = Header {
            msg_id: self.take_id(),
            command: cmd::MIG_DATA_WRITE,
            size: (HEADER_LEN + MigData::LEN + n) as u32,
            flags: msg::TYPE_COMMAND,
            error: 0,
        };
        let mut b = [0u8; HEADER_LEN + MigData::LEN];
        b[..HEADER_LEN].copy_from_slice(&h.encode());
        b[HEADER_LEN..].copy_from_slice(&mig_write_fixed(n));
        b
    }

    /// Receives a MIG_DATA_WRITE reply; its errno as an error.
    pub fn recv_mig_data_write_reply(&mut self) -> Result<()> {
        let r = self.recv()?;
        Self::check_reply(&r.header, cmd::MIG_DATA_WRITE)
    }

    /// Reads and drops `n` bytes of the current message.
    pub fn discard(&mut self, n: usize) -> Result<()> {
        Ok(sock::discard(&self.sock, n)?)
    }
}

/// The fixed part of a MIG_DATA_WRITE of `n` bytes: `argsz` is the whole structure with its
/// data, as for every vfio-user request with data (and as libvfio-user requires).
fn mig_write_fixed(n: usize) -> [u8; MigData::LEN] {
    let mut b = [0u8; MigData::LEN];
    let m = MigData {
        argsz: (MigData::LEN + n) as u32,
        size: n as u32,
    };
    b.copy_from_slice(&m.to_vec());
    b
}

fn proto(s: &str) -> ClientError {
    ClientError::Protocol(s.to_string())
}
