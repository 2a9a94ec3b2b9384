//! Migration between hosts: `xe-vfio migrate --from DEV[,DEV…] --to tcp://HOST:PORT` on the
//! source and `xe-vfio receive --listen ADDR:PORT --to DEV[,DEV…]` on the destination, speaking
//! mig-net's protocol (docs/NETWORK.md) over one connection: TLS 1.3 with x509 certificates
//! checked both ways (rustls' handshake, then our record path, [`tls`]), or plain TCP only with
//! `--insecure`.
//!
//! A group of VFs moves as one: the destination checks every VF's identity before the source
//! stops any; the source walks all of them to RUNNING_P2P before any goes on to STOP_COPY, and
//! the destination brings all to RUNNING_P2P before any reaches RUNNING (devices without P2P
//! skip that state, as the kernel's table does). The streams are interleaved on the connection,
//! one DATA frame per read of each VF in turn. Any failure aborts the group: every source VF
//! back to RUNNING with its state, every destination VF reset and reported.
//!
//! Over plain TCP between vfio-user VFs the data never enters this process: each reply's
//! data is spliced from the VF's socket into the connection, and each frame's from the
//! connection into the VF's socket ([`spliced`]). Through TLS it must (to be encrypted and
//! decrypted): the source's writer thread seals while this thread reads the VFs (with one CPU
//! to run on, this thread does both); the destination decrypts each record into a buffer of
//! its own and lends the plaintext to its VF's socket, in the same loop as the spliced path.

mod ktls;
mod lend;
mod spliced;
mod tls;

use crate::endpoint::{Endpoint, Piece, StreamReader};
use crate::ops::{self, Dev, Next, Planner, PreCopyOpts, PreCopyReport};
use crate::util::{human, CliError, Context};
use mig_net::{kind, ErrorMsg, Header, Hello, VfInfo, HEADER_LEN, MAX_CONTROL, MAX_DATA};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vfio_core::{DeviceState, Errno, MigrationFlags};
use vfio_user::Pacer;

/// The certificate, key and CA of one side.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// Let the kernel seal and open the records where it can (kernel TLS); else always here.
    pub kernel: bool,
}

/// How the connection is protected.
#[derive(Debug, Clone)]
pub enum Security {
    Tls(TlsFiles),
    /// Plain TCP: said on every run.
    Insecure,
}

impl Security {
    /// From the command line: all three TLS files, or `--insecure`, never a mix.
    pub fn from_args(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
        insecure: bool,
        kernel: bool,
    ) -> Result<Security, CliError> {
        match (cert, key, ca, insecure) {
            (None, None, None, true) => Ok(Security::Insecure),
            (Some(cert), Some(key), Some(ca), false) => Ok(Security::Tls(TlsFiles {
                cert,
                key,
                ca,
                kernel,
            })),
            (_, _, _, true) => Err(CliError::new("--insecure and --tls-* do not go together")),
            _ => Err(CliError::new("a migration between hosts needs --tls-cert, --tls-key and --tls-ca")
                .hint("make them with the openssl commands in the README ('Migrate between hosts'), or pass --insecure for plain TCP on a trusted network")),
        }
    }

    fn warn(&self) {
        if matches!(self, Security::Insecure) {
            eprintln!(
                "xe-vfio: WARNING: --insecure: the VFs' state crosses the network unencrypted, \
                 and the peer is not authenticated"
            );
        }
    }
}

/// aws-lc-rs, with rustls' safe defaults, AES-128-GCM preferred: as strong as this use needs (the
/// data is ephemeral, the keys fresh per connection) and faster on the bulk of a migration.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    let first = [cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_AES_256_GCM_SHA384];
    p.cipher_suites.retain(|s| !first.contains(s));
    let rest = std::mem::take(&mut p.cipher_suites);
    p.cipher_suites = first.into_iter().chain(rest).collect();
    Arc::new(p)
}

fn certs(p: &PathBuf) -> Result<Vec<CertificateDer<'static>>, CliError> {
    let v: Vec<_> = CertificateDer::pem_file_iter(p)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            CliError::new(format!("reading certificates from {}", p.display())).cause(e)
        })?;
    if v.is_empty() {
        return Err(CliError::new(format!(
            "{}: no PEM certificate in it",
            p.display()
        )));
    }
    Ok(v)
}

fn key(p: &PathBuf) -> Result<PrivateKeyDer<'static>, CliError> {
    PrivateKeyDer::from_pem_file(p)
        .map_err(|e| CliError::new(format!("reading the private key {}", p.display())).cause(e))
}

fn roots(p: &PathBuf) -> Result<Arc<RootCertStore>, CliError> {
    let mut r = RootCertStore::empty();
    for c in certs(p)? {
        r.add(c).map_err(|e| {
            CliError::new(format!("{}: not a usable CA certificate", p.display())).cause(e)
        })?;
    }
    Ok(Arc::new(r))
}

fn tls_err(what: String) -> impl FnOnce(rustls::Error) -> CliError {
    move |e| CliError::new(what).cause(e)
}

/// A certificate and key that rustls refused.
fn identity_err(f: &TlsFiles) -> impl FnOnce(rustls::Error) -> CliError {
    tls_err(format!("{} and {}", f.cert.display(), f.key.display()))
}

/// TLS 1.3 only: after the handshake the records are protected by [`tls::TlsConn`].
const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn client_config(f: &TlsFiles) -> Result<Arc<ClientConfig>, CliError> {
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err("TLS setup".into()))?
        .with_root_certificates(roots(&f.ca)?)
        .with_client_auth_cert(certs(&f.cert)?, key(&f.key)?)
        .map_err(identity_err(f))?;
    c.enable_secret_extraction = true;
    Ok(Arc::new(c))
}

fn server_config(f: &TlsFiles) -> Result<Arc<ServerConfig>, CliError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&f.ca)?, provider())
            .build()
            .map_err(|e| CliError::new(format!("{}: client verifier", f.ca.display())).cause(e))?;
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err("TLS setup".into()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&f.cert)?, key(&f.key)?)
        .map_err(identity_err(f))?;
    c.enable_secret_extraction = true;
    // Nothing after the handshake but our frames (see `tls`).
    c.send_tls13_tickets = 0;
    Ok(Arc::new(c))
}

/// Either side's connection.
trait Conn: Read + Write + Send {
    /// The TCP connection itself when what is read from it and written to it is the stream's
    /// plaintext (`--insecure`, or TLS in the kernel): data may then be spliced between it and
    /// the VFs' sockets.
    fn plain(&self) -> Option<&TcpStream> {
        None
    }
    /// With TLS in the kernel, the send key's record limit (see `ktls`): records other than
    /// data are then read with their type, and what is sent is checked against the limit.
    fn kernel_tls(&self) -> Option<u64> {
        None
    }
    /// The TLS connection, whose plaintext can be written into the VFs' sockets from where
    /// it was decrypted.
    fn tls(&mut self) -> Option<&mut tls::TlsConn> {
        None
    }
}

impl Conn for TcpStream {
    fn plain(&self) -> Option<&TcpStream> {
        Some(self)
    }
}
/// A connection and how it is protected ("TLS1.3 TLS13_AES_256_GCM_SHA384" or "plain TCP").
struct Link {
    io: Box<dyn Conn>,
    how: String,
}

fn suite_of(c: &rustls::CommonState) -> String {
    match (c.protocol_version(), c.negotiated_cipher_suite()) {
        (Some(v), Some(s)) => format!("{v:?} {:?}", s.suite()),
        _ => "TLS".into(),
    }
}

/// Connects to `tcp://HOST:PORT` and, with TLS, completes the handshake.
fn connect(url: &str, sec: &Security, timeout: Duration) -> Result<Link, CliError> {
    let addr = url
        .strip_prefix("tcp://")
        .ok_or_else(|| CliError::new(format!("{url}: not a tcp://HOST:PORT address")))?;
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| CliError::new(format!("{url}: no port")))?;
    let tcp = TcpStream::connect(addr).ctx(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true).ctx(|| "TCP_NODELAY".into())?;
    vfio_user::tune_socket(&tcp);
    tcp.set_read_timeout(Some(timeout))
        .ctx(|| "socket timeout".into())?;
    sec.warn();
    match sec {
        Security::Insecure => Ok(Link {
            io: Box::new(tcp),
            how: "plain TCP (--insecure)".into(),
        }),
        Security::Tls(f) => {
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| CliError::new(format!("{host}: not a server name")).cause(e))?;
            let conn = rustls::ClientConnection::new(client_config(f)?, name)
                .map_err(tls_err("TLS setup".into()))?;
            let failed = |e: io::Error| {
                CliError::new(format!("TLS handshake with {addr}"))
                    .cause(e)
                    .hint(format!("the destination's certificate must chain to {} and name {host}; ours must chain to the destination's CA; nothing was stopped", f.ca.display()))
            };
            let (io, how) = handshake(conn.into(), tcp, f.kernel).map_err(failed)?;
            Ok(Link { io, how })
        }
    }
}

fn send<W: Write + ?Sized>(w: &mut W, kind: u8, vf: u16, payload: &[u8]) -> io::Result<()> {
    let h = Header {
        kind,
        vf,
        len: payload.len() as u32,
    };
    // One write of both: one run of TLS records (sealed from both slices as one), one
    // system call on plain TCP.
    let h = h.emit();
    let mut parts = [io::IoSlice::new(&h), io::IoSlice::new(payload)];
    let mut parts = &mut parts[..];
    while !parts.is_empty() {
        match w.write_vectored(parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A protocol failure: what broke, as a tool's error.
fn proto(what: impl Into<String>) -> CliError {
    CliError::new(what)
}

fn recv_header<R: Read + ?Sized>(r: &mut R) -> Result<Header, CliError> {
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h).map_err(|e| {
        let what = if matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
        ) {
            "the peer closed the connection".to_string()
        } else {
            format!("reading from the peer: {e}")
        };
        proto(what)
    })?;
    Header::parse(&h).map_err(|e| proto("a malformed frame from the peer").cause(e))
}

/// A control frame: its header and payload.
fn recv_control(r: &mut dyn Conn) -> Result<(Header, Vec<u8>), CliError> {
    let h = recv_header(r)?;
    if h.kind == kind::DATA {
        return Err(proto("a DATA frame where a control frame was due"));
    }
    Ok((h, recv_payload(r, &h)?))
}

/// The payload of a control frame whose header `h` was read (at most [`MAX_CONTROL`] bytes,
/// checked by the header's parse before anything is allocated).
fn recv_payload<R: Read + ?Sized>(r: &mut R, h: &Header) -> Result<Vec<u8>, CliError> {
    debug_assert!(h.kind != kind::DATA && h.len <= MAX_CONTROL);
    let mut p = vec![0u8; h.len as usize];
    r.read_exact(&mut p)
        .map_err(|e| proto(format!("reading a frame from the peer: {e}")))?;
    Ok(p)
}

/// An ERROR frame from the peer as our error.
fn peer_error(p: &[u8]) -> CliError {
    match ErrorMsg::parse(p) {
        Ok(m) => {
            let mut e = CliError::new(format!("the peer: {}", m.message));
            if m.errno != 0 {
                e.errno = Some(Errno::new(m.errno));
            }
            e
        }
        Err(e) => proto("the peer sent a malformed ERROR frame").cause(e),
    }
}

fn send_error(w: &mut dyn Conn, e: &CliError) {
    // The errno travels as a number; the message is what failed (and why, if no errno says).
    let message = match (&e.cause, e.errno) {
        (Some(c), None) => format!("{}: {c}", e.what),
        _ => e.what.clone(),
    };
    let m = ErrorMsg {
        errno: e.errno.map_or(0, |e| e.raw()),
        message,
    };
    let _ = send(w, kind::ERROR, 0, &m.emit()).and_then(|()| w.flush());
}

/// What a host-to-host migration did.
#[derive(Debug, Serialize)]
pub struct RemoteReport {
    pub destination: String,
    pub transport: String,
    /// The stop-copy data went from the VFs' sockets into the connection without entering
    /// this process (plain TCP, vfio-user VFs).
    pub spliced: bool,
    /// Frames that pass through this process were written to the connection by a thread of
    /// their own (overlapping the reads of the VFs); not with one CPU to run on, where this
    /// thread writes them.
    pub writer_thread: bool,
    pub vfs: Vec<RemoteVf>,
    pub bytes: u64,
    /// From the first source VF leaving RUNNING to the destination's RESULT (all RUNNING).
    pub group_downtime_ms: f64,
    pub total_seconds: f64,
    /// Of the stop-copy part.
    pub throughput_mib_s: f64,
    /// The group's pre-copy rounds, for a pre-copy migration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_copy: Option<PreCopyReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct RemoteVf {
    pub source: String,
    pub bytes: u64,
    /// From this VF leaving RUNNING to the destination's RESULT.
    pub downtime_ms: f64,
    pub destination_state: String,
}

/// A write that failed right after the handshake: with TLS 1.3 the destination checks our
/// certificate after we think the handshake is done, and says why it refuses in an alert that
/// is still to be read.
fn after_handshake(io: &mut dyn Conn, e: io::Error, url: &str) -> CliError {
    let mut b = [0u8; 1];
    let cause = match io.read(&mut b) {
        Err(r) if r.to_string().contains("alert") => r.to_string(),
        _ => e.to_string(),
    };
    CliError::new(format!("{url} closed the connection after the TLS handshake"))
        .cause(cause)
        .hint("the destination did not accept this side's certificate (signed by another CA? expired?), or it is busy; nothing was stopped")
}

/// The source side. `names` are how the user named `srcs`.
pub fn migrate_remote(
    srcs: &mut [Box<dyn Endpoint>],
    names: &[String],
    url: &str,
    sec: &Security,
    timeout: Duration,
    opts: ops::MigrateOpts,
) -> Result<RemoteReport, CliError> {
    let start = Instant::now();
    let mut devs = Vec::new();
    for (c, n) in srcs.iter_mut().zip(names) {
        let d = Dev::open(&mut **c, &format!("source {n}"))?;
        if d.state != DeviceState::Running {
            return Err(
                CliError::new(format!("{}: in {}, not RUNNING", d.who, d.state))
                    .hint("reset the device, or let a running migration finish"),
            );
        }
        if opts.pre_copy.is_some() && !d.flags.contains(MigrationFlags::PRE_COPY) {
            return Err(CliError::new(format!(
                "{}: does not offer PRE_COPY (migration flags {})",
                d.who, d.flags
            ))
            .hint("serve it with 'xe-vfio serve --pre-copy', or migrate without --pre-copy"));
        }
        devs.push(d);
    }
    let mut vfs = Vec::new();
    for d in &mut devs {
        let who = d.who.clone();
        vfs.push(
            d.c.identity()
                .ctx(|| format!("{who}: reading its identity"))?,
        );
    }
    let mut link = connect(url, sec, timeout)?;
    let io = &mut *link.io;
    let hello = Hello {
        version: mig_net::VERSION,
        flags: if opts.pre_copy.is_some() {
            mig_net::HELLO_PRE_COPY
        } else {
            0
        },
        vfs,
    };
    if let Err(e) = send(io, kind::HELLO, 0, &hello.emit()).and_then(|()| io.flush()) {
        return Err(after_handshake(io, e, url));
    }
    let (h, p) = recv_control(io).map_err(|e| {
        let e = e.context(&format!("{url}: waiting for ACCEPT"));
        let why = if matches!(sec, Security::Insecure) {
            "is the destination busy with another migration, or expecting TLS (this side sent plain TCP)?"
        } else {
            "is the destination busy with another migration?"
        };
        e.hint(format!("nothing was stopped: every source VF is RUNNING, untouched; {why}"))
    })?;
    match h.kind {
        kind::ACCEPT => {}
        kind::ERROR => {
            return Err(peer_error(&p)
                .context(&format!("{url} refused the migration"))
                .hint("nothing was stopped: every source VF is RUNNING, untouched"));
        }
        k => return Err(proto(format!("{url}: frame kind {k} where ACCEPT was due"))),
    }
    let mut stopped = vec![None; devs.len()];
    let spliced = link.io.plain().is_some() && spliced::all_vfio_user(&mut devs);
    let mut out = Out::start(link.io, opts.max_bandwidth.and_then(Pacer::new), devs.len());
    let writer_thread = out.inline.is_none();
    let mut conn = None;
    let mut pre = None;
    let r = (|| {
        if let Some(p) = opts.pre_copy {
            pre = Some(pre_copy_group(&mut devs, &mut out, p, opts.max_bandwidth)?);
        }
        switch_and_send(&mut devs, &mut out, &mut stopped, &mut conn, spliced)
    })();
    if conn.is_none() {
        conn = out.finish().0;
    }
    let totals = std::mem::take(&mut out.totals);
    let states = match r {
        Ok(v) => v,
        Err(mut e) => {
            if let Some(io) = conn.as_mut() {
                send_error(&mut **io, &e);
            }
            // A connection that broke mid-message is reopened first (all of them: which VF's
            // broke is not known here; reopening a sound one costs nothing).
            let in_step = e.in_step;
            let notes: Vec<String> = devs.iter_mut().map(|d| d.resume_source(in_step)).collect();
            e.hint = Some(format!(
                "the migration was aborted; {}; the destination resets its VFs",
                notes.join("; ")
            ));
            return Err(e);
        }
    };
    let done = Instant::now();
    let first = stopped.iter().flatten().min().copied().unwrap_or(done);
    let bytes: u64 = totals.iter().sum();
    let vfs = devs
        .iter()
        .zip(&totals)
        .zip(&stopped)
        .zip(&states)
        .map(|(((d, &b), s), st)| RemoteVf {
            source: d.who.trim_start_matches("source ").to_string(),
            bytes: b,
            downtime_ms: s.map_or(0.0, |s| (done - s).as_secs_f64() * 1e3),
            destination_state: DeviceState::try_from(*st)
                .map_or(format!("{st} (not a state)"), |s| s.to_string()),
        })
        .collect();
    let transfer = (done - first).as_secs_f64();
    let precopy_bytes = pre.as_ref().map_or(0, |p| p.precopy_bytes);
    Ok(RemoteReport {
        destination: url.to_string(),
        transport: link.how,
        spliced,
        writer_thread,
        vfs,
        bytes,
        group_downtime_ms: transfer * 1e3,
        total_seconds: start.elapsed().as_secs_f64(),
        throughput_mib_s: (bytes - precopy_bytes) as f64 / (1 << 20) as f64 / transfer.max(1e-9),
        pre_copy: pre.map(|mut p| {
            p.stop_copy_bytes = bytes - precopy_bytes;
            p
        }),
        max_bandwidth: opts.max_bandwidth,
    })
}

/// A frame for the writer thread: kind, VF, a pool buffer and how much of it to send.
type Frame = (u8, u16, Vec<u8>, usize);

/// The source's side of the connection: frames go to a writer thread that owns the connection
/// (so reading the next piece of a VF's stream overlaps sending the last — TLS encryption
/// included), in buffers recycled through a small pool; DATA under the bandwidth cap; each
/// VF's count. With one CPU to run on, the frames are written by this thread instead: the two
/// threads could not overlap, and their handing over would only cost context switches.
struct Out {
    tx: Option<std::sync::mpsc::SyncSender<Frame>>,
    pool: std::sync::mpsc::Receiver<Vec<u8>>,
    writer: Option<std::thread::JoinHandle<Written>>,
    /// The connection, written by this thread (one CPU), with the buffer and the first error.
    inline: Option<Inline>,
    pace: Option<Pacer>,
    totals: Vec<u64>,
    /// A pool buffer taken but not sent (a read that brought nothing).
    spare: Option<Vec<u8>>,
}

/// What the writer thread gives back: the connection and how the writing went.
type Written = (Box<dyn Conn>, io::Result<()>);

/// [`Out`] without a writer thread.
struct Inline {
    io: Box<dyn Conn>,
    buf: Option<Vec<u8>>,
    failed: Option<io::Error>,
}

/// Buffers in flight between the reading and the writing thread.
const POOL: usize = 3;

/// Whether the calling thread may run on one CPU only.
fn one_cpu() -> bool {
    rustix::thread::sched_getaffinity(None).is_ok_and(|set| set.count() == 1)
}

impl Out {
    fn start(io: Box<dyn Conn>, pace: Option<Pacer>, vfs: usize) -> Out {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Frame>(POOL);
        let (back, pool) = std::sync::mpsc::channel::<Vec<u8>>();
        let mut out = Out {
            tx: None,
            pool,
            writer: None,
            inline: None,
            pace,
            totals: vec![0; vfs],
            spare: None,
        };
        if one_cpu() {
            out.inline = Some(Inline {
                io,
                buf: Some(vec![0u8; MAX_DATA as usize]),
                failed: None,
            });
            return out;
        }
        for _ in 0..POOL {
            let _ = back.send(vec![0u8; MAX_DATA as usize]);
        }
        let mut io = io;
        out.writer = Some(std::thread::spawn(move || {
            let mut r = Ok(());
            for (kind, vf, buf, len) in rx {
                r = send(&mut *io, kind, vf, &buf[..len]);
                let _ = back.send(buf);
                if r.is_err() {
                    break;
                }
            }
            if r.is_ok() {
                r = io.flush();
            }
            (io, r)
        }));
        out.tx = Some(tx);
        out
    }

    /// The writer's failure, once it has stopped.
    fn broken(&mut self) -> CliError {
        self.tx = None;
        let why = match (&self.inline, self.writer.take().map(|w| w.join())) {
            (
                Some(Inline {
                    failed: Some(e), ..
                }),
                _,
            ) => e.to_string(),
            (_, Some(Ok((_, Err(e))))) => e.to_string(),
            _ => "the connection is gone".into(),
        };
        CliError::new(format!("sending to the destination: {why}"))
    }

    /// A free buffer of [`MAX_DATA`] bytes.
    fn buffer(&mut self) -> Result<Vec<u8>, CliError> {
        if let Some(b) = self.spare.take() {
            return Ok(b);
        }
        if let Some(i) = &mut self.inline {
            return Ok(i.buf.take().unwrap_or_else(|| vec![0u8; MAX_DATA as usize]));
        }
        match self.pool.recv() {
            Ok(b) => Ok(b),
            Err(_) => Err(self.broken()),
        }
    }

    fn frame(&mut self, kind: u8, vf: usize, buf: Vec<u8>, len: usize) -> Result<(), CliError> {
        if let Some(i) = &mut self.inline {
            if i.failed.is_none() {
                if let Err(e) = send(&mut *i.io, kind, vf as u16, &buf[..len]) {
                    i.failed = Some(e);
                }
            }
            i.buf = Some(buf);
            return match i.failed {
                None => Ok(()),
                Some(_) => Err(self.broken()),
            };
        }
        let sent = self
            .tx
            .as_ref()
            .map(|t| t.send((kind, vf as u16, buf, len)));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self.broken()),
        }
    }

    /// `len` bytes of `buf` as a DATA frame of VF `vf`.
    fn data_buf(&mut self, vf: usize, buf: Vec<u8>, len: usize) -> Result<(), CliError> {
        self.totals[vf] += len as u64;
        self.frame(kind::DATA, vf, buf, len)?;
        if let Some(p) = &mut self.pace {
            p.account(len);
        }
        Ok(())
    }

    /// VF `vf`'s END.
    fn end(&mut self, vf: usize) -> Result<(), CliError> {
        let mut b = self.buffer()?;
        b[..8].copy_from_slice(&self.totals[vf].to_le_bytes());
        self.frame(kind::END, vf, b, 8)
    }

    /// Everything sent: the connection back (`None` if the writer is gone) and the outcome.
    fn finish(&mut self) -> (Option<Box<dyn Conn>>, Result<(), CliError>) {
        self.tx = None;
        if let Some(mut i) = self.inline.take() {
            let r = match i.failed.take() {
                Some(e) => Err(e),
                None => i.io.flush(),
            };
            let r = r.map_err(|e| CliError::new(format!("sending to the destination: {e}")));
            return (Some(i.io), r);
        }
        match self.writer.take().map(|w| w.join()) {
            Some(Ok((io, Ok(())))) => (Some(io), Ok(())),
            Some(Ok((io, Err(e)))) => (
                Some(io),
                Err(CliError::new(format!("sending to the destination: {e}"))),
            ),
            _ => (
                None,
                Err(CliError::new(
                    "sending to the destination: the writer failed",
                )),
            ),
        }
    }
}

impl Out {
    /// One pre-copy round of VF `i`, read straight into pool buffers, each read a DATA
    /// frame: at most `limit` bytes, ending early at a short read or when nothing is ready.
    /// Returns the bytes moved.
    fn round(&mut self, d: &mut Dev<'_>, i: usize, limit: u64) -> Result<u64, CliError> {
        let mut reader = StreamReader::default();
        let mut moved = 0u64;
        while moved < limit {
            let mut b = self.buffer()?;
            let want = ((limit - moved).min(b.len() as u64) as usize).min(d.c.chunk());
            match reader.read(d.c, &mut b[..want], true) {
                Ok(Piece::Data(n)) => {
                    self.data_buf(i, b, n)?;
                    moved += n as u64;
                    if n < want {
                        break;
                    }
                }
                Ok(Piece::End) => {
                    self.spare = Some(b);
                    break;
                }
                Err(e) => {
                    let what = format!(
                        "{}: reading pre-copy data at byte {}",
                        d.who, self.totals[i]
                    );
                    return Err(ops::client_failure(what, e));
                }
            }
        }
        Ok(moved)
    }
}

/// The group's pre-copy: every VF to PRE_COPY, then rounds (each VF's initial + dirty bytes,
/// at most what fits in the time left) until every VF's initial data is sent and the group's
/// estimated stop-copy time — the sum of the sources' MIG_DATA_SIZE over the throughput so far
/// — fits the budget, or `max_precopy` passes (then switch anyway, or with `strict` fail).
fn pre_copy_group(
    devs: &mut [Dev<'_>],
    out: &mut Out,
    opts: PreCopyOpts,
    bandwidth: Option<u64>,
) -> Result<PreCopyReport, CliError> {
    for d in devs.iter_mut() {
        d.walk(DeviceState::PreCopy)?;
    }
    let mut plan = Planner::new(opts, bandwidth);
    loop {
        let mut infos = Vec::new();
        let mut rest = 0u64;
        for d in devs.iter_mut() {
            let who = d.who.clone();
            let (i, dirty) =
                d.c.precopy_info()
                    .ctx(|| format!("{who}: reading MIG_PRECOPY_INFO"))?;
            rest +=
                d.c.mig_data_size()
                    .unwrap_or(dirty + ops::FIXED_STOP_COPY_BYTES);
            infos.push((i, dirty));
        }
        let (initial, dirty) = infos.iter().fold((0, 0), |(a, b), (i, d)| (a + i, b + d));
        plan.after(initial, dirty);
        let mut budget = match plan.next(initial, dirty, rest)? {
            Next::Switch => break,
            Next::Round(b) => b,
        };
        let r0 = Instant::now();
        let mut moved = 0u64;
        for (i, (d, (ini, dirty))) in devs.iter_mut().zip(&infos).enumerate() {
            let limit = (ini + dirty).min(budget);
            if limit == 0 {
                continue;
            }
            let m = out.round(d, i, limit)?;
            budget -= m.min(budget);
            moved += m;
        }
        plan.record(moved, r0.elapsed());
    }
    Ok(plan.finish())
}

/// P2P first for all (RUNNING_P2P, or PRE_COPY_P2P from PRE_COPY), then STOP_COPY for each;
/// the streams interleaved to their ends (`spliced`: from this thread, see [`spliced`]; else
/// through the writer thread); the destination's RESULT; the sources to STOP. Returns the
/// destination's states.
fn switch_and_send(
    devs: &mut [Dev<'_>],
    out: &mut Out,
    stopped: &mut [Option<Instant>],
    conn: &mut Option<Box<dyn Conn>>,
    spliced: bool,
) -> Result<Vec<u32>, CliError> {
    for d in devs.iter_mut() {
        if d.flags.contains(MigrationFlags::P2P) {
            let mid = if d.state == DeviceState::PreCopy {
                DeviceState::PreCopyP2p
            } else {
                DeviceState::RunningP2p
            };
            d.walk(mid)?;
        }
    }
    for (d, s) in devs.iter_mut().zip(stopped.iter_mut()) {
        *s = Some(Instant::now());
        d.walk(DeviceState::StopCopy)?;
    }
    if let Some(p) = &mut out.pace {
        p.restart();
    }
    if spliced {
        // The writer thread has sent the pre-copy rounds; this thread splices the rest.
        let (io, sent) = out.finish();
        *conn = io;
        sent?;
        let c = conn.as_ref();
        let tcp = c.and_then(|c| c.plain());
        let tcp = tcp.ok_or_else(|| CliError::new("the connection is gone"))?;
        let limit = c.and_then(|c| c.kernel_tls());
        spliced::send_streams(devs, tcp, &mut out.totals, &mut out.pace, limit)?;
    } else {
        send_streams(devs, out, conn)?;
    }
    let io = conn
        .as_mut()
        .ok_or_else(|| CliError::new("the connection is gone"))?;
    let (h, p) =
        recv_control(&mut **io).map_err(|e| e.context("waiting for the destination's RESULT"))?;
    let states = match h.kind {
        kind::RESULT => mig_net::parse_result(&p, devs.len())
            .map_err(|e| proto("a malformed RESULT").cause(e))?,
        kind::ERROR => return Err(peer_error(&p).context("the destination failed")),
        k => return Err(proto(format!("frame kind {k} where RESULT was due"))),
    };
    for d in devs.iter_mut() {
        d.walk(DeviceState::Stop)?;
    }
    Ok(states)
}

/// The stop-copy streams through the writer thread: one read of each VF in turn (a DATA
/// frame each), so the VFs share the link; each read straight into a buffer the writer
/// thread then sends. The connection comes back in `conn`.
fn send_streams(
    devs: &mut [Dev<'_>],
    out: &mut Out,
    conn: &mut Option<Box<dyn Conn>>,
) -> Result<(), CliError> {
    let mut readers: Vec<StreamReader> = devs.iter().map(|_| StreamReader::default()).collect();
    let mut ended = vec![false; devs.len()];
    while ended.iter().any(|e| !e) {
        for (i, d) in devs.iter_mut().enumerate() {
            if ended[i] {
                continue;
            }
            let mut buf = out.buffer()?;
            let want = d.c.chunk().min(buf.len());
            match readers[i].read(d.c, &mut buf[..want], false) {
                Ok(Piece::Data(n)) => out.data_buf(i, buf, n)?,
                Ok(Piece::End) => {
                    out.spare = Some(buf);
                    out.end(i)?;
                    ended[i] = true;
                }
                Err(e) => {
                    let what = format!(
                        "{}: reading migration data at byte {}",
                        d.who, out.totals[i]
                    );
                    return Err(ops::client_failure(what, e));
                }
            }
        }
    }
    let (io, sent) = out.finish();
    *conn = io;
    sent?;
    Ok(())
}

/// How `receive` runs.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveOpts {
    /// Take further migrations after the first.
    pub keep: bool,
    /// Reports as JSON.
    pub json: bool,
    /// No reports on stdout (the benchmark's).
    pub quiet: bool,
    /// How long a peer may stay silent.
    pub timeout: Duration,
}

/// The destination side: listens on `listen`, takes one authenticated migration into `dsts`
/// (named `names`), reports, and returns — or with `keep`, goes on listening.
pub fn receive(
    listen: &str,
    dsts: &mut [Box<dyn Endpoint>],
    names: &[String],
    sec: &Security,
    opts: ReceiveOpts,
) -> Result<(), CliError> {
    let listener = TcpListener::bind(listen).ctx(|| format!("listening on {listen}"))?;
    receive_on(&listener, dsts, names, sec, opts).map(|_| ())
}

/// [`receive`] on a bound listener; returns the last migration's report.
pub fn receive_on(
    listener: &TcpListener,
    dsts: &mut [Box<dyn Endpoint>],
    names: &[String],
    sec: &Security,
    opts: ReceiveOpts,
) -> Result<ReceiveReport, CliError> {
    let cfg = match sec {
        Security::Tls(f) => Some((server_config(f)?, f.kernel)),
        Security::Insecure => None,
    };
    let addr = listener
        .local_addr()
        .ctx(|| "the listening address".into())?;
    if !opts.quiet {
        sec.warn();
        // With --json every value on stdout is JSON (the reports follow this one).
        if opts.json {
            let v = serde_json::json!({ "ready": { "listen": addr.to_string(), "vfs": names } });
            println!("{v}");
        } else {
            println!(
                "receive: ready on {addr} for {} VF(s): {}",
                dsts.len(),
                names.join(", ")
            );
        }
        let _ = std::io::stdout().flush();
    }
    loop {
        let (tcp, peer) = listener.accept().ctx(|| format!("accepting on {addr}"))?;
        let _ = tcp.set_nodelay(true);
        vfio_user::tune_socket(&tcp);
        let _ = tcp.set_read_timeout(Some(opts.timeout));
        let link = match &cfg {
            None => Link {
                io: Box::new(tcp),
                how: "plain TCP (--insecure)".into(),
            },
            Some((cfg, kernel)) => match server_handshake(cfg, tcp, *kernel) {
                Ok(l) => l,
                Err(e) => {
                    // Nothing reached a VF: wait for the next peer.
                    eprintln!("receive: refused {peer}: {e}");
                    continue;
                }
            },
        };
        if !opts.quiet {
            eprintln!("receive: {peer} connected ({})", link.how);
        }
        // One migration at a time: while this one runs, other peers are turned away.
        let busy = Refuser::start(listener)?;
        let r = receive_one(link, dsts, names);
        busy.stop(listener)?;
        match r {
            Ok(rep) => {
                if opts.json && !opts.quiet {
                    println!("{}", serde_json::to_string_pretty(&rep).unwrap_or_default());
                } else if !opts.quiet {
                    println!(
                        "received {} from {peer} into {} VF(s) in {:.3} s ({}{}): {}",
                        human(rep.bytes),
                        rep.states.len(),
                        rep.seconds,
                        rep.transport,
                        if rep.spliced { ", data spliced" } else { "" },
                        rep.states.join(", ")
                    );
                }
                if !opts.keep {
                    return Ok(rep);
                }
            }
            Err(e) if opts.keep => eprintln!("xe-vfio: {e}"),
            Err(e) => return Err(e),
        }
    }
}

fn server_handshake(
    cfg: &Arc<ServerConfig>,
    tcp: TcpStream,
    kernel: bool,
) -> Result<Link, CliError> {
    let conn = rustls::ServerConnection::new(cfg.clone()).map_err(tls_err("TLS setup".into()))?;
    let (io, how) =
        handshake(conn.into(), tcp, kernel).map_err(|e| CliError::new("TLS handshake").cause(e))?;
    Ok(Link { io, how })
}

/// Either side's handshake, read one record at a time; then the records are the kernel's
/// (`kernel`, where it has TLS: see `ktls`) or ours (`tls`).
fn handshake(
    mut conn: rustls::Connection,
    tcp: TcpStream,
    kernel: bool,
) -> io::Result<(Box<dyn Conn>, String)> {
    let mut rw = tls::RecordWise::new(&tcp);
    while conn.is_handshaking() {
        conn.complete_io(&mut rw)?;
    }
    while conn.wants_write() {
        conn.write_tls(&mut rw)?;
    }
    let how = suite_of(&conn);
    let invalid =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let suite = match conn.negotiated_cipher_suite() {
        Some(rustls::SupportedCipherSuite::Tls13(s)) => s,
        _ => return Err(invalid(&"not TLS 1.3 (the only version xe-vfio speaks)")),
    };
    let secrets = conn.dangerous_extract_secrets().map_err(|e| invalid(&e))?;
    if kernel {
        match ktls::offload(&tcp, &secrets)? {
            Ok(()) => {
                let limit = suite.common.confidentiality_limit;
                let k = ktls::KernelTls::new(tcp, limit);
                return Ok((Box::new(k), format!("{how}, kernel TLS")));
            }
            Err(ktls::NotOffered(why)) => tracing::info!("TLS records sealed in xe-vfio: {why}"),
        }
    }
    let t = tls::TlsConn::new(tcp, suite, secrets).map_err(|e| invalid(&e))?;
    Ok((Box::new(t), how))
}

/// Turns away every connection while a migration runs.
struct Refuser {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Refuser {
    fn start(listener: &TcpListener) -> Result<Refuser, CliError> {
        let l = listener.try_clone().ctx(|| "the listening socket".into())?;
        l.set_nonblocking(true)
            .ctx(|| "the listening socket".into())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, peer)) => {
                        eprintln!("receive: turned {peer} away: a migration is in progress");
                        drop(s);
                    }
                    // Nothing waiting: look again shortly (a poll, not a synchronisation).
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Refuser { stop, thread })
    }

    fn stop(self, listener: &TcpListener) -> Result<(), CliError> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        listener
            .set_nonblocking(false)
            .ctx(|| "the listening socket".into())
    }
}

/// What the destination reports.
#[derive(Debug, Serialize)]
pub struct ReceiveReport {
    pub transport: String,
    /// The data went from the connection into the VFs' sockets without entering this process.
    pub spliced: bool,
    pub bytes: u64,
    pub seconds: f64,
    pub states: Vec<String>,
}

fn receive_one(
    mut link: Link,
    dsts: &mut [Box<dyn Endpoint>],
    names: &[String],
) -> Result<ReceiveReport, CliError> {
    let t = Instant::now();
    let io = &mut *link.io;
    let (h, p) = recv_control(io).map_err(|e| e.context("waiting for HELLO"))?;
    if h.kind != kind::HELLO {
        let e = proto(format!("frame kind {} where HELLO was due", h.kind));
        send_error(io, &e);
        return Err(e);
    }
    let hello = match Hello::parse(&p) {
        Ok(h) => h,
        Err(w) => {
            let e = proto("a malformed HELLO").cause(w);
            send_error(io, &e);
            return Err(e);
        }
    };
    let mut devs = Vec::new();
    let checked = open_checked(dsts, names, &hello, &mut devs);
    if let Err(mut e) = checked {
        send_error(io, &e);
        let notes: Vec<String> = devs
            .iter_mut()
            .filter(|d| d.state != DeviceState::Running)
            .map(|d| d.reset_destination(true))
            .collect();
        if !notes.is_empty() {
            e.hint = Some(notes.join("; "));
        }
        return Err(e.context("refused the migration"));
    }
    if let Err(e) = send(io, kind::ACCEPT, 0, &[]).and_then(|()| io.flush()) {
        let e = CliError::new(format!("sending ACCEPT: {e}"));
        let notes: Vec<String> = devs.iter_mut().map(|d| d.reset_destination(true)).collect();
        return Err(e.hint(format!("the migration was aborted; {}", notes.join("; "))));
    }
    let direct = spliced::all_vfio_user(&mut devs);
    let spliced = direct && link.io.plain().is_some();
    let (conn, taken) = take_streams(&mut devs, link.io, direct);
    let mut conn = conn;
    let r = taken.and_then(|bytes| {
        // P2P first for all, then RUNNING for each.
        for d in devs.iter_mut() {
            let mid = if d.flags.contains(MigrationFlags::P2P) {
                DeviceState::RunningP2p
            } else {
                DeviceState::Stop
            };
            let who = d.who.clone();
            d.walk(mid)
                .map_err(|e| e.context(&format!("{who}: validating the stream")))?;
        }
        for d in devs.iter_mut() {
            d.walk(DeviceState::Running)?;
        }
        let states: Vec<u32> = devs.iter().map(|d| d.state as u32).collect();
        let io = conn
            .as_mut()
            .ok_or_else(|| CliError::new("the connection is gone"))?;
        send(&mut **io, kind::RESULT, 0, &mig_net::emit_result(&states))
            .and_then(|()| io.flush())
            .ctx(|| "sending RESULT".into())?;
        Ok(bytes)
    });
    match r {
        Ok(bytes) => Ok(ReceiveReport {
            transport: link.how.clone(),
            spliced,
            bytes,
            seconds: t.elapsed().as_secs_f64(),
            states: devs.iter().map(|d| d.state.to_string()).collect(),
        }),
        Err(mut e) => {
            if let Some(io) = conn.as_mut() {
                send_error(&mut **io, &e);
            }
            let in_step = e.in_step;
            let notes: Vec<String> = devs
                .iter_mut()
                .map(|d| d.reset_destination(in_step))
                .collect();
            e.hint = Some(format!("the migration was aborted; {}", notes.join("; ")));
            Err(e)
        }
    }
}

/// Opens the destination VFs into `devs`, checks each against the HELLO, and walks them to
/// RESUMING.
fn open_checked<'a>(
    dsts: &'a mut [Box<dyn Endpoint>],
    names: &[String],
    hello: &Hello,
    devs: &mut Vec<Dev<'a>>,
) -> Result<(), CliError> {
    if hello.vfs.len() != dsts.len() {
        let mut e = CliError::new(format!(
            "{} VF(s) offered, {} here ({})",
            hello.vfs.len(),
            dsts.len(),
            names.join(", ")
        ));
        e.errno = Some(Errno::ENODEV);
        return Err(e);
    }
    for ((c, n), want) in dsts.iter_mut().zip(names).zip(&hello.vfs) {
        let d = Dev::open(&mut **c, &format!("destination {n}"))?;
        devs.push(d);
        let d = devs.last_mut().expect("just pushed");
        let who = d.who.clone();
        let have =
            d.c.identity()
                .ctx(|| format!("{who}: reading its identity"))?;
        check_identity(&who, want, &have)?;
        if d.state != DeviceState::Running {
            return Err(CliError::new(format!("{who}: in {}, not RUNNING", d.state)));
        }
    }
    for d in devs.iter_mut() {
        d.walk(DeviceState::Resuming)?;
    }
    Ok(())
}

/// The destination VF must be the same device as the source's.
fn check_identity(who: &str, want: &VfInfo, have: &VfInfo) -> Result<(), CliError> {
    let differ = |what: &str, a: String, b: String| {
        let mut e = CliError::new(format!("{who}: {what} {b} here, {a} on the source"));
        e.errno = Some(Errno::ENODEV);
        Err(e)
    };
    if (want.vendor, want.device) != (have.vendor, have.device) {
        return differ(
            "device",
            format!("{:04x}:{:04x}", want.vendor, want.device),
            format!("{:04x}:{:04x}", have.vendor, have.device),
        );
    }
    if want.revision != have.revision {
        return differ(
            "revision",
            format!("{:#04x}", want.revision),
            format!("{:#04x}", have.revision),
        );
    }
    if want.bar2 != have.bar2 {
        return differ("BAR2 (LMEM)", human(want.bar2), human(have.bar2));
    }
    if have.mig_flags & MigrationFlags::STOP_COPY.bits() as u32 == 0 {
        return differ(
            "migration flags",
            format!("{:#x}", want.mig_flags),
            format!("{:#x}", have.mig_flags),
        );
    }
    Ok(())
}

/// What the reader thread hands over.
enum Incoming {
    Data(usize, Vec<u8>, usize),
    End(usize, u64),
    Failed(CliError),
}

/// DATA frames into each VF until every VF's END; returns the connection (unless its reader
/// failed past recovery) and the bytes written. `direct` (every VF served over vfio-user):
/// from this thread, spliced from plain TCP or written from where TLS decrypted it (see
/// [`spliced`]). Else a reader thread owns the connection meanwhile, so receiving (and decrypting) the next
/// frame overlaps writing the last into its VF; buffers go back and forth through a small pool.
fn take_streams(
    devs: &mut [Dev<'_>],
    mut io: Box<dyn Conn>,
    direct: bool,
) -> (Option<Box<dyn Conn>>, Result<u64, CliError>) {
    if direct {
        if let Some(tcp) = io.plain() {
            let kernel_tls = io.kernel_tls().is_some();
            let r = spliced::take_streams(devs, &mut spliced::Plain::new(tcp, kernel_tls));
            return (Some(io), r);
        }
        if let Some(t) = io.tls() {
            let r = spliced::take_streams(devs, t);
            return (Some(io), r);
        }
    }
    let n = devs.len();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Incoming>(POOL);
    let (back, pool) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..POOL {
        let _ = back.send(vec![0u8; MAX_DATA as usize]);
    }
    let reader = std::thread::spawn(move || {
        let mut ended = vec![false; n];
        let fail = |tx: &std::sync::mpsc::SyncSender<Incoming>, e: CliError| {
            let _ = tx.send(Incoming::Failed(e));
        };
        while ended.iter().any(|e| !e) {
            let h = match recv_header(&mut *io) {
                Ok(h) => h,
                Err(e) => {
                    fail(&tx, e.context("receiving the streams"));
                    break;
                }
            };
            let vf = usize::from(h.vf);
            let msg = match h.kind {
                kind::ERROR => Err(match recv_payload(&mut *io, &h) {
                    Ok(p) => peer_error(&p).context("the source aborted"),
                    Err(e) => e,
                }),
                _ if vf >= n || ended[vf] => Err(proto(format!(
                    "a frame for VF {vf}, which is not (or no longer) in this migration"
                ))),
                kind::DATA => {
                    let Ok(mut b) = pool.recv() else { break };
                    let len = h.len as usize;
                    match io.read_exact(&mut b[..len]) {
                        Ok(()) => Ok(Incoming::Data(vf, b, len)),
                        Err(e) => Err(proto(format!("receiving the streams: {e}"))),
                    }
                }
                kind::END => recv_payload(&mut *io, &h).and_then(|p| {
                    ended[vf] = true;
                    mig_net::parse_end(&p)
                        .map(|t| Incoming::End(vf, t))
                        .map_err(|e| proto("a malformed END").cause(e))
                }),
                k => Err(proto(format!("frame kind {k} in the streams"))),
            };
            match msg {
                Ok(m) => {
                    if tx.send(m).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    fail(&tx, e);
                    break;
                }
            }
        }
        io
    });
    let mut totals = vec![0u64; n];
    let mut ended = vec![false; n];
    let mut r = Ok(());
    while r.is_ok() && ended.iter().any(|e| !e) {
        r = match rx.recv() {
            Ok(Incoming::Data(vf, b, len)) => {
                let d = &mut devs[vf];
                let who = d.who.clone();
                let w =
                    d.c.write_data(&b[..len])
                        .ctx(|| format!("{who}: writing migration data at byte {}", totals[vf]));
                totals[vf] += len as u64;
                let _ = back.send(b);
                w
            }
            Ok(Incoming::End(vf, total)) if total != totals[vf] => Err(proto(format!(
                "VF {vf}: the source sent {total} bytes, {} arrived",
                totals[vf]
            ))),
            Ok(Incoming::End(vf, _)) => {
                ended[vf] = true;
                Ok(())
            }
            Ok(Incoming::Failed(e)) => Err(e),
            Err(_) => Err(proto("the reader stopped")),
        };
    }
    // Stop the reader (it ends at the last END, or when it can no longer hand anything over).
    drop(rx);
    drop(back);
    let conn = reader.join().ok();
    (conn, r.map(|()| totals.iter().sum()))
}
