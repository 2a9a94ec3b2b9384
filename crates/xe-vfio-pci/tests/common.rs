#![allow(dead_code)]
//! A recording PF and device builders.

use std::sync::{Arc, Mutex};
use vfio_core::{DataSink, DataSource, Errno, VfioDevice};
use vfio_pci_core::PciDevice;
use xe_pf::pf::VfProvision;
use xe_pf::{PfConfig, Platform, SriovVfio, Timeouts, XePf};
use xe_vfio_pci::{PciFunction, VirtFn, XeVfioPci};

/// Delegates to a real PF and records every call as `name(vfid)`.
pub struct Recorder {
    pub pf: Arc<XePf>,
    pub log: Mutex<Vec<String>>,
}

impl Recorder {
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
    fn rec(&self, s: &str, vfid: u32) {
        self.log.lock().unwrap().push(format!("{s}({vfid})"));
    }
}

impl SriovVfio for Recorder {
    fn migration_supported(&self) -> bool {
        SriovVfio::migration_supported(&*self.pf)
    }
    fn flr_prepare(&self, v: u32) -> Result<(), Errno> {
        self.rec("flr_prepare", v);
        self.pf.flr_prepare(v)
    }
    fn wait_flr_done(&self, v: u32) -> Result<(), Errno> {
        self.rec("wait_flr_done", v);
        self.pf.wait_flr_done(v)
    }
    fn suspend_device(&self, v: u32) -> Result<(), Errno> {
        self.rec("suspend_device", v);
        self.pf.suspend_device(v)
    }
    fn resume_device(&self, v: u32) -> Result<(), Errno> {
        self.rec("resume_device", v);
        self.pf.resume_device(v)
    }
    fn stop_copy_enter(&self, v: u32) -> Result<(), Errno> {
        self.rec("stop_copy_enter", v);
        self.pf.stop_copy_enter(v)
    }
    fn stop_copy_exit(&self, v: u32) -> Result<(), Errno> {
        self.rec("stop_copy_exit", v);
        self.pf.stop_copy_exit(v)
    }
    fn resume_data_enter(&self, v: u32) -> Result<(), Errno> {
        self.rec("resume_data_enter", v);
        self.pf.resume_data_enter(v)
    }
    fn resume_data_exit(&self, v: u32) -> Result<(), Errno> {
        self.rec("resume_data_exit", v);
        self.pf.resume_data_exit(v)
    }
    fn error(&self, v: u32) -> Result<(), Errno> {
        self.rec("error", v);
        self.pf.error(v)
    }
    fn data_read_to(&self, v: u32, max: usize, sink: &mut dyn DataSink) -> Result<usize, Errno> {
        self.pf.data_read_to(v, max, sink)
    }
    fn data_write_from(&self, v: u32, n: usize, src: &mut dyn DataSource) -> Result<(), Errno> {
        self.pf.data_write_from(v, n, src)
    }
    fn stop_copy_size(&self, v: u32) -> Result<u64, Errno> {
        self.rec("stop_copy_size", v);
        self.pf.stop_copy_size(v)
    }
}

pub fn pf(platform: Platform, n: u32, lmem: u64) -> Arc<XePf> {
    let mut cfg = PfConfig::new(platform);
    cfg.timeouts = Timeouts::short();
    cfg.vram_chunk = 1 << 20;
    XePf::with_vfs(
        cfg,
        n,
        VfProvision {
            lmem,
            ggtt: 8 << 20,
        },
    )
    .unwrap()
}

/// VF `vfid` of `pf` bound to the driver, through a recorder.
pub fn recorded(pf: &Arc<XePf>, vfid: u32) -> (PciDevice<XeVfioPci>, Arc<Recorder>) {
    let rec = Arc::new(Recorder {
        pf: pf.clone(),
        log: Mutex::new(Vec::new()),
    });
    let mut f = PciFunction::vf_of(pf, vfid).unwrap();
    f.virtfn = Some(VirtFn {
        index: vfid - 1,
        pf: Some(rec.clone() as Arc<dyn SriovVfio>),
    });
    let dev = XeVfioPci::probe(f).unwrap();
    dev.open().unwrap();
    rec.take();
    (dev, rec)
}

/// VF `vfid` bound directly.
pub fn bound(pf: &Arc<XePf>, vfid: u32) -> PciDevice<XeVfioPci> {
    let dev = XeVfioPci::probe(PciFunction::vf_of(pf, vfid).unwrap()).unwrap();
    dev.open().unwrap();
    dev
}
