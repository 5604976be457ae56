//! Doorbells: the spin-then-sleep wake-up protocol of docs/design.md §6.
//!
//! A doorbell is two 32-bit words, which may live in different cache lines or
//! even different segments (the server publishes one `server_waiting` word for
//! all its sessions):
//!
//! * `seq` — a wrapping sequence number the waker bumps before each wake
//!   syscall. It is the futex word: the sleeper passes the value it read
//!   (`seen`) to `futex_wait`, which sleeps only while `seq == seen`.
//! * `waiting` — `1` while the waiting side may be asleep (or about to be),
//!   `0` while it is awake. The waker makes a syscall only when it reads `1`,
//!   so a busy pair of peers exchanges frames with no syscalls at all.
//!
//! The *condition* the waiter waits for (a frame in a ring, a peer-death flag)
//! is not part of the doorbell: the caller passes a `poll` closure that returns
//! `Some` once the condition holds. That is also how `PeerDead` is layered on
//! top: the closure returns `Some(Err(PeerDead))` when the caller's flag is set.
//!
//! The algorithm ([`Doorbell`]) is generic over the [`Atomics`] family and
//! takes the syscall as a [`Waker`] / [`Sleeper`] value, so the loom models in
//! `src/tests/loom_doorbell.rs` run the very same code over loom's atomics with
//! a model futex. Production code uses [`Futex`] (threads and processes that
//! block in the kernel), [`EventFd`] (tokio `AsyncFd`, the server's epoll)
//! or, to wake a peer that must not be trusted, [`WakeSocket`] (a socketpair
//! end written with `MSG_DONTWAIT`: the peer cannot make the write block).
//!
//! # The protocol
//!
//! ```text
//! waiter (about to sleep)                   waker (after publishing a frame)
//!   seen = seq.load(Acquire)                  commit word .store(Release)
//!   waiting.store(1, Relaxed)                 fence(SeqCst)            (F_w)
//!   fence(SeqCst)                    (F_s)    if waiting.load(Relaxed) != 0 {
//!   if poll() is None:                            seq.fetch_add(1, Release)
//!       futex_wait(seq, seen, deadline)           futex_wake(seq, 1)
//!   waiting.store(0, Relaxed) // every exit   }
//! ```
//!
//! # Why no wake-up is lost
//!
//! The dangerous interleaving is the *store-buffering* one: the waiter stores
//! `waiting = 1` and then reads the ring, the waker stores the commit word and
//! then reads `waiting`; without fences both reads may return the old value
//! (each store still sitting in its CPU's store buffer, or, in the Rust memory
//! model, simply not yet visible), so the waiter sleeps on an empty ring and
//! the waker skips the wake. A `SeqCst` *store* of `waiting` alone does not
//! forbid this in the Rust (C++20) model: a SeqCst store followed by a Relaxed
//! or Acquire load of another location can still be reordered. Two `SeqCst`
//! fences do: all SeqCst fences are totally ordered, so either
//!
//! * `F_w` comes before `F_s`: the commit store is sequenced before `F_w` and
//!   the waiter's `poll` after `F_s`, so `poll` sees the frame and the waiter
//!   does not sleep; or
//! * `F_s` comes before `F_w`: the `waiting = 1` store is sequenced before
//!   `F_s` and the waker's load after `F_w`, so the load reads that `1` (or a
//!   later store; a later `0` is only written after the waiter has woken up
//!   again, and its next round repeats this argument) and the waker rings.
//!
//! Once the waker rings, the sleep cannot miss it: the waiter read `seen`
//! *before* `F_s`, hence before the waker's `fetch_add` in the second case, so
//! the increment makes `seq != seen`. `futex_wait(seq, seen)` compares the
//! word with `seen` and queues the thread atomically under the kernel's
//! hash-bucket lock, and `futex_wake` takes the same lock after the increment:
//! either the comparison sees the new value (`EAGAIN`, no sleep) or the thread
//! was already queued and the wake finds it. Reading `seen` *after* the poll
//! would break this (the increment could fall between the two); the loom
//! models check both that and a waker without its fence.
//!
//! `seq` wraps; a wake-up could be lost only if exactly 2³² rings happened
//! between the waiter's `seen` load and its `futex_wait`, which would need a
//! waker that rings while nobody sleeps (it does not: it rings only when
//! `waiting == 1`).

mod adaptive;
mod eventfd;
mod futex;
mod socket;

use core::fmt;
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;

use crate::sync::{Atomics, Ordering, Word32};

pub use self::adaptive::{
    CONTENDED_PERCENT, GaugeState, MAX_GAUGE_BACKOFF, SpinBudget, cpu_contended, gauge_state,
};
pub use self::eventfd::EventFd;
pub use self::futex::Futex;
pub use self::socket::WakeSocket;

/// The spin budget of [`WaitMode::default()`]: 50 µs, about the time of two
/// context switches, so a peer that answers within a few microseconds is
/// caught awake and a peer that does not costs at most this much CPU.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// The spin loop reads the clock only every this many polls (a clock read is
/// ~20 ns through the vDSO; a poll is one cache-line load).
const CLOCK_CHECK_EVERY: u32 = 8;

/// How a waiter waits.
///
/// The default is [`WaitMode::SpinThenSleep`]`(`[`DEFAULT_SPIN`]`)`.
///
/// ```
/// use ipc_core::doorbell::{WaitMode, DEFAULT_SPIN};
/// assert_eq!(WaitMode::default(), WaitMode::SpinThenSleep(DEFAULT_SPIN));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitMode {
    /// Poll (with [`Backoff`]) until the condition holds or the deadline
    /// passes; never sets `waiting`, never sleeps in the kernel.
    Spin,
    /// Go to sleep as soon as the first poll fails.
    Sleep,
    /// Spin for at most this long, then sleep.
    SpinThenSleep(Duration),
}

impl Default for WaitMode {
    fn default() -> Self {
        WaitMode::SpinThenSleep(DEFAULT_SPIN)
    }
}

/// The deadline passed before the condition held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct WaitTimeout;

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("doorbell wait timed out")
    }
}

impl std::error::Error for WaitTimeout {}

/// The wake side of the syscall: wakes whoever sleeps on `seq`.
///
/// Called by [`Doorbell::ring`] after it has incremented `seq`, and only when
/// the waiter announced (`waiting != 0`) that it may be asleep.
pub trait Waker<A: Atomics> {
    /// Wake the (single) waiter sleeping on `seq`.
    fn wake(&self, seq: &A::U32);
}

/// The sleep side of the syscall.
pub trait Sleeper<A: Atomics> {
    /// Sleep while `seq` still holds `seen`, at most until `deadline`.
    ///
    /// May return early for any reason (a signal, a stale wake, a value that
    /// had already changed): [`Doorbell::wait`] re-polls after every return.
    /// It must not sleep through a [`Waker::wake`] that follows an increment
    /// of `seq` past `seen`.
    fn sleep(&self, seq: &A::U32, seen: u32, deadline: Option<Instant>);
}

impl<A: Atomics, W: Waker<A> + ?Sized> Waker<A> for &W {
    fn wake(&self, seq: &A::U32) {
        (**self).wake(seq)
    }
}

impl<A: Atomics, S: Sleeper<A> + ?Sized> Sleeper<A> for &S {
    fn sleep(&self, seq: &A::U32, seen: u32, deadline: Option<Instant>) {
        (**self).sleep(seq, seen, deadline)
    }
}

/// The doorbell algorithm over two borrowed words (see the module docs).
///
/// Both sides build a `Doorbell` over the same two words; the waking side
/// calls [`ring`](Self::ring), the waiting side [`wait`](Self::wait). One
/// waiter per doorbell (the rings are single-producer single-consumer).
///
/// ```
/// use ipc_core::doorbell::{Doorbell, Futex, WaitMode};
/// use ipc_core::sync::{AtomicU32, AtomicU64, Ordering, StdAtomics};
///
/// let (seq, waiting, data) = (AtomicU32::new(0), AtomicU32::new(0), AtomicU64::new(0));
/// let bell = Doorbell::<StdAtomics>::new(&seq, &waiting);
/// std::thread::scope(|s| {
///     s.spawn(|| {
///         data.store(42, Ordering::Release);
///         bell.ring(&Futex);
///     });
///     let poll = || match data.load(Ordering::Acquire) {
///         0 => None,
///         v => Some(v),
///     };
///     assert_eq!(bell.wait(poll, &Futex, WaitMode::Sleep, None), Ok(42));
/// });
/// ```
pub struct Doorbell<'a, A: Atomics> {
    /// Wrapping wake sequence number; the futex word.
    seq: &'a A::U32,
    /// `1` while the waiter may be asleep, `0` while it is awake.
    waiting: &'a A::U32,
}

impl<A: Atomics> Clone for Doorbell<'_, A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A: Atomics> Copy for Doorbell<'_, A> {}

impl<A: Atomics> fmt::Debug for Doorbell<'_, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Doorbell")
            // Relaxed: a diagnostic snapshot, it orders nothing.
            .field("seq", &self.seq.load(Ordering::Relaxed))
            // Relaxed: a diagnostic snapshot, it orders nothing.
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .finish()
    }
}

/// How the spin phase ended.
enum SpinOutcome<T> {
    Ready(T),
    BudgetSpent,
    TimedOut,
}

impl<'a, A: Atomics> Doorbell<'a, A> {
    /// A doorbell over `seq` (the futex word) and `waiting` (the flag).
    ///
    /// Both words start at any value; `waiting` must be 0 when no wait is in
    /// progress (a stale 1 only costs one useless wake syscall).
    pub const fn new(seq: &'a A::U32, waiting: &'a A::U32) -> Self {
        Self { seq, waiting }
    }

    /// The sequence word.
    pub const fn seq(&self) -> &'a A::U32 {
        self.seq
    }

    /// The waiting flag.
    pub const fn waiting(&self) -> &'a A::U32 {
        self.waiting
    }

    /// Wake the waiter if it may be asleep; returns whether it rang.
    ///
    /// Call after publishing (the commit word stored with `Release`). Makes no
    /// syscall while the waiter is awake.
    ///
    /// ```
    /// use ipc_core::doorbell::{Doorbell, Futex};
    /// use ipc_core::sync::{AtomicU32, StdAtomics};
    ///
    /// let (seq, waiting) = (AtomicU32::new(0), AtomicU32::new(0));
    /// let bell = Doorbell::<StdAtomics>::new(&seq, &waiting);
    /// assert!(!bell.ring(&Futex)); // nobody waits: no syscall
    /// ```
    pub fn ring<W: Waker<A> + ?Sized>(&self, waker: &W) -> bool {
        // (F_w) Pairs with the SeqCst fence (F_s) in `sleep_loop`. The two
        // fences forbid the store-buffering outcome in which our Relaxed load
        // below misses the waiter's `waiting = 1` while the waiter's poll
        // misses our commit store: either F_w precedes F_s in the single total
        // order of SeqCst fences, and the waiter's poll (after F_s) sees the
        // commit store (before F_w), or F_s precedes F_w and the load below
        // reads 1. A SeqCst store of the commit word would not be enough: a
        // later Relaxed load may still be satisfied before it is visible.
        A::fence(Ordering::SeqCst);
        // Relaxed: the ordering comes from the fence pair above, not from
        // this load; it only decides whether to make the syscall.
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return false;
        }
        // Release: pairs with the Acquire load of `seen` in `sleep_loop`, so
        // a waiter that reads the new value also sees our frame. The
        // increment makes `seq != seen` for a waiter that read `seen` before
        // F_s; the kernel compares `seq` with `seen` and queues the waiter
        // atomically under its hash-bucket lock, which `wake` takes after this
        // increment, so the waiter either does not go to sleep or is woken.
        self.seq.fetch_add(1, Ordering::Release);
        waker.wake(self.seq);
        true
    }

    /// Wait until `poll` returns `Some`, spinning and/or sleeping per `mode`.
    ///
    /// `poll` is called first, then repeatedly; it must observe the
    /// condition with `Acquire` loads (it pairs with the waker's `Release`
    /// publication). With `deadline`, returns [`WaitTimeout`] once the
    /// deadline has passed and `poll` still returns `None`; every mode,
    /// [`WaitMode::Spin`] included, honours it. The `waiting` flag is 0 again
    /// on every return.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use ipc_core::doorbell::{Doorbell, Futex, WaitMode, WaitTimeout};
    /// use ipc_core::sync::{AtomicU32, StdAtomics};
    ///
    /// let (seq, waiting) = (AtomicU32::new(0), AtomicU32::new(0));
    /// let bell = Doorbell::<StdAtomics>::new(&seq, &waiting);
    /// let deadline = Instant::now() + Duration::from_millis(1);
    /// let r = bell.wait(|| None::<()>, &Futex, WaitMode::default(), Some(deadline));
    /// assert_eq!(r, Err(WaitTimeout));
    /// ```
    pub fn wait<T, P, S>(
        &self,
        mut poll: P,
        sleeper: &S,
        mode: WaitMode,
        deadline: Option<Instant>,
    ) -> Result<T, WaitTimeout>
    where
        P: FnMut() -> Option<T>,
        S: Sleeper<A> + ?Sized,
    {
        if let Some(v) = poll() {
            return Ok(v);
        }
        let budget = match mode {
            WaitMode::Spin => None,
            WaitMode::Sleep => Some(Duration::ZERO),
            WaitMode::SpinThenSleep(d) => Some(d),
        };
        if budget != Some(Duration::ZERO) {
            match spin(&mut poll, Instant::now(), budget, deadline) {
                SpinOutcome::Ready(v) => return Ok(v),
                SpinOutcome::TimedOut => return Err(WaitTimeout),
                SpinOutcome::BudgetSpent => {}
            }
        }
        self.sleep_loop(poll, sleeper, deadline)
    }

    /// Like [`wait`](Self::wait) in [`WaitMode::SpinThenSleep`]`(max)`, but
    /// the spin is the one `budget` allows: at most `max`, nothing while the
    /// thread's CPU is contended ([`cpu_contended`]); and the outcome
    /// teaches `budget` (a spin that caught the event, a spin that ended in a
    /// sleep, how long the sleep lasted). See docs/architecture.md,
    /// "Waiting under load".
    ///
    /// ```
    /// use std::time::Duration;
    /// use ipc_core::doorbell::{Doorbell, Futex, SpinBudget};
    /// use ipc_core::sync::{AtomicU32, AtomicU64, Ordering, StdAtomics};
    ///
    /// let (seq, waiting, data) = (AtomicU32::new(0), AtomicU32::new(0), AtomicU64::new(0));
    /// let bell = Doorbell::<StdAtomics>::new(&seq, &waiting);
    /// let max = Duration::from_micros(50);
    /// let mut budget = SpinBudget::new(max);
    /// std::thread::scope(|s| {
    ///     s.spawn(|| {
    ///         data.store(7, Ordering::Release);
    ///         bell.ring(&Futex);
    ///     });
    ///     let poll = || match data.load(Ordering::Acquire) {
    ///         0 => None,
    ///         v => Some(v),
    ///     };
    ///     assert_eq!(bell.wait_adaptive(poll, &Futex, max, &mut budget, None), Ok(7));
    /// });
    /// ```
    pub fn wait_adaptive<T, P, S>(
        &self,
        mut poll: P,
        sleeper: &S,
        max: Duration,
        budget: &mut SpinBudget,
        deadline: Option<Instant>,
    ) -> Result<T, WaitTimeout>
    where
        P: FnMut() -> Option<T>,
        S: Sleeper<A> + ?Sized,
    {
        if let Some(v) = poll() {
            return Ok(v);
        }
        let start = Instant::now();
        let limit = budget.limit(start, max);
        if !limit.is_zero() {
            match spin(&mut poll, start, Some(limit), deadline) {
                SpinOutcome::Ready(v) => {
                    budget.caught(max);
                    return Ok(v);
                }
                SpinOutcome::TimedOut => return Err(WaitTimeout),
                SpinOutcome::BudgetSpent => budget.missed(),
            }
        }
        let asleep = Instant::now();
        let r = self.sleep_loop(poll, sleeper, deadline);
        if r.is_ok() {
            budget.slept(asleep.elapsed(), max);
        }
        r
    }

    /// `waiting = 0`, on every exit from a sleep round.
    ///
    /// Not a drop guard: a guard would also store while a panicking `poll`
    /// unwinds, and loom unwinds blocked model threads that way when it
    /// reports a deadlock (its atomics panic outside a running model). A flag
    /// left at 1 by a panic only costs the waker useless wake syscalls.
    fn clear_waiting(&self) {
        // Relaxed: a stale 1 seen by the waker costs it one useless wake
        // syscall, never correctness; a waker that reads this 0 instead of the
        // 1 of the waiter's next round is ruled out by the fences (module docs).
        self.waiting.store(0, Ordering::Relaxed);
    }

    /// The sleep phase: the waiter column of the protocol, until `poll`
    /// succeeds or the deadline passes.
    fn sleep_loop<T, P, S>(
        &self,
        mut poll: P,
        sleeper: &S,
        deadline: Option<Instant>,
    ) -> Result<T, WaitTimeout>
    where
        P: FnMut() -> Option<T>,
        S: Sleeper<A> + ?Sized,
    {
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(WaitTimeout);
            }
            // Acquire: pairs with the Release `fetch_add` in `ring`. Read
            // *before* announcing ourselves: any ring that reads our
            // `waiting = 1` increments `seq` after this load, so the futex
            // sees `seq != seen` and cannot sleep through it.
            let seen = self.seq.load(Ordering::Acquire);
            // Relaxed: ordered before the poll below by the SeqCst fence.
            self.waiting.store(1, Ordering::Relaxed);
            // (F_s) Pairs with the SeqCst fence (F_w) in `ring`: either the
            // poll below sees the waker's commit store, or the waker's load
            // of `waiting` sees our 1 and it rings (see the module docs).
            A::fence(Ordering::SeqCst);
            if let Some(v) = poll() {
                self.clear_waiting();
                return Ok(v);
            }
            sleeper.sleep(self.seq, seen, deadline);
            self.clear_waiting();
            if let Some(v) = poll() {
                return Ok(v);
            }
        }
    }
}

/// The spin phase: poll with [`Backoff`] until the condition holds, the
/// budget is spent (`None` = unlimited) or the deadline passes.
fn spin<T, P>(
    poll: &mut P,
    start: Instant,
    budget: Option<Duration>,
    deadline: Option<Instant>,
) -> SpinOutcome<T>
where
    P: FnMut() -> Option<T>,
{
    let spin_end = match budget {
        // An unrepresentable end (a huge budget) means "spin until the deadline".
        Some(b) => start.checked_add(b),
        None => None,
    };
    let end = match (spin_end, deadline) {
        (Some(s), Some(d)) => Some(s.min(d)),
        (s, d) => s.or(d),
    };
    let backoff = Backoff::new();
    let mut polls: u32 = 0;
    loop {
        if let Some(v) = poll() {
            return SpinOutcome::Ready(v);
        }
        polls = polls.wrapping_add(1);
        if let Some(end) = end
            && polls.is_multiple_of(CLOCK_CHECK_EVERY)
        {
            let now = Instant::now();
            if now >= end {
                return if deadline.is_some_and(|d| now >= d) {
                    SpinOutcome::TimedOut
                } else {
                    SpinOutcome::BudgetSpent
                };
            }
        }
        backoff.snooze();
    }
}

/// Wake syscalls (futex wakes and eventfd writes) made by this process.
///
/// A statistic for tests and benchmarks ("no syscall while the peer is
/// awake"); it synchronizes nothing.
static WAKE_SYSCALLS: WakeCounter = WakeCounter::new();

/// The number of wake syscalls (futex wakes by [`Futex`], eventfd writes by
/// [`EventFd::notify`], socket writes by [`WakeSocket::notify`]) this process
/// has made so far.
///
/// ```
/// let before = ipc_core::doorbell::wake_syscalls();
/// let efd = ipc_core::doorbell::EventFd::new().unwrap();
/// efd.notify().unwrap();
/// assert!(ipc_core::doorbell::wake_syscalls() > before);
/// ```
pub fn wake_syscalls() -> u64 {
    WAKE_SYSCALLS.get()
}

/// Count one wake syscall.
fn count_wake_syscall() {
    WAKE_SYSCALLS.bump();
}

/// A process-wide statistic counter (always std atomics: it is never shared
/// with loom or with another process).
struct WakeCounter(crate::sync::AtomicU64);

impl WakeCounter {
    const fn new() -> Self {
        Self(crate::sync::AtomicU64::new(0))
    }
    fn get(&self) -> u64 {
        // Relaxed: a statistic; readers compare counts, nothing is published
        // through it.
        self.0.load(Ordering::Relaxed)
    }
    fn bump(&self) {
        // Relaxed: a statistic; only atomicity of the increment matters.
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}
