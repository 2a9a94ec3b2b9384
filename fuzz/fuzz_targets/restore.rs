//! Restore fuzzing: arbitrary bytes written at arbitrary splits into a BMG VF's resume stream.
//! The first 8 bytes of the input choose the split sizes; the rest is the stream. Every
//! iteration must end with the VF recoverable (FLR → READY).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use xe_pf::pf::VfProvision;
use xe_pf::{PfConfig, Platform, SriovVfio, XePf};

fn pf() -> &'static Arc<XePf> {
    static PF: OnceLock<Arc<XePf>> = OnceLock::new();
    PF.get_or_init(|| {
        let mut cfg = PfConfig::new(Platform::Bmg);
        cfg.lmem_size = 1 << 20;
        let pf = XePf::new(cfg).unwrap();
        pf.enable_vfs(1, VfProvision { lmem: 256 << 10, ggtt: 64 << 10 }).unwrap();
        pf
    })
}

/// A valid stream prefix, so that mutations reach past the descriptor checks.
fn prefix() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        xe_pf::migration::wire::Descriptor {
            device_id: Platform::Bmg.default_device_id(),
            revision: Platform::Bmg.default_revision(),
            unknown: vec![],
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
    let pf = pf();
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
        match pf.data_write(1, &stream[at..at + n]) {
            Ok(m) => assert_eq!(m, n),
            Err(_) => break,
        }
        at += n;
    }
    let _ = pf.resume_data_exit(1);
    pf.flr_prepare(1).unwrap();
    pf.vf_flr_event(1).unwrap();
    pf.wait_flr_done(1).unwrap();
});
