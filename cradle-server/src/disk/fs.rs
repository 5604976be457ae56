//! Every file operation of the disk tier goes through [`Fs`], so tests can
//! swap the real filesystem ([`RealFs`]) for one that loses power
//! (`FaultyFs`, tests only).
//!
//! The trait is path based for namespace operations and handle based for
//! data ([`FsFile`]), mirroring the system calls the tier relies on.

use rustix::fs::FlockOperation;
use std::ffi::OsString;
use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::SystemTime;

/// Keeps a lock taken by [`Fs::lock`]; dropping it releases the lock.
pub(crate) type FsLock = Box<dyn fmt::Debug + Send + Sync>;

/// Length and modification time of an open file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileStat {
    /// Length in bytes.
    pub(crate) len: u64,
    /// Modification time.
    pub(crate) mtime: SystemTime,
}

/// The filesystem operations the disk tier uses.
pub(crate) trait Fs: Send + Sync + fmt::Debug {
    /// `mkdir -p` with mode 0700 (subject to the umask); fine if it exists.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive, non-blocking advisory lock on `path` (created if
    /// missing); fails with [`io::ErrorKind::WouldBlock`] if someone holds it.
    fn lock(&self, path: &Path) -> io::Result<FsLock>;
    /// Creates a new file (`O_EXCL`, mode 0600) open for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Opens an existing file for reading.
    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// `rename(2)`: atomically replaces `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `unlink(2)`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// `fsync(2)` of a directory: makes its entries (creations, renames,
    /// unlinks) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The names in a directory (no `.`/`..`), in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
}

/// An open file.
pub(crate) trait FsFile: Send + fmt::Debug {
    /// `pwrite` all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// `pread` exactly `buf.len()` bytes at `offset`; a file that ends
    /// before fails with [`io::ErrorKind::UnexpectedEof`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// `fstat`: length and modification time.
    fn stat(&self) -> io::Result<FileStat>;
    /// `fdatasync(2)`: makes the file's data durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Sets the modification time (`futimens`).
    fn set_mtime(&self, mtime: SystemTime) -> io::Result<()>;
}

/// The real filesystem: std and rustix, no `unsafe`, never `mmap`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RealFs;

/// An open file of [`RealFs`].
#[derive(Debug)]
struct RealFile(File);

impl Fs for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)
    }

    fn lock(&self, path: &Path) -> io::Result<FsLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive)?;
        // The flock lives as long as the open file description, but only
        // guards the file: after `rm -rf` of the directory a new `lock`
        // file would be free. The second lock is a name nothing on the
        // filesystem can remove: an abstract socket named after the
        // directory's canonical path, held as long as this process lives.
        let dir = path.parent().unwrap_or(path);
        let name = std::fs::canonicalize(dir)?;
        let name = abstract_lock_name(&name);
        let socket = match abstract_lock(&name)? {
            AbstractLock::Held(l) => Some(l),
            AbstractLock::Busy => return Err(io::ErrorKind::WouldBlock.into()),
            AbstractLock::Squatted => {
                tracing::warn!(dir = %dir.display(), lock = %name, "the disk cache's lock name is held by another user's process; relying on the lock file alone");
                None
            }
        };
        // The lock lives as long as the open file description and the socket.
        Ok(Box::new((file, socket)))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(RealFile(File::open(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // fsync needs an fd; a read-only one is enough for a directory.
        File::open(dir)?.sync_all()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }
}

impl FsFile for RealFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, buf, offset)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, offset)
    }

    fn stat(&self) -> io::Result<FileStat> {
        let m = self.0.metadata()?;
        Ok(FileStat {
            len: m.len(),
            mtime: m.modified()?,
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_mtime(&self, mtime: SystemTime) -> io::Result<()> {
        // futimens on the fd; the owner may do it on a read-only fd.
        self.0.set_modified(mtime)
    }
}

/// The abstract socket name that locks the directory at canonical path
/// `dir` for this user.
fn abstract_lock_name(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let uid = rustix::process::geteuid().as_raw();
    let hash = xxhash_rust::xxh3::xxh3_128(dir.as_os_str().as_bytes());
    format!("cradle-disk-cache/{uid}/{hash:032x}")
}

/// The outcome of [`abstract_lock`].
enum AbstractLock {
    /// Ours until dropped.
    Held(std::os::unix::net::UnixListener),
    /// A process of this user holds it.
    Busy,
    /// Someone holds it whom we cannot verify as this user (another user
    /// squatting the name): not a reason to refuse; the flock still guards.
    Squatted,
}

/// Binds the abstract socket `name`; if it is taken, asks its holder's
/// credentials (a listening socket answers a connect from its backlog).
fn abstract_lock(name: &str) -> io::Result<AbstractLock> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    match UnixListener::bind_addr(&addr) {
        Ok(l) => Ok(AbstractLock::Held(l)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let Ok(peer) = UnixStream::connect_addr(&addr) else {
                return Ok(AbstractLock::Squatted);
            };
            let me = rustix::process::geteuid();
            match rustix::net::sockopt::socket_peercred(&peer) {
                Ok(cred) if cred.uid == me => Ok(AbstractLock::Busy),
                _ => Ok(AbstractLock::Squatted),
            }
        }
        Err(e) => Err(e),
    }
}
