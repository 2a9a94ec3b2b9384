//! Small helpers: sizes, errors that read like a tool's.

use std::fmt;
use vfio_core::Errno;
use vfio_user::ClientError;

/// Parses `4G`, `512M`, `64K`, `1GiB`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (try 512M or 4G)"))?;
    let mul = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit '{other}' in '{s}'")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Bytes for people.
pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// An error for the command line: what failed, why (errno if any), what to try.
#[derive(Debug)]
pub struct CliError {
    pub what: String,
    pub errno: Option<Errno>,
    pub cause: Option<String>,
    pub hint: Option<String>,
    /// False when the error came from a vfio-user connection that may now hold half a message
    /// (a socket or protocol error): that connection must be reopened before it is used again.
    pub in_step: bool,
}

impl CliError {
    pub fn new(what: impl Into<String>) -> CliError {
        CliError {
            what: what.into(),
            errno: None,
            cause: None,
            hint: None,
            in_step: true,
        }
    }
    /// Says what was being done when this failed: `"{what}: {self.what}"`.
    pub fn context(mut self, what: &str) -> Self {
        self.what = format!("{what}: {}", self.what);
        self
    }
    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
    pub fn cause(mut self, c: impl fmt::Display) -> Self {
        self.cause = Some(c.to_string());
        self
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.what)?;
        if let Some(e) = self.errno {
            write!(f, ": {} — {}", e, e.description().to_lowercase())?;
        } else if let Some(c) = &self.cause {
            write!(f, ": {c}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Adds context to client errors.
pub trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, CliError>;
}

/// A client error as a tool's: the remote errno with its hint, or the socket/protocol cause
/// (after which the connection is out of step).
pub(crate) fn client_error(what: String, e: &ClientError) -> CliError {
    let mut c = CliError::new(what);
    match e {
        ClientError::Remote { errno, .. } => {
            c.errno = Some(*errno);
            c.hint = hint_for(*errno);
        }
        other => {
            c.cause = Some(other.to_string());
            c.in_step = false;
        }
    }
    c
}

impl<T> Context<T> for Result<T, ClientError> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, CliError> {
        self.map_err(|e| client_error(what(), &e))
    }
}

impl<T> Context<T> for Result<T, crate::endpoint::EpError> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, CliError> {
        use crate::endpoint::EpError;
        self.map_err(|e| match e {
            EpError::User(e) => client_error(what(), &e),
            EpError::Kernel { op, errno } => {
                let mut c = CliError::new(format!("{}: {op}", what()));
                c.errno = Some(errno);
                c.hint = hint_for(errno);
                c
            }
        })
    }
}

impl<T> Context<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, CliError> {
        self.map_err(|e| CliError::new(what()).cause(e))
    }
}

impl<T> Context<T> for Result<T, Errno> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, CliError> {
        self.map_err(|e| {
            let mut c = CliError::new(what());
            c.errno = Some(e);
            c.hint = hint_for(e);
            c
        })
    }
}

fn hint_for(e: Errno) -> Option<String> {
    Some(match e {
        Errno::ENODEV => {
            "the stream is for another device id or revision, or the session already ended".into()
        }
        Errno::ENOTTY => {
            "the device does not support migration (GuC older than 70.54.0 or no memirq?)".into()
        }
        Errno::ETIMEDOUT => "the PF's firmware did not answer; reset the device and retry".into(),
        Errno::EBUSY => "another migration session is in progress on this VF".into(),
        Errno::EPERM => "the VF was stopped after an error; reset the device (FLR) first".into(),
        Errno::EIO => "the stream was incomplete or invalid; run 'xe-vfio inspect' on it".into(),
        _ => return None,
    })
}
