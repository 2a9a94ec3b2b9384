//! The host-to-host protocol's decoders on arbitrary bytes, as `receive` and `migrate --to
//! tcp://` read them: a header, then the payload of its kind. Never a panic, never an
//! allocation sized by the peer; whatever parses emits back to the same meaning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mig_net::{kind, parse_end, parse_result, ErrorMsg, Header, Hello, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some(h) = data.get(..HEADER_LEN) else {
        return;
    };
    let Ok(h) = Header::parse(h.try_into().unwrap()) else {
        return;
    };
    assert_eq!(Header::parse(&h.emit()), Ok(h));
    let p = &data[HEADER_LEN..];
    let p = &p[..p.len().min(h.len as usize)];
    match h.kind {
        kind::HELLO => {
            if let Ok(hello) = Hello::parse(p) {
                assert_eq!(Hello::parse(&hello.emit()), Ok(hello));
            }
        }
        kind::END => {
            let _ = parse_end(p);
        }
        kind::RESULT => {
            let _ = parse_result(p, usize::from(h.vf % 65));
        }
        kind::ERROR => {
            if let Ok(e) = ErrorMsg::parse(p) {
                assert_eq!(ErrorMsg::parse(&e.emit()), Ok(e));
            }
        }
        _ => {}
    }
});
