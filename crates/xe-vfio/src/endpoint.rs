//! The devices the orchestrator drives: a VF served over vfio-user (a socket path), or a kernel
//! VFIO device (`vfio:PATH`, a PCI address or an mdev UUID). `migrate`, `save` and `restore`
//! see both through [`Endpoint`]: the migration uAPI v2 and nothing device-specific.

use crate::kernel::KernelDevice;
use crate::util::CliError;
use std::path::{Path, PathBuf};
use thiserror::Error;
use vfio_core::device::region;
use vfio_core::{DeviceState, Errno, MigrationFlags};
use vfio_user::{Client, ClientError};

/// A failure of an endpoint operation.
#[derive(Debug, Error)]
pub enum EpError {
    #[error(transparent)]
    User(#[from] ClientError),
    /// A kernel ioctl or data-fd read/write failed with `errno`.
    #[error("{op} failed: {errno}")]
    Kernel { op: &'static str, errno: Errno },
}

impl EpError {
    pub fn errno(&self) -> Errno {
        match self {
            EpError::User(e) => e.errno(),
            EpError::Kernel { errno, .. } => *errno,
        }
    }

    /// Whether the endpoint is still usable as it is. A kernel device always is (an ioctl
    /// either happened or did not); a vfio-user connection is not after a socket or protocol
    /// error (see [`ClientError::in_step`]).
    pub fn in_step(&self) -> bool {
        match self {
            EpError::User(e) => e.in_step(),
            EpError::Kernel { .. } => true,
        }
    }
}

/// A device that implements VFIO migration v2, however it is reached.
pub trait Endpoint {
    fn migration_flags(&mut self) -> Result<MigrationFlags, EpError>;
    fn device_state(&mut self) -> Result<DeviceState, EpError>;
    /// One requested state (the kernel walks several arcs for one request; callers here ask
    /// for one arc at a time, see `ops`).
    fn set_device_state(&mut self, s: DeviceState) -> Result<(), EpError>;
    /// `MIG_DATA_SIZE`: the estimated stop-copy length.
    fn mig_data_size(&mut self) -> Result<u64, EpError>;
    /// `(initial_bytes, dirty_bytes)` in PRE_COPY or PRE_COPY_P2P.
    fn precopy_info(&mut self) -> Result<(u64, u64), EpError>;
    /// Reads the next piece of the stream into `buf`; 0 at its end. In PRE_COPY, `ENOMSG`
    /// (or 0 on a kernel device) when no data is ready now.
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, EpError>;
    /// Writes all of `data` into the stream of a device in RESUMING.
    fn write_data(&mut self, data: &[u8]) -> Result<(), EpError>;
    fn reset(&mut self) -> Result<(), EpError>;
    /// Makes the endpoint usable again after an error that was not `in_step`.
    fn reconnect(&mut self) -> Result<(), EpError>;
    /// The largest piece worth reading or writing at once.
    fn chunk(&self) -> usize;
    /// The vfio-user client behind this endpoint, for the spliced relay between two of them.
    fn client(&mut self) -> Option<&mut Client> {
        None
    }
    /// Reads `buf.len()` bytes at `off` of region `index`.
    fn region_read(&mut self, index: u32, off: u64, buf: &mut [u8]) -> Result<(), EpError>;
    /// The size of region `index` (0 if the device has none).
    fn region_size(&mut self, index: u32) -> Result<u64, EpError>;

    /// What a destination must match: the PCI vendor, device and revision (config space), the
    /// size of BAR2 (an Xe VF's LMEM), and the migration flags.
    fn identity(&mut self) -> Result<mig_net::VfInfo, EpError> {
        let mut c = [0u8; 12];
        self.region_read(region::CONFIG, 0, &mut c)?;
        Ok(mig_net::VfInfo {
            vendor: u16::from_le_bytes([c[0], c[1]]),
            device: u16::from_le_bytes([c[2], c[3]]),
            revision: c[8],
            mig_flags: self.migration_flags()?.bits() as u32,
            bar2: self.region_size(region::BAR2)?,
        })
    }
}

impl Endpoint for Client {
    fn migration_flags(&mut self) -> Result<MigrationFlags, EpError> {
        Ok(Client::migration_flags(self)?)
    }
    fn device_state(&mut self) -> Result<DeviceState, EpError> {
        Ok(Client::device_state(self)?)
    }
    fn set_device_state(&mut self, s: DeviceState) -> Result<(), EpError> {
        Ok(Client::set_device_state(self, s)?)
    }
    fn mig_data_size(&mut self) -> Result<u64, EpError> {
        Ok(Client::mig_data_size(self)?)
    }
    fn precopy_info(&mut self) -> Result<(u64, u64), EpError> {
        let (_, initial, dirty) = Client::precopy_info(self, 0)?;
        Ok((initial, dirty))
    }
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, EpError> {
        Ok(self.mig_data_read(buf)?)
    }
    fn write_data(&mut self, data: &[u8]) -> Result<(), EpError> {
        Ok(self.mig_data_write(data)?)
    }
    fn reset(&mut self) -> Result<(), EpError> {
        Ok(Client::reset(self)?)
    }
    fn reconnect(&mut self) -> Result<(), EpError> {
        Ok(Client::reconnect(self)?)
    }
    fn chunk(&self) -> usize {
        self.max_xfer() as usize
    }
    fn client(&mut self) -> Option<&mut Client> {
        Some(self)
    }
    fn region_read(&mut self, index: u32, off: u64, buf: &mut [u8]) -> Result<(), EpError> {
        Ok(Client::region_read(self, index, off, buf)?)
    }
    fn region_size(&mut self, index: u32) -> Result<u64, EpError> {
        Ok(self.region_info(index)?.0.size)
    }
}

/// One piece of a migration stream, as [`StreamReader::read`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// This many bytes were read.
    Data(usize),
    /// The end: of the stream, or (in a pre-copy round) of what is ready now.
    End,
}

/// Reads a device's migration stream piece by piece, with the end-of-stream rule in one
/// place: the end is a 0-byte read, or — from a vfio-user device that ends its stream so, as
/// libvfio-user may — an error reply right after a short read. In a pre-copy round `ENOMSG`
/// (the kernel's "no data ready now") ends the round too; the stream goes on.
#[derive(Debug, Default)]
pub struct StreamReader {
    short: bool,
}

impl StreamReader {
    /// One read of up to `buf.len()` bytes; `round`: a pre-copy round.
    pub fn read(
        &mut self,
        c: &mut dyn Endpoint,
        buf: &mut [u8],
        round: bool,
    ) -> Result<Piece, EpError> {
        match c.read_data(buf) {
            Ok(0) => Ok(Piece::End),
            Ok(n) => {
                self.short = n < buf.len();
                Ok(Piece::Data(n))
            }
            Err(e) if round && e.errno() == Errno::ENOMSG => Ok(Piece::End),
            Err(e) if self.short && e.in_step() => {
                tracing::debug!(%e, "read refused after a short reply: the end of the stream");
                Ok(Piece::End)
            }
            Err(e) => Err(e),
        }
    }
}

/// What a `--from`/`--to`/`--dev` argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A vfio-user socket.
    Socket(PathBuf),
    /// A kernel VFIO device, by its sysfs directory; `true` if named by its cdev (open it
    /// through the cdev and iommufd).
    Kernel(PathBuf, bool),
}

/// Whether `s` is a PCI address: `DDDD:BB:DD.F` (domain optional).
fn is_pci_address(s: &str) -> bool {
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    let parts: Vec<&str> = s.split(':').collect();
    let (bus_dev_fn, ok_domain) = match parts.as_slice() {
        [d, b, df] => ((b, df), hex(d, 4)),
        [b, df] => ((b, df), true),
        _ => return false,
    };
    let (b, df) = bus_dev_fn;
    let Some((dev, func)) = df.split_once('.') else {
        return false;
    };
    ok_domain
        && hex(b, 2)
        && hex(dev, 2)
        && func.len() == 1
        && matches!(func.as_bytes()[0], b'0'..=b'7')
}

/// Whether `s` is a UUID (an mdev's name).
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses an endpoint argument. `sys` is the sysfs root (`/sys`; tests pass their own).
///
/// - `vfio:/dev/vfio/devices/vfioN` — a VFIO cdev, resolved to its device through
///   `SYS/class/vfio-dev/vfioN/device`;
/// - `vfio:/sys/...` — a device's sysfs directory;
/// - `0000:03:00.1` or `03:00.1` — a PCI function (`SYS/bus/pci/devices/…`);
/// - a UUID — an mdev (`SYS/bus/mdev/devices/…`);
/// - anything else — a vfio-user socket path.
pub fn parse(arg: &str, sys: &Path) -> Result<Target, CliError> {
    if let Some(rest) = arg.strip_prefix("vfio:") {
        let p = Path::new(rest);
        if let Ok(cdev) = p.strip_prefix("/dev/vfio/devices") {
            let name = cdev.to_string_lossy();
            if name.is_empty() || name.contains('/') {
                return Err(CliError::new(format!("{arg}: not a VFIO device cdev"))
                    .hint("a cdev is /dev/vfio/devices/vfioN"));
            }
            return Ok(Target::Kernel(
                sys.join("class/vfio-dev").join(&*name).join("device"),
                true,
            ));
        }
        if p.starts_with("/dev/vfio") {
            return Err(CliError::new(format!("{arg}: a VFIO group, not a device"))
                .hint("name the device: its PCI address, its mdev UUID, or its sysfs directory"));
        }
        if p.is_absolute() {
            return Ok(Target::Kernel(p.to_path_buf(), false));
        }
        return parse(rest, sys).and_then(|t| match t {
            Target::Kernel(..) => Ok(t),
            Target::Socket(_) => Err(CliError::new(format!("{arg}: not a VFIO device name"))
                .hint("vfio: takes /dev/vfio/devices/vfioN, a sysfs path, a PCI address or an mdev UUID")),
        });
    }
    if is_pci_address(arg) {
        let full = if arg.matches(':').count() == 1 {
            format!("0000:{arg}")
        } else {
            arg.to_string()
        };
        return Ok(Target::Kernel(
            sys.join("bus/pci/devices").join(full.to_ascii_lowercase()),
            false,
        ));
    }
    if is_uuid(arg) {
        return Ok(Target::Kernel(
            sys.join("bus/mdev/devices").join(arg.to_ascii_lowercase()),
            false,
        ));
    }
    Ok(Target::Socket(PathBuf::from(arg)))
}

/// Opens an endpoint: a vfio-user connection (`timeout` seconds per reply, 0 for none) or a
/// kernel VFIO device.
pub fn open(arg: &str, timeout: u64) -> Result<Box<dyn Endpoint>, CliError> {
    match parse(arg, Path::new("/sys"))? {
        Target::Socket(p) => Ok(Box::new(crate::connect(&p, timeout)?)),
        Target::Kernel(sys, cdev) => Ok(Box::new(KernelDevice::open(&sys, arg, cdev)?)),
    }
}

/// Opens a kernel VFIO device (for the commands that only make sense on one).
pub fn open_kernel(arg: &str) -> Result<KernelDevice, CliError> {
    match parse(arg, Path::new("/sys"))? {
        Target::Kernel(sys, cdev) => KernelDevice::open(&sys, arg, cdev),
        Target::Socket(_) => Err(CliError::new(format!("{arg}: not a kernel VFIO device"))
            .hint("name it as vfio:/dev/vfio/devices/vfioN, vfio:/sys/..., a PCI address or an mdev UUID")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(p: &str) -> Target {
        Target::Kernel(PathBuf::from(p), false)
    }

    #[test]
    fn endpoint_arguments() {
        let sys = Path::new("/sys");
        let ok = |a: &str| parse(a, sys).unwrap();
        assert_eq!(
            ok("/tmp/a/vf1.sock"),
            Target::Socket("/tmp/a/vf1.sock".into())
        );
        assert_eq!(ok("vf1.sock"), Target::Socket("vf1.sock".into()));
        assert_eq!(ok("0000:03:00.1"), k("/sys/bus/pci/devices/0000:03:00.1"));
        assert_eq!(ok("03:00.1"), k("/sys/bus/pci/devices/0000:03:00.1"));
        assert_eq!(ok("0000:3A:00.7"), k("/sys/bus/pci/devices/0000:3a:00.7"));
        assert_eq!(
            ok("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"),
            k("/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001")
        );
        assert_eq!(
            ok("vfio:/dev/vfio/devices/vfio0"),
            Target::Kernel("/sys/class/vfio-dev/vfio0/device".into(), true)
        );
        assert_eq!(
            ok("vfio:/sys/bus/pci/devices/0000:03:00.1"),
            k("/sys/bus/pci/devices/0000:03:00.1")
        );
        assert_eq!(ok("vfio:03:00.1"), k("/sys/bus/pci/devices/0000:03:00.1"));
        // Not PCI addresses: a function above 7, a short bus, a missing function.
        assert_eq!(ok("03:00.8"), Target::Socket("03:00.8".into()));
        assert_eq!(ok("3:00.1"), Target::Socket("3:00.1".into()));
        assert_eq!(ok("0000:03:00"), Target::Socket("0000:03:00".into()));
        // Not UUIDs: wrong group lengths or non-hex.
        assert_eq!(
            ok("83b8f4f2-509f-382f-3c1e-e6bfe0fa100"),
            Target::Socket("83b8f4f2-509f-382f-3c1e-e6bfe0fa100".into())
        );
        for bad in ["vfio:/dev/vfio/7", "vfio:/dev/vfio/devices/", "vfio:x.sock"] {
            let e = parse(bad, sys).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("hint:"), "{e}");
        }
    }
}
