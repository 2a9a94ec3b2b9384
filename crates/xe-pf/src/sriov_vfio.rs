//! The calls the PF exports to the VFIO variant driver (`include/drm/intel/xe_sriov_vfio.h`).
//!
//! Every per-VF call checks that the device is a PF (`EPERM`) and that `1 <= vfid <= num_vfs`
//! (`EINVAL`). Results over GTs: pause/resume/stop report the first error (a second, different
//! one → `EUCLEAN`); save and restore stop at the first error.

use crate::migration;
use crate::pf::{Vf, XePf};
use std::sync::Arc;
use vfio_core::{DataSink, DataSource, Errno};

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
    /// Reads save-stream bytes; 0 at the end.
    fn data_read(&self, vfid: u32, buf: &mut [u8]) -> Result<usize, Errno>;
    /// Writes resume-stream bytes.
    fn data_write(&self, vfid: u32, buf: &[u8]) -> Result<usize, Errno>;
    /// Reads up to `max` save-stream bytes into a transport (see [`DataSink`]); `None` if
    /// this PF only has the buffered `data_read`.
    fn data_read_to(
        &self,
        vfid: u32,
        max: usize,
        sink: &mut dyn DataSink,
    ) -> Option<Result<usize, Errno>> {
        let _ = (vfid, max, sink);
        None
    }
    /// Writes the next `n` resume-stream bytes from a transport (see [`DataSource`]); `None`
    /// if this PF only has the buffered `data_write`.
    fn data_write_from(
        &self,
        vfid: u32,
        n: usize,
        source: &mut dyn DataSource,
    ) -> Option<Result<(), Errno>> {
        let _ = (vfid, n, source);
        None
    }
    /// The estimated stop-copy stream size in bytes.
    fn stop_copy_size(&self, vfid: u32) -> Result<u64, Errno>;
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

    pub(crate) fn faults_arc(&self) -> Arc<crate::guc::Faults> {
        self.faults_shared()
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
        migration::stop_copy_enter(self, &vf)
    }

    fn stop_copy_exit(&self, vfid: u32) -> Result<(), Errno> {
        let vf = self.checked_vf(vfid)?;
        migration::stop_copy_exit(self, &vf)
    }

    fn resume_data_enter(&self, vfid: u32) -> Result<(), Errno> {
        let vf = self.checked_vf(vfid)?;
        migration::resume_data_enter(self, &vf)
    }

    fn resume_data_exit(&self, vfid: u32) -> Result<(), Errno> {
        let vf = self.checked_vf(vfid)?;
        migration::resume_data_exit(self, &vf)
    }

    fn error(&self, vfid: u32) -> Result<(), Errno> {
        let vf = self.checked_vf(vfid)?;
        migration::cancel(&vf);
        self.control(&vf).stop()
    }

    fn data_read(&self, vfid: u32, buf: &mut [u8]) -> Result<usize, Errno> {
        let vf = self.checked_vf(vfid)?;
        migration::data_read(&vf, buf)
    }

    fn data_write(&self, vfid: u32, buf: &[u8]) -> Result<usize, Errno> {
        let vf = self.checked_vf(vfid)?;
        migration::data_write(&vf, buf)
    }

    fn data_read_to(
        &self,
        vfid: u32,
        max: usize,
        sink: &mut dyn DataSink,
    ) -> Option<Result<usize, Errno>> {
        Some(
            self.checked_vf(vfid)
                .and_then(|vf| migration::data_read_to(&vf, max, sink)),
        )
    }

    fn data_write_from(
        &self,
        vfid: u32,
        n: usize,
        source: &mut dyn DataSource,
    ) -> Option<Result<(), Errno>> {
        Some(
            self.checked_vf(vfid)
                .and_then(|vf| migration::data_write_from(&vf, n, source)),
        )
    }

    fn stop_copy_size(&self, vfid: u32) -> Result<u64, Errno> {
        let vf = self.checked_vf(vfid)?;
        migration::stop_copy_size(self, &vf)
    }
}
