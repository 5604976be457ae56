//! Frame metadata and the raw windows through which payload bytes move.
//!
//! Neither type ever forms a `&`/`&mut` over ring bytes (DESIGN.md §4.5): the
//! peer may write them at any moment, and a reference would let the compiler
//! assume otherwise. Reads are volatile copies into private memory; writes go
//! through a raw pointer.

use super::producer::Producer;
use super::{HEADER_LEN, RingError, RingMemory};
use core::marker::PhantomData;
use core::{fmt, ptr};

/// The caller-chosen fields of a frame header.
///
/// The ring carries them without interpreting them; the RPC layer puts its
/// message kind, method id and request id here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameMeta {
    /// Request id (64-bit, chosen by the RPC layer).
    pub request_id: u64,
    /// A free 64-bit word (the RPC layer's method id).
    pub tag: u64,
    /// Message kind.
    pub kind: u16,
    /// Message flags.
    pub flags: u16,
}

/// Offsets of the header fields inside a frame.
pub(crate) mod header {
    pub(crate) const REQUEST_ID: usize = 8;
    pub(crate) const TAG: usize = 16;
    pub(crate) const PAYLOAD_LEN: usize = 24;
    pub(crate) const KIND: usize = 28;
    pub(crate) const FLAGS: usize = 30;
}
const _: () = assert!(header::FLAGS + 2 == HEADER_LEN);

/// A read-only view of `len` bytes of peer-writable memory.
///
/// It hands out copies, never references: the bytes may change while they are
/// copied (a hostile peer), so whatever is copied must be validated afterwards.
#[derive(Clone, Copy)]
pub struct ShmSlice<'a> {
    ptr: *const u8,
    len: usize,
    _life: PhantomData<&'a ()>,
}

impl fmt::Debug for ShmSlice<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmSlice")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl<'a> ShmSlice<'a> {
    /// A view of `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` is valid for reads of `len` bytes for `'a`, and nothing in this
    /// process writes those bytes non-atomically during `'a` (other processes
    /// may write anything).
    pub unsafe fn new(ptr: *const u8, len: usize) -> Self {
        Self {
            ptr,
            len,
            _life: PhantomData,
        }
    }

    /// Number of bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Address of the first byte (for bounds checks and diagnostics).
    #[inline]
    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// Copies the bytes into `dst`, which must be exactly `self.len()` long.
    ///
    /// The copy is volatile, eight bytes at a time where aligned: it reads each
    /// byte exactly once and the compiler cannot re-read shared memory after
    /// the caller has checked the private copy.
    ///
    /// # Panics
    ///
    /// If `dst.len() != self.len()` (a bug in the caller, not peer input).
    pub fn copy_to_slice(&self, dst: &mut [u8]) {
        assert_eq!(
            dst.len(),
            self.len,
            "ShmSlice::copy_to_slice: length mismatch"
        );
        let mut i = 0;
        // Leading bytes up to 8-byte alignment of the source.
        let lead = self.ptr.align_offset(8).min(self.len);
        while i < lead {
            // SAFETY: i < len, so the byte is in the range `new` vouched for.
            dst[i] = unsafe { ptr::read_volatile(self.ptr.add(i)) };
            i += 1;
        }
        while i + 8 <= self.len {
            // SAFETY: `ptr + i` is 8-aligned (after `lead`) and the 8 bytes are in range.
            let word = unsafe { ptr::read_volatile(self.ptr.add(i).cast::<u64>()) };
            dst[i..i + 8].copy_from_slice(&word.to_ne_bytes());
            i += 8;
        }
        while i < self.len {
            // SAFETY: i < len.
            dst[i] = unsafe { ptr::read_volatile(self.ptr.add(i)) };
            i += 1;
        }
    }

    /// Copies the bytes into a new `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len];
        self.copy_to_slice(&mut v);
        v
    }

    /// Copies the bytes into `dst`, replacing its contents (no allocation when
    /// its capacity suffices).
    pub fn copy_into_vec(&self, dst: &mut Vec<u8>) {
        dst.clear();
        dst.resize(self.len, 0);
        self.copy_to_slice(dst);
    }
}

/// Reads a little-endian-agnostic native `T` (an integer) at `ptr`, volatile.
///
/// # Safety
///
/// `ptr` is valid for reads of `size_of::<T>()` bytes and aligned for `T`.
#[inline(always)]
pub(crate) unsafe fn read_field<T: Copy>(ptr: *const u8) -> T {
    // SAFETY: the caller guarantees validity and alignment.
    unsafe { ptr::read_volatile(ptr.cast::<T>()) }
}

/// A reserved, writable window in the ring: the payload area of the next
/// frame. Write the payload, then [`commit`](Self::commit) it; dropping the
/// window publishes nothing.
///
/// It is a raw pointer and a length, not a `&mut [u8]`: the consumer (another
/// process) can read, and a hostile one write, these bytes at any time.
pub struct WriteWindow<'a, M: RingMemory> {
    pub(crate) producer: &'a mut Producer<M>,
    /// Payload start (frame start + HEADER_LEN).
    pub(crate) ptr: *mut u8,
    /// Bytes the window holds.
    pub(crate) len: usize,
    /// Bytes of padding frame to publish before this frame (0 if none).
    pub(crate) pad: usize,
}

impl<M: RingMemory> fmt::Debug for WriteWindow<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteWindow")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl<M: RingMemory> WriteWindow<'_, M> {
    /// Size of the window in bytes (at least what `reserve` asked for).
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Raw pointer to the start of the window, 16-byte aligned, valid for
    /// writes of [`len`](Self::len) bytes until the window is committed or
    /// dropped. For serializers that write in place.
    #[inline]
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    /// Copies `bytes` into the window at `offset`.
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) -> Result<(), RingError> {
        let end = offset.checked_add(bytes.len()).filter(|&e| e <= self.len);
        if end.is_none() {
            return Err(RingError::CommitTooLong {
                len: offset.saturating_add(bytes.len()),
                window: self.len,
            });
        }
        // SAFETY: offset + len <= self.len, and the window's bytes are reserved for
        // this producer (the consumer does not own them until commit); a raw
        // copy, no reference to shared bytes is formed.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset), bytes.len()) };
        Ok(())
    }

    /// Publishes the first `payload_len` bytes of the window as one frame.
    pub fn commit(self, payload_len: usize, meta: FrameMeta) -> Result<(), RingError> {
        if payload_len > self.len {
            return Err(RingError::CommitTooLong {
                len: payload_len,
                window: self.len,
            });
        }
        let (pad, ptr) = (self.pad, self.ptr);
        self.producer.publish(ptr, pad, payload_len, meta);
        Ok(())
    }
}
