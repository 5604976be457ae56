//! The single-producer single-consumer frame ring (docs/design.md §5).
//!
//! A byte ring of power-of-two capacity carries variable-length frames aligned
//! to [`FRAME_ALIGN`] bytes. The producer and the consumer usually live in two
//! processes that map the same memory; either may be buggy or hostile, so each
//! side reads what the other writes once, checks it, and fails with
//! [`RingError::Corrupt`] instead of trusting it.
//!
//! # Region layout
//!
//! ```text
//!  offset  size  written by   contents
//!  ------  ----  -----------  -------------------------------------------------
//!       0   128  producer     tail: u64 (observers only) | data_seq: u32 | space_waiting: u32
//!     128   128  consumer     head: u64                  | data_waiting: u32 | space_seq: u32
//!     256   cap  both         frames (producer writes, consumer zeroes nothing)
//! ```
//!
//! One writer per 128-byte line (docs/design.md §4.3). `data_seq`/`data_waiting` are
//! the words of the doorbell the consumer sleeps on when the ring is empty;
//! `space_seq`/`space_waiting` those of the doorbell the producer sleeps on
//! when it is full (see [`crate::doorbell`]).
//!
//! # Frame format
//!
//! ```text
//!  +0  commit: u64   = (stamp << 32) | len      stored LAST, Release
//!  +8  request_id: u64
//! +16  tag: u64                                 (the RPC layer's method id)
//! +24  payload_len: u32                         exact, unpadded
//! +28  kind: u16
//! +30  flags: u16
//! +32  payload (payload_len bytes), zero or more bytes of padding to 16
//! ```
//!
//! * `stamp = (pos / 16 + 1) as u32` where `pos` is the frame's absolute byte
//!   position (a `u64` that never wraps): a commit word left over from an
//!   earlier lap cannot pass for the current one.
//! * `len` is the frame's padded length: a multiple of 16, at least
//!   [`HEADER_LEN`], at most [`max_frame_len`]. Bit 31 of the length field
//!   ([`PAD_FLAG`]) marks a *padding frame*: it fills the end of the ring when
//!   the next frame would not fit before the wrap, so a frame never wraps. A
//!   padding frame may be 16 bytes and has no header beyond its commit word.
//! * Before it publishes a frame of length `L` at `pos`, the producer stores 0
//!   into the commit word at `pos + L`, so the consumer at its head reads either
//!   0 (nothing yet) or a commit word written for exactly that position.
//! * A batch: the producer may *stage* frames ([`WriteWindow::stage`]): it
//!   writes each frame and its commit word as usual but holds back the commit
//!   word of the first one; [`Producer::publish_staged`] stores it (Release)
//!   and so publishes the whole batch at once. The consumer, which reads
//!   frames in order, reaches the later words only after acquiring that one.
//!   The consumer's side of a batch is `peek`/`consume` many frames, then one
//!   [`Consumer::release`].
//!
//! A small call (8-byte payload) is one 48-byte frame: the consumer's poll of
//! the commit word pulls one line from the producer's cache (two when the frame
//! straddles a 64-byte boundary), and the head store, batched, moves one line
//! back now and then.
//!
//! # Who reads what
//!
//! The consumer never reads `tail`: the commit word is the publication. The
//! producer reads `head` only when its cached copy says the ring is full, and
//! checks it (`tail - capacity <= head <= tail`, never backwards). Neither side
//! ever re-reads its *own* index from shared memory: the truth is private.

mod consumer;
mod frame;
mod memory;
mod producer;

pub use consumer::{Consumer, Frame, heap_channel};
pub use frame::{FrameMeta, ShmSlice};
pub use memory::{RingMemory, RingRegion};
pub use producer::{Producer, WriteWindow};

use core::fmt;

/// Alignment and granularity of frames, in bytes.
pub const FRAME_ALIGN: usize = 16;
/// Length of a frame header (commit word included), in bytes.
pub const HEADER_LEN: usize = 32;
/// Bit of the commit word's length field that marks a padding frame.
pub const PAD_FLAG: u32 = 1 << 31;
/// Smallest ring capacity: a frame with a 16-byte payload must fit.
pub const MIN_CAPACITY: usize = 128;
/// Largest ring capacity (the length field has 31 bits).
pub const MAX_CAPACITY: usize = 1 << 30;
/// Bytes of the control block before the frame area (two 128-byte lines).
pub const CONTROL_LEN: usize = 256;

/// The largest padded frame (header included) a ring of `capacity` carries.
///
/// A frame of at most `capacity / 2 - 16` bytes always fits into an empty ring
/// wherever the producer stands: either before the end, or after a padding
/// frame at the start, with 16 bytes left for the next commit word.
pub const fn max_frame_len(capacity: usize) -> usize {
    capacity / 2 - FRAME_ALIGN
}

/// The largest payload a ring of `capacity` carries in one frame.
pub const fn max_payload_len(capacity: usize) -> usize {
    max_frame_len(capacity) - HEADER_LEN
}

/// Bytes a ring region of `capacity` occupies (control block + frames).
pub const fn region_len(capacity: usize) -> usize {
    CONTROL_LEN + capacity
}

/// Checks a capacity: a power of two in `MIN_CAPACITY..=MAX_CAPACITY`.
pub fn check_capacity(capacity: usize) -> Result<(), RingError> {
    if capacity.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        Ok(())
    } else {
        Err(RingError::BadCapacity(capacity))
    }
}

/// `stamp` of a frame at absolute position `pos` (see the module docs).
#[inline(always)]
pub(crate) const fn stamp(pos: u64) -> u32 {
    // Truncation is the point: the stamp is the slot number modulo 2^32.
    (pos / FRAME_ALIGN as u64 + 1) as u32
}

/// Padded frame length for a payload of `payload_len` bytes.
#[inline(always)]
pub(crate) const fn frame_len(payload_len: usize) -> usize {
    (HEADER_LEN + payload_len + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// What a ring operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingError {
    /// The ring has no room for the frame now; try again after the consumer
    /// releases frames.
    Full,
    /// The frame can never fit: `len` bytes (padded, header included) against
    /// a limit of `max`. Large data belongs in a blob.
    TooLarge {
        /// Padded frame length asked for.
        len: usize,
        /// The ring's frame limit ([`max_frame_len`]).
        max: usize,
    },
    /// A payload length larger than the reserved window was committed.
    CommitTooLong {
        /// Payload length given to `commit`.
        len: usize,
        /// The window's size.
        window: usize,
    },
    /// The capacity is not a power of two in `MIN_CAPACITY..=MAX_CAPACITY`.
    BadCapacity(usize),
    /// The region's base address is not 128-byte aligned.
    Misaligned(usize),
    /// The region does not fit in the mapping, or the mapping is read-only.
    BadRegion {
        /// Offset of the region in the mapping.
        offset: usize,
        /// Bytes the region needs.
        len: usize,
        /// Bytes the mapping has (0 if it is read-only).
        mapping_len: usize,
    },
    /// The deadline passed before the peer made progress.
    Timeout,
    /// The peer wrote something the protocol forbids. The ring end is poisoned:
    /// every later call returns the same error.
    Corrupt(Corruption),
}

/// What exactly the peer broke, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corruption {
    /// Absolute position at which it was found.
    pub pos: u64,
    /// What was wrong.
    pub kind: CorruptionKind,
}

/// The kinds of protocol violation a ring end detects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorruptionKind {
    /// A commit word whose stamp is not that of its position.
    BadStamp {
        /// The stamp the position implies.
        expected: u32,
        /// The stamp found.
        found: u32,
    },
    /// A frame length that is not a multiple of 16, too short, too long, or
    /// runs past the end of the ring.
    BadLength(u32),
    /// A padding frame that does not end exactly at the end of the ring.
    BadPadding(u32),
    /// A header whose payload length does not fit in its frame.
    BadPayloadLen {
        /// The payload length in the header.
        payload_len: u32,
        /// The frame length from the commit word.
        frame_len: u32,
    },
    /// The consumer's head moved backwards, past the tail, or more than a
    /// capacity behind it (seen by the producer).
    BadHead(u64),
}

impl fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadStamp { expected, found } => {
                write!(f, "commit word stamp {found:#x}, expected {expected:#x}")
            }
            Self::BadLength(len) => write!(f, "invalid frame length {len:#x}"),
            Self::BadPadding(len) => {
                write!(
                    f,
                    "padding frame of {len:#x} bytes does not end at the ring's end"
                )
            }
            Self::BadPayloadLen {
                payload_len,
                frame_len,
            } => write!(
                f,
                "payload length {payload_len} does not fit in a frame of {frame_len} bytes"
            ),
            Self::BadHead(head) => write!(f, "consumer head {head:#x} out of range"),
        }
    }
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => f.write_str("ring full"),
            Self::TooLarge { len, max } => write!(
                f,
                "frame of {len} bytes exceeds the ring's limit of {max} bytes; send large data as a blob"
            ),
            Self::CommitTooLong { len, window } => {
                write!(f, "committed {len} payload bytes into a window of {window}")
            }
            Self::BadCapacity(c) => write!(
                f,
                "ring capacity {c} is not a power of two in {MIN_CAPACITY}..={MAX_CAPACITY}"
            ),
            Self::BadRegion {
                offset,
                len,
                mapping_len,
            } => write!(
                f,
                "ring region of {len} bytes at offset {offset} does not fit a writable mapping of {mapping_len} bytes"
            ),
            Self::Timeout => f.write_str("deadline passed before the peer made progress"),
            Self::Misaligned(a) => write!(f, "ring region at {a:#x} is not 128-byte aligned"),
            Self::Corrupt(c) => write!(
                f,
                "peer corrupted the ring at position {:#x}: {}",
                c.pos, c.kind
            ),
        }
    }
}

impl std::error::Error for RingError {}

#[cfg(test)]
mod tests;
