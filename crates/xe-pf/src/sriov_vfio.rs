//! The calls the PF exports to the VFIO variant driver (`include/drm/intel/xe_sriov_vfio.h`).
//!
//! Every per-VF call checks that the device is a PF (`EPERM`) and that `1 <= vfid <= num_vfs`
//! (`EINVAL`). Results over GTs: pause/resume/stop report the first error (a second, different
//! one → `EUCLEAN`); save and restore stop at the first error.

use crate::migration::wire::{Descriptor, HEADER_LEN};
use crate::migration::{self, SaveParams, Target};
use crate::pf::{Vf, XePf};
use mig_io::{DataSink, DataSource, Errno};
use std::sync::Arc;

/// The PF's exported VF-migration calls. A trait so that a driver can be tested against a
/// recording PF.
pub trait SriovVfio: Send + Sync {
    /// Whether VF migration is supported by this PF.
    fn migration_supported(&self) -> bool;
    /// Marks an FLR pending before the firmware event.
    fn flr_prepare(&self, vfid: u32) -> Result<(), Errno>;
    /// Waits until PF-side FLR processing finished on all GTs (5 s): `ETIMEDOUT`, `EIO`.
    fn wait_flr_done(&self, vfid: u32) -> Result<(), Errno>;
    /// Pauses the VF on all GTs.
    fn suspend_device(&self, vfid: u32) -> Result<(), Errno>;
    /// Resumes the VF on all GTs.
    fn resume_device(&self, vfid: u32) -> Result<(), Errno>;
    /// Starts a save.
    fn stop_copy_enter(&self, vfid: u32) -> Result<(), Errno>;
    /// Finishes (or, ours, cleanly cancels) a save.
    fn stop_copy_exit(&self, vfid: u32) -> Result<(), Errno>;
    /// Starts a restore.
    fn resume_data_enter(&self, vfid: u32) -> Result<(), Errno>;
    /// Finishes a restore: `EIO` if incomplete or invalid.
    fn resume_data_exit(&self, vfid: u32) -> Result<(), Errno>;
    /// Stops the VF after an error; pause/save/restore are refused until an FLR.
    fn error(&self, vfid: u32) -> Result<(), Errno>;
    /// Hands up to `max` save-stream bytes to `sink` (see [`DataSink`]); 0 at the end.
    fn data_read_to(&self, vfid: u32, max: usize, sink: &mut dyn DataSink) -> Result<usize, Errno>;
    /// Takes the next `n` resume-stream bytes from `source` (see [`DataSource`]).
    fn data_write_from(
        &self,
        vfid: u32,
        n: usize,
        source: &mut dyn DataSource,
    ) -> Result<(), Errno>;
    /// Reads save-stream bytes into `buf`; 0 at the end (the slice adapter of `data_read_to`).
    fn data_read(&self, vfid: u32, buf: &mut [u8]) -> Result<usize, Errno> {
        mig_io::read_into(buf, |max, sink| self.data_read_to(vfid, max, sink))
    }
    /// Writes all of `buf` as resume-stream bytes (the slice adapter of `data_write_from`).
    fn data_write(&self, vfid: u32, buf: &[u8]) -> Result<usize, Errno> {
        mig_io::write_from_slice(buf, |n, source| self.data_write_from(vfid, n, source))
    }
    /// The estimated stop-copy stream size in bytes.
    fn stop_copy_size(&self, vfid: u32) -> Result<u64, Errno>;

    // ---- Ours: PRE_COPY. Upstream exports none of these; a PF without them says so. ----

    /// Whether this PF offers PRE_COPY (dirty tracking of VF LMEM).
    fn pre_copy_supported(&self) -> bool {
        false
    }
    /// Opens a pre-copy save of a running (or paused) VF: the stream starts with the
    /// descriptor and the whole LMEM, then dirty LMEM, while the VF keeps running.
    fn pre_copy_enter(&self, _vfid: u32) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// The paused VF's pre-copy save goes on with its stop-copy data (STOP_COPY).
    fn pre_copy_stop_copy(&self, _vfid: u32) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// Cancels a pre-copy save; the VF is untouched (running or paused as it was).
    fn pre_copy_exit(&self, _vfid: u32) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// `(initial_bytes, dirty_bytes)` of an open pre-copy save, in stream bytes.
    fn precopy_info(&self, _vfid: u32) -> Result<(u64, u64), Errno> {
        Err(Errno::ENOTTY)
    }
}

impl XePf {
    fn checked_vf(&self, vfid: u32) -> Result<Arc<Vf>, Errno> {
        if !self.is_sriov_pf() {
            return Err(Errno::EPERM);
        }
        if vfid == 0 || vfid > self.num_vfs() {
            return Err(Errno::EINVAL);
        }
        self.vf(vfid)
    }

    fn descriptor(&self) -> Descriptor {
        Descriptor {
            device_id: u32::from(self.device_id()),
            revision: u32::from(self.revision()),
            ..Default::default()
        }
    }

    /// The exact length of the stream a save of VF `vfid` produces now (see
    /// [`crate::migration`]).
    pub fn stream_len(&self, vfid: u32) -> Result<u64, Errno> {
        let vf = self.vf(vfid)?;
        let chunks = vf.hw.lmem_size().div_ceil(self.config().vram_chunk);
        Ok(migration::stop_copy_size(&vf.hw, self.gt_count())?
            + self.descriptor().packet().len() as u64
            + HEADER_LEN as u64
            + HEADER_LEN as u64 * chunks.saturating_sub(1))
    }
}

impl SriovVfio for XePf {
    fn migration_supported(&self) -> bool {
        self.is_sriov_pf() && XePf::migration_supported(self)
    }

    fn flr_prepare(&self, vfid: u32) -> Result<(), Errno> {
        self.checked_vf(vfid).map(|_| ())
    }

    fn wait_flr_done(&self, vfid: u32) -> Result<(), Errno> {
        let vf = self.checked_vf(vfid)?;
        self.control(&vf).flr_wait()
    }

    fn suspend_device(&self, vfid: u32) -> Result<(), Errno> {
        let vf = self.checked_vf(vfid)?;
        self.control(&vf).pause()
    }

    fn resume_device(&self, vfid: u32) -> Result<(), Errno> {
        let vf = self.checked_vf(vfid)?;
        self.control(&vf).resume()
    }

    fn stop_copy_enter(&self, vfid: u32) -> Result<(), Errno> {
        let vf = self.checked_vf(vfid)?;
        vf.mig.check_idle()?;
        let ctl = self.control(&vf);
        // GTs that did enter the save go back to Paused: a failed trigger changes nothing.
        let started = ctl.save_trigger().and_then(|()| {
            let p = SaveParams {
                vfid,
                gt_count: self.gt_count(),
                descriptor: self.descriptor(),
                vram_chunk: self.config().vram_chunk,
                pre_copy: false,
            };
            vf.mig.start_save(vf.hw.clone(), self.faults_shared(), p)
        });
        if started.is_err() {
            ctl.session_finish();
        }
        started
    }

    fn stop_copy_exit(&self, vfid: u32) -> Result<(), Errno> {
        let vf = self.checked_vf(vfid)?;
        vf.mig.finish_save(vfid)?;
        self.control(&vf).session_finish();
        Ok(())
    }

    fn resume_data_enter(&self, vfid: u32) -> Result<(), Errno> {
        let vf = self.checked_vf(vfid)?;
        vf.mig.check_idle()?;
        let ctl = self.control(&vf);
        let started = ctl.restore_trigger().and_then(|()| {
            let t = Target {
                vfid,
                device_id: u32::from(self.device_id()),
                revision: u32::from(self.revision()),
                platform: self.platform(),
            };
            vf.mig.start_restore(vf.hw.clone(), self.faults_shared(), t)
        });
        if started.is_err() {
            ctl.session_finish();
        }
        started
    }

    fn resume_data_exit(&self, vfid: u32) -> Result<(), Errno> {
        let vf = self.checked_vf(vfid)?;
        let r = vf.mig.finish_restore();
        self.control(&vf).session_finish();
        if r.is_ok() {
            vf.hw.set_migrated();
            tracing::info!(vfid, "restore complete");
        }
        r
    }

    fn error(&self, vfid: u32) -> Result<(), Errno> {
        let vf = self.checked_vf(vfid)?;
        vf.mig.cancel();
        self.control(&vf).stop()
    }

    fn data_read_to(&self, vfid: u32, max: usize, sink: &mut dyn DataSink) -> Result<usize, Errno> {
        self.checked_vf(vfid)?.mig.read_to(max, sink)
    }

    fn data_write_from(
        &self,
        vfid: u32,
        n: usize,
        source: &mut dyn DataSource,
    ) -> Result<(), Errno> {
        self.checked_vf(vfid)?.mig.write_from(n, source)
    }

    fn stop_copy_size(&self, vfid: u32) -> Result<u64, Errno> {
        let vf = self.checked_vf(vfid)?;
        let full = migration::stop_copy_size(&vf.hw, self.gt_count())?;
        // In a pre-copy session (ours: upstream has none) the stop-copy phase sends only what
        // pre-copy has not — the initial VRAM left and the dirty VRAM instead of all of it —
        // which is what the uAPI asks MIG_DATA_SIZE to estimate in PRE_COPY.
        match vf.mig.precopy_info() {
            Ok((initial, dirty)) => {
                let lmem = vf.hw.lmem_size();
                let vram = if lmem > 0 {
                    HEADER_LEN as u64 + lmem
                } else {
                    0
                };
                Ok(full.saturating_sub(vram) + initial + dirty)
            }
            Err(_) => Ok(full),
        }
    }

    fn pre_copy_supported(&self) -> bool {
        SriovVfio::migration_supported(self) && self.config().pre_copy
    }

    fn pre_copy_enter(&self, vfid: u32) -> Result<(), Errno> {
        let vf = self.checked_vf(vfid)?;
        if !self.pre_copy_supported() {
            return Err(Errno::EOPNOTSUPP);
        }
        vf.mig.check_idle()?;
        self.control(&vf).check_live()?;
        let p = SaveParams {
            vfid,
            gt_count: self.gt_count(),
            descriptor: self.descriptor(),
            vram_chunk: self.config().vram_chunk,
            pre_copy: true,
        };
        vf.mig.start_save(vf.hw.clone(), self.faults_shared(), p)
    }

    fn pre_copy_stop_copy(&self, vfid: u32) -> Result<(), Errno> {
        let vf = self.checked_vf(vfid)?;
        let ctl = self.control(&vf);
        let r = ctl.save_trigger().and_then(|()| vf.mig.stop_copy());
        if r.is_err() {
            ctl.session_finish();
        }
        r
    }

    fn pre_copy_exit(&self, vfid: u32) -> Result<(), Errno> {
        self.checked_vf(vfid)?.mig.finish_save(vfid)
    }

    fn precopy_info(&self, vfid: u32) -> Result<(u64, u64), Errno> {
        self.checked_vf(vfid)?.mig.precopy_info()
    }
}
