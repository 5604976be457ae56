//! An owned `MAP_SHARED` mapping of a segment.

use core::fmt;
use core::ptr::NonNull;
use std::io;
use std::os::fd::BorrowedFd;

use rustix::mm::{MapFlags, ProtFlags};

use super::{Access, MapError, OffsetError, ShmSafe};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// An owned shared mapping of a whole segment; unmapped on drop.
///
/// The bytes behind it may be written by another process at any time, so a
/// `Mapping` never hands out `&[u8]` or `&mut [u8]` (docs/design.md §4.5). It gives
/// raw pointers ([`as_ptr`](Self::as_ptr), [`ptr_at`](Self::ptr_at)), atomic
/// loads ([`load_u32`](Self::load_u32)) and, on writable mappings, references
/// to atomic words ([`atomic_u32`](Self::atomic_u32)), all bounds- and
/// alignment-checked.
///
/// Invariants: `ptr` is the page-aligned start of a live mapping of exactly
/// `len > 0` bytes, mapped with the protection `access` says, owned by this
/// value alone.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    access: Access,
}

// SAFETY: a Mapping owns its address range (no other Rust value unmaps it), and
// it never hands out references to non-atomic bytes, so moving it to another
// thread cannot create a data race the type system would not otherwise allow.
unsafe impl Send for Mapping {}
// SAFETY: every `&self` method reads only the immutable fields or goes through
// raw pointers and atomics; concurrent use from several threads is no different
// from concurrent use by another process, which the type already assumes.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0, `MAP_SHARED`.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize, access: Access) -> Result<Self, MapError> {
        Self::map_with(fd, len, access, MapFlags::SHARED)
    }

    /// [`map`](Self::map), faulting every page in now (`MAP_POPULATE`).
    pub(crate) fn map_populated(
        fd: BorrowedFd<'_>,
        len: usize,
        access: Access,
    ) -> Result<Self, MapError> {
        Self::map_with(fd, len, access, MapFlags::SHARED | MapFlags::POPULATE)
    }

    fn map_with(
        fd: BorrowedFd<'_>,
        len: usize,
        access: Access,
        flags: MapFlags,
    ) -> Result<Self, MapError> {
        let prot = match access {
            Access::ReadOnly => ProtFlags::READ,
            Access::ReadWrite => ProtFlags::READ | ProtFlags::WRITE,
        };
        // SAFETY: a null hint lets the kernel choose a fresh range, so no
        // existing Rust memory is replaced; the result is owned by the Mapping
        // built below and unmapped only by its Drop.
        let res = unsafe { rustix::mm::mmap(core::ptr::null_mut(), len, prot, flags, fd, 0) };
        match res {
            Ok(p) => match NonNull::new(p.cast::<u8>()) {
                Some(ptr) => Ok(Self { ptr, len, access }),
                // mmap never returns address 0 for a null hint; treat it as a
                // failure rather than trust it.
                None => Err(MapError::Mmap(io::Error::other(
                    "mmap returned a null pointer",
                ))),
            },
            Err(e)
                if access == Access::ReadWrite
                    && (e == rustix::io::Errno::PERM || e == rustix::io::Errno::ACCESS) =>
            {
                Err(MapError::WriteDenied(e.into()))
            }
            Err(e) => Err(MapError::Mmap(e.into())),
        }
    }

    /// The mapping's length in bytes (the segment's length).
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a mapping is never empty (`mmap` refuses length 0).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the mapping is read-only or read-write.
    #[inline]
    pub fn access(&self) -> Access {
        self.access
    }

    /// The first byte of the mapping. Reading through it is allowed for
    /// `len()` bytes, but the bytes may change under the reader: copy them
    /// with volatile or atomic reads, never make a reference to them.
    #[inline]
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The first byte of the mapping for writing, or `None` if it is
    /// read-only.
    #[inline]
    pub fn as_mut_ptr(&self) -> Option<*mut u8> {
        match self.access {
            Access::ReadWrite => Some(self.ptr.as_ptr()),
            Access::ReadOnly => None,
        }
    }

    /// A pointer to a `T` at `offset`, checked to lie inside the mapping and
    /// be aligned for `T`.
    ///
    /// The pointer is raw on purpose: what may be done through it (volatile
    /// reads, atomic access, writes on a read-write mapping) is the caller's
    /// decision; [`ShmSafe`] guarantees that whatever bytes are there form a
    /// valid `T`.
    pub fn ptr_at<T: ShmSafe>(&self, offset: usize) -> Result<NonNull<T>, OffsetError> {
        let size = core::mem::size_of::<T>();
        let align = core::mem::align_of::<T>();
        let in_range = offset.checked_add(size).is_some_and(|end| end <= self.len);
        if !in_range {
            return Err(OffsetError::OutOfRange {
                offset,
                size,
                len: self.len,
            });
        }
        // The base is page-aligned, so offset alignment is address alignment.
        if !offset.is_multiple_of(align) {
            return Err(OffsetError::Unaligned { offset, align });
        }
        // SAFETY: offset + size <= len, so the result stays inside the mapping
        // (one allocation) and cannot wrap or become null.
        let p = unsafe { self.ptr.add(offset) };
        Ok(p.cast::<T>())
    }

    /// A reference to the atomic `u32` at `offset` of a read-write mapping.
    ///
    /// Fails if `offset` is out of range, not 4-aligned, or the mapping is
    /// read-only (a store through the reference would fault; use
    /// [`load_u32`](Self::load_u32) there).
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, OffsetError> {
        let p = self.ptr_at::<AtomicU32>(offset)?;
        if self.access != Access::ReadWrite {
            return Err(OffsetError::ReadOnly);
        }
        // SAFETY: p is in bounds, aligned and writable for as long as `self`
        // (and thus the mapping) lives; concurrent writes by other processes
        // are atomic accesses to an UnsafeCell-based type, which is sound.
        Ok(unsafe { p.as_ref() })
    }

    /// A reference to the atomic `u64` at `offset` of a read-write mapping;
    /// see [`atomic_u32`](Self::atomic_u32).
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, OffsetError> {
        let p = self.ptr_at::<AtomicU64>(offset)?;
        if self.access != Access::ReadWrite {
            return Err(OffsetError::ReadOnly);
        }
        // SAFETY: as in `atomic_u32`.
        Ok(unsafe { p.as_ref() })
    }

    /// Atomically loads the `u32` at `offset`; works on read-only mappings.
    pub fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, OffsetError> {
        let p = self.ptr_at::<AtomicU32>(offset)?;
        // SAFETY: p is in bounds and aligned for the lifetime of this borrow.
        // Only a load is performed; std documents atomic loads of native
        // lock-free sizes as allowed on read-only memory ("Atomic accesses to
        // read-only memory"), and peer writes are atomic accesses too.
        Ok(unsafe { p.as_ref() }.load(order))
    }

    /// Atomically loads the `u64` at `offset`; works on read-only mappings.
    pub fn load_u64(&self, offset: usize, order: Ordering) -> Result<u64, OffsetError> {
        let p = self.ptr_at::<AtomicU64>(offset)?;
        // SAFETY: as in `load_u32`.
        Ok(unsafe { p.as_ref() }.load(order))
    }
}

impl Mapping {
    /// Gives up the mapping without unmapping it: its first byte and its
    /// length. The caller owns the range from now on and must `munmap` it
    /// (in one call or in parts: a writer that unmaps a large window on two
    /// threads, whose page-table teardowns run in parallel).
    ///
    /// ```
    /// use ipc_core::shm::{Access, Segment};
    ///
    /// let seg = Segment::create("raw", 4096)?;
    /// let (ptr, len) = seg.map(Access::ReadWrite)?.into_raw();
    /// // SAFETY: the range was just given up by its mapping, nothing else
    /// // refers to it.
    /// unsafe { rustix::mm::munmap(ptr.cast(), len) }?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_raw(self) -> (*mut u8, usize) {
        let me = std::mem::ManuallyDrop::new(self);
        (me.ptr.as_ptr(), me.len)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a live mapping owned by this value alone;
        // after drop nothing can reach it (references handed out borrow self).
        let res = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        // munmap of a range we mapped cannot fail; there is nothing useful to
        // do if it does, and Drop must not panic.
        let _ = res;
    }
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("access", &self.access)
            .finish()
    }
}
