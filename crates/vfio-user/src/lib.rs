//! # vfio-user — VFIO over a UNIX socket
//!
//! The transport xe-vfio serves its devices on (QEMU's `docs/interop/vfio-user.rst`):
//!
//! - [`msg`]: the message codec. Every length is checked before use; the largest message is
//!   `max_message_size(max_data_xfer_size)` — the header, the largest fixed part and the data
//!   limit (1 MiB by default, at most 16 MiB), or a 64 KiB VERSION message.
//! - [`server`]: serves any [`vfio_core::VfioDevice`] on a socket — one thread per socket, one
//!   client at a time, a new client after a disconnect. Migration data moves with
//!   `MIG_DATA_READ` / `MIG_DATA_WRITE`; device features 1, 2 and (ours) 9.
//! - [`client`]: the client the CLI and the tests use.
//!
//! This crate knows only `vfio-core`.

pub mod client;
pub mod msg;
pub mod relay;
pub mod server;
mod sock;
pub mod splice;

pub use client::{Client, ClientError};
pub use relay::{MigReads, Pacer, Relay, RelayError};
pub use server::{Server, ServerOptions};
pub use sock::{send_all, tune as tune_socket};
