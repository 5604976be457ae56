//! The session core both clients are built on: the handshake, the
//! ALIVE/DEAD/SHUTDOWN liveness state, the control socket's descriptor
//! grants, the fork check, and the blob side of a session (mapped segments,
//! the author pool, queued releases).
//!
//! Nothing here waits for a response: a client ([`Client`](crate::Client),
//! [`AsyncClient`](crate::AsyncClient)) makes the calls, blocking or as
//! futures, and hands their answers to the core. A blob value holds its
//! client through [`Owner`], so it gives its lease back the same way
//! whichever client made it.

use crate::error::{BlobError, ConnectError, HandshakeError};
use crate::fork;
use ipc_core::doorbell::{Doorbell, EventFd, Futex, Waker};
use ipc_core::ring::{FrameMeta, RingMemory, RingRegion};
use ipc_core::shm::{Access, Mapping, OpenError, OpenExpect, RangeAlloc, Seals, Segment};
use ipc_core::sync::{AtomicU32, Ordering, StdAtomics};
use ipc_rpc::blob::{
    AUTHOR_KIND, BLOB_LAYOUT_VERSION, BLOB_MAGIC, DATA_OFFSET, FD_GRANT_MAGIC, FdGrant, LARGE_KIND,
    LargeInfo, POOL_ALIGN, POOL_KIND, ReleaseBatch, SegmentInfo,
};
use ipc_rpc::handshake::{self, Goodbye, Hello, Welcome};
use ipc_rpc::session::{
    self as layout, LAYOUT_VERSION, SESSION_KIND, SESSION_MAGIC, STATUS_KIND, STATUS_MAGIC,
};
use ipc_rpc::{CallError, ErrorCode, Method, ProtocolError, RemoteError, Wire, wire};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// How long `connect` waits for each step of the handshake.
///
/// ```
/// assert_eq!(cradle_client::CONNECT_TIMEOUT.as_secs(), 5);
/// ```
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Releases are sent once this many are waiting (or at `flush`).
const RELEASE_BATCH: usize = 64;

/// The server is alive.
pub(crate) const ALIVE: u32 = 0;
/// The server died (control socket hung up, or broke the protocol).
pub(crate) const DEAD: u32 = 1;
/// The server said goodbye.
pub(crate) const SHUTDOWN: u32 = 2;

/// Locks `m`, carrying on after a panic elsewhere: every critical section
/// of the clients leaves its state consistent (single stores).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The socket path from `CRADLE_SOCKET`, else the default
/// (`$XDG_RUNTIME_DIR/cradle.sock`, or a private directory under `/tmp`).
///
/// ```
/// let path = cradle_client::default_socket_path();
/// assert!(path.is_absolute() || std::env::var_os("CRADLE_SOCKET").is_some());
/// ```
pub fn default_socket_path() -> PathBuf {
    std::env::var_os("CRADLE_SOCKET")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(layout::default_socket_path)
}

/// A client of the core: what a blob value holds to give its lease back.
pub(crate) trait Owner: Send + Sync {
    /// The session.
    fn session(&self) -> &Session;
    /// Sends `batch` to the server without waiting for the answer. If it
    /// cannot go now, it goes back into the session's queue.
    fn send_release(&self, batch: ReleaseBatch);
    /// Gives up this session's compute-once claim on `key`
    /// (`cradle.cache.unclaim`) without waiting for the answer; if the
    /// request ring has no room now, the claim ends at its deadline or with
    /// the session instead.
    fn send_unclaim(&self, key: &str);
}

/// Gives a lease (`lease`: a blob id) or an unsealed large blob (`aborted`)
/// back: queued, and sent with the batch once it is full; an abandoned
/// large blob, or `urgent`, sends it now.
pub(crate) fn release(owner: &dyn Owner, lease: Option<u64>, aborted: Option<u64>, urgent: bool) {
    let batch = {
        let mut p = lock(&owner.session().blobs.pending);
        p.leases.extend(lease);
        p.aborted.extend(aborted);
        // An abandoned large blob holds its whole memfd on the server:
        // give it back now rather than with the next batch.
        let due = urgent || aborted.is_some() || p.leases.len() + p.aborted.len() >= RELEASE_BATCH;
        if !due || (p.leases.is_empty() && p.aborted.is_empty()) {
            return;
        }
        std::mem::take(&mut *p)
    };
    owner.send_release(batch);
}

/// What a call's response leaves to clean up if nobody collects it (its
/// caller timed out or dropped the future): a lease the server granted, a
/// large blob it created, a descriptor it sent.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Leftover {
    pub(crate) lease: Option<u64>,
    pub(crate) aborted: Option<u64>,
    pub(crate) grant: Option<u64>,
}

/// Cleans up after a response nobody collects.
pub(crate) type Salvage = Box<dyn FnOnce(&dyn Owner, FrameMeta, &[u8]) + Send>;

/// A [`Salvage`] for method `M`: if the late frame is `M`'s response, `f`
/// says what it left, which is then given back.
pub(crate) fn salvage<M: Method>(
    f: impl FnOnce(&M::Response) -> Leftover + Send + 'static,
) -> Salvage {
    Box::new(move |owner: &dyn Owner, meta: FrameMeta, bytes: &[u8]| {
        if meta.kind != wire::RESPONSE || meta.tag != M::ID {
            return;
        }
        let Ok(r) = <M::Response as Wire>::decode(bytes) else {
            return;
        };
        let left = f(&r);
        if let Some(segment) = left.grant {
            // Closed here: nobody will map it for this call.
            let _ = owner.session().take_grant(segment);
        }
        if left.lease.is_some() || left.aborted.is_some() {
            release(owner, left.lease, left.aborted, true);
        }
    })
}

/// The server knows a method only by its id: an `UnknownMethod` answer is
/// given the name, version and id of `M`, which the caller knows.
pub(crate) fn name_unknown<M: Method>(e: CallError) -> CallError {
    match e {
        CallError::Remote {
            code: ErrorCode::UnknownMethod,
            ..
        } => CallError::Remote {
            code: ErrorCode::UnknownMethod,
            message: format!(
                "this server has no method {} (version {}, id {:#018x}): no handler or provider \
                 registered it, or the server is older than this client",
                M::NAME,
                M::VERSION,
                M::ID
            ),
        },
        e => e,
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
        wire::RESPONSE => Err(CallError::Malformed(ProtocolError::WrongMethod {
            called: method,
            answered: meta.tag,
        })),
        wire::ERROR => match RemoteError::decode(bytes) {
            Ok(e) => Err(CallError::from_remote(e)),
            Err(e) => Err(CallError::Malformed(ProtocolError::ErrorFrame(e))),
        },
        k => Err(CallError::Malformed(ProtocolError::FrameKind(k))),
    }
}

/// Decodes `M`'s response.
pub(crate) fn decode<M: Method>(bytes: &[u8]) -> Result<M::Response, CallError> {
    <M::Response as Wire>::decode(bytes).map_err(|source| {
        CallError::Malformed(ProtocolError::Decode {
            method: M::ID,
            source,
        })
    })
}

/// Validates `M`'s response in place and hands the archive to `f`.
pub(crate) fn access<M: Method, R>(
    bytes: &[u8],
    f: impl FnOnce(&<M::Response as Wire>::Archived) -> R,
) -> Result<R, CallError> {
    <M::Response as Wire>::access(bytes)
        .map(f)
        .map_err(|source| {
            CallError::Malformed(ProtocolError::Decode {
                method: M::ID,
                source,
            })
        })
}

/// What reading the control socket found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketState {
    /// Nothing more to read now.
    Quiet,
    /// A clean goodbye.
    Goodbye,
    /// End of stream, an error, or a message that is not ours.
    Dead,
}

/// A mapped segment: the descriptor and the mapping, kept together.
pub(crate) struct SegMap {
    pub(crate) seg: Segment,
    pub(crate) map: Mapping,
}

/// A segment this client has mapped: pools stay mapped; a large blob's
/// mapping goes with its last reader.
enum Slot {
    Pool(Arc<SegMap>),
    Large(Weak<SegMap>),
}

/// The session's author pool.
enum Author {
    /// Not asked for yet.
    Unasked,
    /// The server refused one (quota): small blobs go to memfds.
    Refused,
    /// Mapped read-write and pre-faulted.
    Ready { map: Arc<SegMap>, alloc: RangeAlloc },
}

/// Where a small blob can be written.
pub(crate) enum AuthorSpace {
    /// `len` bytes at `offset` of the author pool, reserved.
    Reserved { map: Arc<SegMap>, offset: u64 },
    /// No author pool yet: ask the server for one.
    Unasked,
    /// The pool is full or refused: write a large blob.
    None,
}

/// Blob state of one session.
struct Blobs {
    segments: Mutex<HashMap<u64, Slot>>,
    author: Mutex<Author>,
    pending: Mutex<ReleaseBatch>,
}

/// One open session: what both clients share.
pub(crate) struct Session {
    pub(crate) welcome: Welcome,
    /// The request ring (we produce).
    pub(crate) req: RingRegion,
    /// The response ring (we consume).
    pub(crate) resp: RingRegion,
    /// The status segment (read-only), for the worker's `waiting` word.
    status: Mapping,
    waiting_offset: usize,
    /// The session's doorbell: writing it wakes the server's worker.
    pub(crate) bell: EventFd,
    /// The control socket (non-blocking).
    pub(crate) socket: OwnedFd,
    /// ALIVE, DEAD or SHUTDOWN.
    state: AtomicU32,
    /// The fork generation the session was opened in.
    fork_gen: u64,
    /// Descriptors read from the socket, by segment, for the call that
    /// expects them (the socket is read by whoever gets there first).
    grants: Mutex<HashMap<u64, Vec<OwnedFd>>>,
    blobs: Blobs,
}

impl Session {
    /// Connects to `path`, checks the server's uid, does the handshake (with
    /// `flags` in the Hello) and opens the descriptors with the checks of
    /// docs/design.md §4.2. Blocking (at most [`CONNECT_TIMEOUT`] per step).
    /// With `HELLO_WAKE_EVENTFD`, also returns the eventfd the server writes
    /// to wake us.
    pub(crate) fn open(path: &Path, flags: u32) -> Result<(Self, Option<OwnedFd>), ConnectError> {
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
        let fds =
            handshake::recv_with_fds(stream.as_fd(), &mut buf)?.ok_or(HandshakeError::Closed)?;
        let w: Welcome = bytemuck::pod_read_unaligned(&buf);
        if w.magic != handshake::WELCOME_MAGIC {
            return Err(HandshakeError::NotCradle { magic: w.magic }.into());
        }
        if w.status != handshake::STATUS_OK {
            return Err(ConnectError::Refused {
                status: w.status,
                reason: handshake::status_message(w.status),
            });
        }
        let expected = if flags & handshake::HELLO_WAKE_EVENTFD != 0 {
            4
        } else {
            3
        };
        let got = fds.len();
        let mut fds = fds.into_iter();
        let (Some(session_fd), Some(event_fd), Some(status_fd), wake, None) =
            (fds.next(), fds.next(), fds.next(), fds.next(), fds.next())
        else {
            return Err(HandshakeError::Descriptors { expected, got }.into());
        };
        if got != expected {
            return Err(HandshakeError::Descriptors { expected, got }.into());
        }
        let cap = w.ring_capacity as usize;
        ipc_core::ring::check_capacity(cap).map_err(HandshakeError::Capacity)?;
        let want = layout::session_len(cap);
        if w.session_len != want as u64 {
            return Err(HandshakeError::SessionLength {
                announced: w.session_len,
                expected: want,
            }
            .into());
        }
        let expect = OpenExpect::exact(SESSION_MAGIC, LAYOUT_VERSION, want)
            .kind(SESSION_KIND)
            .seals(Seals::SHRINK | Seals::GROW | Seals::SEAL)
            .access(Access::ReadWrite)
            // The rings are used at once: fault them in now, not on first calls.
            .populate(true);
        let (_seg, map) =
            Segment::open(session_fd, &expect).map_err(|source| HandshakeError::Segment {
                which: "session",
                source,
            })?;
        let status_len = usize::try_from(w.status_len)
            .map_err(|_| HandshakeError::StatusLength(w.status_len))?;
        let waiting_offset = layout::worker_waiting_offset(w.worker as usize);
        if waiting_offset + 4 > status_len {
            return Err(HandshakeError::WorkerOutside {
                worker: w.worker,
                status_len,
            }
            .into());
        }
        let expect = OpenExpect::exact(STATUS_MAGIC, LAYOUT_VERSION, status_len)
            .kind(STATUS_KIND)
            .seals(Seals::SHRINK | Seals::GROW | Seals::FUTURE_WRITE | Seals::SEAL)
            .access(Access::ReadOnly);
        let (_status_seg, status) =
            Segment::open(status_fd, &expect).map_err(|source| HandshakeError::Segment {
                which: "status",
                source,
            })?;
        status
            .ptr_at::<AtomicU32>(waiting_offset)
            .map_err(HandshakeError::StatusWord)?;
        let bell = EventFd::from_fd(event_fd).map_err(HandshakeError::Doorbell)?;
        let map = Arc::new(map);
        let region =
            |off| RingRegion::in_mapping(map.clone(), off, cap).map_err(HandshakeError::Ring);
        let req = region(layout::request_ring_offset())?;
        let resp = region(layout::response_ring_offset(cap))?;
        stream.set_nonblocking(true)?;
        let session = Self {
            welcome: w,
            req,
            resp,
            status,
            waiting_offset,
            bell,
            socket: OwnedFd::from(stream),
            state: AtomicU32::new(ALIVE),
            fork_gen: fork::generation(),
            grants: Mutex::new(HashMap::new()),
            blobs: Blobs {
                segments: Mutex::new(HashMap::new()),
                author: Mutex::new(Author::Unasked),
                pending: Mutex::new(ReleaseBatch::default()),
            },
        };
        Ok((session, wake))
    }

    /// The worker's `waiting` word.
    fn waiting_word(&self) -> &AtomicU32 {
        let ptr = self
            .status
            .ptr_at::<AtomicU32>(self.waiting_offset)
            .expect("offset checked at connect");
        // SAFETY: `ptr_at` checked bounds and alignment inside the live status
        // mapping (borrowed for the result's lifetime); the word is only ever
        // loaded (the mapping is read-only: a store would fault, and none is made).
        unsafe { ptr.as_ref() }
    }

    /// Rings the server's doorbell: request ring `data_seq` + the worker's
    /// `waiting` word, waking through the session eventfd.
    pub(crate) fn wake_server(&self) {
        Doorbell::<StdAtomics>::new(self.req.data_seq(), self.waiting_word()).ring(&self.bell);
    }

    // ---- liveness -------------------------------------------------------

    /// The error every call gets once the server is gone, `None` while it
    /// is alive.
    pub(crate) fn state_error(&self) -> Option<CallError> {
        // Acquire pairs with the Release store in `set_state`.
        match self.state.load(Ordering::Acquire) {
            ALIVE => None,
            SHUTDOWN => Some(CallError::Shutdown),
            _ => Some(CallError::PeerDead),
        }
    }

    /// Whether this process is a fork child of the one that connected.
    pub(crate) fn forked(&self) -> bool {
        fork::generation() != self.fork_gen
    }

    /// Fails if this process is a fork child of the one that connected, or
    /// the server is gone.
    pub(crate) fn check(&self) -> Result<(), CallError> {
        if self.forked() {
            return Err(CallError::Forked);
        }
        match self.state_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Marks the server gone, once (a goodbye followed by the hang-up stays
    /// a shutdown), and wakes every sleeper; whether this call made the
    /// change.
    pub(crate) fn mark_gone(&self, goodbye: bool) -> bool {
        let state = if goodbye { SHUTDOWN } else { DEAD };
        // AcqRel on success: the Release half pairs with the Acquire load in
        // `state_error`, as `set_state`'s store does (it repeats the value
        // and wakes the sleepers). Relaxed on failure: another caller already
        // set a final state; this one publishes nothing.
        let changed = self
            .state
            .compare_exchange(ALIVE, state, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if changed {
            self.set_state(state);
        }
        changed
    }

    /// Sets the state and wakes anything sleeping on the ring futexes (the
    /// sync client's waits; the async client wakes its own).
    pub(crate) fn set_state(&self, state: u32) {
        // Release pairs with the Acquire load in `state_error`.
        self.state.store(state, Ordering::Release);
        for seq in [self.resp.data_seq(), self.req.space_seq()] {
            // Release: a sleeper that wakes and re-reads `seq` also sees `state`.
            seq.fetch_add(1, Ordering::Release);
            Waker::<StdAtomics>::wake(&Futex, seq);
        }
    }

    // ---- the control socket ---------------------------------------------

    /// Reads every message waiting on the control socket: descriptor grants
    /// are kept for the call that expects them; a goodbye or the end of the
    /// stream marks the server gone. Non-blocking.
    pub(crate) fn read_socket(&self) -> SocketState {
        let state = drain_socket(self.socket.as_fd(), &mut lock(&self.grants));
        match state {
            SocketState::Quiet => {}
            SocketState::Goodbye => {
                self.mark_gone(true);
            }
            SocketState::Dead => {
                self.mark_gone(false);
            }
        }
        state
    }

    /// The descriptor the server sent for `segment` just before its answer.
    pub(crate) fn take_grant(&self, segment: u64) -> Result<OwnedFd, BlobError> {
        let taken = |g: &mut HashMap<u64, Vec<OwnedFd>>| {
            let v = g.get_mut(&segment)?;
            let fd = v.pop();
            if v.is_empty() {
                g.remove(&segment);
            }
            fd
        };
        if let Some(fd) = taken(&mut lock(&self.grants)) {
            return Ok(fd);
        }
        self.read_socket();
        taken(&mut lock(&self.grants)).ok_or(BlobError::MissingDescriptor { segment })
    }

    // ---- blob mappings --------------------------------------------------

    /// The segment if this session has it mapped.
    pub(crate) fn mapped(&self, segment: u64) -> Option<Arc<SegMap>> {
        match lock(&self.blobs.segments).get(&segment)? {
            Slot::Pool(m) => Some(Arc::clone(m)),
            Slot::Large(w) => w.upgrade(),
        }
    }

    /// Maps `segment` with the descriptor the server sent before `info`
    /// (the answer of `Acquire` with `fd_sent`, or of `MapSegment`).
    pub(crate) fn install(
        &self,
        segment: u64,
        info: SegmentInfo,
    ) -> Result<Arc<SegMap>, BlobError> {
        if info.segment != segment || !matches!(info.kind, POOL_KIND | LARGE_KIND) {
            return Err(BlobError::WrongSegment {
                asked: segment,
                got: info.segment,
                kind: info.kind,
            });
        }
        let fd = self.take_grant(segment)?;
        // Two callers may have asked at once: the first mapping wins.
        if let Some(m) = self.mapped(segment) {
            return Ok(m);
        }
        let seg = Arc::new(open_segment(fd, &info)?);
        let slot = if info.kind == POOL_KIND {
            Slot::Pool(Arc::clone(&seg))
        } else {
            Slot::Large(Arc::downgrade(&seg))
        };
        let mut table = lock(&self.blobs.segments);
        if table.len() > 64 {
            table.retain(|_, s| !matches!(s, Slot::Large(w) if w.strong_count() == 0));
        }
        table.insert(segment, slot);
        Ok(seg)
    }

    /// Checks that `h` lies inside `seg`.
    pub(crate) fn check_handle(
        h: &ipc_rpc::blob::BlobHandle,
        seg: &SegMap,
    ) -> Result<(), BlobError> {
        let end = h.offset.checked_add(h.len);
        if h.offset < DATA_OFFSET || end.is_none_or(|e| e > seg.map.len() as u64) {
            return Err(BlobError::OutsideSegment {
                handle: *h,
                segment_len: seg.map.len(),
            });
        }
        Ok(())
    }

    /// Reserves `len` bytes in the author pool.
    pub(crate) fn author_reserve(&self, len: usize) -> AuthorSpace {
        match &mut *lock(&self.blobs.author) {
            Author::Unasked => AuthorSpace::Unasked,
            Author::Refused => AuthorSpace::None,
            Author::Ready { map, alloc } => match alloc.alloc(len as u64) {
                Some(offset) => AuthorSpace::Reserved {
                    map: Arc::clone(map),
                    offset,
                },
                None => AuthorSpace::None,
            },
        }
    }

    /// The server refused an author pool: small blobs go to memfds.
    pub(crate) fn author_refused(&self) {
        let mut a = lock(&self.blobs.author);
        if matches!(*a, Author::Unasked) {
            *a = Author::Refused;
        }
    }

    /// Maps the author pool the server sent (`AuthorPool`'s answer). A
    /// second answer (two callers asked at once) keeps the first mapping.
    pub(crate) fn author_install(&self, info: SegmentInfo) -> Result<(), BlobError> {
        let fd = self.take_grant(info.segment)?;
        if info.kind != AUTHOR_KIND {
            return Err(BlobError::WrongSegment {
                asked: info.segment,
                got: info.segment,
                kind: info.kind,
            });
        }
        if matches!(*lock(&self.blobs.author), Author::Ready { .. }) {
            return Ok(());
        }
        let map = Arc::new(open_segment(fd, &info)?);
        let mut a = lock(&self.blobs.author);
        if !matches!(*a, Author::Ready { .. }) {
            *a = Author::Ready {
                map,
                alloc: RangeAlloc::new(DATA_OFFSET, info.len, POOL_ALIGN),
            };
        }
        Ok(())
    }

    /// Frees a reservation in the author pool.
    pub(crate) fn author_free(&self, offset: u64, len: usize) {
        if let Author::Ready { alloc, .. } = &mut *lock(&self.blobs.author) {
            alloc.free(offset, len as u64);
        }
    }

    /// Maps a new large blob read-write (`CreateLarge`'s answer).
    pub(crate) fn open_large(&self, info: &LargeInfo) -> Result<(Segment, Mapping), BlobError> {
        let segment = info.segment.segment;
        let fd = self.take_grant(segment)?;
        let len = usize::try_from(info.segment.len).map_err(|_| BlobError::Map {
            segment,
            source: OpenError::TooLarge {
                actual: info.segment.len,
            },
        })?;
        // Not MAP_POPULATE: on a shared mapping it faults the pages in for
        // reading, and each first write faults again. `Draft::large`
        // (blob.rs) populates the window for writing instead.
        let expect = OpenExpect::exact(BLOB_MAGIC, BLOB_LAYOUT_VERSION, len)
            .kind(LARGE_KIND)
            .only_seals(Seals::SHRINK | Seals::GROW)
            .access(Access::ReadWrite);
        Segment::open(fd, &expect).map_err(|source| BlobError::Map { segment, source })
    }

    /// Queues the release of a lease the server granted us (a result blob
    /// nobody adopts); it goes with the next batch.
    pub(crate) fn queue_lease(&self, id: u64) {
        lock(&self.blobs.pending).leases.push(id);
    }

    /// A response nobody reads (its call timed out or was dropped, with no
    /// salvage of its own): the result blobs its envelope lists, leased to
    /// this session by the server, are queued to be given back.
    pub(crate) fn give_back_unread(&self, meta: FrameMeta, bytes: &[u8]) {
        if meta.kind != wire::RESPONSE || meta.flags & wire::ENVELOPE == 0 {
            return;
        }
        if let Ok((head, _)) = wire::split_envelope(bytes) {
            let mut p = lock(&self.blobs.pending);
            p.leases.extend(head.blobs().map(|h| h.id));
        }
    }

    /// [`queue_lease`](Self::queue_lease) of each of `hs`.
    pub(crate) fn queue_leases(&self, hs: &[ipc_rpc::blob::BlobHandle]) {
        for h in hs {
            self.queue_lease(h.id);
        }
    }

    /// Takes every queued release (for `flush`).
    pub(crate) fn take_releases(&self) -> ReleaseBatch {
        std::mem::take(&mut *lock(&self.blobs.pending))
    }

    /// Puts releases that could not be sent back in the queue (the async
    /// client's driver, when the request ring is full).
    #[cfg(feature = "tokio")]
    pub(crate) fn requeue(&self, batch: ReleaseBatch) {
        let mut p = lock(&self.blobs.pending);
        p.leases.extend(batch.leases);
        p.aborted.extend(batch.aborted);
    }

    /// Whether releases are queued.
    pub(crate) fn has_queued_releases(&self) -> bool {
        let p = lock(&self.blobs.pending);
        !p.leases.is_empty() || !p.aborted.is_empty()
    }
}

/// Reads every message waiting on the control socket: descriptor grants go
/// into `grants`; returns what ended the read. Non-blocking.
fn drain_socket(
    sock: std::os::fd::BorrowedFd<'_>,
    grants: &mut HashMap<u64, Vec<OwnedFd>>,
) -> SocketState {
    loop {
        let mut buf = [0u8; size_of::<FdGrant>()];
        match handshake::recv_with_fds(sock, &mut buf) {
            Ok(None) => return SocketState::Dead,
            Ok(Some(mut fds)) => {
                let grant: FdGrant = bytemuck::pod_read_unaligned(&buf);
                if grant.magic == FD_GRANT_MAGIC && fds.len() == 1 {
                    if let Some(fd) = fds.pop() {
                        grants.entry(grant.segment).or_default().push(fd);
                    }
                } else if bytemuck::pod_read_unaligned::<Goodbye>(&buf).magic
                    == handshake::GOODBYE_MAGIC
                {
                    return SocketState::Goodbye;
                } else {
                    return SocketState::Dead;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return SocketState::Quiet,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return SocketState::Dead,
        }
    }
}

/// Opens a segment descriptor the server sent, with every check: size,
/// seals, header.
fn open_segment(fd: OwnedFd, info: &SegmentInfo) -> Result<SegMap, BlobError> {
    let segment = info.segment;
    let len = usize::try_from(info.len).map_err(|_| BlobError::Map {
        segment,
        source: OpenError::TooLarge { actual: info.len },
    })?;
    let base = OpenExpect::exact(BLOB_MAGIC, BLOB_LAYOUT_VERSION, len).kind(info.kind);
    let expect = match info.kind {
        POOL_KIND => {
            base.only_seals(Seals::SHRINK | Seals::GROW | Seals::FUTURE_WRITE | Seals::SEAL)
        }
        LARGE_KIND => base.only_seals(Seals::SHRINK | Seals::GROW | Seals::WRITE | Seals::SEAL),
        AUTHOR_KIND => base
            .only_seals(Seals::SHRINK | Seals::GROW | Seals::SEAL)
            .access(Access::ReadWrite)
            .populate(true),
        kind => {
            return Err(BlobError::WrongSegment {
                asked: segment,
                got: segment,
                kind,
            });
        }
    };
    let (seg, map) =
        Segment::open(fd, &expect).map_err(|source| BlobError::Map { segment, source })?;
    Ok(SegMap { seg, map })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_rpc::ErrorCode;
    use ipc_rpc::builtin::Ping;

    fn meta(kind: u16, tag: u64) -> FrameMeta {
        FrameMeta {
            request_id: 1,
            tag,
            kind,
            flags: wire::NO_FLAGS,
        }
    }

    #[test]
    fn errors_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<CallError>();
        send_sync::<BlobError>();
        send_sync::<ConnectError>();
    }

    #[test]
    fn a_response_is_decoded_as_the_method_called() {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&b"echo".to_vec()).unwrap();
        let r = interpret(
            Ping::ID,
            meta(wire::RESPONSE, Ping::ID),
            &bytes,
            decode::<Ping>,
        );
        assert_eq!(r.unwrap(), b"echo");
    }

    #[test]
    fn a_response_for_another_method_is_a_protocol_error() {
        let r = interpret(Ping::ID, meta(wire::RESPONSE, 7), &[], decode::<Ping>);
        match r {
            Err(CallError::Malformed(ProtocolError::WrongMethod { called, answered })) => {
                assert_eq!((called, answered), (Ping::ID, 7));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_undecodable_response_names_the_method() {
        // A u32 where Ping answers a vector of bytes.
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&0xFFFF_FFFFu32).unwrap();
        match decode::<Ping>(&bytes[..2]) {
            Err(CallError::Malformed(ProtocolError::Decode { method, .. })) => {
                assert_eq!(method, Ping::ID)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_frames_become_typed_errors() {
        let frame = RemoteError {
            code: ErrorCode::CacheFull.to_u32(),
            message: "held".into(),
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&frame).unwrap();
        let r = interpret(
            Ping::ID,
            meta(wire::ERROR, Ping::ID),
            &bytes,
            decode::<Ping>,
        );
        assert_eq!(r.unwrap_err().code(), Some(ErrorCode::CacheFull));
        let r = interpret(
            Ping::ID,
            meta(wire::ERROR, Ping::ID),
            &[1, 2, 3],
            decode::<Ping>,
        );
        assert!(matches!(
            r,
            Err(CallError::Malformed(ProtocolError::ErrorFrame(_)))
        ));
        let r = interpret(Ping::ID, meta(0x7777, Ping::ID), &[], decode::<Ping>);
        assert!(matches!(
            r,
            Err(CallError::Malformed(ProtocolError::FrameKind(0x7777)))
        ));
    }

    #[test]
    fn blob_errors_say_what_to_do() {
        let e = BlobError::MissingDescriptor { segment: 3 };
        assert!(e.to_string().contains("connect again"), "{e}");
        let e = BlobError::from(CallError::QuotaExceeded("64 leases".into()));
        assert_eq!(e.code(), Some(ipc_rpc::ErrorCode::QuotaExceeded));
        assert!(e.to_string().contains("64 leases"), "{e}");
    }
}
