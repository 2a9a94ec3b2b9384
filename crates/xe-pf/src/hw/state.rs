//! The hardware's plain state: engine registers, scratch registers, GuC context words.

use super::guc::CONTEXT_DWORDS;

/// The engine's registers and scheduling state (what the GuC saves for the primary GT).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineRegs {
    pub ring_base: u32,
    pub ring_size: u32,
    pub head: u32,
    pub tail: u32,
    pub seqno: u32,
    pub error: u32,
    pub doorbells: u32,
    pub jobs_done: u32,
}

impl EngineRegs {
    pub(super) const DWORDS: usize = 8;
    pub(super) fn to_dwords(self) -> [u32; Self::DWORDS] {
        [
            self.ring_base,
            self.ring_size,
            self.head,
            self.tail,
            self.seqno,
            self.error,
            self.doorbells,
            self.jobs_done,
        ]
    }
    pub(super) fn from_dwords(d: &[u32]) -> Option<EngineRegs> {
        let d: &[u32; Self::DWORDS] = d.get(..Self::DWORDS)?.try_into().ok()?;
        Some(EngineRegs {
            ring_base: d[0],
            ring_size: d[1],
            head: d[2],
            tail: d[3],
            seqno: d[4],
            error: d[5],
            doorbells: d[6],
            jobs_done: d[7],
        })
    }
}

/// What the engine lock protects.
#[derive(Debug, Default)]
pub(super) struct EngineState {
    pub(super) regs: EngineRegs,
    /// The PF has the VF running (not paused, stopped or in FLR).
    pub(super) running: bool,
    /// Restored from a migration; nothing runs until the VF writes `FIXUPS_DONE`.
    pub(super) fixup_hold: bool,
    /// A job is executing outside the lock.
    pub(super) busy: bool,
    pub(super) shutdown: bool,
    /// The engine thread has looked at the state as it is now and found nothing it may run;
    /// every change that could give it work clears this.
    pub(super) parked: bool,
}

/// Scratch registers (MMIO packet content).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SwFlags {
    pub primary: [u32; 4],
    pub media: [u32; 4],
}

/// Per-GT firmware context the GuC keeps for the VF (opaque words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GucContext(pub Vec<u32>);

pub(super) fn context_words(seed: u64, gt: u8) -> GucContext {
    // Deterministic per (seed, gt) so that two runs are comparable, distinct per VF.
    let mut x = seed ^ (u64::from(gt) << 56) ^ 0x9e37_79b9_7f4a_7c15;
    GucContext(
        (0..CONTEXT_DWORDS)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u32
            })
            .collect(),
    )
}
