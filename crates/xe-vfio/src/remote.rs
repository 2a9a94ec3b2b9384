//! A guest's view of a VF through a vfio-user connection (what a VMM forwards).

use std::sync::{Arc, Mutex};
use vfio_core::device::region;
use vfio_core::Errno;
use vfio_user::Client;
use xe_guest::GuestAccess;

/// Guest MMIO and LMEM accesses as REGION_READ/WRITE on a shared client.
#[derive(Clone)]
pub struct RemoteGuest(pub Arc<Mutex<Client>>);

impl RemoteGuest {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, vfio_user::ClientError>,
    ) -> Result<T, Errno> {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c).map_err(|e| e.errno())
    }
}

impl GuestAccess for RemoteGuest {
    fn mmio_read32(&self, off: u64) -> Result<u32, Errno> {
        self.with(|c| c.read32(region::BAR0, off))
    }
    fn mmio_write32(&self, off: u64, v: u32) -> Result<(), Errno> {
        self.with(|c| c.write32(region::BAR0, off, v))
    }
    fn mem_write(&self, _lmem: bool, addr: u64, data: &[u8]) -> Result<(), Errno> {
        self.with(|c| c.region_write(region::BAR2, addr, data))
    }
    fn mem_read(&self, _lmem: bool, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.with(|c| c.region_read(region::BAR2, addr, buf))
    }
}
