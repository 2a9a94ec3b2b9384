//! Save: per-GT producers fill bounded rings; `read` drains them at any byte split.
//!
//! Stream order (stop-copy save): DESCRIPTOR, then each GT's packets (GUC, MMIO; on the primary
//! GT also GGTT and, on discrete parts, VRAM chunks), GTs interleaved round-robin
//! (deterministically), then TRAILER.
//!
//! A pre-copy save (ours; upstream has no PRE_COPY) opens while the VF runs, with LMEM dirty
//! tracking on: DESCRIPTOR (naming the VF's LMEM and GGTT sizes), the whole LMEM as VRAM
//! packets (the *initial* data), then rounds of dirty VRAM — each read past the data ready
//! takes the dirty marks and sends those ranges again; with nothing dirty a read fails with
//! `ENOMSG`, the kernel's temporary end of stream. When the VF has stopped
//! ([`SaveSession::stop_copy`]), the producers start without VRAM: GUC, MMIO and GGTT, then
//! the last dirty VRAM (marks taken until none is left) and the TRAILER. Marks are taken
//! before the memory is read, so a write is either in the bytes sent or marked for a later
//! round (see `hw::dirty`).
//! VRAM packets are *views* on the stopped VF's LMEM: their bytes go from the LMEM straight into
//! the reader's buffer — or, through `read_to`, to a transport: as the LMEM file's pages
//! (`DataSink::put_file`, no copy at all) or as slices of a reserved LMEM — so memory in flight
//! is a few small packets whatever the LMEM size.

use super::wire::{Descriptor, HeaderRepr, PacketType, HEADER_LEN};
use crate::hw::guc::{Fault, Faults, GucOp};
use crate::hw::VfHw;
use crate::platform::PRIMARY_GT;
use crate::sync::{lock, wait_until};
use mig_io::{DataSink, Errno};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Packets each GT's ring holds (upstream's value).
pub const RING_CAPACITY: usize = 5;

/// A packet's payload.
#[derive(Debug)]
enum Payload {
    Bytes(Vec<u8>),
    /// `size` bytes of LMEM starting at this offset.
    Lmem(u64),
}

#[derive(Debug)]
struct OutPacket {
    header: [u8; HEADER_LEN],
    size: u64,
    payload: Payload,
}

impl OutPacket {
    fn bytes(kind: PacketType, gt: u8, offset: u64, data: Vec<u8>) -> OutPacket {
        let h = HeaderRepr {
            kind,
            tile: 0,
            gt,
            offset,
            size: data.len() as u64,
        };
        OutPacket {
            header: h.to_bytes(),
            size: data.len() as u64,
            payload: Payload::Bytes(data),
        }
    }
    fn total(&self) -> u64 {
        HEADER_LEN as u64 + self.size
    }
}

#[derive(Debug, Default)]
struct GtRing {
    q: VecDeque<OutPacket>,
    done: bool,
}

/// What the ring lock protects.
#[derive(Debug)]
struct Rings {
    gts: Vec<GtRing>,
    error: Option<Errno>,
    cancelled: bool,
}

#[derive(Debug)]
struct Shared {
    /// GT ring lock: every GT's ring, the producers' error and the cancel flag. `cv` signals
    /// every change (packet pushed or popped, producer done, cancel).
    rings: Mutex<Rings>,
    cv: Condvar,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Phase {
    Descriptor,
    /// Pre-copy: the whole LMEM, chunk by chunk, while the VF runs.
    Initial,
    /// Pre-copy: rounds of dirty LMEM; after `stop_copy`, on to `Body`.
    Dirty,
    Body,
    /// Pre-copy, VF stopped: the dirty LMEM left, until no mark is left.
    FinalDirty,
    Trailer,
    End,
}

/// Which of the PRECOPY_INFO counts a packet belongs to.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Class {
    Initial,
    Dirty,
    Other,
}

#[derive(Debug)]
struct Reader {
    phase: Phase,
    cur: Option<(OutPacket, u64)>,
    cur_class: Class,
    next_gt: usize,
    failed: Option<Errno>,
    /// For lazy LMEM going to a sink without space of its own.
    scratch: Vec<u8>,
    /// Pre-copy: where the initial pass is.
    initial_off: u64,
    /// Pre-copy: dirty ranges taken and not yet sent.
    batch: VecDeque<(u64, u64)>,
    /// Pre-copy: the VF has stopped and the producers run.
    stop_copy: bool,
}

/// Largest piece of lazy LMEM read at once for a sink.
const SCRATCH: usize = 1 << 20;

/// A save session.
#[derive(Debug)]
pub(crate) struct SaveSession {
    hw: Arc<VfHw>,
    faults: Arc<Faults>,
    params: SaveParams,
    descriptor: Vec<u8>,
    shared: Arc<Shared>,
    /// Lock: the producer threads' handles, taken to join them (end or cancel).
    producers: Mutex<Vec<JoinHandle<()>>>,
    /// Reader lock: the read position. Held while a read blocks on the producers.
    reader: Mutex<Reader>,
}

/// Parameters of a save.
#[derive(Clone, Debug)]
pub(crate) struct SaveParams {
    pub(crate) vfid: u32,
    pub(crate) gt_count: u8,
    pub(crate) descriptor: Descriptor,
    pub(crate) vram_chunk: u64,
    /// A pre-copy save: opened with the VF running, producers started by `stop_copy`.
    pub(crate) pre_copy: bool,
}

impl SaveSession {
    /// Starts a save. A stop-copy save starts one producer thread per GT; if one cannot
    /// start, those started are stopped and the save fails (`EAGAIN`, as `fork`-like resource
    /// exhaustion reports it). A pre-copy save starts dirty tracking instead; its producers
    /// start at [`SaveSession::stop_copy`].
    pub(crate) fn start(
        hw: Arc<VfHw>,
        faults: Arc<Faults>,
        mut p: SaveParams,
    ) -> Result<SaveSession, Errno> {
        if p.pre_copy {
            p.descriptor.lmem_size = Some(hw.lmem_size());
            p.descriptor.ggtt_size = Some(hw.ggtt().ptes() as u64 * 4096);
        }
        let shared = Arc::new(Shared {
            rings: Mutex::new(Rings {
                gts: (0..p.gt_count).map(|_| GtRing::default()).collect(),
                error: None,
                cancelled: false,
            }),
            cv: Condvar::new(),
        });
        let session = SaveSession {
            hw: hw.clone(),
            faults,
            descriptor: p.descriptor.packet(),
            params: p,
            shared,
            producers: Mutex::new(Vec::new()),
            reader: Mutex::new(Reader {
                phase: Phase::Descriptor,
                cur: None,
                cur_class: Class::Other,
                next_gt: 0,
                failed: None,
                scratch: Vec::new(),
                initial_off: 0,
                batch: VecDeque::new(),
                stop_copy: false,
            }),
        };
        if session.params.pre_copy {
            hw.dirty().start();
        } else {
            session.start_producers()?;
        }
        Ok(session)
    }

    fn start_producers(&self) -> Result<(), Errno> {
        let p = &self.params;
        for gt in 0..p.gt_count {
            let vfid = p.vfid;
            let spawned = match self.faults.take(vfid, gt, GucOp::StartProducer) {
                Some(_) => Err(std::io::Error::from(std::io::ErrorKind::WouldBlock)),
                None => {
                    let (hw, shared, faults, p) = (
                        self.hw.clone(),
                        self.shared.clone(),
                        self.faults.clone(),
                        p.clone(),
                    );
                    std::thread::Builder::new()
                        .name(format!("xe-vf{vfid}-save-gt{gt}"))
                        .spawn(move || produce(&hw, &shared, &faults, &p, gt))
                }
            };
            match spawned {
                Ok(t) => lock(&self.producers).push(t),
                Err(e) => {
                    tracing::error!(vfid, gt, %e, "save producer could not start");
                    self.cancel();
                    return Err(Errno::EAGAIN);
                }
            }
        }
        Ok(())
    }

    /// Pre-copy: the VF has stopped; the stream goes on with the stop-copy data (the
    /// producers start, without VRAM) and ends. `EINVAL` for a stop-copy save or a second call.
    pub(crate) fn stop_copy(&self) -> Result<(), Errno> {
        let mut r = lock(&self.reader);
        if !self.params.pre_copy || r.stop_copy {
            return Err(Errno::EINVAL);
        }
        if let Some(e) = r.failed {
            return Err(e);
        }
        self.start_producers()?;
        r.stop_copy = true;
        Ok(())
    }

    /// `(initial_bytes, dirty_bytes)` of a pre-copy save before it stops, in stream bytes
    /// (headers included): the initial data not yet read, and the dirty data — taken and not
    /// yet read, or marked. `ENOTTY` for a stop-copy save; `EINVAL` once stop-copy began.
    pub(crate) fn precopy_info(&self) -> Result<(u64, u64), Errno> {
        if !self.params.pre_copy {
            return Err(Errno::ENOTTY);
        }
        let r = lock(&self.reader);
        if r.stop_copy {
            return Err(Errno::EINVAL);
        }
        let chunk = self.params.vram_chunk;
        let packets = |len: u64| len + HEADER_LEN as u64 * len.div_ceil(chunk);
        let lmem = self.hw.lmem_size();
        let mut initial = match r.phase {
            Phase::Descriptor => self.descriptor.len() as u64 + packets(lmem),
            Phase::Initial => packets(lmem - r.initial_off),
            _ => 0,
        };
        let mut dirty: u64 = r.batch.iter().map(|(s, e)| packets(e - s)).sum();
        dirty += self
            .hw
            .dirty()
            .ranges()
            .iter()
            .map(|(s, e)| packets(e - s))
            .sum::<u64>();
        if let Some((pkt, pos)) = &r.cur {
            match r.cur_class {
                Class::Initial => initial += pkt.total() - pos,
                Class::Dirty => dirty += pkt.total() - pos,
                Class::Other => {}
            }
        }
        Ok((initial, dirty))
    }

    /// Hands up to `max` stream bytes to `sink` (see [`DataSink`]): all `max` unless the stream
    /// ends, so a short count means the end. First the packets covering them are taken from the
    /// rings (waiting for the producers), so the count is known and every failure of the
    /// producers comes before `sink.begin`; then the bytes are handed over — VRAM payloads as
    /// the LMEM file's pages or slices of a reserved LMEM, without a copy. `EIO` from the first
    /// producer failure on, forever.
    pub(crate) fn read_to(&self, max: usize, sink: &mut dyn DataSink) -> Result<usize, Errno> {
        let mut g = lock(&self.reader);
        let r = &mut *g;
        if let Some(e) = r.failed {
            return Err(e);
        }
        // The packets (and the byte range of each) that make up the next `n` bytes.
        let mut plan: Vec<(OutPacket, u64, u64)> = Vec::new();
        let mut n = 0usize;
        while n < max {
            let (pkt, pos) = match r.cur.take() {
                Some(c) => c,
                None => match self.next_packet(r) {
                    Ok(Some(p)) => (p, 0),
                    Ok(None) => break,
                    // Pre-copy's temporary end: a short read, or ENOMSG if nothing came.
                    Err(Errno::ENOMSG) if n > 0 => break,
                    Err(Errno::ENOMSG) => return Err(Errno::ENOMSG),
                    Err(e) => {
                        r.failed = Some(e);
                        return Err(e);
                    }
                },
            };
            let k = (pkt.total() - pos).min((max - n) as u64);
            n += k as usize;
            plan.push((pkt, pos, pos + k));
        }
        let sent = sink.begin(n).and_then(|()| {
            plan.iter()
                .try_for_each(|(pkt, from, to)| self.emit(pkt, *from, *to, &mut r.scratch, sink))
        });
        if let Err(e) = sent {
            r.failed = Some(Errno::EIO);
            return Err(e);
        }
        if let Some((pkt, _, to)) = plan.pop() {
            if to < pkt.total() {
                r.cur = Some((pkt, to));
            }
        }
        Ok(n)
    }

    /// Hands bytes `[from, to)` of `pkt` (header included) to `sink`.
    fn emit(
        &self,
        pkt: &OutPacket,
        from: u64,
        to: u64,
        scratch: &mut Vec<u8>,
        sink: &mut dyn DataSink,
    ) -> Result<(), Errno> {
        let h = HEADER_LEN as u64;
        if from < h {
            sink.put(&pkt.header[from as usize..to.min(h) as usize])?;
        }
        if to <= h {
            return Ok(());
        }
        let (a, b) = (from.max(h) - h, to - h);
        match &pkt.payload {
            Payload::Bytes(v) => sink.put(&v[a as usize..b as usize]),
            Payload::Lmem(off) => {
                let lmem = self.hw.lmem().ok_or(Errno::EIO)?;
                let len = (b - a) as usize;
                // Best: the transport passes the LMEM's pages on (no copy at all); next: it
                // copies straight out of a reserved LMEM.
                if sink.put_file(lmem.fd(), off + a, len)? {
                    return Ok(());
                }
                if let Some(r) = lmem.with_slice(off + a, len, |s| sink.put(s))? {
                    return r;
                }
                // Lazy LMEM: read into the sink's own space when it has some, else through
                // a scratch buffer.
                let mut at = 0usize;
                while at < len {
                    let k = (len - at).min(SCRATCH);
                    let src = off + a + at as u64;
                    let read = |buf: &mut [u8]| {
                        lmem.read(src, buf).map_err(|e| {
                            tracing::error!(%e, "reading LMEM for the save stream failed");
                            Errno::EIO
                        })
                    };
                    if let Some(space) = sink.space(k) {
                        read(space)?;
                    } else {
                        scratch.resize(k.max(scratch.len()), 0);
                        read(&mut scratch[..k])?;
                        sink.put(&scratch[..k])?;
                    }
                    at += k;
                }
                Ok(())
            }
        }
    }

    fn next_packet(&self, r: &mut Reader) -> Result<Option<OutPacket>, Errno> {
        match r.phase {
            Phase::Descriptor => {
                r.phase = if self.params.pre_copy {
                    Phase::Initial
                } else {
                    Phase::Body
                };
                r.cur_class = Class::Initial;
                let size = (self.descriptor.len() - HEADER_LEN) as u64;
                let mut header = [0u8; HEADER_LEN];
                header.copy_from_slice(&self.descriptor[..HEADER_LEN]);
                Ok(Some(OutPacket {
                    header,
                    size,
                    payload: Payload::Bytes(self.descriptor[HEADER_LEN..].to_vec()),
                }))
            }
            Phase::Body => {
                // Deterministic order: strictly round-robin over the GTs that still have
                // packets, waiting for *that* GT's next one. Producers never wait on each other,
                // so this cannot deadlock, and the same VF state always gives the same bytes.
                let g = lock(&self.shared.rings);
                let gts = g.gts.len();
                let mut pick = None;
                let (mut g, _) = wait_until(&self.shared.cv, g, None, |rings| {
                    if rings.error.is_some() || rings.cancelled {
                        return true;
                    }
                    for k in 0..gts {
                        let gt = (r.next_gt + k) % gts;
                        let ring = &rings.gts[gt];
                        if !ring.q.is_empty() {
                            pick = Some(gt);
                            return true;
                        }
                        if !ring.done {
                            // This GT's next packet is still being produced: wait for it.
                            pick = None;
                            return false;
                        }
                    }
                    pick = None;
                    true
                });
                if let Some(e) = g.error {
                    return Err(e);
                }
                if g.cancelled {
                    return Err(Errno::ENODEV);
                }
                if let Some(gt) = pick {
                    r.next_gt = (gt + 1) % gts;
                    let p = g.gts[gt].q.pop_front();
                    drop(g);
                    self.shared.cv.notify_all();
                    r.cur_class = Class::Other;
                    return Ok(p);
                }
                drop(g);
                r.phase = if self.params.pre_copy {
                    Phase::FinalDirty
                } else {
                    Phase::Trailer
                };
                self.next_packet(r)
            }
            Phase::Initial => {
                let lmem = self.hw.lmem_size();
                if r.initial_off >= lmem {
                    r.phase = Phase::Dirty;
                    return self.next_packet(r);
                }
                let len = self.params.vram_chunk.min(lmem - r.initial_off);
                let p = vram_packet(r.initial_off, len);
                r.initial_off += len;
                r.cur_class = Class::Initial;
                Ok(Some(p))
            }
            Phase::Dirty | Phase::FinalDirty => {
                if let Some(p) = self.next_dirty(r) {
                    return Ok(Some(p));
                }
                match r.phase {
                    Phase::Dirty if r.stop_copy => r.phase = Phase::Body,
                    // Nothing dirty while the VF runs: the temporary end of the stream.
                    Phase::Dirty => return Err(Errno::ENOMSG),
                    _ => r.phase = Phase::Trailer,
                }
                self.next_packet(r)
            }
            Phase::Trailer => {
                r.cur_class = Class::Other;
                r.phase = Phase::End;
                Ok(Some(OutPacket {
                    header: super::wire::trailer(),
                    size: 0,
                    payload: Payload::Bytes(Vec::new()),
                }))
            }
            Phase::End => Ok(None),
        }
    }

    /// The next dirty VRAM packet: from the batch taken, or, when it is empty, from a new
    /// batch of marks (taken, so cleared, before the memory is read). `None` when nothing is
    /// dirty.
    fn next_dirty(&self, r: &mut Reader) -> Option<OutPacket> {
        if r.batch.is_empty() {
            r.batch.extend(self.hw.dirty().take());
        }
        let (s, e) = r.batch.pop_front()?;
        let end = e.min(s + self.params.vram_chunk);
        if end < e {
            r.batch.push_front((end, e));
        }
        r.cur_class = Class::Dirty;
        Some(vram_packet(s, end - s))
    }

    /// Whether the whole stream, trailer included, has been read.
    pub(crate) fn finished(&self) -> bool {
        let r = lock(&self.reader);
        r.phase == Phase::End && r.cur.is_none()
    }

    /// Stops the producers, drains the rings and joins the threads; a pre-copy save stops
    /// dirty tracking.
    pub(crate) fn cancel(&self) {
        if self.params.pre_copy {
            self.hw.dirty().stop();
        }
        {
            let mut g = lock(&self.shared.rings);
            g.cancelled = true;
            for r in &mut g.gts {
                r.q.clear();
            }
        }
        self.shared.cv.notify_all();
        self.join();
    }

    pub(crate) fn join(&self) {
        if self.params.pre_copy {
            self.hw.dirty().stop();
        }
        let producers = std::mem::take(&mut *lock(&self.producers));
        for p in producers {
            let _ = p.join();
        }
    }
}

impl Drop for SaveSession {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Pushes a packet into `gt`'s ring, waiting while it is full. `false` when cancelled.
fn push(shared: &Shared, gt: u8, p: OutPacket) -> bool {
    let g = lock(&shared.rings);
    let (mut g, _) = wait_until(&shared.cv, g, None, |r| {
        r.cancelled || r.gts[gt as usize].q.len() < RING_CAPACITY
    });
    if g.cancelled {
        return false;
    }
    g.gts[gt as usize].q.push_back(p);
    drop(g);
    shared.cv.notify_all();
    true
}

fn fail(shared: &Shared, e: Errno) {
    let mut g = lock(&shared.rings);
    g.error.get_or_insert(e);
    drop(g);
    shared.cv.notify_all();
}

/// Marks a GT's producer failed unless it finished: however its thread ends — an error, a
/// panic — the reader is told, so a save always ends in data or in an errno.
struct Finish<'a> {
    shared: &'a Shared,
    gt: u8,
    done: bool,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        if self.done {
            lock(&self.shared.rings).gts[self.gt as usize].done = true;
            self.shared.cv.notify_all();
        } else {
            fail(self.shared, Errno::EIO);
        }
    }
}

/// One GT's producer.
fn produce(hw: &VfHw, shared: &Shared, faults: &Faults, p: &SaveParams, gt: u8) {
    let mut finish = Finish {
        shared,
        gt,
        done: false,
    };
    match produce_packets(hw, shared, faults, p, gt) {
        Ok(()) => finish.done = true,
        Err(e) => tracing::error!(vfid = p.vfid, gt, %e, "save producer failed"),
    }
}

fn produce_packets(
    hw: &VfHw,
    shared: &Shared,
    faults: &Faults,
    p: &SaveParams,
    gt: u8,
) -> Result<(), Errno> {
    // GUC: the firmware's VF state (its size is queried first; 0 means no data).
    match faults.take(p.vfid, gt, GucOp::SaveState) {
        Some(Fault::Panic) => panic!("injected fault: the save producer of gt{gt} dies"),
        Some(f) => return Err(f.errno()),
        None => {}
    }
    if hw.guc_state_size(gt)? == 0 {
        return Err(Errno::ENODATA);
    }
    let guc = hw.guc_save(gt)?;
    if !push(shared, gt, OutPacket::bytes(PacketType::Guc, gt, 0, guc)) {
        return Ok(());
    }
    // MMIO: the four scratch registers of this GT.
    let flags = hw.sw_flags();
    let regs = if gt == PRIMARY_GT {
        flags.primary
    } else {
        flags.media
    };
    let mmio: Vec<u8> = regs.iter().flat_map(|r| r.to_le_bytes()).collect();
    if !push(shared, gt, OutPacket::bytes(PacketType::Mmio, gt, 0, mmio)) {
        return Ok(());
    }
    if gt != PRIMARY_GT {
        return Ok(());
    }
    // GGTT: the VF's PTEs with the VFID field cleared.
    let ptes: Vec<u8> = hw
        .ptes()
        .iter()
        .flat_map(|&pte| crate::hw::ggtt::pte_with_vfid(pte, 0).to_le_bytes())
        .collect();
    if !ptes.is_empty() && !push(shared, gt, OutPacket::bytes(PacketType::Ggtt, gt, 0, ptes)) {
        return Ok(());
    }
    // VRAM: views on LMEM, in chunks (a pre-copy save sends it from the reader instead).
    if p.pre_copy {
        return Ok(());
    }
    let size = hw.lmem_size();
    let mut off = 0u64;
    while off < size {
        let len = p.vram_chunk.min(size - off);
        if !push(shared, gt, vram_packet(off, len)) {
            return Ok(());
        }
        off += len;
    }
    Ok(())
}

/// A VRAM packet: a view on `len` bytes of LMEM at `off` (primary GT).
fn vram_packet(off: u64, len: u64) -> OutPacket {
    let h = HeaderRepr {
        kind: PacketType::Vram,
        tile: 0,
        gt: PRIMARY_GT,
        offset: off,
        size: len,
    };
    OutPacket {
        header: h.to_bytes(),
        size: len,
        payload: Payload::Lmem(off),
    }
}
