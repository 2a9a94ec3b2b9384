//! BAR0: the register map (see [`crate::hw`]); the decode is in `mmio`.

/// BAR0 size.
pub const BAR0_SIZE: u64 = 16 << 20;
/// `VF_SW_FLAG(n)`.
pub const fn vf_sw_flag(n: u64) -> u64 {
    0x190240 + 4 * n
}
/// `MED_VF_SW_FLAG(n)`.
pub const fn med_vf_sw_flag(n: u64) -> u64 {
    0x190310 + 4 * n
}
pub const RING_BASE: u64 = 0x2000;
pub const RING_SIZE: u64 = 0x2004;
pub const RING_HEAD: u64 = 0x2008;
pub const RING_TAIL: u64 = 0x200c;
pub const SEQNO: u64 = 0x2010;
pub const STATUS: u64 = 0x2014;
pub const ERROR: u64 = 0x2018;
pub const DOORBELLS: u64 = 0x201c;
pub const GGTT_BASE_LO: u64 = 0x2020;
pub const GGTT_BASE_HI: u64 = 0x2024;
pub const GGTT_SIZE_LO: u64 = 0x2028;
pub const GGTT_SIZE_HI: u64 = 0x202c;
pub const MIGRATED: u64 = 0x2030;
pub const FIXUPS_DONE: u64 = 0x2034;
pub const JOBS_DONE: u64 = 0x2038;
/// Start of the GGTT PTE window.
pub const GGTT_WINDOW: u64 = 0x80_0000;

pub const STATUS_IDLE: u32 = 1 << 0;
pub const STATUS_PAUSED: u32 = 1 << 1;
pub const STATUS_FIXUP_HOLD: u32 = 1 << 2;
pub const STATUS_ERROR: u32 = 1 << 3;

pub const OP_NOP: u32 = 0;
pub const OP_FILL: u32 = 1;
pub const OP_COPY: u32 = 2;
pub const OP_HASH: u32 = 3;
/// Size of a job descriptor.
pub const JOB_SIZE: u32 = 32;
/// Largest `len` of a job.
pub const JOB_MAX_LEN: u32 = 16 << 20;

pub const ERR_BAD_OP: u32 = 1;
pub const ERR_FAULT: u32 = 2;
pub const ERR_LEN: u32 = 3;
pub const ERR_RING: u32 = 4;
