//! The tokio provider: methods offered through an [`AsyncClient`], served
//! by async handlers, many calls in flight at once (one task each).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cradle_client::{AsyncClient, HandlerError};
//!
//! let client = AsyncClient::connect_default().await?;
//! client
//!     .provider()
//!     .concurrency(64)
//!     .serve_bytes("demo.upper", 1, |_call, body| async move {
//!         Ok::<_, HandlerError>(body.to_ascii_uppercase())
//!     })
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The client's driver task reads the response ring: answers to our own
//! calls complete their futures, `INVOKE` and `CANCEL` frames come here
//! through a channel. Each invocation runs in its own task; its answer is
//! published when its handler's future completes.

use crate::async_client::AsyncClient;
use crate::blob::{Blob, BlobRef};
use crate::provider::{ServeReport, decode_request, encode_response};
use crate::serving::{
    Answer, HandlerError, Held, Invocation, Out, bytes_offer, no_method, not_served, offer_of,
    release_answered,
};
use crate::session::lock;
use ipc_core::ring::FrameMeta;
use ipc_core::sync::{AtomicBool, AtomicU64, Ordering};
use ipc_rpc::provide::{Offer, Register, Unregister};
use ipc_rpc::{CallError, Method, wire};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Out, HandlerError>> + Send>>;
type AsyncHandler = Arc<dyn Fn(AsyncCall, &[u8]) -> BoxFuture + Send + Sync>;

struct Entry {
    offer: Offer,
    handler: AsyncHandler,
}

/// What an async handler gets besides its request: the blobs passed with
/// the call, the client, and where to attach result blobs. Cheap to clone
/// (clones share the call).
///
/// ```no_run
/// use cradle_client::{AsyncCall, HandlerError};
///
/// async fn first_len(call: AsyncCall) -> Result<u64, HandlerError> {
///     let blobs = call.take_blobs();
///     Ok(blobs.first().map_or(0, |b| b.len() as u64))
/// }
/// ```
#[derive(Clone)]
pub struct AsyncCall {
    client: AsyncClient,
    id: u64,
    deadline_ns: u64,
    cancelled: Arc<AtomicBool>,
    blobs: Arc<Mutex<Vec<BlobRef>>>,
    results: Arc<Mutex<Vec<Held>>>,
}

impl fmt::Debug for AsyncCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncCall").field("id", &self.id).finish()
    }
}

impl AsyncCall {
    /// The client the provider runs on.
    ///
    /// ```no_run
    /// # async fn h(call: cradle_client::AsyncCall) -> Result<(), cradle_client::HandlerError> {
    /// let w = call.client().create(16).await?;
    /// # Ok(()) }
    /// ```
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// Takes the blobs the caller passed with the call, mapped (no copy).
    ///
    /// ```no_run
    /// # fn h(call: cradle_client::AsyncCall) {
    /// let total: usize = call.take_blobs().iter().map(|b| b.len()).sum();
    /// # }
    /// ```
    pub fn take_blobs(&self) -> Vec<BlobRef> {
        std::mem::take(&mut *lock(&self.blobs))
    }

    /// Passes `blob` back with the answer (leased to the caller by the
    /// server; our lease goes once the answer is sent).
    ///
    /// ```no_run
    /// # async fn h(call: cradle_client::AsyncCall) -> Result<(), cradle_client::HandlerError> {
    /// let mut w = call.client().create(2).await?;
    /// w.write_at(0, b"ok");
    /// call.attach(w.seal().await?);
    /// # Ok(()) }
    /// ```
    pub fn attach(&self, blob: Blob) {
        lock(&self.results).push(Held::Blob(blob));
    }

    /// Passes a blob we read back with the answer.
    ///
    /// ```no_run
    /// # fn h(call: cradle_client::AsyncCall) {
    /// for b in call.take_blobs() {
    ///     call.attach_ref(b); // echo
    /// }
    /// # }
    /// ```
    pub fn attach_ref(&self, blob: BlobRef) {
        lock(&self.results).push(Held::Ref(blob));
    }

    /// Time left before the caller's deadline (`None`: no deadline).
    ///
    /// ```no_run
    /// # fn h(call: cradle_client::AsyncCall) {
    /// let budget = call.time_left().unwrap_or(std::time::Duration::from_secs(30));
    /// # }
    /// ```
    pub fn time_left(&self) -> Option<Duration> {
        (self.deadline_ns != 0)
            .then(|| Duration::from_nanos(self.deadline_ns.saturating_sub(wire::monotonic_ns())))
    }

    /// Whether nobody waits for this call any more (the server cancelled
    /// it, or its deadline passed).
    ///
    /// ```no_run
    /// # fn h(call: cradle_client::AsyncCall) {
    /// if call.is_cancelled() { return; }
    /// # }
    /// ```
    pub fn is_cancelled(&self) -> bool {
        // Acquire: pairs with the Release store in `AsyncProvider::run`
        // when a CANCEL frame comes.
        self.cancelled.load(Ordering::Acquire)
            || (self.deadline_ns != 0 && wire::monotonic_ns() >= self.deadline_ns)
    }
}

/// Methods this process offers through an [`AsyncClient`], served by async
/// handlers: build it with [`AsyncClient::provider`], then
/// [`run`](Self::run) it.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// ipc_rpc::method! {
///     /// Adds two numbers.
///     pub Add = "demo.add" version 1: (u64, u64) => u64;
/// }
/// let client = cradle_client::AsyncClient::connect_default().await?;
/// client
///     .provider()
///     .serve::<Add, _>(|_call, (a, b)| async move { Ok(a + b) })
///     .run()
///     .await?;
/// # Ok(()) }
/// ```
pub struct AsyncProvider {
    client: AsyncClient,
    concurrency: u32,
    methods: Vec<Entry>,
    stop: Arc<Stop>,
}

#[derive(Default)]
struct Stop {
    flag: AtomicBool,
    notify: Notify,
}

impl fmt::Debug for AsyncProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncProvider")
            .field("concurrency", &self.concurrency)
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

/// Stops a running [`AsyncProvider`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = cradle_client::AsyncClient::connect_default().await?;
/// let p = client.provider().serve_bytes("demo.echo", 1, |_, b| async move { Ok(b) });
/// let stop = p.stopper();
/// tokio::spawn(async move {
///     tokio::time::sleep(std::time::Duration::from_secs(60)).await;
///     stop.stop(); // serve for a minute
/// });
/// p.run().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AsyncStopper(Arc<Stop>);

impl fmt::Debug for AsyncStopper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AsyncStopper")
    }
}

impl AsyncStopper {
    /// Asks the provider to stop: it finishes the calls it holds, withdraws
    /// its methods, and `run` returns.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = cradle_client::AsyncClient::connect_default().await?;
    /// client.provider().stopper().stop();
    /// # Ok(()) }
    /// ```
    pub fn stop(&self) {
        // Release: pairs with the Acquire load in `run`'s loop.
        self.0.flag.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }
}

impl AsyncClient {
    /// Starts building an async provider on this client's session.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let p = client.provider().concurrency(16);
    /// # Ok(()) }
    /// ```
    pub fn provider(&self) -> AsyncProvider {
        AsyncProvider {
            client: self.clone(),
            concurrency: 1,
            methods: Vec::new(),
            stop: Arc::new(Stop::default()),
        }
    }
}

impl AsyncProvider {
    /// How many calls it serves at once, declared to the server for every
    /// method (default 1; capped at 65536).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = cradle_client::AsyncClient::connect_default().await?;
    /// let p = client.provider().concurrency(256);
    /// # Ok(()) }
    /// ```
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n.clamp(1, 65536);
        for m in &mut self.methods {
            m.offer.concurrency = self.concurrency;
        }
        self
    }

    /// Serves method `M` with an async `handler`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = cradle_client::AsyncClient::connect_default().await?;
    /// ipc_rpc::method! {
    ///     /// Doubles.
    ///     pub Double = "demo.double" version 1: u64 => u64;
    /// }
    /// let p = client.provider().serve::<Double, _>(|_call, x| async move { Ok(2 * x) });
    /// # Ok(()) }
    /// ```
    pub fn serve<M, F>(
        mut self,
        handler: impl Fn(AsyncCall, M::Request) -> F + Send + Sync + 'static,
    ) -> Self
    where
        M: Method,
        F: Future<Output = Result<M::Response, HandlerError>> + Send + 'static,
    {
        let max = self.client.max_message();
        let handler: AsyncHandler = Arc::new(move |call, body| {
            let fut = decode_request::<M>(body).map(|req| handler(call, req));
            Box::pin(async move {
                let resp = fut?.await?;
                encode_response::<M>(&resp, max)
            })
        });
        self.methods.push(Entry {
            offer: offer_of::<M>(self.concurrency, false),
            handler,
        });
        self
    }

    /// Serves the bytes method `name` (version `version`) with an async
    /// `handler`, which gets the request body as is.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = cradle_client::AsyncClient::connect_default().await?;
    /// let p = client.provider().serve_bytes("demo.rev", 1, |_call, mut b| async move {
    ///     b.reverse();
    ///     Ok(b)
    /// });
    /// # Ok(()) }
    /// ```
    pub fn serve_bytes<F>(
        mut self,
        name: &str,
        version: u32,
        handler: impl Fn(AsyncCall, Vec<u8>) -> F + Send + Sync + 'static,
    ) -> Self
    where
        F: Future<Output = Result<Vec<u8>, HandlerError>> + Send + 'static,
    {
        let handler: AsyncHandler = Arc::new(move |call, body| {
            let fut = handler(call, body.to_vec());
            Box::pin(async move { fut.await.map(Out::Plain) })
        });
        self.methods.push(Entry {
            offer: bytes_offer(name, version, self.concurrency, false),
            handler,
        });
        self
    }

    /// Marks the method added last idempotent (see
    /// [`Provider::idempotent`](crate::Provider::idempotent)).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = cradle_client::AsyncClient::connect_default().await?;
    /// let p = client.provider().serve_bytes("demo.echo", 1, |_, b| async move { Ok(b) }).idempotent();
    /// # Ok(()) }
    /// ```
    pub fn idempotent(mut self) -> Self {
        if let Some(m) = self.methods.last_mut() {
            m.offer.idempotent = true;
        }
        self
    }

    /// Marks the method added last memoized (see
    /// [`Provider::memoized`](crate::Provider::memoized)).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = cradle_client::AsyncClient::connect_default().await?;
    /// let p = client.provider().serve_bytes("demo.echo", 1, |_, b| async move { Ok(b) }).memoized();
    /// # Ok(()) }
    /// ```
    pub fn memoized(mut self) -> Self {
        if let Some(m) = self.methods.last_mut() {
            m.offer.memoized = true;
        }
        self
    }

    /// A handle that stops [`run`](Self::run).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = cradle_client::AsyncClient::connect_default().await?;
    /// let p = client.provider().serve_bytes("demo.echo", 1, |_, b| async move { Ok(b) });
    /// let s = p.stopper();
    /// # Ok(()) }
    /// ```
    pub fn stopper(&self) -> AsyncStopper {
        AsyncStopper(Arc::clone(&self.stop))
    }

    /// Registers every method and serves calls until stopped or until the
    /// session fails (the error); then waits for the calls it holds and
    /// withdraws the methods.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = cradle_client::AsyncClient::connect_default().await?;
    /// let report = client
    ///     .provider()
    ///     .serve_bytes("demo.echo", 1, |_, b| async move { Ok(b) })
    ///     .run()
    ///     .await?;
    /// println!("served {}", report.served);
    /// # Ok(()) }
    /// ```
    pub async fn run(self) -> Result<ServeReport, CallError> {
        if self.methods.is_empty() {
            return Err(no_method());
        }
        let client = &self.client;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        *lock(&client.shared.invocations) = Some(tx);
        let mut registered = Vec::new();
        for m in &self.methods {
            if let Err(e) = client.call::<Register>(&m.offer).await {
                self.withdraw(&registered).await;
                return Err(e);
            }
            registered.push(m.offer.id());
        }
        let table: Arc<HashMap<u64, AsyncHandler>> = Arc::new(
            self.methods
                .iter()
                .map(|m| (m.offer.id(), Arc::clone(&m.handler)))
                .collect(),
        );
        let running: Arc<Mutex<HashMap<u64, Arc<AtomicBool>>>> = Arc::default();
        let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let mut tasks = tokio::task::JoinSet::new();
        let result = loop {
            // Acquire: pairs with the Release store in `AsyncStopper::stop`.
            if self.stop.flag.load(Ordering::Acquire) {
                break Ok(());
            }
            if let Some(e) = client.shared.session.state_error() {
                break Err(e);
            }
            let stopped = self.stop.notify.notified();
            let frame = tokio::select! {
                f = rx.recv() => f,
                () = stopped => continue,
                // The session's death is seen here (the driver drops nothing
                // into the channel then).
                () = tokio::time::sleep(Duration::from_millis(50)) => continue,
            };
            let Some((meta, payload)) = frame else {
                break Ok(());
            };
            // Reap finished tasks as we go.
            while tasks.try_join_next().is_some() {}
            if meta.kind == wire::CANCEL {
                if let Some(flag) = lock(&running).get(&meta.request_id) {
                    // Release: pairs with the Acquire load in `AsyncCall::is_cancelled`.
                    flag.store(true, Ordering::Release);
                }
                continue;
            }
            if meta.kind != wire::INVOKE {
                continue;
            }
            let client = client.clone();
            let table = Arc::clone(&table);
            let running = Arc::clone(&running);
            let counts = Arc::clone(&counts);
            tasks.spawn(async move {
                serve_one(client, meta, payload, &table, &running, &counts).await;
            });
        };
        while tasks.join_next().await.is_some() {}
        self.withdraw(&registered).await;
        result?;
        // Relaxed: every task that counted has been joined.
        Ok(ServeReport {
            served: counts.0.load(Ordering::Relaxed),
            errors: counts.1.load(Ordering::Relaxed),
        })
    }

    async fn withdraw(&self, ids: &[u64]) {
        if self.client.shared.session.check().is_ok() {
            for id in ids {
                let _ = self.client.call::<Unregister>(id).await;
            }
        }
        *lock(&self.client.shared.invocations) = None;
    }
}

/// Runs one invocation and sends its answer.
async fn serve_one(
    client: AsyncClient,
    meta: FrameMeta,
    payload: rkyv::util::AlignedVec<16>,
    table: &HashMap<u64, AsyncHandler>,
    running: &Mutex<HashMap<u64, Arc<AtomicBool>>>,
    counts: &(AtomicU64, AtomicU64),
) {
    let session = &client.shared.session;
    let (answer, held) = match Invocation::read(meta, payload) {
        Err(_) => (Answer::malformed(), Vec::new()),
        Ok(inv) if inv.expired() => {
            session.queue_leases(&inv.blobs);
            return;
        }
        Ok(inv) => match table.get(&inv.method) {
            None => {
                session.queue_leases(&inv.blobs);
                (Answer::error(&not_served(inv.method)), Vec::new())
            }
            Some(handler) => match client.adopt_all(&inv.blobs).await {
                Err(e) => (Answer::error(&HandlerError::from(e)), Vec::new()),
                Ok(blobs) => {
                    let cancelled = Arc::new(AtomicBool::new(false));
                    lock(running).insert(inv.id, Arc::clone(&cancelled));
                    let call = AsyncCall {
                        client: client.clone(),
                        id: inv.id,
                        deadline_ns: inv.deadline_ns,
                        cancelled,
                        blobs: Arc::new(Mutex::new(blobs)),
                        results: Arc::default(),
                    };
                    let results = Arc::clone(&call.results);
                    // In its own task: a panic is reported, not propagated.
                    let r = tokio::spawn(handler(call, inv.body())).await;
                    lock(running).remove(&inv.id);
                    let held = std::mem::take(&mut *lock(&results));
                    let answer = Answer::of_outcome(r, &held, || "the handler panicked".to_owned());
                    (answer, held)
                }
            },
        },
    };
    let (kind, flags, body) = answer.frame();
    let m = FrameMeta {
        request_id: meta.request_id,
        tag: meta.tag,
        kind,
        flags,
    };
    let mut ok = kind == wire::REPLY;
    match client.send_answer(m, body).await {
        Err(CallError::MessageTooLarge { len, max }) => {
            let a = Answer::too_large(len, max);
            let (kind, flags, body) = a.frame();
            let _ = client
                .send_answer(FrameMeta { kind, flags, ..m }, body)
                .await;
            ok = false;
        }
        Err(_) => ok = false,
        Ok(()) => {}
    }
    release_answered(&*client.shared, held);
    // Relaxed: counters, read once every task is joined.
    counts.0.fetch_add(1, Ordering::Relaxed);
    if !ok {
        counts.1.fetch_add(1, Ordering::Relaxed);
    }
}
