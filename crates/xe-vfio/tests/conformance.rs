//! `xe-vfio migrate`, `save` and `restore` against a device that is not ours: a small
//! vfio-user server written here (not Xe: one 4 KiB BAR whose contents are its migration
//! state), switchable into each behaviour other implementations have — libvfio-user's above
//! all: no P2P, padded MIG_DATA_READ replies, a strict MIG_DATA_WRITE `argsz`, bodies read with
//! one `recv`, short reads mid-stream, a reset that keeps the migration state, accepting only
//! single arcs — and into failures (an error or a hang-up mid-stream, a malformed reply).

mod common;
use common::xe_vfio;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vfio_core::{next_state, DeviceState as S, Errno, MigrationFlags};
use vfio_user::msg::{
    cmd, feature, DeviceInfo, Feature, Header, MigData, RegionAccess, RegionInfo, Version,
    HEADER_LEN,
};

const MEM: usize = 4096;
/// The fake's max_data_xfer_size: small, so a stream takes several messages.
const XFER: usize = 1024;

#[derive(Clone, Copy, Debug, Default)]
struct Behaviour {
    /// Flags STOP_COPY | PRE_COPY (0x5) instead of STOP_COPY | P2P.
    no_p2p: bool,
    /// MIG_DATA_READ replies always carry the requested length, zero-padded after `size`.
    padded: bool,
    /// MIG_DATA_WRITE refused unless `argsz` = 8 + `size`.
    strict_argsz: bool,
    /// A message body is read with one `recv`; a short one is an error.
    one_recv: bool,
    /// MIG_DATA_READ returns at most this many bytes; 0 ends the stream.
    short_reads: Option<usize>,
    /// DEVICE_RESET leaves the migration state as it is.
    reset_keeps_state: bool,
    /// A MIG_DATA_READ at or past this offset gets an EIO reply.
    fail_read_at: Option<usize>,
    /// A MIG_DATA_READ at or past this offset makes the server hang up.
    hang_up_at: Option<usize>,
    /// A MIG_DATA_READ at or past this offset gets a reply whose `size` exceeds its data.
    bad_reply_at: Option<usize>,
    /// A MIG_DATA_READ at or past this offset is never answered (the connection stays open).
    stall_at: Option<usize>,
}

#[derive(Debug)]
struct Dev {
    mem: Vec<u8>,
    state: S,
    flags: MigrationFlags,
    save: Vec<u8>,
    pos: usize,
    incoming: Vec<u8>,
}

struct Fake {
    path: PathBuf,
    dev: Arc<Mutex<Dev>>,
}

impl Fake {
    fn start(dir: &Path, name: &str, seed: u8, b: Behaviour) -> Fake {
        let path = dir.join(name);
        let listener = UnixListener::bind(&path).unwrap();
        let flags = if b.no_p2p {
            MigrationFlags::STOP_COPY | MigrationFlags::PRE_COPY
        } else {
            MigrationFlags::STOP_COPY | MigrationFlags::P2P
        };
        let dev = Arc::new(Mutex::new(Dev {
            mem: (0..MEM)
                .map(|i| (i as u8).wrapping_mul(13) ^ seed)
                .collect(),
            state: S::Running,
            flags,
            save: Vec::new(),
            pos: 0,
            incoming: Vec::new(),
        }));
        let d = dev.clone();
        // The server threads end with the test process; the device persists across clients,
        // each served on its own thread (a stalled one does not block the next).
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                let d = d.clone();
                std::thread::spawn(move || serve(s, &d, b));
            }
        });
        Fake { path, dev }
    }

    fn state(&self) -> S {
        self.dev.lock().unwrap().state
    }

    fn mem(&self) -> Vec<u8> {
        self.dev.lock().unwrap().mem.clone()
    }

    fn sock(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// The fake's PCI config space: vendor 0x1b36, device 0x0011, revision 2, nothing else.
fn config_space() -> [u8; 256] {
    let mut c = [0u8; 256];
    c[..4].copy_from_slice(&[0x36, 0x1b, 0x11, 0x00]);
    c[8] = 2;
    c
}

fn reply(s: &mut UnixStream, h: &Header, payload: &[u8]) {
    let _ = s.write_all(&[&h.reply(payload.len()).encode()[..], payload].concat());
}

fn error(s: &mut UnixStream, h: &Header, e: Errno) {
    let _ = s.write_all(&h.error_reply(e).encode());
}

/// Serves one client until it hangs up (or the behaviour says to hang up).
fn serve(mut s: UnixStream, dev: &Mutex<Dev>, b: Behaviour) {
    loop {
        let mut hb = [0u8; HEADER_LEN];
        if s.read_exact(&mut hb).is_err() {
            return;
        }
        let h = Header::decode(&hb);
        let len = (h.size as usize).saturating_sub(HEADER_LEN);
        let mut p = vec![0u8; len];
        let got = if b.one_recv {
            s.read(&mut p).unwrap_or(0)
        } else {
            s.read_exact(&mut p).map(|()| len).unwrap_or(0)
        };
        if got < len {
            // One recv came back short: what such a peer sees when a body arrives in pieces.
            error(&mut s, &h, Errno::EINVAL);
            continue;
        }
        let mut d = dev.lock().unwrap();
        match handle(&mut s, &h, &p, &mut d, b) {
            Ok(Some(out)) => reply(&mut s, &h, &out),
            Ok(None) => return, // hang up
            Err(Errno::EAGAIN) if b.stall_at.is_some() => {
                // Lost track of the conversation: never answer, keep the connection open.
                drop(d);
                loop {
                    std::thread::park();
                }
            }
            Err(e) => error(&mut s, &h, e),
        }
    }
}

fn handle(
    s: &mut UnixStream,
    h: &Header,
    p: &[u8],
    d: &mut Dev,
    b: Behaviour,
) -> Result<Option<Vec<u8>>, Errno> {
    let bad = |_| Errno::EINVAL;
    Ok(Some(match h.command {
        cmd::VERSION => {
            let json = format!(
                r#"{{"capabilities":{{"max_data_xfer_size":{XFER},"migration":{{"pgsize":4096}}}}}}"#
            );
            Version {
                major: 0,
                minor: 1,
                json: &json,
            }
            .to_vec()
        }
        cmd::DEVICE_GET_INFO => DeviceInfo {
            argsz: 16,
            flags: 3,
            num_regions: 9,
            num_irqs: 5,
        }
        .to_vec(),
        cmd::DEVICE_GET_REGION_INFO => {
            let r = RegionInfo::parse(p).map_err(bad)?;
            RegionInfo {
                argsz: 32,
                flags: 3,
                index: r.index,
                cap_offset: 0,
                size: if r.index == 0 { MEM as u64 } else { 0 },
                offset: 0,
            }
            .to_vec()
        }
        cmd::REGION_READ => {
            let r = RegionAccess::parse(p).map_err(bad)?;
            let at = r.offset as usize;
            // Config space: the same device on every fake (a destination checks it); any
            // other region is the memory.
            let config = config_space();
            let from = if r.region == vfio_core::device::region::CONFIG {
                &config[..]
            } else {
                &d.mem[..]
            };
            let src = from.get(at..at + r.count as usize).ok_or(Errno::EINVAL)?;
            [&r.to_vec()[..], src].concat()
        }
        cmd::REGION_WRITE => {
            let (r, data) = RegionAccess::parse_with_data(p, XFER as u32).map_err(bad)?;
            let at = r.offset as usize;
            let dst = d.mem.get_mut(at..at + data.len()).ok_or(Errno::EINVAL)?;
            dst.copy_from_slice(data);
            r.to_vec()
        }
        cmd::DEVICE_RESET => {
            if !b.reset_keeps_state {
                d.state = S::Running;
                d.save.clear();
            }
            Vec::new()
        }
        cmd::DEVICE_FEATURE => feature_(p, d)?,
        cmd::MIG_DATA_READ => {
            let m = MigData::parse(p).map_err(bad)?;
            if d.state != S::StopCopy {
                return Err(Errno::EINVAL);
            }
            let at = d.pos;
            if b.hang_up_at.is_some_and(|x| at >= x) {
                return Ok(None);
            }
            if b.stall_at.is_some_and(|x| at >= x) {
                d.state = S::StopCopy;
                return Err(Errno::EAGAIN); // marker: `serve` stalls instead of answering
            }
            if b.fail_read_at.is_some_and(|x| at >= x) {
                return Err(Errno::EIO);
            }
            let want = m.size as usize;
            let n = want
                .min(d.save.len() - at)
                .min(b.short_reads.unwrap_or(usize::MAX));
            d.pos += n;
            let room = if b.padded { want } else { n };
            let size = if b.bad_reply_at.is_some_and(|x| at >= x) {
                room as u32 + 5
            } else {
                n as u32
            };
            let mut out = MigData {
                argsz: (8 + room) as u32,
                size,
            }
            .to_vec();
            out.extend_from_slice(&d.save[at..at + n]);
            out.resize(8 + room, 0);
            let _ = s;
            out
        }
        cmd::MIG_DATA_WRITE => {
            let m = MigData::parse(p).map_err(bad)?;
            if d.state != S::Resuming || p.len() - 8 != m.size as usize {
                return Err(Errno::EINVAL);
            }
            if b.strict_argsz && m.argsz != 8 + m.size {
                return Err(Errno::EINVAL);
            }
            d.incoming.extend_from_slice(&p[8..]);
            Vec::new()
        }
        _ => return Err(Errno::EOPNOTSUPP),
    }))
}

/// DEVICE_FEATURE: MIGRATION and MIG_DEVICE_STATE only (no MIG_DATA_SIZE, as libvfio-user);
/// a state change must be a single arc of the kernel's table.
fn feature_(p: &[u8], d: &mut Dev) -> Result<Vec<u8>, Errno> {
    let f = Feature::parse(p).map_err(|_| Errno::EINVAL)?;
    let index = f.flags & feature::MASK;
    let mut out = Feature {
        argsz: 16,
        flags: f.flags,
    }
    .to_vec();
    match (index, f.flags & feature::SET != 0) {
        (feature::MIGRATION, false) => out.extend_from_slice(&d.flags.bits().to_ne_bytes()),
        (feature::MIG_DEVICE_STATE, false) => {
            out.extend_from_slice(&(d.state as u32).to_ne_bytes());
            out.extend_from_slice(&u32::MAX.to_ne_bytes());
        }
        (feature::MIG_DEVICE_STATE, true) => {
            let raw = u32::from_ne_bytes(p.get(8..12).ok_or(Errno::EINVAL)?.try_into().unwrap());
            let new = S::try_from(raw)?;
            if next_state(d.state, new, d.flags) != Ok(new) {
                return Err(Errno::EINVAL); // single arcs only
            }
            match (d.state, new) {
                (S::Stop, S::StopCopy) => {
                    d.save = d.mem.clone();
                    d.pos = 0;
                }
                (S::Stop, S::Resuming) => d.incoming.clear(),
                (S::Resuming, S::Stop) => {
                    if d.incoming.len() != MEM {
                        return Err(Errno::EIO);
                    }
                    d.mem = d.incoming.clone();
                }
                _ => {}
            }
            d.state = new;
            out.extend_from_slice(&p[8..]);
        }
        _ => return Err(Errno::ENOTTY),
    }
    Ok(out)
}

fn behaviours() -> Vec<(&'static str, Behaviour)> {
    let d = Behaviour::default();
    vec![
        ("plain", d),
        ("no P2P", Behaviour { no_p2p: true, ..d }),
        ("padded replies", Behaviour { padded: true, ..d }),
        (
            "strict argsz",
            Behaviour {
                strict_argsz: true,
                ..d
            },
        ),
        (
            "one-recv bodies",
            Behaviour {
                one_recv: true,
                ..d
            },
        ),
        (
            "short reads",
            Behaviour {
                short_reads: Some(100),
                ..d
            },
        ),
        (
            "reset keeps state",
            Behaviour {
                reset_keeps_state: true,
                ..d
            },
        ),
        (
            "libvfio-user",
            Behaviour {
                no_p2p: true,
                padded: true,
                strict_argsz: true,
                one_recv: true,
                short_reads: Some(333),
                reset_keeps_state: true,
                ..d
            },
        ),
    ]
}

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn migrate_both_ways_in_every_behaviour() {
    for (name, b) in behaviours() {
        let dir = tempfile::tempdir().unwrap();
        let a = Fake::start(dir.path(), "a.sock", 1, b);
        let z = Fake::start(dir.path(), "z.sock", 2, b);
        let before = a.mem();
        ok(
            &xe_vfio(&["migrate", "--from", a.sock(), "--to", z.sock()]),
            name,
        );
        assert_eq!(z.mem(), before, "{name}: A → Z byte for byte");
        assert_eq!((a.state(), z.state()), (S::Stop, S::Running), "{name}");
        // And back, with Z changed first, so the direction is proven.
        z.dev.lock().unwrap().mem[7] ^= 0xff;
        let changed = z.mem();
        ok(
            &xe_vfio(&["migrate", "--from", z.sock(), "--to", a.sock()]),
            name,
        );
        assert_eq!(a.mem(), changed, "{name}: Z → A byte for byte");
        assert_eq!((z.state(), a.state()), (S::Stop, S::Running), "{name}");
    }
}

/// Between hosts (loopback), over plain TCP — where the destination's data is spliced into an
/// xe-vfio server — and over TLS — where it is written from the receive buffer: this
/// destination is no xe-vfio server, so each MIG_DATA_WRITE must still arrive whole either way
/// (libvfio-user reads a body with one `recv`).
#[test]
fn migrate_between_hosts_in_every_behaviour() {
    let pki = tempfile::tempdir().unwrap();
    let p = |f: &str| pki.path().join(f).display().to_string();
    ok(&xe_vfio(&["certs", &p(""), "127.0.0.1", "source"]), "certs");
    let tls = |h: &str| {
        let (c, k, ca) = (p(&format!("{h}.pem")), p(&format!("{h}.key")), p("ca.pem"));
        [
            "--tls-cert".to_string(),
            c,
            "--tls-key".into(),
            k,
            "--tls-ca".into(),
            ca,
        ]
    };
    let (dst_tls, src_tls) = (tls("127.0.0.1"), tls("source"));
    let insecure = ["--insecure".to_string()];
    for (name, b) in behaviours() {
        for (dst_sec, src_sec) in [(&insecure[..], &insecure[..]), (&dst_tls[..], &src_tls[..])] {
            let name = &format!(
                "{name}, {}",
                if dst_sec.len() > 1 { "TLS" } else { "plain" }
            );
            let dir = tempfile::tempdir().unwrap();
            let a = Fake::start(dir.path(), "a.sock", 5, b);
            let z = Fake::start(dir.path(), "z.sock", 6, b);
            let before = a.mem();
            let mut recv = std::process::Command::new(env!("CARGO_BIN_EXE_xe-vfio"))
                .args(["receive", "--listen", "127.0.0.1:0", "--to", z.sock()])
                .args(dst_sec)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut ready = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(recv.stdout.as_mut().unwrap()),
                &mut ready,
            )
            .unwrap();
            let addr = ready
                .strip_prefix("receive: ready on ")
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_else(|| panic!("{name}: {ready}"));
            let url = format!("tcp://{addr}");
            let mut args = vec!["migrate", "--from", a.sock(), "--to", &url];
            args.extend(src_sec.iter().map(String::as_str));
            let out = xe_vfio(&args);
            let got = recv.wait_with_output().unwrap();
            ok(&out, name);
            ok(&got, name);
            let said = String::from_utf8_lossy(&out.stdout);
            let want = if dst_sec.len() > 1 {
                "over TLSv1_3"
            } else {
                "data spliced"
            };
            assert!(said.contains(want), "{name}: {said}");
            assert_eq!(z.mem(), before, "{name}: byte for byte");
            assert_eq!((a.state(), z.state()), (S::Stop, S::Running), "{name}");
        }
    }
}

#[test]
fn save_and_restore_in_every_behaviour() {
    for (name, b) in behaviours() {
        let dir = tempfile::tempdir().unwrap();
        let a = Fake::start(dir.path(), "a.sock", 3, b);
        let z = Fake::start(dir.path(), "z.sock", 4, b);
        let file = dir.path().join("a.bin");
        let f = file.to_str().unwrap();
        ok(&xe_vfio(&["save", "--from", a.sock(), "-o", f]), name);
        assert_eq!(std::fs::read(&file).unwrap(), a.mem(), "{name}: the file");
        assert_eq!(a.state(), S::Running, "{name}: the source runs again");
        ok(&xe_vfio(&["restore", "--to", z.sock(), "-i", f]), name);
        assert_eq!(z.mem(), a.mem(), "{name}: restored byte for byte");
        assert_eq!(z.state(), S::Running, "{name}");
        // inspect says plainly that this is not an Xe stream.
        let out = xe_vfio(&["inspect", f]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("not an Xe SR-IOV migration stream"), "{text}");
        assert!(text.contains(&format!("({MEM} bytes")), "{text}");
    }
}

/// Every failure mid-stream leaves the source RUNNING with its data, and says what state the
/// destination is in.
#[test]
fn failures_leave_the_source_running() {
    let d = Behaviour::default();
    let cases = [
        (
            "peer error mid-stream",
            Behaviour {
                fail_read_at: Some(2048),
                ..d
            },
        ),
        (
            "peer hang-up mid-stream",
            Behaviour {
                hang_up_at: Some(2048),
                ..d
            },
        ),
        (
            "malformed reply mid-stream",
            Behaviour {
                bad_reply_at: Some(2048),
                padded: true,
                ..d
            },
        ),
        (
            "hang-up, libvfio-user-like",
            Behaviour {
                hang_up_at: Some(1000),
                no_p2p: true,
                padded: true,
                short_reads: Some(333),
                reset_keeps_state: true,
                ..d
            },
        ),
    ];
    for (name, b) in cases {
        let dir = tempfile::tempdir().unwrap();
        let a = Fake::start(dir.path(), "a.sock", 5, b);
        let z = Fake::start(
            dir.path(),
            "z.sock",
            6,
            Behaviour {
                reset_keeps_state: b.reset_keeps_state,
                ..d
            },
        );
        let before = a.mem();
        let out = xe_vfio(&["migrate", "--from", a.sock(), "--to", z.sock()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}");
        assert!(
            err.contains("the source is RUNNING again with its state intact"),
            "{name}: {err}"
        );
        assert_eq!(a.state(), S::Running, "{name}");
        assert_eq!(a.mem(), before, "{name}: the source's data");
        if b.reset_keeps_state {
            assert!(err.contains("still in RESUMING"), "{name}: {err}");
        } else {
            assert!(
                err.contains("the destination was reset and is RUNNING"),
                "{name}: {err}"
            );
            assert_eq!(z.state(), S::Running, "{name}");
        }
        // save: the same failure, the source running again.
        let file = dir.path().join("a.bin");
        let out = xe_vfio(&["save", "--from", a.sock(), "-o", file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: save");
        assert!(
            err.contains("the device is RUNNING again with its state intact"),
            "{name}: {err}"
        );
        assert_eq!(a.state(), S::Running, "{name}: after save");
        assert!(!file.exists(), "{name}: no partial file left");
    }
}

/// A restore that fails is reported with the state the device is really in.
#[test]
fn a_failed_restore_reports_the_real_state() {
    let d = Behaviour::default();
    for b in [
        d,
        Behaviour {
            reset_keeps_state: true,
            ..d
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let z = Fake::start(dir.path(), "z.sock", 7, b);
        let file = dir.path().join("short.bin");
        std::fs::write(&file, [1u8; 100]).unwrap();
        let out = xe_vfio(&["restore", "--to", z.sock(), "-i", file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        if b.reset_keeps_state {
            assert!(err.contains("still in RESUMING"), "{err}");
            assert_eq!(z.state(), S::Resuming);
        } else {
            assert!(err.contains("was reset and is RUNNING"), "{err}");
            assert_eq!(z.state(), S::Running);
        }
    }
}

/// A peer that stops answering in the middle of the stream: `migrate` gives up after
/// `--timeout` seconds, saying so, and the source (reached on a new connection) runs again.
#[test]
fn a_peer_that_stops_answering_times_out() {
    let d = Behaviour::default();
    let dir = tempfile::tempdir().unwrap();
    let a = Fake::start(
        dir.path(),
        "a.sock",
        8,
        Behaviour {
            stall_at: Some(2048),
            ..d
        },
    );
    let z = Fake::start(dir.path(), "z.sock", 9, d);
    let before = a.mem();
    let t = std::time::Instant::now();
    let out = xe_vfio(&[
        "migrate",
        "--timeout",
        "1",
        "--from",
        a.sock(),
        "--to",
        z.sock(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("did not answer within 1 s"), "{err}");
    assert!(
        err.contains("the source is RUNNING again with its state intact"),
        "{err}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(30),
        "gave up in time"
    );
    assert_eq!(a.state(), S::Running);
    assert_eq!(a.mem(), before);
}
