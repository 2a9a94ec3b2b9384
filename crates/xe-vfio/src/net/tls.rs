//! TLS between the hosts: rustls does the handshake (certificates, mutual authentication,
//! key schedule); once it is done, the records of the connection are protected here, with the
//! keys rustls hands over (`dangerous_extract_secrets`, the interface it has for kernel TLS)
//! and rustls' own record protection (`MessageEncrypter`/`MessageDecrypter`) — so the
//! cryptography is rustls', and what this module adds is where the bytes live.
//!
//! Why not rustls' streams: they copy every byte of the application data twice beyond the
//! socket's own copy (into the deframer's buffer, and from a plaintext queue into the
//! caller's buffer) and a third time on our side to hand it on. A VF's stream is gigabytes,
//! and on the destination those copies were most of the CPU a TLS migration took. Here the
//! records are read from the socket straight into one buffer, decrypted where they lie, and
//! the plaintext is written from there into the destination VF's socket ([`TlsConn::pass`]):
//! the socket's copy, the decryption, the VF socket's copy, nothing else. No crate does this
//! part (`ktls` configures the kernel's TLS, which this machine's kernel does not have).
//!
//! Only TLS 1.3 is spoken (both ends are xe-vfio). No key update: a connection stops with an
//! error when its sending key has protected as many records as the cipher suite allows
//! (for AES-GCM about 2^24.5 records of 16 KiB, some 370 GiB), rather than wear the key out.
//! Nothing follows the handshake that rustls would have to see: the destination sends no
//! session tickets, and each side reads the handshake one record at a time
//! ([`RecordWise`]), so rustls never buffers a record that comes after it.

use rustls::crypto::cipher::{
    InboundOpaqueMessage, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, ProtocolVersion, SupportedCipherSuite,
};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::os::fd::BorrowedFd;
use vfio_user::splice::PassError;

/// A record's header: type, legacy version, length.
const RECORD_HEADER: usize = 5;
/// Most plaintext one record carries.
const MAX_FRAGMENT: usize = 1 << 14;
/// Most ciphertext one TLS 1.3 record may carry (RFC 8446 §5.2).
const MAX_CIPHERTEXT: usize = MAX_FRAGMENT + 256;
/// The receive buffer: a DATA frame's worth of records per read, and room for the partial
/// record a read leaves behind.
const BUF: usize = (mig_net::MAX_DATA as usize) + 4 * (RECORD_HEADER + MAX_CIPHERTEXT);

/// The handshake's reader: hands rustls one record at a time (at most the rest of the
/// current one per read), so that when the handshake ends no byte after its last record has
/// been taken from the socket.
pub(super) struct RecordWise<'a> {
    tcp: &'a TcpStream,
    head: [u8; RECORD_HEADER],
    /// Bytes of `head` handed over (all of them once the body is being read).
    head_out: usize,
    /// Bytes of the current record's body still to hand over.
    left: usize,
}

impl<'a> RecordWise<'a> {
    pub(super) fn new(tcp: &'a TcpStream) -> RecordWise<'a> {
        RecordWise {
            tcp,
            head: [0; RECORD_HEADER],
            head_out: RECORD_HEADER,
            left: 0,
        }
    }
}

impl Read for RecordWise<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.head_out == RECORD_HEADER && self.left == 0 {
            // The next record's header, whole (end of stream before its first byte is EOF).
            let mut got = 0;
            while got < RECORD_HEADER {
                match self.tcp.read(&mut self.head[got..]) {
                    Ok(0) if got == 0 => return Ok(0),
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.head_out = 0;
            self.left = usize::from(u16::from_be_bytes([self.head[3], self.head[4]]));
        }
        if self.head_out < RECORD_HEADER {
            let n = (RECORD_HEADER - self.head_out).min(buf.len());
            buf[..n].copy_from_slice(&self.head[self.head_out..self.head_out + n]);
            self.head_out += n;
            return Ok(n);
        }
        let want = self.left.min(buf.len());
        let n = self.tcp.read(&mut buf[..want])?;
        if n == 0 && want > 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n;
        Ok(n)
    }
}

impl Write for RecordWise<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.tcp.write(b)
    }
    fn write_vectored(&mut self, b: &[IoSlice<'_>]) -> io::Result<usize> {
        self.tcp.write_vectored(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A TLS 1.3 connection after its handshake.
pub(super) struct TlsConn {
    tcp: TcpStream,
    enc: Box<dyn MessageEncrypter>,
    tx_seq: u64,
    /// Records the sending key may protect.
    tx_limit: u64,
    dec: Box<dyn MessageDecrypter>,
    rx_seq: u64,
    /// Records as received, decrypted in place.
    buf: Vec<u8>,
    /// The decrypted plaintext not yet consumed, in order, in `buf`.
    plain: VecDeque<Range<usize>>,
    /// Received bytes not yet decrypted (a partial record), after all of `plain`.
    raw: Range<usize>,
    /// The peer sent close_notify.
    closed: bool,
}

impl TlsConn {
    /// Takes over from rustls: `conn` has completed its handshake and has nothing left to
    /// send (the caller flushed it).
    pub(super) fn new(tcp: TcpStream, conn: rustls::Connection) -> Result<TlsConn, rustls::Error> {
        let suite = match conn.negotiated_cipher_suite() {
            Some(SupportedCipherSuite::Tls13(s)) => s,
            _ => {
                return Err(rustls::Error::General(
                    "not TLS 1.3 (the only version xe-vfio speaks)".into(),
                ))
            }
        };
        let secrets = conn.dangerous_extract_secrets()?;
        let keys = |s: ConnectionTrafficSecrets| match s {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => unreachable!("no other TLS 1.3 cipher suite is configured"),
        };
        let ((tx_seq, tx), (rx_seq, rx)) = (secrets.tx, secrets.rx);
        let (tk, ti) = keys(tx);
        let (rk, ri) = keys(rx);
        Ok(TlsConn {
            tcp,
            enc: suite.aead_alg.encrypter(tk, ti),
            tx_seq,
            tx_limit: suite.common.confidentiality_limit,
            dec: suite.aead_alg.decrypter(rk, ri),
            rx_seq,
            buf: vec![0; BUF],
            plain: VecDeque::new(),
            raw: 0..0,
            closed: false,
        })
    }

    /// Receives until some plaintext is ready (or the peer closed). Only called with all the
    /// plaintext consumed, so the partial record left is the only thing to keep.
    fn fill(&mut self) -> io::Result<()> {
        debug_assert!(self.plain.is_empty());
        while self.plain.is_empty() && !self.closed {
            if self.raw.start > 0 {
                self.buf.copy_within(self.raw.clone(), 0);
                self.raw = 0..self.raw.len();
            }
            let n = loop {
                match self.tcp.read(&mut self.buf[self.raw.end..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => break r?,
                }
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection without a TLS close_notify",
                ));
            }
            self.raw.end += n;
            self.open_records()?;
        }
        Ok(())
    }

    /// Decrypts every whole record in `raw`.
    fn open_records(&mut self) -> io::Result<()> {
        while self.raw.len() >= RECORD_HEADER && !self.closed {
            let at = self.raw.start;
            let h = &self.buf[at..at + RECORD_HEADER];
            let (typ, version) = (h[0], u16::from_be_bytes([h[1], h[2]]));
            let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
            if ContentType::from(typ) != ContentType::ApplicationData {
                return Err(invalid(format!(
                    "a TLS record of type {:?} after the handshake",
                    ContentType::from(typ)
                )));
            }
            if len > MAX_CIPHERTEXT {
                return Err(invalid(format!(
                    "a TLS record of {len} bytes (at most {MAX_CIPHERTEXT})"
                )));
            }
            if self.raw.len() < RECORD_HEADER + len {
                break;
            }
            let body = at + RECORD_HEADER..at + RECORD_HEADER + len;
            self.raw.start = body.end;
            let seq = self.rx_seq;
            self.rx_seq = seq
                .checked_add(1)
                .ok_or_else(|| invalid("TLS record sequence numbers exhausted"))?;
            let msg = InboundOpaqueMessage::new(
                ContentType::ApplicationData,
                ProtocolVersion::from(version),
                &mut self.buf[body.clone()],
            );
            let m = self
                .dec
                .decrypt(msg, seq)
                .map_err(|e| invalid(format!("a TLS record from the peer: {e}")))?;
            // Decrypted in place: the plaintext starts where the ciphertext did.
            let (typ, plain) = (m.typ, body.start..body.start + m.payload.len());
            match typ {
                ContentType::ApplicationData if plain.is_empty() => {}
                ContentType::ApplicationData => self.plain.push_back(plain),
                ContentType::Alert => {
                    let p = &self.buf[plain];
                    let desc = AlertDescription::from(*p.get(1).unwrap_or(&255));
                    if p.len() == 2 && desc == AlertDescription::CloseNotify {
                        self.closed = true;
                    } else {
                        return Err(invalid(format!("received fatal alert: {desc:?}")));
                    }
                }
                t => {
                    return Err(invalid(format!(
                        "a TLS {t:?} message after the handshake (key updates are not taken)"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Drops the first `n` bytes of the plaintext.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(r) = self.plain.front_mut() else {
                return;
            };
            let k = n.min(r.len());
            r.start += k;
            n -= k;
            if r.start == r.end {
                self.plain.pop_front();
            }
        }
    }

    /// Sends `head` and then the next `n` bytes of plaintext to `to` (a VF's socket),
    /// written from where they were decrypted, in as many writes as the records take (the
    /// VF reads a body in pieces). Errors as [`vfio_user::splice::Splicer::pass`]'s.
    pub(super) fn pass(
        &mut self,
        to: BorrowedFd<'_>,
        head: &[u8],
        n: usize,
    ) -> Result<(), PassError> {
        send_all(to, &mut [IoSlice::new(head)], true)
            .map_err(|err| PassError::Destination { err, left: n })?;
        let mut left = n;
        while left > 0 {
            if self.plain.is_empty() {
                self.fill().map_err(PassError::Source)?;
                if self.plain.is_empty() {
                    return Err(PassError::Source(io::ErrorKind::UnexpectedEof.into()));
                }
            }
            let mut take = 0;
            let mut parts = Vec::with_capacity(self.plain.len());
            for r in &self.plain {
                let k = r.len().min(left - take);
                parts.push(IoSlice::new(&self.buf[r.start..r.start + k]));
                take += k;
                if take == left {
                    break;
                }
            }
            let more = take < left;
            send_all(to, &mut parts, more).map_err(|err| PassError::Destination { err, left })?;
            self.consume(take);
            left -= take;
        }
        Ok(())
    }

    /// Protects `data` as records of at most [`MAX_FRAGMENT`] bytes each, in the order
    /// given, and sends them with one vectored write.
    fn seal_and_send(&mut self, data: &[&[u8]]) -> io::Result<()> {
        let mut records = Vec::new();
        let mut rest = OutboundChunks::new(data);
        while !rest.is_empty() {
            if self.tx_seq >= self.tx_limit {
                return Err(io::Error::other(format!(
                    "this connection's TLS key has protected {} records, as many as its cipher suite allows; xe-vfio does not update keys: migrate over a new connection",
                    self.tx_seq
                )));
            }
            let (now, later) = rest.split_at(MAX_FRAGMENT);
            let msg = OutboundPlainMessage {
                typ: ContentType::ApplicationData,
                version: ProtocolVersion::TLSv1_2,
                payload: now,
            };
            let sealed = self
                .enc
                .encrypt(msg, self.tx_seq)
                .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
            self.tx_seq += 1;
            records.push(sealed.encode());
            rest = later;
        }
        let mut parts: Vec<IoSlice<'_>> = records.iter().map(|r| IoSlice::new(r)).collect();
        let mut parts = &mut parts[..];
        while !parts.is_empty() {
            match self.tcp.write_vectored(parts) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut parts, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Sends every byte of `parts` on a socket (`MSG_MORE` when more follows soon).
fn send_all(to: BorrowedFd<'_>, parts: &mut [IoSlice<'_>], more: bool) -> io::Result<()> {
    let mut parts = parts;
    let mut flags = rustix::net::SendFlags::NOSIGNAL;
    if more {
        flags |= rustix::net::SendFlags::MORE;
    }
    while !parts.is_empty() {
        match rustix::net::sendmsg(to, parts, &mut Default::default(), flags) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut parts, n),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl Read for TlsConn {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.plain.is_empty() {
            self.fill()?;
        }
        let Some(r) = self.plain.front() else {
            return Ok(0); // close_notify
        };
        let k = r.len().min(out.len());
        out[..k].copy_from_slice(&self.buf[r.start..r.start + k]);
        self.consume(k);
        Ok(k)
    }
}

impl Write for TlsConn {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.seal_and_send(&[b])?;
        Ok(b.len())
    }

    /// All of `b`, as one run of records (a frame's header and payload travel together).
    fn write_vectored(&mut self, b: &[IoSlice<'_>]) -> io::Result<usize> {
        let parts: Vec<&[u8]> = b.iter().map(|s| &**s).collect();
        self.seal_and_send(&parts)?;
        Ok(parts.iter().map(|p| p.len()).sum())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl super::spliced::Bodies for TlsConn {
    fn pass(
        &mut self,
        to: BorrowedFd<'_>,
        head: &[u8],
        n: usize,
        whole: bool,
    ) -> Result<(), PassError> {
        if !whole {
            return TlsConn::pass(self, to, head, n);
        }
        let mut b = vec![0u8; n];
        self.read_exact(&mut b).map_err(PassError::Source)?;
        send_all(to, &mut [IoSlice::new(head), IoSlice::new(&b)], false)
            .map_err(|err| PassError::Destination { err, left: 0 })
    }
}

impl super::Conn for TlsConn {
    fn tls(&mut self) -> Option<&mut TlsConn> {
        Some(self)
    }
}
