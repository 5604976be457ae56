//! The calls of a batch still waiting for their responses
//! ([`InFlight`]): what a [`Batch`](crate::Batch) keeps, and what the
//! client's receive path resolves (a file of its own so that `client.rs`
//! and `batch.rs` do not import each other).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Marks a call of [`InFlight`] resolved out of order (request ids stay
/// below 2^63: one client would need centuries to count that far).
const DONE: u64 = 1 << 63;

/// The calls of a batch still waiting for their responses: request ids in
/// send order (strictly increasing: one client numbers its requests from
/// one counter), and the sequence number of the first.
///
/// Deadlines: as a single call's timeout counts from its first wait for
/// the response, a batch's call's counts from the first wait of the batch
/// after it was sent. Each such wait that finds calls sent since the last
/// one starts their clock (one clock read for all of them).
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    /// Request ids in send order; a call resolved out of order keeps its
    /// place with [`DONE`] set until the calls before it are resolved.
    pub(crate) ids: VecDeque<u64>,
    /// Sequence number of `ids[0]`.
    pub(crate) front: u64,
    /// Calls not resolved.
    pub(crate) open: usize,
    /// When calls first waited: `(s, t)` says the calls from sequence
    /// number `s` up to the next entry's (or to `stamped`) first waited at
    /// `t`.
    pub(crate) waits: VecDeque<(u64, Instant)>,
    /// Calls below this sequence number have a wait start in `waits`.
    pub(crate) stamped: u64,
}

impl InFlight {
    /// Whether every call is resolved.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.open == 0
    }

    /// Adds the call with request id `id`; returns its sequence number.
    #[inline]
    pub(crate) fn push(&mut self, id: u64) -> u64 {
        debug_assert!(self.ids.back().is_none_or(|&b| b & !DONE < id));
        if self.ids.len() == self.ids.capacity() {
            self.ids.reserve(1);
            // There are never more wait starts than calls in `ids` (each
            // covers calls of its own, and goes once they are resolved): with
            // room for as many, `deadline` never allocates.
            let more = self.ids.capacity().saturating_sub(self.waits.len());
            self.waits.reserve(more);
        }
        self.ids.push_back(id);
        self.open += 1;
        self.front + self.ids.len() as u64 - 1
    }

    /// Resolves the call with request id `id` if it is open: its sequence
    /// number. Responses usually come in order (the front one): one
    /// comparison; otherwise a binary search.
    #[inline]
    pub(crate) fn take(&mut self, id: u64) -> Option<u64> {
        if *self.ids.front()? == id {
            self.ids.pop_front();
            let seq = self.front;
            self.front += 1;
            self.open -= 1;
            self.trim();
            return Some(seq);
        }
        let i = self.ids.binary_search_by_key(&id, |&x| x & !DONE).ok()?;
        let slot = &mut self.ids[i];
        if *slot & DONE != 0 {
            return None;
        }
        *slot |= DONE;
        self.open -= 1;
        Some(self.front + i as u64)
    }

    /// Drops resolved calls from the front.
    #[inline]
    pub(crate) fn trim(&mut self) {
        while self.ids.front().is_some_and(|&x| x & DONE != 0) {
            self.ids.pop_front();
            self.front += 1;
        }
    }

    /// Sequence number of the next call sent.
    #[inline]
    pub(crate) fn next_seq(&self) -> u64 {
        self.front + self.ids.len() as u64
    }

    /// For a reader about to wait: starts the clock of the calls sent since
    /// the last wait (now), and answers when the oldest open call's
    /// `timeout` runs out.
    pub(crate) fn deadline(&mut self, timeout: Duration) -> Instant {
        // Wait starts whose calls are all resolved go.
        while let Some(&(_, _)) = self.waits.front() {
            let end = self.waits.get(1).map_or(self.stamped, |w| w.0);
            if end > self.front {
                break;
            }
            self.waits.pop_front();
        }
        let next = self.next_seq();
        if self.stamped < next {
            self.waits.push_back((self.stamped, Instant::now()));
            self.stamped = next;
        }
        match self.waits.front() {
            Some(&(_, t)) => t + timeout,
            // Every call sent has a wait start and is resolved.
            None => Instant::now() + timeout,
        }
    }

    /// Resolves with `f(seq, id, waited)` the open calls whose clock
    /// started first (their deadline passed: see [`deadline`]).
    ///
    /// [`deadline`]: Self::deadline
    pub(crate) fn expire_oldest(&mut self, mut f: impl FnMut(u64, u64, Duration)) -> usize {
        let Some((_, t)) = self.waits.pop_front() else {
            return 0;
        };
        let end = self.waits.front().map_or(self.stamped, |w| w.0);
        let waited = t.elapsed();
        self.resolve_where(|seq, id| {
            if seq >= end {
                return false;
            }
            f(seq, id, waited);
            true
        })
    }

    /// Resolves every open call for which `f(seq, id)` says so.
    pub(crate) fn resolve_where(&mut self, mut f: impl FnMut(u64, u64) -> bool) -> usize {
        let mut n = 0;
        for (i, slot) in self.ids.iter_mut().enumerate() {
            if *slot & DONE == 0 && f(self.front + i as u64, *slot) {
                *slot |= DONE;
                n += 1;
            }
        }
        self.open -= n;
        self.trim();
        n
    }

    /// Resolves every open call with `f(seq, id)`.
    pub(crate) fn resolve_all(&mut self, mut f: impl FnMut(u64, u64)) -> usize {
        self.resolve_where(|seq, id| {
            f(seq, id);
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn in_flight_resolves_in_and_out_of_order() {
        let mut c = InFlight::default();
        for id in [3, 4, 7, 9, 10] {
            c.push(id);
        }
        assert_eq!(c.take(3), Some(0));
        assert_eq!(c.take(9), Some(3));
        assert_eq!(c.take(9), None, "resolved once");
        assert_eq!(c.take(5), None, "not ours");
        assert_eq!(c.take(4), Some(1));
        assert_eq!(c.take(7), Some(2));
        // 9 was resolved: the front moved past it.
        assert_eq!(c.ids.len(), 1);
        assert_eq!(c.push(11), 5);
        let mut left = Vec::new();
        assert_eq!(c.resolve_all(|seq, id| left.push((seq, id))), 2);
        assert_eq!(left, [(4, 10), (5, 11)]);
        assert!(c.is_empty());
        assert_eq!(c.take(10), None);
    }

    #[test]
    fn deadlines_count_from_each_calls_first_wait() {
        let t = Duration::from_secs(3600);
        let mut c = InFlight::default();
        c.push(1);
        c.push(2);
        let d1 = c.deadline(t);
        // No new call: the same deadline.
        assert_eq!(c.deadline(t), d1);
        c.push(3);
        let d2 = {
            std::thread::sleep(Duration::from_millis(2));
            c.deadline(t)
        };
        assert_eq!(d2, d1, "the oldest open call sets the deadline");
        assert_eq!(c.waits.len(), 2);
        let mut out = Vec::new();
        assert_eq!(c.expire_oldest(|seq, id, _| out.push((seq, id))), 2);
        assert_eq!(out, [(0, 1), (1, 2)]);
        assert!(c.deadline(t) > d1, "call 3 started its clock later");
        assert_eq!(c.take(3), Some(2));
        assert!(c.is_empty());
        // Resolved calls' wait starts go.
        c.push(4);
        c.deadline(t);
        assert_eq!(c.waits.len(), 1);
    }

    #[test]
    fn resolve_where_keeps_the_rest() {
        let mut c = InFlight::default();
        for id in 1..=6 {
            c.push(id);
        }
        assert_eq!(c.resolve_where(|_, id| id % 2 == 0), 3);
        assert_eq!(c.open, 3);
        assert_eq!(c.take(1), Some(0));
        assert_eq!(c.take(3), Some(2));
        assert_eq!(c.take(5), Some(4));
        assert!(c.is_empty());
        assert!(c.ids.is_empty());
    }
}
