//! Dirty tracking of a VF's LMEM, at [`DIRTY_GRANULE`] granularity — the ground PRE_COPY
//! stands on: the emulated VF knows every write it makes to its own LMEM (the job engine
//! through the GGTT, and BAR2 writes that reach the device as region accesses).
//!
//! Writers write first and mark after; a scanner takes (clears) the marks first and reads the
//! memory after. So a write is never lost: if the scanner took the mark before the writer set
//! it, the mark stays for the next round; if after, the data the scanner reads includes the
//! write. The last round runs with the VF stopped, when nothing writes.
//!
//! Writes through a client's *mapping* of BAR2 never reach the device and cannot be tracked
//! here; a server offering PRE_COPY must not offer BAR2 for mmap.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Bytes of LMEM one dirty bit stands for.
pub const DIRTY_GRANULE: u64 = 64 << 10;

/// The dirty bitmap of one LMEM.
#[derive(Debug)]
pub struct DirtyMap {
    words: Vec<AtomicU64>,
    size: u64,
    /// Marks are kept only while tracking (a PRE_COPY session); otherwise writes cost one load.
    tracking: AtomicBool,
}

impl DirtyMap {
    /// A map for `size` bytes of LMEM, not tracking.
    pub fn new(size: u64) -> DirtyMap {
        let granules = size.div_ceil(DIRTY_GRANULE);
        DirtyMap {
            words: (0..granules.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            size,
            tracking: AtomicBool::new(false),
        }
    }

    /// Starts tracking with nothing dirty.
    pub fn start(&self) {
        for w in &self.words {
            w.store(0, Ordering::Relaxed);
        }
        self.tracking.store(true, Ordering::SeqCst);
    }

    /// Stops tracking and forgets the marks.
    pub fn stop(&self) {
        self.tracking.store(false, Ordering::SeqCst);
        for w in &self.words {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// Whether writes are being tracked.
    pub fn tracking(&self) -> bool {
        self.tracking.load(Ordering::SeqCst)
    }

    /// Marks `[offset, offset + len)` dirty (after the write). Out-of-range parts are ignored.
    pub fn mark(&self, offset: u64, len: u64) {
        if len == 0 || !self.tracking.load(Ordering::SeqCst) {
            return;
        }
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return;
        }
        for g in offset / DIRTY_GRANULE..=(end - 1) / DIRTY_GRANULE {
            self.words[(g / 64) as usize].fetch_or(1 << (g % 64), Ordering::Release);
        }
    }

    /// Bytes marked dirty now (whole granules, the last one cut at the LMEM's end).
    pub fn dirty_bytes(&self) -> u64 {
        self.ranges().iter().map(|(s, e)| e - s).sum()
    }

    /// The dirty ranges `[start, end)` now, merged, in order, without clearing them.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.ranges_of(|w| w.load(Ordering::Acquire))
    }

    /// Takes the marks: the dirty ranges `[start, end)`, merged, in order; they are clear
    /// afterwards (the caller then reads those ranges).
    pub fn take(&self) -> Vec<(u64, u64)> {
        self.ranges_of(|w| w.swap(0, Ordering::AcqRel))
    }

    fn ranges_of(&self, mut word: impl FnMut(&AtomicU64) -> u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, w) in self.words.iter().enumerate() {
            let mut bits = word(w);
            while bits != 0 {
                let b = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let start = (i as u64 * 64 + b) * DIRTY_GRANULE;
                let end = (start + DIRTY_GRANULE).min(self.size);
                match out.last_mut() {
                    Some(last) if last.1 == start => last.1 = end,
                    _ => out.push((start, end)),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = DIRTY_GRANULE;

    #[test]
    fn marks_only_while_tracking_and_take_clears() {
        let d = DirtyMap::new(100 * G + 100);
        d.mark(0, 1);
        assert_eq!(d.dirty_bytes(), 0, "not tracking");
        d.start();
        d.mark(G - 1, 2); // straddles granules 0 and 1
        d.mark(5 * G, G); // exactly granule 5
        d.mark(100 * G + 50, 10); // the cut last granule
        d.mark(200 * G, 10); // beyond the end: ignored
        assert_eq!(d.dirty_bytes(), 2 * G + G + 100);
        assert_eq!(
            d.take(),
            vec![(0, 2 * G), (5 * G, 6 * G), (100 * G, 100 * G + 100)]
        );
        assert!(d.take().is_empty(), "taken");
        d.mark(64 * G, 1); // the second word
        assert_eq!(d.take(), vec![(64 * G, 65 * G)]);
        d.stop();
        d.mark(0, 1);
        assert!(d.take().is_empty());
    }

    #[test]
    fn concurrent_marks_are_never_lost() {
        let d = std::sync::Arc::new(DirtyMap::new(256 * G));
        d.start();
        let w = d.clone();
        let writer = std::thread::spawn(move || {
            for i in 0..10_000u64 {
                w.mark((i * 7919 % 256) * G, 1);
            }
        });
        let mut seen = std::collections::BTreeSet::new();
        while !writer.is_finished() {
            for (s, e) in d.take() {
                seen.extend((s / G)..(e / G));
            }
        }
        writer.join().unwrap();
        for (s, e) in d.take() {
            seen.extend((s / G)..(e / G));
        }
        let want: std::collections::BTreeSet<u64> =
            (0..10_000u64).map(|i| i * 7919 % 256).collect();
        assert_eq!(seen, want);
    }
}
