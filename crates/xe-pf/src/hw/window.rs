//! The GGTT window in BAR0 and memory accesses through the GGTT (what the engine sees).

use super::ggtt::{pte_with_vfid, GGTT_PAGE, PTE_ADDR_MASK, PTE_LM, PTE_PRESENT};
use super::mem::Backing;
use super::regs::ERR_FAULT;
use super::vf::VfHw;
use crate::sync::lock;
use mig_io::Errno;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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

    /// Translates a GGTT address to (backing, byte offset, bytes left in the page, whether the
    /// backing is LMEM).
    fn translate(&self, gaddr: u64) -> Result<(Arc<Backing>, u64, u64, bool), u32> {
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
        let lm = pte & PTE_LM != 0;
        let mem = if lm { self.lmem.clone() } else { self.sysmem() };
        mem.map(|m| (m, off, left, lm)).ok_or(ERR_FAULT)
    }

    /// Reads through the GGTT (what the engine sees). Errors are engine error codes.
    pub fn ggtt_read(&self, gaddr: u64, buf: &mut [u8]) -> Result<(), u32> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = gaddr.checked_add(done as u64).ok_or(ERR_FAULT)?;
            let (mem, off, left, _) = self.translate(at)?;
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
            let (mem, off, left, lm) = self.translate(at)?;
            let n = (left as usize).min(data.len() - done);
            mem.write(off, &data[done..done + n])
                .map_err(|_| ERR_FAULT)?;
            if lm {
                self.dirty.mark(off, n as u64);
            }
            done += n;
        }
        Ok(())
    }
}
