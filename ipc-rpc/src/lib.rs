//! Typed request/response over `ipc-core` rings: the CRADLE protocol's
//! types, shared by the server, the client and anyone writing another peer.
//!
//! For applications:
//!
//! * [`Method`] — a method is a type: a name, a schema version, and its
//!   request and response types; its [`Method::ID`] is a hash of both.
//!   Declare one with [`method!`].
//! * [`Wire`] — what may travel in a frame: any rkyv-archivable type, derived
//!   with the [`rkyv`] this crate re-exports.
//! * [`CallError`], [`ErrorCode`], [`RemoteError`] — how a call fails.
//! * [`builtin`] — the methods every server offers (`ping`, `stats`);
//!   [`blob`] — blobs by handle and the memory cache; [`provide`] —
//!   methods offered by client processes (providers) and bytes methods;
//!   [`memo`] — memoized calls and compute-once keys; [`example`] — the
//!   example methods the `cradle-server` binary registers.
//!
//! For implementers of a peer (the server, the clients):
//!
//! * [`Outbox`] / [`Inbox`] — the sending and receiving halves. Values are
//!   serialized **directly into the ring** through a raw-pointer writer
//!   ([`codec::RingWriter`]), with a reusable scratch arena, so a call makes
//!   no heap allocation after warm-up. The receiving side copies the payload
//!   into private aligned memory and validates it (bytecheck) before
//!   touching it.
//! * [`handshake`], [`session`], [`wire`] — the control-socket handshake,
//!   the shared segment layouts and the frame kinds (see
//!   `docs/protocol.md`).
//!
//! A call, end to end, on an in-process ring (the server and the client do
//! the same over the shared session segment):
//!
//! ```
//! use ipc_core::ring::{FrameMeta, heap_channel};
//! use ipc_rpc::{Inbox, Method, Outbox, Wire, wire};
//!
//! ipc_rpc::method! {
//!     /// Adds two numbers.
//!     pub Add = "example.add" version 1: (u64, u64) => u64;
//! }
//!
//! let (requests_tx, requests_rx) = heap_channel(1 << 16)?;
//! let (responses_tx, responses_rx) = heap_channel(1 << 16)?;
//! let (mut client_out, mut client_in) = (Outbox::new(requests_tx), Inbox::new(responses_rx));
//! let (mut server_out, mut server_in) = (Outbox::new(responses_tx), Inbox::new(requests_rx));
//!
//! // Client: the method id in `tag`, its own request id.
//! let meta = FrameMeta { request_id: 1, tag: Add::ID, kind: wire::REQUEST, flags: wire::NO_FLAGS };
//! client_out.try_send(meta, &(2u64, 3u64))?;
//!
//! // Server: find the method by id, validate the request, answer.
//! let msg = server_in.try_recv()?.expect("a request");
//! assert_eq!(msg.meta.tag, Add::ID);
//! let (a, b) = <Add as Method>::Request::decode(msg.bytes)?;
//! let reply = FrameMeta { kind: wire::RESPONSE, ..msg.meta };
//! server_out.try_send(reply, &(a + b))?;
//!
//! // Client: match the response to its request id.
//! let msg = client_in.try_recv()?.expect("a response");
//! assert_eq!(msg.meta.request_id, 1);
//! assert_eq!(<Add as Method>::Response::decode(msg.bytes)?, 5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Feature flags
//!
//! None. The rkyv wire format (little-endian, aligned, 32-bit relative
//! pointers) is pinned once in the workspace `Cargo.toml` and announced in the
//! handshake ([`handshake::FORMAT`]).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::unnecessary_safety_comment)]

pub mod blob;
pub mod builtin;
pub mod codec;
mod endpoint;
mod error;
pub mod example;
pub mod handshake;
// Hash maps keyed by sequential ids: an implementation detail that the
// server and the client share, not part of the protocol or the API. Public
// (at this path) only so that both crates can use it; hidden from the docs.
#[doc(hidden)]
pub mod idmap;
pub mod memo;
mod method;
pub mod provide;
pub mod session;
pub mod wire;

#[cfg(test)]
mod tests;

pub use codec::Wire;
pub use endpoint::{Inbox, Message, Outbox, SMALL_WINDOW, SendError, encode_to_vec};
pub use error::{CallError, ErrorCode, ProtocolError, RemoteError};
pub use method::{Method, method_id, schema_hash};

/// The rkyv this crate is built with, re-exported: derive message types with
/// it (`#[derive(ipc_rpc::rkyv::Archive, ...)]` and `#[rkyv(crate = ...)]`).
///
/// rkyv is part of this crate's API, not a detail: [`Wire`] is implemented
/// for exactly the types that implement this rkyv's traits, and its types
/// appear in public signatures ([`codec::CodecError`], the `Arena` of
/// [`Wire::encode`], the `AlignedVec` of [`encode_to_vec`]). Using it
/// through this path means an application needs no rkyv dependency of its
/// own that would have to match the version and the wire format features
/// pinned in the workspace `Cargo.toml`.
///
/// ```
/// use ipc_rpc::rkyv;
///
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
/// #[rkyv(crate = rkyv)]
/// struct Point {
///     x: i32,
///     y: i32,
/// }
///
/// fn travels<T: ipc_rpc::Wire>() {}
/// travels::<Point>();
/// ```
pub use rkyv;
