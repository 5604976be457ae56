//! Start-up: the socket directory, the singleton lock, the listener, process
//! hardening and the status segment (docs/design.md §3, §10).

use crate::error::StartError;
use ipc_core::shm::{Access, Mapping, Seals, Segment, init_header};
use ipc_core::sync::Ordering;
use ipc_rpc::session::{
    LAYOUT_VERSION, STATUS_EPOCH_OFFSET, STATUS_KIND, STATUS_MAGIC, STATUS_PID_OFFSET,
    STATUS_WORKERS_OFFSET, status_len,
};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Backlog of the listening socket.
const LISTEN_BACKLOG: i32 = 1024;

/// The default control socket: `$XDG_RUNTIME_DIR/cradle/cradle.sock`, else
/// `/tmp/cradle-$UID/cradle.sock`.
///
/// ```
/// let p = cradle_server::default_socket_path();
/// assert!(p.ends_with("cradle.sock"));
/// ```
pub fn default_socket_path() -> PathBuf {
    // One definition for the server and every client.
    ipc_rpc::session::default_socket_path()
}

/// Splits a socket path into its directory and file name.
pub(crate) fn split_socket_path(path: &Path) -> Result<(PathBuf, String), StartError> {
    let bad = || StartError::BadSocketPath(path.to_owned());
    let name = path.file_name().ok_or_else(bad)?.to_str().ok_or_else(bad)?;
    // Too long for a socket address: refuse before creating anything.
    if SocketAddrUnix::new(path).is_err() {
        return Err(StartError::SocketPathTooLong(path.to_owned()));
    }
    let dir = match path.parent() {
        Some(d) if d.as_os_str().is_empty() => PathBuf::from("."),
        Some(d) => d.to_owned(),
        None => return Err(bad()),
    };
    Ok((dir, name.to_owned()))
}

/// Creates the socket directory (mode 0700) if it is missing, then checks it
/// with `lstat`: a directory, not a symlink, owned by `euid`, mode exactly
/// 0700.
pub(crate) fn ensure_socket_dir(dir: &Path, euid: u32) -> Result<(), StartError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut b = std::fs::DirBuilder::new();
            b.mode(0o700);
            match b.create(dir) {
                Ok(()) => {
                    // The umask may have removed bits we asked for; the mode
                    // must be exact.
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
                        |source| StartError::CreateDir {
                            dir: dir.to_owned(),
                            source,
                        },
                    )?;
                }
                // Someone created it meanwhile: the checks below judge it.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(StartError::CreateDir {
                        dir: dir.to_owned(),
                        source,
                    });
                }
            }
        }
        Err(source) => {
            return Err(StartError::StatDir {
                dir: dir.to_owned(),
                source,
            });
        }
        Ok(_) => {}
    }
    check_socket_dir(dir, euid)
}

/// The `lstat` checks of [`ensure_socket_dir`].
pub(crate) fn check_socket_dir(dir: &Path, euid: u32) -> Result<(), StartError> {
    let md = std::fs::symlink_metadata(dir).map_err(|source| StartError::StatDir {
        dir: dir.to_owned(),
        source,
    })?;
    let ft = md.file_type();
    if ft.is_symlink() {
        return Err(StartError::DirIsSymlink(dir.to_owned()));
    }
    if !ft.is_dir() {
        return Err(StartError::NotADirectory(dir.to_owned()));
    }
    if md.uid() != euid {
        return Err(StartError::DirNotOwned {
            dir: dir.to_owned(),
            owner: md.uid(),
            euid,
        });
    }
    let mode = md.mode() & 0o7777;
    if mode != 0o700 {
        return Err(StartError::DirBadMode {
            dir: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Takes the singleton lock `<dir>/<name>.lock` (exclusive, non-blocking).
/// The returned file holds the lock until it is dropped.
pub(crate) fn take_lock(dir: &Path, name: &str, socket: &Path) -> Result<File, StartError> {
    let path = dir.join(format!("{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|source| StartError::Lock {
            path: path.clone(),
            source,
        })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(StartError::AlreadyRunning(socket.to_owned())),
        Err(e) => Err(StartError::Lock {
            path,
            source: e.into(),
        }),
    }
}

/// Removes a stale socket file (we hold the lock, so nobody serves on it).
pub(crate) fn remove_stale(path: &Path) -> Result<(), StartError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed a stale socket");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StartError::RemoveStale {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Binds and listens (`SOCK_CLOEXEC | SOCK_NONBLOCK`, backlog 1024); the
/// socket file gets mode 0600.
pub(crate) fn bind_listener(path: &Path) -> Result<OwnedFd, StartError> {
    let err = |source: io::Error| StartError::Bind {
        path: path.to_owned(),
        source,
    };
    let addr = SocketAddrUnix::new(path).map_err(|e| {
        if e == rustix::io::Errno::NAMETOOLONG || e == rustix::io::Errno::INVAL {
            StartError::SocketPathTooLong(path.to_owned())
        } else {
            err(e.into())
        }
    })?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| err(e.into()))?;
    rustix::net::bind(&fd, &addr).map_err(|e| err(e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    rustix::net::listen(&fd, LISTEN_BACKLOG).map_err(|e| err(e.into()))?;
    Ok(fd)
}

/// `prctl(PR_SET_DUMPABLE, 0)`: other processes of the user cannot reach our
/// descriptors through `/proc/<pid>/fd` nor ptrace us.
pub(crate) fn set_not_dumpable() -> Result<(), StartError> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable).map_err(
        |e| StartError::System {
            what: "prctl(PR_SET_DUMPABLE, 0)",
            source: e.into(),
        },
    )
}

/// Raises the `RLIMIT_NOFILE` soft limit to the hard limit (a failure is
/// logged, not fatal: the server still works, with fewer sessions).
pub(crate) fn raise_nofile_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let Some(hard) = lim.maximum else {
        tracing::debug!("RLIMIT_NOFILE hard limit is unlimited; soft limit left as is");
        return;
    };
    if lim.current.is_some_and(|soft| soft >= hard) {
        return;
    }
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        },
    ) {
        Ok(()) => tracing::debug!(limit = hard, "raised RLIMIT_NOFILE"),
        Err(e) => tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE to its hard limit"),
    }
}

/// A random epoch for this server instance.
pub(crate) fn random_epoch() -> u64 {
    let mut b = [0u8; 8];
    let from_urandom = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    let v = u64::from_ne_bytes(b);
    match from_urandom {
        Ok(()) if v != 0 => v,
        _ => {
            // Not secret, only distinct between instances: time and pid will do.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            (t ^ ((std::process::id() as u64) << 40)) | 1
        }
    }
}

/// The server's status segment: its writable mapping (the server keeps it
/// to write the workers' `waiting` words) and the read-only descriptor every
/// client receives.
#[derive(Debug)]
pub(crate) struct StatusSegment {
    /// Kept so the memfd stays referenced for the server's life.
    pub(crate) _segment: Segment,
    /// The read-write mapping, made before the seals.
    pub(crate) map: std::sync::Arc<Mapping>,
    /// A read-only descriptor, sent to every client.
    pub(crate) ro_fd: OwnedFd,
    /// Length in bytes.
    pub(crate) len: usize,
}

/// Creates, fills, seals (`SHRINK | GROW | FUTURE_WRITE | SEAL`) the status
/// segment and opens its read-only descriptor.
pub(crate) fn create_status_segment(
    workers: usize,
    epoch: u64,
) -> Result<StatusSegment, StartError> {
    let len = status_len(workers);
    let s = |e: &dyn std::fmt::Display| StartError::StatusSegment(e.to_string());
    let segment = Segment::create("cradle-status", len).map_err(|e| s(&e))?;
    let map = segment.map(Access::ReadWrite).map_err(|e| s(&e))?;
    // Relaxed: published by the Release store of the header version in
    // `init_header` below (clients check the header with Acquire first).
    map.atomic_u64(STATUS_EPOCH_OFFSET)
        .map_err(|e| s(&e))?
        .store(epoch, Ordering::Relaxed);
    // Relaxed: as above.
    map.atomic_u32(STATUS_PID_OFFSET)
        .map_err(|e| s(&e))?
        .store(std::process::id(), Ordering::Relaxed);
    // Relaxed: as above.
    map.atomic_u32(STATUS_WORKERS_OFFSET)
        .map_err(|e| s(&e))?
        .store(workers as u32, Ordering::Relaxed);
    init_header(&map, STATUS_MAGIC, LAYOUT_VERSION, STATUS_KIND).map_err(|e| s(&e))?;
    segment
        .add_seals(Seals::SHRINK | Seals::GROW | Seals::FUTURE_WRITE | Seals::SEAL)
        .map_err(|e| s(&e))?;
    let ro_fd = segment.read_only_fd().map_err(|e| s(&e))?;
    Ok(StatusSegment {
        _segment: segment,
        map: std::sync::Arc::new(map),
        ro_fd,
        len,
    })
}
