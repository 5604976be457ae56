//! The tokio client: calls are futures; one driver task per client reads the
//! response ring and completes them by request id.
//!
//! ```text
//!  task A ─┐ publish (short std lock, no .await inside)    ┌─▶ request ring ─▶ server
//!  task B ─┤ FIFO turn (tokio Mutex) only while waiting      │
//!  task C ─┘ for ring room                                   │
//!     ▲                                                      │
//!     │ oneshot per call            driver task: drain response ring,
//!     └──────────────────────────── complete by id; spin briefly, then set
//!                                   `waiting`, fence, await the eventfd
//!                                   (AsyncFd) or the control socket (HUP)
//! ```
//!
//! The session is opened with `HELLO_WAKE_EVENTFD`: the server wakes this
//! client by writing an eventfd of ours instead of a futex, so no thread ever
//! blocks on a futex for it. Dropping a call's future removes its entry; a late
//! response is then discarded by the driver, after giving back what it
//! granted (a lease, a new large blob, a descriptor) for the calls that
//! carry a [`Salvage`].
//!
//! The handshake, the liveness state, the descriptor grants and the blob
//! mappings are the session core's (`session.rs`), shared with the sync
//! client.

use crate::calls;
use crate::error::ConnectError;
use crate::options::{CallOptions, ClientOptions, MemoMode};
use crate::serving::for_provider;
use crate::session::{self, DEAD, Owner, Salvage, Session, SocketState, lock};
use ipc_core::doorbell::{WaitMode, cpu_contended};
use ipc_core::ring::{Consumer, FrameMeta, Producer, RingMemory, RingRegion};
use ipc_core::sync::{AtomicBool, AtomicU32, AtomicUsize, Atomics, Ordering, StdAtomics};
use ipc_rpc::blob::{BlobHandle, Release, ReleaseBatch};
use ipc_rpc::handshake::HELLO_WAKE_EVENTFD;
use ipc_rpc::idmap::IdMap;
use ipc_rpc::{CallError, Inbox, Method, Outbox, ProtocolError, SendError, Wire, wire};
use rkyv::util::AlignedVec;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, oneshot};

/// How long the driver keeps re-polling (yielding to other tasks) after the
/// last response before it declares itself asleep.
const DRIVER_SPIN: Duration = Duration::from_micros(20);

/// The longest a call busy-polls the response ring itself in `WaitMode::Spin`
/// before it leaves the wait to the driver (an async task must not hold its
/// thread for long).
const CALL_SPIN_MAX: Duration = Duration::from_millis(1);

type Reply = Result<(FrameMeta, AlignedVec<16>), CallError>;

/// `INVOKE`/`CANCEL` frames for an async provider.
pub(crate) type InvokeTx = tokio::sync::mpsc::UnboundedSender<(FrameMeta, AlignedVec<16>)>;

/// A request's payload: a value to serialize into the ring, or bytes
/// already encoded (an envelope and a body).
enum Body<'a, T> {
    Typed(&'a T),
    /// A value behind an envelope (deadline, schema hash, blobs).
    Enveloped(u64, u64, &'a [BlobHandle], &'a T),
    Encoded(&'a [u8]),
}

/// An async connection to the CRADLE server, for tokio.
///
/// Cheap to clone (clones share the session); `Send + Sync`; its call
/// futures are `Send`. Many tasks may call at once: thousands of calls can be
/// in flight, answered in any order.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use cradle_client::AsyncClient;
/// use ipc_rpc::builtin::Ping;
///
/// let client = AsyncClient::connect_default().await?;
/// let echo = client.call::<Ping>(&b"hi".to_vec()).await?;
/// assert_eq!(echo, b"hi");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AsyncClient {
    pub(crate) shared: Arc<Shared>,
    _driver: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Who waits for a response.
enum Waiter {
    /// A call's future.
    Call(oneshot::Sender<Reply>),
    /// Nobody (the future was dropped): clean up after the response.
    Orphan(Salvage),
}

pub(crate) struct Shared {
    pub(crate) session: Session,
    pub(crate) opts: ClientOptions,
    tx: Mutex<Tx>,
    /// FIFO turns for senders that must wait for ring room.
    turn: tokio::sync::Mutex<()>,
    /// Senders queued for, or holding, a turn. While any, new calls queue
    /// too instead of taking freed room first (fairness).
    slow: AtomicUsize,
    /// Signalled by the driver whenever it wakes: ring room may have appeared.
    space: Notify,
    pending: Mutex<IdMap<Waiter>>,
    /// Releases went back into the queue for want of ring room: the
    /// driver sends them once responses free some.
    release_backlog: AtomicBool,
    /// The response ring. The driver drains it; a call that spins drains it
    /// too (with `try_lock`), completing whichever calls it finds answered.
    inbox: Mutex<Inbox<RingRegion>>,
    /// Where `INVOKE`/`CANCEL` frames go while an async provider runs
    /// (else they are dropped).
    pub(crate) invocations: Mutex<Option<InvokeTx>>,
    /// The wake descriptor the server writes while `data_waiting` is set.
    /// The driver sleeps on it; so does one waiting call (`listener`).
    wake: AsyncFd<Fd>,
    /// A call listens on `wake` (at most one); the driver then leaves the
    /// descriptor to it, so that a wake reaches one task, not two.
    listener: AtomicBool,
    /// Signalled when the listening call stops listening: the driver takes
    /// the descriptor back.
    listener_left: Notify,
    /// One `get_or_compute` per key at a time (`turns.rs`).
    pub(crate) turns: crate::turns::AsyncTurns,
}

struct Tx {
    outbox: Outbox<RingRegion>,
    next_id: u64,
}

impl fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncClient")
            .field("session_id", &self.shared.session.welcome.session_id)
            .finish()
    }
}

/// An owned descriptor for `AsyncFd`.
struct Fd(OwnedFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Shared {
    fn state_error(&self) -> Option<CallError> {
        self.session.state_error()
    }

    /// Fails every pending call with the session's final state (the state
    /// is set before the map is drained, so a call that registers after the
    /// drain sees it).
    fn fail_all(&self) {
        let drained: Vec<_> = lock(&self.pending).drain().collect();
        for (_, w) in drained {
            if let Waiter::Call(tx) = w {
                let err = self.state_error().unwrap_or(CallError::PeerDead);
                let _ = tx.send(Err(err));
            }
        }
        self.space.notify_waiters();
    }

    /// The response ring is corrupt: the session is dead; every call fails
    /// with what was found.
    fn fail_corrupt(&self, e: &ipc_core::ring::RingError) {
        self.session.set_state(DEAD);
        let drained: Vec<_> = lock(&self.pending).drain().collect();
        for (_, w) in drained {
            if let Waiter::Call(tx) = w {
                let _ = tx.send(Err(CallError::Malformed(ProtocolError::Ring(e.clone()))));
            }
        }
        self.space.notify_waiters();
    }

    /// Publishes a request nobody waits for; `false` if the ring has no
    /// room now (or the session cannot send).
    fn publish_unanswered<T: Wire>(&self, tag: u64, req: &T) -> bool {
        if self.session.check().is_err() {
            return true;
        }
        let mut tx = lock(&self.tx);
        let id = tx.next_id;
        tx.next_id += 1;
        let meta = FrameMeta {
            request_id: id,
            tag,
            kind: wire::REQUEST,
            flags: wire::NO_FLAGS,
        };
        match tx.outbox.try_send(meta, req) {
            Ok(()) => {
                drop(tx);
                self.session.wake_server();
                true
            }
            Err(SendError::Full { .. }) => false,
            // Nothing to retry: the batch cannot go (a broken ring).
            Err(_) => true,
        }
    }
}

impl Owner for Shared {
    fn session(&self) -> &Session {
        &self.session
    }

    fn send_release(&self, batch: ReleaseBatch) {
        // Fire and forget: the driver discards the answer (no call waits
        // for its id). Never waits: this runs in `Drop`, maybe in the
        // driver itself.
        if !self.publish_unanswered(Release::ID, &batch) {
            self.session.requeue(batch);
            // Relaxed: a hint the driver reads after its next frames; the
            // queue itself is behind a mutex.
            self.release_backlog.store(true, Ordering::Relaxed);
        }
    }

    fn send_unclaim(&self, key: &str) {
        // Fire and forget; a full ring leaves the claim to its deadline.
        let _ = self.publish_unanswered(ipc_rpc::memo::CacheUnclaim::ID, &key.to_owned());
    }
}

/// Counts a sender in `Shared::slow` while it lives.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        // Relaxed: a counter read as a hint (see `publish`).
        n.fetch_add(1, Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        // Relaxed: as in `new`.
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Holds the request ring's `space_waiting` at 1; clears it when dropped,
/// also when the call's future is dropped while it waits.
struct Armed<'a>(&'a AtomicU32);

impl<'a> Armed<'a> {
    fn new(waiting: &'a AtomicU32) -> Self {
        // Relaxed: ordered by the SeqCst fence that follows at the call site.
        waiting.store(1, Ordering::Relaxed);
        Self(waiting)
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        // Relaxed: only the sender holding the turn writes the flag.
        self.0.store(0, Ordering::Relaxed);
    }
}

/// A call's entry in the pending map, and its end of the hand-off. If the
/// call's future is dropped before the response, the entry goes, or, for a
/// call with a [`Salvage`] whose request was sent, becomes an orphan that
/// cleans up after the response when it comes.
struct Registration<'a> {
    shared: &'a Shared,
    id: u64,
    reply: oneshot::Receiver<Reply>,
    salvage: Option<Salvage>,
    /// The request is in the ring.
    sent: bool,
    armed: bool,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let salvage = if self.sent { self.salvage.take() } else { None };
        let mut pending = lock(&self.shared.pending);
        let was_waiting = pending.remove(&self.id).is_some();
        match salvage {
            Some(s) if was_waiting => {
                pending.insert(self.id, Waiter::Orphan(s));
            }
            Some(s) => {
                drop(pending);
                // Delivered while we were being dropped: clean up now.
                if let Ok(Ok((meta, bytes))) = self.reply.try_recv() {
                    s(self.shared, meta, &bytes);
                }
            }
            None => {
                if !was_waiting && let Ok(Ok((meta, bytes))) = self.reply.try_recv() {
                    // Delivered while we were being dropped: its result
                    // leases go back.
                    self.shared.session.give_back_unread(meta, &bytes);
                }
            }
        }
    }
}

impl AsyncClient {
    /// Connects to the server at `path` (must be called inside a tokio
    /// runtime; the handshake runs on the blocking pool).
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect("/run/user/1000/cradle.sock").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, ConnectError> {
        Self::connect_with(path, ClientOptions::default()).await
    }

    /// Connects to `CRADLE_SOCKET`, else the default socket path.
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_default() -> Result<Self, ConnectError> {
        Self::connect(session::default_socket_path()).await
    }

    /// Connects with explicit options. `opts.wait` decides how a call waits:
    /// `Spin` busy-polls the response ring for up to 1 ms, `SpinThenSleep(d)`
    /// for `d` (capped at 1 ms), then the call awaits the driver; `Sleep`
    /// awaits at once, and the driver then sleeps right after each burst.
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use cradle_client::{AsyncClient, ClientOptions, WaitMode};
    ///
    /// let opts = ClientOptions { wait: WaitMode::Sleep, ..ClientOptions::default() };
    /// let client = AsyncClient::connect_with(cradle_client::default_socket_path(), opts).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(
        path: impl AsRef<Path>,
        opts: ClientOptions,
    ) -> Result<Self, ConnectError> {
        let path: PathBuf = path.as_ref().to_path_buf();
        let (session, wake) =
            tokio::task::spawn_blocking(move || Session::open(&path, HELLO_WAKE_EVENTFD))
                .await
                .map_err(|e| ConnectError::Io(std::io::Error::other(e)))??;
        // `Session::open` checked that the Welcome came with it.
        let wake: OwnedFd = wake.ok_or(crate::error::HandshakeError::Descriptors {
            expected: 4,
            got: 3,
        })?;
        rustix::io::ioctl_fionbio(&wake, true).map_err(std::io::Error::from)?;
        let sock = session.socket.try_clone()?;
        // SAFETY: `Fd` owns its descriptor (an `OwnedFd` duplicated above): it is
        // open, stays open and refers to the same file description until the
        // `AsyncFd` drops it, and `as_raw_fd` always returns that descriptor.
        let wake = unsafe { AsyncFd::register_with_interest(Fd(wake), Interest::READABLE) }
            .map_err(|e| ConnectError::Io(e.into_parts().1))?;
        // SAFETY: as above, for the duplicate of the control socket.
        let sock = unsafe { AsyncFd::register_with_interest(Fd(sock), Interest::READABLE) }
            .map_err(|e| ConnectError::Io(e.into_parts().1))?;
        // SAFETY: this client is the only producer of the request ring and the
        // only consumer of the response ring (the server holds the other ends in
        // another process); nothing else in this process touches the regions.
        let (producer, consumer) = unsafe {
            (
                Producer::attach(session.req.clone()),
                Consumer::attach(session.resp.clone()),
            )
        };
        let shared = Arc::new(Shared {
            session,
            opts,
            tx: Mutex::new(Tx {
                outbox: Outbox::new(producer),
                next_id: 1,
            }),
            turn: tokio::sync::Mutex::new(()),
            slow: AtomicUsize::new(0),
            space: Notify::new(),
            pending: Mutex::new(IdMap::default()),
            release_backlog: AtomicBool::new(false),
            inbox: Mutex::new(Inbox::new(consumer)),
            invocations: Mutex::new(None),
            wake,
            listener: AtomicBool::new(false),
            listener_left: Notify::new(),
            turns: Default::default(),
        });
        let driver = tokio::spawn(drive(Arc::clone(&shared), sock));
        Ok(Self {
            shared,
            _driver: Arc::new(AbortOnDrop(driver.abort_handle())),
        })
    }

    /// This session's id.
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// println!("session {}", client.session_id());
    /// # Ok(()) }
    /// ```
    pub fn session_id(&self) -> u64 {
        self.shared.session.welcome.session_id
    }

    /// The largest request payload one call can carry.
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let data = vec![0u8; 1 << 20];
    /// if data.len() > client.max_message() {
    ///     // send it as a blob instead
    /// }
    /// # Ok(()) }
    /// ```
    pub fn max_message(&self) -> usize {
        ipc_core::ring::max_payload_len(self.shared.session.welcome.ring_capacity as usize)
    }

    /// Calls `M`, waiting at most the client's default timeout (30 s). The
    /// future may be dropped at any time (`select!`, `timeout`): the client
    /// stays usable and the late response is discarded.
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use ipc_rpc::builtin::Ping;
    ///
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let echo = client.call::<Ping>(&b"hi".to_vec()).await?;
    /// // Or race it against something else: dropping the loser is fine.
    /// let req = vec![1];
    /// tokio::select! {
    ///     r = client.call::<Ping>(&req) => { r?; }
    ///     _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn call<M: Method>(&self, req: &M::Request) -> Result<M::Response, CallError> {
        self.call_timeout::<M>(req, self.shared.opts.timeout).await
    }

    /// Calls `M` with its own deadline.
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use ipc_rpc::builtin::Ping;
    /// use std::time::Duration;
    ///
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// client.call_timeout::<Ping>(&vec![], Duration::from_millis(100)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call_timeout<M: Method>(
        &self,
        req: &M::Request,
        timeout: Duration,
    ) -> Result<M::Response, CallError> {
        let f = calls::plain(&self.shared.session, M::ID, session::decode::<M>);
        self.round_trip::<M, _>(req, &[], timeout, None, wire::NO_FLAGS, f)
            .await
            .map_err(session::name_unknown::<M>)
    }

    /// Calls a memoized method `M` with `memo` saying how its memo is used
    /// for this call, as [`Client::call_memo`](crate::Client::call_memo).
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use cradle_client::MemoMode;
    /// use ipc_rpc::example::{Work, WorkRequest};
    ///
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let req = WorkRequest { seed: 1, sleep_ms: 0, input: None, out_len: 0 };
    /// client.call_memo::<Work>(&req, MemoMode::Bypass).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call_memo<M: Method>(
        &self,
        req: &M::Request,
        memo: MemoMode,
    ) -> Result<M::Response, CallError> {
        let timeout = self.shared.opts.timeout;
        let f = calls::plain(&self.shared.session, M::ID, session::decode::<M>);
        self.round_trip::<M, _>(req, &[], timeout, None, memo.flags(), f)
            .await
            .map_err(session::name_unknown::<M>)
    }

    /// Same as [`call_timeout`](Self::call_timeout) with [`CallOptions`]
    /// (its `timeout`; the wait mode is the client's, see
    /// [`connect_with`](Self::connect_with)).
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use cradle_client::{CallOptions, WaitMode};
    /// use ipc_rpc::builtin::Ping;
    /// use std::time::Duration;
    ///
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let opts = CallOptions { timeout: Duration::from_secs(1), wait: WaitMode::Sleep };
    /// client.call_opts::<Ping>(&vec![], opts).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call_opts<M: Method>(
        &self,
        req: &M::Request,
        opts: CallOptions,
    ) -> Result<M::Response, CallError> {
        self.call_timeout::<M>(req, opts.timeout).await
    }

    /// Calls `M` and hands the validated, archived response to `f` without
    /// deserializing it (no allocation for the response's contents).
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use ipc_rpc::builtin::Ping;
    ///
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let n = client.call_with::<Ping, _>(&vec![7; 100], |echo| echo.len()).await?;
    /// assert_eq!(n, 100);
    /// # Ok(()) }
    /// ```
    pub async fn call_with<M: Method, R>(
        &self,
        req: &M::Request,
        f: impl FnOnce(&<M::Response as Wire>::Archived) -> R,
    ) -> Result<R, CallError> {
        let access = |b: &[u8]| session::access::<M, R>(b, f);
        let f = calls::plain(&self.shared.session, M::ID, access);
        self.round_trip::<M, _>(req, &[], self.shared.opts.timeout, None, wire::NO_FLAGS, f)
            .await
            .map_err(session::name_unknown::<M>)
    }

    /// Calls `M`; if the future is dropped (or times out) after the request
    /// went out, `salvage` cleans up after the late response.
    pub(crate) async fn call_salvaged<M: Method>(
        &self,
        req: &M::Request,
        timeout: Duration,
        salvage: Salvage,
    ) -> Result<M::Response, CallError> {
        let f = calls::plain(&self.shared.session, M::ID, session::decode::<M>);
        self.round_trip::<M, _>(req, &[], timeout, Some(salvage), wire::NO_FLAGS, f)
            .await
    }

    /// One call: publish, spin per the wait mode, then await the driver. The
    /// deadline bounds every wait; only the waits that can block carry a
    /// timer.
    pub(crate) async fn round_trip<M: Method, R>(
        &self,
        req: &M::Request,
        blobs: &[BlobHandle],
        timeout: Duration,
        salvage: Option<Salvage>,
        flags: u16,
        f: impl FnOnce(FrameMeta, &[u8]) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        let start = Instant::now();
        let deadline = start + timeout;
        if blobs.is_empty() && !calls::needs_envelope(M::NAME) {
            let body = Body::Typed(req);
            return self
                .round_trip_body(M::ID, flags, body, start, deadline, salvage, f)
                .await;
        }
        let deadline_ns = calls::envelope_deadline(deadline);
        let body = Body::Enveloped(deadline_ns, M::SCHEMA_HASH, blobs, req);
        let flags = flags | wire::ENVELOPE;
        self.round_trip_body(M::ID, flags, body, start, deadline, salvage, f)
            .await
    }

    /// A call of the bytes method `method`: `payload` is the request's,
    /// envelope included.
    pub(crate) async fn round_trip_raw<R>(
        &self,
        method: u64,
        payload: &[u8],
        timeout: Duration,
        f: impl FnOnce(FrameMeta, &[u8]) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let body = Body::<()>::Encoded(payload);
        self.round_trip_body(method, wire::ENVELOPE, body, start, deadline, None, f)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn round_trip_body<T: Wire, R>(
        &self,
        method: u64,
        flags: u16,
        body: Body<'_, T>,
        start: Instant,
        deadline: Instant,
        salvage: Option<Salvage>,
        f: impl FnOnce(FrameMeta, &[u8]) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        let sh = &*self.shared;
        sh.session.check()?;
        let mut reg = self
            .publish(method, flags, body, salvage, start, deadline)
            .await?;
        // Spin first (per the wait mode), reading the ring ourselves as the
        // sync client does; then leave the wait to the driver.
        let spin = match sh.opts.wait {
            WaitMode::Spin => CALL_SPIN_MAX,
            WaitMode::Sleep => Duration::ZERO,
            // No spinning while this thread's CPU is contended: the spin
            // would hold the CPU the server needs (docs/architecture.md,
            // "Waiting under load").
            WaitMode::SpinThenSleep(_) if cpu_contended(start) => Duration::ZERO,
            WaitMode::SpinThenSleep(d) => d.min(CALL_SPIN_MAX),
        }
        .min(deadline.saturating_duration_since(start));
        let mut f = Some(f);
        if !spin.is_zero() {
            match spin_for_reply(sh, reg.id, &mut reg.reply, spin, &mut f) {
                Spun::Mine(r) => {
                    reg.armed = false;
                    return r;
                }
                Spun::Reply(r) => {
                    reg.armed = false;
                    let (meta, bytes) = r?;
                    let f = f.take().expect("f is used once");
                    return f(meta, &bytes);
                }
                Spun::Nothing => {}
            }
        }
        match tokio::time::timeout_at(deadline.into(), self.await_reply(&mut reg, &mut f)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout(start.elapsed())),
        }
    }

    /// Waits for the response to `reg`: handed over by the driver (the
    /// oneshot), or, for the one call that listens on the wake descriptor
    /// (a `block_on` caller), read in place as soon as the reactor wakes
    /// it.
    ///
    /// Why: left to the driver, a sleeping call's answer took two task
    /// hops after the server's wake (reactor -> driver task -> oneshot ->
    /// this task), and on a multi-thread runtime, or a `block_on` caller,
    /// the second hop is a wake-up of another thread. The listener takes
    /// one hop. While a call listens, the driver does not sleep on the
    /// descriptor (one task per wake, not two); the listener does the
    /// driver's work on every wake (every frame in the ring to its call,
    /// the release, senders waiting for room) and hands the descriptor
    /// back when it stops (`listener_left`). The wait protocol stays the
    /// driver's: it sets `data_waiting` before it sleeps, whatever it
    /// sleeps on, and a frame it finds when it takes the descriptor back is
    /// read then; tokio keeps a readiness that nobody awaited, so a wake
    /// that lands between the two is not lost.
    async fn await_reply<R>(
        &self,
        reg: &mut Registration<'_>,
        f: &mut Option<impl FnOnce(FrameMeta, &[u8]) -> Result<R, CallError>>,
    ) -> Result<R, CallError> {
        let sh = &*self.shared;
        // Only a call polled outside any task (a `block_on` caller): the
        // driver's hand-over is a wake-up of another thread, or a second
        // task poll, for it alone. A task on a runtime worker is woken on
        // the driver's own thread; there the hand-back to the driver after
        // every call measured slower than the hop it saves.
        let listening = if tokio::task::try_id().is_none() {
            Listening::claim(&sh.listener, &sh.listener_left)
        } else {
            None
        };
        loop {
            tokio::select! {
                biased;
                r = &mut reg.reply => {
                    reg.armed = false;
                    let (meta, bytes) =
                        r.map_err(|_| sh.state_error().unwrap_or(CallError::PeerDead))??;
                    let f = f.take().expect("f is used once");
                    return f(meta, &bytes);
                }
                r = sh.wake.readable(), if listening.is_some() => {
                    if let Ok(mut g) = r {
                        g.clear_ready();
                    }
                    drain_eventfd(sh.wake.get_ref());
                    // We took a wake meant for the driver: do its work. The
                    // lock, not `try_lock`: a holder may have read the ring
                    // before the frame this wake announces landed.
                    let mine = take_frames(sh, reg.id, f);
                    // The wake may have been for request-ring room.
                    sh.space.notify_waiters();
                    if let Some(r) = mine {
                        reg.armed = false;
                        return r;
                    }
                }
            }
        }
    }

    /// Registers the call and publishes its request, waiting (fairly, in FIFO
    /// order) for ring room if needed.
    async fn publish<T: Wire>(
        &self,
        method: u64,
        flags: u16,
        req: Body<'_, T>,
        salvage: Option<Salvage>,
        start: Instant,
        deadline: Instant,
    ) -> Result<Registration<'_>, CallError> {
        let sh = &*self.shared;
        let id = {
            let mut tx = lock(&sh.tx);
            let id = tx.next_id;
            tx.next_id += 1;
            id
        };
        let (reply_tx, reply) = oneshot::channel();
        lock(&sh.pending).insert(id, Waiter::Call(reply_tx));
        let mut reg = Registration {
            shared: sh,
            id,
            reply,
            salvage,
            sent: false,
            armed: true,
        };
        // A death after our insert is seen here (see `fail_all`).
        if let Some(e) = sh.state_error() {
            return Err(e);
        }
        let meta = FrameMeta {
            request_id: id,
            tag: method,
            kind: wire::REQUEST,
            flags,
        };
        let req = &req;
        // Fast path: no turn needed when the ring has room and nobody queues.
        // Relaxed: a hint; a sender that misses a fresh waiter only gets ahead
        // of it once.
        if sh.slow.load(Ordering::Relaxed) == 0 && self.try_publish(meta, req)?.is_none() {
            reg.sent = true;
            return Ok(reg);
        }
        // Slow path: wait for a turn and for room, within the deadline (the
        // fast path above never blocks, so it needs no timer).
        let slow = self.publish_waiting(meta, req);
        match tokio::time::timeout_at(deadline.into(), slow).await {
            Ok(Ok(())) => {
                reg.sent = true;
                Ok(reg)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CallError::Timeout(start.elapsed())),
        }
    }

    /// Publishes in FIFO turn with the other slow senders, waiting for ring
    /// room as long as it takes (the caller bounds it with its deadline).
    async fn publish_waiting<T: Wire>(
        &self,
        meta: FrameMeta,
        req: &Body<'_, T>,
    ) -> Result<(), CallError> {
        let sh = &*self.shared;
        let _queued = Queued::new(&sh.slow);
        let _turn = sh.turn.lock().await;
        loop {
            let Some(need) = self.try_publish(meta, req)? else {
                return Ok(());
            };
            // Wait for room: arm the request ring's space doorbell (the
            // server rings it through our eventfd), then re-check before
            // awaiting.
            let notified = sh.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let armed = Armed::new(sh.session.req.space_waiting());
            // The SeqCst fence of the doorbell protocol (docs/design.md §6):
            // pairs with the server's fence after it stores `head`.
            StdAtomics::fence(Ordering::SeqCst);
            let room = lock(&sh.tx)
                .outbox
                .producer()
                .has_room(need)
                .unwrap_or(true);
            if !room && sh.state_error().is_none() {
                notified.await;
            }
            drop(armed);
            if let Some(e) = sh.state_error() {
                return Err(e);
            }
        }
    }

    /// Publishes once: `Ok(None)` if sent, `Ok(Some(need))` if the ring has
    /// no room for `need` bytes now.
    fn try_publish<T: Wire>(
        &self,
        meta: FrameMeta,
        req: &Body<'_, T>,
    ) -> Result<Option<usize>, CallError> {
        let sh = &*self.shared;
        let r = match req {
            Body::Typed(v) => lock(&sh.tx).outbox.try_send(meta, *v),
            Body::Enveloped(deadline_ns, schema, blobs, v) => calls::try_send_enveloped(
                lock(&sh.tx).outbox.producer(),
                meta,
                *deadline_ns,
                *schema,
                blobs,
                *v,
            ),
            Body::Encoded(b) => lock(&sh.tx).outbox.try_send_encoded(meta, b),
        };
        match r {
            Ok(()) => {
                sh.session.wake_server();
                Ok(None)
            }
            Err(SendError::Full { need }) => Ok(Some(need)),
            Err(SendError::TooLarge { len, max }) => Err(CallError::MessageTooLarge { len, max }),
            Err(SendError::Encode(e)) => Err(CallError::Encode(e)),
            Err(SendError::Ring(e)) => Err(CallError::Malformed(ProtocolError::Ring(e))),
        }
    }
}

impl AsyncClient {
    /// Sends a provider's answer frame (`meta` names the invocation),
    /// waiting (in FIFO turn with other senders) for ring room.
    pub(crate) async fn send_answer(
        &self,
        meta: FrameMeta,
        payload: &[u8],
    ) -> Result<(), CallError> {
        let sh = &*self.shared;
        let start = Instant::now();
        let deadline = start + sh.opts.timeout;
        let body = Body::<()>::Encoded(payload);
        sh.session.check()?;
        // Relaxed: a hint, as in `publish` (pairs with nothing; a sender that
        // misses a fresh waiter only gets ahead of it once).
        if sh.slow.load(Ordering::Relaxed) == 0 && self.try_publish(meta, &body)?.is_none() {
            return Ok(());
        }
        let slow = self.publish_waiting(meta, &body);
        match tokio::time::timeout_at(deadline.into(), slow).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout(start.elapsed())),
        }
    }
}

/// Completes every call whose response is in the ring. `Err` if the ring is
/// corrupt (then every call has been failed).
fn complete_all(shared: &Shared, inbox: &mut Inbox<RingRegion>) -> Result<bool, ()> {
    let mut got = false;
    loop {
        match inbox.try_recv() {
            Ok(Some(msg)) => {
                got = true;
                deliver(shared, msg);
            }
            Ok(None) => return Ok(got),
            Err(e) => {
                shared.fail_corrupt(&e);
                return Err(());
            }
        }
    }
}

/// Wakes senders waiting for request-ring room if one is armed. Relaxed: a
/// hint; the sender re-checks the room itself after being notified.
fn notify_space(shared: &Shared) {
    if shared.session.req.space_waiting().load(Ordering::Relaxed) != 0 {
        shared.space.notify_waiters();
    }
}

/// What a call's own spin found.
enum Spun<R> {
    /// Its response was in the ring: decoded in place (no copy, no hand-off).
    Mine(Result<R, CallError>),
    /// Another reader delivered it.
    Reply(Reply),
    /// Nothing within the spin budget.
    Nothing,
}

/// Busy-polls for `spin` for the response to `id`, reading the response ring
/// itself whenever it holds a frame: its own response is decoded right from
/// the ring's private copy; others' are handed to their calls.
fn spin_for_reply<R, F: FnOnce(FrameMeta, &[u8]) -> Result<R, CallError>>(
    sh: &Shared,
    id: u64,
    reply_rx: &mut oneshot::Receiver<Reply>,
    spin: Duration,
    f: &mut Option<F>,
) -> Spun<R> {
    let until = Instant::now() + spin;
    let mut polls = 0u32;
    loop {
        match reply_rx.try_recv() {
            Ok(r) => return Spun::Reply(r),
            Err(oneshot::error::TryRecvError::Closed) => return Spun::Nothing,
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        if let Ok(mut inbox) = sh.inbox.try_lock()
            && inbox.consumer().has_frame()
        {
            let mut mine = None;
            loop {
                match inbox.try_recv() {
                    Ok(Some(msg))
                        if msg.meta.request_id == id
                            && mine.is_none()
                            && !for_provider(&msg.meta) =>
                    {
                        // Ours: drop the hand-off entry, read in place.
                        lock(&sh.pending).remove(&id);
                        let f = f.take().expect("f is used once");
                        mine = Some(f(msg.meta, msg.bytes));
                    }
                    Ok(Some(msg)) => deliver(sh, msg),
                    Ok(None) => break,
                    Err(e) => {
                        sh.fail_corrupt(&e);
                        return Spun::Nothing;
                    }
                }
            }
            let cap = sh.session.welcome.ring_capacity as u64;
            if inbox.consumer().unreleased() > cap / 4 {
                inbox.consumer().release_and_notify(&sh.session.bell);
            }
            if let Some(r) = mine {
                return Spun::Mine(r);
            }
            continue;
        }
        polls += 1;
        if polls.is_multiple_of(32) && Instant::now() >= until {
            return Spun::Nothing;
        }
        std::hint::spin_loop();
    }
}

/// The listener role of one waiting call (see `AsyncClient::await_reply`):
/// given back when the call ends or its future is dropped, and the driver
/// told to take the wake descriptor back.
struct Listening<'a> {
    flag: &'a AtomicBool,
    left: &'a Notify,
}

impl<'a> Listening<'a> {
    /// The role if no other call holds it.
    fn claim(flag: &'a AtomicBool, left: &'a Notify) -> Option<Self> {
        // Relaxed: the flag only says who sleeps on the wake descriptor; no
        // data is published through it. The driver reads it before it
        // sleeps; the hand-back is ordered by `left` (see `drop`).
        flag.compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .map(|_| Self { flag, left })
    }
}

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        // Relaxed: published by the `notify_one` that follows (the Notify
        // orders it before the driver's next read of the flag, which comes
        // after its `notified()` completes).
        self.flag.store(false, Ordering::Relaxed);
        // A permit if the driver is not waiting yet: it cannot miss this.
        self.left.notify_one();
    }
}

/// Reads every frame in the response ring, under the inbox lock, as the
/// driver does after a wake: the response to `id` is decoded in place (by
/// `f`) and returned; the others go to their calls. Releases what it read
/// and sends releases held back for want of request-ring room.
fn take_frames<R, F: FnOnce(FrameMeta, &[u8]) -> Result<R, CallError>>(
    sh: &Shared,
    id: u64,
    f: &mut Option<F>,
) -> Option<Result<R, CallError>> {
    let mut mine = None;
    let mut got = false;
    {
        let mut inbox = lock(&sh.inbox);
        loop {
            match inbox.try_recv() {
                Ok(Some(msg))
                    if msg.meta.request_id == id && mine.is_none() && !for_provider(&msg.meta) =>
                {
                    got = true;
                    lock(&sh.pending).remove(&id);
                    let f = f.take().expect("f is used once");
                    mine = Some(f(msg.meta, msg.bytes));
                }
                Ok(Some(msg)) => {
                    got = true;
                    deliver(sh, msg);
                }
                Ok(None) => break,
                Err(e) => {
                    sh.fail_corrupt(&e);
                    return None;
                }
            }
        }
        if got {
            inbox.consumer().release_and_notify(&sh.session.bell);
        }
    }
    // Relaxed: see `send_release`.
    if got && sh.release_backlog.swap(false, Ordering::Relaxed) {
        let batch = sh.session.take_releases();
        if !batch.leases.is_empty() || !batch.aborted.is_empty() {
            sh.send_release(batch);
        }
    }
    mine
}

/// Hands a response to its call (copying it out of the ring), cleans up
/// after it if its call was dropped, or drops it if nobody waits for it.
fn deliver(sh: &Shared, msg: ipc_rpc::Message<'_>) {
    if for_provider(&msg.meta) {
        // For the async provider, if one runs (`async_provider.rs`).
        if let Some(tx) = &*lock(&sh.invocations) {
            let mut copy = AlignedVec::<16>::with_capacity(msg.bytes.len());
            copy.extend_from_slice(msg.bytes);
            let _ = tx.send((msg.meta, copy));
        }
        return;
    }
    let mut pending = lock(&sh.pending);
    match pending.remove(&msg.meta.request_id) {
        Some(Waiter::Call(tx)) => {
            let mut copy = AlignedVec::<16>::with_capacity(msg.bytes.len());
            copy.extend_from_slice(msg.bytes);
            // Sent under the lock: a call whose future is being dropped
            // (`Registration::drop`, which takes the lock) either still
            // finds its entry, or finds the response in its receiver.
            let _ = tx.send(Ok((msg.meta, copy)));
        }
        Some(Waiter::Orphan(s)) => {
            drop(pending);
            s(sh, msg.meta, msg.bytes);
        }
        // No entry: the call was dropped, or nobody waits (a release):
        // result blobs its envelope lists go back.
        None => {
            drop(pending);
            sh.session.give_back_unread(msg.meta, msg.bytes);
        }
    }
}

/// The driver task: completes calls from the response ring, sleeps on the
/// wake eventfd, and watches the control socket.
async fn drive(shared: Arc<Shared>, sock: AsyncFd<Fd>) {
    let wake = &shared.wake;
    let mut last_frame = Instant::now();
    let driver_spin = if shared.opts.wait == WaitMode::Sleep {
        Duration::ZERO
    } else {
        DRIVER_SPIN
    };
    loop {
        let got = {
            let mut inbox = lock(&shared.inbox);
            let Ok(got) = complete_all(&shared, &mut inbox) else {
                return;
            };
            if got {
                inbox.consumer().release_and_notify(&shared.session.bell);
            }
            got
        };
        // Relaxed: see `send_release`.
        if got && shared.release_backlog.swap(false, Ordering::Relaxed) {
            let batch = shared.session.take_releases();
            if !batch.leases.is_empty() || !batch.aborted.is_empty() {
                shared.send_release(batch);
            }
        }
        if got {
            last_frame = Instant::now();
            // While we stay busy we never reach the sleep below, where waiting
            // senders are normally told: the server frees request room as it
            // answers, so tell them here too.
            notify_space(&shared);
            continue;
        }
        if shared.state_error().is_some() {
            // Gone, seen by a call that read the control socket.
            shared.fail_all();
            return;
        }
        // Stay awake a little after the last frame (yielding to other tasks),
        // so that back-to-back calls find us awake and the server need not
        // write our eventfd; not in `Sleep` mode.
        if last_frame.elapsed() < driver_spin
            && !(shared.opts.wait != WaitMode::Spin && cpu_contended(Instant::now()))
        {
            notify_space(&shared);
            tokio::task::yield_now().await;
            continue;
        }
        // Sleep: declare it, fence, re-check (docs/design.md §6), then await.
        lock(&shared.inbox)
            .consumer()
            .release_and_notify(&shared.session.bell);
        let waiting = shared.session.resp.data_waiting();
        // Relaxed + the fence: pairs with the server's fence after its commit.
        waiting.store(1, Ordering::Relaxed);
        StdAtomics::fence(Ordering::SeqCst);
        let mut gone = false;
        // Relaxed: a hint; a stale value costs one extra wake (both listen)
        // or one spurious loop (the `listener_left` permit).
        let listened = shared.listener.load(Ordering::Relaxed);
        let mut handed_back = false;
        if !lock(&shared.inbox).consumer().has_frame() {
            tokio::select! {
                () = shared.listener_left.notified(), if listened => {
                    handed_back = true;
                }
                r = wake.readable(), if !listened => {
                    if let Ok(mut g) = r {
                        g.clear_ready();
                    }
                    drain_eventfd(wake.get_ref());
                }
                r = sock.readable() => {
                    if let Ok(mut g) = r {
                        g.clear_ready();
                    }
                    // Descriptor grants are kept for the calls that expect
                    // them; a goodbye or the end of the stream ends the session.
                    gone = shared.session.read_socket() != SocketState::Quiet
                        || shared.state_error().is_some();
                }
            }
        }
        // Relaxed: the flag is ours; set again before the next sleep.
        waiting.store(0, Ordering::Relaxed);
        if gone {
            // The server publishes its last responses before it says goodbye
            // or dies: complete them first, then fail the rest.
            if complete_all(&shared, &mut lock(&shared.inbox)).is_err() {
                return;
            }
            shared.fail_all();
            return;
        }
        if handed_back {
            // Not a wake from the server: no reason to stay awake (the
            // listener read what came).
            continue;
        }
        last_frame = Instant::now();
        // Ring room may have appeared (the server rings our eventfd for both).
        shared.space.notify_waiters();
    }
}

fn drain_eventfd(fd: &Fd) {
    let mut buf = [0u8; 64];
    // Non-blocking: the server's wake descriptor is a stream socket on which
    // each wake queues 8 bytes. A read that does not fill the buffer took
    // all there was; one that does may have left more (EAGAIN, EOF or an
    // error end it too).
    while matches!(rustix::io::read(&fd.0, &mut buf), Ok(n) if n == buf.len()) {}
}
