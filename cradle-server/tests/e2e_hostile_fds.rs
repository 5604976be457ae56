//! Hostile clients that attack the descriptors they share with the server:
//! they flip `O_NONBLOCK` both ways on every descriptor they hold, fill the
//! wake counters to their maximum, drain the server's doorbell themselves and
//! set the `waiting` words so that the server rings them. No worker may block:
//! other sessions' calls keep being answered and SIGTERM still stops the
//! server.

mod support;

use cradle_client::Client;
use ipc_core::ring::FrameMeta;
use ipc_core::sync::AtomicBool;
use ipc_core::sync::Ordering;
use ipc_rpc::builtin::Ping;
use ipc_rpc::handshake::{self, HELLO_WAKE_EVENTFD, Hello, Welcome};
use ipc_rpc::session::{LAYOUT_VERSION, SESSION_KIND, SESSION_MAGIC};
use ipc_rpc::{Method, Outbox, wire};
use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// The largest value an eventfd counter can hold.
const EVENTFD_MAX: u64 = 0xffff_ffff_ffff_fffe;

/// A session opened by hand with `HELLO_WAKE_EVENTFD`, keeping every
/// descriptor the server sent.
struct Hostile {
    stream: UnixStream,
    welcome: Welcome,
    map: Arc<ipc_core::shm::Mapping>,
    /// The session segment, the doorbell, the status segment, the wake fd.
    fds: Vec<OwnedFd>,
}

impl Hostile {
    fn open(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).expect("connect");
        let hello = Hello {
            flags: HELLO_WAKE_EVENTFD,
            ..Hello::current()
        };
        handshake::send_pod(&stream, &hello).expect("hello");
        let mut buf = [0u8; size_of::<Welcome>()];
        let fds = handshake::recv_with_fds(stream.as_fd(), &mut buf)
            .expect("welcome")
            .expect("eof");
        let welcome: Welcome = bytemuck::pod_read_unaligned(&buf);
        assert_eq!(welcome.status, handshake::STATUS_OK);
        assert_eq!(fds.len(), 4, "session, doorbell, status, wake");
        let seg_fd = fds[0].try_clone().expect("dup");
        let (_seg, map) = ipc_core::shm::Segment::open(
            seg_fd,
            &ipc_core::shm::OpenExpect::exact(
                SESSION_MAGIC,
                LAYOUT_VERSION,
                welcome.session_len as usize,
            )
            .kind(SESSION_KIND)
            .access(ipc_core::shm::Access::ReadWrite),
        )
        .expect("session segment");
        Self {
            stream,
            welcome,
            map: Arc::new(map),
            fds,
        }
    }

    fn bell(&self) -> BorrowedFd<'_> {
        self.fds[1].as_fd()
    }

    fn wake(&self) -> BorrowedFd<'_> {
        self.fds[3].as_fd()
    }

    fn ring(&self, offset: usize) -> ipc_core::ring::RingRegion {
        ipc_core::ring::RingRegion::in_mapping(
            self.map.clone(),
            offset,
            self.welcome.ring_capacity as usize,
        )
        .unwrap()
    }

    /// Every descriptor we hold, the control socket included.
    fn all_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut v: Vec<_> = self.fds.iter().map(|f| f.as_fd()).collect();
        v.push(self.stream.as_fd());
        v
    }
}

fn set_nonblock(fd: BorrowedFd<'_>, on: bool) {
    let Ok(fl) = fcntl_getfl(fd) else { return };
    let fl = if on {
        fl | OFlags::NONBLOCK
    } else {
        fl - OFlags::NONBLOCK
    };
    let _ = fcntl_setfl(fd, fl);
}

/// Writes `v` (8 bytes) without blocking us: sets `O_NONBLOCK` around it.
fn write_u64_nb(fd: BorrowedFd<'_>, v: u64) -> bool {
    set_nonblock(fd, true);
    let ok = matches!(rustix::io::write(fd, &v.to_ne_bytes()), Ok(8));
    set_nonblock(fd, false);
    ok
}

/// Plays every trick on one session until `stop`: returns the number of
/// rounds. The wake descriptor and the doorbell are left in blocking mode
/// most of the time.
fn attack(h: &Hostile, stop: &AtomicBool) -> u64 {
    let cap = h.welcome.ring_capacity as usize;
    // SAFETY: this test attaches one producer to the request ring and one
    // consumer to the response ring of its own session.
    let mut out = Outbox::new(unsafe {
        ipc_core::ring::Producer::attach(h.ring(ipc_rpc::session::request_ring_offset()))
    });
    // SAFETY: as above.
    let consumer = unsafe {
        ipc_core::ring::Consumer::attach(h.ring(ipc_rpc::session::response_ring_offset(cap)))
    };
    let (_, data_waiting) = consumer.data_bell_words();
    // The counter trick on the wake descriptor: fill it to the maximum (or,
    // if it is not an eventfd, fill whatever buffer it has), then leave it
    // blocking.
    write_u64_nb(h.wake(), EVENTFD_MAX);
    for _ in 0..4096 {
        if !write_u64_nb(h.wake(), 1) {
            break;
        }
    }
    for fd in h.all_fds() {
        set_nonblock(fd, false);
    }
    let mut rounds = 0u64;
    let mut id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Ask to be woken for everything, then send a request that gets an
        // answer (never read: the backlog is the server's business).
        data_waiting.store(1, Ordering::Relaxed);
        out.producer()
            .space_bell_words()
            .1
            .store(1, Ordering::Relaxed);
        let meta = FrameMeta {
            request_id: id,
            tag: Ping::ID,
            kind: wire::REQUEST,
            flags: 0,
        };
        if out.try_send(meta, &id.to_le_bytes()).is_ok() {
            id += 1;
        }
        // The doorbell trick: ring it and read it back ourselves before the
        // worker does, leaving it in blocking mode in between. Our own write
        // and read must not hang this thread: the write is non-blocking (the
        // counter may be full), the read only takes a counter seen non-zero.
        write_u64_nb(h.bell(), 1);
        let bell = h.bell();
        let mut pfd = [rustix::event::PollFd::new(
            &bell,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec::default();
        if matches!(rustix::event::poll(&mut pfd, Some(&zero)), Ok(1)) {
            set_nonblock(h.bell(), true);
            let mut b = [0u8; 8];
            let _ = rustix::io::read(h.bell(), &mut b);
            set_nonblock(h.bell(), false);
        }
        // Now and then, leave the doorbell counter full (our own rings then
        // fail, the server must not care), until the next round drains it.
        if rounds % 16 == 15 {
            write_u64_nb(h.bell(), EVENTFD_MAX);
        }
        // Flip every descriptor both ways; end in blocking mode.
        for fd in h.all_fds() {
            set_nonblock(fd, true);
            set_nonblock(fd, false);
        }
        // Keep the wake counter full.
        write_u64_nb(h.wake(), EVENTFD_MAX);
        rounds += 1;
        std::thread::sleep(Duration::from_micros(200));
    }
    rounds
}

/// `hostiles` attacking sessions on a server with `workers` workers: a
/// well-behaved client keeps getting answers, then SIGTERM stops the server.
fn run(tag: &'static str, workers: &str, hostiles: usize) {
    let (_dog, dir, mut server) =
        with_server(tag, Duration::from_secs(60), &["--workers", workers]);
    let sessions: Vec<Arc<Hostile>> = (0..hostiles)
        .map(|_| Arc::new(Hostile::open(&dir.socket())))
        .collect();
    let mut on_workers: Vec<u32> = sessions.iter().map(|h| h.welcome.worker).collect();
    on_workers.sort_unstable();
    on_workers.dedup();
    eprintln!("hostile sessions on workers {on_workers:?}");
    assert_eq!(
        on_workers.len(),
        workers.parse::<usize>().unwrap(),
        "every worker has a hostile session"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = sessions
        .iter()
        .map(|h| {
            let (h, stop) = (Arc::clone(h), Arc::clone(&stop));
            std::thread::spawn(move || attack(&h, &stop))
        })
        .collect();
    // Let the first rounds land (the worker rings the hostile wake
    // descriptors while they are blocking and full).
    std::thread::sleep(Duration::from_millis(200));
    let good: Vec<Client> = (0..workers.parse::<usize>().unwrap())
        .map(|_| Client::connect_with(dir.socket(), sleeping()).expect("connect"))
        .collect();
    let end = Instant::now() + Duration::from_secs(2);
    let mut calls = 0u64;
    while Instant::now() < end {
        for c in &good {
            let p = calls.to_le_bytes().to_vec();
            assert_eq!(c.call::<Ping>(&p).expect("well-behaved call"), p);
            calls += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds: u64 = attackers.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!("{rounds} attack rounds; {calls} well-behaved calls answered meanwhile");
    assert!(calls > 0 && rounds > 0);
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server died"
    );
    drop(good);
    // The hostile sessions stay open (and their descriptors blocking and
    // full) while the server stops.
    let status = server.terminate();
    assert!(status.success(), "server exit status {status:?}");
    drop(sessions);
}

#[test]
fn descriptor_tricks_cannot_block_the_only_worker() {
    run("hostile fds 1 worker", "1", 1);
}

#[test]
fn four_hostile_sessions_cannot_block_four_workers() {
    run("hostile fds 4 workers", "4", 4);
}

/// Frame flags other than 0 are refused with a `Malformed` error answer;
/// the session stays usable.
#[test]
fn a_request_with_unknown_flags_is_answered_with_malformed() {
    use ipc_rpc::{ErrorCode, RemoteError, Wire};
    let (_dog, dir, _server) = with_server("frame flags", Duration::from_secs(60), &[]);
    let raw = RawSession::open(&dir.socket());
    let mut out = Outbox::new(raw.producer());
    let mut inbox = ipc_rpc::Inbox::new(raw.consumer());
    for (id, flags) in [(1u64, 1u16), (2, 0x8000), (3, 0)] {
        let meta = FrameMeta {
            request_id: id,
            tag: Ping::ID,
            kind: wire::REQUEST,
            flags,
        };
        out.try_send(meta, &vec![7u8; 8]).expect("room");
        raw.kick();
        let (meta, bytes) = loop {
            if let Some(m) = inbox.try_recv().expect("response ring") {
                break (m.meta, m.bytes.to_vec());
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        inbox.consumer().release_and_notify(&raw.eventfd);
        assert_eq!(meta.request_id, id);
        if flags == 0 {
            assert_eq!(meta.kind, wire::RESPONSE, "a clean request is served");
        } else {
            assert_eq!(meta.kind, wire::ERROR, "flags {flags:#x} accepted");
            let e = <RemoteError as Wire>::decode(&bytes).expect("error payload");
            assert_eq!(ErrorCode::from_u32(e.code), ErrorCode::Malformed);
            eprintln!("flags {flags:#x}: {}", e.message);
        }
    }
    // Flag 1 (ENVELOPE) is defined: with a real envelope in front of the
    // body, the compiled-in method is served (the envelope taken off);
    // above, the bare body was not an envelope.
    let body = ipc_rpc::encode_to_vec(
        &vec![7u8; 8],
        &mut ipc_rpc::rkyv::ser::allocator::Arena::new(),
        1 << 16,
    )
    .unwrap();
    let mut payload = vec![0u8; wire::body_offset(0)];
    wire::write_envelope(
        &mut payload,
        wire::deadline_after(Duration::from_secs(10)),
        0,
        &[],
    )
    .unwrap();
    payload.extend_from_slice(&body);
    let meta = FrameMeta {
        request_id: 4,
        tag: Ping::ID,
        kind: wire::REQUEST,
        flags: wire::ENVELOPE,
    };
    out.try_send_encoded(meta, &payload).expect("room");
    raw.kick();
    let (meta, bytes) = loop {
        if let Some(m) = inbox.try_recv().expect("response ring") {
            break (m.meta, m.bytes.to_vec());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(
        (meta.request_id, meta.kind, meta.flags),
        (4, wire::RESPONSE, 0)
    );
    assert_eq!(bytes, body.to_vec(), "the echo of the body alone");
}
