//! loom models of the doorbell protocol (docs/design.md §6).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p ipc-core --release --lib loom_doorbell`.
//!
//! The futex is modelled faithfully ([`ModelFutex`]): `sleep` checks
//! `seq == seen` and goes to sleep atomically under a mutex (the kernel's
//! hash-bucket lock), `wake` takes the same mutex and notifies. A
//! park/unpark model would leave a wake-up token behind and hide exactly the
//! lost wake-ups these models look for. A lost wake-up shows up as loom's
//! `deadlock` panic: the consumer sleeps forever, the producer has finished
//! and the main thread waits in `join`.

// `std`'s Arc, not loom's: loom's `Arc::drop` needs an active model
// thread and panics again while a deadlocked model unwinds, which aborts the
// `should_panic` tests. Its leak checking is not what these models are for.
use std::sync::Arc;
use std::time::Instant;

use loom::sync::atomic::{AtomicU32, AtomicU64};
use loom::sync::{Condvar, Mutex};
use loom::thread;

use crate::doorbell::{Doorbell, Sleeper, WaitMode, Waker};
use crate::sync::{Atomics, LoomAtomics, Ordering};

/// A model of `FUTEX_WAIT` / `FUTEX_WAKE` on one word.
#[derive(Debug)]
struct ModelFutex {
    /// The kernel's hash-bucket lock.
    bucket: Mutex<()>,
    /// The wait queue.
    queue: Condvar,
}

impl ModelFutex {
    fn new() -> Self {
        Self {
            bucket: Mutex::new(()),
            queue: Condvar::new(),
        }
    }
}

impl Sleeper<LoomAtomics> for ModelFutex {
    fn sleep(&self, seq: &AtomicU32, seen: u32, _deadline: Option<Instant>) {
        let guard = self.bucket.lock().unwrap();
        // Relaxed: like the kernel's plain read under the bucket lock; the
        // mutex orders it after any `fetch_add` whose waker then took the
        // lock (in `wake` below) before us.
        if seq.load(Ordering::Relaxed) == seen {
            // Queues us and releases the lock atomically; returns after one
            // notification (a real futex wait returns after one wake too).
            drop(self.queue.wait(guard).unwrap());
        }
        // else: EAGAIN, return at once.
    }
}

impl Waker<LoomAtomics> for ModelFutex {
    fn wake(&self, _seq: &AtomicU32) {
        let _guard = self.bucket.lock().unwrap();
        self.queue.notify_all();
    }
}

/// The shared state of one doorbell plus the data it announces.
#[derive(Debug)]
struct Words {
    seq: AtomicU32,
    waiting: AtomicU32,
    /// The "commit word": 0 = nothing published yet.
    data: AtomicU64,
    futex: ModelFutex,
}

impl Words {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            seq: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            data: AtomicU64::new(0),
            futex: ModelFutex::new(),
        })
    }

    fn bell(&self) -> Doorbell<'_, LoomAtomics> {
        Doorbell::new(&self.seq, &self.waiting)
    }

    /// Publish `v` (the producer's commit store).
    fn publish(&self, v: u64) {
        // Release: pairs with the Acquire load in `at_least`.
        self.data.store(v, Ordering::Release);
    }

    /// The consumer's poll: `Some` once `data >= v`.
    fn at_least(&self, v: u64) -> Option<u64> {
        // Acquire: pairs with the Release store in `publish`.
        let d = self.data.load(Ordering::Acquire);
        (d >= v).then_some(d)
    }

    /// Sleep-mode wait (no deadline under loom: it would read the clock).
    fn wait_for(&self, v: u64) -> u64 {
        self.bell()
            .wait(|| self.at_least(v), &self.futex, WaitMode::Sleep, None)
            .expect("no deadline, no timeout")
    }
}

/// One hand-off: the sleeping consumer must see the value.
#[test]
fn loom_doorbell_one_handoff() {
    loom::model(|| {
        let w = Words::new();
        let c = w.clone();
        let consumer = thread::spawn(move || assert_eq!(c.wait_for(1), 1));
        w.publish(1);
        w.bell().ring(&w.futex);
        consumer.join().unwrap();
        // Relaxed: after join, which synchronizes with the consumer's exit.
        assert_eq!(w.waiting.load(Ordering::Relaxed), 0);
    });
}

/// Two hand-offs in sequence through the same doorbell: the second round
/// starts from whatever the first left behind (a bumped `seq`, a wake the
/// consumer never slept for).
#[test]
fn loom_doorbell_two_handoffs() {
    loom::model(|| {
        let w = Words::new();
        let c = w.clone();
        let consumer = thread::spawn(move || {
            assert!(c.wait_for(1) >= 1);
            assert_eq!(c.wait_for(2), 2);
        });
        w.publish(1);
        w.bell().ring(&w.futex);
        w.publish(2);
        w.bell().ring(&w.futex);
        consumer.join().unwrap();
    });
}

/// A ping-pong: each side sleeps on its own doorbell in turn.
#[test]
fn loom_doorbell_ping_pong() {
    loom::model(|| {
        let ping = Words::new();
        let pong = Words::new();
        let (pi, po) = (ping.clone(), pong.clone());
        let server = thread::spawn(move || {
            assert_eq!(pi.wait_for(1), 1);
            po.publish(1);
            po.bell().ring(&po.futex);
        });
        ping.publish(1);
        ping.bell().ring(&ping.futex);
        assert_eq!(pong.wait_for(1), 1);
        server.join().unwrap();
    });
}

/// BROKEN: the producer side without its SeqCst fence. Its Relaxed load of
/// `waiting` may miss the consumer's 1 while the consumer's poll misses the
/// data (store buffering): nobody rings, the consumer sleeps forever.
#[test]
#[should_panic(expected = "deadlock")]
fn loom_doorbell_broken_ring_without_fence() {
    fn broken_ring(w: &Words) {
        // (no fence(SeqCst) here)
        if w.waiting.load(Ordering::Relaxed) != 0 {
            w.seq.fetch_add(1, Ordering::Release);
            w.futex.wake(&w.seq);
        }
    }
    loom::model(|| {
        let w = Words::new();
        let c = w.clone();
        let consumer = thread::spawn(move || assert_eq!(c.wait_for(1), 1));
        w.publish(1);
        broken_ring(&w);
        consumer.join().unwrap();
    });
}

/// BROKEN: the consumer reads `seen` after its poll instead of before it.
/// The producer's whole ring (increment and wake) can fall between the two:
/// `seen` then already includes the increment and the futex sleeps.
#[test]
#[should_panic(expected = "deadlock")]
fn loom_doorbell_broken_seen_after_poll() {
    fn broken_wait(w: &Words, v: u64) -> u64 {
        loop {
            w.waiting.store(1, Ordering::Relaxed);
            LoomAtomics::fence(Ordering::SeqCst);
            if let Some(d) = w.at_least(v) {
                w.waiting.store(0, Ordering::Relaxed);
                return d;
            }
            let seen = w.seq.load(Ordering::Acquire); // too late
            w.futex.sleep(&w.seq, seen, None);
            w.waiting.store(0, Ordering::Relaxed);
            if let Some(d) = w.at_least(v) {
                return d;
            }
        }
    }
    loom::model(|| {
        let w = Words::new();
        let c = w.clone();
        let consumer = thread::spawn(move || assert_eq!(broken_wait(&c, 1), 1));
        w.publish(1);
        w.bell().ring(&w.futex);
        consumer.join().unwrap();
    });
}
