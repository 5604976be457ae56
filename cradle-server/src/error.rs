//! One error type per operation.

use core::fmt;
use std::io;
use std::path::PathBuf;

/// Why [`ServerBuilder::bind`](crate::ServerBuilder::bind) refused to start.
///
/// Every variant's `Display` says what is wrong and what to do about it.
///
/// ```no_run
/// use cradle_server::{Server, StartError};
///
/// match Server::builder().bind() {
///     Ok(server) => server.run_until_signal()?,
///     Err(StartError::AlreadyRunning(path)) => {
///         println!("a server already listens on {}", path.display())
///     }
///     Err(e) => return Err(e.into()),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// A builder setting is out of range.
    InvalidConfig(String),
    /// The same method id was registered twice (or collides with a builtin).
    DuplicateMethod {
        /// The method's name.
        name: &'static str,
        /// Its wire id.
        id: u64,
    },
    /// The socket path has no parent directory or no file name.
    BadSocketPath(PathBuf),
    /// The socket path is longer than a Unix socket address allows.
    SocketPathTooLong(PathBuf),
    /// The socket directory did not exist and could not be created.
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `lstat` of the socket directory failed.
    StatDir {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The socket directory is a symbolic link.
    DirIsSymlink(PathBuf),
    /// The socket directory exists but is not a directory.
    NotADirectory(PathBuf),
    /// The socket directory belongs to another user.
    DirNotOwned {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        euid: u32,
    },
    /// The socket directory's mode is not exactly 0700.
    DirBadMode {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The lock file could not be opened or locked.
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Another server holds the lock for this socket.
    AlreadyRunning(PathBuf),
    /// A stale socket file could not be removed.
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Creating, binding or listening on the socket failed.
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A start-up system call failed (`prctl`, `epoll`, `eventfd`, ...).
    System {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The status segment could not be created.
    StatusSegment(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidConfig(m) => write!(f, "invalid configuration: {m}"),
            Self::DuplicateMethod { name, id } => write!(
                f,
                "method {name} (id {id:#018x}) is registered twice; each method takes one handler"
            ),
            Self::BadSocketPath(p) => write!(
                f,
                "socket path {} needs a directory and a file name (e.g. /run/user/1000/cradle/cradle.sock)",
                p.display()
            ),
            Self::SocketPathTooLong(p) => write!(
                f,
                "socket path {} is too long for a Unix socket (at most 107 bytes); choose a shorter --socket",
                p.display()
            ),
            Self::CreateDir { dir, source } => write!(
                f,
                "cannot create the socket directory {}: {source}; create it with mode 0700 or choose another --socket",
                dir.display()
            ),
            Self::StatDir { dir, source } => {
                write!(
                    f,
                    "cannot inspect the socket directory {}: {source}",
                    dir.display()
                )
            }
            Self::DirIsSymlink(d) => write!(
                f,
                "the socket directory {} is a symbolic link; refusing to start (remove it, or choose another --socket)",
                d.display()
            ),
            Self::NotADirectory(d) => write!(
                f,
                "the socket directory {} exists but is not a directory; remove it or choose another --socket",
                d.display()
            ),
            Self::DirNotOwned { dir, owner, euid } => write!(
                f,
                "the socket directory {} is owned by uid {owner}, not by us (uid {euid}); refusing to start (another user may control it): choose another --socket",
                dir.display()
            ),
            Self::DirBadMode { dir, mode } => write!(
                f,
                "the socket directory {} has mode {mode:04o}, but it must be private to you (0700): \
                 put the socket in a directory of its own, e.g. --socket {}",
                dir.display(),
                private_socket_suggestion().display()
            ),
            Self::Lock { path, source } => {
                write!(f, "cannot lock {}: {source}", path.display())
            }
            Self::AlreadyRunning(p) => write!(
                f,
                "another cradle-server is already running on {}",
                p.display()
            ),
            Self::RemoveStale { path, source } => write!(
                f,
                "cannot remove the stale socket {}: {source}",
                path.display()
            ),
            Self::Bind { path, source } => {
                write!(f, "cannot listen on {}: {source}", path.display())
            }
            Self::System { what, source } => write!(f, "{what} failed: {source}"),
            Self::StatusSegment(m) => write!(f, "cannot create the status segment: {m}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::CreateDir { source, .. }
            | Self::StatDir { source, .. }
            | Self::Lock { source, .. }
            | Self::RemoveStale { source, .. }
            | Self::Bind { source, .. }
            | Self::System { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why [`Server::run`](crate::Server::run) stopped with an error.
///
/// ```no_run
/// let server = cradle_server::Server::builder().bind()?;
/// if let Err(e) = server.run() {
///     eprintln!("cradle-server: {e}"); // e.g. "worker 0 failed: ..."
///     std::process::exit(1);
/// }
/// # Ok::<(), cradle_server::StartError>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerError {
    /// A thread could not be spawned.
    Spawn(io::Error),
    /// `epoll_wait` or another call the acceptor depends on failed.
    Acceptor(io::Error),
    /// A worker thread stopped with an error.
    Worker {
        /// The worker's index.
        index: usize,
        /// What went wrong.
        message: String,
    },
    /// A server thread panicked (a bug in the server, not in a handler:
    /// handler panics are caught and answered).
    Panicked(&'static str),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spawn(e) => write!(f, "cannot spawn a server thread: {e}"),
            Self::Acceptor(e) => write!(f, "the connection acceptor failed: {e}"),
            Self::Worker { index, message } => write!(f, "worker {index} failed: {message}"),
            Self::Panicked(what) => write!(f, "the {what} thread panicked (a server bug)"),
        }
    }
}

impl std::error::Error for ServerError {}

/// The error a handler returns; the client receives it as
/// `CallError::Remote { code: ErrorCode::Handler, message }`.
///
/// ```
/// use cradle_server::HandlerError;
/// let e = HandlerError::new("no such key");
/// assert_eq!(e.to_string(), "no such key");
/// let e: HandlerError = String::from("bad input").into();
/// assert_eq!(e.message, "bad input");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// A message a person can act on.
    pub message: String,
    /// The error code the client sees ([`ErrorCode::Handler`](ipc_rpc::ErrorCode::Handler) unless made
    /// with [`with_code`](Self::with_code)).
    pub code: ipc_rpc::ErrorCode,
}

impl HandlerError {
    /// An error with this message.
    ///
    /// ```
    /// use cradle_server::HandlerError;
    /// let e = HandlerError::new("width must be a multiple of 8");
    /// assert_eq!(e.to_string(), "width must be a multiple of 8");
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_code(ipc_rpc::ErrorCode::Handler, message)
    }

    /// An error with a specific code (`QuotaExceeded`, `CacheFull`, ...).
    ///
    /// ```
    /// use cradle_server::HandlerError;
    /// use ipc_rpc::ErrorCode;
    /// let e = HandlerError::with_code(ErrorCode::QuotaExceeded, "at most 16 images per call");
    /// # let _ = e;
    /// ```
    pub fn with_code(code: ipc_rpc::ErrorCode, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code,
        }
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HandlerError {}

/// A socket path in a private directory of the user's own, for advice: the
/// default's directory (`$XDG_RUNTIME_DIR/cradle`, else `/tmp/cradle-$UID`).
fn private_socket_suggestion() -> PathBuf {
    ipc_rpc::session::default_socket_path()
}
