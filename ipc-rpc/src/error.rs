//! The error model of a call (docs/design.md §7).

use crate::codec::CodecError;
use core::fmt;
use ipc_core::ring::RingError;
use std::time::Duration;

/// Why the server answered a request with an error frame.
///
/// ```
/// use ipc_rpc::ErrorCode;
///
/// assert_eq!(ErrorCode::from_u32(ErrorCode::CacheFull.to_u32()), ErrorCode::CacheFull);
/// assert_eq!(ErrorCode::from_u32(77), ErrorCode::Other(77));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The server has no handler for the method id.
    UnknownMethod,
    /// The request did not validate as the method's request type.
    Malformed,
    /// The handler panicked; the message is the panic's.
    HandlerPanicked,
    /// The handler returned an application error.
    Handler,
    /// A per-session quota (requests in flight, ...) was exceeded.
    QuotaExceeded,
    /// The response did not fit in a frame.
    ResponseTooLarge,
    /// The server is shutting down.
    Shutdown,
    /// A blob handle is unknown, stale, from another server instance, or
    /// does not match the server's table.
    BadHandle,
    /// The memory cache cannot make room: everything it could evict is held.
    CacheFull,
    /// The provider serving the call went away (died, unregistered) before
    /// answering; the call may or may not have run.
    ProviderGone,
    /// The call's deadline passed before it was delivered or answered.
    DeadlineExceeded,
    /// Every provider of the method is at its concurrency and the method's
    /// queue in the server is full: retry later.
    Busy,
    /// The caller's (or a new provider's) schema hash differs from the one
    /// the method is offered with: the two sides disagree on its types.
    SchemaMismatch,
    /// A provider's registration was refused (reserved name, a limit).
    Refused,
    /// A code this build does not know (a newer server).
    Other(u32),
}

impl ErrorCode {
    /// The wire value.
    ///
    /// ```
    /// assert_eq!(ipc_rpc::ErrorCode::UnknownMethod.to_u32(), 1);
    /// ```
    pub const fn to_u32(self) -> u32 {
        match self {
            Self::UnknownMethod => 1,
            Self::Malformed => 2,
            Self::HandlerPanicked => 3,
            Self::Handler => 4,
            Self::QuotaExceeded => 5,
            Self::ResponseTooLarge => 6,
            Self::Shutdown => 7,
            Self::BadHandle => 8,
            Self::CacheFull => 9,
            Self::ProviderGone => 10,
            Self::DeadlineExceeded => 11,
            Self::Busy => 12,
            Self::SchemaMismatch => 13,
            Self::Refused => 14,
            Self::Other(c) => c,
        }
    }

    /// From the wire value.
    ///
    /// ```
    /// assert_eq!(ipc_rpc::ErrorCode::from_u32(8), ipc_rpc::ErrorCode::BadHandle);
    /// ```
    pub const fn from_u32(c: u32) -> Self {
        match c {
            1 => Self::UnknownMethod,
            2 => Self::Malformed,
            3 => Self::HandlerPanicked,
            4 => Self::Handler,
            5 => Self::QuotaExceeded,
            6 => Self::ResponseTooLarge,
            7 => Self::Shutdown,
            8 => Self::BadHandle,
            9 => Self::CacheFull,
            10 => Self::ProviderGone,
            11 => Self::DeadlineExceeded,
            12 => Self::Busy,
            13 => Self::SchemaMismatch,
            14 => Self::Refused,
            c => Self::Other(c),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownMethod => f.write_str("unknown method"),
            Self::Malformed => f.write_str("malformed request"),
            Self::HandlerPanicked => f.write_str("handler panicked"),
            Self::Handler => f.write_str("handler error"),
            Self::QuotaExceeded => f.write_str("quota exceeded"),
            Self::ResponseTooLarge => f.write_str("response too large"),
            Self::Shutdown => f.write_str("server shutting down"),
            Self::BadHandle => f.write_str("bad blob handle"),
            Self::CacheFull => f.write_str("cache full"),
            Self::ProviderGone => f.write_str("provider gone"),
            Self::DeadlineExceeded => f.write_str("deadline exceeded"),
            Self::Busy => f.write_str("busy"),
            Self::SchemaMismatch => f.write_str("schema mismatch"),
            Self::Refused => f.write_str("refused"),
            Self::Other(c) => write!(f, "error code {c}"),
        }
    }
}

/// The payload of an [`ERROR`](crate::wire::ERROR) frame.
///
/// ```
/// use ipc_rpc::{CallError, ErrorCode, RemoteError};
///
/// let frame = RemoteError { code: ErrorCode::BadHandle.to_u32(), message: "stale".into() };
/// let e = CallError::from_remote(frame);
/// assert_eq!(e.code(), Some(ErrorCode::BadHandle));
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct RemoteError {
    /// [`ErrorCode::to_u32`].
    pub code: u32,
    /// A message a person can act on.
    pub message: String,
}

/// Why a call failed.
///
/// Branch on what a caller can act on; [`Display`](std::fmt::Display)
/// says what to do about the rest.
///
/// ```
/// use ipc_rpc::{CallError, ErrorCode};
/// use std::time::Duration;
///
/// fn retry_later(e: &CallError) -> bool {
///     match e {
///         CallError::Timeout(_) | CallError::RingFull | CallError::QuotaExceeded(_) => true,
///         CallError::Remote { code: ErrorCode::CacheFull, .. } => true,
///         _ => false,
///     }
/// }
/// assert!(retry_later(&CallError::Timeout(Duration::from_secs(1))));
/// assert!(!retry_later(&CallError::PeerDead));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum CallError {
    /// No response before the deadline.
    Timeout(Duration),
    /// The server died (its control socket hung up).
    PeerDead,
    /// The server shut down cleanly.
    Shutdown,
    /// `try_call`: the request ring has no room now.
    RingFull,
    /// The request does not fit in a frame: `len` bytes against `max`. Send
    /// large data as a blob.
    MessageTooLarge {
        /// Bytes needed (at least).
        len: usize,
        /// The ring's payload limit.
        max: usize,
    },
    /// The server broke the protocol: its answer did not validate, or a
    /// ring was corrupt. What exactly is in the [`ProtocolError`].
    Malformed(ProtocolError),
    /// A per-session quota was exceeded.
    QuotaExceeded(String),
    /// The server answered with an error.
    Remote {
        /// What kind of error.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// This client was created in the parent of a `fork`; a child process
    /// must connect its own client.
    Forked,
    /// The request could not be encoded (rkyv's error).
    Encode(CodecError),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(d) => write!(
                f,
                "no response within {d:?}; the server is busy or stopped: retry, or give the call a longer timeout"
            ),
            Self::PeerDead => f.write_str(
                "the CRADLE server died (its control socket hung up); start it again and connect a new client",
            ),
            Self::Shutdown => f.write_str(
                "the CRADLE server shut down; connect a new client once it runs again",
            ),
            Self::RingFull => {
                f.write_str("request ring full; retry, or use call() to wait for room")
            }
            Self::MessageTooLarge { len, max } => write!(
                f,
                "request of at least {len} bytes exceeds the frame limit of {max} bytes; send large data as a blob"
            ),
            Self::Malformed(e) => write!(f, "{e}"),
            Self::QuotaExceeded(m) => write!(f, "quota exceeded: {m}"),
            Self::Remote { code, message } => write!(f, "server error ({code}): {message}"),
            Self::Forked => f.write_str(
                "this client belongs to the parent process; connect a new client after fork()",
            ),
            Self::Encode(e) => write!(
                f,
                "could not encode the request ({e}); check the request value's rkyv serialization"
            ),
        }
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Malformed(e) => Some(e),
            Self::Encode(e) => Some(e),
            _ => None,
        }
    }
}

impl CallError {
    /// The server's error code, if the server answered with an error frame
    /// (`Shutdown` and `QuotaExceeded` included).
    ///
    /// ```
    /// use ipc_rpc::{CallError, ErrorCode};
    ///
    /// let e = CallError::QuotaExceeded("64 leases".into());
    /// assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded));
    /// assert_eq!(CallError::PeerDead.code(), None);
    /// ```
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Remote { code, .. } => Some(*code),
            Self::QuotaExceeded(_) => Some(ErrorCode::QuotaExceeded),
            Self::Shutdown => Some(ErrorCode::Shutdown),
            _ => None,
        }
    }

    /// The error a client reports for a server error frame.
    ///
    /// ```
    /// use ipc_rpc::{CallError, ErrorCode, RemoteError};
    ///
    /// let e = CallError::from_remote(RemoteError {
    ///     code: ErrorCode::CacheFull.to_u32(),
    ///     message: "everything is held".into(),
    /// });
    /// assert!(matches!(e, CallError::Remote { code: ErrorCode::CacheFull, .. }));
    /// ```
    pub fn from_remote(e: RemoteError) -> Self {
        match ErrorCode::from_u32(e.code) {
            ErrorCode::QuotaExceeded => Self::QuotaExceeded(e.message),
            ErrorCode::Shutdown => Self::Shutdown,
            code => Self::Remote {
                code,
                message: e.message,
            },
        }
    }
}

/// How the server broke the protocol. The session cannot be trusted after
/// one: drop the client, connect again, and report the server's bug.
///
/// ```
/// use ipc_rpc::{CallError, ProtocolError};
///
/// let e = CallError::Malformed(ProtocolError::FrameKind(9));
/// assert!(e.to_string().contains("connect again"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A response did not validate as the method's response type.
    Decode {
        /// The method called ([`Method::ID`](crate::Method::ID)).
        method: u64,
        /// rkyv's validation error.
        source: CodecError,
    },
    /// An error frame's payload did not validate as a [`RemoteError`].
    ErrorFrame(CodecError),
    /// The response to a call names another method.
    WrongMethod {
        /// The method called.
        called: u64,
        /// The method the response names.
        answered: u64,
    },
    /// A frame of a kind a response ring never carries.
    FrameKind(u16),
    /// A ring shared with the server is corrupt (its indices or frames
    /// break the ring protocol).
    Ring(RingError),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Decode { method, source } => write!(
                f,
                "the response to method {method:#x} did not validate ({source}); client and server disagree on the method's types: build both from the same definition, and bump VERSION when its types change"
            ),
            Self::ErrorFrame(e) => write!(
                f,
                "the server sent an error frame that did not validate ({e}); connect again, and report the server's bug"
            ),
            Self::WrongMethod { called, answered } => write!(
                f,
                "the server answered a call of method {called:#x} with a response for {answered:#x}; connect again, and report the server's bug"
            ),
            Self::FrameKind(k) => write!(
                f,
                "the server sent a frame of unknown kind {k}; connect again, and report the server's bug"
            ),
            Self::Ring(e) => write!(
                f,
                "a ring shared with the server is corrupt ({e}); this session is unusable: connect again"
            ),
        }
    }
}

impl std::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Decode { source, .. } | Self::ErrorFrame(source) => Some(source),
            Self::Ring(e) => Some(e),
            _ => None,
        }
    }
}
