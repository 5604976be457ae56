//! One error type per operation.
//!
//! Creating, sealing, mapping and opening a segment fail in different ways, so
//! each gets its own type. Every variant that wraps an OS error keeps the
//! [`io::Error`] so callers can match on its errno.

use core::fmt;
use std::io;

use super::Seals;

/// Why [`Segment::create`](super::Segment::create) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum CreateError {
    /// A zero-length segment was requested; `mmap` cannot map it.
    ZeroLength,
    /// The requested length exceeds [`MAX_SEGMENT_LEN`](super::MAX_SEGMENT_LEN).
    TooLarge {
        /// The requested length in bytes.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },
    /// The name contains a NUL byte.
    NameHasNul,
    /// The name is longer than the kernel accepts for a memfd (249 bytes).
    NameTooLong {
        /// The name's length in bytes.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },
    /// `memfd_create` failed (e.g. `EMFILE`: out of file descriptors).
    Memfd(io::Error),
    /// `ftruncate` to the requested length failed (e.g. `EFBIG`, `ENOSPC`).
    Resize(io::Error),
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroLength => f.write_str("cannot create a zero-length segment"),
            Self::TooLarge { len, max } => {
                write!(f, "segment length {len} exceeds the maximum {max}")
            }
            Self::NameHasNul => f.write_str("segment name contains a NUL byte"),
            Self::NameTooLong { len, max } => {
                write!(f, "segment name is {len} bytes, at most {max} allowed")
            }
            Self::Memfd(e) => write!(f, "memfd_create failed: {e}"),
            Self::Resize(e) => write!(f, "ftruncate of the new segment failed: {e}"),
        }
    }
}

impl std::error::Error for CreateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Memfd(e) | Self::Resize(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`Segment::add_seals`](super::Segment::add_seals) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SealError {
    /// `EPERM`: the segment already carries `F_SEAL_SEAL`, or the descriptor
    /// was not opened for writing.
    NotPermitted(io::Error),
    /// `EBUSY`: `F_SEAL_WRITE` was requested while a writable shared mapping
    /// of the file exists.
    Busy(io::Error),
    /// `EINVAL`: the file does not support sealing (not a memfd created with
    /// `MFD_ALLOW_SEALING`), or an unknown seal bit was given.
    Unsupported(io::Error),
    /// Any other failure of `F_ADD_SEALS`.
    Other(io::Error),
}

impl SealError {
    pub(crate) fn from_errno(e: rustix::io::Errno) -> Self {
        let io = io::Error::from(e);
        match e {
            rustix::io::Errno::PERM => Self::NotPermitted(io),
            rustix::io::Errno::BUSY => Self::Busy(io),
            rustix::io::Errno::INVAL => Self::Unsupported(io),
            _ => Self::Other(io),
        }
    }

    /// The underlying OS error.
    pub fn io_error(&self) -> &io::Error {
        match self {
            Self::NotPermitted(e) | Self::Busy(e) | Self::Unsupported(e) | Self::Other(e) => e,
        }
    }
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPermitted(e) => write!(f, "adding seals not permitted: {e}"),
            Self::Busy(e) => write!(
                f,
                "cannot add F_SEAL_WRITE while a writable shared mapping exists: {e}"
            ),
            Self::Unsupported(e) => write!(f, "file does not support these seals: {e}"),
            Self::Other(e) => write!(f, "F_ADD_SEALS failed: {e}"),
        }
    }
}

impl std::error::Error for SealError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.io_error())
    }
}

/// Why [`Segment::map`](super::Segment::map) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum MapError {
    /// Write access was requested but the kernel refused it (`EPERM`: the
    /// segment is sealed `F_SEAL_WRITE`/`F_SEAL_FUTURE_WRITE`; `EACCES`: the
    /// descriptor is read-only).
    WriteDenied(io::Error),
    /// `mmap` failed for another reason (e.g. `ENOMEM`).
    Mmap(io::Error),
}

impl MapError {
    /// The underlying OS error.
    pub fn io_error(&self) -> &io::Error {
        match self {
            Self::WriteDenied(e) | Self::Mmap(e) => e,
        }
    }
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WriteDenied(e) => write!(f, "write access to the segment denied: {e}"),
            Self::Mmap(e) => write!(f, "mmap failed: {e}"),
        }
    }
}

impl std::error::Error for MapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.io_error())
    }
}

/// Why [`init_header`](super::init_header) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InitError {
    /// The mapping is read-only.
    ReadOnly,
    /// The mapping is smaller than [`HEADER_SIZE`](super::HEADER_SIZE).
    TooSmall {
        /// The mapping's length.
        len: usize,
    },
    /// Version 0 is reserved for "not yet initialised".
    ZeroVersion,
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReadOnly => f.write_str("cannot initialise a header in a read-only mapping"),
            Self::TooSmall { len } => write!(
                f,
                "mapping of {len} bytes cannot hold the {}-byte header",
                super::HEADER_SIZE
            ),
            Self::ZeroVersion => f.write_str("layout version 0 is reserved for 'uninitialised'"),
        }
    }
}

impl std::error::Error for InitError {}

/// Why the segment header failed its checks
/// ([`check_header`](super::check_header)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// The mapping is smaller than [`HEADER_SIZE`](super::HEADER_SIZE).
    TooSmall {
        /// The mapping's length.
        len: usize,
    },
    /// The magic number is not the expected one.
    BadMagic {
        /// The magic expected.
        expected: u64,
        /// The magic found in the header.
        found: u64,
    },
    /// The layout version is 0: the creator has not finished initialising.
    NotInitialized,
    /// The layout version is not the expected one.
    VersionMismatch {
        /// The version expected.
        expected: u32,
        /// The version found in the header.
        found: u32,
    },
    /// The segment kind is not the expected one.
    KindMismatch {
        /// The kind expected.
        expected: u32,
        /// The kind found in the header.
        found: u32,
    },
    /// The header's `segment_len` disagrees with the real (`fstat`) length.
    LengthMismatch {
        /// `segment_len` as written in the header.
        header: u64,
        /// The real length of the segment.
        actual: u64,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooSmall { len } => write!(
                f,
                "mapping of {len} bytes cannot hold the {}-byte header",
                super::HEADER_SIZE
            ),
            Self::BadMagic { expected, found } => {
                write!(f, "bad magic {found:#018x}, expected {expected:#018x}")
            }
            Self::NotInitialized => f.write_str("segment header not initialised (version 0)"),
            Self::VersionMismatch { expected, found } => {
                write!(f, "layout version {found}, expected {expected}")
            }
            Self::KindMismatch { expected, found } => {
                write!(f, "segment kind {found}, expected {expected}")
            }
            Self::LengthMismatch { header, actual } => write!(
                f,
                "header says segment_len {header}, but the segment is {actual} bytes"
            ),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Why [`Segment::open`](super::Segment::open) refused a received descriptor.
///
/// The variants follow the order of the checks (docs/design.md §4.2): `fstat`,
/// size, seals, `mmap`, header.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// `fstat` failed.
    Stat(io::Error),
    /// The descriptor is not a regular file (a pipe, socket, device, …).
    NotARegularFile,
    /// The size is not the exact size expected.
    SizeMismatch {
        /// The size expected.
        expected: usize,
        /// The size `fstat` reported.
        actual: u64,
    },
    /// The size is below the minimum (the caller's, and never less than
    /// [`HEADER_SIZE`](super::HEADER_SIZE)).
    TooSmall {
        /// The smallest size accepted.
        min: usize,
        /// The size `fstat` reported.
        actual: u64,
    },
    /// The size does not fit this process's address space.
    TooLarge {
        /// The size `fstat` reported.
        actual: u64,
    },
    /// `F_GET_SEALS` failed (`EINVAL`: the file does not support sealing,
    /// e.g. a regular file on disk).
    GetSeals(io::Error),
    /// The file lacks seals the opener requires.
    MissingSeals {
        /// The seals required.
        required: Seals,
        /// The seals the file carries.
        actual: Seals,
    },
    /// Mapping the file failed.
    Map(MapError),
    /// The header's magic number is wrong.
    BadMagic {
        /// The magic found.
        found: u64,
    },
    /// The header's layout version is 0: the creator never finished
    /// initialising it. (A memfd is complete before its fd is sent, so the
    /// opener does not poll.)
    NotInitialized,
    /// The header's layout version is not the expected one.
    VersionMismatch {
        /// The version expected.
        expected: u32,
        /// The version found.
        found: u32,
    },
    /// The header's segment kind is not the expected one.
    KindMismatch {
        /// The kind expected.
        expected: u32,
        /// The kind found.
        found: u32,
    },
    /// The header's `segment_len` disagrees with `fstat`.
    HeaderLengthMismatch {
        /// `segment_len` as written in the header.
        header: u64,
        /// The size `fstat` reported.
        actual: u64,
    },
}

impl From<HeaderError> for OpenError {
    fn from(e: HeaderError) -> Self {
        match e {
            HeaderError::TooSmall { len } => Self::TooSmall {
                min: super::HEADER_SIZE,
                actual: len as u64,
            },
            HeaderError::BadMagic { found, .. } => Self::BadMagic { found },
            HeaderError::NotInitialized => Self::NotInitialized,
            HeaderError::VersionMismatch { expected, found } => {
                Self::VersionMismatch { expected, found }
            }
            HeaderError::KindMismatch { expected, found } => Self::KindMismatch { expected, found },
            HeaderError::LengthMismatch { header, actual } => {
                Self::HeaderLengthMismatch { header, actual }
            }
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stat(e) => write!(f, "fstat of the received descriptor failed: {e}"),
            Self::NotARegularFile => f.write_str("received descriptor is not a regular file"),
            Self::SizeMismatch { expected, actual } => {
                write!(f, "segment is {actual} bytes, expected exactly {expected}")
            }
            Self::TooSmall { min, actual } => {
                write!(f, "segment is {actual} bytes, expected at least {min}")
            }
            Self::TooLarge { actual } => {
                write!(
                    f,
                    "segment of {actual} bytes does not fit the address space"
                )
            }
            Self::GetSeals(e) => write!(f, "F_GET_SEALS failed: {e}"),
            Self::MissingSeals { required, actual } => {
                write!(f, "segment seals {actual:?} lack required {required:?}")
            }
            Self::Map(e) => write!(f, "mapping the segment failed: {e}"),
            Self::BadMagic { found } => write!(f, "bad segment magic {found:#018x}"),
            Self::NotInitialized => f.write_str("segment header not initialised (version 0)"),
            Self::VersionMismatch { expected, found } => {
                write!(f, "segment layout version {found}, expected {expected}")
            }
            Self::KindMismatch { expected, found } => {
                write!(f, "segment kind {found}, expected {expected}")
            }
            Self::HeaderLengthMismatch { header, actual } => write!(
                f,
                "header says segment_len {header}, but fstat says {actual} bytes"
            ),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Stat(e) | Self::GetSeals(e) => Some(e),
            Self::Map(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a typed access at an offset of a [`Mapping`](super::Mapping) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OffsetError {
    /// `offset + size` runs past the end of the mapping (or overflows).
    OutOfRange {
        /// The offset asked for.
        offset: usize,
        /// The size of the value.
        size: usize,
        /// The mapping's length.
        len: usize,
    },
    /// The offset is not a multiple of the value's alignment.
    Unaligned {
        /// The offset asked for.
        offset: usize,
        /// The alignment required.
        align: usize,
    },
    /// A writable access was asked of a read-only mapping.
    ReadOnly,
}

impl fmt::Display for OffsetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange { offset, size, len } => write!(
                f,
                "{size} bytes at offset {offset} run past the {len}-byte mapping"
            ),
            Self::Unaligned { offset, align } => {
                write!(f, "offset {offset} is not {align}-byte aligned")
            }
            Self::ReadOnly => f.write_str("mapping is read-only"),
        }
    }
}

impl std::error::Error for OffsetError {}
