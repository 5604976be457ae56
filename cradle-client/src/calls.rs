//! The caller's side of provided methods (docs/architecture.md "Provided
//! methods"), shared by both clients: the envelope a request carries (its
//! deadline, the method's schema hash, the blobs passed with the call) and
//! the reading of an answer that may list result blobs.
//!
//! A request gets an envelope when its method is not the server's own
//! (`cradle.*`) or when it passes blobs; calls of `cradle.*` methods are
//! sent exactly as before, with no envelope and no extra copy.

use crate::session::{self, Session};
use ipc_core::ring::{FrameMeta, Producer, RingError, RingMemory};
use ipc_rpc::blob::BlobHandle;
use ipc_rpc::codec::RingWriter;
use ipc_rpc::provide::RESERVED_PREFIX;
use ipc_rpc::rkyv::rancor::Source;
use ipc_rpc::rkyv::ser::allocator::Arena;
use ipc_rpc::wire::{self, EnvelopeError};
use ipc_rpc::{CallError, ProtocolError, SMALL_WINDOW, SendError, Wire};
use rkyv::util::AlignedVec;
use std::cell::RefCell;
use std::time::Instant;

/// The handles of `blobs`, checked against the envelope's limit.
pub(crate) fn handles(blobs: &[&BlobHandle]) -> Result<Vec<BlobHandle>, crate::error::BlobError> {
    if blobs.len() > wire::MAX_ENVELOPE_BLOBS {
        return Err(crate::error::BlobError::TooManyBlobs {
            count: blobs.len(),
            max: wire::MAX_ENVELOPE_BLOBS,
        });
    }
    Ok(blobs.iter().map(|h| **h).collect())
}

/// Whether a call of the method named `name` carries an envelope even
/// without blobs: every method but the server's own.
pub(crate) fn needs_envelope(name: &str) -> bool {
    !name.starts_with(RESERVED_PREFIX)
}

/// The envelope deadline (`CLOCK_MONOTONIC` ns) of a call that waits until
/// `deadline`.
pub(crate) fn envelope_deadline(deadline: Instant) -> u64 {
    wire::deadline_after(deadline.saturating_duration_since(Instant::now()))
}

thread_local! {
    /// Scratch space for encoding enveloped bodies: reused, so a stream of
    /// calls allocates no scratch.
    static ARENA: RefCell<Arena> = RefCell::new(Arena::new());
}

/// Encodes `value` into an owned, aligned buffer of at most `max` bytes.
pub(crate) fn encode_body<T: Wire>(value: &T, max: usize) -> Result<AlignedVec<16>, CallError> {
    ARENA
        .with(|a| ipc_rpc::encode_to_vec(value, &mut a.borrow_mut(), max))
        .map_err(send_error)
}

/// Blobs whose envelope is written in a small stack buffer; more take the
/// largest one. Clearing the largest (2.6 KiB) on every call was two thirds
/// of a provided call's instructions in the caller.
const SMALL_ENVELOPE_BLOBS: usize = 4;

/// Runs `f` with the envelope of a frame passing `blobs` (its bytes, the
/// body's offset), written in a buffer on the stack.
fn with_envelope<R>(
    deadline_ns: u64,
    schema_hash: u64,
    blobs: &[BlobHandle],
    f: impl FnOnce(&[u8]) -> Result<R, SendError>,
) -> Result<R, SendError> {
    let at = wire::body_offset(blobs.len());
    let encode = |e| SendError::Encode(ipc_rpc::codec::CodecError::new(e));
    if blobs.len() <= SMALL_ENVELOPE_BLOBS {
        let mut head = [0u8; wire::body_offset(SMALL_ENVELOPE_BLOBS)];
        let head = &mut head[..at];
        wire::write_envelope(head, deadline_ns, schema_hash, blobs).map_err(encode)?;
        return f(head);
    }
    let mut head = [0u8; wire::body_offset(wire::MAX_ENVELOPE_BLOBS)];
    let head = head.get_mut(..at).ok_or(SendError::TooLarge {
        len: at,
        max: wire::body_offset(wire::MAX_ENVELOPE_BLOBS),
    })?;
    wire::write_envelope(head, deadline_ns, schema_hash, blobs).map_err(encode)?;
    f(head)
}

/// Serializes `value` straight into the request ring behind its envelope
/// and publishes the frame: no allocation, no copy (as `Outbox::try_send`
/// does for a bare body; a small window first, then the largest).
pub(crate) fn try_send_enveloped<T: Wire, R: RingMemory>(
    producer: &mut Producer<R>,
    meta: FrameMeta,
    deadline_ns: u64,
    schema_hash: u64,
    blobs: &[BlobHandle],
    value: &T,
) -> Result<(), SendError> {
    with_envelope(deadline_ns, schema_hash, blobs, |head| {
        send_behind(producer, meta, head, value, false)
    })
}

/// [`try_send_enveloped`] that only stages the frame (a batch publishes its
/// frames together: `Producer::publish_staged`).
pub(crate) fn try_stage_enveloped<T: Wire, R: RingMemory>(
    producer: &mut Producer<R>,
    meta: FrameMeta,
    deadline_ns: u64,
    schema_hash: u64,
    value: &T,
) -> Result<(), SendError> {
    with_envelope(deadline_ns, schema_hash, &[], |head| {
        send_behind(producer, meta, head, value, true)
    })
}

/// Publishes (or, if `stage`, only stages) `value` serialized behind the
/// envelope `head` (see [`try_send_enveloped`]).
fn send_behind<T: Wire, R: RingMemory>(
    producer: &mut Producer<R>,
    meta: FrameMeta,
    head: &[u8],
    value: &T,
    stage: bool,
) -> Result<(), SendError> {
    let at = head.len();
    let max = producer.max_payload();
    let first = (SMALL_WINDOW + at).min(max);
    for window in [first, max] {
        let mut w = match producer.reserve(window) {
            Ok(w) => w,
            Err(RingError::Full) => return Err(SendError::Full { need: window }),
            Err(RingError::TooLarge { len, max }) => return Err(SendError::TooLarge { len, max }),
            Err(e) => return Err(SendError::Ring(e)),
        };
        if w.len() <= at {
            return Err(SendError::TooLarge { len: at + 1, max });
        }
        w.write_at(0, head).map_err(SendError::Ring)?;
        // SAFETY: the window is valid for writes of `w.len()` bytes until it
        // is committed or dropped, and starts 16-aligned (frames are
        // 16-aligned, the header is 32 bytes); `at < w.len()` is a multiple
        // of 16, so the body's `w.len() - at` bytes at `ptr + at` are inside
        // the window and 16-aligned too.
        let mut out = unsafe { RingWriter::new(w.as_mut_ptr().add(at), w.len() - at) };
        let r = ARENA.with(|a| value.encode(&mut out, &mut a.borrow_mut()));
        match r {
            Ok(n) if stage => return w.stage(at + n, meta).map_err(SendError::Ring),
            Ok(n) => return w.commit(at + n, meta).map_err(SendError::Ring),
            // Dropping the window publishes nothing.
            Err(_) if out.overflowed() && window < max => {}
            Err(_) if out.overflowed() => {
                return Err(SendError::TooLarge { len: max + 1, max });
            }
            Err(e) => return Err(SendError::Encode(e)),
        }
    }
    Err(SendError::TooLarge { len: max + 1, max })
}

/// Writes `body` straight into the request ring behind its envelope and
/// publishes the frame: no allocation, one copy (the body into the ring).
pub(crate) fn try_send_enveloped_bytes<R: RingMemory>(
    producer: &mut Producer<R>,
    meta: FrameMeta,
    deadline_ns: u64,
    schema_hash: u64,
    blobs: &[BlobHandle],
    body: &[u8],
) -> Result<(), SendError> {
    with_envelope(deadline_ns, schema_hash, blobs, |head| {
        let at = head.len();
        let len = at + body.len();
        let mut w = match producer.reserve(len) {
            Ok(w) => w,
            Err(RingError::Full) => return Err(SendError::Full { need: len }),
            Err(RingError::TooLarge { len, max }) => {
                return Err(SendError::TooLarge { len, max });
            }
            Err(e) => return Err(SendError::Ring(e)),
        };
        w.write_at(0, head).map_err(SendError::Ring)?;
        w.write_at(at, body).map_err(SendError::Ring)?;
        w.commit(len, meta).map_err(SendError::Ring)
    })
}

/// A send error as the call's error.
pub(crate) fn send_error(e: SendError) -> CallError {
    match e {
        SendError::TooLarge { len, max } => CallError::MessageTooLarge { len, max },
        SendError::Encode(e) => CallError::Encode(e),
        SendError::Ring(e) => CallError::Malformed(ProtocolError::Ring(e)),
        SendError::Full { .. } => CallError::RingFull,
    }
}

/// The payload of a frame with an envelope: the envelope, then `body` at
/// its aligned offset.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async provider's
pub(crate) fn enveloped(
    deadline_ns: u64,
    schema_hash: u64,
    blobs: &[BlobHandle],
    body: &[u8],
) -> Result<AlignedVec<16>, EnvelopeError> {
    let at = wire::body_offset(blobs.len());
    let mut out = AlignedVec::<16>::with_capacity(at + body.len());
    out.resize(at, 0);
    wire::write_envelope(&mut out, deadline_ns, schema_hash, blobs)?;
    out.extend_from_slice(body);
    Ok(out)
}

/// An answer that would list `count` result blobs, more than an envelope
/// holds, as an encoding error.
pub(crate) fn too_many_blobs(count: usize) -> CallError {
    CallError::Encode(ipc_rpc::codec::CodecError::new(
        crate::error::BlobError::TooManyBlobs {
            count,
            max: wire::MAX_ENVELOPE_BLOBS,
        },
    ))
}

// The async client's (the sync one writes envelopes into the ring).
#[cfg(feature = "tokio")]
/// An envelope that cannot be written (too many blobs) as the call's error.
pub(crate) fn envelope_error(e: EnvelopeError) -> CallError {
    CallError::Encode(ipc_rpc::codec::CodecError::new(e))
}

// The async client's (the sync one writes envelopes into the ring).
#[cfg(feature = "tokio")]
/// The id and the enveloped payload of a call of the bytes method `name`
/// (version `version`) with `body`, passing `blobs`, due within `timeout`.
/// (The sync client writes the envelope and body straight into the ring
/// instead: [`try_send_enveloped_bytes`].)
pub(crate) fn bytes_request(
    name: &str,
    version: u32,
    body: &[u8],
    blobs: &[&BlobHandle],
    timeout: std::time::Duration,
) -> Result<(u64, AlignedVec<16>), crate::error::BlobError> {
    let blobs = handles(blobs)?;
    let id = ipc_rpc::method_id(name, version);
    let deadline = envelope_deadline(Instant::now() + timeout);
    let payload = enveloped(deadline, ipc_rpc::provide::BYTES_SCHEMA, &blobs, body)
        .map_err(envelope_error)?;
    Ok((id, payload))
}

/// A malformed envelope in an answer to method `method`.
fn bad_envelope(method: u64, e: EnvelopeError) -> CallError {
    CallError::Malformed(ProtocolError::Decode {
        method,
        source: ipc_rpc::codec::CodecError::new(e),
    })
}

/// Splits an answer's payload: its body, and the result blobs its envelope
/// lists (leased to us by the server).
pub(crate) fn split_answer(
    method: u64,
    meta: FrameMeta,
    bytes: &[u8],
) -> Result<(&[u8], Vec<BlobHandle>), CallError> {
    if meta.flags & wire::ENVELOPE == 0 {
        return Ok((bytes, Vec::new()));
    }
    let (head, body) = wire::split_envelope(bytes).map_err(|e| bad_envelope(method, e))?;
    Ok((body, head.blobs().collect()))
}

/// Reads the answer to a call of `method` whose caller takes no blobs:
/// `f` gets the body; result blobs the answer lists are given back (queued
/// with the session's releases), so nothing leaks.
pub(crate) fn plain<'a, R>(
    session: &'a Session,
    method: u64,
    f: impl FnOnce(&[u8]) -> Result<R, CallError> + 'a,
) -> impl FnOnce(FrameMeta, &[u8]) -> Result<R, CallError> + 'a {
    move |meta: FrameMeta, bytes: &[u8]| {
        if meta.flags & wire::ENVELOPE == 0 || meta.kind != wire::RESPONSE {
            return session::interpret(method, meta, bytes, f);
        }
        let (body, blobs) = split_answer(method, meta, bytes)?;
        session.queue_leases(&blobs);
        session::interpret(method, meta, body, f)
    }
}

/// Reads the answer to a call of `method` that takes result blobs: `f` gets
/// the body, and the listed handles come with its result (each carries a
/// lease the caller must adopt or give back).
pub(crate) fn with_blobs<'a, R>(
    session: &'a Session,
    method: u64,
    f: impl FnOnce(&[u8]) -> Result<R, CallError> + 'a,
) -> impl FnOnce(FrameMeta, &[u8]) -> Result<(R, Vec<BlobHandle>), CallError> + 'a {
    move |meta: FrameMeta, bytes: &[u8]| {
        if meta.kind != wire::RESPONSE {
            return session::interpret(method, meta, bytes, |_| unreachable_body());
        }
        let (body, blobs) = split_answer(method, meta, bytes)?;
        match session::interpret(method, meta, body, f) {
            Ok(r) => Ok((r, blobs)),
            Err(e) => {
                session.queue_leases(&blobs);
                Err(e)
            }
        }
    }
}

/// `interpret` calls its body reader for `RESPONSE` frames only.
fn unreachable_body<R>() -> Result<R, CallError> {
    Err(CallError::Malformed(ProtocolError::FrameKind(
        wire::RESPONSE,
    )))
}

/// An `UnknownMethod` answer to a call by name says which name.
pub(crate) fn name_unknown(e: CallError, name: &str, version: u32, id: u64) -> CallError {
    match e {
        CallError::Remote {
            code: ipc_rpc::ErrorCode::UnknownMethod,
            ..
        } => CallError::Remote {
            code: ipc_rpc::ErrorCode::UnknownMethod,
            message: format!(
                "this server has no method {name} (version {version}, id {id:#018x}): no \
                 provider offers it now (see `cradle methods`)"
            ),
        },
        e => e,
    }
}

/// The body of a bytes method's answer, as is.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async provider's
pub(crate) fn raw_body(b: &[u8]) -> Result<Vec<u8>, CallError> {
    Ok(b.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enveloped_value_goes_straight_into_the_ring() {
        let (mut tx, rx) = ipc_core::ring::heap_channel(1 << 16).unwrap();
        let mut inbox = ipc_rpc::Inbox::new(rx);
        let h = BlobHandle {
            epoch: 1,
            id: 2,
            segment: 3,
            offset: 4096,
            len: 5,
        };
        let meta = FrameMeta {
            request_id: 7,
            tag: 9,
            kind: wire::REQUEST,
            flags: wire::ENVELOPE,
        };
        // Small, then larger than the first window.
        for n in [3usize, 3 * SMALL_WINDOW] {
            let value = vec![0xabu8; n];
            try_send_enveloped(&mut tx, meta, 11, 22, &[h], &value).unwrap();
            let msg = inbox.try_recv().unwrap().unwrap();
            assert_eq!(msg.meta, meta);
            let (head, body) = wire::split_envelope(msg.bytes).unwrap();
            assert_eq!((head.deadline_ns, head.schema_hash), (11, 22));
            assert_eq!(head.blobs().collect::<Vec<_>>(), [h]);
            assert_eq!(Vec::<u8>::decode(body).unwrap(), value);
        }
        let huge = vec![0u8; 1 << 16];
        assert!(matches!(
            try_send_enveloped(&mut tx, meta, 0, 0, &[], &huge),
            Err(SendError::TooLarge { .. })
        ));
    }

    #[test]
    fn only_the_servers_own_methods_go_without_an_envelope() {
        assert!(!needs_envelope("cradle.ping"));
        assert!(!needs_envelope("cradle.blob.map_segment"));
        assert!(needs_envelope("demo.checksum"));
        assert!(needs_envelope("cradlex.ping"));
    }

    #[test]
    fn an_enveloped_payload_splits_back() {
        let h = BlobHandle {
            epoch: 1,
            id: 2,
            segment: 3,
            offset: 4096,
            len: 5,
        };
        let p = enveloped(7, 9, &[h], b"body").unwrap();
        let meta = FrameMeta {
            request_id: 1,
            tag: 5,
            kind: wire::RESPONSE,
            flags: wire::ENVELOPE,
        };
        let (body, blobs) = split_answer(5, meta, &p).unwrap();
        assert_eq!(body, b"body");
        assert_eq!(blobs, [h]);
        let err = split_answer(5, meta, &p[..10]).unwrap_err();
        assert!(matches!(err, CallError::Malformed(_)), "{err:?}");
    }
}
