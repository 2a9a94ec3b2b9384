//! Model-checked locking of `MigrationCore`: shuttle explores thread interleavings of the real
//! code (bounded exhaustive DFS, then randomized PCT schedules for depth).
//! Run with `cargo test -p vfio-core --features shuttle --release --test model`.
#![cfg(feature = "shuttle")]

use shuttle::sync::mpsc;
use shuttle::sync::{Arc, Mutex};
use shuttle::thread;
use vfio_core::{
    DataSink, DataStream, DeviceState as S, Errno, MigStream, MigrationCore, MigrationFlags,
    MigrationOps, ResetOutcome, SaveData,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Step(S, S),
    Reset,
}

/// Records every arc and reset. The log is only touched under the core's state mutex, so a
/// std mutex is enough (it is never contended).
#[derive(Clone, Default)]
struct Mock {
    log: std::sync::Arc<std::sync::Mutex<Vec<Ev>>>,
    /// Hook for test (b): runs inside the arc, with the state mutex held.
    in_step: Option<std::sync::Arc<dyn Fn(S, S) + Send + Sync>>,
}

struct Bytes(u8);
impl SaveData for Bytes {
    fn read_to(&mut self, max: usize, sink: &mut dyn DataSink) -> Result<usize, Errno> {
        if self.0 == 0 || max == 0 {
            sink.begin(0)?;
            return Ok(0);
        }
        self.0 -= 1;
        sink.begin(1)?;
        sink.put(&[0xa5])?;
        Ok(1)
    }
}

impl MigrationOps for Mock {
    fn flags(&self) -> MigrationFlags {
        MigrationFlags::STOP_COPY | MigrationFlags::P2P
    }
    fn step(&self, cur: S, next: S) -> Result<Option<DataStream>, Errno> {
        self.log.lock().unwrap().push(Ev::Step(cur, next));
        if let Some(h) = &self.in_step {
            h(cur, next);
        }
        Ok(match (cur, next) {
            (S::Stop, S::StopCopy) => Some(DataStream::Save(Box::new(Bytes(2)))),
            _ => None,
        })
    }
    fn data_size(&self) -> Result<u64, Errno> {
        Ok(2)
    }
    fn reset_applied(&self) {
        self.log.lock().unwrap().push(Ev::Reset);
    }
}

/// Explores `f`: every schedule DFS reaches within a budget, then PCT schedules (which find
/// bugs of depth ≤ 3 with a provable probability per run).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let f = std::sync::Arc::new(f);
    let g = f.clone();
    shuttle::check_dfs(move || g(), Some(20_000));
    shuttle::check_pct(move || f(), 20_000, 3);
}

/// (a) One thread walks STOP → STOP_COPY → STOP, one reads the stream, one calls `reset_done`.
/// No interleaving deadlocks (shuttle reports one if it exists); at the end the stream is disabled
/// and the state is RUNNING whenever the reset was the last thing to happen — or STOP when the
/// walker's last request came after the reset (a later request legitimately moves a reset device
/// again; the reset is never lost: it appears exactly once in the log).
#[test]
fn walk_read_and_reset_never_deadlock() {
    model(|| {
        let mock = Mock::default();
        let log = mock.log.clone();
        let core = Arc::new(MigrationCore::new(Box::new(mock)).unwrap());
        core.set_state(S::Stop).unwrap();
        log.lock().unwrap().clear();

        let slot: Arc<Mutex<Option<MigStream>>> = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel::<Option<MigStream>>();

        let walker = {
            let (core, slot) = (core.clone(), slot.clone());
            thread::spawn(move || {
                // After a concurrent reset the device may be RUNNING: the walk then goes
                // RUNNING → RUNNING_P2P → STOP → STOP_COPY, which is still valid.
                let s = core.set_state(S::StopCopy).unwrap();
                *slot.lock().unwrap() = s.clone();
                tx.send(s).unwrap();
                core.set_state(S::Stop).unwrap();
            })
        };
        let reader = thread::spawn(move || {
            if let Some(MigStream::Save(s)) = rx.recv().unwrap() {
                let mut b = [0u8; 1];
                match s.read(&mut b) {
                    Ok(n) => assert!(n <= 1),
                    Err(e) => assert_eq!(e, Errno::ENODEV),
                }
            }
        });
        let resetter = {
            let core = core.clone();
            thread::spawn(move || {
                core.reset_done();
            })
        };
        walker.join().unwrap();
        reader.join().unwrap();
        resetter.join().unwrap();

        if let Some(MigStream::Save(s)) = slot.lock().unwrap().clone() {
            assert!(s.is_disabled());
        }
        assert!(core.current_stream().is_none());
        let log = log.lock().unwrap().clone();
        assert_eq!(
            log.iter().filter(|e| **e == Ev::Reset).count(),
            1,
            "{log:?}"
        );
        match log.last() {
            Some(Ev::Reset) => assert_eq!(core.state(), S::Running),
            Some(Ev::Step(_, S::Stop)) => assert_eq!(core.state(), S::Stop),
            other => panic!("unexpected last event {other:?}"),
        }
    });
}

/// (b) `reset_done` from another thread while the walker holds the state mutex (inside an arc)
/// is deferred, and applied when the walker unlocks — before a third thread's state change can
/// observe the state: its arcs, if they come after, start from RUNNING.
#[test]
fn deferred_reset_applied_before_anyone_else_sees_the_state() {
    model(|| {
        // The walker, inside its RUNNING_P2P → STOP arc (state mutex held), tells the resetter
        // to go and waits until `reset_done` has returned.
        let (in_arc_tx, in_arc_rx) = mpsc::channel::<()>();
        let (reset_tx, reset_rx) = mpsc::channel::<()>();
        let reset_rx = std::sync::Mutex::new(Some(reset_rx));
        let in_arc_tx = std::sync::Mutex::new(Some(in_arc_tx));
        let outcome = Arc::new(Mutex::new(None));
        let mut mock = Mock::default();
        mock.in_step = Some(std::sync::Arc::new(move |cur, next| {
            if (cur, next) == (S::RunningP2p, S::Stop) {
                if let Some(tx) = in_arc_tx.lock().unwrap().take() {
                    tx.send(()).unwrap();
                    let rx = reset_rx.lock().unwrap().take().unwrap();
                    rx.recv().unwrap();
                }
            }
        }));
        let log = mock.log.clone();
        let core = Arc::new(MigrationCore::new(Box::new(mock)).unwrap());

        let walker = {
            let core = core.clone();
            thread::spawn(move || core.set_state(S::Stop).unwrap())
        };
        let resetter = {
            let (core, outcome) = (core.clone(), outcome.clone());
            thread::spawn(move || {
                in_arc_rx.recv().unwrap();
                *outcome.lock().unwrap() = Some(core.reset_done());
                reset_tx.send(()).unwrap();
            })
        };
        let other = {
            let core = core.clone();
            thread::spawn(move || {
                let _ = core.set_state(S::RunningP2p);
            })
        };
        walker.join().unwrap();
        resetter.join().unwrap();
        other.join().unwrap();

        assert_eq!(*outcome.lock().unwrap(), Some(ResetOutcome::Deferred));
        let log = log.lock().unwrap().clone();
        // The walker's arc that was interrupted is immediately followed by the reset.
        let i = log
            .iter()
            .position(|e| *e == Ev::Step(S::RunningP2p, S::Stop))
            .expect("walker's arc ran");
        assert_eq!(log.get(i + 1), Some(&Ev::Reset), "{log:?}");
        // Whatever the other thread did after that started from the reset state.
        if let Some(Ev::Step(from, _)) = log.get(i + 2) {
            assert_eq!(*from, S::Running, "{log:?}");
        }
    });
}
