//! Memoized methods offered by providers (`docs/architecture.md` §14,
//! "Provided methods, memoized").
//!
//! A provider declares a method memoized in its `Offer`. The server does
//! not know the method's types, so the key is made from what it can see:
//! the method's `name@version`, its schema hash, the blobs the request's
//! envelope lists (by content digest) and the request body's bytes as the
//! caller encoded them (CRADLE's clients encode with zeroed padding, so
//! equal values give equal bytes; a caller that encodes otherwise only
//! misses, it cannot reach another value's entry).
//!
//! * On the worker, [`Memo::provided_call`] answers a hit from memory
//!   (every digest known) or says where the call goes: the offload pool
//!   (a miss, a digest to compute, an entry on disk) or the plain route
//!   (not memoized, or bypassed).
//! * On the pool, the call looks up both tiers, then joins the run in
//!   flight for its key or becomes one: the request is routed to a
//!   provider with the memo itself as the caller ([`MEMO_SESSION`]), so a
//!   run belongs to no caller: a caller that leaves does not end it, and
//!   its result is stored all the same. The run's deadline is the latest
//!   of its waiters'.
//! * When the provider answers (or the call ends otherwise: deadline,
//!   provider gone, a refusal), the worker that sees the end hands it to
//!   [`Memo::provided_done`]; a reply is stored and shared on the pool (it
//!   may digest large result blobs), every waiter gets the answer; a
//!   failure is not stored, every waiter gets the error.

use super::{KeyFn, MEMO_SESSION, Memo, MemoMethod, Step, Waiter, blob_failure};
use crate::blobs::BlobCtx;
use crate::link::Job;
use crate::methods::{Answer, OffloadFn};
use crate::provided::{Action, Buf, Caller, Outcome, Providers};
use crate::reply::{Queued, Replier, encode_error};
use ipc_core::ring::FrameMeta;
use ipc_core::sync::Ordering;
use ipc_rpc::ErrorCode;
use ipc_rpc::blob::BlobHandle;
use ipc_rpc::memo::MemoMethodStats;
use ipc_rpc::provide::Offer;
use ipc_rpc::rkyv::ser::allocator::Arena;
use ipc_rpc::rkyv::util::AlignedVec;
use ipc_rpc::wire::{self, EnvelopeRef};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

/// Memoized provided methods the memo remembers at most (a method stays
/// after its providers leave, so that its entries are still served).
const MAX_PROVIDED: usize = 4096;

/// Bytes before the handles in a canonical request: schema hash, count.
const CANON_HEAD: usize = 16;

/// Runs of provided methods routed at once, at most (each holds leases on
/// up to 64 argument blobs under [`MEMO_SESSION`] while it lasts); beyond,
/// a call that would start one is answered `Busy`.
const MAX_RUNS: usize = 256;

/// The longest a run may last, whatever its waiters' deadlines (a run
/// belongs to no caller whose departure would end it).
const MAX_RUN_NS: u64 = 10 * 60 * 1_000_000_000;

/// A provided run in flight.
#[derive(Debug)]
pub(crate) struct Run {
    method: Arc<MemoMethod>,
    key: super::MemoKey,
    /// Argument blobs leased to [`MEMO_SESSION`] for the run (a caller
    /// that leaves does not take them from the provider).
    args: Vec<u64>,
    started: Instant,
}

/// What the memo needs to route runs: set when the server starts.
pub(crate) struct Routing {
    providers: Arc<Providers>,
    /// The largest frame payload a session's response ring takes.
    max_payload: usize,
    /// The offload handler of provided memoized calls.
    handler: OffloadFn,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing").finish_non_exhaustive()
    }
}

impl Routing {
    pub(super) fn new(memo: &Arc<Memo>, providers: Arc<Providers>, max_payload: usize) -> Self {
        let weak: Weak<Memo> = Arc::downgrade(memo);
        let handler: OffloadFn =
            Arc::new(
                move |bytes, meta, ctx, arena, max, worker| match weak.upgrade() {
                    Some(memo) => memo.offloaded(bytes, meta, ctx, arena, max, worker),
                    None => Answer::Now(encode_error(
                        meta,
                        ErrorCode::Shutdown,
                        "the server is stopping".to_owned(),
                        arena,
                        max,
                    )),
                },
            );
        Self {
            providers,
            max_payload,
            handler,
        }
    }
}

/// What a worker does with a request for a provided method.
pub(crate) enum ProvidedCall {
    /// Not memoized (or the caller bypasses the memo): route it as usual.
    Route,
    /// Answered now (a hit from memory, or a refusal).
    Answered,
    /// To the offload pool with this handler (and the whole payload).
    Offload(OffloadFn),
}

/// The canonical form of a provided request: schema hash, blob count, the
/// handles the envelope lists, the body. [`super::key::memo_key`] replaces
/// each handle by its blob's digest and length.
fn canonical_request(schema_hash: u64, env: Option<EnvelopeRef<'_>>, body: &[u8]) -> Vec<u8> {
    let n = env.map_or(0, |h| h.blob_count());
    let mut v = Vec::with_capacity(CANON_HEAD + n * super::key::HANDLE_BYTES + body.len());
    v.extend_from_slice(&schema_hash.to_le_bytes());
    v.extend_from_slice(&(n as u64).to_le_bytes());
    if let Some(h) = env {
        for b in h.blobs() {
            v.extend_from_slice(bytemuck::bytes_of(&b));
        }
    }
    v.extend_from_slice(body);
    v
}

/// The keyer of a provided method: the canonical request is the key's
/// bytes; the handles are read back from it.
fn provided_keyer() -> KeyFn {
    Box::new(|bytes| {
        let hb = super::key::HANDLE_BYTES;
        let n = bytes
            .get(8..CANON_HEAD)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0xff; 8])))
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= wire::MAX_ENVELOPE_BLOBS && CANON_HEAD + n * hb <= bytes.len())
            .ok_or_else(|| "a canonical provided request is cut short".to_owned())?;
        let handles = (0..n)
            .map(|i| {
                let at = CANON_HEAD + i * hb;
                bytemuck::pod_read_unaligned::<BlobHandle>(&bytes[at..at + hb])
            })
            .collect();
        Ok((bytes.to_vec(), handles))
    })
}

impl MemoMethod {
    /// A memoized method offered by providers.
    fn provided(offer: &Offer) -> Self {
        Self {
            id: offer.id(),
            name: Cow::Owned(offer.name.clone()),
            version: offer.version,
            schema_hash: offer.schema_hash,
            label: format!("{}@{}", offer.name, offer.version),
            keyer: provided_keyer(),
            run: None,
            stats: Mutex::new(MemoMethodStats::default()),
        }
    }
}

/// The answer frame of a provided method: always with an envelope (which
/// may list no blob).
fn answer_meta(req: FrameMeta) -> FrameMeta {
    FrameMeta {
        kind: wire::RESPONSE,
        flags: wire::ENVELOPE,
        ..req
    }
}

/// A provider's reply in the form entries keep and callers get: an
/// envelope (deadline and schema hash zero) and the body; and the result
/// blobs it lists.
fn envelope_form(flags: u16, payload: &[u8]) -> Result<(Vec<u8>, Vec<BlobHandle>), String> {
    if flags & wire::ENVELOPE != 0 {
        let (head, _) = wire::split_envelope(payload).map_err(|e| e.to_string())?;
        let mut v = payload.to_vec();
        v[..16].fill(0);
        return Ok((v, head.blobs().collect()));
    }
    let mut v = vec![0u8; wire::body_offset(0)];
    wire::write_envelope(&mut v, 0, 0, &[]).map_err(|e| e.to_string())?;
    v.extend_from_slice(payload);
    Ok((v, Vec::new()))
}

/// The INVOKE payload of a call: an envelope (`deadline`, `schema_hash`,
/// the blobs `env` lists, none without one), then `body`.
fn invoke_payload(
    env: Option<EnvelopeRef<'_>>,
    body: &[u8],
    deadline: u64,
    schema_hash: u64,
) -> Buf {
    let blobs: Vec<BlobHandle> = env.map(|h| h.blobs().collect()).unwrap_or_default();
    let mut buf = Buf::with_capacity(wire::body_offset(blobs.len()) + body.len());
    buf.resize(wire::body_offset(blobs.len()), 0);
    // Cannot fail: at most the envelope's blobs, in a buffer of its size.
    let _ = wire::write_envelope(&mut buf, deadline, schema_hash, &blobs);
    buf.extend_from_slice(body);
    buf
}

fn aligned(bytes: &[u8]) -> AlignedVec<16> {
    let mut v = AlignedVec::<16>::with_capacity(bytes.len());
    v.extend_from_slice(bytes);
    v
}

impl Memo {
    fn provided_table(&self) -> MutexGuard<'_, HashMap<u64, Arc<MemoMethod>>> {
        self.provided.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn runs(&self) -> MutexGuard<'_, HashMap<u64, Run>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The memoized provided methods, by id.
    pub(super) fn provided_methods(&self) -> HashMap<u64, Arc<MemoMethod>> {
        self.provided_table().clone()
    }

    /// A provider's offer was accepted: remembers the method as memoized
    /// (or forgets it, if this offer is not: no provider of the other kind
    /// is left, the table refuses mixed offers).
    pub(crate) fn offer_accepted(&self, offer: &Offer) {
        let id = offer.id();
        // Methods offered now (never forgotten to make room).
        let live: Vec<u64> = match self.routing.get() {
            Some(r) => {
                let t = r.providers.lock();
                let ids = self
                    .provided_table()
                    .keys()
                    .copied()
                    .filter(|&k| t.offers(k))
                    .collect();
                r.providers.unlock(t);
                ids
            }
            None => Vec::new(),
        };
        let mut p = self.provided_table();
        if !offer.memoized {
            if p.remove(&id).is_some() {
                drop(p);
                self.forget_raw_keys(id);
            }
            return;
        }
        if p.get(&id)
            .is_some_and(|m| m.schema_hash == offer.schema_hash)
        {
            return;
        }
        if p.len() >= MAX_PROVIDED && !p.contains_key(&id) {
            // Forget one remembered method (its entries stay in the cache
            // and are reachable again when it is offered again).
            // The table offers at most 1,024 methods, fewer than this
            // holds: one that is not offered now exists.
            if let Some(old) = p.keys().copied().find(|k| !live.contains(k)) {
                p.remove(&old);
                drop(p);
                self.forget_raw_keys(old);
                p = self.provided_table();
            }
        }
        p.insert(id, Arc::new(MemoMethod::provided(offer)));
        // Relaxed: a hint that lets workers skip the lock while no method
        // is memoized; a worker that sees it late routes one call plainly.
        self.any_provided.store(true, Ordering::Relaxed);
    }

    fn provided_method(&self, id: u64) -> Option<Arc<MemoMethod>> {
        // Relaxed: see `offer_accepted`.
        if !self.any_provided.load(Ordering::Relaxed) {
            return None;
        }
        self.provided_table().get(&id).cloned()
    }

    /// On the worker: a request for a method the registry does not have.
    /// A memoized provided method's hit in memory is answered here.
    pub(crate) fn provided_call(
        &self,
        meta: FrameMeta,
        env: Option<EnvelopeRef<'_>>,
        body: &[u8],
        session: u64,
        out: &mut Replier<'_>,
    ) -> ProvidedCall {
        let Some(m) = self.provided_method(meta.tag) else {
            return ProvidedCall::Route;
        };
        let Some(routing) = self.routing.get() else {
            return ProvidedCall::Route;
        };
        if meta.flags & wire::MEMO_BYPASS != 0 {
            m.stats().bypassed += 1;
            return ProvidedCall::Route;
        }
        if let Some(h) = env
            && h.schema_hash != 0
            && h.schema_hash != m.schema_hash
        {
            out.error(
                meta,
                ErrorCode::SchemaMismatch,
                schema_mismatch(&m, h.schema_hash),
            );
            return ProvidedCall::Answered;
        }
        if meta.flags & wire::MEMO_REFRESH == 0 {
            let canon = canonical_request(m.schema_hash, env, body);
            if let Ok(Some(key)) = self.key_of(&m, &canon, false)
                && self.answer_here(&m, &key, session, answer_meta(meta), out)
            {
                return ProvidedCall::Answered;
            }
        }
        ProvidedCall::Offload(Arc::clone(&routing.handler))
    }

    /// On the pool: a call of a memoized provided method (`payload` is the
    /// caller's whole payload, envelope included).
    fn offloaded(
        self: &Arc<Self>,
        payload: &[u8],
        meta: FrameMeta,
        ctx: &BlobCtx<'_>,
        arena: &mut Arena,
        max: usize,
        worker: usize,
    ) -> Answer {
        let fail = |(code, msg): (ErrorCode, String), arena: &mut Arena| {
            Answer::Now(encode_error(meta, code, msg, arena, max))
        };
        let Some(routing) = self.routing.get() else {
            return fail(
                (ErrorCode::Shutdown, "the server is stopping".into()),
                arena,
            );
        };
        let split = if meta.flags & wire::ENVELOPE != 0 {
            match wire::split_envelope(payload) {
                Ok((h, b)) => (Some(h), b),
                Err(e) => {
                    return fail(
                        (ErrorCode::Malformed, format!("the request's envelope: {e}")),
                        arena,
                    );
                }
            }
        } else {
            (None, payload)
        };
        let (env, body) = split;
        let now = wire::monotonic_ns();
        let deadline = match env {
            Some(h) if h.deadline_ns != 0 => h.deadline_ns,
            _ => now.saturating_add(routing.providers.default_timeout_ns()),
        };
        let caller = Caller {
            worker,
            session: ctx.session,
            request_id: meta.request_id,
        };
        let invoke_len = wire::body_offset(env.map_or(0, |h| h.blob_count())) + body.len();
        if invoke_len > routing.max_payload.min(max) {
            return fail(
                (
                    ErrorCode::Malformed,
                    format!(
                        "the request with an envelope is {invoke_len} bytes, more than a frame \
                         holds ({}): pass the data as a blob",
                        routing.max_payload.min(max)
                    ),
                ),
                arena,
            );
        }
        if !self.store.session_alive(ctx.session) {
            // Its caller left while the call waited for the pool.
            return Answer::Now(None);
        }
        let Some(m) = self.provided_method(meta.tag) else {
            // No longer memoized (a provider of the plain kind took over).
            return self.route_plain(routing, caller, meta.tag, env, body, deadline, arena, max);
        };
        // A run belongs to no caller: its time is bounded here.
        let deadline = deadline.min(now.saturating_add(MAX_RUN_NS));
        if deadline <= now {
            return fail(
                (
                    ErrorCode::DeadlineExceeded,
                    format!(
                        "the call's deadline had passed {:.3} ms before the server read it",
                        (now - deadline) as f64 / 1e6
                    ),
                ),
                arena,
            );
        }
        let canon = canonical_request(m.schema_hash, env, body);
        let me = Waiter {
            worker,
            session: ctx.session,
            meta,
            max_payload: max,
        };
        let key = match self.step(&m, &canon, me, deadline, answer_meta, true, arena) {
            Step::Done(answer) => return answer,
            Step::Joined(ticket) => {
                tracing::trace!(method = %m.label, session = ctx.session, request_id = meta.request_id, "joined a memoized run");
                if ticket != 0 {
                    let mut t = routing.providers.lock();
                    t.extend_deadline(ticket, deadline);
                    routing.providers.unlock(t);
                }
                return Answer::Later;
            }
            Step::Run(key) => key,
        };
        self.start_run(routing, m, key, env, body, caller, deadline, arena);
        Answer::Later
    }

    /// Routes a run of `m` for the flight under `key` (whose first waiter
    /// is `caller`), with the memo as its caller.
    #[allow(clippy::too_many_arguments)]
    fn start_run(
        &self,
        routing: &Routing,
        m: Arc<MemoMethod>,
        key: super::MemoKey,
        env: Option<EnvelopeRef<'_>>,
        body: &[u8],
        caller: Caller,
        deadline: u64,
        arena: &mut Arena,
    ) {
        if self.runs().len() >= MAX_RUNS {
            return self.fail_flight(
                &m,
                &key,
                ErrorCode::Busy,
                format!("{MAX_RUNS} memoized runs of provided methods are in flight in the server"),
                arena,
            );
        }
        let mut args = Vec::new();
        if let Some(h) = env {
            for b in h.blobs() {
                if let Err(e) = self.store.acquire(MEMO_SESSION, &b, false) {
                    self.store.release(MEMO_SESSION, &args, &[]);
                    let (code, msg) = blob_failure(e);
                    self.fail_flight(&m, &key, code, msg, arena);
                    return;
                }
                args.push(b.id);
            }
        }
        // Relaxed: a unique counter; nothing is published through it.
        let run_id = self.next_run.fetch_add(1, Ordering::Relaxed);
        if let Some(f) = self.flights().get_mut(&key.digest) {
            f.run = run_id;
        }
        // Known before the call is routed: its end may be seen at once.
        self.runs().insert(
            run_id,
            Run {
                method: Arc::clone(&m),
                key: key.clone(),
                args,
                started: Instant::now(),
            },
        );
        let buf = invoke_payload(env, body, deadline, m.schema_hash);
        let memo_caller = Caller {
            worker: caller.worker,
            session: MEMO_SESSION,
            request_id: run_id,
        };
        let mut actions = Vec::new();
        let mut t = routing.providers.lock();
        let routed = t.route(
            memo_caller,
            m.id,
            m.schema_hash,
            deadline,
            buf,
            &mut actions,
        );
        routing.providers.unlock(t);
        match routed {
            Ok(ticket) => {
                tracing::trace!(method = %m.label, run = run_id, invocation = ticket, key = %key.name, "memoized run routed");
                // Still this run's flight (the run may have ended already,
                // and another begun for the key): waiters that joined
                // before the ticket was known may have later deadlines.
                let later = match self.flights().get_mut(&key.digest) {
                    Some(f) if f.run == run_id => {
                        f.ticket = ticket;
                        f.deadline
                    }
                    _ => 0,
                };
                if later > deadline {
                    let mut t = routing.providers.lock();
                    t.extend_deadline(ticket, later);
                    routing.providers.unlock(t);
                }
                self.post(routing, caller.worker, actions);
            }
            Err(((code, msg), _)) => {
                tracing::trace!(method = %m.label, run = run_id, error = %msg, "memoized run not routed");
                if let Some(run) = self.runs().remove(&run_id) {
                    self.store.release(MEMO_SESSION, &run.args, &[]);
                }
                self.fail_flight(&m, &key, code, msg, arena);
            }
        }
    }

    /// Routes a call with its own caller (no memo), as the worker would.
    #[allow(clippy::too_many_arguments)]
    fn route_plain(
        &self,
        routing: &Routing,
        caller: Caller,
        method: u64,
        env: Option<EnvelopeRef<'_>>,
        body: &[u8],
        deadline: u64,
        arena: &mut Arena,
        max: usize,
    ) -> Answer {
        let meta = FrameMeta {
            request_id: caller.request_id,
            tag: method,
            kind: wire::REQUEST,
            flags: wire::NO_FLAGS,
        };
        let schema = env.map_or(0, |h| h.schema_hash);
        let buf = invoke_payload(env, body, deadline, schema);
        let mut actions = Vec::new();
        let mut t = routing.providers.lock();
        let routed = t.route(caller, method, schema, deadline, buf, &mut actions);
        routing.providers.unlock(t);
        match routed {
            // Answered through the caller's worker, like any routed call.
            Ok(_) => {
                self.post(routing, caller.worker, actions);
                Answer::Later
            }
            Err(((code, msg), _)) => Answer::Now(encode_error(meta, code, msg, arena, max)),
        }
    }

    /// Leaves `actions` in their workers' inboxes and wakes those workers,
    /// and the caller's worker: a call routed here may have gone to a
    /// queue (no action), and that worker's sleep must not outlast the
    /// call's deadline (it reads the table's earliest deadline on waking).
    fn post(&self, routing: &Routing, caller_worker: usize, actions: Vec<Action>) {
        let links = self.links.get();
        for a in actions {
            let w = a.worker();
            routing.providers.post(a);
            if let Some(link) = links.and_then(|l| l.get(w)) {
                link.wake();
            }
        }
        if let Some(link) = links.and_then(|l| l.get(caller_worker)) {
            link.wake();
        }
    }

    /// Ends the flight under `key` with an error for every waiter.
    fn fail_flight(
        &self,
        m: &MemoMethod,
        key: &super::MemoKey,
        code: ErrorCode,
        msg: String,
        arena: &mut Arena,
    ) {
        m.stats().errors += 1;
        let waiters = self
            .flights()
            .remove(&key.digest)
            .map(|f| f.waiters)
            .unwrap_or_default();
        for w in waiters {
            let a = encode_error(w.meta, code, msg.clone(), arena, w.max_payload);
            self.deliver(&w, a);
        }
    }

    /// On a worker: run `run_id` ended with `outcome`. A reply is stored
    /// and shared on the offload pool (`jobs`; here if the pool is gone),
    /// a failure is answered here.
    pub(crate) fn provided_done(
        self: &Arc<Self>,
        run_id: u64,
        outcome: Outcome,
        jobs: &Sender<Job>,
        worker: usize,
    ) {
        if !matches!(outcome, Outcome::Reply { .. }) {
            return self.complete_run(run_id, outcome, &mut Arena::new());
        }
        let cell = Mutex::new(Some(outcome));
        let weak = Arc::downgrade(self);
        let handler: OffloadFn = Arc::new(move |_, _, _, arena, _, _| {
            let taken = cell.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let (Some(memo), Some(outcome)) = (weak.upgrade(), taken) {
                memo.complete_run(run_id, outcome, arena);
            }
            Answer::Later
        });
        let job = Job {
            worker,
            session: MEMO_SESSION,
            meta: FrameMeta {
                request_id: run_id,
                tag: 0,
                kind: wire::REQUEST,
                flags: wire::NO_FLAGS,
            },
            bytes: AlignedVec::new(),
            handler,
            max_payload: 0,
        };
        if let Err(std::sync::mpsc::SendError(job)) = jobs.send(job) {
            (job.handler)(
                &[],
                job.meta,
                &BlobCtx {
                    store: &self.store,
                    session: MEMO_SESSION,
                },
                &mut Arena::new(),
                0,
                worker,
            );
        }
    }

    /// Ends run `run_id`: stores a reply and answers every waiter.
    fn complete_run(&self, run_id: u64, outcome: Outcome, arena: &mut Arena) {
        let Some(run) = self.runs().remove(&run_id) else {
            // Not a run (never happens): give back what the reply leased.
            if let Outcome::Reply { flags, payload } = &outcome
                && let Ok((_, results)) = envelope_form(*flags, payload)
            {
                let ids: Vec<u64> = results.iter().map(|h| h.id).collect();
                self.store.release(MEMO_SESSION, &ids, &[]);
            }
            return;
        };
        self.store.release(MEMO_SESSION, &run.args, &[]);
        let m = &run.method;
        let took = run.started.elapsed().as_nanos() as u64;
        tracing::trace!(method = %m.label, run = run_id, ok = matches!(outcome, Outcome::Reply { .. }), "memoized run ended");
        {
            let mut st = m.stats();
            st.misses += 1;
            st.run_ns = st.run_ns.saturating_add(took);
        }
        let (flags, payload) = match outcome {
            Outcome::Reply { flags, payload } => (flags, payload),
            Outcome::ErrorFrame(bytes) => {
                m.stats().errors += 1;
                for w in self.take_waiters(&run.key) {
                    let meta = FrameMeta {
                        kind: wire::ERROR,
                        flags: wire::NO_FLAGS,
                        ..w.meta
                    };
                    self.deliver(&w, Some((meta, aligned(&bytes))));
                }
                return;
            }
            Outcome::Error(code, msg) => {
                return self.fail_flight(m, &run.key, code, msg, arena);
            }
        };
        let (resp, results) = match envelope_form(flags, &payload) {
            Ok(x) => x,
            Err(e) => {
                return self.fail_flight(
                    m,
                    &run.key,
                    ErrorCode::Malformed,
                    format!("the provider's reply: {e}"),
                    arena,
                );
            }
        };
        if resp.len() > self.routing.get().map_or(0, |r| r.max_payload) {
            // With its envelope the answer outgrew a frame: every waiter
            // gets `ResponseTooLarge` (below), and nothing is stored.
            tracing::warn!(method = %m.label, bytes = resp.len(), "memoized answer larger than a frame: not stored");
        } else if let Err(e) = self.store_entry(&run.key, &resp, &results, took) {
            tracing::warn!(method = %m.label, error = %e, "memo entry not stored; the answer is sent all the same");
        }
        for (i, w) in self.take_waiters(&run.key).iter().enumerate() {
            // The first waiter's call made the run: a miss, not a hit.
            let a = self.share_provided(m, &resp, &results, w, took, i > 0, arena);
            self.deliver(w, a);
        }
        // The entry pins the results; the waiters hold their own leases.
        let ids: Vec<u64> = results.iter().map(|h| h.id).collect();
        self.store.release(MEMO_SESSION, &ids, &[]);
    }

    fn take_waiters(&self, key: &super::MemoKey) -> Vec<Waiter> {
        self.flights()
            .remove(&key.digest)
            .map(|f| f.waiters)
            .unwrap_or_default()
    }

    /// A waiter's answer to a provided run: the reply, its results leased
    /// to the waiter.
    #[allow(clippy::too_many_arguments)]
    fn share_provided(
        &self,
        m: &MemoMethod,
        resp: &[u8],
        results: &[BlobHandle],
        w: &Waiter,
        run_ns: u64,
        hit: bool,
        arena: &mut Arena,
    ) -> Option<Queued> {
        if resp.len() > w.max_payload {
            return encode_error(
                w.meta,
                ErrorCode::ResponseTooLarge,
                format!(
                    "the answer of {} is {} bytes, more than this caller's ring takes ({})",
                    m.label,
                    resp.len(),
                    w.max_payload
                ),
                arena,
                w.max_payload,
            );
        }
        let mut leased = Vec::with_capacity(results.len());
        for h in results {
            match self.store.lease_blob(w.session, h.id) {
                Ok(_) => leased.push(h.id),
                Err(e) => {
                    self.store.release(w.session, &leased, &[]);
                    return encode_error(w.meta, e.code, e.message, arena, w.max_payload);
                }
            }
        }
        if hit {
            m.count_hit(run_ns);
        }
        Some((answer_meta(w.meta), aligned(resp)))
    }
}

fn schema_mismatch(m: &MemoMethod, caller: u64) -> String {
    format!(
        "{}: the caller's schema hash is {caller:#018x}, the providers' is {:#018x}: the two sides disagree on the method's types",
        m.label, m.schema_hash
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: u64) -> BlobHandle {
        BlobHandle {
            epoch: 1,
            id,
            segment: id,
            offset: 0,
            len: 4096,
        }
    }

    #[test]
    fn the_canonical_request_lists_the_handles_the_keyer_reads_back() {
        let mut env = vec![0u8; wire::body_offset(2)];
        wire::write_envelope(&mut env, 123, 7, &[handle(1), handle(2)]).unwrap();
        env.extend_from_slice(b"body");
        let (head, body) = wire::split_envelope(&env).unwrap();
        let canon = canonical_request(7, Some(head), body);
        let (bytes, handles) = provided_keyer()(&canon).unwrap();
        assert_eq!(bytes, canon);
        assert_eq!(handles, vec![handle(1), handle(2)]);
        // The deadline is not part of it; the schema hash is.
        let mut other = vec![0u8; wire::body_offset(2)];
        wire::write_envelope(&mut other, 999, 7, &[handle(1), handle(2)]).unwrap();
        other.extend_from_slice(b"body");
        let (h2, b2) = wire::split_envelope(&other).unwrap();
        assert_eq!(canonical_request(7, Some(h2), b2), canon);
        assert_ne!(canonical_request(8, Some(h2), b2), canon);
        // No envelope: no handles.
        let plain = canonical_request(7, None, b"body");
        assert_eq!(provided_keyer()(&plain).unwrap().1, vec![]);
        // A count past the bytes is refused, not read out of bounds.
        let mut bad = plain.clone();
        bad[8] = 5;
        assert!(provided_keyer()(&bad).is_err());
    }

    #[test]
    fn replies_are_kept_with_an_envelope() {
        let (v, r) = envelope_form(wire::NO_FLAGS, b"xyz").unwrap();
        assert!(r.is_empty());
        let (head, body) = wire::split_envelope(&v).unwrap();
        assert_eq!((head.blob_count(), body), (0, &b"xyz"[..]));
        let mut env = vec![0u8; wire::body_offset(1)];
        wire::write_envelope(&mut env, 5, 6, &[handle(9)]).unwrap();
        env.extend_from_slice(b"ab");
        let (v, r) = envelope_form(wire::ENVELOPE, &env).unwrap();
        assert_eq!(r, vec![handle(9)]);
        let (head, body) = wire::split_envelope(&v).unwrap();
        assert_eq!(
            (head.deadline_ns, head.schema_hash, body),
            (0, 0, &b"ab"[..])
        );
        assert!(envelope_form(wire::ENVELOPE, b"short").is_err());
    }
}
