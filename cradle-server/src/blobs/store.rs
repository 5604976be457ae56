//! The blob store: the table, the memory cache and the disk writer behind
//! one mutex, and the operations on blobs themselves (author pools, seals,
//! large blobs, leases). The cache's keyed operations are in `keys.rs`, the
//! handler API in `ctx.rs`.

use super::cache::MemCache;
use super::error::{BlobError, Grant, human, sys};
use super::persist::DiskWriter;
use super::segments::{SegEntry, new_author, new_large};
use super::table::{SessionBlobs, SessionQuota, Table};
use ipc_core::ring::ShmSlice;
use ipc_core::shm::{Access, Mapping, Seals, Segment};
use ipc_rpc::ErrorCode;
use ipc_rpc::blob::{AUTHOR_KIND, BlobHandle, BlobStats, DATA_OFFSET, LARGE_KIND, SegmentInfo};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};

/// How the store is sized.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlobConfig {
    /// Length of each server pool segment.
    pub(crate) pool_segment_len: u64,
    /// Length of each session's author pool.
    pub(crate) author_pool_len: u64,
    /// The memory cache's budget in bytes.
    pub(crate) cache_budget: u64,
    /// Server-wide limit of blob bytes held outside the memory cache or
    /// being written (see `table.rs`).
    pub(crate) held_limit: u64,
    /// Per-session limits.
    pub(crate) quota: SessionQuota,
}

/// The default server-wide limit for a memory budget: twice the budget,
/// and at least 256 MiB (the author pools of 32 sessions).
pub(crate) fn default_held_limit(cache_budget: u64) -> u64 {
    cache_budget.saturating_mul(2).max(256 << 20)
}

/// A key whose latest put waits for the disk writer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    /// The blob of the latest put (queued for the writer).
    pub(crate) blob: u64,
    /// Queued puts of this blob under this key.
    pub(crate) count: u64,
}

/// Everything behind the store's mutex.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) table: Table,
    pub(crate) cache: MemCache,
    /// Keys whose latest put waits for the disk writer; they answer gets
    /// (from memory) even if the memory cache evicted them or never held
    /// them (a blob larger than its budget).
    pub(crate) pending: HashMap<String, Pending>,
}

/// Told of every put and of every closed session, outside the store's lock
/// (the compute-once claims of the memo module: a put answers the key's
/// waiters, a closed session frees its claims).
pub(crate) trait KeyWatcher: Send + Sync + std::fmt::Debug {
    /// `key` now has a value.
    fn stored(&self, key: &str);
    /// `session` is gone.
    fn session_closed(&self, session: u64);
}

/// The blob store: tables, pools, the memory cache and the disk writer.
#[derive(Debug)]
pub(crate) struct BlobStore {
    pub(crate) epoch: u64,
    pub(crate) cfg: BlobConfig,
    /// The disk tier and its writer, if the server has one.
    pub(crate) disk: Option<DiskWriter>,
    pub(crate) inner: Mutex<Inner>,
    /// Signalled whenever the disk writer finishes a put: puts waiting for
    /// room in the memory cache retry.
    pub(crate) written: Condvar,
    /// The store itself, for the jobs it hands the disk writer (set when
    /// the writer starts).
    me: OnceLock<Weak<BlobStore>>,
    /// Told of puts and closed sessions (weak: the watcher holds the store).
    watcher: OnceLock<Weak<dyn KeyWatcher>>,
}

impl BlobStore {
    pub(crate) fn new(epoch: u64, cfg: BlobConfig) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<SegEntry>();
        // Closes what `bury` sends; ends when the store (the sender) goes.
        let reaper = std::thread::Builder::new()
            .name("cradle-reaper".into())
            .spawn(move || {
                crate::background::lower_this_thread();
                rx.into_iter().for_each(drop)
            })
            .ok()
            .map(|_| tx);
        Self {
            epoch,
            cfg,
            disk: None,
            inner: Mutex::new(Inner {
                table: Table::new(cfg.held_limit, reaper),
                cache: MemCache::new(cfg.cache_budget),
                pending: HashMap::new(),
            }),
            written: Condvar::new(),
            me: OnceLock::new(),
            watcher: OnceLock::new(),
        }
    }

    /// Attaches the disk tier (its writer starts with
    /// [`start_disk`](Self::start_disk)).
    pub(crate) fn with_disk(mut self, tier: crate::disk::DiskTier) -> Self {
        self.disk = Some(DiskWriter::new(tier));
        self
    }

    /// The disk tier's directory, if any.
    pub(crate) fn disk_dir(&self) -> Option<&std::path::Path> {
        self.disk.as_ref().map(|d| d.tier().dir())
    }

    /// Starts the disk writer (once the store is shared).
    pub(crate) fn start_disk(self: &Arc<Self>) -> std::io::Result<()> {
        let _ = self.me.set(Arc::downgrade(self));
        self.disk.as_ref().map_or(Ok(()), DiskWriter::start)
    }

    /// The store as shared, for a job of the disk writer.
    pub(crate) fn me(&self) -> Result<Arc<Self>, BlobError> {
        self.me.get().and_then(Weak::upgrade).ok_or_else(|| {
            BlobError::new(
                ErrorCode::Shutdown,
                "the disk cache's writer is not running",
            )
        })
    }

    /// Stops taking disk jobs and writes the queued ones: a clean shutdown
    /// loses no put.
    pub(crate) fn stop_disk(&self) {
        if let Some(d) = &self.disk {
            d.stop();
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent tables (every
        // mutation completes before anything can panic); keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session (before its first request).
    pub(crate) fn open_session(&self, session: u64) {
        self.lock()
            .table
            .sessions
            .insert(session, SessionBlobs::default());
    }

    /// Drops everything `session` held: leases, unsealed blobs, author pool.
    pub(crate) fn close_session(&self, session: u64) {
        self.lock().table.close_session(session);
        if let Some(w) = self.watcher() {
            w.session_closed(session);
        }
    }

    /// Whether `session` is open.
    pub(crate) fn session_alive(&self, session: u64) -> bool {
        self.lock().table.sessions.contains_key(&session)
    }

    /// Sets the one [`KeyWatcher`] (later calls are ignored).
    pub(crate) fn watch(&self, w: Weak<dyn KeyWatcher>) {
        let _ = self.watcher.set(w);
    }

    /// The watcher, if it is still alive.
    pub(crate) fn watcher(&self) -> Option<Arc<dyn KeyWatcher>> {
        self.watcher.get().and_then(Weak::upgrade)
    }

    pub(crate) fn handle_of(&self, id: u64, segment: u64, offset: u64, len: u64) -> BlobHandle {
        BlobHandle {
            epoch: self.epoch,
            id,
            segment,
            offset,
            len,
        }
    }

    /// The session's author pool, created on first use; its read-write
    /// descriptor is to be sent to the client.
    pub(crate) fn author_pool(&self, session: u64) -> Result<(SegmentInfo, OwnedFd), BlobError> {
        let mut g = self.lock();
        let t = &mut g.table;
        let len = self.cfg.author_pool_len;
        let id = match t.session(session)?.author {
            Some(id) => id,
            None => {
                t.reserve(session, len, &self.cfg.quota, "an author pool")?;
                let seg = match new_author(len) {
                    Ok(seg) => seg,
                    Err(e) => {
                        t.unreserve(session, len);
                        return Err(e);
                    }
                };
                let id = t.fresh_id();
                t.segments.insert(id, seg);
                t.session(session)?.author = Some(id);
                id
            }
        };
        let Some(SegEntry::Author { seg, .. }) = t.segments.get(&id) else {
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
        let quota = &self.cfg.quota;
        let (src, dst_seg, dst_off, dst_map) = {
            let mut g = self.lock();
            let t = &mut g.table;
            let author = t.session(session)?.author.ok_or_else(|| {
                BlobError::handler("this session has no author pool (call AuthorPool first)")
            })?;
            let Some(SegEntry::Author { map, .. }) = t.segments.get(&author) else {
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
            let s = t.session(session)?;
            if s.lease_count >= quota.leases {
                return Err(BlobError::quota(format!(
                    "this session holds {} leases (limit {})",
                    s.lease_count, quota.leases
                )));
            }
            if s.pinned_bytes + len > quota.pinned_bytes {
                return Err(BlobError::quota(format!(
                    "this session would pin {} of blobs (limit {})",
                    human(s.pinned_bytes + len),
                    human(quota.pinned_bytes)
                )));
            }
            t.admit(len, "a small blob")?;
            let (seg, off, map) = t.pool_alloc(len, self.cfg.pool_segment_len)?;
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
        let id = g.table.fresh_id();
        g.table
            .insert_leased(id, (dst_seg, dst_off, len), session, quota)?;
        Ok(self.handle_of(id, dst_seg, dst_off, len))
    }

    /// Creates a large blob for `session` to write; returns its id, segment
    /// and the read-write descriptor for the author.
    pub(crate) fn create_large(
        &self,
        session: u64,
        len: u64,
    ) -> Result<(u64, SegmentInfo, OwnedFd), BlobError> {
        self.lock()
            .table
            .reserve(session, len, &self.cfg.quota, "a blob")?;
        // memfd_create, ftruncate and the header outside the lock.
        let made = new_large(len).and_then(|seg| {
            let fd = seg
                .fd()
                .try_clone_to_owned()
                .map_err(|e| sys("duplicate a descriptor", e))?;
            Ok((seg, fd))
        });
        let mut g = self.lock();
        let t = &mut g.table;
        let (seg, fd) = match made {
            Ok(x) => x,
            Err(e) => {
                t.unreserve(session, len);
                return Err(e);
            }
        };
        let blob = t.fresh_id();
        let segment = t.fresh_id();
        let info = SegmentInfo {
            segment,
            len: seg.len() as u64,
            kind: LARGE_KIND,
            fd_sent: true,
        };
        match t.sessions.get_mut(&session) {
            Some(s) => {
                s.writing.insert(segment);
            }
            // Closed meanwhile: nothing to undo but the segment (dropped).
            None => return Err(BlobError::closed()),
        }
        t.segments
            .insert(segment, SegEntry::Writing { seg, blob, len });
        Ok((blob, info, fd))
    }

    /// Seals the large blob `blob` of `session`: `F_SEAL_WRITE | F_SEAL_SEAL`
    /// (refused by the kernel while a writable mapping exists). The caller
    /// gets a lease.
    pub(crate) fn seal_large(&self, session: u64, blob: u64) -> Result<BlobHandle, BlobError> {
        let mut g = self.lock();
        let t = &mut g.table;
        let segment = t.writing_segment(session, blob)?;
        let Some(SegEntry::Writing { seg, len, .. }) = t.segments.get(&segment) else {
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
        t.segments.insert(segment, SegEntry::Large { seg: ro });
        t.session(session)?.writing.remove(&segment);
        // Its bytes move from "being written" to "leased".
        t.unreserve(session, len);
        t.insert_leased(blob, (segment, DATA_OFFSET, len), session, &self.cfg.quota)?;
        Ok(self.handle_of(blob, segment, DATA_OFFSET, len))
    }

    /// A mapping that covers a sealed blob of `segment`: the pool's, or a
    /// new read-only mapping of a large blob (made outside the lock).
    pub(crate) fn map_blob_segment(&self, segment: u64) -> Result<Arc<Mapping>, String> {
        let fd = {
            let g = self.lock();
            match g.table.segments.get(&segment) {
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
        let t = &mut g.table;
        let segment = t.check(self.epoch, h)?.segment;
        let (info, grant) = if want_fd {
            let (info, fd) = t.readable(segment)?;
            (info, Some((segment, fd)))
        } else {
            let info = t
                .segment_info(segment)
                .ok_or_else(|| BlobError::bad(format!("segment {segment} is gone")))?;
            (info, None)
        };
        t.lease(session, h.id, &self.cfg.quota, true)?;
        Ok((info, grant))
    }

    /// The read-only descriptor of a sealed segment.
    pub(crate) fn map_segment(&self, segment: u64) -> Result<(SegmentInfo, OwnedFd), BlobError> {
        self.lock().table.readable(segment)
    }

    /// Gives back leases and abandons unsealed large blobs; returns the
    /// leases released (ids the session held no lease on are ignored).
    pub(crate) fn release(&self, session: u64, leases: &[u64], aborted: &[u64]) -> u64 {
        let mut g = self.lock();
        let t = &mut g.table;
        let mut n = 0;
        for &blob in leases {
            if t.unlease(session, blob) {
                n += 1;
            }
        }
        for &blob in aborted {
            if let Ok(segment) = t.writing_segment(session, blob)
                && let Some(SegEntry::Writing { len, .. }) = t.segments.remove(&segment)
                && let Ok(s) = t.session(session)
            {
                s.writing.remove(&segment);
                t.unreserve(session, len);
            }
        }
        n
    }

    /// Store and cache figures.
    pub(crate) fn stats(&self) -> BlobStats {
        let g = self.lock();
        let t = &g.table;
        let mut st = BlobStats {
            blobs: t.blobs.len() as u64,
            blob_bytes: t.blobs.values().map(|b| b.len).sum(),
            leases: t.blobs.values().map(|b| b.leases).sum(),
            cache_entries: g.cache.len() as u64,
            cache_bytes: g.cache.used(),
            cache_budget: g.cache.budget(),
            hits: g.cache.hits,
            misses: g.cache.misses,
            evictions: g.cache.evictions,
            cache_full: g.cache.full,
            ..BlobStats::default()
        };
        for seg in t.segments.values() {
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
        drop(g);
        if let Some(d) = &self.disk {
            let s = d.tier().stats();
            st.disk_enabled = true;
            st.disk_entries = s.entries;
            st.disk_bytes = s.bytes;
            st.disk_budget = s.budget;
            st.disk_hits = s.hits;
            st.disk_misses = s.misses;
            st.disk_corruptions = s.corruptions;
            st.disk_evictions = s.evictions;
            st.disk_queued = d.queued();
        }
        st
    }

    /// `(leases, pinned_bytes, pool_bytes)` of a session.
    pub(crate) fn session_figures(&self, session: u64) -> (u64, u64, u64) {
        self.lock()
            .table
            .sessions
            .get(&session)
            .map_or((0, 0, 0), |s| (s.lease_count, s.pinned_bytes, s.pool_bytes))
    }

    /// Server-wide: `(held, being written, limit, allocations refused)`,
    /// in bytes but the last (see `table.rs`).
    #[cfg(test)]
    pub(crate) fn held_figures(&self) -> (u64, u64, u64, u64) {
        let g = self.lock();
        let (held, writing, limit) = g.table.held_figures();
        (held, writing, limit, g.table.refused)
    }
}

/// A `CacheFull` error.
pub(crate) fn cache_full(message: String) -> BlobError {
    BlobError::new(ErrorCode::CacheFull, message)
}
