//! The shared cache's keyed operations: put, get, load, remove, list.
//!
//! * A `put` stores the blob in memory (evicting what the [`Lru`] policy
//!   offers and nothing holds) and, with a disk tier, hands it to the disk
//!   writer (`persist.rs`), which writes it off the call path; `pending`
//!   answers gets of the key until it is written. Before the put is
//!   acknowledged, the key's older disk entry is invalidated, and the
//!   writer skips a put that a newer put or remove of its key superseded:
//!   whatever happens to the write (a full disk, a crash, a restart), the
//!   key never goes back to an older value.
//! * A blob larger than the memory budget goes to the disk tier alone (if
//!   it fits there): memory keeps it only until it is written, and a later
//!   `get` loads it from disk into a new blob that memory does not keep.
//! * If memory is full of entries the disk writer still needs, a put waits
//!   for the writer (at most [`WRITER_WAIT`]).
//! * A `get` that misses memory answers `OnDisk` when the tier has the key;
//!   the client then asks for a `load` (offload pool), which reads the
//!   entry straight into a new blob, checksum verified.
//! * Statistics: a get counts one hit or one miss in memory; a memory miss
//!   counts one hit or one miss in the disk tier (when it has one).
//!
//! [`Lru`]: super::cache::Lru

use super::cache::{Evictable, Eviction};
use super::ctx::{BlobCtx, BlobView};
use super::error::{BlobError, human};
use super::persist::{Done, QueuedPut, SUPERSEDED};
use super::store::{BlobStore, Inner, Pending, cache_full};
use crate::disk::GetError;
use ipc_rpc::ErrorCode;
use ipc_rpc::blob::{BlobHandle, Hit, Lookup, SegmentInfo};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

/// The longest a put waits for the disk writer to make room in memory.
pub(crate) const WRITER_WAIT: Duration = Duration::from_secs(10);

/// Where a key is, for [`BlobStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyEntry {
    /// The key.
    pub(crate) key: String,
    /// The value's length in bytes.
    pub(crate) len: u64,
    /// In the memory cache (or in memory on its way to the disk tier).
    pub(crate) in_memory: bool,
    /// In the disk tier.
    pub(crate) on_disk: bool,
}

/// A put queued for the disk writer: its blob is held (`queued`) until the
/// writer is done with it.
struct QueuedBlob {
    store: Arc<BlobStore>,
    key: String,
    blob: u64,
}

impl QueuedPut for QueuedBlob {
    fn key(&self) -> &str {
        &self.key
    }

    fn superseded(&self) -> bool {
        self.store
            .lock()
            .pending
            .get(&self.key)
            .is_none_or(|p| p.blob != self.blob)
    }

    fn with_bytes(&self, write: &mut dyn FnMut(&[u8]) -> Result<(), String>) -> Result<(), String> {
        // The view takes a pin of its own (the blob is held by this job
        // anyway), dropped with it.
        self.store
            .lock()
            .table
            .pin(self.blob, false)
            .map_err(|e| e.message)?;
        let view = BlobView::of_pinned(&self.store, self.blob)?;
        write(view.bytes())
    }

    fn finish(self: Box<Self>, _outcome: &Result<(), String>) {
        let mut g = self.store.lock();
        if let Some(p) = g.pending.get_mut(&self.key)
            && p.blob == self.blob
        {
            p.count -= 1;
            if p.count == 0 {
                g.pending.remove(&self.key);
            }
        }
        g.table.queue(self.blob, false);
        drop(g);
        self.store.written.notify_all();
    }
}

impl Inner {
    /// Whether `blob` could leave memory now.
    fn evictable(&self, blob: u64) -> Evictable {
        match self.table.blobs.get(&blob) {
            Some(b) if b.held() => Evictable::Held,
            Some(b) if b.queued > 0 => Evictable::AfterWrite,
            _ => Evictable::Now,
        }
    }

    /// The cache keys of a memo entry's result blobs that memory holds.
    fn memo_results(&self, key: &str) -> Vec<(String, u64, u64)> {
        if memo_part(key) != MemoPart::Entry {
            return Vec::new();
        }
        (0..)
            .map(|i| format!("{key}/{i}"))
            .map_while(|k| self.cache.peek(&k).map(|(b, len)| (k, b, len)))
            .collect()
    }

    /// Whether the entry under `key` (blob `blob`) could leave memory now,
    /// and the bytes that would leave with it. A memo entry's result blobs
    /// are pinned by the entry: they leave with it, and it stays while a
    /// client or a handler holds one of them.
    fn key_status(&self, key: &str, blob: u64) -> (Evictable, u64) {
        match memo_part(key) {
            MemoPart::Result(entry) if self.cache.peek(entry).is_some() => (Evictable::Held, 0),
            MemoPart::Entry => {
                let mut status = self.evictable(blob);
                let mut along = 0;
                for (_, b, len) in self.memo_results(key) {
                    along += len;
                    status = match (status, self.evictable(b)) {
                        (Evictable::Held, _) | (_, Evictable::Held) => Evictable::Held,
                        (Evictable::AfterWrite, _) | (_, Evictable::AfterWrite) => {
                            Evictable::AfterWrite
                        }
                        _ => Evictable::Now,
                    };
                }
                (status, along)
            }
            _ => (self.evictable(blob), 0),
        }
    }

    /// Evicts `victims` from memory (a memo entry with its results).
    fn evict(&mut self, victims: Vec<String>) {
        for k in victims {
            let along = self.memo_results(&k);
            if let Some(b) = self.cache.remove(&k) {
                self.cache.evictions += 1;
                self.table.set_cached(b, false);
            }
            for (r, _, _) in along {
                if let Some(b) = self.cache.remove(&r) {
                    self.cache.evictions += 1;
                    self.table.set_cached(b, false);
                }
            }
        }
    }

    /// Stores `blob` (`len` bytes) under `key` in memory; room was made.
    fn cache_store(&mut self, key: &str, blob: u64, len: u64) {
        self.table.set_cached(blob, true);
        if let Some(old) = self.cache.insert(key, blob, len) {
            self.table.set_cached(old, false);
        }
    }

    /// Takes `key` out of memory (not out of `pending`).
    fn uncache(&mut self, key: &str) -> bool {
        match self.cache.remove(key) {
            Some(b) => {
                self.table.set_cached(b, false);
                true
            }
            None => false,
        }
    }
}

/// What a cache key is to the memo (`docs/architecture.md` §14).
#[derive(Debug, PartialEq, Eq)]
enum MemoPart<'a> {
    /// `cradle.memo/<method>/<64 hex>`: an entry.
    Entry,
    /// `<entry>/<i>`: result blob `i` of that entry.
    Result(&'a str),
    /// Any other key.
    Other,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn memo_part(key: &str) -> MemoPart<'_> {
    if !ipc_rpc::memo::is_reserved(key) {
        return MemoPart::Other;
    }
    let Some((head, last)) = key.rsplit_once('/') else {
        return MemoPart::Other;
    };
    if is_hex64(last) {
        return MemoPart::Entry;
    }
    let entry_tail = head.rsplit_once('/').map(|(_, t)| t);
    if !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
        && entry_tail.is_some_and(is_hex64)
    {
        return MemoPart::Result(head);
    }
    MemoPart::Other
}

/// How a put is stored.
enum Placement {
    /// In memory (and queued for the disk tier if there is one).
    Memory,
    /// Larger than the memory budget: queued for the disk tier only.
    DiskOnly,
}

impl BlobStore {
    /// Makes room in memory for `len` bytes under `key`, waiting for the
    /// disk writer if what could go is still waiting to be written. Counts
    /// a refusal in `cache_full`.
    fn make_room<'a>(
        &'a self,
        mut g: MutexGuard<'a, Inner>,
        key: &str,
        len: u64,
    ) -> Result<MutexGuard<'a, Inner>, BlobError> {
        let deadline = Instant::now() + WRITER_WAIT;
        loop {
            let plan = g
                .cache
                .plan_eviction_with(key, len, |k, b| g.key_status(k, b));
            let budget = g.cache.budget();
            match plan {
                Eviction::Evict(victims) => {
                    g.evict(victims);
                    return Ok(g);
                }
                Eviction::WaitForWriter { queued } => {
                    let now = Instant::now();
                    if now >= deadline {
                        g.cache.full += 1;
                        return Err(cache_full(format!(
                            "the memory cache (budget {}, --mem-cache-bytes) cannot make room for {} yet: {} of its entries are still being written to the disk cache, which has not caught up within {} s; retry",
                            human(budget),
                            human(len),
                            human(queued),
                            WRITER_WAIT.as_secs()
                        )));
                    }
                    g = self
                        .written
                        .wait_timeout(g, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                Eviction::Held { free, held } => {
                    g.cache.full += 1;
                    return Err(cache_full(format!(
                        "the memory cache (budget {}, --mem-cache-bytes; {} used) cannot make room for {}: {} of its entries are held by clients' leases or by handlers reading them, and only {} could be evicted; drop BlobRefs (or call flush()) and retry, or raise --mem-cache-bytes",
                        human(budget),
                        human(g.cache.used()),
                        human(len),
                        human(held),
                        human(free)
                    )));
                }
            }
        }
    }

    /// Where a blob of `len` bytes can be stored, or the `CacheFull` error
    /// naming both budgets.
    fn placement(&self, g: &mut Inner, key: &str, len: u64) -> Result<Placement, BlobError> {
        let budget = g.cache.budget();
        if len <= budget {
            return Ok(Placement::Memory);
        }
        match &self.disk {
            Some(d) if d.tier().fits(key, len) => Ok(Placement::DiskOnly),
            Some(d) => {
                g.cache.full += 1;
                Err(cache_full(format!(
                    "a blob of {} is larger than the memory cache's budget ({}, --mem-cache-bytes) and than the disk cache's ({}, --disk-cache-bytes); raise one of them",
                    human(len),
                    human(budget),
                    human(d.tier().budget())
                )))
            }
            None => {
                g.cache.full += 1;
                Err(cache_full(format!(
                    "a blob of {} is larger than the memory cache's budget ({}, --mem-cache-bytes) and this server has no disk tier configured (--disk-cache DIR with --disk-cache-bytes); raise the memory budget or give the server a disk cache",
                    human(len),
                    human(budget)
                )))
            }
        }
    }

    /// Stores `h` under `key` (in memory, and queued for the disk tier);
    /// with `durable`, the writer answers on it once the entry is durable.
    fn put_and_queue(
        &self,
        key: &str,
        h: &BlobHandle,
        if_absent: bool,
        durable: Option<Done<()>>,
    ) -> Result<bool, BlobError> {
        // The store as the disk writer's jobs hold it (before any change).
        let me = match &self.disk {
            Some(_) => Some(self.me()?),
            None => None,
        };
        let mut g = self.lock();
        let len = g.table.check(self.epoch, h)?.len;
        let exists = g.cache.peek(key).is_some() || g.pending.contains_key(key);
        if if_absent && exists {
            return Ok(false);
        }
        let placement = self.placement(&mut g, key, len)?;
        let same = g.cache.peek(key).map(|(b, _)| b) == Some(h.id);
        if same && self.disk.is_none() {
            g.cache.touch(key);
            return Ok(true);
        }
        if let Placement::Memory = placement {
            g = self.make_room(g, key, len)?;
            // The wait may have let another put of the key in.
            if if_absent && (g.cache.peek(key).is_some() || g.pending.contains_key(key)) {
                return Ok(false);
            }
        }
        match placement {
            Placement::Memory => g.cache_store(key, h.id, len),
            // Memory may hold an older value of the key: it goes.
            Placement::DiskOnly => {
                g.uncache(key);
            }
        }
        let (Some(d), Some(me)) = (&self.disk, me) else {
            return Ok(true);
        };
        // Held until the writer is done with it; `pending` answers gets of
        // the key should memory evict it (or never hold it) meanwhile, and
        // tells the writer that earlier puts of the key are superseded.
        g.table.queue(h.id, true);
        let p = g.pending.entry(key.to_owned()).or_insert(Pending {
            blob: h.id,
            count: 0,
        });
        if p.blob != h.id {
            *p = Pending {
                blob: h.id,
                count: 0,
            };
        }
        p.count += 1;
        drop(g);
        // The older disk entry goes before this put is acknowledged: if the
        // write fails or never happens, the key is a miss, never an older
        // value. Outside the store's lock (the writer checks `pending`
        // under the tier's lock, just before renaming a file in), so an
        // older put the writer is finishing either lands before this and
        // is removed here, or sees itself superseded and is dropped.
        let job = Box::new(QueuedBlob {
            store: me,
            key: key.to_owned(),
            blob: h.id,
        });
        match d.tier().invalidate(key) {
            Ok(Some(retired)) => d.discard(retired),
            Ok(None) => {}
            Err(e) => {
                // Not acknowledged: the key leaves memory too.
                let mut g = self.lock();
                g.uncache(key);
                if g.pending.get(key).is_some_and(|p| p.blob == h.id) {
                    g.pending.remove(key);
                }
                drop(g);
                job.finish(&Err(e.to_string()));
                return Err(BlobError::handler(format!(
                    "{key} could not replace its older value in the disk cache ({e}); the key was removed"
                )));
            }
        }
        d.put(job, durable.is_some(), durable)?;
        Ok(true)
    }

    /// Stores `h` under `key`; `Ok(false)` if `if_absent` and the key
    /// exists. Persisted to the disk tier off the call path.
    pub(crate) fn cache_put(
        &self,
        key: &str,
        h: &BlobHandle,
        if_absent: bool,
    ) -> Result<bool, BlobError> {
        let stored = self.put_and_queue(key, h, if_absent, None)?;
        if stored && let Some(w) = self.watcher() {
            w.stored(key);
        }
        Ok(stored)
    }

    /// [`cache_put`](Self::cache_put), answered once the entry is durable
    /// on disk. Blocks: called on the offload pool.
    pub(crate) fn cache_put_durable(
        &self,
        key: &str,
        h: &BlobHandle,
        if_absent: bool,
    ) -> Result<bool, BlobError> {
        if self.disk.is_none() {
            return Err(BlobError::handler(
                "this server has no disk tier configured (the cradle-server binary runs without one with --no-disk-cache; a server built as a library has one only with ServerBuilder::disk_cache): nothing can be made durable",
            ));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        if !self.put_and_queue(key, h, if_absent, Some(tx))? {
            return Ok(false);
        }
        if let Some(w) = self.watcher() {
            w.stored(key);
        }
        match rx.recv() {
            Ok(Ok(())) => Ok(true),
            Ok(Err(e)) if e == SUPERSEDED => Err(BlobError::handler(format!(
                "{key}: {e} (the newer value is the key's value now)"
            ))),
            Ok(Err(e)) => Err(BlobError::handler(format!(
                "{key} could not be written durably to disk ({e}); it is in memory only and has no disk copy"
            ))),
            Err(_) => Err(BlobError::new(
                ErrorCode::Shutdown,
                "the disk cache's writer stopped before the put was durable",
            )),
        }
    }

    /// The blob memory holds for `key` (the cache, or a put on its way to
    /// the disk tier), without counting.
    fn in_memory(g: &Inner, key: &str) -> Option<u64> {
        g.cache
            .peek(key)
            .map(|(b, _)| b)
            .or_else(|| g.pending.get(key).map(|p| p.blob))
    }

    /// Looks `key` up in memory (or among puts not yet on disk); a hit
    /// takes a lease for `session`. Never reads the disk: a key the disk
    /// tier has answers `OnDisk`, and its hit is counted by the `load`.
    pub(crate) fn cache_get(&self, session: u64, key: &str) -> Result<Lookup, BlobError> {
        let mut g = self.lock();
        let Some(blob) = Self::in_memory(&g, key) else {
            g.cache.misses += 1;
            drop(g);
            let on_disk = match &self.disk {
                Some(d) if d.tier().len_of(key).is_some() => true,
                Some(d) => {
                    d.tier().count_miss();
                    false
                }
                None => false,
            };
            return Ok(if on_disk {
                Lookup::OnDisk
            } else {
                Lookup::Miss
            });
        };
        g.cache.hits += 1;
        g.cache.touch(key);
        let hit = self.lease_hit(&mut g, session, blob)?;
        Ok(Lookup::Hit(hit))
    }

    /// What memory holds under `key` (the cache, or a put on its way to
    /// disk), leased to `session` and marked used; counts no hit or miss
    /// (the memo keeps its own figures).
    pub(crate) fn lease_key(&self, session: u64, key: &str) -> Result<Option<Hit>, BlobError> {
        let mut g = self.lock();
        let Some(blob) = Self::in_memory(&g, key) else {
            return Ok(None);
        };
        g.cache.touch(key);
        self.lease_hit(&mut g, session, blob).map(Some)
    }

    /// One memo hit under one lock: if memory still holds blob `entry`
    /// under `key`, leases the blob under each of `results` to `session`
    /// and marks them all used; `Ok(None)` if anything is missing (nothing
    /// is leased then).
    pub(crate) fn lease_memo(
        &self,
        session: u64,
        key: &str,
        entry: u64,
        results: &[String],
    ) -> Result<Option<Vec<BlobHandle>>, BlobError> {
        let mut g = self.lock();
        if Self::in_memory(&g, key) != Some(entry) {
            return Ok(None);
        }
        let mut blobs = Vec::with_capacity(results.len());
        for r in results {
            match Self::in_memory(&g, r) {
                Some(b) => blobs.push(b),
                None => return Ok(None),
            }
        }
        let mut out = Vec::with_capacity(blobs.len());
        for &b in &blobs {
            match self.lease_hit(&mut g, session, b) {
                Ok(hit) => out.push(hit.handle),
                Err(e) => {
                    for h in &out {
                        g.table.unlease(session, h.id);
                    }
                    return Err(e);
                }
            }
        }
        g.cache.touch(key);
        for r in results {
            g.cache.touch(r);
        }
        Ok(Some(out))
    }

    /// Leases blob `blob` to `session` (a memo result for a caller that
    /// waited for it).
    pub(crate) fn lease_blob(&self, session: u64, blob: u64) -> Result<Hit, BlobError> {
        let mut g = self.lock();
        self.lease_hit(&mut g, session, blob)
    }

    /// Whether the disk tier holds `key` (from its index: no file read).
    pub(crate) fn on_disk(&self, key: &str) -> bool {
        self.disk
            .as_ref()
            .is_some_and(|d| d.tier().len_of(key).is_some())
    }

    fn lease_hit(&self, g: &mut Inner, session: u64, blob: u64) -> Result<Hit, BlobError> {
        let t = &mut g.table;
        let (segment, offset, len) = match t.blobs.get(&blob) {
            Some(b) => (b.segment, b.offset, b.len),
            None => return Err(BlobError::handler("a cached blob vanished")),
        };
        let info: SegmentInfo = t
            .segment_info(segment)
            .ok_or_else(|| BlobError::handler("a cached blob's segment vanished"))?;
        t.lease(session, blob, &self.cfg.quota, true)?;
        Ok(Hit {
            handle: self.handle_of(blob, segment, offset, len),
            segment: info,
        })
    }

    /// Loads `key` from the disk tier into a new blob leased to `session`
    /// (checksum verified), and caches it in memory again if it fits.
    /// Follows a `get` that answered `OnDisk` (which counted the memory
    /// miss); the disk tier counts its hit or miss. Blocks on disk reads:
    /// called on the offload pool.
    pub(crate) fn cache_load(
        self: &Arc<Self>,
        session: u64,
        key: &str,
    ) -> Result<Option<Hit>, BlobError> {
        {
            let mut g = self.lock();
            // Loaded by someone else meanwhile.
            if let Some(blob) = Self::in_memory(&g, key) {
                return self.lease_hit(&mut g, session, blob).map(Some);
            }
        }
        let Some(d) = &self.disk else {
            return Ok(None);
        };
        let ctx = BlobCtx {
            store: self,
            session,
        };
        let got = d.tier().get(key, |len| {
            usize::try_from(len)
                .map_err(|_| format!("an entry of {len} bytes"))
                .and_then(|n| ctx.create(n).map_err(|e| e.message))
        });
        let builder = match got {
            Ok(Some(b)) => b,
            // Gone, or damaged (dropped and counted by the tier).
            Ok(None) => return Ok(None),
            Err(GetError::Alloc(e)) => {
                return Err(BlobError::new(
                    ErrorCode::QuotaExceeded,
                    format!("no memory for {key} from the disk cache: {e}"),
                ));
            }
            Err(e) => return Err(BlobError::handler(e.to_string())),
        };
        let handle = builder
            .seal()
            .map_err(|e| BlobError::new(e.code, e.message))?;
        let mut g = self.lock();
        // Back into memory if it fits now, without waiting or counting; a
        // full cache (or a blob over its budget) still serves the blob.
        let len = handle.len;
        let absent = Self::in_memory(&g, key).is_none();
        if absent
            && len <= g.cache.budget()
            && let Eviction::Evict(victims) = g
                .cache
                .plan_eviction_with(key, len, |k, b| g.key_status(k, b))
        {
            g.evict(victims);
            g.cache_store(key, handle.id, len);
        }
        let segment = g
            .table
            .segment_info(handle.segment)
            .ok_or_else(|| BlobError::handler("a loaded blob's segment vanished"))?;
        Ok(Some(Hit { handle, segment }))
    }

    /// Removes `key` from memory and from the disk tier (after any queued
    /// put of it); whether it was in either. Blocks on the disk: called on
    /// the offload pool.
    pub(crate) fn cache_remove(&self, key: &str) -> Result<bool, BlobError> {
        let (in_memory, rx) = {
            let mut g = self.lock();
            let cached = g.uncache(key);
            // A queued put of the key no longer answers gets, and the
            // writer skips it.
            let pending = g.pending.remove(key).is_some();
            let rx = match &self.disk {
                Some(d) => {
                    let (tx, rx) = std::sync::mpsc::channel();
                    d.remove(key, tx)?;
                    Some(rx)
                }
                None => None,
            };
            (cached || pending, rx)
        };
        let on_disk = match rx.map(|rx| rx.recv()) {
            None => false,
            Some(Ok(Ok(found))) => found,
            Some(Ok(Err(e))) => {
                return Err(BlobError::handler(format!(
                    "{key} left the memory cache but could not be removed from disk: {e}"
                )));
            }
            Some(Err(_)) => {
                return Err(BlobError::new(
                    ErrorCode::Shutdown,
                    "the disk cache's writer stopped",
                ));
            }
        };
        Ok(in_memory || on_disk)
    }

    /// The keys starting with `prefix` and sorting after `after` (empty:
    /// from the first), in order, while `fits` accepts them: each with its
    /// length and the tiers holding it; and whether more follow. Reads no
    /// file (the disk tier's index); a disk entry may still turn out damaged
    /// when loaded. Each page gathers the matching keys of both tiers anew,
    /// so listing n keys costs O(n) per page.
    pub(crate) fn list(
        &self,
        prefix: &str,
        after: &str,
        mut fits: impl FnMut(&KeyEntry) -> bool,
    ) -> (Vec<KeyEntry>, bool) {
        let mut all: std::collections::BTreeMap<String, KeyEntry> = Default::default();
        {
            let g = self.lock();
            let memory = g.cache.keys(prefix).chain(
                g.pending
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .filter_map(|(k, p)| Some((k.as_str(), g.table.blobs.get(&p.blob)?.len))),
            );
            for (k, len) in memory {
                all.insert(
                    k.to_owned(),
                    KeyEntry {
                        key: k.to_owned(),
                        len,
                        in_memory: true,
                        on_disk: false,
                    },
                );
            }
        }
        if let Some(d) = &self.disk {
            for (k, len) in d.tier().keys(prefix) {
                all.entry(k.clone())
                    .and_modify(|e| e.on_disk = true)
                    .or_insert(KeyEntry {
                        key: k,
                        len,
                        in_memory: false,
                        on_disk: true,
                    });
            }
        }
        let mut page = Vec::new();
        let mut rest = all
            .into_values()
            .filter(|e| after.is_empty() || e.key.as_str() > after)
            .peekable();
        while let Some(e) = rest.next_if(|e| fits(e)) {
            page.push(e);
        }
        (page, rest.peek().is_some())
    }
}
