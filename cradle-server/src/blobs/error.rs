//! The error every blob operation answers the client with.

use ipc_rpc::ErrorCode;
use std::os::fd::OwnedFd;

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlobError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl BlobError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn quota(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::QuotaExceeded, message)
    }

    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadHandle, message)
    }

    pub(crate) fn handler(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Handler, message)
    }

    pub(crate) fn closed() -> Self {
        Self::new(ErrorCode::Shutdown, "the session is closed")
    }
}

impl std::fmt::Display for BlobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A system call of the server failed.
pub(crate) fn sys(what: &str, e: impl std::fmt::Display) -> BlobError {
    BlobError::handler(format!("the server could not {what}: {e}"))
}

/// A descriptor to send to the client before the answer.
pub(crate) type Grant = Option<(u64, OwnedFd)>;

/// Bytes for people: `20 MiB`, `1.5 GiB`, `300 B`.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
