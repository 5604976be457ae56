//! Blobs and the memory cache through the tokio [`AsyncClient`]: the same
//! operations, semantics and errors as the sync client's, as futures. The
//! state they change is the session core's; the values ([`Blob`],
//! [`BlobRef`]) are the same types whichever client made them.
//!
//! Every future may be dropped at any point: a call whose request went out
//! carries a salvage that gives back what its late response grants (a lease,
//! a new large blob, a descriptor), and what was already granted is held by
//! a guard that gives it back when dropped.

use crate::async_client::{AsyncClient, Shared};
use crate::blob::{
    Blob, BlobRef, Draft, Lease, SMALL_BLOB_MAX, Sealing, Unsealed, acquired_leftover,
    author_leftover, created_leftover, loaded_leftover, lookup_leftover, put_request,
    retry_after_flush, sealed_leftover, segment_leftover,
};
use crate::blob::{claim_request, claim_salvage, computed_but_gone};
use crate::error::{BlobError, ComputeError};
use crate::options::slow_call;
use crate::session::{AuthorSpace, Leftover, Owner, SegMap, salvage};
use ipc_rpc::blob::{
    Acquire, AuthorPool, BlobHandle, BlobStats, CacheGet, CacheLoad, CachePut, CachePutDurable,
    CacheRemove, CreateLarge, Hit, Lookup, MapSegment, PutRequest, Release, SealLarge, SealSmall,
    SegmentInfo,
};
use ipc_rpc::builtin::Stats;
use ipc_rpc::memo::{CacheClaim, CacheUnclaim, Claim};
use ipc_rpc::{CallError, Method};
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

impl AsyncClient {
    fn owner(&self) -> Arc<dyn Owner> {
        Arc::clone(&self.shared) as Arc<Shared> as Arc<dyn Owner>
    }

    fn timeout(&self) -> Duration {
        self.shared.opts.timeout
    }

    /// Calls `M` with the default timeout; `left` says what a response
    /// nobody collects leaves to give back.
    async fn call_left<M: Method>(
        &self,
        req: &M::Request,
        timeout: Duration,
        left: impl FnOnce(&M::Response) -> Leftover + Send + 'static,
    ) -> Result<M::Response, CallError> {
        self.call_salvaged::<M>(req, timeout, salvage::<M>(left))
            .await
    }

    /// Starts a blob of `len` bytes, as [`Client::create`](crate::Client::create)
    /// does: small blobs in the session's author pool, larger ones in their
    /// own memfd.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let mut w = client.create(4).await?;
    /// w.write_at(0, b"data");
    /// let blob = w.seal().await?;
    /// # Ok(()) }
    /// ```
    pub async fn create(&self, len: usize) -> Result<AsyncBlobWriter, BlobError> {
        if len <= SMALL_BLOB_MAX
            && let Some(w) = self.create_small(len).await?
        {
            return Ok(w);
        }
        self.create_large(len).await
    }

    /// Starts a blob in its own memfd whatever its size, as
    /// [`Client::create_large`](crate::Client::create_large) does.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let w = client.create_large(1 << 20).await?;
    /// assert!(w.is_large());
    /// # Ok(()) }
    /// ```
    pub async fn create_large(&self, len: usize) -> Result<AsyncBlobWriter, BlobError> {
        let info = self
            .call_left::<CreateLarge>(&(len as u64), self.timeout(), created_leftover)
            .await?;
        // Abandoned on the server if mapping fails.
        let blob = Unsealed::new(self.owner(), info.id);
        let (seg, map) = self.shared.session.open_large(&info)?;
        Ok(AsyncBlobWriter {
            client: self.clone(),
            draft: Draft::large(blob, seg, map, len),
        })
    }

    /// A small blob in the author pool, or `None` when the pool is full or
    /// refused.
    async fn create_small(&self, len: usize) -> Result<Option<AsyncBlobWriter>, BlobError> {
        let session = &self.shared.session;
        loop {
            match session.author_reserve(len) {
                AuthorSpace::Reserved { map, offset } => {
                    return Ok(Some(AsyncBlobWriter {
                        client: self.clone(),
                        draft: Draft::small(self.owner(), map, offset, len),
                    }));
                }
                AuthorSpace::None => return Ok(None),
                AuthorSpace::Unasked => {
                    match self
                        .call_left::<AuthorPool>(&(), self.timeout(), author_leftover)
                        .await
                    {
                        Ok(info) => session.author_install(info)?,
                        Err(CallError::QuotaExceeded(_)) => session.author_refused(),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }

    /// Takes a lease on the blob `h` names and maps it, as
    /// [`Client::get`](crate::Client::get) does. Dropping the future at any
    /// point leaves no lease behind.
    ///
    /// ```no_run
    /// # async fn demo(handle: cradle_client::BlobHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let bytes = client.get(&handle).await?;
    /// println!("{} bytes", bytes.len());
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, h: &BlobHandle) -> Result<BlobRef, BlobError> {
        let mapped = self.shared.session.mapped(h.segment);
        let info = self
            .call_left::<Acquire>(
                &(*h, mapped.is_none()),
                self.timeout(),
                acquired_leftover(h.id),
            )
            .await?;
        let lease = Lease::new(self.owner(), *h);
        let seg = match mapped {
            Some(m) => m,
            None => self.map(h.segment, info.fd_sent.then_some(info)).await?,
        };
        lease.into_ref(seg)
    }

    /// Turns a handle that already carries a lease for this client into a
    /// [`BlobRef`], as [`Client::adopt`](crate::Client::adopt) does.
    ///
    /// ```no_run
    /// # async fn demo(leased: cradle_client::BlobHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// // `leased` came back from a method whose handler leased it to us.
    /// let bytes = client.adopt(&leased).await?;
    /// # Ok(()) }
    /// ```
    pub async fn adopt(&self, h: &BlobHandle) -> Result<BlobRef, BlobError> {
        let lease = Lease::new(self.owner(), *h);
        let seg = match self.shared.session.mapped(h.segment) {
            Some(m) => m,
            None => self.map(h.segment, None).await?,
        };
        lease.into_ref(seg)
    }

    /// Maps `segment`: with the descriptor sent before `sent`'s answer, or
    /// asked for now.
    async fn map(&self, segment: u64, sent: Option<SegmentInfo>) -> Result<Arc<SegMap>, BlobError> {
        let info = match sent {
            Some(info) => info,
            None => {
                self.call_left::<MapSegment>(&segment, self.timeout(), segment_leftover)
                    .await?
            }
        };
        self.shared.session.install(segment, info)
    }

    /// The reference for a cache hit (leased to us by the server).
    async fn hit_to_ref(&self, hit: Hit) -> Result<BlobRef, BlobError> {
        let lease = Lease::new(self.owner(), hit.handle);
        let seg = match self.shared.session.mapped(hit.handle.segment) {
            Some(m) => m,
            None => {
                self.map(
                    hit.handle.segment,
                    hit.segment.fd_sent.then_some(hit.segment),
                )
                .await?
            }
        };
        lease.into_ref(seg)
    }

    /// The BLAKE3-256 digest of the blob `h` names, as
    /// [`Client::digest`](crate::Client::digest).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let blob = client.create(0).await?.seal().await?;
    /// assert_eq!(client.digest(blob.handle()).await?.len(), 32);
    /// # Ok(()) }
    /// ```
    pub async fn digest(&self, h: &BlobHandle) -> Result<[u8; 32], CallError> {
        let timeout = slow_call(self.timeout()).timeout;
        self.call_timeout::<ipc_rpc::memo::BlobDigest>(h, timeout)
            .await
    }

    /// Sends every queued release now and waits until the server has
    /// processed them, as [`Client::flush`](crate::Client::flush) does.
    ///
    /// ```no_run
    /// # async fn demo(handle: cradle_client::BlobHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// drop(client.get(&handle).await?);
    /// client.flush().await?; // the server has the lease back now
    /// # Ok(()) }
    /// ```
    pub async fn flush(&self) -> Result<(), CallError> {
        let batch = self.shared.session.take_releases();
        if batch.leases.is_empty() && batch.aborted.is_empty() {
            return Ok(());
        }
        self.call::<Release>(&batch).await.map(|_| ())
    }

    /// The shared memory cache.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let stats = client.cache().stats().await?;
    /// println!("{} entries", stats.cache_entries);
    /// # Ok(()) }
    /// ```
    pub fn cache(&self) -> AsyncCache<'_> {
        AsyncCache { client: self }
    }
}

/// The server's memory cache through an [`AsyncClient`]: the operations of
/// [`Cache`](crate::Cache), as futures.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = cradle_client::AsyncClient::connect_default().await?;
/// let mut w = client.create(2).await?;
/// w.write_at(0, b"hi");
/// let blob = w.seal().await?;
/// let cache = client.cache();
/// cache.put("greeting", &blob).await?;
/// assert_eq!(&cache.get("greeting").await?.unwrap()[..], b"hi");
/// assert!(cache.remove("greeting").await?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct AsyncCache<'c> {
    client: &'c AsyncClient,
}

impl AsyncCache<'_> {
    async fn put_with<M: Method<Request = PutRequest, Response = bool>>(
        &self,
        req: PutRequest,
        timeout: Duration,
    ) -> Result<bool, CallError> {
        let r = self.client.call_timeout::<M>(&req, timeout).await;
        if retry_after_flush(&r, self.client.shared.session.has_queued_releases()) {
            self.client.flush().await?;
            return self.client.call_timeout::<M>(&req, timeout).await;
        }
        r
    }

    /// Stores `blob` under `key`, replacing what was there, as
    /// [`Cache::put`](crate::Cache::put) does.
    ///
    /// ```no_run
    /// # async fn demo(blob: cradle_client::Blob) -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// client.cache().put("k", &blob).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put(&self, key: &str, blob: &Blob) -> Result<(), CallError> {
        let req = put_request(key, blob, false);
        self.put_with::<CachePut>(req, self.client.timeout())
            .await
            .map(|_| ())
    }

    /// [`put`](Self::put), answered only once the entry is durable in the
    /// disk tier, as [`Cache::put_durable`](crate::Cache::put_durable) does.
    ///
    /// ```no_run
    /// # async fn demo(blob: cradle_client::Blob) -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let stored = client.cache().put_durable("k", &blob, true).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_durable(
        &self,
        key: &str,
        blob: &Blob,
        if_absent: bool,
    ) -> Result<bool, CallError> {
        let req = put_request(key, blob, if_absent);
        let timeout = slow_call(self.client.timeout()).timeout;
        self.put_with::<CachePutDurable>(req, timeout).await
    }

    /// Stores `blob` under `key` unless the key exists; whether it stored.
    ///
    /// ```no_run
    /// # async fn demo(blob: cradle_client::Blob) -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// if !client.cache().put_if_absent("k", &blob).await? {
    ///     println!("someone was first");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn put_if_absent(&self, key: &str, blob: &Blob) -> Result<bool, CallError> {
        let req = put_request(key, blob, true);
        self.put_with::<CachePut>(req, self.client.timeout()).await
    }

    /// The blob under `key`, leased and mapped; `None` on a miss, as
    /// [`Cache::get`](crate::Cache::get) does. Dropping the future at any
    /// point leaves no lease behind.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// match client.cache().get("k").await? {
    ///     Some(blob) => println!("{} bytes", blob.len()),
    ///     None => println!("miss"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: &str) -> Result<Option<BlobRef>, BlobError> {
        let c = self.client;
        let key = key.to_owned();
        let found = c
            .call_left::<CacheGet>(&key, c.timeout(), lookup_leftover)
            .await?;
        let hit = match found {
            Lookup::Hit(hit) => hit,
            Lookup::Miss => return Ok(None),
            Lookup::OnDisk => {
                let timeout = slow_call(c.timeout()).timeout;
                let loaded = c
                    .call_left::<CacheLoad>(&key, timeout, loaded_leftover)
                    .await?;
                match loaded {
                    Some(hit) => hit,
                    None => return Ok(None),
                }
            }
        };
        c.hit_to_ref(hit).await.map(Some)
    }

    /// The blob under `key`, computed once across processes, as
    /// [`Cache::get_or_compute`](crate::Cache::get_or_compute) does: one
    /// caller at a time holds the key's claim and runs `compute`; the
    /// others wait in the server until it puts the key, gives up, dies, or
    /// holds the claim longer than `claim`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let v = client
    ///     .cache()
    ///     .get_or_compute("answers/42", Duration::from_secs(60), || async {
    ///         let mut w = client.create(2).await?;
    ///         w.write_at(0, b"42");
    ///         w.seal().await
    ///     })
    ///     .await?;
    /// assert_eq!(&v[..], b"42");
    /// # Ok(()) }
    /// ```
    pub async fn get_or_compute<E, F, Fut>(
        &self,
        key: &str,
        claim: Duration,
        compute: F,
    ) -> Result<BlobRef, ComputeError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Blob, E>>,
    {
        let c = self.client;
        let timeout = c.timeout();
        let deadline = std::time::Instant::now() + timeout;
        let req = claim_request(key, claim, timeout);
        let mut compute = Some(compute);
        // Held until this returns or is dropped: no other call of this
        // client asks for the key meanwhile (`turns.rs`).
        let Some(_turn) = c.shared.turns.take(key, deadline).await else {
            return Err(CallError::Timeout(timeout).into());
        };
        loop {
            let answer = c
                .call_salvaged::<CacheClaim>(&req, timeout, claim_salvage(key))
                .await?;
            match answer {
                Claim::Hit(hit) => return Ok(c.hit_to_ref(hit).await?),
                Claim::OnDisk => {
                    if let Some(b) = self.get(key).await? {
                        return Ok(b);
                    }
                }
                Claim::Claimed => {
                    let Some(f) = compute.take() else {
                        let _ = c.call::<CacheUnclaim>(&key.to_owned()).await;
                        return Err(computed_but_gone(key).into());
                    };
                    match f().await {
                        Ok(blob) => {
                            if let Err(e) = self.put(key, &blob).await {
                                let _ = c.call::<CacheUnclaim>(&key.to_owned()).await;
                                return Err(e.into());
                            }
                            return Ok(c.get(blob.handle()).await?);
                        }
                        Err(e) => {
                            let _ = c.call::<CacheUnclaim>(&key.to_owned()).await;
                            return Err(ComputeError::Compute(e));
                        }
                    }
                }
                Claim::TimedOut => {
                    if std::time::Instant::now() >= deadline {
                        return Err(CallError::Timeout(Duration::ZERO).into());
                    }
                }
            }
        }
    }

    /// Removes `key` from memory and disk; whether it was in either.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let was_there = client.cache().remove("k").await?;
    /// # Ok(()) }
    /// ```
    pub async fn remove(&self, key: &str) -> Result<bool, CallError> {
        self.client.call::<CacheRemove>(&key.to_owned()).await
    }

    /// Blob store and cache figures.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let s = client.cache().stats().await?;
    /// println!("{} leases held", s.leases);
    /// # Ok(()) }
    /// ```
    pub async fn stats(&self) -> Result<BlobStats, CallError> {
        Ok(self.client.call::<Stats>(&()).await?.blobs)
    }
}

/// A blob being written through an [`AsyncClient`]: the window of
/// [`BlobWriter`](crate::BlobWriter), sealed with a future. Dropping it
/// unsealed (or dropping the seal's future) abandons the blob.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = cradle_client::AsyncClient::connect_default().await?;
/// let mut w = client.create(3).await?;
/// w.write_at(0, b"abc");
/// let blob = w.seal().await?;
/// assert_eq!(&client.get(blob.handle()).await?[..], b"abc");
/// # Ok(()) }
/// ```
pub struct AsyncBlobWriter {
    client: AsyncClient,
    draft: Draft,
}

impl fmt::Debug for AsyncBlobWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.draft.debug("AsyncBlobWriter", f)
    }
}

impl AsyncBlobWriter {
    /// The blob's length.
    ///
    /// ```no_run
    /// # async fn demo(client: cradle_client::AsyncClient) -> Result<(), Box<dyn std::error::Error>> {
    /// assert_eq!(client.create(9).await?.len(), 9);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        self.draft.len()
    }

    /// Whether the blob is empty.
    ///
    /// ```no_run
    /// # async fn demo(client: cradle_client::AsyncClient) -> Result<(), Box<dyn std::error::Error>> {
    /// assert!(client.create(0).await?.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.draft.len() == 0
    }

    /// Whether it is a large blob (its own memfd) rather than a small one.
    ///
    /// ```no_run
    /// # async fn demo(client: cradle_client::AsyncClient) -> Result<(), Box<dyn std::error::Error>> {
    /// assert!(client.create(1 << 20).await?.is_large());
    /// # Ok(()) }
    /// ```
    pub fn is_large(&self) -> bool {
        self.draft.is_large()
    }

    /// Copies `bytes` into the blob at `at`.
    ///
    /// # Panics
    ///
    /// If `at + bytes.len()` exceeds the blob's length.
    ///
    /// ```no_run
    /// # async fn demo(client: cradle_client::AsyncClient) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut w = client.create(6).await?;
    /// w.write_at(0, b"abc");
    /// w.write_at(3, b"def");
    /// # Ok(()) }
    /// ```
    pub fn write_at(&mut self, at: usize, bytes: &[u8]) {
        self.draft.write_at(at, bytes)
    }

    /// One `read(2)` from `fd` into the blob at `at`, at most `max` bytes;
    /// returns how many were read (0 at end of file). It blocks the thread
    /// for the read: use it on files, or from `spawn_blocking`.
    ///
    /// # Panics
    ///
    /// If `at + max` exceeds the blob's length.
    ///
    /// ```no_run
    /// use std::os::fd::AsFd;
    /// # async fn demo(client: cradle_client::AsyncClient) -> Result<(), Box<dyn std::error::Error>> {
    /// let f = std::fs::File::open("/etc/hostname")?;
    /// let mut w = client.create(4).await?;
    /// let n = w.write_from_fd(f.as_fd(), 0, 4)?;
    /// # Ok(()) }
    /// ```
    pub fn write_from_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        at: usize,
        max: usize,
    ) -> io::Result<usize> {
        self.draft.write_from_fd(fd, at, max)
    }

    /// The descriptor of a large blob's memfd (for inspection), `None` for a
    /// small blob.
    ///
    /// ```no_run
    /// # async fn demo(client: cradle_client::AsyncClient) -> Result<(), Box<dyn std::error::Error>> {
    /// let w = client.create_large(4096).await?;
    /// assert!(w.large_fd().is_some());
    /// # Ok(()) }
    /// ```
    pub fn large_fd(&self) -> Option<BorrowedFd<'_>> {
        self.draft.large_fd()
    }

    /// Seals the blob, as [`BlobWriter::seal`](crate::BlobWriter::seal)
    /// does. On failure, or if the future is dropped, the blob is abandoned
    /// (and a lease the late answer grants is given back).
    ///
    /// ```no_run
    /// # async fn demo(client: cradle_client::AsyncClient) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut w = client.create(1).await?;
    /// w.write_at(0, b"x");
    /// let blob = w.seal().await?;
    /// # Ok(()) }
    /// ```
    pub async fn seal(self) -> Result<Blob, BlobError> {
        let Self { client, draft } = self;
        let timeout = client.timeout();
        let handle = match draft.into_sealing() {
            Sealing::Small(reserved) => {
                let req = Sealing::small_request(&reserved);
                let r = client
                    .call_left::<SealSmall>(&req, timeout, sealed_leftover)
                    .await;
                // Copied (or refused): the range is free again.
                drop(reserved);
                r?
            }
            Sealing::Large(blob) => {
                let h = client
                    .call_left::<SealLarge>(&blob.id(), timeout, sealed_leftover)
                    .await?;
                blob.disarm();
                h
            }
        };
        Ok(Lease::new(client.owner(), handle).into_blob())
    }
}
