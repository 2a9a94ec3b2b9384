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

pub mod engine;
pub mod ggtt;
pub mod guc;
pub mod mem;
pub mod regs;

pub use engine::EngineRegs;
use engine::EngineState;
use ggtt::GgttRange;
use guc::context_words;
pub use guc::GucContext;
use mem::Backing;
pub use regs::*;

use crate::sync::{lock, wait_until};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

/// The hardware of one VF.
pub struct VfHw {
    vfid: u32,
    gt_count: u8,
    ggtt: GgttRange,
    /// Seed of the GuC context words (fresh ones after an FLR).
    seed: u64,
    lmem: Option<Arc<Backing>>,
    /// The VF's system memory (guest RAM) for pages whose PTE has no LM bit. Attached by whoever
    /// plays the VMM; on integrated parts every page lives there.
    sysmem: RwLock<Option<Arc<Backing>>>,
    /// Lock: the VF's GGTT PTEs (its range only).
    ptes: Mutex<Vec<u64>>,
    /// Lock: the scratch registers.
    flags: Mutex<SwFlags>,
    /// Lock: the GuC's per-GT context words for this VF.
    guc_ctx: Mutex<Vec<GucContext>>,
    /// Lock: engine registers and run state. `cv` signals every change.
    engine: Mutex<EngineState>,
    cv: Condvar,
    /// Lock: the engine thread's handle, taken once to join it on shutdown.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set when an MMIO or job touched something invalid (diagnostics only).
    saw_bad_access: AtomicBool,
}

impl std::fmt::Debug for VfHw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfHw")
            .field("vfid", &self.vfid)
            .field("ggtt", &self.ggtt)
            .finish_non_exhaustive()
    }
}

impl VfHw {
    /// Builds a VF's hardware and starts its engine thread.
    pub(crate) fn new(
        vfid: u32,
        gt_count: u8,
        ggtt: GgttRange,
        lmem: Option<Backing>,
        seed: u64,
    ) -> Arc<VfHw> {
        let hw = Arc::new(VfHw {
            vfid,
            gt_count,
            ggtt,
            lmem: lmem.map(Arc::new),
            seed,
            sysmem: RwLock::new(None),
            ptes: Mutex::new(vec![0; ggtt.ptes()]),
            flags: Mutex::new(SwFlags::default()),
            guc_ctx: Mutex::new((0..gt_count).map(|gt| context_words(seed, gt)).collect()),
            engine: Mutex::new(EngineState {
                running: true,
                ..Default::default()
            }),
            cv: Condvar::new(),
            thread: Mutex::new(None),
            saw_bad_access: AtomicBool::new(false),
        });
        let worker = hw.clone();
        let t = std::thread::Builder::new()
            .name(format!("xe-vf{vfid}-engine"))
            .spawn(move || worker.engine_loop())
            .ok();
        *lock(&hw.thread) = t;
        hw
    }

    /// Stops the engine thread (on VF disable).
    pub(crate) fn shutdown(&self) {
        lock(&self.engine).shutdown = true;
        self.cv.notify_all();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    pub fn vfid(&self) -> u32 {
        self.vfid
    }
    pub fn ggtt(&self) -> GgttRange {
        self.ggtt
    }
    pub fn lmem(&self) -> Option<&Backing> {
        self.lmem.as_deref()
    }
    pub fn lmem_size(&self) -> u64 {
        self.lmem.as_ref().map_or(0, |l| l.size())
    }

    /// Attaches (or detaches) the VF's system memory.
    pub fn attach_sysmem(&self, mem: Option<Arc<Backing>>) {
        *self.sysmem.write().unwrap_or_else(|p| p.into_inner()) = mem;
    }

    /// The attached system memory.
    pub fn sysmem(&self) -> Option<Arc<Backing>> {
        self.sysmem
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// FLR: clears the VF's runtime state — registers, GuC VF state, engine queue — and leaves
    /// the engine ready. LMEM contents and the GGTT provisioning are not touched.
    pub(crate) fn flr_clear(&self) {
        {
            let mut g = lock(&self.engine);
            g.running = false;
            let (mut g, _) = wait_until(&self.cv, g, None, |e| !e.busy);
            g.regs = EngineRegs::default();
            g.fixup_hold = false;
        }
        *lock(&self.flags) = SwFlags::default();
        let mut ctx = lock(&self.guc_ctx);
        for (gt, c) in ctx.iter_mut().enumerate() {
            *c = context_words(self.seed.rotate_left(17) ^ 0xf1f1, gt as u8);
        }
    }

    /// Whether a guest access hit something invalid (diagnostics).
    pub fn saw_bad_access(&self) -> bool {
        self.saw_bad_access.load(Ordering::Relaxed)
    }
}
