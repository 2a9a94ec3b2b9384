//! VF hardware: BAR0 registers, the GGTT window, LMEM, system memory and the job engine.
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

use crate::ggtt::{self, GgttRange, GGTT_PAGE};
use crate::guc::{self, CONTEXT_DWORDS};
use crate::mem::Backing;
use crate::sync::{lock, wait_until};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vfio_core::Errno;

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
    const DWORDS: usize = 8;
    fn to_dwords(self) -> [u32; Self::DWORDS] {
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
    fn from_dwords(d: &[u32]) -> Option<EngineRegs> {
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
struct EngineState {
    regs: EngineRegs,
    /// The PF has the VF running (not paused, stopped or in FLR).
    running: bool,
    /// Restored from a migration; nothing runs until the VF writes `FIXUPS_DONE`.
    fixup_hold: bool,
    /// A job is executing outside the lock.
    busy: bool,
    shutdown: bool,
}

/// Per-GT firmware context the GuC keeps for the VF (opaque words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GucContext(pub Vec<u32>);

/// Scratch registers (MMIO packet content).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SwFlags {
    pub primary: [u32; 4],
    pub media: [u32; 4],
}

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

fn context_words(seed: u64, gt: u8) -> GucContext {
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
        drop(e);
        self.cv.notify_all();
    }

    // ---- GGTT ---------------------------------------------------------------------------

    fn read_pte_global(&self, idx: usize) -> u64 {
        let addr = idx as u64 * GGTT_PAGE;
        if !self.ggtt.contains(addr, GGTT_PAGE) {
            return 0;
        }
        let i = ((addr - self.ggtt.base) / GGTT_PAGE) as usize;
        lock(&self.ptes).get(i).copied().unwrap_or(0)
    }

    fn write_pte_half(&self, idx: usize, hi: bool, v: u32) {
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
            *p = ggtt::pte_with_vfid(raw, self.vfid);
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
            *d = ggtt::pte_with_vfid(*s, self.vfid);
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
        if pte & ggtt::PTE_PRESENT == 0 {
            return Err(ERR_FAULT);
        }
        let in_page = gaddr % GGTT_PAGE;
        let off = (pte & ggtt::PTE_ADDR_MASK) + in_page;
        let left = GGTT_PAGE - in_page;
        let mem = if pte & ggtt::PTE_LM != 0 {
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

    fn engine_loop(self: Arc<Self>) {
        loop {
            let g = lock(&self.engine);
            let (mut g, _) = wait_until(&self.cv, g, None, |e| {
                e.shutdown || (e.running && !e.fixup_hold && e.regs.head != e.regs.tail)
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
        lock(&self.engine).running = true;
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

    /// Marks the VF as restored from a migration: the engine holds until `FIXUPS_DONE`.
    pub(crate) fn set_migrated(&self) {
        lock(&self.engine).fixup_hold = true;
        self.cv.notify_all();
    }

    // ---- GuC state ----------------------------------------------------------------------

    /// The GuC's VF state blob for `gt` (the GUC packet's payload).
    pub fn guc_save(&self, gt: u8) -> Result<Vec<u8>, Errno> {
        if gt >= self.gt_count {
            return Err(Errno::EINVAL);
        }
        let mut words = Vec::with_capacity(EngineRegs::DWORDS + CONTEXT_DWORDS);
        if gt == crate::platform::PRIMARY_GT {
            words.extend_from_slice(&lock(&self.engine).regs.to_dwords());
        }
        words.extend_from_slice(&lock(&self.guc_ctx)[gt as usize].0);
        Ok(guc::encode_blob(gt, &words))
    }

    /// The blob size the firmware reports for `gt`.
    pub fn guc_state_size(&self, gt: u8) -> Result<u64, Errno> {
        Ok(self.guc_save(gt)?.len() as u64)
    }

    /// Loads a GuC VF state blob for `gt`. `EINVAL` if larger than the firmware's maximum,
    /// `EIO` if the firmware rejects it.
    pub fn guc_restore(&self, gt: u8, blob: &[u8]) -> Result<(), Errno> {
        if gt >= self.gt_count {
            return Err(Errno::EINVAL);
        }
        let words = guc::decode_blob(gt, blob)?;
        let ctx = if gt == crate::platform::PRIMARY_GT {
            let regs = EngineRegs::from_dwords(&words).ok_or(Errno::EIO)?;
            let ctx = words[EngineRegs::DWORDS..].to_vec();
            if ctx.len() != CONTEXT_DWORDS {
                return Err(Errno::EIO);
            }
            let mut e = lock(&self.engine);
            e.regs = regs;
            ctx
        } else {
            if words.len() != CONTEXT_DWORDS {
                return Err(Errno::EIO);
            }
            words
        };
        lock(&self.guc_ctx)[gt as usize] = GucContext(ctx);
        self.cv.notify_all();
        Ok(())
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
