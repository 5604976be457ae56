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

// Files, bottom to top (each uses only those above it):
// `fork`, `error`, `options` -> `session` (the core) -> `blob` (blob values)
// -> `client` -> `client_blobs` (the sync client) and `async_client` ->
// `async_blobs` (the tokio client).
#[cfg(feature = "tokio")]
mod async_blobs;
#[cfg(feature = "tokio")]
mod async_client;
mod blob;
mod client;
mod client_blobs;
mod error;
mod fork;
mod options;
mod session;

#[cfg(feature = "tokio")]
pub use async_blobs::{AsyncBlobWriter, AsyncCache};
#[cfg(feature = "tokio")]
pub use async_client::AsyncClient;
pub use blob::{Blob, BlobRef, SMALL_BLOB_MAX};
pub use client::{Client, Pending};
pub use client_blobs::{BlobWriter, Cache};
pub use error::{BlobError, ConnectError, HandshakeError};
pub use ipc_core::doorbell::WaitMode;
pub use ipc_rpc::blob::{BlobHandle, BlobStats};
pub use ipc_rpc::{CallError, ErrorCode, Method, ProtocolError};
pub use options::{CallOptions, ClientOptions, DEFAULT_TIMEOUT};
pub use session::{CONNECT_TIMEOUT, default_socket_path};
