//! The GuC firmware's view of a VF: saving and loading its state blob.

use super::guc::{decode_blob, encode_blob, CONTEXT_DWORDS};
use super::state::{EngineRegs, GucContext};
use super::vf::VfHw;
use crate::sync::lock;
use mig_io::Errno;

impl VfHw {
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
        Ok(encode_blob(gt, &words))
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
        let words = decode_blob(gt, blob)?;
        let ctx = if gt == crate::platform::PRIMARY_GT {
            let regs = EngineRegs::from_dwords(&words).ok_or(Errno::EIO)?;
            let ctx = words[EngineRegs::DWORDS..].to_vec();
            if ctx.len() != CONTEXT_DWORDS {
                return Err(Errno::EIO);
            }
            let mut e = lock(&self.engine);
            e.regs = regs;
            e.parked = false;
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
}
