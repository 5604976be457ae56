//! The sending and receiving halves used by both the client and the server.

use crate::codec::{CodecError, RingWriter, Wire};
use core::fmt;
use ipc_core::ring::{Consumer, FrameMeta, Producer, RingError, RingMemory};
use rkyv::ser::allocator::Arena;
use rkyv::util::AlignedVec;

/// The first window a message is serialized into. Most messages are small;
/// only if one overflows it is it serialized again into a window of the
/// ring's full frame limit (which needs the ring to be half empty).
///
/// ```
/// use ipc_core::ring::{FrameMeta, heap_channel};
/// use ipc_rpc::{Outbox, SMALL_WINDOW};
///
/// let (tx, _rx) = heap_channel(1 << 16)?;
/// let mut out = Outbox::new(tx);
/// // A message larger than the first window still goes, in one frame.
/// out.try_send(FrameMeta::default(), &vec![7u8; 2 * SMALL_WINDOW])?;
/// assert!(out.producer().position() > 2 * SMALL_WINDOW as u64);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const SMALL_WINDOW: usize = 4096;

/// Why [`Outbox::try_send`] did not publish.
///
/// `Full` is temporary (wait for the consumer, or queue the message with
/// [`Outbox::encode_to_vec`]); the others are final for that message.
///
/// ```
/// use ipc_core::ring::{FrameMeta, heap_channel};
/// use ipc_rpc::{Outbox, SendError};
///
/// let (tx, _rx) = heap_channel(4096)?;
/// let mut out = Outbox::new(tx);
/// let huge = vec![0u8; 2 * out.max_payload()];
/// match out.try_send(FrameMeta::default(), &huge) {
///     Err(SendError::TooLarge { max, .. }) => assert_eq!(max, out.max_payload()),
///     other => panic!("expected TooLarge, got {other:?}"),
/// }
/// // Nobody consumes: the ring fills up.
/// let small = vec![0u8; 100];
/// while out.try_send(FrameMeta::default(), &small).is_ok() {}
/// assert!(matches!(
///     out.try_send(FrameMeta::default(), &small),
///     Err(SendError::Full { .. })
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub enum SendError {
    /// The ring has no room for a window of `need` payload bytes now.
    Full {
        /// The window size that did not fit.
        need: usize,
    },
    /// The message does not fit in one frame (`max` payload bytes).
    TooLarge {
        /// Lower bound of the encoded size.
        len: usize,
        /// The ring's payload limit.
        max: usize,
    },
    /// rkyv could not serialize the value.
    Encode(CodecError),
    /// The ring is unusable (the peer corrupted the indices).
    Ring(RingError),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { need } => write!(f, "ring has no room for {need} bytes"),
            Self::TooLarge { len, max } => {
                write!(
                    f,
                    "message of more than {len} bytes exceeds the frame limit of {max} bytes"
                )
            }
            Self::Encode(e) => write!(f, "encoding failed: {e}"),
            Self::Ring(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {}

enum Attempt {
    Sent,
    Overflow,
}

/// The sending half: a ring producer and the serializer's scratch arena.
///
/// ```
/// use ipc_core::ring::{FrameMeta, heap_channel};
/// use ipc_rpc::{Inbox, Outbox, Wire};
///
/// let (tx, rx) = heap_channel(1 << 16)?;
/// let (mut out, mut inbox) = (Outbox::new(tx), Inbox::new(rx));
/// out.try_send(FrameMeta { request_id: 9, ..Default::default() }, &"hi".to_string())?;
/// let msg = inbox.try_recv()?.expect("a frame");
/// assert_eq!(String::decode(msg.bytes)?, "hi");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Outbox<M: RingMemory> {
    producer: Producer<M>,
    arena: Arena,
}

impl<M: RingMemory> fmt::Debug for Outbox<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("producer", &self.producer)
            .finish()
    }
}

impl<M: RingMemory> Outbox<M> {
    /// Wraps a producer.
    ///
    /// ```
    /// let (tx, _rx) = ipc_core::ring::heap_channel(4096)?;
    /// let out = ipc_rpc::Outbox::new(tx);
    /// assert_eq!(out.max_payload(), ipc_core::ring::max_payload_len(4096));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(producer: Producer<M>) -> Self {
        Self {
            producer,
            arena: Arena::new(),
        }
    }

    /// The ring producer (for doorbells, waits and positions).
    ///
    /// ```
    /// use ipc_core::ring::{FrameMeta, heap_channel};
    ///
    /// let (tx, _rx) = heap_channel(4096)?;
    /// let mut out = ipc_rpc::Outbox::new(tx);
    /// out.try_send(FrameMeta::default(), &1u64)?;
    /// assert!(out.producer().position() > 0, "one frame published");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn producer(&mut self) -> &mut Producer<M> {
        &mut self.producer
    }

    /// The largest payload one message may encode to.
    ///
    /// ```
    /// let (tx, _rx) = ipc_core::ring::heap_channel(1 << 16)?;
    /// let out = ipc_rpc::Outbox::new(tx);
    /// assert!(out.max_payload() < (1 << 16) / 2, "a frame is at most half the ring");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_payload(&self) -> usize {
        self.producer.max_payload()
    }

    /// Serializes `value` directly into the ring and publishes it as one frame
    /// with `meta`. Does not ring the doorbell (the caller decides, so that a
    /// batch of frames costs at most one wake-up).
    ///
    /// ```
    /// use ipc_core::ring::{FrameMeta, heap_channel};
    /// use ipc_rpc::{Method, Outbox, builtin::Ping, wire};
    ///
    /// let (tx, rx) = heap_channel(1 << 16)?;
    /// let mut out = Outbox::new(tx);
    /// let meta = FrameMeta { request_id: 1, tag: Ping::ID, kind: wire::REQUEST, flags: 0 };
    /// out.try_send(meta, &b"ping".to_vec())?;
    /// assert!(rx.has_frame());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_send<T: Wire>(&mut self, meta: FrameMeta, value: &T) -> Result<(), SendError> {
        self.send_or_stage(meta, value, false)
    }

    /// Like [`try_send`](Self::try_send), but the frame is only *staged*:
    /// written into the ring, its publication held back until
    /// [`Producer::publish_staged`] (or the next published frame) makes the
    /// whole batch visible with one store. For batches of calls: many
    /// frames, one publication, one doorbell check.
    ///
    /// ```
    /// use ipc_core::ring::{FrameMeta, heap_channel};
    /// use ipc_rpc::{Inbox, Outbox, Wire};
    ///
    /// let (tx, rx) = heap_channel(1 << 16)?;
    /// let (mut out, mut inbox) = (Outbox::new(tx), Inbox::new(rx));
    /// for i in 0..4u32 {
    ///     out.try_stage(FrameMeta { request_id: i.into(), ..Default::default() }, &i)?;
    /// }
    /// assert!(inbox.try_recv()?.is_none(), "staged, not yet published");
    /// out.producer().publish_staged();
    /// for i in 0..4u32 {
    ///     assert_eq!(u32::decode(inbox.try_recv()?.unwrap().bytes)?, i);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// [`Producer::publish_staged`]: ipc_core::ring::Producer::publish_staged
    #[inline]
    pub fn try_stage<T: Wire>(&mut self, meta: FrameMeta, value: &T) -> Result<(), SendError> {
        self.send_or_stage(meta, value, true)
    }

    #[inline]
    fn send_or_stage<T: Wire>(
        &mut self,
        meta: FrameMeta,
        value: &T,
        stage: bool,
    ) -> Result<(), SendError> {
        let max = self.producer.max_payload();
        let first = SMALL_WINDOW.min(max);
        match self.attempt(first, meta, value, stage)? {
            Attempt::Sent => Ok(()),
            Attempt::Overflow if first < max => match self.attempt(max, meta, value, stage)? {
                Attempt::Sent => Ok(()),
                Attempt::Overflow => Err(SendError::TooLarge { len: max + 1, max }),
            },
            Attempt::Overflow => Err(SendError::TooLarge { len: max + 1, max }),
        }
    }

    /// Publishes an already-encoded message (from [`encode_to_vec`]) as one
    /// frame: for senders that must queue a message while the ring is full.
    ///
    /// ```
    /// use ipc_core::ring::{FrameMeta, heap_channel};
    /// use ipc_rpc::{Inbox, Outbox, Wire};
    ///
    /// let (tx, rx) = heap_channel(1 << 16)?;
    /// let (mut out, mut inbox) = (Outbox::new(tx), Inbox::new(rx));
    /// // Encoded while the ring was full, sent once it has room.
    /// let queued = out.encode_to_vec(&42u32)?;
    /// out.try_send_encoded(FrameMeta::default(), &queued)?;
    /// assert_eq!(u32::decode(inbox.try_recv()?.unwrap().bytes)?, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_send_encoded(&mut self, meta: FrameMeta, bytes: &[u8]) -> Result<(), SendError> {
        let mut w = match self.producer.reserve(bytes.len()) {
            Ok(w) => w,
            Err(RingError::Full) => return Err(SendError::Full { need: bytes.len() }),
            Err(RingError::TooLarge { len, max }) => return Err(SendError::TooLarge { len, max }),
            Err(e) => return Err(SendError::Ring(e)),
        };
        w.write_at(0, bytes).map_err(SendError::Ring)?;
        w.commit(bytes.len(), meta).map_err(SendError::Ring)
    }

    /// Serializes `value` into an owned, 16-aligned buffer (for a backlog),
    /// using this outbox's arena. Fails with `TooLarge` beyond the ring's limit.
    ///
    /// ```
    /// use ipc_rpc::{Outbox, SendError, Wire};
    ///
    /// let (tx, _rx) = ipc_core::ring::heap_channel(4096)?;
    /// let mut out = Outbox::new(tx);
    /// let bytes = out.encode_to_vec(&(1u8, "one".to_string()))?;
    /// assert_eq!(<(u8, String)>::decode(&bytes)?, (1, "one".to_string()));
    /// assert!(matches!(out.encode_to_vec(&vec![0u8; 4096]), Err(SendError::TooLarge { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn encode_to_vec<T: Wire>(&mut self, value: &T) -> Result<AlignedVec<16>, SendError> {
        encode_to_vec(value, &mut self.arena, self.producer.max_payload())
    }

    #[inline]
    fn attempt<T: Wire>(
        &mut self,
        window: usize,
        meta: FrameMeta,
        value: &T,
        stage: bool,
    ) -> Result<Attempt, SendError> {
        let mut w = match self.producer.reserve(window) {
            Ok(w) => w,
            Err(RingError::Full) => return Err(SendError::Full { need: window }),
            Err(RingError::TooLarge { len, max }) => return Err(SendError::TooLarge { len, max }),
            Err(e) => return Err(SendError::Ring(e)),
        };
        // SAFETY: the window is valid for writes of `w.len()` bytes until it is
        // committed or dropped, and 16-byte aligned (frames are 16-aligned and
        // the header is 32 bytes).
        let mut out = unsafe { RingWriter::new(w.as_mut_ptr(), w.len()) };
        match value.encode(&mut out, &mut self.arena) {
            Ok(n) => {
                if stage {
                    w.stage(n, meta).map_err(SendError::Ring)?;
                } else {
                    w.commit(n, meta).map_err(SendError::Ring)?;
                }
                Ok(Attempt::Sent)
            }
            // Dropping the window publishes nothing.
            Err(_) if out.overflowed() => Ok(Attempt::Overflow),
            Err(e) => Err(SendError::Encode(e)),
        }
    }
}

/// Serializes `value` into an owned, 16-aligned buffer of at most `max`
/// bytes, with scratch space from `arena`.
///
/// ```
/// use ipc_rpc::rkyv::ser::allocator::Arena;
/// use ipc_rpc::{Wire, encode_to_vec};
///
/// let mut arena = Arena::new(); // reuse it: later encodings allocate no scratch
/// let bytes = encode_to_vec(&vec![1u16, 2, 3], &mut arena, 1 << 16)?;
/// assert_eq!(Vec::<u16>::decode(&bytes)?, [1, 2, 3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encode_to_vec<T: Wire>(
    value: &T,
    arena: &mut Arena,
    max: usize,
) -> Result<AlignedVec<16>, SendError> {
    let mut cap = SMALL_WINDOW.min(max);
    loop {
        let mut buf = AlignedVec::<16>::with_capacity(cap);
        buf.resize(cap, 0);
        // SAFETY: the buffer holds `cap` initialised bytes and is 16-aligned.
        let mut out = unsafe { RingWriter::new(buf.as_mut_ptr(), cap) };
        match value.encode(&mut out, arena) {
            Ok(n) => {
                buf.resize(n, 0);
                return Ok(buf);
            }
            Err(_) if out.overflowed() && cap < max => cap = (cap * 4).min(max),
            Err(_) if out.overflowed() => return Err(SendError::TooLarge { len: max + 1, max }),
            Err(e) => return Err(SendError::Encode(e)),
        }
    }
}

/// A received message: its header fields and a private, 16-aligned,
/// not-yet-validated copy of its payload (validate with [`Wire::access`] or
/// [`Wire::decode`]).
///
/// ```
/// use ipc_core::ring::{FrameMeta, heap_channel};
/// use ipc_rpc::{Inbox, Message, Outbox, Wire, wire};
///
/// fn describe(msg: &Message<'_>) -> String {
///     match msg.meta.kind {
///         wire::REQUEST => format!("request {} of {} bytes", msg.meta.request_id, msg.bytes.len()),
///         _ => "something else".into(),
///     }
/// }
/// let (tx, rx) = heap_channel(4096)?;
/// let (mut out, mut inbox) = (Outbox::new(tx), Inbox::new(rx));
/// out.try_send(FrameMeta { request_id: 3, kind: wire::REQUEST, ..Default::default() }, &7u64)?;
/// let msg = inbox.try_recv()?.unwrap();
/// assert_eq!(describe(&msg), "request 3 of 8 bytes");
/// assert_eq!(u64::decode(msg.bytes)?, 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Message<'a> {
    /// Header fields.
    pub meta: FrameMeta,
    /// The payload copy.
    pub bytes: &'a [u8],
}

/// The receiving half: a ring consumer and the private aligned buffer that
/// every payload is copied into before it is validated.
///
/// ```
/// use ipc_core::ring::{FrameMeta, heap_channel};
/// use ipc_rpc::{Inbox, Outbox, Wire};
///
/// let (tx, rx) = heap_channel(4096)?;
/// let (mut out, mut inbox) = (Outbox::new(tx), Inbox::new(rx));
/// for i in 0..3u32 {
///     out.try_send(FrameMeta::default(), &i)?;
/// }
/// let mut got = Vec::new();
/// while let Some(msg) = inbox.try_recv()? {
///     got.push(u32::decode(msg.bytes)?);
/// }
/// inbox.consumer().release(); // give the frames' room back to the producer
/// assert_eq!(got, [0, 1, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Inbox<M: RingMemory> {
    consumer: Consumer<M>,
    buf: AlignedVec<16>,
}

impl<M: RingMemory> fmt::Debug for Inbox<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("consumer", &self.consumer)
            .finish()
    }
}

impl<M: RingMemory> Inbox<M> {
    /// Wraps a consumer.
    ///
    /// ```
    /// let (_tx, rx) = ipc_core::ring::heap_channel(4096)?;
    /// let mut inbox = ipc_rpc::Inbox::new(rx);
    /// assert!(inbox.try_recv()?.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(consumer: Consumer<M>) -> Self {
        Self {
            consumer,
            buf: AlignedVec::with_capacity(SMALL_WINDOW),
        }
    }

    /// The ring consumer (for doorbells, waits and releases).
    ///
    /// ```
    /// use ipc_core::ring::{FrameMeta, heap_channel};
    ///
    /// let (tx, rx) = heap_channel(4096)?;
    /// let (mut out, mut inbox) = (ipc_rpc::Outbox::new(tx), ipc_rpc::Inbox::new(rx));
    /// out.try_send(FrameMeta::default(), &1u8)?;
    /// assert!(inbox.consumer().has_frame());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn consumer(&mut self) -> &mut Consumer<M> {
        &mut self.consumer
    }

    /// Takes the next frame, copying its payload into private memory. The
    /// frame's bytes go back to the producer at the next release.
    ///
    /// ```
    /// use ipc_core::ring::{FrameMeta, heap_channel};
    /// use ipc_rpc::{Inbox, Outbox, Wire};
    ///
    /// let (tx, rx) = heap_channel(4096)?;
    /// let (mut out, mut inbox) = (Outbox::new(tx), Inbox::new(rx));
    /// out.try_send(FrameMeta { tag: 5, ..Default::default() }, &"x".to_string())?;
    /// let msg = inbox.try_recv()?.expect("a frame");
    /// assert_eq!(msg.meta.tag, 5);
    /// // The copy is private: validate it, then use it in place or decode it.
    /// assert_eq!(String::access(msg.bytes)?.as_str(), "x");
    /// assert!(inbox.try_recv()?.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_recv(&mut self) -> Result<Option<Message<'_>>, RingError> {
        let Some(frame) = self.consumer.peek()? else {
            return Ok(None);
        };
        let meta = frame.meta();
        let payload = frame.payload();
        let len = payload.len();
        // The buffer only grows: no zero-filling per message (it was a
        // tenth of a small message's cost); the message is its first `len`
        // bytes, all overwritten by the copy.
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let bytes = &mut self.buf[..len];
        payload.copy_to_slice(bytes);
        frame.consume();
        Ok(Some(Message { meta, bytes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_core::ring::heap_channel;

    #[test]
    fn send_receive_direct_and_encoded() {
        let (tx, rx) = heap_channel(1 << 16).unwrap();
        let (mut out, mut inbox) = (Outbox::new(tx), Inbox::new(rx));
        let meta = FrameMeta {
            request_id: 5,
            tag: 9,
            kind: crate::wire::REQUEST,
            flags: 0,
        };
        out.try_send(meta, &vec![1u8, 2, 3]).unwrap();
        let enc = out.encode_to_vec(&vec![4u8; 5000]).unwrap();
        out.try_send_encoded(
            FrameMeta {
                request_id: 6,
                ..meta
            },
            &enc,
        )
        .unwrap();
        let m = inbox.try_recv().unwrap().unwrap();
        assert_eq!(m.meta, meta);
        assert_eq!(Vec::<u8>::decode(m.bytes).unwrap(), vec![1, 2, 3]);
        let m = inbox.try_recv().unwrap().unwrap();
        assert_eq!(m.meta.request_id, 6);
        assert_eq!(Vec::<u8>::decode(m.bytes).unwrap(), vec![4u8; 5000]);
        assert!(inbox.try_recv().unwrap().is_none());
    }

    #[test]
    fn too_large_and_full_are_told_apart() {
        let (tx, _rx) = heap_channel(1 << 12).unwrap();
        let mut out = Outbox::new(tx);
        let max = out.max_payload();
        let meta = FrameMeta::default();
        assert!(matches!(
            out.try_send(meta, &vec![0u8; max * 2]),
            Err(SendError::TooLarge { .. })
        ));
        let mut sent = 0;
        loop {
            match out.try_send(meta, &vec![0u8; 100]) {
                Ok(()) => sent += 1,
                Err(SendError::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(sent > 10);
    }
}
