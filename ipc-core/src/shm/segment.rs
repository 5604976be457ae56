//! Memfd segments: create, seal, map, and open a received descriptor.

use core::fmt;
use core::ops::{BitOr, BitOrAssign};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{FileType, MemfdFlags, Mode, OFlags, SealFlags};

use super::{CreateError, HEADER_SIZE, MapError, Mapping, OpenError, SealError, check_header};

/// The largest segment [`Segment::create`] accepts: `isize::MAX` bytes (the
/// most any Rust allocation, and `ftruncate`'s `off_t`, can span).
pub const MAX_SEGMENT_LEN: usize = isize::MAX as usize;

/// The longest memfd name the kernel accepts (`NAME_MAX` minus `"memfd:"`).
pub const MAX_NAME_LEN: usize = 249;

/// A set of file seals (`F_SEAL_*`), as added with [`Segment::add_seals`] and
/// read with [`Segment::seals`].
///
/// Bits the kernel reports that this type has no name for are kept, so a
/// [`Seals`] read back from a file is exact.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seals(u32);

impl Seals {
    /// No seals.
    pub const EMPTY: Seals = Seals(0);
    /// `F_SEAL_SEAL`: no further seals can be added.
    pub const SEAL: Seals = Seals(SealFlags::SEAL.bits());
    /// `F_SEAL_SHRINK`: the file cannot shrink (so a mapping never faults
    /// with `SIGBUS` past a truncated end).
    pub const SHRINK: Seals = Seals(SealFlags::SHRINK.bits());
    /// `F_SEAL_GROW`: the file cannot grow.
    pub const GROW: Seals = Seals(SealFlags::GROW.bits());
    /// `F_SEAL_WRITE`: no writes at all; can only be added while no writable
    /// shared mapping exists.
    pub const WRITE: Seals = Seals(SealFlags::WRITE.bits());
    /// `F_SEAL_FUTURE_WRITE`: no new writable mapping and no `write()`;
    /// writable mappings that already exist keep working.
    pub const FUTURE_WRITE: Seals = Seals(SealFlags::FUTURE_WRITE.bits());
    /// `F_SEAL_EXEC`: the file's exec bits cannot change.
    pub const EXEC: Seals = Seals(SealFlags::EXEC.bits());

    const NAMED: [(Seals, &'static str); 6] = [
        (Self::SEAL, "SEAL"),
        (Self::SHRINK, "SHRINK"),
        (Self::GROW, "GROW"),
        (Self::WRITE, "WRITE"),
        (Self::FUTURE_WRITE, "FUTURE_WRITE"),
        (Self::EXEC, "EXEC"),
    ];

    /// The raw `F_SEAL_*` bits.
    #[inline]
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Seals from raw `F_SEAL_*` bits (unknown bits are kept).
    #[inline]
    pub const fn from_bits(bits: u32) -> Seals {
        Seals(bits)
    }

    /// Whether every seal in `other` is in `self`.
    #[inline]
    pub const fn contains(self, other: Seals) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no seal is set.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The seals in `self` or in `other` (`|` in `const` contexts).
    #[inline]
    pub const fn union(self, other: Seals) -> Seals {
        Seals(self.0 | other.0)
    }

    /// The seals in `self` that are not in `other`.
    #[inline]
    pub const fn difference(self, other: Seals) -> Seals {
        Seals(self.0 & !other.0)
    }

    fn to_rustix(self) -> SealFlags {
        SealFlags::from_bits_retain(self.0)
    }
}

impl BitOr for Seals {
    type Output = Seals;
    #[inline]
    fn bitor(self, rhs: Seals) -> Seals {
        Seals(self.0 | rhs.0)
    }
}

impl BitOrAssign for Seals {
    #[inline]
    fn bitor_assign(&mut self, rhs: Seals) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Seals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("Seals(EMPTY)");
        }
        f.write_str("Seals(")?;
        let mut rest = self.0;
        let mut first = true;
        for (seal, name) in Self::NAMED {
            if self.contains(seal) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
                rest &= !seal.0;
            }
        }
        if rest != 0 {
            if !first {
                f.write_str(" | ")?;
            }
            write!(f, "{rest:#x}")?;
        }
        f.write_str(")")
    }
}

/// How a segment is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `PROT_READ`.
    ReadOnly,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

/// The size [`Segment::open`] accepts, checked against `fstat`.
///
/// Whatever the variant, a segment smaller than [`HEADER_SIZE`] is refused,
/// and the segment's length is always `fstat`'s, never the header's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectLen {
    /// Exactly this many bytes (session segments, whose size the handshake
    /// fixes).
    Exact(usize),
    /// At least this many bytes (blobs and pools, whose size the header and
    /// `fstat` tell).
    AtLeast(usize),
}

/// What [`Segment::open`] checks a received descriptor against.
///
/// [`Seals::SHRINK`] is always required on top of `seals`: without it a peer
/// could truncate the file under our mapping and turn every later access into
/// a `SIGBUS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenExpect {
    /// Accepted size.
    pub len: ExpectLen,
    /// Seals the file must carry (plus [`Seals::SHRINK`], always).
    pub seals: Seals,
    /// How to map it.
    pub access: Access,
    /// Header magic.
    pub magic: u64,
    /// Header layout version (must not be 0).
    pub version: u32,
    /// Header kind, if the opener cares.
    pub kind: Option<u32>,
    /// Fault every page in at map time (`MAP_POPULATE`).
    pub populate: bool,
}

impl OpenExpect {
    /// Expect exactly `len` bytes; defaults: seals `SHRINK | GROW | SEAL`,
    /// read-only, any kind.
    pub fn exact(magic: u64, version: u32, len: usize) -> Self {
        Self::new(magic, version, ExpectLen::Exact(len))
    }

    /// Expect at least `min` bytes; defaults as for [`exact`](Self::exact).
    pub fn at_least(magic: u64, version: u32, min: usize) -> Self {
        Self::new(magic, version, ExpectLen::AtLeast(min))
    }

    fn new(magic: u64, version: u32, len: ExpectLen) -> Self {
        Self {
            len,
            seals: Seals::SHRINK | Seals::GROW | Seals::SEAL,
            access: Access::ReadOnly,
            magic,
            version,
            kind: None,
            populate: false,
        }
    }

    /// Require exactly these seals (plus [`Seals::SHRINK`]), replacing the
    /// defaults: for a segment whose final seals come later (a large blob
    /// still being written has no `SEAL` yet).
    pub fn only_seals(mut self, seals: Seals) -> Self {
        self.seals = seals;
        self
    }

    /// Fault every page in when mapping (`MAP_POPULATE`).
    pub fn populate(mut self, populate: bool) -> Self {
        self.populate = populate;
        self
    }

    /// Require these seals *in addition to* the ones already required.
    pub fn seals(mut self, seals: Seals) -> Self {
        self.seals |= seals;
        self
    }

    /// Map with this access (read-only by default).
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Require this segment kind in the header.
    pub fn kind(mut self, kind: u32) -> Self {
        self.kind = Some(kind);
        self
    }

    /// All seals `open` requires: `seals | SHRINK`.
    pub fn required_seals(&self) -> Seals {
        self.seals | Seals::SHRINK
    }
}

/// A memfd-backed shared-memory segment: the file descriptor and its length.
///
/// Invariant: `len` is the file's size when the segment was created or opened
/// (and, once sealed against shrink/grow, forever).
#[derive(Debug)]
pub struct Segment {
    fd: OwnedFd,
    len: usize,
}

impl Segment {
    /// Creates a segment of `len` zero bytes: `memfd_create(name,
    /// MFD_CLOEXEC | MFD_ALLOW_SEALING)` then `ftruncate(len)`.
    ///
    /// `name` is only a label (visible in `/proc/<pid>/fd` as
    /// `/memfd:<name>`); it need not be unique.
    ///
    /// ```
    /// let seg = ipc_core::shm::Segment::create("demo", 8192)?;
    /// assert_eq!(seg.len(), 8192);
    /// # Ok::<(), ipc_core::shm::CreateError>(())
    /// ```
    pub fn create(name: &str, len: usize) -> Result<Segment, CreateError> {
        if len == 0 {
            return Err(CreateError::ZeroLength);
        }
        if len > MAX_SEGMENT_LEN {
            return Err(CreateError::TooLarge {
                len,
                max: MAX_SEGMENT_LEN,
            });
        }
        if name.as_bytes().contains(&0) {
            return Err(CreateError::NameHasNul);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(CreateError::NameTooLong {
                len: name.len(),
                max: MAX_NAME_LEN,
            });
        }
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| CreateError::Memfd(e.into()))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(|e| CreateError::Resize(e.into()))?;
        Ok(Segment { fd, len })
    }

    /// Adds seals (`F_ADD_SEALS`). Seals only accumulate.
    ///
    /// ```
    /// use ipc_core::shm::{Seals, Segment, SealError};
    /// let seg = Segment::create("sealed", 4096)?;
    /// seg.add_seals(Seals::SHRINK | Seals::GROW | Seals::SEAL)?;
    /// assert!(matches!(seg.add_seals(Seals::WRITE), Err(SealError::NotPermitted(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_seals(&self, seals: Seals) -> Result<(), SealError> {
        rustix::fs::fcntl_add_seals(&self.fd, seals.to_rustix()).map_err(SealError::from_errno)
    }

    /// The seals the file carries (`F_GET_SEALS`).
    ///
    /// ```
    /// use ipc_core::shm::{Seals, Segment};
    /// let seg = Segment::create("s", 4096)?;
    /// seg.add_seals(Seals::GROW)?;
    /// assert!(seg.seals()?.contains(Seals::GROW));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn seals(&self) -> io::Result<Seals> {
        let s = rustix::fs::fcntl_get_seals(&self.fd)?;
        Ok(Seals(s.bits()))
    }

    /// Maps the whole segment `MAP_SHARED` with the given access.
    ///
    /// ```
    /// use ipc_core::shm::{Access, Segment};
    /// let seg = Segment::create("m", 4096)?;
    /// let map = seg.map(Access::ReadWrite)?;
    /// assert_eq!(map.len(), 4096);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map(&self, access: Access) -> Result<Mapping, MapError> {
        Mapping::map(self.fd.as_fd(), self.len, access)
    }

    /// [`map`](Self::map) with every page faulted in at once
    /// (`MAP_POPULATE`): for memory that is written soon and reused, so that
    /// later writes take no page fault.
    pub fn map_populated(&self, access: Access) -> Result<Mapping, MapError> {
        Mapping::map_populated(self.fd.as_fd(), self.len, access)
    }

    /// A new read-only open file description of the same memfd (opens
    /// `/proc/self/fd/N` with `O_RDONLY | O_CLOEXEC`): what the server sends
    /// to readers.
    ///
    /// This is **not** a write barrier by itself — the receiver can reopen it
    /// read-write the same way. Seal the segment (`FUTURE_WRITE` or `WRITE`,
    /// plus `SEAL`) before the descriptor leaves the process.
    ///
    /// ```
    /// use ipc_core::shm::{Access, Seals, Segment};
    /// let seg = Segment::create("ro", 4096)?;
    /// seg.add_seals(Seals::FUTURE_WRITE | Seals::SEAL)?;
    /// let ro = Segment::from_fd(seg.read_only_fd()?)?;
    /// assert!(ro.map(Access::ReadWrite).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_only_fd(&self) -> io::Result<OwnedFd> {
        let path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(fd)
    }

    /// Wraps a descriptor without any check other than `fstat` (length from
    /// its size). For descriptors a peer sent, use [`open`](Self::open).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Segment> {
        let st = rustix::fs::fstat(&fd)?;
        let len =
            usize::try_from(st.st_size).map_err(|_| io::Error::other("negative or huge size"))?;
        Ok(Segment { fd, len })
    }

    /// Opens a descriptor received from a peer, with the checks of docs/design.md
    /// §4.2, in this order:
    ///
    /// 1. `fstat`: a regular file, whose size matches `expect.len` and is at
    ///    least [`HEADER_SIZE`]. The segment's length is `fstat`'s.
    /// 2. `F_GET_SEALS` contains [`OpenExpect::required_seals`].
    /// 3. `mmap` (`MAP_SHARED`) with `expect.access`.
    /// 4. The header: magic, version (0 is [`OpenError::NotInitialized`]),
    ///    kind, and `segment_len` == the `fstat` size.
    ///
    /// The descriptor is consumed (closed on error).
    pub fn open(fd: OwnedFd, expect: &OpenExpect) -> Result<(Segment, Mapping), OpenError> {
        let st = rustix::fs::fstat(&fd).map_err(|e| OpenError::Stat(e.into()))?;
        if !FileType::from_raw_mode(st.st_mode).is_file() {
            return Err(OpenError::NotARegularFile);
        }
        // A regular file's size is never negative; if it were, treat it as
        // too small rather than wrap.
        let actual = u64::try_from(st.st_size).unwrap_or(0);
        let min = match expect.len {
            ExpectLen::Exact(n) => {
                if actual != n as u64 {
                    return Err(OpenError::SizeMismatch {
                        expected: n,
                        actual,
                    });
                }
                HEADER_SIZE
            }
            ExpectLen::AtLeast(n) => n.max(HEADER_SIZE),
        };
        if actual < min as u64 {
            return Err(OpenError::TooSmall { min, actual });
        }
        let len = match usize::try_from(actual) {
            Ok(len) if len <= MAX_SEGMENT_LEN => len,
            _ => return Err(OpenError::TooLarge { actual }),
        };

        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| OpenError::GetSeals(e.into()))?;
        let seals = Seals(seals.bits());
        let required = expect.required_seals();
        if !seals.contains(required) {
            return Err(OpenError::MissingSeals {
                required,
                actual: seals,
            });
        }

        let mapping = if expect.populate {
            Mapping::map_populated(fd.as_fd(), len, expect.access)
        } else {
            Mapping::map(fd.as_fd(), len, expect.access)
        }
        .map_err(OpenError::Map)?;
        check_header(&mapping, expect.magic, expect.version, expect.kind)?;
        Ok((Segment { fd, len }, mapping))
    }

    /// The segment's descriptor.
    #[inline]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Gives up the segment, returning its descriptor.
    #[inline]
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// The segment's length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the segment has length 0 (never, for a created or opened one).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsFd for Segment {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
