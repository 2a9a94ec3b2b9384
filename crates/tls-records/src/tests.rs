use super::*;
use proptest::prelude::*;
use rustls::crypto::aws_lc_rs::cipher_suite as cs;
use rustls::SupportedCipherSuite;
use std::sync::Arc;

fn suite(s: SupportedCipherSuite) -> &'static Tls13CipherSuite {
    // (TLS 1.2 suites exist when another crate enables rustls' `tls12`.)
    #[allow(unreachable_patterns)]
    match s {
        SupportedCipherSuite::Tls13(t) => t,
        _ => unreachable!("a TLS 1.3 suite"),
    }
}

/// A sealer and the opener of the same direction (fixed keys: 32-byte-key suites only).
fn pair(s: SupportedCipherSuite, capacity: usize) -> (Sealer, Opener) {
    let s = suite(s);
    let key = || AeadKey::from([7u8; 32]);
    let iv = || Iv::from([9u8; 12]);
    (
        Sealer::new(s, key(), iv(), 0),
        Opener::new(s, key(), iv(), 0, capacity),
    )
}

/// Feeds `bytes` to `o` in pieces of `chunk` bytes, taking the plaintext as it comes.
fn feed(o: &mut Opener, bytes: &[u8], chunk: usize) -> (Vec<u8>, Result<(), RecordError>) {
    feed_with(o, bytes, chunk, false)
}

/// As [`feed`], but the plaintext is opened into buffers of this test's (of `MAX_CIPHERTEXT`
/// bytes: the least that always takes the next record).
fn feed_into(o: &mut Opener, bytes: &[u8], chunk: usize) -> (Vec<u8>, Result<(), RecordError>) {
    feed_with(o, bytes, chunk, true)
}

fn feed_with(
    o: &mut Opener,
    bytes: &[u8],
    chunk: usize,
    into: bool,
) -> (Vec<u8>, Result<(), RecordError>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; MAX_CIPHERTEXT];
    let mut at = 0;
    while at < bytes.len() {
        let spare = o.spare();
        let n = spare.len().min(chunk.max(1)).min(bytes.len() - at);
        spare[..n].copy_from_slice(&bytes[at..at + n]);
        at += n;
        let r = if into {
            o.received_raw(n).and_then(|()| loop {
                match o.open_into(&mut buf)? {
                    0 => break Ok(()),
                    k => out.extend_from_slice(&buf[..k]),
                }
            })
        } else {
            let r = o.received(n);
            let mut b = vec![0u8; o.available()];
            let k = o.read(&mut b);
            out.extend_from_slice(&b[..k]);
            r
        };
        if into {
            assert_eq!(o.available(), 0, "nothing is opened in place");
        }
        if r.is_err() {
            return (out, r);
        }
    }
    (out, Ok(()))
}

type Feed = fn(&mut Opener, &[u8], usize) -> (Vec<u8>, Result<(), RecordError>);

/// Both ways to take the plaintext: opened in place, and into the caller's buffers.
const FEEDS: [(&str, Feed); 2] = [("in place", feed), ("into", feed_into)];

fn sealed(s: &mut Sealer, parts: &[&[u8]]) -> Vec<u8> {
    let mut recs = Vec::new();
    s.seal(parts, &mut recs).unwrap();
    recs.concat()
}

/// The records of `parts`: sealed through rustls' record protection, or (`into`) straight
/// into one buffer ([`Sealer::seal_into`]).
fn seal_with(s: &mut Sealer, parts: &[&[u8]], into: bool) -> Vec<u8> {
    if !into {
        return sealed(s, parts);
    }
    let mut b = vec![0u8; sealed_len(parts.iter().map(|p| p.len()).sum())];
    let n = s.seal_into(parts, &mut b).unwrap();
    b.truncate(n);
    b
}

#[test]
fn records_are_framed_as_tls_1_3_application_data() {
    let (mut s, _) = pair(cs::TLS13_AES_256_GCM_SHA384, 0);
    let mut recs = Vec::new();
    let data = vec![0x5a; 2 * MAX_FRAGMENT + 3];
    s.seal(&[&data[..10], &data[10..]], &mut recs).unwrap();
    // Cut at 16 KiB of plaintext, across the caller's slices.
    let lens: Vec<usize> = recs.iter().map(|r| r.len()).collect();
    let tag = 16;
    assert_eq!(
        lens,
        [
            HEADER + MAX_FRAGMENT + 1 + tag,
            HEADER + MAX_FRAGMENT + 1 + tag,
            HEADER + 3 + 1 + tag
        ]
    );
    for r in &recs {
        let body = (r.len() - HEADER) as u16;
        assert_eq!(
            r[..HEADER],
            [0x17, 0x03, 0x03, (body >> 8) as u8, body as u8]
        );
    }
    assert_eq!(s.seq(), 3);
    // Nothing to seal: no record.
    s.seal(&[&[]], &mut recs).unwrap();
    assert_eq!(recs.len(), 3);
}

#[test]
fn a_record_in_any_pieces_opens_to_its_plaintext() {
    for s in [
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        for (how, feed) in FEEDS {
            let (mut tx, mut rx) = pair(s, 0);
            let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 + 7) as u8).collect();
            let bytes = sealed(&mut tx, &[&data]);
            let (out, r) = feed(&mut rx, &bytes, 1000);
            r.unwrap();
            assert!(out == data, "{how}");
            assert_eq!(rx.available(), 0);
            assert!(!rx.closed());
        }
    }
}

#[test]
fn each_bad_record_is_its_error_and_the_opener_stays_failed() {
    let s = cs::TLS13_AES_256_GCM_SHA384;
    let check_after = |bytes: &[u8], want: &str, before: &[u8]| {
        for (how, feed) in FEEDS {
            let (_, mut rx) = pair(s, 0);
            let (out, r) = feed(&mut rx, bytes, bytes.len());
            let e = r.expect_err(want).to_string();
            assert!(e.contains(want), "{e} (wanted {want}, {how})");
            assert_eq!(out, before, "{want}, {how}");
            // Failed for good, whatever comes next.
            assert_eq!(rx.received(0).unwrap_err().to_string(), e);
            assert_eq!(
                rx.open_into(&mut [0; MAX_CIPHERTEXT])
                    .unwrap_err()
                    .to_string(),
                e
            );
        }
    };
    let check = |bytes: &[u8], want: &str| check_after(bytes, want, b"");
    // A handshake record in the clear.
    check(&[0x16, 3, 3, 0, 4, 1, 2, 3, 4], "type Handshake");
    // Longer than TLS 1.3 allows: refused from its header alone, before waiting for it.
    check(&[0x17, 3, 3, 0x41, 0x01], "16641 bytes");
    // Too short to carry a tag.
    check(&[0x17, 3, 3, 0, 3, 1, 2, 3], "cannot decrypt");
    let (mut tx, _) = pair(s, 0);
    let good = sealed(&mut tx, &[b"xe-vfio"]);
    // One bit of the ciphertext, of the tag. (The legacy version is not authenticated, and
    // is ignored as RFC 8446 says; a longer length waits for more.)
    for at in [HEADER + 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 1;
        check(&bad, "cannot decrypt");
    }
    // A shorter length: the tag is not where it was.
    let mut bad = good.clone();
    bad[4] -= 1;
    check(&bad, "cannot decrypt");
    // A record replayed: the second has the wrong sequence number.
    check_after(
        &[good.clone(), good.clone()].concat(),
        "cannot decrypt",
        b"xe-vfio",
    );
    // A fatal alert from the peer, and a handshake message (a key update) after the handshake.
    let (mut tx, _) = pair(s, 0);
    let alert = tx.seal_as(ContentType::Alert, &[2, 48]).unwrap();
    check(&alert, "received fatal alert: UnknownCA");
    let (mut tx, _) = pair(s, 0);
    let ku = tx
        .seal_as(ContentType::Handshake, &[24, 0, 0, 1, 0])
        .unwrap();
    check(&ku, "a TLS Handshake message after the handshake");
}

#[test]
fn close_notify_ends_the_plaintext_and_nothing_after_it_is_read() {
    for (how, feed) in FEEDS {
        let (mut tx, mut rx) = pair(cs::TLS13_AES_256_GCM_SHA384, 0);
        let mut bytes = sealed(&mut tx, &[b"before"]);
        bytes.extend(tx.seal_as(ContentType::Alert, &[1, 0]).unwrap());
        bytes.extend(sealed(&mut tx, &[b"after"]));
        bytes.extend([0x16, 3, 3, 0, 0]);
        let (out, r) = feed(&mut rx, &bytes, 7);
        r.unwrap();
        assert_eq!(out, b"before", "{how}");
        assert!(rx.closed());
    }
}

#[test]
fn empty_records_and_partial_records_give_nothing_yet() {
    let (mut tx, mut rx) = pair(cs::TLS13_AES_256_GCM_SHA384, 0);
    let empty = tx.seal_as(ContentType::ApplicationData, &[]).unwrap();
    let data = sealed(&mut tx, &[b"0123456789"]);
    let (out, r) = feed(&mut rx, &empty, 100);
    r.unwrap();
    assert!(out.is_empty());
    let (out, r) = feed(&mut rx, &data[..data.len() - 1], 100);
    r.unwrap();
    assert!(out.is_empty(), "a partial record waits");
    let (out, r) = feed(&mut rx, &data[data.len() - 1..], 100);
    r.unwrap();
    assert_eq!(out, b"0123456789");
}

#[test]
fn session_tickets_are_skipped_and_nothing_else_of_the_handshake_is_taken() {
    let ticket = |n: u8| [vec![4, 0, 0, n], vec![0xee; usize::from(n)]].concat();
    for (how, feed) in FEEDS {
        let (mut tx, mut rx) = pair(cs::TLS13_AES_256_GCM_SHA384, 0);
        let mut bytes = tx
            .seal_as(ContentType::Handshake, &[ticket(9), ticket(0)].concat())
            .unwrap();
        bytes.extend(tx.seal_as(ContentType::ApplicationData, &[]).unwrap());
        bytes.extend(sealed(&mut tx, &[b"after the tickets"]));
        let (out, r) = feed(&mut rx, &bytes, 10);
        r.unwrap();
        assert_eq!(out, b"after the tickets", "{how}");
    }
    // A ticket and a key update in one record; a ticket cut short; an empty handshake record.
    for bad in [
        [ticket(3), vec![24, 0, 0, 1, 0]].concat(),
        ticket(5)[..7].to_vec(),
        vec![],
    ] {
        let (mut tx, mut rx) = pair(cs::TLS13_AES_256_GCM_SHA384, 0);
        let bytes = tx.seal_as(ContentType::Handshake, &bad).unwrap();
        let (_, r) = feed(&mut rx, &bytes, 10);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("Handshake message after the handshake"), "{e}");
    }
}

#[test]
fn the_sealer_stops_at_its_limit() {
    let (mut tx, _) = pair(cs::TLS13_AES_256_GCM_SHA384, 0);
    tx.set_limit(2);
    let mut recs = Vec::new();
    let e = tx.seal(&[&[0u8; 3 * MAX_FRAGMENT]], &mut recs).unwrap_err();
    assert!(matches!(e, RecordError::KeyLimit(2)), "{e}");
    assert_eq!(recs.len(), 2);
    let (mut tx, _) = pair(cs::TLS13_AES_256_GCM_SHA384, 0);
    tx.set_limit(2);
    let mut out = vec![0u8; sealed_len(3 * MAX_FRAGMENT)];
    let e = tx
        .seal_into(&[&[0u8; 3 * MAX_FRAGMENT]], &mut out)
        .unwrap_err();
    assert!(matches!(e, RecordError::KeyLimit(2)), "{e}");
    assert_eq!(tx.seq(), 2);
}

/// Sealed into the caller's buffer, the records are rustls' records byte for byte (the same
/// key and sequence numbers give the same ciphertext), for every suite, wherever the caller's
/// slices cut the plaintext.
#[test]
fn sealed_into_a_buffer_the_records_are_rustls_records() {
    let data: Vec<u8> = (0..3 * MAX_FRAGMENT as u32 + 77)
        .map(|i| (i * 5 + 1) as u8)
        .collect();
    // (Fixed 32-byte keys; AES-128-GCM is held to rustls in the handshake test below.)
    for s in [
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        let s = suite(s);
        let key = || AeadKey::from([7u8; 32]);
        let iv = || Iv::from([9u8; 12]);
        for cuts in [
            vec![],
            vec![12],
            vec![0, 0, MAX_FRAGMENT],
            vec![1, 2, 3, 40_000],
        ] {
            let mut parts: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            for c in cuts {
                parts.push(&data[at..c.max(at)]);
                at = c.max(at);
            }
            parts.push(&data[at..]);
            let mut rustls_way = Sealer::new(s, key(), iv(), 0);
            let want = sealed(&mut rustls_way, &parts);
            let mut ours = Sealer::new(s, key(), iv(), 0);
            let mut out = vec![0u8; sealed_len(data.len()) + 3];
            let n = ours.seal_into(&parts, &mut out).unwrap();
            assert_eq!(n, sealed_len(data.len()));
            assert!(out[..n] == want[..], "{:?}", s.common.suite);
            assert_eq!(ours.seq(), rustls_way.seq());
        }
    }
    let (mut tx, _) = pair(cs::TLS13_AES_256_GCM_SHA384, 0);
    assert_eq!(tx.seal_into(&[], &mut []).unwrap(), 0);
    let e = tx.seal_into(&[b"x"], &mut [0; 22]).unwrap_err();
    assert!(e.to_string().contains("too small"), "{e}");
    assert_eq!(sealed_len(1), 23);
    assert_eq!(sealed_len(MAX_FRAGMENT + 1), MAX_FRAGMENT + 1 + 2 * 22);
}

#[test]
fn plaintext_left_unconsumed_moves_with_the_partial_record() {
    // A buffer of two records: the third record only fits once the first two move.
    let (mut tx, mut rx) = pair(cs::TLS13_AES_256_GCM_SHA384, 0);
    let a = vec![1u8; MAX_FRAGMENT];
    let b = vec![2u8; MAX_FRAGMENT];
    let bytes = sealed(&mut tx, &[&a, &b, b"tail"]);
    let mut at = 0;
    let mut take = |rx: &mut Opener, n: usize| {
        let spare = rx.spare();
        let n = n.min(spare.len()).min(bytes.len() - at);
        spare[..n].copy_from_slice(&bytes[at..at + n]);
        at += n;
        rx.received(n).unwrap();
    };
    take(&mut rx, MAX_RECORD + 10);
    assert_eq!(rx.available(), MAX_FRAGMENT);
    rx.consume(100);
    take(&mut rx, usize::MAX);
    take(&mut rx, usize::MAX);
    let mut out = vec![0u8; rx.available()];
    assert_eq!(rx.read(&mut out), MAX_FRAGMENT - 100 + MAX_FRAGMENT + 4);
    assert!(out[..MAX_FRAGMENT - 100].iter().all(|&x| x == 1));
    assert!(out[MAX_FRAGMENT - 100..out.len() - 4]
        .iter()
        .all(|&x| x == 2));
    assert_eq!(&out[out.len() - 4..], b"tail");
}

#[test]
fn into_the_callers_buffer_records_that_fit_and_plaintext_opened_in_place_first() {
    let (mut tx, mut rx) = pair(cs::TLS13_AES_256_GCM_SHA384, 0);
    let a: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let b = vec![0xbbu8; 3000];
    let c = b"the third".to_vec();
    let mut bytes = sealed(&mut tx, &[&a]);
    bytes.extend(sealed(&mut tx, &[&b]));
    let first = bytes.len();
    bytes.extend(sealed(&mut tx, &[&c]));
    // The first two records opened in place; 100 bytes of the first consumed.
    rx.spare()[..first].copy_from_slice(&bytes[..first]);
    rx.received(first).unwrap();
    rx.consume(100);
    // The third waits, unopened, while the plaintext opened in place is copied out first.
    rx.spare()[..bytes.len() - first].copy_from_slice(&bytes[first..]);
    rx.received_raw(bytes.len() - first).unwrap();
    assert_eq!(rx.available(), 900 + 3000);
    let mut out = vec![0u8; 5000];
    assert_eq!(rx.open_into(&mut out[..1000]).unwrap(), 1000);
    assert_eq!(out[..900], a[100..]);
    assert!(out[900..1000].iter().all(|&x| x == 0xbb));
    // The rest of the in-place plaintext, then the third record — only once its ciphertext
    // less the tag (9 bytes and its type) fits after it.
    let left = 2900;
    assert_eq!(rx.open_into(&mut out[..left + 9]).unwrap(), left);
    assert_eq!(
        rx.open_into(&mut out[..9]).unwrap(),
        0,
        "10 bytes of ciphertext"
    );
    assert_eq!(rx.open_into(&mut out[..10]).unwrap(), 9);
    assert_eq!(out[..9], c[..]);
    assert_eq!(rx.open_into(&mut out).unwrap(), 0);
}

/// Records sealed here are read by a rustls connection, and what rustls sends is opened
/// here: the same protocol as rustls' own record layer, from the keys of a real handshake —
/// for each TLS 1.3 suite, sealed and opened through rustls' record protection and through
/// our own ([`Sealer::seal_into`], [`Opener::open_into`]).
#[test]
fn interoperates_with_rustls_after_a_real_handshake() {
    for s in [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        for (how, feed) in FEEDS {
            interop(s, feed, how);
        }
    }
}

fn interop(only: SupportedCipherSuite, feed: Feed, how: &str) {
    let ck = rcgen::generate_simple_self_signed(vec!["peer".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![only];
    let provider = Arc::new(provider);
    let scfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    // rustls' default: two session tickets after the handshake, which the opener skips.
    assert_eq!(scfg.send_tls13_tickets, 2);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut ccfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    ccfg.enable_secret_extraction = true;
    let mut client =
        rustls::ClientConnection::new(Arc::new(ccfg), "peer".try_into().unwrap()).unwrap();
    let mut server = rustls::ServerConnection::new(Arc::new(scfg)).unwrap();
    let pump = |from: &mut dyn FnMut(&mut Vec<u8>), to: &mut dyn FnMut(&[u8])| {
        let mut b = Vec::new();
        from(&mut b);
        if !b.is_empty() {
            to(&b);
        }
    };
    // The handshake, in memory, up to the client's Finished reaching the server: what the
    // server sends after it (its session tickets) is left for the opener.
    loop {
        pump(
            &mut |b| {
                while client.wants_write() {
                    client.write_tls(b).unwrap();
                }
            },
            &mut |b| {
                server.read_tls(&mut &b[..]).unwrap();
                server.process_new_packets().unwrap();
            },
        );
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
        pump(
            &mut |b| {
                while server.wants_write() {
                    server.write_tls(b).unwrap();
                }
            },
            &mut |b| {
                client.read_tls(&mut &b[..]).unwrap();
                client.process_new_packets().unwrap();
            },
        );
    }
    let s = suite(client.negotiated_cipher_suite().unwrap());
    assert_eq!(s.common.suite, only.suite());
    let secrets = client.dangerous_extract_secrets().unwrap();
    let (mut tx, mut rx) = split(s, secrets, 0).unwrap();
    // Ours to rustls.
    let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let parts = [&data[..5], &data[5..]];
    let bytes = seal_with(&mut tx, &parts, how == "into");
    let mut got = Vec::new();
    for piece in bytes.chunks(3000) {
        server.read_tls(&mut &piece[..]).unwrap();
        server.process_new_packets().unwrap();
        let _ = std::io::Read::read_to_end(&mut server.reader(), &mut got);
    }
    assert!(got == data);
    // rustls' to ours.
    server.set_buffer_limit(None);
    std::io::Write::write_all(&mut server.writer(), &data).unwrap();
    let mut bytes = Vec::new();
    while server.wants_write() {
        server.write_tls(&mut bytes).unwrap();
    }
    let (out, r) = feed(&mut rx, &bytes, 5000);
    r.unwrap();
    assert!(out == data, "{:?}, {how}", only.suite());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any pieces, sealed, and received in any chunks: the same bytes out.
    #[test]
    fn sealed_pieces_open_to_the_same_bytes(
        sizes in proptest::collection::vec(0usize..40_000, 0..5),
        chunk in 1usize..70_000,
        capacity in 0usize..200_000,
        into in any::<bool>(),
    ) {
        let (mut tx, mut rx) = pair(cs::TLS13_CHACHA20_POLY1305_SHA256, capacity);
        let data: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| (i * 7 + 3) as u8).collect();
        let mut parts = Vec::new();
        let mut at = 0;
        for n in &sizes {
            parts.push(&data[at..at + n]);
            at += n;
        }
        let bytes = seal_with(&mut tx, &parts, into);
        let (out, r) = FEEDS[into as usize].1(&mut rx, &bytes, chunk);
        prop_assert!(r.is_ok());
        prop_assert!(out == data);
    }

    /// One byte changed anywhere: what comes out is still a prefix of what was sealed (no
    /// forged plaintext), and an error says why it stopped — or, when the change made a
    /// length longer, the opener still waits for the rest.
    #[test]
    fn a_changed_byte_never_yields_forged_plaintext(
        at in any::<proptest::sample::Index>(),
        bit in 0u8..8,
        chunk in 1usize..20_000,
        into in any::<bool>(),
    ) {
        let (mut tx, mut rx) = pair(cs::TLS13_AES_256_GCM_SHA384, 0);
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        let mut bytes = sealed(&mut tx, &[&data]);
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let (out, r) = FEEDS[into as usize].1(&mut rx, &bytes, chunk);
        prop_assert!(data.starts_with(&out));
        let full = HEADER + MAX_FRAGMENT + 1 + 16;
        match (r.is_ok(), out.len() == data.len()) {
            // The legacy version: ignored.
            (true, true) => prop_assert!(matches!(i % full, 1 | 2), "byte {}", i),
            // A record length made longer: the opener waits for the rest.
            (true, false) => prop_assert!(matches!(i % full, 3 | 4), "byte {}", i),
            (false, complete) => prop_assert!(!complete),
        }
    }

    /// Arbitrary bytes from the network: never a panic, never plaintext.
    #[test]
    fn arbitrary_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..3000), chunk in 1usize..500, into in any::<bool>()) {
        let (_, mut rx) = pair(cs::TLS13_AES_256_GCM_SHA384, 0);
        let (out, _) = FEEDS[into as usize].1(&mut rx, &bytes, chunk);
        prop_assert!(out.is_empty());
    }
}
