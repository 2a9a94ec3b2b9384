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

use mig_io::Errno;

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
