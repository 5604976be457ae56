//! The caller's side of every baseline: a raw shared-memory ping-pong
//! (spinning or futex), a Unix socket, a pipe and TCP on loopback, each with
//! its echo peer in a separate process (this binary, re-executed as
//! `cradle-bench peer <kind> ...`).

use crate::counters::pin_to;
use ipc_core::doorbell::{Futex, Waker};
use ipc_core::shm::{Access, Mapping, Segment};
use ipc_core::sync::{AtomicU32, Ordering, StdAtomics};
use linux_futex::{AsFutex, Shared, TimedWaitError};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

/// The largest payload the harness sends (64 KiB).
pub(crate) const MAX_PAYLOAD: usize = 64 << 10;

/// Layout of the baseline segment: two regions (request, response), each
/// `seq: u32` at 0, `len: u32` at 4, payload from 8 — so an 8-byte ping-pong
/// moves exactly one cache line each way.
pub(crate) const SEQ: usize = 0;
pub(crate) const LEN: usize = 4;
pub(crate) const DATA: usize = 8;
const REGION: usize = (DATA + MAX_PAYLOAD).next_multiple_of(4096) + 4096;
pub(crate) const REQ: usize = 4096;
pub(crate) const RESP: usize = REQ + REGION;
pub(crate) const SEG_LEN: usize = RESP + REGION;
/// A `len` meaning "end of block": the peer acknowledges, then waits for the
/// next block on its stdin (so a spinning peer does not burn a core while
/// other scenarios run).
pub(crate) const STOP: u32 = u32::MAX;

/// One transport as the measuring loop sees it.
pub(crate) trait Echo {
    /// Sends `msg`, waits for the echo and checks it (length, first and last
    /// bytes). `msg` is a `Vec` because CRADLE's `Ping` request type is one.
    #[allow(clippy::ptr_arg)]
    fn round_trip(&mut self, msg: &Vec<u8>) -> Result<(), String>;
    /// Called before each measured block.
    fn begin(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Called after each measured block.
    fn end(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Wake syscalls made so far by the serving process, where it reports them.
    fn server_wakes(&self) -> Option<u64> {
        None
    }
    /// How long to pause after a block (a server that keeps polling).
    fn cool_down(&self) -> Duration {
        Duration::ZERO
    }
}

/// The echo check every transport applies: the same length, and the same
/// first 16 and last 8 bytes (the first 8 carry the call's sequence number).
pub(crate) fn echo_ok(sent: &[u8], got: &[u8]) -> bool {
    let n = sent.len();
    if got.len() != n {
        return false;
    }
    let head = n.min(16);
    let tail = n.saturating_sub(8);
    sent[..head] == got[..head] && sent[tail..] == got[tail..]
}

/// A peer process, killed if still running when dropped.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    what: String,
}

impl Peer {
    /// Fails if the peer has exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!("{} exited: {st}", self.what)),
            Err(e) => Err(format!("{}: {e}", self.what)),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        reap(&mut self.child, Duration::from_secs(2));
    }
}

/// Waits up to `grace` for `child` to exit on its own, then kills it; always
/// reaps it.
pub(crate) fn reap(child: &mut std::process::Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// How to start a child of the harness.
#[derive(Debug, Default, Clone)]
pub(crate) struct SpawnOpts {
    /// Descriptors the child inherits (CLOEXEC cleared in the child only).
    pub(crate) keep_fds: Vec<RawFd>,
    /// Pin the child to this core.
    pub(crate) core: Option<usize>,
    /// Signal the child gets when the harness dies.
    pub(crate) death_signal: Option<i32>,
    pub(crate) stdin: bool,
    pub(crate) stdout: bool,
}

/// Prepares `cmd` per `opts` (fds, pinning, parent-death signal, stdio).
pub(crate) fn configure(cmd: &mut Command, opts: &SpawnOpts) {
    cmd.stdin(if opts.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    if opts.stdout {
        cmd.stdout(Stdio::piped());
    }
    let fds = opts.keep_fds.clone();
    let core = opts.core;
    let sig = opts.death_signal;
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe system calls (fcntl, prctl, sched_setaffinity); it
    // allocates nothing (it iterates a Vec allocated before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                // SAFETY: `fd` is open in the child (inherited from the
                // parent's table) for the duration of this closure.
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            if let Some(sig) = sig {
                // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory.
                if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(core) = core {
                pin_to(core)?;
            }
            Ok(())
        });
    }
}

/// Starts `cradle-bench peer <args>`.
pub(crate) fn spawn_peer(args: &[String], opts: &SpawnOpts) -> Result<Peer, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("peer").args(args);
    let opts = SpawnOpts {
        death_signal: Some(libc::SIGKILL),
        ..opts.clone()
    };
    configure(&mut cmd, &opts);
    let what = format!("peer {}", args.first().map(String::as_str).unwrap_or("?"));
    let mut child = cmd.spawn().map_err(|e| format!("spawn {what}: {e}"))?;
    let stdin = child.stdin.take();
    Ok(Peer { child, stdin, what })
}

/// The raw shared-memory ping-pong: the floor (both sides spin on one cache
/// line each way) or the futex baseline (both sides sleep at once and wake
/// each other with `FUTEX_WAKE` on every message).
#[derive(Debug)]
pub(crate) struct ShmEcho {
    _map: Mapping,
    req_seq: NonNull<AtomicU32>,
    req_len: NonNull<AtomicU32>,
    req_data: *mut u8,
    resp_seq: NonNull<AtomicU32>,
    resp_len: NonNull<AtomicU32>,
    resp_data: *const u8,
    peer: Peer,
    sleep: bool,
    n: u32,
    rx: Vec<u8>,
}

/// Pointers into one baseline mapping (see the layout constants).
pub(crate) struct Words {
    pub(crate) req_seq: NonNull<AtomicU32>,
    pub(crate) req_len: NonNull<AtomicU32>,
    pub(crate) req_data: *mut u8,
    pub(crate) resp_seq: NonNull<AtomicU32>,
    pub(crate) resp_len: NonNull<AtomicU32>,
    pub(crate) resp_data: *mut u8,
}

/// Locates the words of the baseline layout in a read-write mapping.
pub(crate) fn words(map: &Mapping) -> Result<Words, String> {
    let e = |e: ipc_core::shm::OffsetError| e.to_string();
    let base = map
        .as_mut_ptr()
        .ok_or_else(|| "baseline mapping is read-only".to_string())?;
    if map.len() < SEG_LEN {
        return Err("baseline segment too small".into());
    }
    Ok(Words {
        req_seq: map.ptr_at(REQ + SEQ).map_err(e)?,
        req_len: map.ptr_at(REQ + LEN).map_err(e)?,
        // SAFETY: REQ + DATA + MAX_PAYLOAD <= SEG_LEN <= the mapping's length.
        req_data: unsafe { base.add(REQ + DATA) },
        resp_seq: map.ptr_at(RESP + SEQ).map_err(e)?,
        resp_len: map.ptr_at(RESP + LEN).map_err(e)?,
        // SAFETY: RESP + DATA + MAX_PAYLOAD <= SEG_LEN <= the mapping's length.
        resp_data: unsafe { base.add(RESP + DATA) },
    })
}

/// Reads an atomic word of a live mapping.
///
/// # Safety
///
/// `p` must point into a mapping that outlives the returned reference
/// (checked in bounds and aligned by `Mapping::ptr_at`).
pub(crate) unsafe fn word<'a>(p: NonNull<AtomicU32>) -> &'a AtomicU32 {
    // SAFETY: per this function's contract; concurrent access from the other
    // process goes through atomics only.
    unsafe { p.as_ref() }
}

/// Waits until `seq` differs from `old` with a futex (no spinning); gives up
/// every second to run `alive`.
pub(crate) fn futex_wait_change(
    seq: &AtomicU32,
    old: u32,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<u32, String> {
    loop {
        // Acquire pairs with the peer's Release store of `seq`.
        let v = seq.load(Ordering::Acquire);
        if v != old {
            return Ok(v);
        }
        let slept = AsFutex::<Shared>::as_futex(seq).wait_for(old, Duration::from_secs(1));
        // Woken, spurious, EAGAIN or EINTR: re-read `seq`; a timeout: check the peer.
        if let Err(TimedWaitError::TimedOut) = slept {
            alive()?;
        }
    }
}

impl ShmEcho {
    /// Creates the segment and starts the echo peer (`shm-spin` or `shm-futex`).
    pub(crate) fn start(sleep: bool, core: Option<usize>) -> Result<Self, String> {
        let seg = Segment::create("cradle-bench", SEG_LEN).map_err(|e| format!("memfd: {e}"))?;
        let map = seg
            .map(Access::ReadWrite)
            .map_err(|e| format!("mmap: {e}"))?;
        let w = words(&map)?;
        let fd = seg.fd().as_raw_fd();
        let kind = if sleep { "shm-futex" } else { "shm-spin" };
        let peer = spawn_peer(
            &[kind.to_string(), fd.to_string()],
            &SpawnOpts {
                keep_fds: vec![fd],
                core,
                stdin: true,
                ..Default::default()
            },
        )?;
        // The child has its own descriptor now; our mapping keeps the memory.
        drop(seg);
        Ok(Self {
            req_seq: w.req_seq,
            req_len: w.req_len,
            req_data: w.req_data,
            resp_seq: w.resp_seq,
            resp_len: w.resp_len,
            resp_data: w.resp_data,
            _map: map,
            peer,
            sleep,
            n: 0,
            rx: vec![0; MAX_PAYLOAD],
        })
    }

    fn publish(&mut self, len: u32) -> u32 {
        self.n = self.n.wrapping_add(1).max(1);
        // SAFETY: the words lie in `self._map`, which lives as long as `self`.
        let (seq, l) = unsafe { (word(self.req_seq), word(self.req_len)) };
        l.store(len, Ordering::Relaxed);
        // Release: the peer's Acquire load of `seq` sees `len` and the payload.
        seq.store(self.n, Ordering::Release);
        if self.sleep {
            Waker::<StdAtomics>::wake(&Futex, seq);
        }
        self.n
    }

    fn wait_answer(&mut self, n: u32) -> Result<(), String> {
        // SAFETY: the word lies in `self._map`, which lives as long as `self`.
        let seq = unsafe { word(self.resp_seq) };
        if self.sleep {
            let peer = &mut self.peer;
            let mut v = seq.load(Ordering::Acquire);
            while v != n {
                v = futex_wait_change(seq, v, || peer.check_alive())?;
            }
            return Ok(());
        }
        let mut spins = 0u32;
        // Acquire pairs with the peer's Release store of `seq`.
        while seq.load(Ordering::Acquire) != n {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1 << 22) {
                self.peer.check_alive()?;
            }
        }
        Ok(())
    }
}

impl Echo for ShmEcho {
    fn round_trip(&mut self, msg: &Vec<u8>) -> Result<(), String> {
        let len = msg.len().min(MAX_PAYLOAD);
        // SAFETY: `req_data` has room for MAX_PAYLOAD bytes in our live mapping;
        // the peer reads the request region only after our Release store of
        // `seq` in `publish`, and never writes it.
        unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), self.req_data, len) };
        let n = self.publish(len as u32);
        self.wait_answer(n)?;
        // SAFETY: the word lies in `self._map`, which lives as long as `self`.
        let got = unsafe { word(self.resp_len) }.load(Ordering::Relaxed) as usize;
        if got != len {
            return Err(format!("echo of {len} bytes came back as {got}"));
        }
        // SAFETY: `resp_data` has MAX_PAYLOAD readable bytes; the peer wrote
        // them before its Release store of `seq`, which we loaded with Acquire,
        // and does not write again until our next request. `rx` holds
        // MAX_PAYLOAD bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.resp_data, self.rx.as_mut_ptr(), len) };
        if !echo_ok(msg, &self.rx[..len]) {
            return Err("echo differs from the request".into());
        }
        Ok(())
    }

    fn begin(&mut self) -> Result<(), String> {
        let stdin = self.peer.stdin.as_mut().ok_or("peer stdin closed")?;
        stdin
            .write_all(b"g")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("start shm peer: {e}"))
    }

    fn end(&mut self) -> Result<(), String> {
        let n = self.publish(STOP);
        self.wait_answer(n)
    }
}

/// A byte-stream ping-pong: a 4-byte little-endian length, then the payload;
/// the peer reads the whole message and writes it back.
#[derive(Debug)]
pub(crate) struct StreamEcho<R, W> {
    r: R,
    w: W,
    out: Vec<u8>,
    inb: Vec<u8>,
    peer: Peer,
}

impl<R: Read, W: Write> Echo for StreamEcho<R, W> {
    fn round_trip(&mut self, msg: &Vec<u8>) -> Result<(), String> {
        let len = msg.len().min(MAX_PAYLOAD);
        self.out[..4].copy_from_slice(&(len as u32).to_le_bytes());
        self.out[4..4 + len].copy_from_slice(&msg[..len]);
        if let Err(e) = self.w.write_all(&self.out[..4 + len]) {
            self.peer.check_alive()?;
            return Err(format!("write: {e}"));
        }
        if let Err(e) = self.r.read_exact(&mut self.inb[..4 + len]) {
            self.peer.check_alive()?;
            return Err(format!("read: {e}"));
        }
        if self.inb[..4] != self.out[..4] || !echo_ok(msg, &self.inb[4..4 + len]) {
            return Err("echo differs from the request".into());
        }
        Ok(())
    }
}

fn stream_echo<R, W>(r: R, w: W, peer: Peer) -> StreamEcho<R, W> {
    StreamEcho {
        r,
        w,
        out: vec![0; 4 + MAX_PAYLOAD],
        inb: vec![0; 4 + MAX_PAYLOAD],
        peer,
    }
}

/// A Unix stream socket pair; the peer inherits one end.
pub(crate) fn unix_socket(core: Option<usize>) -> Result<Box<dyn Echo>, String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let fd = theirs.as_raw_fd();
    let peer = spawn_peer(
        &["stream".into(), fd.to_string(), fd.to_string()],
        &SpawnOpts {
            keep_fds: vec![fd],
            core,
            ..Default::default()
        },
    )?;
    drop(theirs);
    let w = ours.try_clone().map_err(|e| format!("dup: {e}"))?;
    Ok(Box::new(stream_echo(ours, w, peer)))
}

/// Two pipes; the peer inherits the read end of one and the write end of the other.
pub(crate) fn pipe(core: Option<usize>) -> Result<Box<dyn Echo>, String> {
    let (their_r, our_w) = io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (our_r, their_w) = io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (rfd, wfd) = (their_r.as_raw_fd(), their_w.as_raw_fd());
    let peer = spawn_peer(
        &["stream".into(), rfd.to_string(), wfd.to_string()],
        &SpawnOpts {
            keep_fds: vec![rfd, wfd],
            core,
            ..Default::default()
        },
    )?;
    drop((their_r, their_w));
    Ok(Box::new(stream_echo(our_r, our_w, peer)))
}

/// TCP on 127.0.0.1 (an ephemeral port, `TCP_NODELAY` on both sides).
pub(crate) fn tcp(core: Option<usize>) -> Result<Box<dyn Echo>, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("local_addr: {e}"))?
        .port();
    let mut peer = spawn_peer(
        &["tcp".into(), port.to_string()],
        &SpawnOpts {
            core,
            ..Default::default()
        },
    )?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                peer.check_alive()?;
                if Instant::now() > deadline {
                    return Err("the tcp peer did not connect within 10 s".into());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    let setup = |s: &TcpStream| -> io::Result<()> {
        s.set_nonblocking(false)?;
        s.set_nodelay(true)
    };
    setup(&stream).map_err(|e| format!("tcp: {e}"))?;
    let w = stream.try_clone().map_err(|e| format!("dup: {e}"))?;
    Ok(Box::new(stream_echo(stream, w, peer)))
}
