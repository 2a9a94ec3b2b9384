//! The zero-copy data paths of the vfio-user server — MIG_DATA_READ written by the device into
//! the socket (`sendfile` of LMEM pages, or straight from a reserved LMEM), MIG_DATA_WRITE read
//! by the device from the socket (straight into a reserved LMEM) — and the relay that splices
//! between two servers: the same bytes as the buffered paths at every split, errors answered
//! in-band with the connection kept in step.

mod common;
use common::*;
use vfio_core::device::region;
use vfio_core::{DeviceState, Errno};
use vfio_user::msg::{self, cmd, Header, Payload, HEADER_LEN};
use vfio_user::{Client, ClientError, Relay};
use xe_pf::hw::mem::Commit;
use xe_pf::{Fault, GucOp, Platform, SriovVfio};

const LMEM: u64 = 4 << 20;

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// A BMG host with one VF of `lmem`, committed as `commit` says, under `dir/name`.
fn bmg(
    dir: &tempfile::TempDir,
    name: impl AsRef<std::path::Path>,
    lmem: u64,
    commit: Commit,
) -> Host {
    host_committed(&dir.path().join(name), Platform::Bmg, 1, lmem, commit)
}

/// Data in two places of the LMEM (the rest stays zero) and a scratch register.
fn fill(c: &mut Client) {
    fill_sized(c, LMEM)
}

fn fill_sized(c: &mut Client, lmem: u64) {
    let n = (lmem / 8) as usize;
    c.region_write(region::BAR2, 4096 * 3 + 5, &pattern(n, 1))
        .unwrap();
    c.region_write(region::BAR2, lmem - 7000, &pattern(7000, 2))
        .unwrap();
    c.write32(region::BAR0, 0x190240, 0xfeed_beef).unwrap();
}

fn lmem_of(c: &mut Client) -> Vec<u8> {
    lmem_sized(c, LMEM)
}

fn lmem_sized(c: &mut Client, lmem: u64) -> Vec<u8> {
    let mut v = vec![0u8; lmem as usize];
    for (i, part) in v.chunks_mut(1 << 20).enumerate() {
        c.region_read(region::BAR2, (i as u64) << 20, part).unwrap();
    }
    v
}

/// Saves the VF behind `c` with reads of `split` bytes; the VF runs again afterwards.
fn save(c: &mut Client, split: usize) -> Vec<u8> {
    c.set_device_state(DeviceState::StopCopy).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; split];
    loop {
        let n = c.mig_data_read(&mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
        if n < split {
            break;
        }
    }
    c.set_device_state(DeviceState::Running).unwrap();
    out
}

fn restore(c: &mut Client, stream: &[u8]) -> Result<(), ClientError> {
    c.set_device_state(DeviceState::Stop)?;
    c.set_device_state(DeviceState::Resuming)?;
    c.mig_data_write(stream)?;
    c.set_device_state(DeviceState::Stop)?;
    c.set_device_state(DeviceState::Running)
}

#[test]
fn direct_paths_give_the_same_stream_and_state_at_every_split() {
    // Splits that cut packet headers (7, 4099 bytes) on a small LMEM, whole transfers (1 MiB)
    // on a larger one.
    same_stream_and_state(64 << 10, &[7, 4099]);
    same_stream_and_state(LMEM, &[4099, 1 << 20]);
}

fn same_stream_and_state(lmem: u64, splits: &[usize]) {
    let dir = tempfile::tempdir().unwrap();
    let lazy = bmg(&dir, "l", lmem, Commit::Lazy);
    let reserved = bmg(&dir, "r", lmem, Commit::Reserved);
    let mut streams = Vec::new();
    for h in [&lazy, &reserved] {
        fill_sized(&mut Client::connect(&h.sockets[0]).unwrap(), lmem);
        for &split in splits {
            let mut c = Client::connect_with(&h.sockets[0], split as u32).unwrap();
            assert_eq!(c.max_xfer() as usize, split);
            streams.push(save(&mut c, split));
        }
    }
    // The buffered path (the PF read in-process) gives the same bytes.
    let pf = &lazy.pf;
    pf.suspend_device(1).unwrap();
    pf.stop_copy_enter(1).unwrap();
    let mut buffered = Vec::new();
    let mut buf = vec![0u8; 65_537];
    loop {
        let n = pf.data_read(1, &mut buf).unwrap();
        buffered.extend_from_slice(&buf[..n]);
        if n == 0 {
            break;
        }
    }
    pf.stop_copy_exit(1).unwrap();
    pf.resume_device(1).unwrap();
    assert!(buffered.len() as u64 > lmem);
    for (i, s) in streams.iter().enumerate() {
        assert!(*s == buffered, "stream {i} differs from the buffered read");
    }
    // Restores at the same splits, into lazy and reserved LMEM, give the source's state.
    let want = lmem_sized(&mut Client::connect(&lazy.sockets[0]).unwrap(), lmem);
    for commit in [Commit::Lazy, Commit::Reserved] {
        let d = bmg(&dir, format!("d{commit:?}"), lmem, commit);
        for &split in splits {
            let mut c = Client::connect_with(&d.sockets[0], split as u32).unwrap();
            c.write32(region::BAR0, 0x190240, 0).unwrap();
            c.region_write(region::BAR2, 0, &pattern(lmem as usize / 2, 9))
                .unwrap();
            restore(&mut c, &buffered).unwrap();
            assert!(
                lmem_sized(&mut c, lmem) == want,
                "{commit:?}, split {split}: LMEM"
            );
            assert_eq!(c.read32(region::BAR0, 0x190240).unwrap(), 0xfeed_beef);
        }
    }
}

/// A MIG_DATA_WRITE whose data goes bad in the middle: the device stops taking it, the rest of
/// the message is read and dropped, the error comes back in-band, and the next request on the
/// same connection is answered.
#[test]
fn a_write_rejected_mid_message_keeps_the_connection_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let a = host(&dir.path().join("a"), Platform::Bmg, 1, LMEM);
    for commit in [Commit::Lazy, Commit::Reserved] {
        let b = bmg(&dir, format!("b{commit:?}"), LMEM, commit);
        let mut s = Client::connect(&a.sockets[0]).unwrap();
        fill(&mut s);
        let mut stream = save(&mut s, 1 << 20);
        // Garbage over the end of the VRAM payload and the trailer: everything before is
        // valid, and the bad header that follows the payload sits inside one large message
        // with ~90 KiB after it.
        let bad_at = stream.len() - 7000;
        stream.truncate(bad_at);
        stream.extend_from_slice(&[0xa5; 100_000]);
        let mut c = Client::connect(&b.sockets[0]).unwrap();
        c.set_device_state(DeviceState::Stop).unwrap();
        c.set_device_state(DeviceState::Resuming).unwrap();
        let e = c.mig_data_write(&stream).unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Remote {
                    command: "MIG_DATA_WRITE",
                    errno: Errno::EINVAL | Errno::EPROTO | Errno::EIO
                }
            ),
            "{commit:?}: {e}"
        );
        // In step: more data is refused with the poisoned session's errno, queries work.
        let again = c.mig_data_write(&[0; 1000]).unwrap_err();
        assert!(matches!(again, ClientError::Remote { .. }), "{again}");
        assert_eq!(c.device_state().unwrap(), DeviceState::Resuming);
        // Leaving RESUMING validates the stream: refused; a reset recovers the device.
        assert!(c.set_device_state(DeviceState::Stop).is_err());
        c.reset().unwrap();
        assert_eq!(c.device_state().unwrap(), DeviceState::Running);
    }
}

/// The save failing before any byte of a MIG_DATA_READ went out is an error reply (EIO), and
/// the connection stays usable.
#[test]
fn a_save_failure_is_an_error_reply() {
    let dir = tempfile::tempdir().unwrap();
    for commit in [Commit::Lazy, Commit::Reserved] {
        let a = bmg(&dir, format!("a{commit:?}"), LMEM, commit);
        a.pf.faults()
            .inject(1, Some(1), GucOp::SaveState, Fault::Fail(Errno::EPROTO), 1);
        let mut c = Client::connect(&a.sockets[0]).unwrap();
        c.set_device_state(DeviceState::StopCopy).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let e = c.mig_data_read(&mut buf).unwrap_err();
        assert_eq!(e.errno(), Errno::EIO, "{commit:?}: {e}");
        assert_eq!(c.device_state().unwrap(), DeviceState::StopCopy);
        c.reset().unwrap();
        assert_eq!(c.device_state().unwrap(), DeviceState::Running);
    }
}

/// The relay, splicing or copying, moves exactly the stream and leaves the destination equal to
/// the source; a destination that refuses the first chunk leaves both connections in step
/// though reads and writes were in flight.
#[test]
fn relay_splices_or_copies_the_same_and_recovers_from_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let a = bmg(&dir, "a", LMEM, Commit::Reserved);
    let b = host(&dir.path().join("b"), Platform::Bmg, 1, LMEM);
    let mut src = Client::connect(&a.sockets[0]).unwrap();
    fill(&mut src);
    let want = lmem_of(&mut src);
    let expected = save(&mut src, 1 << 20).len() as u64;
    for mut relay in [Relay::new(), Relay::copying()] {
        let splicing = relay.splicing();
        let mut dst = Client::connect(&b.sockets[0]).unwrap();
        dst.region_write(region::BAR2, 0, &pattern(1 << 20, 5))
            .unwrap();
        dst.set_device_state(DeviceState::Stop).unwrap();
        dst.set_device_state(DeviceState::Resuming).unwrap();
        src.set_device_state(DeviceState::StopCopy).unwrap();
        let mut seen = Vec::new();
        let n = relay
            .run(&mut src, &mut dst, &mut |t| seen.push(t))
            .unwrap();
        assert_eq!(n, expected, "splicing: {splicing}");
        assert_eq!(seen.last(), Some(&n));
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        dst.set_device_state(DeviceState::Stop).unwrap();
        dst.set_device_state(DeviceState::Running).unwrap();
        src.set_device_state(DeviceState::Running).unwrap();
        assert!(lmem_of(&mut dst) == want, "splicing: {splicing}");
        drop(dst);
    }
    // A destination of another platform refuses the descriptor: ENODEV, and both connections
    // answer the next request.
    let p = host(&dir.path().join("p"), Platform::Ptl, 1, 0);
    let mut dst = Client::connect(&p.sockets[0]).unwrap();
    dst.set_device_state(DeviceState::Stop).unwrap();
    dst.set_device_state(DeviceState::Resuming).unwrap();
    src.set_device_state(DeviceState::StopCopy).unwrap();
    let e = Relay::new()
        .run(&mut src, &mut dst, &mut |_| {})
        .unwrap_err();
    assert_eq!(e.client_error().errno(), Errno::ENODEV, "{e}");
    assert!(e.to_string().starts_with("destination:"), "{e}");
    src.set_device_state(DeviceState::Running).unwrap();
    assert_eq!(src.device_state().unwrap(), DeviceState::Running);
    dst.reset().unwrap();
    assert_eq!(dst.device_state().unwrap(), DeviceState::Running);
}

/// A MIG_DATA_WRITE whose size field disagrees with the message is refused (EINVAL) by the
/// buffered decoder even though the direct path is available, and serving goes on.
#[test]
fn a_bad_write_size_is_refused_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let b = bmg(&dir, "b", LMEM, Commit::Reserved);
    let mut c = Client::connect(&b.sockets[0]).unwrap();
    c.set_device_state(DeviceState::Stop).unwrap();
    c.set_device_state(DeviceState::Resuming).unwrap();
    let mut p = Payload::new().u32(8).u32(10).0; // says 10, carries 6
    p.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
    let r = c.raw(cmd::MIG_DATA_WRITE, msg::TYPE_COMMAND, &p).unwrap();
    assert_eq!(r.header.errno(), Some(Errno::EINVAL));
    assert_eq!(r.header.size as usize, HEADER_LEN);
    assert_eq!(c.device_state().unwrap(), DeviceState::Resuming);
}

/// A client that asks for migration data and hangs up before reading it: the server's direct
/// send fails (EPIPE, not a signal), the device is closed (back to RUNNING), and the next client
/// is served.
#[test]
fn a_client_hanging_up_mid_reply_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    for commit in [Commit::Lazy, Commit::Reserved] {
        let a = bmg(&dir, format!("a{commit:?}"), 64 << 20, commit);
        {
            let mut c = Client::connect(&a.sockets[0]).unwrap();
            c.set_device_state(DeviceState::StopCopy).unwrap();
            // Queue several 1 MiB reads and leave: replies far larger than the socket buffers.
            let p = Payload::new().u32(8 + (1 << 20)).u32(1 << 20).0;
            for id in 0..16u16 {
                let h = Header {
                    msg_id: 1000 + id,
                    command: cmd::MIG_DATA_READ,
                    size: (HEADER_LEN + p.len()) as u32,
                    flags: msg::TYPE_COMMAND,
                    error: 0,
                };
                let mut m = h.encode().to_vec();
                m.extend_from_slice(&p);
                c.send_bytes(&m).unwrap();
            }
        }
        let mut c = Client::connect(&a.sockets[0]).unwrap();
        assert_eq!(
            c.device_state().unwrap(),
            DeviceState::Running,
            "{commit:?}"
        );
        // And it migrates data normally again.
        fill(&mut c);
        assert!(save(&mut c, 1 << 20).len() as u64 > 64 << 20);
    }
}

/// A destination that negotiates, then hangs up in the middle of the first MIG_DATA_WRITE.
fn dying_destination(path: &std::path::Path) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    let l = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        loop {
            let mut hb = [0u8; HEADER_LEN];
            if s.read_exact(&mut hb).is_err() {
                return;
            }
            let h = Header::decode(&hb);
            if h.command == cmd::MIG_DATA_WRITE {
                let mut some = vec![0u8; 1000];
                let _ = s.read_exact(&mut some);
                return; // hang up
            }
            let mut p = vec![0u8; h.size as usize - HEADER_LEN];
            s.read_exact(&mut p).unwrap();
            assert_eq!(h.command, cmd::VERSION);
            let caps = br#"{"capabilities":{"max_data_xfer_size":1048576}}"#;
            let reply = Payload::new()
                .u16(msg::VERSION_MAJOR)
                .u16(msg::VERSION_MINOR)
                .bytes(caps)
                .bytes(&[0])
                .0;
            s.write_all(&h.reply(reply.len()).encode()).unwrap();
            s.write_all(&reply).unwrap();
        }
    })
}

/// The destination dying mid-stream, or the source failing mid-stream, leaves the source's
/// connection in step (the answers it still owed taken), so the abort path can resume it with
/// its state intact.
#[test]
fn relay_failures_leave_the_source_usable() {
    let dir = tempfile::tempdir().unwrap();
    let a = bmg(&dir, "a", 64 << 20, Commit::Reserved);
    let mut src = Client::connect(&a.sockets[0]).unwrap();
    fill(&mut src);
    let before = lmem_sized(&mut src, 64 << 20);
    for mut relay in [Relay::new(), Relay::copying()] {
        let path = dir.path().join(format!("dying{}.sock", relay.splicing()));
        let t = dying_destination(&path);
        let mut dst = Client::connect(&path).unwrap();
        src.set_device_state(DeviceState::StopCopy).unwrap();
        let e = relay.run(&mut src, &mut dst, &mut |_| {}).unwrap_err();
        assert!(e.to_string().starts_with("destination:"), "{e}");
        t.join().unwrap();
        src.set_device_state(DeviceState::Running).unwrap();
        assert_eq!(src.device_state().unwrap(), DeviceState::Running);
        assert!(
            lmem_sized(&mut src, 64 << 20) == before,
            "source LMEM changed"
        );
    }
    // The source failing (its GuC state cannot be saved): an error reply, reads in flight
    // answered, the connection in step.
    a.pf.faults()
        .inject(1, Some(0), GucOp::SaveState, Fault::Fail(Errno::EPROTO), 1);
    let b = host(&dir.path().join("b"), Platform::Bmg, 1, 64 << 20);
    let mut dst = Client::connect(&b.sockets[0]).unwrap();
    dst.set_device_state(DeviceState::Stop).unwrap();
    dst.set_device_state(DeviceState::Resuming).unwrap();
    src.set_device_state(DeviceState::StopCopy).unwrap();
    let e = Relay::new()
        .run(&mut src, &mut dst, &mut |_| {})
        .unwrap_err();
    assert_eq!(e.client_error().errno(), Errno::EIO, "{e}");
    assert!(e.to_string().starts_with("source:"), "{e}");
    assert_eq!(src.device_state().unwrap(), DeviceState::StopCopy);
    assert_eq!(dst.device_state().unwrap(), DeviceState::Resuming);
}
