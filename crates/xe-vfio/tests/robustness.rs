//! Malformed and out-of-place messages get error replies (or a clean disconnect for framing
//! that cannot be resynchronised), and the server keeps serving.

mod common;
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use vfio_core::device::region;
use vfio_core::{DeviceState, Errno};
use vfio_user::msg::{self, cmd, feature, Header, Payload, HEADER_LEN};
use vfio_user::{Client, ClientError};
use xe_pf::Platform;

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
fn bad_messages_get_error_replies_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path(), Platform::Bmg, 1, 1 << 20);
    let mut c = Client::connect(&h.sockets[0]).unwrap();
    let p = |p: Payload| p.0;

    // Unknown and unsupported commands.
    assert_eq!(errno_of(&mut c, 99, &[]), Some(Errno::EOPNOTSUPP));
    assert_eq!(
        errno_of(&mut c, cmd::DEVICE_GET_REGION_IO_FDS, &[0; 16]),
        Some(Errno::EOPNOTSUPP)
    );
    // Payloads shorter than their fixed part.
    assert_eq!(
        errno_of(&mut c, cmd::DEVICE_GET_INFO, &[0; 8]),
        Some(Errno::EINVAL)
    );
    assert_eq!(
        errno_of(&mut c, cmd::REGION_READ, &[0; 15]),
        Some(Errno::EINVAL)
    );
    assert_eq!(
        errno_of(&mut c, cmd::DMA_MAP, &[0; 31]),
        Some(Errno::EINVAL)
    );
    // REGION_WRITE whose count disagrees with its data.
    let w = p(Payload::new().u64(0x190240).u32(0).u32(8).u32(1));
    assert_eq!(errno_of(&mut c, cmd::REGION_WRITE, &w), Some(Errno::EINVAL));
    // Counts beyond max_data_xfer_size: EMSGSIZE (a too-long message, not a bad argument).
    let big = p(Payload::new().u64(0).u32(region::BAR2).u32((1 << 20) + 1));
    assert_eq!(
        errno_of(&mut c, cmd::REGION_READ, &big),
        Some(Errno::EMSGSIZE)
    );
    let mr = p(Payload::new().u32(u32::MAX).u32((1 << 20) + 1));
    assert_eq!(
        errno_of(&mut c, cmd::MIG_DATA_READ, &mr),
        Some(Errno::EMSGSIZE)
    );
    // Region accesses out of bounds, bad indices.
    let mut b = [0u8; 8];
    assert_eq!(
        remote(
            c.region_read(region::BAR0, (16 << 20) - 4, &mut b)
                .unwrap_err()
        ),
        Errno::EINVAL
    );
    assert_eq!(
        remote(
            c.region_read(region::CONFIG, 4096, &mut b[..1])
                .unwrap_err()
        ),
        Errno::EINVAL
    );
    assert_eq!(
        remote(
            c.region_read(region::BAR2, u64::MAX - 2, &mut b)
                .unwrap_err()
        ),
        Errno::EINVAL
    );
    assert_eq!(
        remote(c.region_read(42, 0, &mut b).unwrap_err()),
        Errno::EINVAL
    );
    assert_eq!(remote(c.region_info(9).unwrap_err()), Errno::EINVAL);
    assert_eq!(remote(c.irq_info(77).unwrap_err()), Errno::EINVAL);
    // Migration data outside its states.
    let rd = p(Payload::new().u32(8 + 64).u32(64));
    assert_eq!(
        errno_of(&mut c, cmd::MIG_DATA_READ, &rd),
        Some(Errno::EINVAL),
        "RUNNING"
    );
    let wr = p(Payload::new().u32(8).u32(4).bytes(&[1, 2, 3, 4]));
    assert_eq!(
        errno_of(&mut c, cmd::MIG_DATA_WRITE, &wr),
        Some(Errno::EINVAL),
        "RUNNING"
    );
    c.set_device_state(DeviceState::StopCopy).unwrap();
    assert_eq!(
        errno_of(&mut c, cmd::MIG_DATA_WRITE, &wr),
        Some(Errno::EINVAL),
        "STOP_COPY"
    );
    c.set_device_state(DeviceState::Stop).unwrap();
    c.set_device_state(DeviceState::Resuming).unwrap();
    assert_eq!(
        errno_of(&mut c, cmd::MIG_DATA_READ, &rd),
        Some(Errno::EINVAL),
        "RESUMING"
    );
    c.set_device_state(DeviceState::Running).unwrap_err();
    c.reset().unwrap();
    assert_eq!(c.device_state().unwrap(), DeviceState::Running);
    // Bad states and features.
    let st = p(Payload::new()
        .u32(16)
        .u32(feature::MIG_DEVICE_STATE | feature::SET)
        .u32(0xabcd)
        .u32(0));
    assert_eq!(
        errno_of(&mut c, cmd::DEVICE_FEATURE, &st),
        Some(Errno::EINVAL)
    );
    let f = p(Payload::new().u32(16).u32(77 | feature::GET));
    assert_eq!(
        errno_of(&mut c, cmd::DEVICE_FEATURE, &f),
        Some(Errno::ENOTTY)
    );
    let f = p(Payload::new()
        .u32(16)
        .u32(feature::MIGRATION | feature::SET));
    assert_eq!(
        errno_of(&mut c, cmd::DEVICE_FEATURE, &f),
        Some(Errno::EINVAL)
    );
    let f = p(Payload::new()
        .u32(16)
        .u32(feature::MIGRATION | feature::GET | feature::PROBE));
    assert_eq!(errno_of(&mut c, cmd::DEVICE_FEATURE, &f), None, "probe");
    // DMA maps: tracked, overlap refused, unmap must match.
    c.dma_map(0x10000, 0x4000, 3).unwrap();
    assert_eq!(
        remote(c.dma_map(0x12000, 0x1000, 3).unwrap_err()),
        Errno::EEXIST
    );
    assert_eq!(
        remote(c.dma_unmap(0x10000, 0x1000).unwrap_err()),
        Errno::EINVAL
    );
    c.dma_unmap(0x10000, 0x4000).unwrap();
    // no_reply: nothing comes back; the next call still works.
    c.send_bytes(
        &[Header {
            msg_id: 9,
            command: cmd::DEVICE_RESET,
            size: 16,
            flags: msg::FLAG_NO_REPLY,
            error: 0,
        }
        .encode()]
        .concat(),
    )
    .unwrap();
    assert_eq!(c.device_info().unwrap().num_regions, 9);
    // Still serving real work.
    c.write32(region::BAR0, 0x190240, 5).unwrap();
    assert_eq!(c.read32(region::BAR0, 0x190240).unwrap(), 5);
}

#[test]
fn unparseable_framing_disconnects_and_the_next_client_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path(), Platform::Ptl, 1, 0);
    let raw = |bytes: &[u8]| {
        let mut s = UnixStream::connect(&h.sockets[0]).unwrap();
        s.write_all(bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        out
    };
    // Size smaller than a header.
    let bad = Header {
        msg_id: 1,
        command: cmd::VERSION,
        size: 8,
        flags: 0,
        error: 0,
    };
    let out = raw(&bad.encode());
    assert_eq!(out.len(), HEADER_LEN);
    assert_eq!(
        Header::decode(&out[..16].try_into().unwrap()).errno(),
        Some(Errno::EINVAL)
    );
    // Size beyond the maximum message.
    let huge = Header {
        msg_id: 2,
        command: cmd::REGION_WRITE,
        size: u32::MAX,
        flags: 0,
        error: 0,
    };
    let out = raw(&huge.encode());
    assert_eq!(
        Header::decode(&out[..16].try_into().unwrap()).errno(),
        Some(Errno::EMSGSIZE)
    );
    // Truncated header, truncated payload: just a disconnect.
    assert!(raw(&[1, 0, 1]).is_empty());
    let cut = Header {
        msg_id: 3,
        command: cmd::VERSION,
        size: 100,
        flags: 0,
        error: 0,
    };
    assert!(raw(&cut.encode()).is_empty());
    // Commands before VERSION are refused.
    let early = Header {
        msg_id: 4,
        command: cmd::DEVICE_GET_INFO,
        size: 32,
        flags: 0,
        error: 0,
    };
    let out = raw(&[&early.encode()[..], &[0u8; 16]].concat());
    assert_eq!(
        Header::decode(&out[..16].try_into().unwrap()).errno(),
        Some(Errno::EINVAL)
    );
    // A bad VERSION: wrong major, bad JSON.
    let v = |major: u16, json: &[u8]| {
        let p = Payload::new().u16(major).u16(1).bytes(json).0;
        let hd = Header {
            msg_id: 5,
            command: cmd::VERSION,
            size: (16 + p.len()) as u32,
            flags: 0,
            error: 0,
        };
        let out = raw(&[&hd.encode()[..], &p].concat());
        Header::decode(&out[..16].try_into().unwrap()).errno()
    };
    assert_eq!(v(1, b"{}\0"), Some(Errno::EOPNOTSUPP));
    assert_eq!(v(0, b"{nope\0"), Some(Errno::EINVAL));
    assert_eq!(
        v(0, b"{\"capabilities\":{\"unknown_cap\":7}}\0"),
        None,
        "unknown capabilities ignored"
    );
    // And a well-behaved client is served afterwards.
    let mut c = Client::connect(&h.sockets[0]).unwrap();
    assert_eq!(c.device_info().unwrap().num_irqs, 5);
}

#[test]
fn version_negotiation_honours_max_data_xfer_size() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path(), Platform::Bmg, 1, 1 << 20);
    let mut c = Client::connect_with(&h.sockets[0], 4096).unwrap();
    assert_eq!(c.max_xfer(), 4096);
    assert_eq!(
        c.server_caps()
            .pointer("/capabilities/max_data_xfer_size")
            .unwrap(),
        4096
    );
    // A read of 4097 bytes is refused; the client splits its own reads.
    let big = Payload::new().u64(0).u32(region::BAR2).u32(4097).0;
    assert_eq!(
        c.raw(cmd::REGION_READ, 0, &big).unwrap().header.errno(),
        Some(Errno::EMSGSIZE)
    );
    let mut buf = vec![0u8; 10_000];
    c.region_read(region::BAR2, 0, &mut buf).unwrap();
    // Bigger than the server allows → the server's limit.
    drop(c);
    let c = Client::connect_with(&h.sockets[0], 64 << 20).unwrap();
    assert_eq!(c.max_xfer(), 1 << 20);
}

#[test]
fn disconnect_closes_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path(), Platform::Bmg, 1, 1 << 20);
    let mut c = Client::connect(&h.sockets[0]).unwrap();
    c.write32(region::BAR0, 0x190240, 0x77).unwrap();
    c.set_device_state(DeviceState::StopCopy).unwrap();
    drop(c);
    let mut c = Client::connect(&h.sockets[0]).unwrap();
    assert_eq!(
        c.device_state().unwrap(),
        DeviceState::Running,
        "close resets the migration state"
    );
    assert_eq!(
        c.read32(region::BAR0, 0x190240).unwrap(),
        0x77,
        "registers persist"
    );
    // The previous session's stream is gone: STOP_COPY again gives a fresh, complete stream.
    c.set_device_state(DeviceState::StopCopy).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = c.mig_data_read(&mut buf).unwrap();
        total += n as u64;
        if n < buf.len() {
            break;
        }
    }
    assert_eq!(total, h.pf.stream_len(1).unwrap());
}
