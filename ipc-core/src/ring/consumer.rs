//! The consuming end of a ring: the side that must survive a hostile producer.

use super::RingRegion;
use super::frame::{FrameMeta, ShmSlice, header, read_field};
use super::{
    Corruption, CorruptionKind, FRAME_ALIGN, HEADER_LEN, PAD_FLAG, RingError, RingMemory,
    max_frame_len, stamp,
};
use crate::doorbell::{Doorbell, Sleeper, WaitMode, Waker};
use crate::sync::{Atomics, Ordering, Word64};
use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;
use std::time::Instant;

/// The consuming end of a frame ring. `Send`, not `Sync`: one thread at a time.
///
/// Frames are read in place with [`peek`](Self::peek), moved past with
/// [`Frame::consume`], and handed back to the producer in batches with
/// [`release`](Self::release).
pub struct Consumer<M: RingMemory> {
    mem: M,
    /// Absolute position of the next frame to read. Private truth: computed
    /// from our own positions and checked lengths, never from peer data alone.
    /// Always a multiple of 16.
    read: u64,
    /// Position last published to the producer (`read` after `release`);
    /// `head <= read <= head + capacity`.
    head: u64,
    /// Set on the first protocol violation; every later call returns it.
    poisoned: Option<Corruption>,
    _not_sync: PhantomData<Cell<()>>,
}

impl<M: RingMemory> fmt::Debug for Consumer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.mem.capacity())
            .field("read", &self.read)
            .field("head", &self.head)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// A frame read in place. Its header fields are private copies (validated);
/// its payload is a [`ShmSlice`] to copy out. Dropping the frame leaves it in
/// the ring (peek again to see it); [`consume`](Self::consume) moves past it.
pub struct Frame<'a, M: RingMemory> {
    consumer: &'a mut Consumer<M>,
    meta: FrameMeta,
    payload: ShmSlice<'a>,
    len: u32,
}

impl<M: RingMemory> fmt::Debug for Frame<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("meta", &self.meta)
            .field("payload_len", &self.payload.len())
            .field("frame_len", &self.len)
            .finish()
    }
}

impl<'a, M: RingMemory> Frame<'a, M> {
    /// The header fields (a private, checked copy).
    #[inline]
    pub fn meta(&self) -> FrameMeta {
        self.meta
    }

    /// The payload, to copy into private memory before interpreting it.
    #[inline]
    pub fn payload(&self) -> ShmSlice<'a> {
        self.payload
    }

    /// Padded length of the frame in the ring.
    #[inline]
    pub fn frame_len(&self) -> usize {
        self.len as usize
    }

    /// Moves past this frame. Its bytes go back to the producer at the next
    /// [`Consumer::release`].
    #[inline]
    pub fn consume(self) {
        self.consumer.read += self.len as u64;
    }
}

impl<M: RingMemory> Consumer<M> {
    /// Attaches the consuming end to a ring's memory, at position 0.
    ///
    /// # Safety
    ///
    /// No other `Consumer` over the same memory exists anywhere while this one
    /// lives, and nothing else in this process accesses the region's bytes
    /// except the one `Producer` (other processes may write anything: that is
    /// checked).
    pub unsafe fn attach(mem: M) -> Self {
        Self {
            mem,
            read: 0,
            head: 0,
            poisoned: None,
            _not_sync: PhantomData,
        }
    }

    /// The ring's memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Absolute position of the next frame to read.
    pub fn position(&self) -> u64 {
        self.read
    }

    /// Bytes consumed but not yet released to the producer.
    pub fn unreleased(&self) -> u64 {
        self.read - self.head
    }

    /// Whether a frame (or padding) is published at the read position. Cheap:
    /// one Acquire load. For the poll closure of a wait on the data doorbell.
    #[inline]
    pub fn has_frame(&self) -> bool {
        let mask = self.mem.capacity() - 1;
        // Acquire pairs with the Release store of the commit word in
        // `Producer::publish_staged`.
        self.poisoned.is_some()
            || self
                .mem
                .commit_word((self.read as usize) & mask)
                .load(Ordering::Acquire)
                != 0
    }

    /// The frame at the read position, if one is published.
    ///
    /// Padding frames are skipped. A protocol violation by the producer returns
    /// [`RingError::Corrupt`] now and from every later call.
    #[inline]
    pub fn peek(&mut self) -> Result<Option<Frame<'_, M>>, RingError> {
        if let Some(c) = self.poisoned {
            return Err(RingError::Corrupt(c));
        }
        match self.check_at_read() {
            Ok(Some((meta, payload_ptr, payload_len, len))) => {
                // SAFETY: check_at_read verified that the payload lies inside the
                // frame, inside the frame area; the bytes stay valid while `self`
                // (and so the memory) is borrowed; they are read only by volatile
                // copies.
                let payload = unsafe { ShmSlice::new(payload_ptr, payload_len) };
                Ok(Some(Frame {
                    consumer: self,
                    meta,
                    payload,
                    len,
                }))
            }
            Ok(None) => Ok(None),
            Err(kind) => {
                let c = Corruption {
                    pos: self.read,
                    kind,
                };
                self.poisoned = Some(c);
                Err(RingError::Corrupt(c))
            }
        }
    }

    /// Reads and checks the commit word and header at `read`, skipping one
    /// padding frame. Returns (meta, payload pointer, payload length, frame len).
    #[inline]
    fn check_at_read(
        &mut self,
    ) -> Result<Option<(FrameMeta, *const u8, usize, u32)>, CorruptionKind> {
        let cap = self.mem.capacity();
        let mask = cap - 1;
        loop {
            let offset = (self.read as usize) & mask;
            // Acquire pairs with the Release store of the commit word in
            // `Producer::publish_staged`: the header, the payload and the
            // zeroed next commit word written before it are visible now. A
            // batch's later frames' words were stored (Relaxed) before the
            // Release store of its first one, which this side acquired
            // before it got here: they are visible too.
            let word = self.mem.commit_word(offset).load(Ordering::Acquire);
            if word == 0 {
                return Ok(None);
            }
            // Everything below uses the local `word`, read once.
            let found = (word >> 32) as u32;
            let expected = stamp(self.read);
            if found != expected {
                return Err(CorruptionKind::BadStamp { expected, found });
            }
            let field = word as u32;
            if field & PAD_FLAG != 0 {
                let len = field & !PAD_FLAG;
                // A padding frame fills the ring exactly to its end, and is never
                // at offset 0 (a frame that does not fit after offset 0 is larger
                // than `max_frame_len`, which the producer refuses).
                if offset == 0 || len as usize != cap - offset {
                    return Err(CorruptionKind::BadPadding(len));
                }
                self.read += len as u64;
                continue;
            }
            let len = field;
            let l = len as usize;
            if l < HEADER_LEN
                || !l.is_multiple_of(FRAME_ALIGN)
                || l > max_frame_len(cap)
                || offset + l > cap
            {
                return Err(CorruptionKind::BadLength(len));
            }
            let data = self.mem.data();
            // SAFETY: offset + HEADER_LEN <= offset + l <= cap: the header lies in
            // the frame area; fields are aligned (frame 16-aligned). Volatile reads
            // into locals, each field read once.
            let (meta, payload_len) = unsafe {
                let frame = data.add(offset).cast_const();
                let meta = FrameMeta {
                    request_id: read_field::<u64>(frame.add(header::REQUEST_ID)),
                    tag: read_field::<u64>(frame.add(header::TAG)),
                    kind: read_field::<u16>(frame.add(header::KIND)),
                    flags: read_field::<u16>(frame.add(header::FLAGS)),
                };
                (meta, read_field::<u32>(frame.add(header::PAYLOAD_LEN)))
            };
            if payload_len as usize > l - HEADER_LEN {
                return Err(CorruptionKind::BadPayloadLen {
                    payload_len,
                    frame_len: len,
                });
            }
            // SAFETY: offset + HEADER_LEN <= cap, inside the frame area.
            let payload = unsafe { data.add(offset + HEADER_LEN).cast_const() };
            return Ok(Some((meta, payload, payload_len as usize, len)));
        }
    }

    /// Hands every consumed frame back to the producer (one store, skipped if
    /// nothing was consumed since the last release). Returns whether it
    /// stored.
    #[inline]
    pub fn release(&mut self) -> bool {
        if self.read == self.head {
            return false;
        }
        self.head = self.read;
        // Release pairs with the Acquire load of `head` in
        // `Producer::refresh_head`: our reads of the released frames happen
        // before the producer reuses their bytes.
        self.mem.head().store(self.read, Ordering::Release);
        true
    }

    /// [`release`](Self::release), then rings the "space available" doorbell
    /// if the producer sleeps on it. Returns whether it released anything.
    #[inline]
    pub fn release_and_notify<W: Waker<M::A> + ?Sized>(&mut self, waker: &W) -> bool {
        if !self.release() {
            return false;
        }
        Doorbell::<M::A>::new(self.mem.space_seq(), self.mem.space_waiting()).ring(waker);
        true
    }

    /// Waits until a frame is published (or the ring is found corrupt; the
    /// next [`peek`](Self::peek) says which), per `mode`, until `deadline`.
    ///
    /// It first releases what was consumed and wakes a producer waiting for
    /// room (with `waker`): a consumer must never sleep on frames it holds
    /// back, or both sides would wait for each other.
    pub fn wait_for_frame<W, S>(
        &mut self,
        waker: &W,
        sleeper: &S,
        mode: WaitMode,
        deadline: Option<Instant>,
    ) -> Result<(), RingError>
    where
        W: Waker<M::A> + ?Sized,
        S: Sleeper<M::A> + ?Sized,
    {
        self.release_and_notify(waker);
        if self.has_frame() {
            return Ok(());
        }
        let bell = Doorbell::<M::A>::new(self.mem.data_seq(), self.mem.data_waiting());
        bell.wait(|| self.has_frame().then_some(()), sleeper, mode, deadline)
            .map_err(|_| RingError::Timeout)
    }

    /// Sequence and waiting words of the "data available" doorbell, on which
    /// the consumer sleeps when the ring is empty: `(seq, waiting)`.
    pub fn data_bell_words(&self) -> (&<M::A as Atomics>::U32, &<M::A as Atomics>::U32) {
        (self.mem.data_seq(), self.mem.data_waiting())
    }

    /// Sequence and waiting words of the "space available" doorbell, which
    /// the consumer rings after releasing: `(seq, waiting)`.
    pub fn space_bell_words(&self) -> (&<M::A as Atomics>::U32, &<M::A as Atomics>::U32) {
        (self.mem.space_seq(), self.mem.space_waiting())
    }
}

/// Both ends of a fresh ring on the heap, in this process (tests, benchmarks,
/// in-process queues).
///
/// ```
/// let (tx, rx) = ipc_core::ring::heap_channel(1024).unwrap();
/// assert_eq!(tx.capacity(), 1024);
/// assert!(!rx.has_frame());
/// ```
pub fn heap_channel(
    capacity: usize,
) -> Result<(super::Producer<RingRegion>, Consumer<RingRegion>), RingError> {
    let mem = RingRegion::on_heap(capacity)?;
    // SAFETY: the region is new and private to this function; these are the only
    // two ends ever attached to it.
    Ok(unsafe { (super::Producer::attach(mem.clone()), Consumer::attach(mem)) })
}
