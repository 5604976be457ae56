//! Connection errors (call errors are `ipc_rpc::CallError`).

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why [`Client::connect`](crate::Client::connect) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nothing listens at the path (no socket file, or a stale one).
    NoServer {
        /// The socket path tried.
        path: PathBuf,
    },
    /// Connecting failed for another reason (permissions, ...).
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// The process at the socket runs as another user: its descriptors are
    /// not trusted.
    ForeignServer {
        /// Its uid.
        server_uid: u32,
        /// Ours.
        our_uid: u32,
    },
    /// The server refused the session.
    Refused {
        /// `Welcome::status`.
        status: u32,
        /// What it means.
        reason: &'static str,
    },
    /// The handshake broke the protocol (wrong magic, missing descriptors,
    /// segment checks failed, ...).
    Protocol(String),
    /// The handshake did not complete in time.
    Timeout,
    /// A system call failed during the handshake.
    Io(io::Error),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoServer { path } => write!(
                f,
                "no CRADLE server at {}; start one with `cradle-server`",
                path.display()
            ),
            Self::Connect { path, source } => {
                write!(f, "cannot connect to {}: {source}", path.display())
            }
            Self::ForeignServer {
                server_uid,
                our_uid,
            } => write!(
                f,
                "the server at this socket runs as uid {server_uid}, not as us (uid {our_uid}); refusing it"
            ),
            Self::Refused { status, reason } => {
                write!(
                    f,
                    "the server refused the session (status {status}): {reason}"
                )
            }
            Self::Protocol(m) => write!(f, "handshake failed: {m}"),
            Self::Timeout => f.write_str("the server did not complete the handshake in time"),
            Self::Io(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect { source, .. } => Some(source),
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            Self::Timeout
        } else {
            Self::Io(e)
        }
    }
}
