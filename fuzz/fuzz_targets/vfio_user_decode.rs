//! The vfio-user message decoders on arbitrary bytes: header framing checks, every command's
//! request decoder (with a small and the default `max_data_xfer_size`), and the reply parsers
//! a client uses. Never a panic; decoded data slices always lie inside the payload and respect
//! the limit; what parses re-emits to the same fixed bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfio_user::msg::{
    max_message_size, DeviceInfo, Feature, Header, IrqInfo, MigData, RegionAccess, RegionInfo,
    Request, Version, HEADER_LEN,
};

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_LEN {
        return;
    }
    let (h, payload) = data.split_at(HEADER_LEN);
    let mut hb = [0u8; HEADER_LEN];
    hb.copy_from_slice(h);
    let header = Header::decode(&hb);
    assert_eq!(Header::decode(&header.encode()), header);
    let _ = header.check_size(max_message_size(1 << 20));
    // Route the payload through every command, not only the one the header names.
    for cmd in [header.command, 1, 2, 3, 4, 5, 7, 8, 9, 10, 13, 16, 17, 18] {
        for xfer in [16u32, 1 << 20] {
            match Request::decode(cmd, payload, xfer) {
                Ok(Request::RegionWrite(r, d)) => {
                    assert!(d.len() == r.count as usize && r.count <= xfer);
                }
                Ok(Request::MigDataWrite(m, d)) => {
                    assert!(d.len() == m.size as usize && m.size <= xfer);
                }
                Ok(Request::RegionRead(r)) => assert!(r.count <= xfer),
                Ok(Request::MigDataRead(m)) => assert!(m.size <= xfer),
                Ok(_) => {}
                Err(e) => {
                    let _ = e.errno();
                }
            }
        }
    }
    // Replies, as the client parses them.
    if let Ok((m, d)) = MigData::parse_read_reply(payload) {
        assert_eq!(d.len(), m.size as usize);
        assert_eq!(m.to_vec(), payload[..MigData::LEN]);
    }
    if let Ok((r, d)) = RegionAccess::parse_with_data(payload, 1 << 20) {
        assert_eq!(d.len(), r.count as usize);
    }
    for fixed in [
        DeviceInfo::parse(payload).map(|m| m.to_vec()),
        RegionInfo::parse(payload).map(|m| m.to_vec()),
        IrqInfo::parse(payload).map(|m| m.to_vec()),
        Feature::parse(payload).map(|m| m.to_vec()),
    ]
    .into_iter()
    .flatten()
    {
        assert_eq!(fixed, payload[..fixed.len()]);
    }
    if let Ok(v) = Version::parse(payload) {
        assert!(v.json.len() <= payload.len());
    }
});
