//! The job engine: runs the jobs of the VF's ring through its GGTT while the PF lets it.

use super::guc;
use super::regs::*;
use super::state::EngineRegs;
use super::vf::VfHw;
use crate::sync::{lock, wait_until};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl VfHw {
    // ---- engine -------------------------------------------------------------------------

    fn ring_valid(r: &EngineRegs) -> bool {
        r.ring_size.is_power_of_two()
            && (64..=1 << 20).contains(&r.ring_size)
            && r.ring_base % JOB_SIZE == 0
            && r.head % JOB_SIZE == 0
            && r.tail % JOB_SIZE == 0
            && r.head < r.ring_size
            && r.tail < r.ring_size
    }

    pub(super) fn engine_loop(self: Arc<Self>) {
        loop {
            let g = lock(&self.engine);
            let (mut g, _) = wait_until(&self.cv, g, None, |e| {
                let go = e.shutdown || (e.running && !e.fixup_hold && e.regs.head != e.regs.tail);
                if !go && !e.parked {
                    e.parked = true;
                    self.cv.notify_all();
                }
                go
            });
            if g.shutdown {
                return;
            }
            let regs = g.regs;
            if !Self::ring_valid(&regs) {
                // A bad ring drops the queue rather than spinning on it.
                g.regs.error = ERR_RING;
                g.regs.head = g.regs.tail;
                drop(g);
                self.cv.notify_all();
                continue;
            }
            g.busy = true;
            drop(g);

            let outcome = self.run_job(&regs);

            let mut g = lock(&self.engine);
            g.busy = false;
            // Advance only if nobody (FLR, restore) rewrote the ring while the job ran.
            if (g.regs.head, g.regs.ring_base, g.regs.ring_size)
                == (regs.head, regs.ring_base, regs.ring_size)
            {
                g.regs.head = (regs.head + JOB_SIZE) % regs.ring_size;
                match outcome {
                    Ok(seqno) => {
                        g.regs.seqno = seqno;
                        g.regs.jobs_done = g.regs.jobs_done.wrapping_add(1);
                    }
                    Err(code) => g.regs.error = code,
                }
            }
            drop(g);
            self.cv.notify_all();
        }
    }

    /// Executes the job at the ring's head; returns its seqno or an error code.
    fn run_job(&self, r: &EngineRegs) -> Result<u32, u32> {
        let mut d = [0u8; JOB_SIZE as usize];
        self.ggtt_read(u64::from(r.ring_base) + u64::from(r.head), &mut d)?;
        let dw =
            |i: usize| u32::from_le_bytes([d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]]);
        let (op, seqno) = (dw(0), dw(1));
        match op {
            OP_NOP => {}
            OP_FILL => {
                let (dst, len, pat) = (dw(2), dw(3), dw(4));
                if len > JOB_MAX_LEN {
                    return Err(ERR_LEN);
                }
                let chunk: Vec<u8> = pat
                    .to_le_bytes()
                    .iter()
                    .copied()
                    .cycle()
                    .take((len as usize).min(64 << 10))
                    .collect();
                let mut done = 0usize;
                while done < len as usize {
                    let n = chunk.len().min(len as usize - done);
                    // Keep the pattern phase: chunk is a multiple of 4 bytes long.
                    self.ggtt_write(u64::from(dst) + done as u64, &chunk[..n])?;
                    done += n;
                }
            }
            OP_COPY => {
                let (src, dst, len) = (dw(2), dw(3), dw(4));
                if len > JOB_MAX_LEN {
                    return Err(ERR_LEN);
                }
                // Whole-source read first: memmove semantics for overlapping ranges.
                let mut buf = vec![0u8; len as usize];
                self.ggtt_read(u64::from(src), &mut buf)?;
                self.ggtt_write(u64::from(dst), &buf)?;
            }
            OP_HASH => {
                let (src, len, dst) = (dw(2), dw(3), dw(4));
                if len > JOB_MAX_LEN {
                    return Err(ERR_LEN);
                }
                let mut buf = vec![0u8; len as usize];
                self.ggtt_read(u64::from(src), &mut buf)?;
                self.ggtt_write(u64::from(dst), &guc::fnv1a(&buf).to_le_bytes())?;
            }
            _ => return Err(ERR_BAD_OP),
        }
        Ok(seqno)
    }

    /// PF side: stops the engine and waits for the job in progress to finish.
    pub(crate) fn engine_pause(&self) {
        let mut g = lock(&self.engine);
        g.running = false;
        let (_g, _) = wait_until(&self.cv, g, None, |e| !e.busy);
    }

    /// PF side: lets the engine run queued jobs.
    pub(crate) fn engine_resume(&self) {
        let mut e = lock(&self.engine);
        e.running = true;
        e.parked = false;
        drop(e);
        self.cv.notify_all();
    }

    /// Whether the engine is running (not paused by the PF).
    pub fn engine_running(&self) -> bool {
        lock(&self.engine).running
    }

    /// A snapshot of the engine registers.
    pub fn engine_regs(&self) -> EngineRegs {
        lock(&self.engine).regs
    }

    /// Waits until the ring is empty (or the engine is paused/held), up to `timeout`.
    /// Returns whether the ring drained.
    pub fn wait_engine_idle(&self, timeout: Duration) -> bool {
        let g = lock(&self.engine);
        let (g, _) = wait_until(&self.cv, g, Some(Instant::now() + timeout), |e| {
            !e.busy && (e.regs.head == e.regs.tail || !e.running || e.fixup_hold)
        });
        g.regs.head == g.regs.tail
    }

    /// Waits, up to `timeout`, until the engine has settled: it has seen every change made so
    /// far and has nothing it may run (the ring is empty, or the VF is paused or held for
    /// fixups). A test's way to know that work which must not run did not, without sleeping.
    pub fn wait_engine_settled(&self, timeout: Duration) -> bool {
        let g = lock(&self.engine);
        let (_g, settled) = wait_until(&self.cv, g, Some(Instant::now() + timeout), |e| {
            e.parked && !e.busy
        });
        settled
    }

    /// Marks the VF as restored from a migration: the engine holds until `FIXUPS_DONE`.
    pub(crate) fn set_migrated(&self) {
        lock(&self.engine).fixup_hold = true;
        self.cv.notify_all();
    }
}
