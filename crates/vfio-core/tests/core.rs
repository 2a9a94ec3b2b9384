//! `MigrationCore` with a recording mock driver: walks, failures, refusals, stream rules.
#![cfg(not(feature = "shuttle"))]

use std::sync::{Arc, Mutex};
use vfio_core::{
    DataSink, DataSource, DataStream, DeviceState as S, Errno, MigrationCore, MigrationFlags,
    MigrationOps, ResetOutcome, ResumeData, SaveData,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Step(S, S),
    Refused(S, S, Errno),
    Reset,
}

#[derive(Default)]
struct Log {
    events: Vec<Ev>,
    fail_on: Option<(S, S, Errno)>,
    /// Arcs that (wrongly) open a stream, to test mid-path release.
    extra_stream_on: Option<(S, S)>,
    written: Vec<u8>,
}

#[derive(Clone)]
struct Mock {
    flags: MigrationFlags,
    log: Arc<Mutex<Log>>,
    dropped: Arc<Mutex<u32>>,
}

struct Src {
    data: Vec<u8>,
    pos: usize,
    dropped: Arc<Mutex<u32>>,
}
impl SaveData for Src {
    fn read_to(&mut self, max: usize, sink: &mut dyn DataSink) -> Result<usize, Errno> {
        let n = max.min(self.data.len() - self.pos);
        sink.begin(n)?;
        sink.put(&self.data[self.pos..self.pos + n])?;
        self.pos += n;
        Ok(n)
    }
}
impl Drop for Src {
    fn drop(&mut self) {
        *self.dropped.lock().unwrap() += 1;
    }
}
struct Sink(Arc<Mutex<Log>>);
impl ResumeData for Sink {
    fn write_from(&mut self, n: usize, source: &mut dyn DataSource) -> Result<(), Errno> {
        let mut buf = vec![0; n];
        source.fill(&mut buf)?;
        self.0.lock().unwrap().written.extend_from_slice(&buf);
        Ok(())
    }
}

impl MigrationOps for Mock {
    fn flags(&self) -> MigrationFlags {
        self.flags
    }
    fn step(&self, cur: S, next: S) -> Result<Option<DataStream>, Errno> {
        let mut l = self.log.lock().unwrap();
        l.events.push(Ev::Step(cur, next));
        if let Some((a, b, e)) = l.fail_on {
            if (a, b) == (cur, next) {
                return Err(e);
            }
        }
        let save = || {
            DataStream::Save(Box::new(Src {
                data: (0..100u8).collect(),
                pos: 0,
                dropped: self.dropped.clone(),
            }))
        };
        Ok(match (cur, next) {
            (S::Stop, S::StopCopy) | (S::Running, S::PreCopy) => Some(save()),
            (S::Stop, S::Resuming) => Some(DataStream::Resume(Box::new(Sink(self.log.clone())))),
            arc if l.extra_stream_on == Some(arc) => Some(save()),
            _ => None,
        })
    }
    fn data_size(&self) -> Result<u64, Errno> {
        Ok(100)
    }
    fn refused(&self, cur: S, new: S, err: Errno) {
        self.log
            .lock()
            .unwrap()
            .events
            .push(Ev::Refused(cur, new, err));
    }
    fn reset_applied(&self) {
        self.log.lock().unwrap().events.push(Ev::Reset);
    }
}

fn core(flags: MigrationFlags) -> (MigrationCore, Mock) {
    let mock = Mock {
        flags,
        log: Default::default(),
        dropped: Default::default(),
    };
    (MigrationCore::new(Box::new(mock.clone())).unwrap(), mock)
}

fn p2p() -> MigrationFlags {
    MigrationFlags::STOP_COPY | MigrationFlags::P2P
}

fn events(m: &Mock) -> Vec<Ev> {
    std::mem::take(&mut m.log.lock().unwrap().events)
}

#[test]
fn running_to_stop_goes_through_p2p() {
    let (c, m) = core(p2p());
    assert_eq!(c.state(), S::Running);
    assert!(c.set_state(S::Stop).unwrap().is_none());
    assert_eq!(c.state(), S::Stop);
    assert_eq!(
        events(&m),
        vec![
            Ev::Step(S::Running, S::RunningP2p),
            Ev::Step(S::RunningP2p, S::Stop)
        ]
    );
    // Same state: no arc at all.
    assert!(c.set_state(S::Stop).unwrap().is_none());
    assert!(events(&m).is_empty());
}

#[test]
fn failure_mid_walk_leaves_last_state_reached() {
    let (c, m) = core(p2p());
    m.log.lock().unwrap().fail_on = Some((S::RunningP2p, S::Stop, Errno::ETIMEDOUT));
    assert_eq!(c.set_state(S::StopCopy).unwrap_err(), Errno::ETIMEDOUT);
    assert_eq!(c.state(), S::RunningP2p);
    assert_eq!(
        events(&m),
        vec![
            Ev::Step(S::Running, S::RunningP2p),
            Ev::Step(S::RunningP2p, S::Stop)
        ]
    );
}

#[test]
fn refused_request_calls_hook() {
    let (c, m) = core(p2p());
    c.set_state(S::Stop).unwrap();
    let s = c.set_state(S::StopCopy).unwrap();
    assert!(s.is_some());
    events(&m);
    // PRE_COPY is not supported by this device.
    assert_eq!(c.set_state(S::PreCopy).unwrap_err(), Errno::EINVAL);
    // ERROR can never be requested.
    assert_eq!(c.set_state(S::Error).unwrap_err(), Errno::EINVAL);
    assert_eq!(
        events(&m),
        vec![
            Ev::Refused(S::StopCopy, S::PreCopy, Errno::EINVAL),
            Ev::Refused(S::StopCopy, S::Error, Errno::EINVAL)
        ]
    );
    assert_eq!(c.state(), S::StopCopy);

    // STOP_COPY → PRE_COPY is refused even when PRE_COPY exists.
    let (c, m) = core(p2p() | MigrationFlags::PRE_COPY);
    c.set_state(S::Stop).unwrap();
    c.set_state(S::StopCopy).unwrap();
    events(&m);
    assert_eq!(c.set_state(S::PreCopy).unwrap_err(), Errno::EINVAL);
    assert_eq!(
        events(&m),
        vec![Ev::Refused(S::StopCopy, S::PreCopy, Errno::EINVAL)]
    );
}

#[test]
fn mid_path_stream_is_released_with_einval() {
    let (c, m) = core(p2p());
    c.set_state(S::Stop).unwrap();
    m.log.lock().unwrap().extra_stream_on = Some((S::Stop, S::RunningP2p));
    assert_eq!(c.set_state(S::Running).unwrap_err(), Errno::EINVAL);
    // The arc happened; its stream was dropped; the state is the one reached.
    assert_eq!(c.state(), S::RunningP2p);
    assert_eq!(*m.dropped.lock().unwrap(), 1);
    assert!(c.current_stream().is_none());
}

#[test]
fn save_stream_reads_then_is_disabled_on_leaving_stop_copy() {
    let (c, m) = core(p2p());
    c.set_state(S::Stop).unwrap();
    let s = c
        .set_state(S::StopCopy)
        .unwrap()
        .unwrap()
        .into_save()
        .unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(s.read(&mut buf).unwrap(), 64);
    assert_eq!(buf[63], 63);
    assert_eq!(s.read_at(0, &mut buf).unwrap_err(), Errno::ESPIPE);
    assert_eq!(s.read(&mut buf).unwrap(), 36);
    assert_eq!(s.read(&mut buf).unwrap(), 0, "end of data");
    c.set_state(S::Stop).unwrap();
    assert!(s.is_disabled());
    assert_eq!(s.read(&mut buf).unwrap_err(), Errno::ENODEV);
    assert_eq!(*m.dropped.lock().unwrap(), 1, "data source released");
}

#[test]
fn resume_stream_is_disabled_on_leaving_resuming() {
    let (c, m) = core(p2p());
    c.set_state(S::Stop).unwrap();
    let r = c
        .set_state(S::Resuming)
        .unwrap()
        .unwrap()
        .into_resume()
        .unwrap();
    assert_eq!(r.write(b"hello"), Ok(5));
    assert_eq!(r.write_at(3, b"x").unwrap_err(), Errno::ESPIPE);
    c.set_state(S::Running).unwrap();
    assert_eq!(r.write(b"late").unwrap_err(), Errno::ENODEV);
    assert_eq!(m.log.lock().unwrap().written, b"hello");
    assert_eq!(
        events(&m)[2..],
        [
            Ev::Step(S::Stop, S::Resuming),
            Ev::Step(S::Resuming, S::Stop),
            Ev::Step(S::Stop, S::RunningP2p),
            Ev::Step(S::RunningP2p, S::Running)
        ]
    );
}

#[test]
fn close_and_reset_disable_streams_and_return_to_running() {
    let (c, m) = core(p2p());
    c.set_state(S::Stop).unwrap();
    let s = c
        .set_state(S::StopCopy)
        .unwrap()
        .unwrap()
        .into_save()
        .unwrap();
    c.close();
    assert_eq!(c.state(), S::Running);
    assert!(s.is_disabled());

    c.set_state(S::Stop).unwrap();
    let r = c
        .set_state(S::Resuming)
        .unwrap()
        .unwrap()
        .into_resume()
        .unwrap();
    assert_eq!(c.reset_done(), ResetOutcome::Applied);
    assert_eq!(c.state(), S::Running);
    assert_eq!(r.write(b"x").unwrap_err(), Errno::ENODEV);
    assert_eq!(events(&m).last(), Some(&Ev::Reset));
}

#[test]
fn reset_done_while_locked_is_applied_at_unlock() {
    let (c, m) = core(p2p());
    c.set_state(S::Stop).unwrap();
    let s = c
        .set_state(S::StopCopy)
        .unwrap()
        .unwrap()
        .into_save()
        .unwrap();
    {
        let mut g = c.lock();
        assert_eq!(c.reset_done(), ResetOutcome::Deferred);
        // Still held: nothing applied yet.
        assert_eq!(g.state(), S::StopCopy);
        assert!(!s.is_disabled());
    }
    assert!(s.is_disabled());
    assert_eq!(c.state(), S::Running);
    assert_eq!(events(&m).last(), Some(&Ev::Reset));
}

#[test]
fn data_size_and_flags() {
    let (c, _) = core(p2p());
    assert_eq!(c.data_size().unwrap(), 100);
    assert_eq!(c.flags(), p2p());
    let bad = Mock {
        flags: MigrationFlags::P2P,
        log: Default::default(),
        dropped: Default::default(),
    };
    assert_eq!(
        MigrationCore::new(Box::new(bad)).unwrap_err(),
        Errno::EINVAL
    );
}
