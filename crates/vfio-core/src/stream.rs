//! Migration data streams: what `MIG_DEVICE_STATE` hands out when a session starts.
//!
//! A [`SaveStream`] is read sequentially, a [`ResumeStream`] written sequentially. Each has its
//! own lock (serialising concurrent readers or writers, like the kernel's `migf->lock`) and a
//! `disabled` flag: once the session ends (the device leaves STOP_COPY/RESUMING, is closed or
//! reset), every later access fails with `ENODEV` and the driver's data source is dropped.
//! Positioned access is refused with `ESPIPE`, like a read at an offset on the kernel's fd.
//!
//! Bytes move one way at every layer: a driver writes its save stream into a [`DataSink`]
//! ([`SaveData::read_to`]) and reads its resume stream from a [`DataSource`]
//! ([`ResumeData::write_from`]). A vfio-user server passes its socket as the sink or source, so
//! migration data needs no buffer of its own; `read` and `write` through a caller's buffer are
//! the slice adapters of `mig-io`, the same for every driver.

use crate::sync::{lock, Arc, Mutex};
use crate::Errno;
use mig_io::{DataSink, DataSource};

/// The driver side of a save stream.
pub trait SaveData: Send {
    /// Hands the next bytes of the stream, at most `max`, to `sink`: `sink.begin(n)` once
    /// (`n < max` means the end; `0` at the end), then `put`s of exactly `n` bytes in all. May
    /// block while the producer is behind. An error before `begin` is a plain read error; an
    /// error after it leaves the transport in the middle of a message.
    fn read_to(&mut self, max: usize, sink: &mut dyn DataSink) -> Result<usize, Errno>;

    /// `(initial_bytes, dirty_bytes)` while in PRE_COPY (`VFIO_MIG_GET_PRECOPY_INFO`).
    /// Devices without PRE_COPY keep the default (`ENOTTY`, like the kernel's ioctl).
    fn precopy_info(&mut self) -> Result<(u64, u64), Errno> {
        Err(Errno::ENOTTY)
    }
}

/// The driver side of a resume stream.
pub trait ResumeData: Send {
    /// Consumes the next `n` bytes of `source`, all of them or an error. On error, some of the
    /// `n` bytes may remain unread in the source.
    fn write_from(&mut self, n: usize, source: &mut dyn DataSource) -> Result<(), Errno>;
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

    /// [`SaveData::read_to`] under the stream's lock; `ENODEV` once the session ended.
    pub fn read_to(&self, max: usize, sink: &mut dyn DataSink) -> Result<usize, Errno> {
        self.0.with(|d| d.read_to(max, sink))
    }

    /// Reads the next bytes into `buf`; 0 at the end of the data; `ENODEV` once the session
    /// ended.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        mig_io::read_into(buf, |max, sink| self.read_to(max, sink))
    }

    /// A positioned read: always `ESPIPE` (the stream has no offsets).
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

    /// [`ResumeData::write_from`] under the stream's lock; `ENODEV` once the session ended.
    pub fn write_from(&self, n: usize, source: &mut dyn DataSource) -> Result<(), Errno> {
        self.0.with(|d| d.write_from(n, source))
    }

    /// Writes all of `buf` (returning its length) or fails; `ENODEV` once the session ended.
    pub fn write(&self, buf: &[u8]) -> Result<usize, Errno> {
        mig_io::write_from_slice(buf, |n, source| self.write_from(n, source))
    }

    /// A positioned write: always `ESPIPE`.
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
