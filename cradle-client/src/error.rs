//! The client's errors: connecting ([`ConnectError`], with the handshake's
//! [`HandshakeError`]) and operations that map shared memory
//! ([`BlobError`]). A call's own failures are `ipc_rpc::CallError`.

use ipc_core::ring::RingError;
use ipc_core::shm::{OffsetError, OpenError};
use ipc_rpc::blob::BlobHandle;
use ipc_rpc::{CallError, ErrorCode};
use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why [`Client::connect`](crate::Client::connect) (or
/// [`AsyncClient::connect`](crate::AsyncClient::connect)) failed.
///
/// ```no_run
/// use cradle_client::{Client, ConnectError};
///
/// match Client::connect("/run/user/1000/cradle.sock") {
///     Ok(client) => println!("session {}", client.session_id()),
///     Err(ConnectError::NoServer { path }) => {
///         eprintln!("nothing listens at {}: start `cradle-server`", path.display())
///     }
///     Err(e) => eprintln!("{e}"),
/// }
/// ```
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
    /// The handshake broke the protocol: what exactly is in the
    /// [`HandshakeError`].
    Protocol(HandshakeError),
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
                write!(
                    f,
                    "cannot connect to {} ({source}); check the socket's permissions, or set CRADLE_SOCKET to the server's socket",
                    path.display()
                )
            }
            Self::ForeignServer {
                server_uid,
                our_uid,
            } => write!(
                f,
                "the server at this socket runs as uid {server_uid}, not as us (uid {our_uid}); refusing it: start your own server on a socket in a private directory"
            ),
            Self::Refused { status, reason } => {
                write!(
                    f,
                    "the server refused the session (status {status}): {reason}"
                )
            }
            Self::Protocol(e) => write!(f, "handshake failed: {e}"),
            Self::Timeout => f.write_str(
                "the server did not complete the handshake in time; is it overloaded or stopped (SIGSTOP)?",
            ),
            Self::Io(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect { source, .. } => Some(source),
            Self::Protocol(e) => Some(e),
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

impl From<HandshakeError> for ConnectError {
    fn from(e: HandshakeError) -> Self {
        Self::Protocol(e)
    }
}

/// How a handshake broke the protocol (docs/protocol.md): the process at the
/// socket is not a CRADLE server of this version, or what it sent fails the
/// checks made before anything is mapped.
///
/// ```
/// use cradle_client::HandshakeError;
///
/// let e = HandshakeError::Descriptors { expected: 3, got: 1 };
/// assert!(e.to_string().contains("3 descriptors"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The server closed the connection instead of answering.
    Closed,
    /// The answer does not start with the Welcome magic: not a CRADLE server.
    NotCradle {
        /// The magic found.
        magic: u64,
    },
    /// The Welcome came with the wrong number of descriptors.
    Descriptors {
        /// How many the protocol sends.
        expected: usize,
        /// How many arrived.
        got: usize,
    },
    /// The announced ring capacity is not one a ring can have.
    Capacity(RingError),
    /// The announced session segment length does not fit the rings.
    SessionLength {
        /// The length announced.
        announced: u64,
        /// The length rings of the announced capacity need.
        expected: usize,
    },
    /// The announced status segment length does not fit this process.
    StatusLength(u64),
    /// Our worker's word lies outside the status segment.
    WorkerOutside {
        /// The worker index announced.
        worker: u32,
        /// The status segment's length.
        status_len: usize,
    },
    /// A segment failed the checks of opening it (size, seals, header), or
    /// mapping it failed.
    Segment {
        /// `"session"` or `"status"`.
        which: &'static str,
        /// What failed.
        source: OpenError,
    },
    /// The worker's word in the status segment is misplaced.
    StatusWord(OffsetError),
    /// The doorbell descriptor is not an eventfd.
    Doorbell(io::Error),
    /// A ring region does not fit the session segment.
    Ring(RingError),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UPGRADE: &str = "client and server must be built from the same version";
        match self {
            Self::Closed => f.write_str(
                "the server closed the connection during the handshake; see the server's log",
            ),
            Self::NotCradle { magic } => write!(
                f,
                "the process at the socket is not a CRADLE server (welcome magic {magic:#018x}); check the socket path"
            ),
            Self::Descriptors { expected, got } => write!(
                f,
                "expected {expected} descriptors with the welcome, got {got}; {UPGRADE}"
            ),
            Self::Capacity(e) => write!(f, "bad ring capacity ({e}); {UPGRADE}"),
            Self::SessionLength {
                announced,
                expected,
            } => write!(
                f,
                "session segment of {announced} bytes announced, the rings need {expected}; {UPGRADE}"
            ),
            Self::StatusLength(n) => {
                write!(f, "status segment of {n} bytes announced; {UPGRADE}")
            }
            Self::WorkerOutside { worker, status_len } => write!(
                f,
                "worker {worker} lies outside the status segment of {status_len} bytes; {UPGRADE}"
            ),
            Self::Segment { which, source } => {
                write!(f, "the {which} segment was refused ({source}); {UPGRADE}")
            }
            Self::StatusWord(e) => write!(f, "status segment: {e}; {UPGRADE}"),
            Self::Doorbell(e) => write!(f, "the doorbell descriptor is not an eventfd ({e})"),
            Self::Ring(e) => write!(f, "session rings: {e}; {UPGRADE}"),
        }
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Capacity(e) | Self::Ring(e) => Some(e),
            Self::Segment { source, .. } => Some(source),
            Self::StatusWord(e) => Some(e),
            Self::Doorbell(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a blob operation failed: creating a blob, sealing it, getting one
/// (by handle or from the cache), adopting one. These map shared memory, so
/// besides the call they can fail on a segment the server sent.
///
/// Branch on the call's failure with [`BlobError::call`] or
/// [`BlobError::code`]:
///
/// ```no_run
/// use cradle_client::{BlobError, CallError, Client, ErrorCode};
///
/// let client = Client::connect_default()?;
/// # let handle = client.create(1)?.seal()?.handle().clone();
/// match client.get(&handle) {
///     Ok(blob) => println!("{} bytes", blob.len()),
///     Err(e) if e.code() == Some(ErrorCode::BadHandle) => eprintln!("gone: {e}"),
///     Err(BlobError::Call(CallError::QuotaExceeded(m))) => eprintln!("too many leases: {m}"),
///     Err(e) => return Err(e.into()),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum BlobError {
    /// A call to the server failed.
    Call(CallError),
    /// The server announced the descriptor of `segment` but did not send it.
    MissingDescriptor {
        /// The segment.
        segment: u64,
    },
    /// A segment's descriptor failed the checks of opening it (size,
    /// seals, header), or mapping it failed (`Map`: out of address space,
    /// `vm.max_map_count`).
    Map {
        /// The segment.
        segment: u64,
        /// What failed.
        source: OpenError,
    },
    /// The server answered with another segment than the one asked for, or
    /// one of a kind that cannot hold sealed blobs.
    WrongSegment {
        /// The segment asked for.
        asked: u64,
        /// The segment answered.
        got: u64,
        /// Its kind.
        kind: u32,
    },
    /// The handle's bytes lie outside its segment.
    OutsideSegment {
        /// The handle.
        handle: BlobHandle,
        /// The segment's length.
        segment_len: usize,
    },
    /// A call passes more blobs than one envelope lists.
    TooManyBlobs {
        /// Blobs passed.
        count: usize,
        /// Most one call may pass.
        max: usize,
    },
}

impl BlobError {
    /// The call's failure, if a call failed.
    ///
    /// ```
    /// use cradle_client::{BlobError, CallError};
    ///
    /// let e = BlobError::from(CallError::PeerDead);
    /// assert!(matches!(e.call(), Some(CallError::PeerDead)));
    /// ```
    pub fn call(&self) -> Option<&CallError> {
        match self {
            Self::Call(e) => Some(e),
            _ => None,
        }
    }

    /// The server's error code, if it answered with an error.
    ///
    /// ```
    /// use cradle_client::{BlobError, CallError, ErrorCode};
    ///
    /// let e = BlobError::from(CallError::QuotaExceeded("leases".into()));
    /// assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded));
    /// ```
    pub fn code(&self) -> Option<ErrorCode> {
        self.call().and_then(CallError::code)
    }
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const BUG: &str =
            "the server broke the blob protocol; connect again, and report the server's bug";
        match self {
            Self::Call(e) => write!(f, "{e}"),
            Self::MissingDescriptor { segment } => write!(
                f,
                "the server announced the descriptor of segment {segment} but did not send it; {BUG}"
            ),
            Self::Map {
                segment,
                source: OpenError::Map(e),
            } => write!(
                f,
                "cannot map segment {segment} ({e}); free address space or raise vm.max_map_count, or drop blobs you no longer read"
            ),
            Self::Map { segment, source } => {
                write!(f, "segment {segment} was refused ({source}); {BUG}")
            }
            Self::WrongSegment { asked, got, kind } => write!(
                f,
                "asked for segment {asked}, the server answered with {got} of kind {kind}; {BUG}"
            ),
            Self::OutsideSegment {
                handle,
                segment_len,
            } => write!(
                f,
                "{handle} lies outside its segment of {segment_len} bytes; {BUG}"
            ),
            Self::TooManyBlobs { count, max } => write!(
                f,
                "a call passes at most {max} blobs, not {count}; pass the rest in several calls or list their handles in the request"
            ),
        }
    }
}

impl std::error::Error for BlobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Call(e) => Some(e),
            Self::Map { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<CallError> for BlobError {
    fn from(e: CallError) -> Self {
        Self::Call(e)
    }
}
