//! Harness of the end-to-end tests: temporary socket directories, a real
//! `cradle-server` process per test, child client processes (this test binary
//! re-executed with a role), raw sessions for hostile clients, and the
//! watchdog shared with `ipc-core`'s tests.
#![allow(dead_code, unreachable_pub)]

#[path = "../../../ipc-core/tests/support/mod.rs"]
mod core_support;
#[allow(unused_imports)]
pub(crate) use core_support::{SplitMix, Watchdog};

use cradle_client::{Client, ClientOptions, ConnectError};
use ipc_core::ring::{Consumer, Producer, RingRegion};
use ipc_core::shm::{Access, Mapping, OpenExpect, Seals, Segment};
use ipc_core::sync::{AtomicU32, Ordering};
use ipc_rpc::handshake::{self, Hello, Welcome};
use ipc_rpc::session::{
    self, LAYOUT_VERSION, SESSION_KIND, SESSION_MAGIC, STATUS_KIND, STATUS_MAGIC,
};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A private directory for one test's socket, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "cradle-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).expect("chmod 0700");
        Self(p)
    }

    pub fn socket(&self) -> PathBuf {
        self.0.join("cradle.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `cradle-server` process; killed (SIGKILL) on drop if still running.
pub struct ServerProc {
    pub child: Child,
    pub socket: PathBuf,
}

pub fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cradle-server")
}

/// The `cradle` CLI. `cargo test --workspace` builds it next to the server,
/// because `cradle-client` has integration tests (cargo builds a package's
/// binaries only for its own integration tests).
pub fn cli_bin() -> PathBuf {
    let p = Path::new(server_bin()).with_file_name("cradle");
    assert!(
        p.exists(),
        "{} not built: run the tests with `cargo test --workspace` (it builds every binary)",
        p.display()
    );
    p
}

impl ServerProc {
    /// Starts a server on `socket` and waits until it accepts sessions.
    pub fn start(socket: &Path, extra: &[&str]) -> Self {
        let mut cmd = Command::new(server_bin());
        cmd.arg("--socket").arg(socket).args(extra);
        // Each test's disk cache lives beside its socket, never in the
        // user's own cache directory.
        if !extra.iter().any(|a| a.contains("disk-cache")) {
            cmd.arg("--disk-cache").arg(socket.with_file_name("disk"));
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn cradle-server");
        let me = Self {
            child,
            socket: socket.to_path_buf(),
        };
        me.wait_ready();
        me
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&self.socket) {
                Ok(_) => return,
                Err(ConnectError::NoServer { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("server at {} not ready: {e}", self.socket.display()),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.pid(), libc::SIGTERM);
        self.child.wait().expect("wait server")
    }

    /// CPU time (user + system) the server has used so far.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid())
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The usual start of an end-to-end test: a watchdog named `what` with
/// `limit`, a private socket directory, and a server on it (extra flags
/// `extra`) that the watchdog kills too if it fires. Bind the three in this
/// order (`let (dog, dir, server) = ...`): they drop server first.
pub fn with_server(
    what: &'static str,
    limit: Duration,
    extra: &[&str],
) -> (Watchdog, TempDir, ServerProc) {
    let dog = Watchdog::arm(what, limit);
    let dir = TempDir::new(&what.replace(' ', "-"));
    let server = ServerProc::start(&dir.socket(), extra);
    dog.watch_child(server.pid());
    (dog, dir, server)
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we spawned; no memory is involved.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Stops `pid` with SIGSTOP and waits until the kernel reports it stopped
/// (state T): SIGSTOP takes effect asynchronously, and a process not yet
/// stopped may still answer the next calls.
pub fn stop_and_wait(pid: u32) {
    signal(pid, libc::SIGSTOP);
    let stopped = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
            .unwrap_or(false)
    });
    assert!(stopped, "process {pid} did not stop");
}

/// utime + stime of a process, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Polls `f` until it returns true or `limit` passes; returns whether it did.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Sessions the server reports as open.
pub fn open_sessions(socket: &Path) -> u64 {
    let c = Client::connect(socket).expect("stats client");
    // Minus the stats client itself.
    c.call::<ipc_rpc::builtin::Stats>(&())
        .expect("stats")
        .sessions
        - 1
}

pub fn sleeping() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(60),
        wait: cradle_client::WaitMode::Sleep,
    }
}

// ---- child processes -------------------------------------------------------

/// Spawns this test binary again as a client process playing `role`. The
/// child runs only the test `child_entry` of the same file, which dispatches
/// on `CRADLE_CHILD_ROLE`.
pub fn spawn_child(role: &str, socket: &Path, args: &[String]) -> Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .args([
            "child_entry",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CRADLE_CHILD_ROLE", role)
        .env("CRADLE_CHILD_ARGS", args.join(" "))
        .env("CRADLE_SOCKET", socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child")
}

/// The role and arguments of this process, if it is a child.
pub fn child_role() -> Option<(String, Vec<String>)> {
    let role = std::env::var("CRADLE_CHILD_ROLE").ok()?;
    let args = std::env::var("CRADLE_CHILD_ARGS").unwrap_or_default();
    Some((role, args.split_whitespace().map(String::from).collect()))
}

/// The `RESULT ` lines of a finished child (without the prefix).
pub fn child_results(child: Child) -> (std::process::ExitStatus, Vec<String>) {
    let out = child.wait_with_output().expect("wait child");
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("RESULT ") {
        eprintln!("child stdout without a result: {text:?}");
    }
    // libtest may print "test child_entry ... " on the same line.
    let lines = text
        .lines()
        .filter_map(|l| {
            l.find("RESULT ")
                .map(|i| l[i + "RESULT ".len()..].to_string())
        })
        .collect();
    (out.status, lines)
}

// ---- raw sessions (for hostile clients) ------------------------------------

/// A session opened by hand, without the client library: the hostile tests
/// use it to do what the library never would.
pub struct RawSession {
    pub stream: UnixStream,
    pub welcome: Welcome,
    pub map: Arc<Mapping>,
    pub eventfd: ipc_core::doorbell::EventFd,
    pub status: Mapping,
}

impl RawSession {
    pub fn open(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).expect("connect");
        handshake::send_pod(&stream, &Hello::current()).expect("hello");
        let mut buf = [0u8; size_of::<Welcome>()];
        let fds = handshake::recv_with_fds(stream.as_fd(), &mut buf)
            .expect("welcome")
            .expect("eof");
        let welcome: Welcome = bytemuck::pod_read_unaligned(&buf);
        assert_eq!(welcome.status, handshake::STATUS_OK);
        let [s, e, st]: [OwnedFd; 3] = fds.try_into().expect("3 fds");
        let (_seg, map) = Segment::open(
            s,
            &OpenExpect::exact(SESSION_MAGIC, LAYOUT_VERSION, welcome.session_len as usize)
                .kind(SESSION_KIND)
                .seals(Seals::SHRINK | Seals::GROW | Seals::SEAL)
                .access(Access::ReadWrite),
        )
        .expect("session segment");
        let (_seg, status) = Segment::open(
            st,
            &OpenExpect::exact(STATUS_MAGIC, LAYOUT_VERSION, welcome.status_len as usize)
                .kind(STATUS_KIND)
                .access(Access::ReadOnly),
        )
        .expect("status segment");
        let eventfd = ipc_core::doorbell::EventFd::from_fd(e).expect("eventfd");
        Self {
            stream,
            welcome,
            map: Arc::new(map),
            eventfd,
            status,
        }
    }

    pub fn cap(&self) -> usize {
        self.welcome.ring_capacity as usize
    }

    pub fn request_ring(&self) -> RingRegion {
        RingRegion::in_mapping(self.map.clone(), session::request_ring_offset(), self.cap())
            .unwrap()
    }

    pub fn response_ring(&self) -> RingRegion {
        RingRegion::in_mapping(
            self.map.clone(),
            session::response_ring_offset(self.cap()),
            self.cap(),
        )
        .unwrap()
    }

    pub fn producer(&self) -> Producer<RingRegion> {
        // SAFETY: the test attaches one producer to this session's request ring.
        unsafe { Producer::attach(self.request_ring()) }
    }

    pub fn consumer(&self) -> Consumer<RingRegion> {
        // SAFETY: the test attaches one consumer to this session's response ring.
        unsafe { Consumer::attach(self.response_ring()) }
    }

    /// Wakes the server unconditionally (a hostile client does not care
    /// whether it sleeps).
    pub fn kick(&self) {
        let _ = self.eventfd.notify();
    }

    /// Writes `bytes` at `offset` of the session segment (volatile).
    pub fn scribble(&self, offset: usize, word: u64) {
        assert!(offset + 8 <= self.map.len() && offset.is_multiple_of(8));
        let base = self.map.as_mut_ptr().expect("read-write mapping");
        // SAFETY: in bounds and aligned (asserted) of our read-write mapping; a
        // volatile write: this process plays the hostile peer.
        unsafe { std::ptr::write_volatile(base.add(offset).cast::<u64>(), word) };
    }
}

// ---- process and memory probes ----------------------------------------------

/// The `i`-th word of the test pattern the blob tests write and check.
pub fn word(i: u64) -> u64 {
    (i ^ 0x5DEE_CE66_D1CE_4E5B).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// `Shmem` from /proc/meminfo, in bytes.
pub fn shmem() -> i64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = m.lines().find(|l| l.starts_with("Shmem:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<i64>()
        .unwrap()
        * 1024
}

/// `device:inode` of an open descriptor: equal for two descriptors of the
/// same memory.
pub fn identity(fd: std::os::fd::BorrowedFd<'_>) -> String {
    let st = rustix::fs::fstat(fd).unwrap();
    format!("{}:{}", st.st_dev, st.st_ino)
}

/// Descriptors the process `pid` has open now.
///
/// Files under `/proc` are not counted: the contention gauge of adaptive
/// waiting (`ipc_core::doorbell::adaptive`) opens `/proc/loadavg` and a
/// thread's `schedstat` the first time the machine looks busy and keeps
/// them open, so their number depends on the load, not on leaks (the
/// directory listing itself is one of them).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|t| !t.starts_with("/proc/"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

// ---- raw peers (a provider or caller speaking frames by hand) --------------

/// A session whose rings the test drives frame by frame: it can register
/// as a provider, take INVOKE and CANCEL frames, answer with REPLY or
/// REPLY_ERROR (or anything else a hostile provider might write), and make
/// ordinary calls meanwhile. Frames that are not the answer a call waits
/// for are kept, in order, for [`RawPeer::recv`].
pub struct RawPeer {
    pub raw: RawSession,
    pub out: ipc_rpc::Outbox<RingRegion>,
    pub inbox: ipc_rpc::Inbox<RingRegion>,
    pub stash: std::collections::VecDeque<(ipc_core::ring::FrameMeta, Vec<u8>)>,
    next_id: u64,
}

impl RawPeer {
    pub fn open(socket: &Path) -> Self {
        let raw = RawSession::open(socket);
        let out = ipc_rpc::Outbox::new(raw.producer());
        let inbox = ipc_rpc::Inbox::new(raw.consumer());
        Self {
            raw,
            out,
            inbox,
            stash: Default::default(),
            next_id: 1,
        }
    }

    /// Publishes a frame (waiting for room) and wakes the server.
    pub fn send_encoded(&mut self, meta: ipc_core::ring::FrameMeta, bytes: &[u8]) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match self.out.try_send_encoded(meta, bytes) {
                Ok(()) => break,
                Err(ipc_rpc::SendError::Full { .. }) if Instant::now() < end => {
                    self.pump();
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err(e) => panic!("send: {e}"),
            }
        }
        self.raw.kick();
    }

    /// Reads every frame waiting in the response ring into the stash.
    pub fn pump(&mut self) {
        while let Some(m) = self.inbox.try_recv().expect("response ring") {
            self.stash.push_back((m.meta, m.bytes.to_vec()));
        }
        if self.inbox.consumer().release() {
            // The server may wait for room (it set `space_waiting`).
            self.raw.kick();
        }
    }

    /// The next frame not taken by a call, waiting up to `limit`.
    pub fn recv(&mut self, limit: Duration) -> Option<(ipc_core::ring::FrameMeta, Vec<u8>)> {
        let end = Instant::now() + limit;
        loop {
            self.pump();
            if let Some(f) = self.stash.pop_front() {
                return Some(f);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// The next frame of `kind`, others staying in the stash.
    pub fn recv_kind(
        &mut self,
        kind: u16,
        limit: Duration,
    ) -> Option<(ipc_core::ring::FrameMeta, Vec<u8>)> {
        let end = Instant::now() + limit;
        loop {
            self.pump();
            if let Some(i) = self.stash.iter().position(|(m, _)| m.kind == kind) {
                return self.stash.remove(i);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Sends a REQUEST for `tag` with `flags` and `payload`; returns its id.
    pub fn request_raw(&mut self, tag: u64, flags: u16, payload: &[u8]) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let meta = ipc_core::ring::FrameMeta {
            request_id: id,
            tag,
            kind: ipc_rpc::wire::REQUEST,
            flags,
        };
        self.send_encoded(meta, payload);
        id
    }

    /// Waits for the answer to request `id`: Ok((flags, payload)) for a
    /// RESPONSE, Err for an ERROR frame.
    pub fn answer(
        &mut self,
        id: u64,
        limit: Duration,
    ) -> Result<(u16, Vec<u8>), ipc_rpc::RemoteError> {
        let end = Instant::now() + limit;
        loop {
            self.pump();
            if let Some(i) = self.stash.iter().position(|(m, _)| {
                m.request_id == id
                    && (m.kind == ipc_rpc::wire::RESPONSE || m.kind == ipc_rpc::wire::ERROR)
            }) {
                let (m, b) = self.stash.remove(i).unwrap();
                if m.kind == ipc_rpc::wire::ERROR {
                    return Err(
                        <ipc_rpc::RemoteError as ipc_rpc::Wire>::decode(&b).expect("error frame")
                    );
                }
                return Ok((m.flags, b));
            }
            assert!(Instant::now() < end, "no answer to request {id}");
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// A typed call.
    pub fn call<M: ipc_rpc::Method>(
        &mut self,
        req: &M::Request,
    ) -> Result<M::Response, ipc_rpc::RemoteError> {
        let bytes = ipc_rpc::encode_to_vec(
            req,
            &mut ipc_rpc::rkyv::ser::allocator::Arena::new(),
            1 << 20,
        )
        .expect("encode");
        let id = self.request_raw(M::ID, 0, &bytes);
        let (flags, b) = self.answer(id, Duration::from_secs(20))?;
        assert_eq!(
            flags, 0,
            "a typed call's response without blobs has no flags"
        );
        Ok(<M::Response as ipc_rpc::Wire>::decode(&b).expect("response"))
    }

    /// Registers as a provider of `offer`.
    pub fn register(&mut self, offer: ipc_rpc::provide::Offer) -> Result<(), ipc_rpc::RemoteError> {
        self.call::<ipc_rpc::provide::Register>(&offer)
    }

    /// Answers an INVOKE with a REPLY carrying `flags` and `payload`.
    pub fn reply(
        &mut self,
        invoke: &ipc_core::ring::FrameMeta,
        kind: u16,
        flags: u16,
        payload: &[u8],
    ) {
        let meta = ipc_core::ring::FrameMeta {
            request_id: invoke.request_id,
            tag: invoke.tag,
            kind,
            flags,
        };
        self.send_encoded(meta, payload);
    }
}

/// An offer of a bytes method with `concurrency`, not idempotent.
pub fn offer(name: &str, concurrency: u32, idempotent: bool) -> ipc_rpc::provide::Offer {
    ipc_rpc::provide::Offer {
        name: name.to_owned(),
        version: 1,
        schema_hash: ipc_rpc::provide::BYTES_SCHEMA,
        concurrency,
        idempotent,
        memoized: false,
    }
}

/// An envelope (deadline, schema hash, blobs) followed by `body`.
pub fn enveloped(
    deadline_ns: u64,
    schema_hash: u64,
    blobs: &[ipc_rpc::blob::BlobHandle],
    body: &[u8],
) -> Vec<u8> {
    let mut p = vec![0u8; ipc_rpc::wire::body_offset(blobs.len())];
    ipc_rpc::wire::write_envelope(&mut p, deadline_ns, schema_hash, blobs).expect("envelope");
    p.extend_from_slice(body);
    p
}

/// The `cradle.methods` entry of `name`, if listed.
pub fn listed(socket: &Path, name: &str) -> Option<ipc_rpc::provide::MethodInfo> {
    let c = Client::connect(socket).expect("methods client");
    c.call::<ipc_rpc::provide::ListMethods>(&())
        .expect("cradle.methods")
        .into_iter()
        .find(|m| m.name == name)
}

/// A blob of `bytes`, written and sealed by `c`.
pub fn blob(c: &Client, bytes: &[u8]) -> cradle_client::Blob {
    let mut w = c.create(bytes.len()).expect("create");
    w.write_at(0, bytes);
    w.seal().expect("seal")
}

/// `len` bytes of a fixed pattern, with the byte at `tweak` flipped.
pub fn input_bytes(len: usize, tweak: Option<usize>) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    if let Some(i) = tweak {
        v[i] ^= 1;
    }
    v
}
