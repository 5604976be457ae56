//! rkyv messages written straight into a ring window, read back from a
//! private aligned copy.
//!
//! The writer side never builds the message anywhere else: the serializer's
//! output goes through [`RingWriter`] (a raw pointer, a length and a position)
//! into the frame's payload, and its scratch space comes from an [`Arena`] the
//! sender keeps, so a steady stream of calls allocates nothing. The reader
//! side copies the payload out of shared memory first (a hostile peer may
//! change it under us), then validates the copy with bytecheck, then uses it.

use core::fmt;
use rkyv::api::low::{LowSerializer, LowValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::{Source, Strategy};
use rkyv::ser::allocator::{Arena, ArenaHandle};
use rkyv::ser::{Positional, Serializer, Writer};
use rkyv::{Archive, Deserialize, Portable, Serialize};

/// The error type of encoding and decoding (rkyv's boxed error: it allocates
/// only when something fails).
///
/// ```
/// use ipc_rpc::Wire;
///
/// // Bytes that are not an archived `String` (a hostile or buggy peer).
/// let err: ipc_rpc::codec::CodecError = String::decode(&[0xff; 3]).unwrap_err();
/// assert!(!err.to_string().is_empty());
/// ```
pub type CodecError = rkyv::rancor::Error;

/// A serializer output over a raw window of peer-visible memory.
///
/// It writes with raw copies and never forms a reference to the window's
/// bytes. Writing past the end fails (and sets [`overflowed`](Self::overflowed)),
/// so the caller can retry with a larger window or report `MessageTooLarge`.
///
/// ```
/// use ipc_rpc::codec::RingWriter;
/// use ipc_rpc::rkyv::{ser::allocator::Arena, util::AlignedVec};
/// use ipc_rpc::Wire;
///
/// let mut window = AlignedVec::<16>::new();
/// window.resize(64, 0);
/// // SAFETY: `window` holds 64 bytes, is 16-aligned, and outlives the writer.
/// let mut out = unsafe { RingWriter::new(window.as_mut_ptr(), window.len()) };
/// let n = 7u64.encode(&mut out, &mut Arena::new())?;
/// assert_eq!(u64::decode(&window[..n])?, 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RingWriter {
    ptr: *mut u8,
    cap: usize,
    pos: usize,
    overflowed: bool,
}

impl fmt::Debug for RingWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingWriter")
            .field("cap", &self.cap)
            .field("pos", &self.pos)
            .finish()
    }
}

#[derive(Debug)]
struct Overflow {
    need: usize,
    cap: usize,
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message needs more than {} bytes (window of {})",
            self.need, self.cap
        )
    }
}

impl std::error::Error for Overflow {}

impl RingWriter {
    /// A writer over `cap` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` is valid for writes of `cap` bytes while the writer is used, and
    /// 16-byte aligned (rkyv aligns relative to position 0).
    ///
    /// ```
    /// use ipc_rpc::codec::RingWriter;
    ///
    /// let mut window = ipc_rpc::rkyv::util::AlignedVec::<16>::with_capacity(256);
    /// window.resize(256, 0);
    /// // SAFETY: 256 writable, 16-aligned bytes that outlive the writer.
    /// let out = unsafe { RingWriter::new(window.as_mut_ptr(), window.len()) };
    /// assert!(!out.overflowed());
    /// ```
    pub unsafe fn new(ptr: *mut u8, cap: usize) -> Self {
        Self {
            ptr,
            cap,
            pos: 0,
            overflowed: false,
        }
    }

    /// Whether a write did not fit: the message needs a larger window (as
    /// opposed to an encoding error, which a larger window would not fix).
    ///
    /// ```
    /// use ipc_rpc::codec::RingWriter;
    /// use ipc_rpc::rkyv::{ser::allocator::Arena, util::AlignedVec};
    /// use ipc_rpc::Wire;
    ///
    /// let mut window = AlignedVec::<16>::new();
    /// window.resize(16, 0);
    /// // SAFETY: 16 writable, 16-aligned bytes that outlive the writer.
    /// let mut out = unsafe { RingWriter::new(window.as_mut_ptr(), window.len()) };
    /// assert!(vec![0u8; 100].encode(&mut out, &mut Arena::new()).is_err());
    /// assert!(out.overflowed());
    /// ```
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }
}

impl Positional for RingWriter {
    #[inline]
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E: Source> Writer<E> for RingWriter {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let end = self.pos.checked_add(bytes.len()).filter(|&e| e <= self.cap);
        let Some(end) = end else {
            self.overflowed = true;
            return Err(E::new(Overflow {
                need: self.pos.saturating_add(bytes.len()),
                cap: self.cap,
            }));
        };
        // SAFETY: pos + len <= cap, inside the window `new` vouched for; a raw
        // copy from private memory, no reference to the window is formed.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(self.pos), bytes.len())
        };
        self.pos = end;
        Ok(())
    }
}

/// The serializer every [`Wire`] type is written with.
///
/// A hand-written `rkyv::Serialize` impl (instead of the derive) names it
/// in its bounds; so does generic code over serializable values:
///
/// ```
/// use ipc_rpc::codec::RingSerializer;
/// use ipc_rpc::rkyv::{Archive, Serialize};
///
/// fn can_be_written<T: Archive + for<'a> Serialize<RingSerializer<'a>>>(_: &T) {}
/// can_be_written(&vec![1u32, 2]);
/// ```
pub type RingSerializer<'a> = LowSerializer<RingWriter, ArenaHandle<'a>, CodecError>;
/// The validator every received message is checked with.
///
/// ```
/// use ipc_rpc::codec::RingValidator;
/// use ipc_rpc::rkyv::{Archive, bytecheck::CheckBytes};
///
/// fn can_be_checked<T: Archive>()
/// where
///     T::Archived: for<'a> CheckBytes<RingValidator<'a>>,
/// {
/// }
/// can_be_checked::<String>();
/// ```
pub type RingValidator<'a> = LowValidator<'a, CodecError>;
/// The deserializer of owned values.
///
/// ```
/// use ipc_rpc::codec::RingDeserializer;
/// use ipc_rpc::rkyv::{Archive, Deserialize};
///
/// fn can_be_owned<T: Archive>()
/// where
///     T::Archived: Deserialize<T, RingDeserializer>,
/// {
/// }
/// can_be_owned::<Vec<u8>>();
/// ```
pub type RingDeserializer = Strategy<(), CodecError>;

/// A type that can travel in a frame: rkyv-archivable, validatable and
/// deserializable with the pinned format. Implemented for every type that
/// derives `rkyv::Archive`, `Serialize` and `Deserialize` (with `CheckBytes`,
/// which the derive adds with rkyv's default `bytecheck` feature). Recursive
/// types and shared pointers (`Rc`, `Arc`) are not supported on the wire.
///
/// ```
/// use ipc_rpc::{Wire, encode_to_vec, rkyv};
/// use ipc_rpc::rkyv::ser::allocator::Arena;
///
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
/// #[rkyv(crate = rkyv)]
/// enum Shape {
///     Circle { r: f32 },
///     Polygon(Vec<(f32, f32)>),
/// }
///
/// let shape = Shape::Polygon(vec![(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]);
/// let bytes = encode_to_vec(&shape, &mut Arena::new(), 4096)?;
/// // Read in place, without building a `Shape`...
/// match Shape::access(&bytes)? {
///     ArchivedShape::Polygon(points) => assert_eq!(points.len(), 3),
///     ArchivedShape::Circle { .. } => unreachable!(),
/// }
/// // ...or as an owned value.
/// assert_eq!(Shape::decode(&bytes)?, shape);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Wire: Sized {
    /// The archived form, read in place after validation.
    type Archived: Portable;

    /// Serializes `self` into `out`, returning the length written.
    ///
    /// ```
    /// use ipc_rpc::codec::RingWriter;
    /// use ipc_rpc::rkyv::{ser::allocator::Arena, util::AlignedVec};
    /// use ipc_rpc::Wire;
    ///
    /// let mut window = AlignedVec::<16>::new();
    /// window.resize(128, 0);
    /// // SAFETY: 128 writable, 16-aligned bytes that outlive the writer.
    /// let mut out = unsafe { RingWriter::new(window.as_mut_ptr(), window.len()) };
    /// let n = "abc".to_string().encode(&mut out, &mut Arena::new())?;
    /// assert!(n > 0 && n <= 128);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn encode(&self, out: &mut RingWriter, arena: &mut Arena) -> Result<usize, CodecError>;

    /// Validates `bytes` (a private, 16-aligned copy whose end is the root) and
    /// returns the archived value.
    ///
    /// ```
    /// use ipc_rpc::rkyv::ser::allocator::Arena;
    /// use ipc_rpc::{Wire, encode_to_vec};
    ///
    /// let bytes = encode_to_vec(&vec![10u32, 20, 30], &mut Arena::new(), 4096)?;
    /// let archived = Vec::<u32>::access(&bytes)?;
    /// assert_eq!(archived[1].to_native(), 20); // little-endian on the wire
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn access(bytes: &[u8]) -> Result<&Self::Archived, CodecError>;

    /// Validates and deserializes `bytes` into an owned value.
    ///
    /// ```
    /// use ipc_rpc::rkyv::ser::allocator::Arena;
    /// use ipc_rpc::{Wire, encode_to_vec};
    ///
    /// let bytes = encode_to_vec(&Some("x".to_string()), &mut Arena::new(), 4096)?;
    /// assert_eq!(Option::<String>::decode(&bytes)?, Some("x".to_string()));
    /// assert!(u64::decode(&bytes[..2]).is_err(), "too short for a u64");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn decode(bytes: &[u8]) -> Result<Self, CodecError>;
}

impl<T> Wire for T
where
    T: Archive + for<'a> Serialize<RingSerializer<'a>>,
    T::Archived: for<'a> CheckBytes<RingValidator<'a>> + Deserialize<T, RingDeserializer>,
{
    type Archived = T::Archived;

    #[inline]
    fn encode(&self, out: &mut RingWriter, arena: &mut Arena) -> Result<usize, CodecError> {
        let mut ser = Serializer::new(RingWriter { ..*out }, arena.acquire(), ());
        let r = rkyv::api::serialize_using(self, &mut ser);
        let w = ser.into_writer();
        out.pos = w.pos;
        out.overflowed = w.overflowed;
        r.map(|_| w.pos)
    }

    #[inline]
    fn access(bytes: &[u8]) -> Result<&T::Archived, CodecError> {
        rkyv::api::low::access::<T::Archived, CodecError>(bytes)
    }

    #[inline]
    fn decode(bytes: &[u8]) -> Result<T, CodecError> {
        let archived = Self::access(bytes)?;
        rkyv::api::deserialize_using::<T, _, CodecError>(archived, &mut ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkyv::util::AlignedVec;

    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
    #[rkyv(crate = rkyv)]
    struct Msg {
        id: u64,
        name: String,
        data: Vec<u8>,
    }

    fn encode_into(value: &Msg, cap: usize) -> Result<AlignedVec<16>, (bool, CodecError)> {
        let mut buf = AlignedVec::<16>::with_capacity(cap.max(16));
        buf.resize(cap, 0);
        let mut arena = Arena::new();
        // SAFETY: the buffer holds `cap` bytes and is 16-aligned.
        let mut w = unsafe { RingWriter::new(buf.as_mut_ptr(), cap) };
        match value.encode(&mut w, &mut arena) {
            Ok(n) => {
                buf.resize(n, 0);
                Ok(buf)
            }
            Err(e) => Err((w.overflowed(), e)),
        }
    }

    #[test]
    fn round_trip_through_a_raw_window() {
        let m = Msg {
            id: 7,
            name: "seven".into(),
            data: vec![1, 2, 3],
        };
        let bytes = encode_into(&m, 256).unwrap();
        assert_eq!(Msg::decode(&bytes).unwrap(), m);
        let a = Msg::access(&bytes).unwrap();
        assert_eq!(a.name.as_str(), "seven");
    }

    #[test]
    fn overflow_is_reported_as_such() {
        let m = Msg {
            id: 7,
            name: "x".repeat(100),
            data: vec![0; 100],
        };
        let (overflowed, _) = encode_into(&m, 64).unwrap_err();
        assert!(overflowed);
    }

    #[test]
    fn garbage_is_rejected_not_trusted() {
        let m = Msg {
            id: 7,
            name: "seven".into(),
            data: vec![1, 2, 3],
        };
        let good = encode_into(&m, 256).unwrap();
        // Flip each byte in turn: validation must fail or yield a valid value,
        // never crash.
        for i in 0..good.len() {
            let mut bad = AlignedVec::<16>::new();
            bad.extend_from_slice(&good);
            bad[i] ^= 0xFF;
            let _ = Msg::decode(&bad);
        }
        // Truncated and empty inputs fail.
        assert!(Msg::decode(&good[..good.len() / 2]).is_err() || good.len() < 2);
        assert!(Msg::decode(&[]).is_err());
    }
}
