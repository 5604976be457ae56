//! The synchronous client.

use crate::calls;
use crate::error::ConnectError;
use crate::inflight::InFlight;
use crate::options::{CallOptions, ClientOptions, MemoMode};
use crate::serving::{Invocations, for_provider};
use crate::session::{self, DEAD, Owner, Salvage, Session, SocketState, lock};
use ipc_core::doorbell::{Doorbell, EventFd, Futex, SpinBudget, WaitMode, Waker};
use ipc_core::ring::{Consumer, FrameMeta, Producer, RingError, RingMemory, RingRegion};
use ipc_core::sync::{Ordering, StdAtomics};
use ipc_rpc::blob::{BlobHandle, Release, ReleaseBatch};
use ipc_rpc::idmap::{IdMap, IdSet};
use ipc_rpc::{CallError, Inbox, Method, Outbox, ProtocolError, SendError, Wire, wire};
use rkyv::util::AlignedVec;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A connection to the CRADLE server: one session, with its own request and
/// response rings in shared memory.
///
/// `Client` is `Send + Sync`: threads may share it (by reference or in an
/// `Arc`); senders take turns on the request ring (a short lock around
/// serialization), and whichever thread waits reads the response ring and
/// hands other threads' responses over. Clones are not offered: share it.
///
/// Calls check that they run in the process that connected: after `fork`, the
/// child gets [`CallError::Forked`] and must connect its own client.
///
/// ```no_run
/// use cradle_client::Client;
/// use ipc_rpc::builtin::Ping;
///
/// let client = Client::connect_default()?;
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| client.call::<Ping>(&b"hi".to_vec()));
///     }
/// });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) session: Arc<Session>,
    pub(crate) tx: Mutex<Tx>,
    rx: Mutex<Rx>,
    opts: ClientOptions,
    watcher: Option<std::thread::JoinHandle<()>>,
    /// Written by `Drop` to stop the watcher.
    stop: Arc<EventFd>,
    /// `INVOKE`/`CANCEL` frames read from the response ring, for a provider.
    pub(crate) invocations: Invocations,
    /// One `get_or_compute` per key at a time (`turns.rs`).
    pub(crate) turns: crate::turns::Turns,
}

pub(crate) struct Tx {
    pub(crate) outbox: Outbox<RingRegion>,
    pub(crate) next_id: u64,
}

struct Rx {
    inbox: Inbox<RingRegion>,
    /// Responses read by one waiter for another (pipelining, threads).
    stash: IdMap<(FrameMeta, AlignedVec<16>)>,
    /// Requests whose `Pending` was dropped: their responses are discarded.
    abandoned: IdSet,
    /// Calls that timed out and left a salvage: their responses, when they
    /// come, are cleaned up after (a lease given back, a descriptor closed).
    orphans: IdMap<Salvage>,
    /// Orphans' responses read, to clean up after once the lock is let go
    /// (cleaning up may send a request, which may wait for ring room).
    salvaged: Vec<(Salvage, FrameMeta, AlignedVec<16>)>,
    /// The response ring is corrupt: every call fails.
    broken: Option<RingError>,
    /// The learned spin of [`WaitMode::SpinThenSleep`] waits for responses
    /// (docs/architecture.md, "Waiting under load").
    spin: SpinBudget,
}

/// A call that leaves nothing to clean up after.
const NO_SALVAGE: Option<fn() -> Salvage> = None;

/// A call's deadline, read from the clock only once the call has to wait:
/// a pipelined call whose response is already in the ring reads no clock
/// (two clock reads were ~6 % of a pipelined call's instructions, and more
/// of its time on this VM). The timeout counts from that first wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    timeout: Duration,
    start: Option<Instant>,
}

impl Deadline {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            start: None,
        }
    }

    /// When the call started waiting (now, the first time it is asked).
    fn start(&mut self) -> Instant {
        *self.start.get_or_insert_with(Instant::now)
    }

    /// The deadline.
    pub(crate) fn at(&mut self) -> Instant {
        self.start() + self.timeout
    }
}

/// Files a response that is not the reader's own: an orphan's is kept for
/// its clean-up, an abandoned one dropped (the result leases its envelope
/// lists given back to `session`), any other stashed for its caller;
/// an invocation goes to the provider. (The fields of `Rx` but its inbox,
/// which the frame borrows.)
#[allow(clippy::too_many_arguments)]
fn file(
    invocations: &Invocations,
    session: &Session,
    stash: &mut IdMap<(FrameMeta, AlignedVec<16>)>,
    abandoned: &mut IdSet,
    orphans: &mut IdMap<Salvage>,
    salvaged: &mut Vec<(Salvage, FrameMeta, AlignedVec<16>)>,
    meta: FrameMeta,
    bytes: &[u8],
) {
    if for_provider(&meta) {
        invocations.push(meta, bytes);
        return;
    }
    let id = meta.request_id;
    let copy = || {
        let mut copy = AlignedVec::<16>::with_capacity(bytes.len());
        copy.extend_from_slice(bytes);
        copy
    };
    if !orphans.is_empty()
        && let Some(s) = orphans.remove(&id)
    {
        salvaged.push((s, meta, copy()));
    } else if abandoned.is_empty() || !abandoned.remove(&id) {
        stash.insert(id, (meta, copy()));
    } else {
        // Abandoned: dropped, its result leases given back.
        session.give_back_unread(meta, bytes);
    }
}

/// Files (see [`file`]) every message in `rx`'s inbox; whether there was
/// one. A ring error stops it.
fn file_all(invocations: &Invocations, session: &Session, rx: &mut Rx) -> Result<bool, RingError> {
    let mut got = false;
    while let Some(msg) = rx.inbox.try_recv()? {
        got = true;
        file(
            invocations,
            session,
            &mut rx.stash,
            &mut rx.abandoned,
            &mut rx.orphans,
            &mut rx.salvaged,
            msg.meta,
            msg.bytes,
        );
    }
    Ok(got)
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("session_id", &self.inner.session.welcome.session_id)
            .field("server_pid", &self.inner.session.welcome.server_pid)
            .finish()
    }
}

impl Client {
    /// Connects to the server at `path`.
    ///
    /// ```no_run
    /// let client = cradle_client::Client::connect("/run/user/1000/cradle.sock")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ConnectError> {
        Self::connect_with(path, ClientOptions::default())
    }

    /// Connects to the server at the default socket path
    /// (`CRADLE_SOCKET`, else [`default_socket_path`](crate::default_socket_path)).
    ///
    /// ```no_run
    /// let client = cradle_client::Client::connect_default()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect_default() -> Result<Self, ConnectError> {
        Self::connect(session::default_socket_path())
    }

    /// Connects with explicit options.
    ///
    /// ```no_run
    /// use cradle_client::{Client, ClientOptions, WaitMode};
    ///
    /// let opts = ClientOptions { wait: WaitMode::Sleep, ..ClientOptions::default() };
    /// let client = Client::connect_with(cradle_client::default_socket_path(), opts)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect_with(path: impl AsRef<Path>, opts: ClientOptions) -> Result<Self, ConnectError> {
        let (session, _) = Session::open(path.as_ref(), 0)?;
        let stop = Arc::new(EventFd::new()?);
        Ok(Self::start(session, stop, opts))
    }

    fn start(session: Session, stop: Arc<EventFd>, opts: ClientOptions) -> Self {
        // SAFETY: this client is the only producer of the request ring and the only
        // consumer of the response ring (the server holds the other ends, in
        // another process); nothing else in this process touches the regions.
        let (producer, consumer) = unsafe {
            (
                Producer::attach(session.req.clone()),
                Consumer::attach(session.resp.clone()),
            )
        };
        let session = Arc::new(session);
        let watcher = {
            let session = Arc::clone(&session);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("cradle-watch-{}", session.welcome.session_id))
                .spawn(move || watch(&session, &stop))
                .ok()
        };
        Self {
            inner: Arc::new(Inner {
                session,
                tx: Mutex::new(Tx {
                    outbox: Outbox::new(producer),
                    next_id: 1,
                }),
                rx: Mutex::new(Rx {
                    inbox: Inbox::new(consumer),
                    stash: IdMap::default(),
                    abandoned: IdSet::default(),
                    orphans: IdMap::default(),
                    salvaged: Vec::new(),
                    broken: None,
                    spin: SpinBudget::new(match opts.wait {
                        WaitMode::SpinThenSleep(d) => d,
                        _ => ipc_core::doorbell::DEFAULT_SPIN,
                    }),
                }),
                opts,
                watcher,
                stop,
                invocations: Invocations::default(),
                turns: Default::default(),
            }),
        }
    }

    /// This session's id.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// println!("session {}", client.session_id());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn session_id(&self) -> u64 {
        self.inner.session.welcome.session_id
    }

    /// The server instance's epoch.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// println!("server instance {:016x}", client.epoch());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn epoch(&self) -> u64 {
        self.inner.session.welcome.epoch
    }

    /// The server's pid.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// println!("server pid {}", client.server_pid());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn server_pid(&self) -> u32 {
        self.inner.session.welcome.server_pid
    }

    /// The largest request payload one call can carry.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let data = vec![0u8; 1 << 20];
    /// if data.len() > client.max_message() {
    ///     // send it as a blob instead
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_message(&self) -> usize {
        ipc_core::ring::max_payload_len(self.inner.session.welcome.ring_capacity as usize)
    }

    /// Calls `M` with the client's default timeout and wait mode, waiting for
    /// ring space if needed.
    ///
    /// ```no_run
    /// use ipc_rpc::builtin::Ping;
    /// # let client = cradle_client::Client::connect_default()?;
    /// assert_eq!(client.call::<Ping>(&b"hi".to_vec())?, b"hi");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn call<M: Method>(&self, req: &M::Request) -> Result<M::Response, CallError> {
        self.call_opts::<M>(req, self.default_opts())
    }

    /// Calls `M` with per-call options.
    ///
    /// ```no_run
    /// use cradle_client::{CallOptions, WaitMode};
    /// use ipc_rpc::builtin::Ping;
    /// use std::time::Duration;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let opts = CallOptions { timeout: Duration::from_secs(1), wait: WaitMode::Sleep };
    /// client.call_opts::<Ping>(&vec![], opts)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn call_opts<M: Method>(
        &self,
        req: &M::Request,
        opts: CallOptions,
    ) -> Result<M::Response, CallError> {
        let s = &*self.inner.session;
        self.inner.round_trip::<M, _>(
            req,
            opts,
            true,
            calls::plain(s, M::ID, session::decode::<M>),
        )
    }

    /// Calls a memoized method `M` with `memo` saying how its memo is used
    /// for this call: [`MemoMode::Bypass`] runs the handler without reading
    /// or writing the memo, [`MemoMode::Refresh`] runs it and replaces the
    /// entry. A method that is not memoized ignores it.
    ///
    /// ```no_run
    /// use cradle_client::MemoMode;
    /// use ipc_rpc::example::{Work, WorkRequest};
    /// # let client = cradle_client::Client::connect_default()?;
    /// let req = WorkRequest { seed: 1, sleep_ms: 0, input: None, out_len: 0 };
    /// let fresh = client.call_memo::<Work>(&req, MemoMode::Refresh)?;
    /// # let _ = fresh;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn call_memo<M: Method>(
        &self,
        req: &M::Request,
        memo: MemoMode,
    ) -> Result<M::Response, CallError> {
        let f = calls::plain(&self.inner.session, M::ID, session::decode::<M>);
        self.inner
            .round_trip_blobs::<M, _>(req, &[], self.default_opts(), true, memo.flags(), f)
            .map_err(session::name_unknown::<M>)
    }

    /// Like [`call`](Self::call), but fails with [`CallError::RingFull`]
    /// instead of waiting when the request ring has no room.
    ///
    /// ```no_run
    /// use cradle_client::CallError;
    /// use ipc_rpc::builtin::Ping;
    /// # let client = cradle_client::Client::connect_default()?;
    /// match client.try_call::<Ping>(&vec![]) {
    ///     Err(CallError::RingFull) => { /* do something else, retry later */ }
    ///     r => { r?; }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_call<M: Method>(&self, req: &M::Request) -> Result<M::Response, CallError> {
        let s = &*self.inner.session;
        let f = calls::plain(s, M::ID, session::decode::<M>);
        self.inner
            .round_trip::<M, _>(req, self.default_opts(), false, f)
    }

    /// Calls `M` and hands the validated, archived response to `f` without
    /// deserializing it (no allocation for the response, whatever its type).
    ///
    /// ```no_run
    /// use ipc_rpc::builtin::Ping;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let opts = cradle_client::CallOptions {
    ///     timeout: cradle_client::DEFAULT_TIMEOUT,
    ///     wait: cradle_client::WaitMode::default(),
    /// };
    /// let n = client.call_with::<Ping, _>(&vec![7; 100], opts, |echo| echo.len())?;
    /// assert_eq!(n, 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn call_with<M: Method, R>(
        &self,
        req: &M::Request,
        opts: CallOptions,
        f: impl FnOnce(&<M::Response as Wire>::Archived) -> R,
    ) -> Result<R, CallError> {
        let s = &*self.inner.session;
        let f = calls::plain(s, M::ID, |b| session::access::<M, R>(b, f));
        self.inner.round_trip::<M, _>(req, opts, true, f)
    }

    /// Sends a request without waiting for its response: for pipelining.
    /// Collect the response with [`Pending::wait`].
    ///
    /// ```no_run
    /// use ipc_rpc::builtin::Ping;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let calls: Vec<_> = (0..8u8)
    ///     .map(|i| client.send::<Ping>(&vec![i]))
    ///     .collect::<Result<_, _>>()?;
    /// for (i, p) in calls.into_iter().enumerate() {
    ///     assert_eq!(p.wait()?, vec![i as u8]);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send<M: Method>(&self, req: &M::Request) -> Result<Pending<'_, M>, CallError> {
        let opts = self.default_opts();
        let mut deadline = Deadline::new(opts.timeout);
        let id =
            self.inner
                .submit::<M>(req, &[], &mut deadline, opts.wait, true, wire::NO_FLAGS)?;
        Ok(Pending {
            client: self,
            id,
            done: false,
            _m: PhantomData,
        })
    }

    pub(crate) fn default_timeout(&self) -> Duration {
        self.inner.opts.timeout
    }

    pub(crate) fn default_opts(&self) -> CallOptions {
        CallOptions {
            timeout: self.inner.opts.timeout,
            wait: self.inner.opts.wait,
        }
    }
}

impl Owner for Inner {
    fn session(&self) -> &Session {
        &self.session
    }

    fn send_release(&self, batch: ReleaseBatch) {
        // Fire and forget: the answer (a count) is discarded on arrival. If
        // the server is gone, so are the leases.
        let opts = self.opts;
        if let Ok(id) = self.submit::<Release>(
            &batch,
            &[],
            &mut Deadline::new(opts.timeout),
            opts.wait,
            true,
            wire::NO_FLAGS,
        ) {
            self.abandon(id);
        }
    }

    fn send_unclaim(&self, key: &str) {
        self.send_unclaim_now(key);
    }
}

impl Inner {
    fn send_unclaim_now(&self, key: &str) {
        // Fire and forget, like `send_release`.
        let opts = self.opts;
        if let Ok(id) = self.submit::<ipc_rpc::memo::CacheUnclaim>(
            &key.to_owned(),
            &[],
            &mut Deadline::new(opts.timeout),
            opts.wait,
            false,
            wire::NO_FLAGS,
        ) {
            self.abandon(id);
        }
    }

    fn round_trip<M: Method, R>(
        &self,
        req: &M::Request,
        opts: CallOptions,
        block: bool,
        f: impl FnOnce(FrameMeta, &[u8]) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        self.round_trip_blobs::<M, R>(req, &[], opts, block, wire::NO_FLAGS, f)
    }

    /// A call of `M` that passes `blobs` with its request; `f` reads the
    /// answer frame.
    pub(crate) fn round_trip_blobs<M: Method, R>(
        &self,
        req: &M::Request,
        blobs: &[BlobHandle],
        opts: CallOptions,
        block: bool,
        flags: u16,
        f: impl FnOnce(FrameMeta, &[u8]) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        let mut deadline = Deadline::new(opts.timeout);
        let id = self.submit::<M>(req, blobs, &mut deadline, opts.wait, block, flags)?;
        self.receive(id, &mut deadline, opts.wait, NO_SALVAGE, f)
            .map_err(session::name_unknown::<M>)
    }

    /// A call of the bytes method `method` with `body`, passing `blobs`:
    /// the envelope and the body are written straight into the ring (no
    /// allocation, one copy); `f` reads the answer frame.
    pub(crate) fn round_trip_raw<R>(
        &self,
        method: u64,
        blobs: &[BlobHandle],
        body: &[u8],
        opts: CallOptions,
        f: impl FnOnce(FrameMeta, &[u8]) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        let mut deadline = Deadline::new(opts.timeout);
        let meta = FrameMeta {
            request_id: 0,
            tag: method,
            kind: wire::REQUEST,
            flags: wire::ENVELOPE,
        };
        let deadline_ns = calls::envelope_deadline(deadline.at());
        let schema = ipc_rpc::provide::BYTES_SCHEMA;
        let id = self.submit_frame(meta, None, &mut deadline, opts.wait, true, |out, meta| {
            let p = out.producer();
            calls::try_send_enveloped_bytes(p, meta, deadline_ns, schema, blobs, body)
        })?;
        self.receive(id, &mut deadline, opts.wait, NO_SALVAGE, f)
    }

    /// Calls `M`; if the call times out after the request went out,
    /// `salvage` cleans up after the late response (it is made only then:
    /// the call itself allocates nothing for it).
    pub(crate) fn call_salvaged<M: Method>(
        &self,
        req: &M::Request,
        opts: CallOptions,
        salvage: impl FnOnce() -> Salvage,
    ) -> Result<M::Response, CallError> {
        let mut deadline = Deadline::new(opts.timeout);
        let id = self.submit::<M>(req, &[], &mut deadline, opts.wait, true, wire::NO_FLAGS)?;
        let s = Some(salvage);
        let f = calls::plain(&self.session, M::ID, session::decode::<M>);
        self.receive(id, &mut deadline, opts.wait, s, f)
    }

    /// Discards the response to `id` when it arrives.
    fn abandon(&self, id: u64) {
        let mut rx = lock(&self.rx);
        if rx.stash.remove(&id).is_none() {
            rx.abandoned.insert(id);
        }
    }

    /// Publishes one request of `M`, passing `blobs` with it; returns its
    /// id. The request carries an envelope if `M` is not the server's own
    /// or `blobs` is not empty (`calls.rs`).
    #[allow(clippy::too_many_arguments)]
    fn submit<M: Method>(
        &self,
        req: &M::Request,
        blobs: &[BlobHandle],
        deadline: &mut Deadline,
        wait: WaitMode,
        block: bool,
        flags: u16,
    ) -> Result<u64, CallError> {
        let mut meta = FrameMeta {
            request_id: 0,
            tag: M::ID,
            kind: wire::REQUEST,
            flags,
        };
        if blobs.is_empty() && !calls::needs_envelope(M::NAME) {
            return self.submit_frame(meta, None, deadline, wait, block, |out, meta| {
                out.try_send(meta, req)
            });
        }
        meta.flags = flags | wire::ENVELOPE;
        let deadline_ns = calls::envelope_deadline(deadline.at());
        self.submit_frame(meta, None, deadline, wait, block, |out, meta| {
            let p = out.producer();
            calls::try_send_enveloped(p, meta, deadline_ns, M::SCHEMA_HASH, blobs, req)
        })
    }

    /// Publishes one frame with `meta` (its `request_id` is `id`, or the
    /// next request id); `send` writes it. Waits for ring room if `block`.
    pub(crate) fn submit_frame(
        &self,
        mut meta: FrameMeta,
        id: Option<u64>,
        deadline: &mut Deadline,
        wait: WaitMode,
        block: bool,
        send: impl FnMut(&mut Outbox<RingRegion>, FrameMeta) -> Result<(), SendError>,
    ) -> Result<u64, CallError> {
        let session = &*self.session;
        session.check()?;
        let mut tx = lock(&self.tx);
        let id = id.unwrap_or_else(|| {
            let id = tx.next_id;
            tx.next_id += 1;
            id
        });
        meta.request_id = id;
        self.put_frame(&mut tx, meta, deadline, wait, block, send)?;
        session.wake_server();
        Ok(id)
    }

    /// Writes one frame with `meta` under the request-ring lock: `send`
    /// writes it (publishing it, or staging it for a batch). Waits for ring
    /// room if `block`; before it waits, it publishes what is staged and
    /// wakes the server (the server cannot free room it does not see).
    /// Rings no doorbell once the frame is written: the caller does, once
    /// per frame or per batch.
    pub(crate) fn put_frame(
        &self,
        tx: &mut Tx,
        meta: FrameMeta,
        deadline: &mut Deadline,
        wait: WaitMode,
        block: bool,
        mut send: impl FnMut(&mut Outbox<RingRegion>, FrameMeta) -> Result<(), SendError>,
    ) -> Result<(), CallError> {
        let session = &*self.session;
        loop {
            match send(&mut tx.outbox, meta) {
                Ok(()) => return Ok(()),
                Err(SendError::Full { need }) => {
                    if !block {
                        return Err(CallError::RingFull);
                    }
                    if let Some(e) = session.state_error() {
                        return Err(e);
                    }
                    let deadline = deadline.at();
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(CallError::Timeout(deadline.saturating_duration_since(now)));
                    }
                    // The server may be throttling us because our response ring
                    // is full: read responses while we wait, or both wait forever.
                    tx.outbox.producer().publish_staged();
                    self.drain_to_stash();
                    session.wake_server();
                    let slice = deadline.min(now + Duration::from_millis(1));
                    match tx
                        .outbox
                        .producer()
                        .wait_for_room(need, &Futex, wait, Some(slice))
                    {
                        Ok(()) | Err(RingError::Timeout) => {}
                        Err(e) => return Err(CallError::Malformed(ProtocolError::Ring(e))),
                    }
                }
                Err(SendError::TooLarge { len, max }) => {
                    return Err(CallError::MessageTooLarge { len, max });
                }
                Err(SendError::Encode(e)) => return Err(CallError::Encode(e)),
                Err(SendError::Ring(e)) => {
                    return Err(CallError::Malformed(ProtocolError::Ring(e)));
                }
            }
        }
    }

    /// Moves every response in the ring into the stash (called by a sender
    /// that waits for room). Skips if another thread is reading.
    fn drain_to_stash(&self) {
        let Ok(mut rx) = self.rx.try_lock() else {
            return;
        };
        let rx = &mut *rx;
        // A ring error stops it: the reader that waits reports it.
        let _ = file_all(&self.invocations, &self.session, rx);
        rx.inbox.consumer().release_and_notify(&self.session.bell);
    }

    /// Waits for the response to request `id`; on a timeout, `salvage` (if
    /// any) will clean up after the late response. Then cleans up after the
    /// orphans' responses it read.
    fn receive<R>(
        &self,
        id: u64,
        deadline: &mut Deadline,
        wait: WaitMode,
        salvage: Option<impl FnOnce() -> Salvage>,
        f: impl FnOnce(FrameMeta, &[u8]) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        let mut rx = self.lock_rx();
        let r = self.receive_locked(&mut rx, id, deadline, wait, salvage, f);
        if rx.salvaged.is_empty() {
            return r;
        }
        let salvaged = std::mem::take(&mut rx.salvaged);
        drop(rx);
        for (s, meta, bytes) in salvaged {
            s(self, meta, &bytes);
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn receive_locked<R>(
        &self,
        rx: &mut Rx,
        id: u64,
        deadline: &mut Deadline,
        wait: WaitMode,
        salvage: Option<impl FnOnce() -> Salvage>,
        f: impl FnOnce(FrameMeta, &[u8]) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        let session = &*self.session;
        loop {
            if let Some(e) = &rx.broken {
                return Err(CallError::Malformed(ProtocolError::Ring(e.clone())));
            }
            // The stash is empty unless calls are pipelined or threads share
            // the client: skip the hash lookup then (it showed in profiles).
            if !rx.stash.is_empty()
                && let Some((meta, bytes)) = rx.stash.remove(&id)
            {
                return f(meta, &bytes);
            }
            match rx.inbox.try_recv() {
                Ok(Some(msg)) if msg.meta.request_id == id && !for_provider(&msg.meta) => {
                    let r = f(msg.meta, msg.bytes);
                    let cap = session.welcome.ring_capacity as u64;
                    if rx.inbox.consumer().unreleased() > cap / 4 {
                        rx.inbox.consumer().release_and_notify(&session.bell);
                    }
                    return r;
                }
                Ok(Some(msg)) => file(
                    &self.invocations,
                    &self.session,
                    &mut rx.stash,
                    &mut rx.abandoned,
                    &mut rx.orphans,
                    &mut rx.salvaged,
                    msg.meta,
                    msg.bytes,
                ),
                Ok(None) => {
                    if let Some(e) = session.state_error() {
                        return Err(e);
                    }
                    let (start, deadline) = (deadline.start(), deadline.at());
                    if Instant::now() >= deadline {
                        // The response may still come: clean up after it, or
                        // drop it, then.
                        match salvage {
                            Some(s) => {
                                rx.orphans.insert(id, s());
                            }
                            None => {
                                rx.abandoned.insert(id);
                            }
                        }
                        return Err(CallError::Timeout(start.elapsed()));
                    }
                    let consumer = rx.inbox.consumer();
                    consumer.release_and_notify(&session.bell);
                    let (seq, waiting) = consumer.data_bell_words();
                    let bell = Doorbell::<StdAtomics>::new(seq, waiting);
                    let poll =
                        || (consumer.has_frame() || session.state_error().is_some()).then_some(());
                    // A timeout here is handled at the top of the loop.
                    let _ = match wait {
                        // Spin only while spinning pays.
                        WaitMode::SpinThenSleep(max) => {
                            bell.wait_adaptive(poll, &Futex, max, &mut rx.spin, Some(deadline))
                        }
                        mode => bell.wait(poll, &Futex, mode, Some(deadline)),
                    };
                }
                Err(e) => {
                    rx.broken = Some(e.clone());
                    return Err(CallError::Malformed(ProtocolError::Ring(e)));
                }
            }
        }
    }
}

impl Inner {
    /// The batch's side of [`receive`](Self::receive): under one lock of
    /// the response ring, hands every response to a call of `calls` that is
    /// present (stashed, or in the ring, read in order) to `on` with the
    /// call's sequence number, filing the others as `receive` does; if none
    /// is present, waits (per `opts.wait`) until one is, or until the
    /// oldest open calls' deadline (`opts.timeout` from their first wait:
    /// [`InFlight::deadline`]), when those are resolved with
    /// [`CallError::Timeout`] and their responses dropped on arrival. A dead server or a corrupt ring resolves every
    /// open call with that error. The ring is released once per batch (and
    /// before any wait). Returns how many calls were resolved.
    pub(crate) fn receive_many(
        &self,
        calls: &mut InFlight,
        opts: CallOptions,
        mut on: impl FnMut(u64, Result<(FrameMeta, &[u8]), CallError>),
    ) -> usize {
        if calls.is_empty() {
            return 0;
        }
        let session = &*self.session;
        if session.forked() {
            // The ring is the parent's: nothing here reads it.
            return calls.resolve_all(|seq, _| on(seq, Err(CallError::Forked)));
        }
        let mut guard = self.lock_rx();
        let rx = &mut *guard;
        let mut got = 0;
        loop {
            if let Some(e) = &rx.broken {
                got += calls.resolve_all(|seq, _| {
                    on(
                        seq,
                        Err(CallError::Malformed(ProtocolError::Ring(e.clone()))),
                    )
                });
                break;
            }
            // Responses read earlier by other readers (threads, a sender
            // that waited for room): only when there are any.
            if !rx.stash.is_empty() {
                got += calls.resolve_where(|seq, id| match rx.stash.remove(&id) {
                    Some((meta, bytes)) => {
                        on(seq, Ok((meta, &bytes)));
                        true
                    }
                    None => false,
                });
            }
            // Every frame present, in place in the inbox's buffer.
            loop {
                match rx.inbox.try_recv() {
                    Ok(Some(msg)) => {
                        if !for_provider(&msg.meta)
                            && let Some(seq) = calls.take(msg.meta.request_id)
                        {
                            on(seq, Ok((msg.meta, msg.bytes)));
                            got += 1;
                        } else {
                            file(
                                &self.invocations,
                                session,
                                &mut rx.stash,
                                &mut rx.abandoned,
                                &mut rx.orphans,
                                &mut rx.salvaged,
                                msg.meta,
                                msg.bytes,
                            );
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        rx.broken = Some(e);
                        break;
                    }
                }
            }
            if rx.broken.is_some() {
                continue;
            }
            if got > 0 || calls.is_empty() {
                break;
            }
            if session.state_error().is_some() {
                got += calls.resolve_all(|seq, _| {
                    on(
                        seq,
                        Err(session.state_error().unwrap_or(CallError::PeerDead)),
                    )
                });
                break;
            }
            let at = calls.deadline(opts.timeout);
            if Instant::now() >= at {
                // The responses may still come: drop them then.
                let abandoned = &mut rx.abandoned;
                got += calls.expire_oldest(|seq, id, waited| {
                    abandoned.insert(id);
                    on(seq, Err(CallError::Timeout(waited)));
                });
                break;
            }
            let consumer = rx.inbox.consumer();
            consumer.release_and_notify(&session.bell);
            let (seq, waiting) = consumer.data_bell_words();
            let bell = Doorbell::<StdAtomics>::new(seq, waiting);
            let poll = || (consumer.has_frame() || session.state_error().is_some()).then_some(());
            // A timeout here is handled at the top of the loop.
            let _ = match opts.wait {
                WaitMode::SpinThenSleep(max) => {
                    bell.wait_adaptive(poll, &Futex, max, &mut rx.spin, Some(at))
                }
                mode => bell.wait(poll, &Futex, mode, Some(at)),
            };
        }
        // One release for the batch, and only once a quarter of the ring
        // waits for it (each release may ring the server's doorbell).
        let cap = session.welcome.ring_capacity as u64;
        if rx.inbox.consumer().unreleased() > cap / 4 {
            rx.inbox.consumer().release_and_notify(&session.bell);
        }
        if !rx.salvaged.is_empty() {
            let salvaged = std::mem::take(&mut rx.salvaged);
            drop(guard);
            for (s, meta, bytes) in salvaged {
                s(self, meta, &bytes);
            }
        }
        got
    }

    /// Discards the responses of every call still open in `calls` when they
    /// arrive (one lock for all).
    pub(crate) fn abandon_all(&self, calls: &mut InFlight) {
        if calls.is_empty() {
            return;
        }
        let mut rx = lock(&self.rx);
        let rx = &mut *rx;
        calls.resolve_all(|_, id| {
            if rx.stash.remove(&id).is_none() {
                rx.abandoned.insert(id);
            }
        });
    }
}

// ---- provided methods: the ring shared with provider threads ----------

/// The response-ring lock of a thread waiting for its own response; while
/// a provider runs, dropping it wakes a provider thread (which reads the
/// ring in its turn).
struct RxGuard<'a> {
    guard: MutexGuard<'a, Rx>,
    invocations: Option<&'a Invocations>,
}

impl std::ops::Deref for RxGuard<'_> {
    type Target = Rx;
    fn deref(&self) -> &Rx {
        &self.guard
    }
}

impl std::ops::DerefMut for RxGuard<'_> {
    fn deref_mut(&mut self) -> &mut Rx {
        &mut self.guard
    }
}

impl Drop for RxGuard<'_> {
    fn drop(&mut self) {
        if let Some(inv) = self.invocations {
            inv.wake_one();
        }
    }
}

impl Inner {
    /// Locks the response ring. While a provider runs, a provider thread
    /// may sleep holding the lock: a thread that finds it taken counts
    /// itself a contender and wakes the sleeper, which lets go; and when
    /// the guard goes, a provider thread is told that nobody reads the ring.
    fn lock_rx(&self) -> RxGuard<'_> {
        if self.invocations.active() {
            let guard = match self.rx.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    let _c = self.invocations.contend();
                    self.nudge();
                    lock(&self.rx)
                }
            };
            return RxGuard {
                guard,
                invocations: Some(&self.invocations),
            };
        }
        RxGuard {
            guard: lock(&self.rx),
            invocations: None,
        }
    }

    /// Wakes whichever thread sleeps on the response ring's futex (it
    /// re-runs its poll).
    pub(crate) fn nudge(&self) {
        let seq = self.session.resp.data_seq();
        // Release: pairs with the Acquire load of `seq` in the sleeper's
        // `Doorbell::wait`, as in `Session::set_state`; the increment keeps a
        // sleeper about to call `futex_wait` from going to sleep.
        seq.fetch_add(1, Ordering::Release);
        Waker::<StdAtomics>::wake(&Futex, seq);
    }

    /// For provider threads: the next invocation (an `INVOKE` frame), read
    /// from the response ring by this thread if no other reads it. `None`
    /// once `stop()` holds or `until` has passed.
    pub(crate) fn next_invocation(
        &self,
        until: Instant,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<(FrameMeta, AlignedVec<16>)>, CallError> {
        let inv = &self.invocations;
        loop {
            if let Some(frame) = inv.pop() {
                return Ok(Some(frame));
            }
            if stop() || Instant::now() >= until {
                return Ok(None);
            }
            self.session.check()?;
            let mut guard = match self.rx.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    // Another thread reads the ring and files invocations;
                    // it tells us when it stops reading.
                    inv.wait(Duration::from_millis(5));
                    continue;
                }
            };
            let rx = &mut *guard;
            if let Some(e) = &rx.broken {
                return Err(CallError::Malformed(ProtocolError::Ring(e.clone())));
            }
            let got = match file_all(&self.invocations, &self.session, rx) {
                Ok(got) => got,
                Err(e) => {
                    rx.broken = Some(e.clone());
                    return Err(CallError::Malformed(ProtocolError::Ring(e)));
                }
            };
            if got || inv.contended() || !rx.salvaged.is_empty() {
                rx.inbox.consumer().release_and_notify(&self.session.bell);
                let salvaged = std::mem::take(&mut rx.salvaged);
                drop(guard);
                // Nobody reads the ring now: another provider thread may.
                inv.wake_one();
                for (s, meta, bytes) in salvaged {
                    s(self, meta, &bytes);
                }
                if inv.contended() {
                    // Let the contender in: it reads the ring meanwhile.
                    inv.wait(Duration::from_micros(200));
                }
                continue;
            }
            let session = &*self.session;
            let consumer = rx.inbox.consumer();
            consumer.release_and_notify(&session.bell);
            let (seq, waiting) = consumer.data_bell_words();
            let bell = Doorbell::<StdAtomics>::new(seq, waiting);
            let poll = || {
                (consumer.has_frame()
                    || session.state_error().is_some()
                    || inv.contended()
                    || stop())
                .then_some(())
            };
            // Bounded, so that a stop nobody signals is still seen.
            let slice = until.min(Instant::now() + Duration::from_millis(50));
            let _ = bell.wait(poll, &Futex, self.opts.wait, Some(slice));
        }
    }

    /// Sends a provider's answer to invocation `id` of `method`.
    pub(crate) fn send_answer(
        &self,
        id: u64,
        method: u64,
        kind: u16,
        flags: u16,
        payload: &[u8],
    ) -> Result<(), CallError> {
        let meta = FrameMeta {
            request_id: id,
            tag: method,
            kind,
            flags,
        };
        self.send_answer_with(meta, |out, m| out.try_send_encoded(m, payload))
    }

    /// Sends a provider's answer with `meta`: `send` writes it straight
    /// into the ring (waiting for room as any request does).
    pub(crate) fn send_answer_with(
        &self,
        meta: FrameMeta,
        send: impl FnMut(&mut Outbox<RingRegion>, FrameMeta) -> Result<(), SendError>,
    ) -> Result<(), CallError> {
        let mut deadline = Deadline::new(self.opts.timeout);
        let id = Some(meta.request_id);
        self.submit_frame(meta, id, &mut deadline, self.opts.wait, true, send)
            .map(|_| ())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.notify().ok();
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}

/// A request sent with [`Client::send`] whose response has not been collected.
/// Dropping it discards the response when it arrives.
///
/// ```no_run
/// use ipc_rpc::builtin::Ping;
/// # let client = cradle_client::Client::connect_default()?;
/// let p = client.send::<Ping>(&b"later".to_vec())?;
/// // ... other work ...
/// assert_eq!(p.wait()?, b"later");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a pending call's response is discarded unless waited for"]
pub struct Pending<'c, M: Method> {
    client: &'c Client,
    id: u64,
    done: bool,
    _m: PhantomData<fn() -> M>,
}

impl<M: Method> fmt::Debug for Pending<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("id", &self.id)
            .field("method", &M::NAME)
            .finish()
    }
}

impl<M: Method> Pending<'_, M> {
    /// The request id.
    ///
    /// ```no_run
    /// use ipc_rpc::builtin::Ping;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let p = client.send::<Ping>(&vec![])?;
    /// println!("request {}", p.id());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Waits for the response with the client's default timeout.
    ///
    /// ```no_run
    /// use ipc_rpc::builtin::Ping;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let echo = client.send::<Ping>(&vec![1, 2])?.wait()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(self) -> Result<M::Response, CallError> {
        let opts = self.client.default_opts();
        self.wait_opts(opts)
    }

    /// Waits for the response with explicit options.
    ///
    /// ```no_run
    /// use cradle_client::{CallOptions, WaitMode};
    /// use ipc_rpc::builtin::Ping;
    /// use std::time::Duration;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let opts = CallOptions { timeout: Duration::from_secs(2), wait: WaitMode::Sleep };
    /// let echo = client.send::<Ping>(&vec![1, 2])?.wait_opts(opts)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_opts(self, opts: CallOptions) -> Result<M::Response, CallError> {
        self.finish(opts, session::decode::<M>)
    }

    /// Waits for the response (default timeout and wait mode) and hands the
    /// validated, archived response to `f` without deserializing it: no
    /// allocation for the response.
    ///
    /// ```no_run
    /// use ipc_rpc::builtin::Ping;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let n = client.send::<Ping>(&vec![0; 64])?.wait_with(|echo| echo.len())?;
    /// assert_eq!(n, 64);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_with<R>(
        self,
        f: impl FnOnce(&<M::Response as Wire>::Archived) -> R,
    ) -> Result<R, CallError> {
        let opts = self.client.default_opts();
        self.finish(opts, |b| session::access::<M, R>(b, f))
    }

    fn finish<R>(
        mut self,
        opts: CallOptions,
        f: impl FnOnce(&[u8]) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        // On error, `drop` marks the id abandoned: its response is discarded.
        self.client.inner.session.check()?;
        self.done = true;
        let mut deadline = Deadline::new(opts.timeout);
        let f = calls::plain(&self.client.inner.session, M::ID, f);
        self.client
            .inner
            .receive(self.id, &mut deadline, opts.wait, NO_SALVAGE, f)
            .map_err(session::name_unknown::<M>)
    }
}

impl<M: Method> Drop for Pending<'_, M> {
    fn drop(&mut self) {
        if !self.done {
            self.client.inner.abandon(self.id);
        }
    }
}

/// The watcher: waits for the control socket to report the server's death
/// (HUP, EOF) or a clean goodbye, then fails every waiting call at once.
/// Descriptor grants it reads are kept for the caller that expects them.
fn watch(session: &Session, stop: &EventFd) {
    use rustix::event::{PollFd, PollFlags, poll};
    loop {
        let mut fds = [
            PollFd::new(&session.socket, PollFlags::IN | PollFlags::RDHUP),
            PollFd::new(stop, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => {
                session.set_state(DEAD);
                return;
            }
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        if fds[0].revents().is_empty() {
            continue;
        }
        if session.read_socket() != SocketState::Quiet {
            return;
        }
    }
}
