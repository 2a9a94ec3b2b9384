//! The emulated hardware of a VF — what the PF driver drives, as the real driver drives real
//! hardware: BAR0 registers ([`regs`]), the GGTT window and PTE format ([`ggtt`]), the job
//! engine ([`engine`]), the GuC firmware's per-VF state ([`guc`]) and memory backings
//! ([`mem`]). [`VfHw`] is the interface: the guest's side (MMIO, memory through the GGTT) is
//! public; the PF's side (pause and resume the engine, load and save state, FLR) is
//! `pub(crate)`. Nothing here knows the PF driver, its control state machine or the stream.
//!
//! # BAR0 register map (16 MiB)
//!
//! | offset | name | access | meaning |
//! |---|---|---|---|
//! | `0x190240 + 4n` (n = 0..3) | `VF_SW_FLAG(n)` | RW | scratch registers of the primary GT (upstream offsets) |
//! | `0x190310 + 4n` (n = 0..3) | `MED_VF_SW_FLAG(n)` | RW | scratch registers of the media GT (upstream offsets) |
//! | `0x2000` | `RING_BASE` | RW | GGTT address of the job ring (32-byte aligned) |
//! | `0x2004` | `RING_SIZE` | RW | ring size in bytes: a power of two, 64 ..= 1 MiB |
//! | `0x2008` | `RING_HEAD` | RO | byte offset of the next job to execute |
//! | `0x200c` | `RING_TAIL` | RW | doorbell: byte offset past the last submitted job |
//! | `0x2010` | `SEQNO` | RO | seqno of the last completed job |
//! | `0x2014` | `STATUS` | RO | bit 0 idle, bit 1 paused by the PF, bit 2 held for GGTT fixups, bit 3 error |
//! | `0x2018` | `ERROR` | RW | last error (1 bad opcode, 2 GGTT fault, 3 bad length, 4 bad ring); write clears |
//! | `0x201c` | `DOORBELLS` | RO | number of tail writes since FLR |
//! | `0x2020`/`0x2024` | `GGTT_BASE_LO/HI` | RO | base of this VF's GGTT range *now* |
//! | `0x2028`/`0x202c` | `GGTT_SIZE_LO/HI` | RO | size of the range |
//! | `0x2030` | `MIGRATED` | RO | bit 0: restored from a migration stream; the engine holds until fixups are done |
//! | `0x2034` | `FIXUPS_DONE` | WO | write 1 after relocating GGTT references: clears `MIGRATED`, the engine runs |
//! | `0x2038` | `JOBS_DONE` | RO | jobs completed since FLR |
//! | `0x800000 + 8i` | `GGTT[i]` | RW | PTE of GGTT page *i* (address `i * 4096`); only the VF's own range is writable, the VFID field is forced to the VF's |
//!
//! Other offsets read as zero and ignore writes. Registers take 4-byte accesses; the GGTT window
//! takes 4- and 8-byte accesses. Unaligned or odd-sized writes are ignored.
//!
//! # Jobs (32 bytes, little-endian dwords)
//!
//! | op | dw0 | dw1 | dw2 | dw3 | dw4 |
//! |---|---|---|---|---|---|
//! | NOP | 0 | seqno | | | |
//! | FILL | 1 | seqno | dst | len | u32 pattern |
//! | COPY | 2 | seqno | src | dst | len |
//! | HASH | 3 | seqno | src | len | dst (8-byte FNV-1a written) |
//!
//! Addresses are GGTT addresses of this VF's range; `len` ≤ 16 MiB. The engine runs only while the
//! VF is running (not paused by the PF, not held for fixups): while it is paused, doorbells still
//! move the tail, and the queued jobs run in order after resume.
//!
//! # GGTT relocation contract (upstream's RESFIX idea)
//!
//! After a restore the VF's range may sit at another GGTT base. The PF sets `MIGRATED`; the engine
//! executes nothing until the VF's driver has read `GGTT_BASE`, rewritten every GGTT address it
//! holds (ring base, queued jobs) by the difference, and written 1 to `FIXUPS_DONE`.

pub mod dirty;
pub mod engine;
mod firmware;
pub mod ggtt;
pub mod guc;
pub mod mem;
mod mmio;
pub mod regs;
mod state;
mod vf;
mod window;

pub use regs::*;
pub use state::{EngineRegs, GucContext, SwFlags};
pub use vf::VfHw;
