//! # xe-vfio-pci — the VFIO PCI variant driver for Intel Xe SR-IOV VFs
//!
//! The twin of `drivers/vfio/pci/xe/main.c`. It binds Intel Xe VFs (PTL, WCL, BMG ids), finds
//! the PF and the VF's 1-based id, and — only if the PF supports VF migration — installs
//! migration ops that map each VFIO arc to one PF call. Everything else lives elsewhere: the
//! state walk, stream rules and deferred reset in `vfio-core`, config space and BAR dispatch in
//! `vfio-pci-core`, and the VF control and migration data in the PF (`xe-pf`).
//!
//! | hook | what it does |
//! |---|---|
//! | probe | id table; a non-VF gets plain vfio-pci behaviour; a VF needs an xe PF (`ENODEV`) |
//! | open / close | migration state RUNNING / reset (streams disabled) |
//! | reset_prepare | `flr_prepare(vfid)` |
//! | reset_done | `wait_flr_done(vfid)` (failure only logged), then the core's deferred reset |
//! | step | the arc table of SPEC §2, nothing more; with a PF that tracks dirty LMEM (ours) also the PRE_COPY arcs |
//! | refused | `error(vfid)`: the PF stops the VF until an FLR |
//! | data_size | `stop_copy_size(vfid)` (an errno stays an errno) |
//!
//! Why STOP and RUNNING_P2P share handling: on this hardware a paused VF takes no new work and
//! still accepts MMIO, which is what both states promise; the arcs between them do nothing.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use vfio_core::{
    DataSink, DataSource, DataStream, DeviceState, Errno, MigrationCore, MigrationFlags,
    MigrationOps, ResumeData, SaveData,
};
use vfio_pci_core::{Bar, PciDevice, PciIdentity, PciVariant};
use xe_pf::hw::{VfHw, BAR0_SIZE};
use xe_pf::platform::{Platform, INTEL_VENDOR_ID};
use xe_pf::SriovVfio;

/// PCI class of these VFs: display controller, "other".
pub const CLASS_DISPLAY_OTHER: u32 = 0x038000;

/// The id table (`xe_vfio_pci_table`): every PTL, WCL and BMG device id.
pub fn id_table() -> impl Iterator<Item = (u16, u16)> {
    [Platform::Ptl, Platform::Wcl, Platform::Bmg]
        .into_iter()
        .flat_map(|p| p.device_ids().iter().map(|&d| (INTEL_VENDOR_ID, d)))
}

/// A PCI function offered to the driver (what the PCI core knows about it).
#[derive(Clone)]
pub struct PciFunction {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// `Some` for an SR-IOV VF.
    pub virtfn: Option<VirtFn>,
    /// The function's hardware (its BARs).
    pub hw: Arc<VfHw>,
    /// The function's reset line: what a function-level reset does in hardware. For an Xe VF
    /// the GuC reports the FLR to the PF, which processes it on every GT.
    pub flr: Arc<dyn Fn() -> Result<(), Errno> + Send + Sync>,
}

/// The SR-IOV side of a VF.
#[derive(Clone)]
pub struct VirtFn {
    /// 0-based VF index.
    pub index: u32,
    /// The PF, if the xe driver is bound to it.
    pub pf: Option<Arc<dyn SriovVfio>>,
}

impl PciFunction {
    /// VF `vfid` (1-based) of an emulated PF, as the PCI core would present it.
    pub fn vf_of(pf: &Arc<xe_pf::XePf>, vfid: u32) -> Result<PciFunction, Errno> {
        let vf = pf.vf(vfid)?;
        let line = pf.clone();
        Ok(PciFunction {
            flr: Arc::new(move || line.vf_flr_event(vfid)),
            vendor: INTEL_VENDOR_ID,
            device: pf.device_id(),
            revision: pf.revision(),
            virtfn: Some(VirtFn {
                index: vfid - 1,
                pf: Some(pf.clone() as Arc<dyn SriovVfio>),
            }),
            hw: vf.hw.clone(),
        })
    }
}

/// The driver's per-device state (`struct xe_vfio_pci_core_device`).
pub struct XeVfioPci {
    func: PciFunction,
    /// The PF and 1-based VF id; `None` for a function that is not a VF.
    xe: Option<(Arc<dyn SriovVfio>, u32)>,
    /// Present only when the PF supports VF migration.
    mig: Option<MigrationCore>,
}

/// The migration ops: one arc at a time, forwarded to the PF.
struct XeMigration {
    xe: Arc<dyn SriovVfio>,
    vfid: u32,
    /// PRE_COPY offered (ours: the PF tracks dirty LMEM).
    pre_copy: bool,
}

struct SaveFile(Arc<dyn SriovVfio>, u32);
struct ResumeFile(Arc<dyn SriovVfio>, u32);

impl SaveData for SaveFile {
    fn read_to(&mut self, max: usize, sink: &mut dyn DataSink) -> Result<usize, Errno> {
        self.0.data_read_to(self.1, max, sink)
    }

    fn precopy_info(&mut self) -> Result<(u64, u64), Errno> {
        self.0.precopy_info(self.1)
    }
}

impl ResumeData for ResumeFile {
    fn write_from(&mut self, n: usize, source: &mut dyn DataSource) -> Result<(), Errno> {
        self.0.data_write_from(self.1, n, source)
    }
}

impl MigrationOps for XeMigration {
    fn flags(&self) -> MigrationFlags {
        // Upstream: no PRE_COPY, the hardware cannot track dirty pages. Ours: offered when the
        // PF tracks dirty LMEM.
        let f = MigrationFlags::STOP_COPY | MigrationFlags::P2P;
        if self.pre_copy {
            f | MigrationFlags::PRE_COPY
        } else {
            f
        }
    }

    fn step(&self, cur: DeviceState, next: DeviceState) -> Result<Option<DataStream>, Errno> {
        use DeviceState::*;
        let (xe, vfid) = (&self.xe, self.vfid);
        match (cur, next) {
            (Running, RunningP2p) => xe.suspend_device(vfid).map(|()| None),
            (RunningP2p, Stop) | (Stop, RunningP2p) => Ok(None),
            (RunningP2p, Running) => xe.resume_device(vfid).map(|()| None),
            (Stop, StopCopy) => {
                xe.stop_copy_enter(vfid)?;
                Ok(Some(DataStream::Save(Box::new(SaveFile(xe.clone(), vfid)))))
            }
            // The core has already disabled the stream.
            (StopCopy, Stop) => xe.stop_copy_exit(vfid).map(|()| None),
            (Stop, Resuming) => {
                xe.resume_data_enter(vfid)?;
                Ok(Some(DataStream::Resume(Box::new(ResumeFile(
                    xe.clone(),
                    vfid,
                )))))
            }
            (Resuming, Stop) => xe.resume_data_exit(vfid).map(|()| None),
            // Ours: PRE_COPY, only when offered (the core never walks these arcs otherwise).
            (Running, PreCopy) | (RunningP2p, PreCopyP2p) => {
                xe.pre_copy_enter(vfid)?;
                Ok(Some(DataStream::Save(Box::new(SaveFile(xe.clone(), vfid)))))
            }
            (PreCopy, PreCopyP2p) => xe.suspend_device(vfid).map(|()| None),
            (PreCopyP2p, PreCopy) => xe.resume_device(vfid).map(|()| None),
            (PreCopyP2p, StopCopy) => xe.pre_copy_stop_copy(vfid).map(|()| None),
            // Cancelling: the VF stays as it is (running, or paused in RUNNING_P2P).
            (PreCopy, Running) | (PreCopyP2p, RunningP2p) => xe.pre_copy_exit(vfid).map(|()| None),
            _ => {
                tracing::error!(%cur, %next, "arc the core never produces for these flags");
                Err(Errno::EINVAL)
            }
        }
    }

    fn data_size(&self) -> Result<u64, Errno> {
        self.xe.stop_copy_size(self.vfid)
    }

    fn refused(&self, cur: DeviceState, new: DeviceState, err: Errno) {
        tracing::warn!(vfid = self.vfid, %cur, %new, %err, "state change refused; stopping the VF");
        if let Err(e) = self.xe.error(self.vfid) {
            tracing::warn!(vfid = self.vfid, %e, "PF could not stop the VF");
        }
    }
}

impl XeVfioPci {
    /// Probes `func` (driver-override binding). `ENODEV` when the id is not in the table, or
    /// when a VF's PF is not bound to the xe driver.
    pub fn probe(func: PciFunction) -> Result<PciDevice<XeVfioPci>, Errno> {
        if !id_table().any(|id| id == (func.vendor, func.device)) {
            return Err(Errno::ENODEV);
        }
        // VF init: every VF gets its PF and 1-based id; a non-VF is plain vfio-pci.
        let xe = match &func.virtfn {
            None => None,
            Some(v) => Some((v.pf.clone().ok_or(Errno::ENODEV)?, v.index + 1)),
        };
        // Migration init, separately: only when the PF supports it.
        let mig = match &xe {
            Some((pf, vfid)) if pf.migration_supported() => {
                Some(MigrationCore::new(Box::new(XeMigration {
                    xe: pf.clone(),
                    vfid: *vfid,
                    pre_copy: pf.pre_copy_supported(),
                }))?)
            }
            _ => None,
        };
        PciDevice::new(XeVfioPci { func, xe, mig })
    }

    /// The 1-based VF id, if this is a VF.
    pub fn vfid(&self) -> Option<u32> {
        self.xe.as_ref().map(|(_, v)| *v)
    }

    /// The function's hardware.
    pub fn hw(&self) -> &Arc<VfHw> {
        &self.func.hw
    }

    /// The LMEM BAR size: the quota rounded up to a power of two.
    fn bar2_size(&self) -> u64 {
        self.func.hw.lmem_size().next_power_of_two()
    }
}

impl PciVariant for XeVfioPci {
    fn identity(&self) -> PciIdentity {
        PciIdentity {
            vendor: self.func.vendor,
            device: self.func.device,
            revision: self.func.revision,
            class: CLASS_DISPLAY_OTHER,
            subsystem_vendor: INTEL_VENDOR_ID,
            subsystem: 0,
        }
    }

    fn bars(&self) -> [Option<Bar>; 6] {
        let mut b = [None; 6];
        b[0] = Some(Bar {
            size: BAR0_SIZE,
            prefetchable: false,
        });
        if self.func.hw.lmem_size() > 0 {
            b[2] = Some(Bar {
                size: self.bar2_size(),
                prefetchable: true,
            });
        }
        b
    }

    fn bar_read(&self, bar: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        match bar {
            0 => self.func.hw.mmio_read(offset, buf),
            2 => {
                let (l, n) = lmem_split(&self.func.hw, offset, buf.len())?;
                let (backed, beyond) = buf.split_at_mut(n);
                beyond.fill(0);
                if n > 0 {
                    l.read(offset, backed)?;
                }
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn bar_write(&self, bar: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        match bar {
            0 => self.func.hw.mmio_write(offset, data),
            2 => {
                let (_, n) = lmem_split(&self.func.hw, offset, data.len())?;
                if n > 0 {
                    // Through the device: marked dirty for PRE_COPY.
                    self.func.hw.lmem_write(offset, &data[..n])?;
                }
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn bar_fd(&self, bar: u32) -> Option<(BorrowedFd<'_>, u64)> {
        // Offered for mmap only when the quota fills the BAR: a client maps the whole region,
        // and pages past the end of the LMEM file would fault. Never while PRE_COPY is
        // offered: writes through a client's mapping never reach the device, so dirty
        // tracking could not see them — every access traps instead (`hw::dirty`).
        let pre_copy = self
            .mig
            .as_ref()
            .is_some_and(|m| m.flags().contains(MigrationFlags::PRE_COPY));
        match bar {
            2 if !pre_copy && self.func.hw.lmem_size() == self.bar2_size() => {
                self.func.hw.lmem().map(|l| (l.fd(), 0))
            }
            _ => None,
        }
    }

    fn reset_prepare(&self) {
        if let Some((xe, vfid)) = &self.xe {
            if let Err(e) = xe.flr_prepare(*vfid) {
                tracing::warn!(vfid, %e, "flr_prepare failed");
            }
        }
    }

    fn function_reset(&self) -> Result<(), Errno> {
        (self.func.flr)()
    }

    fn reset_done(&self) {
        if let Some((xe, vfid)) = &self.xe {
            if let Err(e) = xe.wait_flr_done(*vfid) {
                tracing::warn!(vfid, %e, "VF FLR processing did not complete");
            }
        }
        if let Some(core) = &self.mig {
            core.reset_done();
        }
    }

    fn open(&self) -> Result<(), Errno> {
        if let Some(core) = &self.mig {
            core.open();
        }
        Ok(())
    }

    /// Closing returns the VF to RUNNING. The kernel gets there through the function reset
    /// that follows close; this emulator keeps the VF's memory and registers across a client
    /// disconnect (documented), so it walks the real arcs back to RUNNING instead — cancelling
    /// a save, resuming a paused VF — and falls back to an FLR only if that walk fails (an
    /// incomplete restore, say).
    fn close(&self) {
        let Some(core) = &self.mig else {
            return;
        };
        if core.state() != DeviceState::Running {
            if let Err(e) = core.set_state(DeviceState::Running) {
                tracing::warn!(vfid = ?self.vfid(), %e, "close: resetting the VF instead");
                self.reset_prepare();
                if let Err(e) = (self.func.flr)() {
                    tracing::warn!(vfid = ?self.vfid(), %e, "close: FLR failed");
                }
                self.reset_done();
            }
        }
        core.close();
    }

    fn migration(&self) -> Option<&MigrationCore> {
        self.mig.as_ref()
    }
}

/// LMEM behind BAR2: the quota is backed; the rest of the power-of-two BAR reads as zero and
/// ignores writes. Returns the LMEM and how many of `len` bytes at `offset` fall in the quota.
fn lmem_split(
    hw: &VfHw,
    offset: u64,
    len: usize,
) -> Result<(&xe_pf::hw::mem::Backing, usize), Errno> {
    let l = hw.lmem().ok_or(Errno::EINVAL)?;
    let n = l.size().saturating_sub(offset).min(len as u64) as usize;
    Ok((l, n))
}
