//! # mig-io — errno and the byte transport of migration data
//!
//! The leaf crate that both halves of xe-vfio share and that knows neither: the VFIO side
//! (`vfio-core`, the variant driver, vfio-user) and the PF side (`xe-pf`, which knows nothing of
//! VFIO) meet here.
//!
//! - [`Errno`]: Linux errno values, because errors cross every boundary as errno.
//! - [`DataSink`] / [`DataSource`]: how migration-stream bytes leave and enter a device. Every
//!   layer moves data through these and nothing else: a device writes its save stream into a
//!   sink (a socket, a file, a buffer) and reads its resume stream from a source.
//! - [`read_into`] / [`write_from_slice`]: the buffered read and write — a caller's slice as
//!   the sink or the source — written once, here, for every layer.

mod errno;

pub use errno::Errno;
use std::os::fd::BorrowedFd;

/// Takes save-stream bytes as a device produces them (a transport, usually a socket).
pub trait DataSink {
    /// Called once, before any `put`: exactly `n` bytes follow.
    fn begin(&mut self, n: usize) -> Result<(), Errno>;
    /// Takes the next bytes. A transport failure is returned as `EPIPE`; the sink keeps the
    /// details for its owner.
    fn put(&mut self, bytes: &[u8]) -> Result<(), Errno>;
    /// Takes `len` bytes of the file `fd` at `offset` (device memory kept in a file), for a
    /// transport that can pass file pages on without copying them. `Ok(false)` (the default):
    /// not supported, nothing was taken; use `put`. The pages may be read after this returns,
    /// so the device must not change them while its stream is open — true of a stopped
    /// device's memory.
    fn put_file(&mut self, fd: BorrowedFd<'_>, offset: u64, len: usize) -> Result<bool, Errno> {
        let _ = (fd, offset, len);
        Ok(false)
    }
    /// Room for the next `len` bytes in the sink itself, for a device that must copy anyway
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
    /// The next `len` bytes in place, when the source already holds them in memory (they
    /// then count as read). `None` (the default): use `fill`.
    fn take(&mut self, len: usize) -> Option<&[u8]> {
        let _ = len;
        None
    }
}

/// A caller's buffer as a [`DataSink`].
#[derive(Debug)]
pub struct SliceSink<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> SliceSink<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        SliceSink { buf, at: 0 }
    }

    /// Bytes put so far.
    pub fn len(&self) -> usize {
        self.at
    }

    /// Whether nothing was put yet.
    pub fn is_empty(&self) -> bool {
        self.at == 0
    }

    fn room(&mut self, len: usize) -> Result<&mut [u8], Errno> {
        let end = self.at.checked_add(len).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(Errno::EOVERFLOW)?;
        let s = &mut self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
}

impl DataSink for SliceSink<'_> {
    fn begin(&mut self, n: usize) -> Result<(), Errno> {
        if n > self.buf.len() - self.at {
            return Err(Errno::EOVERFLOW);
        }
        Ok(())
    }
    fn put(&mut self, bytes: &[u8]) -> Result<(), Errno> {
        self.room(bytes.len())?.copy_from_slice(bytes);
        Ok(())
    }
    fn space(&mut self, len: usize) -> Option<&mut [u8]> {
        self.room(len).ok()
    }
}

/// A caller's bytes as a [`DataSource`].
#[derive(Debug)]
pub struct SliceSource<'a> {
    buf: &'a [u8],
}

impl<'a> SliceSource<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        SliceSource { buf }
    }

    /// Bytes not taken yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
}

impl DataSource for SliceSource<'_> {
    fn fill(&mut self, dst: &mut [u8]) -> Result<(), Errno> {
        let head = self.take(dst.len()).ok_or(Errno::EOVERFLOW)?;
        dst.copy_from_slice(head);
        Ok(())
    }
    fn take(&mut self, len: usize) -> Option<&[u8]> {
        if len > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Some(head)
    }
}

/// The buffered read: `read_to(buf.len(), sink)` with `buf` as the sink. Returns the count
/// (shorter than `buf` only at the end of the stream).
pub fn read_into(
    buf: &mut [u8],
    read_to: impl FnOnce(usize, &mut dyn DataSink) -> Result<usize, Errno>,
) -> Result<usize, Errno> {
    let max = buf.len();
    let mut sink = SliceSink::new(buf);
    let n = read_to(max, &mut sink)?;
    debug_assert_eq!(
        n,
        sink.len(),
        "a device put other than the count it announced"
    );
    Ok(n)
}

/// The buffered write: `write_from(buf.len(), source)` with `buf` as the source. Returns
/// `buf.len()` (all of it is taken, or it fails).
pub fn write_from_slice(
    buf: &[u8],
    write_from: impl FnOnce(usize, &mut dyn DataSource) -> Result<(), Errno>,
) -> Result<usize, Errno> {
    write_from(buf.len(), &mut SliceSource::new(buf))?;
    Ok(buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_sink_takes_exactly_its_room() {
        let mut buf = [0u8; 6];
        let n = read_into(&mut buf, |max, sink| {
            assert_eq!(max, 6);
            sink.begin(5)?;
            sink.put(b"ab")?;
            sink.space(3).ok_or(Errno::EIO)?.copy_from_slice(b"cde");
            Ok(5)
        });
        assert_eq!(n, Ok(5));
        assert_eq!(&buf, b"abcde\0");
        let mut small = [0u8; 2];
        let mut s = SliceSink::new(&mut small);
        assert_eq!(s.begin(3), Err(Errno::EOVERFLOW));
        assert_eq!(s.put(b"abc"), Err(Errno::EOVERFLOW));
        assert!(s.space(3).is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn slice_source_gives_each_byte_once() {
        let data = b"0123456789";
        let r = write_from_slice(data, |n, src| {
            assert_eq!(n, 10);
            let mut a = [0u8; 4];
            src.fill(&mut a)?;
            assert_eq!(&a, b"0123");
            assert_eq!(src.take(5), Some(&b"45678"[..]));
            assert_eq!(src.take(2), None, "past the end");
            let mut b = [0u8; 2];
            assert_eq!(src.fill(&mut b), Err(Errno::EOVERFLOW));
            src.fill(&mut b[..1])?;
            assert_eq!(b[0], b'9');
            Ok(())
        });
        assert_eq!(r, Ok(10));
    }
}
