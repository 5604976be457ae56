//! The producing end of a ring.

use super::frame::{FrameMeta, header};
use super::{
    Corruption, CorruptionKind, FRAME_ALIGN, HEADER_LEN, PAD_FLAG, RingError, RingMemory,
    frame_len, max_frame_len, stamp,
};
use crate::doorbell::{Doorbell, Sleeper, WaitMode, Waker};
use crate::sync::{Atomics, Ordering, Word64};
use core::cell::Cell;
use core::marker::PhantomData;
use core::{fmt, ptr};
use std::time::Instant;

/// The producing end of a frame ring. `Send`, not `Sync`: one thread at a time.
///
/// ```
/// use ipc_core::ring::{self, FrameMeta};
///
/// let (mut tx, mut rx) = ring::heap_channel(4096).unwrap();
/// let mut w = tx.reserve(5).unwrap();
/// w.write_at(0, b"hello").unwrap();
/// w.commit(5, FrameMeta { request_id: 7, ..Default::default() }).unwrap();
///
/// let frame = rx.peek().unwrap().expect("a frame");
/// assert_eq!(frame.meta().request_id, 7);
/// assert_eq!(frame.payload().to_vec(), b"hello");
/// frame.consume();
/// rx.release();
/// ```
pub struct Producer<M: RingMemory> {
    mem: M,
    st: Cursor,
    _not_sync: PhantomData<Cell<()>>,
}

/// The producer's private positions (kept apart from `mem` so that a wait can
/// borrow the doorbell words and the positions at once).
#[derive(Debug)]
struct Cursor {
    /// Absolute position of the next frame. Private truth: never re-read from
    /// shared memory. Always a multiple of 16.
    tail: u64,
    /// The consumer's head as last read; `tail - capacity <= head_cache <= published`.
    head_cache: u64,
    /// Position up to which frames are visible to the consumer: `tail`
    /// unless frames are staged (written, their publication held back).
    published: u64,
    /// The commit word of the first staged frame (its position and value):
    /// storing it publishes every staged frame at once. The commit words of
    /// the frames staged after it are stored as they are written; the
    /// consumer reaches them only through this one.
    held: Option<(u64, u64)>,
    /// Set once the consumer was caught writing an impossible head.
    poisoned: Option<Corruption>,
}

impl<M: RingMemory> fmt::Debug for Producer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.mem.capacity())
            .field("tail", &self.st.tail)
            .field("head_cache", &self.st.head_cache)
            .field("published", &self.st.published)
            .field("poisoned", &self.st.poisoned)
            .finish()
    }
}

impl<M: RingMemory> Producer<M> {
    /// Attaches the producing end to a ring's memory.
    ///
    /// The ring must be in its initial state (all zero) or have been left by a
    /// previous producer of this process at position 0 — the producer starts
    /// at position 0.
    ///
    /// # Safety
    ///
    /// No other `Producer` over the same memory exists anywhere while this one
    /// lives (two producers would race on the frame bytes in this process), and
    /// nothing else in this process accesses the region's bytes except the one
    /// `Consumer` (other processes may write anything: that is checked).
    pub unsafe fn attach(mem: M) -> Self {
        Self {
            mem,
            st: Cursor {
                tail: 0,
                head_cache: 0,
                published: 0,
                held: None,
                poisoned: None,
            },
            _not_sync: PhantomData,
        }
    }

    /// The ring's memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Frame-area capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.mem.capacity()
    }

    /// The largest payload one frame carries.
    pub fn max_payload(&self) -> usize {
        super::max_payload_len(self.mem.capacity())
    }

    /// Absolute position of the next frame (bytes written so far, staged
    /// frames included).
    pub fn position(&self) -> u64 {
        self.st.tail
    }

    /// Absolute position up to which frames are published (visible to the
    /// consumer): [`position`](Self::position) minus the staged frames.
    ///
    /// ```
    /// use ipc_core::ring::{self, FrameMeta};
    ///
    /// let (mut tx, rx) = ring::heap_channel(4096).unwrap();
    /// let mut w = tx.reserve(8).unwrap();
    /// w.write_at(0, &[1; 8]).unwrap();
    /// w.stage(8, FrameMeta::default()).unwrap();
    /// assert_eq!(tx.published(), 0);
    /// assert!(!rx.has_frame(), "staged, not published");
    /// assert!(tx.publish_staged());
    /// assert_eq!(tx.published(), tx.position());
    /// assert!(rx.has_frame());
    /// ```
    pub fn published(&self) -> u64 {
        self.st.published
    }

    /// Whether frames are staged (written with [`WriteWindow::stage`], not
    /// yet published).
    ///
    /// ```
    /// use ipc_core::ring::{self, FrameMeta};
    ///
    /// let (mut tx, _rx) = ring::heap_channel(4096).unwrap();
    /// tx.reserve(0).unwrap().stage(0, FrameMeta::default()).unwrap();
    /// assert!(tx.has_staged());
    /// tx.publish_staged();
    /// assert!(!tx.has_staged());
    /// ```
    #[inline]
    pub fn has_staged(&self) -> bool {
        self.st.held.is_some()
    }

    /// Publishes every staged frame at once: one Release store of the first
    /// staged frame's commit word (the consumer reads the later ones only
    /// after it). Returns whether anything was staged. Does not ring the
    /// doorbell: call [`notify`](Self::notify) after, once for the batch.
    ///
    /// A producer that waits for room must publish first: the consumer
    /// cannot release frames it does not see.
    ///
    /// ```
    /// use ipc_core::ring::{self, FrameMeta};
    ///
    /// let (mut tx, mut rx) = ring::heap_channel(4096).unwrap();
    /// for id in 0..3 {
    ///     let mut w = tx.reserve(1).unwrap();
    ///     w.write_at(0, &[id as u8]).unwrap();
    ///     w.stage(1, FrameMeta { request_id: id, ..Default::default() }).unwrap();
    /// }
    /// assert!(rx.peek().unwrap().is_none());
    /// tx.publish_staged();
    /// for id in 0..3 {
    ///     let f = rx.peek().unwrap().expect("published");
    ///     assert_eq!(f.meta().request_id, id);
    ///     f.consume();
    /// }
    /// rx.release();
    /// ```
    #[inline]
    pub fn publish_staged(&mut self) -> bool {
        let Some((pos, word)) = self.st.held.take() else {
            return false;
        };
        let mask = self.mem.capacity() - 1;
        // Release pairs with the Acquire load of the commit word in
        // `Consumer::check_at_read`: every staged frame's header, payload
        // and commit word (all written before this store) and the zeroed
        // commit word after the last one are visible to the consumer once
        // it sees this word.
        self.mem
            .commit_word((pos as usize) & mask)
            .store(word, Ordering::Release);
        self.st.published = self.st.tail;
        // Release: observers that read `tail` (stats) see the frames before
        // it. The consumer never reads it.
        self.mem.tail().store(self.st.tail, Ordering::Release);
        true
    }

    /// Reserves a window for a payload of up to `max_payload` bytes.
    ///
    /// Fails with [`RingError::TooLarge`] if such a frame can never fit,
    /// [`RingError::Full`] if the consumer has not released enough room yet,
    /// and [`RingError::Corrupt`] if the consumer wrote an impossible head.
    #[inline]
    pub fn reserve(&mut self, max_payload: usize) -> Result<WriteWindow<'_, M>, RingError> {
        let (pad, need) = room_for(&self.mem, &mut self.st, max_payload)?;
        let cap = self.mem.capacity();
        let offset = ((self.st.tail + pad as u64) as usize) & (cap - 1);
        // SAFETY: offset + need <= capacity (room_for: the frame never wraps), so
        // the payload area [offset + HEADER_LEN, offset + need) is inside the frame
        // area that `data()` points to.
        let ptr = unsafe { self.mem.data().add(offset + HEADER_LEN) };
        Ok(WriteWindow {
            producer: self,
            ptr,
            len: need - HEADER_LEN,
            pad,
        })
    }

    /// Whether a frame with `max_payload` bytes fits now (refreshes the cached
    /// head if needed). For the poll closure of a wait on the space doorbell.
    pub fn has_room(&mut self, max_payload: usize) -> Result<bool, RingError> {
        has_room(&self.mem, &mut self.st, max_payload)
    }

    /// Rings the "data available" doorbell: wakes the consumer if it sleeps.
    /// Call after publishing (one call may cover several frames). No syscall
    /// while the consumer is awake.
    #[inline]
    pub fn notify<W: Waker<M::A> + ?Sized>(&self, waker: &W) -> bool {
        Doorbell::<M::A>::new(self.mem.data_seq(), self.mem.data_waiting()).ring(waker)
    }

    /// Waits until a frame with `max_payload` bytes fits, sleeping on the
    /// "space available" doorbell (which [`Consumer::release_and_notify`]
    /// rings) per `mode`, until `deadline`.
    ///
    /// [`Consumer::release_and_notify`]: super::Consumer::release_and_notify
    pub fn wait_for_room<S: Sleeper<M::A> + ?Sized>(
        &mut self,
        max_payload: usize,
        sleeper: &S,
        mode: WaitMode,
        deadline: Option<Instant>,
    ) -> Result<(), RingError> {
        let (mem, st) = (&self.mem, &mut self.st);
        let bell = Doorbell::<M::A>::new(mem.space_seq(), mem.space_waiting());
        let poll = || match has_room(mem, st, max_payload) {
            Ok(true) => Some(Ok(())),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        };
        bell.wait(poll, sleeper, mode, deadline)
            .map_err(|_| RingError::Timeout)?
    }

    /// Writes a frame whose payload was written at `payload` (called by
    /// `WriteWindow::commit`/`stage`, which checked `payload_len` against the
    /// window) and holds back its publication: see [`publish_staged`].
    ///
    /// [`publish_staged`]: Self::publish_staged
    #[inline]
    fn stage(&mut self, payload: *mut u8, pad: usize, payload_len: usize, meta: FrameMeta) {
        let mask = self.mem.capacity() - 1;
        if pad > 0 {
            self.stage_padding(pad);
        }
        let pos = self.st.tail;
        let len = frame_len(payload_len);
        // SAFETY: `payload` is the window's pointer, HEADER_LEN bytes past the frame
        // start inside the frame area.
        let frame = unsafe { payload.sub(HEADER_LEN) };
        // SAFETY: the header fields lie inside the reserved frame (offsets 8..32,
        // aligned for their types since the frame is 16-aligned); raw writes, no
        // reference. The commit word (offset 0) is not touched here. Plain writes: the
        // consumer reads them only after acquiring the commit word stored by
        // `publish_staged` (this frame's or an earlier staged one's).
        unsafe {
            ptr::write(frame.add(header::REQUEST_ID).cast::<u64>(), meta.request_id);
            ptr::write(frame.add(header::TAG).cast::<u64>(), meta.tag);
            ptr::write(
                frame.add(header::PAYLOAD_LEN).cast::<u32>(),
                payload_len as u32,
            );
            ptr::write(frame.add(header::KIND).cast::<u16>(), meta.kind);
            ptr::write(frame.add(header::FLAGS).cast::<u16>(), meta.flags);
        }
        let next = pos + len as u64;
        // Relaxed: ordered before the Release store of the first staged
        // commit word in `publish_staged`, which is what the consumer
        // acquires before it reads `next`.
        self.mem
            .commit_word((next as usize) & mask)
            .store(0, Ordering::Relaxed);
        let word = ((stamp(pos) as u64) << 32) | len as u64;
        self.hold_or_store(pos, word);
        self.st.tail = next;
    }

    /// The commit word `word` of a frame staged at `pos`: held back if it is
    /// the first staged frame's, stored now otherwise.
    #[inline]
    fn hold_or_store(&mut self, pos: u64, word: u64) {
        if self.st.held.is_none() {
            self.st.held = Some((pos, word));
            return;
        }
        let mask = self.mem.capacity() - 1;
        // Relaxed: the consumer reads this word only after its Acquire load
        // of the first staged commit word, whose Release store in
        // `publish_staged` comes after this one in this thread; until then
        // it waits at that earlier word (0).
        self.mem
            .commit_word((pos as usize) & mask)
            .store(word, Ordering::Relaxed);
    }

    /// Stages a padding frame of `pad` bytes at the tail (up to the end of
    /// the ring).
    #[cold]
    fn stage_padding(&mut self, pad: usize) {
        let pos = self.st.tail;
        debug_assert_eq!(
            ((pos as usize) & (self.mem.capacity() - 1)) + pad,
            self.mem.capacity()
        );
        // Relaxed: ordered before the Release store of the first staged
        // commit word, like the zeroing in `stage`. The next commit word is
        // at offset 0.
        self.mem.commit_word(0).store(0, Ordering::Relaxed);
        let word = ((stamp(pos) as u64) << 32) | (pad as u64 | PAD_FLAG as u64);
        self.hold_or_store(pos, word);
        self.st.tail = pos + pad as u64;
    }

    /// Sequence and waiting words of the "data available" doorbell, which the
    /// producer rings after publishing: `(seq, waiting)`.
    pub fn data_bell_words(&self) -> (&<M::A as Atomics>::U32, &<M::A as Atomics>::U32) {
        (self.mem.data_seq(), self.mem.data_waiting())
    }

    /// Sequence and waiting words of the "space available" doorbell, on which
    /// the producer sleeps when the ring is full: `(seq, waiting)`.
    pub fn space_bell_words(&self) -> (&<M::A as Atomics>::U32, &<M::A as Atomics>::U32) {
        (self.mem.space_seq(), self.mem.space_waiting())
    }
}

/// Returns (padding before the frame, padded frame length).
#[inline]
fn room_for<M: RingMemory>(
    mem: &M,
    st: &mut Cursor,
    max_payload: usize,
) -> Result<(usize, usize), RingError> {
    if let Some(c) = st.poisoned {
        return Err(RingError::Corrupt(c));
    }
    let cap = mem.capacity();
    let max = max_frame_len(cap);
    if max_payload > max {
        return Err(RingError::TooLarge {
            len: max_payload.saturating_add(HEADER_LEN),
            max,
        });
    }
    let need = frame_len(max_payload);
    if need > max {
        return Err(RingError::TooLarge { len: need, max });
    }
    let offset = (st.tail as usize) & (cap - 1);
    let pad = if offset + need > cap { cap - offset } else { 0 };
    // The frame, its padding, and the next commit word must all be free.
    let required = (pad + need + FRAME_ALIGN) as u64;
    if st.tail + required - st.head_cache > cap as u64 {
        refresh_head(mem, st)?;
        if st.tail + required - st.head_cache > cap as u64 {
            return Err(RingError::Full);
        }
    }
    Ok((pad, need))
}

/// Re-reads the consumer's head and checks it.
#[cold]
fn refresh_head<M: RingMemory>(mem: &M, st: &mut Cursor) -> Result<(), RingError> {
    // Acquire pairs with the Release store of `head` in `Consumer::release`:
    // the consumer's reads of the frames it released happen before we
    // overwrite those bytes.
    let head = mem.head().load(Ordering::Acquire);
    let cap = mem.capacity() as u64;
    // Staged frames are not the consumer's yet: its head stops at what is
    // published.
    let valid = head >= st.head_cache
        && head <= st.published
        && st.tail - head <= cap
        && head.is_multiple_of(FRAME_ALIGN as u64);
    if !valid {
        let c = Corruption {
            pos: st.tail,
            kind: CorruptionKind::BadHead(head),
        };
        st.poisoned = Some(c);
        return Err(RingError::Corrupt(c));
    }
    st.head_cache = head;
    Ok(())
}

/// `room_for` as a yes/no, for polls.
#[inline]
fn has_room<M: RingMemory>(
    mem: &M,
    st: &mut Cursor,
    max_payload: usize,
) -> Result<bool, RingError> {
    match room_for(mem, st, max_payload) {
        Ok(_) => Ok(true),
        Err(RingError::Full) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A reserved, writable window in the ring: the payload area of the next
/// frame. Write the payload, then [`commit`](Self::commit) it; dropping the
/// window publishes nothing.
///
/// It is a raw pointer and a length, not a `&mut [u8]`: the consumer (another
/// process) can read, and a hostile one write, these bytes at any time.
pub struct WriteWindow<'a, M: RingMemory> {
    producer: &'a mut Producer<M>,
    /// Payload start (frame start + HEADER_LEN).
    ptr: *mut u8,
    /// Bytes the window holds.
    len: usize,
    /// Bytes of padding frame to publish before this frame (0 if none).
    pad: usize,
}

impl<M: RingMemory> fmt::Debug for WriteWindow<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteWindow")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl<'a, M: RingMemory> WriteWindow<'a, M> {
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
    #[inline]
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

    /// Publishes the first `payload_len` bytes of the window as one frame
    /// (and every frame staged before it).
    #[inline]
    pub fn commit(self, payload_len: usize, meta: FrameMeta) -> Result<(), RingError> {
        let producer = self.stage_in(payload_len, meta)?;
        producer.publish_staged();
        Ok(())
    }

    /// Writes the first `payload_len` bytes of the window as one frame but
    /// holds back its publication: [`Producer::publish_staged`] (or the next
    /// [`commit`](Self::commit)) publishes every staged frame with one store.
    /// For batches: many frames, one publication, one doorbell.
    ///
    /// ```
    /// use ipc_core::ring::{self, FrameMeta};
    ///
    /// let (mut tx, rx) = ring::heap_channel(4096).unwrap();
    /// let mut w = tx.reserve(3).unwrap();
    /// w.write_at(0, b"abc").unwrap();
    /// w.stage(3, FrameMeta::default()).unwrap();
    /// assert!(!rx.has_frame());
    /// tx.publish_staged();
    /// assert!(rx.has_frame());
    /// ```
    pub fn stage(self, payload_len: usize, meta: FrameMeta) -> Result<(), RingError> {
        self.stage_in(payload_len, meta).map(|_| ())
    }

    #[inline]
    fn stage_in(
        self,
        payload_len: usize,
        meta: FrameMeta,
    ) -> Result<&'a mut Producer<M>, RingError> {
        if payload_len > self.len {
            return Err(RingError::CommitTooLong {
                len: payload_len,
                window: self.len,
            });
        }
        let (pad, ptr) = (self.pad, self.ptr);
        self.producer.stage(ptr, pad, payload_len, meta);
        Ok(self.producer)
    }
}
