//! The acceptor: accepts connections, checks the peer's uid, runs the
//! handshake without ever blocking on one connection, creates sessions and
//! hands them to their workers.

use crate::server::HandleInner;
use crate::stats::{SessionCounters, Shared};
use crate::worker::{ClientWaker, NewSession, WorkerMsg};
use ipc_core::doorbell::{EventFd, WakeSocket};
use ipc_core::ring::{Consumer, Producer, RingRegion};
use ipc_core::shm::{Access, Seals, Segment, init_header};
use ipc_core::sync::Ordering;
use ipc_rpc::handshake::{
    HELLO_WAKE_EVENTFD, Hello, PROTOCOL_VERSION, STATUS_OK, STATUS_RESOURCES, STATUS_SHUTTING_DOWN,
    STATUS_TOO_MANY_SESSIONS, WELCOME_MAGIC, Welcome, send_with_fds, status_message,
};
use ipc_rpc::session::{
    LAYOUT_VERSION, SESSION_KIND, SESSION_MAGIC, request_ring_offset, response_ring_offset,
    session_len,
};
use ipc_rpc::{Inbox, Outbox};
use rustix::buffer::spare_capacity;
use rustix::event::Timespec;
use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SocketFlags};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENER: u64 = 0;
const BELL: u64 = 1;
const HELLO_LEN: usize = size_of::<Hello>();

/// Connections allowed in the handshake at once. A new connection beyond it
/// closes the oldest pending one: a flood of silent connections costs at most
/// this many descriptors and never locks out a client that says Hello at once.
pub(crate) const MAX_PENDING: usize = 64;

/// One log line per kind per this period; the rest are counted.
const LOG_PERIOD: Duration = Duration::from_secs(1);

/// Rate limit of the acceptor's repeated warnings: at most one line per kind
/// per [`LOG_PERIOD`], the next one saying how many were suppressed.
#[derive(Debug, Default)]
struct LogLimiter {
    /// Per kind: when its last line was written, and lines suppressed since.
    kinds: HashMap<&'static str, (Instant, u64)>,
}

/// `" (N more suppressed)"`, or nothing when N is 0.
struct Suppressed(u64);

impl std::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} more suppressed)"),
        }
    }
}

impl LogLimiter {
    /// Whether a line of `kind` may be written now; if so, how many were
    /// suppressed before it.
    fn allow(&mut self, kind: &'static str, now: Instant) -> Option<Suppressed> {
        match self.kinds.get_mut(kind) {
            Some((last, n)) if now.duration_since(*last) < LOG_PERIOD => {
                *n += 1;
                None
            }
            Some((last, n)) => {
                *last = now;
                Some(Suppressed(std::mem::take(n)))
            }
            None => {
                self.kinds.insert(kind, (now, 0));
                Some(Suppressed(0))
            }
        }
    }

    /// Reports the counts of kinds that went quiet with lines suppressed.
    fn flush(&mut self, now: Instant) {
        for (kind, (last, n)) in &mut self.kinds {
            if *n > 0 && now.duration_since(*last) >= LOG_PERIOD {
                tracing::warn!("{kind}: {n} more suppressed");
                *last = now;
                *n = 0;
            }
        }
    }
}

/// What the acceptor needs.
#[derive(Debug)]
pub(crate) struct AcceptorCtx {
    pub(crate) listener: OwnedFd,
    pub(crate) handle: Arc<HandleInner>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) status_ro: OwnedFd,
    pub(crate) status_len: usize,
    pub(crate) epoch: u64,
    pub(crate) euid: u32,
    pub(crate) ring_capacity: usize,
    pub(crate) max_sessions: usize,
    pub(crate) handshake_timeout: Duration,
}

/// A connection whose Hello is not complete yet.
#[derive(Debug)]
struct Pending {
    sock: OwnedFd,
    buf: [u8; HELLO_LEN],
    got: usize,
    deadline: Instant,
    pid: u32,
    uid: u32,
}

/// The result of reading from a pending connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HelloRead {
    /// Not all 32 bytes yet.
    NeedMore,
    /// The peer closed or the socket failed.
    Closed,
    /// A complete Hello.
    Complete(Hello),
}

/// Reads what is available of a Hello into `buf[*got..]` without blocking.
pub(crate) fn read_hello(
    sock: BorrowedFd<'_>,
    buf: &mut [u8; HELLO_LEN],
    got: &mut usize,
) -> HelloRead {
    while *got < HELLO_LEN {
        match rustix::net::recv(sock, &mut buf[*got..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => return HelloRead::Closed,
            Ok((n, _)) => *got += n.min(HELLO_LEN - *got),
            Err(Errno::AGAIN) => return HelloRead::NeedMore,
            Err(Errno::INTR) => continue,
            Err(_) => return HelloRead::Closed,
        }
    }
    HelloRead::Complete(bytemuck::pod_read_unaligned(&buf[..]))
}

/// The Welcome header for `status` (no descriptors follow unless OK).
pub(crate) fn welcome(status: u32, epoch: u64) -> Welcome {
    Welcome {
        magic: WELCOME_MAGIC,
        protocol: PROTOCOL_VERSION,
        status,
        epoch,
        session_id: 0,
        ring_capacity: 0,
        worker: 0,
        session_len: 0,
        status_len: 0,
        server_pid: std::process::id(),
        reserved: 0,
    }
}

/// A fresh session segment with its two ring ends and its eventfd.
pub(crate) struct SessionParts {
    pub(crate) segment: Segment,
    pub(crate) inbox: Inbox<RingRegion>,
    pub(crate) outbox: Outbox<RingRegion>,
    pub(crate) bell: EventFd,
}

/// Creates a session segment (`SHRINK | GROW | SEAL`) for rings of `cap`.
pub(crate) fn create_session(id: u64, cap: usize) -> Result<SessionParts, String> {
    let len = session_len(cap);
    let segment =
        Segment::create(&format!("cradle-session-{id}"), len).map_err(|e| e.to_string())?;
    let map = Arc::new(segment.map(Access::ReadWrite).map_err(|e| e.to_string())?);
    init_header(&map, SESSION_MAGIC, LAYOUT_VERSION, SESSION_KIND).map_err(|e| e.to_string())?;
    segment
        .add_seals(Seals::SHRINK | Seals::GROW | Seals::SEAL)
        .map_err(|e| e.to_string())?;
    let req = RingRegion::in_mapping(Arc::clone(&map), request_ring_offset(), cap)
        .map_err(|e| e.to_string())?;
    let resp =
        RingRegion::in_mapping(map, response_ring_offset(cap), cap).map_err(|e| e.to_string())?;
    // SAFETY: the segment was created just now by this function; in this
    // process, this consumer is the only end ever attached to the request
    // ring, and the producer below the only end attached to the response
    // ring; nothing else here touches their bytes (the client, another
    // process, may write anything: the ends check it).
    let consumer = unsafe { Consumer::attach(req) };
    // SAFETY: as above, for the response ring.
    let producer = unsafe { Producer::attach(resp) };
    let bell = EventFd::new().map_err(|e| format!("eventfd: {e}"))?;
    Ok(SessionParts {
        segment,
        inbox: Inbox::new(consumer),
        outbox: Outbox::new(producer),
        bell,
    })
}

struct Acceptor<'a> {
    ctx: &'a AcceptorCtx,
    epoll: OwnedFd,
    pending: HashMap<u64, Pending>,
    log: LogLimiter,
    next_token: u64,
    next_session: u64,
    next_worker: usize,
}

impl Acceptor<'_> {
    fn accept_all(&mut self) {
        loop {
            let sock = match rustix::net::accept_with(
                &self.ctx.listener,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(s) => s,
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR | Errno::CONNABORTED) => continue,
                Err(e) => {
                    // Out of descriptors or memory: back off a little rather
                    // than spin on a listener that stays readable.
                    if let Some(n) = self.log.allow("accept failed", Instant::now()) {
                        tracing::warn!(error = %e, "accept failed; pausing 20 ms{n}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    return;
                }
            };
            let cred = match rustix::net::sockopt::socket_peercred(&sock) {
                Ok(c) => c,
                Err(e) => {
                    if let Some(n) = self.log.allow("SO_PEERCRED failed", Instant::now()) {
                        tracing::warn!(error = %e, "SO_PEERCRED failed; connection closed{n}");
                    }
                    continue;
                }
            };
            let uid = cred.uid.as_raw();
            let pid = cred.pid.as_raw_nonzero().get() as u32;
            if uid != self.ctx.euid {
                if let Some(n) = self.log.allow("another user", Instant::now()) {
                    tracing::warn!(
                        peer_uid = uid,
                        peer_pid = pid,
                        "connection from another user refused{n}"
                    );
                }
                continue;
            }
            if self.pending.len() >= MAX_PENDING {
                self.drop_oldest_pending();
            }
            let token = self.next_token;
            self.next_token += 1;
            if let Err(e) = epoll::add(
                &self.epoll,
                &sock,
                EventData::new_u64(token),
                EventFlags::IN | EventFlags::RDHUP,
            ) {
                if let Some(n) = self.log.allow("epoll registration", Instant::now()) {
                    tracing::warn!(error = %e, "epoll registration failed; connection closed{n}");
                }
                continue;
            }
            self.pending.insert(
                token,
                Pending {
                    sock,
                    buf: [0; HELLO_LEN],
                    got: 0,
                    deadline: Instant::now() + self.ctx.handshake_timeout,
                    pid,
                    uid,
                },
            );
        }
    }

    /// Closes the pending connection accepted first (the smallest token).
    fn drop_oldest_pending(&mut self) {
        let Some(&oldest) = self.pending.keys().min() else {
            return;
        };
        if let Some(p) = self.pending.remove(&oldest) {
            let _ = epoll::delete(&self.epoll, &p.sock);
            if let Some(n) = self.log.allow("pending handshakes", Instant::now()) {
                tracing::warn!(
                    pid = p.pid,
                    limit = MAX_PENDING,
                    "too many connections in the handshake; the oldest closed{n}"
                );
            }
        }
    }

    fn on_readable(&mut self, token: u64) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        match read_hello(p.sock.as_fd(), &mut p.buf, &mut p.got) {
            HelloRead::NeedMore => {}
            HelloRead::Closed => {
                if let Some(p) = self.pending.remove(&token) {
                    let _ = epoll::delete(&self.epoll, &p.sock);
                    tracing::debug!(pid = p.pid, "connection closed during the handshake");
                }
            }
            HelloRead::Complete(hello) => {
                if let Some(p) = self.pending.remove(&token) {
                    let _ = epoll::delete(&self.epoll, &p.sock);
                    self.answer(p, hello);
                }
            }
        }
    }

    /// Answers a complete Hello: a refusal, or a new session.
    fn answer(&mut self, p: Pending, hello: Hello) {
        let ctx = self.ctx;
        let refuse = |status: u32| {
            let w = welcome(status, ctx.epoch);
            let _ = send_with_fds(p.sock.as_fd(), bytemuck::bytes_of(&w), &[]);
        };
        match hello.check() {
            None => {
                if let Some(n) = self.log.allow("bad hello", Instant::now()) {
                    tracing::warn!(
                        pid = p.pid,
                        "not a CRADLE client (bad hello magic); closed{n}"
                    );
                }
                return;
            }
            Some(STATUS_OK) => {}
            Some(status) => {
                if let Some(n) = self.log.allow("handshake refused", Instant::now()) {
                    tracing::warn!(
                        pid = p.pid,
                        reason = status_message(status),
                        "handshake refused{n}"
                    );
                }
                refuse(status);
                return;
            }
        }
        // Acquire: pairs with the Release store in `ServerHandle::shutdown`.
        if ctx.handle.shutdown.load(Ordering::Acquire) {
            refuse(STATUS_SHUTTING_DOWN);
            return;
        }
        if ctx.shared.open_sessions() >= ctx.max_sessions as u64 {
            if let Some(n) = self.log.allow("session limit", Instant::now()) {
                tracing::warn!(
                    pid = p.pid,
                    limit = ctx.max_sessions,
                    "session limit reached; connection refused{n}"
                );
            }
            refuse(STATUS_TOO_MANY_SESSIONS);
            return;
        }
        let id = self.next_session;
        let parts = match create_session(id, ctx.ring_capacity) {
            Ok(parts) => parts,
            Err(e) => {
                if let Some(n) = self.log.allow("cannot create a session", Instant::now()) {
                    tracing::warn!(pid = p.pid, error = %e, "cannot create a session{n}");
                }
                refuse(STATUS_RESOURCES);
                return;
            }
        };
        self.next_session += 1;
        let links = &ctx.handle.links;
        let worker = self.next_worker % links.len();
        self.next_worker = (worker + 1) % links.len();
        let w = Welcome {
            session_id: id,
            ring_capacity: ctx.ring_capacity as u32,
            worker: worker as u32,
            session_len: parts.segment.len() as u64,
            status_len: ctx.status_len as u64,
            ..welcome(STATUS_OK, ctx.epoch)
        };
        // An async client sleeps on a descriptor it can poll: one end of a
        // socketpair, whose other end only we hold and write.
        let (waker, client_wake) = if hello.flags & HELLO_WAKE_EVENTFD != 0 {
            match WakeSocket::pair() {
                Ok((ours, theirs)) => (ClientWaker::Socket(ours), Some(theirs)),
                Err(e) => {
                    if let Some(n) = self.log.allow("client wake socket", Instant::now()) {
                        tracing::warn!(pid = p.pid, error = %e, "cannot create a client wake socket{n}");
                    }
                    refuse(STATUS_RESOURCES);
                    return;
                }
            }
        } else {
            (ClientWaker::Futex, None)
        };
        let mut fds = vec![
            parts.segment.fd(),
            parts.bell.as_fd(),
            ctx.status_ro.as_fd(),
        ];
        if let Some(theirs) = &client_wake {
            fds.push(theirs.as_fd());
        }
        if let Err(e) = send_with_fds(p.sock.as_fd(), bytemuck::bytes_of(&w), &fds) {
            if let Some(n) = self.log.allow("cannot send the welcome", Instant::now()) {
                tracing::warn!(pid = p.pid, error = %e, "cannot send the welcome; connection closed{n}");
            }
            return;
        }
        let counters = Arc::new(SessionCounters::new(id, p.pid));
        ctx.shared.session_opened(Arc::clone(&counters));
        tracing::info!(
            session = id,
            pid = p.pid,
            uid = p.uid,
            worker,
            "session opened"
        );
        links[worker].send(WorkerMsg::Session(Box::new(NewSession {
            id,
            sock: p.sock,
            bell: parts.bell,
            waker,
            segment: parts.segment,
            inbox: parts.inbox,
            outbox: parts.outbox,
            counters,
        })));
    }

    fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            if let Some(p) = self.pending.remove(&t) {
                let _ = epoll::delete(&self.epoll, &p.sock);
                if let Some(n) = self.log.allow("handshake timeout", now) {
                    tracing::warn!(
                        pid = p.pid,
                        "no complete hello within the handshake timeout; closed{n}"
                    );
                }
            }
        }
    }
}

/// The acceptor loop; returns when the server shuts down.
pub(crate) fn run_acceptor(ctx: &AcceptorCtx) -> std::io::Result<()> {
    let epoll = epoll::create(CreateFlags::CLOEXEC)?;
    epoll::add(
        &epoll,
        &ctx.listener,
        EventData::new_u64(LISTENER),
        EventFlags::IN,
    )?;
    epoll::add(
        &epoll,
        ctx.handle.acceptor_bell.as_fd(),
        EventData::new_u64(BELL),
        EventFlags::IN,
    )?;
    let mut a = Acceptor {
        ctx,
        epoll,
        pending: HashMap::new(),
        log: LogLimiter::default(),
        next_token: 2,
        next_session: 1,
        next_worker: 0,
    };
    let mut events: Vec<Event> = Vec::with_capacity(64);
    loop {
        // Acquire: pairs with the Release store in `ServerHandle::shutdown`.
        if ctx.handle.shutdown.load(Ordering::Acquire) {
            return Ok(());
        }
        let now = Instant::now();
        let timeout = a
            .pending
            .values()
            .map(|p| p.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let ts = Timespec::try_from(timeout).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        events.clear();
        match epoll::wait(&a.epoll, spare_capacity(&mut events), Some(&ts)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        for ev in &events {
            let token = ev.data.u64();
            match token {
                LISTENER => a.accept_all(),
                BELL => {
                    let _ = ctx.handle.acceptor_bell.drain();
                }
                t => a.on_readable(t),
            }
        }
        let now = Instant::now();
        a.expire(now);
        a.log.flush(now);
    }
}
