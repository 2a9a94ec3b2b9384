//! Migration between hosts: `xe-vfio migrate --to tcp://…` and `xe-vfio receive` (two
//! processes), each in its own network namespace — two namespaces joined by a veth pair stand
//! for the two hosts — with mutual TLS (certificates made here with rcgen), between two
//! emulated hosts served from this process (their UNIX sockets are reachable from both
//! namespaces: only the network is split); and every refusal and abort: wrong CA, expired
//! certificate, no client certificate, a second connection, a peer that drops mid-stream, a
//! destination whose VFs do not match.
//!
//! Making namespaces needs root and `ip` (iproute2). Without them the tests say why and run
//! over loopback instead; with `XE_NETNS_REQUIRED=1` (set by `.ci/run`) that is a failure.

mod common;
use common::{host, xe_vfio, Host};
use mig_net::{kind, Header, Hello, VfInfo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use vfio_core::DeviceState;
use vfio_user::{Client, ServerOptions};
use xe_guest::{DirectAccess, GuestAccess, Workload};
use xe_pf::hw::mem::Commit;
use xe_pf::hw::{self as vf, VfHw};
use xe_pf::Platform;

const MIB: u64 = 1 << 20;

/// A CA and the certificates it signs, as PEM files in `dir`.
struct Pki {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca: Issuer::new(p, key),
        }
    }

    /// A certificate for both hosts' addresses (server and client use), valid now unless
    /// `expired`.
    /// Returns (cert, key) paths.
    fn issue(&self, name: &str, expired: bool) -> (String, String) {
        let mut p = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "10.77.0.2".into(),
            "10.77.0.1".into(),
        ])
        .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }

    fn ca_path(&self, name: &str) -> String {
        self.dir
            .join(format!("{name}-ca.pem"))
            .display()
            .to_string()
    }
}

/// The two "hosts": two network namespaces joined by a veth pair (source 10.77.0.1,
/// destination 10.77.0.2), or loopback where namespaces cannot be made.
struct Net {
    /// (source namespace, destination namespace), if made.
    ns: Option<(String, String)>,
    dst_ip: &'static str,
}

static NEXT_NET: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Net {
    fn new(test: &str) -> Net {
        let n = NEXT_NET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        match Net::make(&tag) {
            Ok(ns) => Net {
                ns: Some(ns),
                dst_ip: "10.77.0.2",
            },
            Err(why) if std::env::var("XE_NETNS_REQUIRED").as_deref() == Ok("1") => {
                panic!("{test}: cannot make network namespaces (XE_NETNS_REQUIRED=1): {why}")
            }
            Err(why) => {
                eprintln!(
                    "{test}: network namespaces unavailable ({why}): over loopback instead \
                     (set XE_NETNS_REQUIRED=1 to make this a failure; .ci/run does)"
                );
                Net {
                    ns: None,
                    dst_ip: "127.0.0.1",
                }
            }
        }
    }

    fn make(tag: &str) -> Result<(String, String), String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not root".into());
        }
        let (a, b) = (format!("xe{tag}a"), format!("xe{tag}b"));
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let (va, vb) = (format!("xv{tag}a"), format!("xv{tag}b"));
        let r = (|| {
            ip(&["netns", "add", &a])?;
            ip(&["netns", "add", &b])?;
            ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
            ip(&["link", "set", &va, "netns", &a])?;
            ip(&["link", "set", &vb, "netns", &b])?;
            ip(&["-n", &a, "addr", "add", "10.77.0.1/24", "dev", &va])?;
            ip(&["-n", &b, "addr", "add", "10.77.0.2/24", "dev", &vb])?;
            for (ns, v) in [(&a, &va), (&b, &vb)] {
                ip(&["-n", ns, "link", "set", v, "up"])?;
                ip(&["-n", ns, "link", "set", "lo", "up"])?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => Ok((a, b)),
            Err(e) => {
                let _ = ip(&["netns", "del", &a]);
                let _ = ip(&["netns", "del", &b]);
                Err(e)
            }
        }
    }

    /// `xe-vfio` on the source host (`dst == false`) or the destination host.
    fn xe_vfio(&self, dst: bool) -> Command {
        match &self.ns {
            None => Command::new(env!("CARGO_BIN_EXE_xe-vfio")),
            Some((a, b)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", if dst { b } else { a }])
                    .arg(env!("CARGO_BIN_EXE_xe-vfio"));
                c
            }
        }
    }

    /// `xe-vfio ARGS` on the source host, to completion.
    fn run(&self, args: &[&str]) -> std::process::Output {
        self.xe_vfio(false).args(args).output().unwrap()
    }

    /// `xe-vfio ARGS` on the source host with one CPU to run on (as `taskset -c 0`), to
    /// completion.
    fn run_on_one_cpu(&self, args: &[&str]) -> std::process::Output {
        let mut c = self.xe_vfio(false);
        let mut one = rustix::thread::CpuSet::new();
        one.set(0);
        // SAFETY: between fork and exec, only the affinity system call (async-signal-safe).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut c, move || {
                rustix::thread::sched_setaffinity(None, &one).map_err(std::io::Error::from)
            });
        }
        c.args(args).output().unwrap()
    }

    /// `f` run on a thread inside the source's (`dst == false`) or the destination's
    /// namespace: a socket belongs to the namespace it was made in, wherever it is used.
    fn inside<T: Send + 'static>(&self, dst: bool, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self
            .ns
            .as_ref()
            .map(|(a, b)| if dst { b.clone() } else { a.clone() });
        std::thread::spawn(move || {
            if let Some(ns) = ns {
                let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&f),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap();
            }
            f()
        })
        .join()
        .unwrap()
    }

    /// A TCP connection to `addr` made from the source host.
    fn connect(&self, addr: &str) -> TcpStream {
        let addr = addr.to_string();
        self.inside(false, move || TcpStream::connect(addr).unwrap())
    }

    /// A listening socket on the destination host.
    fn listen(&self) -> std::net::TcpListener {
        let addr = format!("{}:0", self.dst_ip);
        self.inside(true, move || std::net::TcpListener::bind(addr).unwrap())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some((a, b)) = &self.ns {
            for ns in [a, b] {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
    }
}

/// A `xe-vfio receive` child on the destination host, listening on a port of its choosing.
struct Receive {
    child: Child,
    addr: String,
    out: BufReader<std::process::ChildStdout>,
}

impl Receive {
    fn start(net: &Net, to: &[&Path], args: &[&str]) -> Receive {
        let to: Vec<String> = to.iter().map(|p| p.display().to_string()).collect();
        let listen = format!("{}:0", net.dst_ip);
        let mut child = net
            .xe_vfio(true)
            .args(["receive", "--listen", &listen, "--to", &to.join(",")])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        // With --json, a JSON value like every other on stdout.
        let addr = if args.contains(&"--json") {
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("receive --json said {line:?}: {e}"));
            assert_eq!(
                v["ready"]["vfs"].as_array().map(Vec::len),
                Some(to.len()),
                "{v}"
            );
            v["ready"]["listen"].as_str().map(str::to_string)
        } else {
            line.split_whitespace()
                .skip_while(|w| *w != "on")
                .nth(1)
                .map(str::to_string)
        };
        let addr = addr.unwrap_or_else(|| panic!("receive did not say where it listens: {line:?}"));
        Receive { child, addr, out }
    }

    fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Waits for the end; returns (success, stdout rest, stderr).
    fn finish(mut self) -> (bool, String, String) {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.out, &mut rest);
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        let st = self.child.wait().unwrap();
        (st.success(), rest, err)
    }
}

impl Drop for Receive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ seed as u8)
        .collect()
}

fn lmem(hw: &VfHw) -> Vec<u8> {
    let mut v = vec![0u8; hw.lmem_size() as usize];
    hw.lmem().unwrap().read(0, &mut v).unwrap();
    v
}

/// Each side's security options: certificates of one CA made in `dir` (the destination's,
/// the source's), or `--insecure` for both.
fn security(dir: &Path, tls: bool) -> (Vec<String>, Vec<String>) {
    if !tls {
        return (vec!["--insecure".into()], vec!["--insecure".into()]);
    }
    let pki = Pki::new(dir, "site");
    let ca = pki.ca_path("site");
    let side = |name: &str| {
        let (cert, key) = pki.issue(name, false);
        ["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca]
            .map(String::from)
            .to_vec()
    };
    (side("dst"), side("src"))
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Writes `data` at the start of VF `vf`'s LMEM on host `h`.
fn write_lmem(h: &Host, vf: u32, data: &[u8]) {
    h.pf.vf(vf)
        .unwrap()
        .hw
        .lmem()
        .unwrap()
        .write(0, data)
        .unwrap();
}

/// A source written by hand, over plain TCP: it offers one VF (`id`) to `r` and has been
/// accepted.
/// A connection to the destination, plain or TLS.
trait Wire: std::io::Read + Write {}
impl<T: std::io::Read + Write> Wire for T {}

/// A stock rustls client with the source's certificate of [`security`]'s files in `dir`: its
/// own record sizes, not ours.
fn rustls_client(dir: &Path, tcp: TcpStream, host: &str) -> Box<dyn Wire> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("site-ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<_> = CertificateDer::pem_file_iter(dir.join("src.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("src.key")).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .unwrap();
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(cfg),
        host.to_string().try_into().unwrap(),
    )
    .unwrap();
    Box::new(rustls::StreamOwned::new(conn, tcp))
}

/// A source written by hand, its HELLO sent and the ACCEPT read: over plain TCP, or (`tls`: the
/// directory of [`security`]'s files) through a stock rustls client.
fn fake_source(net: &Net, r: &Receive, id: VfInfo, tls: Option<&Path>) -> Box<dyn Wire> {
    let tcp = net.connect(&r.addr);
    let mut fake: Box<dyn Wire> = match tls {
        Some(dir) => rustls_client(dir, tcp, net.dst_ip),
        None => Box::new(tcp),
    };
    let hello = Hello {
        version: mig_net::VERSION,
        flags: 0,
        vfs: vec![id],
    }
    .emit();
    fake.write_all(&mig_net::frame(kind::HELLO, 0, &hello))
        .unwrap();
    let mut ack = [0u8; mig_net::HEADER_LEN];
    fake.read_exact(&mut ack).unwrap();
    assert_eq!(Header::parse(&ack).unwrap().kind, kind::ACCEPT);
    fake
}

fn state(sock: &Path) -> DeviceState {
    Client::connect(sock).unwrap().device_state().unwrap()
}

/// VF 1 of `h` made busy: a guest's workload on it, its ring full of jobs when this returns.
fn busy(h: &Host, seed: u64) -> Workload<DirectAccess> {
    let hw = h.pf.vf(1).unwrap().hw.clone();
    let mut w = Workload::setup(DirectAccess(hw), true, 64 << 10, 4 << 20, seed).unwrap();
    w.submit_random(20).unwrap();
    w.wait_idle(Duration::from_secs(20)).unwrap();
    for _ in 0..(64 << 10) / vf::JOB_SIZE - 1 {
        let j = w.random_job();
        w.queue(j).unwrap();
    }
    w.doorbell().unwrap();
    w
}

/// `migrate` of all of `src`'s VFs to `url` with `sec` (the TLS options, or `--insecure`) and
/// `extra` options, on the source host; the JSON report.
fn migrate_json(
    net: &Net,
    src: &Host,
    url: &str,
    sec: &[&str],
    extra: &[&str],
) -> serde_json::Value {
    migrate_json_on(net, src, url, sec, extra, false)
}

/// [`migrate_json`], with one CPU for `migrate` to run on when `one_cpu`.
fn migrate_json_on(
    net: &Net,
    src: &Host,
    url: &str,
    sec: &[&str],
    extra: &[&str],
    one_cpu: bool,
) -> serde_json::Value {
    let from: Vec<String> = src
        .sockets
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let from = from.join(",");
    let mut args = vec!["migrate", "--from", &from, "--to", url, "--json"];
    args.extend_from_slice(sec);
    args.extend_from_slice(extra);
    let out = if one_cpu {
        net.run_on_one_cpu(&args)
    } else {
        net.run(&args)
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.contains("WARNING"),
        sec == ["--insecure"],
        "--insecure warns, TLS runs say nothing of it: {err}"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_busy_group_of_three_vfs_moves_between_hosts_over_mutual_tls() {
    busy_group_of_three(
        "a_busy_group_of_three_vfs_moves_between_hosts_over_mutual_tls",
        true,
    );
}

/// Over plain TCP the data is spliced (it never enters either side's process): the same
/// group, the same checks.
#[test]
fn a_busy_group_of_three_vfs_moves_between_hosts_over_plain_tcp_spliced() {
    busy_group_of_three(
        "a_busy_group_of_three_vfs_moves_between_hosts_over_plain_tcp_spliced",
        false,
    );
}

fn busy_group_of_three(name: &str, tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (dst_sec, src_sec) = security(dir.path(), tls);
    let net = Net::new(name);
    let a = host(&dir.path().join("a"), Platform::Bmg, 3, 16 * MIB);
    // The destination's servers take at most 64 KiB at once: each 1 MiB DATA frame goes in
    // as several MIG_DATA_WRITEs.
    let small = ServerOptions {
        max_data_xfer: 64 << 10,
        ..ServerOptions::default()
    };
    let b = common::host_served(
        &dir.path().join("b"),
        Platform::Bmg,
        3,
        16 * MIB,
        Commit::Lazy,
        false,
        small,
    );
    let hw = |h: &Host, i: u32| h.pf.vf(i).unwrap().hw.clone();
    // VF1 busy: its ring full of jobs when the group stops. VF2, VF3: data and a register.
    let mut w = busy(&a, 0x7c9);
    for i in 2..=3 {
        write_lmem(&a, i, &pattern(16 << 20, i));
        DirectAccess(hw(&a, i))
            .mmio_write32(vf::med_vf_sw_flag(0), 0xfeed_0000 + i)
            .unwrap();
    }
    let mut recv_args = strs(&dst_sec);
    recv_args.push("--json");
    let r = Receive::start(
        &net,
        &[&b.sockets[0], &b.sockets[1], &b.sockets[2]],
        &recv_args,
    );
    let rep = migrate_json(&net, &a, &r.url(), &strs(&src_sec), &[]);
    let transport = rep["transport"].as_str().unwrap();
    assert_eq!(transport.contains("TLS"), tls, "{rep}");
    assert_eq!(rep["spliced"], !tls, "{rep}");
    // (With more than one CPU to run on: the writer thread.)
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(rep["writer_thread"], cpus > 1, "{rep}");
    assert_eq!(rep["vfs"].as_array().unwrap().len(), 3);
    for v in rep["vfs"].as_array().unwrap() {
        assert_eq!(v["destination_state"], "RUNNING", "{rep}");
        assert!(v["downtime_ms"].as_f64().unwrap() <= rep["group_downtime_ms"].as_f64().unwrap());
    }
    let (ok, rout, rerr) = r.finish();
    assert!(ok, "{rerr}");
    let rr: serde_json::Value = serde_json::from_str(&rout).unwrap();
    assert_eq!(
        rr["states"],
        serde_json::json!(["RUNNING", "RUNNING", "RUNNING"])
    );
    assert_eq!(rr["spliced"], !tls, "{rr}");

    // Bit for bit: VF2, VF3 whole; VF1's queued jobs complete on the destination after the
    // fixups and its data equals the guest's model.
    for i in 2..=3 {
        assert!(lmem(&hw(&b, i)) == pattern(16 << 20, i), "VF{i} LMEM");
        assert_eq!(
            DirectAccess(hw(&b, i))
                .mmio_read32(vf::med_vf_sw_flag(0))
                .unwrap(),
            0xfeed_0000 + i
        );
    }
    w.set_access(DirectAccess(hw(&b, 1)));
    w.fixups().unwrap();
    w.wait_idle(Duration::from_secs(60)).unwrap();
    w.verify().unwrap();
    // (The sources were left in STOP; the migration's connections have closed since, and this
    // emulator walks a closed device back to RUNNING.)
    assert_eq!(state(&a.sockets[1]), DeviceState::Running);
}

/// Every refusal happens before a byte reaches a VF, and leaves the source RUNNING with its
/// data; the destination keeps listening (`--keep`) and takes a good migration afterwards.
#[test]
fn wrong_ca_expired_or_missing_certificates_and_mismatched_vfs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let site = Pki::new(dir.path(), "site");
    let other = Pki::new(dir.path(), "other");
    let (dc, dk) = site.issue("dst", false);
    let (sc, sk) = site.issue("src", false);
    let (xc, xk) = other.issue("src-other", false);
    let (oc, ok) = site.issue("src-expired", true);
    let (ca, other_ca) = (site.ca_path("site"), other.ca_path("other"));
    let net = Net::new("wrong_ca_expired_or_missing_certificates_and_mismatched_vfs_are_refused");
    let a = host(&dir.path().join("a"), Platform::Bmg, 1, 8 * MIB);
    let b = host(&dir.path().join("b"), Platform::Bmg, 1, 8 * MIB);
    let c = host(&dir.path().join("c"), Platform::Bmg, 1, 16 * MIB);
    let data = pattern(8 << 20, 5);
    write_lmem(&a, 1, &data);
    let src = a.sockets[0].display().to_string();
    let tls = [
        "--tls-cert",
        &dc,
        "--tls-key",
        &dk,
        "--tls-ca",
        &ca,
        "--keep",
    ];
    let r = Receive::start(&net, &[&b.sockets[0]], &tls);
    let migrate = |cert: &str, key: &str, ca: &str, url: &str| {
        let out = net.run(&[
            "migrate",
            "--from",
            &src,
            "--to",
            url,
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--tls-ca",
            ca,
        ]);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    // (`receive` holds the destination's socket: its VF is checked through the PF.)
    let b_before = lmem(&b.pf.vf(1).unwrap().hw);
    let untouched = |what: &str| {
        assert_eq!(state(&a.sockets[0]), DeviceState::Running, "{what}: source");
        assert!(lmem(&a.pf.vf(1).unwrap().hw) == data, "{what}: source LMEM");
        assert!(
            lmem(&b.pf.vf(1).unwrap().hw) == b_before,
            "{what}: destination LMEM"
        );
    };
    // We do not trust the destination's CA.
    let e = migrate(&sc, &sk, &other_ca, &r.url());
    assert!(
        e.contains("TLS handshake") && e.contains("UnknownIssuer"),
        "{e}"
    );
    untouched("wrong CA here");
    // The destination does not trust ours.
    // (TLS 1.3: the destination judges our certificate after our side of the handshake is
    // done; its alert arrives on the next read, or the write after it finds the connection
    // closed.)
    let refused = |e: &str, alert: &str| {
        assert!(
            e.contains(alert) || e.contains("closed the connection"),
            "{e}"
        );
        assert!(e.contains("nothing was stopped"), "{e}");
    };
    let e = migrate(&xc, &xk, &ca, &r.url());
    refused(&e, "UnknownCA");
    untouched("wrong CA there");
    // An expired certificate.
    let e = migrate(&oc, &ok, &ca, &r.url());
    refused(&e, "CertificateExpired");
    untouched("expired certificate");
    // No client certificate at all: a TLS client that presents none.
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(std::sync::Arc::new(cfg), "127.0.0.1".try_into().unwrap())
            .unwrap();
    let mut tcp = net.connect(&r.addr);
    let mut refused = false;
    // The server asks for a certificate and, getting none, ends the handshake (TLS 1.3: the
    // client learns it on its first read).
    for _ in 0..10 {
        match conn.complete_io(&mut tcp) {
            Err(_) => {
                refused = true;
                break;
            }
            Ok((0, 0)) if !conn.is_handshaking() => {
                let mut b = [0u8; 1];
                let mut s = rustls::Stream::new(&mut conn, &mut tcp);
                refused = !matches!(std::io::Read::read(&mut s, &mut b), Ok(n) if n > 0);
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(refused, "a client without a certificate was let in");
    drop(tcp);
    untouched("no client certificate");

    // VFs that do not match: an LMEM of another size (the destination checks before ACCEPT).
    let rc = Receive::start(&net, &[&c.sockets[0]], &tls[..6]);
    let e = migrate(&sc, &sk, &ca, &rc.url());
    assert!(e.contains("refused the migration"), "{e}");
    assert!(
        e.contains("BAR2 (LMEM) 16.0 MiB here, 8.0 MiB on the source"),
        "{e}"
    );
    assert!(e.contains("every source VF is RUNNING"), "{e}");
    untouched("mismatched VFs");
    let (ok_c, _, cerr) = rc.finish();
    assert!(!ok_c && cerr.contains("refused the migration"), "{cerr}");
    assert_eq!(state(&c.sockets[0]), DeviceState::Running);

    // Still listening, and a good migration goes through.
    let out = net.run(&[
        "migrate",
        "--from",
        &src,
        "--to",
        &r.url(),
        "--tls-cert",
        &sc,
        "--tls-key",
        &sk,
        "--tls-ca",
        &ca,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lmem(&b.pf.vf(1).unwrap().hw) == data);
    drop(r);
}

/// While a migration runs, another peer is turned away (and its source keeps running); a peer
/// that drops mid-stream leaves the destination reset and RUNNING, and `receive` says so.
#[test]
fn a_second_peer_is_turned_away_and_a_dropped_peer_leaves_the_destination_reset() {
    let dir = tempfile::tempdir().unwrap();
    let a = host(&dir.path().join("a"), Platform::Bmg, 1, 8 * MIB);
    let b = host(&dir.path().join("b"), Platform::Bmg, 1, 8 * MIB);
    write_lmem(&a, 1, &pattern(8 << 20, 9));
    let src = a.sockets[0].display().to_string();
    // A real stream to send part of, and the identity the destination expects.
    let file = dir.path().join("a.xe");
    let out = xe_vfio(&["save", "--from", &src, "-o", file.to_str().unwrap()]);
    assert!(out.status.success());
    let stream = std::fs::read(&file).unwrap();
    let id = VfInfo {
        vendor: 0x8086,
        device: a.pf.device_id(),
        revision: a.pf.revision(),
        mig_flags: 0x3,
        bar2: 8 * MIB,
    };
    let net =
        Net::new("a_second_peer_is_turned_away_and_a_dropped_peer_leaves_the_destination_reset");
    let r = Receive::start(&net, &[&b.sockets[0]], &["--insecure"]);
    let mut fake = fake_source(&net, &r, id, None);

    // A second source while this one runs: turned away, untouched.
    let out = net.run(&["migrate", "--from", &src, "--to", &r.url(), "--insecure"]);
    let e = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(
        e.contains("closed the connection") && e.contains("nothing was stopped"),
        "{e}"
    );
    assert_eq!(state(&a.sockets[0]), DeviceState::Running);

    // The first peer sends 1 MiB of its stream and vanishes.
    fake.write_all(&mig_net::frame(kind::DATA, 0, &stream[..MIB as usize]))
        .unwrap();
    drop(fake);
    let (ok, _, err) = r.finish();
    assert!(!ok);
    assert!(err.contains("the peer closed the connection"), "{err}");
    assert!(err.contains("was reset and is RUNNING"), "{err}");
    assert!(err.contains("turned") && err.contains("away"), "{err}");
    assert_eq!(state(&b.sockets[0]), DeviceState::Running);
}

/// PRE_COPY across hosts: a busy VF (its engine writing LMEM while the rounds run) and a quiet
/// one, pre-copied as a group under a bandwidth cap, then switched over; bit for bit.
#[test]
fn a_busy_group_pre_copies_across_hosts_under_a_bandwidth_cap() {
    busy_group_pre_copies(
        "a_busy_group_pre_copies_across_hosts_under_a_bandwidth_cap",
        true,
    );
}

/// Over plain TCP the rounds go through the writer thread and the stop-copy data is spliced,
/// under the same cap.
#[test]
fn a_busy_group_pre_copies_over_plain_tcp_then_splices_under_a_bandwidth_cap() {
    busy_group_pre_copies(
        "a_busy_group_pre_copies_over_plain_tcp_then_splices_under_a_bandwidth_cap",
        false,
    );
}

fn busy_group_pre_copies(name: &str, tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (dst_sec, src_sec) = security(dir.path(), tls);
    let net = Net::new(name);
    let a = common::host_pre_copy(&dir.path().join("a"), Platform::Bmg, 2, 8 * MIB);
    let b = host(&dir.path().join("b"), Platform::Bmg, 2, 8 * MIB);
    let hw = |h: &Host, i: u32| h.pf.vf(i).unwrap().hw.clone();
    let mut w = busy(&a, 0x91);
    write_lmem(&a, 2, &pattern(8 << 20, 2));
    let r = Receive::start(&net, &[&b.sockets[0], &b.sockets[1]], &strs(&dst_sec));
    // Over TLS the source has one CPU: every frame is written by the thread that reads the
    // VFs (the group over TLS and the plain pre-copy rounds take the writer thread).
    let rep = migrate_json_on(
        &net,
        &a,
        &r.url(),
        &strs(&src_sec),
        &["--pre-copy", "--max-bandwidth", "64M"],
        tls,
    );
    assert_eq!(rep["spliced"], !tls, "{rep}");
    assert_eq!(rep["writer_thread"], !tls, "{rep}");
    let p = &rep["pre_copy"];
    assert_eq!(p["converged"], true, "{rep}");
    assert!(p["precopy_bytes"].as_u64().unwrap() >= 16 * MIB, "{rep}");
    assert_eq!(rep["max_bandwidth"], 64 * MIB);
    // 16 MiB and more at 64 MiB/s: a quarter of a second at least.
    assert!(rep["total_seconds"].as_f64().unwrap() >= 0.25, "{rep}");
    let (ok, _, rerr) = r.finish();
    assert!(ok, "{rerr}");
    assert!(lmem(&hw(&b, 2)) == pattern(8 << 20, 2), "VF2 LMEM");
    w.set_access(DirectAccess(hw(&b, 1)));
    w.fixups().unwrap();
    w.wait_idle(Duration::from_secs(60)).unwrap();
    w.verify().unwrap();
}

/// A destination that accepts, takes part of the streams and vanishes: the source's group is
/// aborted and every source VF runs again with its data.
#[test]
fn a_destination_that_drops_mid_stream_leaves_every_source_running() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::new("a_destination_that_drops_mid_stream_leaves_every_source_running");
    let a = host(&dir.path().join("a"), Platform::Bmg, 2, 8 * MIB);
    for i in 1..=2 {
        write_lmem(&a, i, &pattern(8 << 20, 20 + i));
    }
    let l = net.listen();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let fake = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut h = [0u8; mig_net::HEADER_LEN];
        std::io::Read::read_exact(&mut s, &mut h).unwrap();
        let h = Header::parse(&h).unwrap();
        assert_eq!(h.kind, kind::HELLO);
        let mut p = vec![0u8; h.len as usize];
        std::io::Read::read_exact(&mut s, &mut p).unwrap();
        assert_eq!(Hello::parse(&p).unwrap().vfs.len(), 2);
        s.write_all(&mig_net::frame(kind::ACCEPT, 0, &[])).unwrap();
        // Take 2 MiB of the streams, then vanish.
        let mut sink = vec![0u8; 2 * MIB as usize];
        std::io::Read::read_exact(&mut s, &mut sink).unwrap();
    });
    let from = format!("{},{}", a.sockets[0].display(), a.sockets[1].display());
    let out = net.run(&["migrate", "--from", &from, "--to", &url, "--insecure"]);
    fake.join().unwrap();
    let e = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(
        e.contains("sending to the destination") || e.contains("closed the connection"),
        "{e}"
    );
    assert!(e.contains("the migration was aborted"), "{e}");
    assert_eq!(
        e.matches("is RUNNING again with its state intact").count(),
        2,
        "{e}"
    );
    for i in 1..=2 {
        assert_eq!(state(&a.sockets[i as usize - 1]), DeviceState::Running);
        assert!(lmem(&a.pf.vf(i).unwrap().hw) == pattern(8 << 20, 20 + i));
    }
}

/// A stream the destination VF refuses, spliced into it with writes in flight: the destination
/// tells the source why (an ERROR frame with the VF's errno), resets its VF (reopening the
/// connection the abandoned writes left out of step) and it runs again.
#[test]
fn a_stream_the_destination_vf_refuses_mid_splice_aborts_and_resets_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = host(&dir.path().join("b"), Platform::Bmg, 1, 8 * MIB);
    let id = VfInfo {
        vendor: 0x8086,
        device: b.pf.device_id(),
        revision: b.pf.revision(),
        mig_flags: 0x3,
        bar2: 8 * MIB,
    };
    let net = Net::new("a_stream_the_destination_vf_refuses_mid_splice_aborts_and_resets_it");
    // Plain TCP (spliced into the VF), then TLS from a stock rustls client (its records, of
    // its own sizes, opened and written into the VF from the receive buffer).
    for tls in [false, true] {
        let (dst_args, _) = security(dir.path(), tls);
        let r = Receive::start(&net, &[&b.sockets[0]], &strs(&dst_args));
        let mut fake = fake_source(&net, &r, id, tls.then_some(dir.path()));
        let mut h = [0u8; mig_net::HEADER_LEN];
        // Four frames of what is no migration stream, and their END.
        let junk = vec![0xa5u8; 256 << 10];
        for _ in 0..4 {
            fake.write_all(&mig_net::frame(kind::DATA, 0, &junk))
                .unwrap();
        }
        fake.write_all(&mig_net::frame(kind::END, 0, &(4u64 << 18).to_le_bytes()))
            .unwrap();
        fake.flush().unwrap();
        fake.read_exact(&mut h).unwrap();
        let h = Header::parse(&h).unwrap();
        assert_eq!(h.kind, kind::ERROR, "tls {tls}");
        let mut p = vec![0u8; h.len as usize];
        fake.read_exact(&mut p).unwrap();
        let m = mig_net::ErrorMsg::parse(&p).unwrap();
        assert!(m.errno != 0, "{m:?}");
        assert!(
            m.message.contains("writing migration data at byte 0"),
            "{m:?}"
        );
        drop(fake);
        let (ok, _, err) = r.finish();
        assert!(!ok);
        assert!(err.contains("writing migration data at byte 0"), "{err}");
        assert!(err.contains("was reset and is RUNNING"), "{err}");
        assert_eq!(state(&b.sockets[0]), DeviceState::Running);
    }
}
