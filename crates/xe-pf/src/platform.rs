//! Platforms: PTL, WCL and BMG, with every PCI device id of SPEC §5.
//!
//! A VF's device id equals its PF's. Each tile has a primary GT (gt 0) and a media GT (gt 1);
//! all three platforms have one tile. Only BMG is discrete (has VRAM, "LMEM").

use mig_io::Errno;
use std::fmt;

/// Intel's PCI vendor id.
pub const INTEL_VENDOR_ID: u16 = 0x8086;

/// An Xe platform with SR-IOV migration support upstream.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Platform {
    /// Panther Lake: integrated, no VRAM.
    Ptl,
    /// Wildcat Lake: integrated, no VRAM.
    Wcl,
    /// Battlemage: discrete, VRAM.
    Bmg,
}

const PTL_IDS: &[u16] = &[
    0xB080, 0xB081, 0xB082, 0xB083, 0xB084, 0xB085, 0xB086, 0xB087, 0xB08F, 0xB090, 0xB0A0, 0xB0B0,
];
const WCL_IDS: &[u16] = &[0xFD80, 0xFD81];
const BMG_IDS: &[u16] = &[
    0xE202, 0xE209, 0xE20B, 0xE20C, 0xE20D, 0xE210, 0xE211, 0xE212, 0xE216, 0xE220, 0xE221, 0xE222,
    0xE223,
];

/// Number of tiles on every supported platform.
pub const TILES: u8 = 1;
/// GTs per tile: primary (0) and media (1).
pub const GTS_PER_TILE: u8 = 2;
/// The primary GT's id.
pub const PRIMARY_GT: u8 = 0;
/// The media GT's id.
pub const MEDIA_GT: u8 = 1;

impl Platform {
    /// Every platform.
    pub const ALL: [Platform; 3] = [Platform::Ptl, Platform::Wcl, Platform::Bmg];

    /// The PCI device ids of this platform.
    pub fn device_ids(self) -> &'static [u16] {
        match self {
            Platform::Ptl => PTL_IDS,
            Platform::Wcl => WCL_IDS,
            Platform::Bmg => BMG_IDS,
        }
    }

    /// The id used when none is chosen (the first of the list).
    pub fn default_device_id(self) -> u16 {
        self.device_ids()[0]
    }

    /// The revision id the emulated parts report.
    pub fn default_revision(self) -> u8 {
        match self {
            Platform::Ptl => 0x04,
            Platform::Wcl => 0x01,
            Platform::Bmg => 0x01,
        }
    }

    /// Whether the part has VRAM (LMEM).
    pub fn has_vram(self) -> bool {
        matches!(self, Platform::Bmg)
    }

    /// Number of GTs (over all tiles).
    pub fn gt_count(self) -> u8 {
        TILES * GTS_PER_TILE
    }

    /// Short lowercase name (`"bmg"`).
    pub fn name(self) -> &'static str {
        match self {
            Platform::Ptl => "ptl",
            Platform::Wcl => "wcl",
            Platform::Bmg => "bmg",
        }
    }

    /// Marketing name.
    pub fn long_name(self) -> &'static str {
        match self {
            Platform::Ptl => "Panther Lake",
            Platform::Wcl => "Wildcat Lake",
            Platform::Bmg => "Battlemage",
        }
    }

    /// The platform of a PCI id; `ENODEV` for a non-Intel vendor or an id not in SPEC §5.
    pub fn from_pci_id(vendor: u16, device: u16) -> Result<Platform, Errno> {
        if vendor != INTEL_VENDOR_ID {
            return Err(Errno::ENODEV);
        }
        Platform::ALL
            .into_iter()
            .find(|p| p.device_ids().contains(&device))
            .ok_or(Errno::ENODEV)
    }
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ptl" => Ok(Platform::Ptl),
            "wcl" => Ok(Platform::Wcl),
            "bmg" => Ok(Platform::Bmg),
            other => Err(format!(
                "unknown platform '{other}' (expected bmg, ptl or wcl)"
            )),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
