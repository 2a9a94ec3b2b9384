//! Kernel TLS, where the kernel has it (`CONFIG_TLS`: the `tls` module): once rustls has
//! authenticated the peer and derived the keys, the kernel seals and opens the connection's
//! records. What is read from the socket is then the stream's plaintext and what is written
//! to it is sealed on the way out, so the data path is plain TCP's: spliced between the
//! connection and the VFs' sockets, never through this process ([`super::spliced`]). The
//! cipher runs in the kernel's own copy of each byte (the socket's), which user-space records
//! cannot do: per byte, the TLS path costs plain TCP's plus the cipher.
//!
//! Where the kernel has no TLS (the `tls` upper-layer protocol cannot be set) or refuses the
//! suite's send keys, the connection goes on with records sealed in this process
//! ([`super::tls`]) — both are the same TLS 1.3 on the wire, so either side may use either.
//! Once the send keys are taken, a refusal of the receive keys is an error: the connection
//! can no longer be used.
//!
//! Records the kernel does not decrypt into data come back with their type
//! (`TLS_GET_RECORD_TYPE`): session tickets are skipped (an earlier xe-vfio's destination
//! sent two), close_notify ends the stream, anything else (another alert, a key update) is an
//! error, as for records opened here. A connection's send key protects at most as many
//! records as the suite allows: the sequence number the kernel reports (`TLS_TX`) is checked
//! after each write, and the connection stops with an error short of the limit.
//!
//! Written over `libc` (its `tls12_crypto_info_*` structures) rather than a kTLS crate: those
//! are built for tokio streams (`ktls`) or pre-release (`ktls-core` 0.0), and what is needed is
//! three socket options and `recvmsg` with one control message.

use rustls::{AlertDescription, ConnectionTrafficSecrets, ContentType, ExtractedSecrets};
use std::io::{self, IoSlice, Read, Write};
use std::mem::{size_of, zeroed};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use tls_records::{RecordError, MAX_FRAGMENT};

const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;

/// Records of room left under the send key's limit when a connection stops: more than one
/// frame of at most `MAX_DATA` bytes can take, however it was split into writes.
const MARGIN: u64 = 1 << 12;

/// Why the kernel does not take a connection's records; it goes on with ours.
#[derive(Debug)]
pub(super) struct NotOffered(pub String);

/// One direction's keys in the kernel's layout (zeroed when dropped).
enum Keys {
    Aes128(libc::tls12_crypto_info_aes_gcm_128),
    Aes256(libc::tls12_crypto_info_aes_gcm_256),
    Chacha(libc::tls12_crypto_info_chacha20_poly1305),
}

/// Copies `from` into `to`, which must be as long.
fn fill(to: &mut [u8], from: &[u8]) -> Option<()> {
    (to.len() == from.len()).then(|| to.copy_from_slice(from))
}

impl Keys {
    /// The kernel's form of `s` at record sequence number `seq`; `None` for a cipher it is
    /// not given (or keys of the wrong size).
    fn new(seq: u64, s: &ConnectionTrafficSecrets) -> Option<Keys> {
        // SAFETY (the three `zeroed`): plain C structures of integers and byte arrays, for
        // which all zeroes is a valid value.
        let mut keys = match s {
            ConnectionTrafficSecrets::Aes128Gcm { .. } => Keys::Aes128(unsafe { zeroed() }),
            ConnectionTrafficSecrets::Aes256Gcm { .. } => Keys::Aes256(unsafe { zeroed() }),
            ConnectionTrafficSecrets::Chacha20Poly1305 { .. } => Keys::Chacha(unsafe { zeroed() }),
            _ => return None,
        };
        let info = |cipher| libc::tls_crypto_info {
            version: libc::TLS_1_3_VERSION,
            cipher_type: cipher,
        };
        let rec_seq = seq.to_be_bytes();
        // The TLS 1.3 nonce (RFC 8446 §5.3) is built from a 12-byte IV: AES-GCM takes its
        // first 4 bytes as `salt` and its last 8 as `iv`, ChaCha20-Poly1305 all 12 as `iv`.
        // (A `?` below drops `keys`, which wipes what was filled in.)
        match (&mut keys, s) {
            (Keys::Aes128(k), ConnectionTrafficSecrets::Aes128Gcm { key, iv }) => {
                k.info = info(libc::TLS_CIPHER_AES_GCM_128);
                fill(&mut k.key, key.as_ref())?;
                fill(&mut k.salt, iv.as_ref().get(..4)?)?;
                fill(&mut k.iv, iv.as_ref().get(4..)?)?;
                k.rec_seq = rec_seq;
            }
            (Keys::Aes256(k), ConnectionTrafficSecrets::Aes256Gcm { key, iv }) => {
                k.info = info(libc::TLS_CIPHER_AES_GCM_256);
                fill(&mut k.key, key.as_ref())?;
                fill(&mut k.salt, iv.as_ref().get(..4)?)?;
                fill(&mut k.iv, iv.as_ref().get(4..)?)?;
                k.rec_seq = rec_seq;
            }
            (Keys::Chacha(k), ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }) => {
                k.info = info(libc::TLS_CIPHER_CHACHA20_POLY1305);
                fill(&mut k.key, key.as_ref())?;
                fill(&mut k.iv, iv.as_ref())?;
                k.rec_seq = rec_seq;
            }
            _ => return None,
        }
        Some(keys)
    }

    /// The structure's bytes (for `setsockopt`).
    fn raw(&self) -> (*const libc::c_void, usize) {
        match self {
            Keys::Aes128(k) => (
                (k as *const _ as *const _),
                size_of::<libc::tls12_crypto_info_aes_gcm_128>(),
            ),
            Keys::Aes256(k) => (
                (k as *const _ as *const _),
                size_of::<libc::tls12_crypto_info_aes_gcm_256>(),
            ),
            Keys::Chacha(k) => (
                (k as *const _ as *const _),
                size_of::<libc::tls12_crypto_info_chacha20_poly1305>(),
            ),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Keys::Aes128(_) => "AES-128-GCM",
            Keys::Aes256(_) => "AES-256-GCM",
            Keys::Chacha(_) => "ChaCha20-Poly1305",
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        // SAFETY: each write puts a valid value (all zeroes, as in `new`) through an exclusive
        // reference; volatile, so that wiping the key material is not optimised away.
        unsafe {
            match self {
                Keys::Aes128(k) => std::ptr::write_volatile(k, zeroed()),
                Keys::Aes256(k) => std::ptr::write_volatile(k, zeroed()),
                Keys::Chacha(k) => std::ptr::write_volatile(k, zeroed()),
            }
        }
    }
}

fn setsockopt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: *const libc::c_void,
    n: usize,
) -> io::Result<()> {
    // SAFETY: `v` points at `n` readable bytes for the duration of the call.
    let r = unsafe { libc::setsockopt(fd, level, name, v, n as libc::socklen_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Hands the records of `tcp` to the kernel with the keys of `secrets` (a TLS 1.3 handshake
/// just completed: nothing of the peer's after it has been read). `Ok(Err(..))`: the kernel
/// does not take them, and the connection is as it was.
pub(super) fn offload(
    tcp: &TcpStream,
    secrets: &ExtractedSecrets,
) -> io::Result<Result<(), NotOffered>> {
    let fd = tcp.as_raw_fd();
    let (Some(tx), Some(rx)) = (
        Keys::new(secrets.tx.0, &secrets.tx.1),
        Keys::new(secrets.rx.0, &secrets.rx.1),
    ) else {
        return Ok(Err(NotOffered(
            "a cipher suite the kernel is not given".into(),
        )));
    };
    let ulp = b"tls";
    if let Err(e) = setsockopt(
        fd,
        libc::SOL_TCP,
        libc::TCP_ULP,
        ulp.as_ptr().cast(),
        ulp.len(),
    ) {
        return Ok(Err(NotOffered(format!("the kernel has no TLS ({e})"))));
    }
    // With the upper-layer protocol set and no keys, the socket is still plain TCP.
    let (p, n) = tx.raw();
    if let Err(e) = setsockopt(fd, libc::SOL_TLS, libc::TLS_TX, p, n) {
        return Ok(Err(NotOffered(format!(
            "the kernel does not seal {} ({e})",
            tx.name()
        ))));
    }
    let (p, n) = rx.raw();
    setsockopt(fd, libc::SOL_TLS, libc::TLS_RX, p, n).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("kernel TLS took the send keys but not the receive keys: {e}"),
        )
    })?;
    // Our peers do not pad records: the kernel may then decrypt straight into the reader's
    // buffer (6.0 and later; a padded record is still opened, only slower).
    let one: libc::c_int = 1;
    let _ = setsockopt(
        fd,
        libc::SOL_TLS,
        libc::TLS_RX_EXPECT_NO_PAD,
        (&one as *const libc::c_int).cast(),
        size_of::<libc::c_int>(),
    );
    Ok(Ok(()))
}

/// `recvmsg` into `buf`: the byte count and the record type the kernel gave (application
/// data if it gave none).
fn recvmsg(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<(usize, u8)> {
    // Room for one control message, aligned as `cmsghdr`.
    #[repr(C)]
    union Control {
        _hdr: libc::cmsghdr,
        _buf: [u8; 64],
    }
    loop {
        // SAFETY: integers, pointers and byte arrays: all zeroes is valid.
        let mut control: Control = unsafe { zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = (&mut control as *mut Control).cast();
        msg.msg_controllen = size_of::<Control>() as _;
        // SAFETY: `msg` points at `buf` (writable, `buf.len()` bytes) and at `control`
        // (writable, its size), both alive for the call.
        let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut typ = APPLICATION_DATA;
        // SAFETY: `msg` as filled by the kernel: the CMSG_* walk stays inside `control`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_TLS && (*c).cmsg_type == libc::TLS_GET_RECORD_TYPE {
                    typ = *libc::CMSG_DATA(c);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        return Ok((n as usize, typ));
    }
}

fn invalid(e: RecordError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A record that is not application data, whole: `Ok(true)` close_notify, `Ok(false)`
/// nothing to take (session tickets).
fn control(typ: u8, p: &[u8]) -> io::Result<bool> {
    match typ {
        ALERT if p.len() == 2 && AlertDescription::from(p[1]) == AlertDescription::CloseNotify => {
            Ok(true)
        }
        ALERT => Err(invalid(RecordError::Alert(AlertDescription::from(
            p.get(1).copied().unwrap_or(255),
        )))),
        HANDSHAKE if tls_records::only_tickets(p) => Ok(false),
        t => Err(invalid(RecordError::Unexpected(ContentType::from(t)))),
    }
}

/// Reads plaintext from a kernel TLS connection into `buf`, as `read` would from plain TCP:
/// 0 at the end of the stream (close_notify, after which `closed` is set, or the peer's end
/// of the connection). Never reads past what `buf` takes: what follows stays in the socket
/// (to be spliced).
pub(super) fn recv(tcp: &TcpStream, buf: &mut [u8], closed: &mut bool) -> io::Result<usize> {
    if buf.is_empty() || *closed {
        return Ok(0);
    }
    let fd = tcp.as_raw_fd();
    let mut whole: Vec<u8> = Vec::new();
    loop {
        // A record that is not data is returned alone, and whole where the buffer takes it:
        // a small read looks at the next record's type first.
        if buf.len() <= MAX_FRAGMENT {
            let (n, typ) = recvmsg(fd, &mut [0u8; 1], libc::MSG_PEEK)?;
            if n == 0 {
                return Ok(0);
            }
            if typ == APPLICATION_DATA {
                let (n, typ) = recvmsg(fd, buf, 0)?;
                if typ != APPLICATION_DATA {
                    return Err(invalid(RecordError::Keys(
                        "kernel TLS changed a record's type",
                    )));
                }
                return Ok(n);
            }
            whole.resize(MAX_FRAGMENT + 1, 0);
            let (n, typ) = recvmsg(fd, &mut whole, 0)?;
            if control(typ, &whole[..n])? {
                *closed = true;
                return Ok(0);
            }
        } else {
            let (n, typ) = recvmsg(fd, buf, 0)?;
            if n == 0 || typ == APPLICATION_DATA {
                return Ok(n);
            }
            if control(typ, &buf[..n])? {
                *closed = true;
                return Ok(0);
            }
        }
    }
}

/// `getsockopt(SOL_TLS, TLS_TX)` into `out`: the bytes the kernel wrote.
fn send_key(tcp: &TcpStream, out: &mut [u8]) -> io::Result<usize> {
    let mut n = out.len() as libc::socklen_t;
    // SAFETY: `out` is writable for `n` bytes; the kernel writes at most `n` and says how many.
    let r = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::SOL_TLS,
            libc::TLS_TX,
            out.as_mut_ptr().cast(),
            &mut n,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The send key's record sequence number, as the kernel has it. The kernel gives its
/// structure only whole, at its exact size: the header first (the cipher), then all of it.
fn records_sent(tcp: &TcpStream) -> io::Result<u64> {
    let mut head = [0u8; size_of::<libc::tls_crypto_info>()];
    send_key(tcp, &mut head)?;
    // The structure's size, and where `rec_seq` is in it: after the IV, key and salt.
    let (size, at) = match u16::from_ne_bytes([head[2], head[3]]) {
        libc::TLS_CIPHER_AES_GCM_128 => (
            size_of::<libc::tls12_crypto_info_aes_gcm_128>(),
            4 + 8 + 16 + 4,
        ),
        libc::TLS_CIPHER_AES_GCM_256 => (
            size_of::<libc::tls12_crypto_info_aes_gcm_256>(),
            4 + 8 + 32 + 4,
        ),
        libc::TLS_CIPHER_CHACHA20_POLY1305 => (
            size_of::<libc::tls12_crypto_info_chacha20_poly1305>(),
            4 + 12 + 32,
        ),
        _ => {
            return Err(invalid(RecordError::Keys(
                "the kernel's TLS_TX is not understood",
            )))
        }
    };
    let mut info = [0u8; 64];
    let got = send_key(tcp, &mut info[..size]);
    let seq = match got {
        Ok(n) if n == size => Ok(u64::from_be_bytes(
            info[at..at + 8].try_into().unwrap_or_default(),
        )),
        Ok(_) => Err(invalid(RecordError::Keys(
            "the kernel's TLS_TX is not understood",
        ))),
        Err(e) => Err(e),
    };
    // The kernel handed the key back: wipe it.
    for x in info.iter_mut() {
        // SAFETY: a valid, exclusive reference.
        unsafe { std::ptr::write_volatile(x, 0) };
    }
    seq
}

/// An error once the connection's send key has protected nearly `limit` records (the
/// cipher suite's confidentiality limit): keys are not updated, a new connection is needed.
pub(super) fn check_sent(tcp: &TcpStream, limit: u64) -> io::Result<()> {
    let seq = records_sent(tcp)?;
    if seq >= limit.saturating_sub(MARGIN) {
        return Err(io::Error::other(RecordError::KeyLimit(seq)));
    }
    Ok(())
}

/// A connection whose records the kernel seals and opens.
pub(super) struct KernelTls {
    tcp: TcpStream,
    /// The peer sent close_notify.
    closed: bool,
    /// The send key's record limit.
    limit: u64,
}

impl KernelTls {
    /// `tcp` after [`offload`] succeeded; `limit` is the suite's confidentiality limit.
    pub(super) fn new(tcp: TcpStream, limit: u64) -> KernelTls {
        KernelTls {
            tcp,
            closed: false,
            limit,
        }
    }
}

impl Read for KernelTls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        recv(&self.tcp, buf, &mut self.closed)
    }
}

impl Write for KernelTls {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = (&self.tcp).write(b)?;
        check_sent(&self.tcp, self.limit)?;
        Ok(n)
    }

    fn write_vectored(&mut self, b: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = (&self.tcp).write_vectored(b)?;
        check_sent(&self.tcp, self.limit)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl super::Conn for KernelTls {
    fn plain(&self) -> Option<&TcpStream> {
        Some(&self.tcp)
    }

    fn kernel_tls(&self) -> Option<u64> {
        Some(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};
    use std::net::TcpListener;

    const KEY: [u8; 32] = [0x11; 32];
    const IV: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn bytes(k: &Keys) -> Vec<u8> {
        let (p, n) = k.raw();
        // SAFETY: `raw` gives the value's own address and size.
        unsafe { std::slice::from_raw_parts(p as *const u8, n) }.to_vec()
    }

    #[test]
    fn keys_are_laid_out_as_the_kernel_reads_them() {
        let key: Vec<u8> = (0..32).collect();
        let k: [u8; 32] = key.clone().try_into().unwrap();
        let aes = ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from(k),
            iv: Iv::from(IV),
        };
        let k = Keys::new(0x0102_0304_0506_0708, &aes).unwrap();
        assert_eq!(k.name(), "AES-256-GCM");
        // version 0x0304 and cipher 52, native (little-endian here) u16s; iv: the IV's last
        // 8 bytes; the key; salt: the IV's first 4; the sequence number big-endian.
        let mut want = vec![0x04, 0x03, 52, 0];
        want.extend_from_slice(&IV[4..]);
        want.extend_from_slice(&key);
        want.extend_from_slice(&IV[..4]);
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(bytes(&k), want);

        let chacha = ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: AeadKey::from(KEY),
            iv: Iv::from(IV),
        };
        let k = Keys::new(7, &chacha).unwrap();
        let mut want = vec![0x04, 0x03, 54, 0];
        want.extend_from_slice(&IV);
        want.extend_from_slice(&KEY);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(bytes(&k), want);

        // AES-128-GCM with a key of another size: not given to the kernel.
        let wrong = ConnectionTrafficSecrets::Aes128Gcm {
            key: AeadKey::from(KEY),
            iv: Iv::from(IV),
        };
        assert!(Keys::new(0, &wrong).is_none());
    }

    #[test]
    fn records_other_than_data_end_the_stream_are_skipped_or_fail() {
        assert!(
            control(ALERT, &[1, 0]).unwrap(),
            "close_notify ends the stream"
        );
        let ticket = [4, 0, 0, 2, 0xaa, 0xbb, 4, 0, 0, 0];
        assert!(
            !control(HANDSHAKE, &ticket).unwrap(),
            "session tickets are skipped"
        );
        let alert = control(ALERT, &[2, 40]).unwrap_err().to_string();
        assert!(alert.contains("HandshakeFailure"), "{alert}");
        let key_update = [24, 0, 0, 1, 0];
        let e = control(HANDSHAKE, &key_update).unwrap_err().to_string();
        assert!(e.contains("key updates are not taken"), "{e}");
        let e = control(20, &[1]).unwrap_err().to_string();
        assert!(e.contains("ChangeCipherSpec"), "{e}");
    }

    /// One side's secrets of a connection whose two directions use `a` and `b`.
    fn secrets(a: u8, b: u8) -> ExtractedSecrets {
        let s = |k: u8| ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([k; 32]),
            iv: Iv::from([k; 12]),
        };
        ExtractedSecrets {
            tx: (0, s(a)),
            rx: (0, s(b)),
        }
    }

    /// Where the kernel has TLS: its records and ours are the same TLS, both ways (one end
    /// offloaded, the other sealing and opening in `tls::TlsConn`). Where it has not: the
    /// kernel says so, and the connection is plain TCP as before.
    #[test]
    fn kernel_records_and_ours_interoperate_or_the_connection_stays_as_it_was() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let rustls::SupportedCipherSuite::Tls13(suite) =
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384;
        match offload(&a, &secrets(1, 2)).unwrap() {
            Ok(()) => {
                let mut k = KernelTls::new(a, suite.common.confidentiality_limit);
                let mut t = super::super::tls::TlsConn::new(b, suite, secrets(2, 1)).unwrap();
                let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
                k.write_all(&data).unwrap();
                let mut got = vec![0u8; data.len()];
                t.read_exact(&mut got).unwrap();
                assert_eq!(got, data, "kernel-sealed records opened here");
                t.write_all(&data[..5000]).unwrap();
                let mut got = vec![0u8; 5000];
                k.read_exact(&mut got).unwrap();
                assert_eq!(got, data[..5000], "our records opened by the kernel");
                assert!(
                    records_sent(&k.tcp).unwrap() >= 7,
                    "100 000 bytes: 7 records"
                );
            }
            Err(NotOffered(why)) => {
                eprintln!(
                    "this kernel has no TLS ({why}): checked that the connection is unchanged"
                );
                assert!(why.contains("the kernel has no TLS"), "{why}");
                (&a).write_all(b"plain").unwrap();
                let mut got = [0u8; 5];
                (&b).read_exact(&mut got).unwrap();
                assert_eq!(&got, b"plain");
            }
        }
    }
}
