//! One `get_or_compute` per key at a time inside a client.
//!
//! The server grants a key's claim to a *session* and answers `Claimed`
//! again to the session that holds it (a renewal). Every thread or task of
//! one process that shares a client is that one session, so without a gate
//! two of them asking for one key would both be answered `Claimed` and
//! both compute. A client therefore lets one `get_or_compute` per key ask
//! the server at a time; the others wait for it to finish and then ask in
//! turn, and find the key stored (a hit), or get the claim if the first
//! gave up. Different keys never wait for each other.
//!
//! It also closes a window of the late-claim salvage: a claim answered to a
//! call that was given up is unclaimed by key, which must not take away a
//! claim another live `get_or_compute` of the same key holds. While a turn
//! is held no other call of this client asks for that key, so the only
//! overlap left is an async call's future dropped mid-request (its turn
//! ends with it; docs/architecture.md §14).

use std::collections::HashSet;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

/// The keys whose turn is taken, for the sync client.
#[derive(Default)]
pub(crate) struct Turns {
    busy: Mutex<HashSet<String>>,
    freed: Condvar,
}

/// A key's turn, given back when dropped.
pub(crate) struct Turn<'t> {
    turns: &'t Turns,
    key: String,
}

impl Turns {
    /// Waits for `key`'s turn until `deadline`; `None` if it passed.
    pub(crate) fn take(&self, key: &str, deadline: Instant) -> Option<Turn<'_>> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while busy.contains(key) {
            let left = deadline.checked_duration_since(Instant::now())?;
            busy = self
                .freed
                .wait_timeout(busy, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        busy.insert(key.to_owned());
        Some(Turn {
            turns: self,
            key: key.to_owned(),
        })
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut busy = self.turns.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.remove(&self.key);
        drop(busy);
        // Waiters of other keys wake and wait again: turns are rare and
        // short-lived next to the computations they guard.
        self.turns.freed.notify_all();
    }
}

/// The async client's turns: an async mutex per key, the entry removed by
/// its last user.
#[cfg(feature = "tokio")]
#[derive(Default)]
pub(crate) struct AsyncTurns {
    map: Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

/// A key's turn in the async client, given back when dropped.
#[cfg(feature = "tokio")]
pub(crate) struct AsyncTurn<'t> {
    turns: &'t AsyncTurns,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

#[cfg(feature = "tokio")]
impl AsyncTurns {
    /// Waits for `key`'s turn until `deadline`; `None` if it passed.
    pub(crate) async fn take(&self, key: &str, deadline: Instant) -> Option<AsyncTurn<'_>> {
        let lock = std::sync::Arc::clone(
            self.map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key.to_owned())
                .or_default(),
        );
        // The turn is built before waiting, so that a wait that times out
        // or is dropped still takes the entry out when it was the last.
        let mut turn = AsyncTurn {
            turns: self,
            key: key.to_owned(),
            guard: None,
        };
        let guard =
            tokio::time::timeout_at(deadline.into(), std::sync::Arc::clone(&lock).lock_owned());
        drop(lock);
        turn.guard = Some(guard.await.ok()?);
        Some(turn)
    }
}

#[cfg(feature = "tokio")]
impl Drop for AsyncTurn<'_> {
    fn drop(&mut self) {
        let mut map = self.turns.map.lock().unwrap_or_else(|e| e.into_inner());
        // Ours goes first, under the map's lock (where clones are made):
        // one reference left means only the map holds the entry.
        drop(self.guard.take());
        if map
            .get(&self.key)
            .is_some_and(|l| std::sync::Arc::strong_count(l) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_turn_per_key_and_keys_do_not_wait_for_each_other() {
        let turns = Turns::default();
        let soon = || Instant::now() + Duration::from_millis(50);
        let a = turns.take("a", soon()).expect("free");
        assert!(turns.take("a", soon()).is_none(), "a second turn of a key");
        let b = turns.take("b", soon()).expect("another key is free");
        drop(a);
        assert!(turns.take("a", soon()).is_some(), "given back on drop");
        drop(b);
        assert!(turns.busy.lock().unwrap().is_empty());
    }

    #[test]
    fn a_waiter_gets_the_turn_when_it_is_given_back() {
        let turns = Turns::default();
        let far = Instant::now() + Duration::from_secs(60);
        let first = turns.take("k", far).expect("free");
        std::thread::scope(|s| {
            let waiter = s.spawn(|| turns.take("k", far).is_some());
            std::thread::sleep(Duration::from_millis(20));
            drop(first);
            assert!(waiter.join().unwrap());
        });
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn async_turns_time_out_and_leave_no_entry() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let turns = AsyncTurns::default();
            let far = Instant::now() + Duration::from_secs(60);
            let a = turns.take("k", far).await.expect("free");
            let soon = Instant::now() + Duration::from_millis(20);
            assert!(turns.take("k", soon).await.is_none(), "timed out");
            drop(a);
            assert!(turns.map.lock().unwrap().is_empty(), "entry removed");
            assert!(turns.take("k", far).await.is_some());
            assert!(turns.map.lock().unwrap().is_empty());
        });
    }
}
