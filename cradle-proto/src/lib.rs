//! The gRPC face of a CRADLE server: the messages and service stubs of the
//! gateway (`cradle-gateway`) and of the remote client
//! (`cradle_client::RemoteClient`, feature `remote`), generated at build
//! time from `proto/cradle_gateway.proto` by protox and tonic (no `protoc`).
//!
//! Both sides depend on this crate; it depends on neither, so the
//! dependencies point one way: `cradle-proto` <- `cradle-client` <-
//! `cradle-gateway`.
//!
//! ```
//! use cradle_proto::v1::Digest;
//! let d = Digest { blake3: vec![0; 32], size: 0 };
//! assert_eq!(d.blake3.len(), 32);
//! ```

/// Version 1 of the service (`package cradle.gateway.v1`): generated code.
///
/// ```
/// use cradle_proto::v1::{CallRequest, gateway_client::GatewayClient};
/// let req = CallRequest { method: "cradle.ping".into(), version: 1, ..Default::default() };
/// assert_eq!(req.version, 1);
/// # let _ = std::any::type_name::<GatewayClient<tonic::transport::Channel>>();
/// ```
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod v1 {
    tonic::include_proto!("cradle.gateway.v1");
}

/// The length of a BLAKE3 digest in bytes.
///
/// ```
/// assert_eq!(cradle_proto::DIGEST_LEN, 32);
/// ```
pub const DIGEST_LEN: usize = 32;

/// The largest chunk a transfer puts in one message (1 MiB): well under
/// gRPC's default 4 MiB message limit.
///
/// ```
/// assert_eq!(cradle_proto::CHUNK_BYTES, 1 << 20);
/// ```
pub const CHUNK_BYTES: usize = 1 << 20;

/// The metadata key of the bearer token.
///
/// ```
/// assert_eq!(cradle_proto::AUTHORIZATION, "authorization");
/// ```
pub const AUTHORIZATION: &str = "authorization";
