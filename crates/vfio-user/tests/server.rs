//! The vfio-user server and client on their own, against a small fake device (not Xe):
//! negotiation, info, region access and fd passing, migration data both ways, malformed input
//! mapped to errnos, and disconnect semantics.

mod common;
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use vfio_core::device::REGION_INFO_FLAG_MMAP;
use vfio_core::{DeviceState as S, Errno, MigrationFlags};
use vfio_user::msg::{self, cmd, feature, Header, MigData, Payload, RegionAccess, HEADER_LEN};
use vfio_user::{Client, ClientError, ServerOptions};

fn remote(e: ClientError) -> Errno {
    match e {
        ClientError::Remote { errno, .. } => errno,
        other => panic!("expected an error reply, got {other}"),
    }
}

fn errno_of(c: &mut Client, command: u16, payload: &[u8]) -> Option<Errno> {
    let r = c.raw(command, msg::TYPE_COMMAND, payload).unwrap();
    assert_eq!(r.header.command, command);
    assert_eq!(r.header.kind(), msg::TYPE_REPLY);
    r.header.errno()
}

#[test]
fn nothing_but_version_before_negotiation() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(
        dir.path(),
        "a.sock",
        Fake::with_pattern(1),
        ServerOptions::default(),
    );
    let mut raw = UnixStream::connect(&s.path).unwrap();
    let h = Header {
        msg_id: 9,
        command: cmd::DEVICE_GET_INFO,
        size: (HEADER_LEN + 16) as u32,
        flags: msg::TYPE_COMMAND,
        error: 0,
    };
    raw.write_all(&h.encode()).unwrap();
    raw.write_all(&[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    let mut rb = [0u8; HEADER_LEN];
    raw.read_exact(&mut rb).unwrap();
    let r = Header::decode(&rb);
    assert_eq!((r.msg_id, r.errno()), (9, Some(Errno::EINVAL)));
}

#[test]
fn negotiation_info_and_fd_passing() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(
        dir.path(),
        "a.sock",
        Fake::with_pattern(1),
        ServerOptions::default(),
    );
    let mut c = Client::connect_with(&s.path, 64 << 10).unwrap();
    assert_eq!(c.max_xfer(), 64 << 10);
    assert!(c.server_caps().pointer("/capabilities/migration").is_some());
    let i = c.device_info().unwrap();
    assert_eq!((i.flags, i.num_regions, i.num_irqs), (3, 9, 5));
    let (r0, fd0, _) = c.region_info(0).unwrap();
    assert_eq!(r0.size, MEM as u64);
    assert!(fd0.is_none(), "region 0 has no fd");
    let (r2, fd2, off) = c.region_info(2).unwrap();
    assert_ne!(r2.flags & REGION_INFO_FLAG_MMAP, 0);
    assert!(fd2.is_some(), "region 2's fd comes with the reply");
    assert_eq!(off, 0);
    assert_eq!(remote(c.region_info(9).unwrap_err()), Errno::EINVAL);
    assert_eq!(c.irq_info(4).unwrap().count, 0);
    assert_eq!(remote(c.irq_info(5).unwrap_err()), Errno::EINVAL);
    drop(c);
    drop(s);
    // Without mmap, no fd and no MMAP flag.
    let opts = ServerOptions {
        mmap: false,
        ..Default::default()
    };
    let s = serve(dir.path(), "b.sock", Fake::with_pattern(1), opts);
    let mut c = Client::connect(&s.path).unwrap();
    let (r2, fd2, _) = c.region_info(2).unwrap();
    assert_eq!(r2.flags & REGION_INFO_FLAG_MMAP, 0);
    assert!(fd2.is_none());
}

#[test]
fn region_access_round_trips_and_errors_are_replies() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Fake::with_pattern(3);
    let s = serve(dir.path(), "a.sock", dev.clone(), ServerOptions::default());
    let mut c = Client::connect_with(&s.path, 1000).unwrap();
    // Split into max_xfer pieces by the client.
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    c.region_write(0, 100, &data).unwrap();
    let mut back = vec![0u8; 3000];
    c.region_read(0, 100, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(dev.bytes()[100..3100], data[..]);
    let mut b = [0u8; 8];
    assert_eq!(
        remote(c.region_read(0, MEM as u64 - 4, &mut b).unwrap_err()),
        Errno::EINVAL
    );
    assert_eq!(remote(c.region_write(1, 0, &b).unwrap_err()), Errno::EINVAL);
    // Malformed payloads: an error reply each, the connection stays usable.
    assert_eq!(
        errno_of(&mut c, cmd::DEVICE_GET_INFO, &[0; 8]),
        Some(Errno::EINVAL)
    );
    let over = RegionAccess {
        offset: 0,
        region: 0,
        count: 1001,
    };
    assert_eq!(
        errno_of(&mut c, cmd::REGION_READ, &over.to_vec()),
        Some(Errno::EMSGSIZE)
    );
    let mut w = RegionAccess {
        offset: 0,
        region: 0,
        count: 4,
    }
    .to_vec();
    w.push(1);
    assert_eq!(errno_of(&mut c, cmd::REGION_WRITE, &w), Some(Errno::EINVAL));
    assert_eq!(errno_of(&mut c, 200, &[]), Some(Errno::EOPNOTSUPP));
    let fe = Payload::new().u32(16).u32(feature::GET | 99).0;
    assert_eq!(
        errno_of(&mut c, cmd::DEVICE_FEATURE, &fe),
        Some(Errno::ENOTTY)
    );
    c.read32(0, 0).unwrap();
    // A size that cannot be a message: an error reply, then the server hangs up.
    let h = Header {
        msg_id: 1,
        command: cmd::REGION_WRITE,
        size: 64 << 20,
        flags: 0,
        error: 0,
    };
    c.send_bytes(&h.encode()).unwrap();
    let r = c.recv().unwrap();
    assert_eq!(r.header.errno(), Some(Errno::EMSGSIZE));
    assert!(c.recv().is_err(), "connection closed");
}

/// Saves `src` through a client into bytes.
fn save(c: &mut Client) -> Vec<u8> {
    c.set_device_state(S::StopCopy).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1000];
    loop {
        let n = c.mig_data_read(&mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            break;
        }
    }
    out
}

#[test]
fn migration_data_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let a = Fake::with_pattern(5);
    let b = Fake::with_pattern(0);
    let sa = serve(dir.path(), "a.sock", a.clone(), ServerOptions::default());
    let sb = serve(dir.path(), "b.sock", b.clone(), ServerOptions::default());
    let mut ca = Client::connect(&sa.path).unwrap();
    let mut cb = Client::connect(&sb.path).unwrap();
    assert_eq!(
        ca.migration_flags().unwrap(),
        MigrationFlags::STOP_COPY | MigrationFlags::P2P
    );
    assert_eq!(ca.mig_data_size().unwrap(), MEM as u64);
    // Reading migration data outside a saving state is EINVAL.
    let mut buf = [0u8; 16];
    assert_eq!(
        remote(ca.mig_data_read(&mut buf).unwrap_err()),
        Errno::EINVAL
    );
    let stream = save(&mut ca);
    assert_eq!(stream, a.bytes());
    assert_eq!(a.state(), S::StopCopy);
    cb.set_device_state(S::Resuming).unwrap();
    // A MIG_DATA_WRITE whose size disagrees with its data: EINVAL, and the next one is found.
    let mut bad = MigData { argsz: 12, size: 5 }.to_vec();
    bad.extend_from_slice(&[0; 4]);
    assert_eq!(
        errno_of(&mut cb, cmd::MIG_DATA_WRITE, &bad),
        Some(Errno::EINVAL)
    );
    cb.mig_data_write(&stream).unwrap();
    cb.set_device_state(S::Running).unwrap();
    assert_eq!(b.bytes(), a.bytes());
    ca.set_device_state(S::Running).unwrap();
    assert_eq!(cb.device_state().unwrap(), S::Running);
    // Writing in RUNNING: EINVAL.
    assert_eq!(remote(cb.mig_data_write(&[1]).unwrap_err()), Errno::EINVAL);
}

#[test]
fn a_disconnect_closes_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Fake::with_pattern(1);
    let s = serve(dir.path(), "a.sock", dev.clone(), ServerOptions::default());
    let mut c = Client::connect(&s.path).unwrap();
    c.set_device_state(S::StopCopy).unwrap();
    drop(c);
    // The next client is served only after the previous one was closed.
    let mut c = Client::connect(&s.path).unwrap();
    assert_eq!(*dev.closes.lock().unwrap(), 1);
    assert_eq!(c.device_state().unwrap(), S::Running);
}

/// A client that asks region info with the fixed size gets no fd (it may not expect one) and
/// the size it needs; asked again with that size, the reply carries the sparse-mmap
/// capability and the fd.
#[test]
fn region_info_fd_only_with_a_complete_reply() {
    use vfio_user::msg::{RegionInfo, SparseMmap, REGION_INFO_FLAG_CAPS};
    let dir = tempfile::tempdir().unwrap();
    let s = serve(
        dir.path(),
        "a.sock",
        Fake::with_pattern(1),
        ServerOptions::default(),
    );
    let mut c = Client::connect(&s.path).unwrap();
    let ask = |argsz: u32| {
        RegionInfo {
            argsz,
            index: 2,
            ..Default::default()
        }
        .to_vec()
    };
    let r = c
        .raw(cmd::DEVICE_GET_REGION_INFO, msg::TYPE_COMMAND, &ask(32))
        .unwrap();
    assert_eq!(r.header.errno(), None);
    assert!(
        r.fds.is_empty(),
        "no fd with a reply the client had no room for"
    );
    assert_eq!(r.payload.len(), RegionInfo::LEN);
    let i = RegionInfo::parse(&r.payload).unwrap();
    assert_eq!(i.argsz as usize, RegionInfo::LEN + SparseMmap::LEN);
    assert_eq!(i.cap_offset, 0);
    assert_eq!(
        i.flags & REGION_INFO_FLAG_CAPS,
        0,
        "no CAPS flag without the capability"
    );
    let r = c
        .raw(
            cmd::DEVICE_GET_REGION_INFO,
            msg::TYPE_COMMAND,
            &ask(i.argsz),
        )
        .unwrap();
    assert_eq!(r.fds.len(), 1, "the fd comes with the complete reply");
    let i = RegionInfo::parse(&r.payload).unwrap();
    assert_eq!(i.cap_offset as usize, RegionInfo::LEN);
    assert_ne!(i.flags & REGION_INFO_FLAG_CAPS, 0);
    let cap = SparseMmap::parse(&r.payload[RegionInfo::LEN..]).unwrap();
    assert_eq!(
        cap,
        SparseMmap {
            offset: 0,
            size: 8192
        }
    );
    // Region 0 cannot be mapped: no capability, no fd, whatever the argsz.
    let r0 = RegionInfo {
        argsz: 64,
        index: 0,
        ..Default::default()
    };
    let r = c
        .raw(cmd::DEVICE_GET_REGION_INFO, msg::TYPE_COMMAND, &r0.to_vec())
        .unwrap();
    assert!(r.fds.is_empty());
    assert_eq!(RegionInfo::parse(&r.payload).unwrap().argsz, 32);
}
