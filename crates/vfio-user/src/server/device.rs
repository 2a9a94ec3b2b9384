//! Device and region info, region access, IRQs, DMA mappings and reset.

use super::conn::{Conn, DmaMapping, Reply};
use super::options::MAX_DMA_MAPS;
use crate::msg::{
    self, DmaMap, DmaUnmap, IrqInfo, RegionAccess, RegionInfo, SetIrqs, SparseMmap,
    REGION_INFO_FLAG_CAPS,
};
use rustix::fd::OwnedFd;
use vfio_core::device::REGION_INFO_FLAG_MMAP;
use vfio_core::Errno;

impl Conn<'_> {
    pub(super) fn device_info(&mut self, req: msg::DeviceInfo) -> Reply {
        if (req.argsz as usize) < msg::DeviceInfo::LEN {
            return Err(Errno::EINVAL);
        }
        let i = self.dev.info();
        let reply = msg::DeviceInfo {
            argsz: msg::DeviceInfo::LEN as u32,
            flags: i.flags,
            num_regions: i.num_regions,
            num_irqs: i.num_irqs,
        };
        reply.emit(&mut self.out);
        Ok(None)
    }

    /// The region's info. A mappable region's reply carries a sparse-mmap capability (one
    /// area: the whole region), and its fd goes only with a reply the client has room for —
    /// capability included. A client that asks with a shorter `argsz` gets the fixed part with
    /// `argsz` set to the size needed and no fd, and asks again (as with the kernel's ioctl;
    /// a libvfio-user client that does not expect an fd would fail on one).
    pub(super) fn region_info(&mut self, req: RegionInfo) -> Reply {
        if (req.argsz as usize) < RegionInfo::LEN {
            return Err(Errno::EINVAL);
        }
        let info = self.dev.region_info(req.index)?;
        let mmap = if self.opts.mmap {
            self.dev.region_fd(req.index).map(|(_, off)| off)
        } else {
            None
        };
        let Some(offset) = mmap else {
            RegionInfo {
                argsz: RegionInfo::LEN as u32,
                flags: info.flags & !REGION_INFO_FLAG_MMAP,
                index: req.index,
                cap_offset: 0,
                size: info.size,
                offset: 0,
            }
            .emit(&mut self.out);
            return Ok(None);
        };
        let cap = SparseMmap {
            offset: 0,
            size: info.size,
        };
        let full = RegionInfo::LEN + SparseMmap::LEN;
        let whole = req.argsz as usize >= full;
        // The CAPS flag only with the capability itself: QEMU refuses a CAPS flag whose
        // cap_offset points outside the reply (the kernel sets it with cap_offset 0).
        let (caps, cap_offset) = if whole {
            (REGION_INFO_FLAG_CAPS, RegionInfo::LEN as u32)
        } else {
            (0, 0)
        };
        RegionInfo {
            argsz: full as u32,
            flags: info.flags | caps,
            index: req.index,
            cap_offset,
            size: info.size,
            offset,
        }
        .emit(&mut self.out);
        if !whole {
            return Ok(None);
        }
        cap.emit(&mut self.out);
        Ok(Some(req.index))
    }

    pub(super) fn irq_info(&mut self, req: IrqInfo) -> Reply {
        if (req.argsz as usize) < IrqInfo::LEN {
            return Err(Errno::EINVAL);
        }
        let i = self.dev.irq_info(req.index)?;
        let reply = IrqInfo {
            argsz: IrqInfo::LEN as u32,
            flags: i.flags,
            index: req.index,
            count: i.count,
        };
        reply.emit(&mut self.out);
        Ok(None)
    }

    /// Eventfds are accepted and closed: the device model raises no interrupts yet.
    pub(super) fn set_irqs(&mut self, req: SetIrqs) -> Reply {
        self.dev
            .set_irqs(req.index, req.flags, req.start, req.count)?;
        Ok(None)
    }

    /// The reply carries the fixed part, then the bytes read straight into it.
    pub(super) fn region_read(&mut self, req: RegionAccess) -> Reply {
        req.emit(&mut self.out);
        let at = self.out.len();
        self.out.resize(at + req.count as usize, 0);
        self.dev
            .region_read(req.region, req.offset, &mut self.out[at..])?;
        Ok(None)
    }

    pub(super) fn region_write(&mut self, req: RegionAccess, data: &[u8]) -> Reply {
        self.dev.region_write(req.region, req.offset, data)?;
        req.emit(&mut self.out);
        Ok(None)
    }

    pub(super) fn reset(&mut self) -> Reply {
        self.dev.reset()?;
        Ok(None)
    }

    pub(super) fn dma_map(&mut self, req: DmaMap, fd: Option<OwnedFd>) -> Reply {
        let end = req.address.checked_add(req.size).ok_or(Errno::EINVAL)?;
        if req.size == 0 || req.flags & !3 != 0 {
            return Err(Errno::EINVAL);
        }
        if self
            .dma
            .iter()
            .any(|m| req.address < m.address + m.size && m.address < end)
        {
            return Err(Errno::EEXIST);
        }
        if self.dma.len() >= MAX_DMA_MAPS {
            return Err(Errno::ENOSPC);
        }
        self.dma.push(DmaMapping {
            address: req.address,
            size: req.size,
            flags: req.flags,
            _fd: fd,
        });
        Ok(None)
    }

    pub(super) fn dma_unmap(&mut self, req: DmaUnmap) -> Reply {
        let i = self
            .dma
            .iter()
            .position(|m| m.address == req.address && m.size == req.size)
            .ok_or(Errno::EINVAL)?;
        let m = self.dma.remove(i);
        tracing::debug!(
            address = m.address,
            size = m.size,
            flags = m.flags,
            "DMA unmapped"
        );
        let reply = DmaUnmap {
            argsz: req.argsz.min(DmaUnmap::LEN as u32),
            ..req
        };
        reply.emit(&mut self.out);
        Ok(None)
    }
}
