//! The CRADLE gateway: a gRPC server (tonic, TLS by rustls) that runs
//! beside a local CRADLE server, as one more local client of it, and
//! serves its calls, its cache and its blobs to other machines.
//!
//! * Calls by method name and version, with the request and response bytes
//!   the local wire carries; blobs passed with a call and result blobs are
//!   named by BLAKE3 digest.
//! * Blobs move as streams of 1 MiB chunks, checked against their digest at
//!   the end; a client asks `FindMissingBlobs` first and uploads only what
//!   the gateway cannot name already.
//! * Compute-once keys (`CacheGetOrClaim`): a remote caller holds the
//!   server's claim on a key for the life of its stream, so local and
//!   remote callers compute a value once, and a claimant that dies frees it.
//! * Every request carries a bearer token (`--token-file`), checked before
//!   any work; without TLS the gateway binds a loopback address only.
//!
//! The service is defined in `cradle-proto/proto/cradle_gateway.proto`;
//! `cradle_client::RemoteClient` (feature `remote`) is its client.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = cradle_gateway::Config::new(
//!     cradle_client::default_socket_path(),
//!     "/home/me/.config/cradle/gateway.token".into(),
//! );
//! config.tls = Some(("cert.pem".into(), "key.pem".into()));
//! config.listen = "0.0.0.0:7443".parse()?;
//! let gw = cradle_gateway::Gateway::bind(config).await?;
//! gw.serve(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

// Files, bottom to top: `stats`, `errors` -> `auth`, `local` -> `service`
// -> `server`.
mod auth;
mod download;
mod errors;
mod local;
mod server;
mod service;
mod stats;

pub use auth::load_or_create_token;
pub use server::{Config, Gateway, StartError};
