//! Frame kinds and flags of the RPC layer (`FrameMeta::kind`, `flags`), and
//! the call envelope.
//!
//! | kind | direction | ring | `tag` | `request_id` | payload |
//! |---|---|---|---|---|---|
//! | [`REQUEST`] | client → server | request | method id | caller's id | [envelope +] archived `Request` |
//! | [`RESPONSE`] | server → client | response | method id | the request's id | [envelope +] archived `Response` |
//! | [`ERROR`] | server → client | response | method id (0 if unknown) | the request's id | archived [`RemoteError`](crate::RemoteError) |
//! | [`INVOKE`] | server → provider | response | method id | invocation id (server's) | envelope + the caller's request body |
//! | [`REPLY`] | provider → server | request | method id | the invocation's id | [envelope +] response body |
//! | [`REPLY_ERROR`] | provider → server | request | method id | the invocation's id | archived [`RemoteError`](crate::RemoteError) |
//! | [`CANCEL`] | server → provider | response | method id | the invocation's id | empty |
//!
//! Request ids are chosen by the client, 64-bit, never reused within a
//! session; the server echoes them. Responses may come in any order.
//! Invocation ids are chosen by the server, never reused within a provider's
//! session; the provider echoes them in its reply.
//!
//! # The envelope
//!
//! A frame whose flags hold [`ENVELOPE`] starts its payload with an
//! envelope; the message body follows at [`Envelope::body_offset`] (a
//! multiple of 16, so the body keeps rkyv's alignment):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | `deadline_ns`: `CLOCK_MONOTONIC` nanoseconds after which nobody waits for the answer (0: none) |
//! | 8 | 8 | `schema_hash`: the sender's [`Method::SCHEMA_HASH`](crate::Method::SCHEMA_HASH) (0: not checked) |
//! | 16 | 4 | `blob_count`: how many blob handles follow (at most [`MAX_ENVELOPE_BLOBS`]) |
//! | 20 | 4 | reserved, 0 |
//! | 24 | 40 × n | the blob handles ([`BlobHandle`], five little-endian u64) |
//! | … | | zeros up to `body_offset` |
//!
//! The blobs listed travel with the call as descriptors travel with
//! `SCM_RIGHTS`: the server checks each handle and leases it to the
//! receiving session (the provider for a request, the caller for a reply),
//! which releases it like any other lease.

use crate::blob::BlobHandle;
use core::fmt;

/// A request frame.
pub const REQUEST: u16 = 1;
/// A successful response frame.
pub const RESPONSE: u16 = 2;
/// An error response frame.
pub const ERROR: u16 = 3;
/// A call the server hands to a provider (in the provider's response ring).
pub const INVOKE: u16 = 4;
/// A provider's answer to an [`INVOKE`] (in its request ring).
pub const REPLY: u16 = 5;
/// A provider's error answer to an [`INVOKE`].
pub const REPLY_ERROR: u16 = 6;
/// The server tells a provider that nobody waits for an invocation any more
/// (its caller gave up or left); a reply to it is discarded. Advisory.
pub const CANCEL: u16 = 7;

/// No flags.
pub const NO_FLAGS: u16 = 0;
/// The payload starts with an [`Envelope`].
pub const ENVELOPE: u16 = 1;

/// Request flag: call a memoized method without its memo (the handler
/// runs; no entry is read or written). Ignored by methods that are not
/// memoized.
pub const MEMO_BYPASS: u16 = 0x0100;

/// Request flag: call a memoized method as if its memo had no entry for
/// this request (the handler runs), and replace the entry with the new
/// result. Ignored by methods that are not memoized. With
/// [`MEMO_BYPASS`], bypass wins.
pub const MEMO_REFRESH: u16 = 0x0200;

/// Every request flag this protocol defines; a server answers a request
/// frame with any other bit set `Malformed` and runs nothing.
///
/// ```
/// use ipc_rpc::wire::{ENVELOPE, MEMO_BYPASS, MEMO_REFRESH, REQUEST_FLAGS};
/// assert_eq!(REQUEST_FLAGS, ENVELOPE | MEMO_BYPASS | MEMO_REFRESH);
/// assert_eq!(0x0002 & !REQUEST_FLAGS, 0x0002, "an undefined bit");
/// ```
pub const REQUEST_FLAGS: u16 = ENVELOPE | MEMO_BYPASS | MEMO_REFRESH;

/// Every flag this protocol defines on any frame; a frame with another bit
/// set is refused (`Malformed`).
pub const KNOWN_FLAGS: u16 = REQUEST_FLAGS;

/// Most blob handles one envelope may list.
pub const MAX_ENVELOPE_BLOBS: usize = 64;
/// Bytes of the envelope's fixed header.
pub const ENVELOPE_HEADER: usize = 24;
/// Bytes of one listed blob handle.
pub const ENVELOPE_BLOB: usize = 40;

/// A call's envelope, read from a payload ([`Envelope::split`]) or to be
/// written in front of one ([`Envelope::write`]).
///
/// ```
/// use ipc_rpc::blob::BlobHandle;
/// use ipc_rpc::wire::Envelope;
///
/// let h = BlobHandle { epoch: 9, id: 1, segment: 2, offset: 4096, len: 10 };
/// let env = Envelope { deadline_ns: 1_000, schema_hash: 7, blobs: vec![h] };
/// let mut payload = vec![0u8; env.body_offset()];
/// env.write(&mut payload)?;
/// payload.extend_from_slice(b"body");
///
/// let (read, body) = Envelope::split(&payload)?;
/// assert_eq!(read, env);
/// assert_eq!(body, b"body");
/// # Ok::<(), ipc_rpc::wire::EnvelopeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    /// `CLOCK_MONOTONIC` nanoseconds ([`monotonic_ns`]) after which nobody
    /// waits for the answer; 0: none.
    pub deadline_ns: u64,
    /// The sender's schema hash; 0: not checked.
    pub schema_hash: u64,
    /// Blobs that travel with the call.
    pub blobs: Vec<BlobHandle>,
}

/// Why bytes are not a valid envelope.
///
/// ```
/// use ipc_rpc::wire::Envelope;
///
/// let err = Envelope::split(&[0u8; 5]).unwrap_err();
/// assert!(err.to_string().contains("envelope"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeError(String);

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EnvelopeError {}

/// Where the body starts after an envelope listing `blobs` handles.
///
/// ```
/// assert_eq!(ipc_rpc::wire::body_offset(0), 32);
/// assert_eq!(ipc_rpc::wire::body_offset(1), 64);
/// ```
pub const fn body_offset(blobs: usize) -> usize {
    (ENVELOPE_HEADER + ENVELOPE_BLOB * blobs).div_ceil(16) * 16
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Envelope {
    /// Where the body starts after this envelope.
    ///
    /// ```
    /// assert_eq!(ipc_rpc::wire::Envelope::default().body_offset(), 32);
    /// ```
    pub fn body_offset(&self) -> usize {
        body_offset(self.blobs.len())
    }

    /// Writes the envelope (and the zero padding up to the body) at the
    /// start of `out`, which holds at least [`body_offset`](Self::body_offset)
    /// bytes; returns that offset.
    ///
    /// ```
    /// use ipc_rpc::wire::Envelope;
    ///
    /// let mut out = [0xffu8; 32];
    /// let n = Envelope { deadline_ns: 5, ..Default::default() }.write(&mut out)?;
    /// assert_eq!(n, 32);
    /// assert_eq!(out[0], 5);
    /// assert!(out[24..].iter().all(|&b| b == 0));
    /// # Ok::<(), ipc_rpc::wire::EnvelopeError>(())
    /// ```
    pub fn write(&self, out: &mut [u8]) -> Result<usize, EnvelopeError> {
        write_envelope(out, self.deadline_ns, self.schema_hash, &self.blobs)
    }

    /// Reads the envelope at the start of `payload`; returns it and the body.
    /// Every field is checked: a hostile peer wrote these bytes.
    ///
    /// ```
    /// use ipc_rpc::wire::Envelope;
    ///
    /// let mut p = [0u8; 32];
    /// p[16] = 65; // more blobs than allowed
    /// assert!(Envelope::split(&p).is_err());
    /// ```
    pub fn split(payload: &[u8]) -> Result<(Self, &[u8]), EnvelopeError> {
        let (head, body) = split_envelope(payload)?;
        let blobs = head.blobs().collect();
        Ok((
            Self {
                deadline_ns: head.deadline_ns,
                schema_hash: head.schema_hash,
                blobs,
            },
            body,
        ))
    }
}

/// Writes an envelope without building an [`Envelope`] (no allocation);
/// returns the body offset. See [`Envelope::write`].
///
/// ```
/// let mut out = [0u8; 32];
/// assert_eq!(ipc_rpc::wire::write_envelope(&mut out, 0, 0, &[])?, 32);
/// # Ok::<(), ipc_rpc::wire::EnvelopeError>(())
/// ```
pub fn write_envelope(
    out: &mut [u8],
    deadline_ns: u64,
    schema_hash: u64,
    blobs: &[BlobHandle],
) -> Result<usize, EnvelopeError> {
    if blobs.len() > MAX_ENVELOPE_BLOBS {
        return Err(EnvelopeError(format!(
            "an envelope lists at most {MAX_ENVELOPE_BLOBS} blobs, not {}",
            blobs.len()
        )));
    }
    let end = body_offset(blobs.len());
    let Some(out) = out.get_mut(..end) else {
        return Err(EnvelopeError(format!(
            "an envelope of {} blobs needs {end} bytes, the buffer has {}",
            blobs.len(),
            out.len()
        )));
    };
    out.fill(0);
    out[0..8].copy_from_slice(&deadline_ns.to_le_bytes());
    out[8..16].copy_from_slice(&schema_hash.to_le_bytes());
    out[16..20].copy_from_slice(&(blobs.len() as u32).to_le_bytes());
    for (i, h) in blobs.iter().enumerate() {
        let at = ENVELOPE_HEADER + i * ENVELOPE_BLOB;
        for (j, w) in [h.epoch, h.id, h.segment, h.offset, h.len]
            .iter()
            .enumerate()
        {
            out[at + 8 * j..at + 8 * j + 8].copy_from_slice(&w.to_le_bytes());
        }
    }
    Ok(end)
}

/// An envelope read in place (no allocation): its fields and its blob list.
///
/// ```
/// use ipc_rpc::wire::{split_envelope, write_envelope};
///
/// let mut p = [0u8; 40];
/// write_envelope(&mut p, 3, 4, &[])?;
/// let (head, body) = split_envelope(&p)?;
/// assert_eq!((head.deadline_ns, head.schema_hash, head.blob_count()), (3, 4, 0));
/// assert_eq!(body.len(), 8);
/// # Ok::<(), ipc_rpc::wire::EnvelopeError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeRef<'a> {
    /// See [`Envelope::deadline_ns`].
    pub deadline_ns: u64,
    /// See [`Envelope::schema_hash`].
    pub schema_hash: u64,
    list: &'a [u8],
}

impl EnvelopeRef<'_> {
    /// How many blobs are listed.
    ///
    /// ```
    /// let mut p = [0u8; 32];
    /// ipc_rpc::wire::write_envelope(&mut p, 0, 0, &[])?;
    /// assert_eq!(ipc_rpc::wire::split_envelope(&p)?.0.blob_count(), 0);
    /// # Ok::<(), ipc_rpc::wire::EnvelopeError>(())
    /// ```
    pub fn blob_count(&self) -> usize {
        self.list.len() / ENVELOPE_BLOB
    }

    /// The listed handles, in order.
    ///
    /// ```
    /// use ipc_rpc::blob::BlobHandle;
    ///
    /// let h = BlobHandle { epoch: 1, id: 2, segment: 3, offset: 4, len: 5 };
    /// let mut p = [0u8; 64];
    /// ipc_rpc::wire::write_envelope(&mut p, 0, 0, &[h])?;
    /// let (head, _) = ipc_rpc::wire::split_envelope(&p)?;
    /// assert_eq!(head.blobs().collect::<Vec<_>>(), [h]);
    /// # Ok::<(), ipc_rpc::wire::EnvelopeError>(())
    /// ```
    pub fn blobs(&self) -> impl ExactSizeIterator<Item = BlobHandle> + '_ {
        self.list.chunks_exact(ENVELOPE_BLOB).map(|c| BlobHandle {
            epoch: u64_at(c, 0),
            id: u64_at(c, 8),
            segment: u64_at(c, 16),
            offset: u64_at(c, 24),
            len: u64_at(c, 32),
        })
    }
}

/// Reads the envelope at the start of `payload` in place; returns it and
/// the body. See [`Envelope::split`].
///
/// ```
/// assert!(ipc_rpc::wire::split_envelope(&[]).is_err());
/// ```
pub fn split_envelope(payload: &[u8]) -> Result<(EnvelopeRef<'_>, &[u8]), EnvelopeError> {
    if payload.len() < ENVELOPE_HEADER {
        return Err(EnvelopeError(format!(
            "the envelope needs {ENVELOPE_HEADER} bytes, the payload has {}",
            payload.len()
        )));
    }
    let count = u32::from_le_bytes([payload[16], payload[17], payload[18], payload[19]]) as usize;
    if count > MAX_ENVELOPE_BLOBS {
        return Err(EnvelopeError(format!(
            "the envelope lists {count} blobs (at most {MAX_ENVELOPE_BLOBS})"
        )));
    }
    if payload[20..24] != [0; 4] {
        return Err(EnvelopeError(
            "the envelope's reserved word is not 0".to_owned(),
        ));
    }
    let end = body_offset(count);
    if payload.len() < end {
        return Err(EnvelopeError(format!(
            "an envelope of {count} blobs needs {end} bytes, the payload has {}",
            payload.len()
        )));
    }
    let head = EnvelopeRef {
        deadline_ns: u64_at(payload, 0),
        schema_hash: u64_at(payload, 8),
        list: &payload[ENVELOPE_HEADER..ENVELOPE_HEADER + count * ENVELOPE_BLOB],
    };
    Ok((head, &payload[end..]))
}

/// Nanoseconds of `CLOCK_MONOTONIC`: the clock of envelope deadlines, one
/// clock for every process of the machine.
///
/// ```
/// let a = ipc_rpc::wire::monotonic_ns();
/// assert!(ipc_rpc::wire::monotonic_ns() >= a);
/// ```
pub fn monotonic_ns() -> u64 {
    // Through libc (its vDSO call, as fast as rustix's), not rustix: rustix's
    // own vDSO lookup faults under valgrind, and the processes of a provided
    // call are profiled with callgrind (docs/benchmarks.md §6).
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable `timespec` for the duration of the
    // call; CLOCK_MONOTONIC always exists on Linux, so the call cannot fail
    // (and `t` stays zero if it somehow did).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// The deadline `timeout` from now, as an envelope carries it (never 0).
///
/// ```
/// use std::time::Duration;
///
/// let d = ipc_rpc::wire::deadline_after(Duration::from_secs(1));
/// assert!(d > ipc_rpc::wire::monotonic_ns());
/// ```
pub fn deadline_after(timeout: std::time::Duration) -> u64 {
    let t = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    monotonic_ns().saturating_add(t).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_bodies_stay_aligned() {
        for n in 0..=5 {
            let blobs: Vec<BlobHandle> = (0..n)
                .map(|i| BlobHandle {
                    epoch: 1,
                    id: i,
                    segment: 2,
                    offset: 4096 * i,
                    len: 7,
                })
                .collect();
            let env = Envelope {
                deadline_ns: 99,
                schema_hash: 42,
                blobs,
            };
            let off = env.body_offset();
            assert_eq!(off % 16, 0);
            let mut p = vec![0xaa; off + 3];
            assert_eq!(env.write(&mut p).unwrap(), off);
            let (read, body) = Envelope::split(&p).unwrap();
            assert_eq!(read, env);
            assert_eq!(body, [0xaa; 3]);
        }
    }

    #[test]
    fn hostile_envelopes_are_refused() {
        let mut p = vec![0u8; 64];
        p[16] = 2; // two blobs need 24 + 80 bytes, rounded to 112
        assert!(split_envelope(&p).is_err());
        p[16] = 0;
        p[21] = 1; // reserved
        assert!(split_envelope(&p).is_err());
        let too_many = vec![<BlobHandle as bytemuck::Zeroable>::zeroed(); MAX_ENVELOPE_BLOBS + 1];
        assert!(write_envelope(&mut [0u8; 4096], 0, 0, &too_many).is_err());
        assert!(write_envelope(&mut [0u8; 16], 0, 0, &[]).is_err());
    }
}
