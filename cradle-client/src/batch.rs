//! Batches of calls through the synchronous [`Client`]
//! (docs/architecture.md, "The client's call path: batches").
//!
//! A [`Batch`] sends many requests of one method under one lock of the
//! request ring, staging each frame and publishing them together (one
//! store, one doorbell check); it takes every response present in the
//! response ring under one lock, validating each in place in the inbox's
//! private buffer and handing it to a closure, and releases the ring once
//! for the lot. The guarantees are those of [`Client::send`] and
//! [`Pending::wait_with`](crate::Pending::wait_with), per call.

use crate::calls;
use crate::client::{Client, Deadline};
use crate::options::CallOptions;
use crate::session::{self, lock};
use ipc_core::ring::FrameMeta;
use ipc_rpc::{CallError, Method, Wire, wire};
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
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
    ids: VecDeque<u64>,
    /// Sequence number of `ids[0]`.
    front: u64,
    /// Calls not resolved.
    open: usize,
    /// When calls first waited: `(s, t)` says the calls from sequence
    /// number `s` up to the next entry's (or to `stamped`) first waited at
    /// `t`.
    waits: VecDeque<(u64, Instant)>,
    /// Calls below this sequence number have a wait start in `waits`.
    stamped: u64,
}

impl InFlight {
    /// Whether every call is resolved.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.open == 0
    }

    /// Adds the call with request id `id`; returns its sequence number.
    #[inline]
    fn push(&mut self, id: u64) -> u64 {
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
    fn trim(&mut self) {
        while self.ids.front().is_some_and(|&x| x & DONE != 0) {
            self.ids.pop_front();
            self.front += 1;
        }
    }

    /// Sequence number of the next call sent.
    #[inline]
    fn next_seq(&self) -> u64 {
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

/// A batch of calls of `M`: requests sent many at a time
/// ([`send`](Self::send): one lock, frames staged and published together,
/// one doorbell check), responses taken many at a time
/// ([`recv_with`](Self::recv_with): one lock, every response present read
/// and validated in place, one ring release). Each call has a sequence
/// number (0, 1, 2, ... in send order) by which its response is handed
/// over, and its own result: an error of one call (a remote error, a
/// malformed answer) does not touch the others.
///
/// Pipelining without a [`Pending`](crate::Pending) per call, and without
/// allocating per call once the batch's queue has grown to the number of
/// calls in flight. Dropping the batch discards the responses still due.
///
/// ```no_run
/// use ipc_rpc::builtin::Ping;
/// # let client = cradle_client::Client::connect_default()?;
/// let mut batch = client.batch::<Ping>();
/// let reqs: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i]).collect();
/// assert_eq!(batch.send(&reqs)?, 64);
/// let mut ok = 0;
/// batch.wait_all_with(|seq, echo| {
///     if echo.is_ok_and(|e| e.as_slice() == [seq as u8]) {
///         ok += 1;
///     }
/// });
/// assert_eq!(ok, 64);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a batch's responses are discarded unless received"]
pub struct Batch<'c, M: Method> {
    client: &'c Client,
    calls: InFlight,
    opts: CallOptions,
    _m: PhantomData<fn() -> M>,
}

impl<M: Method> fmt::Debug for Batch<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("method", &M::NAME)
            .field("in_flight", &self.calls.open)
            .field("sent", &self.sent())
            .finish()
    }
}

impl Client {
    /// A batch of calls of `M` with the client's default timeout and wait
    /// mode (see [`Batch`]).
    ///
    /// ```no_run
    /// use ipc_rpc::builtin::Ping;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let mut batch = client.batch::<Ping>();
    /// batch.send([&b"a".to_vec(), &b"b".to_vec()])?;
    /// batch.wait_all_with(|seq, r| println!("call {seq}: {:?}", r.map(|e| e.len())));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn batch<M: Method>(&self) -> Batch<'_, M> {
        self.batch_opts(self.default_opts())
    }

    /// A batch of calls of `M` with explicit options: `opts.timeout` bounds
    /// each wait for room in [`Batch::send`], and each call's wait for its
    /// response: as a single call's timeout counts from its first wait, a
    /// batch call's counts from the first [`Batch::recv_with`] that had to
    /// wait after the call was sent.
    ///
    /// ```no_run
    /// use cradle_client::{CallOptions, WaitMode};
    /// use ipc_rpc::builtin::Ping;
    /// use std::time::Duration;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let opts = CallOptions { timeout: Duration::from_millis(100), wait: WaitMode::Spin };
    /// let mut batch = client.batch_opts::<Ping>(opts);
    /// batch.send([&vec![1u8]])?;
    /// batch.wait_all_with(|_, r| assert!(r.is_ok()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn batch_opts<M: Method>(&self, opts: CallOptions) -> Batch<'_, M> {
        Batch {
            client: self,
            calls: InFlight::default(),
            opts,
            _m: PhantomData,
        }
    }
}

impl<M: Method> Batch<'_, M> {
    /// Calls sent and not resolved yet.
    ///
    /// ```no_run
    /// use ipc_rpc::builtin::Ping;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let mut batch = client.batch::<Ping>();
    /// batch.send([&vec![0u8]; 3])?;
    /// assert_eq!(batch.in_flight(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn in_flight(&self) -> usize {
        self.calls.open
    }

    /// Makes room for `n` calls in flight at once: no allocation until
    /// more than that are (the batch grows its queue as needed otherwise).
    ///
    /// ```no_run
    /// use ipc_rpc::builtin::Ping;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let mut batch = client.batch::<Ping>();
    /// batch.reserve(256);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reserve(&mut self, n: usize) {
        let c = &mut self.calls;
        c.ids.reserve(n.saturating_sub(c.ids.len()));
        let more = c.ids.capacity().saturating_sub(c.waits.len());
        c.waits.reserve(more);
    }

    /// Calls sent through this batch so far: the next call's sequence
    /// number.
    ///
    /// ```no_run
    /// use ipc_rpc::builtin::Ping;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let mut batch = client.batch::<Ping>();
    /// batch.send([&vec![0u8]; 3])?;
    /// batch.wait_all_with(|_, _| {});
    /// assert_eq!((batch.sent(), batch.in_flight()), (3, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sent(&self) -> u64 {
        self.calls.front + self.calls.ids.len() as u64
    }

    /// Sends a call of `M` for each request of `reqs`, in order, under one
    /// lock of the request ring: each is serialized straight into the ring
    /// and staged; the batch is published with one store and the server's
    /// doorbell checked once. When the ring is full, what is staged is
    /// published and the server woken, responses present are set aside for
    /// their callers, and the send waits for room (up to the batch's
    /// timeout): a batch larger than the ring goes through in parts.
    ///
    /// Returns how many calls were sent. An error stops the send at the
    /// request that failed ([`CallError::MessageTooLarge`], a timeout
    /// waiting for room, a dead server): the calls before it were sent and
    /// are in flight ([`in_flight`](Self::in_flight) counts them), that one
    /// and those after it were not. While it runs, other threads' sends on
    /// the same client wait for the lock (the iterator must not call the
    /// client).
    ///
    /// ```no_run
    /// use ipc_rpc::builtin::Ping;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let mut batch = client.batch::<Ping>();
    /// let reqs = vec![vec![7u8; 8]; 256];
    /// let n = batch.send(&reqs)?;
    /// assert_eq!(n, 256);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send<'r, I>(&mut self, reqs: I) -> Result<usize, CallError>
    where
        I: IntoIterator<Item = &'r M::Request>,
        M::Request: 'r,
    {
        let inner = &*self.client.inner;
        let s = &*inner.session;
        s.check()?;
        let envelope = calls::needs_envelope(M::NAME);
        let flags = if envelope {
            wire::ENVELOPE
        } else {
            wire::NO_FLAGS
        };
        let (wait, mut deadline) = (self.opts.wait, Deadline::new(self.opts.timeout));
        // The envelope's deadline (methods not the server's own), read from
        // the clock once for the batch.
        let mut deadline_ns = None;
        let mut tx = lock(&inner.tx);
        let mut n = 0;
        let mut r = Ok(());
        for req in reqs {
            let meta = FrameMeta {
                request_id: tx.next_id,
                tag: M::ID,
                kind: wire::REQUEST,
                flags,
            };
            r = if envelope {
                let ns =
                    *deadline_ns.get_or_insert_with(|| calls::envelope_deadline(deadline.at()));
                inner.put_frame(&mut tx, meta, &mut deadline, wait, true, |out, meta| {
                    calls::try_stage_enveloped(out.producer(), meta, ns, M::SCHEMA_HASH, req)
                })
            } else {
                inner.put_frame(&mut tx, meta, &mut deadline, wait, true, |out, meta| {
                    out.try_stage(meta, req)
                })
            };
            if r.is_err() {
                break;
            }
            tx.next_id += 1;
            self.calls.push(meta.request_id);
            n += 1;
        }
        let published = tx.outbox.producer().publish_staged();
        drop(tx);
        if published {
            s.wake_server();
        }
        r.map(|()| n)
    }

    /// Hands every response of this batch's calls that is present to `f`,
    /// with the call's sequence number and its result: the validated,
    /// archived response (read in place, no allocation) or the call's
    /// error. If none is present, waits for one, at most until the oldest
    /// open calls' deadline (see [`Client::batch_opts`]): then those are
    /// resolved with [`CallError::Timeout`] (a response that comes later is
    /// dropped), and the calls sent after them keep waiting. A
    /// dead server, a corrupt ring or a forked process resolve every open
    /// call with that error. Returns how many calls were resolved (0 only
    /// if none was open).
    ///
    /// ```no_run
    /// use ipc_rpc::builtin::Ping;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let mut batch = client.batch::<Ping>();
    /// batch.send([&vec![1u8], &vec![2u8]])?;
    /// while batch.in_flight() > 0 {
    ///     batch.recv_with(|seq, r| match r {
    ///         Ok(echo) => assert_eq!(echo.as_slice(), [seq as u8 + 1]),
    ///         Err(e) => eprintln!("call {seq}: {e}"),
    ///     });
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_with<F>(&mut self, mut f: F) -> usize
    where
        F: FnMut(u64, Result<&<M::Response as Wire>::Archived, CallError>),
    {
        let inner = &*self.client.inner;
        let s = &*inner.session;
        inner.receive_many(&mut self.calls, self.opts, |seq, r| {
            let r = r.and_then(|(meta, bytes)| {
                let f = &mut f;
                let read =
                    calls::plain(s, M::ID, |b| session::access::<M, _>(b, |a| f(seq, Ok(a))));
                read(meta, bytes)
            });
            if let Err(e) = r {
                f(seq, Err(session::name_unknown::<M>(e)));
            }
        })
    }

    /// [`recv_with`](Self::recv_with) until every call sent is resolved.
    /// Returns how many were.
    ///
    /// ```no_run
    /// use ipc_rpc::builtin::Ping;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let mut batch = client.batch::<Ping>();
    /// batch.send([&vec![1u8], &vec![2u8]])?;
    /// let mut sum = 0;
    /// assert_eq!(batch.wait_all_with(|_, r| sum += r.map_or(0, |e| e[0])), 2);
    /// assert_eq!(sum, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_all_with<F>(&mut self, mut f: F) -> usize
    where
        F: FnMut(u64, Result<&<M::Response as Wire>::Archived, CallError>),
    {
        let mut n = 0;
        while !self.calls.is_empty() {
            n += self.recv_with(&mut f);
        }
        n
    }
}

impl<M: Method> Drop for Batch<'_, M> {
    fn drop(&mut self) {
        self.client.inner.abandon_all(&mut self.calls);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
