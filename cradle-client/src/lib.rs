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
//! Blobs (written once, sealed, then shared without a copy) and the memory
//! cache work the same through both clients: [`Client::create`],
//! [`Client::get`], [`Client::cache`], and their futures on [`AsyncClient`].
//! A [`Blob`] or [`BlobRef`] gives its lease back through the session it
//! came from, whichever client made it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cradle_client::AsyncClient;
//!
//! let client = AsyncClient::connect_default().await?;
//! let mut w = client.create(5).await?;
//! w.write_at(0, b"image");
//! let blob = w.seal().await?;
//! client.cache().put("frame/1", &blob).await?;
//! let r = client.cache().get("frame/1").await?.expect("just put");
//! assert_eq!(&r[..], b"image");
//! # Ok(()) }
//! ```
//!
//! Errors: a call fails with a [`CallError`]; an operation that maps shared
//! memory (create, seal, get, adopt, a cache get) with a [`BlobError`], which
//! wraps the call's; connecting with a [`ConnectError`].
//!
//! # Feature flags
//!
//! * `tokio` (default): [`AsyncClient`], [`AsyncBlobWriter`], [`AsyncCache`].
//! * `cli` (default): the `cradle` command-line binary and its dependencies
//!   (clap, bytesize, signal-hook); an application that links the library
//!   can turn default features off and keep `tokio` only.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::unnecessary_safety_comment)]

// Files, bottom to top (each uses only those above it):
// `fork`, `error`, `options` -> `session` (the core) -> `blob` (blob values)
// -> `calls`, `serving` (provided methods: caller and provider cores) ->
// `client` -> `batch`, `client_blobs`, `client_calls`, `provider` (the sync client)
// and `async_client` -> `async_blobs`, `async_calls`, `async_provider`
// (the tokio client).
#[cfg(feature = "tokio")]
mod async_blobs;
#[cfg(feature = "tokio")]
mod async_calls;
#[cfg(feature = "tokio")]
mod async_client;
#[cfg(feature = "tokio")]
mod async_provider;
mod batch;
mod blob;
mod calls;
mod client;
mod client_blobs;
mod client_calls;
mod copy;
mod error;
mod fork;
mod inflight;
mod options;
mod provider;
#[cfg(feature = "remote")]
mod remote;
#[cfg(feature = "remote")]
mod remote_error;
#[cfg(feature = "remote")]
mod remote_stream;
mod serving;
mod session;
mod turns;

#[cfg(feature = "tokio")]
pub use async_blobs::{AsyncBlobWriter, AsyncCache};
#[cfg(feature = "tokio")]
pub use async_client::AsyncClient;
#[cfg(feature = "tokio")]
pub use async_provider::{AsyncCall, AsyncProvider, AsyncStopper};
pub use batch::Batch;
pub use blob::{Blob, BlobRef, SMALL_BLOB_MAX};
pub use client::{Client, Pending};
pub use client_blobs::{BlobWriter, Cache};
pub use error::{BlobError, ComputeError, ConnectError, HandshakeError};
pub use ipc_core::doorbell::WaitMode;
pub use ipc_rpc::blob::{BlobHandle, BlobStats};
pub use ipc_rpc::provide::{MethodInfo, Origin, ProviderInfo};
pub use ipc_rpc::{CallError, ErrorCode, Method, ProtocolError};
pub use options::{CallOptions, ClientOptions, DEFAULT_TIMEOUT, MemoMode};
pub use provider::{Call, Provider, ServeReport, Stopper};
#[cfg(feature = "remote")]
pub use remote::{
    ComputeOrGatewayError, Connection, ContentDigest, GatewayError, GatewayStats, REMOTE_SCHEME,
    RemoteCache, RemoteClient, RemoteKey, RemoteOptions, Uploaded,
};
pub use serving::HandlerError;
pub use session::{CONNECT_TIMEOUT, default_socket_path};
