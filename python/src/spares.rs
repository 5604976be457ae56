//! Spare writers: large blobs created and faulted in ahead of time, off the
//! caller's thread, so that a `put` of a large buffer copies into memory the
//! kernel has already allocated and zeroed.
//!
//! Why: a large blob is a fresh memfd. Its pages are allocated and zeroed by
//! the kernel on first touch (or at `MAP_POPULATE`, which `create_large`
//! asks for); on this package's test machine that costs 100–500 ms per
//! 256 MiB against ~25 ms for the copy itself (docs/benchmarks.md §9). A
//! spare moves that cost to a helper thread, between puts.
//!
//! What a spare is: an ordinary unsealed large blob of the server
//! (`Client::create_large`, mapped read-write and populated in this
//! process), of one exact length. Taking one for a blob of that length
//! gives a `BlobWriter` like any other; sealing it (unmap, `F_SEAL_WRITE`,
//! read-only reopen by the server) is unchanged, so a blob written through a
//! spare is as immutable as any. A spare is never written before it is
//! taken (its bytes are the kernel's zeros) and never reused after.
//!
//! When: a spare is prepared for a length this client has written twice
//! within [`KEEP`] (frames, a loop of puts), not for a one-off blob, right
//! after the second blob of that length and each later one is sealed.
//!
//! Bounds: at most `cap` bytes of spares per client (the `spare_bytes`
//! argument of `Client`; 0 turns them off), at most one per length, each
//! given back (abandoned on the server) after [`KEEP`] unused, all given
//! back at `close`. The server counts spares as bytes being written by the
//! session: its per-session quota and server-wide held limit bound them
//! too, and a `create` refused for quota while spares are held drops the
//! spares and retries once.
//!
//! The helper thread is started on the first request and ends after
//! [`IDLE`] with nothing to do; it holds only a weak reference to the
//! client between jobs.

use cradle_client::{BlobError, BlobWriter, Client, SMALL_BLOB_MAX};
use ipc_rpc::CallError;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Locks `m`, whatever a panicking holder left (the state stays consistent:
/// every critical section is a few assignments).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long an unused spare is kept before it is given back.
pub(crate) const KEEP: Duration = Duration::from_secs(10);

/// How long the helper thread waits for work before it ends.
const IDLE: Duration = Duration::from_secs(2);

/// How long a `put` or `create` waits for a spare of its length that is
/// being prepared before it makes its own blob.
const WAIT: Duration = Duration::from_secs(5);

/// How many recent lengths are remembered.
const RECENT: usize = 8;

/// The default cap on a client's spares, in bytes (`Client(spare_bytes=)`).
pub(crate) const DEFAULT_CAP: usize = 512 << 20;

/// A client's spares; cheap to clone (one shared state).
#[derive(Clone)]
pub(crate) struct Spares {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a job is queued, a spare is ready, or on close.
    cv: Condvar,
    cap: usize,
}

#[derive(Default)]
struct State {
    ready: Vec<Spare>,
    /// The length to prepare next (the latest asked for).
    want: Option<usize>,
    /// The length being prepared now (counted against the cap).
    preparing: Option<usize>,
    /// Large lengths written lately (at most [`RECENT`], none older than
    /// [`KEEP`]): a spare is prepared for a length written twice.
    recent: Vec<(usize, Instant)>,
    thread: bool,
    closed: bool,
}

struct Spare {
    len: usize,
    writer: BlobWriter,
    made: Instant,
}

impl State {
    fn held(&self) -> usize {
        self.ready.iter().map(|s| s.len).sum::<usize>() + self.preparing.unwrap_or(0)
    }

    /// Whether a spare of `len` bytes is being prepared or queued.
    fn pending(&self, len: usize) -> bool {
        !self.closed && (self.preparing == Some(len) || self.want == Some(len))
    }

    /// Takes out the spares older than [`KEEP`] (to drop outside the lock).
    fn expired(&mut self, now: Instant) -> Vec<Spare> {
        let (old, keep) = std::mem::take(&mut self.ready)
            .into_iter()
            .partition(|s| now.duration_since(s.made) >= KEEP);
        self.ready = keep;
        old
    }
}

/// Whether a blob of `len` bytes is made through spares: large blobs only
/// (smaller ones go to the session's author pool, already faulted in).
pub(crate) fn wanted(len: usize) -> bool {
    len > SMALL_BLOB_MAX
}

/// Whether `e` is the server refusing memory (quota or server-wide limit).
fn is_quota(e: &BlobError) -> bool {
    matches!(e, BlobError::Call(CallError::QuotaExceeded(_)))
}

impl Spares {
    /// Spares of at most `cap` bytes in all (0: none are made).
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                cv: Condvar::new(),
                cap,
            }),
        }
    }

    /// The cap, in bytes.
    pub(crate) fn cap(&self) -> usize {
        self.shared.cap
    }

    /// A writer for a new blob of `len` bytes: a ready spare of that length
    /// if there is one, else a new blob (`Client::create`). Call
    /// [`refill`](Self::refill) once the caller's copy is done.
    pub(crate) fn writer(&self, c: &Client, len: usize) -> Result<BlobWriter, BlobError> {
        if self.shared.cap == 0 || !wanted(len) {
            return c.create(len);
        }
        // A spare of this length being prepared is waited for: the helper
        // is already allocating its pages, and making a second blob here
        // would only compete with it for the same CPU and memory.
        if let Some(w) = self.take(len, WAIT) {
            return Ok(w);
        }
        match c.create(len) {
            Err(e) if is_quota(&e) && self.drop_all() => c.create(len),
            r => r,
        }
    }

    /// Takes the ready spare of `len` bytes, waiting up to `wait` for one
    /// that is being prepared (or queued); `None` if there is none.
    fn take(&self, len: usize, wait: Duration) -> Option<BlobWriter> {
        let deadline = Instant::now() + wait;
        let mut st = lock(&self.shared.state);
        loop {
            if let Some(i) = st.ready.iter().position(|s| s.len == len) {
                return Some(st.ready.swap_remove(i).writer);
            }
            let now = Instant::now();
            if !st.pending(len) || now >= deadline {
                return None;
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Notes that a blob of `len` bytes was written; if a blob of that
    /// length was written before within [`KEEP`] (a length that repeats,
    /// not a one-off), asks the helper thread to prepare a spare of it (if
    /// large, within the cap, and none of that length is ready or being
    /// prepared), starting the thread if it is not running.
    pub(crate) fn refill(&self, c: &Arc<Client>, len: usize) {
        if !wanted(len) || len > self.shared.cap {
            return;
        }
        let mut st = lock(&self.shared.state);
        let now = Instant::now();
        st.recent.retain(|&(_, t)| now.duration_since(t) < KEEP);
        let repeated = match st.recent.iter_mut().find(|(l, _)| *l == len) {
            Some(seen) => {
                seen.1 = now;
                true
            }
            None => {
                if st.recent.len() == RECENT {
                    st.recent.remove(0);
                }
                st.recent.push((len, now));
                false
            }
        };
        if !repeated
            || st.closed
            || st.preparing == Some(len)
            || st.ready.iter().any(|s| s.len == len)
        {
            return;
        }
        st.want = Some(len);
        if !st.thread {
            st.thread = true;
            let me = self.clone();
            let weak = Arc::downgrade(c);
            let spawned = std::thread::Builder::new()
                .name("cradle-spares".into())
                .spawn(move || me.run(weak));
            if spawned.is_err() {
                // No thread, no spares: puts make their blobs inline.
                st.thread = false;
                st.want = None;
            }
        }
        drop(st);
        self.shared.cv.notify_all();
    }

    /// The helper thread: prepares the wanted lengths, gives back expired
    /// spares, ends when idle or closed.
    fn run(self, client: Weak<Client>) {
        let sh = &*self.shared;
        loop {
            let mut drop_later = Vec::new();
            let len = {
                let mut st = lock(&sh.state);
                loop {
                    if st.closed {
                        st.thread = false;
                        drop_later.append(&mut st.ready);
                        break None;
                    }
                    drop_later.append(&mut st.expired(Instant::now()));
                    if let Some(len) = st.want.take() {
                        // Make room: the oldest spares (other lengths) go.
                        st.ready.sort_by_key(|s| s.made);
                        while st.held() + len > sh.cap && !st.ready.is_empty() {
                            drop_later.push(st.ready.remove(0));
                        }
                        if st.held() + len <= sh.cap {
                            st.preparing = Some(len);
                            break Some(len);
                        }
                        continue;
                    }
                    let wait = match st.ready.iter().map(|s| s.made).min() {
                        Some(first) => (first + KEEP).saturating_duration_since(Instant::now()),
                        None => IDLE,
                    };
                    let (g, timeout) = sh
                        .cv
                        .wait_timeout(st, wait.max(Duration::from_millis(1)))
                        .unwrap_or_else(|p| p.into_inner());
                    st = g;
                    if timeout.timed_out() && st.ready.is_empty() && st.want.is_none() && !st.closed
                    {
                        st.thread = false;
                        break None;
                    }
                }
            };
            // Given back outside the lock (each sends an abandon).
            drop(drop_later);
            let Some(len) = len else { return };
            let made = match client.upgrade() {
                // `create_large` maps the memfd populated: the pages are
                // allocated, zeroed and mapped here, on this thread.
                Some(c) => c.create_large(len).ok(),
                None => None,
            };
            let mut st = lock(&sh.state);
            st.preparing = None;
            let gone = client.strong_count() == 0;
            match made {
                Some(writer) if !st.closed && !gone => st.ready.push(Spare {
                    len,
                    writer,
                    made: Instant::now(),
                }),
                other => {
                    drop(st);
                    drop(other);
                    if gone {
                        self.close();
                    }
                    sh.cv.notify_all();
                    continue;
                }
            }
            drop(st);
            sh.cv.notify_all();
        }
    }

    /// Gives every ready spare back; whether there was any.
    fn drop_all(&self) -> bool {
        let gone = std::mem::take(&mut lock(&self.shared.state).ready);
        let any = !gone.is_empty();
        drop(gone);
        any
    }

    /// Gives every spare back and makes no more (the client is closing).
    pub(crate) fn close(&self) {
        let gone = {
            let mut st = lock(&self.shared.state);
            st.closed = true;
            st.want = None;
            std::mem::take(&mut st.ready)
        };
        drop(gone);
        self.shared.cv.notify_all();
    }

    /// The lengths of the ready spares, and the length being prepared.
    pub(crate) fn status(&self) -> (Vec<usize>, Option<usize>) {
        let st = lock(&self.shared.state);
        (st.ready.iter().map(|s| s.len).collect(), st.preparing)
    }

    /// Waits until a spare of `len` bytes is ready, or none of that length
    /// is being prepared or queued any more, or `timeout` passes; whether
    /// one is ready.
    pub(crate) fn wait_ready(&self, len: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.shared.state);
        loop {
            if st.ready.iter().any(|s| s.len == len) {
                return true;
            }
            let now = Instant::now();
            if !st.pending(len) || now >= deadline {
                return false;
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
