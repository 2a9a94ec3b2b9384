//! TLS 1.3 records after a rustls handshake, with no copy but the cipher's.
//!
//! rustls' streams copy application data twice beyond the socket's own copy (into the
//! deframer's buffer, and from a plaintext queue into the caller's buffer). For a bulk
//! transfer — a VF's migration stream, gigabytes — those copies cost more CPU than the
//! cipher. Here the caller receives straight into an [`Opener`]'s buffer, and the records
//! are decrypted either where they lie (the plaintext read from there as slices:
//! [`Opener::received`]) or from there into the caller's buffer, back to back
//! ([`Opener::open_into`]: for a caller that hands the plaintext on by reference). A
//! [`Sealer`] protects the caller's slices as records ([`Sealer::seal`]), or encrypts them
//! straight into the caller's buffer ([`Sealer::seal_into`]).
//!
//! The keys come from rustls (`dangerous_extract_secrets`, the interface it has for kernel
//! TLS, [`split`]). In place, the record protection is rustls' own (`MessageEncrypter`,
//! `MessageDecrypter` of the negotiated suite); from buffer to buffer — which rustls' record
//! protection does not do — it is the same aws-lc-rs AEAD rustls' provider runs, with the TLS
//! 1.3 nonce and additional data written out here (the records are byte for byte rustls',
//! which the tests hold). What this crate adds is the record framing, the sequence numbers
//! and the buffers. No crate did this part: `ktls` hands the keys to the kernel's TLS, which
//! not every kernel has.
//!
//! TLS 1.3 only. After the handshake only application data, alerts and session tickets
//! (skipped) are taken: any other handshake message (a key update) is an error. A [`Sealer`] stops at its suite's
//! confidentiality limit (about 2^24.5 records for AES-GCM) instead of updating keys.
//!
//! Untrusted input: a record's length is checked before anything waits for it, nothing is
//! allocated from it, every malformed record is an error (and the opener stays failed), and
//! no plaintext comes out of a record that does not authenticate.

use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, MessageEncrypter, OutboundChunks,
    OutboundPlainMessage,
};
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, ExtractedSecrets, ProtocolVersion,
    Tls13CipherSuite,
};
use std::collections::VecDeque;
use std::ops::Range;
use thiserror::Error;

/// A record's header: content type, legacy version, length.
pub const HEADER: usize = 5;
/// Most plaintext one record carries.
pub const MAX_FRAGMENT: usize = 1 << 14;
/// Most ciphertext one TLS 1.3 record may carry (RFC 8446 §5.2).
pub const MAX_CIPHERTEXT: usize = MAX_FRAGMENT + 256;
/// The largest record, header included.
pub const MAX_RECORD: usize = HEADER + MAX_CIPHERTEXT;

/// What went wrong with a record.
#[derive(Debug, Clone, Error)]
pub enum RecordError {
    #[error("a TLS record of type {0:?} after the handshake")]
    Type(ContentType),
    #[error("a TLS record of {0} bytes (at most {MAX_CIPHERTEXT})")]
    Length(usize),
    #[error("a TLS record from the peer: {0}")]
    Open(rustls::Error),
    #[error("received fatal alert: {0:?}")]
    Alert(AlertDescription),
    #[error("a TLS {0:?} message after the handshake (key updates are not taken)")]
    Unexpected(ContentType),
    #[error("TLS record sequence numbers exhausted")]
    Exhausted,
    #[error("this connection's key has protected {0} records, as many as its cipher suite allows; keys are not updated: use a new connection")]
    KeyLimit(u64),
    #[error("sealing a TLS record: {0}")]
    Seal(rustls::Error),
    #[error("TLS keys: {0}")]
    Keys(&'static str),
}

fn key_iv(s: ConnectionTrafficSecrets) -> Result<(AeadKey, Iv), RecordError> {
    match s {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
        _ => Err(RecordError::Keys("a cipher this crate does not know")),
    }
}

/// Both directions of a connection whose handshake rustls completed with `suite`: the
/// sealer for what this side sends, the opener (with a receive buffer of `capacity` bytes)
/// for what it receives.
pub fn split(
    suite: &Tls13CipherSuite,
    secrets: ExtractedSecrets,
    capacity: usize,
) -> Result<(Sealer, Opener), RecordError> {
    let ((tx_seq, tx), (rx_seq, rx)) = (secrets.tx, secrets.rx);
    let (tk, ti) = key_iv(tx)?;
    let (rk, ri) = key_iv(rx)?;
    Ok((
        Sealer::new(suite, tk, ti, tx_seq),
        Opener::new(suite, rk, ri, rx_seq, capacity),
    ))
}

/// Protects what this side sends.
pub struct Sealer {
    enc: Box<dyn MessageEncrypter>,
    /// The same key, for sealing from the caller's slices straight into its buffer
    /// ([`Sealer::seal_into`]); `None` for a suite [`Aead`] does not know.
    aead: Option<Aead>,
    /// A record's plaintext gathered from several of the caller's slices.
    gather: Vec<u8>,
    seq: u64,
    limit: u64,
}

impl Sealer {
    /// A sealer with `key` and `iv` of `suite`, whose next record is number `seq`.
    pub fn new(suite: &Tls13CipherSuite, key: AeadKey, iv: Iv, seq: u64) -> Sealer {
        Sealer {
            aead: Aead::new(suite, &key, &iv),
            enc: suite.aead_alg.encrypter(key, iv),
            gather: Vec::new(),
            seq,
            limit: suite.common.confidentiality_limit,
        }
    }

    /// Protects the concatenation of `data` as [`Sealer::seal`] does, the records written
    /// back to back into `out` — which must hold [`sealed_len`] of the plaintext's length —
    /// and returns how many bytes they take. Each record is encrypted from the caller's slice
    /// straight into `out` (a record whose plaintext spans two slices is gathered first):
    /// no allocation, no copy beyond the encryption's.
    pub fn seal_into(&mut self, data: &[&[u8]], out: &mut [u8]) -> Result<usize, RecordError> {
        let total: usize = data.iter().map(|d| d.len()).sum();
        if out.len() < sealed_len(total) {
            return Err(RecordError::Keys(
                "the buffer for sealed records is too small",
            ));
        }
        let Some(aead) = &self.aead else {
            // A suite only rustls knows: its records, copied.
            let mut recs = Vec::new();
            self.seal(data, &mut recs)?;
            let mut at = 0;
            for r in recs {
                out[at..at + r.len()].copy_from_slice(&r);
                at += r.len();
            }
            return Ok(at);
        };
        let (mut at, mut left) = (0, total);
        // The next plaintext byte: slice `si`, offset `off`.
        let (mut si, mut off) = (0, 0);
        while left > 0 {
            if self.seq >= self.limit {
                return Err(RecordError::KeyLimit(self.seq));
            }
            let n = left.min(MAX_FRAGMENT);
            while data[si].len() == off {
                (si, off) = (si + 1, 0);
            }
            let plain = if data[si].len() - off >= n {
                off += n;
                &data[si][off - n..off]
            } else {
                self.gather.clear();
                while self.gather.len() < n {
                    let k = (data[si].len() - off).min(n - self.gather.len());
                    self.gather.extend_from_slice(&data[si][off..off + k]);
                    off += k;
                    if off == data[si].len() && self.gather.len() < n {
                        (si, off) = (si + 1, 0);
                    }
                }
                &self.gather[..]
            };
            let rec = &mut out[at..at + HEADER + n + 1 + TAG];
            aead.seal(self.seq, plain, ContentType::ApplicationData, rec)?;
            self.seq += 1;
            at += rec.len();
            left -= n;
        }
        Ok(at)
    }

    /// Protects the concatenation of `data` as application data records of at most
    /// [`MAX_FRAGMENT`] bytes of plaintext each, appended (headers included) to `out`.
    pub fn seal(&mut self, data: &[&[u8]], out: &mut Vec<Vec<u8>>) -> Result<(), RecordError> {
        let mut rest = OutboundChunks::new(data);
        while !rest.is_empty() {
            let (now, later) = rest.split_at(MAX_FRAGMENT);
            out.push(self.record(ContentType::ApplicationData, now)?);
            rest = later;
        }
        Ok(())
    }

    /// One record of content type `typ` (an alert, say) carrying `data` (at most
    /// [`MAX_FRAGMENT`] bytes).
    pub fn seal_as(&mut self, typ: ContentType, data: &[u8]) -> Result<Vec<u8>, RecordError> {
        if data.len() > MAX_FRAGMENT {
            return Err(RecordError::Length(data.len()));
        }
        self.record(typ, OutboundChunks::from(data))
    }

    fn record(
        &mut self,
        typ: ContentType,
        payload: OutboundChunks<'_>,
    ) -> Result<Vec<u8>, RecordError> {
        if self.seq >= self.limit {
            return Err(RecordError::KeyLimit(self.seq));
        }
        let msg = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload,
        };
        let sealed = self.enc.encrypt(msg, self.seq).map_err(RecordError::Seal)?;
        self.seq += 1;
        Ok(sealed.encode())
    }

    /// The number of the next record.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Stops at `limit` records instead of the suite's (for tests of the limit).
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit.min(self.limit);
    }
}

/// Opens what this side receives, in its own buffer.
///
/// The caller receives into [`Opener::spare`] and reports how much with
/// [`Opener::received`]; every whole record is then decrypted in place, and its plaintext
/// is available ([`Opener::plaintext`], [`Opener::read`]) until [`Opener::consume`]d. A
/// partial record waits for the rest. Consuming the plaintext makes room.
pub struct Opener {
    dec: Box<dyn MessageDecrypter>,
    /// The same key, for decrypting from this buffer into the caller's ([`Aead`]); `None`
    /// for a suite it does not know (records are then copied there and opened in place).
    aead: Option<Aead>,
    seq: u64,
    buf: Vec<u8>,
    /// The plaintext not yet consumed, in order.
    plain: VecDeque<Range<usize>>,
    /// Received bytes not yet opened (a partial record), after all of `plain`.
    raw: Range<usize>,
    /// The peer sent close_notify: nothing after it is read.
    closed: bool,
    /// The first error; every later call returns it.
    failed: Option<RecordError>,
}

impl Opener {
    /// An opener with `key` and `iv` of `suite`, whose next record is number `seq`, and a
    /// receive buffer of `capacity` bytes (at least two whole records).
    pub fn new(
        suite: &Tls13CipherSuite,
        key: AeadKey,
        iv: Iv,
        seq: u64,
        capacity: usize,
    ) -> Opener {
        Opener {
            aead: Aead::new(suite, &key, &iv),
            dec: suite.aead_alg.decrypter(key, iv),
            seq,
            buf: vec![0; capacity.max(2 * MAX_RECORD)],
            plain: VecDeque::new(),
            raw: 0..0,
            closed: false,
            failed: None,
        }
    }

    /// Where the next bytes received go. When fewer than a whole record's bytes are free at
    /// the end, what is kept (plaintext and a partial record) moves to the front first —
    /// nothing, with the plaintext consumed, but a partial record.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.buf.len() - self.raw.end < MAX_RECORD {
            let from = self.plain.front().map_or(self.raw.start, |r| r.start);
            if from > 0 {
                self.buf.copy_within(from..self.raw.end, 0);
                for r in &mut self.plain {
                    *r = r.start - from..r.end - from;
                }
                self.raw = self.raw.start - from..self.raw.end - from;
            }
        }
        &mut self.buf[self.raw.end..]
    }

    /// `n` bytes were received into [`Opener::spare`]: opens every whole record.
    pub fn received(&mut self, n: usize) -> Result<(), RecordError> {
        self.received_raw(n)?;
        let r = self.open_records();
        self.fail_on(r)
    }

    /// `n` bytes were received into [`Opener::spare`]: they wait, unopened, for
    /// [`Opener::open_into`] (or the next [`Opener::received`], which opens them in place).
    pub fn received_raw(&mut self, n: usize) -> Result<(), RecordError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.raw.end += n.min(self.buf.len() - self.raw.end);
        Ok(())
    }

    /// Opens whole records into `out`, their plaintext back to back from its start, and
    /// returns how many bytes of plaintext it holds. A record is opened there only while its
    /// ciphertext less the tag fits in what is left of `out` (it is decrypted there, from the
    /// opener's buffer; [`MAX_CIPHERTEXT`] free bytes always take the next one); it stops
    /// there, at a partial record, and after close_notify. Plaintext already opened in place and not consumed
    /// comes first (copied, and consumed). An error comes once the plaintext of the records
    /// before the bad one has been returned.
    ///
    /// For a caller that hands the plaintext on by reference (`vmsplice(2)`): `out` is its
    /// own, so the opener's buffer can be reused at once while `out` stays untouched.
    pub fn open_into(&mut self, out: &mut [u8]) -> Result<usize, RecordError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut at = self.read(out);
        if at < out.len() && self.plain.is_empty() {
            let r = self.open_records_into(out, &mut at);
            // The plaintext of the records before a bad one is good: it comes out now, the
            // error with the next call.
            if self.fail_on(r).is_err() && at == 0 {
                return Err(self.failed.clone().unwrap_or(RecordError::Keys("failed")));
            }
        }
        Ok(at)
    }

    fn fail_on(&mut self, r: Result<(), RecordError>) -> Result<(), RecordError> {
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    /// The next whole record's header, checked: its type and legacy version, and the range
    /// of its body in the buffer. `None` for a partial record (or after close_notify).
    fn next_record(&self) -> Result<Option<(u16, Range<usize>)>, RecordError> {
        if self.raw.len() < HEADER || self.closed {
            return Ok(None);
        }
        let at = self.raw.start;
        let h = &self.buf[at..at + HEADER];
        let (typ, version) = (ContentType::from(h[0]), u16::from_be_bytes([h[1], h[2]]));
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if typ != ContentType::ApplicationData {
            return Err(RecordError::Type(typ));
        }
        if len > MAX_CIPHERTEXT {
            return Err(RecordError::Length(len));
        }
        if self.raw.len() < HEADER + len {
            return Ok(None);
        }
        Ok(Some((version, at + HEADER..at + HEADER + len)))
    }

    /// Decrypts the record `body` (the whole of it: its own ciphertext) with the next
    /// sequence number, in place: the type and the range of the plaintext within `body`.
    fn decrypt(
        &mut self,
        version: u16,
        body: &mut [u8],
    ) -> Result<(ContentType, Range<usize>), RecordError> {
        let seq = self.seq;
        self.seq = seq.checked_add(1).ok_or(RecordError::Exhausted)?;
        let base = body.as_ptr() as usize;
        let len = body.len();
        let msg = InboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::from(version),
            body,
        );
        let m = self.dec.decrypt(msg, seq).map_err(RecordError::Open)?;
        // Decrypted in place: the plaintext lies within the record's body.
        let start = (m.payload.as_ptr() as usize).wrapping_sub(base);
        let plain = start..start.saturating_add(m.payload.len());
        if plain.end > len {
            return Err(RecordError::Keys(
                "the decrypter did not open the record in place",
            ));
        }
        Ok((m.typ, plain))
    }

    /// What a record of type `typ` with plaintext `p` means: `Ok(true)` application data (to
    /// keep), `Ok(false)` nothing to keep (an empty record, session tickets, close_notify).
    fn take(&mut self, typ: ContentType, p: &[u8]) -> Result<bool, RecordError> {
        match typ {
            ContentType::ApplicationData => Ok(!p.is_empty()),
            ContentType::Alert => {
                let desc = AlertDescription::from(p.get(1).copied().unwrap_or(255));
                if p.len() == 2 && desc == AlertDescription::CloseNotify {
                    self.closed = true;
                    Ok(false)
                } else {
                    Err(RecordError::Alert(desc))
                }
            }
            ContentType::Handshake if only_tickets(p) => Ok(false),
            t => Err(RecordError::Unexpected(t)),
        }
    }

    fn open_records(&mut self) -> Result<(), RecordError> {
        while let Some((version, body)) = self.next_record()? {
            self.raw.start = body.end;
            let mut buf = std::mem::take(&mut self.buf);
            let r = self.decrypt(version, &mut buf[body.clone()]);
            let r = r.and_then(|(typ, p)| {
                let plain = body.start + p.start..body.start + p.end;
                Ok((self.take(typ, &buf[plain.clone()])?, plain))
            });
            self.buf = buf;
            if let (true, plain) = r? {
                self.plain.push_back(plain);
            }
        }
        Ok(())
    }

    fn open_records_into(&mut self, out: &mut [u8], at: &mut usize) -> Result<(), RecordError> {
        while let Some((version, body)) = self.next_record()? {
            // Decrypted apart, the ciphertext less its tag (the plaintext, its type and
            // padding) must fit; copied and opened in place, the tag too.
            let need = match self.aead {
                Some(_) => body.len().saturating_sub(TAG),
                None => body.len(),
            };
            let to = *at..*at + need;
            if to.end > out.len() {
                return Ok(());
            }
            self.raw.start = body.end;
            let (typ, p) = match &self.aead {
                Some(k) => {
                    let seq = self.seq;
                    self.seq = seq.checked_add(1).ok_or(RecordError::Exhausted)?;
                    k.open(seq, &self.buf[body], &mut out[to.clone()])?
                }
                None => {
                    out[to.clone()].copy_from_slice(&self.buf[body]);
                    self.decrypt(version, &mut out[to.clone()])?
                }
            };
            if p.start != 0 {
                return Err(RecordError::Keys(
                    "the decrypter did not open the record at its start",
                ));
            }
            if self.take(typ, &out[to.start..to.start + p.end])? {
                *at += p.end;
            }
        }
        Ok(())
    }

    /// The plaintext not yet consumed, record by record.
    pub fn plaintext(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.plain.iter().map(|r| &self.buf[r.clone()])
    }

    /// How many bytes of plaintext are waiting.
    pub fn available(&self) -> usize {
        self.plain.iter().map(|r| r.len()).sum()
    }

    /// Drops the first `n` bytes of plaintext (all of it, if fewer).
    pub fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(r) = self.plain.front_mut() else {
                return;
            };
            let k = n.min(r.end - r.start);
            r.start += k;
            n -= k;
            if r.start == r.end {
                self.plain.pop_front();
            }
        }
    }

    /// Copies plaintext into `out` and consumes it; how many bytes.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let mut done = 0;
        while done < out.len() {
            let Some(r) = self.plain.front() else { break };
            let k = (r.end - r.start).min(out.len() - done);
            out[done..done + k].copy_from_slice(&self.buf[r.start..r.start + k]);
            done += k;
            self.consume(k);
        }
        done
    }

    /// The peer closed the connection cleanly (close_notify).
    pub fn closed(&self) -> bool {
        self.closed
    }
}

/// Every TLS 1.3 AEAD's tag.
const TAG: usize = 16;

/// How many bytes [`Sealer::seal_into`] needs for `plaintext` bytes: each record of at most
/// [`MAX_FRAGMENT`] bytes adds its header, its content type and the tag.
pub fn sealed_len(plaintext: usize) -> usize {
    plaintext + plaintext.div_ceil(MAX_FRAGMENT) * (HEADER + 1 + TAG)
}

/// A record's AEAD from one buffer into another. rustls' record protection only opens in
/// place and seals into buffers it allocates; this is the same aws-lc-rs AEAD (rustls'
/// provider here) with the same key, and the TLS 1.3 record layer around it written out
/// (RFC 8446 §5.2–5.4, as rustls does it): the nonce is the IV xor the record's sequence
/// number, the additional data the record's header with the legacy version 0x0303 (the
/// version received is ignored), the plaintext ends with its content type (no padding is
/// sent; padding received is taken off). The tests hold both ways to rustls' records.
struct Aead {
    key: aws_lc_rs::aead::LessSafeKey,
    iv: [u8; 12],
}

impl Aead {
    fn new(suite: &Tls13CipherSuite, key: &AeadKey, iv: &Iv) -> Option<Aead> {
        use aws_lc_rs::aead;
        use rustls::CipherSuite as C;
        let alg = match suite.common.suite {
            C::TLS13_AES_128_GCM_SHA256 => &aead::AES_128_GCM,
            C::TLS13_AES_256_GCM_SHA384 => &aead::AES_256_GCM,
            C::TLS13_CHACHA20_POLY1305_SHA256 => &aead::CHACHA20_POLY1305,
            _ => return None,
        };
        let key = aead::UnboundKey::new(alg, key.as_ref()).ok()?;
        Some(Aead {
            key: aead::LessSafeKey::new(key),
            iv: iv.as_ref().try_into().ok()?,
        })
    }

    fn nonce(&self, seq: u64) -> aws_lc_rs::aead::Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce)
    }

    /// A record's header, which is also its additional data: `len` bytes of ciphertext.
    fn header(len: usize) -> [u8; HEADER] {
        let len = (len as u16).to_be_bytes();
        [u8::from(ContentType::ApplicationData), 3, 3, len[0], len[1]]
    }

    /// Seals `plain` of type `typ` as record `seq` into `rec` (exactly its size: header,
    /// ciphertext, type, tag).
    fn seal(
        &self,
        seq: u64,
        plain: &[u8],
        typ: ContentType,
        rec: &mut [u8],
    ) -> Result<(), RecordError> {
        let header = Aead::header(rec.len() - HEADER);
        let (head, body) = rec.split_at_mut(HEADER);
        head.copy_from_slice(&header);
        let (ct, extra_and_tag) = body.split_at_mut(plain.len());
        self.key
            .seal_out_of_place_scatter(
                self.nonce(seq),
                aws_lc_rs::aead::Aad::from(header),
                plain,
                ct,
                &[u8::from(typ)],
                extra_and_tag,
            )
            .map_err(|_| RecordError::Keys("sealing a record failed"))
    }

    /// Opens record `seq`'s `body` (ciphertext and tag) into `out` (as long as the body less
    /// its tag): its type and where its plaintext lies in `out`.
    fn open(
        &self,
        seq: u64,
        body: &[u8],
        out: &mut [u8],
    ) -> Result<(ContentType, Range<usize>), RecordError> {
        let undecryptable = || RecordError::Open(rustls::Error::DecryptError);
        let Some(split) = body.len().checked_sub(TAG) else {
            return Err(undecryptable());
        };
        self.key
            .open_separate_gather(
                self.nonce(seq),
                aws_lc_rs::aead::Aad::from(Aead::header(body.len())),
                &body[..split],
                &body[split..],
                &mut out[..split],
            )
            .map_err(|_| undecryptable())?;
        // The content type is the last byte that is not zero padding.
        let Some(end) = out[..split].iter().rposition(|&b| b != 0) else {
            let e = rustls::PeerMisbehaved::IllegalTlsInnerPlaintext;
            return Err(RecordError::Open(rustls::Error::PeerMisbehaved(e)));
        };
        if end > MAX_FRAGMENT {
            return Err(RecordError::Open(rustls::Error::PeerSentOversizedRecord));
        }
        Ok((ContentType::from(out[end]), 0..end))
    }
}

/// Whether a handshake record holds whole NewSessionTicket messages and nothing else: those
/// are skipped (a server sends them after the handshake unless told not to; resuming is
/// never needed here). Anything else after the handshake — a key update above all — is an
/// error.
/// Whether the plaintext of a handshake record after the handshake holds only whole
/// NewSessionTicket messages (which a client may ignore), and at least one.
pub fn only_tickets(mut p: &[u8]) -> bool {
    const NEW_SESSION_TICKET: u8 = 4;
    if p.is_empty() {
        return false;
    }
    while let [typ, a, b, c, rest @ ..] = p {
        let len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
        if *typ != NEW_SESSION_TICKET || len > rest.len() {
            return false;
        }
        p = &rest[len..];
    }
    p.is_empty()
}

#[cfg(test)]
mod tests;
