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

/// No flags. Response and error frames always carry 0.
pub const NO_FLAGS: u16 = 0;

/// Request flag: call a memoized method without its memo (the handler
/// runs; no entry is read or written). Ignored by methods that are not
/// memoized.
pub const MEMO_BYPASS: u16 = 0x0100;

/// Request flag: call a memoized method as if its memo had no entry for
/// this request (the handler runs), and replace the entry with the new
/// result. Ignored by methods that are not memoized. With
/// [`MEMO_BYPASS`], bypass wins.
pub const MEMO_REFRESH: u16 = 0x0200;

/// Every request flag this protocol defines; a server answers a request
/// frame with any other bit set `Malformed` and runs nothing.
///
/// ```
/// use ipc_rpc::wire::{MEMO_BYPASS, MEMO_REFRESH, REQUEST_FLAGS};
/// assert_eq!(REQUEST_FLAGS, MEMO_BYPASS | MEMO_REFRESH);
/// assert_eq!(0x0001 & !REQUEST_FLAGS, 0x0001, "an undefined bit");
/// ```
pub const REQUEST_FLAGS: u16 = MEMO_BYPASS | MEMO_REFRESH;
