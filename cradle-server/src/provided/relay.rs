//! A worker's part in provided calls: routing a caller's REQUEST, taking a
//! provider's REPLY, and carrying out the table's [`Action`]s on the rings
//! of its own sessions (INVOKE and CANCEL frames to providers, RESPONSE and
//! ERROR frames to callers). Blob handles pass by lease: the provider gets
//! one on each argument blob when its INVOKE is written, the caller one on
//! each result blob when the REPLY is read (before anything later in the
//! provider's ring, such as its release of the same blob).

use super::{Action, Buf, Caller, Outcome, Providers, Table};
use crate::blobs::BlobStore;
use crate::reply::Replier;
use ipc_core::ring::FrameMeta;
use ipc_rpc::wire::{self, EnvelopeRef};
use ipc_rpc::{ErrorCode, RemoteError, SendError, Wire};

/// Buffers a worker keeps for reuse.
const KEEP: usize = 256;

/// Frames a provider's backlog may hold before it is given no more calls
/// (a provider that does not read its response ring).
const PROVIDER_BACKLOG_FRAMES: usize = 1024;

/// Whether a provider's backlog is past its caps (frames, or 8 largest
/// frames' worth of bytes): it is not reading its response ring.
fn stalled(out: &Replier<'_>, max_payload: usize) -> bool {
    !out.backlog.is_empty()
        && (out.backlog.len() >= PROVIDER_BACKLOG_FRAMES
            || out.backlog.iter().map(|(_, b)| b.len()).sum::<usize>() >= 8 * max_payload)
}

/// A worker's relay state: the actions its last steps produced, and
/// payload buffers for reuse (no allocation per call after warm-up).
#[derive(Debug, Default)]
pub(crate) struct Relay {
    /// Actions to carry out (own sessions) or send (other workers').
    pub(crate) actions: Vec<Action>,
    /// An empty vector with capacity, swapped with `actions` while a batch
    /// is carried out (actions it makes go there, and nothing allocates).
    pub(crate) spare: Vec<Action>,
    free: Vec<Buf>,
}

impl Relay {
    /// A buffer of at least `cap` bytes, empty; from this worker's spares,
    /// else the table's.
    fn take(&mut self, t: &mut Table, cap: usize) -> Buf {
        match self.free.pop() {
            Some(mut b) => {
                b.clear();
                if b.capacity() < cap {
                    b.reserve(cap);
                }
                b
            }
            None => t.take_buf(cap),
        }
    }

    /// Keeps `b` for reuse.
    pub(crate) fn give(&mut self, b: Buf) {
        if self.free.len() < KEEP {
            self.free.push(b);
        }
    }

    /// Hands half of this worker's spares to the table when it holds many
    /// (buffers flow from the providers' workers to the callers').
    fn balance(&mut self, t: &mut Table) {
        if self.free.len() >= KEEP {
            for b in self.free.drain(KEEP / 2..) {
                t.put_buf(b);
            }
        }
    }
}

/// Everything the relay needs from its worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayCtx<'a> {
    pub(crate) providers: &'a Providers,
    pub(crate) store: &'a BlobStore,
    pub(crate) worker: usize,
    pub(crate) max_payload: usize,
    pub(crate) max_in_flight: u32,
}

/// A REQUEST for a method the registry does not have: routed to a provider
/// (or queued), or answered at once (unknown method, expired, over the
/// session's quota, a schema mismatch, `Busy`). `payload` is the whole
/// payload, `env` and `body` its two parts.
#[allow(clippy::too_many_arguments)]
pub(crate) fn request(
    cx: RelayCtx<'_>,
    relay: &mut Relay,
    session: u64,
    in_flight: &mut u32,
    meta: FrameMeta,
    env: Option<EnvelopeRef<'_>>,
    payload: &[u8],
    body: &[u8],
    out: &mut Replier<'_>,
) {
    if !cx.providers.any() {
        return unknown(meta, out);
    }
    let now = wire::monotonic_ns();
    let deadline = match env {
        Some(h) if h.deadline_ns != 0 => h.deadline_ns,
        _ => now.saturating_add(cx.providers.default_timeout_ns()),
    };
    if deadline <= now {
        return out.error(
            meta,
            ErrorCode::DeadlineExceeded,
            format!(
                "the call's deadline had passed {:.3} ms before the server read it",
                (now - deadline) as f64 / 1e6
            ),
        );
    }
    if *in_flight >= cx.max_in_flight {
        return out.error(
            meta,
            ErrorCode::QuotaExceeded,
            format!(
                "{} requests already in flight on this session (limit {})",
                *in_flight, cx.max_in_flight
            ),
        );
    }
    let empty = wire::body_offset(0);
    let len = match env {
        Some(_) => payload.len(),
        None => empty + body.len(),
    };
    if len > cx.max_payload {
        return out.error(
            meta,
            ErrorCode::Malformed,
            format!(
                "the request with an envelope is {len} bytes, more than a frame holds ({}): \
                 send the envelope yourself (flag ENVELOPE) or pass the data as a blob",
                cx.max_payload
            ),
        );
    }
    let caller = Caller {
        worker: cx.worker,
        session,
        request_id: meta.request_id,
    };
    let mut t = cx.providers.lock();
    let mut buf = relay.take(&mut t, len);
    match env {
        Some(_) => buf.extend_from_slice(payload),
        None => {
            buf.extend_from_slice(&[0u8; wire::body_offset(0)]);
            buf.extend_from_slice(body);
        }
    }
    let schema = env.map_or(0, |h| h.schema_hash);
    let routed = t.route(caller, meta.tag, schema, deadline, buf, &mut relay.actions);
    relay.balance(&mut t);
    cx.providers.unlock(t);
    match routed {
        Ok(ticket) => {
            *in_flight += 1;
            tracing::trace!(
                session,
                request_id = meta.request_id,
                method = meta.tag,
                invocation = ticket,
                deadline_ns = deadline,
                "provided call routed"
            );
        }
        Err(((code, message), buf)) => {
            relay.give(buf);
            out.error(meta, code, message);
        }
    }
}

/// The answer to a request for a method nobody has.
fn unknown(meta: FrameMeta, out: &mut Replier<'_>) {
    out.error(
        meta,
        ErrorCode::UnknownMethod,
        format!("this server has no method with id {:#018x}", meta.tag),
    );
}

/// A provider's REPLY or REPLY_ERROR frame (read from its request ring):
/// the call ends and its caller is answered; a reply to a call this
/// provider does not hold is discarded.
pub(crate) fn reply(
    cx: RelayCtx<'_>,
    relay: &mut Relay,
    session: u64,
    meta: FrameMeta,
    bytes: &[u8],
) {
    let now = wire::monotonic_ns();
    let is_error = meta.kind == wire::REPLY_ERROR;
    let mut t = cx.providers.lock();
    let caller = t.reply(
        session,
        meta.request_id,
        meta.tag,
        is_error,
        now,
        &mut relay.actions,
    );
    let Some(caller) = caller else {
        cx.providers.unlock(t);
        tracing::debug!(
            session,
            invocation = meta.request_id,
            "reply to no invocation this provider holds: discarded"
        );
        return;
    };
    let buf = relay.take(&mut t, bytes.len());
    cx.providers.unlock(t);
    tracing::trace!(
        provider = session,
        invocation = meta.request_id,
        caller = caller.session,
        request_id = caller.request_id,
        error = is_error,
        "provided call answered"
    );
    let outcome = answer_of(cx.store, relay, caller, meta, bytes, buf);
    relay.actions.push(Action::Answer {
        caller,
        tag: meta.tag,
        outcome,
    });
}

/// What the caller gets for a provider's frame: the server never decodes a
/// provided method's body (the caller's library does), but it checks what
/// it relays: the flags, the envelope, every result handle (each leased
/// to the caller here), and that an error frame is a `RemoteError`.
fn answer_of(
    store: &BlobStore,
    relay: &mut Relay,
    caller: Caller,
    meta: FrameMeta,
    bytes: &[u8],
    mut buf: Buf,
) -> Outcome {
    let fail = |relay: &mut Relay, buf: Buf, code: ErrorCode, message: String| {
        relay.give(buf);
        Outcome::Error(code, message)
    };
    if meta.kind == wire::REPLY_ERROR {
        if meta.flags != wire::NO_FLAGS {
            return fail(
                relay,
                buf,
                ErrorCode::Malformed,
                format!(
                    "the provider's error answer has flags {:#06x} (must be 0)",
                    meta.flags
                ),
            );
        }
        return match <RemoteError as Wire>::access(bytes) {
            Ok(_) => {
                buf.extend_from_slice(bytes);
                Outcome::ErrorFrame(buf)
            }
            Err(e) => fail(
                relay,
                buf,
                ErrorCode::Malformed,
                format!("the provider's error answer is not a valid RemoteError: {e}"),
            ),
        };
    }
    match meta.flags {
        wire::NO_FLAGS => {
            buf.extend_from_slice(bytes);
            Outcome::Reply {
                flags: wire::NO_FLAGS,
                payload: buf,
            }
        }
        wire::ENVELOPE => {
            let (head, body) = match wire::split_envelope(bytes) {
                Ok(x) => x,
                Err(e) => {
                    return fail(
                        relay,
                        buf,
                        ErrorCode::Malformed,
                        format!("the provider's reply has a bad envelope: {e}"),
                    );
                }
            };
            if head.blob_count() == 0 {
                buf.extend_from_slice(body);
                return Outcome::Reply {
                    flags: wire::NO_FLAGS,
                    payload: buf,
                };
            }
            if let Err((code, message)) = lease_all(store, caller.session, head, "result") {
                return fail(relay, buf, code, message);
            }
            buf.extend_from_slice(bytes);
            // The caller's envelope carries the blobs only.
            buf[..16].fill(0);
            Outcome::Reply {
                flags: wire::ENVELOPE,
                payload: buf,
            }
        }
        flags => fail(
            relay,
            buf,
            ErrorCode::Malformed,
            format!("the provider's reply has unknown flags {flags:#06x}"),
        ),
    }
}

/// Leases every blob `head` lists to `session`; on a failure, none (the
/// ones taken are given back) and the error.
fn lease_all(
    store: &BlobStore,
    session: u64,
    head: EnvelopeRef<'_>,
    what: &str,
) -> Result<(), (ErrorCode, String)> {
    let mut taken = [0u64; wire::MAX_ENVELOPE_BLOBS];
    let mut n = 0;
    for (i, h) in head.blobs().enumerate() {
        match store.acquire(session, &h, false) {
            Ok(_) => {
                taken[n] = h.id;
                n += 1;
            }
            Err(e) => {
                store.release(session, &taken[..n], &[]);
                return Err((e.code, format!("{what} blob {i}: {}", e.message)));
            }
        }
    }
    Ok(())
}

/// Publishes a frame, or queues a copy behind the backlog; false if the
/// ring is broken (the session is closing) or the frame cannot fit.
fn push_frame(out: &mut Replier<'_>, meta: FrameMeta, bytes: &[u8]) -> bool {
    if out.broken.is_some() {
        return false;
    }
    if out.backlog.is_empty() {
        match out.outbox.try_send_encoded(meta, bytes) {
            Ok(()) => {
                out.published = true;
                return true;
            }
            Err(SendError::Full { .. }) => {}
            Err(SendError::Ring(e)) => {
                out.broken = Some(e);
                return false;
            }
            Err(e) => {
                tracing::warn!(request_id = meta.request_id, error = %e, "relayed frame dropped");
                return false;
            }
        }
    }
    let mut copy = Buf::with_capacity(bytes.len());
    copy.extend_from_slice(bytes);
    out.backlog.push_back((meta, copy));
    true
}

/// Carries out a `Deliver` on provider `session` (whose reply path is
/// `out`): leases the argument blobs to it and writes the INVOKE frame.
pub(crate) fn deliver(
    cx: RelayCtx<'_>,
    relay: &mut Relay,
    session: u64,
    ticket: u64,
    out: &mut Replier<'_>,
) {
    let now = wire::monotonic_ns();
    let store = cx.store;
    let mut t = cx.providers.lock();
    t.deliver(
        ticket,
        session,
        now,
        |payload, tag, _caller| {
            if stalled(out, cx.max_payload) {
                return Err((
                    ErrorCode::Busy,
                    "the provider does not read its response ring (its backlog is full)".to_owned(),
                ));
            }
            let (head, _) = wire::split_envelope(payload)
                .map_err(|e| (ErrorCode::Malformed, format!("the call's envelope: {e}")))?;
            if head.blob_count() > 0 {
                lease_all(store, session, head, "argument")?;
            }
            let meta = FrameMeta {
                request_id: ticket,
                tag,
                kind: wire::INVOKE,
                flags: wire::ENVELOPE,
            };
            if push_frame(out, meta, payload) {
                tracing::trace!(
                    provider = session,
                    invocation = ticket,
                    "provided call delivered"
                );
                Ok(())
            } else {
                let ids: Vec<u64> = head.blobs().map(|h| h.id).collect();
                store.release(session, &ids, &[]);
                Err((
                    ErrorCode::ProviderGone,
                    "the provider's response ring is broken; its session is closing".to_owned(),
                ))
            }
        },
        &mut relay.actions,
    );
    cx.providers.unlock(t);
}

/// Carries out a `Cancel` on a provider's reply path (advisory: not
/// queued for a provider that does not read its ring).
pub(crate) fn cancel(out: &mut Replier<'_>, ticket: u64, tag: u64, max_payload: usize) {
    if stalled(out, max_payload) {
        return;
    }
    let meta = FrameMeta {
        request_id: ticket,
        tag,
        kind: wire::CANCEL,
        flags: wire::NO_FLAGS,
    };
    push_frame(out, meta, &[]);
}

/// Carries out an `Answer` on the caller's reply path.
pub(crate) fn answer(
    relay: &mut Relay,
    out: &mut Replier<'_>,
    caller: Caller,
    tag: u64,
    outcome: Outcome,
) {
    let req = FrameMeta {
        request_id: caller.request_id,
        tag,
        kind: wire::REQUEST,
        flags: wire::NO_FLAGS,
    };
    match outcome {
        Outcome::Reply { flags, payload } => {
            out.answered += 1;
            out.last_error = 0;
            let meta = FrameMeta {
                kind: wire::RESPONSE,
                flags,
                ..req
            };
            push_frame(out, meta, &payload);
            relay.give(payload);
        }
        Outcome::ErrorFrame(payload) => {
            out.answered += 1;
            out.last_error = ErrorCode::Handler.to_u32();
            let meta = FrameMeta {
                kind: wire::ERROR,
                ..req
            };
            push_frame(out, meta, &payload);
            relay.give(payload);
        }
        Outcome::Error(code, message) => out.error(req, code, message),
    }
}

/// Ends every call whose deadline passed (if a sweep is due).
pub(crate) fn sweep(providers: &Providers, relay: &mut Relay) {
    let now = wire::monotonic_ns();
    if providers.earliest() > now {
        return;
    }
    let mut t = providers.lock();
    t.sweep(now, &mut relay.actions);
    providers.unlock(t);
}
