//! The PF's per-VF, per-GT control state machine (`xe_gt_sriov_pf_control.c`'s role).
//!
//! Every operation on a VF is run on every GT: the caller checks the GT's state, marks the
//! operation in progress, and hands a request to that GT's worker thread, which talks to the
//! (emulated) GuC and applies the effect on the VF's hardware; the caller waits for the answer
//! with a timeout. Preconditions and errno values follow upstream:
//!
//! | op | refused when | errno |
//! |---|---|---|
//! | pause | stopped / already paused (or saving, restoring) / pause in progress | `EPERM` / `ESTALE` / `EALREADY` |
//! | resume | save or restore in progress / not paused | `EBUSY` / `EPERM` |
//! | stop | already stopped | `ESTALE` |
//! | save, restore trigger | stopped or not paused / other session in progress | `EPERM` / `EBUSY` |
//! | any | an FLR in progress | `EBUSY` |
//!
//! A GuC that does not answer surfaces as `ETIMEDOUT` (timeouts: FLR 5 s, restore 20 s, others
//! 1 s by default); one that stays busy as `EBUSY`. An FLR always ends with the VF READY and its
//! runtime state cleared, whatever state it was in, so it is the way out of every failure.
//! Results over GTs: the first error is reported; a second, different one makes it `EUCLEAN`.

use crate::hw::guc::{Fault, Faults, GucOp};
use crate::hw::VfHw;
use crate::sync::{lock, wait_until};
use mig_io::Errno;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The control state of a VF on one GT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtlState {
    /// Running (the state after provisioning and after an FLR).
    Ready,
    /// Paused: no new work; MMIO still accepted.
    Paused,
    /// Stopped by the PF (after an error); only an FLR leaves it.
    Stopped,
    /// Paused, with a save in progress.
    Saving,
    /// Paused, with a restore in progress.
    Restoring,
}

#[derive(Clone, Copy, Debug)]
struct GtCtl {
    state: CtlState,
    /// The operation in progress on this GT, if any.
    wip: Option<GucOp>,
    /// FLR processing finished with this error.
    flr_error: Option<Errno>,
}

/// The control block of one VF.
#[derive(Debug)]
pub struct VfCtl {
    /// Lock: the per-GT control state. `cv` signals FLR completion.
    gts: Mutex<Vec<GtCtl>>,
    cv: Condvar,
}

impl VfCtl {
    pub(crate) fn new(gt_count: u8) -> Arc<VfCtl> {
        Arc::new(VfCtl {
            gts: Mutex::new(vec![
                GtCtl {
                    state: CtlState::Ready,
                    wip: None,
                    flr_error: None,
                };
                gt_count as usize
            ]),
            cv: Condvar::new(),
        })
    }

    /// The state of every GT.
    pub fn states(&self) -> Vec<CtlState> {
        lock(&self.gts).iter().map(|g| g.state).collect()
    }

    fn gt_count(&self) -> u8 {
        lock(&self.gts).len() as u8
    }
}

/// Timeouts of the PF's waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Pause, resume, stop, save/restore triggers.
    pub default: Duration,
    /// FLR processing on all GTs.
    pub flr: Duration,
    /// Restore completion.
    pub restore: Duration,
}

impl Timeouts {
    /// Short timeouts (1 s default, 2 s FLR and restore) for tests and tools that inject GuC
    /// faults and want a "no answer" to surface quickly.
    pub fn short() -> Timeouts {
        Timeouts {
            default: Duration::from_secs(1),
            flr: Duration::from_secs(2),
            restore: Duration::from_secs(2),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            default: Duration::from_secs(1),
            flr: Duration::from_secs(5),
            restore: Duration::from_secs(20),
        }
    }
}

/// A request to a GT worker.
struct Request {
    vfid: u32,
    gt: u8,
    op: GucOp,
    hw: Arc<VfHw>,
    ctl: Arc<VfCtl>,
    reply: Sender<Result<(), Errno>>,
}

/// One worker thread per GT.
pub(crate) struct GtWorker {
    tx: Option<Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

/// How many times the PF retries a busy GuC.
const BUSY_RETRIES: u32 = 3;

impl GtWorker {
    pub(crate) fn start(gt: u8, faults: Arc<Faults>) -> GtWorker {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name(format!("xe-pf-gt{gt}"))
            .spawn(move || {
                // Replies the GuC "never sent": kept so the callers time out instead of seeing
                // a disconnect.
                let mut lost = Vec::new();
                for req in rx {
                    if let Some(reply) = Self::handle(&faults, req) {
                        lost.push(reply);
                    }
                }
            })
            .ok();
        GtWorker {
            tx: Some(tx),
            thread,
        }
    }

    /// Handles one request; returns the reply channel if the GuC never answers.
    fn handle(faults: &Faults, req: Request) -> Option<Sender<Result<(), Errno>>> {
        let mut busy = 0;
        let result = loop {
            match faults.take(req.vfid, req.gt, req.op) {
                None => break Ok(()),
                Some(Fault::Busy) if busy < BUSY_RETRIES => {
                    busy += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Some(Fault::Busy) => break Err(Errno::EBUSY),
                Some(Fault::Timeout) => {
                    tracing::warn!(vfid = req.vfid, gt = req.gt, op = ?req.op, "GuC did not answer");
                    return Some(req.reply);
                }
                // A GT worker never dies: an injected panic is a failure here (only the save
                // producers really panic, see `migration::save`).
                Some(f @ (Fault::Fail(_) | Fault::Panic)) => break Err(f.errno()),
            }
        };
        if result.is_ok() {
            Self::apply(&req);
        }
        if req.op == GucOp::Flr {
            let mut gts = lock(&req.ctl.gts);
            if let Some(g) = gts.get_mut(req.gt as usize) {
                g.wip = None;
                match result {
                    Ok(()) => {
                        g.state = CtlState::Ready;
                        g.flr_error = None;
                    }
                    Err(e) => g.flr_error = Some(e),
                }
            }
            drop(gts);
            req.ctl.cv.notify_all();
        }
        let _ = req.reply.send(result);
        None
    }

    /// The effect of an acknowledged GuC operation on the VF's hardware.
    fn apply(req: &Request) {
        let primary = req.gt == crate::platform::PRIMARY_GT;
        match req.op {
            GucOp::Pause | GucOp::Stop if primary => req.hw.engine_pause(),
            GucOp::Resume if primary => req.hw.engine_resume(),
            GucOp::Flr if primary => {
                req.hw.flr_clear();
                req.hw.engine_resume();
            }
            _ => {}
        }
    }

    fn send(&self, req: Request) -> Result<(), Errno> {
        self.tx
            .as_ref()
            .ok_or(Errno::ENODEV)?
            .send(req)
            .map_err(|_| Errno::ENODEV)
    }
}

impl Drop for GtWorker {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Combines per-GT results: the first error, or `EUCLEAN` when a second GT fails differently.
pub(crate) fn combine(results: impl IntoIterator<Item = Result<(), Errno>>) -> Result<(), Errno> {
    let mut first: Option<Errno> = None;
    for r in results {
        if let Err(e) = r {
            match first {
                None => first = Some(e),
                Some(f) if f != e => return Err(Errno::EUCLEAN),
                Some(_) => {}
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// The control side of the PF: what the exported calls use.
pub(crate) struct Control<'a> {
    pub(crate) workers: &'a [GtWorker],
    pub(crate) timeouts: Timeouts,
    pub(crate) vfid: u32,
    pub(crate) hw: &'a Arc<VfHw>,
    pub(crate) ctl: &'a Arc<VfCtl>,
}

impl Control<'_> {
    fn call(&self, gt: u8, op: GucOp, timeout: Duration) -> Result<(), Errno> {
        let worker = self.workers.get(gt as usize).ok_or(Errno::EINVAL)?;
        let (tx, rx) = mpsc::channel();
        worker.send(Request {
            vfid: self.vfid,
            gt,
            op,
            hw: self.hw.clone(),
            ctl: self.ctl.clone(),
            reply: tx,
        })?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(Errno::ETIMEDOUT),
            Err(RecvTimeoutError::Disconnected) => Err(Errno::EIO),
        }
    }

    /// Runs `op` on every GT. The preconditions of every GT are checked, and the operation
    /// marked in progress on all of them, under one lock before any GuC call: a refused request
    /// changes nothing, and two concurrent requests cannot interleave GT by GT. `done` is the
    /// state after success; `until_error` stops at the first failing GT (save/restore).
    fn run(
        &self,
        op: GucOp,
        check: impl Fn(&GtCtl) -> Result<(), Errno>,
        done: CtlState,
        timeout: Duration,
        until_error: bool,
    ) -> Result<(), Errno> {
        {
            let mut gts = lock(&self.ctl.gts);
            for g in gts.iter() {
                if g.wip == Some(GucOp::Flr) {
                    return Err(Errno::EBUSY);
                }
                check(g)?;
            }
            for g in gts.iter_mut() {
                g.wip = Some(op);
            }
        }
        let mut results = Vec::new();
        for gt in 0..self.ctl.gt_count() {
            let r = self.call(gt, op, timeout);
            let mut gts = lock(&self.ctl.gts);
            if let Some(g) = gts.get_mut(gt as usize) {
                if g.wip == Some(op) {
                    g.wip = None;
                    if r.is_ok() {
                        g.state = done;
                    }
                }
            }
            if let Err(e) = r {
                tracing::warn!(vfid = self.vfid, gt, ?op, %e, "VF control operation failed");
            }
            results.push(r);
            if until_error && results.last().is_some_and(|r| r.is_err()) {
                break;
            }
        }
        // GTs not reached (after an error) are no longer in progress.
        for g in lock(&self.ctl.gts).iter_mut() {
            if g.wip == Some(op) {
                g.wip = None;
            }
        }
        combine(results)
    }

    pub(crate) fn pause(&self) -> Result<(), Errno> {
        let check = |g: &GtCtl| match (g.state, g.wip) {
            (CtlState::Stopped, _) => Err(Errno::EPERM),
            (_, Some(GucOp::Pause)) => Err(Errno::EALREADY),
            (CtlState::Paused | CtlState::Saving | CtlState::Restoring, _) => Err(Errno::ESTALE),
            (_, Some(_)) => Err(Errno::EBUSY),
            (CtlState::Ready, None) => Ok(()),
        };
        self.run(
            GucOp::Pause,
            check,
            CtlState::Paused,
            self.timeouts.default,
            false,
        )
    }

    pub(crate) fn resume(&self) -> Result<(), Errno> {
        let check = |g: &GtCtl| match (g.state, g.wip) {
            (CtlState::Saving | CtlState::Restoring, _) | (_, Some(_)) => Err(Errno::EBUSY),
            (CtlState::Paused, None) => Ok(()),
            _ => Err(Errno::EPERM),
        };
        self.run(
            GucOp::Resume,
            check,
            CtlState::Ready,
            self.timeouts.default,
            false,
        )
    }

    pub(crate) fn stop(&self) -> Result<(), Errno> {
        let check = |g: &GtCtl| match g.state {
            CtlState::Stopped => Err(Errno::ESTALE),
            _ => Ok(()),
        };
        self.run(
            GucOp::Stop,
            check,
            CtlState::Stopped,
            self.timeouts.default,
            false,
        )
    }

    fn session_check(g: &GtCtl) -> Result<(), Errno> {
        match (g.state, g.wip) {
            (CtlState::Saving | CtlState::Restoring, _) | (_, Some(_)) => Err(Errno::EBUSY),
            (CtlState::Paused, None) => Ok(()),
            _ => Err(Errno::EPERM),
        }
    }

    pub(crate) fn save_trigger(&self) -> Result<(), Errno> {
        let t = self.timeouts.default;
        self.run(GucOp::Save, Self::session_check, CtlState::Saving, t, true)
    }

    pub(crate) fn restore_trigger(&self) -> Result<(), Errno> {
        let t = self.timeouts.default;
        self.run(
            GucOp::Restore,
            Self::session_check,
            CtlState::Restoring,
            t,
            true,
        )
    }

    /// Whether the VF is running or paused on every GT, with no session and no operation in
    /// progress: what a pre-copy save needs to open (from RUNNING or RUNNING_P2P). `EBUSY`
    /// with an operation or session in progress, `EPERM` for a stopped VF.
    pub(crate) fn check_live(&self) -> Result<(), Errno> {
        for g in lock(&self.ctl.gts).iter() {
            match (g.state, g.wip) {
                (CtlState::Saving | CtlState::Restoring, _) | (_, Some(_)) => {
                    return Err(Errno::EBUSY)
                }
                (CtlState::Ready | CtlState::Paused, None) => {}
                (CtlState::Stopped, None) => return Err(Errno::EPERM),
            }
        }
        Ok(())
    }

    /// Ends a save or restore session on every GT that is in it: back to Paused.
    pub(crate) fn session_finish(&self) {
        for g in lock(&self.ctl.gts).iter_mut() {
            if matches!(g.state, CtlState::Saving | CtlState::Restoring) {
                g.state = CtlState::Paused;
            }
        }
    }

    /// The hardware FLR event: starts FLR processing on every GT's worker (asynchronously).
    pub(crate) fn flr_start(&self) -> Result<(), Errno> {
        let gt_count = self.ctl.gt_count();
        {
            let mut gts = lock(&self.ctl.gts);
            for g in gts.iter_mut() {
                g.wip = Some(GucOp::Flr);
                g.flr_error = None;
            }
        }
        for gt in 0..gt_count {
            let (tx, _rx) = mpsc::channel();
            let worker = self.workers.get(gt as usize).ok_or(Errno::EINVAL)?;
            worker.send(Request {
                vfid: self.vfid,
                gt,
                op: GucOp::Flr,
                hw: self.hw.clone(),
                ctl: self.ctl.clone(),
                reply: tx,
            })?;
        }
        Ok(())
    }

    /// Waits until FLR processing finished on every GT: `ETIMEDOUT` after the FLR timeout, `EIO`
    /// if it failed. Returns at once when no FLR is in progress.
    pub(crate) fn flr_wait(&self) -> Result<(), Errno> {
        let deadline = Instant::now() + self.timeouts.flr;
        let g = lock(&self.ctl.gts);
        let (mut g, done) = wait_until(&self.ctl.cv, g, Some(deadline), |gts| {
            gts.iter().all(|x| x.wip != Some(GucOp::Flr))
        });
        if !done {
            // Give up on this FLR; a later one can still run.
            for x in g.iter_mut() {
                if x.wip == Some(GucOp::Flr) {
                    x.wip = None;
                }
            }
            return Err(Errno::ETIMEDOUT);
        }
        if g.iter().any(|x| x.flr_error.is_some()) {
            return Err(Errno::EIO);
        }
        Ok(())
    }
}
