//! In-crate tests: start-up checks, the handshake, and full round trips
//! through an in-process server with a hand-made client.

use crate::startup::{check_socket_dir, ensure_socket_dir, take_lock};
use crate::{HandlerError, Server, ServerBuilder, ServerHandle, StartError};
use ipc_core::doorbell::{Doorbell, EventFd};
use ipc_core::ring::{Consumer, FrameMeta, Producer, RingRegion};
use ipc_core::shm::{Access, Mapping, OpenExpect, Seals, Segment};
use ipc_core::sync::{AtomicU32, Ordering, StdAtomics};
use ipc_rpc::builtin::{Ping, ServerStats, Stats};
use ipc_rpc::handshake::{
    self, GOODBYE_MAGIC, Goodbye, Hello, STATUS_OK, STATUS_PROTOCOL_MISMATCH,
    STATUS_SCHEMA_MISMATCH, STATUS_TOO_MANY_SESSIONS, Welcome,
};
use ipc_rpc::handshake::{HelloRead, read_hello};
use ipc_rpc::session::{
    self, LAYOUT_VERSION, SESSION_KIND, SESSION_MAGIC, STATUS_KIND, STATUS_MAGIC,
};
use ipc_rpc::{ErrorCode, Inbox, Method, Outbox, RemoteError, Wire, wire};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A unique private directory under /tmp, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        // Relaxed: only uniqueness of the number matters.
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = PathBuf::from(format!(
            "/tmp/cradle-srv-test-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        Self(p)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("cradle.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[test]
fn socket_dir_rules() {
    let base = TempDir::new("dirs");
    let good = base.0.join("good");
    ensure_socket_dir(&good, euid()).unwrap();
    let md = std::fs::symlink_metadata(&good).unwrap();
    assert!(md.is_dir());
    assert_eq!(md.permissions().mode() & 0o7777, 0o700, "created 0700");
    ensure_socket_dir(&good, euid()).unwrap();

    let open = base.0.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = check_socket_dir(&open, euid()).unwrap_err();
    assert!(
        matches!(e, StartError::DirBadMode { mode: 0o755, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("0700"), "{e}");

    let link = base.0.join("link");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let e = ensure_socket_dir(&link, euid()).unwrap_err();
    assert!(matches!(e, StartError::DirIsSymlink(_)), "{e}");

    let file = base.0.join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        check_socket_dir(&file, euid()),
        Err(StartError::NotADirectory(_))
    ));

    let foreign = base.0.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).unwrap();
    if std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).is_ok() {
        let e = check_socket_dir(&foreign, euid()).unwrap_err();
        assert!(
            matches!(e, StartError::DirNotOwned { owner: 65534, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    } else {
        // Not root: a directory of ours checked against another euid.
        let e = check_socket_dir(&good, euid() + 1).unwrap_err();
        assert!(matches!(e, StartError::DirNotOwned { .. }), "{e}");
    }
}

#[test]
fn singleton_lock_and_second_bind() {
    let dir = TempDir::new("lock");
    let sock = dir.socket();
    let first = take_lock(&dir.0, "cradle.sock", &sock).unwrap();
    let e = take_lock(&dir.0, "cradle.sock", &sock).unwrap_err();
    assert!(matches!(e, StartError::AlreadyRunning(_)), "{e}");
    assert!(e.to_string().contains("already running on"), "{e}");
    drop(first);
    take_lock(&dir.0, "cradle.sock", &sock).unwrap();

    // Through the builder: a stale socket file is replaced, a second server
    // on the same path is refused.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let server = Server::builder().socket_path(sock.clone()).bind().unwrap();
    UnixStream::connect(&sock).unwrap();
    let e = Server::builder()
        .socket_path(sock.clone())
        .bind()
        .unwrap_err();
    assert!(matches!(e, StartError::AlreadyRunning(_)), "{e}");
    drop(server);
    assert!(!sock.exists(), "the socket file is removed with the server");
}

#[test]
fn bad_configuration_is_refused() {
    let dir = TempDir::new("config");
    let b = || Server::builder().socket_path(dir.socket());
    for e in [
        b().workers(0).bind().unwrap_err(),
        b().ring_capacity(1000).bind().unwrap_err(),
        b().max_sessions(0).bind().unwrap_err(),
        b().inline::<Ping, _>(Ok).bind().unwrap_err(),
        b().pool_segment_bytes(4096).bind().unwrap_err(),
        b().author_pool_bytes((1 << 20) + 1).bind().unwrap_err(),
        b().mem_cache_bytes(u64::MAX).bind().unwrap_err(),
    ] {
        assert!(
            matches!(
                e,
                StartError::InvalidConfig(_) | StartError::DuplicateMethod { .. }
            ),
            "{e}"
        );
    }
}

#[test]
fn hello_is_read_piecewise_over_a_socketpair() {
    let (mut a, b) = UnixStream::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    let hello = Hello::current();
    let bytes = bytemuck::bytes_of(&hello);
    let (mut buf, mut got) = ([0u8; 32], 0);
    assert_eq!(
        read_hello(b.as_fd(), &mut buf, &mut got),
        HelloRead::NeedMore
    );
    std::io::Write::write_all(&mut a, &bytes[..10]).unwrap();
    assert_eq!(
        read_hello(b.as_fd(), &mut buf, &mut got),
        HelloRead::NeedMore
    );
    assert_eq!(got, 10);
    std::io::Write::write_all(&mut a, &bytes[10..]).unwrap();
    assert_eq!(
        read_hello(b.as_fd(), &mut buf, &mut got),
        HelloRead::Complete(hello)
    );

    // A fake hello: bad magic is not a client at all; a version mismatch
    // gets a status.
    let (mut buf, mut got) = ([0u8; 32], 0);
    let fake = Hello {
        protocol: 99,
        ..Hello::current()
    };
    std::io::Write::write_all(&mut a, bytemuck::bytes_of(&fake)).unwrap();
    let HelloRead::Complete(h) = read_hello(b.as_fd(), &mut buf, &mut got) else {
        panic!("incomplete")
    };
    assert_eq!(h.check(), Some(STATUS_PROTOCOL_MISMATCH));
    assert_eq!(Hello { magic: 7, ..h }.check(), None);
    drop(a);
    let (mut buf, mut got) = ([0u8; 32], 0);
    assert_eq!(read_hello(b.as_fd(), &mut buf, &mut got), HelloRead::Closed);
}

/// A server running on a thread; shut down and joined on drop.
struct TestServer {
    dir: TempDir,
    handle: ServerHandle,
    thread: Option<JoinHandle<Result<(), crate::ServerError>>>,
}

impl TestServer {
    fn start(tag: &str, b: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Self {
        let dir = TempDir::new(tag);
        let server = b(Server::builder().socket_path(dir.socket()))
            .bind()
            .unwrap();
        let handle = server.handle();
        let thread = Some(std::thread::spawn(move || server.run()));
        Self {
            dir,
            handle,
            thread,
        }
    }

    fn stop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client made by hand from the protocol's pieces.
struct RawClient {
    stream: UnixStream,
    welcome: Welcome,
    out: Outbox<RingRegion>,
    inbox: Inbox<RingRegion>,
    eventfd: EventFd,
    status: Mapping,
    _session: Arc<Mapping>,
}

fn hello_exchange(path: &Path, hello: &Hello) -> (UnixStream, Welcome, Vec<OwnedFd>) {
    let stream = UnixStream::connect(path).unwrap();
    handshake::send_pod(&stream, hello).unwrap();
    let mut buf = [0u8; size_of::<Welcome>()];
    let fds = handshake::recv_with_fds(stream.as_fd(), &mut buf)
        .unwrap()
        .expect("a welcome, not EOF");
    (stream, bytemuck::pod_read_unaligned(&buf), fds)
}

impl RawClient {
    fn connect(path: &Path) -> Self {
        let (stream, welcome, fds) = hello_exchange(path, &Hello::current());
        assert_eq!(welcome.status, STATUS_OK);
        assert_eq!(welcome.magic, handshake::WELCOME_MAGIC);
        let [seg, efd, st]: [OwnedFd; 3] = fds.try_into().expect("three descriptors");
        let (_seg, map) = Segment::open(
            seg,
            &OpenExpect::exact(SESSION_MAGIC, LAYOUT_VERSION, welcome.session_len as usize)
                .kind(SESSION_KIND)
                .seals(Seals::SHRINK | Seals::GROW | Seals::SEAL)
                .access(Access::ReadWrite),
        )
        .unwrap();
        let (_st, status) = Segment::open(
            st,
            &OpenExpect::exact(STATUS_MAGIC, LAYOUT_VERSION, welcome.status_len as usize)
                .kind(STATUS_KIND)
                .seals(Seals::FUTURE_WRITE),
        )
        .unwrap();
        let map = Arc::new(map);
        let cap = welcome.ring_capacity as usize;
        let req = RingRegion::in_mapping(map.clone(), session::request_ring_offset(), cap).unwrap();
        let resp =
            RingRegion::in_mapping(map.clone(), session::response_ring_offset(cap), cap).unwrap();
        // SAFETY: the test is the only producer of this session's request ring.
        let producer = unsafe { Producer::attach(req) };
        // SAFETY: the test is the only consumer of this session's response ring.
        let consumer = unsafe { Consumer::attach(resp) };
        Self {
            stream,
            welcome,
            out: Outbox::new(producer),
            inbox: Inbox::new(consumer),
            eventfd: EventFd::from_fd(efd).unwrap(),
            status,
            _session: map,
        }
    }

    /// Rings the server's doorbell: writes the eventfd only if the worker
    /// sleeps, exactly as a real client does.
    fn ring(&mut self) {
        let off = session::worker_waiting_offset(self.welcome.worker as usize);
        let p = self.status.ptr_at::<AtomicU32>(off).unwrap();
        // SAFETY: in bounds and aligned (ptr_at), alive as long as `status`;
        // the doorbell only loads this word, which std allows on read-only
        // memory.
        let waiting = unsafe { p.as_ref() };
        let seq = self.out.producer().data_bell_words().0;
        Doorbell::<StdAtomics>::new(seq, waiting).ring(&self.eventfd);
    }

    fn send<M: Method>(&mut self, id: u64, tag: u64, req: &M::Request) {
        let meta = FrameMeta {
            request_id: id,
            tag,
            kind: wire::REQUEST,
            flags: 0,
        };
        self.out.try_send(meta, req).unwrap();
        self.ring();
    }

    /// The next answer: (header, payload copy).
    fn recv(&mut self) -> (FrameMeta, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(m) = self.inbox.try_recv().unwrap() {
                let r = (m.meta, m.bytes.to_vec());
                self.inbox.consumer().release_and_notify(&self.eventfd);
                return r;
            }
            assert!(Instant::now() < deadline, "no answer within 10 s");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// The next answer, polled without sleeping (keeps a worker busy).
    fn recv_spin(&mut self) -> (FrameMeta, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(m) = self.inbox.try_recv().unwrap() {
                let r = (m.meta, m.bytes.to_vec());
                self.inbox.consumer().release_and_notify(&self.eventfd);
                return r;
            }
            assert!(Instant::now() < deadline, "no answer within 10 s");
            std::hint::spin_loop();
        }
    }

    fn call<M: Method>(&mut self, id: u64, req: &M::Request) -> Result<M::Response, RemoteError> {
        self.send::<M>(id, M::ID, req);
        let (meta, bytes) = self.recv();
        assert_eq!(meta.request_id, id);
        let mut aligned = ipc_rpc::rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&bytes);
        match meta.kind {
            wire::RESPONSE => {
                assert_eq!(meta.tag, M::ID);
                Ok(M::Response::decode(&aligned).unwrap())
            }
            wire::ERROR => Err(RemoteError::decode(&aligned).unwrap()),
            k => panic!("unexpected kind {k}"),
        }
    }
}

ipc_rpc::method! {
    /// Fails or panics on request.
    Fail = "test.fail" version 1: u32 => u32;
    /// Sleeps on the offload pool.
    Slow = "test.slow" version 1: u64 => u64;
}

fn stats(c: &mut RawClient, id: u64) -> ServerStats {
    c.call::<Stats>(id, &()).unwrap()
}

#[test]
fn round_trips_errors_and_panics() {
    let mut srv = TestServer::start("calls", |b| {
        b.inline::<Fail, _>(|n: u32| match n {
            0 => Ok(0),
            1 => Err(HandlerError::new("one is not allowed")),
            _ => panic!("boom {n}"),
        })
        .offload::<Slow, _>(|ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(ms * 2)
        })
    });
    let mut c = RawClient::connect(&srv.dir.socket());
    assert_eq!(c.welcome.session_id, 1);
    assert_eq!(c.welcome.server_pid, std::process::id());

    // Ping, and again after the worker has surely gone to sleep.
    assert_eq!(c.call::<Ping>(1, &b"hello".to_vec()).unwrap(), b"hello");
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        c.call::<Ping>(2, &vec![9u8; 5000]).unwrap(),
        vec![9u8; 5000]
    );

    // Unknown method: ERROR UnknownMethod, tag 0, naming the id.
    c.send::<Ping>(3, 0xdead_beef, &vec![]);
    let (meta, bytes) = c.recv();
    assert_eq!((meta.kind, meta.request_id, meta.tag), (wire::ERROR, 3, 0));
    let mut a = ipc_rpc::rkyv::util::AlignedVec::<16>::new();
    a.extend_from_slice(&bytes);
    let e = RemoteError::decode(&a).unwrap();
    assert_eq!(ErrorCode::from_u32(e.code), ErrorCode::UnknownMethod);
    assert!(e.message.contains("0x00000000deadbeef"), "{}", e.message);

    // Malformed request: a Ping payload for a u32 method.
    c.send::<Ping>(4, Fail::ID, &vec![1, 2, 3, 4, 5, 6, 7]);
    let (meta, _) = c.recv();
    assert_eq!((meta.kind, meta.request_id), (wire::ERROR, 4));

    // Handler error and handler panic.
    assert_eq!(c.call::<Fail>(5, &0).unwrap(), 0);
    let e = c.call::<Fail>(6, &1).unwrap_err();
    assert_eq!(ErrorCode::from_u32(e.code), ErrorCode::Handler);
    assert_eq!(e.message, "one is not allowed");
    let e = c.call::<Fail>(7, &2).unwrap_err();
    assert_eq!(ErrorCode::from_u32(e.code), ErrorCode::HandlerPanicked);
    assert!(e.message.contains("boom 2"), "{}", e.message);

    // Offloaded calls complete out of order by request id.
    c.send::<Slow>(10, Slow::ID, &300);
    c.send::<Slow>(11, Slow::ID, &1);
    let (m1, _) = c.recv();
    let (m2, _) = c.recv();
    assert_eq!((m1.request_id, m2.request_id), (11, 10));

    // Stats.
    let s = stats(&mut c, 20);
    assert_eq!(s.pid, std::process::id());
    assert_eq!(s.sessions, 1);
    assert!(s.calls_served >= 9, "{s:?}");
    assert_eq!(s.per_session[0].id, 1);
    assert_eq!(s.per_session[0].pid, std::process::id());

    // Clean shutdown: a Goodbye on the socket, then EOF; socket removed.
    srv.stop();
    let mut buf = [0u8; 16];
    c.stream.read_exact(&mut buf).unwrap();
    let bye: Goodbye = bytemuck::pod_read_unaligned(&buf);
    assert_eq!(bye.magic, GOODBYE_MAGIC);
    assert_eq!(c.stream.read(&mut buf).unwrap(), 0);
    assert!(!srv.dir.socket().exists());
}

#[test]
fn handshake_refusals_and_session_limit() {
    let srv = TestServer::start("refuse", |b| {
        b.max_sessions(1)
            .handshake_timeout(Duration::from_millis(200))
    });
    let path = srv.dir.socket();
    let (_, w, fds) = hello_exchange(
        &path,
        &Hello {
            protocol: 99,
            ..Hello::current()
        },
    );
    assert_eq!((w.status, fds.len()), (STATUS_PROTOCOL_MISMATCH, 0));
    let (_, w, _) = hello_exchange(
        &path,
        &Hello {
            schema: 1,
            ..Hello::current()
        },
    );
    assert_eq!(w.status, STATUS_SCHEMA_MISMATCH);

    // Bad magic: closed without an answer.
    let mut s = UnixStream::connect(&path).unwrap();
    handshake::send_pod(
        &s,
        &Hello {
            magic: 1,
            ..Hello::current()
        },
    )
    .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0);

    // A silent connection does not block others and is dropped at the timeout.
    let mut silent = UnixStream::connect(&path).unwrap();
    let mut c = RawClient::connect(&path);
    let (_, w, _) = hello_exchange(&path, &Hello::current());
    assert_eq!(w.status, STATUS_TOO_MANY_SESSIONS);
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(silent.read(&mut b).unwrap(), 0);

    // A closed client frees its session.
    assert_eq!(c.call::<Ping>(1, &vec![1]).unwrap(), vec![1]);
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, w, _) = hello_exchange(&path, &Hello::current());
        if w.status == STATUS_OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed session was not freed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_client_that_does_not_drain_is_throttled_then_caught_up() {
    // Small rings: a handful of responses fill the response ring.
    let srv = TestServer::start("backlog", |b| b.ring_capacity(4096).max_backlog(8));
    let mut c = RawClient::connect(&srv.dir.socket());
    let payload = vec![5u8; 300];
    let mut sent = 0u64;
    let mut full_since: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    // Keep sending while the server takes requests; never read responses.
    loop {
        let meta = FrameMeta {
            request_id: sent,
            tag: Ping::ID,
            kind: wire::REQUEST,
            flags: 0,
        };
        match c.out.try_send(meta, &payload) {
            Ok(()) => {
                sent += 1;
                full_since = None;
                c.ring();
            }
            Err(ipc_rpc::SendError::Full { .. }) => {
                // Full for 100 ms in a row: the server stopped taking.
                full_since.get_or_insert_with(Instant::now);
                if full_since.is_some_and(|t| t.elapsed() > Duration::from_millis(100)) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the request ring never stayed full"
                );
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // The server took a ring's worth of responses plus `max_backlog`, then
    // stopped: the request ring is full and stays full.
    assert!(sent > 8 + 4, "sent {sent}");
    let mut other = RawClient::connect(&srv.dir.socket());
    let s = stats(&mut other, 1);
    let mine = s
        .per_session
        .iter()
        .find(|p| p.id == c.welcome.session_id)
        .unwrap();
    assert!(mine.backlog >= 8, "{mine:?}");
    // Drain: every response arrives, in order, and the server is woken by
    // our releases (space doorbell through the session eventfd).
    for i in 0..sent {
        let (meta, bytes) = c.recv();
        assert_eq!((meta.kind, meta.request_id), (wire::RESPONSE, i));
        assert!(bytes.len() >= 300);
    }
    assert_eq!(c.call::<Ping>(sent, &vec![1]).unwrap(), vec![1]);
}

#[test]
fn garbage_in_the_request_ring_closes_only_that_session() {
    let srv = TestServer::start("corrupt", |b| b);
    let mut bad = RawClient::connect(&srv.dir.socket());
    let mut good = RawClient::connect(&srv.dir.socket());
    // A commit word with a wrong stamp at the request ring's first frame.
    let off = session::request_ring_offset() + ipc_core::ring::CONTROL_LEN;
    let base = bad._session.as_mut_ptr().unwrap();
    // SAFETY: in bounds and 8-aligned in our read-write mapping; a volatile
    // write as a hostile peer would do.
    unsafe { std::ptr::write_volatile(base.add(off).cast::<u64>(), 0x7777_0000_0030) };
    let _ = bad.eventfd.notify();
    let mut b = [0u8; 1];
    bad.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(bad.stream.read(&mut b).unwrap(), 0, "session closed");
    assert_eq!(good.call::<Ping>(1, &vec![2]).unwrap(), vec![2]);
    let s = stats(&mut good, 2);
    assert_eq!(s.sessions_killed, 1);
    assert_eq!(s.sessions, 1);
}

#[test]
fn handles_are_send_and_clone() {
    fn send_clone<T: Send + Sync + Clone>() {}
    fn send<T: Send>() {}
    send_clone::<ServerHandle>();
    send::<Server>();
}

#[test]
fn a_busy_session_does_not_hide_a_newly_active_one() {
    use ipc_core::sync::AtomicBool;
    let srv = TestServer::start("busy", |b| b);
    let path = srv.dir.socket();
    let done = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let busy = {
        let (path, done) = (path.clone(), done.clone());
        std::thread::spawn(move || {
            let mut a = RawClient::connect(&path);
            let end = Instant::now() + Duration::from_secs(10);
            let mut id = 0;
            // Back-to-back calls keep the worker awake the whole time.
            // Acquire: pairs with the Release store below.
            while !done.load(Ordering::Acquire) && Instant::now() < end {
                a.send::<Ping>(id, Ping::ID, &vec![1]);
                let (meta, _) = a.recv_spin();
                assert_eq!(meta.request_id, id);
                id += 1;
                if id == 100 {
                    started_tx.send(()).unwrap();
                }
            }
            // Acquire: as above.
            done.load(Ordering::Acquire)
        })
    };
    started_rx.recv().unwrap();
    // Connected while the worker is awake: our ring() sees waiting == 0 and
    // writes no eventfd; the worker must find the request by itself.
    let mut b = RawClient::connect(&path);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(b.call::<Ping>(1, &vec![3]).unwrap(), vec![3]);
    // Release: pairs with the Acquire loads in the busy thread.
    done.store(true, Ordering::Release);
    assert!(
        busy.join().unwrap(),
        "the new session was answered only after the busy one stopped"
    );
}
