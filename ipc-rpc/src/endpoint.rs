//! The sending and receiving halves used by both the client and the server.

use crate::codec::{CodecError, RingWriter, Wire};
use core::fmt;
use ipc_core::ring::{Consumer, FrameMeta, Producer, RingError, RingMemory};
use rkyv::ser::allocator::Arena;
use rkyv::util::AlignedVec;

/// The first window a message is serialized into. Most messages are small;
/// only if one overflows it is it serialized again into a window of the
/// ring's full frame limit (which needs the ring to be half empty).
pub const SMALL_WINDOW: usize = 4096;

/// Why [`Outbox::try_send`] did not publish.
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
    pub fn new(producer: Producer<M>) -> Self {
        Self {
            producer,
            arena: Arena::new(),
        }
    }

    /// The ring producer (for doorbells, waits and positions).
    pub fn producer(&mut self) -> &mut Producer<M> {
        &mut self.producer
    }

    /// The largest payload one message may encode to.
    pub fn max_payload(&self) -> usize {
        self.producer.max_payload()
    }

    /// Serializes `value` directly into the ring and publishes it as one frame
    /// with `meta`. Does not ring the doorbell (the caller decides, so that a
    /// batch of frames costs at most one wake-up).
    pub fn try_send<T: Wire>(&mut self, meta: FrameMeta, value: &T) -> Result<(), SendError> {
        let max = self.producer.max_payload();
        let first = SMALL_WINDOW.min(max);
        match self.attempt(first, meta, value)? {
            Attempt::Sent => Ok(()),
            Attempt::Overflow if first < max => match self.attempt(max, meta, value)? {
                Attempt::Sent => Ok(()),
                Attempt::Overflow => Err(SendError::TooLarge { len: max + 1, max }),
            },
            Attempt::Overflow => Err(SendError::TooLarge { len: max + 1, max }),
        }
    }

    /// Publishes an already-encoded message (from [`encode_to_vec`]) as one
    /// frame: for senders that must queue a message while the ring is full.
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
    pub fn encode_to_vec<T: Wire>(&mut self, value: &T) -> Result<AlignedVec<16>, SendError> {
        encode_to_vec(value, &mut self.arena, self.producer.max_payload())
    }

    fn attempt<T: Wire>(
        &mut self,
        window: usize,
        meta: FrameMeta,
        value: &T,
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
                w.commit(n, meta).map_err(SendError::Ring)?;
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
#[derive(Debug)]
pub struct Message<'a> {
    /// Header fields.
    pub meta: FrameMeta,
    /// The payload copy.
    pub bytes: &'a [u8],
}

/// The receiving half: a ring consumer and the private aligned buffer that
/// every payload is copied into before it is validated.
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
    pub fn new(consumer: Consumer<M>) -> Self {
        Self {
            consumer,
            buf: AlignedVec::with_capacity(SMALL_WINDOW),
        }
    }

    /// The ring consumer (for doorbells, waits and releases).
    pub fn consumer(&mut self) -> &mut Consumer<M> {
        &mut self.consumer
    }

    /// Takes the next frame, copying its payload into private memory. The
    /// frame's bytes go back to the producer at the next release.
    pub fn try_recv(&mut self) -> Result<Option<Message<'_>>, RingError> {
        let Some(frame) = self.consumer.peek()? else {
            return Ok(None);
        };
        let meta = frame.meta();
        let payload = frame.payload();
        self.buf.clear();
        self.buf.resize(payload.len(), 0);
        payload.copy_to_slice(&mut self.buf);
        frame.consume();
        Ok(Some(Message {
            meta,
            bytes: &self.buf,
        }))
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
