//! TLS records from the network, as `receive` and `migrate --to tcp://` open them after the
//! handshake. The first byte picks the case (and whether records are sealed and opened through
//! rustls' record protection or through the crate's own, into buffers: `seal_into`,
//! `open_into`), the second the size of the pieces the bytes arrive in:
//! - arbitrary bytes: never a panic, never plaintext (nothing authenticates);
//! - a stream sealed here with some of its bytes changed (positions from the input): what
//!   comes out is a prefix of what was sealed, all of it when nothing was changed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384;
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::SupportedCipherSuite;
use tls_records::{sealed_len, Opener, Sealer, MAX_CIPHERTEXT};

fn pair() -> (Sealer, Opener) {
    #[allow(unreachable_patterns)]
    let s = match TLS13_AES_256_GCM_SHA384 {
        SupportedCipherSuite::Tls13(s) => s,
        _ => unreachable!(),
    };
    let key = || AeadKey::from([3u8; 32]);
    let iv = || Iv::from([5u8; 12]);
    (
        Sealer::new(s, key(), iv(), 0),
        Opener::new(s, key(), iv(), 0, 0),
    )
}

/// The plaintext that comes out of `bytes` arriving in pieces of `chunk`: opened in place, or
/// (`into`) into a buffer of `room` bytes at a time.
fn feed(o: &mut Opener, bytes: &[u8], chunk: usize, into: Option<usize>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = vec![0u8; into.unwrap_or(0)];
    let mut at = 0;
    while at < bytes.len() {
        let spare = o.spare();
        let n = spare.len().min(chunk).min(bytes.len() - at);
        spare[..n].copy_from_slice(&bytes[at..at + n]);
        at += n;
        if into.is_some() {
            if o.received_raw(n).is_err() {
                break;
            }
            loop {
                match o.open_into(&mut b) {
                    Ok(0) => break,
                    Ok(k) => out.extend_from_slice(&b[..k]),
                    Err(_) => return out,
                }
            }
            continue;
        }
        let r = o.received(n);
        let mut b = vec![0u8; o.available()];
        let k = o.read(&mut b);
        out.extend_from_slice(&b[..k]);
        if r.is_err() {
            break;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [mode, chunk, rest @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk) * 97 + 1;
    // Into buffers of at least a record's ciphertext (so each call takes one), more by `mode`.
    let into = (mode & 2 != 0).then(|| MAX_CIPHERTEXT + usize::from(mode >> 2) * 331);
    let (mut tx, mut rx) = pair();
    if mode & 1 == 0 {
        assert!(feed(&mut rx, rest, chunk, into).is_empty());
        return;
    }
    // [flips][2 bytes per flip][plaintext]
    let [flips, rest @ ..] = rest else { return };
    let flips = usize::from(flips % 4);
    if rest.len() < 2 * flips {
        return;
    }
    let (at, plain) = rest.split_at(2 * flips);
    // Longer streams than the input, so records are cut.
    let plain: Vec<u8> = plain
        .iter()
        .cycle()
        .take(plain.len() * 40)
        .copied()
        .collect();
    let mut bytes = if into.is_some() {
        let mut b = vec![0u8; sealed_len(plain.len())];
        let n = tx
            .seal_into(
                &[&plain[..1.min(plain.len())], &plain[1.min(plain.len())..]],
                &mut b,
            )
            .unwrap();
        b.truncate(n);
        b
    } else {
        let mut recs = Vec::new();
        tx.seal(&[&plain], &mut recs).unwrap();
        recs.concat()
    };
    if bytes.is_empty() {
        return;
    }
    for p in at.chunks(2) {
        let i = usize::from(u16::from_le_bytes([p[0], p[1]])) * 13 % bytes.len();
        bytes[i] ^= 0x5a;
    }
    let out = feed(&mut rx, &bytes, chunk, into);
    assert!(plain.starts_with(&out));
    if flips == 0 {
        assert!(out == plain);
    }
});
