//! Where a ring's words and bytes live.

use super::{CONTROL_LEN, RingError, check_capacity, region_len};
use crate::shm::Mapping;
use crate::sync::{AtomicU32, AtomicU64, Atomics, StdAtomics};
use core::ptr::NonNull;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fmt;
use std::sync::Arc;

/// Storage of one ring: its control words and its frame bytes.
///
/// The ring algorithm is generic over this trait so that the same code runs
/// over a shared mapping ([`RingRegion`]) and, in the loom models, over loom's
/// heap atomics.
///
/// # Safety
///
/// An implementation guarantees, for as long as it lives:
/// * `capacity()` is constant and passes [`check_capacity`];
/// * `data()` points to `capacity()` bytes valid for raw reads and writes,
///   aligned to 16;
/// * for every `offset` that is a multiple of 16 below `capacity()`,
///   `commit_word(offset)` is the word that stands for the 8 bytes at
///   `data() + offset`; those 8 bytes are never read or written through
///   `data()` by the ring (they are either that very word or unused);
/// * the words returned by the other accessors are distinct from each other
///   and from the frame bytes.
pub unsafe trait RingMemory {
    /// The atomic family (std over shared memory, loom in the models).
    type A: Atomics;
    /// Frame-area size in bytes.
    fn capacity(&self) -> usize;
    /// Absolute position up to which the consumer has released frames.
    fn head(&self) -> &<Self::A as Atomics>::U64;
    /// Absolute position after the last published frame (for observers).
    fn tail(&self) -> &<Self::A as Atomics>::U64;
    /// The commit word of the frame slot at `offset` (a multiple of 16 below
    /// the capacity).
    fn commit_word(&self, offset: usize) -> &<Self::A as Atomics>::U64;
    /// Base of the frame area.
    fn data(&self) -> *mut u8;
    /// Sequence word of the "data available" doorbell (producer rings it).
    fn data_seq(&self) -> &<Self::A as Atomics>::U32;
    /// Flag: the consumer sleeps on the "data available" doorbell.
    fn data_waiting(&self) -> &<Self::A as Atomics>::U32;
    /// Sequence word of the "space available" doorbell (consumer rings it).
    fn space_seq(&self) -> &<Self::A as Atomics>::U32;
    /// Flag: the producer sleeps on the "space available" doorbell.
    fn space_waiting(&self) -> &<Self::A as Atomics>::U32;
}

/// Byte offsets of the control words inside a ring region (see the module
/// docs for the diagram).
mod offsets {
    pub(super) const TAIL: usize = 0;
    pub(super) const DATA_SEQ: usize = 8;
    pub(super) const SPACE_WAITING: usize = 12;
    pub(super) const HEAD: usize = 128;
    pub(super) const DATA_WAITING: usize = 136;
    pub(super) const SPACE_SEQ: usize = 140;
}

// The producer's words and the consumer's words sit in different 128-byte lines.
const _: () = {
    assert!(offsets::SPACE_WAITING + 4 <= 128);
    assert!(offsets::HEAD >= 128 && offsets::SPACE_SEQ + 4 <= 256);
    assert!(CONTROL_LEN == 256);
};

/// A ring laid out in raw memory: a shared mapping, or a heap allocation for
/// tests and benchmarks. Cheap to clone (an `Arc` keeps the memory alive).
///
/// The region is [`region_len`]`(capacity)` bytes, 128-byte aligned, laid out
/// as in the [module docs](super).
#[derive(Clone)]
pub struct RingRegion {
    base: NonNull<u8>,
    capacity: usize,
    _owner: Arc<dyn Send + Sync>,
}

// SAFETY: a RingRegion is a pointer into memory kept alive by `_owner` (which is
// Send + Sync); the region is only accessed through atomics and raw pointers, and
// the ring ends that use it are themselves !Sync.
unsafe impl Send for RingRegion {}
// SAFETY: as above; `&RingRegion` only hands out atomics and a raw pointer.
unsafe impl Sync for RingRegion {}

impl fmt::Debug for RingRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingRegion")
            .field("base", &self.base)
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// A zeroed, 128-byte aligned heap allocation.
struct HeapBlock {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the block is plain memory owned by this value; all access to it goes
// through RingRegion, which uses atomics and raw pointers.
unsafe impl Send for HeapBlock {}
// SAFETY: as above.
unsafe impl Sync for HeapBlock {}

impl Drop for HeapBlock {
    fn drop(&mut self) {
        // SAFETY: `ptr` was returned by `alloc_zeroed(self.layout)` and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl RingRegion {
    /// A fresh ring on the heap (zeroed), for tests, benchmarks and Miri.
    pub fn on_heap(capacity: usize) -> Result<Self, RingError> {
        check_capacity(capacity)?;
        let layout = Layout::from_size_align(region_len(capacity), 128)
            .map_err(|_| RingError::BadCapacity(capacity))?;
        // SAFETY: the layout has a non-zero size (region_len >= CONTROL_LEN).
        let ptr = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        let owner = Arc::new(HeapBlock { ptr, layout });
        Ok(Self {
            base: ptr,
            capacity,
            _owner: owner,
        })
    }

    /// A ring over memory the caller provides, typically a shared mapping.
    ///
    /// Fresh memfd memory is zero, which is the initial state of a ring; memory
    /// that held something else must be zeroed before the first ring end
    /// attaches.
    ///
    /// # Safety
    ///
    /// * `base` is 128-byte aligned and valid for reads and writes of
    ///   [`region_len`]`(capacity)` bytes for as long as `owner` lives;
    /// * nothing in this process accesses those bytes other than through ring
    ///   ends built on this region (other processes may write anything).
    pub unsafe fn from_raw(
        base: NonNull<u8>,
        capacity: usize,
        owner: Arc<dyn Send + Sync>,
    ) -> Result<Self, RingError> {
        check_capacity(capacity)?;
        if !(base.as_ptr() as usize).is_multiple_of(128) {
            return Err(RingError::Misaligned(base.as_ptr() as usize));
        }
        Ok(Self {
            base,
            capacity,
            _owner: owner,
        })
    }

    /// The ring at `offset` of a read-write shared mapping (`offset` a multiple
    /// of 128; the mapping stays alive as long as the region).
    pub fn in_mapping(
        map: Arc<Mapping>,
        offset: usize,
        capacity: usize,
    ) -> Result<Self, RingError> {
        check_capacity(capacity)?;
        let len = region_len(capacity);
        let bad = RingError::BadRegion {
            offset,
            len,
            mapping_len: map.len(),
        };
        let Some(base) = map.as_mut_ptr() else {
            return Err(RingError::BadRegion {
                offset,
                len,
                mapping_len: 0,
            });
        };
        if offset.checked_add(len).is_none_or(|end| end > map.len()) {
            return Err(bad);
        }
        // SAFETY: offset + len <= map.len(): in bounds of the mapping.
        let base = unsafe { base.add(offset) };
        let base = NonNull::new(base).ok_or(bad)?;
        // SAFETY: the range is inside a live read-write mapping that `map` (kept
        // as the owner) keeps mapped; alignment is checked by `from_raw`. Exclusive
        // use of the bytes is the business of the ends' `attach` contracts.
        unsafe { Self::from_raw(base, capacity, map) }
    }

    /// Base address of the region (the control block).
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    #[inline(always)]
    fn word64(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= region_len(self.capacity));
        // SAFETY: `offset` is in bounds and 8-aligned (the base is 128-aligned), the
        // memory lives as long as `self` (`_owner`), and it is only ever accessed
        // atomically (RingMemory's contract keeps the ring's raw accesses off it).
        // An atomic may alias memory another process writes: that is what it is for.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    #[inline(always)]
    fn word32(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset.is_multiple_of(4) && offset + 4 <= CONTROL_LEN);
        // SAFETY: as in `word64`, for a 4-aligned word of the control block.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU32>() }
    }
}

// SAFETY: `check_capacity` passed at construction; `base` (validity guaranteed by
// the constructors) is 128-aligned so `data()` is too; `commit_word(o)` is the
// atomic at exactly `data() + o`; the control words are at fixed distinct
// offsets in the control block, which does not overlap the frame area.
unsafe impl RingMemory for RingRegion {
    type A = StdAtomics;

    #[inline(always)]
    fn capacity(&self) -> usize {
        self.capacity
    }
    #[inline(always)]
    fn head(&self) -> &AtomicU64 {
        self.word64(offsets::HEAD)
    }
    #[inline(always)]
    fn tail(&self) -> &AtomicU64 {
        self.word64(offsets::TAIL)
    }
    #[inline(always)]
    fn commit_word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(16) && offset < self.capacity);
        self.word64(CONTROL_LEN + offset)
    }
    #[inline(always)]
    fn data(&self) -> *mut u8 {
        // SAFETY: CONTROL_LEN is within the region (region_len = CONTROL_LEN + capacity).
        unsafe { self.base.as_ptr().add(CONTROL_LEN) }
    }
    #[inline(always)]
    fn data_seq(&self) -> &AtomicU32 {
        self.word32(offsets::DATA_SEQ)
    }
    #[inline(always)]
    fn data_waiting(&self) -> &AtomicU32 {
        self.word32(offsets::DATA_WAITING)
    }
    #[inline(always)]
    fn space_seq(&self) -> &AtomicU32 {
        self.word32(offsets::SPACE_SEQ)
    }
    #[inline(always)]
    fn space_waiting(&self) -> &AtomicU32 {
        self.word32(offsets::SPACE_WAITING)
    }
}
