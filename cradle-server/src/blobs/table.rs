//! The truth about every blob: ids, where its bytes are, who refers to it
//! (leases per session, handler pins, the disk writer, cache keys), and the
//! per-session and server-wide byte accounting.
//!
//! # Limits
//!
//! * Per session ([`SessionQuota`]): leases held, bytes of the distinct
//!   blobs leased, bytes being written (author pool, unsealed large blobs,
//!   result blobs a handler is building for it).
//! * Server-wide (`held_limit`): the bytes no cache budget bounds, that is
//!   blobs held (leased, pinned by a handler, or waiting for the disk
//!   writer) that are not in the memory cache, plus every byte being
//!   written. Blobs in the memory cache are bounded by its budget, so a
//!   lease on a cached blob costs nothing here. Any allocation that would
//!   cross the limit fails with `QuotaExceeded`, naming it.

use super::error::{BlobError, human, sys};
use super::segments::{SegEntry, new_pool};
use ipc_rpc::blob::{BlobHandle, DATA_OFFSET, LARGE_KIND, POOL_KIND, SegmentInfo};
use ipc_rpc::idmap::IdMap;
use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use ipc_core::shm::Mapping;

/// Per-session limits.
///
/// ```
/// let q = cradle_server::SessionQuota { leases: 1024, ..Default::default() };
/// assert_eq!(q.pinned_bytes, 16 << 30);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionQuota {
    /// Leases held at once.
    pub leases: u64,
    /// Bytes of the distinct blobs a session holds leases on.
    pub pinned_bytes: u64,
    /// Bytes a session is writing: its author pool, its unsealed large
    /// blobs, and result blobs a handler is building for it.
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

/// A sealed blob in the table.
#[derive(Debug)]
pub(crate) struct BlobEntry {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    /// Leases, all sessions.
    pub(crate) leases: u64,
    /// Handlers reading it now.
    pub(crate) pins: u64,
    /// Puts of it the disk writer has not finished.
    pub(crate) queued: u64,
    /// Cache keys naming it.
    pub(crate) cached: u64,
    /// BLAKE3-256 of its bytes, once computed (or known at birth: a memo
    /// entry's result loaded from disk).
    pub(crate) digest: Option<[u8; 32]>,
    /// Counted in `Table::held`.
    charged: bool,
}

impl BlobEntry {
    /// Held by a client or a handler: the cache may not evict it.
    pub(crate) fn held(&self) -> bool {
        self.leases > 0 || self.pins > 0
    }

    fn unreferenced(&self) -> bool {
        !self.held() && self.queued == 0 && self.cached == 0
    }

    /// Alive for something other than the memory cache, and outside it.
    fn chargeable(&self) -> bool {
        self.cached == 0 && (self.held() || self.queued > 0)
    }
}

/// What the store knows of one session.
#[derive(Debug, Default)]
pub(crate) struct SessionBlobs {
    /// Blob id → leases held.
    pub(crate) leases: IdMap<u64>,
    pub(crate) lease_count: u64,
    pub(crate) pinned_bytes: u64,
    /// Author pool + unsealed large blobs + result blobs being built.
    pub(crate) pool_bytes: u64,
    pub(crate) author: Option<u64>,
    pub(crate) writing: HashSet<u64>,
}

/// Blobs, segments and sessions, behind the store's one mutex.
#[derive(Debug)]
pub(crate) struct Table {
    /// Segments to close off the lock and off the call path: closing the
    /// last descriptor of a large memfd frees its pages (about 10 ms for
    /// 64 MiB), which must not hold up every other blob operation.
    pub(crate) reaper: Option<std::sync::mpsc::Sender<SegEntry>>,
    pub(crate) next_id: u64,
    pub(crate) blobs: IdMap<BlobEntry>,
    pub(crate) segments: IdMap<SegEntry>,
    /// Pool segment ids, oldest first.
    pub(crate) pools: Vec<u64>,
    pub(crate) sessions: IdMap<SessionBlobs>,
    /// Bytes of the charged blobs (see the module documentation).
    held: u64,
    /// Bytes being written, all sessions.
    writing: u64,
    /// The server-wide limit of `held + writing`.
    held_limit: u64,
    /// Allocations refused by the server-wide limit.
    pub(crate) refused: u64,
}

impl Table {
    pub(crate) fn new(held_limit: u64, reaper: Option<std::sync::mpsc::Sender<SegEntry>>) -> Self {
        Self {
            reaper,
            next_id: 0,
            blobs: IdMap::default(),
            segments: IdMap::default(),
            pools: Vec::new(),
            sessions: IdMap::default(),
            held: 0,
            writing: 0,
            held_limit,
            refused: 0,
        }
    }

    pub(crate) fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// `(held, writing, limit)`: the server-wide figures.
    #[cfg(test)]
    pub(crate) fn held_figures(&self) -> (u64, u64, u64) {
        (self.held, self.writing, self.held_limit)
    }

    /// Checks that `extra` more bytes held or being written stay within the
    /// server-wide limit.
    pub(crate) fn admit(&mut self, extra: u64, what: &str) -> Result<(), BlobError> {
        let now = self.held + self.writing;
        if now.saturating_add(extra) <= self.held_limit {
            return Ok(());
        }
        self.refused += 1;
        Err(BlobError::quota(format!(
            "{what} of {} would take the blob memory held by all sessions (leased, pinned or being written, outside the memory cache) to {}, over the server-wide limit of {}; retry once blobs are released (the limit is twice --mem-cache-bytes unless --max-held-bytes sets it)",
            human(extra),
            human(now.saturating_add(extra)),
            human(self.held_limit)
        )))
    }

    /// Reserves `len` bytes being written for `session`: its quota, then the
    /// server-wide limit.
    pub(crate) fn reserve(
        &mut self,
        session: u64,
        len: u64,
        quota: &SessionQuota,
        what: &str,
    ) -> Result<(), BlobError> {
        let s = self.session(session)?;
        if s.pool_bytes.saturating_add(len) > quota.pool_bytes {
            return Err(BlobError::quota(format!(
                "{what} of {} would take this session's bytes being written to {} (limit {})",
                human(len),
                human(s.pool_bytes.saturating_add(len)),
                human(quota.pool_bytes)
            )));
        }
        self.admit(len, what)?;
        let s = self.session(session)?;
        s.pool_bytes += len;
        self.writing += len;
        Ok(())
    }

    /// Gives back bytes reserved by [`reserve`](Self::reserve) (nothing if
    /// the session is closed: closing gave back all it was writing).
    pub(crate) fn unreserve(&mut self, session: u64, len: u64) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.pool_bytes -= len;
            self.writing -= len;
        }
    }

    /// Checks a client's handle against the table.
    pub(crate) fn check(&self, epoch: u64, h: &BlobHandle) -> Result<&BlobEntry, BlobError> {
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

    pub(crate) fn session(&mut self, id: u64) -> Result<&mut SessionBlobs, BlobError> {
        self.sessions.get_mut(&id).ok_or_else(BlobError::closed)
    }

    /// Whether taking a new reference on `blob` would charge it.
    fn would_charge(&self, blob: u64) -> Option<u64> {
        self.blobs
            .get(&blob)
            .filter(|b| !b.charged && b.cached == 0)
            .map(|b| b.len)
    }

    /// Adds one lease of `blob` to `session` after checking its quota (and,
    /// with `admit`, the server-wide limit).
    pub(crate) fn lease(
        &mut self,
        session: u64,
        blob: u64,
        quota: &SessionQuota,
        admit: bool,
    ) -> Result<(), BlobError> {
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
                "this session would pin {} of blobs (limit {})",
                human(s.pinned_bytes + len),
                human(quota.pinned_bytes)
            )));
        }
        if admit && let Some(extra) = self.would_charge(blob) {
            self.admit(extra, "a lease on a blob")?;
        }
        let s = self.session(session)?;
        *s.leases.entry(blob).or_insert(0) += 1;
        s.lease_count += 1;
        if first {
            s.pinned_bytes += len;
        }
        if let Some(b) = self.blobs.get_mut(&blob) {
            b.leases += 1;
        }
        self.settle(blob);
        Ok(())
    }

    /// Enters a sealed blob at `(segment, offset, len)` with one lease for
    /// `session` (its bytes were admitted when they were reserved); over
    /// the session's quota, the blob is freed again.
    pub(crate) fn insert_leased(
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
                queued: 0,
                cached: 0,
                digest: None,
                charged: false,
            },
        );
        self.lease(session, id, quota, false)
            .inspect_err(|_| self.settle(id))
    }

    /// Drops one lease of `blob` held by `session`; false if it held none.
    pub(crate) fn unlease(&mut self, session: u64, blob: u64) -> bool {
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
        self.settle(blob);
        true
    }

    /// Pins `blob` to read it; with `admit`, the server-wide limit is
    /// checked if the pin makes the blob count there (a handler's read; the
    /// disk writer's reads are of blobs already counted or cached).
    pub(crate) fn pin(&mut self, blob: u64, admit: bool) -> Result<(), BlobError> {
        if admit && let Some(extra) = self.would_charge(blob) {
            self.admit(extra, "pinning a blob")?;
        }
        if let Some(b) = self.blobs.get_mut(&blob) {
            b.pins += 1;
        }
        self.settle(blob);
        Ok(())
    }

    /// Undoes [`pin`](Self::pin).
    pub(crate) fn unpin(&mut self, blob: u64) {
        if let Some(b) = self.blobs.get_mut(&blob) {
            b.pins -= 1;
        }
        self.settle(blob);
    }

    /// Changes the disk writer's count of queued puts of `blob`.
    pub(crate) fn queue(&mut self, blob: u64, add: bool) {
        if let Some(b) = self.blobs.get_mut(&blob) {
            if add {
                b.queued += 1;
            } else {
                b.queued -= 1;
            }
        }
        self.settle(blob);
    }

    /// Changes the number of cache keys naming `blob`.
    pub(crate) fn set_cached(&mut self, blob: u64, add: bool) {
        if let Some(b) = self.blobs.get_mut(&blob) {
            if add {
                b.cached += 1;
            } else {
                b.cached -= 1;
            }
        }
        self.settle(blob);
    }

    /// After any change of `blob`'s references: updates the server-wide
    /// figure and frees the blob if nothing refers to it any more.
    pub(crate) fn settle(&mut self, blob: u64) {
        let Some(b) = self.blobs.get_mut(&blob) else {
            return;
        };
        let want = b.chargeable();
        if want != b.charged {
            b.charged = want;
            if want {
                self.held += b.len;
            } else {
                self.held -= b.len;
            }
        }
        if !b.unreferenced() {
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
    pub(crate) fn bury(&mut self, seg: SegEntry) {
        if let Some(r) = &self.reaper
            && let Err(back) = r.send(seg)
        {
            self.reaper = None;
            drop(back.0);
        }
    }

    /// A pool range of `len` bytes: `(segment, offset, mapping)`.
    pub(crate) fn pool_alloc(
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
        tracing::debug!(segment = id, bytes = %human(pool_len), "new server pool segment");
        Ok((id, off, map))
    }

    /// The read-only descriptor of a segment a reader may map.
    pub(crate) fn readable(&self, segment: u64) -> Result<(SegmentInfo, OwnedFd), BlobError> {
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
    pub(crate) fn writing_segment(&self, session: u64, blob: u64) -> Result<u64, BlobError> {
        let s = self.sessions.get(&session).ok_or_else(BlobError::closed)?;
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

    pub(crate) fn segment_info(&self, segment: u64) -> Option<SegmentInfo> {
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

    /// Drops everything `session` held: leases, unsealed blobs, author pool.
    pub(crate) fn close_session(&mut self, session: u64) {
        let Some(s) = self.sessions.remove(&session) else {
            return;
        };
        for (blob, n) in s.leases {
            if let Some(b) = self.blobs.get_mut(&blob) {
                b.leases -= n;
            }
            self.settle(blob);
        }
        for seg in s.writing.into_iter().chain(s.author) {
            if let Some(seg) = self.segments.remove(&seg) {
                self.bury(seg);
            }
        }
        // What it was writing, including result blobs a handler is still
        // building for it (those give their bytes back when dropped).
        self.writing -= s.pool_bytes;
    }
}
