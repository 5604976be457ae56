//! Blob values, whichever client made them (docs/design.md §8): a sealed
//! [`Blob`] its author holds, a mapped [`BlobRef`] a reader holds, and the
//! window a blob is written through before it is sealed.
//!
//! ```no_run
//! use cradle_client::Client;
//!
//! let client = Client::connect_default()?;
//! let mut w = client.create(5)?;
//! w.write_at(0, b"image");
//! let blob = w.seal()?; // immutable from here on, kernel-enforced
//! client.cache().put("frame/1", &blob)?;
//! let r = client.cache().get("frame/1")?.expect("just put");
//! assert_eq!(&r[..], b"image"); // zero-copy: the server's sealed memory
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! * `create` gives a writer: a window into memory only this process (and
//!   the server) can write. Small blobs are written in the session's author
//!   pool (created on first use, pre-faulted, reused); large ones in their
//!   own memfd.
//! * Sealing makes the bytes immutable and gives a [`Blob`]: the author's
//!   lease, with the [`BlobHandle`] to pass to others.
//! * `get` takes a lease on a handle and maps its segment (once per
//!   segment): a [`BlobRef`] derefs to `&[u8]`.
//! * Dropping a `Blob` or `BlobRef` gives its lease back through the client
//!   that made it. Releases are batched; `flush` sends them now.

use crate::error::BlobError;
use crate::session::{Leftover, Owner, SegMap, Session, release};
use ipc_core::shm::{Mapping, Segment};
use ipc_rpc::CallError;
use ipc_rpc::blob::{BlobHandle, DATA_OFFSET, Hit, LargeInfo, Lookup, PutRequest, SegmentInfo};
use std::fmt;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

/// Blobs up to this size are written in the author pool and copied once at
/// seal into a server pool; larger ones get their own memfd. Measured in
/// `docs/benchmarks.md` (the copy at seal against a memfd's set-up cost).
///
/// ```
/// assert_eq!(cradle_client::SMALL_BLOB_MAX, 256 << 10);
/// ```
pub const SMALL_BLOB_MAX: usize = 256 << 10;

/// A lease this client holds on a sealed blob: given back when dropped.
pub(crate) struct Lease {
    owner: Arc<dyn Owner>,
    handle: BlobHandle,
}

impl Lease {
    /// Takes charge of a lease the server granted on `handle`.
    pub(crate) fn new(owner: Arc<dyn Owner>, handle: BlobHandle) -> Self {
        Self { owner, handle }
    }

    /// The reference for this lease on `seg`, after checking that the
    /// handle lies inside it (the lease is given back if not).
    pub(crate) fn into_ref(self, seg: Arc<SegMap>) -> Result<BlobRef, BlobError> {
        Session::check_handle(&self.handle, &seg)?;
        Ok(BlobRef { lease: self, seg })
    }

    /// The author's blob.
    pub(crate) fn into_blob(self) -> Blob {
        Blob { lease: self }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        release(&*self.owner, Some(self.handle.id), None, false);
    }
}

/// A large blob being written, abandoned on the server if dropped unsealed.
pub(crate) struct Unsealed {
    owner: Arc<dyn Owner>,
    id: u64,
    armed: bool,
}

impl Unsealed {
    pub(crate) fn new(owner: Arc<dyn Owner>, id: u64) -> Self {
        Self {
            owner,
            id,
            armed: true,
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The blob is sealed: nothing to abandon.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Unsealed {
    fn drop(&mut self) {
        if self.armed {
            release(&*self.owner, None, Some(self.id), true);
        }
    }
}

/// A reservation in the author pool, freed when dropped (after the seal
/// has copied it, or when the writer is abandoned).
pub(crate) struct Reserved {
    owner: Arc<dyn Owner>,
    map: Arc<SegMap>,
    offset: u64,
    len: usize,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.owner.session().author_free(self.offset, self.len);
    }
}

/// The window of a blob being written.
pub(crate) enum Window {
    /// In the author pool.
    Small(Reserved),
    /// Its own memfd, mapped read-write.
    Large {
        blob: Unsealed,
        seg: Segment,
        map: Mapping,
    },
}

/// Allocates, zeroes and maps every page of a large blob's window for
/// writing, in one `madvise(MADV_POPULATE_WRITE)` (Linux 5.14+), so that the
/// author's copy into it runs at memcpy speed instead of taking a fault per
/// 4 KiB page. `MAP_POPULATE` is no substitute on a shared mapping: it faults
/// the pages in for reading, and every first write faults again (measured in
/// docs/benchmarks.md §9: the copy at about half memcpy speed). Any failure
/// (an older kernel's `EINVAL`, a signal's `EINTR`, no memory) is left to
/// the writes, which fault the pages in one by one as before.
fn populate_for_write(map: &Mapping) {
    let Some(p) = map.as_mut_ptr() else { return };
    // SAFETY: `p..p + map.len()` is exactly the live read-write mapping
    // `map` owns; the advice allocates and maps its pages and changes no
    // byte of it (a memfd's new pages are zero, as the writer promises).
    unsafe {
        libc::madvise(p.cast(), map.len(), libc::MADV_POPULATE_WRITE);
    }
}

/// What sealing a draft sends.
pub(crate) enum Sealing {
    /// `SealSmall(offset, len)`; the reservation is freed once answered.
    Small(Reserved),
    /// `SealLarge(id)`, our mapping gone; abandoned if the seal fails.
    Large(Unsealed),
}

/// A blob being written, shared by both clients' writers.
pub(crate) struct Draft {
    len: usize,
    window: Window,
}

impl Draft {
    /// A small blob at `offset` of the author pool `map`.
    pub(crate) fn small(owner: Arc<dyn Owner>, map: Arc<SegMap>, offset: u64, len: usize) -> Self {
        Self {
            len,
            window: Window::Small(Reserved {
                owner,
                map,
                offset,
                len,
            }),
        }
    }

    /// A large blob, mapped read-write; its pages are faulted in for
    /// writing here ([`populate_for_write`]).
    pub(crate) fn large(blob: Unsealed, seg: Segment, map: Mapping, len: usize) -> Self {
        populate_for_write(&map);
        Self {
            len,
            window: Window::Large { blob, seg, map },
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_large(&self) -> bool {
        matches!(self.window, Window::Large { .. })
    }

    /// The first byte of the window.
    fn base(&self) -> *mut u8 {
        let (map, off) = match &self.window {
            Window::Small(r) => (&r.map.map, r.offset as usize),
            Window::Large { map, .. } => (map, DATA_OFFSET as usize),
        };
        // The mapping is read-write (opened so); `off + len` is inside it
        // (the server's sizes, checked against fstat, or our allocator).
        map.as_mut_ptr()
            .expect("writer mappings are read-write")
            .wrapping_add(off)
    }

    fn check_range(&self, at: usize, n: usize) {
        assert!(
            at.checked_add(n).is_some_and(|e| e <= self.len),
            "BlobWriter: bytes {at}..{} outside a blob of {} bytes",
            at.saturating_add(n),
            self.len
        );
    }

    pub(crate) fn write_at(&mut self, at: usize, bytes: &[u8]) {
        self.check_range(at, bytes.len());
        // SAFETY: the range is inside the window (checked above), which the
        // live mapping in `self.window` backs; no Rust reference to it exists,
        // and `&mut self` keeps other writes through this draft out. `bytes`
        // is a Rust slice, so it cannot be this writable window (no slice of
        // it is ever handed out). A large copy is shared with the helper
        // thread (`copy`), which is done with both ranges when it returns.
        unsafe { crate::copy::copy(bytes, self.base().add(at)) }
    }

    pub(crate) fn write_from_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        at: usize,
        max: usize,
    ) -> io::Result<usize> {
        self.check_range(at, max);
        loop {
            // SAFETY: `read` writes at most `max` bytes at `base + at`, inside
            // the window (checked above) of the live mapping; no Rust
            // reference to those bytes exists.
            let n = unsafe {
                libc::read(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    self.base().add(at).cast(),
                    max,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The window's first byte (see `BlobWriter::as_mut_ptr`).
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.base()
    }

    pub(crate) fn large_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.window {
            Window::Large { seg, .. } => Some(seg.as_fd()),
            Window::Small(_) => None,
        }
    }

    /// Ends the writing: a large blob's mapping and read-write descriptor
    /// go now (the kernel grants `F_SEAL_WRITE` only once no writable
    /// mapping is left).
    pub(crate) fn into_sealing(self) -> Sealing {
        match self.window {
            Window::Small(r) => Sealing::Small(r),
            Window::Large { blob, seg, map } => {
                let (ptr, len) = map.into_raw();
                // SAFETY: the mapping was given up just now; no reference to
                // its bytes outlives the draft (writes go through `&mut self`
                // or raw pointers valid until the seal, `as_mut_ptr`'s
                // contract).
                unsafe { crate::copy::unmap(ptr, len) };
                drop(seg);
                Sealing::Large(blob)
            }
        }
    }
}

impl Sealing {
    /// The `SealSmall` request, for a small blob.
    pub(crate) fn small_request(r: &Reserved) -> (u64, u64) {
        (r.offset, r.len as u64)
    }
}

impl Draft {
    /// `Debug` for the writer type `name` that wraps this draft.
    pub(crate) fn debug(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("len", &self.len)
            .field("large", &self.is_large())
            .finish()
    }
}

/// A sealed blob its author holds: the author's lease and the handle to
/// share. Read it with `get(blob.handle())` on either client. Dropping it
/// gives the lease back (the cache, and readers, keep their own).
///
/// ```no_run
/// use cradle_client::Client;
///
/// let client = Client::connect_default()?;
/// let mut w = client.create(3)?;
/// w.write_at(0, b"abc");
/// let blob = w.seal()?;
/// let bytes = client.get(blob.handle())?;
/// assert_eq!(&bytes[..], b"abc");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Blob {
    lease: Lease,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Blob").field(&self.lease.handle).finish()
    }
}

impl Blob {
    /// The handle: plain data, to pass to other processes (in a request, a
    /// file, the cache).
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let blob = client.create(0)?.seal()?;
    /// println!("{}", blob.handle());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn handle(&self) -> &BlobHandle {
        &self.lease.handle
    }

    /// Drops the blob and gives the author's lease back now: the releases
    /// this client has queued (this one included) are sent at once, without
    /// waiting for the answer, instead of with the next full batch.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let blob = client.create(1)?.seal()?;
    /// client.cache().put("k", &blob)?;
    /// blob.release_now(); // the cache holds it; the author no longer does
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release_now(self) {
        let owner = Arc::clone(&self.lease.owner);
        drop(self);
        release(&*owner, None, None, true);
    }

    /// The blob's length.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let blob = client.create(10)?.seal()?;
    /// assert_eq!(blob.len(), 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> usize {
        self.lease.handle.len as usize
    }

    /// Whether the blob is empty.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// assert!(client.create(0)?.seal()?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.lease.handle.len == 0
    }
}

/// A lease on a sealed blob, mapped: derefs to its bytes. Sound as `&[u8]`
/// because no process can write them while the lease lives (the kernel's
/// seals; the server never reuses a leased range). Dropping it gives the
/// lease back (batched; `flush` sends the batch now).
///
/// ```no_run
/// use cradle_client::Client;
///
/// let client = Client::connect_default()?;
/// if let Some(frame) = client.cache().get("frame/1")? {
///     println!("{} bytes, first {:?}", frame.len(), frame.first());
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BlobRef {
    lease: Lease,
    seg: Arc<SegMap>,
}

impl fmt::Debug for BlobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BlobRef").field(&self.lease.handle).finish()
    }
}

impl BlobRef {
    /// The handle.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// # let blob = client.create(1)?.seal()?;
    /// let r = client.get(blob.handle())?;
    /// assert_eq!(r.handle(), blob.handle());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn handle(&self) -> &BlobHandle {
        &self.lease.handle
    }

    /// The descriptor of the segment holding the blob (read-only, sealed).
    ///
    /// ```no_run
    /// use std::os::fd::AsRawFd;
    /// # let client = cradle_client::Client::connect_default()?;
    /// # let blob = client.create(1)?.seal()?;
    /// let r = client.get(blob.handle())?;
    /// println!("segment fd {}", r.segment_fd().as_raw_fd());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn segment_fd(&self) -> BorrowedFd<'_> {
        self.seg.seg.as_fd()
    }
}

impl BlobRef {
    /// Drops the reference and gives its lease back now: the releases this
    /// client has queued (this one included) are sent at once, without
    /// waiting for the answer, instead of with the next full batch. For
    /// bindings whose readers drop references one at a time and expect the
    /// server to see each lease end.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// # let blob = client.create(1)?.seal()?;
    /// let r = client.get(blob.handle())?;
    /// r.release_now(); // the server learns it without a flush
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release_now(self) {
        let owner = Arc::clone(&self.lease.owner);
        drop(self);
        release(&*owner, None, None, true);
    }
}

impl Deref for BlobRef {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let h = &self.lease.handle;
        // SAFETY: `offset + len` lies inside the mapping (checked when the
        // reference was made; `self.seg` keeps it mapped). The bytes cannot
        // change while our lease lives: the segment is sealed FUTURE_WRITE
        // (pool) or WRITE (large blob) with SEAL, checked at open, and the
        // server never writes a pool range that a live blob occupies.
        unsafe {
            std::slice::from_raw_parts(self.seg.map.as_ptr().add(h.offset as usize), h.len as usize)
        }
    }
}

impl AsRef<[u8]> for BlobRef {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// The request of a cache put.
pub(crate) fn put_request(key: &str, blob: &Blob, if_absent: bool) -> PutRequest {
    PutRequest {
        key: key.to_owned(),
        handle: *blob.handle(),
        if_absent,
    }
}

/// Whether a failed put is worth one retry after sending queued releases:
/// the cache was full while this client still had releases queued (leases
/// it dropped but did not send yet, which keep entries held).
pub(crate) fn retry_after_flush(r: &Result<bool, CallError>, queued: bool) -> bool {
    queued
        && matches!(
            r,
            Err(CallError::Remote {
                code: ipc_rpc::ErrorCode::CacheFull,
                ..
            })
        )
}

// ---- what a response nobody collects leaves to give back ----------------

/// What an unclaimed cache hit leaves: its lease and maybe a descriptor.
pub(crate) fn hit_leftover(hit: &Hit) -> Leftover {
    Leftover {
        lease: Some(hit.handle.id),
        grant: hit.segment.fd_sent.then_some(hit.segment.segment),
        ..Leftover::default()
    }
}

/// What an unclaimed segment answer leaves: maybe a descriptor.
pub(crate) fn segment_leftover(info: &SegmentInfo) -> Leftover {
    Leftover {
        grant: info.fd_sent.then_some(info.segment),
        ..Leftover::default()
    }
}

/// What an unclaimed seal leaves: the author's lease.
pub(crate) fn sealed_leftover(h: &BlobHandle) -> Leftover {
    Leftover {
        lease: Some(h.id),
        ..Leftover::default()
    }
}

/// What an unclaimed new large blob leaves: the blob, and its descriptor.
pub(crate) fn created_leftover(info: &LargeInfo) -> Leftover {
    Leftover {
        aborted: Some(info.id),
        grant: Some(info.segment.segment),
        ..Leftover::default()
    }
}

/// What an unclaimed author pool leaves: its descriptor.
pub(crate) fn author_leftover(info: &SegmentInfo) -> Leftover {
    Leftover {
        grant: Some(info.segment),
        ..Leftover::default()
    }
}

/// What an unclaimed `Acquire` of blob `id` leaves: its lease, and maybe a
/// descriptor.
pub(crate) fn acquired_leftover(id: u64) -> impl FnOnce(&SegmentInfo) -> Leftover + Send + 'static {
    move |info| Leftover {
        lease: Some(id),
        ..segment_leftover(info)
    }
}

/// What an unclaimed cache lookup leaves.
pub(crate) fn lookup_leftover(l: &Lookup) -> Leftover {
    match l {
        Lookup::Hit(hit) => hit_leftover(hit),
        Lookup::OnDisk | Lookup::Miss => Leftover::default(),
    }
}

/// What an unclaimed load from the disk tier leaves.
pub(crate) fn loaded_leftover(h: &Option<Hit>) -> Leftover {
    h.as_ref().map(hit_leftover).unwrap_or_default()
}

/// The claim of `key` for `claim` by `get_or_compute`, whose calls time
/// out after `timeout`: the server answers a wait before the call's own
/// deadline.
pub(crate) fn claim_request(
    key: &str,
    claim: std::time::Duration,
    timeout: std::time::Duration,
) -> ipc_rpc::memo::ClaimRequest {
    let wait = timeout
        .saturating_sub(std::time::Duration::from_secs(1))
        .max(timeout / 2);
    ipc_rpc::memo::ClaimRequest {
        key: key.to_owned(),
        claim_ms: u32::try_from(claim.as_millis()).unwrap_or(u32::MAX),
        wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
    }
}

/// `get_or_compute`'s error when `key` is claimed twice: the first
/// computation's put was lost (evicted at once); compute cannot run again.
pub(crate) fn computed_but_gone(key: &str) -> CallError {
    CallError::Remote {
        code: ipc_rpc::ErrorCode::CacheFull,
        message: format!("{key} was computed but is gone from the cache"),
    }
}

/// The [`Salvage`](crate::session::Salvage) of a claim on `key` whose
/// answer nobody collects (the call timed out, its future was dropped): a
/// hit's lease is given back, and a claim granted to nobody is given up
/// at once, so that the next waiter gets it now rather than at the claim's
/// deadline.
pub(crate) fn claim_salvage(key: &str) -> crate::session::Salvage {
    use ipc_rpc::Method;
    use ipc_rpc::memo::{CacheClaim, Claim};
    let key = key.to_owned();
    Box::new(move |owner, meta, bytes| {
        if meta.kind != ipc_rpc::wire::RESPONSE || meta.tag != CacheClaim::ID {
            return;
        }
        match <Claim as ipc_rpc::Wire>::decode(bytes) {
            Ok(Claim::Claimed) => owner.send_unclaim(&key),
            Ok(Claim::Hit(hit)) => {
                let left = hit_leftover(&hit);
                if let Some(segment) = left.grant {
                    // Closed here: nobody will map it for this call.
                    let _ = owner.session().take_grant(segment);
                }
                crate::session::release(owner, left.lease, left.aborted, true);
            }
            Ok(Claim::OnDisk | Claim::TimedOut) | Err(_) => {}
        }
    })
}
