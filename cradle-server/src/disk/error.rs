//! Errors of the disk tier.
//!
//! A damaged entry is never an error: it is a miss (and a counted
//! corruption). Errors are what the caller must know about: the directory is
//! unusable, a write failed, an entry cannot fit.

use core::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why opening the tier, a `put` or a `remove` failed.
#[derive(Debug)]
#[non_exhaustive]
pub(crate) enum DiskError {
    /// The directory (or one of its subdirectories) could not be created.
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The directory exists but a probe file could not be created, synced
    /// and removed in it.
    Unusable {
        /// The tier's directory.
        dir: PathBuf,
        /// The probe file.
        probe: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Another tier (in this or another process) has the directory open.
    Locked {
        /// The tier's directory.
        dir: PathBuf,
    },
    /// A file operation failed.
    Io {
        /// What was being done (`"create"`, `"write"`, `"fdatasync"`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The entry's file would be larger than the whole budget.
    TooLarge {
        /// The entry's file length (header, key, data), or `u64::MAX` if it
        /// overflows.
        len: u64,
        /// The tier's budget.
        budget: u64,
    },
    /// The key is longer than the format allows.
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
        /// The longest key accepted.
        max: usize,
    },
}

impl DiskError {
    /// An [`Io`](Self::Io) error.
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateDir { path, source } => write!(
                f,
                "disk cache: cannot create the directory {}: {source}; choose another directory (--disk-cache DIR), fix its permissions, or run without a disk cache (--no-disk-cache)",
                path.display()
            ),
            Self::Unusable { dir, probe, source } => write!(
                f,
                "disk cache: cannot write in the directory {} (probe file {}): {source}; choose another directory (--disk-cache DIR), fix its permissions, or run without a disk cache (--no-disk-cache)",
                dir.display(),
                probe.display()
            ),
            Self::Locked { dir } => write!(
                f,
                "disk cache: the directory {} is in use by another server (even if it was deleted and created again meanwhile); give each server its own directory (--disk-cache DIR), or run without a disk cache (--no-disk-cache)",
                dir.display()
            ),
            Self::Io { op, path, source } => {
                write!(f, "disk cache: {op} {} failed: {source}", path.display())
            }
            Self::TooLarge { len, budget } => write!(
                f,
                "disk cache: an entry of {len} bytes exceeds the whole budget of {budget} bytes"
            ),
            Self::KeyTooLong { len, max } => write!(
                f,
                "disk cache: a key of {len} bytes is longer than the {max} bytes allowed"
            ),
        }
    }
}

impl std::error::Error for DiskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::CreateDir { source, .. }
            | Self::Unusable { source, .. }
            | Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why [`DiskTier::get`](super::DiskTier::get) failed. A damaged or missing
/// entry is not an error (it is `Ok(None)`).
#[derive(Debug)]
pub(crate) enum GetError<E> {
    /// The caller's allocator failed; the entry is intact and kept.
    Alloc(E),
    /// The allocator returned a buffer of another length than asked for.
    BufferLength {
        /// The length asked for (the entry's data length).
        expected: u64,
        /// The length of the buffer returned.
        actual: usize,
    },
    /// The entry file could not be opened for a reason that is not the
    /// entry's fault (e.g. out of file descriptors); the entry is kept.
    Disk(DiskError),
}

impl<E: fmt::Display> fmt::Display for GetError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Alloc(e) => write!(f, "disk cache: cannot allocate the destination: {e}"),
            Self::BufferLength { expected, actual } => write!(
                f,
                "disk cache: the destination has {actual} bytes, the entry {expected}"
            ),
            Self::Disk(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for GetError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Alloc(e) => Some(e),
            Self::BufferLength { .. } => None,
            Self::Disk(e) => Some(e),
        }
    }
}
