//! The migration stream: vectors, splits, equivalence, errors, memory.

mod common;
use common::*;
use mig_io::Errno;
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use xe_guest::DirectAccess;
use xe_pf::control::CtlState;
use xe_pf::hw as vf;
use xe_pf::hw::ggtt::pte_with_vfid;
use xe_pf::hw::mem::{Backing, Commit};
use xe_pf::migration;
use xe_pf::migration::inspect::inspect;
use xe_pf::migration::wire::{
    klvs, Descriptor, Header, HeaderRepr, PacketType, WireError, HEADER_LEN,
};
use xe_pf::{Fault, GucOp, Platform, SriovVfio, XePf};

// ---- codecs: byte-exact vectors written by hand from SPEC §4 --------------------------------

#[test]
fn header_vector() {
    // version 1, type VRAM (6), tile 0, gt 1, flags 0, offset 0x1122334455667788, size 0x1000.
    let bytes: [u8; 24] = [
        0x01, 0x06, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, //
        0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, //
        0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    let h = Header::new_checked(&bytes[..]).unwrap();
    let r = HeaderRepr::parse(&h).unwrap();
    assert_eq!(
        r,
        HeaderRepr {
            kind: PacketType::Vram,
            tile: 0,
            gt: 1,
            offset: 0x1122_3344_5566_7788,
            size: 0x1000
        }
    );
    assert_eq!(r.to_bytes(), bytes);
    // Trailer: type 2, everything else zero.
    let mut t = [0u8; 24];
    t[0] = 1;
    t[1] = 2;
    assert_eq!(migration::wire::trailer(), t);
    // Errors.
    assert_eq!(
        Header::new_checked(&bytes[..23]).unwrap_err(),
        WireError::Truncated { need: 24, have: 23 }
    );
    let mut b = bytes;
    b[0] = 2;
    assert_eq!(
        HeaderRepr::parse(&Header::new_checked(&b[..]).unwrap()),
        Err(WireError::Version(2))
    );
    let mut b = bytes;
    b[1] = 0;
    assert_eq!(
        HeaderRepr::parse(&Header::new_checked(&b[..]).unwrap()),
        Err(WireError::TypeZero)
    );
    // Flags are ignored on read, as upstream does in version 1 (docs/STREAM.md).
    let mut b = bytes;
    b[5] = 1;
    assert_eq!(
        HeaderRepr::parse(&Header::new_checked(&b[..]).unwrap()),
        HeaderRepr::parse(&Header::new_checked(&bytes[..]).unwrap())
    );
    let mut b = bytes;
    b[1] = 42;
    assert_eq!(
        HeaderRepr::parse(&Header::new_checked(&b[..]).unwrap())
            .unwrap()
            .kind,
        PacketType::Unknown(42)
    );
}

#[test]
fn descriptor_klv_vector() {
    // 0xF001 len 1 = 0xE20B, 0xF002 len 1 = 0x01, unknown 0xF0AA len 2 = [7, 8].
    let payload: [u8; 28] = [
        0x01, 0x00, 0x01, 0xF0, 0x0B, 0xE2, 0x00, 0x00, //
        0x01, 0x00, 0x02, 0xF0, 0x01, 0x00, 0x00, 0x00, //
        0x02, 0x00, 0xAA, 0xF0, 0x07, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00,
    ];
    let d = Descriptor::parse(&payload).unwrap();
    assert_eq!(
        d,
        Descriptor {
            device_id: 0xE20B,
            revision: 1,
            unknown: vec![(0xF0AA, vec![7, 8])],
            ..Default::default()
        }
    );
    assert_eq!(d.emit(), payload, "unknown keys preserved on emit");
    let pkt = d.packet();
    assert_eq!(&pkt[..8], &[1, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&pkt[16..24], &[28, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&pkt[24..], &payload);
    // Malformed.
    assert_eq!(
        Descriptor::parse(&payload[..6]),
        Err(WireError::DescriptorSize(6))
    );
    assert_eq!(
        Descriptor::parse(&payload[..24]),
        Err(WireError::KlvOverrun { key: 0xF0AA, at: 4 })
    );
    assert_eq!(
        Descriptor::parse(&payload[8..16]),
        Err(WireError::KlvMissing(0xF001))
    );
    let two_dword_id = [0x02, 0x00, 0x01, 0xF0, 1, 0, 0, 0, 2, 0, 0, 0];
    assert_eq!(
        Descriptor::parse(&two_dword_id),
        Err(WireError::KlvLength {
            key: 0xF001,
            len: 2,
            want: 1
        })
    );
    assert_eq!(klvs(&[]).count(), 0);
}

// ---- helpers -------------------------------------------------------------------------------

fn save(pf: &XePf, vfid: u32, mut split: impl FnMut() -> usize) -> Vec<u8> {
    pf.suspend_device(vfid).unwrap();
    pf.stop_copy_enter(vfid).unwrap();
    let mut out = Vec::new();
    loop {
        let mut buf = vec![0u8; split().max(1)];
        let n = pf.data_read(vfid, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    pf.stop_copy_exit(vfid).unwrap();
    out
}

fn restore(
    pf: &XePf,
    vfid: u32,
    data: &[u8],
    mut split: impl FnMut() -> usize,
) -> Result<(), Errno> {
    pf.suspend_device(vfid).unwrap();
    pf.resume_data_enter(vfid).unwrap();
    let mut at = 0;
    while at < data.len() {
        let n = split().clamp(1, data.len() - at);
        assert_eq!(pf.data_write(vfid, &data[at..at + n])?, n);
        at += n;
    }
    pf.resume_data_exit(vfid)
}

fn rng_split(seed: u64, max: usize) -> impl FnMut() -> usize {
    let mut r = xe_guest::Rng::new(seed);
    move || 1 + r.below(max as u32) as usize
}

fn bmg_pair() -> (Arc<XePf>, Arc<XePf>) {
    (
        pf_with(Platform::Bmg, 1, 8 << 20),
        pf_with(Platform::Bmg, 3, 8 << 20),
    )
}

// ---- splits, equivalence -------------------------------------------------------------------

#[test]
fn reads_at_any_split_give_identical_bytes() {
    let mut streams = Vec::new();
    for split in [1usize, 7, 4096, 1 << 20] {
        let pf = pf_with(Platform::Bmg, 1, 2 << 20);
        let mut w = workload(&pf, 1, 11);
        w.submit_random(20).unwrap();
        w.wait_idle(Duration::from_secs(10)).unwrap();
        streams.push(save(&pf, 1, || split));
    }
    let pf = pf_with(Platform::Bmg, 1, 2 << 20);
    let mut w = workload(&pf, 1, 11);
    w.submit_random(20).unwrap();
    w.wait_idle(Duration::from_secs(10)).unwrap();
    streams.push(save(&pf, 1, rng_split(5, 70_000)));
    assert_eq!(streams[0].len() as u64, pf.stream_len(1).unwrap());
    for s in &streams[1..] {
        assert!(s == &streams[0], "streams differ");
    }
    // And the stream restores with random write splits.
    let dst = pf_with(Platform::Bmg, 2, 2 << 20);
    restore(&dst, 2, &streams[0], rng_split(9, 50_000)).unwrap();
    let a = pf.vf(1).unwrap().hw.clone();
    let b = dst.vf(2).unwrap().hw.clone();
    assert_eq!(lmem_bytes(&a), lmem_bytes(&b));
}

fn lmem_bytes(hw: &xe_pf::hw::VfHw) -> Vec<u8> {
    let l = hw.lmem().unwrap();
    let mut v = vec![0u8; l.size() as usize];
    l.read(0, &mut v).unwrap();
    v
}

fn assert_equivalent(src: &xe_pf::hw::VfHw, dst: &xe_pf::hw::VfHw) {
    if src.lmem().is_some() {
        assert!(lmem_bytes(src) == lmem_bytes(dst), "LMEM differs");
    }
    assert_eq!(src.sw_flags(), dst.sw_flags(), "registers differ");
    for gt in 0..2 {
        assert_eq!(
            src.guc_save(gt).unwrap(),
            dst.guc_save(gt).unwrap(),
            "GuC state gt{gt}"
        );
    }
    let strip = |p: Vec<u64>| {
        p.into_iter()
            .map(|x| pte_with_vfid(x, 0))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(src.ptes()), strip(dst.ptes()), "GGTT differs");
    for p in dst.ptes().into_iter().filter(|p| *p != 0) {
        assert_eq!(
            xe_pf::hw::ggtt::pte_vfid(p),
            dst.vfid(),
            "PTE not re-tagged"
        );
    }
}

fn equivalence(platform: Platform) {
    equivalence_committed(platform, Commit::Lazy, Commit::Lazy);
}

fn equivalence_committed(platform: Platform, src_commit: Commit, dst_commit: Commit) {
    let lmem = if platform.has_vram() { 8 << 20 } else { 0 };
    let a = pf_committed(platform, 1, lmem, src_commit);
    let b = pf_committed(platform, 3, lmem, dst_commit);
    let mut w = workload(&a, 1, 77);
    let src = a.vf(1).unwrap().hw.clone();
    src.write_reg(vf::vf_sw_flag(1), 0xaaaa_5555);
    src.write_reg(vf::med_vf_sw_flag(3), 0x1234_5678);
    w.submit_random(100).unwrap();
    w.wait_idle(Duration::from_secs(10)).unwrap();
    // Jobs in flight: queued while paused, not yet run.
    a.suspend_device(1).unwrap();
    w.submit_random(40).unwrap();
    assert_eq!(src.read_reg(vf::SEQNO), 100);
    let stream = {
        a.stop_copy_enter(1).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = a.data_read(1, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        a.stop_copy_exit(1).unwrap();
        out
    };
    // The "VMM" migrates guest RAM on integrated parts.
    let dst = b.vf(2).unwrap().hw.clone();
    if !platform.has_vram() {
        let sys = src.sysmem().unwrap();
        let copy = Arc::new(Backing::new("dst-sysmem", sys.size()).unwrap());
        let mut v = vec![0u8; sys.size() as usize];
        sys.read(0, &mut v).unwrap();
        copy.write(0, &v).unwrap();
        dst.attach_sysmem(Some(copy));
    }
    restore(&b, 2, &stream, || 100_000).unwrap();
    assert_ne!(src.ggtt().base, dst.ggtt().base, "the target range moved");
    assert_equivalent(&src, &dst);
    // Resume on B: the engine holds until the guest's GGTT fixups.
    b.resume_device(2).unwrap();
    assert_eq!(dst.read_reg(vf::MIGRATED), 1);
    assert!(dst.wait_engine_settled(Duration::from_secs(10)));
    assert_eq!(dst.read_reg(vf::SEQNO), 100, "held for fixups");
    w.set_access(DirectAccess(dst.clone()));
    assert!(w.fixups().unwrap());
    w.wait_idle(Duration::from_secs(10)).unwrap();
    w.verify().unwrap();
    assert_eq!(dst.read_reg(vf::SEQNO), 140);
    // The source, resumed, also finishes its jobs correctly (it was never harmed).
    a.resume_device(1).unwrap();
}

#[test]
fn bmg_save_restore_is_equivalent_and_jobs_complete() {
    equivalence(Platform::Bmg);
}

/// Reserved LMEM (committed, mapped) migrates to and from lazy LMEM with the same result: the
/// commit mode is a host choice, invisible in the stream.
#[test]
fn reserved_and_lazy_lmem_migrate_both_ways() {
    equivalence_committed(Platform::Bmg, Commit::Reserved, Commit::Reserved);
    equivalence_committed(Platform::Bmg, Commit::Reserved, Commit::Lazy);
    equivalence_committed(Platform::Bmg, Commit::Lazy, Commit::Reserved);
}

#[test]
fn ptl_save_restore_is_equivalent_and_jobs_complete() {
    equivalence(Platform::Ptl);
}

#[test]
fn stop_copy_size_relation() {
    for (platform, lmem, chunk_note) in [
        (Platform::Bmg, 5 << 20, "5 chunks"),
        (Platform::Ptl, 0, "no VRAM"),
    ] {
        let pf = pf_with(platform, 1, lmem);
        let est = pf.stop_copy_size(1).unwrap();
        let guc0 = pf.vf(1).unwrap().hw.guc_state_size(0).unwrap();
        let guc1 = pf.vf(1).unwrap().hw.guc_state_size(1).unwrap();
        let ggtt = (8u64 << 20) / 4096 * 8;
        let mut want = (24 + guc0) + (24 + 16) + (24 + ggtt) + (24 + guc1) + (24 + 16);
        if lmem > 0 {
            want += 24 + lmem;
        }
        assert_eq!(est, want, "{platform}");
        let s = save(&pf, 1, || 1 << 20);
        let desc = Descriptor {
            device_id: pf.device_id().into(),
            revision: pf.revision().into(),
            ..Default::default()
        };
        let chunks = lmem.div_ceil(1 << 20);
        assert_eq!(
            s.len() as u64,
            est + desc.packet().len() as u64 + 24 + 24 * chunks.saturating_sub(1),
            "{platform}: {chunk_note}"
        );
        assert_eq!(s.len() as u64, pf.stream_len(1).unwrap());
    }
}

#[test]
fn inspect_summarises_a_stream() {
    let pf = pf_with(Platform::Bmg, 1, 3 << 20);
    let s = save(&pf, 1, || 1 << 20);
    let i = inspect(&s[..]).unwrap();
    assert!(i.is_valid(), "{:?}", i.error);
    assert_eq!(i.total_bytes, s.len() as u64);
    assert_eq!(
        i.descriptor.as_ref().unwrap().device_id,
        u32::from(pf.device_id())
    );
    assert_eq!(i.vram_coverage, vec![(0, 3 << 20)]);
    assert!(i.vram_gaps.is_empty());
    assert_eq!(i.totals[&(0, 0, PacketType::Vram)].packets, 3);
    assert_eq!(i.totals[&(0, 1, PacketType::Mmio)].bytes, 16);
    assert_eq!(
        i.packets.first().unwrap().header.kind,
        PacketType::Descriptor
    );
    assert_eq!(i.packets.last().unwrap().header.kind, PacketType::Trailer);
    // A truncated stream is reported with its offset.
    let t = inspect(&s[..s.len() - 30]).unwrap();
    assert!(!t.is_valid());
    assert!(matches!(t.error, Some((_, WireError::Truncated { .. }))));
}

// ---- failures ------------------------------------------------------------------------------

#[test]
fn aborted_save_leaves_the_source_intact() {
    let pf = pf_with(Platform::Bmg, 1, 8 << 20);
    let mut w = workload(&pf, 1, 21);
    w.submit_random(30).unwrap();
    w.wait_idle(Duration::from_secs(10)).unwrap();
    pf.suspend_device(1).unwrap();
    w.submit_random(10).unwrap();
    let before = lmem_bytes(&pf.vf(1).unwrap().hw);
    pf.stop_copy_enter(1).unwrap();
    let mut buf = vec![0u8; 3 << 20];
    assert_eq!(pf.data_read(1, &mut buf).unwrap(), 3 << 20);
    pf.stop_copy_exit(1).unwrap(); // ours: cancelled cleanly, no EIO
    assert_eq!(pf.data_read(1, &mut buf[..8]), Err(Errno::EINVAL));
    assert_eq!(
        pf.vf(1).unwrap().control_states(),
        vec![CtlState::Paused; 2]
    );
    assert!(lmem_bytes(&pf.vf(1).unwrap().hw) == before);
    pf.resume_device(1).unwrap();
    w.wait_idle(Duration::from_secs(10)).unwrap();
    w.verify().unwrap();
}

#[test]
fn producer_failure_makes_every_read_eio() {
    let pf = pf_with(Platform::Bmg, 1, 8 << 20);
    pf.faults()
        .inject(1, Some(1), GucOp::SaveState, Fault::Fail(Errno::EPROTO), 1);
    pf.suspend_device(1).unwrap();
    pf.stop_copy_enter(1).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut err = None;
    for _ in 0..20 {
        match pf.data_read(1, &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    assert_eq!(err, Some(Errno::EIO));
    assert_eq!(pf.data_read(1, &mut buf), Err(Errno::EIO));
    assert_eq!(pf.data_read(1, &mut buf[..1]), Err(Errno::EIO));
    pf.stop_copy_exit(1).unwrap();
    pf.resume_device(1).unwrap();
}

/// A save ends, in data or in an errno, whatever happens to a producer: one that cannot start
/// fails the save at once; one that dies mid-save (a panic) makes the reader's next read `EIO`
/// instead of waiting forever. Either way the source VF is intact and can run and save again.
#[test]
fn a_save_ends_whatever_happens_to_a_producer() {
    let pf = pf_with(Platform::Bmg, 1, 8 << 20);
    let mut w = workload(&pf, 1, 17);
    w.submit_random(10).unwrap();
    w.wait_idle(Duration::from_secs(10)).unwrap();
    let before = lmem_bytes(&pf.vf(1).unwrap().hw);
    pf.suspend_device(1).unwrap();

    // The media GT's producer cannot start: the save does not open.
    pf.faults().inject(
        1,
        Some(1),
        GucOp::StartProducer,
        Fault::Fail(Errno::EAGAIN),
        1,
    );
    assert_eq!(pf.stop_copy_enter(1), Err(Errno::EAGAIN));
    assert_eq!(
        pf.data_read(1, &mut [0; 8]),
        Err(Errno::EINVAL),
        "no session"
    );
    assert_eq!(
        pf.vf(1).unwrap().control_states(),
        vec![CtlState::Paused; 2]
    );

    // The primary GT's producer dies while fetching the GuC state: reads end in EIO.
    pf.faults()
        .inject(1, Some(0), GucOp::SaveState, Fault::Panic, 1);
    pf.stop_copy_enter(1).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let end = loop {
        match pf.data_read(1, &mut buf) {
            Ok(n) if n == buf.len() => continue,
            other => break other,
        }
    };
    assert_eq!(end, Err(Errno::EIO));
    pf.stop_copy_exit(1).unwrap();

    // The source is untouched, runs, and saves completely afterwards.
    assert!(lmem_bytes(&pf.vf(1).unwrap().hw) == before);
    pf.resume_device(1).unwrap();
    let s = save(&pf, 1, || 1 << 20);
    assert_eq!(s.len() as u64, pf.stream_len(1).unwrap());
    pf.resume_device(1).unwrap();
    w.submit_random(5).unwrap();
    w.wait_idle(Duration::from_secs(10)).unwrap();
    w.verify().unwrap();
}

/// A valid stream for BMG VF with 8 MiB LMEM, as (header, payload) pairs to mutate.
fn packets_of(stream: &[u8]) -> Vec<(HeaderRepr, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < stream.len() {
        let h =
            HeaderRepr::parse(&Header::new_checked(&stream[at..at + HEADER_LEN]).unwrap()).unwrap();
        let p = stream[at + HEADER_LEN..at + HEADER_LEN + h.size as usize].to_vec();
        at += HEADER_LEN + h.size as usize;
        out.push((h, p));
    }
    out
}

fn join(pkts: &[(HeaderRepr, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (h, p) in pkts {
        v.extend_from_slice(&h.to_bytes());
        v.extend_from_slice(p);
    }
    v
}

fn find(pkts: &[(HeaderRepr, Vec<u8>)], kind: PacketType, gt: u8) -> usize {
    pkts.iter()
        .position(|(h, _)| h.kind == kind && h.gt == gt)
        .unwrap()
}

type Mutation = Box<dyn Fn(&mut Vec<(HeaderRepr, Vec<u8>)>) -> Option<Vec<u8>>>;

#[test]
fn malformed_streams_get_exact_errnos_and_the_destination_recovers() {
    let (a, b) = bmg_pair();
    let mut w = workload(&a, 1, 99);
    w.submit_random(20).unwrap();
    w.wait_idle(Duration::from_secs(10)).unwrap();
    let good = save(&a, 1, || 1 << 20);
    a.resume_device(1).unwrap();
    let base = packets_of(&good);

    let hdr_patch = |i: usize, byte: usize, v: u8| -> Mutation {
        Box::new(move |p: &mut Vec<(HeaderRepr, Vec<u8>)>| {
            let mut s = join(p);
            let at: usize = p[..i]
                .iter()
                .map(|(h, _)| HEADER_LEN + h.size as usize)
                .sum();
            s[at + byte] = v;
            Some(s)
        })
    };
    let cases: Vec<(&str, Mutation, Errno)> = vec![
        ("version 2", hdr_patch(0, 0, 2), Errno::EINVAL),
        ("type 0", hdr_patch(1, 1, 0), Errno::EINVAL),
        ("gt 2", hdr_patch(1, 3, 2), Errno::EINVAL),
        ("tile 1", hdr_patch(1, 2, 1), Errno::EINVAL),
        (
            "descriptor not first",
            Box::new(|p| {
                p.remove(0);
                None
            }),
            Errno::EINVAL,
        ),
        (
            "descriptor twice",
            Box::new(|p| {
                let d = p[0].clone();
                p.insert(1, d);
                None
            }),
            Errno::EINVAL,
        ),
        (
            "descriptor on gt 1",
            Box::new(|p| {
                p[0].0.gt = 1;
                None
            }),
            Errno::EINVAL,
        ),
        (
            "descriptor size 6",
            Box::new(|p| {
                p[0].1.truncate(6);
                p[0].0.size = 6;
                None
            }),
            Errno::EINVAL,
        ),
        (
            "KLV past the end",
            Box::new(|p| {
                p[0].1[0] = 5; // device id KLV claims 5 dwords
                None
            }),
            Errno::ENODATA, // as upstream's descriptor parser
        ),
        (
            "device id beyond 16 bits (0x1_xxxx of the target id)",
            Box::new(|p| {
                p[0].1[6] = 0x01; // the KLV value's third byte
                None
            }),
            Errno::ENODEV,
        ),
        (
            "revision beyond 8 bits",
            Box::new(|p| {
                p[0].1[13] = 0x01; // revision KLV value's second byte
                None
            }),
            Errno::ENODEV,
        ),
        (
            "other device id",
            Box::new(|p| {
                p[0].1[4] = 0x09;
                None
            }),
            Errno::ENODEV,
        ),
        (
            "other revision",
            Box::new(|p| {
                p[0].1[12] = 0x7f;
                None
            }),
            Errno::ENODEV,
        ),
        (
            "MMIO size 12",
            Box::new(|p| {
                let i = find(p, PacketType::Mmio, 1);
                p[i].1.truncate(12);
                p[i].0.size = 12;
                None
            }),
            Errno::EINVAL,
        ),
        (
            "GGTT one PTE short",
            Box::new(|p| {
                let i = find(p, PacketType::Ggtt, 0);
                let n = p[i].1.len() - 8;
                p[i].1.truncate(n);
                p[i].0.size = n as u64;
                None
            }),
            Errno::EINVAL,
        ),
        (
            "GGTT on media GT",
            Box::new(|p| {
                let i = find(p, PacketType::Ggtt, 0);
                p[i].0.gt = 1;
                None
            }),
            Errno::EINVAL,
        ),
        (
            "VRAM past LMEM",
            Box::new(|p| {
                let i = find(p, PacketType::Vram, 0);
                p[i].0.offset = 7 << 20;
                p[i].0.size = 2 << 20;
                p[i].1 = vec![0; 2 << 20];
                None
            }),
            Errno::EINVAL,
        ),
        (
            "VRAM offset overflow",
            Box::new(|p| {
                let i = find(p, PacketType::Vram, 0);
                p[i].0.offset = u64::MAX - 10;
                None
            }),
            Errno::EINVAL,
        ),
        (
            "GUC over firmware max",
            Box::new(|p| {
                let i = find(p, PacketType::Guc, 0);
                p[i].1 = vec![0; 65 << 10];
                p[i].0.size = 65 << 10;
                None
            }),
            Errno::EINVAL,
        ),
        (
            "GUC corrupted",
            Box::new(|p| {
                let i = find(p, PacketType::Guc, 1);
                p[i].1[40] ^= 0xff;
                None
            }),
            Errno::EIO,
        ),
        (
            "bytes after trailer",
            Box::new(|p| {
                let mut s = join(p);
                s.push(0);
                Some(s)
            }),
            Errno::EINVAL,
        ),
        (
            "trailer with size",
            Box::new(|p| {
                let n = p.len() - 1;
                p[n].0.size = 4;
                p[n].1 = vec![0; 4];
                None
            }),
            Errno::EINVAL,
        ),
    ];
    for (name, mutate, errno) in cases {
        let mut p = base.clone();
        let stream = mutate(&mut p).unwrap_or_else(|| join(&p));
        b.suspend_device(2).unwrap();
        b.resume_data_enter(2).unwrap();
        let r = b.data_write(2, &stream);
        assert_eq!(r, Err(errno), "{name}");
        assert_eq!(b.data_write(2, &[0]), Err(errno), "{name}: sticky");
        assert_eq!(b.resume_data_exit(2), Err(Errno::EIO), "{name}: exit");
        // Recover: FLR → READY, then a correct restore succeeds.
        flr(&b, 2).unwrap();
        assert_eq!(
            b.vf(2).unwrap().control_states(),
            vec![CtlState::Ready; 2],
            "{name}"
        );
    }
    // Unknown packet types are skipped (still routed): restore succeeds.
    let mut p = base.clone();
    let unknown = HeaderRepr {
        kind: PacketType::Unknown(42),
        tile: 0,
        gt: 1,
        offset: 0,
        size: 5,
    };
    p.insert(2, (unknown, vec![1, 2, 3, 4, 5]));
    restore(&b, 2, &join(&p), || 333).unwrap();
    flr(&b, 2).unwrap();
    // Header flags are ignored, as upstream does in version 1 (docs/STREAM.md): a stream with
    // flags set in every header restores.
    let mut s = join(&base);
    let mut at = 0;
    for (h, _) in &base {
        s[at + 4..at + 8].copy_from_slice(&0x8000_0001u32.to_le_bytes());
        at += HEADER_LEN + h.size as usize;
    }
    restore(&b, 2, &s, || 4093).unwrap();
    flr(&b, 2).unwrap();
    // Missing trailer → EIO at exit.
    let mut p = base.clone();
    p.pop();
    assert_eq!(restore(&b, 2, &join(&p), || 1 << 20), Err(Errno::EIO));
    flr(&b, 2).unwrap();
    // And finally the real stream restores.
    restore(&b, 2, &good, || 4096).unwrap();
    assert_equivalent(&a.vf(1).unwrap().hw, &b.vf(2).unwrap().hw);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// Arbitrary bytes at arbitrary splits, and mutations of a valid stream: restore never
    /// panics, answers with an errno, and the VF stays recoverable.
    #[test]
    fn restore_takes_arbitrary_bytes(
        noise in prop::collection::vec(any::<u8>(), 0..2048),
        splits in prop::collection::vec(1usize..300, 1..50),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    ) {
        thread_local! {
            static PAIR: (Arc<XePf>, Vec<u8>) = {
                let a = pf_with(Platform::Bmg, 1, 64 << 10);
                let s = save(&a, 1, || 4096);
                (pf_with(Platform::Bmg, 1, 64 << 10), s)
            };
        }
        PAIR.with(|(b, good)| {
            for input in [noise.clone(), {
                let mut g = good.clone();
                for (i, v) in &flips { let k = i.index(g.len()); g[k] = *v; }
                g
            }] {
                b.suspend_device(1).unwrap();
                b.resume_data_enter(1).unwrap();
                let mut at = 0;
                let mut k = 0;
                while at < input.len() {
                    let n = splits[k % splits.len()].min(input.len() - at);
                    k += 1;
                    if b.data_write(1, &input[at..at + n]).is_err() { break; }
                    at += n;
                }
                let _ = b.resume_data_exit(1);
                flr(b, 1).unwrap();
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}

/// Saving and restoring a 4 GiB-LMEM VF adds < 64 MiB of peak RSS (own process).
#[test]
fn four_gib_save_restore_keeps_memory_bounded() {
    save_restore_keeps_memory_bounded(
        "four_gib_save_restore_keeps_memory_bounded",
        4 << 30,
        Commit::Lazy,
    );
}

/// The same with reserved LMEM: the LMEM is resident from provisioning on (so it is in the idle
/// RSS), and migrating it through the mapping adds < 64 MiB on top.
#[test]
fn reserved_save_restore_keeps_memory_bounded() {
    save_restore_keeps_memory_bounded(
        "reserved_save_restore_keeps_memory_bounded",
        1 << 30,
        Commit::Reserved,
    );
}

fn save_restore_keeps_memory_bounded(name: &str, lmem: u64, commit: Commit) {
    if let Some(out) = in_child(name) {
        let grew = child_value(&out, "PEAK_GROWTH");
        let idle = child_value(&out, "IDLE_RSS");
        let bytes = child_value(&out, "STREAM_BYTES");
        eprintln!(
            "{} LMEM ({commit:?}) save+restore: {bytes} stream bytes, idle RSS {} MiB, peak +{} KiB",
            lmem >> 20,
            idle >> 20,
            grew / 1024
        );
        assert!(bytes > lmem);
        if commit == Commit::Reserved {
            assert!(
                idle > 2 * lmem,
                "reserved LMEM is resident: idle RSS {idle}"
            );
        }
        assert!(grew < 64 << 20, "peak RSS grew by {grew} bytes");
        return;
    }
    let mk = || {
        let mut cfg = xe_pf::PfConfig::new(Platform::Bmg);
        cfg.lmem_size = lmem;
        cfg.lmem_commit = commit;
        let pf = XePf::new(cfg).unwrap();
        pf.enable_vfs(
            1,
            xe_pf::pf::VfProvision {
                lmem,
                ggtt: 64 << 20,
            },
        )
        .unwrap();
        pf
    };
    let (a, b) = (mk(), mk());
    // Real data in part of the LMEM: 16 MiB of pattern in each quarter.
    let src = a.vf(1).unwrap().hw.clone();
    let chunk: Vec<u8> = (0..(16u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let quarter = lmem / 4;
    for k in 0..4u64 {
        src.lmem()
            .unwrap()
            .write(k * quarter + 12345, &chunk)
            .unwrap();
    }
    drop(chunk);
    let idle = proc_status("VmRSS");
    reset_peak_rss();
    a.suspend_device(1).unwrap();
    a.stop_copy_enter(1).unwrap();
    b.suspend_device(1).unwrap();
    b.resume_data_enter(1).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = a.data_read(1, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        b.data_write(1, &buf[..n]).unwrap();
        total += n as u64;
    }
    a.stop_copy_exit(1).unwrap();
    b.resume_data_exit(1).unwrap();
    let peak = proc_status("VmHWM");
    // Spot-check the data arrived.
    let dst = b.vf(1).unwrap().hw.clone();
    let mut x = vec![0u8; 4096];
    let mut y = vec![0u8; 4096];
    for at in [
        12345u64,
        quarter + 12345 + (8 << 20),
        3 * quarter + 12345 + (16 << 20) - 4096,
        lmem / 2,
    ] {
        src.lmem().unwrap().read(at, &mut x).unwrap();
        dst.lmem().unwrap().read(at, &mut y).unwrap();
        assert_eq!(x, y, "at {at:#x}");
    }
    println!("STREAM_BYTES={total}");
    println!("IDLE_RSS={idle}");
    println!("PEAK_GROWTH={}", peak.saturating_sub(idle));
}

/// The restore fuzz target's seeds (`fuzz/seeds/restore`) replayed through the restore path,
/// each with the outcome it stands for, so that the seeds keep meaning what their names say.
#[test]
fn fuzz_seeds_restore_as_named() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/restore");
    let prefix = Descriptor {
        device_id: Platform::Bmg.default_device_id().into(),
        revision: Platform::Bmg.default_revision().into(),
        ..Default::default()
    }
    .packet();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&path).unwrap();
        let body = &data[9..];
        let stream: Vec<u8> = if data[8] & 1 == 1 {
            prefix.iter().chain(&body[1..]).copied().collect()
        } else {
            body.to_vec()
        };
        let pf = pf_with(Platform::Bmg, 1, 1 << 20);
        pf.suspend_device(1).unwrap();
        pf.resume_data_enter(1).unwrap();
        let r = pf.data_write(1, &stream).map(|_| ());
        let want = match name.split('-').next().unwrap() {
            "device" | "revision" | "size" => Err(Errno::ENODEV),
            "klv" => Err(Errno::ENODATA),
            "flags" | "vram" => Ok(()),
            other => panic!("seed {name}: no expectation for '{other}'"),
        };
        assert_eq!(r, want, "{name}");
        assert_eq!(pf.resume_data_exit(1).is_ok(), want.is_ok(), "{name}");
        if name == "vram-precopy-rounds" {
            // Initial data, two dirty rounds, the last dirty VRAM: the later bytes win.
            let mut b = vec![0u8; 192 << 10];
            let lmem = pf.vf(1).unwrap().hw.clone();
            lmem.lmem().unwrap().read(0, &mut b).unwrap();
            let want = |at: usize| match at {
                0x2000..0x2800 => 0x44,
                0x1000..0x3000 => 0x22,
                0x10000..0x21000 => 0x33,
                _ => 0x11,
            };
            if let Some(i) = (0..b.len()).find(|&i| b[i] != want(i)) {
                panic!("{name}: byte {i:#x} is {:#x}, want {:#x}", b[i], want(i));
            }
        } else if name.starts_with("vram") {
            let mut b = vec![0u8; 12288];
            pf.vf(1)
                .unwrap()
                .hw
                .lmem()
                .unwrap()
                .read(0, &mut b)
                .unwrap();
            assert!(
                b[..4096].iter().all(|&x| x == 0xa5),
                "{name}: last write wins"
            );
            assert!(
                b[4096..].iter().all(|&x| x == 0x5a),
                "{name}: overlap replaced"
            );
        }
        seen += 1;
    }
    assert!(seen >= 5, "seeds missing in {}", dir.display());
}
