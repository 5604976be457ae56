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
use crate::inflight::InFlight;
use crate::options::CallOptions;
use crate::session::{self, lock};
use ipc_core::ring::FrameMeta;
use ipc_rpc::{CallError, Method, Wire, wire};
use std::fmt;
use std::marker::PhantomData;

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
