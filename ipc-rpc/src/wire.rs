//! Frame kinds and flags of the RPC layer (`FrameMeta::kind`, `flags`).
//!
//! | kind | direction | `tag` | `request_id` | payload |
//! |---|---|---|---|---|
//! | [`REQUEST`] | client → server | method id | caller's id | archived `Request` |
//! | [`RESPONSE`] | server → client | method id | the request's id | archived `Response` |
//! | [`ERROR`] | server → client | method id (0 if unknown) | the request's id | archived [`RemoteError`](crate::RemoteError) |
//!
//! Request ids are chosen by the client, 64-bit, never reused within a
//! session; the server echoes them. Responses may come in any order.

/// A request frame.
pub const REQUEST: u16 = 1;
/// A successful response frame.
pub const RESPONSE: u16 = 2;
/// An error response frame.
pub const ERROR: u16 = 3;

/// No flags are defined yet; peers must send 0 and ignore unknown bits.
pub const NO_FLAGS: u16 = 0;
