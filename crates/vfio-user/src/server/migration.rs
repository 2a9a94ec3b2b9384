//! DEVICE_FEATURE (MIGRATION, MIG_DEVICE_STATE, MIG_DATA_SIZE) and the migration data.
//!
//! The migration stream is the device's: it is looked up in the device's `MigrationCore` for
//! each request, never cached here. Its bytes move between the socket and the device through
//! `DataSink`/`DataSource` adapters over the socket — no buffer of the server's in between.

use super::conn::{Conn, Handled, Reply};
use crate::msg::{
    feature, Feature, Fields, Header, MigData, PrecopyInfo, PrecopyInfoRequest, HEADER_LEN,
};
use crate::sock;
use rustix::fd::BorrowedFd;
use std::io;
use std::os::unix::net::UnixStream;
use vfio_core::{
    DataSink, DataSource, DeviceState, Errno, MigStream, MigrationCore, MigrationFlags,
    ResumeStream, SaveStream,
};

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
}

impl DataSink for SocketSink<'_> {
    fn begin(&mut self, n: usize) -> Result<(), Errno> {
        self.began = true;
        self.pending.clear();
        self.pending
            .extend_from_slice(&self.h.reply(MigData::LEN + n).encode());
        let fixed = MigData {
            argsz: (MigData::LEN + n) as u32,
            size: n as u32,
        };
        fixed.emit(self.pending);
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), Errno> {
        if bytes.len() < GATHER {
            self.pending.extend_from_slice(bytes);
            return Ok(());
        }
        self.send_pending(bytes)
    }

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
}

/// The data of a MIG_DATA_WRITE, read from the socket as the device asks for it.
struct SocketSource<'s> {
    stream: &'s UnixStream,
    /// Bytes of the message not read yet.
    left: usize,
    err: Option<io::Error>,
}

impl DataSource for SocketSource<'_> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), Errno> {
        if buf.len() > self.left {
            // The device asked past this message: a driver bug, not the client's.
            return Err(Errno::EINVAL);
        }
        match sock::recv_rest(self.stream, buf, &mut Vec::new()) {
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

/// The open save stream, if the device is in a saving state.
fn save_stream(core: &MigrationCore) -> Result<SaveStream, Errno> {
    if !core.state().is_saving() {
        return Err(Errno::EINVAL);
    }
    core.current_stream()
        .and_then(MigStream::into_save)
        .ok_or(Errno::EINVAL)
}

/// The open resume stream, if the device is RESUMING.
fn resume_stream(core: &MigrationCore) -> Result<ResumeStream, Errno> {
    if core.state() != DeviceState::Resuming {
        return Err(Errno::EINVAL);
    }
    core.current_stream()
        .and_then(MigStream::into_resume)
        .ok_or(Errno::EINVAL)
}

impl Conn<'_> {
    /// Reads the fixed part of a MIG_DATA_* request (`len` payload bytes on the socket); `Err`
    /// when it is short, with the payload consumed.
    fn mig_fixed(&mut self, len: usize) -> io::Result<Result<MigData, Errno>> {
        if len < MigData::LEN {
            self.discard(len)?;
            return Ok(Err(Errno::EINVAL));
        }
        let mut b = [0u8; MigData::LEN];
        sock::recv_rest(&self.stream, &mut b, &mut Vec::new())?;
        Ok(MigData::parse(&b).map_err(|e| e.errno()))
    }

    /// MIG_DATA_READ: the device writes the reply — header, count, bytes — into the socket. A
    /// device failure before the first byte is an error reply; after it, the reply cannot be
    /// finished and the connection ends.
    pub(super) fn mig_data_read(&mut self, h: &Header, len: usize) -> io::Result<Handled> {
        let req = match self.mig_fixed(len)? {
            Ok(m) => m,
            Err(e) => return Ok(Handled::Reply(Err(e))),
        };
        // Bytes past the fixed part carry nothing for a read.
        self.discard(len - MigData::LEN)?;
        let stream = self.mig_read_checks(h, &req);
        let stream = match stream {
            Ok(s) => s,
            Err(e) => return Ok(Handled::Reply(Err(e))),
        };
        self.out.clear();
        let mut sink = SocketSink {
            stream: &self.stream,
            h,
            pending: &mut self.out,
            began: false,
            err: None,
        };
        match stream.read_to(req.size as usize, &mut sink) {
            Ok(_) => {
                if !sink.pending.is_empty() {
                    sink.send_pending(&[]).map_err(|_| {
                        sink.err
                            .take()
                            .unwrap_or_else(|| io::Error::other("send failed"))
                    })?;
                }
                Ok(Handled::Sent)
            }
            Err(e) if !sink.began => Ok(Handled::Reply(Err(e))),
            Err(e) => Err(sink.err.take().unwrap_or_else(|| {
                io::Error::other(format!("the device failed in the middle of a reply: {e}"))
            })),
        }
    }

    fn mig_read_checks(&self, h: &Header, req: &MigData) -> Result<SaveStream, Errno> {
        if req.size > self.max_xfer {
            return Err(Errno::EMSGSIZE);
        }
        let core = self.dev.migration().ok_or(Errno::ENOTTY)?;
        if h.no_reply() || (req.argsz as usize) < MigData::LEN + req.size as usize {
            return Err(Errno::EINVAL);
        }
        save_stream(core)
    }

    /// MIG_DATA_WRITE: the device reads the data straight from the socket. Bytes it leaves
    /// unread (it failed part-way) are read and dropped, so the next message is found.
    pub(super) fn mig_data_write(&mut self, len: usize) -> io::Result<Handled> {
        let req = match self.mig_fixed(len)? {
            Ok(m) => m,
            Err(e) => return Ok(Handled::Reply(Err(e))),
        };
        let size = len - MigData::LEN;
        let checked = if req.size > self.max_xfer {
            Err(Errno::EMSGSIZE)
        } else if req.size as usize != size {
            Err(Errno::EINVAL)
        } else {
            self.dev
                .migration()
                .ok_or(Errno::ENOTTY)
                .and_then(resume_stream)
        };
        let stream = match checked {
            Ok(s) => s,
            Err(e) => {
                self.discard(size)?;
                return Ok(Handled::Reply(Err(e)));
            }
        };
        let mut src = SocketSource {
            stream: &self.stream,
            left: size,
            err: None,
        };
        let r = stream.write_from(size, &mut src);
        if let Some(e) = src.err.take() {
            return Err(e);
        }
        let left = src.left;
        self.discard(left)?;
        self.out.clear();
        self.out.extend_from_slice(&[0u8; HEADER_LEN]);
        Ok(Handled::Reply(r.map(|()| None)))
    }

    /// MIG_PRECOPY_INFO (libvfio-user's extension, command 19): the kernel's
    /// `VFIO_MIG_GET_PRECOPY_INFO`. A device without PRE_COPY does not know the command
    /// (`EOPNOTSUPP`, as for any unknown command); outside PRE_COPY* it is `EINVAL`.
    pub(super) fn precopy_info(&mut self, req: PrecopyInfoRequest) -> Reply {
        let core = self.dev.migration().ok_or(Errno::EOPNOTSUPP)?;
        if !core.flags().contains(MigrationFlags::PRE_COPY) {
            return Err(Errno::EOPNOTSUPP);
        }
        if (req.argsz as usize) < PrecopyInfo::LEN {
            return Err(Errno::EINVAL);
        }
        let info = core.precopy_info(req.flags)?;
        PrecopyInfo {
            argsz: PrecopyInfo::LEN as u32,
            flags: info.flags,
            initial_bytes: info.initial_bytes,
            dirty_bytes: info.dirty_bytes,
        }
        .emit(&mut self.out);
        Ok(None)
    }

    /// DEVICE_FEATURE: MIGRATION, MIG_DEVICE_STATE, MIG_DATA_SIZE (ours), MIG_PRECOPY_INFOv2.
    pub(super) fn feature(&mut self, req: Feature, data: &[u8]) -> Reply {
        let index = req.flags & feature::MASK;
        let (get, set, probe) = (
            req.flags & feature::GET != 0,
            req.flags & feature::SET != 0,
            req.flags & feature::PROBE != 0,
        );
        if get && set && !probe {
            return Err(Errno::EINVAL);
        }
        let core = self.dev.migration().ok_or(Errno::ENOTTY)?;
        // (supports GET, supports SET)
        let (can_get, can_set) = match index {
            feature::MIGRATION | feature::MIG_DATA_SIZE => (true, false),
            feature::MIG_DEVICE_STATE => (true, true),
            feature::MIG_PRECOPY_INFO_V2 if core.flags().contains(MigrationFlags::PRE_COPY) => {
                (false, true)
            }
            _ => return Err(Errno::ENOTTY),
        };
        if (get && !can_get) || (set && !can_set) || (!get && !set) {
            return Err(Errno::EINVAL);
        }
        if probe {
            req.emit(&mut self.out);
            return Ok(None);
        }
        if get {
            // Every GET answers 8 bytes of data.
            if (req.argsz as usize) < Feature::LEN + 8 {
                return Err(Errno::EINVAL);
            }
            let mut value = [0u8; 8];
            match index {
                feature::MIGRATION => value = core.flags().bits().to_ne_bytes(),
                feature::MIG_DEVICE_STATE => {
                    // `struct vfio_device_feature_mig_state`: device_state, data_fd (none).
                    value[..4].copy_from_slice(&(core.state() as u32).to_ne_bytes());
                    value[4..].copy_from_slice(&u32::MAX.to_ne_bytes());
                }
                _ => value = core.data_size()?.to_ne_bytes(),
            }
            Feature {
                argsz: (Feature::LEN + 8) as u32,
                flags: req.flags,
            }
            .emit(&mut self.out);
            self.put(&value);
            return Ok(None);
        }
        if index == feature::MIG_PRECOPY_INFO_V2 {
            // An opt-in: no data, any supplied is ignored.
            core.set_precopy_info_v2()?;
            req.emit(&mut self.out);
            return Ok(None);
        }
        // SET MIG_DEVICE_STATE: the data fd of the kernel's uAPI has no meaning here.
        let raw = Fields(data).need(4)?.u32(0)?;
        core.set_state(DeviceState::try_from(raw)?)?;
        req.emit(&mut self.out);
        self.put(data);
        Ok(None)
    }
}
