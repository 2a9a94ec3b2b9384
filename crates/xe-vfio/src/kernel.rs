//! The kernel VFIO backend: a device opened through its group and a type1 container
//! (`/dev/vfio/vfio`, `/dev/vfio/GROUP`), or through its cdev bound to an iommufd
//! (`/dev/vfio/devices/vfioN`, `/dev/iommu`), and migrated with `VFIO_DEVICE_FEATURE` and its
//! data fd.
//!
//! Which interface: the cdev when the user named it (`vfio:/dev/vfio/devices/vfioN`) or when
//! the kernel has no group interface for the device; the group otherwise (what mdev and most
//! hosts use today). The cdev path is vfio-ioctls' and is not exercised by our tests: no
//! kernel reachable here has IOMMUFD (Debian's 6.12 and 7.3 builds: `# CONFIG_IOMMUFD is not
//! set`).
//!
//! rust-vmm's `vfio-ioctls` (without its KVM feature) does the opening and the migration v2
//! calls. Written here by hand, and why:
//! - `VFIO_DEVICE_RESET`: `VfioDevice::reset` returns nothing, and the abort path must know
//!   whether a reset happened;
//! - region reads and writes (`pread`/`pwrite` at the region's offset): `VfioDevice::
//!   region_read`/`region_write` log failures instead of returning them;
//! - the checks before opening, which turn "not a VFIO device", "in use" and "permission
//!   denied" into one line with a hint.

use crate::endpoint::{Endpoint, EpError};
use crate::util::CliError;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;
use vfio_core::{DeviceState, Errno, MigrationFlags};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioError, VfioIommufd, VfioOps};

/// `VFIO_DEVICE_RESET`: `_IO(VFIO_TYPE, VFIO_BASE + 11)`.
pub const VFIO_DEVICE_RESET: u32 = io_nr(vfio_bindings::bindings::vfio::VFIO_BASE + 11);

/// `_IO(VFIO_TYPE, nr)`: no direction, no size.
const fn io_nr(nr: u32) -> u32 {
    ((vfio_bindings::bindings::vfio::VFIO_TYPE as u32) << 8) | nr
}

/// The errno inside a `vfio-ioctls` error, where it carries one.
fn errno_of(e: &VfioError) -> Errno {
    match e {
        VfioError::OpenContainer(io)
        | VfioError::OpenGroup(io, _)
        | VfioError::OpenDeviceCdev(io)
        | VfioError::VfioMigrationDataIo(io) => Errno::from_io(io),
        VfioError::NewVfioIommufd(iommufd_ioctls::IommufdError::OpenIommufd(io)) => {
            Errno::from_io(io)
        }
        VfioError::VfioDeviceBindIommufd(s) | VfioError::VfioDeviceAttachIommufdPt(s) => {
            Errno::new(s.errno())
        }
        VfioError::ContainerSetIOMMU(s)
        | VfioError::GroupGetDeviceFD(s)
        | VfioError::SetDeviceAttr(s)
        | VfioError::VfioDeviceGetInfo(s)
        | VfioError::VfioDeviceGetRegionInfo(s)
        | VfioError::VfioDeviceFeature(s)
        | VfioError::VfioMigGetPrecopyInfo(s) => Errno::new(s.errno()),
        VfioError::NoMigrationDataFd => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

fn kerr(op: &'static str) -> impl Fn(VfioError) -> EpError {
    move |e| EpError::Kernel {
        op,
        errno: errno_of(&e),
    }
}

/// A region access that must move all `len` bytes (a short one is `EIO`).
fn whole(op: &'static str, len: usize, r: rustix::io::Result<usize>) -> Result<(), EpError> {
    match r {
        Ok(n) if n == len => Ok(()),
        Ok(_) => Err(EpError::Kernel {
            op,
            errno: Errno::EIO,
        }),
        Err(e) => Err(EpError::Kernel {
            op,
            errno: Errno::new(e.raw_os_error()),
        }),
    }
}

/// A VFIO device of the running kernel.
pub struct KernelDevice {
    dev: VfioDevice,
}

impl KernelDevice {
    /// Opens the device whose sysfs directory is `sys` (`arg` is how the user named it);
    /// through its cdev if `cdev` (the user named it) or if it has no group interface.
    pub fn open(sys: &Path, arg: &str, cdev: bool) -> Result<KernelDevice, CliError> {
        let sys = sys.canonicalize().map_err(|_| {
            CliError::new(format!(
                "{arg}: no such device ({} does not exist)",
                sys.display()
            ))
            .hint("PCI functions are in /sys/bus/pci/devices, mdevs in /sys/bus/mdev/devices")
        })?;
        let group = sys
            .join("iommu_group")
            .read_link()
            .ok()
            .and_then(|g| g.file_name()?.to_str()?.parse::<u32>().ok())
            .ok_or_else(|| {
                CliError::new(format!("{arg}: not in an IOMMU group, so not usable through VFIO"))
                    .hint("enable the IOMMU (intel_iommu=on iommu=pt), or for an mdev load its vendor driver")
            })?;
        let has_cdev = sys.join("vfio-dev").is_dir();
        let use_cdev = has_cdev && (cdev || !Path::new(&format!("/dev/vfio/{group}")).exists());
        let driver = sys
            .join("driver")
            .read_link()
            .ok()
            .and_then(|d| Some(d.file_name()?.to_str()?.to_string()));
        let subsystem = sys
            .join("subsystem")
            .read_link()
            .ok()
            .and_then(|d| Some(d.file_name()?.to_str()?.to_string()));
        // A PCI function must be bound to vfio-pci or a variant; an mdev is bound to its
        // vendor driver (mtty, …), which is a VFIO driver by construction.
        if subsystem.as_deref() == Some("pci") {
            match driver.as_deref() {
                Some(d) if d.contains("vfio") => {}
                other => {
                    return Err(CliError::new(format!(
                        "{arg}: bound to {}, not to a VFIO driver",
                        other.map_or("no driver".into(), |d| format!("driver {d}"))
                    ))
                    .hint("bind it to vfio-pci or its variant (xe-vfio-pci for Intel Xe VFs), e.g. with driverctl set-override"));
                }
            }
        }
        if !use_cdev && !Path::new("/dev/vfio/vfio").exists() {
            return Err(
                CliError::new("/dev/vfio/vfio does not exist: VFIO is not loaded")
                    .hint("modprobe vfio vfio_iommu_type1"),
            );
        }
        let node = if use_cdev {
            sys.join("vfio-dev")
                .read_dir()
                .ok()
                .and_then(|mut d| d.next()?.ok())
                .map_or("/dev/vfio/devices/…".into(), |e| {
                    format!("/dev/vfio/devices/{}", e.file_name().to_string_lossy())
                })
        } else {
            format!("/dev/vfio/{group}")
        };
        let fail = |e: VfioError| {
            let errno = errno_of(&e);
            let (what, hint) = match errno {
                Errno::EBUSY => (
                    format!("{arg}: in use ({node} or the device is held by another process, a VMM perhaps)"),
                    "stop the process that holds it: fuser -v /dev/vfio/*".to_string(),
                ),
                Errno::EACCES | Errno::EPERM => (
                    format!("{arg}: permission denied opening {node}"),
                    format!("run as root, or give your user {node} and /dev/vfio/vfio (and enough RLIMIT_MEMLOCK)"),
                ),
                Errno::ENOENT => (
                    format!("{arg}: {node} does not exist"),
                    "the device is not bound to a VFIO driver".to_string(),
                ),
                _ => (
                    format!("{arg}: opening the device through {node}"),
                    "every device in the IOMMU group must be bound to a VFIO driver (or to none)"
                        .to_string(),
                ),
            };
            let mut c = CliError::new(what).cause(&e);
            c.errno = Some(errno);
            c.hint(hint)
        };
        let ops: Arc<dyn VfioOps> = if use_cdev {
            let iommufd =
                iommufd_ioctls::IommuFd::new().map_err(|e| fail(VfioError::NewVfioIommufd(e)))?;
            Arc::new(VfioIommufd::new(Arc::new(iommufd), None, None).map_err(fail)?)
        } else {
            Arc::new(VfioContainer::new(None).map_err(fail)?)
        };
        // With iommufd the device is attached to an (empty) IOAS: migration needs no DMA
        // mappings, but an unattached cdev refuses most ioctls.
        let dev = VfioDevice::new(&sys, ops, true).map_err(fail)?;
        match dev.query_migration_support() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                return Err(CliError::new(format!(
                    "{arg}: the device does not support VFIO migration v2"
                ))
                .hint("it needs a driver with migration (xe-vfio-pci on Linux ≥ 6.19 for Intel Xe VFs; mlx5, hisi_acc, mtty, …)"));
            }
        }
        Ok(KernelDevice { dev })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by `self.dev` and outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.dev.as_raw_fd()) }
    }

    /// The region's offset in the device fd, after checking `off + len` fits in it.
    fn region_at(&self, index: u32, off: u64, len: usize) -> Result<u64, EpError> {
        let size = self.dev.get_region_size(index);
        let fits = off.checked_add(len as u64).is_some_and(|end| end <= size);
        if !fits {
            return Err(EpError::Kernel {
                op: "region access",
                errno: Errno::EINVAL,
            });
        }
        Ok(self.dev.get_region_offset(index) + off)
    }

    /// Reads `buf.len()` bytes at `off` of region `index`.
    pub fn region_read(&self, index: u32, off: u64, buf: &mut [u8]) -> Result<(), EpError> {
        let at = self.region_at(index, off, buf.len())?;
        let len = buf.len();
        whole("region read", len, rustix::io::pread(self.fd(), buf, at))
    }

    /// Writes `data` at `off` of region `index`.
    pub fn region_write(&self, index: u32, off: u64, data: &[u8]) -> Result<(), EpError> {
        let at = self.region_at(index, off, data.len())?;
        whole(
            "region write",
            data.len(),
            rustix::io::pwrite(self.fd(), data, at),
        )
    }

    /// `MIG_DEVICE_STATE` SET with any raw value (for the state-machine matrix, which also
    /// asks for values that are not states).
    pub fn set_raw_state(&mut self, raw: u32) -> Result<(), EpError> {
        self.dev
            .set_migration_state(raw)
            .map_err(kerr("setting the migration state"))
    }
}

impl Endpoint for KernelDevice {
    fn migration_flags(&mut self) -> Result<MigrationFlags, EpError> {
        let raw = self
            .dev
            .query_migration_support()
            .map_err(kerr("VFIO_DEVICE_FEATURE_MIGRATION"))?
            .ok_or(EpError::Kernel {
                op: "VFIO_DEVICE_FEATURE_MIGRATION",
                errno: Errno::ENOTTY,
            })?;
        MigrationFlags::try_from(raw).map_err(|_| EpError::Kernel {
            op: "VFIO_DEVICE_FEATURE_MIGRATION (unknown flags)",
            errno: Errno::EPROTO,
        })
    }

    fn device_state(&mut self) -> Result<DeviceState, EpError> {
        let raw = self
            .dev
            .get_migration_state()
            .map_err(kerr("reading the migration state"))?;
        DeviceState::try_from(raw).map_err(|_| EpError::Kernel {
            op: "reading the migration state (not a state)",
            errno: Errno::EPROTO,
        })
    }

    fn set_device_state(&mut self, s: DeviceState) -> Result<(), EpError> {
        self.set_raw_state(s as u32)
    }

    fn mig_data_size(&mut self) -> Result<u64, EpError> {
        self.dev
            .get_mig_data_size()
            .map_err(kerr("VFIO_DEVICE_FEATURE_MIG_DATA_SIZE"))
    }

    fn precopy_info(&mut self) -> Result<(u64, u64), EpError> {
        let i = self
            .dev
            .mig_get_precopy_info()
            .map_err(kerr("VFIO_MIG_GET_PRECOPY_INFO"))?;
        Ok((i.initial_bytes, i.dirty_bytes))
    }

    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, EpError> {
        loop {
            match self.dev.read_migration_data(buf) {
                Err(VfioError::VfioMigrationDataIo(e))
                    if e.kind() == std::io::ErrorKind::Interrupted => {}
                r => return r.map_err(kerr("reading the data fd")),
            }
        }
    }

    fn write_data(&mut self, data: &[u8]) -> Result<(), EpError> {
        self.dev
            .write_migration_data(data)
            .map_err(kerr("writing the data fd"))
    }

    fn reset(&mut self) -> Result<(), EpError> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument; the fd is a VFIO device.
        let r = unsafe { libc::ioctl(self.dev.as_raw_fd(), VFIO_DEVICE_RESET as _) };
        if r < 0 {
            return Err(EpError::Kernel {
                op: "VFIO_DEVICE_RESET",
                errno: Errno::from_io(&std::io::Error::last_os_error()),
            });
        }
        Ok(())
    }

    fn reconnect(&mut self) -> Result<(), EpError> {
        Ok(())
    }

    fn region_read(&mut self, index: u32, off: u64, buf: &mut [u8]) -> Result<(), EpError> {
        KernelDevice::region_read(self, index, off, buf)
    }

    fn region_size(&mut self, index: u32) -> Result<u64, EpError> {
        Ok(self.dev.get_region_size(index))
    }

    fn chunk(&self) -> usize {
        1 << 20
    }
}

/// What one request did: the state reached, or the errno and the state the device was left in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Reached(DeviceState),
    Refused(Errno, DeviceState),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Reached(s) => write!(f, "{s}"),
            Outcome::Refused(e, s) => write!(f, "{e} (stays {s})"),
        }
    }
}

/// One (current, requested) pair of the state-machine matrix.
#[derive(Debug, Clone)]
pub struct Cell {
    pub current: DeviceState,
    /// The raw value asked for (8 is not a state).
    pub requested: u32,
    pub kernel: Outcome,
    pub vfio_core: Outcome,
}

impl serde::Serialize for Cell {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Cell", 5)?;
        st.serialize_field("current", &self.current.to_string())?;
        st.serialize_field("requested", &self.requested)?;
        st.serialize_field("kernel", &self.kernel.to_string())?;
        st.serialize_field("vfio_core", &self.vfio_core.to_string())?;
        st.serialize_field("same", &(self.kernel == self.vfio_core))?;
        st.end()
    }
}

/// The raw value past the last state, asked for as "an invalid value".
pub const INVALID_STATE: u32 = 8;

/// What vfio-core decides for `requested` from `current` on a device with `flags`.
pub fn expected(current: DeviceState, requested: u32, flags: MigrationFlags) -> Outcome {
    match DeviceState::try_from(requested) {
        Ok(new) => match vfio_core::path(current, new, flags) {
            Ok(_) => Outcome::Reached(new),
            Err(e) => Outcome::Refused(e, current),
        },
        Err(_) => Outcome::Refused(Errno::EINVAL, current),
    }
}

/// Walks every (current, requested) pair on a real device: reset (RUNNING), one request to
/// `current` (RESUMING also gets a complete stream saved from this device first, so that
/// leaving it is a valid load), then the requested value; records what the kernel did and
/// what vfio-core's table says. ERROR cannot be requested, so it is never a current state
/// here. The device is reset at the end.
pub fn fsm_matrix(dev: &mut KernelDevice) -> Result<Vec<Cell>, CliError> {
    use crate::util::Context;
    let flags = dev
        .migration_flags()
        .ctx(|| "reading the migration flags".into())?;
    let reset = |dev: &mut KernelDevice| -> Result<(), CliError> {
        dev.reset().ctx(|| "resetting the device".into())?;
        let s = dev.device_state().ctx(|| "reading the state".into())?;
        if s != DeviceState::Running {
            return Err(CliError::new(format!(
                "after a reset the device is in {s}, not RUNNING"
            )));
        }
        Ok(())
    };
    // A complete stream of this device, to load in RESUMING.
    reset(dev)?;
    dev.set_device_state(DeviceState::StopCopy)
        .ctx(|| "saving a stream: RUNNING → STOP_COPY".into())?;
    let mut stream = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = dev.read_data(&mut buf).ctx(|| "saving a stream".into())?;
        if n == 0 {
            break;
        }
        stream.extend_from_slice(&buf[..n]);
    }
    let mut cells = Vec::new();
    for current in DeviceState::ALL {
        if current == DeviceState::Error || !current.supported_by(flags) {
            continue;
        }
        for requested in 0..=INVALID_STATE {
            reset(dev)?;
            if current != DeviceState::Running {
                dev.set_device_state(current)
                    .ctx(|| format!("RUNNING → {current}"))?;
            }
            if current == DeviceState::Resuming {
                dev.write_data(&stream)
                    .ctx(|| "loading the saved stream in RESUMING".into())?;
            }
            let r = dev.set_raw_state(requested);
            let after = dev.device_state().ctx(|| "reading the state".into())?;
            let kernel = match r {
                Ok(()) => Outcome::Reached(after),
                Err(e) => Outcome::Refused(e.errno(), after),
            };
            cells.push(Cell {
                current,
                requested,
                kernel,
                vfio_core: expected(current, requested, flags),
            });
        }
    }
    reset(dev)?;
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_bindings::bindings::vfio as b;

    /// The ioctl numbers and argument layouts this backend relies on, against the uAPI
    /// header's values (`vfio-bindings` layouts; numbers from include/uapi/linux/vfio.h).
    #[test]
    fn ioctl_encoding_matches_the_uapi() {
        assert_eq!(VFIO_DEVICE_RESET, 0x3b6f); // _IO(';', 100 + 11)
        assert_eq!(io_nr(b::VFIO_BASE + 17), 0x3b75); // VFIO_DEVICE_FEATURE
        assert_eq!(io_nr(b::VFIO_BASE + 21), 0x3b79); // VFIO_MIG_GET_PRECOPY_INFO
        assert_eq!(std::mem::size_of::<b::vfio_device_feature>(), 8);
        assert_eq!(std::mem::size_of::<b::vfio_device_feature_mig_state>(), 8);
        assert_eq!(
            std::mem::offset_of!(b::vfio_device_feature_mig_state, data_fd),
            4
        );
        assert_eq!(std::mem::size_of::<b::vfio_device_feature_migration>(), 8);
        assert_eq!(
            std::mem::size_of::<b::vfio_device_feature_mig_data_size>(),
            8
        );
        assert_eq!(std::mem::size_of::<b::vfio_precopy_info>(), 24);
        assert_eq!(std::mem::offset_of!(b::vfio_precopy_info, initial_bytes), 8);
        assert_eq!(std::mem::offset_of!(b::vfio_precopy_info, dirty_bytes), 16);
        // Our state numbering is the uAPI's.
        assert_eq!(
            b::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY_P2P,
            DeviceState::PreCopyP2p as u32
        );
        assert_eq!(
            b::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING_P2P,
            DeviceState::RunningP2p as u32
        );
        assert_eq!(b::VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2, 12);
        // The cdev path: VFIO_DEVICE_BIND_IOMMUFD (18) and VFIO_DEVICE_ATTACH_IOMMUFD_PT (19).
        assert_eq!(io_nr(b::VFIO_BASE + 18), 0x3b76);
        assert_eq!(io_nr(b::VFIO_BASE + 19), 0x3b77);
        assert_eq!(std::mem::size_of::<b::vfio_device_bind_iommufd>(), 24);
        assert_eq!(
            std::mem::offset_of!(b::vfio_device_bind_iommufd, iommufd),
            8
        );
        assert_eq!(
            std::mem::offset_of!(b::vfio_device_bind_iommufd, out_devid),
            12
        );
        assert_eq!(std::mem::size_of::<b::vfio_device_attach_iommufd_pt>(), 16);
    }

    #[test]
    fn vfio_ioctls_errors_keep_their_errno() {
        let e = VfioError::OpenGroup(std::io::Error::from_raw_os_error(16), "7".into());
        assert_eq!(errno_of(&e), Errno::EBUSY);
        let e = VfioError::VfioDeviceFeature(vmm_sys_util::errno::Error::new(22));
        assert_eq!(errno_of(&e), Errno::EINVAL);
        let e = VfioError::VfioMigrationDataIo(std::io::Error::from_raw_os_error(61));
        assert_eq!(errno_of(&e), Errno::ENODATA);
    }

    #[test]
    fn a_path_that_is_not_a_device_says_so() {
        let e = KernelDevice::open(Path::new("/nonexistent/dev"), "0000:99:00.0", false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("0000:99:00.0: no such device"), "{e}");
        assert!(e.contains("hint:"), "{e}");
        // A directory that is no device: not in an IOMMU group.
        let d = tempfile::tempdir().unwrap();
        let e = KernelDevice::open(d.path(), "x", false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not in an IOMMU group"), "{e}");
    }
}
