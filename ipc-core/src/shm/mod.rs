//! Shared-memory segments (docs/design.md §3, §4).
//!
//! A [`Segment`] is a memfd created with `MFD_CLOEXEC | MFD_ALLOW_SEALING`,
//! sized with `ftruncate`, sealed with [`Segment::add_seals`] and mapped with
//! [`Segment::map`] into a [`Mapping`]. The receiving side turns a descriptor
//! it got over the control socket into a checked `(Segment, Mapping)` with
//! [`Segment::open`].
//!
//! # Who creates, who seals
//!
//! The *creator* of a segment must be the server. `F_SEAL_FUTURE_WRITE`
//! forbids every *new* writable mapping, `write()` and `pwrite()` by anyone —
//! including the creator — but a writable mapping that already exists keeps
//! working. So the server maps the segment read-write first, initialises it,
//! seals it (`SHRINK | GROW | FUTURE_WRITE | SEAL`), and only then hands out
//! [`Segment::read_only_fd`]. A read-only descriptor on its own is *not* a
//! boundary: memfds are mode 0777, and a process can reopen `/proc/self/fd/N`
//! read-write. Only the seals make that reopened descriptor useless for
//! writing (`tests/shm_segment.rs` proves each route fails).
//!
//! # Layout
//!
//! Every segment starts with a 128-byte [`SegmentHeader`]:
//!
//! ```text
//!  offset  size  field
//!  ──────  ────  ──────────────────────────────────────────────────────
//!       0     8  magic        u64, identifies the segment's format
//!       8     4  version      u32, layout version; 0 = not initialised,
//!                             stored LAST (Release) by the creator
//!      12     4  kind         u32, segment kind chosen by the creator
//!      16     8  segment_len  u64, the creator's length; never trusted
//!                             over fstat, only compared with it
//!      24   104  reserved     zero
//!  ──────  ────
//!     128        first byte of the segment's payload
//! ```
//!
//! # Example
//!
//! ```
//! use ipc_core::shm::{Access, OpenExpect, Seals, Segment};
//!
//! const MAGIC: u64 = 0x4352_4144_4c45_0001;
//! let seg = Segment::create("example", 4096)?;
//! let rw = seg.map(Access::ReadWrite)?;
//! ipc_core::shm::init_header(&rw, MAGIC, 1, 7)?;
//! seg.add_seals(Seals::SHRINK | Seals::GROW | Seals::FUTURE_WRITE | Seals::SEAL)?;
//!
//! // What a reader would receive over the control socket:
//! let fd = seg.read_only_fd()?;
//! let expect = OpenExpect::exact(MAGIC, 1, 4096).seals(Seals::FUTURE_WRITE | Seals::SEAL);
//! let (_seg, ro) = Segment::open(fd, &expect)?;
//! assert_eq!(ro.len(), 4096);
//! assert!(ro.as_mut_ptr().is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod alloc;
mod error;
mod header;
mod mapping;
mod segment;
#[cfg(test)]
mod tests;

pub use self::alloc::RangeAlloc;
pub use self::error::{
    CreateError, HeaderError, InitError, MapError, OffsetError, OpenError, SealError,
};
pub use self::header::{HEADER_SIZE, HeaderInfo, SegmentHeader, check_header, init_header};
pub use self::mapping::Mapping;
pub use self::segment::{
    Access, ExpectLen, MAX_NAME_LEN, MAX_SEGMENT_LEN, OpenExpect, Seals, Segment,
};

use crate::sync::{AtomicU32, AtomicU64};

/// Types that may live in shared memory and be reached through a [`Mapping`].
///
/// # Safety
///
/// Implementing this trait promises all of the following:
///
/// * **Layout is fixed:** the type is `#[repr(C)]` (or `#[repr(transparent)]`,
///   or a primitive), so both processes agree on it; it has no padding bytes,
///   so writing a value never leaves uninitialised bytes in shared memory.
/// * **Self-contained:** it holds no pointers, references, `Box`/`Vec`, file
///   descriptors or anything else whose meaning is local to one process.
///   Positions inside a segment are offsets (docs/design.md §4.1).
/// * **Hostile bytes are harmless:** every bit pattern is a valid value, since
///   a peer may write anything; and fields a peer can write while this process
///   looks at them are atomics (so that a `&T` to them is sound) — any
///   non-atomic field is only read by volatile copy through a raw pointer,
///   never through a reference.
/// * **No drop glue:** the type does not implement `Drop` (a mapping is
///   unmapped, never dropped value by value).
pub unsafe trait ShmSafe: Sized {}

// SAFETY: primitive integers are self-contained, have no padding and are valid
// for every bit pattern.
unsafe impl ShmSafe for u8 {}
// SAFETY: as for u8.
unsafe impl ShmSafe for u16 {}
// SAFETY: as for u8.
unsafe impl ShmSafe for u32 {}
// SAFETY: as for u8.
unsafe impl ShmSafe for u64 {}
// SAFETY: an atomic has the layout of its integer, is valid for every bit
// pattern, and its interior mutability makes concurrent peer writes sound.
unsafe impl ShmSafe for AtomicU32 {}
// SAFETY: as for AtomicU32.
unsafe impl ShmSafe for AtomicU64 {}
// SAFETY: an array of ShmSafe elements has no padding between elements (size is
// a multiple of alignment) and inherits every other property element-wise.
unsafe impl<T: ShmSafe, const N: usize> ShmSafe for [T; N] {}
