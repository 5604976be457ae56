//! The synchronous provider: a process offers methods through its
//! [`Client`]; the server routes other clients' calls of them to it
//! (docs/architecture.md "Provided methods").
//!
//! ```no_run
//! use cradle_client::{Client, HandlerError};
//!
//! let client = Client::connect_default()?;
//! client
//!     .provider()
//!     .concurrency(4)
//!     .serve_bytes("demo.checksum", 1, |_call, body| {
//!         let sum = body.iter().fold(0u32, |a, &b| a.rotate_left(5) ^ u32::from(b));
//!         Ok::<_, HandlerError>(sum.to_le_bytes().to_vec())
//!     })
//!     .idempotent()
//!     .run()?; // until stopped (see `Provider::stopper`) or the server goes
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `run` registers every method, then `concurrency` threads (this one and
//! `concurrency - 1` more) each take an invocation, run its handler and
//! send the answer. Whichever thread waits reads the session's response
//! ring: answers to the handlers' own calls (creating result blobs, mapping
//! segments) go to their callers, invocations to the provider threads.

use crate::blob::{Blob, BlobRef};
use crate::calls;
use crate::client::Client;
use crate::serving::{
    Answer, HandlerError, Held, Invocation, Invocations, Out, bytes_offer, no_method, not_served,
    offer_of, release_answered,
};
use bytemuck::Zeroable;
use ipc_core::ring::FrameMeta;
use ipc_core::sync::{AtomicBool, AtomicU64, Ordering};
use ipc_rpc::blob::BlobHandle;
use ipc_rpc::idmap::IdMap;
use ipc_rpc::provide::{Offer, Register, Unregister};
use ipc_rpc::{CallError, ErrorCode, Method, Wire, wire};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most calls one provider serves at once (threads it runs).
const MAX_CONCURRENCY: u32 = 1024;

type Handler<'p> =
    Box<dyn Fn(&mut Call<'_>, &[u8]) -> Result<Done, HandlerError> + Send + Sync + 'p>;

/// What a sync handler did with its answer.
enum Done {
    /// The typed response went straight into the ring (no allocation, no
    /// copy), or could not go (the session's error stops the provider).
    Sent(Result<(), CallError>),
    /// A bytes method's body, to write into the ring (one copy).
    Body(Vec<u8>),
}

struct Entry<'p> {
    offer: Offer,
    handler: Handler<'p>,
}

/// Decodes `M`'s request from an invocation's body.
pub(crate) fn decode_request<M: Method>(body: &[u8]) -> Result<M::Request, HandlerError> {
    <M::Request as Wire>::decode(body).map_err(|e| {
        HandlerError::new(
            ErrorCode::Malformed,
            format!("the request is not a {} request: {e}", M::NAME),
        )
    })
}

/// Encodes `M`'s response, at most `max` bytes.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async provider's
pub(crate) fn encode_response<M: Method>(
    resp: &M::Response,
    max: usize,
) -> Result<Out, HandlerError> {
    calls::encode_body(resp, max)
        .map(Out::Aligned)
        .map_err(|e| {
            let code = match e {
                CallError::MessageTooLarge { .. } => ErrorCode::ResponseTooLarge,
                _ => ErrorCode::Handler,
            };
            HandlerError::new(code, format!("the response of {} cannot go: {e}", M::NAME))
        })
}

/// What a served call's handler gets besides its request: the blobs passed
/// with the call, the client (to create result blobs, or make calls of its
/// own), and where to attach result blobs.
///
/// ```no_run
/// use cradle_client::{Call, HandlerError};
///
/// // A handler of a bytes method that returns the reversed argument blob.
/// fn reverse(call: &mut Call<'_>, _body: &[u8]) -> Result<Vec<u8>, HandlerError> {
///     let arg = call.blobs().first().ok_or("pass one blob")?;
///     let mut w = call.client().create(arg.len())?;
///     let reversed: Vec<u8> = arg.iter().rev().copied().collect();
///     w.write_at(0, &reversed);
///     let out = w.seal()?;
///     call.attach(out);
///     Ok(Vec::new())
/// }
/// ```
pub struct Call<'a> {
    client: &'a Client,
    invocations: &'a Invocations,
    id: u64,
    method: u64,
    deadline_ns: u64,
    blobs: Vec<BlobRef>,
    results: Vec<Held>,
}

impl fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("id", &self.id)
            .field("method", &self.method)
            .field("blobs", &self.blobs.len())
            .finish()
    }
}

impl<'a> Call<'a> {
    /// The client the provider runs on: create result blobs with it, or
    /// call other methods.
    ///
    /// ```no_run
    /// # fn h(call: &mut cradle_client::Call<'_>) -> Result<(), cradle_client::HandlerError> {
    /// let w = call.client().create(16)?;
    /// # Ok(()) }
    /// ```
    pub fn client(&self) -> &'a Client {
        self.client
    }

    /// The blobs the caller passed with the call, mapped (no copy).
    ///
    /// ```no_run
    /// # fn h(call: &mut cradle_client::Call<'_>) {
    /// let total: usize = call.blobs().iter().map(|b| b.len()).sum();
    /// # }
    /// ```
    pub fn blobs(&self) -> &[BlobRef] {
        &self.blobs
    }

    /// Takes the blobs passed with the call (to keep them past the call).
    ///
    /// ```no_run
    /// # fn h(call: &mut cradle_client::Call<'_>) {
    /// let kept: Vec<cradle_client::BlobRef> = call.take_blobs();
    /// # }
    /// ```
    pub fn take_blobs(&mut self) -> Vec<BlobRef> {
        std::mem::take(&mut self.blobs)
    }

    /// Passes `blob` back with the answer: the server leases it to the
    /// caller, who gets it as a [`BlobRef`] (no copy). Our own lease goes
    /// once the answer is sent.
    ///
    /// ```no_run
    /// # fn h(call: &mut cradle_client::Call<'_>) -> Result<(), cradle_client::HandlerError> {
    /// let mut w = call.client().create(2)?;
    /// w.write_at(0, b"ok");
    /// let blob = w.seal()?;
    /// call.attach(blob);
    /// # Ok(()) }
    /// ```
    pub fn attach(&mut self, blob: Blob) {
        self.results.push(Held::Blob(blob));
    }

    /// Passes a blob we read (one passed with the call, a cache entry) back
    /// with the answer.
    ///
    /// ```no_run
    /// # fn h(call: &mut cradle_client::Call<'_>) {
    /// // Echo the first argument blob back.
    /// if let Some(b) = call.take_blobs().into_iter().next() {
    ///     call.attach_ref(b);
    /// }
    /// # }
    /// ```
    pub fn attach_ref(&mut self, blob: BlobRef) {
        self.results.push(Held::Ref(blob));
    }

    /// Time left before the caller's deadline (`None`: no deadline).
    ///
    /// ```no_run
    /// # fn h(call: &mut cradle_client::Call<'_>) -> Result<(), cradle_client::HandlerError> {
    /// if call.time_left().is_some_and(|t| t.as_millis() < 5) {
    ///     return Err("not enough time left".into());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn time_left(&self) -> Option<Duration> {
        (self.deadline_ns != 0)
            .then(|| Duration::from_nanos(self.deadline_ns.saturating_sub(wire::monotonic_ns())))
    }

    /// Whether the server said nobody waits for this call any more (its
    /// caller gave up or left): a long handler may stop early.
    ///
    /// ```no_run
    /// # fn h(call: &mut cradle_client::Call<'_>) -> Result<(), cradle_client::HandlerError> {
    /// for chunk in 0..1000 {
    ///     if call.is_cancelled() {
    ///         return Err("cancelled".into());
    ///     }
    ///     // ... work on `chunk` ...
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_cancelled(&self) -> bool {
        let past = self.deadline_ns != 0 && wire::monotonic_ns() >= self.deadline_ns;
        past || self.invocations.cancelled(self.id, false)
    }

    /// Sends `value` (`name`'s response) as the `REPLY`, serialized
    /// straight into the ring behind an envelope listing the attached
    /// blobs (if any): no allocation, no copy.
    fn respond<T: Wire>(&self, value: &T, name: &str) -> Result<Done, HandlerError> {
        let r = with_handles(&self.results, |hs| {
            let meta = reply_meta(self.id, self.method, hs);
            self.client.inner.send_answer_with(meta, |out, m| {
                if hs.is_empty() {
                    out.try_send(m, value)
                } else {
                    calls::try_send_enveloped(out.producer(), m, 0, 0, hs, value)
                }
            })
        });
        match r {
            Err(e @ (CallError::MessageTooLarge { .. } | CallError::Encode(_))) => {
                let code = match e {
                    CallError::MessageTooLarge { .. } => ErrorCode::ResponseTooLarge,
                    _ => ErrorCode::Handler,
                };
                Err(HandlerError::new(
                    code,
                    format!("the response of {name} cannot go: {e}"),
                ))
            }
            r => Ok(Done::Sent(r)),
        }
    }
}

/// The `REPLY` frame's meta for invocation `id` of `method`, with an
/// envelope only if it lists result blobs (`hs`).
fn reply_meta(id: u64, method: u64, hs: &[BlobHandle]) -> FrameMeta {
    FrameMeta {
        request_id: id,
        tag: method,
        kind: wire::REPLY,
        flags: if hs.is_empty() {
            wire::NO_FLAGS
        } else {
            wire::ENVELOPE
        },
    }
}

/// Runs `f` with the handles of the result blobs `held`, from an array on
/// the stack (no allocation); with none, from an empty slice (the usual
/// case: clearing the 2.5 KiB array was half of a provided call's
/// instructions). More than an envelope lists is an encoding error.
fn with_handles(
    held: &[Held],
    f: impl FnOnce(&[BlobHandle]) -> Result<(), CallError>,
) -> Result<(), CallError> {
    if held.is_empty() {
        return f(&[]);
    }
    let mut hs = [BlobHandle::zeroed(); wire::MAX_ENVELOPE_BLOBS];
    let Some(slots) = hs.get_mut(..held.len()) else {
        return Err(calls::too_many_blobs(held.len()));
    };
    for (h, r) in slots.iter_mut().zip(held) {
        *h = *r.handle();
    }
    f(slots)
}

/// Counts of what a provider served.
///
/// ```
/// let r = cradle_client::ServeReport::default();
/// assert_eq!(r.served + r.errors, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeReport {
    /// Calls answered.
    pub served: u64,
    /// Of which answered with an error.
    pub errors: u64,
}

/// Stops a running [`Provider`] from any thread (a signal handler's
/// thread, a test): its threads finish the calls they hold, then it
/// withdraws its methods and `run` returns.
///
/// ```no_run
/// use cradle_client::Client;
///
/// let client = Client::connect_default()?;
/// let provider = client.provider().serve_bytes("demo.echo", 1, |_, b| Ok(b.to_vec()));
/// let stopper = provider.stopper();
/// std::thread::spawn(move || {
///     std::thread::sleep(std::time::Duration::from_secs(10));
///     stopper.stop();
/// });
/// provider.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Stopper {
    flag: Arc<AtomicBool>,
    client: Client,
}

impl Clone for Stopper {
    fn clone(&self) -> Self {
        Self {
            flag: Arc::clone(&self.flag),
            client: Client {
                inner: Arc::clone(&self.client.inner),
            },
        }
    }
}

impl fmt::Debug for Stopper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stopper")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl Stopper {
    /// Asks the provider to stop.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// # let provider = client.provider();
    /// provider.stopper().stop();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stop(&self) {
        // Release: pairs with the Acquire load in `is_stopped`.
        self.flag.store(true, Ordering::Release);
        self.client.inner.nudge();
        self.client.inner.invocations.wake_all();
    }

    /// Whether [`stop`](Self::stop) was called.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let s = client.provider().stopper();
    /// assert!(!s.is_stopped());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_stopped(&self) -> bool {
        // Acquire: pairs with the Release store in `stop`.
        self.flag.load(Ordering::Acquire)
    }
}

/// A set of methods this process offers, and the threads that serve them:
/// build it with [`Client::provider`], then [`run`](Self::run) it.
///
/// ```no_run
/// use cradle_client::{Client, HandlerError};
/// ipc_rpc::method! {
///     /// Adds two numbers.
///     pub Add = "demo.add" version 1: (u64, u64) => u64;
/// }
///
/// let client = Client::connect_default()?;
/// client
///     .provider()
///     .serve::<Add>(|_call, (a, b)| Ok::<_, HandlerError>(a + b))
///     .idempotent()
///     .run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Provider<'p> {
    client: &'p Client,
    concurrency: u32,
    /// Invocations queued in this process beyond those its threads run.
    depth: u32,
    methods: Vec<Entry<'p>>,
    stop: Arc<AtomicBool>,
}

impl fmt::Debug for Provider<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("concurrency", &self.concurrency)
            .field("depth", &self.depth)
            .field(
                "methods",
                &self
                    .methods
                    .iter()
                    .map(|m| &m.offer.name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Client {
    /// Starts building a provider of methods on this client's session.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let report = client
    ///     .provider()
    ///     .serve_bytes("demo.echo", 1, |_call, body| Ok(body.to_vec()))
    ///     .run()?;
    /// println!("served {} calls", report.served);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn provider(&self) -> Provider<'_> {
        Provider {
            client: self,
            concurrency: 1,
            depth: 0,
            methods: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl<'p> Provider<'p> {
    /// How many calls it serves at once (threads it runs; default 1,
    /// capped at 1024); declared to the server for every method.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let p = client.provider().concurrency(8);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n.clamp(1, MAX_CONCURRENCY);
        self.declare();
        self
    }

    /// How many invocations the server may send beyond those the threads
    /// run (default 0): they wait in this process, in order, instead of in
    /// the server's queue. A provider of short calls then takes them in
    /// batches (one wake for many, no server round trip between two calls)
    /// at the cost of a call queued here not going to another, idle
    /// provider of the method (docs/architecture.md §9b). Declared to the
    /// server with the concurrency (their sum, capped at 1024).
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let p = client.provider().queue_depth(64);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn queue_depth(mut self, n: u32) -> Self {
        self.depth = n.min(MAX_CONCURRENCY);
        self.declare();
        self
    }

    /// The concurrency declared to the server: threads plus queue depth.
    fn declared(&self) -> u32 {
        (self.concurrency + self.depth).min(MAX_CONCURRENCY)
    }

    /// Declares [`declared`](Self::declared) for every method.
    fn declare(&mut self) {
        let n = self.declared();
        for m in &mut self.methods {
            m.offer.concurrency = n;
        }
    }

    /// Serves method `M` with `handler`.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// ipc_rpc::method! {
    ///     /// Counts the bytes of the blobs passed with the call.
    ///     pub Size = "demo.size" version 1: () => u64;
    /// }
    /// let p = client.provider().serve::<Size>(|call, ()| {
    ///     Ok(call.blobs().iter().map(|b| b.len() as u64).sum())
    /// });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn serve<M: Method>(
        mut self,
        handler: impl Fn(&mut Call<'_>, M::Request) -> Result<M::Response, HandlerError>
        + Send
        + Sync
        + 'p,
    ) -> Self {
        self.methods.push(Entry {
            offer: offer_of::<M>(self.declared(), false),
            handler: Box::new(move |call, body| {
                let req = decode_request::<M>(body)?;
                let resp = handler(call, req)?;
                call.respond(&resp, M::NAME)
            }),
        });
        self
    }

    /// Serves the bytes method `name` (version `version`): the handler gets
    /// the request body as is and answers the response body.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let p = client.provider().serve_bytes("demo.upper", 1, |_call, body| {
    ///     Ok(body.to_ascii_uppercase())
    /// });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn serve_bytes(
        mut self,
        name: &str,
        version: u32,
        handler: impl Fn(&mut Call<'_>, &[u8]) -> Result<Vec<u8>, HandlerError> + Send + Sync + 'p,
    ) -> Self {
        self.methods.push(Entry {
            offer: bytes_offer(name, version, self.declared(), false),
            handler: Box::new(move |call, body| handler(call, body).map(Done::Body)),
        });
        self
    }

    /// Marks the method added last idempotent: a call of it may be sent to
    /// another provider when this one goes away before answering.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let p = client.provider().serve_bytes("demo.echo", 1, |_, b| Ok(b.to_vec())).idempotent();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn idempotent(mut self) -> Self {
        if let Some(m) = self.methods.last_mut() {
            m.offer.idempotent = true;
        }
        self
    }

    /// Marks the method added last **memoized**: its answer depends only on
    /// its request body and the *contents* of the blobs the request passes.
    /// The server then answers a call from the shared cache (memory, then
    /// disk) when an identical call was answered before, by any process and
    /// across restarts, and identical calls in flight run the handler once;
    /// errors are not cached. A caller may bypass or refresh the cache per
    /// call ([`MemoMode`](crate::MemoMode)); `cradle memo ls` shows the
    /// figures.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let p = client
    ///     .provider()
    ///     .serve_bytes("demo.checksum", 1, |_, b| Ok(b.len().to_le_bytes().to_vec()))
    ///     .memoized();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn memoized(mut self) -> Self {
        if let Some(m) = self.methods.last_mut() {
            m.offer.memoized = true;
        }
        self
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let p = client.provider().serve_bytes("demo.echo", 1, |_, b| Ok(b.to_vec()));
    /// let s = p.stopper();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stopper(&self) -> Stopper {
        Stopper {
            flag: Arc::clone(&self.stop),
            client: Client {
                inner: Arc::clone(&self.client.inner),
            },
        }
    }

    /// Registers every method, serves calls until stopped (see
    /// [`stopper`](Self::stopper)) or until the session fails (the server
    /// went away: the error), then withdraws the methods.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let report = client.provider().serve_bytes("demo.echo", 1, |_, b| Ok(b.to_vec())).run()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run(self) -> Result<ServeReport, CallError> {
        if self.methods.is_empty() {
            return Err(no_method());
        }
        let inner = &self.client.inner;
        // Before registering: no invocation may be dropped.
        inner.invocations.set_active(true);
        let mut registered = Vec::new();
        for m in &self.methods {
            if let Err(e) = self.client.call::<Register>(&m.offer) {
                self.withdraw(&registered);
                return Err(e);
            }
            registered.push(m.offer.id());
        }
        let table: IdMap<&Entry<'p>> = self.methods.iter().map(|m| (m.offer.id(), m)).collect();
        let served = AtomicU64::new(0);
        let errors = AtomicU64::new(0);
        let worker = || {
            let r = self.work(&table, &served, &errors);
            if r.is_err() {
                // One thread's failure (the session's) stops the others.
                // Release: pairs with the Acquire load in `stopped`.
                self.stop.store(true, Ordering::Release);
                inner.invocations.wake_all();
            }
            r
        };
        let result = std::thread::scope(|s| {
            let others: Vec<_> = (1..self.concurrency).map(|_| s.spawn(worker)).collect();
            let mut r = worker();
            for t in others {
                let tr = t.join().unwrap_or(Err(CallError::PeerDead));
                if r.is_ok() {
                    r = tr;
                }
            }
            r
        });
        self.withdraw(&registered);
        result?;
        // Relaxed: the threads that counted have been joined.
        Ok(ServeReport {
            served: served.load(Ordering::Relaxed),
            errors: errors.load(Ordering::Relaxed),
        })
    }

    /// Withdraws the methods registered (best effort: the session may be
    /// gone, which withdraws them anyway).
    fn withdraw(&self, ids: &[u64]) {
        if self.client.inner.session.check().is_ok() {
            for id in ids {
                let _ = self.client.call::<Unregister>(id);
            }
        }
        self.client.inner.invocations.set_active(false);
    }

    fn stopped(&self) -> bool {
        // Acquire: pairs with the Release store in `Stopper::stop`.
        self.stop.load(Ordering::Acquire)
    }

    /// One provider thread: takes invocations and answers them until
    /// stopped.
    fn work(
        &self,
        table: &IdMap<&Entry<'p>>,
        served: &AtomicU64,
        errors: &AtomicU64,
    ) -> Result<(), CallError> {
        let inner = &self.client.inner;
        let stop = || self.stopped();
        let forever = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        while let Some((meta, payload)) = inner.next_invocation(forever, &stop)? {
            if meta.kind != wire::INVOKE {
                inner.invocations.recycle(payload);
                continue;
            }
            let (sent, held) = match Invocation::read(meta, payload) {
                Ok(inv) => match self.serve_one(inv, table) {
                    Some(a) => a,
                    None => continue,
                },
                Err((id, method)) => (self.send(id, method, &Answer::malformed()), Vec::new()),
            };
            // A caller's large blob must not stay pinned by a provider.
            release_answered(&**inner, held);
            inner.invocations.cancelled(meta.request_id, true);
            // Relaxed: counters, read after the threads are joined.
            served.fetch_add(1, Ordering::Relaxed);
            if !sent? {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Sends `answer` to invocation `id` of `method` (an answer the ring
    /// refuses as too large goes as that error); whether it was a `REPLY`.
    fn send(&self, id: u64, method: u64, answer: &Answer) -> Result<bool, CallError> {
        let inner = &self.client.inner;
        let (kind, flags, body) = answer.frame();
        match inner.send_answer(id, method, kind, flags, body) {
            Err(CallError::MessageTooLarge { len, max }) => {
                let a = Answer::too_large(len, max);
                let (kind, flags, body) = a.frame();
                inner
                    .send_answer(id, method, kind, flags, body)
                    .map(|()| false)
            }
            r => r.map(|()| kind == wire::REPLY),
        }
    }

    /// Sends a bytes method's `body` as the `REPLY` to invocation `id` of
    /// `method`, listing the result blobs `held`: written straight into the
    /// ring; whether it went as a `REPLY`.
    fn send_body(
        &self,
        id: u64,
        method: u64,
        held: &[Held],
        body: &[u8],
    ) -> Result<bool, CallError> {
        let r = with_handles(held, |hs| {
            let meta = reply_meta(id, method, hs);
            self.client.inner.send_answer_with(meta, |out, m| {
                if hs.is_empty() {
                    out.try_send_encoded(m, body)
                } else {
                    calls::try_send_enveloped_bytes(out.producer(), m, 0, 0, hs, body)
                }
            })
        });
        match r {
            Err(CallError::MessageTooLarge { len, max }) => self
                .send(id, method, &Answer::too_large(len, max))
                .map(|_| false),
            Err(CallError::Encode(e)) => {
                let e = HandlerError::new(ErrorCode::Handler, e.to_string());
                self.send(id, method, &Answer::error(&e)).map(|_| false)
            }
            r => r.map(|()| true),
        }
    }

    /// Runs one invocation's handler and sends its answer: whether it went
    /// as a `REPLY` (or the session's error), and the result blobs to let go
    /// of once it is in the ring. `None` if nobody waits for it (its
    /// deadline passed, or it was cancelled before it started).
    fn serve_one(
        &self,
        inv: Invocation,
        table: &IdMap<&Entry<'p>>,
    ) -> Option<(Result<bool, CallError>, Vec<Held>)> {
        let session = &self.client.inner.session;
        let invocations = &self.client.inner.invocations;
        if inv.expired() || invocations.cancelled(inv.id, true) {
            session.queue_leases(&inv.blobs);
            invocations.recycle(inv.into_payload());
            return None;
        }
        let Some(entry) = table.get(&inv.method) else {
            session.queue_leases(&inv.blobs);
            let e = not_served(inv.method);
            let sent = self.send(inv.id, inv.method, &Answer::error(&e));
            invocations.recycle(inv.into_payload());
            return Some((sent, Vec::new()));
        };
        let blobs = match self.client.adopt_all(&inv.blobs) {
            Ok(b) => b,
            Err(e) => {
                let e = HandlerError::from(e);
                let sent = self.send(inv.id, inv.method, &Answer::error(&e));
                invocations.recycle(inv.into_payload());
                return Some((sent, Vec::new()));
            }
        };
        let mut call = Call {
            client: self.client,
            invocations,
            id: inv.id,
            method: inv.method,
            deadline_ns: inv.deadline_ns,
            blobs,
            results: Vec::new(),
        };
        let r =
            std::panic::catch_unwind(AssertUnwindSafe(|| (entry.handler)(&mut call, inv.body())));
        let held = std::mem::take(&mut call.results);
        let (id, method) = (inv.id, inv.method);
        invocations.recycle(inv.into_payload());
        let sent = match r {
            Ok(Ok(Done::Sent(r))) => r.map(|()| true),
            Ok(Ok(Done::Body(body))) => self.send_body(id, method, &held, &body),
            Ok(Err(e)) => self.send(id, method, &Answer::error(&e)),
            Err(_) => {
                let e = HandlerError::new(
                    ErrorCode::HandlerPanicked,
                    format!("the handler of {} panicked", entry.offer.name),
                );
                self.send(id, method, &Answer::error(&e))
            }
        };
        Some((sent, held))
    }
}
