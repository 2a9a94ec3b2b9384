//! TLS between the hosts: rustls does the handshake (certificates, mutual authentication,
//! key schedule); then the connection's records are ours: [`tls_records`] protects them with
//! the keys rustls hands over and the same AEAD as rustls' provider, from buffer to buffer.
//! On the destination the records are read from the socket into the opener's buffer and
//! decrypted from there into page-aligned buffers, whose plaintext is lent to the destination
//! VF's socket by reference ([`TlsConn::pass`], `lend`): per byte, the socket's copy, the
//! decryption, and the VF server's copy into its LMEM. On the source each frame is sealed from
//! the buffer the VF's data was read into straight into one reused buffer, sent with one
//! write: the VF socket's copy, the encryption, the connection's copy. (rustls' streams added
//! three copies on each side.)
//!
//! Only TLS 1.3 is spoken (both ends are xe-vfio). No key update: a connection stops with an
//! error when its sending key has protected as many records as the cipher suite allows
//! (for AES-GCM about 2^24.5 records of 16 KiB, some 370 GiB), rather than wear the key out.
//! Nothing follows the handshake that rustls would have to see: the destination sends no
//! session tickets (the opener would skip them), and each side reads the handshake one record
//! at a time ([`RecordWise`]), so rustls never buffers a record that comes after it.

use super::lend::{Lender, Ticket, NOTHING_LENT};
use rustls::{ExtractedSecrets, Tls13CipherSuite};
use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::BorrowedFd;
use tls_records::{Opener, Sealer, MAX_RECORD};
use vfio_user::send_all;
use vfio_user::splice::PassError;

/// A record's header: type, legacy version, length.
const RECORD_HEADER: usize = tls_records::HEADER;
/// The receive buffer: a DATA frame's worth of records per read, and room for the partial
/// record a read leaves behind.
const BUF: usize = (mig_net::MAX_DATA as usize) + 4 * MAX_RECORD;

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

fn invalid(e: tls_records::RecordError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A TLS 1.3 connection after its handshake: the records ours ([`tls_records`]), received
/// into the opener's buffer and written from there.
pub(super) struct TlsConn {
    tcp: TcpStream,
    sealer: Sealer,
    opener: Opener,
    /// Where the records are decrypted to, and lent from.
    plain: Lender,
    /// Where records are sealed to (grown to the largest frame, kept).
    sealed: Vec<u8>,
}

impl TlsConn {
    /// Takes over from rustls: its connection completed the handshake with `suite`, had
    /// nothing left to send (the caller flushed it), and gave up its `secrets`.
    pub(super) fn new(
        tcp: TcpStream,
        suite: &Tls13CipherSuite,
        secrets: ExtractedSecrets,
    ) -> io::Result<TlsConn> {
        let (sealer, opener) = tls_records::split(suite, secrets, BUF).map_err(invalid)?;
        Ok(TlsConn {
            tcp,
            sealer,
            opener,
            plain: Lender::new()?,
            sealed: Vec::new(),
        })
    }

    /// Receives until some plaintext is ready (or the peer closed).
    fn fill(&mut self) -> io::Result<()> {
        while self.plain.plaintext().is_empty() {
            let k = self.opener.open_into(self.plain.room()?).map_err(invalid)?;
            if k > 0 {
                self.plain.opened(k);
                return Ok(());
            }
            if self.opener.closed() {
                return Ok(());
            }
            let n = loop {
                match self.tcp.read(self.opener.spare()) {
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
            self.opener.received_raw(n).map_err(invalid)?;
        }
        Ok(())
    }

    /// Sends `head` and then the next `n` bytes of plaintext to `to` (a VF's socket), the
    /// plaintext lent by reference where it was decrypted ([`Lender`]), in as many pieces as
    /// its buffers take (the VF reads a body in pieces). The ticket is given back with
    /// [`Bodies::answered`] once the VF answered. Errors as
    /// [`vfio_user::splice::Splicer::pass`]'s.
    pub(super) fn pass(
        &mut self,
        to: BorrowedFd<'_>,
        head: &[u8],
        n: usize,
    ) -> Result<Ticket, PassError> {
        send_all(to, &[head], &[]).map_err(|err| PassError::Destination { err, left: n })?;
        let mut lent = Vec::new();
        let mut left = n;
        while left > 0 {
            if self.plain.plaintext().is_empty() {
                self.fill().map_err(PassError::Source)?;
                if self.plain.plaintext().is_empty() {
                    return Err(PassError::Source(io::ErrorKind::UnexpectedEof.into()));
                }
            }
            let k = left.min(self.plain.plaintext().len());
            self.plain
                .lend(to, k, &mut lent)
                .map_err(|err| PassError::Destination { err, left })?;
            left -= k;
        }
        Ok(self.plain.ticket(lent))
    }

    /// Protects `data` (one frame: its header and payload) as records, sealed from `data`
    /// straight into this connection's buffer and sent with one write.
    fn seal_and_send(&mut self, data: &[&[u8]]) -> io::Result<()> {
        let need = tls_records::sealed_len(data.iter().map(|d| d.len()).sum());
        if self.sealed.len() < need {
            self.sealed.resize(need, 0);
        }
        let n = self
            .sealer
            .seal_into(data, &mut self.sealed)
            .map_err(io::Error::other)?;
        send_all(&self.tcp, &[&self.sealed[..n]], &[])
    }
}

impl Read for TlsConn {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        self.fill()?;
        // 0 after close_notify.
        let p = self.plain.plaintext();
        let k = p.len().min(out.len());
        out[..k].copy_from_slice(&p[..k]);
        self.plain.consume(k);
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
    ) -> Result<Ticket, PassError> {
        if !whole {
            return TlsConn::pass(self, to, head, n);
        }
        let mut b = vec![0u8; n];
        self.read_exact(&mut b).map_err(PassError::Source)?;
        send_all(to, &[head, &b], &[]).map_err(|err| PassError::Destination { err, left: 0 })?;
        Ok(NOTHING_LENT)
    }

    fn answered(&mut self, t: Ticket) {
        self.plain.answered(t);
    }
}

impl super::Conn for TlsConn {
    fn tls(&mut self) -> Option<&mut TlsConn> {
        Some(self)
    }
}
