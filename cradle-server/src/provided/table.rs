//! The server-wide table of provided methods (docs/architecture.md
//! "Provided methods"): who offers what, the calls being routed (queued or
//! held by a provider), and the decisions taken on them. Pure bookkeeping:
//! no ring, no thread, no lock (the caller holds the one mutex around it).
//! Every decision that needs a ring is returned as an [`Action`] for the
//! worker that owns the session concerned.

use ipc_rpc::ErrorCode;
use ipc_rpc::builtin::ProvidedStats;
use ipc_rpc::idmap::IdMap;
use ipc_rpc::provide::{MethodInfo, Offer, Origin, ProviderInfo};
use ipc_rpc::rkyv::util::AlignedVec;
use std::collections::VecDeque;

/// A payload buffer (recycled: see [`Table::take_buf`]).
pub(crate) type Buf = AlignedVec<16>;

/// Buffers kept for reuse at most (each at most [`KEEP_BUF`] bytes).
const POOL: usize = 4096;
/// Largest buffer capacity kept for reuse.
const KEEP_BUF: usize = 64 << 10;
/// Latency samples kept per provider and per method (the p50 is over these).
const SAMPLES: usize = 64;

/// Server-wide bounds on what providers and callers can make the table hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Distinct provided methods.
    pub(crate) methods: usize,
    /// Registrations (a provider of a method), server-wide.
    pub(crate) providers: usize,
    /// Providers of one method.
    pub(crate) providers_per_method: usize,
    /// Methods one session offers.
    pub(crate) offers_per_session: usize,
    /// A provider's declared concurrency is capped to this.
    pub(crate) concurrency: u32,
    /// Calls waiting for a provider, per method.
    pub(crate) queue_per_method: usize,
    /// Calls waiting for a provider, server-wide.
    pub(crate) queue_total: usize,
    /// The deadline of a call that carries none, from its arrival.
    pub(crate) default_timeout_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            methods: 1024,
            providers: 4096,
            providers_per_method: 64,
            offers_per_session: 256,
            concurrency: 1024,
            queue_per_method: 1024,
            queue_total: 16_384,
            default_timeout_ns: 30_000_000_000,
        }
    }
}

/// Who waits for a call's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The caller session's worker.
    pub(crate) worker: usize,
    /// The caller session.
    pub(crate) session: u64,
    /// The caller's request id.
    pub(crate) request_id: u64,
}

/// What the caller gets.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A RESPONSE frame with these flags and payload.
    Reply {
        /// `wire::ENVELOPE` iff result blobs are listed.
        flags: u16,
        /// Envelope (if any) and body.
        payload: Buf,
    },
    /// An ERROR frame with this payload (a provider's validated
    /// `RemoteError`, forwarded verbatim).
    ErrorFrame(Buf),
    /// An ERROR frame the server writes.
    Error(ErrorCode, String),
}

/// Something a worker must do on one of its sessions' rings.
#[derive(Debug)]
pub(crate) enum Action {
    /// Write call `ticket`'s INVOKE into provider `session`'s response ring.
    Deliver {
        /// The provider session's worker.
        worker: usize,
        /// The provider session.
        session: u64,
        /// The call.
        ticket: u64,
    },
    /// Answer a caller.
    Answer {
        /// Who.
        caller: Caller,
        /// The method id (the frame's tag).
        tag: u64,
        /// What.
        outcome: Outcome,
    },
    /// Tell provider `session` that nobody waits for `ticket` any more.
    Cancel {
        /// The provider session's worker.
        worker: usize,
        /// The provider session.
        session: u64,
        /// The invocation.
        ticket: u64,
        /// The method id.
        tag: u64,
    },
}

impl Action {
    /// The worker that must carry the action out.
    pub(crate) fn worker(&self) -> usize {
        match self {
            Self::Deliver { worker, .. } | Self::Cancel { worker, .. } => *worker,
            Self::Answer { caller, .. } => caller.worker,
        }
    }
}

/// The last [`SAMPLES`] latencies, for a median.
#[derive(Debug, Clone)]
struct Window {
    ns: [u64; SAMPLES],
    len: usize,
    next: usize,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            ns: [0; SAMPLES],
            len: 0,
            next: 0,
        }
    }
}

impl Window {
    fn push(&mut self, ns: u64) {
        self.ns[self.next] = ns;
        self.next = (self.next + 1) % SAMPLES;
        self.len = (self.len + 1).min(SAMPLES);
    }

    fn p50(&self) -> u64 {
        if self.len == 0 {
            return 0;
        }
        let mut v = self.ns;
        let v = &mut v[..self.len];
        v.sort_unstable();
        v[self.len / 2]
    }
}

/// One provider of one method.
#[derive(Debug)]
struct Prov {
    session: u64,
    worker: usize,
    pid: u32,
    concurrency: u32,
    in_flight: u32,
    served: u64,
    errors: u64,
    lat: Window,
}

/// A provided method.
#[derive(Debug)]
struct ProvMethod {
    name: String,
    version: u32,
    schema_hash: u64,
    idempotent: bool,
    /// Calls are answered through the memo (docs/architecture.md §14).
    memoized: bool,
    providers: Vec<Prov>,
    /// Calls waiting for a provider, oldest first.
    queue: VecDeque<u64>,
    /// Where the next search for a provider starts (ties go round).
    next: usize,
    served: u64,
    errors: u64,
    lat: Window,
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In its method's queue.
    Queued,
    /// Given to a provider; `delivered` once its INVOKE is written.
    Routed {
        worker: usize,
        session: u64,
        delivered: bool,
    },
}

/// A call being routed.
#[derive(Debug)]
struct Live {
    caller: Caller,
    method: u64,
    deadline: u64,
    /// The INVOKE payload: envelope (deadline, schema hash, argument blobs)
    /// and the caller's body. Kept until the call ends: an idempotent call
    /// may be sent again.
    payload: Buf,
    state: State,
    /// When the INVOKE was written (ns), for the latency figures.
    delivered_at: u64,
}

/// A session as the table knows it.
#[derive(Debug)]
struct SessionInfo {
    worker: usize,
    pid: u32,
    /// Methods it offers.
    offers: Vec<u64>,
    /// Its calls being routed (as a caller).
    calls: u32,
}

/// Server-wide counts (for `cradle.stats`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    /// Calls routed to a provider or queued.
    pub(crate) calls: u64,
    /// Calls answered from a provider's REPLY.
    pub(crate) replied: u64,
    /// ... of which REPLY_ERROR.
    pub(crate) reply_errors: u64,
    /// Calls refused `Busy`.
    pub(crate) busy: u64,
    /// Calls answered `DeadlineExceeded`.
    pub(crate) deadline: u64,
    /// Calls answered `ProviderGone`.
    pub(crate) gone: u64,
    /// Calls sent again to another provider.
    pub(crate) resent: u64,
    /// Replies discarded (unknown or cancelled invocation, wrong provider).
    pub(crate) discarded: u64,
    /// Calls cancelled because their caller left.
    pub(crate) abandoned: u64,
    /// Routed calls that ended with another error (an argument blob that
    /// failed its check at delivery).
    pub(crate) refused: u64,
}

/// Why a call was not routed.
pub(crate) type Refusal = (ErrorCode, String);

/// The table.
#[derive(Debug)]
pub(crate) struct Table {
    limits: Limits,
    methods: IdMap<ProvMethod>,
    live: IdMap<Live>,
    sessions: IdMap<SessionInfo>,
    registrations: usize,
    queued: usize,
    next_ticket: u64,
    /// The earliest deadline of a live call (may be earlier than the true
    /// one: a sweep recomputes it); `u64::MAX`: none.
    pub(crate) earliest: u64,
    free: Vec<Buf>,
    counts: Counts,
}

impl Table {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            methods: IdMap::default(),
            live: IdMap::default(),
            sessions: IdMap::default(),
            registrations: 0,
            queued: 0,
            next_ticket: 1,
            earliest: u64::MAX,
            free: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// A buffer of at least `cap` bytes' capacity, empty (recycled if one is
    /// free).
    pub(crate) fn take_buf(&mut self, cap: usize) -> Buf {
        match self.free.pop() {
            Some(mut b) => {
                b.clear();
                if b.capacity() < cap {
                    b.reserve(cap);
                }
                b
            }
            None => Buf::with_capacity(cap.max(256)),
        }
    }

    /// Gives a buffer back for reuse.
    pub(crate) fn put_buf(&mut self, b: Buf) {
        if self.free.len() < POOL && b.capacity() <= KEEP_BUF {
            self.free.push(b);
        }
    }

    /// A session opened on `worker` (its client's pid from `SO_PEERCRED`).
    pub(crate) fn open_session(&mut self, session: u64, worker: usize, pid: u32) {
        self.sessions.insert(
            session,
            SessionInfo {
                worker,
                pid,
                offers: Vec::new(),
                calls: 0,
            },
        );
    }

    /// Registers `session` as a provider of `offer` (the name rules and
    /// the compiled-in ids are checked by the caller).
    pub(crate) fn register(&mut self, session: u64, offer: &Offer) -> Result<(), Refusal> {
        let id = offer.id();
        let Some(info) = self.sessions.get(&session) else {
            return Err((ErrorCode::Refused, "the session is closing".to_owned()));
        };
        let (worker, pid) = (info.worker, info.pid);
        if info.offers.len() >= self.limits.offers_per_session {
            return Err((
                ErrorCode::Refused,
                format!(
                    "this session offers {} methods (limit {})",
                    info.offers.len(),
                    self.limits.offers_per_session
                ),
            ));
        }
        if offer.concurrency == 0 {
            return Err((
                ErrorCode::Refused,
                format!("{}: concurrency must be at least 1", offer.name),
            ));
        }
        if self.registrations >= self.limits.providers {
            return Err((
                ErrorCode::Refused,
                format!(
                    "the server holds {} registrations of providers (limit {})",
                    self.registrations, self.limits.providers
                ),
            ));
        }
        let concurrency = offer.concurrency.min(self.limits.concurrency);
        let prov = Prov {
            session,
            worker,
            pid,
            concurrency,
            in_flight: 0,
            served: 0,
            errors: 0,
            lat: Window::default(),
        };
        match self.methods.get_mut(&id) {
            Some(m) => {
                if m.name != offer.name || m.version != offer.version {
                    // Two names hashing to one id: refuse the newcomer.
                    return Err((
                        ErrorCode::Refused,
                        format!(
                            "{}@{} has the same method id {id:#018x} as the provided {}@{}",
                            offer.name, offer.version, m.name, m.version
                        ),
                    ));
                }
                if m.schema_hash != offer.schema_hash {
                    return Err((
                        ErrorCode::SchemaMismatch,
                        format!(
                            "{}@{} is offered with schema hash {:#018x}; this offer has {:#018x}",
                            offer.name, offer.version, m.schema_hash, offer.schema_hash
                        ),
                    ));
                }
                if m.idempotent != offer.idempotent {
                    return Err((
                        ErrorCode::SchemaMismatch,
                        format!(
                            "{}@{} is offered as {}idempotent; this offer says {}idempotent",
                            offer.name,
                            offer.version,
                            if m.idempotent { "" } else { "not " },
                            if offer.idempotent { "" } else { "not " },
                        ),
                    ));
                }
                if m.memoized != offer.memoized {
                    return Err((
                        ErrorCode::SchemaMismatch,
                        format!(
                            "{}@{} is offered as {}memoized; this offer says {}memoized",
                            offer.name,
                            offer.version,
                            if m.memoized { "" } else { "not " },
                            if offer.memoized { "" } else { "not " },
                        ),
                    ));
                }
                if m.providers.iter().any(|p| p.session == session) {
                    return Err((
                        ErrorCode::Refused,
                        format!(
                            "this session already offers {}@{}",
                            offer.name, offer.version
                        ),
                    ));
                }
                if m.providers.len() >= self.limits.providers_per_method {
                    return Err((
                        ErrorCode::Refused,
                        format!(
                            "{}@{} has {} providers (limit {})",
                            offer.name,
                            offer.version,
                            m.providers.len(),
                            self.limits.providers_per_method
                        ),
                    ));
                }
                m.providers.push(prov);
            }
            None => {
                if self.methods.len() >= self.limits.methods {
                    return Err((
                        ErrorCode::Refused,
                        format!(
                            "the server has {} provided methods (limit {})",
                            self.methods.len(),
                            self.limits.methods
                        ),
                    ));
                }
                self.methods.insert(
                    id,
                    ProvMethod {
                        name: offer.name.clone(),
                        version: offer.version,
                        schema_hash: offer.schema_hash,
                        idempotent: offer.idempotent,
                        memoized: offer.memoized,
                        providers: vec![prov],
                        queue: VecDeque::new(),
                        next: 0,
                        served: 0,
                        errors: 0,
                        lat: Window::default(),
                    },
                );
            }
        }
        self.registrations += 1;
        if let Some(info) = self.sessions.get_mut(&session) {
            info.offers.push(id);
        }
        Ok(())
    }

    /// Routes a call: to the provider with the fewest calls in flight
    /// below its concurrency, else into the method's queue. `payload` is
    /// the INVOKE payload (an envelope whose deadline and schema hash are
    /// filled in here, then the body); on a refusal it is handed back (for
    /// reuse).
    pub(crate) fn route(
        &mut self,
        caller: Caller,
        method: u64,
        caller_schema: u64,
        deadline: u64,
        mut payload: Buf,
        out: &mut Vec<Action>,
    ) -> Result<u64, (Refusal, Buf)> {
        let Some(m) = self.methods.get_mut(&method) else {
            return Err((
                (
                    ErrorCode::UnknownMethod,
                    format!("this server has no method with id {method:#018x}"),
                ),
                payload,
            ));
        };
        if caller_schema != 0 && caller_schema != m.schema_hash {
            return Err((
                (
                    ErrorCode::SchemaMismatch,
                    format!(
                        "{}@{}: the caller's schema hash is {caller_schema:#018x}, the providers' is {:#018x}: the two sides disagree on the method's types",
                        m.name, m.version, m.schema_hash
                    ),
                ),
                payload,
            ));
        }
        // The provider sees the call's deadline and the method's schema hash
        // (the envelope's first two words; see `ipc_rpc::wire`).
        if payload.len() >= 16 {
            payload[0..8].copy_from_slice(&deadline.to_le_bytes());
            payload[8..16].copy_from_slice(&m.schema_hash.to_le_bytes());
        }
        let state = match pick(m) {
            Some(i) => {
                let p = &mut m.providers[i];
                p.in_flight += 1;
                State::Routed {
                    worker: p.worker,
                    session: p.session,
                    delivered: false,
                }
            }
            None => {
                if m.queue.len() >= self.limits.queue_per_method
                    || self.queued >= self.limits.queue_total
                {
                    self.counts.busy += 1;
                    let msg = format!(
                        "{}@{}: every provider is at its concurrency and {} calls wait (limits: {} per method, {} in the server)",
                        m.name,
                        m.version,
                        m.queue.len(),
                        self.limits.queue_per_method,
                        self.limits.queue_total
                    );
                    return Err(((ErrorCode::Busy, msg), payload));
                }
                State::Queued
            }
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        match state {
            State::Queued => {
                m.queue.push_back(ticket);
                self.queued += 1;
            }
            State::Routed {
                worker, session, ..
            } => out.push(Action::Deliver {
                worker,
                session,
                ticket,
            }),
        }
        self.live.insert(
            ticket,
            Live {
                caller,
                method,
                deadline,
                payload,
                state,
                delivered_at: 0,
            },
        );
        if let Some(s) = self.sessions.get_mut(&caller.session) {
            s.calls += 1;
        }
        self.earliest = self.earliest.min(deadline);
        self.counts.calls += 1;
        Ok(ticket)
    }

    /// Moves call `ticket`'s deadline to `deadline` if that is later (a
    /// memoized run that another caller now waits for, with more time),
    /// while its INVOKE is not written yet: a provider keeps the deadline
    /// it was sent with (and may drop the call then), so a later one would
    /// only hold its slot and the waiters longer.
    pub(crate) fn extend_deadline(&mut self, ticket: u64, deadline: u64) {
        if let Some(l) = self.live.get_mut(&ticket)
            && deadline > l.deadline
            && !matches!(
                l.state,
                State::Routed {
                    delivered: true,
                    ..
                }
            )
        {
            l.deadline = deadline;
            if l.payload.len() >= 16 {
                // The provider sees the call's deadline in the envelope; a
                // call already delivered keeps the one it was sent with.
                l.payload[0..8].copy_from_slice(&deadline.to_le_bytes());
            }
        }
    }

    /// Whether some provider offers method `method` now.
    pub(crate) fn offers(&self, method: u64) -> bool {
        self.methods.contains_key(&method)
    }

    /// Writes call `ticket`'s INVOKE to provider `session` with `write`
    /// (given the payload, the method id and the call's caller), if the
    /// call is still routed there and not expired; a call whose `write`
    /// fails ends with its error.
    pub(crate) fn deliver(
        &mut self,
        ticket: u64,
        session: u64,
        now: u64,
        write: impl FnOnce(&[u8], u64, Caller) -> Result<(), Refusal>,
        out: &mut Vec<Action>,
    ) {
        let Some(l) = self.live.get_mut(&ticket) else {
            return;
        };
        let State::Routed {
            session: s,
            delivered: false,
            worker,
        } = l.state
        else {
            return;
        };
        if s != session {
            return;
        }
        let failure = if l.deadline <= now {
            Some((ErrorCode::DeadlineExceeded, expired(l.deadline, now)))
        } else {
            match write(&l.payload, l.method, l.caller) {
                Ok(()) => {
                    l.state = State::Routed {
                        worker,
                        session,
                        delivered: true,
                    };
                    l.delivered_at = now;
                    None
                }
                Err(e) => Some(e),
            }
        };
        if let Some((code, msg)) = failure {
            self.end(ticket, Outcome::Error(code, msg), false, out);
        }
    }

    /// A provider's answer to `ticket`: the call's caller if the call is
    /// held by `session` for method `tag` (the call ends; the caller is to
    /// be answered by the worker), else `None` (discarded).
    pub(crate) fn reply(
        &mut self,
        session: u64,
        ticket: u64,
        tag: u64,
        is_error: bool,
        now: u64,
        out: &mut Vec<Action>,
    ) -> Option<Caller> {
        let ok = self.live.get(&ticket).is_some_and(|l| {
            l.method == tag
                && matches!(l.state, State::Routed { session: s, delivered: true, .. } if s == session)
        });
        if !ok {
            self.counts.discarded += 1;
            return None;
        }
        let l = self.live.remove(&ticket)?;
        self.counts.replied += 1;
        if is_error {
            self.counts.reply_errors += 1;
        }
        let took = now.saturating_sub(l.delivered_at);
        if let Some(m) = self.methods.get_mut(&l.method) {
            m.lat.push(took);
            if is_error {
                m.errors += 1;
            } else {
                m.served += 1;
            }
            if let Some(p) = m.providers.iter_mut().find(|p| p.session == session) {
                p.in_flight = p.in_flight.saturating_sub(1);
                p.lat.push(took);
                if is_error {
                    p.errors += 1;
                } else {
                    p.served += 1;
                }
            }
        }
        self.forget_caller(l.caller.session);
        self.put_buf(l.payload);
        self.pump(l.method, out);
        Some(l.caller)
    }

    /// Ends call `ticket` with `outcome`: frees its provider's slot (and
    /// tells the provider with a CANCEL if it was delivered and `cancel`),
    /// answers the caller, sends queued calls to the freed provider.
    fn end(&mut self, ticket: u64, outcome: Outcome, cancel: bool, out: &mut Vec<Action>) {
        let Some(l) = self.live.remove(&ticket) else {
            return;
        };
        let m = self.methods.get_mut(&l.method);
        match l.state {
            State::Queued => {
                if let Some(m) = m
                    && let Some(i) = m.queue.iter().position(|&t| t == ticket)
                {
                    m.queue.remove(i);
                    self.queued -= 1;
                }
            }
            State::Routed {
                worker,
                session,
                delivered,
            } => {
                if let Some(m) = m {
                    m.errors += 1;
                    if let Some(p) = m.providers.iter_mut().find(|p| p.session == session) {
                        p.in_flight = p.in_flight.saturating_sub(1);
                        p.errors += 1;
                    }
                }
                if cancel && delivered {
                    out.push(Action::Cancel {
                        worker,
                        session,
                        ticket,
                        tag: l.method,
                    });
                }
            }
        }
        match &outcome {
            Outcome::Error(ErrorCode::DeadlineExceeded, _) => self.counts.deadline += 1,
            Outcome::Error(ErrorCode::ProviderGone, _) => self.counts.gone += 1,
            // A caller that left (counted as abandoned).
            Outcome::Error(ErrorCode::Shutdown, _) => {}
            Outcome::Error(..) => self.counts.refused += 1,
            _ => {}
        }
        self.forget_caller(l.caller.session);
        self.put_buf(l.payload);
        out.push(Action::Answer {
            caller: l.caller,
            tag: l.method,
            outcome,
        });
        self.pump(l.method, out);
    }

    fn forget_caller(&mut self, session: u64) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.calls = s.calls.saturating_sub(1);
        }
    }

    /// Sends queued calls of `method` to providers with room.
    fn pump(&mut self, method: u64, out: &mut Vec<Action>) {
        let Some(m) = self.methods.get_mut(&method) else {
            return;
        };
        while !m.queue.is_empty() {
            let Some(i) = pick(m) else {
                return;
            };
            let Some(ticket) = m.queue.pop_front() else {
                return;
            };
            self.queued -= 1;
            let Some(l) = self.live.get_mut(&ticket) else {
                continue;
            };
            let p = &mut m.providers[i];
            p.in_flight += 1;
            l.state = State::Routed {
                worker: p.worker,
                session: p.session,
                delivered: false,
            };
            out.push(Action::Deliver {
                worker: p.worker,
                session: p.session,
                ticket,
            });
        }
    }

    /// Ends every call whose deadline is at or before `now`
    /// (`DeadlineExceeded`, CANCEL to its provider); returns the next
    /// deadline (`u64::MAX`: none).
    pub(crate) fn sweep(&mut self, now: u64, out: &mut Vec<Action>) -> u64 {
        if self.earliest > now {
            return self.earliest;
        }
        let expired: Vec<(u64, u64)> = self
            .live
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(&t, l)| (t, l.deadline))
            .collect();
        for (ticket, deadline) in expired {
            self.end(
                ticket,
                Outcome::Error(ErrorCode::DeadlineExceeded, expired_msg(deadline, now)),
                true,
                out,
            );
        }
        self.earliest = self
            .live
            .values()
            .map(|l| l.deadline)
            .min()
            .unwrap_or(u64::MAX);
        self.earliest
    }

    /// Withdraws `session`'s offer of `method`; whether it had one. Its
    /// calls in flight go to another provider (idempotent method) or are
    /// answered `ProviderGone`.
    pub(crate) fn unregister(&mut self, session: u64, method: u64, out: &mut Vec<Action>) -> bool {
        let had = self
            .sessions
            .get_mut(&session)
            .and_then(|s| {
                let i = s.offers.iter().position(|&m| m == method)?;
                s.offers.swap_remove(i);
                Some(())
            })
            .is_some();
        if had {
            self.withdraw(session, method, "unregistered", true, out);
        }
        had
    }

    /// Removes provider `session` of `method` and deals with its calls
    /// (`alive`: the provider is still there and hears a CANCEL for each).
    fn withdraw(
        &mut self,
        session: u64,
        method: u64,
        why: &str,
        alive: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(m) = self.methods.get_mut(&method) else {
            return;
        };
        let Some(i) = m.providers.iter().position(|p| p.session == session) else {
            return;
        };
        let p = m.providers.swap_remove(i);
        self.registrations -= 1;
        let (name, version, idempotent) = (m.name.clone(), m.version, m.idempotent);
        let others = !m.providers.is_empty();
        // Its calls: sent again (idempotent, another provider left) or gone.
        let held: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, l)| {
                l.method == method
                    && matches!(l.state, State::Routed { session: s, .. } if s == session)
            })
            .map(|(&t, _)| t)
            .collect();
        let mut resend = Vec::new();
        for ticket in held {
            if alive
                && let Some(l) = self.live.get(&ticket)
                && let State::Routed {
                    worker,
                    delivered: true,
                    ..
                } = l.state
            {
                out.push(Action::Cancel {
                    worker,
                    session,
                    ticket,
                    tag: method,
                });
            }
            if idempotent && others {
                resend.push(ticket);
            } else {
                self.end(
                    ticket,
                    Outcome::Error(
                        ErrorCode::ProviderGone,
                        format!(
                            "the provider of {name}@{version} (pid {}) {why} before answering; the call may or may not have run",
                            p.pid
                        ),
                    ),
                    false,
                    out,
                );
            }
        }
        if let Some(m) = self.methods.get_mut(&method) {
            // Oldest first, ahead of the calls that never left the queue.
            for &ticket in resend.iter().rev() {
                if let Some(l) = self.live.get_mut(&ticket) {
                    l.state = State::Queued;
                    m.queue.push_front(ticket);
                    self.queued += 1;
                    self.counts.resent += 1;
                }
            }
        }
        let empty = self
            .methods
            .get(&method)
            .is_none_or(|m| m.providers.is_empty());
        if empty {
            // The method is gone: so are the calls waiting for it.
            let waiting: Vec<u64> = self
                .methods
                .get(&method)
                .map(|m| m.queue.iter().copied().collect())
                .unwrap_or_default();
            for ticket in waiting {
                self.end(
                    ticket,
                    Outcome::Error(
                        ErrorCode::ProviderGone,
                        format!("the last provider of {name}@{version} {why}; no provider is left"),
                    ),
                    false,
                    out,
                );
            }
            self.methods.remove(&method);
        } else {
            self.pump(method, out);
        }
    }

    /// A session closed: its offers are withdrawn (as if it died), its
    /// calls as a caller are dropped (queued) or cancelled (held by a
    /// provider).
    pub(crate) fn close_session(&mut self, session: u64, out: &mut Vec<Action>) {
        let Some(info) = self.sessions.remove(&session) else {
            return;
        };
        for method in info.offers {
            self.withdraw(session, method, "went away", false, out);
        }
        if info.calls > 0 {
            // Queued ones first: a slot freed by a held one must not go to
            // another call of the same departed caller.
            let mut mine: Vec<(bool, u64)> = self
                .live
                .iter()
                .filter(|(_, l)| l.caller.session == session)
                .map(|(&t, l)| (l.state != State::Queued, t))
                .collect();
            mine.sort_unstable();
            let mine = mine.into_iter().map(|(_, t)| t);
            let mut answers = Vec::new();
            for ticket in mine {
                self.counts.abandoned += 1;
                self.end(
                    ticket,
                    Outcome::Error(ErrorCode::Shutdown, String::new()),
                    true,
                    &mut answers,
                );
            }
            // Nobody to answer: keep the rest (cancels, deliveries).
            out.extend(answers.into_iter().filter(
                |a| !matches!(a, Action::Answer { caller, .. } if caller.session == session),
            ));
        }
    }

    /// The provided methods, for `cradle.methods`.
    pub(crate) fn list(&self) -> Vec<MethodInfo> {
        let mut v: Vec<MethodInfo> = self
            .methods
            .iter()
            .map(|(&id, m)| MethodInfo {
                name: m.name.clone(),
                version: m.version,
                id,
                origin: Origin::Provided as u8,
                schema_hash: m.schema_hash,
                queued: m.queue.len() as u32,
                served: m.served,
                errors: m.errors,
                p50_ns: m.lat.p50(),
                providers: m
                    .providers
                    .iter()
                    .map(|p| ProviderInfo {
                        session: p.session,
                        pid: p.pid,
                        concurrency: p.concurrency,
                        in_flight: p.in_flight,
                        served: p.served,
                        errors: p.errors,
                        p50_ns: p.lat.p50(),
                    })
                    .collect(),
            })
            .collect();
        v.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        v
    }

    /// Whether any method is provided.
    pub(crate) fn any(&self) -> bool {
        !self.methods.is_empty()
    }

    /// Figures now, for `cradle.stats`.
    pub(crate) fn stats(&self) -> ProvidedStats {
        let c = &self.counts;
        ProvidedStats {
            methods: self.methods.len() as u64,
            providers: self.registrations as u64,
            queued: self.queued as u64,
            in_flight: (self.live.len() - self.queued) as u64,
            calls: c.calls,
            replied: c.replied,
            reply_errors: c.reply_errors,
            busy: c.busy,
            deadline_exceeded: c.deadline,
            provider_gone: c.gone,
            refused: c.refused,
            resent: c.resent,
            discarded: c.discarded,
            abandoned: c.abandoned,
        }
    }
}

/// The provider of `m` with the fewest calls in flight below its
/// concurrency (ties: round robin from `m.next`).
fn pick(m: &mut ProvMethod) -> Option<usize> {
    let n = m.providers.len();
    let mut best: Option<(usize, u32)> = None;
    for k in 0..n {
        let i = (m.next + k) % n;
        let p = &m.providers[i];
        if p.in_flight < p.concurrency && best.is_none_or(|(_, f)| p.in_flight < f) {
            best = Some((i, p.in_flight));
        }
    }
    let (i, _) = best?;
    m.next = (i + 1) % n;
    Some(i)
}

/// The message of a call that expired.
pub(crate) fn expired_msg(deadline: u64, now: u64) -> String {
    format!(
        "the call's deadline passed {:.3} ms ago before a provider answered",
        now.saturating_sub(deadline) as f64 / 1e6
    )
}

fn expired(deadline: u64, now: u64) -> String {
    format!(
        "the call's deadline passed {:.3} ms ago before it could be delivered to a provider",
        now.saturating_sub(deadline) as f64 / 1e6
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_rpc::provide::BYTES_SCHEMA;

    const M: &str = "t.m";

    fn offer(concurrency: u32, idempotent: bool) -> Offer {
        Offer {
            name: M.into(),
            version: 1,
            schema_hash: BYTES_SCHEMA,
            concurrency,
            idempotent,
            memoized: false,
        }
    }

    fn id() -> u64 {
        ipc_rpc::method_id(M, 1)
    }

    fn payload() -> Buf {
        let mut b = Buf::new();
        b.extend_from_slice(&[0u8; 32]);
        b
    }

    fn caller(n: u64) -> Caller {
        Caller {
            worker: 0,
            session: 100,
            request_id: n,
        }
    }

    /// A table with providers 1 and 2 (concurrency `c`) and caller 100.
    fn table(c: u32, idempotent: bool) -> Table {
        let mut t = Table::new(Limits {
            queue_per_method: 3,
            ..Limits::default()
        });
        for s in [1, 2, 100] {
            t.open_session(s, 0, 1000 + s as u32);
        }
        t.register(1, &offer(c, idempotent)).unwrap();
        t.register(2, &offer(c, idempotent)).unwrap();
        t
    }

    fn delivered(out: &[Action]) -> Vec<(u64, u64)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Deliver {
                    session, ticket, ..
                } => Some((*session, *ticket)),
                _ => None,
            })
            .collect()
    }

    fn deliver_all(t: &mut Table, out: &mut Vec<Action>, now: u64) {
        for (s, ticket) in delivered(out) {
            t.deliver(ticket, s, now, |_, _, _| Ok(()), &mut Vec::new());
        }
        out.clear();
    }

    #[test]
    fn fewest_in_flight_then_queue_then_busy() {
        let mut t = table(1, false);
        let mut out = Vec::new();
        for n in 0..2 {
            t.route(caller(n), id(), 0, u64::MAX, payload(), &mut out)
                .unwrap();
        }
        let d = delivered(&out);
        assert_eq!(d.len(), 2);
        assert_ne!(d[0].0, d[1].0, "one each");
        for n in 2..5 {
            t.route(caller(n), id(), 0, u64::MAX, payload(), &mut out)
                .unwrap();
        }
        assert_eq!(t.stats().queued, 3);
        let e = t
            .route(caller(9), id(), 0, u64::MAX, payload(), &mut out)
            .unwrap_err();
        assert_eq!(e.0.0, ErrorCode::Busy);
        let e = t
            .route(caller(9), id(), 7, u64::MAX, payload(), &mut out)
            .unwrap_err();
        assert_eq!(e.0.0, ErrorCode::SchemaMismatch);
        deliver_all(&mut t, &mut out, 0);
        // A reply frees a slot, which the oldest queued call takes.
        let (s, ticket) = d[0];
        assert_eq!(
            t.reply(s, ticket, id(), false, 5, &mut out),
            Some(caller(0))
        );
        assert_eq!(delivered(&out), vec![(s, 3)]);
        // A second reply to the same invocation, or from another session,
        // or for another method, is discarded.
        assert_eq!(t.reply(s, ticket, id(), false, 5, &mut out), None);
        assert_eq!(t.reply(d[1].0, 3, id(), false, 5, &mut out), None);
        assert_eq!(t.reply(d[1].0, d[1].1, 77, false, 5, &mut out), None);
        assert_eq!(t.stats().discarded, 3);
    }

    #[test]
    fn deadlines_cancel_delivered_calls_and_drop_queued_ones() {
        let mut t = table(1, false);
        let mut out = Vec::new();
        for n in 0..3 {
            t.route(caller(n), id(), 0, 1000 + n, payload(), &mut out)
                .unwrap();
        }
        deliver_all(&mut t, &mut out, 10);
        assert_eq!(t.sweep(999, &mut out), 1000);
        assert!(out.is_empty());
        t.sweep(1002, &mut out);
        let cancels = out
            .iter()
            .filter(|a| matches!(a, Action::Cancel { .. }))
            .count();
        let answers = out
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Answer {
                        outcome: Outcome::Error(ErrorCode::DeadlineExceeded, _),
                        ..
                    }
                )
            })
            .count();
        assert_eq!((cancels, answers), (2, 3));
        let st = t.stats();
        assert_eq!((st.queued, st.in_flight, st.deadline_exceeded), (0, 0, 3));
        assert_eq!(t.earliest, u64::MAX);
    }

    #[test]
    fn an_idempotent_call_goes_to_the_other_provider() {
        let mut t = table(1, true);
        let mut out = Vec::new();
        t.route(caller(0), id(), 0, u64::MAX, payload(), &mut out)
            .unwrap();
        let (s, ticket) = delivered(&out)[0];
        deliver_all(&mut t, &mut out, 0);
        t.close_session(s, &mut out);
        let other = 3 - s;
        assert_eq!(delivered(&out), vec![(other, ticket)]);
        assert_eq!(t.stats().resent, 1);
        deliver_all(&mut t, &mut out, 0);
        // The last provider goes: ProviderGone, the method is gone.
        t.close_session(other, &mut out);
        assert!(matches!(
            &out[..],
            [Action::Answer {
                outcome: Outcome::Error(ErrorCode::ProviderGone, _),
                ..
            }]
        ));
        assert!(t.list().is_empty());
        assert!(!t.any());
    }

    #[test]
    fn a_caller_that_leaves_cancels_its_calls() {
        let mut t = table(1, false);
        let mut out = Vec::new();
        for n in 0..4 {
            t.route(caller(n), id(), 0, u64::MAX, payload(), &mut out)
                .unwrap();
        }
        deliver_all(&mut t, &mut out, 0);
        t.close_session(100, &mut out);
        assert!(
            out.iter().all(|a| matches!(a, Action::Cancel { .. })),
            "{out:?}"
        );
        assert_eq!(out.len(), 2);
        let st = t.stats();
        assert_eq!((st.queued, st.in_flight, st.abandoned), (0, 0, 4));
        let m = &t.list()[0];
        assert!(m.providers.iter().all(|p| p.in_flight == 0));
    }
}
