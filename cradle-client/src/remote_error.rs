//! Why a remote operation failed ([`GatewayError`]), shared by the remote
//! client (`remote.rs`) and its download reader (`remote_stream.rs`).

use crate::error::BlobError;
use ipc_rpc::{CallError, ErrorCode};
use std::fmt;
use tonic::{Code, Status};

/// The longest `blake3` field a download's last message may carry.
pub(crate) const MAX_DIGEST_FIELD: usize = 64;

/// Why a remote operation failed.
///
/// ```
/// use cradle_client::GatewayError;
/// let e = GatewayError::Status { code: tonic::Code::Unauthenticated, message: "wrong token".into() };
/// assert_eq!(e.code(), Some(tonic::Code::Unauthenticated));
/// ```
#[derive(Debug)]
pub enum GatewayError {
    /// The URL, the TLS settings or the connection failed.
    Connect(String),
    /// The gateway answered with a gRPC status (refused token, limits,
    /// the local server unavailable, ...).
    Status {
        /// The gRPC code.
        code: Code,
        /// The gateway's message.
        message: String,
    },
    /// The call reached the server, which answered with this error, as a
    /// local caller would have seen it.
    Call(CallError),
    /// A local blob operation failed (through [`Connection`](crate::Connection)).
    Blob(BlobError),
    /// Downloaded bytes did not hash to the digest the gateway announced.
    DigestMismatch {
        /// What the gateway said.
        expected: String,
        /// What the bytes hash to.
        got: String,
    },
    /// The gateway's answer broke the protocol.
    Protocol(String),
}

impl GatewayError {
    /// The gRPC code, for a status from the gateway (a relayed server
    /// error has the code the gateway mapped it to).
    ///
    /// ```
    /// let e = cradle_client::GatewayError::Protocol("x".into());
    /// assert_eq!(e.code(), None);
    /// ```
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn from_status(s: Status) -> Self {
        let local = s
            .metadata()
            .get("cradle-error-code")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        match local {
            Some(c) => Self::Call(CallError::Remote {
                code: ErrorCode::from_u32(c),
                message: s.message().to_owned(),
            }),
            None => Self::Status {
                code: s.code(),
                message: s.message().to_owned(),
            },
        }
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(m) => write!(f, "cannot reach the gateway: {m}"),
            Self::Status { code, message } => write!(f, "gateway: {message} ({code:?})"),
            Self::Call(e) => write!(f, "{e}"),
            Self::Blob(e) => write!(f, "{e}"),
            Self::DigestMismatch { expected, got } => write!(
                f,
                "downloaded bytes hash to {got}, not {expected}: nothing returned"
            ),
            Self::Protocol(m) => write!(f, "the gateway broke the protocol: {m}"),
        }
    }
}

impl std::error::Error for GatewayError {}

impl From<Status> for GatewayError {
    fn from(s: Status) -> Self {
        Self::from_status(s)
    }
}
