//! The vfio-user message decoder on arbitrary bytes: header framing checks, then every
//! command's payload decoder (with a small and the default `max_data_xfer_size`). Never a
//! panic; decoded data slices always lie inside the payload and respect the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfio_user::msg::{decode, max_message_size, Header, Request, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_LEN {
        return;
    }
    let (h, payload) = data.split_at(HEADER_LEN);
    let mut hb = [0u8; HEADER_LEN];
    hb.copy_from_slice(h);
    let mut header = Header::decode(&hb);
    assert_eq!(Header::decode(&header.encode()), header);
    let _ = header.check_size(max_message_size(1 << 20));
    // Route the payload through every command, not only the one the header names.
    for cmd in [header.command, 1, 2, 3, 4, 5, 7, 8, 9, 10, 13, 16, 17, 18] {
        header.command = cmd;
        for xfer in [16u32, 1 << 20] {
            match decode(&header, payload, xfer) {
                Ok(Request::RegionWrite { data, .. }) | Ok(Request::MigDataWrite { data }) => {
                    assert!(data.len() <= xfer as usize && data.len() <= payload.len());
                }
                Ok(Request::RegionRead { count, .. }) => assert!(count <= xfer),
                Ok(Request::MigDataRead { size, .. }) => assert!(size <= xfer),
                _ => {}
            }
        }
    }
});
