//! The segment header at offset 0 and its init/check protocol.

use core::mem::{align_of, offset_of, size_of};

use super::{HeaderError, InitError, Mapping, ShmSafe};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// Size of [`SegmentHeader`]: the payload of a segment starts at this offset.
pub const HEADER_SIZE: usize = 128;

/// The header at offset 0 of every segment (layout drawn in the
/// [module docs](super)).
///
/// Every field is an atomic so that a `&SegmentHeader` is sound even while a
/// peer scribbles on it; code outside this module reaches it only through
/// [`init_header`] and [`check_header`], which copy values out.
///
/// The header has a single writer (the creator) and is written once, so it
/// fills one 128-byte line of its own (docs/design.md §4.3).
#[repr(C, align(128))]
#[derive(Debug)]
pub struct SegmentHeader {
    /// Identifies the format of the segment. Written by the creator before
    /// `version`.
    magic: AtomicU64,
    /// Layout version. 0 means "not yet initialised"; the creator stores the
    /// real version last, with Release (a version word stored last, the way iceoryx2 initializes its segments).
    version: AtomicU32,
    /// Segment kind (session, pool, blob, …): a value the creator chooses.
    kind: AtomicU32,
    /// The creator's length of the segment. Only ever compared with `fstat`,
    /// never used to size anything (docs/design.md §4.2).
    segment_len: AtomicU64,
    /// Zero; room for later fields without moving the payload.
    _reserved: [AtomicU64; 13],
}

impl SegmentHeader {
    /// Byte offset of `magic`.
    pub const MAGIC_OFFSET: usize = offset_of!(SegmentHeader, magic);
    /// Byte offset of `version`.
    pub const VERSION_OFFSET: usize = offset_of!(SegmentHeader, version);
    /// Byte offset of `kind`.
    pub const KIND_OFFSET: usize = offset_of!(SegmentHeader, kind);
    /// Byte offset of `segment_len`.
    pub const SEGMENT_LEN_OFFSET: usize = offset_of!(SegmentHeader, segment_len);
}

const _: () = assert!(size_of::<SegmentHeader>() == HEADER_SIZE);
const _: () = assert!(align_of::<SegmentHeader>() == 128);
const _: () = assert!(SegmentHeader::MAGIC_OFFSET == 0);
const _: () = assert!(SegmentHeader::VERSION_OFFSET == 8);
const _: () = assert!(SegmentHeader::KIND_OFFSET == 12);
const _: () = assert!(SegmentHeader::SEGMENT_LEN_OFFSET == 16);
const _: () = assert!(offset_of!(SegmentHeader, _reserved) == 24);
// No padding: the fields add up to the size (required by ShmSafe).
const _: () = assert!(8 + 4 + 4 + 8 + 13 * 8 == HEADER_SIZE);

// SAFETY: #[repr(C)], fields add up to the size (asserted above, so no
// padding), only atomics (valid for every bit pattern, sound under concurrent
// peer writes), no pointers or fds, no Drop.
unsafe impl ShmSafe for SegmentHeader {}

/// The header's values, copied out of shared memory by [`check_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderInfo {
    /// The magic number.
    pub magic: u64,
    /// The layout version (never 0 in a checked header).
    pub version: u32,
    /// The segment kind.
    pub kind: u32,
    /// `segment_len`, equal to the mapping's length in a checked header.
    pub segment_len: u64,
}

/// Initialises the header of a fresh read-write mapping: version 0, then
/// magic, kind and `segment_len` (the mapping's length), then the real
/// `version`, last, with Release.
///
/// Call it before the segment's descriptor leaves the process. Reserved bytes
/// are left as they are (zero in a fresh memfd).
///
/// ```
/// use ipc_core::shm::{Access, Segment, init_header, check_header};
/// let seg = Segment::create("hdr", 4096)?;
/// let map = seg.map(Access::ReadWrite)?;
/// init_header(&map, 0xC0FFEE, 3, 1)?;
/// assert_eq!(check_header(&map, 0xC0FFEE, 3, Some(1))?.segment_len, 4096);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn init_header(
    mapping: &Mapping,
    magic: u64,
    version: u32,
    kind: u32,
) -> Result<(), InitError> {
    if version == 0 {
        return Err(InitError::ZeroVersion);
    }
    let header = header_ref(mapping).ok_or(InitError::TooSmall { len: mapping.len() })?;
    if mapping.as_mut_ptr().is_none() {
        return Err(InitError::ReadOnly);
    }
    // Relaxed: no one may act on a version-0 header, so nothing pairs with it;
    // it only marks an interrupted re-initialisation as unfinished.
    header.version.store(0, Ordering::Relaxed);
    // Relaxed: published by the Release store of `version` below.
    header.magic.store(magic, Ordering::Relaxed);
    header.kind.store(kind, Ordering::Relaxed);
    header
        .segment_len
        .store(mapping.len() as u64, Ordering::Relaxed);
    // Release: pairs with the Acquire load of `version` in `check_header`, so
    // a reader that sees this version sees the fields above.
    header.version.store(version, Ordering::Release);
    Ok(())
}

/// Checks the header of a mapping against what the opener expects, in this
/// order: magic, version (0 is [`HeaderError::NotInitialized`]), kind (if
/// `kind` is `Some`), and `segment_len` == the mapping's length.
///
/// Each field is loaded once (atomically) into a local and checked there.
/// Works on read-only mappings.
pub fn check_header(
    mapping: &Mapping,
    magic: u64,
    version: u32,
    kind: Option<u32>,
) -> Result<HeaderInfo, HeaderError> {
    let header = header_ref(mapping).ok_or(HeaderError::TooSmall { len: mapping.len() })?;
    // Acquire: pairs with the Release store of `version` in `init_header`;
    // loaded first so the loads below see what the creator published.
    let found_version = header.version.load(Ordering::Acquire);
    // Relaxed: ordered after the Acquire load above.
    let found_magic = header.magic.load(Ordering::Relaxed);
    let found_kind = header.kind.load(Ordering::Relaxed);
    let found_len = header.segment_len.load(Ordering::Relaxed);

    if found_magic != magic {
        return Err(HeaderError::BadMagic {
            expected: magic,
            found: found_magic,
        });
    }
    if found_version == 0 {
        return Err(HeaderError::NotInitialized);
    }
    if found_version != version {
        return Err(HeaderError::VersionMismatch {
            expected: version,
            found: found_version,
        });
    }
    if let Some(kind) = kind
        && found_kind != kind
    {
        return Err(HeaderError::KindMismatch {
            expected: kind,
            found: found_kind,
        });
    }
    let actual = mapping.len() as u64;
    if found_len != actual {
        return Err(HeaderError::LengthMismatch {
            header: found_len,
            actual,
        });
    }
    Ok(HeaderInfo {
        magic: found_magic,
        version: found_version,
        kind: found_kind,
        segment_len: found_len,
    })
}

/// The header of `mapping`, or `None` if the mapping is too small for one.
///
/// The reference is fine on a read-only mapping as long as only loads go
/// through it: both callers check writability before storing.
fn header_ref(mapping: &Mapping) -> Option<&SegmentHeader> {
    let p = mapping.ptr_at::<SegmentHeader>(0).ok()?;
    // SAFETY: ptr_at checked bounds and alignment; the header holds only
    // atomics, so a shared reference stays sound under concurrent peer
    // writes; it borrows `mapping`, which keeps the memory mapped.
    Some(unsafe { p.as_ref() })
}
