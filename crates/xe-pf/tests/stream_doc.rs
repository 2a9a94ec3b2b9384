//! The hexdump in `docs/STREAM.md` is a real stream: this test saves it again and compares.
//! Run with `XE_PRINT_STREAM_DOC=1` to print the dump when the format deliberately changes.

use std::fmt::Write;
use xe_pf::hw as vf;
use xe_pf::migration::wire::{Header, HeaderRepr, PacketType, HEADER_LEN};
use xe_pf::pf::VfProvision;
use xe_pf::{PfConfig, Platform, SriovVfio, XePf};

/// A BMG VF with 16 KiB of GGTT (4 PTEs) and 8 KiB of LMEM, a little state written, saved.
fn small_stream() -> Vec<u8> {
    let mut cfg = PfConfig::new(Platform::Bmg);
    cfg.lmem_size = 1 << 20;
    let pf = XePf::with_vfs(
        cfg,
        1,
        VfProvision {
            lmem: 8 << 10,
            ggtt: 16 << 10,
        },
    )
    .unwrap();
    let hw = pf.vf(1).unwrap().hw.clone();
    hw.write_reg(vf::vf_sw_flag(0), 0x1234_5678);
    hw.write_reg(vf::med_vf_sw_flag(3), 0xcafe_f00d);
    let base = hw.ggtt().base;
    let pte = xe_pf::hw::ggtt::make_pte(0x1000, true, 0);
    hw.write_reg(vf::GGTT_WINDOW + base / 4096 * 8, pte as u32);
    hw.lmem().unwrap().write(0x1000, b"VRAM page 1").unwrap();
    pf.suspend_device(1).unwrap();
    pf.stop_copy_enter(1).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = pf.data_read(1, &mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            break;
        }
    }
    pf.stop_copy_exit(1).unwrap();
    out
}

fn hex_lines(out: &mut String, at: usize, bytes: &[u8]) {
    for (k, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(out, "{:06x}  {}", at + 16 * k, hex.join(" "));
    }
}

/// Packet by packet: a comment line, the header's bytes, and the payload's bytes — all of
/// them for small payloads, the first 32 for GUC blobs and VRAM (the rest elided).
fn dump(stream: &[u8]) -> String {
    let mut out = String::new();
    let mut at = 0;
    while at < stream.len() {
        let h = HeaderRepr::parse(&Header::new_checked(&stream[at..]).unwrap()).unwrap();
        let _ = writeln!(
            out,
            "# {} gt {} offset {:#x} size {}",
            h.kind.name(),
            h.gt,
            h.offset,
            h.size
        );
        hex_lines(&mut out, at, &stream[at..at + HEADER_LEN]);
        let p = at + HEADER_LEN;
        let size = h.size as usize;
        let shown = match h.kind {
            PacketType::Guc | PacketType::Vram => size.min(32),
            _ => size,
        };
        hex_lines(&mut out, p, &stream[p..p + shown]);
        if shown < size {
            let _ = writeln!(out, "        … {} more bytes", size - shown);
        }
        at = p + size;
    }
    let _ = writeln!(out, "# end: {} bytes", stream.len());
    out
}

#[test]
fn the_documented_stream_is_what_a_save_produces() {
    let text = dump(&small_stream());
    if std::env::var("XE_PRINT_STREAM_DOC").is_ok() {
        println!("{text}");
    }
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/STREAM.md"),
    )
    .unwrap();
    let start = doc
        .find("<!-- hexdump:begin -->\n```text\n")
        .expect("begin marker")
        + 31;
    let end = doc[start..]
        .find("```\n<!-- hexdump:end -->")
        .expect("end marker")
        + start;
    assert_eq!(
        &doc[start..end],
        text,
        "docs/STREAM.md's hexdump differs from a real save (XE_PRINT_STREAM_DOC=1 prints it)"
    );
}
