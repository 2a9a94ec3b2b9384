//! The emulated GuC firmware: its version, the per-VF state it keeps, and fault injection.
//!
//! The GuC owns what the firmware knows about a VF: its scheduling state (for us, the engine's
//! ring registers) and opaque context words. On save it produces a blob (the GUC packet), on
//! restore it takes one back and checks it. The blob format is ours; it is opaque to everything
//! but this module:
//!
//! ```text
//! u32 magic "GUCv" | u32 version 1 | u32 gt | u32 payload dwords | payload | u32 checksum (FNV-1a)
//! ```
//!
//! Fault injection lets tests make the GuC answer busy, never answer (time out) or fail, for one
//! VF and one operation, a given number of times.

use crate::sync::lock;
use mig_io::Errno;
use std::collections::HashMap;
use std::sync::Mutex;

/// A GuC firmware version (major.minor.patch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GucVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GucVersion {
    /// `major.minor.patch`.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        GucVersion {
            major,
            minor,
            patch,
        }
    }
    /// The oldest firmware with VF migration support (70.54.0).
    pub const MIGRATION_MIN: GucVersion = GucVersion::new(70, 54, 0);
}

impl std::fmt::Display for GucVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// GuC operations that can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GucOp {
    Pause,
    Resume,
    Stop,
    Flr,
    Save,
    Restore,
    /// Fetching the VF state blob during a save (the GUC packet's producer).
    SaveState,
    /// Loading a VF state blob during a restore.
    RestoreState,
    /// Not a GuC call: starting a GT's save-producer thread in the PF driver (a fault makes it
    /// fail to start, as `thread::spawn` can). For tests of the save's failure paths.
    StartProducer,
}

/// How an injected fault behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The GuC answers busy (the PF retries a few times, then gives up with `EBUSY`).
    Busy,
    /// The GuC never answers; the caller's wait times out (`ETIMEDOUT`).
    Timeout,
    /// The GuC answers with this error.
    Fail(Errno),
    /// The PF thread waiting for the GuC dies (a panic): the save producer's failure path.
    Panic,
}

impl Fault {
    /// The errno a caller sees for this fault.
    pub fn errno(self) -> Errno {
        match self {
            Fault::Busy => Errno::EBUSY,
            Fault::Timeout => Errno::ETIMEDOUT,
            Fault::Fail(e) => e,
            Fault::Panic => Errno::EIO,
        }
    }
}

/// Which calls a fault applies to: `(vfid, gt, op)`; `gt = None` matches every GT.
type FaultKey = (u32, Option<u8>, GucOp);

/// The fault table: key → (fault, remaining count).
#[derive(Default, Debug)]
pub struct Faults {
    /// Lock: the table of injected faults.
    table: Mutex<HashMap<FaultKey, (Fault, u32)>>,
}

impl Faults {
    /// Makes the next `times` `op` calls for `vfid` (on `gt`, or any GT) behave as `fault`.
    pub fn inject(&self, vfid: u32, gt: Option<u8>, op: GucOp, fault: Fault, times: u32) {
        lock(&self.table).insert((vfid, gt, op), (fault, times));
    }

    /// Removes every injected fault.
    pub fn clear(&self) {
        lock(&self.table).clear();
    }

    /// Whether a fault is still armed for `(vfid, gt, op)` (not yet consumed by a call).
    pub fn armed(&self, vfid: u32, gt: Option<u8>, op: GucOp) -> bool {
        lock(&self.table).contains_key(&(vfid, gt, op))
    }

    /// Consumes one fault for this call, if any is armed.
    pub fn take(&self, vfid: u32, gt: u8, op: GucOp) -> Option<Fault> {
        let mut t = lock(&self.table);
        for key in [(vfid, Some(gt), op), (vfid, None, op)] {
            if let Some((fault, n)) = t.get_mut(&key) {
                let f = *fault;
                *n -= 1;
                if *n == 0 {
                    t.remove(&key);
                }
                return Some(f);
            }
        }
        None
    }
}

/// Magic of a GuC VF state blob ("GUCv").
pub const BLOB_MAGIC: u32 = u32::from_le_bytes(*b"GUCv");
/// Largest blob the firmware accepts (bytes).
pub const BLOB_MAX: u64 = 64 * 1024;
/// Context dwords the firmware keeps per VF per GT.
pub const CONTEXT_DWORDS: usize = 256;

/// FNV-1a over bytes (also the engine's HASH job).
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Encodes a blob for `gt` with `payload` dwords.
pub fn encode_blob(gt: u8, payload: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + payload.len() * 4);
    for w in [BLOB_MAGIC, 1, u32::from(gt), payload.len() as u32] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    for w in payload {
        out.extend_from_slice(&w.to_le_bytes());
    }
    let sum = fnv1a(&out) as u32;
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Decodes a blob for `gt`: `EINVAL` when larger than the firmware's maximum, `EIO` when the
/// firmware rejects it (bad magic, version, GT, length or checksum).
pub fn decode_blob(gt: u8, blob: &[u8]) -> Result<Vec<u32>, Errno> {
    if blob.len() as u64 > BLOB_MAX {
        return Err(Errno::EINVAL);
    }
    if blob.len() < 20 || blob.len() % 4 != 0 {
        return Err(Errno::EIO);
    }
    let words: Vec<u32> = blob
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let n = words.len();
    if words[0] != BLOB_MAGIC || words[1] != 1 || words[2] != u32::from(gt) {
        return Err(Errno::EIO);
    }
    if words[3] as usize != n - 5 || fnv1a(&blob[..blob.len() - 4]) as u32 != words[n - 1] {
        return Err(Errno::EIO);
    }
    Ok(words[4..n - 1].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trip_and_rejects() {
        let b = encode_blob(1, &[1, 2, 3]);
        assert_eq!(b.len(), 4 * 4 + 12 + 4);
        assert_eq!(&b[..4], b"GUCv");
        assert_eq!(decode_blob(1, &b).unwrap(), vec![1, 2, 3]);
        assert_eq!(decode_blob(0, &b), Err(Errno::EIO));
        let mut bad = b.clone();
        bad[17] ^= 1;
        assert_eq!(decode_blob(1, &bad), Err(Errno::EIO));
        assert_eq!(decode_blob(1, &b[..8]), Err(Errno::EIO));
        assert_eq!(
            decode_blob(1, &vec![0; BLOB_MAX as usize + 4]),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn faults_count_down() {
        let f = Faults::default();
        f.inject(2, None, GucOp::Pause, Fault::Busy, 2);
        assert_eq!(f.take(2, 0, GucOp::Pause), Some(Fault::Busy));
        assert_eq!(f.take(1, 0, GucOp::Pause), None);
        assert_eq!(f.take(2, 1, GucOp::Pause), Some(Fault::Busy));
        assert_eq!(f.take(2, 1, GucOp::Pause), None);
    }
}
