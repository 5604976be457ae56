//! Compute-once claims on cache keys (`cradle.cache.claim`): the server side
//! of a client's `get_or_compute`.
//!
//! One caller at a time holds the claim on a key, until it puts the key
//! (every waiter is then answered with the blob), gives the claim up, its
//! session closes (a `kill -9` hangs up its socket: the claim is freed at
//! once), or the claim's deadline passes; then the first waiter is answered
//! `Claimed` and holds it. A waiter is answered `TimedOut` when its own
//! wait ends first. Waiting happens here, in the server: a waiting call
//! holds no thread, only an entry in [`Claims`]; a timer thread ends
//! claims and waits whose time has come.
//!
//! Lock order: the claims' lock, then the store's (the store calls the
//! claims, through its `KeyWatcher`, only outside its own lock).

use super::{MAX_WAITERS, Memo, Waiter};
use crate::blobs::BlobError;
use crate::reply::encode_answer;
use ipc_rpc::ErrorCode;
use ipc_rpc::blob::Lookup;
use ipc_rpc::memo::{Claim, ClaimRequest, is_reserved};
use ipc_rpc::rkyv::ser::allocator::Arena;
use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Longest claim and longest wait a caller may ask for.
const MAX_CLAIM: Duration = Duration::from_secs(24 * 3600);

/// A call waiting for a key's claim to end.
#[derive(Debug)]
struct ClaimWaiter {
    w: Waiter,
    /// When its wait ends (answered `TimedOut`).
    until: Instant,
    /// How long its claim lasts if it gets one.
    claim: Duration,
}

/// The claim on one key.
#[derive(Debug)]
struct KeyClaim {
    holder: u64,
    until: Instant,
    queue: VecDeque<ClaimWaiter>,
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<String, KeyClaim>,
    waiting: usize,
    stopped: bool,
}

/// Every claim and waiting call.
#[derive(Debug, Default)]
pub(super) struct Claims {
    state: Mutex<State>,
    /// Wakes the timer thread (a new deadline, or the stop).
    tick: Condvar,
}

fn answer(memo: &Memo, w: &Waiter, c: Claim) {
    let a = encode_answer(w.meta, Ok(c), &mut Arena::new(), w.max_payload);
    memo.deliver(w, a);
}

impl Claims {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls waiting for a claim.
    pub(super) fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Ends the timer thread.
    pub(super) fn stop(&self) {
        self.lock().stopped = true;
        self.tick.notify_all();
    }

    /// A claim request: `Ok(Some(answer))` now, `Ok(None)` if the call
    /// waits (answered later through its worker).
    pub(super) fn claim(
        &self,
        memo: &Memo,
        req: &ClaimRequest,
        me: Waiter,
    ) -> Result<Option<Claim>, BlobError> {
        ipc_rpc::blob::check_key(&req.key).map_err(|e| BlobError::handler(e.to_string()))?;
        if is_reserved(&req.key) {
            return Err(reserved(&req.key));
        }
        let claim = Duration::from_millis(u64::from(req.claim_ms).max(1)).min(MAX_CLAIM);
        let wait = Duration::from_millis(u64::from(req.wait_ms)).min(MAX_CLAIM);
        match memo.store.cache_get(me.session, &req.key)? {
            Lookup::Hit(hit) => return Ok(Some(Claim::Hit(hit))),
            Lookup::OnDisk => return Ok(Some(Claim::OnDisk)),
            Lookup::Miss => {}
        }
        let mut st = self.lock();
        // Put between our lookup and the lock: its `stored` has run.
        if let Some(hit) = memo.store.lease_key(me.session, &req.key)? {
            return Ok(Some(Claim::Hit(hit)));
        }
        let now = Instant::now();
        let waiting = st.waiting
            + memo
                .flights()
                .values()
                .map(|f| f.waiters.len())
                .sum::<usize>();
        let Some(kc) = st.keys.get_mut(&req.key) else {
            st.keys.insert(
                req.key.clone(),
                KeyClaim {
                    holder: me.session,
                    until: now + claim,
                    queue: VecDeque::new(),
                },
            );
            drop(st);
            self.tick.notify_all();
            return Ok(Some(Claim::Claimed));
        };
        if kc.holder == me.session {
            kc.until = now + claim;
            return Ok(Some(Claim::Claimed));
        }
        if wait.is_zero() {
            return Ok(Some(Claim::TimedOut));
        }
        if waiting >= MAX_WAITERS {
            return Err(BlobError::new(
                ErrorCode::QuotaExceeded,
                format!("{MAX_WAITERS} calls already wait in the server"),
            ));
        }
        kc.queue.push_back(ClaimWaiter {
            w: me,
            until: now + wait,
            claim,
        });
        st.waiting += 1;
        drop(st);
        self.tick.notify_all();
        Ok(None)
    }

    /// Gives the claim on `key` to its next waiter, or drops it.
    fn hand_over(memo: &Memo, st: &mut State, key: &str) {
        let Some(kc) = st.keys.get_mut(key) else {
            return;
        };
        match kc.queue.pop_front() {
            Some(next) => {
                st.waiting -= 1;
                kc.holder = next.w.session;
                kc.until = Instant::now() + next.claim;
                answer(memo, &next.w, Claim::Claimed);
            }
            None => {
                st.keys.remove(key);
            }
        }
    }

    /// `cradle.cache.unclaim`: whether `session` held the claim.
    pub(super) fn unclaim(&self, memo: &Memo, session: u64, key: &str) -> bool {
        let mut st = self.lock();
        if st.keys.get(key).is_none_or(|kc| kc.holder != session) {
            return false;
        }
        Self::hand_over(memo, &mut st, key);
        true
    }

    /// `key` was put: its waiters get the blob, its claim ends.
    pub(super) fn stored(&self, memo: &Memo, key: &str) {
        let mut st = self.lock();
        let Some(kc) = st.keys.remove(key) else {
            return;
        };
        st.waiting -= kc.queue.len();
        for cw in kc.queue {
            let c = match memo.store.lease_key(cw.w.session, key) {
                Ok(Some(hit)) => Claim::Hit(hit),
                // Larger than memory: the disk tier has it (or will).
                Ok(None) => Claim::OnDisk,
                Err(e) => {
                    let a = crate::reply::encode_error(
                        cw.w.meta,
                        e.code,
                        e.message,
                        &mut Arena::new(),
                        cw.w.max_payload,
                    );
                    memo.deliver(&cw.w, a);
                    continue;
                }
            };
            answer(memo, &cw.w, c);
        }
    }

    /// `session` is gone: its claims go to their next waiters, its waits
    /// end (nobody reads their answers).
    pub(super) fn session_closed(&self, memo: &Memo, session: u64) {
        let mut st = self.lock();
        let mut dropped = 0;
        for kc in st.keys.values_mut() {
            let before = kc.queue.len();
            kc.queue.retain(|cw| cw.w.session != session);
            dropped += before - kc.queue.len();
        }
        st.waiting -= dropped;
        let held: Vec<String> = st
            .keys
            .iter()
            .filter(|(_, kc)| kc.holder == session)
            .map(|(k, _)| k.clone())
            .collect();
        for k in held {
            Self::hand_over(memo, &mut st, &k);
        }
    }

    /// Ends what is due at `now`; returns the next deadline.
    fn expire(&self, memo: &Memo, now: Instant) -> Option<Instant> {
        let mut st = self.lock();
        let due: Vec<String> = st
            .keys
            .iter()
            .filter(|(_, kc)| kc.until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            tracing::info!(key = %k, "a compute-once claim expired; the next waiter gets it");
            Self::hand_over(memo, &mut st, &k);
        }
        let mut timed_out = Vec::new();
        for kc in st.keys.values_mut() {
            let mut i = 0;
            while i < kc.queue.len() {
                if kc.queue[i].until <= now {
                    if let Some(cw) = kc.queue.remove(i) {
                        timed_out.push(cw.w);
                    }
                } else {
                    i += 1;
                }
            }
        }
        st.waiting -= timed_out.len();
        for w in &timed_out {
            answer(memo, w, Claim::TimedOut);
        }
        st.keys
            .values()
            .flat_map(|kc| std::iter::once(kc.until).chain(kc.queue.iter().map(|cw| cw.until)))
            .min()
    }
}

/// The refusal of a reserved key.
fn reserved(key: &str) -> BlobError {
    BlobError::handler(format!(
        "the key {key:?} is under {}, where the server keeps its memo entries: clients cannot put, remove or claim such keys (clear them with `cradle memo clear`)",
        ipc_rpc::memo::MEMO_PREFIX
    ))
}

/// Starts the thread that ends expired claims and waits; it stops with
/// [`Claims::stop`] or when the memo is gone.
pub(super) fn spawn_timer(memo: Weak<Memo>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("cradle-claims".into())
        .spawn(move || {
            loop {
                let Some(m) = memo.upgrade() else { return };
                let next = m.claims.expire(&m, Instant::now());
                let st = m.claims.lock();
                if st.stopped {
                    return;
                }
                let now = Instant::now();
                let wait = next
                    .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now))
                    .min(Duration::from_secs(1));
                // Woken early by a new claim or wait, or the stop.
                let _ = m.claims.tick.wait_timeout(st, wait);
            }
        })
        .map(|_| ())
}
