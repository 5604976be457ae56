//! The acceptor: accepts connections, checks the peer's uid, runs the
//! handshake without ever blocking on one connection, creates sessions and
//! hands them to their workers.

use crate::link::{ClientWaker, HandleInner, NewSession, WorkerMsg};
use crate::logs::LogLimiter;
use crate::stats::{SessionCounters, Shared};
use ipc_core::doorbell::{EventFd, WakeSocket};
use ipc_core::ring::{Consumer, Producer, RingRegion};
use ipc_core::shm::{Access, Seals, Segment, init_header};
use ipc_core::sync::{AtomicBool, Ordering};
use ipc_rpc::handshake::{
    HELLO_WAKE_EVENTFD, Hello, HelloRead, PROTOCOL_VERSION, STATUS_OK, STATUS_RESOURCES,
    STATUS_SHUTTING_DOWN, STATUS_TOO_MANY_SESSIONS, WELCOME_MAGIC, Welcome, read_hello,
    send_with_fds, status_message,
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
        if let Some(n) = self.log.allow_info("session opened", Instant::now()) {
            tracing::info!(
                session = id,
                pid = p.pid,
                uid = p.uid,
                worker,
                "session opened{n}"
            );
        }
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

    /// Hands the listener (a duplicate) and the pending connections to a
    /// thread that tells every client connecting from now on that the
    /// server is shutting down, until [`Farewell::finish`] (see
    /// [`farewell`]). Without it, a client that connects while the server
    /// stops would hear only "connection reset".
    fn start_farewell(&mut self) -> Farewell {
        let pending: Vec<OwnedFd> = self.pending.drain().map(|(_, p)| p.sock).collect();
        let listener = match self.ctx.listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "no farewell for late clients: cannot dup the listener");
                for sock in &pending {
                    say_shutting_down(sock.as_fd(), self.ctx.epoch);
                }
                return Farewell(None);
            }
        };
        let (epoch, euid) = (self.ctx.epoch, self.ctx.euid);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("cradle-farewell".into())
            .spawn(move || farewell(listener, pending, epoch, euid, &stop2));
        match spawned {
            Ok(j) => Farewell(Some((stop, j))),
            Err(e) => {
                tracing::debug!(error = %e, "no farewell for late clients: cannot spawn a thread");
                Farewell(None)
            }
        }
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

/// The acceptor loop; returns when the server shuts down, with the
/// [`Farewell`] that answers clients connecting from then on (call
/// [`Farewell::finish`] once the socket file is removed).
pub(crate) fn run_acceptor(ctx: &AcceptorCtx) -> (std::io::Result<()>, Farewell) {
    let mut farewell = Farewell(None);
    let r = accept_loop(ctx, &mut farewell);
    (r, farewell)
}

/// The body of [`run_acceptor`].
fn accept_loop(ctx: &AcceptorCtx, farewell: &mut Farewell) -> std::io::Result<()> {
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
            a.log.finish();
            *farewell = a.start_farewell();
            return Ok(());
        }
        let now = Instant::now();
        // Sleep until the next handshake deadline, or a log period while
        // suppressed log lines wait to be counted; otherwise until an event
        // (a connection, a shutdown's bell): an idle server makes no
        // wake-ups.
        let timeout = a
            .pending
            .values()
            .map(|p| p.deadline.saturating_duration_since(now))
            .chain(a.log.pending().then_some(Duration::from_secs(1)))
            .min()
            .map(|t| t.min(Duration::from_secs(1)));
        let ts = timeout.map(|t| {
            Timespec::try_from(t).unwrap_or(Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            })
        });
        events.clear();
        match epoll::wait(&a.epoll, spare_capacity(&mut events), ts.as_ref()) {
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

/// How long the farewell waits for a client's Hello before answering anyway
/// (answering first would make the client's Hello fail with `EPIPE`).
const FAREWELL_HELLO_WAIT: Duration = Duration::from_secs(1);

/// After [`Farewell::finish`], how long the connections still waiting get
/// for their Hello, all together.
const FAREWELL_LAST_WAIT: Duration = Duration::from_millis(100);

/// Waits until `sock` is readable or `deadline` passes.
fn wait_readable(sock: BorrowedFd<'_>, deadline: Instant) {
    use rustix::event::{PollFd, PollFlags, poll};
    let left = deadline.saturating_duration_since(Instant::now());
    let Ok(ts) = rustix::event::Timespec::try_from(left) else {
        return;
    };
    let mut fds = [PollFd::new(&sock, PollFlags::IN | PollFlags::RDHUP)];
    let _ = poll(&mut fds, Some(&ts));
}

/// The farewell never lasts longer than this (the server finishes it long
/// before).
const FAREWELL_MAX: Duration = Duration::from_secs(60);

/// Reads whatever the client sent, answers `STATUS_SHUTTING_DOWN` and lets
/// the caller close the connection. Never blocks (the socket is
/// non-blocking, and its file description is ours alone).
fn say_shutting_down(sock: BorrowedFd<'_>, epoch: u64) {
    let mut buf = [0u8; 256];
    // Unread bytes at close would turn the client's read into a reset.
    while let Ok((n, _)) = rustix::net::recv(sock, &mut buf, RecvFlags::DONTWAIT) {
        if n == 0 {
            break;
        }
    }
    let w = welcome(STATUS_SHUTTING_DOWN, epoch);
    let _ = send_with_fds(sock, bytemuck::bytes_of(&w), &[]);
}

/// The thread that answers clients connecting while the server stops.
#[derive(Debug)]
pub(crate) struct Farewell(Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>);

impl Farewell {
    /// Ends the farewell: answers whoever is still waiting and closes the
    /// listener's last descriptor. Call it after the socket file is
    /// removed, so that no new client can reach the listener.
    pub(crate) fn finish(self) {
        if let Some((stop, thread)) = self.0 {
            // Release: pairs with the Acquire load in `farewell`.
            stop.store(true, Ordering::Release);
            let _ = thread.join();
        }
    }
}

/// The farewell loop: accepts every connection, waits (at most
/// [`FAREWELL_HELLO_WAIT`]) for its Hello and answers
/// `STATUS_SHUTTING_DOWN`, until `stop` (or [`FAREWELL_MAX`]); then accepts
/// what is left in the queue, answers everyone still waiting and returns,
/// closing the listener's last descriptor.
fn farewell(listener: OwnedFd, pending: Vec<OwnedFd>, epoch: u64, euid: u32, stop: &AtomicBool) {
    use rustix::event::{PollFd, PollFlags, poll};
    let started = Instant::now();
    let mut waiting: Vec<(OwnedFd, Instant)> = pending
        .into_iter()
        .map(|s| (s, started + FAREWELL_HELLO_WAIT))
        .collect();
    loop {
        let now = Instant::now();
        // Acquire: pairs with the Release store in `Farewell::finish`.
        let listening = !stop.load(Ordering::Acquire) && now.duration_since(started) < FAREWELL_MAX;
        // Accept everything queued (also once more at the end).
        loop {
            match rustix::net::accept_with(&listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)
            {
                Ok(sock) => {
                    let ours = rustix::net::sockopt::socket_peercred(&sock)
                        .is_ok_and(|c| c.uid.as_raw() == euid);
                    if ours {
                        waiting.push((sock, now + FAREWELL_HELLO_WAIT));
                    }
                }
                Err(Errno::INTR | Errno::CONNABORTED) => {}
                Err(_) => break,
            }
        }
        // Bounded like the handshake: the oldest are answered at once.
        while waiting.len() > MAX_PENDING {
            let (sock, _) = waiting.remove(0);
            say_shutting_down(sock.as_fd(), epoch);
        }
        if !listening {
            // The last ones get a short grace for their Hello.
            let end = now + FAREWELL_LAST_WAIT;
            for (sock, _) in &waiting {
                wait_readable(sock.as_fd(), end);
                say_shutting_down(sock.as_fd(), epoch);
            }
            return;
        }
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(waiting.len() + 1);
        fds.push(PollFd::new(&listener, PollFlags::IN));
        for (sock, _) in &waiting {
            fds.push(PollFd::new(sock, PollFlags::IN | PollFlags::RDHUP));
        }
        let tick = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        };
        let ready: Vec<bool> = match poll(&mut fds, Some(&tick)) {
            Ok(_) => fds[1..].iter().map(|f| !f.revents().is_empty()).collect(),
            Err(_) => vec![false; waiting.len()],
        };
        drop(fds);
        let now = Instant::now();
        let mut i = 0;
        waiting.retain(|(sock, deadline)| {
            let answer = ready.get(i).copied().unwrap_or(false) || now >= *deadline;
            i += 1;
            if answer {
                say_shutting_down(sock.as_fd(), epoch);
            }
            !answer
        });
    }
}
