//! The stream grammar, stated once: what may follow what, and what each packet may carry.
//!
//! Restore checks a stream against the target VF ([`Limits::of_target`]); inspect checks it
//! against what the descriptor says the device is ([`Limits::any`], refined by
//! [`Limits::for_platform`] once the descriptor has been read) — the same rules, so inspect
//! accepts exactly what a restore into a matching VF would accept, up to the sizes it cannot
//! know (GGTT range and LMEM size are provisioning, not in the stream).
//!
//! | rule | error |
//! |---|---|
//! | nothing after the TRAILER | `AfterTrailer` |
//! | tile 0 only; gt below the device's GT count | `Route` |
//! | the DESCRIPTOR first, once, on gt 0, size a multiple of 4 and ≤ 4096 | `DescriptorNotFirst`, `DescriptorDuplicated`, `Route`, `DescriptorSize` |
//! | TRAILER: gt 0, offset 0, size 0 | `BadTrailer` |
//! | MMIO: 16 bytes (four scratch registers) | `Size` |
//! | GGTT: primary GT; 8 bytes per PTE of the VF's range | `Route`, `Size` |
//! | GUC: 1 ..= 64 KiB | `Size` |
//! | VRAM: a device with VRAM, primary GT; `offset + size` within the LMEM | `Route`, `VramRange` |
//! | unknown types: routed like any packet, payload skipped | — |
//! | the stream ends with the TRAILER | `NoTrailer` |
//!
//! VRAM packets may repeat and overlap: a later packet's bytes replace an earlier one's (the
//! pre-copy rounds of a future stream send dirty ranges again). Restore applies them in order;
//! inspect reports how many bytes were sent more than once.

use super::wire::{HeaderRepr, PacketType, WireError, DESCRIPTOR_MAX};
use crate::hw::guc::BLOB_MAX;
use crate::platform::{Platform, GTS_PER_TILE, PRIMARY_GT};

/// What a stream is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub gt_count: u8,
    pub has_vram: bool,
    /// GGTT payload bytes (8 per PTE); `None`: any multiple of 8.
    pub ggtt_bytes: Option<u64>,
    /// LMEM size; `None`: unknown, only `offset + size` overflowing is refused.
    pub lmem: Option<u64>,
}

impl Limits {
    /// Any device of any supported platform (before the descriptor is known).
    pub fn any() -> Limits {
        Limits {
            gt_count: GTS_PER_TILE,
            has_vram: true,
            ggtt_bytes: None,
            lmem: None,
        }
    }

    /// A device of `p`, sizes unknown.
    pub fn for_platform(p: Platform) -> Limits {
        Limits {
            gt_count: p.gt_count(),
            has_vram: p.has_vram(),
            ggtt_bytes: None,
            lmem: None,
        }
    }

    /// A VF of `p` with `ptes` GGTT entries and `lmem` bytes of LMEM.
    pub fn of_target(p: Platform, ptes: usize, lmem: u64) -> Limits {
        Limits {
            ggtt_bytes: Some(ptes as u64 * 8),
            lmem: Some(lmem),
            ..Limits::for_platform(p)
        }
    }
}

/// The grammar's state over one stream.
#[derive(Clone, Debug)]
pub struct Grammar {
    limits: Limits,
    seen_descriptor: bool,
    seen_trailer: bool,
}

impl Grammar {
    pub fn new(limits: Limits) -> Grammar {
        Grammar {
            limits,
            seen_descriptor: false,
            seen_trailer: false,
        }
    }

    /// Replaces the limits (inspect, once the descriptor names the platform).
    pub fn refine(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Whether the TRAILER has been accepted.
    pub fn complete(&self) -> bool {
        self.seen_trailer
    }

    /// Fails if anything at all follows the TRAILER (checked before a header is parsed).
    pub fn more(&self) -> Result<(), WireError> {
        if self.seen_trailer {
            return Err(WireError::AfterTrailer);
        }
        Ok(())
    }

    /// Checks the next packet's header against the stream so far, before any of its payload.
    pub fn header(&mut self, r: &HeaderRepr) -> Result<(), WireError> {
        self.more()?;
        let l = self.limits;
        let route = || WireError::Route {
            what: r.kind.name(),
            tile: r.tile,
            gt: r.gt,
        };
        let size = |what: &'static str, expected: String| WireError::Size {
            what,
            size: r.size,
            expected,
        };
        if r.tile != 0 || r.gt >= l.gt_count {
            return Err(route());
        }
        if !self.seen_descriptor && r.kind != PacketType::Descriptor {
            return Err(WireError::DescriptorNotFirst(r.kind.name()));
        }
        match r.kind {
            PacketType::Descriptor if self.seen_descriptor => {
                return Err(WireError::DescriptorDuplicated)
            }
            PacketType::Descriptor if r.gt != 0 => return Err(route()),
            PacketType::Descriptor if r.size % 4 != 0 || r.size > DESCRIPTOR_MAX => {
                return Err(WireError::DescriptorSize(r.size))
            }
            PacketType::Descriptor => self.seen_descriptor = true,
            PacketType::Trailer if r.gt != 0 || r.offset != 0 || r.size != 0 => {
                return Err(WireError::BadTrailer)
            }
            PacketType::Trailer => self.seen_trailer = true,
            PacketType::Mmio if r.size != 16 => return Err(size("MMIO", "16".into())),
            PacketType::Ggtt if r.gt != PRIMARY_GT => return Err(route()),
            PacketType::Ggtt => match l.ggtt_bytes {
                Some(want) if r.size != want => return Err(size("GGTT", want.to_string())),
                None if r.size % 8 != 0 => return Err(size("GGTT", "a multiple of 8".into())),
                _ => {}
            },
            PacketType::Guc if r.size == 0 || r.size > BLOB_MAX => {
                return Err(size("GUC", format!("1..={BLOB_MAX}")))
            }
            PacketType::Vram if !l.has_vram || r.gt != PRIMARY_GT => return Err(route()),
            PacketType::Vram => {
                let lmem = l.lmem.unwrap_or(u64::MAX);
                if r.offset.checked_add(r.size).is_none_or(|end| end > lmem) {
                    return Err(WireError::VramRange {
                        offset: r.offset,
                        size: r.size,
                        lmem,
                    });
                }
            }
            PacketType::Mmio | PacketType::Guc | PacketType::Unknown(_) => {}
        }
        Ok(())
    }

    /// Checks the end of the stream: `NoTrailer` unless the TRAILER came.
    pub fn end(&self) -> Result<(), WireError> {
        if self.seen_trailer {
            Ok(())
        } else {
            Err(WireError::NoTrailer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(kind: PacketType, gt: u8, offset: u64, size: u64) -> HeaderRepr {
        HeaderRepr {
            kind,
            tile: 0,
            gt,
            offset,
            size,
        }
    }

    #[test]
    fn order_and_routes() {
        let mut g = Grammar::new(Limits::of_target(Platform::Ptl, 4, 0));
        assert_eq!(
            g.header(&h(PacketType::Mmio, 0, 0, 16)),
            Err(WireError::DescriptorNotFirst("MMIO".into()))
        );
        g.header(&h(PacketType::Descriptor, 0, 0, 16)).unwrap();
        assert_eq!(
            g.header(&h(PacketType::Descriptor, 0, 0, 16)),
            Err(WireError::DescriptorDuplicated)
        );
        assert!(matches!(
            g.header(&h(PacketType::Vram, 0, 0, 4096)),
            Err(WireError::Route { .. })
        ));
        g.header(&h(PacketType::Ggtt, 0, 0, 32)).unwrap();
        assert!(g.header(&h(PacketType::Ggtt, 0, 0, 40)).is_err());
        assert!(matches!(
            g.header(&h(PacketType::Mmio, 2, 0, 16)),
            Err(WireError::Route { .. })
        ));
        assert_eq!(g.end(), Err(WireError::NoTrailer));
        g.header(&h(PacketType::Trailer, 0, 0, 0)).unwrap();
        assert_eq!(g.end(), Ok(()));
        assert_eq!(g.more(), Err(WireError::AfterTrailer));
    }

    #[test]
    fn vram_may_repeat_and_overlap_within_lmem() {
        let mut g = Grammar::new(Limits::of_target(Platform::Bmg, 1, 1 << 20));
        g.header(&h(PacketType::Descriptor, 0, 0, 16)).unwrap();
        g.header(&h(PacketType::Vram, 0, 0, 1 << 20)).unwrap();
        g.header(&h(PacketType::Vram, 0, 4096, 4096)).unwrap();
        assert!(matches!(
            g.header(&h(PacketType::Vram, 0, 4096, 1 << 20)),
            Err(WireError::VramRange { .. })
        ));
        let mut any = Grammar::new(Limits::any());
        any.header(&h(PacketType::Descriptor, 0, 0, 16)).unwrap();
        any.header(&h(PacketType::Vram, 0, 1 << 40, 1 << 30))
            .unwrap();
        assert!(any.header(&h(PacketType::Vram, 0, u64::MAX, 1)).is_err());
    }
}
