//! Migration data streams: what `MIG_DEVICE_STATE` hands out when a session starts.
//!
//! A [`SaveStream`] is read sequentially, a [`ResumeStream`] written sequentially. Each has its
//! own lock (serialising concurrent readers or writers, like the kernel's `migf->lock`) and a
//! `disabled` flag: once the session ends (the device leaves STOP_COPY/RESUMING, is closed or
//! reset), every later access fails with `ENODEV` and the driver's data source is dropped.
//! Positioned access is refused with `ESPIPE`, like a read at an offset on the kernel's fd.
//!
//! Besides `read`/`write` through a caller's buffer, a driver may move bytes straight between
//! its device memory and a transport: [`SaveData::read_to`] hands slices to a [`DataSink`],
//! [`ResumeData::write_from`] fills its memory from a [`DataSource`]. A vfio-user server uses
//! them to send and receive migration data without a copy through its own buffers; drivers
//! that do not implement them keep the buffered path.

use crate::sync::{lock, Arc, Mutex};
use crate::Errno;
use std::os::fd::BorrowedFd;

/// Takes save-stream bytes as a driver produces them (a transport, usually a socket).
pub trait DataSink {
    /// Called once, before any `put`: exactly `n` bytes follow.
    fn begin(&mut self, n: usize) -> Result<(), Errno>;
    /// Takes the next bytes. A transport failure is returned as `EPIPE`; the sink keeps the
    /// details for its owner.
    fn put(&mut self, bytes: &[u8]) -> Result<(), Errno>;
    /// Takes `len` bytes of the file `fd` at `offset` (device memory the driver keeps in a
    /// file), for a transport that can pass file pages on without copying them. `Ok(false)`
    /// (the default): not supported, nothing was taken; use `put`. The pages may be read
    /// after this returns, so the driver must not change them while its stream is open —
    /// true of a stopped device's memory.
    fn put_file(&mut self, fd: BorrowedFd<'_>, offset: u64, len: usize) -> Result<bool, Errno> {
        let _ = (fd, offset, len);
        Ok(false)
    }
    /// Room for the next `len` bytes in the sink itself, for a driver that must copy anyway
    /// (the bytes then count as put). `None` (the default): use `put`.
    fn space(&mut self, len: usize) -> Option<&mut [u8]> {
        let _ = len;
        None
    }
}

/// Supplies resume-stream bytes from a transport.
pub trait DataSource {
    /// Fills all of `buf` with the next bytes. A transport failure is returned as `EPIPE`;
    /// the source keeps the details for its owner.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), Errno>;
}

/// The driver side of a save stream.
pub trait SaveData: Send {
    /// Fills `buf` with the next bytes of the stream; `Ok(0)` means the end. May block while the
    /// producer is behind.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Errno>;

    /// Like `read` of `max` bytes, but the bytes go to `sink` without a caller's buffer:
    /// `sink.begin(n)` once (`n < max` means the end), then `put`s of exactly `n` bytes in all.
    /// An error before `begin` is a plain read error; an error after it leaves the transport
    /// mid-message. `None`: not supported, use `read`.
    fn read_to(&mut self, max: usize, sink: &mut dyn DataSink) -> Option<Result<usize, Errno>> {
        let _ = (max, sink);
        None
    }

    /// `(initial_bytes, dirty_bytes)` while in PRE_COPY (`VFIO_MIG_GET_PRECOPY_INFO`).
    /// Devices without PRE_COPY keep the default (`ENOTTY`, like the kernel's ioctl).
    fn precopy_info(&mut self) -> Result<(u64, u64), Errno> {
        Err(Errno::ENOTTY)
    }
}

/// The driver side of a resume stream.
pub trait ResumeData: Send {
    /// Consumes bytes of the stream; returns how many were accepted (all of them, or an error).
    fn write(&mut self, buf: &[u8]) -> Result<usize, Errno>;

    /// Like `write` of the next `n` bytes of `source`, without a caller's buffer. On error,
    /// some of the `n` bytes may remain unread in the source. `None`: not supported (nothing
    /// was read), use `write`.
    fn write_from(&mut self, n: usize, source: &mut dyn DataSource) -> Option<Result<(), Errno>> {
        let _ = (n, source);
        None
    }
}

/// What a variant's arc returns when it opens a session.
pub enum DataStream {
    /// STOP → STOP_COPY or RUNNING → PRE_COPY.
    Save(Box<dyn SaveData>),
    /// STOP → RESUMING.
    Resume(Box<dyn ResumeData>),
}

impl std::fmt::Debug for DataStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataStream::Save(_) => f.write_str("DataStream::Save"),
            DataStream::Resume(_) => f.write_str("DataStream::Resume"),
        }
    }
}

/// The stream lock's contents: the driver's data source, `None` once disabled.
struct Slot<T: ?Sized> {
    data: Option<Box<T>>,
}

/// A handle shared by the core (which disables it) and the user (who reads or writes it).
struct Shared<T: ?Sized> {
    /// Stream lock: serialises access to the data source and the disable.
    slot: Mutex<Slot<T>>,
}

impl<T: ?Sized> Shared<T> {
    fn new(data: Box<T>) -> Arc<Self> {
        Arc::new(Shared {
            slot: Mutex::new(Slot { data: Some(data) }),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut T) -> Result<R, Errno>) -> Result<R, Errno> {
        let mut slot = lock(&self.slot);
        match slot.data.as_deref_mut() {
            Some(d) => f(d),
            None => Err(Errno::ENODEV),
        }
    }

    fn disable(&self) {
        // Take the data out under the lock (waiting for an access in progress), drop it after.
        let data = lock(&self.slot).data.take();
        drop(data);
    }

    fn is_disabled(&self) -> bool {
        lock(&self.slot).data.is_none()
    }
}

/// A save stream handle. Cloning gives another handle on the same stream.
#[derive(Clone)]
pub struct SaveStream(Arc<Shared<dyn SaveData>>);

/// A resume stream handle. Cloning gives another handle on the same stream.
#[derive(Clone)]
pub struct ResumeStream(Arc<Shared<dyn ResumeData>>);

impl SaveStream {
    pub(crate) fn new(data: Box<dyn SaveData>) -> Self {
        SaveStream(Shared::new(data))
    }

    /// Reads the next bytes; 0 at the end of the data; `ENODEV` once the session ended.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        self.0.with(|d| d.read(buf))
    }

    /// A positioned read: always `ESPIPE` (the stream has no offsets).
    /// [`SaveData::read_to`] under the stream's lock; `Some(Err(ENODEV))` once disabled.
    pub fn read_to(&self, max: usize, sink: &mut dyn DataSink) -> Option<Result<usize, Errno>> {
        match self.0.with(|d| Ok(d.read_to(max, sink))) {
            Ok(r) => r,
            Err(e) => Some(Err(e)),
        }
    }

    pub fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> Result<usize, Errno> {
        Err(Errno::ESPIPE)
    }

    /// PRE_COPY sizes, see [`SaveData::precopy_info`].
    pub fn precopy_info(&self) -> Result<(u64, u64), Errno> {
        self.0.with(|d| d.precopy_info())
    }

    /// Ends the session for this handle and every clone.
    pub fn disable(&self) {
        self.0.disable()
    }

    /// Whether the session has ended.
    pub fn is_disabled(&self) -> bool {
        self.0.is_disabled()
    }
}

impl ResumeStream {
    pub(crate) fn new(data: Box<dyn ResumeData>) -> Self {
        ResumeStream(Shared::new(data))
    }

    /// Writes bytes; `ENODEV` once the session ended.
    pub fn write(&self, buf: &[u8]) -> Result<usize, Errno> {
        self.0.with(|d| d.write(buf))
    }

    /// Writes every byte of `buf`, or fails.
    pub fn write_all(&self, mut buf: &[u8]) -> Result<(), Errno> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            if n == 0 || n > buf.len() {
                return Err(Errno::EIO);
            }
            buf = &buf[n..];
        }
        Ok(())
    }

    /// A positioned write: always `ESPIPE`.
    /// [`ResumeData::write_from`] under the stream's lock; `Some(Err(ENODEV))` once disabled.
    pub fn write_from(&self, n: usize, source: &mut dyn DataSource) -> Option<Result<(), Errno>> {
        match self.0.with(|d| Ok(d.write_from(n, source))) {
            Ok(r) => r,
            Err(e) => Some(Err(e)),
        }
    }

    pub fn write_at(&self, _offset: u64, _buf: &[u8]) -> Result<usize, Errno> {
        Err(Errno::ESPIPE)
    }

    /// Ends the session for this handle and every clone.
    pub fn disable(&self) {
        self.0.disable()
    }

    /// Whether the session has ended.
    pub fn is_disabled(&self) -> bool {
        self.0.is_disabled()
    }
}

/// A stream returned to the user by a state change.
#[derive(Clone)]
pub enum MigStream {
    Save(SaveStream),
    Resume(ResumeStream),
}

impl MigStream {
    pub(crate) fn disable(&self) {
        match self {
            MigStream::Save(s) => s.disable(),
            MigStream::Resume(s) => s.disable(),
        }
    }

    /// The save stream, if this is one.
    pub fn into_save(self) -> Option<SaveStream> {
        match self {
            MigStream::Save(s) => Some(s),
            MigStream::Resume(_) => None,
        }
    }

    /// The resume stream, if this is one.
    pub fn into_resume(self) -> Option<ResumeStream> {
        match self {
            MigStream::Resume(s) => Some(s),
            MigStream::Save(_) => None,
        }
    }
}

impl std::fmt::Debug for MigStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigStream::Save(_) => f.write_str("MigStream::Save"),
            MigStream::Resume(_) => f.write_str("MigStream::Resume"),
        }
    }
}
