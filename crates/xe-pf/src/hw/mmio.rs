//! BAR0 as a guest sees it: the MMIO decode of the register map in [`super::regs`].

use super::regs::*;
use super::state::SwFlags;
use super::vf::VfHw;
use crate::sync::lock;
use mig_io::Errno;
use std::sync::atomic::Ordering;

impl VfHw {
    // ---- MMIO ---------------------------------------------------------------------------

    /// A guest read of BAR0. Any offset and size: out-of-range is `EINVAL`, unknown offsets read 0.
    pub fn mmio_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let end = offset.checked_add(buf.len() as u64).ok_or(Errno::EINVAL)?;
        if end > BAR0_SIZE {
            return Err(Errno::EINVAL);
        }
        // Assemble from aligned dwords.
        let mut i = 0usize;
        while i < buf.len() {
            let at = offset + i as u64;
            let dw = at & !3;
            let v = self.read_dword(dw).to_le_bytes();
            let from = (at - dw) as usize;
            let n = (4 - from).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&v[from..from + n]);
            i += n;
        }
        Ok(())
    }

    /// A guest write of BAR0: 4-byte aligned dwords (8-byte writes are two dwords).
    pub fn mmio_write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EINVAL)?;
        if end > BAR0_SIZE {
            return Err(Errno::EINVAL);
        }
        if offset % 4 != 0 || data.len() % 4 != 0 {
            self.saw_bad_access.store(true, Ordering::Relaxed);
            return Ok(());
        }
        for (k, c) in data.chunks_exact(4).enumerate() {
            let v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            self.write_dword(offset + 4 * k as u64, v);
        }
        Ok(())
    }

    /// Reads one register (dword-aligned offset).
    pub fn read_reg(&self, offset: u64) -> u32 {
        self.read_dword(offset & !3)
    }

    /// Writes one register (dword-aligned offset).
    pub fn write_reg(&self, offset: u64, v: u32) {
        if offset % 4 == 0 && offset < BAR0_SIZE {
            self.write_dword(offset, v)
        }
    }

    fn read_dword(&self, off: u64) -> u32 {
        if off >= GGTT_WINDOW {
            let idx = ((off - GGTT_WINDOW) / 8) as usize;
            let pte = self.read_pte_global(idx);
            return if off % 8 == 0 {
                pte as u32
            } else {
                (pte >> 32) as u32
            };
        }
        match off {
            o if (vf_sw_flag(0)..vf_sw_flag(4)).contains(&o) => {
                lock(&self.flags).primary[((o - vf_sw_flag(0)) / 4) as usize]
            }
            o if (med_vf_sw_flag(0)..med_vf_sw_flag(4)).contains(&o) => {
                lock(&self.flags).media[((o - med_vf_sw_flag(0)) / 4) as usize]
            }
            RING_BASE..=JOBS_DONE => self.read_engine_reg(off),
            _ => 0,
        }
    }

    fn write_dword(&self, off: u64, v: u32) {
        if off >= GGTT_WINDOW {
            let idx = ((off - GGTT_WINDOW) / 8) as usize;
            let hi = off % 8 != 0;
            self.write_pte_half(idx, hi, v);
            return;
        }
        match off {
            o if (vf_sw_flag(0)..vf_sw_flag(4)).contains(&o) => {
                lock(&self.flags).primary[((o - vf_sw_flag(0)) / 4) as usize] = v
            }
            o if (med_vf_sw_flag(0)..med_vf_sw_flag(4)).contains(&o) => {
                lock(&self.flags).media[((o - med_vf_sw_flag(0)) / 4) as usize] = v
            }
            RING_BASE..=JOBS_DONE => self.write_engine_reg(off, v),
            _ => {}
        }
    }

    fn read_engine_reg(&self, off: u64) -> u32 {
        let e = lock(&self.engine);
        let r = &e.regs;
        match off {
            RING_BASE => r.ring_base,
            RING_SIZE => r.ring_size,
            RING_HEAD => r.head,
            RING_TAIL => r.tail,
            SEQNO => r.seqno,
            STATUS => {
                let mut s = 0;
                if !e.busy && (r.head == r.tail || !e.running || e.fixup_hold) {
                    s |= STATUS_IDLE;
                }
                if !e.running {
                    s |= STATUS_PAUSED;
                }
                if e.fixup_hold {
                    s |= STATUS_FIXUP_HOLD;
                }
                if r.error != 0 {
                    s |= STATUS_ERROR;
                }
                s
            }
            ERROR => r.error,
            DOORBELLS => r.doorbells,
            GGTT_BASE_LO => self.ggtt.base as u32,
            GGTT_BASE_HI => (self.ggtt.base >> 32) as u32,
            GGTT_SIZE_LO => self.ggtt.size as u32,
            GGTT_SIZE_HI => (self.ggtt.size >> 32) as u32,
            MIGRATED => u32::from(e.fixup_hold),
            JOBS_DONE => r.jobs_done,
            _ => 0,
        }
    }

    fn write_engine_reg(&self, off: u64, v: u32) {
        let mut e = lock(&self.engine);
        match off {
            RING_BASE => e.regs.ring_base = v,
            RING_SIZE => e.regs.ring_size = v,
            RING_TAIL => {
                e.regs.tail = v;
                e.regs.doorbells = e.regs.doorbells.wrapping_add(1);
            }
            ERROR => e.regs.error = 0,
            FIXUPS_DONE if v & 1 != 0 => e.fixup_hold = false,
            _ => return,
        }
        e.parked = false;
        drop(e);
        self.cv.notify_all();
    }

    /// The scratch registers.
    pub fn sw_flags(&self) -> SwFlags {
        *lock(&self.flags)
    }

    /// Replaces the scratch registers of one GT (restore).
    pub(crate) fn set_sw_flags(&self, gt: u8, v: [u32; 4]) {
        let mut f = lock(&self.flags);
        if gt == crate::platform::PRIMARY_GT {
            f.primary = v;
        } else {
            f.media = v;
        }
    }
}
