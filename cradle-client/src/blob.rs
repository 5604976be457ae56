//! Blobs by handle and the memory cache, client side (docs/design.md §8).
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
//! * [`Client::create`] gives a [`BlobWriter`]: a window into memory only
//!   this process (and the server) can write. Small blobs are written in the
//!   session's author pool (created on first use, pre-faulted, reused); large
//!   ones in their own memfd.
//! * [`BlobWriter::seal`] makes the bytes immutable and gives a [`Blob`]: the
//!   author's lease, with the [`BlobHandle`] to pass to others.
//! * [`Client::get`] takes a lease on a handle and maps its segment (once per
//!   segment): a [`BlobRef`] derefs to `&[u8]`.
//! * Dropping a `Blob` or `BlobRef` gives its lease back. Releases are
//!   batched; [`Client::flush`] sends them now.

use crate::client::{Client, Link, lock};
use ipc_core::shm::{Access, Mapping, OpenExpect, RangeAlloc, Seals, Segment};
use ipc_rpc::CallError;
use ipc_rpc::blob::{
    AUTHOR_KIND, Acquire, AuthorPool, BLOB_LAYOUT_VERSION, BLOB_MAGIC, BlobHandle, BlobStats,
    CacheGet, CacheLoad, CachePut, CachePutDurable, CacheRemove, CreateLarge, DATA_OFFSET,
    FD_GRANT_MAGIC, FdGrant, LARGE_KIND, Lookup, MapSegment, POOL_ALIGN, POOL_KIND, PutRequest,
    Release, ReleaseBatch, SealLarge, SealSmall, SegmentInfo,
};
use ipc_rpc::builtin::Stats;
use ipc_rpc::handshake::{self, Goodbye};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Weak};

/// Blobs up to this size are written in the author pool and copied once at
/// seal into a server pool; larger ones get their own memfd. Measured in
/// `docs/benchmarks.md` (the copy at seal against a memfd's set-up cost).
pub const SMALL_BLOB_MAX: usize = 256 << 10;

/// Releases are sent once this many are waiting (or at [`Client::flush`]).
const RELEASE_BATCH: usize = 64;

/// A mapped segment: the descriptor and the mapping, kept together.
pub(crate) struct SegMap {
    seg: Segment,
    map: Mapping,
}

/// A segment this client has mapped: pools stay mapped; a large blob's
/// mapping goes with its last [`BlobRef`].
enum Slot {
    Pool(Arc<SegMap>),
    Large(Weak<SegMap>),
}

/// The session's author pool, mapped read-write and pre-faulted.
struct AuthorArea {
    map: Arc<SegMap>,
    alloc: RangeAlloc,
}

/// Blob state of one client.
#[derive(Default)]
pub(crate) struct BlobState {
    segments: std::sync::Mutex<HashMap<u64, Slot>>,
    /// `None`: not asked for yet; `Some(None)`: the server refused one.
    author: std::sync::Mutex<Option<Option<AuthorArea>>>,
    pending: std::sync::Mutex<ReleaseBatch>,
}

/// Descriptors that arrived on the control socket, by segment; shared with
/// the watcher, which reads the socket too.
#[derive(Default)]
pub(crate) struct Grants {
    fds: HashMap<u64, OwnedFd>,
}

/// What reading the control socket found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketState {
    /// Nothing more to read now.
    Quiet,
    /// A clean goodbye.
    Goodbye,
    /// End of stream, an error, or a message that is not ours.
    Dead,
}

/// Reads every message waiting on the control socket: descriptor grants go
/// into `grants`; returns what ended the read. Non-blocking.
pub(crate) fn drain_socket(sock: BorrowedFd<'_>, grants: &mut Grants) -> SocketState {
    loop {
        let mut buf = [0u8; size_of::<FdGrant>()];
        match handshake::recv_with_fds(sock, &mut buf) {
            Ok(None) => return SocketState::Dead,
            Ok(Some(mut fds)) => {
                let grant: FdGrant = bytemuck::pod_read_unaligned(&buf);
                if grant.magic == FD_GRANT_MAGIC && fds.len() == 1 {
                    if let Some(fd) = fds.pop() {
                        grants.fds.insert(grant.segment, fd);
                    }
                } else if bytemuck::pod_read_unaligned::<Goodbye>(&buf).magic
                    == handshake::GOODBYE_MAGIC
                {
                    return SocketState::Goodbye;
                } else {
                    return SocketState::Dead;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return SocketState::Quiet,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return SocketState::Dead,
        }
    }
}

impl Link {
    /// The descriptor the server sent for `segment` just before its answer.
    fn take_grant(&self, segment: u64) -> Result<OwnedFd, CallError> {
        let mut g = lock(&self.grants);
        if let Some(fd) = g.fds.remove(&segment) {
            return Ok(fd);
        }
        match drain_socket(self.socket.as_fd(), &mut g) {
            SocketState::Quiet => {}
            SocketState::Goodbye => self.mark_gone(true),
            SocketState::Dead => self.mark_gone(false),
        }
        g.fds.remove(&segment).ok_or_else(|| {
            CallError::Malformed(format!(
                "the server announced the descriptor of segment {segment} but did not send it"
            ))
        })
    }
}

fn protocol(what: &str, e: impl fmt::Display) -> CallError {
    CallError::Malformed(format!("{what}: {e}"))
}

/// Opens a segment descriptor the server sent, with every check: size,
/// seals, header.
fn open_segment(fd: OwnedFd, info: &SegmentInfo) -> Result<SegMap, CallError> {
    let len = usize::try_from(info.len).map_err(|e| protocol("segment length", e))?;
    let base = OpenExpect::exact(BLOB_MAGIC, BLOB_LAYOUT_VERSION, len).kind(info.kind);
    let expect = match info.kind {
        POOL_KIND => {
            base.only_seals(Seals::SHRINK | Seals::GROW | Seals::FUTURE_WRITE | Seals::SEAL)
        }
        LARGE_KIND => base.only_seals(Seals::SHRINK | Seals::GROW | Seals::WRITE | Seals::SEAL),
        AUTHOR_KIND => base
            .only_seals(Seals::SHRINK | Seals::GROW | Seals::SEAL)
            .access(Access::ReadWrite)
            .populate(true),
        k => return Err(protocol("segment", format!("unknown kind {k}"))),
    };
    let (seg, map) = Segment::open(fd, &expect)
        .map_err(|e| protocol(&format!("segment {}", info.segment), e))?;
    Ok(SegMap { seg, map })
}

impl Client {
    /// A new handle on the same session, for values that outlive a borrow.
    fn shared(&self) -> Client {
        Client {
            inner: Arc::clone(&self.inner),
        }
    }

    fn blobs(&self) -> &BlobState {
        &self.inner.blobs
    }

    /// Starts a blob of `len` bytes (zeroed for a large blob; whatever the
    /// author pool held before for a small one: write every byte). Nothing
    /// else can write it; [`BlobWriter::seal`] makes it immutable.
    pub fn create(&self, len: usize) -> Result<BlobWriter, CallError> {
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
    pub fn create_large(&self, len: usize) -> Result<BlobWriter, CallError> {
        let info = self.call::<CreateLarge>(&(len as u64))?;
        let fd = self.inner.link.take_grant(info.segment.segment);
        let map = fd.and_then(|fd| {
            let len = usize::try_from(info.segment.len).map_err(|e| protocol("length", e))?;
            // Populated: the author is about to write every page, and one
            // MAP_POPULATE costs far less than a fault per page.
            let expect = OpenExpect::exact(BLOB_MAGIC, BLOB_LAYOUT_VERSION, len)
                .kind(LARGE_KIND)
                .only_seals(Seals::SHRINK | Seals::GROW)
                .access(Access::ReadWrite)
                .populate(true);
            Segment::open(fd, &expect).map_err(|e| protocol("new blob", e))
        });
        match map {
            Ok((seg, map)) => Ok(BlobWriter {
                client: self.shared(),
                len,
                kind: Writing::Large {
                    id: info.id,
                    seg,
                    map,
                },
            }),
            Err(e) => {
                self.queue_release(None, Some(info.id));
                Err(e)
            }
        }
    }

    /// A small blob in the author pool, or `None` when the pool is full or
    /// refused (the caller makes a large blob instead).
    fn create_small(&self, len: usize) -> Result<Option<BlobWriter>, CallError> {
        let mut author = lock(&self.blobs().author);
        if author.is_none() {
            let info = match self.call::<AuthorPool>(&()) {
                Ok(info) => info,
                Err(CallError::QuotaExceeded(_)) => {
                    *author = Some(None);
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            let fd = self.inner.link.take_grant(info.segment)?;
            let map = open_segment(fd, &info)?;
            *author = Some(Some(AuthorArea {
                map: Arc::new(map),
                alloc: RangeAlloc::new(DATA_OFFSET, info.len, POOL_ALIGN),
            }));
        }
        let Some(Some(area)) = author.as_mut() else {
            return Ok(None);
        };
        let Some(offset) = area.alloc.alloc(len as u64) else {
            return Ok(None);
        };
        Ok(Some(BlobWriter {
            client: self.shared(),
            len,
            kind: Writing::Small {
                map: Arc::clone(&area.map),
                offset,
            },
        }))
    }

    /// Takes a lease on the blob `h` names and maps it (its segment's
    /// descriptor comes once per pool segment or large blob).
    pub fn get(&self, h: &BlobHandle) -> Result<BlobRef, CallError> {
        let mapped = self.mapped(h.segment);
        let info = self.call::<Acquire>(&(*h, mapped.is_none()))?;
        self.lease_to_ref(*h, info, mapped)
    }

    /// Turns a handle that already carries a lease for this client (a result
    /// blob a handler returned) into a [`BlobRef`], without another lease.
    pub fn adopt(&self, h: &BlobHandle) -> Result<BlobRef, CallError> {
        let mapped = self.mapped(h.segment);
        let info = SegmentInfo {
            segment: h.segment,
            len: 0,
            kind: 0,
            fd_sent: false,
        };
        self.lease_to_ref(*h, info, mapped)
    }

    /// Builds the reference for a lease we hold; gives the lease back if the
    /// segment cannot be mapped.
    fn lease_to_ref(
        &self,
        h: BlobHandle,
        info: SegmentInfo,
        mapped: Option<Arc<SegMap>>,
    ) -> Result<BlobRef, CallError> {
        let seg = match mapped {
            Some(m) => Ok(m),
            None => self.map_segment(h.segment, info),
        };
        let checked = seg.and_then(|seg| {
            let end = h.offset.checked_add(h.len);
            if h.offset < DATA_OFFSET || end.is_none_or(|e| e > seg.map.len() as u64) {
                return Err(protocol(
                    "blob handle",
                    format!("{h} lies outside its segment of {} bytes", seg.map.len()),
                ));
            }
            Ok(seg)
        });
        match checked {
            Ok(seg) => Ok(BlobRef {
                client: self.shared(),
                handle: h,
                seg,
            }),
            Err(e) => {
                self.queue_release(Some(h.id), None);
                Err(e)
            }
        }
    }

    /// The segment if this client has it mapped.
    fn mapped(&self, segment: u64) -> Option<Arc<SegMap>> {
        match lock(&self.blobs().segments).get(&segment)? {
            Slot::Pool(m) => Some(Arc::clone(m)),
            Slot::Large(w) => w.upgrade(),
        }
    }

    /// Maps `segment`: with the descriptor sent before `info`'s answer, or
    /// asked for now.
    fn map_segment(&self, segment: u64, info: SegmentInfo) -> Result<Arc<SegMap>, CallError> {
        let info = if info.fd_sent {
            info
        } else {
            self.call::<MapSegment>(&segment)?
        };
        if info.segment != segment || !matches!(info.kind, POOL_KIND | LARGE_KIND) {
            return Err(protocol(
                "segment",
                format!(
                    "asked for {segment}, got {} of kind {}",
                    info.segment, info.kind
                ),
            ));
        }
        let fd = self.inner.link.take_grant(segment)?;
        let seg = Arc::new(open_segment(fd, &info)?);
        let slot = if info.kind == POOL_KIND {
            Slot::Pool(Arc::clone(&seg))
        } else {
            Slot::Large(Arc::downgrade(&seg))
        };
        let mut table = lock(&self.blobs().segments);
        if table.len() > 64 {
            table.retain(|_, s| !matches!(s, Slot::Large(w) if w.strong_count() == 0));
        }
        table.insert(segment, slot);
        Ok(seg)
    }

    /// Queues a lease (or an unsealed blob) to give back; sends the batch
    /// when it is full.
    fn queue_release(&self, lease: Option<u64>, aborted: Option<u64>) {
        let batch = {
            let mut p = lock(&self.blobs().pending);
            p.leases.extend(lease);
            p.aborted.extend(aborted);
            // An abandoned large blob holds its whole memfd on the server:
            // give it back now rather than with the next batch.
            if p.leases.len() + p.aborted.len() < RELEASE_BATCH && aborted.is_none() {
                return;
            }
            std::mem::take(&mut *p)
        };
        // Fire and forget: the answer (a count) is discarded on arrival. If
        // the server is gone, so are the leases.
        let _ = self.send::<Release>(&batch);
    }

    fn has_queued_releases(&self) -> bool {
        let p = lock(&self.blobs().pending);
        !p.leases.is_empty() || !p.aborted.is_empty()
    }

    /// Sends every queued release now and waits until the server has
    /// processed them.
    pub fn flush(&self) -> Result<(), CallError> {
        let batch = std::mem::take(&mut *lock(&self.blobs().pending));
        if batch.leases.is_empty() && batch.aborted.is_empty() {
            return Ok(());
        }
        self.call::<Release>(&batch).map(|_| ())
    }

    /// The shared memory cache.
    pub fn cache(&self) -> Cache<'_> {
        Cache { client: self }
    }
}

/// The server's memory cache, through one client: see [`Client::cache`].
#[derive(Debug, Clone, Copy)]
pub struct Cache<'c> {
    client: &'c Client,
}

impl Cache<'_> {
    fn put_req(&self, key: &str, blob: &Blob, if_absent: bool) -> Result<bool, CallError> {
        let req = PutRequest {
            key: key.to_owned(),
            handle: blob.handle,
            if_absent,
        };
        self.retry_full(|| self.client.call::<CachePut>(&req))
    }

    /// Runs a put; if the cache is full while this client still has
    /// releases queued (leases it dropped but did not send yet, which keep
    /// entries held), sends them and tries once more.
    fn retry_full(&self, put: impl Fn() -> Result<bool, CallError>) -> Result<bool, CallError> {
        match put() {
            Err(CallError::Remote {
                code: ipc_rpc::ErrorCode::CacheFull,
                ..
            }) if self.client.has_queued_releases() => {
                self.client.flush()?;
                put()
            }
            r => r,
        }
    }

    /// Stores `blob` under `key`, replacing what was there (its readers keep
    /// it). Fails with `CacheFull` if nothing unheld can be evicted. The
    /// server also writes it to its disk tier, off the call path.
    pub fn put(&self, key: &str, blob: &Blob) -> Result<(), CallError> {
        self.put_req(key, blob, false).map(|_| ())
    }

    /// [`put`](Self::put), answered only once the entry is durable in the
    /// disk tier (data `fdatasync`ed, directory `fsync`ed): it survives a
    /// crash of the server or of the machine. With `if_absent`, an existing
    /// key is left alone (`Ok(false)`). Fails if the server has no disk
    /// cache.
    pub fn put_durable(&self, key: &str, blob: &Blob, if_absent: bool) -> Result<bool, CallError> {
        let opts = crate::CallOptions {
            // Writing hundreds of MiB and syncing them takes a while.
            timeout: self
                .client
                .default_timeout()
                .max(std::time::Duration::from_secs(600)),
            wait: ipc_core::doorbell::WaitMode::Sleep,
        };
        let req = PutRequest {
            key: key.to_owned(),
            handle: blob.handle,
            if_absent,
        };
        self.retry_full(|| self.client.call_opts::<CachePutDurable>(&req, opts))
    }

    /// Stores `blob` under `key` unless the key exists; whether it stored.
    pub fn put_if_absent(&self, key: &str, blob: &Blob) -> Result<bool, CallError> {
        self.put_req(key, blob, true)
    }

    /// The blob under `key`, leased and mapped; `None` on a miss. A key
    /// only in the disk tier is loaded back into memory first (its checksum
    /// verified: a damaged entry is a miss).
    pub fn get(&self, key: &str) -> Result<Option<BlobRef>, CallError> {
        let hit = match self.client.call::<CacheGet>(&key.to_owned())? {
            Lookup::Hit(hit) => hit,
            Lookup::Miss => return Ok(None),
            Lookup::OnDisk => {
                let opts = crate::CallOptions {
                    timeout: self
                        .client
                        .default_timeout()
                        .max(std::time::Duration::from_secs(600)),
                    wait: ipc_core::doorbell::WaitMode::Sleep,
                };
                match self.client.call_opts::<CacheLoad>(&key.to_owned(), opts)? {
                    Some(hit) => hit,
                    None => return Ok(None),
                }
            }
        };
        let mapped = self.client.mapped(hit.handle.segment);
        self.client
            .lease_to_ref(hit.handle, hit.segment, mapped)
            .map(Some)
    }

    /// Removes `key` from memory and disk; whether it was in either.
    /// Readers keep their blobs.
    pub fn remove(&self, key: &str) -> Result<bool, CallError> {
        self.client.call::<CacheRemove>(&key.to_owned())
    }

    /// Blob store and cache figures.
    pub fn stats(&self) -> Result<BlobStats, CallError> {
        Ok(self.client.call::<Stats>(&())?.blobs)
    }
}

enum Writing {
    Small { map: Arc<SegMap>, offset: u64 },
    Large { id: u64, seg: Segment, map: Mapping },
    Done,
}

/// A blob being written: a window of `len` bytes that only this process
/// (and the server, which never writes it) can write. No `&mut [u8]` is
/// handed out; write with [`write_at`](Self::write_at) or
/// [`write_from_fd`](Self::write_from_fd), then [`seal`](Self::seal).
/// Dropping it unsealed abandons the blob.
pub struct BlobWriter {
    client: Client,
    len: usize,
    kind: Writing,
}

impl fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Writing::Small { .. } => "small",
            Writing::Large { .. } => "large",
            Writing::Done => "sealed",
        };
        f.debug_struct("BlobWriter")
            .field("len", &self.len)
            .field("kind", &kind)
            .finish()
    }
}

impl BlobWriter {
    /// The blob's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether it is a large blob (its own memfd) rather than a small one.
    pub fn is_large(&self) -> bool {
        matches!(self.kind, Writing::Large { .. })
    }

    /// The first byte of the window.
    fn base(&self) -> *mut u8 {
        let (map, off) = match &self.kind {
            Writing::Small { map, offset } => (&map.map, *offset as usize),
            Writing::Large { map, .. } => (map, DATA_OFFSET as usize),
            Writing::Done => return std::ptr::null_mut(),
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

    /// Copies `bytes` into the blob at `at`.
    ///
    /// # Panics
    ///
    /// If `at + bytes.len()` exceeds the blob's length.
    pub fn write_at(&mut self, at: usize, bytes: &[u8]) {
        self.check_range(at, bytes.len());
        // SAFETY: the range is inside the window (checked above), which the
        // live mapping in `self.kind` backs; no Rust reference to it exists,
        // and `&mut self` keeps other writes through this writer out.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base().add(at), bytes.len());
        }
    }

    /// One `read(2)` from `fd` into the blob at `at`, at most `max` bytes;
    /// returns how many were read (0 at end of file). The kernel writes
    /// straight into the shared memory: no intermediate buffer.
    ///
    /// # Panics
    ///
    /// If `at + max` exceeds the blob's length.
    pub fn write_from_fd(
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

    /// The descriptor of a large blob's memfd (for inspection), `None` for a
    /// small blob.
    pub fn large_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.kind {
            Writing::Large { seg, .. } => Some(seg.as_fd()),
            _ => None,
        }
    }

    /// Seals the blob: from now on no process can change its bytes. A small
    /// blob is copied once into a server pool; a large one is unmapped here
    /// and sealed `F_SEAL_WRITE` by the server. The returned [`Blob`] holds
    /// the author's lease.
    pub fn seal(mut self) -> Result<Blob, CallError> {
        let kind = std::mem::replace(&mut self.kind, Writing::Done);
        let handle = match kind {
            Writing::Small { offset, .. } => {
                let r = self.client.call::<SealSmall>(&(offset, self.len as u64));
                self.free_small(offset);
                r?
            }
            Writing::Large { id, seg, map } => {
                // The kernel grants F_SEAL_WRITE only once no writable
                // mapping is left: ours goes first, and our read-write
                // descriptor with it.
                drop(map);
                drop(seg);
                match self.client.call::<SealLarge>(&id) {
                    Ok(h) => h,
                    Err(e) => {
                        self.client.queue_release(None, Some(id));
                        return Err(e);
                    }
                }
            }
            Writing::Done => return Err(CallError::Encode("blob already sealed".into())),
        };
        Ok(Blob {
            client: self.client.shared(),
            handle,
        })
    }

    fn free_small(&self, offset: u64) {
        if let Some(Some(area)) = lock(&self.client.blobs().author).as_mut() {
            area.alloc.free(offset, self.len as u64);
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.kind, Writing::Done) {
            Writing::Small { offset, .. } => self.free_small(offset),
            Writing::Large { id, .. } => self.client.queue_release(None, Some(id)),
            Writing::Done => {}
        }
    }
}

/// A sealed blob its author holds: the author's lease and the handle to
/// share. Read it with [`Client::get`]`(blob.handle())`.
pub struct Blob {
    client: Client,
    handle: BlobHandle,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Blob").field(&self.handle).finish()
    }
}

impl Blob {
    /// The handle: plain data, to pass to other processes (in a request, a
    /// file, the cache).
    pub fn handle(&self) -> &BlobHandle {
        &self.handle
    }

    /// The blob's length.
    pub fn len(&self) -> usize {
        self.handle.len as usize
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.handle.len == 0
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        self.client.queue_release(Some(self.handle.id), None);
    }
}

/// A lease on a sealed blob, mapped: derefs to its bytes. Sound as `&[u8]`
/// because no process can write them while the lease lives (the kernel's
/// seals; the server never reuses a leased range). Dropping it gives the
/// lease back (batched; see [`Client::flush`]).
pub struct BlobRef {
    client: Client,
    handle: BlobHandle,
    seg: Arc<SegMap>,
}

impl fmt::Debug for BlobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BlobRef").field(&self.handle).finish()
    }
}

impl BlobRef {
    /// The handle.
    pub fn handle(&self) -> &BlobHandle {
        &self.handle
    }

    /// The descriptor of the segment holding the blob (read-only, sealed).
    pub fn segment_fd(&self) -> BorrowedFd<'_> {
        self.seg.seg.as_fd()
    }
}

impl Deref for BlobRef {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `offset + len` lies inside the mapping (checked when the
        // reference was made; `self.seg` keeps it mapped). The bytes cannot
        // change while our lease lives: the segment is sealed FUTURE_WRITE
        // (pool) or WRITE (large blob) with SEAL, checked at open, and the
        // server never writes a pool range that a live blob occupies.
        unsafe {
            std::slice::from_raw_parts(
                self.seg.map.as_ptr().add(self.handle.offset as usize),
                self.handle.len as usize,
            )
        }
    }
}

impl AsRef<[u8]> for BlobRef {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for BlobRef {
    fn drop(&mut self) {
        self.client.queue_release(Some(self.handle.id), None);
    }
}
