//! The VFIO migration uAPI v2: device states, migration flags and the next-state walk.
//!
//! The numeric values are ABI (`include/uapi/linux/vfio.h`) and cross the wire unchanged.
//! [`next_state`] is the kernel's `vfio_mig_get_next_state()` as a table: given the current state
//! and the requested final state, it names the single arc to take next. Callers repeat it until
//! the target is reached. The table is SPEC §1's, row by row.

use crate::Errno;
use std::fmt;

/// A VFIO migration device state (`enum vfio_device_mig_state`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
#[repr(u32)]
pub enum DeviceState {
    Error = 0,
    Stop = 1,
    Running = 2,
    StopCopy = 3,
    Resuming = 4,
    RunningP2p = 5,
    PreCopy = 6,
    PreCopyP2p = 7,
}

impl DeviceState {
    /// All eight states, in ABI order.
    pub const ALL: [DeviceState; 8] = [
        DeviceState::Error,
        DeviceState::Stop,
        DeviceState::Running,
        DeviceState::StopCopy,
        DeviceState::Resuming,
        DeviceState::RunningP2p,
        DeviceState::PreCopy,
        DeviceState::PreCopyP2p,
    ];

    /// The uAPI name (`"STOP_COPY"`).
    pub const fn name(self) -> &'static str {
        match self {
            DeviceState::Error => "ERROR",
            DeviceState::Stop => "STOP",
            DeviceState::Running => "RUNNING",
            DeviceState::StopCopy => "STOP_COPY",
            DeviceState::Resuming => "RESUMING",
            DeviceState::RunningP2p => "RUNNING_P2P",
            DeviceState::PreCopy => "PRE_COPY",
            DeviceState::PreCopyP2p => "PRE_COPY_P2P",
        }
    }

    /// States in which a save stream is open (the "saving" states).
    pub const fn is_saving(self) -> bool {
        matches!(
            self,
            DeviceState::StopCopy | DeviceState::PreCopy | DeviceState::PreCopyP2p
        )
    }

    /// Whether a device advertising `flags` has this state at all.
    pub const fn supported_by(self, flags: MigrationFlags) -> bool {
        let f = flags.bits();
        let sc = MigrationFlags::STOP_COPY.bits();
        let p2p = MigrationFlags::P2P.bits();
        let pre = MigrationFlags::PRE_COPY.bits();
        let need = match self {
            DeviceState::Error => return true,
            DeviceState::Stop
            | DeviceState::Running
            | DeviceState::StopCopy
            | DeviceState::Resuming => sc,
            DeviceState::RunningP2p => sc | p2p,
            DeviceState::PreCopy => sc | pre,
            DeviceState::PreCopyP2p => sc | p2p | pre,
        };
        f & need == need
    }
}

impl TryFrom<u32> for DeviceState {
    type Error = Errno;

    fn try_from(raw: u32) -> Result<Self, Errno> {
        DeviceState::ALL
            .get(raw as usize)
            .copied()
            .ok_or(Errno::EINVAL)
    }
}

impl From<DeviceState> for u32 {
    fn from(s: DeviceState) -> u32 {
        s as u32
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `VFIO_MIGRATION_*` flags: which optional parts of the state machine a device implements.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MigrationFlags(u64);

impl MigrationFlags {
    /// `VFIO_MIGRATION_STOP_COPY`: mandatory for any migratable device.
    pub const STOP_COPY: MigrationFlags = MigrationFlags(1 << 0);
    /// `VFIO_MIGRATION_P2P`: RUNNING_P2P exists.
    pub const P2P: MigrationFlags = MigrationFlags(1 << 1);
    /// `VFIO_MIGRATION_PRE_COPY`: PRE_COPY exists.
    pub const PRE_COPY: MigrationFlags = MigrationFlags(1 << 2);
    const KNOWN: u64 = 0b111;

    /// No flags.
    pub const fn empty() -> Self {
        MigrationFlags(0)
    }
    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }
    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: MigrationFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// Union.
    pub const fn union(self, other: MigrationFlags) -> MigrationFlags {
        MigrationFlags(self.0 | other.0)
    }
}

impl std::ops::BitOr for MigrationFlags {
    type Output = MigrationFlags;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl TryFrom<u64> for MigrationFlags {
    type Error = Errno;

    /// Unknown bits, or a set without STOP_COPY (every migratable device has it), are `EINVAL`.
    fn try_from(raw: u64) -> Result<Self, Errno> {
        if raw & !Self::KNOWN != 0 || raw & Self::STOP_COPY.0 == 0 {
            return Err(Errno::EINVAL);
        }
        Ok(MigrationFlags(raw))
    }
}

impl TryFrom<u32> for MigrationFlags {
    type Error = Errno;
    fn try_from(raw: u32) -> Result<Self, Errno> {
        MigrationFlags::try_from(u64::from(raw))
    }
}

impl fmt::Debug for MigrationFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.contains(Self::STOP_COPY) {
            parts.push("STOP_COPY");
        }
        if self.contains(Self::P2P) {
            parts.push("P2P");
        }
        if self.contains(Self::PRE_COPY) {
            parts.push("PRE_COPY");
        }
        if parts.is_empty() {
            parts.push("(none)");
        }
        f.write_str(&parts.join("|"))
    }
}

impl fmt::Display for MigrationFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The kernel's next-state table: `TABLE[cur][new]` is the single step to take from `cur`
/// towards `new`, assuming every state exists. Indexed by ABI value.
const TABLE: [[DeviceState; 8]; 8] = {
    use DeviceState::{
        Error as ER, PreCopy as PC, PreCopyP2p as PP, Resuming as RS, Running as RN,
        RunningP2p as RP, Stop as ST, StopCopy as SC,
    };
    [
        //  new: ERROR STOP RUNNING STOP_COPY RESUMING RUNNING_P2P PRE_COPY PRE_COPY_P2P
        /* ERROR        */
        [ER, ER, ER, ER, ER, ER, ER, ER],
        /* STOP         */ [ER, ST, RP, SC, RS, RP, RP, RP],
        /* RUNNING      */ [ER, RP, RN, RP, RP, RP, PC, RP],
        /* STOP_COPY    */ [ER, ST, ST, SC, ST, ST, ER, ER],
        /* RESUMING     */ [ER, ST, ST, ST, RS, ST, ST, ST],
        /* RUNNING_P2P  */ [ER, ST, RN, ST, ST, RP, RN, PP],
        /* PRE_COPY     */ [ER, RN, RN, PP, RN, RN, PC, PP],
        /* PRE_COPY_P2P */ [ER, RP, RP, SC, RP, RP, PC, PP],
    ]
};

/// The next single arc from `cur` towards `new` on a device with `flags`.
///
/// `EINVAL` when either state is not supported by `flags`, when `new` is ERROR (it cannot be
/// requested) or when the table has no path (for example STOP_COPY → PRE_COPY). Returns `cur`
/// when `cur == new`.
pub fn next_state(
    cur: DeviceState,
    new: DeviceState,
    flags: MigrationFlags,
) -> Result<DeviceState, Errno> {
    if !flags.contains(MigrationFlags::STOP_COPY)
        || !cur.supported_by(flags)
        || !new.supported_by(flags)
        || new == DeviceState::Error
    {
        return Err(Errno::EINVAL);
    }
    let mut next = TABLE[cur as usize][new as usize];
    // Skip over states this device does not implement: they are only ever intermediate.
    while !next.supported_by(flags) {
        next = TABLE[next as usize][new as usize];
    }
    if next == DeviceState::Error {
        Err(Errno::EINVAL)
    } else {
        Ok(next)
    }
}

/// The full sequence of arcs from `cur` to `new` (excluding `cur`, including `new`).
///
/// A convenience for logs and tests; [`crate::MigrationCore`] walks step by step.
pub fn path(
    cur: DeviceState,
    new: DeviceState,
    flags: MigrationFlags,
) -> Result<Vec<DeviceState>, Errno> {
    let mut out = Vec::new();
    let mut at = cur;
    while at != new {
        at = next_state(at, new, flags)?;
        out.push(at);
        if out.len() > DeviceState::ALL.len() {
            // The table is acyclic; this is unreachable but never loop forever on a bug.
            return Err(Errno::EINVAL);
        }
    }
    Ok(out)
}
