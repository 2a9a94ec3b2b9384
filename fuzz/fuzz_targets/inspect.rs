//! `inspect` and the descriptor/KLV decoders on arbitrary bytes: never a panic, never an
//! allocation sized by an unchecked field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xe_pf::migration::inspect::inspect;
use xe_pf::migration::wire::{klvs, Descriptor};

fuzz_target!(|data: &[u8]| {
    let i = inspect(data).unwrap();
    assert!(i.total_bytes <= data.len() as u64);
    let _ = Descriptor::parse(data);
    for k in klvs(data) {
        if k.is_err() {
            break;
        }
    }
});
