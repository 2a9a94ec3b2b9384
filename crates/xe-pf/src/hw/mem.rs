//! Memory backings: a VF's LMEM and, on integrated parts, the VF's system memory.
//!
//! A backing is a memfd of a fixed, sealed size (a client that maps BAR2 cannot shrink it under
//! us), committed one of two ways ([`Commit`]):
//!
//! - **lazy** (the default): pages appear when first written, so a 16 GiB LMEM that nobody
//!   touched costs no memory. Access goes through `pread`/`pwrite` on the fd — one kernel copy,
//!   no mapping into this process — so reading a never-written range allocates nothing, zero
//!   pages written in bulk become holes again, and this process's RSS never includes LMEM.
//! - **reserved**: every page is committed when the backing is created, as provisioning
//!   reserves real VRAM, and the memfd is mapped into this process once; access is a plain
//!   memory copy through that mapping. The kernel's per-page file paths (about 4 GiB/s where
//!   memcpy runs at 10) are gone from migration, and memory never has to be found during a
//!   restore; the price is that the whole LMEM is resident, and counted in this process's RSS,
//!   from provisioning on.
//!
//! The fd can be handed to a vfio-user client that wants to map BAR2. Ranges are checked here,
//! once; callers pass guest-controlled values.

use memmap2::{Advice, MmapOptions, MmapRaw};
use mig_io::Errno;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};

/// How a backing's memory is committed; see the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Commit {
    /// Pages are committed when first written; accessed with `pread`/`pwrite`.
    #[default]
    Lazy,
    /// Every page is committed at creation and mapped; accessed with memory copies.
    Reserved,
}

impl Commit {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Commit::Lazy => "lazy",
            Commit::Reserved => "reserved",
        }
    }
}

impl std::str::FromStr for Commit {
    type Err = String;
    fn from_str(s: &str) -> Result<Commit, String> {
        match s {
            "lazy" => Ok(Commit::Lazy),
            "reserved" => Ok(Commit::Reserved),
            _ => Err(format!("unknown LMEM commit mode {s:?} (lazy or reserved)")),
        }
    }
}

/// A fixed-size memory object.
#[derive(Debug)]
pub struct Backing {
    fd: OwnedFd,
    size: u64,
    /// The whole backing, mapped shared, when reserved.
    map: Option<MmapRaw>,
}

/// Page granule used for zero detection when writing.
const PAGE: usize = 4096;

impl Backing {
    /// A new zero-filled, lazily committed backing of `size` bytes; `ENOMEM` if the kernel
    /// refuses.
    pub fn new(name: &str, size: u64) -> Result<Backing, Errno> {
        Backing::with_commit(name, size, Commit::Lazy)
    }

    /// A new zero-filled backing of `size` bytes, committed as `commit` says. `ENOMEM` if the
    /// kernel refuses the memfd, or, when reserved, the mapping or the memory itself.
    pub fn with_commit(name: &str, size: u64, commit: Commit) -> Result<Backing, Errno> {
        let os = |e: rustix::io::Errno| Errno::new(e.raw_os_error());
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(os)?;
        rustix::fs::ftruncate(&fd, size).map_err(os)?;
        // A client given the fd (BAR2 mmap) must not be able to change the size: a shrunk
        // file would turn our accesses through the mapping into SIGBUS.
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(os)?;
        let map = match commit {
            Commit::Lazy => None,
            Commit::Reserved if size == 0 => None,
            Commit::Reserved => Some(reserve(&fd, size)?),
        };
        Ok(Backing { fd, size, map })
    }

    /// How this backing is committed.
    pub fn commit(&self) -> Commit {
        if self.map.is_some() {
            Commit::Reserved
        } else {
            Commit::Lazy
        }
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
        if let Some(m) = &self.map {
            // SAFETY: `check` put [offset, offset+len) inside the mapping, which lives as long
            // as `self` and whose file cannot shrink (sealed). The bytes are device memory: a
            // guest may change them concurrently through its own mapping, and a copy then
            // sees some mix of old and new bytes, as a DMA read would — the same contract
            // VMMs use for guest memory.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    m.as_ptr().add(offset as usize),
                    buf.as_mut_ptr(),
                    buf.len(),
                );
            }
            return Ok(());
        }
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

    /// Runs `f` on `[offset, offset+len)` in place when the backing is reserved (mapped):
    /// `Ok(None)` when it is lazy. `EINVAL` if out of range. For handing device memory to a
    /// transport (`send`) without a copy.
    pub fn with_slice<R>(
        &self,
        offset: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, Errno> {
        self.check(offset, len)?;
        let Some(m) = &self.map else {
            return Ok(None);
        };
        // SAFETY: in range (checked) of a mapping that lives as long as `self` and cannot
        // shrink. The slice only lives for `f`, which passes it to the kernel or copies it;
        // concurrent writers (a guest, through its own mapping) can only make it see a mix
        // of old and new bytes, as in `read`.
        let s = unsafe { std::slice::from_raw_parts(m.as_ptr().add(offset as usize), len) };
        Ok(Some(f(s)))
    }

    /// Like `with_slice`, writable: for filling device memory straight from a transport
    /// (`recv`).
    pub fn with_slice_mut<R>(
        &self,
        offset: u64,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<Option<R>, Errno> {
        self.check(offset, len)?;
        let Some(m) = &self.map else {
            return Ok(None);
        };
        // SAFETY: as in `with_slice`. Callers hold the VF's restore session, the only writer
        // of this range while it runs.
        let s = unsafe { std::slice::from_raw_parts_mut(m.as_mut_ptr().add(offset as usize), len) };
        Ok(Some(f(s)))
    }

    /// Writes `data` at `offset`; `EINVAL` if out of range.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.check(offset, data.len())?;
        if let Some(m) = &self.map {
            // SAFETY: as in `read`; `data` is ours and cannot overlap a shared mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    m.as_mut_ptr().add(offset as usize),
                    data.len(),
                );
            }
            return Ok(());
        }
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

    /// Writes `data` at `offset`, but, when lazy, turns whole zero pages into holes instead of
    /// writing them, so restoring a mostly empty LMEM keeps the destination sparse. Same result
    /// as `write`. Consecutive pages of the same kind go out as one `pwrite` or one hole punch.
    /// A reserved backing keeps its pages: this is `write`.
    pub fn write_sparse(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.check(offset, data.len())?;
        if self.map.is_some() {
            return self.write(offset, data);
        }
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

    /// Zeroes `[offset, offset+len)`, releasing whole pages when lazy (a reserved backing
    /// keeps them).
    pub fn zero(&self, offset: u64, len: u64) -> Result<(), Errno> {
        let end = offset.checked_add(len).ok_or(Errno::EINVAL)?;
        if end > self.size {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        if let Some(m) = &self.map {
            // SAFETY: as in `read`.
            unsafe { std::ptr::write_bytes(m.as_mut_ptr().add(offset as usize), 0, len as usize) };
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

/// Maps all of `fd` shared and commits every page by prefaulting it for writing — the memory
/// is found now, at provisioning, or the provisioning fails with `ENOMEM`.
fn reserve(fd: &OwnedFd, size: u64) -> Result<MmapRaw, Errno> {
    let len = usize::try_from(size).map_err(|_| Errno::ENOMEM)?;
    let map = MmapOptions::new()
        .len(len)
        .map_raw(fd.as_raw_fd())
        .map_err(|e| Errno::from_io(&e))?;
    if let Err(e) = map.advise(Advice::PopulateWrite) {
        if e.raw_os_error() != Some(Errno::EINVAL.raw()) {
            tracing::warn!(size, %e, "committing a reserved backing failed");
            return Err(Errno::ENOMEM);
        }
        // Kernels before 5.14 lack MADV_POPULATE_WRITE: touch every page instead.
        for at in (0..len).step_by(PAGE) {
            // SAFETY: `at` is inside the mapping of `len` bytes; a volatile write of the zero
            // the page already holds commits it without changing it.
            unsafe { std::ptr::write_volatile(map.as_mut_ptr().add(at), 0) };
        }
    }
    Ok(map)
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

    fn mixed_writes(commit: Commit) -> Vec<u8> {
        let a = Backing::new("a", 64 << 10).unwrap();
        let b = Backing::with_commit("b", 64 << 10, commit).unwrap();
        assert_eq!(b.commit(), commit);
        // Stale data in both, then the same mixed write (zero pages, data, partial pages).
        a.write(0, &[0xee; 64 << 10]).unwrap();
        b.write(0, &[0xee; 64 << 10]).unwrap();
        let mut d = vec![0u8; 40 << 10];
        d[5000] = 1;
        d[20000..24000].fill(7);
        d[(40 << 10) - 1] = 9;
        a.write(1000, &d).unwrap();
        b.write_sparse(1000, &d).unwrap();
        a.zero(50_000, 3000).unwrap();
        b.zero(50_000, 3000).unwrap();
        let (mut x, mut y) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
        a.read(0, &mut x).unwrap();
        b.read(0, &mut y).unwrap();
        assert!(x == y, "{commit:?} differs from plain writes");
        assert_eq!(b.write_sparse(60 << 10, &[0; 8 << 10]), Err(Errno::EINVAL));
        assert_eq!(b.write(u64::MAX, &[0]), Err(Errno::EINVAL));
        assert_eq!(b.read(64 << 10, &mut [0]), Err(Errno::EINVAL));
        assert_eq!(b.zero(1, u64::MAX), Err(Errno::EINVAL));
        y
    }

    #[test]
    fn write_sparse_equals_write() {
        assert!(mixed_writes(Commit::Lazy) == mixed_writes(Commit::Reserved));
        assert!(is_zero(&[0; 33]) && !is_zero(&[0, 0, 1]));
    }

    /// Whoever holds the fd (a VMM mapping BAR2) can neither shrink nor grow the backing, so
    /// the reserved mapping can never fault past the file's end.
    #[test]
    fn size_is_sealed() {
        for commit in [Commit::Lazy, Commit::Reserved] {
            let b = Backing::with_commit("s", 1 << 20, commit).unwrap();
            let shrink = rustix::fs::ftruncate(b.fd(), 4096);
            assert_eq!(shrink, Err(rustix::io::Errno::PERM), "{commit:?}");
            let grow = rustix::fs::ftruncate(b.fd(), 2 << 20);
            assert_eq!(grow, Err(rustix::io::Errno::PERM), "{commit:?}");
        }
    }

    /// A reserved backing's pages are all committed at creation; a lazy one has none.
    #[test]
    fn reserved_commits_at_creation() {
        let blocks = |b: &Backing| rustix::fs::fstat(b.fd()).unwrap().st_blocks as u64 * 512;
        let lazy = Backing::new("l", 8 << 20).unwrap();
        let reserved = Backing::with_commit("r", 8 << 20, Commit::Reserved).unwrap();
        assert_eq!(blocks(&lazy), 0);
        assert_eq!(blocks(&reserved), 8 << 20);
        // Zero pages written into a reserved backing stay committed; a lazy one punches them.
        lazy.write(0, &[1; 8192]).unwrap();
        lazy.write_sparse(0, &[0; 8192]).unwrap();
        reserved.write_sparse(0, &[0; 8192]).unwrap();
        assert_eq!(blocks(&lazy), 0);
        assert_eq!(blocks(&reserved), 8 << 20);
        assert_eq!("reserved".parse::<Commit>(), Ok(Commit::Reserved));
        assert!("eager".parse::<Commit>().is_err());
    }
}
