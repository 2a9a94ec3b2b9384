//! # xe-guest — test and demo support
//!
//! A guest-side "driver" for the VF's job engine: what a workload in the VM would do.
//!
//! It maps a ring and a data area through the VF's GGTT (PTE *i* → memory page *i*, in LMEM on
//! discrete parts or in the VF's system memory on integrated ones), submits jobs through the
//! ring and doorbell, keeps a reference model of what the data area must contain, and performs
//! the GGTT fixups after a migration (the contract documented in [`xe_pf::hw`]). It reaches the
//! VF only through [`GuestAccess`] — BAR0 registers and memory — so the same driver runs
//! in-process and over vfio-user.

use mig_io::Errno;
use std::time::{Duration, Instant};
use xe_pf::hw::guc::fnv1a;
use xe_pf::hw::{self as vf, JOB_SIZE};

/// How a guest reaches its VF.
pub trait GuestAccess {
    fn mmio_read32(&self, off: u64) -> Result<u32, Errno>;
    fn mmio_write32(&self, off: u64, v: u32) -> Result<(), Errno>;
    /// Writes VF memory: LMEM (BAR2) when `lmem`, else system memory.
    fn mem_write(&self, lmem: bool, addr: u64, data: &[u8]) -> Result<(), Errno>;
    /// Reads VF memory.
    fn mem_read(&self, lmem: bool, addr: u64, buf: &mut [u8]) -> Result<(), Errno>;
}

/// In-process access to a VF's hardware.
pub struct DirectAccess(pub std::sync::Arc<xe_pf::hw::VfHw>);

impl GuestAccess for DirectAccess {
    fn mmio_read32(&self, off: u64) -> Result<u32, Errno> {
        let mut b = [0u8; 4];
        self.0.mmio_read(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn mmio_write32(&self, off: u64, v: u32) -> Result<(), Errno> {
        self.0.mmio_write(off, &v.to_le_bytes())
    }
    fn mem_write(&self, lmem: bool, addr: u64, data: &[u8]) -> Result<(), Errno> {
        if lmem {
            self.0.lmem().ok_or(Errno::ENODEV)?.write(addr, data)
        } else {
            self.0.sysmem().ok_or(Errno::ENODEV)?.write(addr, data)
        }
    }
    fn mem_read(&self, lmem: bool, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if lmem {
            self.0.lmem().ok_or(Errno::ENODEV)?.read(addr, buf)
        } else {
            self.0.sysmem().ok_or(Errno::ENODEV)?.read(addr, buf)
        }
    }
}

/// A job, with addresses relative to the data area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Fill { dst: u32, len: u32, pattern: u32 },
    Copy { src: u32, dst: u32, len: u32 },
    Hash { src: u32, len: u32, dst: u32 },
}

/// A small xorshift generator: deterministic workloads from a seed, no dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % u64::from(n.max(1))) as u32
    }
}

/// The guest driver.
pub struct Workload<A: GuestAccess> {
    acc: A,
    lmem: bool,
    /// The GGTT base this driver believes in (changes with fixups).
    ggtt_base: u64,
    ring_size: u32,
    /// Data area: GGTT offset (from the range base) and length.
    data_off: u64,
    data_len: u32,
    /// What the data area must contain once every submitted job has run.
    model: Vec<u8>,
    /// Next seqno to use, and the tail this driver wrote last.
    seqno: u32,
    tail: u32,
    rng: Rng,
}

/// Pages the workload maps: ring first, then data.
fn pages(n: u64) -> u64 {
    n.div_ceil(4096)
}

impl<A: GuestAccess> Workload<A> {
    /// Maps `ring_size` bytes of ring and `data_len` bytes of data from memory offset 0, fills the
    /// data with seeded random bytes, and programs the ring. Needs `ring_size + data_len` bytes of
    /// LMEM (or system memory) and of GGTT.
    pub fn setup(
        acc: A,
        lmem: bool,
        ring_size: u32,
        data_len: u32,
        seed: u64,
    ) -> Result<Self, Errno> {
        let base = u64::from(acc.mmio_read32(vf::GGTT_BASE_LO)?)
            | u64::from(acc.mmio_read32(vf::GGTT_BASE_HI)?) << 32;
        let size = u64::from(acc.mmio_read32(vf::GGTT_SIZE_LO)?)
            | u64::from(acc.mmio_read32(vf::GGTT_SIZE_HI)?) << 32;
        let total = pages(u64::from(ring_size)) + pages(u64::from(data_len));
        if total * 4096 > size || base + total * 4096 > u64::from(u32::MAX) {
            return Err(Errno::ENOSPC);
        }
        for i in 0..total {
            let pte = xe_pf::hw::ggtt::make_pte(i * 4096, lmem, 0);
            let idx = base / 4096 + i;
            let off = vf::GGTT_WINDOW + idx * 8;
            acc.mmio_write32(off, pte as u32)?;
            acc.mmio_write32(off + 4, (pte >> 32) as u32)?;
        }
        let mut rng = Rng::new(seed);
        let data_off = pages(u64::from(ring_size)) * 4096;
        let model: Vec<u8> = (0..data_len).map(|_| rng.next_u64() as u8).collect();
        acc.mem_write(lmem, data_off, &model)?;
        acc.mem_write(lmem, 0, &vec![0u8; ring_size as usize])?;
        acc.mmio_write32(vf::RING_BASE, base as u32)?;
        acc.mmio_write32(vf::RING_SIZE, ring_size)?;
        let tail = acc.mmio_read32(vf::RING_HEAD)?;
        Ok(Workload {
            acc,
            lmem,
            ggtt_base: base,
            ring_size,
            data_off,
            data_len,
            model,
            seqno: 0,
            tail,
            rng,
        })
    }

    /// The access handle.
    pub fn access(&self) -> &A {
        &self.acc
    }

    /// Replaces the access handle (after migrating, the guest talks to the new VF).
    pub fn set_access(&mut self, acc: A) {
        self.acc = acc;
    }

    /// Seqno of the last job submitted.
    pub fn last_seqno(&self) -> u32 {
        self.seqno
    }

    fn gaddr(&self, data_rel: u32) -> u32 {
        (self.ggtt_base + self.data_off + u64::from(data_rel)) as u32
    }

    /// A random job within the data area.
    pub fn random_job(&mut self) -> Job {
        let max = (self.data_len / 4).clamp(1, 64 << 10);
        let len = 4 * (1 + self.rng.below(max / 4));
        let at = |rng: &mut Rng, len: u32, data_len: u32| rng.below(data_len - len + 1) & !3;
        match self.rng.below(3) {
            0 => Job::Fill {
                dst: at(&mut self.rng, len, self.data_len),
                len,
                pattern: self.rng.next_u64() as u32,
            },
            1 => Job::Copy {
                src: at(&mut self.rng, len, self.data_len),
                dst: at(&mut self.rng, len, self.data_len),
                len,
            },
            _ => Job::Hash {
                src: at(&mut self.rng, len, self.data_len),
                len,
                dst: at(&mut self.rng, 8, self.data_len),
            },
        }
    }

    /// Jobs queued but (as far as the driver knows) not yet complete.
    pub fn in_flight(&self) -> Result<u32, Errno> {
        let done = self.acc.mmio_read32(vf::SEQNO)?;
        Ok(self.seqno.wrapping_sub(done))
    }

    /// Writes a job into the ring (without ringing the doorbell) and updates the model.
    /// `ENOSPC` when the ring is full.
    pub fn queue(&mut self, job: Job) -> Result<(), Errno> {
        let head = self.acc.mmio_read32(vf::RING_HEAD)?;
        let next = (self.tail + JOB_SIZE) % self.ring_size;
        if next == head {
            return Err(Errno::ENOSPC);
        }
        self.seqno = self.seqno.wrapping_add(1);
        let (op, a, b, c) = match job {
            Job::Fill { dst, len, pattern } => (vf::OP_FILL, self.gaddr(dst), len, pattern),
            Job::Copy { src, dst, len } => (vf::OP_COPY, self.gaddr(src), self.gaddr(dst), len),
            Job::Hash { src, len, dst } => (vf::OP_HASH, self.gaddr(src), len, self.gaddr(dst)),
        };
        let mut d = [0u8; JOB_SIZE as usize];
        for (i, w) in [op, self.seqno, a, b, c].into_iter().enumerate() {
            d[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        self.acc.mem_write(self.lmem, u64::from(self.tail), &d)?;
        self.tail = next;
        self.apply_to_model(job);
        Ok(())
    }

    /// Rings the doorbell: the engine may run everything queued.
    pub fn doorbell(&mut self) -> Result<(), Errno> {
        self.acc.mmio_write32(vf::RING_TAIL, self.tail)
    }

    /// Queues `n` random jobs and rings the doorbell after each.
    pub fn submit_random(&mut self, n: u32) -> Result<(), Errno> {
        for _ in 0..n {
            let j = self.random_job();
            self.queue(j)?;
            self.doorbell()?;
        }
        Ok(())
    }

    fn apply_to_model(&mut self, job: Job) {
        // A job outside the data area faults in the engine and changes nothing: same here.
        let m = &mut self.model;
        let len = m.len();
        let fits = |at: u32, n: u32| {
            (at as usize)
                .checked_add(n as usize)
                .is_some_and(|e| e <= len)
        };
        match job {
            Job::Fill { dst, len, pattern } if fits(dst, len) => {
                for (i, b) in m[dst as usize..(dst + len) as usize].iter_mut().enumerate() {
                    *b = pattern.to_le_bytes()[i % 4];
                }
            }
            Job::Copy { src, dst, len } if fits(src, len) && fits(dst, len) => {
                m.copy_within(src as usize..(src + len) as usize, dst as usize)
            }
            Job::Hash { src, len, dst } if fits(src, len) && fits(dst, 8) => {
                let h = fnv1a(&m[src as usize..(src + len) as usize]);
                m[dst as usize..dst as usize + 8].copy_from_slice(&h.to_le_bytes());
            }
            _ => {}
        }
    }

    /// Waits until every submitted job completed (`ETIMEDOUT` otherwise).
    pub fn wait_idle(&self, timeout: Duration) -> Result<(), Errno> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.acc.mmio_read32(vf::SEQNO)? == self.seqno
                && self.acc.mmio_read32(vf::RING_HEAD)? == self.tail
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Errno::ETIMEDOUT);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Compares the data area with the reference model, and checks the engine reported no error.
    pub fn verify(&self) -> Result<(), String> {
        let err = self.acc.mmio_read32(vf::ERROR).map_err(|e| e.to_string())?;
        if err != 0 {
            return Err(format!("engine reported error {err}"));
        }
        let mut actual = vec![0u8; self.data_len as usize];
        self.acc
            .mem_read(self.lmem, self.data_off, &mut actual)
            .map_err(|e| format!("reading the data area: {e}"))?;
        if let Some(i) = actual.iter().zip(&self.model).position(|(a, b)| a != b) {
            return Err(format!(
                "data differs from the reference at byte {i}: {:#04x} != {:#04x}",
                actual[i], self.model[i]
            ));
        }
        Ok(())
    }

    /// After a migration: if the VF reports `MIGRATED`, relocates every GGTT address this driver
    /// holds (ring base, queued jobs) to the VF's new GGTT base and writes `FIXUPS_DONE`.
    /// Returns whether fixups were needed.
    pub fn fixups(&mut self) -> Result<bool, Errno> {
        if self.acc.mmio_read32(vf::MIGRATED)? & 1 == 0 {
            return Ok(false);
        }
        let new_base = u64::from(self.acc.mmio_read32(vf::GGTT_BASE_LO)?)
            | u64::from(self.acc.mmio_read32(vf::GGTT_BASE_HI)?) << 32;
        let delta = new_base.wrapping_sub(self.ggtt_base) as u32;
        let head = self.acc.mmio_read32(vf::RING_HEAD)?;
        let mut at = head;
        while at != self.tail {
            let mut d = [0u8; JOB_SIZE as usize];
            self.acc.mem_read(self.lmem, u64::from(at), &mut d)?;
            let op = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            let fields: &[usize] = match op {
                vf::OP_FILL => &[2],
                vf::OP_COPY => &[2, 3],
                vf::OP_HASH => &[2, 4],
                _ => &[],
            };
            for &f in fields {
                let w = u32::from_le_bytes([d[4 * f], d[4 * f + 1], d[4 * f + 2], d[4 * f + 3]]);
                d[4 * f..4 * f + 4].copy_from_slice(&w.wrapping_add(delta).to_le_bytes());
            }
            self.acc.mem_write(self.lmem, u64::from(at), &d)?;
            at = (at + JOB_SIZE) % self.ring_size;
        }
        self.acc.mmio_write32(vf::RING_BASE, new_base as u32)?;
        self.ggtt_base = new_base;
        self.acc.mmio_write32(vf::FIXUPS_DONE, 1)?;
        Ok(true)
    }
}
