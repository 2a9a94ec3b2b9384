//! Linux errno values, as they cross the VFIO boundary.
//!
//! Every error that leaves a device — through an ioctl in the kernel, through an error reply in
//! vfio-user — is a positive errno. `Errno` keeps that value and prints it with its name
//! (`EINVAL (22)`), so logs and CLI messages stay readable. The values are Linux x86-64's.

use std::fmt;

/// A Linux errno value (always positive).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(i32);

macro_rules! errnos {
    ($($name:ident = $val:expr, $desc:expr;)*) => {
        impl Errno {
            $(#[doc = $desc] pub const $name: Errno = Errno($val);)*

            /// The symbolic name (`"EINVAL"`), or `None` for a value this table does not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 { $($val => Some(stringify!($name)),)* _ => None }
            }

            /// A short description (`"Invalid argument"`).
            pub fn description(self) -> &'static str {
                match self.0 { $($val => $desc,)* _ => "Unknown error" }
            }
        }
    };
}

errnos! {
    EPERM = 1, "Operation not permitted";
    ENOENT = 2, "No such file or directory";
    EINTR = 4, "Interrupted system call";
    EIO = 5, "Input/output error";
    E2BIG = 7, "Argument list too long";
    EBADF = 9, "Bad file descriptor";
    EAGAIN = 11, "Resource temporarily unavailable";
    ENOMEM = 12, "Cannot allocate memory";
    EACCES = 13, "Permission denied";
    EFAULT = 14, "Bad address";
    EBUSY = 16, "Device or resource busy";
    EEXIST = 17, "File exists";
    ENODEV = 19, "No such device";
    EINVAL = 22, "Invalid argument";
    ENOTTY = 25, "Inappropriate ioctl for device";
    ENOSPC = 28, "No space left on device";
    ESPIPE = 29, "Illegal seek";
    EPIPE = 32, "Broken pipe";
    ERANGE = 34, "Numerical result out of range";
    ENOSYS = 38, "Function not implemented";
    ENOMSG = 42, "No message of desired type";
    ENODATA = 61, "No data available";
    EPROTO = 71, "Protocol error";
    EOVERFLOW = 75, "Value too large for defined data type";
    EMSGSIZE = 90, "Message too long";
    EOPNOTSUPP = 95, "Operation not supported";
    ECONNRESET = 104, "Connection reset by peer";
    ENOTCONN = 107, "Transport endpoint is not connected";
    ETIMEDOUT = 110, "Connection timed out";
    EALREADY = 114, "Operation already in progress";
    ESTALE = 116, "Stale file handle";
    EUCLEAN = 117, "Structure needs cleaning";
}

impl Errno {
    /// Wraps a raw errno. Negative values (kernel style `-EINVAL`) are accepted and made positive;
    /// zero is not an error and maps to `EIO` rather than inventing success.
    pub const fn new(raw: i32) -> Errno {
        if raw == 0 {
            Errno::EIO
        } else if raw < 0 {
            Errno(raw.wrapping_neg())
        } else {
            Errno(raw)
        }
    }

    /// The positive errno value.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// The errno of an `std::io::Error`, `EIO` when it carries none.
    pub fn from_io(err: &std::io::Error) -> Errno {
        err.raw_os_error().map(Errno::new).unwrap_or(Errno::EIO)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "errno {}", self.0),
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Errno {}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> Self {
        std::io::Error::from_raw_os_error(e.0)
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno::from_io(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_name_and_value() {
        assert_eq!(Errno::EINVAL.to_string(), "EINVAL (22)");
        assert_eq!(Errno::ETIMEDOUT.to_string(), "ETIMEDOUT (110)");
        assert_eq!(Errno::new(-19), Errno::ENODEV);
        assert_eq!(Errno::new(4242).to_string(), "errno 4242");
        assert_eq!(Errno::new(0), Errno::EIO);
    }

    #[test]
    fn io_round_trip() {
        let io: std::io::Error = Errno::ESPIPE.into();
        assert_eq!(io.raw_os_error(), Some(29));
        assert_eq!(Errno::from(io), Errno::ESPIPE);
    }
}
