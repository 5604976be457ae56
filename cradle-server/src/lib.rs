//! The CRADLE server: a per-user shared-memory RPC runtime (docs/design.md §3).
//!
//! Applications connect to a Unix control socket (see
//! [`default_socket_path`]); after a handshake each gets a *session*: a sealed
//! memfd holding a request ring and a response ring, an eventfd to wake the
//! server, and the server's read-only status page. Requests and responses
//! then move through shared memory only; the socket carries nothing but
//! liveness.
//!
//! ```no_run
//! use cradle_server::{HandlerError, Server};
//!
//! ipc_rpc::method! {
//!     /// Adds two numbers.
//!     pub Add = "example.add" version 1: (u64, u64) => u64;
//! }
//!
//! cradle_server::init_logging("info");
//! let server = Server::builder()
//!     .inline::<Add, _>(|(a, b)| a.checked_add(b).ok_or(HandlerError::new("overflow")))
//!     .bind()?;
//! server.run_until_signal()?; // Ctrl-C or SIGTERM: clean stop, socket removed
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! * Start-up ([`ServerBuilder::bind`]): socket directory checks, a
//!   singleton lock, the listener, process hardening, the status segment.
//! * The acceptor thread checks `SO_PEERCRED`, runs the handshake (never
//!   blocking on one connection), creates sessions and hands each to a worker
//!   round-robin.
//! * Workers poll their sessions' rings, dispatch to handlers (inline, or the
//!   offload pool), and sleep in `epoll_wait` when idle (docs/design.md §6).
//!
//! # Feature flags
//!
//! None.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::unnecessary_safety_comment)]

mod acceptor;
mod background;
mod blobs;
mod disk;
mod error;
mod link;
mod logs;
mod memo;
mod methods;
mod metrics;
mod offload;
mod provided;
mod reply;
mod server;
mod signals;
mod startup;
mod stats;
mod worker;

#[cfg(test)]
mod tests;

pub use blobs::{BlobBuilder, BlobCtx, BlobView, SessionQuota, default_disk_cache_dir};
pub use error::{HandlerError, ServerError, StartError};
pub use metrics::MetricsAddr;
pub use server::{Server, ServerBuilder, ServerHandle};
pub use signals::{LogFormat, init_logging, init_logging_as};
pub use startup::default_socket_path;

/// The README's Rust snippets, compiled with the doctests so that the README
/// cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// Parses a byte count with an optional binary suffix (`512M`, `2GiB`,
/// `1073741824`), for command lines.
///
/// ```
/// assert_eq!(cradle_server::parse_byte_count("512M"), Ok(512 << 20));
/// assert_eq!(cradle_server::parse_byte_count("2GiB"), Ok(2 << 30));
/// assert!(cradle_server::parse_byte_count("lots").is_err());
/// ```
pub fn parse_byte_count(s: &str) -> Result<u64, String> {
    blobs::budget::parse_bytes(s)
}
