//! The Python exceptions, one per Rust error a caller can act on, with the
//! Rust error's name and its message (`Display`): `cradle.CradleError` is
//! the base of all of them.
//!
//! ```text
//! CradleError
//! ├── ConnectError ── NoServer
//! ├── PeerDead, Timeout, RingFull, MessageTooLarge, Forked, EncodeError
//! ├── ProtocolError (the server broke the protocol), MapError
//! └── RemoteError (the server answered with an error code)
//!     ├── QuotaExceeded, Shutdown, BadHandle, CacheFull
//!     └── UnknownMethod, Malformed, HandlerPanicked, HandlerError,
//!         ResponseTooLarge, ProviderGone, DeadlineExceeded, Busy,
//!         SchemaMismatch, Refused
//! ```

// `create_exception!` declares `pub` types; they are reachable from Python
// (the module registers them), not from Rust.
#![allow(unreachable_pub)]

use cradle_client::{BlobError, CallError, ConnectError as RustConnectError, ErrorCode};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    cradle,
    CradleError,
    PyException,
    "Base class of every CRADLE error; str(e) is the Rust error's message."
);
create_exception!(
    cradle,
    ConnectError,
    CradleError,
    "Connecting to the server failed (permissions, a foreign server, a refused or broken handshake)."
);
create_exception!(
    cradle,
    NoServer,
    ConnectError,
    "Nothing listens at the socket path: start `cradle-server`."
);
create_exception!(
    cradle,
    PeerDead,
    CradleError,
    "The server died (its control socket hung up); connect a new client once it runs again."
);
create_exception!(
    cradle,
    Timeout,
    CradleError,
    "No response before the call's deadline."
);
create_exception!(
    cradle,
    RingFull,
    CradleError,
    "The request ring has no room now (only from calls that do not wait for room)."
);
create_exception!(
    cradle,
    MessageTooLarge,
    CradleError,
    "The request does not fit in a frame: send large data as a blob."
);
create_exception!(
    cradle,
    Forked,
    CradleError,
    "The client was made in the parent of a fork(); the child must make its own."
);
create_exception!(
    cradle,
    EncodeError,
    CradleError,
    "The request could not be encoded."
);
create_exception!(
    cradle,
    ProtocolError,
    CradleError,
    "The server broke the protocol: drop the client, connect again, and report the server's bug."
);
create_exception!(
    cradle,
    MapError,
    CradleError,
    "A blob's shared memory could not be mapped (address space, vm.max_map_count)."
);
create_exception!(
    cradle,
    RemoteError,
    CradleError,
    "The server answered with an error code; the subclasses name the codes this build knows."
);
create_exception!(
    cradle,
    QuotaExceeded,
    RemoteError,
    "A per-session quota (leases, bytes, requests in flight) was exceeded."
);
create_exception!(
    cradle,
    Shutdown,
    RemoteError,
    "The server shut down (or is shutting down); connect a new client once it runs again."
);
create_exception!(
    cradle,
    BadHandle,
    RemoteError,
    "A blob handle is unknown, stale, or from another server instance."
);
create_exception!(
    cradle,
    CacheFull,
    RemoteError,
    "The memory cache cannot make room: everything it could evict is held."
);
create_exception!(
    cradle,
    UnknownMethod,
    RemoteError,
    "The server has no handler for the method."
);
create_exception!(
    cradle,
    Malformed,
    RemoteError,
    "The server could not decode the request as the method's request type."
);
create_exception!(
    cradle,
    HandlerPanicked,
    RemoteError,
    "The method's handler panicked."
);
create_exception!(
    cradle,
    HandlerError,
    RemoteError,
    "The method's handler returned an application error."
);
create_exception!(
    cradle,
    ResponseTooLarge,
    RemoteError,
    "The response did not fit in a frame."
);
create_exception!(
    cradle,
    ProviderGone,
    RemoteError,
    "The provider serving the call went away before answering."
);
create_exception!(
    cradle,
    DeadlineExceeded,
    RemoteError,
    "The call's deadline passed before it was delivered or answered."
);
create_exception!(
    cradle,
    Busy,
    RemoteError,
    "Every provider of the method is busy and its queue is full: retry later."
);
create_exception!(
    cradle,
    SchemaMismatch,
    RemoteError,
    "Caller and provider disagree on the method's types."
);
create_exception!(
    cradle,
    Refused,
    RemoteError,
    "The server refused a provider's registration."
);

/// Registers every exception on the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    macro_rules! add {
        ($($t:ident),* $(,)?) => { $( m.add(stringify!($t), py.get_type::<$t>())?; )* };
    }
    add!(
        CradleError,
        ConnectError,
        NoServer,
        PeerDead,
        Timeout,
        RingFull,
        MessageTooLarge,
        Forked,
        EncodeError,
        ProtocolError,
        MapError,
        RemoteError,
        QuotaExceeded,
        Shutdown,
        BadHandle,
        CacheFull,
        UnknownMethod,
        Malformed,
        HandlerPanicked,
        HandlerError,
        ResponseTooLarge,
        ProviderGone,
        DeadlineExceeded,
        Busy,
        SchemaMismatch,
        Refused,
    );
    Ok(())
}

/// The exception for a failed call. Made without the GIL (lazily).
pub(crate) fn call_err(e: CallError) -> PyErr {
    let msg = e.to_string();
    match e {
        CallError::Timeout(_) => Timeout::new_err(msg),
        CallError::PeerDead => PeerDead::new_err(msg),
        CallError::Shutdown => Shutdown::new_err(msg),
        CallError::RingFull => RingFull::new_err(msg),
        CallError::MessageTooLarge { .. } => MessageTooLarge::new_err(msg),
        CallError::Malformed(_) => ProtocolError::new_err(msg),
        CallError::QuotaExceeded(_) => QuotaExceeded::new_err(msg),
        CallError::Forked => Forked::new_err(msg),
        CallError::Encode(_) => EncodeError::new_err(msg),
        CallError::Remote { code, .. } => remote_err(code, msg),
        _ => CradleError::new_err(msg),
    }
}

/// The exception for an error frame with `code`.
fn remote_err(code: ErrorCode, msg: String) -> PyErr {
    match code {
        ErrorCode::UnknownMethod => UnknownMethod::new_err(msg),
        ErrorCode::Malformed => Malformed::new_err(msg),
        ErrorCode::HandlerPanicked => HandlerPanicked::new_err(msg),
        ErrorCode::Handler => HandlerError::new_err(msg),
        ErrorCode::QuotaExceeded => QuotaExceeded::new_err(msg),
        ErrorCode::ResponseTooLarge => ResponseTooLarge::new_err(msg),
        ErrorCode::Shutdown => Shutdown::new_err(msg),
        ErrorCode::BadHandle => BadHandle::new_err(msg),
        ErrorCode::CacheFull => CacheFull::new_err(msg),
        ErrorCode::ProviderGone => ProviderGone::new_err(msg),
        ErrorCode::DeadlineExceeded => DeadlineExceeded::new_err(msg),
        ErrorCode::Busy => Busy::new_err(msg),
        ErrorCode::SchemaMismatch => SchemaMismatch::new_err(msg),
        ErrorCode::Refused => Refused::new_err(msg),
        _ => RemoteError::new_err(msg),
    }
}

/// The exception for a failed blob operation.
pub(crate) fn blob_err(e: BlobError) -> PyErr {
    match e {
        BlobError::Call(c) => call_err(c),
        e @ BlobError::Map { .. } => MapError::new_err(e.to_string()),
        e => ProtocolError::new_err(e.to_string()),
    }
}

/// The exception for a failed connect.
pub(crate) fn connect_err(e: RustConnectError) -> PyErr {
    let msg = e.to_string();
    match e {
        RustConnectError::NoServer { .. } => NoServer::new_err(msg),
        _ => ConnectError::new_err(msg),
    }
}
