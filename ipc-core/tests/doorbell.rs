//! The doorbell over real threads: futex and eventfd, heap words and a
//! shared memfd mapping.
//!
//! Every test takes `SERIAL`: the wake-syscall counter is process-wide, and
//! spinning tests need the CPUs. Every test that could hang on a lost wake-up
//! arms a [`Watchdog`] that aborts the process; no test asserts a speed.

use std::os::fd::AsFd;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

mod support;
use support::Watchdog;

use ipc_core::doorbell::{
    DEFAULT_SPIN, Doorbell, EventFd, Futex, Sleeper, WaitMode, WaitTimeout, Waker, wake_syscalls,
};
use ipc_core::sync::{Ordering, StdAtomics};

type U32 = ipc_core::sync::AtomicU32;
type U64 = ipc_core::sync::AtomicU64;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the others can still run.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const WATCHDOG: Duration = Duration::from_secs(60);

/// One direction of a ping-pong: a doorbell plus the counter it announces.
struct Line<'a> {
    seq: &'a U32,
    waiting: &'a U32,
    /// The "commit word": the last value published.
    count: &'a U64,
}

impl Line<'_> {
    fn bell(&self) -> Doorbell<'_, StdAtomics> {
        Doorbell::new(self.seq, self.waiting)
    }

    /// Producer: publish `v`, then ring.
    fn send<W: Waker<StdAtomics>>(&self, v: u64, waker: &W) {
        // Release: pairs with the Acquire load in `at_least`.
        self.count.store(v, Ordering::Release);
        self.bell().ring(waker);
    }

    fn at_least(&self, v: u64) -> Option<u64> {
        // Acquire: pairs with the Release store in `send`.
        let c = self.count.load(Ordering::Acquire);
        (c >= v).then_some(c)
    }

    /// Consumer: wait (no deadline) until `v` has been published.
    fn recv<S: Sleeper<StdAtomics>>(&self, v: u64, sleeper: &S, mode: WaitMode) -> u64 {
        self.bell()
            .wait(|| self.at_least(v), sleeper, mode, None)
            .expect("no deadline")
    }
}

/// Heap words for one line (`Box`ed, as a mapping would hold them apart).
struct HeapLine {
    seq: Box<U32>,
    waiting: Box<U32>,
    count: Box<U64>,
}

impl HeapLine {
    fn new() -> Self {
        Self {
            seq: Box::new(U32::new(0)),
            waiting: Box::new(U32::new(0)),
            count: Box::new(U64::new(0)),
        }
    }
    fn line(&self) -> Line<'_> {
        Line {
            seq: &self.seq,
            waiting: &self.waiting,
            count: &self.count,
        }
    }
}

/// `n` round trips: the client sends `i` on `ping`, the server answers `i`
/// on `pong`. Every value must arrive, in order.
fn ping_pong<P, Q>(
    n: u64,
    mode: WaitMode,
    ping: Line<'_>,
    ping_sig: &P,
    pong: Line<'_>,
    pong_sig: &Q,
) where
    P: Waker<StdAtomics> + Sleeper<StdAtomics> + Sync,
    Q: Waker<StdAtomics> + Sleeper<StdAtomics> + Sync,
{
    thread::scope(|s| {
        s.spawn(|| {
            for i in 1..=n {
                assert_eq!(ping.recv(i, ping_sig, mode), i);
                pong.send(i, pong_sig);
            }
        });
        for i in 1..=n {
            ping.send(i, ping_sig);
            assert_eq!(pong.recv(i, pong_sig, mode), i);
        }
    });
    // Relaxed: after the scope joined the server thread.
    assert_eq!(ping.waiting.load(Ordering::Relaxed), 0);
    assert_eq!(pong.waiting.load(Ordering::Relaxed), 0);
}

#[test]
fn awake_consumer_makes_no_wake_syscalls() {
    const N: u64 = 100_000;
    let _serial = serial();
    let _dog = Watchdog::arm("awake_consumer_makes_no_wake_syscalls", WATCHDOG);
    let (ping, pong) = (HeapLine::new(), HeapLine::new());
    let before = wake_syscalls();
    ping_pong(N, WaitMode::Spin, ping.line(), &Futex, pong.line(), &Futex);
    assert_eq!(wake_syscalls() - before, 0);
}

#[test]
fn sleeping_consumer_gets_every_handoff_futex() {
    const N: u64 = 10_000;
    let _serial = serial();
    let _dog = Watchdog::arm("sleeping_consumer_gets_every_handoff_futex", WATCHDOG);
    let (ping, pong) = (HeapLine::new(), HeapLine::new());
    let before = wake_syscalls();
    ping_pong(N, WaitMode::Sleep, ping.line(), &Futex, pong.line(), &Futex);
    let made = wake_syscalls() - before;
    // At most one wake per ring; some, since both sides sleep.
    assert!(made <= 2 * N, "{made} wakes for {} rings", 2 * N);
    assert!(made > 0, "Sleep mode never made the waker ring");
}

#[test]
fn default_mode_gets_every_handoff_futex() {
    const N: u64 = 10_000;
    let _serial = serial();
    let _dog = Watchdog::arm("default_mode_gets_every_handoff_futex", WATCHDOG);
    let (ping, pong) = (HeapLine::new(), HeapLine::new());
    ping_pong(
        N,
        WaitMode::default(),
        ping.line(),
        &Futex,
        pong.line(),
        &Futex,
    );
}

#[test]
fn sleeping_consumer_gets_every_handoff_eventfd() {
    const N: u64 = 10_000;
    let _serial = serial();
    let _dog = Watchdog::arm("sleeping_consumer_gets_every_handoff_eventfd", WATCHDOG);
    let (ping, pong) = (HeapLine::new(), HeapLine::new());
    let (ping_fd, pong_fd) = (EventFd::new().unwrap(), EventFd::new().unwrap());
    let before = wake_syscalls();
    ping_pong(
        N,
        WaitMode::Sleep,
        ping.line(),
        &ping_fd,
        pong.line(),
        &pong_fd,
    );
    let made = wake_syscalls() - before;
    assert!(made <= 2 * N, "{made} wakes for {} rings", 2 * N);
    assert!(made > 0, "Sleep mode never made the waker ring");
}

#[test]
fn awake_consumer_makes_no_wake_syscalls_eventfd() {
    const N: u64 = 100_000;
    let _serial = serial();
    let _dog = Watchdog::arm("awake_consumer_makes_no_wake_syscalls_eventfd", WATCHDOG);
    let (ping, pong) = (HeapLine::new(), HeapLine::new());
    let (ping_fd, pong_fd) = (EventFd::new().unwrap(), EventFd::new().unwrap());
    let before = wake_syscalls();
    ping_pong(
        N,
        WaitMode::Spin,
        ping.line(),
        &ping_fd,
        pong.line(),
        &pong_fd,
    );
    assert_eq!(wake_syscalls() - before, 0);
    assert_eq!(ping_fd.drain().unwrap(), 0);
}

/// Every mode returns `WaitTimeout` once the deadline passed, and not before.
fn deadline_expires<S: Sleeper<StdAtomics>>(sleeper: &S) {
    let line = HeapLine::new();
    let line = line.line();
    for mode in [
        WaitMode::Spin,
        WaitMode::Sleep,
        WaitMode::SpinThenSleep(DEFAULT_SPIN),
        WaitMode::SpinThenSleep(Duration::from_secs(3600)),
        WaitMode::SpinThenSleep(Duration::MAX),
    ] {
        let deadline = Instant::now() + Duration::from_millis(20);
        let r = line
            .bell()
            .wait(|| line.at_least(1), sleeper, mode, Some(deadline));
        assert_eq!(r, Err(WaitTimeout), "{mode:?}");
        assert!(Instant::now() >= deadline, "{mode:?} returned early");
        // Relaxed: same thread.
        assert_eq!(line.waiting.load(Ordering::Relaxed), 0, "{mode:?}");
    }
    // A deadline already in the past: one poll, then the error.
    let past = Instant::now();
    let r = line
        .bell()
        .wait(|| line.at_least(1), sleeper, WaitMode::Sleep, Some(past));
    assert_eq!(r, Err(WaitTimeout));
    // But a met condition wins over an expired deadline.
    line.send(1, &Futex);
    let r = line
        .bell()
        .wait(|| line.at_least(1), sleeper, WaitMode::Sleep, Some(past));
    assert_eq!(r, Ok(1));
}

#[test]
fn deadline_expiry_returns_timeout_futex() {
    let _serial = serial();
    let _dog = Watchdog::arm("deadline_expiry_returns_timeout_futex", WATCHDOG);
    deadline_expires(&Futex);
}

#[test]
fn deadline_expiry_returns_timeout_eventfd() {
    let _serial = serial();
    let _dog = Watchdog::arm("deadline_expiry_returns_timeout_eventfd", WATCHDOG);
    deadline_expires(&EventFd::new().unwrap());
}

#[test]
fn ring_without_waiter_makes_no_syscall() {
    let _serial = serial();
    let line = HeapLine::new();
    let before = wake_syscalls();
    assert!(!line.line().bell().ring(&Futex));
    assert_eq!(wake_syscalls(), before);
    // Relaxed: same thread; a stale flag makes it ring (and count).
    line.waiting.store(1, Ordering::Relaxed);
    assert!(line.line().bell().ring(&Futex));
    assert_eq!(wake_syscalls(), before + 1);
    assert_eq!(line.seq.load(Ordering::Relaxed), 1);
}

#[test]
fn eventfd_notify_drain_wait() {
    let _serial = serial();
    let efd = EventFd::new().unwrap();
    assert_eq!(efd.drain().unwrap(), 0);
    let past = Instant::now();
    assert!(!efd.wait_readable(Some(past)).unwrap());
    let deadline = Instant::now() + Duration::from_millis(10);
    assert!(!efd.wait_readable(Some(deadline)).unwrap());
    assert!(Instant::now() >= deadline);
    let before = wake_syscalls();
    efd.notify().unwrap();
    efd.notify().unwrap();
    efd.notify().unwrap();
    assert_eq!(wake_syscalls() - before, 3);
    assert!(efd.wait_readable(None).unwrap());
    assert_eq!(efd.drain().unwrap(), 3);
    assert_eq!(efd.drain().unwrap(), 0);
}

#[test]
fn eventfd_from_blocking_fd_becomes_nonblocking() {
    let _serial = serial();
    let _dog = Watchdog::arm("eventfd_from_blocking_fd_becomes_nonblocking", WATCHDOG);
    let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    let efd = EventFd::from_fd(fd).unwrap();
    // Would block forever on a blocking eventfd.
    assert_eq!(efd.drain().unwrap(), 0);
    let flags = rustix::fs::fcntl_getfl(efd.as_fd()).unwrap();
    assert!(flags.contains(rustix::fs::OFlags::NONBLOCK));
}

#[test]
fn eventfd_from_non_eventfd_is_an_error_not_a_panic() {
    let _serial = serial();
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let not_an_eventfd = EventFd::from_fd(r).unwrap();
    // Reading an empty non-blocking pipe: EAGAIN, i.e. "nothing to drain".
    assert_eq!(not_an_eventfd.drain().unwrap(), 0);
    // Writing to a pipe's read end fails with an error.
    assert!(not_an_eventfd.notify().is_err());
}

/// A page of a memfd mapped `MAP_SHARED`; unmapped on drop.
struct Mapping {
    base: *mut core::ffi::c_void,
    len: usize,
}

impl Mapping {
    fn new(fd: impl AsFd, len: usize) -> Self {
        use rustix::mm::{MapFlags, ProtFlags, mmap};
        // SAFETY: a fresh mapping at an address the kernel chooses; it
        // replaces nothing.
        let base = unsafe {
            mmap(
                core::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .unwrap();
        Self { base, len }
    }

    /// The word at `offset` (in bounds, aligned, zero-initialized by the
    /// memfd), borrowed for as long as the mapping lives.
    fn line(&self, offset: usize) -> Line<'_> {
        assert!(offset.is_multiple_of(128) && offset + 16 <= self.len);
        // SAFETY: `offset .. offset + 16` lies inside the live mapping and is
        // 8-aligned (the base is page-aligned); the words are atomics (every
        // bit pattern valid, all accesses atomic), and the borrow of `self`
        // keeps the mapping alive for the references' lifetime.
        unsafe {
            let p = self.base.cast::<u8>().add(offset);
            Line {
                seq: &*p.cast::<U32>(),
                waiting: &*p.add(4).cast::<U32>(),
                count: &*p.add(8).cast::<U64>(),
            }
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base .. base + len` is our mapping, and no reference into
        // it outlives `self` (they borrow it).
        let _ = unsafe { rustix::mm::munmap(self.base, self.len) };
    }
}

/// Two `MAP_SHARED` mappings of one memfd at different addresses: each
/// thread uses only its own mapping, so every wake crosses address ranges —
/// which only a shared (not `FUTEX_PRIVATE_FLAG`) futex delivers.
#[test]
fn sleeping_handoffs_across_two_mappings_of_a_memfd() {
    const N: u64 = 2_000;
    const LEN: usize = 4096;
    let _serial = serial();
    let _dog = Watchdog::arm("sleeping_handoffs_across_two_mappings_of_a_memfd", WATCHDOG);
    let fd = rustix::fs::memfd_create("doorbell-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, LEN as u64).unwrap();
    let (a, b) = (Mapping::new(&fd, LEN), Mapping::new(&fd, LEN));
    assert_ne!(a.base, b.base);
    let (ping_a, pong_a) = (a.line(0), a.line(128));
    let (ping_b, pong_b) = (b.line(0), b.line(128));
    thread::scope(|s| {
        // Server: mapping A only.
        s.spawn(|| {
            for i in 1..=N {
                assert_eq!(ping_a.recv(i, &Futex, WaitMode::Sleep), i);
                pong_a.send(i, &Futex);
            }
        });
        // Client: mapping B only.
        for i in 1..=N {
            ping_b.send(i, &Futex);
            assert_eq!(pong_b.recv(i, &Futex, WaitMode::Sleep), i);
        }
    });
}
