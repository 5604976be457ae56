//! Typed request/response over `ipc-core` rings.
//!
//! * [`Method`] — a method is a type: a name, a schema version, and its
//!   request and response types; its [`Method::ID`] is a hash of both.
//! * [`Wire`] — what may travel in a frame: any rkyv-archivable type. Values
//!   are serialized **directly into the ring** through a raw-pointer writer
//!   ([`codec::RingWriter`]), with a reusable scratch arena, so a call makes no
//!   heap allocation after warm-up. The receiving side copies the payload into
//!   private aligned memory and validates it (bytecheck) before touching it.
//! * [`Outbox`] / [`Inbox`] — the sending and receiving halves that both the
//!   client and the server use.
//! * [`handshake`], [`session`] — the control-socket handshake and the shared
//!   segment layouts (see `docs/protocol.md`).
//! * [`builtin`] — the methods every server offers (`ping`, `stats`);
//!   [`blob`] — blobs by handle and the memory cache; [`example`] — the
//!   example blob method.
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
pub mod idmap;
mod method;
pub mod session;
pub mod wire;

pub use codec::Wire;
pub use endpoint::{Inbox, Message, Outbox, SMALL_WINDOW, SendError, encode_to_vec};
pub use error::{CallError, ErrorCode, ProtocolError, RemoteError};
pub use method::{Method, method_id};

/// Re-exported so that applications derive their message types with the
/// exact rkyv the workspace pins: `#[derive(ipc_rpc::rkyv::Archive, ...)]`.
pub use rkyv;
