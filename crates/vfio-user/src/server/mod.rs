//! A vfio-user server for any [`VfioDevice`]: one thread per socket, one client at a time, a new
//! client accepted after a disconnect.
//!
//! A client's disconnect is a close of the device: the migration state goes back to RUNNING and
//! streams are disabled (the VF's memory and registers persist — an emulator convenience).
//! Malformed messages get error replies with their errno and the server keeps serving; only
//! unparseable framing (a size that cannot be a message) ends the connection.
//!
//! By concern:
//! - `conn`: one connection — framing, dispatch, replies;
//! - `negotiate`: VERSION;
//! - `device`: device and region info, region access, IRQs, DMA, reset;
//! - `migration`: DEVICE_FEATURE and the migration data, which moves between the socket and
//!   the device without a buffer of the server's: a MIG_DATA_READ reply is written by the
//!   device into the socket (LMEM pages by `sendfile`), MIG_DATA_WRITE data is read by the
//!   device from the socket into its memory.
//!
//! `sendfile` cannot suppress `SIGPIPE` as `send` does: a client hanging up mid-reply raises
//! it, which Rust programs ignore (the error is `EPIPE`); a C host embedding this server must
//! ignore it too.

mod conn;
mod device;
mod migration;
mod negotiate;
mod options;

pub use options::{ServerOptions, MAX_DMA_MAPS};

use crate::sock;
use conn::Conn;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vfio_core::VfioDevice;

/// A listening vfio-user socket for one device. Removes its socket file when dropped.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    device: Arc<dyn VfioDevice>,
    opts: ServerOptions,
}

impl Server {
    /// Binds `path` (mode 0600). An existing socket nobody listens on is replaced; a live one
    /// is `AddrInUse`.
    pub fn bind(
        path: &Path,
        device: Arc<dyn VfioDevice>,
        opts: ServerOptions,
    ) -> io::Result<Server> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running server", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            device,
            opts,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves clients one at a time until `stop` is set (checked every 100 ms).
    pub fn run(&self, stop: &AtomicBool) -> io::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            if !sock::readable(&self.listener, 100)? {
                continue;
            }
            let (stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            tracing::info!(socket = %self.path.display(), "client connected");
            sock::tune(&stream);
            if let Err(e) = self.device.open() {
                tracing::warn!(%e, "device open failed");
            }
            let end = Conn::new(stream, &*self.device, &self.opts).serve(stop);
            self.device.close();
            match end {
                Ok(()) => tracing::info!(socket = %self.path.display(), "client disconnected"),
                Err(e) => tracing::warn!(socket = %self.path.display(), %e, "client dropped"),
            }
        }
        Ok(())
    }

    /// Runs the server on its own thread.
    pub fn spawn(self, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<io::Result<()>> {
        let name = format!(
            "vfio-user {}",
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("?")
        );
        std::thread::Builder::new()
            .name(name)
            .spawn(move || self.run(&stop))
            .expect("spawning a server thread")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
