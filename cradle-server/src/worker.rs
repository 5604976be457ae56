//! Workers: each serves its sessions' rings, and sleeps in `epoll_wait` when
//! none has work (docs/design.md §6).
//!
//! # Serving
//!
//! A round over one session: publish queued responses (the backlog), take up
//! to [`BATCH`] requests unless the backlog is full (throttling), dispatch
//! each, release the request ring (ringing its space doorbell with a futex,
//! for a client that waits for room), and ring the response ring's data
//! doorbell (futex) if anything was published. While awake the worker polls
//! only sessions active within the last spin limit (`ServerBuilder::spin`);
//! others are looked at when it is about to sleep, and every millisecond
//! while it stays awake. It spins after its last work for a learned budget,
//! and not at all while the machine has no CPU to spare
//! (docs/architecture.md §13).
//!
//! # Sleeping
//!
//! ```text
//! worker (no work for `spin`)                     client (after publishing a request)
//!   waiting.store(1, Relaxed)                    commit word .store(Release)
//!   fence(SeqCst)                  (F_s)         fence(SeqCst)                (F_w)
//!   if no session has work:                      if waiting.load(Relaxed) != 0 {
//!       epoll_wait(eventfds, sockets, control)       data_seq += 1; write(eventfd)
//!   waiting.store(0, Relaxed)                    }
//! ```
//!
//! `waiting` is this worker's word in the status segment. Either the fences
//! order the client's commit before our re-check (we see the frame and do not
//! sleep), or our `waiting = 1` before the client's load (it writes the
//! eventfd, and the write raises an edge that `epoll_wait` returns). The
//! same argument covers the response ring's *space* doorbell while a backlog
//! waits for room: we set its `space_waiting` word, fence, and re-check room;
//! the client's release then writes the session eventfd.
//!
//! The session eventfd is registered edge-triggered and never read here:
//! the client shares its file description and could clear `O_NONBLOCK` and
//! drain it first, so a `read(2)` could block the worker. Every successful
//! write raises an edge whatever the counter holds (tested in `ipc-core`).
//! The other way, an async client is woken through a socketpair whose end we
//! write with `MSG_DONTWAIT` ([`WakeSocket`]), never through a descriptor it
//! shares with us.

use crate::blobs::BlobStore;
use crate::link::{ClientWaker, Completion, HandleInner, Job, NewSession, WorkerMsg, say_goodbye};
use crate::logs::LogLimiter;
use crate::memo::{MEMO_SESSION, Memo, ProvidedCall};
use crate::methods::{Handler, OffloadFn, Registry};
use crate::metrics::cells::CallCells;
use crate::provided::relay::{self, Relay, RelayCtx};
use crate::provided::{Action, Outcome, Providers};
use crate::reply::{Queued, Replier};
use crate::stats::{SessionCounters, Shared};
use ipc_core::doorbell::{EventFd, SpinBudget, cpu_contended};
use ipc_core::ring::{FrameMeta, RingRegion, max_payload_len};
use ipc_core::shm::{Mapping, Segment};
use ipc_core::sync::{AtomicU32, AtomicU64, Atomics, Ordering, StdAtomics};
use ipc_rpc::idmap::IdMap;
use ipc_rpc::rkyv::util::AlignedVec;
use ipc_rpc::{ErrorCode, Inbox, Outbox, wire};
use rustix::buffer::spare_capacity;
use rustix::event::Timespec;
use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
use rustix::io::Errno;
use rustix::net::RecvFlags;
use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

/// Requests taken from one session per round (fairness between sessions).
pub(crate) const BATCH: usize = 64;

/// The longest a worker keeps polling after the last work it found (the
/// learned budget is at most this; none while the CPU is contended), and how
/// long a session stays in the polled set after its last frame.
pub(crate) const DEFAULT_SPIN: Duration = Duration::from_micros(100);

/// On a busy machine a worker does not spin after its last work, except
/// this long after a round that answered several calls: a client streaming
/// pipelined requests is then still producing, and a worker that slept after
/// every round would make it write the eventfd for nearly every request
/// (docs/architecture.md §13). A ping-pong answers one call per round and
/// gets no spin.
const BURST_SPIN: Duration = Duration::from_micros(20);

/// While awake, the worker checks its epoll set (deaths, space wake-ups) and
/// looks at every session outside the polled set this often: a client
/// writes the eventfd only while the worker sleeps, so a worker kept busy by
/// other sessions would otherwise never notice a newly active one.
const EPOLL_CHECK_EVERY: Duration = Duration::from_millis(1);

/// Longest sleep while the log limiter holds a count of suppressed lines
/// (it is reported once the kind has been quiet this long). Otherwise a
/// worker sleeps until there is work: 1,000 idle sessions cost no wake-up.
const LOG_SLEEP: Duration = Duration::from_secs(1);

/// epoll token of the worker's control eventfd. Session tokens are
/// `id << 1` (the session eventfd) and `id << 1 | 1` (its socket); ids start
/// at 1, so they never collide with it.
const CONTROL: u64 = 0;

/// Why a session ends.
#[derive(Debug)]
enum Close {
    /// The client closed its socket (or died).
    Hangup,
    /// The client broke the protocol; counted in `sessions_killed`.
    Violation(String),
    /// A server-side failure.
    Internal(String),
    /// The server shuts down.
    Shutdown,
}

impl Close {
    fn reason(&self) -> &str {
        match self {
            Self::Hangup => "client closed the connection",
            Self::Violation(m) | Self::Internal(m) => m,
            Self::Shutdown => "server shutdown",
        }
    }
}

/// A session on its worker.
struct Session {
    id: u64,
    sock: OwnedFd,
    bell: EventFd,
    waker: ClientWaker,
    inbox: Inbox<RingRegion>,
    outbox: Outbox<RingRegion>,
    backlog: VecDeque<Queued>,
    /// Heap bytes of `backlog`, as counted in `Shared::backlog_bytes`.
    backlog_bytes: u64,
    in_flight: u32,
    calls: u64,
    counters: Arc<SessionCounters>,
    /// Last figures written to `counters`.
    published_stats: (u64, u32, u32),
    /// In the polled set.
    active: bool,
    last_active: Instant,
    /// We set the response ring's `space_waiting` word.
    space_armed: bool,
    /// Relayed frames were published and the data doorbell is yet to ring
    /// (once per batch of relay actions, see `Worker::flush_relay`).
    relayed: bool,
    close: Option<Close>,
    /// The session's span: the lines logged about it carry its id.
    span: tracing::Span,
    /// Dropped last: the rings above point into its mapping.
    _segment: Segment,
}

/// What a worker shares with the rest of the server.
pub(crate) struct WorkerCtx {
    pub(crate) index: usize,
    pub(crate) registry: Arc<Registry>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) handle: Arc<HandleInner>,
    pub(crate) status: Arc<Mapping>,
    pub(crate) jobs: Sender<Job>,
    pub(crate) store: Arc<BlobStore>,
    /// Memoized methods: a hit in memory is answered here.
    pub(crate) memo: Arc<Memo>,
    pub(crate) max_in_flight: u32,
    pub(crate) max_backlog: usize,
    pub(crate) max_payload: usize,
    /// Polling budget after the last frame before sleeping.
    pub(crate) spin: Duration,
    /// Spin all of `spin`, whatever the load (`ServerBuilder::spin_fixed`).
    pub(crate) spin_fixed: bool,
    /// Per-method figures for the metrics endpoint (`None`: no endpoint,
    /// calls are not timed).
    pub(crate) calls: Option<Arc<CallCells>>,
    /// Provided methods (docs/architecture.md "Provided methods").
    pub(crate) providers: Arc<Providers>,
}

impl WorkerCtx {
    fn relay(&self) -> RelayCtx<'_> {
        RelayCtx {
            providers: &self.providers,
            store: &self.store,
            worker: self.index,
            max_payload: self.max_payload,
            max_in_flight: self.max_in_flight,
        }
    }
}

impl std::fmt::Debug for WorkerCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCtx")
            .field("index", &self.index)
            .finish()
    }
}

/// One round over session `s`, which began at `round`; returns whether it
/// did anything.
fn serve(s: &mut Session, ctx: &WorkerCtx, round: Instant, relay: &mut Relay) -> bool {
    let mut worked = false;
    // With a metrics endpoint, a call's service time runs from the start of
    // the round (or the previous call's end) to its answer; the clock is read
    // only after the answer is published, off the caller's critical path.
    let mut started = round;
    let mut out = Replier::new(s.id, s.sock.as_fd(), &mut s.outbox, &mut s.backlog);
    if !out.backlog.is_empty() && out.flush() {
        worked = true;
    }
    let global = &ctx.shared.backlog_bytes;
    settle_backlog(&mut s.backlog_bytes, queued_bytes(out.backlog), global);
    let session_cap = session_backlog_cap(ctx);
    let global_cap = ctx.shared.backlog_limit;
    let mut taken = 0;
    let mut last = None;
    while taken < BATCH && out.broken.is_none() {
        // Throttle: take a request only while its answer has somewhere to
        // go within the caps (count and bytes, per session and server-wide),
        // or will go straight into the response ring.
        let within_caps = out.backlog.len() < ctx.max_backlog
            && s.backlog_bytes < session_cap
            // Relaxed: a soft limit; each worker overshoots it by at most one
            // answer (it re-reads after every enqueue).
            && global.load(Ordering::Relaxed) < global_cap;
        let mut straight_to_ring = || {
            out.backlog.is_empty()
                && out
                    .outbox
                    .producer()
                    .has_room(ctx.max_payload)
                    .unwrap_or(false)
        };
        if !(within_caps || straight_to_ring()) {
            break;
        }
        let queued_before = out.backlog.len();
        let msg = match s.inbox.try_recv() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                s.close = Some(Close::Violation(format!("request ring corrupt: {e}")));
                break;
            }
        };
        taken += 1;
        let meta = msg.meta;
        if meta.kind == wire::REPLY || meta.kind == wire::REPLY_ERROR {
            // A provider's answer: it goes to its caller, not to this ring.
            relay::reply(ctx.relay(), relay, s.id, meta, msg.bytes);
            continue;
        }
        if meta.kind != wire::REQUEST {
            s.close = Some(Close::Violation(format!(
                "frame of kind {} in the request ring",
                meta.kind
            )));
            break;
        }
        let in_flight = s.in_flight;
        out.last_error = 0;
        // A frame with an undefined flag is refused, the session stays (a
        // client of a later protocol learns why; nothing was run). An
        // envelope is taken off: a compiled-in handler sees the body only.
        let split = if meta.flags & !wire::REQUEST_FLAGS != 0 {
            Err(format!(
                "request frame flags {:#06x}: this server defines only {:#06x}",
                meta.flags,
                wire::REQUEST_FLAGS
            ))
        } else if meta.flags & wire::ENVELOPE != 0 {
            wire::split_envelope(msg.bytes)
                .map(|(h, b)| (Some(h), b))
                .map_err(|e| format!("the request's envelope: {e}"))
        } else {
            Ok((None, msg.bytes))
        };
        // The method of the previous request, looked up once: a stream of
        // calls of one method (pipelined pings) skips the table's binary
        // search (~45 instructions, a tenth of a ping's cost).
        let entry = match last {
            Some((tag, h)) if tag == meta.tag => h,
            _ => {
                let h = ctx.registry.get(meta.tag);
                last = Some((meta.tag, h));
                h
            }
        };
        let handler = split.map(|(env, body)| (env, body, entry));
        match handler {
            Err(why) => out.error(meta, ErrorCode::Malformed, why),
            Ok((env, body, None)) => {
                match ctx.memo.provided_call(meta, env, body, s.id, &mut out) {
                    ProvidedCall::Route => relay::request(
                        ctx.relay(),
                        relay,
                        s.id,
                        &mut s.in_flight,
                        meta,
                        env,
                        msg.bytes,
                        body,
                        &mut out,
                    ),
                    ProvidedCall::Answered => {}
                    // A memoized provided method: the whole payload (its
                    // envelope lists the blobs the key covers) to the pool.
                    ProvidedCall::Offload(f) => {
                        offload(s.id, &mut s.in_flight, ctx, meta, msg.bytes, f, &mut out)
                    }
                }
            }
            Ok((_, body, Some(Handler::Inline(f)))) => f(body, meta, &mut out),
            Ok((_, body, Some(Handler::Offload(f)))) => {
                if ctx.memo.try_answer(body, meta, s.id, &mut out) {
                    // A memoized call answered from memory.
                } else {
                    offload(
                        s.id,
                        &mut s.in_flight,
                        ctx,
                        meta,
                        body,
                        Arc::clone(f),
                        &mut out,
                    );
                }
            }
        }
        if out.backlog.len() > queued_before
            && let Some((_, b)) = out.backlog.back()
        {
            let now = s.backlog_bytes + b.capacity() as u64;
            settle_backlog(&mut s.backlog_bytes, now, global);
        }
        if let Some(calls) = &ctx.calls {
            let end = Instant::now();
            // Offloaded and provided calls are not timed here.
            if s.in_flight == in_flight {
                let took = end.saturating_duration_since(started);
                calls.record_owned(ctx.index, meta.tag, out.last_error, took);
            }
            started = end;
        }
    }
    if taken > 0 {
        worked = true;
    }
    // The client may sleep on the request ring's space doorbell (futex).
    s.inbox.consumer().release_and_notify(&s.waker);

    // While responses wait, ask the client to ring the session eventfd when it
    // releases room in the response ring.
    while out.broken.is_none() {
        let space_waiting = out.outbox.producer().space_bell_words().1;
        if out.backlog.is_empty() {
            if s.space_armed {
                // Relaxed: a stale 1 seen by the client only costs it one
                // useless eventfd write (see `Doorbell::clear_waiting`).
                space_waiting.store(0, Ordering::Relaxed);
                s.space_armed = false;
            }
            break;
        }
        if !s.space_armed {
            // Relaxed: ordered before the room re-check below by the fence.
            space_waiting.store(1, Ordering::Relaxed);
            // (F_s) Pairs with the SeqCst fence in the client's
            // `Consumer::release_and_notify` (`Doorbell::ring`): either our
            // re-check below sees its new `head`, or its load of
            // `space_waiting` sees our 1 and it writes the session eventfd.
            <StdAtomics as Atomics>::fence(Ordering::SeqCst);
            s.space_armed = true;
        }
        if !out.flush() {
            break;
        }
        worked = true;
    }
    settle_backlog(&mut s.backlog_bytes, queued_bytes(out.backlog), global);
    let (published, broken, answered) = (out.published, out.broken.take(), out.answered);
    if published {
        // The sync client sleeps on the response ring's data doorbell (futex).
        s.outbox.producer().notify(&s.waker);
    }
    if let Some(e) = broken {
        s.close = Some(Close::Violation(format!("response ring corrupt: {e}")));
    }
    account(s, ctx, answered);
    worked
}

/// Sends a request to the offload pool (`bytes` is copied), unless the
/// session has its limit of calls in flight.
fn offload(
    session: u64,
    in_flight: &mut u32,
    ctx: &WorkerCtx,
    meta: FrameMeta,
    bytes: &[u8],
    handler: OffloadFn,
    out: &mut Replier<'_>,
) {
    if *in_flight >= ctx.max_in_flight {
        return out.error(
            meta,
            ErrorCode::QuotaExceeded,
            format!(
                "{} offloaded requests already in flight on this session (limit {})",
                *in_flight, ctx.max_in_flight
            ),
        );
    }
    let mut copy = AlignedVec::<16>::with_capacity(bytes.len());
    copy.extend_from_slice(bytes);
    let job = Job {
        worker: ctx.index,
        session,
        meta,
        bytes: copy,
        handler,
        max_payload: ctx.max_payload,
    };
    match ctx.jobs.send(job) {
        Ok(()) => *in_flight += 1,
        Err(_) => out.error(
            meta,
            ErrorCode::Shutdown,
            "the server's offload pool has stopped".to_owned(),
        ),
    }
}

/// Heap bytes held by a backlog (0 at once when it is empty).
fn queued_bytes(backlog: &VecDeque<Queued>) -> u64 {
    backlog.iter().map(|(_, b)| b.capacity() as u64).sum()
}

/// Sets a session's share of the server-wide backlog byte count to `now`.
fn settle_backlog(mine: &mut u64, now: u64, global: &AtomicU64) {
    if now > *mine {
        // Relaxed: a soft limit read by the workers' throttles; it publishes
        // no data.
        global.fetch_add(now - *mine, Ordering::Relaxed);
    } else if now < *mine {
        // Relaxed: as above.
        global.fetch_sub(*mine - now, Ordering::Relaxed);
    }
    *mine = now;
}

/// The backlog bytes one session may hold before its requests are no longer
/// taken: four rings' worth of the largest answers, never more than the
/// server-wide cap.
fn session_backlog_cap(ctx: &WorkerCtx) -> u64 {
    (8 * ctx.max_payload as u64).min(ctx.shared.backlog_limit)
}

/// Whether `s` may take requests now (see the throttle in `serve`).
fn may_take(s: &mut Session, ctx: &WorkerCtx) -> bool {
    let within_caps = s.backlog.len() < ctx.max_backlog
        && s.backlog_bytes < session_backlog_cap(ctx)
        // Relaxed: a soft limit (see `serve`).
        && ctx.shared.backlog_bytes.load(Ordering::Relaxed) < ctx.shared.backlog_limit;
    within_caps
        || (s.backlog.is_empty()
            && s.outbox
                .producer()
                .has_room(ctx.max_payload)
                .unwrap_or(false))
}

/// Counts answered calls and publishes the session's figures if they changed.
fn account(s: &mut Session, ctx: &WorkerCtx, answered: u64) {
    if answered > 0 {
        s.calls += answered;
        // Relaxed: statistics.
        ctx.shared
            .calls_served
            .fetch_add(answered, Ordering::Relaxed);
    }
    let now = (s.calls, s.in_flight, s.backlog.len() as u32);
    if now != s.published_stats {
        s.counters.publish(now.0, now.1, now.2);
        s.published_stats = now;
    }
}

/// Whether `s` has something to do now (checked before sleeping).
fn has_work(s: &mut Session, ctx: &WorkerCtx) -> bool {
    if s.close.is_some() {
        return true;
    }
    let room = match s.backlog.front() {
        // An error (a corrupt head) is work too: the next round closes.
        Some((_, b)) => s.outbox.producer().has_room(b.len()).unwrap_or(true),
        None => false,
    };
    room || (s.inbox.consumer().has_frame() && may_take(s, ctx))
}

/// Delivers an offload completion.
fn complete(s: &mut Session, ctx: &WorkerCtx, c: Completion) {
    s.in_flight = s.in_flight.saturating_sub(1);
    let mut out = Replier::new(s.id, s.sock.as_fd(), &mut s.outbox, &mut s.backlog);
    match c.answer {
        Some((meta, bytes)) => {
            // An answer that would be queued past a backlog byte cap is
            // replaced by a short error: offloaded calls were taken before
            // the backlog grew, and their answers must not grow it without
            // bound (the client is not reading them anyway).
            let to_ring = out.backlog.is_empty()
                && out.outbox.producer().has_room(bytes.len()).unwrap_or(false);
            let size = bytes.capacity() as u64;
            let over = !to_ring
                && (s.backlog_bytes + size > session_backlog_cap(ctx)
                    // Relaxed: a soft limit (see `serve`).
                    || ctx.shared.backlog_bytes.load(Ordering::Relaxed) + size
                        > ctx.shared.backlog_limit);
            if over {
                out.error(
                    meta,
                    ErrorCode::QuotaExceeded,
                    format!(
                        "the answer ({} bytes) was dropped: too many answers wait for this \
                         client to read them",
                        bytes.len()
                    ),
                );
            } else {
                out.send_encoded(meta, bytes);
            }
        }
        None => out.answered += 1,
    }
    let queued = queued_bytes(out.backlog);
    settle_backlog(&mut s.backlog_bytes, queued, &ctx.shared.backlog_bytes);
    let (published, broken, answered) = (out.published, out.broken.take(), out.answered);
    if published {
        s.outbox.producer().notify(&s.waker);
    }
    if let Some(e) = broken {
        s.close = Some(Close::Violation(format!("response ring corrupt: {e}")));
    }
    account(s, ctx, answered);
}

/// Reads and discards whatever the client sent on its control socket (only
/// liveness is expected there); end of stream closes the session.
fn read_control(s: &mut Session) {
    let mut buf = [0u8; 256];
    loop {
        match rustix::net::recv(&s.sock, &mut buf[..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => {
                s.close = Some(Close::Hangup);
                return;
            }
            Ok((n, _)) => {
                tracing::debug!(
                    session = s.id,
                    bytes = n,
                    "ignored bytes on the control socket"
                );
            }
            Err(Errno::AGAIN) => return,
            Err(Errno::INTR) => continue,
            Err(_) => {
                s.close = Some(Close::Hangup);
                return;
            }
        }
    }
}

/// Puts `s` in the polled set, recording `now` as its last activity.
fn activate(polled: &mut Vec<u64>, s: &mut Session, now: Instant) {
    if !s.active {
        s.active = true;
        polled.push(s.id);
    }
    s.last_active = now;
}

/// A worker's private state.
struct Worker<'a> {
    ctx: &'a WorkerCtx,
    epoll: OwnedFd,
    /// By session id (the server's own counter, so the id hasher is safe
    /// here; SipHash on this map was ~15 % of a provided call's worker
    /// instructions).
    sessions: IdMap<Session>,
    events: Vec<Event>,
    /// A client that opens and breaks sessions in a loop must not flood
    /// the log.
    log: LogLimiter,
    /// Provided calls: actions to carry out, buffers to reuse.
    relay: Relay,
    /// The control eventfd was drained since the channel was last read:
    /// messages may wait, and the worker must not sleep before reading them
    /// (their wake-up is spent; without this a message sent between a read
    /// of the channel and the next drain would sleep with the worker).
    msgs_waiting: bool,
    /// Sessions whose rings relay actions touched in this batch.
    touched: Vec<u64>,
    /// Workers given actions in this batch (woken once each at its end).
    to_wake: Vec<bool>,
    /// Ids of the sessions in the polled set (`Session::active`): a round
    /// serves these without walking the whole session table (ids of freed
    /// sessions are dropped when met).
    polled: Vec<u64>,
    /// Some session may be marked for closing: `reap` scans only then, so
    /// that a round does not visit every idle session (1,000 idle sessions
    /// made an active client's call 13 µs slower, docs/benchmarks.md §5).
    closing: bool,
}

impl Worker<'_> {
    fn adopt(&mut self, n: NewSession) {
        self.ctx.store.open_session(n.id);
        {
            let mut t = self.ctx.providers.lock();
            t.open_session(n.id, self.ctx.index, n.counters.pid);
            self.ctx.providers.unlock(t);
        }
        let mut s = Session {
            id: n.id,
            sock: n.sock,
            bell: n.bell,
            waker: n.waker,
            inbox: n.inbox,
            outbox: n.outbox,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            in_flight: 0,
            calls: 0,
            counters: n.counters,
            published_stats: (0, 0, 0),
            active: true,
            last_active: Instant::now(),
            space_armed: false,
            relayed: false,
            close: None,
            span: tracing::info_span!("session", id = n.id),
            _segment: n.segment,
        };
        // Edge-triggered, and never read (see `poll_events`).
        let reg = epoll::add(
            &self.epoll,
            s.bell.as_fd(),
            EventData::new_u64(s.id << 1),
            EventFlags::IN | EventFlags::ET,
        )
        .and_then(|()| {
            epoll::add(
                &self.epoll,
                &s.sock,
                EventData::new_u64(s.id << 1 | 1),
                EventFlags::IN | EventFlags::RDHUP,
            )
        });
        if let Err(e) = reg {
            s.close = Some(Close::Internal(format!("epoll registration failed: {e}")));
            self.closing = true;
        }
        self.polled.push(s.id);
        self.sessions.insert(s.id, s);
    }

    fn handle_msgs(&mut self, rx: &Receiver<WorkerMsg>) -> Result<(), String> {
        // Cleared before the channel is read: a wake-up drained after this
        // point sets it again, so the worker does not sleep on a message.
        self.msgs_waiting = false;
        loop {
            match rx.try_recv() {
                Ok(WorkerMsg::Session(n)) => self.adopt(*n),
                Ok(WorkerMsg::Completion(c)) => {
                    if let Some(s) = self.sessions.get_mut(&c.session) {
                        complete(s, self.ctx, c);
                        activate(&mut self.polled, s, Instant::now());
                        self.closing |= s.close.is_some();
                    }
                }
                Err(TryRecvError::Empty) => {
                    self.ctx
                        .providers
                        .take_inbox(self.ctx.index, &mut self.relay.actions);
                    self.flush_relay();
                    return Ok(());
                }
                Err(TryRecvError::Disconnected) => {
                    return Err("the worker's channel closed".to_owned());
                }
            }
        }
    }

    /// Waits for epoll events (at most `timeout`; `None`: until one comes)
    /// and handles them.
    fn poll_events(&mut self, timeout: Option<Duration>) -> Result<(), String> {
        self.events.clear();
        let ts = timeout.map(|t| {
            Timespec::try_from(t).unwrap_or(Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            })
        });
        match epoll::wait(&self.epoll, spare_capacity(&mut self.events), ts.as_ref()) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(format!("epoll_wait failed: {e}")),
        }
        let now = Instant::now();
        for i in 0..self.events.len() {
            let ev = self.events[i];
            let (token, flags) = (ev.data.u64(), ev.flags);
            if token == CONTROL {
                let _ = self.ctx.handle.links[self.ctx.index].bell.drain();
                // The wake-up is gone: the messages it announced must be
                // read before the worker may sleep (`handle_msgs`).
                self.msgs_waiting = true;
                continue;
            }
            let Some(s) = self.sessions.get_mut(&(token >> 1)) else {
                continue;
            };
            if token & 1 == 0 {
                // Never read: the client shares this eventfd's file
                // description and could make a read block. It is registered
                // edge-triggered, and every write raises an edge.
                activate(&mut self.polled, s, now);
            } else if flags.intersects(EventFlags::HUP | EventFlags::RDHUP | EventFlags::ERR) {
                s.close = Some(Close::Hangup);
            } else if flags.contains(EventFlags::IN) {
                read_control(s);
            }
            self.closing |= s.close.is_some();
        }
        Ok(())
    }

    /// Frees every session marked for closing (if any may be: `closing`).
    fn reap(&mut self) {
        if !std::mem::take(&mut self.closing) || !self.sessions.values().any(|s| s.close.is_some())
        {
            return;
        }
        let closing: Vec<u64> = self
            .sessions
            .values()
            .filter(|s| s.close.is_some())
            .map(|s| s.id)
            .collect();
        for id in closing {
            if let Some(s) = self.sessions.remove(&id) {
                self.free(s);
            }
        }
        self.flush_relay();
    }

    /// Carries out the relay's actions: this worker's own at once (they
    /// may make more), the others' through their channels.
    fn flush_relay(&mut self) {
        if self.relay.actions.is_empty() {
            return;
        }
        let now = Instant::now();
        while !self.relay.actions.is_empty() {
            // Actions made while this batch is carried out go to the spare
            // vector; the drained batch becomes the next spare: both keep
            // their capacity, so a steady stream of calls allocates nothing.
            let spare = std::mem::take(&mut self.relay.spare);
            let mut batch = std::mem::replace(&mut self.relay.actions, spare);
            for a in batch.drain(..) {
                let w = a.worker();
                if w == self.ctx.index {
                    self.perform(a, now);
                } else if let Some(wake) = self.to_wake.get_mut(w) {
                    self.ctx.providers.post(a);
                    *wake = true;
                }
            }
            self.relay.spare = batch;
        }
        // One wake-up per other worker and batch.
        for (w, wake) in self.to_wake.iter_mut().enumerate() {
            if std::mem::take(wake)
                && let Some(link) = self.ctx.handle.links.get(w)
            {
                link.wake();
            }
        }
        // One doorbell per session and batch (a fence each), not per frame.
        for id in self.touched.drain(..) {
            if let Some(s) = self.sessions.get_mut(&id)
                && std::mem::take(&mut s.relayed)
            {
                s.outbox.producer().notify(&s.waker);
            }
        }
    }

    /// Carries out one relay action on one of this worker's sessions (a
    /// session that is gone needs nothing: its close dealt with its calls).
    fn perform(&mut self, a: Action, now: Instant) {
        // The end of a memoized provided run: the memo was its caller.
        let a = match a {
            Action::Answer {
                caller, outcome, ..
            } if caller.session == MEMO_SESSION => {
                let memo = &self.ctx.memo;
                memo.provided_done(caller.request_id, outcome, &self.ctx.jobs, self.ctx.index);
                return;
            }
            a => a,
        };
        let id = match &a {
            Action::Deliver { session, .. } | Action::Cancel { session, .. } => *session,
            Action::Answer { caller, .. } => caller.session,
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            if let Action::Answer {
                outcome: Outcome::Reply { payload, .. } | Outcome::ErrorFrame(payload),
                ..
            } = a
            {
                self.relay.give(payload);
            }
            return;
        };
        let ctx = self.ctx;
        let mut out = Replier::new(s.id, s.sock.as_fd(), &mut s.outbox, &mut s.backlog);
        match a {
            Action::Deliver { ticket, .. } => {
                relay::deliver(ctx.relay(), &mut self.relay, id, ticket, &mut out);
            }
            Action::Cancel { ticket, tag, .. } => {
                relay::cancel(&mut out, ticket, tag, ctx.max_payload);
            }
            Action::Answer {
                caller,
                tag,
                outcome,
            } => {
                s.in_flight = s.in_flight.saturating_sub(1);
                relay::answer(&mut self.relay, &mut out, caller, tag, outcome);
            }
        }
        let queued = queued_bytes(out.backlog);
        settle_backlog(&mut s.backlog_bytes, queued, &ctx.shared.backlog_bytes);
        let (published, broken, answered) = (out.published, out.broken.take(), out.answered);
        if published && !s.relayed {
            s.relayed = true;
            self.touched.push(id);
        }
        if let Some(e) = broken {
            s.close = Some(Close::Violation(format!("response ring corrupt: {e}")));
            self.closing = true;
        }
        account(s, ctx, answered);
        activate(&mut self.polled, s, now);
    }

    /// Ends provided calls whose deadline passed.
    fn sweep(&mut self) {
        relay::sweep(&self.ctx.providers, &mut self.relay);
        self.flush_relay();
    }

    /// The longest this worker may sleep: until the next deadline of a
    /// provided call, at most [`MAX_SLEEP`].
    fn sleep_bound(&self) -> Option<Duration> {
        let next = self.ctx.providers.earliest();
        if next == u64::MAX {
            return None;
        }
        let left = next.saturating_sub(wire::monotonic_ns());
        // Past the deadline by a little, so the sweep finds it expired.
        Some(Duration::from_nanos(left) + Duration::from_micros(50))
    }

    /// Frees one session: its fds leave the epoll set explicitly (the client
    /// shares the eventfd's file description, so closing ours would not
    /// remove it), then rings, mapping, fds and quotas go with `s`.
    fn free(&mut self, mut s: Session) {
        let close = s.close.take().unwrap_or(Close::Shutdown);
        settle_backlog(&mut s.backlog_bytes, 0, &self.ctx.shared.backlog_bytes);
        let _ = epoll::delete(&self.epoll, s.bell.as_fd());
        let _ = epoll::delete(&self.epoll, &s.sock);
        if matches!(close, Close::Shutdown) {
            say_goodbye(&s.sock);
        }
        // Everything the session held: leases, unsealed blobs, author pool.
        self.ctx.store.close_session(s.id);
        // Its offers (its calls go to other providers or fail) and its
        // calls as a caller (dropped, or cancelled at their provider).
        let mut t = self.ctx.providers.lock();
        t.close_session(s.id, &mut self.relay.actions);
        self.ctx.providers.unlock(t);
        let killed = matches!(close, Close::Violation(_));
        self.ctx.shared.session_closed(s.id, killed);
        let _in_session = s.span.enter();
        let kind = if killed {
            "session closed for a protocol violation"
        } else {
            "session closed"
        };
        let now = Instant::now();
        let allowed = if killed {
            self.log.allow(kind, now)
        } else {
            self.log.allow_info(kind, now)
        };
        if let Some(more) = allowed {
            if killed {
                tracing::warn!(calls = s.calls, reason = close.reason(), "{kind}{more}");
            } else {
                tracing::info!(calls = s.calls, reason = close.reason(), "{kind}{more}");
            }
        }
    }
}

/// The worker thread's body; returns when the server shuts down.
pub(crate) fn run_worker(ctx: &WorkerCtx, rx: &Receiver<WorkerMsg>) -> Result<(), String> {
    let epoll = epoll::create(CreateFlags::CLOEXEC).map_err(|e| format!("epoll_create: {e}"))?;
    let link = ctx
        .handle
        .links
        .get(ctx.index)
        .ok_or_else(|| "no link for this worker".to_owned())?;
    epoll::add(
        &epoll,
        link.bell.as_fd(),
        EventData::new_u64(CONTROL),
        EventFlags::IN,
    )
    .map_err(|e| format!("epoll_ctl: {e}"))?;
    let waiting: &AtomicU32 = ctx
        .status
        .atomic_u32(ipc_rpc::session::worker_waiting_offset(ctx.index))
        .map_err(|e| format!("status segment: {e}"))?;
    let mut w = Worker {
        ctx,
        epoll,
        sessions: IdMap::default(),
        events: Vec::with_capacity(256),
        log: LogLimiter::default(),
        relay: Relay::default(),
        msgs_waiting: false,
        touched: Vec::new(),
        to_wake: vec![false; ctx.handle.links.len()],
        polled: Vec::new(),
        closing: false,
    };
    let mut last_work = Instant::now();
    let mut next_check = Instant::now();
    // Adaptive spinning (docs/architecture.md, "Waiting under load"): the
    // spin after the last work is the learned budget, at most `ctx.spin`,
    // and none while this thread's CPU is contended. `spin_limit` is the
    // budget of the current idle stretch (`None`: the stretch has not
    // started, the last round worked).
    let mut budget = SpinBudget::new(ctx.spin);
    let mut spin_limit: Option<Duration> = None;
    // The last round that worked answered more than one call.
    let mut streaming = false;
    let result = loop {
        // Acquire: pairs with the Release store in `ServerHandle::shutdown`.
        if ctx.handle.shutdown.load(Ordering::Acquire) {
            break Ok(());
        }
        if let Err(e) = w.handle_msgs(rx) {
            break Err(e);
        }
        let now = Instant::now();
        let mut worked = false;
        let mut answered = 0;
        let mut closed = false;
        let mut i = 0;
        while let Some(&id) = w.polled.get(i) {
            let Some(s) = w.sessions.get_mut(&id) else {
                // Freed.
                w.polled.swap_remove(i);
                continue;
            };
            if s.close.is_some() {
                i += 1;
                continue;
            }
            let calls = s.calls;
            let served = serve(s, ctx, now, &mut w.relay);
            answered += s.calls - calls;
            closed |= s.close.is_some();
            if served {
                s.last_active = now;
                worked = true;
            } else if now.duration_since(s.last_active) > ctx.spin {
                s.active = false;
                w.polled.swap_remove(i);
                continue;
            }
            i += 1;
        }
        w.closing |= closed;
        w.reap();
        w.flush_relay();
        if worked {
            if spin_limit.take().is_some_and(|l| !l.is_zero()) {
                // The spin caught new work.
                budget.caught(ctx.spin);
            }
            last_work = now;
            streaming = answered > 1;
        }
        if now >= next_check {
            if let Err(e) = w.poll_events(Some(Duration::ZERO)) {
                break Err(e);
            }
            for s in w.sessions.values_mut() {
                if !s.active && has_work(s, ctx) {
                    activate(&mut w.polled, s, now);
                }
            }
            // A full scan every EPOLL_CHECK_EVERY, whatever `closing` says.
            w.closing = true;
            w.reap();
            w.sweep();
            w.log.flush(now);
            next_check = now + EPOLL_CHECK_EVERY;
        }
        let limit = *spin_limit.get_or_insert_with(|| {
            if ctx.spin_fixed {
                ctx.spin
            } else if !cpu_contended(now) {
                budget.current(ctx.spin)
            } else if streaming {
                BURST_SPIN.min(ctx.spin)
            } else {
                Duration::ZERO
            }
        });
        if now.duration_since(last_work) < limit {
            std::hint::spin_loop();
            continue;
        }

        // About to sleep: the protocol in the module docs.
        // Relaxed: ordered before the re-check below by the fence.
        waiting.store(1, Ordering::Relaxed);
        // (F_s) Pairs with the SeqCst fence of the client's `Doorbell::ring`
        // after it publishes a request: either the re-check below sees the
        // frame, or the client sees `waiting == 1` and writes the eventfd.
        <StdAtomics as Atomics>::fence(Ordering::SeqCst);
        // Messages whose wake-up an earlier `poll_events` drained, and relay
        // actions another worker posted (its wake-up may be drained too).
        let mut found = w.msgs_waiting || ctx.providers.has_mail(ctx.index);
        for s in w.sessions.values_mut() {
            if has_work(s, ctx) {
                activate(&mut w.polled, s, now);
                found = true;
            }
        }
        if !limit.is_zero() {
            // The spin ended without work: it did not pay.
            budget.missed();
        }
        spin_limit = None;
        w.log.flush(now);
        // No timeout unless a provided call's deadline or a count of
        // suppressed log lines waits.
        let timeout = match (w.sleep_bound(), w.log.pending().then_some(LOG_SLEEP)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if !found && let Err(e) = w.poll_events(timeout) {
            // Relaxed: see below.
            waiting.store(0, Ordering::Relaxed);
            break Err(e);
        }
        // Relaxed: a stale 1 seen by a client only costs it one useless
        // eventfd write; a 0 that hides a later 1 is ruled out by the fences.
        waiting.store(0, Ordering::Relaxed);
        last_work = Instant::now();
        if !found {
            // Woken after this long: a spin that long would have caught it.
            budget.slept(last_work.saturating_duration_since(now), ctx.spin);
        }
        next_check = last_work + EPOLL_CHECK_EVERY;
        w.reap();
        w.sweep();
    };
    // Sessions the acceptor handed over but we never adopted: adopt them
    // now, so that their clients too hear a clean goodbye.
    let _ = w.handle_msgs(rx);
    for s in w.sessions.values_mut() {
        s.close.get_or_insert(Close::Shutdown);
    }
    w.closing = true;
    w.reap();
    w.log.finish();
    result
}

/// The payload limit of a ring of `capacity`.
pub(crate) fn payload_limit(capacity: usize) -> usize {
    max_payload_len(capacity)
}
