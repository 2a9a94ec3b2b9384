//! The relay between two servers, and the client's reading of padded MIG_DATA_READ replies,
//! against fake devices and a fake peer.

mod common;
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use vfio_core::{DeviceState as S, Errno, MigrationFlags};
use vfio_user::msg::{cmd, Header, MigData, Version, HEADER_LEN};
use vfio_user::{Client, Relay, RelayError, ServerOptions};

fn to_stop_copy_and_resuming(src: &mut Client, dst: &mut Client) {
    src.set_device_state(S::StopCopy).unwrap();
    dst.set_device_state(S::Resuming).unwrap();
}

#[test]
fn relay_moves_the_stream_spliced_and_copied() {
    for mut relay in [Relay::new(), Relay::copying()] {
        let dir = tempfile::tempdir().unwrap();
        let a = Fake::with_pattern(9);
        let b = Fake::with_pattern(0);
        let sa = serve(dir.path(), "a.sock", a.clone(), ServerOptions::default());
        let sb = serve(dir.path(), "b.sock", b.clone(), ServerOptions::default());
        // A small transfer size: many chunks, several requests in flight.
        let mut ca = Client::connect_with(&sa.path, 512).unwrap();
        let mut cb = Client::connect_with(&sb.path, 512).unwrap();
        to_stop_copy_and_resuming(&mut ca, &mut cb);
        let mut seen = Vec::new();
        let n = relay
            .run(&mut ca, &mut cb, &mut |done| seen.push(done))
            .unwrap();
        assert_eq!(n, MEM as u64);
        assert_eq!(seen.last(), Some(&(MEM as u64)));
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "progress only grows");
        cb.set_device_state(S::Running).unwrap();
        ca.set_device_state(S::Running).unwrap();
        assert_eq!(b.bytes(), a.bytes());
    }
}

#[test]
fn a_destination_failure_leaves_both_connections_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let a = Fake::with_pattern(2);
    let before = a.bytes();
    let b = Fake::new(MigrationFlags::STOP_COPY | MigrationFlags::P2P, Some(1500));
    let sa = serve(dir.path(), "a.sock", a.clone(), ServerOptions::default());
    let sb = serve(dir.path(), "b.sock", b.clone(), ServerOptions::default());
    let mut ca = Client::connect_with(&sa.path, 512).unwrap();
    let mut cb = Client::connect_with(&sb.path, 512).unwrap();
    to_stop_copy_and_resuming(&mut ca, &mut cb);
    let err = Relay::new().run(&mut ca, &mut cb, &mut |_| {}).unwrap_err();
    match &err {
        RelayError::Destination { at, err } => {
            assert_eq!(err.errno(), Errno::EIO, "{err}");
            assert!(*at <= 1500, "failed at {at}");
        }
        other => panic!("expected a destination failure, got {other}"),
    }
    // Both connections answer: the source resumes with its data, the destination reports
    // RESUMING and is reset.
    ca.set_device_state(S::Running).unwrap();
    assert_eq!(a.state(), S::Running);
    assert_eq!(a.bytes(), before);
    assert_eq!(cb.device_state().unwrap(), S::Resuming);
    cb.reset().unwrap();
    assert_eq!(cb.device_state().unwrap(), S::Running);
}

/// A peer that answers MIG_DATA_READ as libvfio-user does: the message always carries the
/// requested length, `size` says how much of it is data, and 0 ends the stream.
fn padding_peer(listener: UnixListener, stream: Vec<u8>) {
    let (mut s, _) = listener.accept().unwrap();
    let mut at = 0usize;
    loop {
        let mut hb = [0u8; HEADER_LEN];
        if s.read_exact(&mut hb).is_err() {
            return;
        }
        let h = Header::decode(&hb);
        let mut p = vec![0u8; h.size as usize - HEADER_LEN];
        s.read_exact(&mut p).unwrap();
        let payload = match h.command {
            cmd::VERSION => Version {
                major: 0,
                minor: 1,
                json: r#"{"capabilities":{"max_data_xfer_size":100}}"#,
            }
            .to_vec(),
            cmd::MIG_DATA_READ => {
                let want = MigData::parse(&p).unwrap().size as usize;
                let n = want.min(stream.len() - at).min(7); // short reads mid-stream
                let mut out = MigData {
                    argsz: (8 + want) as u32,
                    size: n as u32,
                }
                .to_vec();
                out.extend_from_slice(&stream[at..at + n]);
                out.resize(8 + want, 0xee); // padding
                at += n;
                out
            }
            _ => {
                s.write_all(&h.error_reply(Errno::ENOTTY).encode()).unwrap();
                continue;
            }
        };
        s.write_all(&h.reply(payload.len()).encode()).unwrap();
        s.write_all(&payload).unwrap();
    }
}

#[test]
fn padded_replies_are_read_and_the_connection_stays_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peer.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let stream: Vec<u8> = (0..50u8).collect();
    let want = stream.clone();
    let peer = std::thread::spawn(move || padding_peer(listener, want));
    let mut c = Client::connect(&path).unwrap();
    assert_eq!(c.max_xfer(), 100);
    let mut got = Vec::new();
    let mut buf = [0u8; 100];
    loop {
        let n = c.mig_data_read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(n <= 7);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, stream, "padding dropped, short reads joined");
    // The next request's reply is found: nothing of the padding was left behind.
    let e = c.device_info().unwrap_err();
    assert_eq!(e.errno(), Errno::ENOTTY, "{e}");
    drop(c);
    peer.join().unwrap();
}
