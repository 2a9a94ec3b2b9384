//! The global GTT: a range allocator over the PF's GGTT and the PTE format.
//!
//! The GGTT is not virtualised: each VF owns one range of the PF's GGTT, and its PTEs carry the
//! owning VF's id. A PTE is a u64:
//!
//! | bits | field |
//! |---|---|
//! | 0 | PRESENT |
//! | 1 | LM: the page is in the VF's LMEM (else in the VF's system memory) |
//! | 2..=11 | VFID of the owner (0 = PF) |
//! | 12..=45 | page address (emulator: an offset in the VF's own LMEM or system memory) |
//!
//! Upstream saves PTEs with the VFID field cleared and sets it to the *target* VF on load.

use super::regs::ERR_FAULT;
use super::VfHw;
use crate::hw::mem::Backing;
use crate::sync::lock;
use mig_io::Errno;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// GGTT page size.
pub const GGTT_PAGE: u64 = 4096;
/// PTE present bit.
pub const PTE_PRESENT: u64 = 1 << 0;
/// PTE local-memory bit.
pub const PTE_LM: u64 = 1 << 1;
/// PTE VFID field shift.
pub const PTE_VFID_SHIFT: u32 = 2;
/// PTE VFID field mask.
pub const PTE_VFID_MASK: u64 = 0x3ff << PTE_VFID_SHIFT;
/// PTE address mask (bits 12..=45).
pub const PTE_ADDR_MASK: u64 = ((1u64 << 46) - 1) & !0xfff;

/// A PTE with its VFID field replaced by `vfid`.
pub fn pte_with_vfid(pte: u64, vfid: u32) -> u64 {
    (pte & !PTE_VFID_MASK) | ((u64::from(vfid) << PTE_VFID_SHIFT) & PTE_VFID_MASK)
}

/// The VFID field of a PTE.
pub fn pte_vfid(pte: u64) -> u32 {
    ((pte & PTE_VFID_MASK) >> PTE_VFID_SHIFT) as u32
}

/// A PTE mapping page `addr` (LMEM or system memory) for `vfid`.
pub fn make_pte(addr: u64, lmem: bool, vfid: u32) -> u64 {
    let lm = if lmem { PTE_LM } else { 0 };
    pte_with_vfid((addr & PTE_ADDR_MASK) | lm | PTE_PRESENT, vfid)
}

/// A range of GGTT addresses `[base, base+size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgttRange {
    pub base: u64,
    pub size: u64,
}

impl GgttRange {
    /// Whether `[addr, addr+len)` lies inside.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.base
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.base + self.size)
    }
    /// Number of PTEs.
    pub fn ptes(&self) -> usize {
        (self.size / GGTT_PAGE) as usize
    }
    /// End address (exclusive).
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

/// First-fit allocator over the part of the GGTT the PF hands to VFs.
#[derive(Debug)]
pub struct GgttAllocator {
    start: u64,
    end: u64,
    align: u64,
    used: Vec<GgttRange>,
}

impl GgttAllocator {
    /// An allocator for `[start, end)` with allocations aligned to `align` (a power of two).
    pub fn new(start: u64, end: u64, align: u64) -> Self {
        GgttAllocator {
            start,
            end,
            align,
            used: Vec::new(),
        }
    }

    /// Allocates `size` bytes (rounded up to the page size); `ENOSPC` when no hole is big enough,
    /// `EINVAL` for a zero size.
    pub fn alloc(&mut self, size: u64) -> Result<GgttRange, Errno> {
        if size == 0 {
            return Err(Errno::EINVAL);
        }
        let size = size
            .checked_next_multiple_of(GGTT_PAGE)
            .ok_or(Errno::EINVAL)?;
        self.used.sort_by_key(|r| r.base);
        let mut cursor = self.start;
        for r in self.used.iter().chain(std::iter::once(&GgttRange {
            base: self.end,
            size: 0,
        })) {
            let base = cursor.next_multiple_of(self.align);
            if base.checked_add(size).is_some_and(|e| e <= r.base) {
                let range = GgttRange { base, size };
                self.used.push(range);
                return Ok(range);
            }
            cursor = cursor.max(r.end());
        }
        Err(Errno::ENOSPC)
    }

    /// Releases a range returned by `alloc`.
    pub fn free(&mut self, range: GgttRange) {
        self.used.retain(|r| *r != range);
    }

    /// Bytes not allocated.
    pub fn available(&self) -> u64 {
        (self.end - self.start) - self.used.iter().map(|r| r.size).sum::<u64>()
    }
}

impl VfHw {
    // ---- GGTT ---------------------------------------------------------------------------

    pub(super) fn read_pte_global(&self, idx: usize) -> u64 {
        let addr = idx as u64 * GGTT_PAGE;
        if !self.ggtt.contains(addr, GGTT_PAGE) {
            return 0;
        }
        let i = ((addr - self.ggtt.base) / GGTT_PAGE) as usize;
        lock(&self.ptes).get(i).copied().unwrap_or(0)
    }

    pub(super) fn write_pte_half(&self, idx: usize, hi: bool, v: u32) {
        let addr = idx as u64 * GGTT_PAGE;
        if !self.ggtt.contains(addr, GGTT_PAGE) {
            // Writes outside the VF's own range have no effect (hardware drops them).
            self.saw_bad_access.store(true, Ordering::Relaxed);
            return;
        }
        let i = ((addr - self.ggtt.base) / GGTT_PAGE) as usize;
        let mut ptes = lock(&self.ptes);
        if let Some(p) = ptes.get_mut(i) {
            let raw = if hi {
                (*p & 0xffff_ffff) | (u64::from(v) << 32)
            } else {
                (*p & !0xffff_ffff) | u64::from(v)
            };
            *p = pte_with_vfid(raw, self.vfid);
        }
    }

    /// The VF's PTEs, in range order.
    pub fn ptes(&self) -> Vec<u64> {
        lock(&self.ptes).clone()
    }

    /// Replaces the VF's PTEs (restore): each gets this VF's id. `EINVAL` on a length mismatch.
    pub fn load_ptes(&self, ptes: &[u64]) -> Result<(), Errno> {
        let mut cur = lock(&self.ptes);
        if ptes.len() != cur.len() {
            return Err(Errno::EINVAL);
        }
        for (d, s) in cur.iter_mut().zip(ptes) {
            *d = pte_with_vfid(*s, self.vfid);
        }
        Ok(())
    }

    /// Translates a GGTT address to (backing, byte offset, bytes left in the page).
    fn translate(&self, gaddr: u64) -> Result<(Arc<Backing>, u64, u64), u32> {
        if !self.ggtt.contains(gaddr, 1) {
            return Err(ERR_FAULT);
        }
        let i = ((gaddr - self.ggtt.base) / GGTT_PAGE) as usize;
        let pte = lock(&self.ptes).get(i).copied().unwrap_or(0);
        if pte & PTE_PRESENT == 0 {
            return Err(ERR_FAULT);
        }
        let in_page = gaddr % GGTT_PAGE;
        let off = (pte & PTE_ADDR_MASK) + in_page;
        let left = GGTT_PAGE - in_page;
        let mem = if pte & PTE_LM != 0 {
            self.lmem.clone()
        } else {
            self.sysmem()
        };
        mem.map(|m| (m, off, left)).ok_or(ERR_FAULT)
    }

    /// Reads through the GGTT (what the engine sees). Errors are engine error codes.
    pub fn ggtt_read(&self, gaddr: u64, buf: &mut [u8]) -> Result<(), u32> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = gaddr.checked_add(done as u64).ok_or(ERR_FAULT)?;
            let (mem, off, left) = self.translate(at)?;
            let n = (left as usize).min(buf.len() - done);
            mem.read(off, &mut buf[done..done + n])
                .map_err(|_| ERR_FAULT)?;
            done += n;
        }
        Ok(())
    }

    /// Writes through the GGTT.
    pub fn ggtt_write(&self, gaddr: u64, data: &[u8]) -> Result<(), u32> {
        let mut done = 0usize;
        while done < data.len() {
            let at = gaddr.checked_add(done as u64).ok_or(ERR_FAULT)?;
            let (mem, off, left) = self.translate(at)?;
            let n = (left as usize).min(data.len() - done);
            mem.write(off, &data[done..done + n])
                .map_err(|_| ERR_FAULT)?;
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pte_fields() {
        let p = make_pte(0x1234_5000, true, 3);
        assert_eq!(p, 0x1234_5000 | PTE_LM | PTE_PRESENT | (3 << 2));
        assert_eq!(pte_vfid(p), 3);
        assert_eq!(pte_with_vfid(p, 0), 0x1234_5003);
        assert_eq!(pte_vfid(pte_with_vfid(p, 1023)), 1023);
    }

    #[test]
    fn ranges_never_overlap_and_run_out() {
        let mut a = GgttAllocator::new(0x100_0000, 0x500_0000, 0x1_0000);
        let mut got = Vec::new();
        while let Ok(r) = a.alloc(0x30_0000) {
            got.push(r);
        }
        assert_eq!(got.len(), 21);
        for (i, x) in got.iter().enumerate() {
            for y in &got[i + 1..] {
                assert!(x.end() <= y.base || y.end() <= x.base, "{x:?} {y:?}");
            }
        }
        assert_eq!(a.alloc(0x30_0000), Err(Errno::ENOSPC));
        a.free(got[3]);
        assert_eq!(a.alloc(0x30_0000).unwrap(), got[3]);
        assert_eq!(a.alloc(0), Err(Errno::EINVAL));
    }
}
