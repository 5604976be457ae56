//! The blob store and the memory cache (docs/design.md §8).
//!
//! # Where blob bytes live
//!
//! * **Small blobs** (the client's threshold, 256 KiB by default) are written
//!   in the author's own *author pool*: one memfd per session, created on
//!   first use, read-write for that client and the server. At seal the server
//!   copies the bytes once into a *server pool*: a memfd the server mapped
//!   read-write and then sealed `SHRINK | GROW | FUTURE_WRITE | SEAL`, so the
//!   server's mapping keeps working but nobody can create a writable mapping
//!   or `write()` any more. Readers map pools read-only, once per pool.
//! * **Large blobs** get a memfd each, sealed `SHRINK | GROW` and sent
//!   read-write to the author, who writes in place. At seal the author has
//!   unmapped it and the server adds `WRITE | SEAL`, which the kernel grants
//!   only when no writable mapping exists anywhere. From then on the server
//!   keeps only a read-only descriptor.
//!
//! # Handles, leases, reference counts
//!
//! A [`BlobHandle`] names a sealed blob. The table here is the truth: every
//! handle a client sends is checked against it (epoch, id, segment, offset,
//! length). A blob lives while anything refers to it: *leases* (per session,
//! counted in server-private memory), cache entries, and *pins* (a handler
//! reading it). A session's death drops exactly its leases, its unsealed
//! large blobs and its author pool.
//!
//! # Locking
//!
//! One mutex guards the tables. Byte copies (a small blob's seal, a handler's
//! read) run outside it, on ranges reserved under it.

pub(crate) mod budget;
mod cache;
mod persist;
pub use persist::default_disk_cache_dir;
pub(crate) use persist::open_tier;

use crate::blobs::cache::MemCache;
use ipc_core::ring::ShmSlice;
use ipc_core::shm::{Access, Mapping, RangeAlloc, Seals, Segment, init_header};
use ipc_rpc::ErrorCode;
use ipc_rpc::blob::{
    AUTHOR_KIND, BLOB_LAYOUT_VERSION, BLOB_MAGIC, BlobHandle, BlobStats, DATA_OFFSET, LARGE_KIND,
    POOL_ALIGN, POOL_KIND, SegmentInfo,
};
use ipc_rpc::idmap::IdMap;
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

/// Per-session limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionQuota {
    /// Leases held at once.
    pub leases: u64,
    /// Bytes of the distinct blobs a session holds leases on.
    pub pinned_bytes: u64,
    /// Bytes a session is writing: its author pool and unsealed large blobs.
    pub pool_bytes: u64,
}

impl Default for SessionQuota {
    fn default() -> Self {
        Self {
            leases: 65_536,
            pinned_bytes: 16 << 30,
            pool_bytes: 16 << 30,
        }
    }
}

/// How the store is sized.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlobConfig {
    /// Length of each server pool segment.
    pub(crate) pool_segment_len: u64,
    /// Length of each session's author pool.
    pub(crate) author_pool_len: u64,
    /// The memory cache's budget in bytes.
    pub(crate) cache_budget: u64,
    /// Per-session limits.
    pub(crate) quota: SessionQuota,
}

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlobError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl BlobError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn quota(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::QuotaExceeded, message)
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadHandle, message)
    }

    fn handler(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Handler, message)
    }
}

impl std::fmt::Display for BlobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A sealed blob in the table.
#[derive(Debug)]
struct BlobEntry {
    segment: u64,
    offset: u64,
    len: u64,
    /// Leases, all sessions.
    leases: u64,
    /// Handlers reading it now.
    pins: u64,
    /// Cache keys naming it.
    cached: u64,
}

impl BlobEntry {
    fn held(&self) -> bool {
        self.leases > 0 || self.pins > 0
    }

    fn unreferenced(&self) -> bool {
        !self.held() && self.cached == 0
    }
}

/// A segment the store owns.
#[derive(Debug)]
enum SegEntry {
    /// A server pool: RW mapping (made before the seals), RO descriptor.
    Pool(Pool),
    /// A sealed large blob: its read-only descriptor.
    Large { seg: Segment },
    /// A large blob being written by `session`: its read-write descriptor.
    Writing { seg: Segment, blob: u64, len: u64 },
    /// A session's author pool.
    Author { seg: Segment, map: Arc<Mapping> },
}

#[derive(Debug)]
struct Pool {
    map: Arc<Mapping>,
    ro: Segment,
    alloc: RangeAlloc,
}

/// What the store knows of one session.
#[derive(Debug, Default)]
struct SessionBlobs {
    /// Blob id → leases held.
    leases: IdMap<u64>,
    lease_count: u64,
    pinned_bytes: u64,
    /// Author pool + unsealed large blobs.
    pool_bytes: u64,
    author: Option<u64>,
    writing: HashSet<u64>,
}

#[derive(Debug)]
struct Inner {
    /// Segments to close off the lock and off the call path: closing the
    /// last descriptor of a large memfd frees its pages (about 10 ms for
    /// 64 MiB), which must not hold up every other blob operation.
    reaper: Option<std::sync::mpsc::Sender<SegEntry>>,
    /// Keys whose latest put waits for the disk writer, with its blob
    /// (pinned until written) and the number of such puts.
    pending: HashMap<String, (u64, u64)>,
    next_id: u64,
    blobs: IdMap<BlobEntry>,
    segments: IdMap<SegEntry>,
    /// Pool segment ids, oldest first.
    pools: Vec<u64>,
    sessions: IdMap<SessionBlobs>,
    cache: MemCache,
}

/// The blob store: tables, pools, and the memory cache.
#[derive(Debug)]
pub(crate) struct BlobStore {
    epoch: u64,
    cfg: BlobConfig,
    /// The disk tier and its writer, if the server has one.
    disk: Option<persist::DiskLink>,
    inner: Mutex<Inner>,
}

/// A descriptor to send to the client before the answer.
pub(crate) type Grant = Option<(u64, OwnedFd)>;

fn sys(what: &str, e: impl std::fmt::Display) -> BlobError {
    BlobError::handler(format!("the server could not {what}: {e}"))
}

impl Inner {
    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Checks a client's handle against the table.
    fn check(&self, epoch: u64, h: &BlobHandle) -> Result<&BlobEntry, BlobError> {
        if h.epoch != epoch {
            return Err(BlobError::bad(format!(
                "the handle of blob {} comes from another server instance (epoch {:016x}; this one is {epoch:016x}): the server restarted since it was issued",
                h.id, h.epoch
            )));
        }
        let Some(e) = self.blobs.get(&h.id) else {
            return Err(BlobError::bad(if h.id != 0 && h.id <= self.next_id {
                format!("blob {} no longer exists (stale handle)", h.id)
            } else {
                format!("no blob has id {} (unknown handle)", h.id)
            }));
        };
        if e.segment != h.segment || e.offset != h.offset || e.len != h.len {
            return Err(BlobError::bad(format!(
                "the handle of blob {} does not match the blob (segment {} @ {} len {}, handle says segment {} @ {} len {}): forged or corrupted",
                h.id, e.segment, e.offset, e.len, h.segment, h.offset, h.len
            )));
        }
        Ok(e)
    }

    fn session(&mut self, id: u64) -> Result<&mut SessionBlobs, BlobError> {
        self.sessions
            .get_mut(&id)
            .ok_or_else(|| BlobError::new(ErrorCode::Shutdown, "the session is closed"))
    }

    /// Adds one lease of `blob` to `session` after checking its quota.
    fn lease(&mut self, session: u64, blob: u64, quota: &SessionQuota) -> Result<(), BlobError> {
        let len = self.blobs.get(&blob).map_or(0, |b| b.len);
        let s = self.session(session)?;
        let first = !s.leases.contains_key(&blob);
        if s.lease_count >= quota.leases {
            return Err(BlobError::quota(format!(
                "this session holds {} leases (limit {}); drop BlobRefs or call flush()",
                s.lease_count, quota.leases
            )));
        }
        if first && s.pinned_bytes + len > quota.pinned_bytes {
            return Err(BlobError::quota(format!(
                "this session would pin {} bytes of blobs (limit {})",
                s.pinned_bytes + len,
                quota.pinned_bytes
            )));
        }
        *s.leases.entry(blob).or_insert(0) += 1;
        s.lease_count += 1;
        if first {
            s.pinned_bytes += len;
        }
        if let Some(b) = self.blobs.get_mut(&blob) {
            b.leases += 1;
        }
        Ok(())
    }

    /// Enters a sealed blob at `(segment, offset, len)` with one lease for
    /// `session`; over the session's quota, the blob is freed again.
    fn insert_leased(
        &mut self,
        id: u64,
        (segment, offset, len): (u64, u64, u64),
        session: u64,
        quota: &SessionQuota,
    ) -> Result<(), BlobError> {
        self.blobs.insert(
            id,
            BlobEntry {
                segment,
                offset,
                len,
                leases: 0,
                pins: 0,
                cached: 0,
            },
        );
        self.lease(session, id, quota)
            .inspect_err(|_| self.maybe_free(id))
    }

    /// Drops one lease of `blob` held by `session`; false if it held none.
    fn unlease(&mut self, session: u64, blob: u64) -> bool {
        let len = self.blobs.get(&blob).map_or(0, |b| b.len);
        let Some(s) = self.sessions.get_mut(&session) else {
            return false;
        };
        let Some(n) = s.leases.get_mut(&blob) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            s.leases.remove(&blob);
            s.pinned_bytes -= len;
        }
        s.lease_count -= 1;
        if let Some(b) = self.blobs.get_mut(&blob) {
            b.leases -= 1;
        }
        self.maybe_free(blob);
        true
    }

    /// Frees `blob` if nothing refers to it any more.
    fn maybe_free(&mut self, blob: u64) {
        if !self.blobs.get(&blob).is_some_and(BlobEntry::unreferenced) {
            return;
        }
        let Some(b) = self.blobs.remove(&blob) else {
            return;
        };
        match self.segments.get_mut(&b.segment) {
            Some(SegEntry::Pool(p)) => p.alloc.free(b.offset, b.len),
            Some(SegEntry::Large { .. }) => {
                // Dropping the descriptor: the memory goes once every
                // reader has unmapped it too.
                if let Some(seg) = self.segments.remove(&b.segment) {
                    self.bury(seg);
                }
            }
            _ => {}
        }
    }

    /// Hands a segment to the reaper thread to close (inline if there is
    /// none).
    fn bury(&mut self, seg: SegEntry) {
        if let Some(r) = &self.reaper
            && let Err(back) = r.send(seg)
        {
            self.reaper = None;
            drop(back.0);
        }
    }

    /// A pool range of `len` bytes: `(segment, offset, mapping)`.
    fn pool_alloc(
        &mut self,
        len: u64,
        pool_len: u64,
    ) -> Result<(u64, u64, Arc<Mapping>), BlobError> {
        for &id in &self.pools {
            if let Some(SegEntry::Pool(p)) = self.segments.get_mut(&id)
                && let Some(off) = p.alloc.alloc(len)
            {
                return Ok((id, off, Arc::clone(&p.map)));
            }
        }
        if len > pool_len - DATA_OFFSET {
            return Err(BlobError::handler(format!(
                "a small blob of {len} bytes does not fit a pool segment of {pool_len} bytes"
            )));
        }
        let pool = new_pool(pool_len)?;
        let id = self.fresh_id();
        let map = Arc::clone(&pool.map);
        self.pools.push(id);
        self.segments.insert(id, SegEntry::Pool(pool));
        let Some(SegEntry::Pool(p)) = self.segments.get_mut(&id) else {
            unreachable!("inserted above");
        };
        let off = p.alloc.alloc(len).ok_or_else(|| {
            BlobError::handler(format!("a fresh pool has no room for {len} bytes"))
        })?;
        tracing::debug!(segment = id, bytes = pool_len, "new server pool segment");
        Ok((id, off, map))
    }

    /// The read-only descriptor of a segment a reader may map.
    fn readable(&self, segment: u64) -> Result<(SegmentInfo, OwnedFd), BlobError> {
        let (seg, kind) = match self.segments.get(&segment) {
            Some(SegEntry::Pool(p)) => (&p.ro, POOL_KIND),
            Some(SegEntry::Large { seg }) => (seg, LARGE_KIND),
            Some(_) => {
                return Err(BlobError::bad(format!(
                    "segment {segment} is not sealed; it cannot be mapped"
                )));
            }
            None => {
                return Err(BlobError::bad(format!("no segment has id {segment}")));
            }
        };
        let fd = seg
            .fd()
            .try_clone_to_owned()
            .map_err(|e| sys("duplicate a descriptor", e))?;
        Ok((
            SegmentInfo {
                segment,
                len: seg.len() as u64,
                kind,
                fd_sent: true,
            },
            fd,
        ))
    }

    /// The segment of the large blob `blob` that `session` is writing.
    fn writing_segment(&self, session: u64, blob: u64) -> Result<u64, BlobError> {
        let s = self
            .sessions
            .get(&session)
            .ok_or_else(|| BlobError::new(ErrorCode::Shutdown, "the session is closed"))?;
        s.writing
            .iter()
            .copied()
            .find(|seg| {
                matches!(self.segments.get(seg), Some(SegEntry::Writing { blob: b, .. }) if *b == blob)
            })
            .ok_or_else(|| {
                BlobError::bad(format!(
                    "this session is not writing a large blob with id {blob}"
                ))
            })
    }

    fn segment_info(&self, segment: u64) -> Option<SegmentInfo> {
        let (len, kind) = match self.segments.get(&segment)? {
            SegEntry::Pool(p) => (p.ro.len(), POOL_KIND),
            SegEntry::Large { seg } => (seg.len(), LARGE_KIND),
            _ => return None,
        };
        Some(SegmentInfo {
            segment,
            len: len as u64,
            kind,
            fd_sent: false,
        })
    }
}

/// Creates, maps (populated), initialises and seals a server pool.
fn new_pool(len: u64) -> Result<Pool, BlobError> {
    let seg = Segment::create("cradle-pool", len as usize).map_err(|e| sys("create a pool", e))?;
    let map = seg
        .map_populated(Access::ReadWrite)
        .map_err(|e| sys("map a pool", e))?;
    init_header(&map, BLOB_MAGIC, BLOB_LAYOUT_VERSION, POOL_KIND)
        .map_err(|e| sys("initialise a pool", e))?;
    seg.add_seals(Seals::SHRINK | Seals::GROW | Seals::FUTURE_WRITE | Seals::SEAL)
        .map_err(|e| sys("seal a pool", e))?;
    let ro = seg
        .read_only_fd()
        .and_then(Segment::from_fd)
        .map_err(|e| sys("reopen a pool read-only", e))?;
    Ok(Pool {
        map: Arc::new(map),
        ro,
        alloc: RangeAlloc::new(DATA_OFFSET, len, POOL_ALIGN),
    })
}

/// Creates a memfd of `DATA_OFFSET + len` bytes with its header written
/// (through a mapping that is gone when this returns), sealed against
/// shrinking and growing only.
fn new_large(len: u64) -> Result<Segment, BlobError> {
    let total = DATA_OFFSET
        .checked_add(len)
        .and_then(|t| usize::try_from(t).ok())
        .ok_or_else(|| BlobError::handler(format!("a blob of {len} bytes is too large")))?;
    let seg = Segment::create("cradle-blob", total).map_err(|e| sys("create a blob", e))?;
    {
        let map = seg
            .map(Access::ReadWrite)
            .map_err(|e| sys("map a blob", e))?;
        init_header(&map, BLOB_MAGIC, BLOB_LAYOUT_VERSION, LARGE_KIND)
            .map_err(|e| sys("initialise a blob", e))?;
    }
    seg.add_seals(Seals::SHRINK | Seals::GROW)
        .map_err(|e| sys("seal a blob", e))?;
    Ok(seg)
}

impl BlobStore {
    pub(crate) fn new(epoch: u64, cfg: BlobConfig) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<SegEntry>();
        // Closes what `bury` sends; ends when the store (the sender) goes.
        let reaper = std::thread::Builder::new()
            .name("cradle-reaper".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| tx);
        Self {
            epoch,
            cfg,
            disk: None,
            inner: Mutex::new(Inner {
                reaper,
                pending: HashMap::new(),
                next_id: 0,
                blobs: IdMap::default(),
                segments: IdMap::default(),
                pools: Vec::new(),
                sessions: IdMap::default(),
                cache: MemCache::new(cfg.cache_budget),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent tables (every
        // mutation completes before anything can panic); keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session (before its first request).
    pub(crate) fn open_session(&self, session: u64) {
        self.lock()
            .sessions
            .insert(session, SessionBlobs::default());
    }

    /// Drops everything `session` held: leases, unsealed blobs, author pool.
    pub(crate) fn close_session(&self, session: u64) {
        let mut g = self.lock();
        let Some(s) = g.sessions.remove(&session) else {
            return;
        };
        for (blob, n) in s.leases {
            if let Some(b) = g.blobs.get_mut(&blob) {
                b.leases -= n;
            }
            g.maybe_free(blob);
        }
        for seg in s.writing.into_iter().chain(s.author) {
            if let Some(seg) = g.segments.remove(&seg) {
                g.bury(seg);
            }
        }
    }

    /// The session's author pool, created on first use; its read-write
    /// descriptor is to be sent to the client.
    pub(crate) fn author_pool(&self, session: u64) -> Result<(SegmentInfo, OwnedFd), BlobError> {
        let mut g = self.lock();
        let len = self.cfg.author_pool_len;
        let existing = g.session(session)?.author;
        let id = match existing {
            Some(id) => id,
            None => {
                let s = g.session(session)?;
                if s.pool_bytes + len > self.cfg.quota.pool_bytes {
                    return Err(BlobError::quota(format!(
                        "an author pool of {len} bytes would take this session's bytes being written to {} (limit {})",
                        s.pool_bytes + len,
                        self.cfg.quota.pool_bytes
                    )));
                }
                let seg = Segment::create("cradle-author", len as usize)
                    .map_err(|e| sys("create an author pool", e))?;
                let map = seg
                    .map(Access::ReadWrite)
                    .map_err(|e| sys("map an author pool", e))?;
                init_header(&map, BLOB_MAGIC, BLOB_LAYOUT_VERSION, AUTHOR_KIND)
                    .map_err(|e| sys("initialise an author pool", e))?;
                seg.add_seals(Seals::SHRINK | Seals::GROW | Seals::SEAL)
                    .map_err(|e| sys("seal an author pool", e))?;
                let id = g.fresh_id();
                g.segments.insert(
                    id,
                    SegEntry::Author {
                        seg,
                        map: Arc::new(map),
                    },
                );
                let s = g.session(session)?;
                s.author = Some(id);
                s.pool_bytes += len;
                id
            }
        };
        let Some(SegEntry::Author { seg, .. }) = g.segments.get(&id) else {
            return Err(BlobError::handler("the author pool vanished"));
        };
        let fd = seg
            .fd()
            .try_clone_to_owned()
            .map_err(|e| sys("duplicate a descriptor", e))?;
        Ok((
            SegmentInfo {
                segment: id,
                len,
                kind: AUTHOR_KIND,
                fd_sent: true,
            },
            fd,
        ))
    }

    /// Seals a small blob: copies `len` bytes at `offset` of the session's
    /// author pool into a server pool. The caller gets a lease.
    pub(crate) fn seal_small(
        &self,
        session: u64,
        offset: u64,
        len: u64,
    ) -> Result<BlobHandle, BlobError> {
        let (src, dst_seg, dst_off, dst_map) = {
            let mut g = self.lock();
            let author = g.session(session)?.author.ok_or_else(|| {
                BlobError::handler("this session has no author pool (call AuthorPool first)")
            })?;
            let Some(SegEntry::Author { map, .. }) = g.segments.get(&author) else {
                return Err(BlobError::handler("the author pool vanished"));
            };
            let src = Arc::clone(map);
            let end = offset.checked_add(len);
            if offset < DATA_OFFSET || end.is_none_or(|e| e > src.len() as u64) {
                return Err(BlobError::bad(format!(
                    "bytes {offset}..+{len} are outside the author pool's data area ({DATA_OFFSET}..{})",
                    src.len()
                )));
            }
            let s = g.session(session)?;
            if s.lease_count >= self.cfg.quota.leases {
                return Err(BlobError::quota(format!(
                    "this session holds {} leases (limit {})",
                    s.lease_count, self.cfg.quota.leases
                )));
            }
            if s.pinned_bytes + len > self.cfg.quota.pinned_bytes {
                return Err(BlobError::quota(format!(
                    "this session would pin {} bytes of blobs (limit {})",
                    s.pinned_bytes + len,
                    self.cfg.quota.pinned_bytes
                )));
            }
            let (seg, off, map) = g.pool_alloc(len, self.cfg.pool_segment_len)?;
            (src, seg, off, map)
        };
        // The copy runs unlocked: the destination range is reserved, the
        // source is the author's (hostile) memory, read with volatile loads.
        // SAFETY: `offset..offset+len` is inside the live author mapping
        // (checked above; `src` keeps it mapped); the bytes may change under
        // us, which `ShmSlice` tolerates (volatile reads, no reference).
        let from = unsafe { ShmSlice::new(src.as_ptr().add(offset as usize), len as usize) };
        let dst_ptr = dst_map
            .as_mut_ptr()
            .expect("pools are mapped read-write")
            .wrapping_add(dst_off as usize);
        // SAFETY: `dst_off..+len` was reserved for this blob by `pool_alloc`
        // (inside the mapping, which `dst_map` keeps alive); no other thread
        // writes it until the blob is freed, and no other process can write
        // the pool at all (FUTURE_WRITE), so this slice is ours alone.
        let to = unsafe { std::slice::from_raw_parts_mut(dst_ptr, len as usize) };
        from.copy_to_slice(to);
        let mut g = self.lock();
        let id = g.fresh_id();
        g.insert_leased(id, (dst_seg, dst_off, len), session, &self.cfg.quota)?;
        Ok(self.handle_of(id, dst_seg, dst_off, len))
    }

    fn handle_of(&self, id: u64, segment: u64, offset: u64, len: u64) -> BlobHandle {
        BlobHandle {
            epoch: self.epoch,
            id,
            segment,
            offset,
            len,
        }
    }

    /// Creates a large blob for `session` to write; returns its id, segment
    /// and the read-write descriptor for the author.
    pub(crate) fn create_large(
        &self,
        session: u64,
        len: u64,
    ) -> Result<(u64, SegmentInfo, OwnedFd), BlobError> {
        {
            let mut g = self.lock();
            let s = g.session(session)?;
            if s.pool_bytes.saturating_add(len) > self.cfg.quota.pool_bytes {
                return Err(BlobError::quota(format!(
                    "a blob of {len} bytes would take this session's bytes being written to {} (limit {})",
                    s.pool_bytes.saturating_add(len),
                    self.cfg.quota.pool_bytes
                )));
            }
            s.pool_bytes += len;
        }
        // memfd_create, ftruncate and the header outside the lock.
        let made = new_large(len).and_then(|seg| {
            let fd = seg
                .fd()
                .try_clone_to_owned()
                .map_err(|e| sys("duplicate a descriptor", e))?;
            Ok((seg, fd))
        });
        let mut g = self.lock();
        let (seg, fd) = match made {
            Ok(x) => x,
            Err(e) => {
                if let Ok(s) = g.session(session) {
                    s.pool_bytes -= len;
                }
                return Err(e);
            }
        };
        let blob = g.fresh_id();
        let segment = g.fresh_id();
        let info = SegmentInfo {
            segment,
            len: seg.len() as u64,
            kind: LARGE_KIND,
            fd_sent: true,
        };
        match g.sessions.get_mut(&session) {
            Some(s) => {
                s.writing.insert(segment);
            }
            // Closed meanwhile: nothing to undo but the segment (dropped).
            None => return Err(BlobError::new(ErrorCode::Shutdown, "the session is closed")),
        }
        g.segments
            .insert(segment, SegEntry::Writing { seg, blob, len });
        Ok((blob, info, fd))
    }

    /// Seals the large blob `blob` of `session`: `F_SEAL_WRITE | F_SEAL_SEAL`
    /// (refused by the kernel while a writable mapping exists). The caller
    /// gets a lease.
    pub(crate) fn seal_large(&self, session: u64, blob: u64) -> Result<BlobHandle, BlobError> {
        let mut g = self.lock();
        let segment = g.writing_segment(session, blob)?;
        let Some(SegEntry::Writing { seg, len, .. }) = g.segments.get(&segment) else {
            return Err(BlobError::bad(format!("blob {blob} is not being written")));
        };
        let len = *len;
        match seg.add_seals(Seals::WRITE | Seals::SEAL) {
            Ok(()) => {}
            Err(e) if e.io_error().raw_os_error() == Some(libc::EBUSY) => {
                return Err(BlobError::handler(format!(
                    "blob {blob} is still mapped writable somewhere; unmap it (drop its BlobWriter) before sealing"
                )));
            }
            Err(e) => {
                return Err(BlobError::handler(format!(
                    "blob {blob} cannot be sealed (its seals were changed by the writer?): {e}"
                )));
            }
        }
        let ro = seg
            .read_only_fd()
            .and_then(Segment::from_fd)
            .map_err(|e| sys("reopen a blob read-only", e))?;
        g.segments.insert(segment, SegEntry::Large { seg: ro });
        let s = g.session(session)?;
        s.writing.remove(&segment);
        s.pool_bytes -= len;
        g.insert_leased(blob, (segment, DATA_OFFSET, len), session, &self.cfg.quota)?;
        Ok(self.handle_of(blob, segment, DATA_OFFSET, len))
    }
}

impl BlobStore {
    /// A mapping that covers a sealed blob of `segment`: the pool's, or a
    /// new read-only mapping of a large blob (made outside the lock).
    fn map_blob_segment(&self, segment: u64) -> Result<Arc<Mapping>, String> {
        let fd = {
            let g = self.lock();
            match g.segments.get(&segment) {
                Some(SegEntry::Pool(p)) => return Ok(Arc::clone(&p.map)),
                Some(SegEntry::Large { seg }) => {
                    seg.fd().try_clone_to_owned().map_err(|e| e.to_string())?
                }
                _ => return Err(format!("segment {segment} is gone")),
            }
        };
        let seg = Segment::from_fd(fd).map_err(|e| e.to_string())?;
        seg.map(Access::ReadOnly)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    }

    /// Takes a lease on `h` for `session`; with `want_fd`, also returns the
    /// segment's read-only descriptor to send.
    pub(crate) fn acquire(
        &self,
        session: u64,
        h: &BlobHandle,
        want_fd: bool,
    ) -> Result<(SegmentInfo, Grant), BlobError> {
        let mut g = self.lock();
        let segment = g.check(self.epoch, h)?.segment;
        let (info, grant) = if want_fd {
            let (info, fd) = g.readable(segment)?;
            (info, Some((segment, fd)))
        } else {
            let info = g
                .segment_info(segment)
                .ok_or_else(|| BlobError::bad(format!("segment {segment} is gone")))?;
            (info, None)
        };
        g.lease(session, h.id, &self.cfg.quota)?;
        Ok((info, grant))
    }

    /// The read-only descriptor of a sealed segment.
    pub(crate) fn map_segment(&self, segment: u64) -> Result<(SegmentInfo, OwnedFd), BlobError> {
        self.lock().readable(segment)
    }

    /// Gives back leases and abandons unsealed large blobs; returns the
    /// leases released (ids the session held no lease on are ignored).
    pub(crate) fn release(&self, session: u64, leases: &[u64], aborted: &[u64]) -> u64 {
        let mut g = self.lock();
        let mut n = 0;
        for &blob in leases {
            if g.unlease(session, blob) {
                n += 1;
            }
        }
        for &blob in aborted {
            if let Ok(segment) = g.writing_segment(session, blob)
                && let Some(SegEntry::Writing { len, .. }) = g.segments.remove(&segment)
                && let Ok(s) = g.session(session)
            {
                s.writing.remove(&segment);
                s.pool_bytes -= len;
            }
        }
        n
    }

    /// Store and cache figures.
    pub(crate) fn stats(&self) -> BlobStats {
        let g = self.lock();
        let mut st = BlobStats {
            blobs: g.blobs.len() as u64,
            blob_bytes: g.blobs.values().map(|b| b.len).sum(),
            leases: g.blobs.values().map(|b| b.leases).sum(),
            cache_entries: g.cache.len() as u64,
            cache_bytes: g.cache.used(),
            cache_budget: g.cache.budget(),
            hits: g.cache.hits,
            misses: g.cache.misses,
            evictions: g.cache.evictions,
            cache_full: g.cache.full,
            ..BlobStats::default()
        };
        if let Some(d) = &self.disk {
            d.fill_stats(&mut st);
        }
        for seg in g.segments.values() {
            match seg {
                SegEntry::Pool(p) => {
                    st.pool_segments += 1;
                    st.pool_capacity += p.ro.len() as u64;
                    st.pool_used += p.ro.len() as u64 - DATA_OFFSET - p.alloc.free_bytes();
                }
                SegEntry::Large { .. } => st.large_blobs += 1,
                SegEntry::Writing { .. } => st.writing += 1,
                SegEntry::Author { .. } => st.author_pools += 1,
            }
        }
        st
    }

    /// `(leases, pinned_bytes, pool_bytes)` of a session.
    pub(crate) fn session_figures(&self, session: u64) -> (u64, u64, u64) {
        self.lock()
            .sessions
            .get(&session)
            .map_or((0, 0, 0), |s| (s.lease_count, s.pinned_bytes, s.pool_bytes))
    }
}

impl Inner {
    /// Stores `h` under `key` in the memory cache, evicting unheld entries
    /// if needed; `Ok(false)` if `if_absent` and the key exists.
    fn cache_insert(
        &mut self,
        epoch: u64,
        key: &str,
        h: &BlobHandle,
        if_absent: bool,
    ) -> Result<bool, BlobError> {
        let g = self;
        let blob = h.id;
        let len = g.check(epoch, h)?.len;
        let existing = g.cache.peek(key);
        if if_absent && existing.is_some() {
            return Ok(false);
        }
        if existing.map(|(b, _)| b) == Some(blob) {
            g.cache.touch(key);
            return Ok(true);
        }
        let budget = g.cache.budget();
        if len > budget {
            g.cache.full += 1;
            return Err(BlobError::new(
                ErrorCode::CacheFull,
                format!(
                    "a blob of {len} bytes is larger than the memory cache's budget of {budget} bytes"
                ),
            ));
        }
        let after = g.cache.used() - existing.map_or(0, |(_, l)| l) + len;
        let mut victims = Vec::new();
        if after > budget {
            let mut freed = 0;
            for (k, b, l) in g.cache.oldest_first() {
                if freed >= after - budget {
                    break;
                }
                if k == key || g.blobs.get(&b).is_some_and(BlobEntry::held) {
                    continue;
                }
                victims.push(k.to_owned());
                freed += l;
            }
            if freed < after - budget {
                g.cache.full += 1;
                return Err(BlobError::new(
                    ErrorCode::CacheFull,
                    format!(
                        "the memory cache (budget {budget} bytes, {} used) cannot make room for {len} bytes: the entries it could evict are held by leases",
                        g.cache.used()
                    ),
                ));
            }
        }
        for k in victims {
            if let Some(b) = g.cache.remove(&k) {
                g.cache.evictions += 1;
                g.uncache(b);
            }
        }
        if let Some(b) = g.blobs.get_mut(&blob) {
            b.cached += 1;
        }
        if let Some(old) = g.cache.insert(key, blob, len) {
            g.uncache(old);
        }
        Ok(true)
    }

    /// One cache reference of `blob` is gone.
    fn uncache(&mut self, blob: u64) {
        if let Some(b) = self.blobs.get_mut(&blob) {
            b.cached -= 1;
        }
        self.maybe_free(blob);
    }
}

/// What an offloaded handler may do with blobs: read a blob a client sent,
/// create result blobs for the calling session.
#[derive(Debug)]
pub struct BlobCtx<'a> {
    pub(crate) store: &'a Arc<BlobStore>,
    pub(crate) session: u64,
}

/// A sealed blob a handler reads: pinned (never freed or evicted) until
/// dropped.
pub struct BlobView {
    store: Arc<BlobStore>,
    blob: u64,
    /// A pool's mapping, or the blob's own read-only mapping.
    map: Arc<Mapping>,
    offset: usize,
    len: usize,
}

impl std::fmt::Debug for BlobView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobView")
            .field("blob", &self.blob)
            .field("len", &self.len)
            .finish()
    }
}

impl BlobView {
    /// The blob's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the range is inside the live mapping (checked against the
        // table when the view was made; `self.map` keeps it mapped). The
        // bytes are immutable while the pin lives: no process can write a
        // sealed large blob (F_SEAL_WRITE) or a pool (FUTURE_WRITE), and the
        // server never writes a pool range of a live blob.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.offset), self.len) }
    }
}

impl Drop for BlobView {
    fn drop(&mut self) {
        let mut g = self.store.lock();
        if let Some(b) = g.blobs.get_mut(&self.blob) {
            b.pins -= 1;
        }
        g.maybe_free(self.blob);
    }
}

/// A blob a handler is writing; [`seal`](Self::seal) it to return it.
pub struct BlobBuilder {
    store: Arc<BlobStore>,
    session: u64,
    kind: Building,
    len: usize,
}

enum Building {
    Pool {
        segment: u64,
        offset: u64,
        map: Arc<Mapping>,
    },
    Large {
        seg: Segment,
        map: Option<Mapping>,
    },
    Done,
}

impl std::fmt::Debug for BlobBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBuilder")
            .field("session", &self.session)
            .field("len", &self.len)
            .finish()
    }
}

/// Blobs a handler creates up to this size go to a server pool; larger ones
/// get their own memfd.
const SERVER_SMALL_MAX: usize = 256 << 10;

impl BlobCtx<'_> {
    /// The calling session.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Pins the blob `h` names (checked like any client handle) and maps it.
    pub fn read(&self, h: &BlobHandle) -> Result<BlobView, crate::HandlerError> {
        let (segment, offset, len) = {
            let mut g = self.store.lock();
            let e = g
                .check(self.store.epoch, h)
                .map_err(|e| crate::HandlerError::new(e.message))?;
            let r = (e.segment, e.offset, e.len);
            if let Some(b) = g.blobs.get_mut(&h.id) {
                b.pins += 1;
            }
            r
        };
        let unpin = |store: &BlobStore| {
            let mut g = store.lock();
            if let Some(b) = g.blobs.get_mut(&h.id) {
                b.pins -= 1;
            }
            g.maybe_free(h.id);
        };
        let map = self
            .store
            .map_blob_segment(segment)
            .map_err(|e| crate::HandlerError::new(format!("cannot map blob {}: {e}", h.id)));
        match map {
            Ok(map) => Ok(BlobView {
                store: Arc::clone(self.store),
                blob: h.id,
                map,
                offset: offset as usize,
                len: len as usize,
            }),
            Err(e) => {
                unpin(self.store);
                Err(e)
            }
        }
    }

    /// Starts a result blob of `len` bytes (zeroed), for the calling session.
    pub fn create(&self, len: usize) -> Result<BlobBuilder, crate::HandlerError> {
        let err = |e: BlobError| crate::HandlerError::new(e.message);
        let kind = if len <= SERVER_SMALL_MAX {
            let (segment, offset, map) = self
                .store
                .lock()
                .pool_alloc(len as u64, self.store.cfg.pool_segment_len)
                .map_err(err)?;
            let base = map.as_mut_ptr().expect("pools are mapped read-write");
            // SAFETY: the range was just reserved for this builder inside the
            // live pool mapping; no one else writes it (see `seal_small`).
            unsafe { base.add(offset as usize).write_bytes(0, len) };
            Building::Pool {
                segment,
                offset,
                map,
            }
        } else {
            let seg = new_large(len as u64).map_err(err)?;
            let map = seg
                .map(Access::ReadWrite)
                .map_err(|e| crate::HandlerError::new(format!("cannot map a new blob: {e}")))?;
            Building::Large {
                seg,
                map: Some(map),
            }
        };
        Ok(BlobBuilder {
            store: Arc::clone(self.store),
            session: self.session,
            kind,
            len,
        })
    }
}

impl BlobBuilder {
    /// The blob's bytes, to fill. Only this builder can write them: the
    /// memory is the server's alone until [`seal`](Self::seal).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let (base, off) = match &self.kind {
            Building::Pool { map, offset, .. } => (
                map.as_mut_ptr().expect("pools are mapped read-write"),
                *offset as usize,
            ),
            Building::Large { map: Some(m), .. } => (
                m.as_mut_ptr().expect("mapped read-write"),
                DATA_OFFSET as usize,
            ),
            _ => return &mut [],
        };
        // SAFETY: a reserved pool range or a fresh memfd no other process has
        // a descriptor of; inside the live mapping `self` owns; `&mut self`
        // makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(base.add(off), self.len) }
    }

    /// Seals the blob and gives the calling session a lease on it: return
    /// the handle in the response (the client adopts it).
    pub fn seal(mut self) -> Result<BlobHandle, crate::HandlerError> {
        let kind = std::mem::replace(&mut self.kind, Building::Done);
        let store = Arc::clone(&self.store);
        let err = |m: String| crate::HandlerError::new(m);
        let len = self.len as u64;
        let (segment, offset, large) = match kind {
            Building::Pool {
                segment, offset, ..
            } => (segment, offset, None),
            Building::Large { seg, map } => {
                drop(map);
                seg.add_seals(Seals::WRITE | Seals::SEAL)
                    .map_err(|e| err(format!("cannot seal the result blob: {e}")))?;
                let ro = seg
                    .read_only_fd()
                    .and_then(Segment::from_fd)
                    .map_err(|e| err(format!("cannot reopen the result blob: {e}")))?;
                (0, DATA_OFFSET, Some(ro))
            }
            Building::Done => return Err(err("sealed twice".into())),
        };
        let mut g = store.lock();
        let segment = match large {
            Some(ro) => {
                let id = g.fresh_id();
                g.segments.insert(id, SegEntry::Large { seg: ro });
                id
            }
            None => segment,
        };
        let id = g.fresh_id();
        g.insert_leased(id, (segment, offset, len), self.session, &store.cfg.quota)
            .map_err(|e| crate::HandlerError::with_code(e.code, e.message))?;
        Ok(store.handle_of(id, segment, offset, len))
    }
}

impl AsMut<[u8]> for BlobBuilder {
    fn as_mut(&mut self) -> &mut [u8] {
        self.bytes_mut()
    }
}

impl Drop for BlobBuilder {
    fn drop(&mut self) {
        if let Building::Pool {
            segment, offset, ..
        } = self.kind
        {
            let mut g = self.store.lock();
            if let Some(SegEntry::Pool(p)) = g.segments.get_mut(&segment) {
                p.alloc.free(offset, self.len as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests;
