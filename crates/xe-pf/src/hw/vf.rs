//! [`VfHw`]: one VF's hardware — the state of every block, its construction, FLR.

use super::dirty::DirtyMap;
use super::ggtt::GgttRange;
use super::mem::Backing;
use super::state::{context_words, EngineRegs, EngineState, GucContext, SwFlags};
use crate::sync::{lock, wait_until};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

/// The hardware of one VF.
pub struct VfHw {
    pub(super) vfid: u32,
    pub(super) gt_count: u8,
    pub(super) ggtt: GgttRange,
    /// Seed of the GuC context words (fresh ones after an FLR).
    pub(super) seed: u64,
    pub(super) lmem: Option<Arc<Backing>>,
    /// Which LMEM granules were written while tracking (see [`super::dirty`]).
    pub(super) dirty: DirtyMap,
    /// The VF's system memory (guest RAM) for pages whose PTE has no LM bit. Attached by whoever
    /// plays the VMM; on integrated parts every page lives there.
    pub(super) sysmem: RwLock<Option<Arc<Backing>>>,
    /// Lock: the VF's GGTT PTEs (its range only).
    pub(super) ptes: Mutex<Vec<u64>>,
    /// Lock: the scratch registers.
    pub(super) flags: Mutex<SwFlags>,
    /// Lock: the GuC's per-GT context words for this VF.
    pub(super) guc_ctx: Mutex<Vec<GucContext>>,
    /// Lock: engine registers and run state. `cv` signals every change.
    pub(super) engine: Mutex<EngineState>,
    pub(super) cv: Condvar,
    /// Lock: the engine thread's handle, taken once to join it on shutdown.
    pub(super) thread: Mutex<Option<JoinHandle<()>>>,
    /// Set when an MMIO or job touched something invalid (diagnostics only).
    pub(super) saw_bad_access: AtomicBool,
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
            dirty: DirtyMap::new(lmem.as_ref().map_or(0, |l| l.size())),
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

    /// The dirty tracking of this VF's LMEM.
    pub fn dirty(&self) -> &DirtyMap {
        &self.dirty
    }

    /// A device-side write of LMEM (a BAR2 region write): written, then marked dirty.
    pub fn lmem_write(&self, offset: u64, data: &[u8]) -> Result<(), mig_io::Errno> {
        let l = self.lmem.as_ref().ok_or(mig_io::Errno::EINVAL)?;
        l.write(offset, data)?;
        self.dirty.mark(offset, data.len() as u64);
        Ok(())
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
