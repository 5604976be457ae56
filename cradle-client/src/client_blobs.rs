//! Blobs and the memory cache through the synchronous [`Client`]
//! (docs/design.md §8): the calls; the state they change is the session
//! core's, the values are in `blob.rs`.

use crate::blob::{
    Blob, BlobRef, Draft, Lease, SMALL_BLOB_MAX, Sealing, Unsealed, acquired_leftover,
    author_leftover, claim_request, claim_salvage, computed_but_gone, created_leftover,
    loaded_leftover, lookup_leftover, put_request, retry_after_flush, sealed_leftover,
    segment_leftover,
};
use crate::client::{Client, Inner};
use crate::error::{BlobError, ComputeError};
use crate::options::CallOptions;
use crate::options::slow_call;
use crate::session::{AuthorSpace, Leftover, Owner, SegMap, salvage};
use ipc_rpc::blob::{
    Acquire, AuthorPool, BlobHandle, BlobStats, CacheGet, CacheLoad, CachePut, CachePutDurable,
    CacheRemove, CreateLarge, Hit, Lookup, MapSegment, Release, SealLarge, SealSmall,
};
use ipc_rpc::builtin::Stats;
use ipc_rpc::memo::{CacheClaim, CacheUnclaim, Claim};
use ipc_rpc::{CallError, Method};
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

impl Client {
    fn owner(&self) -> Arc<dyn Owner> {
        Arc::clone(&self.inner) as Arc<Inner> as Arc<dyn Owner>
    }

    /// Calls `M`; `left` says what a response that comes after the call
    /// timed out leaves to give back.
    fn call_left<M: Method>(
        &self,
        req: &M::Request,
        opts: CallOptions,
        left: impl FnOnce(&M::Response) -> Leftover + Send + 'static,
    ) -> Result<M::Response, CallError> {
        self.inner
            .call_salvaged::<M>(req, opts, move || salvage::<M>(left))
    }

    /// Starts a blob of `len` bytes (zeroed for a large blob; whatever the
    /// author pool held before for a small one: write every byte). Nothing
    /// else can write it; [`BlobWriter::seal`] makes it immutable.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let mut w = client.create(4)?;
    /// w.write_at(0, b"data");
    /// let blob = w.seal()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create(&self, len: usize) -> Result<BlobWriter, BlobError> {
        if len <= SMALL_BLOB_MAX
            && let Some(w) = self.create_small(len)?
        {
            return Ok(w);
        }
        self.create_large(len)
    }

    /// Starts a blob in its own memfd whatever its size (no copy at seal,
    /// but a memfd, a mapping and a descriptor per blob): [`create`](Self::create)
    /// chooses this above [`SMALL_BLOB_MAX`].
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let w = client.create_large(4096)?;
    /// assert!(w.is_large());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create_large(&self, len: usize) -> Result<BlobWriter, BlobError> {
        let info =
            self.call_left::<CreateLarge>(&(len as u64), self.default_opts(), created_leftover)?;
        // Abandoned on the server if mapping fails.
        let blob = Unsealed::new(self.owner(), info.id);
        let (seg, map) = self.inner.session.open_large(&info)?;
        Ok(BlobWriter {
            client: self.shared(),
            draft: Draft::large(blob, seg, map, len),
        })
    }

    /// A small blob in the author pool, or `None` when the pool is full or
    /// refused (the caller makes a large blob instead).
    fn create_small(&self, len: usize) -> Result<Option<BlobWriter>, BlobError> {
        let session = &self.inner.session;
        loop {
            match session.author_reserve(len) {
                AuthorSpace::Reserved { map, offset } => {
                    return Ok(Some(BlobWriter {
                        client: self.shared(),
                        draft: Draft::small(self.owner(), map, offset, len),
                    }));
                }
                AuthorSpace::None => return Ok(None),
                AuthorSpace::Unasked => {
                    match self.call_left::<AuthorPool>(&(), self.default_opts(), author_leftover) {
                        Ok(info) => session.author_install(info)?,
                        Err(CallError::QuotaExceeded(_)) => session.author_refused(),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }

    /// Takes a lease on the blob `h` names and maps it (its segment's
    /// descriptor comes once per pool segment or large blob).
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// # let handle = *client.create(1)?.seal()?.handle();
    /// let bytes = client.get(&handle)?;
    /// println!("{} bytes", bytes.len());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self, h: &BlobHandle) -> Result<BlobRef, BlobError> {
        let mapped = self.inner.session.mapped(h.segment);
        let info = self.call_left::<Acquire>(
            &(*h, mapped.is_none()),
            self.default_opts(),
            acquired_leftover(h.id),
        )?;
        let lease = Lease::new(self.owner(), *h);
        let seg = match mapped {
            Some(m) => m,
            None => self.map(h.segment, info.fd_sent.then_some(info))?,
        };
        lease.into_ref(seg)
    }

    /// Turns a handle that already carries a lease for this client (a result
    /// blob a handler returned) into a [`BlobRef`], without another lease.
    ///
    /// ```no_run
    /// use cradle_client::BlobHandle;
    /// # let client = cradle_client::Client::connect_default()?;
    /// # let leased: BlobHandle = *client.create(1)?.seal()?.handle();
    /// // `leased` came back from a method whose handler leased it to us.
    /// let bytes = client.adopt(&leased)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn adopt(&self, h: &BlobHandle) -> Result<BlobRef, BlobError> {
        let lease = Lease::new(self.owner(), *h);
        let seg = match self.inner.session.mapped(h.segment) {
            Some(m) => m,
            None => self.map(h.segment, None)?,
        };
        lease.into_ref(seg)
    }

    /// Maps `segment`: with the descriptor sent before `sent`'s answer, or
    /// asked for now.
    fn map(
        &self,
        segment: u64,
        sent: Option<ipc_rpc::blob::SegmentInfo>,
    ) -> Result<Arc<SegMap>, BlobError> {
        let info = match sent {
            Some(info) => info,
            None => {
                self.call_left::<MapSegment>(&segment, self.default_opts(), segment_leftover)?
            }
        };
        self.inner.session.install(segment, info)
    }

    /// The reference for a cache hit (leased to us by the server).
    fn hit_to_ref(&self, hit: Hit) -> Result<BlobRef, BlobError> {
        let lease = Lease::new(self.owner(), hit.handle);
        let seg = match self.inner.session.mapped(hit.handle.segment) {
            Some(m) => m,
            None => self.map(
                hit.handle.segment,
                hit.segment.fd_sent.then_some(hit.segment),
            )?,
        };
        lease.into_ref(seg)
    }

    /// The BLAKE3-256 digest of the blob `h` names, computed once by the
    /// server (on its offload pool) and remembered: the content identity
    /// memoized calls key on.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let blob = client.create(0)?.seal()?;
    /// let d = client.digest(blob.handle())?;
    /// assert_eq!(d.len(), 32);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn digest(&self, h: &BlobHandle) -> Result<[u8; 32], CallError> {
        self.call_opts::<ipc_rpc::memo::BlobDigest>(h, slow_call(self.default_timeout()))
    }

    /// Sends every queued release now and waits until the server has
    /// processed them.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// # let handle = *client.create(1)?.seal()?.handle();
    /// drop(client.get(&handle)?);
    /// client.flush()?; // the server has the lease back now
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush(&self) -> Result<(), CallError> {
        let batch = self.inner.session.take_releases();
        if batch.leases.is_empty() && batch.aborted.is_empty() {
            return Ok(());
        }
        self.call::<Release>(&batch).map(|_| ())
    }

    /// The shared memory cache.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let stats = client.cache().stats()?;
    /// println!("{} entries", stats.cache_entries);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cache(&self) -> Cache<'_> {
        Cache { client: self }
    }

    /// A new handle on the same session, for values that outlive a borrow.
    fn shared(&self) -> Client {
        Client {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// The server's memory cache, through one client: see [`Client::cache`].
///
/// ```no_run
/// # let client = cradle_client::Client::connect_default()?;
/// let mut w = client.create(2)?;
/// w.write_at(0, b"hi");
/// let blob = w.seal()?;
/// let cache = client.cache();
/// cache.put("greeting", &blob)?;
/// assert_eq!(&cache.get("greeting")?.unwrap()[..], b"hi");
/// assert!(cache.remove("greeting")?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Cache<'c> {
    client: &'c Client,
}

impl Cache<'_> {
    fn retry_full(&self, put: impl Fn() -> Result<bool, CallError>) -> Result<bool, CallError> {
        let r = put();
        if retry_after_flush(&r, self.client.inner.session.has_queued_releases()) {
            self.client.flush()?;
            return put();
        }
        r
    }

    /// Stores `blob` under `key`, replacing what was there (its readers keep
    /// it). Fails with `CacheFull` if nothing unheld can be evicted. The
    /// server also writes it to its disk tier, off the call path.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// # let blob = client.create(0)?.seal()?;
    /// client.cache().put("k", &blob)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put(&self, key: &str, blob: &Blob) -> Result<(), CallError> {
        let req = put_request(key, blob, false);
        self.retry_full(|| self.client.call::<CachePut>(&req))
            .map(|_| ())
    }

    /// [`put`](Self::put), answered only once the entry is durable in the
    /// disk tier (data `fdatasync`ed, directory `fsync`ed): it survives a
    /// crash of the server or of the machine. With `if_absent`, an existing
    /// key is left alone (`Ok(false)`). Fails if the server has no disk
    /// cache.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// # let blob = client.create(0)?.seal()?;
    /// let stored = client.cache().put_durable("k", &blob, true)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_durable(&self, key: &str, blob: &Blob, if_absent: bool) -> Result<bool, CallError> {
        // Writing hundreds of MiB and syncing them takes a while.
        let opts = slow_call(self.client.default_timeout());
        let req = put_request(key, blob, if_absent);
        self.retry_full(|| self.client.call_opts::<CachePutDurable>(&req, opts))
    }

    /// Stores `blob` under `key` unless the key exists; whether it stored.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// # let blob = client.create(0)?.seal()?;
    /// if !client.cache().put_if_absent("k", &blob)? {
    ///     println!("someone was first");
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_if_absent(&self, key: &str, blob: &Blob) -> Result<bool, CallError> {
        let req = put_request(key, blob, true);
        self.retry_full(|| self.client.call::<CachePut>(&req))
    }

    /// The blob under `key`, leased and mapped; `None` on a miss. A key
    /// only in the disk tier is loaded back into memory first (its checksum
    /// verified: a damaged entry is a miss).
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// match client.cache().get("k")? {
    ///     Some(blob) => println!("{} bytes", blob.len()),
    ///     None => println!("miss"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self, key: &str) -> Result<Option<BlobRef>, BlobError> {
        let c = self.client;
        let found = c.call_left::<CacheGet>(&key.to_owned(), c.default_opts(), lookup_leftover)?;
        let hit = match found {
            Lookup::Hit(hit) => hit,
            Lookup::Miss => return Ok(None),
            Lookup::OnDisk => {
                let opts = slow_call(self.client.default_timeout());
                match c.call_left::<CacheLoad>(&key.to_owned(), opts, loaded_leftover)? {
                    Some(hit) => hit,
                    None => return Ok(None),
                }
            }
        };
        self.client.hit_to_ref(hit).map(Some)
    }

    /// The blob under `key`, computed by `compute` if no process has put
    /// it yet, and computed **once** across processes: the server gives
    /// one caller at a time the claim on the key; the others wait in the
    /// server until it puts the key (they receive its blob), or until it
    /// gives up (its `compute` failed), dies, or holds the claim longer
    /// than `claim` — then the next one computes. The blob `compute`
    /// returns is put under `key` and answered.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let thumb = client.cache().get_or_compute("thumbs/cat.png", Duration::from_secs(60), || {
    ///     let mut w = client.create(3)?;
    ///     w.write_at(0, b"png");
    ///     w.seal()
    /// })?;
    /// assert_eq!(&thumb[..], b"png");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_or_compute<E>(
        &self,
        key: &str,
        claim: std::time::Duration,
        compute: impl FnOnce() -> Result<Blob, E>,
    ) -> Result<BlobRef, ComputeError<E>> {
        let c = self.client;
        let timeout = c.default_timeout();
        let deadline = std::time::Instant::now() + timeout;
        let req = claim_request(key, claim, timeout);
        let mut compute = Some(compute);
        // Held until this returns: no other call of this client asks for
        // the key meanwhile (`turns.rs`).
        let Some(_turn) = c.inner.turns.take(key, deadline) else {
            return Err(CallError::Timeout(timeout).into());
        };
        loop {
            let answer = c
                .inner
                .call_salvaged::<CacheClaim>(&req, c.default_opts(), || claim_salvage(key))?;
            match answer {
                Claim::Hit(hit) => return Ok(c.hit_to_ref(hit)?),
                Claim::OnDisk => {
                    if let Some(b) = self.get(key)? {
                        return Ok(b);
                    }
                }
                Claim::Claimed => {
                    let Some(f) = compute.take() else {
                        // Claimed twice (see `computed_but_gone`).
                        let _ = c.call::<CacheUnclaim>(&key.to_owned());
                        return Err(computed_but_gone(key).into());
                    };
                    match f() {
                        Ok(blob) => {
                            if let Err(e) = self.put(key, &blob) {
                                let _ = c.call::<CacheUnclaim>(&key.to_owned());
                                return Err(e.into());
                            }
                            return Ok(c.get(blob.handle())?);
                        }
                        Err(e) => {
                            let _ = c.call::<CacheUnclaim>(&key.to_owned());
                            return Err(ComputeError::Compute(e));
                        }
                    }
                }
                Claim::TimedOut => {
                    if std::time::Instant::now() >= deadline {
                        return Err(CallError::Timeout(std::time::Duration::ZERO).into());
                    }
                }
            }
        }
    }

    /// Removes `key` from memory and disk; whether it was in either.
    /// Readers keep their blobs.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let was_there = client.cache().remove("k")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remove(&self, key: &str) -> Result<bool, CallError> {
        self.client.call::<CacheRemove>(&key.to_owned())
    }

    /// Blob store and cache figures.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let s = client.cache().stats()?;
    /// println!("{} leases, {} of {} bytes cached", s.leases, s.cache_bytes, s.cache_budget);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Result<BlobStats, CallError> {
        Ok(self.client.call::<Stats>(&())?.blobs)
    }
}

/// A blob being written: a window of `len` bytes that only this process
/// (and the server, which never writes it) can write. No `&mut [u8]` is
/// handed out; write with [`write_at`](Self::write_at) or
/// [`write_from_fd`](Self::write_from_fd), then [`seal`](Self::seal).
/// Dropping it unsealed abandons the blob.
///
/// ```no_run
/// # let client = cradle_client::Client::connect_default()?;
/// let file = std::fs::File::open("/etc/hostname")?;
/// let len = file.metadata()?.len() as usize;
/// let mut w = client.create(len)?;
/// let mut at = 0;
/// while at < len {
///     let n = w.write_from_fd(std::os::fd::AsFd::as_fd(&file), at, len - at)?;
///     if n == 0 { break; }
///     at += n;
/// }
/// let blob = w.seal()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BlobWriter {
    client: Client,
    draft: Draft,
}

impl fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.draft.debug("BlobWriter", f)
    }
}

impl BlobWriter {
    /// The blob's length.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// assert_eq!(client.create(9)?.len(), 9);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> usize {
        self.draft.len()
    }

    /// Whether the blob is empty.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// assert!(client.create(0)?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.draft.len() == 0
    }

    /// Whether it is a large blob (its own memfd) rather than a small one.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// assert!(client.create(1 << 20)?.is_large());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
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
    /// # let client = cradle_client::Client::connect_default()?;
    /// let mut w = client.create(6)?;
    /// w.write_at(0, b"abc");
    /// w.write_at(3, b"def");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_at(&mut self, at: usize, bytes: &[u8]) {
        self.draft.write_at(at, bytes)
    }

    /// One `read(2)` from `fd` into the blob at `at`, at most `max` bytes;
    /// returns how many were read (0 at end of file). The kernel writes
    /// straight into the shared memory: no intermediate buffer.
    ///
    /// # Panics
    ///
    /// If `at + max` exceeds the blob's length.
    ///
    /// ```no_run
    /// use std::os::fd::AsFd;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let f = std::fs::File::open("/etc/hostname")?;
    /// let mut w = client.create(4)?;
    /// let n = w.write_from_fd(f.as_fd(), 0, 4)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_from_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        at: usize,
        max: usize,
    ) -> io::Result<usize> {
        self.draft.write_from_fd(fd, at, max)
    }

    /// The first byte of the window, for writing in place through a raw
    /// pointer (a binding that hands the window to another language's
    /// buffer protocol, for instance). The pointer is valid for
    /// [`len`](Self::len) bytes until the writer is sealed or dropped;
    /// writing through it is `unsafe` and the caller's responsibility. Only
    /// this process (and the server, which never writes it) maps the window
    /// writable.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let mut w = client.create(4)?;
    /// let p = w.as_mut_ptr();
    /// // SAFETY: `p` is valid for `w.len()` bytes until `seal`; nothing else
    /// // writes them.
    /// unsafe { std::ptr::write_bytes(p, 0xAB, w.len()) };
    /// let blob = w.seal()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.draft.as_mut_ptr()
    }

    /// The descriptor of a large blob's memfd (for inspection), `None` for a
    /// small blob.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let w = client.create_large(4096)?;
    /// assert!(w.large_fd().is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn large_fd(&self) -> Option<BorrowedFd<'_>> {
        self.draft.large_fd()
    }

    /// Seals the blob: from now on no process can change its bytes. A small
    /// blob is copied once into a server pool; a large one is unmapped here
    /// and sealed `F_SEAL_WRITE` by the server. The returned [`Blob`] holds
    /// the author's lease. On failure the blob is abandoned.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let mut w = client.create(1)?;
    /// w.write_at(0, b"x");
    /// let blob = w.seal()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn seal(self) -> Result<Blob, BlobError> {
        let Self { client, draft } = self;
        let handle = match draft.into_sealing() {
            Sealing::Small(reserved) => {
                let req = Sealing::small_request(&reserved);
                let r = client.call_left::<SealSmall>(&req, client.default_opts(), sealed_leftover);
                // Copied (or refused): the range is free again.
                drop(reserved);
                r?
            }
            Sealing::Large(blob) => {
                let opts = client.default_opts();
                let h = client.call_left::<SealLarge>(&blob.id(), opts, sealed_leftover)?;
                blob.disarm();
                h
            }
        };
        Ok(Lease::new(client.owner(), handle).into_blob())
    }
}
