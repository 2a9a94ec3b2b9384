//! A vfio-user client: what the CLI and the tests use to drive a server.

use crate::msg::{self, cmd, feature, Fields, Header, Payload, HEADER_LEN};
use crate::sock;
use rustix::fd::OwnedFd;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
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
    /// The errno behind the error (`EIO` for socket and protocol errors).
    pub fn errno(&self) -> Errno {
        match self {
            ClientError::Remote { errno, .. } => *errno,
            ClientError::Io(e) => Errno::from_io(e),
            ClientError::Protocol(_) => Errno::EPROTO,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A connected, version-negotiated client.
pub struct Client {
    sock: UnixStream,
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
            next_id: 0,
            max_xfer: msg::DEFAULT_MAX_DATA_XFER,
            server_caps: serde_json::Value::Null,
        };
        let caps = serde_json::json!({"capabilities": {
            "max_msg_fds": sock::MAX_FDS,
            "max_data_xfer_size": max_xfer,
            "migration": {"pgsize": 4096},
        }});
        let p = Payload::new()
            .u16(msg::VERSION_MAJOR)
            .u16(msg::VERSION_MINOR)
            .bytes(caps.to_string().as_bytes())
            .bytes(&[0]);
        let r = match c.call(cmd::VERSION, &p.0) {
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
        c.sock.set_read_timeout(None)?;
        let f = Fields(&r.payload)
            .need(4)
            .map_err(|_| proto("short VERSION reply"))?;
        if f.u16(0).unwrap_or(u16::MAX) != msg::VERSION_MAJOR {
            return Err(proto("server speaks another major version"));
        }
        let json = f.tail(4).unwrap_or(&[]);
        let json = json.split(|&b| b == 0).next().unwrap_or(&[]);
        c.server_caps =
            serde_json::from_slice(json).map_err(|e| proto(&format!("bad capabilities: {e}")))?;
        c.max_xfer = c
            .server_caps
            .pointer("/capabilities/max_data_xfer_size")
            .and_then(|v| v.as_u64())
            .map_or(msg::DEFAULT_MAX_DATA_XFER, |v| {
                v.min(u64::from(max_xfer)) as u32
            });
        Ok(c)
    }

    /// The negotiated `max_data_xfer_size`.
    pub fn max_xfer(&self) -> u32 {
        self.max_xfer
    }

    /// The server's capabilities object.
    pub fn server_caps(&self) -> &serde_json::Value {
        &self.server_caps
    }

    /// Sends any message and returns the reply (for tools and tests): no checks on the reply
    /// beyond framing.
    pub fn raw(&mut self, command: u16, flags: u32, payload: &[u8]) -> Result<ReplyMsg> {
        let h = Header {
            msg_id: self.take_id(),
            command,
            size: (HEADER_LEN + payload.len()) as u32,
            flags,
            error: 0,
        };
        sock::send_all(&self.sock, &[&h.encode(), payload], &[])?;
        self.recv()
    }

    /// Sends raw bytes (possibly malformed framing) as they are.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        sock::send_all(&self.sock, &[bytes], &[])?;
        Ok(())
    }

    /// Receives one reply.
    pub fn recv(&mut self) -> Result<ReplyMsg> {
        let mut hb = [0u8; HEADER_LEN];
        let mut fds = Vec::new();
        if sock::recv_exact(&self.sock, &mut hb, &mut fds)? == 0 {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            )));
        }
        let header = Header::decode(&hb);
        let len = header
            .check_size(msg::max_message_size(
                self.max_xfer.max(msg::DEFAULT_MAX_DATA_XFER),
            ))
            .map_err(|e| proto(&format!("reply size {}: {e}", header.size)))?;
        let mut payload = vec![0u8; len];
        if len > 0 && sock::recv_exact(&self.sock, &mut payload, &mut fds)? == 0 {
            return Err(proto("truncated reply"));
        }
        Ok(ReplyMsg {
            header,
            payload,
            fds,
        })
    }

    fn call(&mut self, command: u16, payload: &[u8]) -> Result<ReplyMsg> {
        let r = self.raw(command, msg::TYPE_COMMAND, payload)?;
        if r.header.command != command || r.header.kind() != msg::TYPE_REPLY {
            return Err(proto("reply does not match the command"));
        }
        if let Some(errno) = r.header.errno() {
            return Err(ClientError::Remote {
                command: msg::command_name(command),
                errno,
            });
        }
        Ok(r)
    }

    /// DEVICE_GET_INFO.
    pub fn device_info(&mut self) -> Result<DeviceInfo> {
        let r = self.call(
            cmd::DEVICE_GET_INFO,
            &Payload::new().u32(16).u32(0).u32(0).u32(0).0,
        )?;
        let f = Fields(&r.payload)
            .need(16)
            .map_err(|_| proto("short GET_INFO reply"))?;
        Ok(DeviceInfo {
            flags: f.u32(4).unwrap_or(0),
            num_regions: f.u32(8).unwrap_or(0),
            num_irqs: f.u32(12).unwrap_or(0),
        })
    }

    /// DEVICE_GET_REGION_INFO, with the region's fd if it is mappable.
    pub fn region_info(&mut self, index: u32) -> Result<(RegionInfo, Option<OwnedFd>, u64)> {
        let p = Payload::new()
            .u32(32)
            .u32(0)
            .u32(index)
            .u32(0)
            .u64(0)
            .u64(0);
        let mut r = self.call(cmd::DEVICE_GET_REGION_INFO, &p.0)?;
        let f = Fields(&r.payload)
            .need(32)
            .map_err(|_| proto("short REGION_INFO reply"))?;
        let info = RegionInfo {
            index: f.u32(8).unwrap_or(index),
            flags: f.u32(4).unwrap_or(0),
            size: f.u64(16).unwrap_or(0),
        };
        Ok((info, r.fds.pop(), f.u64(24).unwrap_or(0)))
    }

    /// DEVICE_GET_IRQ_INFO.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfo> {
        let r = self.call(
            cmd::DEVICE_GET_IRQ_INFO,
            &Payload::new().u32(16).u32(0).u32(index).u32(0).0,
        )?;
        let f = Fields(&r.payload)
            .need(16)
            .map_err(|_| proto("short IRQ_INFO reply"))?;
        Ok(IrqInfo {
            index,
            flags: f.u32(4).unwrap_or(0),
            count: f.u32(12).unwrap_or(0),
        })
    }

    /// REGION_READ, split into `max_xfer` pieces.
    pub fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let step = self.max_xfer as usize;
        for (k, chunk) in buf.chunks_mut(step).enumerate() {
            let at = offset + (k * step) as u64;
            let p = Payload::new().u64(at).u32(index).u32(chunk.len() as u32);
            let r = self.call(cmd::REGION_READ, &p.0)?;
            let data = r.payload.get(16..).unwrap_or(&[]);
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
            let at = offset + (k * step) as u64;
            let p = Payload::new()
                .u64(at)
                .u32(index)
                .u32(chunk.len() as u32)
                .bytes(chunk);
            self.call(cmd::REGION_WRITE, &p.0)?;
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
        let p = Payload::new()
            .u32(32)
            .u32(flags)
            .u64(0)
            .u64(address)
            .u64(size);
        self.call(cmd::DMA_MAP, &p.0).map(|_| ())
    }

    /// DMA_UNMAP.
    pub fn dma_unmap(&mut self, address: u64, size: u64) -> Result<()> {
        let p = Payload::new().u32(24).u32(0).u64(address).u64(size);
        self.call(cmd::DMA_UNMAP, &p.0).map(|_| ())
    }

    fn feature_get(&mut self, index: u32, len: usize) -> Result<Vec<u8>> {
        let p = Payload::new().u32(8 + len as u32).u32(index | feature::GET);
        let r = self.call(cmd::DEVICE_FEATURE, &p.0)?;
        r.payload
            .get(8..8 + len)
            .map(|d| d.to_vec())
            .ok_or_else(|| proto("short DEVICE_FEATURE reply"))
    }

    /// VFIO_DEVICE_FEATURE_MIGRATION: the device's migration flags.
    pub fn migration_flags(&mut self) -> Result<MigrationFlags> {
        let d = self.feature_get(feature::MIGRATION, 8)?;
        let raw = Fields(&d).u64(0).unwrap_or(0);
        MigrationFlags::try_from(raw).map_err(|_| proto("bad migration flags"))
    }

    /// MIG_DEVICE_STATE GET.
    pub fn device_state(&mut self) -> Result<DeviceState> {
        let d = self.feature_get(feature::MIG_DEVICE_STATE, 8)?;
        DeviceState::try_from(Fields(&d).u32(0).unwrap_or(u32::MAX))
            .map_err(|_| proto("bad device state"))
    }

    /// MIG_DEVICE_STATE SET.
    pub fn set_device_state(&mut self, s: DeviceState) -> Result<()> {
        let p = Payload::new()
            .u32(16)
            .u32(feature::MIG_DEVICE_STATE | feature::SET)
            .u32(s as u32)
            .u32(u32::MAX);
        self.call(cmd::DEVICE_FEATURE, &p.0).map(|_| ())
    }

    /// MIG_DATA_SIZE (ours): the estimated stop-copy length.
    pub fn mig_data_size(&mut self) -> Result<u64> {
        let d = self.feature_get(feature::MIG_DATA_SIZE, 8)?;
        Ok(Fields(&d).u64(0).unwrap_or(0))
    }

    /// One MIG_DATA_READ of up to `buf.len()` (≤ max_xfer) bytes, straight into `buf`.
    /// A result shorter than asked means the end of the stream.
    pub fn mig_data_read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let want = buf.len().min(self.max_xfer as usize);
        self.send_mig_read(want)?;
        let n = self.recv_mig_read_header(want)?;
        // Read the data straight into the caller's buffer (no intermediate copy).
        let mut fds = Vec::new();
        if n > 0 && sock::recv_exact(&self.sock, &mut buf[..n], &mut fds)? == 0 {
            return Err(proto("truncated MIG_DATA_READ reply"));
        }
        Ok(n)
    }

    /// Sends a MIG_DATA_READ request for `want` bytes.
    pub(crate) fn send_mig_read(&mut self, want: usize) -> Result<()> {
        let p = Payload::new().u32(8 + want as u32).u32(want as u32);
        let h = Header {
            msg_id: self.take_id(),
            command: cmd::MIG_DATA_READ,
            size: (HEADER_LEN + 8) as u32,
            flags: msg::TYPE_COMMAND,
            error: 0,
        };
        sock::send_all(&self.sock, &[&h.encode(), &p.0], &[])?;
        Ok(())
    }

    /// Receives a MIG_DATA_READ reply up to its data: the number of data bytes that follow
    /// on the socket (≤ `want`).
    pub(crate) fn recv_mig_read_header(&mut self, want: usize) -> Result<usize> {
        let mut hb = [0u8; HEADER_LEN];
        let mut fds = Vec::new();
        if sock::recv_exact(&self.sock, &mut hb, &mut fds)? == 0 {
            return Err(proto("server closed the connection"));
        }
        let rh = Header::decode(&hb);
        if rh.command != cmd::MIG_DATA_READ || rh.kind() != msg::TYPE_REPLY {
            return Err(proto("reply does not match MIG_DATA_READ"));
        }
        if let Some(errno) = rh.errno() {
            // An error reply is the header alone.
            return Err(ClientError::Remote {
                command: "MIG_DATA_READ",
                errno,
            });
        }
        let len = rh.size as usize;
        if len < HEADER_LEN + 8 || len > HEADER_LEN + 8 + want {
            return Err(proto("bad MIG_DATA_READ reply size"));
        }
        let mut fixed = [0u8; 8];
        sock::recv_exact(&self.sock, &mut fixed, &mut fds)?;
        let n = u32::from_ne_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]) as usize;
        if n != len - HEADER_LEN - 8 {
            return Err(proto("MIG_DATA_READ size disagrees with the message"));
        }
        Ok(n)
    }

    /// Sends a MIG_DATA_WRITE request's header for `n` bytes of data; the data must follow.
    pub(crate) fn send_mig_write_header(&mut self, n: usize) -> Result<()> {
        let h = Header {
            msg_id: self.take_id(),
            command: cmd::MIG_DATA_WRITE,
            size: (HEADER_LEN + 8 + n) as u32,
            flags: msg::TYPE_COMMAND,
            error: 0,
        };
        let fixed = Payload::new().u32(8).u32(n as u32);
        sock::send_all(&self.sock, &[&h.encode(), &fixed.0], &[])?;
        Ok(())
    }

    /// Receives a MIG_DATA_WRITE reply; its errno as an error.
    pub(crate) fn recv_mig_write_reply(&mut self) -> Result<()> {
        let r = self.recv()?;
        if r.header.command != cmd::MIG_DATA_WRITE || r.header.kind() != msg::TYPE_REPLY {
            return Err(proto("reply does not match MIG_DATA_WRITE"));
        }
        if let Some(errno) = r.header.errno() {
            return Err(ClientError::Remote {
                command: "MIG_DATA_WRITE",
                errno,
            });
        }
        Ok(())
    }

    /// The socket, for the relay.
    pub(crate) fn socket(&self) -> &UnixStream {
        &self.sock
    }

    fn take_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// MIG_DATA_WRITE of all of `data`, split into `max_xfer` pieces.
    pub fn mig_data_write(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(self.max_xfer as usize) {
            self.send_mig_write_header(chunk.len())?;
            sock::send_all(&self.sock, &[chunk], &[])?;
            self.recv_mig_write_reply()?;
        }
        Ok(())
    }
}

fn proto(s: &str) -> ClientError {
    ClientError::Protocol(s.to_string())
}
