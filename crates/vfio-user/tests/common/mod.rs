//! A small fake `VfioDevice` for testing the transport on its own: region 0 is 4 KiB of
//! memory, region 2 an 8 KiB memfd offered for mmap, and the migration state is region 0's
//! contents — saved as they are, restored on RESUMING → STOP when the whole 4 KiB arrived.
//! A restore can be made to fail after a given number of bytes.
#![allow(dead_code)]

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use vfio_core::device::{REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ, REGION_INFO_FLAG_WRITE};
use vfio_core::{
    DataSink, DataSource, DataStream, DeviceInfo, DeviceState, Errno, IrqInfo, MigrationCore,
    MigrationFlags, MigrationOps, RegionInfo, ResumeData, SaveData, VfioDevice,
};
use vfio_user::{Server, ServerOptions};

pub const MEM: usize = 4096;

type Shared = Arc<Mutex<Vec<u8>>>;

struct Ops {
    mem: Shared,
    incoming: Shared,
    flags: MigrationFlags,
    /// A restore fails once this many bytes have arrived.
    fail_after: Option<usize>,
}

struct Save {
    data: Vec<u8>,
    pos: usize,
}

impl SaveData for Save {
    fn read_to(&mut self, max: usize, sink: &mut dyn DataSink) -> Result<usize, Errno> {
        let n = max.min(self.data.len() - self.pos);
        sink.begin(n)?;
        sink.put(&self.data[self.pos..self.pos + n])?;
        self.pos += n;
        Ok(n)
    }
}

struct Resume {
    incoming: Shared,
    fail_after: Option<usize>,
}

impl ResumeData for Resume {
    fn write_from(&mut self, n: usize, source: &mut dyn DataSource) -> Result<(), Errno> {
        let mut inc = self.incoming.lock().unwrap();
        if self.fail_after.is_some_and(|limit| inc.len() + n > limit) {
            // Fails without taking the data: the transport must skip what is left of it.
            return Err(Errno::EIO);
        }
        let mut buf = vec![0u8; n];
        source.fill(&mut buf)?;
        if inc.len() + n > MEM {
            return Err(Errno::EINVAL);
        }
        inc.extend_from_slice(&buf);
        Ok(())
    }
}

impl MigrationOps for Ops {
    fn flags(&self) -> MigrationFlags {
        self.flags
    }
    fn step(&self, cur: DeviceState, next: DeviceState) -> Result<Option<DataStream>, Errno> {
        use DeviceState::*;
        Ok(match (cur, next) {
            (Stop, StopCopy) => Some(DataStream::Save(Box::new(Save {
                data: self.mem.lock().unwrap().clone(),
                pos: 0,
            }))),
            (Stop, Resuming) => {
                self.incoming.lock().unwrap().clear();
                Some(DataStream::Resume(Box::new(Resume {
                    incoming: self.incoming.clone(),
                    fail_after: self.fail_after,
                })))
            }
            (Resuming, Stop) => {
                let inc = self.incoming.lock().unwrap();
                if inc.len() != MEM {
                    return Err(Errno::EIO);
                }
                self.mem.lock().unwrap().copy_from_slice(&inc);
                None
            }
            _ => None,
        })
    }
    fn data_size(&self) -> Result<u64, Errno> {
        Ok(MEM as u64)
    }
}

/// The fake device.
pub struct Fake {
    pub mem: Shared,
    core: MigrationCore,
    memfd: OwnedFd,
    pub closes: Mutex<u32>,
}

impl Fake {
    pub fn new(flags: MigrationFlags, fail_after: Option<usize>) -> Arc<Fake> {
        let mem: Shared = Arc::new(Mutex::new(vec![0; MEM]));
        let ops = Ops {
            mem: mem.clone(),
            incoming: Arc::new(Mutex::new(Vec::new())),
            flags,
            fail_after,
        };
        let memfd =
            rustix::fs::memfd_create("fake-bar2", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        rustix::fs::ftruncate(&memfd, 8192).expect("ftruncate");
        Arc::new(Fake {
            mem,
            core: MigrationCore::new(Box::new(ops)).expect("core"),
            memfd,
            closes: Mutex::new(0),
        })
    }

    /// Region 0 filled with a pattern of `seed`.
    pub fn with_pattern(seed: u8) -> Arc<Fake> {
        let f = Fake::new(MigrationFlags::STOP_COPY | MigrationFlags::P2P, None);
        f.fill(seed);
        f
    }

    pub fn fill(&self, seed: u8) {
        let mut m = self.mem.lock().unwrap();
        for (i, b) in m.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.mem.lock().unwrap().clone()
    }

    pub fn state(&self) -> DeviceState {
        self.core.state()
    }
}

impl VfioDevice for Fake {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: 3,
            num_regions: 9,
            num_irqs: 5,
        }
    }
    fn region_info(&self, index: u32) -> Result<RegionInfo, Errno> {
        let rw = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE;
        let (flags, size) = match index {
            0 => (rw, MEM as u64),
            2 => (rw | REGION_INFO_FLAG_MMAP, 8192),
            i if i < 9 => (0, 0),
            _ => return Err(Errno::EINVAL),
        };
        Ok(RegionInfo { index, flags, size })
    }
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let m = self.mem.lock().unwrap();
        let at = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let src = m
            .get(at..at.saturating_add(buf.len()))
            .filter(|_| index == 0)
            .ok_or(Errno::EINVAL)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let mut m = self.mem.lock().unwrap();
        let at = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let dst = m
            .get_mut(at..at.saturating_add(data.len()))
            .filter(|_| index == 0)
            .ok_or(Errno::EINVAL)?;
        dst.copy_from_slice(data);
        Ok(())
    }
    fn region_fd(&self, index: u32) -> Option<(BorrowedFd<'_>, u64)> {
        (index == 2).then(|| (self.memfd.as_fd(), 0))
    }
    fn irq_info(&self, index: u32) -> Result<IrqInfo, Errno> {
        if index >= 5 {
            return Err(Errno::EINVAL);
        }
        Ok(IrqInfo {
            index,
            flags: 0,
            count: 0,
        })
    }
    fn set_irqs(&self, _: u32, _: u32, _: u32, _: u32) -> Result<(), Errno> {
        Ok(())
    }
    fn reset(&self) -> Result<(), Errno> {
        self.core.reset_done();
        Ok(())
    }
    fn open(&self) -> Result<(), Errno> {
        self.core.open();
        Ok(())
    }
    fn close(&self) {
        *self.closes.lock().unwrap() += 1;
        self.core.close();
    }
    fn migration(&self) -> Option<&MigrationCore> {
        Some(&self.core)
    }
}

/// A server for `dev` on a socket in `dir`, running until the returned guard drops.
pub struct Running {
    pub path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn serve(dir: &Path, name: &str, dev: Arc<Fake>, opts: ServerOptions) -> Running {
    let path = dir.join(name);
    let server = Server::bind(&path, dev, opts).expect("bind");
    let stop = Arc::new(AtomicBool::new(false));
    let thread = Some(server.spawn(stop.clone()));
    Running { path, stop, thread }
}
