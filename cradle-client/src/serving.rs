//! The provider's side of provided methods, shared by the sync
//! [`Provider`](crate::Provider) and the async one: what an `INVOKE` frame
//! holds, how an answer is framed, the error a handler returns, and the
//! queue through which the sync client's response-ring readers hand
//! invocations to provider threads (docs/architecture.md "Provided
//! methods").
//!
//! A provider is an ordinary session: the server writes `INVOKE` and
//! `CANCEL` frames into its response ring among the responses to its own
//! calls, and whoever reads the ring files them here by kind.

use crate::blob::{Blob, BlobRef};
use crate::error::BlobError;
use crate::session::{Owner, lock};
use ipc_core::ring::FrameMeta;
use ipc_core::sync::{AtomicBool, AtomicUsize, Ordering};
use ipc_rpc::blob::BlobHandle;
use ipc_rpc::idmap::IdSet;
use ipc_rpc::provide::{BYTES_SCHEMA, Offer};
use ipc_rpc::{CallError, ErrorCode, Method, RemoteError, wire};
use rkyv::util::AlignedVec;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Whether a frame of the response ring is for the provider (an `INVOKE`
/// or a `CANCEL`) rather than an answer to one of our calls: invocation ids
/// are the server's and may equal one of our request ids.
#[inline]
pub(crate) fn for_provider(meta: &FrameMeta) -> bool {
    meta.kind == wire::INVOKE || meta.kind == wire::CANCEL
}

/// The error a handler answers with: the caller gets it as
/// [`CallError::Remote`] with this code and message.
///
/// `?` turns a failed call or blob operation of the handler into one
/// (keeping the server's code, e.g. `BadHandle`).
///
/// ```
/// use cradle_client::{ErrorCode, HandlerError};
///
/// let e = HandlerError::new(ErrorCode::Refused, "images above 64 MiB are refused");
/// assert_eq!(e.code(), ErrorCode::Refused);
/// assert_eq!(HandlerError::from("no such image").code(), ErrorCode::Handler);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    code: ErrorCode,
    message: String,
}

impl HandlerError {
    /// An error with its code and message.
    ///
    /// ```
    /// use cradle_client::{ErrorCode, HandlerError};
    /// let e = HandlerError::new(ErrorCode::Busy, "try later");
    /// assert_eq!(e.message(), "try later");
    /// ```
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The code the caller gets.
    ///
    /// ```
    /// # use cradle_client::{ErrorCode, HandlerError};
    /// assert_eq!(HandlerError::from("x".to_string()).code(), ErrorCode::Handler);
    /// ```
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message the caller gets.
    ///
    /// ```
    /// # use cradle_client::HandlerError;
    /// assert_eq!(HandlerError::from("bad size").message(), "bad size");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn remote(&self) -> RemoteError {
        RemoteError {
            code: self.code.to_u32(),
            message: self.message.clone(),
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for HandlerError {}

impl From<&str> for HandlerError {
    fn from(m: &str) -> Self {
        Self::new(ErrorCode::Handler, m)
    }
}

impl From<String> for HandlerError {
    fn from(m: String) -> Self {
        Self::new(ErrorCode::Handler, m)
    }
}

impl From<CallError> for HandlerError {
    fn from(e: CallError) -> Self {
        Self::new(e.code().unwrap_or(ErrorCode::Handler), e.to_string())
    }
}

impl From<BlobError> for HandlerError {
    fn from(e: BlobError) -> Self {
        Self::new(e.code().unwrap_or(ErrorCode::Handler), e.to_string())
    }
}

impl From<std::io::Error> for HandlerError {
    fn from(e: std::io::Error) -> Self {
        Self::new(ErrorCode::Handler, e.to_string())
    }
}

/// One `INVOKE` frame, read: who to answer, the envelope, the body.
pub(crate) struct Invocation {
    /// The invocation id (the server's), echoed in the answer.
    pub(crate) id: u64,
    /// The method id.
    pub(crate) method: u64,
    /// `CLOCK_MONOTONIC` ns after which nobody waits (0: none).
    pub(crate) deadline_ns: u64,
    /// The blobs passed with the call, leased to this session.
    pub(crate) blobs: Vec<BlobHandle>,
    payload: AlignedVec<16>,
    body_at: usize,
}

impl Invocation {
    /// Reads an `INVOKE` frame (its private copy). `Err` (the invocation
    /// and method ids) if its envelope is malformed.
    pub(crate) fn read(meta: FrameMeta, payload: AlignedVec<16>) -> Result<Self, (u64, u64)> {
        if meta.flags & wire::ENVELOPE == 0 {
            // The server always sends one; take the whole payload as the body.
            return Ok(Self {
                id: meta.request_id,
                method: meta.tag,
                deadline_ns: 0,
                blobs: Vec::new(),
                payload,
                body_at: 0,
            });
        }
        let (deadline_ns, blobs, body_at) = match wire::split_envelope(&payload) {
            Ok((head, body)) => (
                head.deadline_ns,
                head.blobs().collect(),
                payload.len() - body.len(),
            ),
            Err(_) => return Err((meta.request_id, meta.tag)),
        };
        Ok(Self {
            id: meta.request_id,
            method: meta.tag,
            deadline_ns,
            blobs,
            payload,
            body_at,
        })
    }

    /// The frame's buffer, for [`Invocations::recycle`].
    pub(crate) fn into_payload(self) -> AlignedVec<16> {
        self.payload
    }

    /// The caller's request body (16-aligned).
    pub(crate) fn body(&self) -> &[u8] {
        &self.payload[self.body_at..]
    }

    /// Whether nobody waits for the answer any more.
    pub(crate) fn expired(&self) -> bool {
        self.deadline_ns != 0 && wire::monotonic_ns() >= self.deadline_ns
    }
}

/// The offer of method `M`.
pub(crate) fn offer_of<M: Method>(concurrency: u32, idempotent: bool) -> Offer {
    Offer {
        name: M::NAME.to_owned(),
        version: M::VERSION,
        schema_hash: M::SCHEMA_HASH,
        concurrency,
        idempotent,
        memoized: false,
    }
}

/// The offer of a bytes method.
pub(crate) fn bytes_offer(name: &str, version: u32, concurrency: u32, idempotent: bool) -> Offer {
    Offer {
        name: name.to_owned(),
        version,
        schema_hash: BYTES_SCHEMA,
        concurrency,
        idempotent,
        memoized: false,
    }
}

/// A handler's answer body.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async provider's
pub(crate) enum Out {
    /// An rkyv archive.
    Aligned(AlignedVec<16>),
    /// Bytes of a bytes method.
    Plain(Vec<u8>),
}

#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async provider's
impl Out {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Self::Aligned(v) => v,
            Self::Plain(v) => v,
        }
    }
}

/// A result blob a handler attached: kept alive until its answer is sent.
pub(crate) enum Held {
    Blob(Blob),
    Ref(BlobRef),
}

impl Held {
    pub(crate) fn handle(&self) -> &BlobHandle {
        match self {
            Self::Blob(b) => b.handle(),
            Self::Ref(r) => r.handle(),
        }
    }
}

/// The answer to an invocation: its frame's flags and payload.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async provider's
pub(crate) enum Answer {
    /// `REPLY`: the response body and the result blobs it lists.
    Reply { flags: u16, payload: AlignedVec<16> },
    /// `REPLY_ERROR`: an archived `RemoteError`.
    Error(AlignedVec<16>),
}

impl Answer {
    /// A `REPLY` with `body`, listing `results`.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async provider's
    pub(crate) fn reply(results: &[BlobHandle], body: &[u8]) -> Self {
        if results.is_empty() {
            let mut payload = AlignedVec::<16>::with_capacity(body.len());
            payload.extend_from_slice(body);
            return Self::Reply {
                flags: wire::NO_FLAGS,
                payload,
            };
        }
        match crate::calls::enveloped(0, 0, results, body) {
            Ok(payload) => Self::Reply {
                flags: wire::ENVELOPE,
                payload,
            },
            Err(e) => Self::error(&HandlerError::new(ErrorCode::Handler, e.to_string())),
        }
    }

    /// A `REPLY_ERROR` with `e`.
    pub(crate) fn error(e: &HandlerError) -> Self {
        let mut out = AlignedVec::<16>::new();
        // A RemoteError of a code and a string always encodes.
        if let Ok(b) = crate::calls::encode_body(&e.remote(), usize::MAX / 2) {
            out = b;
        }
        Self::Error(out)
    }

    /// The answer to a handler's outcome `r`: its body, listing the result
    /// blobs it attached (`held`); its error; or, when it panicked (`Err`),
    /// a `HandlerPanicked` error saying `panicked()`.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async provider's
    pub(crate) fn of_outcome<P>(
        r: Result<Result<Out, HandlerError>, P>,
        held: &[Held],
        panicked: impl FnOnce() -> String,
    ) -> Self {
        match r {
            Ok(Ok(out)) => {
                let hs: Vec<BlobHandle> = held.iter().map(|h| *h.handle()).collect();
                Self::reply(&hs, out.bytes())
            }
            Ok(Err(e)) => Self::error(&e),
            Err(_) => Self::error(&HandlerError::new(ErrorCode::HandlerPanicked, panicked())),
        }
    }

    /// The refusal of an invocation whose envelope is malformed.
    pub(crate) fn malformed() -> Self {
        Self::error(&HandlerError::new(
            ErrorCode::Malformed,
            "the invocation's envelope is malformed",
        ))
    }

    /// The error sent instead of a response of `len` bytes that the ring
    /// (at most `max`) refused.
    pub(crate) fn too_large(len: usize, max: usize) -> Self {
        Self::error(&HandlerError::new(
            ErrorCode::ResponseTooLarge,
            format!("the response of {len} bytes exceeds {max}: pass it as a blob"),
        ))
    }

    /// The frame's kind, flags and payload.
    pub(crate) fn frame(&self) -> (u16, u16, &[u8]) {
        match self {
            Self::Reply { flags, payload } => (wire::REPLY, *flags, payload),
            Self::Error(p) => (wire::REPLY_ERROR, wire::NO_FLAGS, p),
        }
    }
}

/// Once an answer is in the ring: the leases on its result blobs (`held`)
/// go now, with those on argument blobs queued meanwhile, not with a later
/// batch.
pub(crate) fn release_answered(owner: &dyn Owner, held: Vec<Held>) {
    drop(held);
    let session = owner.session();
    if session.has_queued_releases() {
        owner.send_release(session.take_releases());
    }
}

/// The error of a provider run without a method.
pub(crate) fn no_method() -> CallError {
    CallError::Remote {
        code: ErrorCode::Refused,
        message: "a provider needs a method: add one with serve or serve_bytes".into(),
    }
}

/// The refusal of an invocation whose method this provider does not serve
/// (any more).
pub(crate) fn not_served(method: u64) -> HandlerError {
    HandlerError::new(
        ErrorCode::UnknownMethod,
        format!("this provider does not serve method {method:#018x}"),
    )
}

/// Most cancelled invocation ids remembered (a hostile or confused server
/// cannot make us hold more).
const MAX_CANCELLED: usize = 4096;

/// Most spare invocation buffers kept for reuse.
const MAX_SPARE: usize = 64;

/// Largest invocation buffer kept for reuse: a larger one (a rare big
/// request) is freed rather than held.
const MAX_SPARE_BYTES: usize = 64 << 10;

#[derive(Default)]
struct Queue {
    frames: VecDeque<(FrameMeta, AlignedVec<16>)>,
    /// Invocations cancelled while they ran (advisory). Hashed with the
    /// id hasher: SipHash here was ~290 instructions of a provided call.
    cancelled: IdSet,
    /// Buffers of answered invocations, reused for the next ones: after
    /// warm-up, filing an invocation allocates nothing.
    spare: Vec<AlignedVec<16>>,
}

/// The sync client's invocation queue: response-ring readers push `INVOKE`
/// and `CANCEL` frames, provider threads pop them.
#[derive(Default)]
pub(crate) struct Invocations {
    q: Mutex<Queue>,
    cv: Condvar,
    /// A provider runs: frames are kept (else dropped) and ring readers
    /// let provider threads in.
    active: AtomicBool,
    /// Threads blocked on the response-ring lock while a provider thread
    /// may sleep holding it.
    contenders: AtomicUsize,
}

impl Invocations {
    /// Whether a provider runs. Relaxed: a hint (pairs with nothing); a
    /// ring reader that misses the change only skips the nudge once.
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// A provider starts (`true`) or stops.
    pub(crate) fn set_active(&self, on: bool) {
        // Relaxed: see `active`.
        self.active.store(on, Ordering::Relaxed);
        if !on {
            let mut q = lock(&self.q);
            q.frames.clear();
            q.cancelled.clear();
        }
        self.cv.notify_all();
    }

    /// Files an `INVOKE` or `CANCEL` frame read from the ring.
    pub(crate) fn push(&self, meta: FrameMeta, bytes: &[u8]) {
        if !self.active() {
            return;
        }
        let mut q = lock(&self.q);
        if meta.kind == wire::CANCEL {
            let before = q.frames.len();
            q.frames
                .retain(|(m, _)| !(m.kind == wire::INVOKE && m.request_id == meta.request_id));
            if q.frames.len() == before && q.cancelled.len() < MAX_CANCELLED {
                q.cancelled.insert(meta.request_id);
            }
            return;
        }
        let mut copy = q.spare.pop().unwrap_or_default();
        copy.clear();
        copy.extend_from_slice(bytes);
        q.frames.push_back((meta, copy));
        drop(q);
        self.cv.notify_one();
    }

    /// The next queued invocation.
    pub(crate) fn pop(&self) -> Option<(FrameMeta, AlignedVec<16>)> {
        lock(&self.q).frames.pop_front()
    }

    /// Gives back the buffer of an answered invocation, for the next one.
    pub(crate) fn recycle(&self, buf: AlignedVec<16>) {
        if buf.capacity() > MAX_SPARE_BYTES {
            return;
        }
        let mut q = lock(&self.q);
        if q.spare.len() < MAX_SPARE {
            q.spare.push(buf);
        }
    }

    /// Waits up to `d` for an invocation to be queued.
    pub(crate) fn wait(&self, d: Duration) {
        let q = lock(&self.q);
        if q.frames.is_empty() {
            let _ = self.cv.wait_timeout(q, d);
        }
    }

    /// Wakes one provider thread waiting in [`wait`](Self::wait) (the ring
    /// has no reader now).
    pub(crate) fn wake_one(&self) {
        self.cv.notify_one();
    }

    /// Wakes every provider thread waiting in [`wait`](Self::wait).
    pub(crate) fn wake_all(&self) {
        self.cv.notify_all();
    }

    /// Whether invocation `id` was cancelled; forgets it when `forget`.
    pub(crate) fn cancelled(&self, id: u64, forget: bool) -> bool {
        let mut q = lock(&self.q);
        if q.cancelled.is_empty() {
            return false;
        }
        if forget {
            q.cancelled.remove(&id)
        } else {
            q.cancelled.contains(&id)
        }
    }

    /// Counts a thread blocked on the ring lock while it lives.
    pub(crate) fn contend(&self) -> Contending<'_> {
        // Relaxed: the count is read by the provider's poll, which a
        // futex wake (after this increment, by the same thread) re-runs.
        self.contenders.fetch_add(1, Ordering::Relaxed);
        Contending(&self.contenders)
    }

    /// Whether a thread waits for the ring lock. Relaxed: see `contend`.
    pub(crate) fn contended(&self) -> bool {
        self.contenders.load(Ordering::Relaxed) > 0
    }
}

/// See [`Invocations::contend`].
pub(crate) struct Contending<'a>(&'a AtomicUsize);

impl Drop for Contending<'_> {
    fn drop(&mut self) {
        // Relaxed: see `Invocations::contend`.
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: u16, id: u64) -> FrameMeta {
        FrameMeta {
            request_id: id,
            tag: 9,
            kind,
            flags: wire::ENVELOPE,
        }
    }

    #[test]
    fn a_cancel_drops_a_queued_invocation_or_marks_a_running_one() {
        let inv = Invocations::default();
        inv.push(meta(wire::INVOKE, 1), &[0; 32]);
        assert!(inv.pop().is_none(), "no provider: frames are dropped");
        inv.set_active(true);
        inv.push(meta(wire::INVOKE, 1), &[0; 32]);
        inv.push(meta(wire::INVOKE, 2), &[0; 32]);
        inv.push(meta(wire::CANCEL, 1), &[]);
        inv.push(meta(wire::CANCEL, 7), &[]);
        assert_eq!(inv.pop().map(|(m, _)| m.request_id), Some(2));
        assert!(inv.pop().is_none());
        assert!(inv.cancelled(7, true));
        assert!(!inv.cancelled(7, false));
    }

    #[test]
    fn invocations_are_read_with_their_envelope() {
        let h = BlobHandle {
            epoch: 1,
            id: 5,
            segment: 2,
            offset: 4096,
            len: 3,
        };
        let p = crate::calls::enveloped(0, 1, &[h], b"abc").unwrap();
        let inv = Invocation::read(meta(wire::INVOKE, 4), p).ok().unwrap();
        assert_eq!((inv.id, inv.method, inv.blobs.as_slice()), (4, 9, &[h][..]));
        assert_eq!(inv.body(), b"abc");
        assert!(!inv.expired());
        let mut bad = AlignedVec::<16>::new();
        bad.extend_from_slice(&[0; 8]);
        assert!(Invocation::read(meta(wire::INVOKE, 4), bad).is_err());
    }

    #[test]
    fn answers_list_result_blobs_only_when_there_are_some() {
        let a = Answer::reply(&[], b"ok");
        let (kind, flags, p) = a.frame();
        assert_eq!((kind, flags, p), (wire::REPLY, wire::NO_FLAGS, &b"ok"[..]));
        let h = BlobHandle {
            epoch: 1,
            id: 5,
            segment: 2,
            offset: 4096,
            len: 3,
        };
        let a = Answer::reply(&[h], b"ok");
        let (_, flags, p) = a.frame();
        assert_eq!(flags, wire::ENVELOPE);
        assert_eq!(wire::split_envelope(p).unwrap().1, b"ok");
        let e = Answer::error(&HandlerError::from("no"));
        let (kind, _, p) = e.frame();
        assert_eq!(kind, wire::REPLY_ERROR);
        assert_eq!(
            <RemoteError as ipc_rpc::Wire>::decode(p).unwrap().message,
            "no"
        );
    }
}
