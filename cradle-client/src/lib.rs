//! The CRADLE client: connect to the per-user server and call its methods
//! over shared-memory rings.
//!
//! ```no_run
//! use cradle_client::Client;
//! use ipc_rpc::builtin::Ping;
//!
//! let client = Client::connect_default()?;
//! let echo = client.call::<Ping>(&b"hello".to_vec())?;
//! assert_eq!(echo, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A call serializes its request straight into the session's request ring,
//! wakes the server only if it sleeps, and waits for the response by spinning
//! and then sleeping on a futex ([`WaitMode`]). Every wait has a deadline; the
//! server's death is seen at once through the control socket
//! ([`CallError::PeerDead`]).
//!
//! With tokio, [`AsyncClient`] does the same with futures: one driver task
//! per client completes calls by request id and sleeps on an eventfd
//! registered with tokio's reactor.
//!
//! # Feature flags
//!
//! * `tokio` (default): [`AsyncClient`].

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::unnecessary_safety_comment)]

#[cfg(feature = "tokio")]
mod async_client;
mod blob;
mod client;
mod error;
mod fork;

#[cfg(feature = "tokio")]
pub use async_client::AsyncClient;
pub use blob::{Blob, BlobRef, BlobWriter, Cache, SMALL_BLOB_MAX};
pub use client::{
    CONNECT_TIMEOUT, CallOptions, Client, ClientOptions, DEFAULT_TIMEOUT, Pending,
    default_socket_path,
};
pub use error::ConnectError;
pub use ipc_core::doorbell::WaitMode;
pub use ipc_rpc::blob::{BlobHandle, BlobStats};
pub use ipc_rpc::{CallError, ErrorCode, Method};
