//! The PF: configuration, VF enabling and provisioning, and the migration-support rule.

pub use crate::control::Timeouts;
use crate::control::{Control, CtlState, GtWorker, VfCtl};
use crate::hw::ggtt::{GgttAllocator, GgttRange};
use crate::hw::guc::{Faults, GucVersion};
use crate::hw::mem::{Backing, Commit};
use crate::hw::VfHw;
use crate::migration::Sessions;
use crate::platform::Platform;
use crate::sync::lock;
use mig_io::Errno;
use std::sync::{Arc, Mutex, RwLock};

/// GGTT space the PF keeps for itself at the bottom of the GGTT.
pub const PF_GGTT_RESERVED: u64 = 256 << 20;
/// Default GGTT size of a VF.
pub const DEFAULT_VF_GGTT: u64 = 64 << 20;
/// Default migration VRAM chunk: small enough that nothing big is ever in flight, large enough
/// that headers are noise (24 bytes per 64 MiB). Any value up to 512 MiB keeps the wire format.
pub const DEFAULT_VRAM_CHUNK: u64 = 64 << 20;
/// Upstream's largest VRAM chunk.
pub const MAX_VRAM_CHUNK: u64 = 512 << 20;

/// How to build a PF.
#[derive(Clone, Debug)]
pub struct PfConfig {
    pub platform: Platform,
    /// PCI device id; must be one of the platform's.
    pub device_id: u16,
    pub revision: u8,
    /// GuC firmware version of each GT (primary, media).
    pub guc_versions: Vec<GucVersion>,
    /// Memory-based interrupts available.
    pub memirq: bool,
    /// Debug override: allow migration even when prerequisites are missing (logged).
    pub force_migration: bool,
    /// Total LMEM (discrete parts only).
    pub lmem_size: u64,
    /// GGTT size (4 GiB on these parts).
    pub ggtt_size: u64,
    pub timeouts: Timeouts,
    /// VRAM chunk size of the migration stream.
    pub vram_chunk: u64,
    /// The device runs the xe driver in SR-IOV PF mode (false: a native, non-PF device).
    pub sriov_pf: bool,
    /// How each VF's LMEM is committed: lazily (default), or reserved at provisioning and
    /// mapped, as real VRAM is (see [`crate::hw::mem::Commit`]).
    pub lmem_commit: Commit,
    /// Offer PRE_COPY (ours): saves that open while the VF runs, with LMEM dirty tracking.
    pub pre_copy: bool,
}

impl PfConfig {
    /// Defaults for a platform: first device id, GuC 70.54.0, memirq, 16 GiB LMEM on BMG.
    pub fn new(platform: Platform) -> PfConfig {
        PfConfig {
            platform,
            device_id: platform.default_device_id(),
            revision: platform.default_revision(),
            guc_versions: vec![GucVersion::MIGRATION_MIN; platform.gt_count() as usize],
            memirq: true,
            force_migration: false,
            lmem_size: if platform.has_vram() { 16 << 30 } else { 0 },
            ggtt_size: 4 << 30,
            timeouts: Timeouts::default(),
            vram_chunk: DEFAULT_VRAM_CHUNK,
            sriov_pf: true,
            lmem_commit: Commit::Lazy,
            pre_copy: false,
        }
    }
}

impl PfConfig {
    /// Defaults for `platform`, with total LMEM sized for `vfs` VFs of `lmem_per_vf` each on
    /// discrete parts (ignored on integrated ones). `EINVAL` if the product overflows.
    pub fn sized_for(platform: Platform, vfs: u32, lmem_per_vf: u64) -> Result<PfConfig, Errno> {
        let mut cfg = PfConfig::new(platform);
        if platform.has_vram() {
            cfg.lmem_size = lmem_per_vf
                .checked_mul(u64::from(vfs))
                .ok_or(Errno::EINVAL)?;
        }
        Ok(cfg)
    }
}

/// What each VF gets.
#[derive(Clone, Copy, Debug)]
pub struct VfProvision {
    /// LMEM quota (discrete parts; must be 0 on integrated ones). A multiple of 4 KiB.
    pub lmem: u64,
    /// GGTT range size (a multiple of 4 KiB).
    pub ggtt: u64,
}

impl VfProvision {
    /// Equal LMEM shares for `n` VFs on `pf` (none on integrated parts), default GGTT.
    pub fn fair_share(pf: &PfConfig, n: u32) -> VfProvision {
        let lmem = if pf.platform.has_vram() && n > 0 {
            (pf.lmem_size / u64::from(n)) & !((2 << 20) - 1)
        } else {
            0
        };
        VfProvision {
            lmem,
            ggtt: DEFAULT_VF_GGTT,
        }
    }
}

/// One VF as the PF sees it.
pub struct Vf {
    vfid: u32,
    /// The VF's hardware.
    pub hw: Arc<VfHw>,
    pub(crate) ctl: Arc<VfCtl>,
    /// PF migration lock: the VF's save or restore session.
    pub(crate) mig: Sessions,
}

impl Vf {
    pub fn vfid(&self) -> u32 {
        self.vfid
    }
    /// Control state on every GT.
    pub fn control_states(&self) -> Vec<CtlState> {
        self.ctl.states()
    }
}

impl std::fmt::Debug for Vf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vf")
            .field("vfid", &self.vfid)
            .finish_non_exhaustive()
    }
}

/// An emulated Xe PF.
pub struct XePf {
    cfg: PfConfig,
    faults: Arc<Faults>,
    /// Lock: the GGTT allocator.
    ggtt: Mutex<GgttAllocator>,
    /// Lock: the enabled VFs (index = vfid - 1). Taken briefly; never held across an operation.
    vfs: RwLock<Vec<Arc<Vf>>>,
    pub(crate) workers: Vec<GtWorker>,
}

impl std::fmt::Debug for XePf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XePf")
            .field("platform", &self.cfg.platform)
            .field("device_id", &format_args!("{:#06x}", self.cfg.device_id))
            .field("num_vfs", &self.num_vfs())
            .finish_non_exhaustive()
    }
}

impl XePf {
    /// A PF. `ENODEV` if the device id is not the platform's; `EINVAL` for a GuC version list
    /// that does not match the GT count, LMEM on an integrated part, or a bad chunk size.
    pub fn new(cfg: PfConfig) -> Result<Arc<XePf>, Errno> {
        if !cfg.platform.device_ids().contains(&cfg.device_id) {
            return Err(Errno::ENODEV);
        }
        if cfg.guc_versions.len() != cfg.platform.gt_count() as usize
            || (!cfg.platform.has_vram() && cfg.lmem_size != 0)
            || cfg.vram_chunk == 0
            || cfg.vram_chunk > MAX_VRAM_CHUNK
            || cfg.ggtt_size <= PF_GGTT_RESERVED
        {
            return Err(Errno::EINVAL);
        }
        let faults = Arc::new(Faults::default());
        let workers = (0..cfg.platform.gt_count())
            .map(|gt| GtWorker::start(gt, faults.clone()))
            .collect();
        Ok(Arc::new(XePf {
            ggtt: Mutex::new(GgttAllocator::new(
                PF_GGTT_RESERVED,
                cfg.ggtt_size,
                64 << 10,
            )),
            cfg,
            faults,
            vfs: RwLock::new(Vec::new()),
            workers,
        }))
    }

    /// A PF built from `cfg` with `n` VFs provisioned with `prov` (see [`XePf::new`] and
    /// [`XePf::enable_vfs`] for the errors).
    pub fn with_vfs(cfg: PfConfig, n: u32, prov: VfProvision) -> Result<Arc<XePf>, Errno> {
        let pf = XePf::new(cfg)?;
        pf.enable_vfs(n, prov)?;
        Ok(pf)
    }

    pub fn config(&self) -> &PfConfig {
        &self.cfg
    }
    pub fn platform(&self) -> Platform {
        self.cfg.platform
    }
    pub fn device_id(&self) -> u16 {
        self.cfg.device_id
    }
    pub fn revision(&self) -> u8 {
        self.cfg.revision
    }
    pub fn gt_count(&self) -> u8 {
        self.cfg.platform.gt_count()
    }
    /// Fault injection into the emulated GuC.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }
    pub(crate) fn faults_shared(&self) -> Arc<Faults> {
        self.faults.clone()
    }
    pub fn is_sriov_pf(&self) -> bool {
        self.cfg.sriov_pf
    }

    /// Whether VF migration is supported (SPEC §5): GuC ≥ 70.54.0 on every GT and memory-based
    /// interrupts; the debug override accepts missing prerequisites and logs what is missing.
    pub fn migration_supported(&self) -> bool {
        let mut missing = Vec::new();
        for (gt, v) in self.cfg.guc_versions.iter().enumerate() {
            if *v < GucVersion::MIGRATION_MIN {
                missing.push(format!(
                    "GuC {v} on gt{gt} (need {})",
                    GucVersion::MIGRATION_MIN
                ));
            }
        }
        if !self.cfg.memirq {
            missing.push("memory-based interrupts".to_string());
        }
        if missing.is_empty() {
            return true;
        }
        if self.cfg.force_migration {
            tracing::warn!(missing = %missing.join(", "),
                "VF migration forced on by debug override despite missing prerequisites");
            return true;
        }
        tracing::info!(missing = %missing.join(", "), "VF migration not supported");
        false
    }

    /// Enables `n` VFs, each provisioned with `prov`. `EBUSY` if VFs are already enabled;
    /// `ENOSPC` when the GGTT or LMEM cannot hold them; `EINVAL` for LMEM on an integrated part,
    /// unaligned sizes or `n == 0`; `EPERM` on a device that is not a PF.
    pub fn enable_vfs(&self, n: u32, prov: VfProvision) -> Result<(), Errno> {
        if !self.cfg.sriov_pf {
            return Err(Errno::EPERM);
        }
        let mut vfs = self.vfs.write().unwrap_or_else(|p| p.into_inner());
        if !vfs.is_empty() {
            return Err(Errno::EBUSY);
        }
        if n == 0
            || n > 63
            || prov.lmem % 4096 != 0
            || prov.ggtt % 4096 != 0
            || (!self.cfg.platform.has_vram() && prov.lmem != 0)
        {
            return Err(Errno::EINVAL);
        }
        let lmem_total = prov.lmem.checked_mul(u64::from(n)).ok_or(Errno::ENOSPC)?;
        if lmem_total > self.cfg.lmem_size {
            return Err(Errno::ENOSPC);
        }
        let mut ranges: Vec<GgttRange> = Vec::new();
        {
            let mut alloc = lock(&self.ggtt);
            for _ in 0..n {
                match alloc.alloc(prov.ggtt) {
                    Ok(r) => ranges.push(r),
                    Err(e) => {
                        for r in ranges {
                            alloc.free(r);
                        }
                        return Err(e);
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(n as usize);
        for (i, range) in ranges.iter().enumerate() {
            let vfid = i as u32 + 1;
            let lmem = if prov.lmem > 0 {
                let name = format!("xe-vf{vfid}-lmem");
                match Backing::with_commit(&name, prov.lmem, self.cfg.lmem_commit) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        let mut alloc = lock(&self.ggtt);
                        for r in &ranges {
                            alloc.free(*r);
                        }
                        for v in &out {
                            let v: &Arc<Vf> = v;
                            v.hw.shutdown();
                        }
                        return Err(e);
                    }
                }
            } else {
                None
            };
            let hw = VfHw::new(
                vfid,
                self.gt_count(),
                *range,
                lmem,
                u64::from(self.cfg.device_id) << 16 | u64::from(vfid),
            );
            out.push(Arc::new(Vf {
                vfid,
                hw,
                ctl: VfCtl::new(self.gt_count()),
                mig: Sessions::default(),
            }));
        }
        tracing::info!(n, lmem = prov.lmem, ggtt = prov.ggtt, "VFs enabled");
        *vfs = out;
        Ok(())
    }

    /// Disables every VF (engines stopped, GGTT ranges freed, LMEM released).
    pub fn disable_vfs(&self) {
        let vfs = std::mem::take(&mut *self.vfs.write().unwrap_or_else(|p| p.into_inner()));
        let mut alloc = lock(&self.ggtt);
        for vf in vfs {
            vf.mig.cancel();
            vf.hw.shutdown();
            alloc.free(vf.hw.ggtt());
        }
    }

    /// Number of enabled VFs.
    pub fn num_vfs(&self) -> u32 {
        self.vfs.read().unwrap_or_else(|p| p.into_inner()).len() as u32
    }

    /// VF `vfid` (1-based); `EINVAL` when out of range.
    pub fn vf(&self, vfid: u32) -> Result<Arc<Vf>, Errno> {
        let vfs = self.vfs.read().unwrap_or_else(|p| p.into_inner());
        vfid.checked_sub(1)
            .and_then(|i| vfs.get(i as usize))
            .cloned()
            .ok_or(Errno::EINVAL)
    }

    pub(crate) fn control<'a>(&'a self, vf: &'a Vf) -> Control<'a> {
        Control {
            workers: &self.workers,
            timeouts: self.cfg.timeouts,
            vfid: vf.vfid,
            hw: &vf.hw,
            ctl: &vf.ctl,
        }
    }

    /// The hardware side of a VF function-level reset: the GuC tells the PF, which starts FLR
    /// processing on every GT (completion: [`crate::SriovVfio::wait_flr_done`]).
    pub fn vf_flr_event(&self, vfid: u32) -> Result<(), Errno> {
        let vf = self.vf(vfid)?;
        vf.mig.cancel();
        self.control(&vf).flr_start()
    }
}

impl Drop for XePf {
    fn drop(&mut self) {
        self.disable_vfs();
    }
}
