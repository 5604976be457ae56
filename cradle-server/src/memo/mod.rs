//! Memoized calls (`docs/architecture.md` §14): a memoized method's answer
//! is looked up in the shared cache before its handler runs, stored there
//! after, and identical calls in flight share one run.
//!
//! The narrow interface, for whatever routes calls (the worker and the
//! offload pool today; a router of methods provided by clients later):
//!
//! * [`Memo::try_answer`] — on the worker, cheap: answers a call from a
//!   memory entry if every digest it needs is known, else says no.
//! * [`Memo::call`] — on the offload pool: key (computing digests), look up
//!   (memory, then disk), single flight, run, store, answer every waiter.
//!   The run itself is a closure ([`RunFn`]): a compiled-in handler today,
//!   a forwarded call tomorrow.
//!
//! Files: `key.rs` (keys and entries as bytes) → `claims.rs` (compute-once
//! claims for clients) → this file.

mod claims;
mod key;
mod provided;

pub(crate) use provided::ProvidedCall;

use crate::blobs::{BlobCtx, BlobError, BlobStore, KeyWatcher};
use crate::error::HandlerError;
use crate::link::{Completion, WorkerLink, WorkerMsg};
use crate::methods::{Answer, Entry, Handler, OffloadFn, Outcome, invoke_with, offload_blob};
use crate::reply::{Queued, Replier, encode_answer, encode_error};
use claims::Claims;
use ipc_core::ring::FrameMeta;
use ipc_rpc::blob::BlobHandle;
use ipc_rpc::memo::{
    BlobDigest, BlobRefs, CacheClaim, CacheUnclaim, Digest, MemoClear, MemoList, MemoMethodStats,
};
use ipc_rpc::rkyv::ser::allocator::Arena;
use ipc_rpc::rkyv::util::AlignedVec;
use ipc_rpc::{ErrorCode, Method, Wire, wire};
use key::{MemoKey, ResultSlot, decode_entry, encode_entry, memo_key, method_prefix};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

/// The session id under which the server itself holds blobs while it
/// writes or reads memo entries, and the caller of provided memoized runs
/// (never a client's: those count up from 1).
pub(crate) const MEMO_SESSION: u64 = u64::MAX;

/// Calls waiting in the server, all kinds (memo flights and claims), at
/// most; beyond, a call that would wait is answered `QuotaExceeded`.
pub(crate) const MAX_WAITERS: usize = 16_384;

/// A handler run, erased: the calling session's blob context and the
/// request bytes → the encoded response and its result blobs, or the
/// failure.
pub(crate) type RunFn = Box<
    dyn Fn(&BlobCtx<'_>, &[u8], &mut Arena, usize) -> Outcome<(AlignedVec<16>, Vec<BlobHandle>)>
        + Send
        + Sync,
>;

/// A request's canonical bytes and the blobs it passes.
type KeyFn = Box<dyn Fn(&[u8]) -> Result<(Vec<u8>, Vec<BlobHandle>), String> + Send + Sync>;

/// The canonical bytes of `value`: this server's rkyv encoding of it into
/// a zeroed buffer (so no byte a peer chose, padding included, reaches a
/// memo key). The buffer and arena are per thread and reused: the bytes
/// written are zeroed again after each use.
fn canonical<T: Wire>(value: &T) -> Result<Vec<u8>, String> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<(Arena, AlignedVec<16>)> =
            std::cell::RefCell::new((Arena::new(), AlignedVec::new()));
    }
    SCRATCH.with_borrow_mut(|(arena, buf)| {
        if buf.is_empty() {
            buf.resize(ipc_rpc::SMALL_WINDOW, 0);
        }
        loop {
            let cap = buf.len();
            // SAFETY: `buf` holds `cap` initialised bytes, 16-aligned, and
            // nothing else uses it while the writer lives.
            let mut out = unsafe { ipc_rpc::codec::RingWriter::new(buf.as_mut_ptr(), cap) };
            match value.encode(&mut out, arena) {
                Ok(n) => {
                    let v = buf[..n].to_vec();
                    buf[..n].fill(0);
                    return Ok(v);
                }
                Err(_) if out.overflowed() && cap < 1 << 30 => {
                    buf.fill(0);
                    buf.resize(cap * 4, 0);
                }
                Err(e) => {
                    buf.fill(0);
                    return Err(e.to_string());
                }
            }
        }
    })
}

/// A memoized method: compiled in, or offered by providers.
pub(crate) struct MemoMethod {
    pub(crate) id: u64,
    pub(crate) name: Cow<'static, str>,
    /// Its schema version.
    pub(crate) version: u32,
    /// Its schema hash (`Method::SCHEMA_HASH`).
    pub(crate) schema_hash: u64,
    /// `name@version`.
    pub(crate) label: String,
    keyer: KeyFn,
    /// The handler run of a compiled-in method; `None` for a provided one
    /// (its run is a call routed to a provider: `provided.rs`).
    run: Option<RunFn>,
    stats: Mutex<MemoMethodStats>,
}

impl std::fmt::Debug for MemoMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoMethod")
            .field("label", &self.label)
            .finish()
    }
}

impl MemoMethod {
    /// A compiled-in handler of `M`, memoized: `M::Request` lists the
    /// blobs it passes, `M::Response` the blobs it returns.
    pub(crate) fn compiled<M, F>(f: F) -> Self
    where
        M: Method,
        M::Request: BlobRefs,
        M::Response: BlobRefs,
        F: Fn(&BlobCtx<'_>, M::Request) -> Result<M::Response, HandlerError>
            + Send
            + Sync
            + 'static,
    {
        let keyer: KeyFn = Box::new(|bytes| {
            let req = <M::Request as Wire>::decode(bytes)
                .map_err(|e| format!("request for {} did not validate: {e}", M::NAME))?;
            let mut handles = Vec::new();
            req.blob_refs(&mut handles);
            let canonical = canonical(&req)
                .map_err(|e| format!("request for {} cannot be encoded again: {e}", M::NAME))?;
            Ok((canonical, handles))
        });
        let run: RunFn = Box::new(move |ctx, bytes, arena, max| {
            let resp = invoke_with::<M, BlobCtx<'_>>(&f, ctx, bytes)?;
            let mut results = Vec::new();
            resp.blob_refs(&mut results);
            match ipc_rpc::encode_to_vec(&resp, arena, max) {
                Ok(v) => Ok((v, results)),
                Err(e) => {
                    // The results were leased to the caller: give them back.
                    let ids: Vec<u64> = results.iter().map(|h| h.id).collect();
                    ctx.store.release(ctx.session, &ids, &[]);
                    Err((
                        ErrorCode::ResponseTooLarge,
                        format!("the response of {} cannot be sent: {e}", M::NAME),
                    ))
                }
            }
        });
        Self {
            id: M::ID,
            name: Cow::Borrowed(M::NAME),
            version: M::VERSION,
            schema_hash: M::SCHEMA_HASH,
            label: format!("{}@{}", M::NAME, M::VERSION),
            keyer,
            run: Some(run),
            stats: Mutex::new(MemoMethodStats::default()),
        }
    }

    fn stats(&self) -> MutexGuard<'_, MemoMethodStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a hit that saved a run of `run_ns`.
    fn count_hit(&self, run_ns: u64) {
        let mut st = self.stats();
        st.hits += 1;
        st.saved_ns = st.saved_ns.saturating_add(run_ns);
    }
}

/// A call that waits in the server; answered through its worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waiter {
    pub(crate) worker: usize,
    pub(crate) session: u64,
    pub(crate) meta: FrameMeta,
    pub(crate) max_payload: usize,
}

/// A memory entry, decoded once: hits read it here instead of mapping and
/// parsing the entry blob, as long as memory still holds that blob under
/// the key (checked under the store's lock with the leases).
#[derive(Debug)]
struct Decoded {
    /// The entry blob it was read from.
    blob: u64,
    run_ns: u64,
    results: Vec<ResultSlot>,
    /// The cache keys of the results.
    result_keys: Vec<String>,
    response: Vec<u8>,
}

/// Decoded entries kept at most; beyond, the table starts again empty.
const MAX_DECODED: usize = 16_384;
/// Method id → request bytes → its key and the blobs it passes.
type RawKeys = HashMap<u64, HashMap<Vec<u8>, (MemoKey, Vec<BlobHandle>)>>;

/// Largest request whose key is remembered by its bytes.
const MAX_RAW_REQUEST: usize = 1024;

/// Largest response kept decoded (larger ones are read from their entry
/// blob on every hit).
const MAX_DECODED_RESPONSE: usize = 4096;

/// One run in flight and the calls waiting for it.
#[derive(Debug, Default)]
struct Flight {
    waiters: Vec<Waiter>,
    /// A provided method's run: its run id (0: a compiled-in run) ...
    run: u64,
    /// ... its ticket in the providers' table once routed (0: not yet) ...
    ticket: u64,
    /// ... and the latest deadline of its waiters (the run's, once routed).
    deadline: u64,
}

/// Where a memoized call stands after [`Memo::step`].
enum Step {
    /// Answered now: a hit, or a refusal.
    Done(Answer),
    /// It waits for the run in flight for its key (a provided run's ticket
    /// in the providers' table; 0 until routed, and for compiled-in runs).
    Joined(u64),
    /// A new flight: this call makes the run.
    Run(MemoKey),
}

/// What a lookup found.
enum Found {
    /// The answer, results leased to the caller.
    Answer(AlignedVec<16>),
    /// No usable entry.
    Miss,
    /// An entry (or one of its results) is only on disk: not for the worker.
    NotHere,
    /// The entry is fine, but its results cannot be leased to this caller
    /// (its quota, the server-wide limit): the call fails with this error.
    Refused(ErrorCode, String),
}

/// The memo: memoized methods, runs in flight, compute-once claims.
#[derive(Debug)]
pub(crate) struct Memo {
    store: Arc<BlobStore>,
    methods: HashMap<u64, Arc<MemoMethod>>,
    /// Set when the server runs.
    links: OnceLock<Arc<[WorkerLink]>>,
    flights: Mutex<HashMap<Digest, Flight>>,
    /// Entries read or stored lately, by key digest.
    decoded: Mutex<HashMap<Digest, Arc<Decoded>>>,
    /// Keys of requests seen lately, by method and request bytes.
    raw_keys: Mutex<RawKeys>,
    claims: Claims,
    /// Memoized methods offered by providers, by id (`provided.rs`).
    provided: Mutex<HashMap<u64, Arc<MemoMethod>>>,
    /// Whether `provided` ever held a method (workers skip its lock until).
    any_provided: ipc_core::sync::AtomicBool,
    /// Runs of provided methods routed to a provider, by run id.
    runs: Mutex<HashMap<u64, provided::Run>>,
    /// The next run id.
    next_run: ipc_core::sync::AtomicU64,
    /// Set when the server runs: the providers' table (runs are routed
    /// through it) and the offload handler of provided memoized calls.
    routing: OnceLock<provided::Routing>,
}

fn response_meta(req: FrameMeta) -> FrameMeta {
    FrameMeta {
        kind: wire::RESPONSE,
        flags: wire::NO_FLAGS,
        ..req
    }
}

fn blob_failure(e: BlobError) -> (ErrorCode, String) {
    (e.code, e.message)
}

impl Memo {
    /// The memo over `store` for `methods`.
    pub(crate) fn new(store: Arc<BlobStore>, methods: Vec<MemoMethod>) -> Arc<Self> {
        store.open_session(MEMO_SESSION);
        let memo = Arc::new(Self {
            store: Arc::clone(&store),
            methods: methods.into_iter().map(|m| (m.id, Arc::new(m))).collect(),
            links: OnceLock::new(),
            flights: Mutex::new(HashMap::new()),
            decoded: Mutex::new(HashMap::new()),
            raw_keys: Mutex::new(HashMap::new()),
            claims: Claims::default(),
            provided: Mutex::new(HashMap::new()),
            any_provided: ipc_core::sync::AtomicBool::new(false),
            runs: Mutex::new(HashMap::new()),
            next_run: ipc_core::sync::AtomicU64::new(1),
            routing: OnceLock::new(),
        });
        let weak: Weak<Memo> = Arc::downgrade(&memo);
        store.watch(weak as Weak<dyn KeyWatcher>);
        memo
    }

    /// Starts delivering answers to waiting calls through `links`, and the
    /// thread that ends expired claims and waits.
    pub(crate) fn start(
        self: &Arc<Self>,
        links: Arc<[WorkerLink]>,
        providers: Arc<crate::provided::Providers>,
        max_payload: usize,
    ) -> std::io::Result<()> {
        let _ = self.links.set(links);
        let _ = self
            .routing
            .set(provided::Routing::new(self, providers, max_payload));
        claims::spawn_timer(Arc::downgrade(self))
    }

    /// Stops the claims' timer thread.
    pub(crate) fn stop(&self) {
        self.claims.stop();
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<Digest, Flight>> {
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `answer` to a waiting call's worker.
    pub(crate) fn deliver(&self, w: &Waiter, answer: Option<Queued>) {
        if let Some(link) = self.links.get().and_then(|l| l.get(w.worker)) {
            link.send(WorkerMsg::Completion(Completion {
                session: w.session,
                answer,
            }));
        }
    }

    /// Calls waiting now, all kinds.
    pub(crate) fn waiting(&self) -> usize {
        let flights: usize = self.flights().values().map(|f| f.waiters.len()).sum();
        flights + self.claims.waiting()
    }

    /// The entries every server offers for the memo: the memoized methods
    /// themselves, digests, the memo's figures and clearing, claims.
    pub(crate) fn entries(self: &Arc<Self>) -> Vec<Entry> {
        let mut v: Vec<Entry> = self
            .methods
            .values()
            .filter_map(|m| {
                // Compiled-in methods only (they have `'static` names).
                let Cow::Borrowed(name) = m.name else {
                    return None;
                };
                let memo = Arc::clone(self);
                let m2 = Arc::clone(m);
                Some(Entry {
                    id: m.id,
                    name,
                    version: m.version,
                    schema_hash: m.schema_hash,
                    handler: Handler::Offload(Arc::new(
                        move |bytes, meta, ctx, arena, max, worker| {
                            memo.call(&m2, bytes, meta, ctx, arena, max, worker)
                        },
                    )),
                })
            })
            .collect();
        let f = offload_blob::<BlobDigest, _>(|ctx, h| {
            ctx.store
                .digest(&h)
                .map_err(|e| HandlerError::with_code(e.code, e.message))
        });
        v.push(Entry::of::<BlobDigest>(Handler::Offload(f)));
        let memo = Arc::clone(self);
        let f = offload_blob::<MemoList, _>(move |_, filter| Ok(memo.list(&filter)));
        v.push(Entry::of::<MemoList>(Handler::Offload(f)));
        let memo = Arc::clone(self);
        let f = offload_blob::<MemoClear, _>(move |_, filter| {
            memo.clear(&filter)
                .map_err(|e| HandlerError::with_code(e.code, e.message))
        });
        v.push(Entry::of::<MemoClear>(Handler::Offload(f)));
        let memo = Arc::clone(self);
        let f: OffloadFn = Arc::new(move |bytes, meta, ctx, arena, max, worker| {
            memo.claim(bytes, meta, ctx, arena, max, worker)
        });
        v.push(Entry::of::<CacheClaim>(Handler::Offload(f)));
        let memo = Arc::clone(self);
        let f = offload_blob::<CacheUnclaim, _>(move |ctx, key| {
            Ok(memo.claims.unclaim(&memo, ctx.session, &key))
        });
        v.push(Entry::of::<CacheUnclaim>(Handler::Offload(f)));
        v
    }

    /// The key of a call to `m` with request `bytes`; with `compute`, the
    /// digests it needs are computed (off the worker), else a digest not
    /// known yet makes it `None`.
    fn key_of(
        &self,
        m: &MemoMethod,
        bytes: &[u8],
        compute: bool,
    ) -> Result<Option<MemoKey>, (ErrorCode, String)> {
        // The same request bytes always name the same key: the same value,
        // and the same blobs (ids are never reused by a server instance).
        // The handles are still checked against the table.
        if let Some((key, handles)) = self
            .raw_keys()
            .get(&m.id)
            .and_then(|r| r.get(bytes))
            .cloned()
        {
            for h in &handles {
                self.store.known_digest(h).map_err(blob_failure)?;
            }
            return Ok(Some(key));
        }
        let (canonical, handles) = (m.keyer)(bytes).map_err(|e| (ErrorCode::Malformed, e))?;
        let mut args = Vec::with_capacity(handles.len());
        for &h in &handles {
            let d = if compute {
                self.store.digest(&h).map_err(blob_failure)?
            } else {
                match self.store.known_digest(&h).map_err(blob_failure)? {
                    Some(d) => d,
                    None => return Ok(None),
                }
            };
            args.push((h, d));
        }
        let key = memo_key(&m.label, &canonical, &args).map_err(|e| (ErrorCode::Handler, e))?;
        if bytes.len() <= MAX_RAW_REQUEST {
            let mut raw = self.raw_keys();
            // At most `MAX_DECODED` remembered requests in all (methods of
            // providers come and go: a per-method cap would not bound it).
            if raw.values().map(HashMap::len).sum::<usize>() >= MAX_DECODED {
                raw.clear();
            }
            raw.entry(m.id)
                .or_default()
                .insert(bytes.to_vec(), (key.clone(), handles));
        }
        Ok(Some(key))
    }

    /// Forgets the remembered request keys of method `id`.
    fn forget_raw_keys(&self, id: u64) {
        self.raw_keys().remove(&id);
    }

    fn raw_keys(&self) -> MutexGuard<'_, RawKeys> {
        self.raw_keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// On the worker: answers a call to a memoized method from a memory
    /// entry, if there is one and every digest it needs is known; returns
    /// whether it answered. Anything else (flags, a digest to compute, a
    /// miss, an entry on disk, any error) is left to [`call`](Self::call).
    pub(crate) fn try_answer(
        &self,
        bytes: &[u8],
        meta: FrameMeta,
        session: u64,
        out: &mut Replier<'_>,
    ) -> bool {
        if meta.flags & !wire::ENVELOPE != 0 {
            return false;
        }
        let Some(m) = self.methods.get(&meta.tag) else {
            return false;
        };
        let Ok(Some(key)) = self.key_of(m, bytes, false) else {
            return false;
        };
        self.answer_here(m, &key, session, response_meta(meta), out)
    }

    /// On the worker: answers a call whose key is `key` from a memory
    /// entry with the frame header `meta`; whether it did. A decoded entry
    /// without result blobs goes straight from the table into the ring (no
    /// copy of the response unless the frame must be queued).
    pub(super) fn answer_here(
        &self,
        m: &MemoMethod,
        key: &MemoKey,
        session: u64,
        meta: FrameMeta,
        out: &mut Replier<'_>,
    ) -> bool {
        let plain = self
            .decoded()
            .get(&key.digest)
            .filter(|d| d.results.is_empty())
            .cloned();
        if let Some(d) = plain {
            // Checks that memory still holds the entry under the key.
            if let Ok(Some(_)) = self.store.lease_memo(session, &key.name, d.blob, &[]) {
                out.send_slice(meta, &d.response);
                m.count_hit(d.run_ns);
                return true;
            }
        }
        match self.lookup(m, key, session, false) {
            Found::Answer(resp) => {
                out.send_encoded(meta, resp);
                true
            }
            Found::Miss | Found::NotHere | Found::Refused(..) => false,
        }
    }

    fn decoded(&self) -> MutexGuard<'_, HashMap<Digest, Arc<Decoded>>> {
        self.decoded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers a decoded entry whose response is small (the table holds
    /// at most `MAX_DECODED` × `MAX_DECODED_RESPONSE` bytes of responses).
    fn remember(&self, key: &MemoKey, d: Decoded) {
        if d.response.len() > MAX_DECODED_RESPONSE {
            return;
        }
        let mut map = self.decoded();
        if map.len() >= MAX_DECODED {
            map.clear();
        }
        map.insert(key.digest, Arc::new(d));
    }

    /// The answer from a decoded entry, its results leased to `session`;
    /// `None` if there is none or memory no longer holds all of it.
    fn hit_decoded(&self, m: &MemoMethod, key: &MemoKey, session: u64) -> Option<AlignedVec<16>> {
        let d = self.decoded().get(&key.digest).cloned()?;
        let handles = match self
            .store
            .lease_memo(session, &key.name, d.blob, &d.result_keys)
        {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => {
                self.decoded().remove(&key.digest);
                return None;
            }
        };
        let mut resp = AlignedVec::<16>::with_capacity(d.response.len());
        resp.extend_from_slice(&d.response);
        for (slot, h) in d.results.iter().zip(&handles) {
            resp[slot.offset..slot.offset + key::HANDLE_BYTES]
                .copy_from_slice(bytemuck::bytes_of(h));
        }
        m.count_hit(d.run_ns);
        Some(resp)
    }

    /// Reads the entry under `key` and leases its results to `session`;
    /// with `may_load`, reads the disk tier too (blocks: the pool only).
    fn lookup(&self, m: &MemoMethod, key: &MemoKey, session: u64, may_load: bool) -> Found {
        if let Some(resp) = self.hit_decoded(m, key, session) {
            return Found::Answer(resp);
        }
        match self.read_entry(m, key, session, may_load) {
            Ok(found) => found,
            Err(why) => {
                if may_load {
                    self.damaged(m, key, &why);
                    Found::Miss
                } else {
                    Found::NotHere
                }
            }
        }
    }

    /// Counts, reports and removes a damaged or incomplete entry.
    fn damaged(&self, m: &MemoMethod, key: &MemoKey, why: &str) {
        m.stats().damaged += 1;
        tracing::warn!(method = %m.label, key = %key.name, reason = why, "memo entry damaged or incomplete: treated as a miss and removed");
        if let Err(e) = self.remove_entry(&key.name) {
            tracing::warn!(key = %key.name, error = %e.message, "could not remove a damaged memo entry");
        }
    }

    /// Removes an entry and its results from both tiers; whether it was
    /// there.
    fn remove_entry(&self, name: &str) -> Result<bool, BlobError> {
        let results: Vec<String> = self
            .store
            .list(&format!("{name}/"), "", |_| true)
            .0
            .into_iter()
            .map(|e| e.key)
            .collect();
        let was = self.store.cache_remove(name)?;
        for r in results {
            self.store.cache_remove(&r)?;
        }
        Ok(was)
    }

    /// The entry blob under `key`, leased to [`MEMO_SESSION`]: `Ok(None)`
    /// if there is none, `Err(Ok(found))` if it cannot be read now (on disk
    /// and `!may_load`: `NotHere`; a lease or load refused, by a quota or
    /// the disk: `Refused`, which is not the entry's fault), `Err(Err(why))`
    /// if it is damaged.
    fn entry_blob(
        &self,
        key: &MemoKey,
        may_load: bool,
    ) -> Result<Option<BlobHandle>, Result<Found, String>> {
        match self.store.lease_key(MEMO_SESSION, &key.name) {
            Ok(Some(hit)) => return Ok(Some(hit.handle)),
            Ok(None) => {}
            Err(e) => return Err(Ok(Found::Refused(e.code, e.message))),
        }
        if !self.store.on_disk(&key.name) {
            return Ok(None);
        }
        if !may_load {
            return Err(Ok(Found::NotHere));
        }
        match self.store.cache_load(MEMO_SESSION, &key.name) {
            Ok(Some(hit)) => Ok(Some(hit.handle)),
            Ok(None) => Err(Err(
                "its disk entry did not verify (see the disk tier's report)".into(),
            )),
            Err(e) => Err(Ok(Found::Refused(e.code, e.message))),
        }
    }

    fn read_entry(
        &self,
        m: &MemoMethod,
        key: &MemoKey,
        session: u64,
        may_load: bool,
    ) -> Result<Found, String> {
        let handle = match self.entry_blob(key, may_load) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(Found::Miss),
            Err(Ok(found)) => return Ok(found),
            Err(Err(damage)) => return Err(damage),
        };
        let ctx = BlobCtx {
            store: &self.store,
            session: MEMO_SESSION,
        };
        let read = ctx.read(&handle);
        // The view pins the entry; our lease can go.
        self.store.release(MEMO_SESSION, &[handle.id], &[]);
        let view = match read {
            Ok(v) => v,
            // Not the entry's fault (the server-wide limit, say).
            Err(e) => return Ok(Found::Refused(e.code, e.message)),
        };
        let entry = decode_entry(view.bytes())?;
        let mut resp = AlignedVec::<16>::with_capacity(entry.response.len());
        resp.extend_from_slice(entry.response);
        let mut leased: Vec<u64> = Vec::with_capacity(entry.results.len());
        let give_back = |leased: &[u64]| self.store.release(session, leased, &[]);
        for (i, slot) in entry.results.iter().enumerate() {
            let rkey = key.result(i);
            let hit = match self.store.lease_key(session, &rkey) {
                Ok(Some(hit)) => hit,
                Ok(None) if may_load && self.store.on_disk(&rkey) => {
                    match self.store.cache_load(session, &rkey) {
                        Ok(Some(hit)) => {
                            // Known at birth: the entry stored it.
                            self.store.set_digest(hit.handle.id, slot.digest);
                            hit
                        }
                        Ok(None) => {
                            give_back(&leased);
                            return Err(format!("result {i} did not verify on disk"));
                        }
                        Err(e) => {
                            give_back(&leased);
                            return Ok(Found::Refused(e.code, e.message));
                        }
                    }
                }
                Ok(None) => {
                    give_back(&leased);
                    return if self.store.on_disk(&rkey) {
                        Ok(Found::NotHere)
                    } else {
                        Err(format!("result {i} is missing"))
                    };
                }
                Err(e) => {
                    give_back(&leased);
                    return Ok(Found::Refused(e.code, e.message));
                }
            };
            leased.push(hit.handle.id);
            if hit.handle.len != slot.len {
                give_back(&leased);
                return Err(format!(
                    "result {i} has {} bytes, the entry says {}",
                    hit.handle.len, slot.len
                ));
            }
            resp[slot.offset..slot.offset + key::HANDLE_BYTES]
                .copy_from_slice(bytemuck::bytes_of(&hit.handle));
        }
        let run_ns = entry.run_ns;
        let decoded = Decoded {
            blob: handle.id,
            run_ns,
            results: entry.results.clone(),
            result_keys: (0..entry.results.len()).map(|i| key.result(i)).collect(),
            response: entry.response.to_vec(),
        };
        drop(view);
        self.remember(key, decoded);
        m.count_hit(run_ns);
        Ok(Found::Answer(resp))
    }

    /// On the offload pool: a call to the memoized method `m`.
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        m: &MemoMethod,
        bytes: &[u8],
        meta: FrameMeta,
        ctx: &BlobCtx<'_>,
        arena: &mut Arena,
        max: usize,
        worker: usize,
    ) -> Answer {
        let fail = |(code, msg): (ErrorCode, String), arena: &mut Arena| {
            Answer::Now(encode_error(meta, code, msg, arena, max))
        };
        let Some(run) = &m.run else {
            return fail(
                (
                    ErrorCode::Handler,
                    format!("{} is not a compiled-in method", m.label),
                ),
                arena,
            );
        };
        if meta.flags & wire::MEMO_BYPASS != 0 {
            m.stats().bypassed += 1;
            return Answer::Now(match run(ctx, bytes, arena, max) {
                Ok((resp, _)) => Some((response_meta(meta), resp)),
                Err((code, msg)) => encode_error(meta, code, msg, arena, max),
            });
        }
        let me = Waiter {
            worker,
            session: ctx.session,
            meta,
            max_payload: max,
        };
        match self.step(m, bytes, me, 0, response_meta, false, arena) {
            Step::Done(answer) => answer,
            Step::Joined(_) => Answer::Later,
            Step::Run(key) => self.run_flight(m, &key, bytes, me, arena),
        }
    }

    /// The part of a memoized call common to every kind of run: keys the
    /// request (`bytes`: what the method's keyer reads; digests computed
    /// here), looks the key up in both tiers (unless the call refreshes),
    /// then joins the run in flight for the key or starts a new flight
    /// (with `me` as its first waiter if `first_waits`); `deadline` (0:
    /// none) is `me`'s, kept in the flight as the latest of its waiters'.
    /// `answer_meta` makes a hit's frame header from the request's.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        m: &MemoMethod,
        bytes: &[u8],
        me: Waiter,
        deadline: u64,
        answer_meta: fn(FrameMeta) -> FrameMeta,
        first_waits: bool,
        arena: &mut Arena,
    ) -> Step {
        let meta = me.meta;
        let fail = |(code, msg): (ErrorCode, String), arena: &mut Arena| {
            Step::Done(Answer::Now(encode_error(
                meta,
                code,
                msg,
                arena,
                me.max_payload,
            )))
        };
        let hit = |resp| Step::Done(Answer::Now(Some((answer_meta(meta), resp))));
        let key = match self.key_of(m, bytes, true) {
            Ok(Some(k)) => k,
            // Digests are computed here, so a key is always made.
            Ok(None) => {
                return fail(
                    (ErrorCode::Handler, "no memo key could be made".to_owned()),
                    arena,
                );
            }
            Err(e) => return fail(e, arena),
        };
        let refresh = meta.flags & wire::MEMO_REFRESH != 0;
        if !refresh {
            match self.lookup(m, &key, me.session, true) {
                Found::Answer(resp) => return hit(resp),
                Found::Refused(code, msg) => return fail((code, msg), arena),
                Found::Miss | Found::NotHere => {}
            }
        }
        // Single flight: join a run in flight, or become the run.
        let waiting = self.waiting();
        let mut flights = self.flights();
        let joins = flights.contains_key(&key.digest);
        if (joins || first_waits) && waiting >= MAX_WAITERS {
            drop(flights);
            return fail(
                (
                    ErrorCode::QuotaExceeded,
                    format!("{MAX_WAITERS} calls already wait in the server"),
                ),
                arena,
            );
        }
        if let Some(f) = flights.get_mut(&key.digest) {
            f.waiters.push(me);
            f.deadline = f.deadline.max(deadline);
            let ticket = f.ticket;
            drop(flights);
            m.stats().waits += 1;
            return Step::Joined(ticket);
        }
        // A run that finished between our lookup and now left its entry in
        // memory.
        if !refresh && let Found::Answer(resp) = self.lookup(m, &key, me.session, false) {
            return hit(resp);
        }
        let waiters = if first_waits { vec![me] } else { Vec::new() };
        let flight = Flight {
            waiters,
            run: 0,
            ticket: 0,
            deadline,
        };
        flights.insert(key.digest, flight);
        Step::Run(key)
    }

    /// Runs `m` for `first` (and, if its run fails because its caller is
    /// gone, for the next waiter, and so on), stores the entry, answers
    /// every waiter; returns `first`'s answer.
    fn run_flight(
        &self,
        m: &MemoMethod,
        key: &MemoKey,
        bytes: &[u8],
        first: Waiter,
        arena: &mut Arena,
    ) -> Answer {
        let mut runner = first;
        let mut first_answer = None;
        loop {
            let ctx = BlobCtx {
                store: &self.store,
                session: runner.session,
            };
            let started = Instant::now();
            let outcome = match &m.run {
                Some(run) => run(&ctx, bytes, arena, runner.max_payload),
                None => Err((
                    ErrorCode::Handler,
                    format!("{} is not a compiled-in method", m.label),
                )),
            };
            let took = started.elapsed().as_nanos() as u64;
            {
                let mut st = m.stats();
                st.misses += 1;
                st.run_ns = st.run_ns.saturating_add(took);
            }
            match outcome {
                Ok((resp, results)) => {
                    if let Err(e) = self.store_entry(key, &resp, &results, took) {
                        tracing::warn!(method = %m.label, error = %e, "memo entry not stored; the answer is sent all the same");
                    }
                    let waiters = self
                        .flights()
                        .remove(&key.digest)
                        .map(|f| f.waiters)
                        .unwrap_or_default();
                    for w in waiters {
                        let answer = self.share(m, &resp, &results, &w, took, arena);
                        self.deliver(&w, answer);
                    }
                    let mine = Some((response_meta(runner.meta), resp));
                    if first_answer.is_none() {
                        return Answer::Now(mine);
                    }
                    self.deliver(&runner, mine);
                    return Answer::Now(first_answer.flatten());
                }
                Err((code, msg)) => {
                    m.stats().errors += 1;
                    let gone = !self.store.session_alive(runner.session);
                    let answer =
                        encode_error(runner.meta, code, msg.clone(), arena, runner.max_payload);
                    if first_answer.is_none() {
                        first_answer = Some(answer);
                    } else {
                        self.deliver(&runner, answer);
                    }
                    let mut flights = self.flights();
                    if gone
                        && let Some(f) = flights.get_mut(&key.digest)
                        && !f.waiters.is_empty()
                    {
                        // The run failed because its caller went away: the
                        // next waiter runs it.
                        runner = f.waiters.remove(0);
                        continue;
                    }
                    let waiters = flights
                        .remove(&key.digest)
                        .map(|f| f.waiters)
                        .unwrap_or_default();
                    drop(flights);
                    for w in waiters {
                        let a = encode_error(w.meta, code, msg.clone(), arena, w.max_payload);
                        self.deliver(&w, a);
                    }
                    return Answer::Now(first_answer.flatten());
                }
            }
        }
    }

    /// The answer for a call that waited for a run: the same response, its
    /// results leased to the waiter too.
    fn share(
        &self,
        m: &MemoMethod,
        resp: &AlignedVec<16>,
        results: &[BlobHandle],
        w: &Waiter,
        run_ns: u64,
        arena: &mut Arena,
    ) -> Option<Queued> {
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
        m.count_hit(run_ns);
        let mut copy = AlignedVec::<16>::with_capacity(resp.len());
        copy.extend_from_slice(resp);
        Some((response_meta(w.meta), copy))
    }

    /// Stores a run's answer under `key`: each result blob under its own
    /// key first, then the entry (so a disk tier that has the entry had the
    /// results written before it).
    fn store_entry(
        &self,
        key: &MemoKey,
        resp: &[u8],
        results: &[BlobHandle],
        run_ns: u64,
    ) -> Result<(), String> {
        let offsets = key::result_offsets(resp, results)?;
        let mut slots = Vec::with_capacity(results.len());
        for (i, (h, offset)) in results.iter().zip(offsets).enumerate() {
            let digest = self.store.digest_of(h.id).map_err(|e| e.message)?;
            self.store
                .cache_put(&key.result(i), h, false)
                .map_err(|e| e.message)?;
            slots.push(ResultSlot {
                offset,
                len: h.len,
                digest,
            });
        }
        let bytes = encode_entry(run_ns, &slots, resp);
        let ctx = BlobCtx {
            store: &self.store,
            session: MEMO_SESSION,
        };
        let mut b = ctx.create(bytes.len()).map_err(|e| e.message)?;
        b.bytes_mut().copy_from_slice(&bytes);
        let h = b.seal().map_err(|e| e.message)?;
        let put = self.store.cache_put(&key.name, &h, false);
        self.store.release(MEMO_SESSION, &[h.id], &[]);
        put.map_err(|e| e.message)?;
        self.remember(
            key,
            Decoded {
                blob: h.id,
                run_ns,
                result_keys: (0..slots.len()).map(|i| key.result(i)).collect(),
                results: slots,
                response: resp.to_vec(),
            },
        );
        Ok(())
    }

    /// The methods `filter` names (empty: all; `name` or `name@version`),
    /// compiled-in and provided.
    fn matching(&self, filter: &str) -> Vec<Arc<MemoMethod>> {
        let provided = self.provided_methods();
        self.methods
            .values()
            .chain(provided.values())
            .filter(|m| filter.is_empty() || m.name == filter || m.label == filter)
            .cloned()
            .collect()
    }

    /// Figures of the memoized methods `filter` names, by label.
    pub(crate) fn list(&self, filter: &str) -> Vec<MemoMethodStats> {
        let mut v: Vec<MemoMethodStats> = self
            .matching(filter)
            .into_iter()
            .map(|m| {
                let mut st = m.stats().clone();
                st.method = m.label.clone();
                let prefix = method_prefix(&m.label);
                let (keys, _) = self.store.list(&prefix, "", |_| true);
                st.entries = keys
                    .iter()
                    .filter(|k| !k.key[prefix.len()..].contains('/'))
                    .count() as u64;
                st.bytes = keys.iter().map(|k| k.len).sum();
                st
            })
            .collect();
        v.sort_by(|a, b| a.method.cmp(&b.method));
        v
    }

    /// Removes the entries of the methods `filter` names; how many.
    pub(crate) fn clear(&self, filter: &str) -> Result<u64, BlobError> {
        let mut n = 0;
        for m in self.matching(filter) {
            let prefix = method_prefix(&m.label);
            let (keys, _) = self.store.list(&prefix, "", |_| true);
            for k in keys {
                let entry = !k.key[prefix.len()..].contains('/');
                if self.store.cache_remove(&k.key)? && entry {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// `cradle.cache.claim`.
    fn claim(
        self: &Arc<Self>,
        bytes: &[u8],
        meta: FrameMeta,
        ctx: &BlobCtx<'_>,
        arena: &mut Arena,
        max: usize,
        worker: usize,
    ) -> Answer {
        let req = match <ipc_rpc::memo::ClaimRequest as Wire>::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                return Answer::Now(encode_error(
                    meta,
                    ErrorCode::Malformed,
                    format!("request for {} did not validate: {e}", CacheClaim::NAME),
                    arena,
                    max,
                ));
            }
        };
        let me = Waiter {
            worker,
            session: ctx.session,
            meta,
            max_payload: max,
        };
        match self.claims.claim(self, &req, me) {
            Ok(Some(answer)) => Answer::Now(encode_answer(meta, Ok(answer), arena, max)),
            Ok(None) => Answer::Later,
            Err(e) => Answer::Now(encode_error(meta, e.code, e.message, arena, max)),
        }
    }
}

impl KeyWatcher for Memo {
    fn stored(&self, key: &str) {
        self.claims.stored(self, key);
    }

    fn session_closed(&self, session: u64) {
        self.claims.session_closed(self, session);
        // Its waits end (nobody reads their answers); the runs go on.
        for f in self.flights().values_mut() {
            f.waiters.retain(|w| w.session != session);
        }
    }
}
