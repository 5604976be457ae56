//! The synchronous client.

use crate::blob::{BlobState, Grants, SocketState, drain_socket};
use crate::error::ConnectError;
use crate::fork;
use ipc_core::doorbell::{Doorbell, EventFd, Futex, WaitMode, Waker};
use ipc_core::ring::{Consumer, FrameMeta, Producer, RingError, RingMemory, RingRegion};
use ipc_core::shm::{Access, Mapping, OpenExpect, Seals, Segment};
use ipc_core::sync::{AtomicU32, Ordering, StdAtomics};
use ipc_rpc::handshake::{self, Hello, Welcome};
use ipc_rpc::idmap::{IdMap, IdSet};
use ipc_rpc::session::{
    self, LAYOUT_VERSION, SESSION_KIND, SESSION_MAGIC, STATUS_KIND, STATUS_MAGIC,
};
use ipc_rpc::{CallError, Inbox, Method, Outbox, RemoteError, SendError, Wire, wire};
use rkyv::util::AlignedVec;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a call waits for its response unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `connect` waits for the handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const ALIVE: u32 = 0;
const DEAD: u32 = 1;
const SHUTDOWN: u32 = 2;

/// Options of a client; [`Default`] gives a 30 s call timeout and
/// spin-then-sleep waits.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Default deadline of a call, from its start.
    pub timeout: Duration,
    /// Default way to wait for a response or for ring space.
    pub wait: WaitMode,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            wait: WaitMode::default(),
        }
    }
}

/// Per-call options.
#[derive(Debug, Clone, Copy)]
pub struct CallOptions {
    /// Deadline of this call, from its start.
    pub timeout: Duration,
    /// How this call waits.
    pub wait: WaitMode,
}

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
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    tx: Mutex<Tx>,
    rx: Mutex<Rx>,
    pub(crate) link: Arc<Link>,
    fork_gen: u64,
    opts: ClientOptions,
    welcome: Welcome,
    watcher: Option<std::thread::JoinHandle<()>>,
    /// Mapped segments, the author pool, queued releases.
    pub(crate) blobs: BlobState,
}

/// What the watcher thread shares with the client.
pub(crate) struct Link {
    state: AtomicU32,
    req: RingRegion,
    resp: RingRegion,
    /// The status segment (read-only), for the worker's `waiting` word.
    status: Mapping,
    waiting_offset: usize,
    /// The session's doorbell: writing it wakes the server's worker.
    eventfd: EventFd,
    pub(crate) socket: OwnedFd,
    /// Descriptors read from the socket, by segment (by the watcher or by
    /// the caller that expects one).
    pub(crate) grants: Mutex<Grants>,
    /// Written by `Drop` to stop the watcher.
    stop: EventFd,
}

struct Tx {
    outbox: Outbox<RingRegion>,
    next_id: u64,
}

struct Rx {
    inbox: Inbox<RingRegion>,
    /// Responses read by one waiter for another (pipelining, threads).
    stash: IdMap<(FrameMeta, AlignedVec<16>)>,
    /// Requests whose `Pending` was dropped: their responses are discarded.
    abandoned: IdSet,
    /// The response ring is corrupt: every call fails.
    broken: Option<String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("session_id", &self.inner.welcome.session_id)
            .field("server_pid", &self.inner.welcome.server_pid)
            .finish()
    }
}

impl Link {
    fn waiting_word(&self) -> &AtomicU32 {
        waiting_word(&self.status, self.waiting_offset)
    }

    /// Rings the server's doorbell: request ring `data_seq` + the worker's
    /// `waiting` word, waking through the session eventfd.
    fn wake_server(&self) {
        Doorbell::<StdAtomics>::new(self.req.data_seq(), self.waiting_word()).ring(&self.eventfd);
    }

    fn state_error(&self) -> Option<CallError> {
        // Acquire pairs with the Release store in `watch`.
        match self.state.load(Ordering::Acquire) {
            ALIVE => None,
            SHUTDOWN => Some(CallError::Shutdown),
            _ => Some(CallError::PeerDead),
        }
    }

    /// Marks the server gone (once: a goodbye followed by the hang-up stays
    /// a shutdown) and wakes every sleeper.
    pub(crate) fn mark_gone(&self, goodbye: bool) {
        let state = if goodbye { SHUTDOWN } else { DEAD };
        // AcqRel on success: the Release half pairs with the Acquire load in
        // `state_error`, as `mark`'s store does (it repeats the value and
        // wakes the sleepers). Relaxed on failure: another caller already set
        // a final state; this one publishes nothing.
        if self
            .state
            .compare_exchange(ALIVE, state, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.mark(state);
        }
    }

    /// Marks the server gone and wakes anything sleeping on our futexes.
    fn mark(&self, state: u32) {
        // Release pairs with the Acquire load in `state_error`.
        self.state.store(state, Ordering::Release);
        for seq in [self.resp.data_seq(), self.req.space_seq()] {
            // Release: a sleeper that wakes and re-reads `seq` also sees `state`.
            seq.fetch_add(1, Ordering::Release);
            Waker::<StdAtomics>::wake(&Futex, seq);
        }
    }
}

impl Client {
    /// Connects to the server at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ConnectError> {
        Self::connect_with(path, ClientOptions::default())
    }

    /// Connects to the server at the default socket path
    /// (`CRADLE_SOCKET`, else [`session::default_socket_path`]).
    pub fn connect_default() -> Result<Self, ConnectError> {
        Self::connect(default_socket_path())
    }

    /// Connects with explicit options.
    pub fn connect_with(path: impl AsRef<Path>, opts: ClientOptions) -> Result<Self, ConnectError> {
        let o = open(path.as_ref(), 0)?;
        let link = Link {
            state: AtomicU32::new(ALIVE),
            req: o.req,
            resp: o.resp,
            status: o.status,
            waiting_offset: o.waiting_offset,
            eventfd: o.bell,
            socket: o.socket,
            grants: Mutex::new(Grants::default()),
            stop: EventFd::new()?,
        };
        Ok(Self::start(o.welcome, link, opts))
    }

    fn start(welcome: Welcome, link: Link, opts: ClientOptions) -> Self {
        let cap = welcome.ring_capacity as usize;
        // SAFETY: this client is the only producer of the request ring and the only
        // consumer of the response ring (the server holds the other ends, in
        // another process); nothing else in this process touches the regions.
        let (producer, consumer) = unsafe {
            (
                Producer::attach(link.req.clone()),
                Consumer::attach(link.resp.clone()),
            )
        };
        debug_assert_eq!(producer.capacity(), cap);
        let link = Arc::new(link);
        let watcher = {
            let link = link.clone();
            std::thread::Builder::new()
                .name(format!("cradle-watch-{}", welcome.session_id))
                .spawn(move || watch(&link))
                .ok()
        };
        Self {
            inner: Arc::new(Inner {
                tx: Mutex::new(Tx {
                    outbox: Outbox::new(producer),
                    next_id: 1,
                }),
                rx: Mutex::new(Rx {
                    inbox: Inbox::new(consumer),
                    stash: IdMap::default(),
                    abandoned: IdSet::default(),
                    broken: None,
                }),
                link,
                fork_gen: fork::generation(),
                opts,
                welcome,
                watcher,
                blobs: BlobState::default(),
            }),
        }
    }

    /// This session's id.
    pub fn session_id(&self) -> u64 {
        self.inner.welcome.session_id
    }

    /// The server instance's epoch.
    pub fn epoch(&self) -> u64 {
        self.inner.welcome.epoch
    }

    /// The server's pid.
    pub fn server_pid(&self) -> u32 {
        self.inner.welcome.server_pid
    }

    /// The largest request payload one call can carry.
    pub fn max_message(&self) -> usize {
        ipc_core::ring::max_payload_len(self.inner.welcome.ring_capacity as usize)
    }

    /// Calls `M` with the client's default timeout and wait mode, waiting for
    /// ring space if needed.
    pub fn call<M: Method>(&self, req: &M::Request) -> Result<M::Response, CallError> {
        self.call_opts::<M>(req, self.default_opts())
    }

    /// Calls `M` with per-call options.
    pub fn call_opts<M: Method>(
        &self,
        req: &M::Request,
        opts: CallOptions,
    ) -> Result<M::Response, CallError> {
        self.round_trip::<M, _>(req, opts, true, |b| {
            <M::Response as Wire>::decode(b).map_err(|e| CallError::Malformed(e.to_string()))
        })
    }

    /// Like [`call`](Self::call), but fails with [`CallError::RingFull`]
    /// instead of waiting when the request ring has no room.
    pub fn try_call<M: Method>(&self, req: &M::Request) -> Result<M::Response, CallError> {
        self.round_trip::<M, _>(req, self.default_opts(), false, |b| {
            <M::Response as Wire>::decode(b).map_err(|e| CallError::Malformed(e.to_string()))
        })
    }

    /// Calls `M` and hands the validated, archived response to `f` without
    /// deserializing it (no allocation for the response, whatever its type).
    pub fn call_with<M: Method, R>(
        &self,
        req: &M::Request,
        opts: CallOptions,
        f: impl FnOnce(&<M::Response as Wire>::Archived) -> R,
    ) -> Result<R, CallError> {
        self.round_trip::<M, _>(req, opts, true, |b| {
            <M::Response as Wire>::access(b)
                .map(f)
                .map_err(|e| CallError::Malformed(e.to_string()))
        })
    }

    /// Sends a request without waiting for its response: for pipelining.
    /// Collect the response with [`Pending::wait`].
    pub fn send<M: Method>(&self, req: &M::Request) -> Result<Pending<'_, M>, CallError> {
        let opts = self.default_opts();
        let deadline = Instant::now() + opts.timeout;
        let id = self.submit::<M>(req, deadline, opts.wait, true)?;
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

    fn default_opts(&self) -> CallOptions {
        CallOptions {
            timeout: self.inner.opts.timeout,
            wait: self.inner.opts.wait,
        }
    }

    fn check(&self) -> Result<(), CallError> {
        if fork::generation() != self.inner.fork_gen {
            return Err(CallError::Forked);
        }
        match self.inner.link.state_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn round_trip<M: Method, R>(
        &self,
        req: &M::Request,
        opts: CallOptions,
        block: bool,
        f: impl FnOnce(&[u8]) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        let start = Instant::now();
        let deadline = start + opts.timeout;
        let id = self.submit::<M>(req, deadline, opts.wait, block)?;
        self.receive(M::ID, id, start, deadline, opts.wait, f)
    }

    /// Publishes one request; returns its id.
    fn submit<M: Method>(
        &self,
        req: &M::Request,
        deadline: Instant,
        wait: WaitMode,
        block: bool,
    ) -> Result<u64, CallError> {
        self.check()?;
        let link = &self.inner.link;
        let mut tx = lock(&self.inner.tx);
        let id = tx.next_id;
        tx.next_id += 1;
        let meta = FrameMeta {
            request_id: id,
            tag: M::ID,
            kind: wire::REQUEST,
            flags: wire::NO_FLAGS,
        };
        loop {
            match tx.outbox.try_send(meta, req) {
                Ok(()) => {
                    link.wake_server();
                    return Ok(id);
                }
                Err(SendError::Full { need }) => {
                    if !block {
                        return Err(CallError::RingFull);
                    }
                    if let Some(e) = link.state_error() {
                        return Err(e);
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(CallError::Timeout(deadline.saturating_duration_since(now)));
                    }
                    // The server may be throttling us because our response ring
                    // is full: read responses while we wait, or both wait forever.
                    self.drain_to_stash();
                    link.wake_server();
                    let slice = deadline.min(now + Duration::from_millis(1));
                    match tx
                        .outbox
                        .producer()
                        .wait_for_room(need, &Futex, wait, Some(slice))
                    {
                        Ok(()) | Err(RingError::Timeout) => {}
                        Err(e) => return Err(CallError::Malformed(e.to_string())),
                    }
                }
                Err(SendError::TooLarge { len, max }) => {
                    return Err(CallError::MessageTooLarge { len, max });
                }
                Err(SendError::Encode(e)) => return Err(CallError::Encode(e.to_string())),
                Err(SendError::Ring(e)) => return Err(CallError::Malformed(e.to_string())),
            }
        }
    }

    /// Moves every response in the ring into the stash (called by a sender
    /// that waits for room). Skips if another thread is reading.
    fn drain_to_stash(&self) {
        let Ok(mut rx) = self.inner.rx.try_lock() else {
            return;
        };
        let rx = &mut *rx;
        while let Ok(Some(msg)) = rx.inbox.try_recv() {
            let id = msg.meta.request_id;
            if rx.abandoned.is_empty() || !rx.abandoned.remove(&id) {
                let mut copy = AlignedVec::<16>::with_capacity(msg.bytes.len());
                copy.extend_from_slice(msg.bytes);
                rx.stash.insert(id, (msg.meta, copy));
            }
        }
        rx.inbox
            .consumer()
            .release_and_notify(&self.inner.link.eventfd);
    }

    /// Waits for the response to request `id`.
    fn receive<R>(
        &self,
        method: u64,
        id: u64,
        start: Instant,
        deadline: Instant,
        wait: WaitMode,
        f: impl FnOnce(&[u8]) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        let link = &self.inner.link;
        let mut rx = lock(&self.inner.rx);
        let rx = &mut *rx;
        loop {
            if let Some(b) = &rx.broken {
                return Err(CallError::Malformed(b.clone()));
            }
            // The stash is empty unless calls are pipelined or threads share
            // the client: skip the hash lookup then (it showed in profiles).
            if !rx.stash.is_empty()
                && let Some((meta, bytes)) = rx.stash.remove(&id)
            {
                return interpret(method, meta, &bytes, f);
            }
            match rx.inbox.try_recv() {
                Ok(Some(msg)) if msg.meta.request_id == id => {
                    let r = interpret(method, msg.meta, msg.bytes, f);
                    let cap = self.inner.welcome.ring_capacity as u64;
                    if rx.inbox.consumer().unreleased() > cap / 4 {
                        rx.inbox.consumer().release_and_notify(&link.eventfd);
                    }
                    return r;
                }
                Ok(Some(msg)) => {
                    let other = msg.meta.request_id;
                    if rx.abandoned.is_empty() || !rx.abandoned.remove(&other) {
                        let mut copy = AlignedVec::<16>::with_capacity(msg.bytes.len());
                        copy.extend_from_slice(msg.bytes);
                        rx.stash.insert(other, (msg.meta, copy));
                    }
                }
                Ok(None) => {
                    if let Some(e) = link.state_error() {
                        return Err(e);
                    }
                    if Instant::now() >= deadline {
                        // The response may still come: drop it then.
                        rx.abandoned.insert(id);
                        return Err(CallError::Timeout(start.elapsed()));
                    }
                    let consumer = rx.inbox.consumer();
                    consumer.release_and_notify(&link.eventfd);
                    let (seq, waiting) = consumer.data_bell_words();
                    let bell = Doorbell::<StdAtomics>::new(seq, waiting);
                    let poll =
                        || (consumer.has_frame() || link.state_error().is_some()).then_some(());
                    // A timeout here is handled at the top of the loop.
                    let _ = bell.wait(poll, &Futex, wait, Some(deadline));
                }
                Err(e) => {
                    let m = format!("response ring: {e}");
                    rx.broken = Some(m.clone());
                    return Err(CallError::Malformed(m));
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.link.stop.notify().ok();
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}

/// A request sent with [`Client::send`] whose response has not been collected.
/// Dropping it discards the response when it arrives.
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
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Waits for the response with the client's default timeout.
    pub fn wait(self) -> Result<M::Response, CallError> {
        let opts = self.client.default_opts();
        self.wait_opts(opts)
    }

    /// Waits for the response with explicit options.
    pub fn wait_opts(self, opts: CallOptions) -> Result<M::Response, CallError> {
        self.finish(opts, |b| {
            <M::Response as Wire>::decode(b).map_err(|e| CallError::Malformed(e.to_string()))
        })
    }

    /// Waits for the response (default timeout and wait mode) and hands the
    /// validated, archived response to `f` without deserializing it: no
    /// allocation for the response.
    pub fn wait_with<R>(
        self,
        f: impl FnOnce(&<M::Response as Wire>::Archived) -> R,
    ) -> Result<R, CallError> {
        let opts = self.client.default_opts();
        self.finish(opts, |b| {
            <M::Response as Wire>::access(b)
                .map(f)
                .map_err(|e| CallError::Malformed(e.to_string()))
        })
    }

    fn finish<R>(
        mut self,
        opts: CallOptions,
        f: impl FnOnce(&[u8]) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        let start = Instant::now();
        // On error, `drop` marks the id abandoned: its response is discarded.
        self.client.check()?;
        self.done = true;
        self.client
            .receive(M::ID, self.id, start, start + opts.timeout, opts.wait, f)
    }
}

impl<M: Method> Drop for Pending<'_, M> {
    fn drop(&mut self) {
        if !self.done {
            let mut rx = lock(&self.client.inner.rx);
            if rx.stash.remove(&self.id).is_none() {
                rx.abandoned.insert(self.id);
            }
        }
    }
}

/// Turns a response frame into the call's result.
pub(crate) fn interpret<R>(
    method: u64,
    meta: FrameMeta,
    bytes: &[u8],
    f: impl FnOnce(&[u8]) -> Result<R, CallError>,
) -> Result<R, CallError> {
    match meta.kind {
        wire::RESPONSE if meta.tag == method => f(bytes),
        wire::RESPONSE => Err(CallError::Malformed(format!(
            "response for method {:#x} to a call of {method:#x}",
            meta.tag
        ))),
        wire::ERROR => match RemoteError::decode(bytes) {
            Ok(e) => Err(CallError::from_remote(e)),
            Err(e) => Err(CallError::Malformed(format!("error frame: {e}"))),
        },
        k => Err(CallError::Malformed(format!("unexpected frame kind {k}"))),
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another thread while it held the lock leaves the ring state
    // consistent (every ring step is a single store), so carry on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The socket path from `CRADLE_SOCKET`, else the default.
pub fn default_socket_path() -> PathBuf {
    std::env::var_os("CRADLE_SOCKET")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(session::default_socket_path)
}

/// A session opened by the handshake, before any ring end is attached.
pub(crate) struct Opened {
    pub(crate) welcome: Welcome,
    pub(crate) req: RingRegion,
    pub(crate) resp: RingRegion,
    /// The status segment (read-only).
    pub(crate) status: Mapping,
    /// Offset of our worker's `waiting` word in `status` (checked).
    pub(crate) waiting_offset: usize,
    /// The session's doorbell: writing it wakes the server's worker.
    pub(crate) bell: EventFd,
    /// The control socket (non-blocking).
    pub(crate) socket: OwnedFd,
    /// With `HELLO_WAKE_EVENTFD`: the eventfd the server writes to wake us.
    pub(crate) wake: Option<OwnedFd>,
}

impl Opened {
    /// The worker's `waiting` word.
    pub(crate) fn waiting_word(&self) -> &AtomicU32 {
        waiting_word(&self.status, self.waiting_offset)
    }
}

fn waiting_word(status: &Mapping, offset: usize) -> &AtomicU32 {
    let ptr = status
        .ptr_at::<AtomicU32>(offset)
        .expect("offset checked at connect");
    // SAFETY: `ptr_at` checked bounds and alignment inside the live status
    // mapping (borrowed for the result's lifetime); the word is only ever loaded
    // (the mapping is read-only: a store would fault, and none is made).
    unsafe { ptr.as_ref() }
}

/// Connects to `path`, checks the server's uid, does the handshake (with
/// `flags` in the Hello) and opens the descriptors with the checks of
/// docs/design.md §4.2. Blocking (at most `CONNECT_TIMEOUT` per step).
pub(crate) fn open(path: &Path, flags: u32) -> Result<Opened, ConnectError> {
    let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ConnectError::NoServer {
            path: path.to_path_buf(),
        },
        _ => ConnectError::Connect {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    // The server must be us: only then are its descriptors trusted.
    let cred = rustix::net::sockopt::socket_peercred(&stream).map_err(io::Error::from)?;
    let our_uid = rustix::process::geteuid().as_raw();
    if cred.uid.as_raw() != our_uid {
        return Err(ConnectError::ForeignServer {
            server_uid: cred.uid.as_raw(),
            our_uid,
        });
    }
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    handshake::send_pod(
        &stream,
        &Hello {
            flags,
            ..Hello::current()
        },
    )?;
    let mut buf = [0u8; size_of::<Welcome>()];
    let fds = handshake::recv_with_fds(stream.as_fd(), &mut buf)?
        .ok_or_else(|| ConnectError::Protocol("the server closed the connection".into()))?;
    let w: Welcome = bytemuck::pod_read_unaligned(&buf);
    if w.magic != handshake::WELCOME_MAGIC {
        return Err(ConnectError::Protocol(
            "not a CRADLE server (bad welcome magic)".into(),
        ));
    }
    if w.status != handshake::STATUS_OK {
        return Err(ConnectError::Refused {
            status: w.status,
            reason: handshake::status_message(w.status),
        });
    }
    let want_fds = if flags & handshake::HELLO_WAKE_EVENTFD != 0 {
        4
    } else {
        3
    };
    if fds.len() != want_fds {
        return Err(ConnectError::Protocol(format!(
            "expected {want_fds} descriptors, got {}",
            fds.len()
        )));
    }
    let mut fds = fds.into_iter();
    let (session_fd, event_fd, status_fd) = match (fds.next(), fds.next(), fds.next()) {
        (Some(a), Some(b), Some(c)) => (a, b, c),
        _ => return Err(ConnectError::Protocol("descriptors missing".into())),
    };
    let wake = fds.next();
    let cap = w.ring_capacity as usize;
    ipc_core::ring::check_capacity(cap).map_err(|e| ConnectError::Protocol(e.to_string()))?;
    let want = session::session_len(cap);
    if w.session_len != want as u64 {
        return Err(ConnectError::Protocol(format!(
            "session segment of {} bytes announced, rings of {cap} need {want}",
            w.session_len
        )));
    }
    let expect = OpenExpect::exact(SESSION_MAGIC, LAYOUT_VERSION, want)
        .kind(SESSION_KIND)
        .seals(Seals::SHRINK | Seals::GROW | Seals::SEAL)
        .access(Access::ReadWrite)
        // The rings are used at once: fault them in now, not on first calls.
        .populate(true);
    let (_seg, map) = Segment::open(session_fd, &expect)
        .map_err(|e| ConnectError::Protocol(format!("session segment: {e}")))?;
    let status_len = usize::try_from(w.status_len)
        .map_err(|_| ConnectError::Protocol("status length".into()))?;
    let waiting_offset = session::worker_waiting_offset(w.worker as usize);
    if waiting_offset + 4 > status_len {
        return Err(ConnectError::Protocol(format!(
            "worker {} outside the status segment",
            w.worker
        )));
    }
    let expect = OpenExpect::exact(STATUS_MAGIC, LAYOUT_VERSION, status_len)
        .kind(STATUS_KIND)
        .seals(Seals::SHRINK | Seals::GROW | Seals::FUTURE_WRITE | Seals::SEAL)
        .access(Access::ReadOnly);
    let (_status_seg, status) = Segment::open(status_fd, &expect)
        .map_err(|e| ConnectError::Protocol(format!("status segment: {e}")))?;
    status
        .ptr_at::<AtomicU32>(waiting_offset)
        .map_err(|e| ConnectError::Protocol(format!("status segment: {e}")))?;
    let bell = EventFd::from_fd(event_fd)
        .map_err(|e| ConnectError::Protocol(format!("doorbell descriptor: {e}")))?;
    let map = Arc::new(map);
    let region = |off| {
        RingRegion::in_mapping(map.clone(), off, cap)
            .map_err(|e| ConnectError::Protocol(e.to_string()))
    };
    let req = region(session::request_ring_offset())?;
    let resp = region(session::response_ring_offset(cap))?;
    stream.set_nonblocking(true)?;
    Ok(Opened {
        welcome: w,
        req,
        resp,
        status,
        waiting_offset,
        bell,
        socket: OwnedFd::from(stream),
        wake,
    })
}

/// The watcher: waits for the control socket to report the server's death
/// (HUP, EOF) or a clean goodbye, then fails every waiting call at once.
fn watch(link: &Link) {
    use rustix::event::{PollFd, PollFlags, poll};
    loop {
        let mut fds = [
            PollFd::new(&link.socket, PollFlags::IN | PollFlags::RDHUP),
            PollFd::new(&link.stop, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => {
                link.mark(DEAD);
                return;
            }
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        if fds[0].revents().is_empty() {
            continue;
        }
        // Descriptor grants are kept for the caller that expects them; a
        // goodbye or the end of the stream ends the session.
        let state = drain_socket(link.socket.as_fd(), &mut lock(&link.grants));
        match state {
            SocketState::Quiet => continue,
            SocketState::Goodbye => link.mark_gone(true),
            SocketState::Dead => link.mark_gone(false),
        }
        return;
    }
}
