//! Restore fuzzing: arbitrary bytes written at arbitrary splits into a BMG VF's resume stream.
//! The first 8 bytes of the input choose the split sizes; the rest is the stream. Bits of the
//! ninth byte choose a valid descriptor prefix, the path (buffered `data_write`, or
//! `data_write_from` pulling from a transport, as the vfio-user server does) and the LMEM
//! commit (lazy or reserved). Every iteration must end with the VF recoverable (FLR → READY),
//! and a transport-fed write must never take more than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use vfio_core::{DataSource, Errno};
use xe_pf::hw::mem::Commit;
use xe_pf::pf::VfProvision;
use xe_pf::{PfConfig, Platform, SriovVfio, XePf};

fn make(commit: Commit) -> Arc<XePf> {
    let mut cfg = PfConfig::new(Platform::Bmg);
    cfg.lmem_size = 1 << 20;
    cfg.lmem_commit = commit;
    let pf = XePf::new(cfg).unwrap();
    pf.enable_vfs(1, VfProvision { lmem: 256 << 10, ggtt: 64 << 10 }).unwrap();
    pf
}

fn pf(reserved: bool) -> &'static Arc<XePf> {
    static LAZY: OnceLock<Arc<XePf>> = OnceLock::new();
    static RESERVED: OnceLock<Arc<XePf>> = OnceLock::new();
    if reserved {
        RESERVED.get_or_init(|| make(Commit::Reserved))
    } else {
        LAZY.get_or_init(|| make(Commit::Lazy))
    }
}

/// A transport holding the next bytes of the stream.
struct Feed<'a> {
    data: &'a [u8],
    taken: usize,
}

impl DataSource for Feed<'_> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), Errno> {
        let rest = &self.data[self.taken..];
        assert!(buf.len() <= rest.len(), "the device asked past the message");
        buf.copy_from_slice(&rest[..buf.len()]);
        self.taken += buf.len();
        Ok(())
    }
}

/// A valid stream prefix, so that mutations reach past the descriptor checks.
fn prefix() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        xe_pf::migration::wire::Descriptor {
            device_id: Platform::Bmg.default_device_id().into(),
            revision: Platform::Bmg.default_revision().into(),
            ..Default::default()
        }
        .packet()
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (splits, body) = data.split_at(8);
    let with_prefix = data[8] & 1 == 1;
    let from_source = data[8] & 2 == 2;
    let pf = pf(data[8] & 4 == 4);
    pf.suspend_device(1).unwrap();
    pf.resume_data_enter(1).unwrap();
    let stream: Vec<u8> = if with_prefix {
        prefix().iter().chain(&body[1..]).copied().collect()
    } else {
        body.to_vec()
    };
    let mut at = 0;
    let mut k = 0;
    while at < stream.len() {
        let n = (usize::from(splits[k % 8]) + 1).min(stream.len() - at);
        k += 1;
        let chunk = &stream[at..at + n];
        if from_source {
            let mut feed = Feed { data: chunk, taken: 0 };
            match pf.data_write_from(1, n, &mut feed) {
                Ok(()) => assert_eq!(feed.taken, n),
                Err(_) => break,
            }
        } else {
            match pf.data_write(1, chunk) {
                Ok(m) => assert_eq!(m, n),
                Err(_) => break,
            }
        }
        at += n;
    }
    let _ = pf.resume_data_exit(1);
    pf.flr_prepare(1).unwrap();
    pf.vf_flr_event(1).unwrap();
    pf.wait_flr_done(1).unwrap();
});
