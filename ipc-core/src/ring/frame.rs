//! Frame metadata, header offsets, and the raw read view of payload bytes
//! (the write side's window is [`WriteWindow`](super::WriteWindow), next to
//! the producer that owns it).
//!
//! [`ShmSlice`] never forms a `&`/`&mut` over ring bytes (docs/design.md §4.5): the
//! peer may write them at any moment, and a reference would let the compiler
//! assume otherwise. Its reads are volatile copies into private memory (the
//! write window likewise writes through a raw pointer).

use super::HEADER_LEN;
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

/// From this many bytes on, `copy_to_slice` copies with one `rep movsb`
/// (below it, the volatile word loop is as fast and has no start-up cost).
#[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
const OPAQUE_COPY_MIN: usize = 256;

/// Copies `len` bytes with `rep movsb` inside an `asm!` block.
///
/// The compiler sees the block as an opaque operation on memory, not as Rust
/// loads, so it cannot assume the source stays unchanged or read it again:
/// the same guarantee as the volatile loop (each byte is read once, into
/// private memory), at memcpy speed (ERMSB: the CPU copies whole cache lines
/// rather than the 0.9 instructions per byte the volatile loop costs, which
/// showed in the blob seal's profile).
///
/// # Safety
///
/// `src` is valid for `len` reads, `dst` for `len` writes, and the ranges do
/// not overlap.
#[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
unsafe fn opaque_copy(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: the caller's contract; `rep movsb` copies exactly `rcx` bytes
    // forwards (the direction flag is clear at every Rust function boundary,
    // per the System V ABI) and changes only rcx, rsi and rdi, which are
    // declared clobbered; it touches no stack and no flags.
    unsafe {
        core::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags)
        );
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
    #[inline]
    pub fn copy_to_slice(&self, dst: &mut [u8]) {
        assert_eq!(
            dst.len(),
            self.len,
            "ShmSlice::copy_to_slice: length mismatch"
        );
        #[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
        if self.len >= OPAQUE_COPY_MIN {
            // SAFETY: `self.ptr` is valid for `len` reads (`new`'s contract)
            // and `dst` for `len` writes; they do not overlap (`dst` is a
            // unique borrow of private memory).
            unsafe { opaque_copy(self.ptr, dst.as_mut_ptr(), self.len) };
            return;
        }
        self.copy_volatile(dst);
    }

    /// The portable copy: volatile loads, eight bytes at a time.
    #[inline]
    fn copy_volatile(&self, dst: &mut [u8]) {
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

#[cfg(test)]
mod copy_tests {
    use super::ShmSlice;

    #[test]
    fn copies_every_length_and_alignment_exactly() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 31 + 7) as u8).collect();
        for start in [0, 1, 3, 8, 13] {
            for len in [0, 1, 7, 8, 9, 255, 256, 257, 1000, 4096, 4987] {
                if start + len > src.len() {
                    continue;
                }
                // SAFETY: a range of `src`, which nothing writes meanwhile.
                let s = unsafe { ShmSlice::new(src.as_ptr().add(start), len) };
                let mut dst = vec![0xEEu8; len];
                s.copy_to_slice(&mut dst);
                assert_eq!(dst, &src[start..start + len], "start {start} len {len}");
            }
        }
    }
}
