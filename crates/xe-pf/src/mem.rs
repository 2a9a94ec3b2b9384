//! Memory backings: a VF's LMEM and, on integrated parts, the VF's system memory.
//!
//! A backing is a memfd of a fixed size, committed lazily by the kernel: a 16 GiB LMEM that nobody
//! touched costs no memory. Access goes through `pread`/`pwrite` on the fd (one copy, no mapping
//! into this process), so reading a never-written range returns zeros without allocating pages,
//! and the save path never inflates this process's RSS. The fd can be handed to a vfio-user client
//! that wants to map BAR2. Ranges are checked here, once; callers pass guest-controlled values.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FallocateFlags, MemfdFlags};
use vfio_core::Errno;

/// A fixed-size, lazily committed memory object.
#[derive(Debug)]
pub struct Backing {
    fd: OwnedFd,
    size: u64,
}

/// Page granule used for zero detection when writing.
const PAGE: usize = 4096;

impl Backing {
    /// A new zero-filled backing of `size` bytes; `ENOMEM` if the kernel refuses.
    pub fn new(name: &str, size: u64) -> Result<Backing, Errno> {
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)
            .map_err(|e| Errno::new(e.raw_os_error()))?;
        rustix::fs::ftruncate(&fd, size).map_err(|e| Errno::new(e.raw_os_error()))?;
        Ok(Backing { fd, size })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The memfd, for sharing (BAR2 mmap).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), Errno> {
        let end = offset.checked_add(len as u64).ok_or(Errno::EINVAL)?;
        if end > self.size {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`; `EINVAL` if out of range.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.check(offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let n = rustix::io::pread(&self.fd, &mut buf[done..], offset + done as u64)
                .map_err(|e| Errno::new(e.raw_os_error()))?;
            if n == 0 {
                // Within the size a memfd never returns short; treat as zeros past its end.
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset`; `EINVAL` if out of range.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.check(offset, data.len())?;
        let mut done = 0;
        while done < data.len() {
            let n = rustix::io::pwrite(&self.fd, &data[done..], offset + done as u64)
                .map_err(|e| Errno::new(e.raw_os_error()))?;
            if n == 0 {
                return Err(Errno::EIO);
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset`, but turns whole zero pages into holes instead of writing them,
    /// so restoring a mostly empty LMEM keeps the destination sparse. Same result as `write`.
    /// Consecutive pages of the same kind go out as one `pwrite` or one hole punch.
    pub fn write_sparse(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.check(offset, data.len())?;
        // (start, end, zero) of the run being built.
        let mut run: Option<(usize, usize, bool)> = None;
        let mut i = 0;
        while i < data.len() {
            let at = offset + i as u64;
            let n = (PAGE - (at as usize % PAGE)).min(data.len() - i);
            // Only whole pages become holes; partial pages are written.
            let zero = n == PAGE && is_zero(&data[i..i + n]);
            run = match run {
                Some((s, _, z)) if z == zero => Some((s, i + n, z)),
                Some(r) => {
                    self.flush_run(offset, data, r)?;
                    Some((i, i + n, zero))
                }
                None => Some((i, i + n, zero)),
            };
            i += n;
        }
        if let Some(r) = run {
            self.flush_run(offset, data, r)?;
        }
        Ok(())
    }

    fn flush_run(
        &self,
        offset: u64,
        data: &[u8],
        (s, e, zero): (usize, usize, bool),
    ) -> Result<(), Errno> {
        if zero {
            self.zero(offset + s as u64, (e - s) as u64)
        } else {
            self.write(offset + s as u64, &data[s..e])
        }
    }

    /// Zeroes `[offset, offset+len)`, releasing whole pages.
    pub fn zero(&self, offset: u64, len: u64) -> Result<(), Errno> {
        let end = offset.checked_add(len).ok_or(Errno::EINVAL)?;
        if end > self.size {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        rustix::fs::fallocate(
            &self.fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        )
        .map_err(|e| Errno::new(e.raw_os_error()))
    }

    /// Zeroes the whole backing and releases its memory.
    pub fn clear(&self) -> Result<(), Errno> {
        self.zero(0, self.size)
    }
}

/// Whether every byte is zero: 16 bytes at a time, stopping at the first non-zero word, so
/// real data costs almost nothing to classify.
pub fn is_zero(b: &[u8]) -> bool {
    let chunks = b.chunks_exact(16);
    let tail = chunks.remainder();
    chunks
        .map(|c| u128::from_ne_bytes(c.try_into().unwrap_or([0xff; 16])))
        .all(|w| w == 0)
        && tail.iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_sparse_equals_write() {
        let a = Backing::new("a", 64 << 10).unwrap();
        let b = Backing::new("b", 64 << 10).unwrap();
        // Stale data in both, then the same mixed write (zero pages, data, partial pages).
        a.write(0, &[0xee; 64 << 10]).unwrap();
        b.write(0, &[0xee; 64 << 10]).unwrap();
        let mut d = vec![0u8; 40 << 10];
        d[5000] = 1;
        d[20000..24000].fill(7);
        d[(40 << 10) - 1] = 9;
        a.write(1000, &d).unwrap();
        b.write_sparse(1000, &d).unwrap();
        let (mut x, mut y) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
        a.read(0, &mut x).unwrap();
        b.read(0, &mut y).unwrap();
        assert!(x == y);
        assert!(is_zero(&[0; 33]) && !is_zero(&[0, 0, 1]));
        assert_eq!(b.write_sparse(60 << 10, &[0; 8 << 10]), Err(Errno::EINVAL));
    }
}
