//! The memory cache's operations that reach the disk tier (issue 7,
//! docs/design.md §8).
//!
//! * A `put` stores in memory and queues the blob for one writer thread,
//!   which writes it to the disk tier off the call path (the blob is pinned
//!   until written, and `pending` answers gets of the key meanwhile).
//!   `put_durable` queues the same job and waits for it: the answer comes
//!   after `fdatasync` of the data and `fsync` of the directory.
//! * A `get` that misses memory answers `OnDisk` when the tier has the key;
//!   the client then asks for a `load`, which runs on the offload pool: the
//!   entry is read with `pread` straight into a new blob, its checksum
//!   verified, and the blob cached in memory again if it fits.
//! * A `remove` removes from memory at once and queues the disk removal
//!   behind every earlier put of the key (one FIFO), then waits for it.
//! * Memory eviction never touches the disk copy.

use super::{BlobCtx, BlobError, BlobStore, BlobView, Inner};
use crate::disk::{DiskTier, GetError};
use ipc_core::sync::{AtomicU64, Ordering};
use ipc_rpc::ErrorCode;
use ipc_rpc::blob::{BlobHandle, BlobStats, Hit, Lookup, SegmentInfo};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The answer a waiting caller gets from the writer.
type Done<T> = Sender<Result<T, String>>;

/// Work for the disk writer, in the order the memory cache saw it.
enum DiskJob {
    /// Write `blob` (pinned for this job) under `key`.
    Put {
        key: String,
        blob: u64,
        durable: bool,
        done: Option<Done<()>>,
    },
    /// Remove `key` from the tier.
    Remove { key: String, done: Done<bool> },
}

/// The disk tier and its writer thread.
pub(crate) struct DiskLink {
    tier: Arc<DiskTier>,
    jobs: Mutex<Option<Sender<DiskJob>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    queued: AtomicU64,
}

impl std::fmt::Debug for DiskLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskLink")
            .field("dir", &self.tier.dir())
            .finish()
    }
}

impl DiskLink {
    pub(super) fn fill_stats(&self, st: &mut BlobStats) {
        let d = self.tier.stats();
        st.disk_enabled = true;
        st.disk_entries = d.entries;
        st.disk_bytes = d.bytes;
        st.disk_budget = d.budget;
        st.disk_hits = d.hits;
        st.disk_misses = d.misses;
        st.disk_corruptions = d.corruptions;
        st.disk_evictions = d.evictions;
        // Relaxed: a statistic.
        st.disk_queued = self.queued.load(Ordering::Relaxed);
    }

    fn send(&self, job: DiskJob) -> Result<(), BlobError> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        match jobs.as_ref().map(|tx| tx.send(job)) {
            Some(Ok(())) => {
                // Relaxed: a statistic.
                self.queued.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(BlobError::new(
                ErrorCode::Shutdown,
                "the disk cache's writer has stopped",
            )),
        }
    }
}

impl BlobStore {
    /// Attaches the disk tier and starts its writer thread.
    pub(crate) fn with_disk(mut self, tier: DiskTier) -> Self {
        self.disk = Some(DiskLink {
            tier: Arc::new(tier),
            jobs: Mutex::new(None),
            writer: Mutex::new(None),
            queued: AtomicU64::new(0),
        });
        self
    }

    /// The disk tier's directory, if any.
    pub(crate) fn disk_dir(&self) -> Option<&std::path::Path> {
        self.disk.as_ref().map(|d| d.tier.dir())
    }

    /// Starts the disk writer (once the store is shared).
    pub(crate) fn start_disk(self: &Arc<Self>) -> std::io::Result<()> {
        let Some(d) = &self.disk else {
            return Ok(());
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let store = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name("cradle-disk".into())
            .spawn(move || store.disk_writer(&rx))?;
        *d.jobs.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        *d.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }

    /// Stops taking disk jobs, lets the writer finish the queued ones and
    /// waits for it: a clean shutdown loses no put.
    pub(crate) fn stop_disk(&self) {
        let Some(d) = &self.disk else {
            return;
        };
        drop(d.jobs.lock().unwrap_or_else(|e| e.into_inner()).take());
        let writer = d.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = writer {
            // Relaxed: a statistic, for the log line.
            let queued = d.queued.load(Ordering::Relaxed);
            if queued > 0 {
                tracing::info!(queued, "writing the queued puts to the disk cache");
            }
            let _ = w.join();
        }
    }

    fn disk_writer(self: &Arc<Self>, rx: &Receiver<DiskJob>) {
        let Some(d) = &self.disk else {
            return;
        };
        for job in rx {
            match job {
                DiskJob::Put {
                    key,
                    blob,
                    durable,
                    done,
                } => {
                    let r = self
                        .pinned_view(blob)
                        .and_then(|v| {
                            d.tier
                                .put(&key, v.bytes(), durable)
                                .map_err(|e| e.to_string())
                        })
                        .map(|_| ());
                    self.lock().finish_pending(&key, blob);
                    if let Err(e) = &r {
                        crate::metrics::cells::disk_write_failed();
                        tracing::warn!(key = %key, error = %e, "could not write a cache entry to disk");
                    }
                    if let Some(done) = done {
                        let _ = done.send(r);
                    }
                }
                DiskJob::Remove { key, done } => {
                    let _ = done.send(d.tier.remove(&key).map_err(|e| e.to_string()));
                }
            }
            // Relaxed: a statistic.
            d.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A view of `blob`, which the caller keeps pinned meanwhile; the view
    /// takes a pin of its own, dropped with it.
    fn pinned_view(self: &Arc<Self>, blob: u64) -> Result<BlobView, String> {
        let (segment, offset, len) = {
            let g = self.lock();
            let b = g
                .blobs
                .get(&blob)
                .ok_or_else(|| format!("pinned blob {blob} vanished"))?;
            (b.segment, b.offset, b.len)
        };
        let map = self.map_blob_segment(segment)?;
        let view = BlobView {
            store: Arc::clone(self),
            blob,
            map,
            offset: offset as usize,
            len: len as usize,
        };
        if let Some(b) = self.lock().blobs.get_mut(&blob) {
            b.pins += 1;
        }
        Ok(view)
    }

    /// Stores `h` under `key` in memory and queues it for the disk tier
    /// (with `done`, the caller waits for the write).
    fn put_and_queue(
        &self,
        key: &str,
        h: &BlobHandle,
        if_absent: bool,
        durable: Option<Done<()>>,
    ) -> Result<bool, BlobError> {
        let mut g = self.lock();
        let stored = g.cache_insert(self.epoch, key, h, if_absent)?;
        if let (true, Some(d)) = (stored, &self.disk) {
            // Pinned until the writer is done with it; `pending` answers
            // gets of the key should memory evict it meanwhile.
            if let Some(b) = g.blobs.get_mut(&h.id) {
                b.pins += 1;
            }
            // Counts the queued puts of this blob under this key only: an
            // older blob's jobs find another blob there and leave it alone.
            let e = g.pending.entry(key.to_owned()).or_insert((h.id, 0));
            *e = if e.0 == h.id {
                (h.id, e.1 + 1)
            } else {
                (h.id, 1)
            };
            let job = DiskJob::Put {
                key: key.to_owned(),
                blob: h.id,
                durable: durable.is_some(),
                done: durable,
            };
            if let Err(e) = d.send(job) {
                g.finish_pending(key, h.id);
                return Err(e);
            }
        }
        Ok(stored)
    }

    /// Stores `h` under `key`; `Ok(false)` if `if_absent` and the key
    /// exists. Persisted to the disk tier off the call path.
    pub(crate) fn cache_put(
        &self,
        key: &str,
        h: &BlobHandle,
        if_absent: bool,
    ) -> Result<bool, BlobError> {
        self.put_and_queue(key, h, if_absent, None)
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
                "this server runs without a disk cache (--no-disk-cache): nothing can be made durable",
            ));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        if !self.put_and_queue(key, h, if_absent, Some(tx))? {
            return Ok(false);
        }
        match rx.recv() {
            Ok(Ok(())) => Ok(true),
            Ok(Err(e)) => Err(BlobError::handler(format!(
                "{key} is in the memory cache but could not be written durably to disk: {e}"
            ))),
            Err(_) => Err(BlobError::new(
                ErrorCode::Shutdown,
                "the disk cache's writer stopped before the put was durable",
            )),
        }
    }

    /// Looks `key` up in memory (or among puts not yet on disk); a hit
    /// takes a lease for `session`. Never reads the disk.
    pub(crate) fn cache_get(&self, session: u64, key: &str) -> Result<Lookup, BlobError> {
        let mut g = self.lock();
        let blob = match g.cache.get(key) {
            Some(b) => b,
            None => match g.pending.get(key) {
                Some(&(b, _)) => b,
                None => {
                    drop(g);
                    let on_disk = self
                        .disk
                        .as_ref()
                        .is_some_and(|d| d.tier.len_of(key).is_some());
                    return Ok(if on_disk {
                        Lookup::OnDisk
                    } else {
                        Lookup::Miss
                    });
                }
            },
        };
        let hit = self.lease_hit(&mut g, session, blob)?;
        Ok(Lookup::Hit(hit))
    }

    fn lease_hit(&self, g: &mut Inner, session: u64, blob: u64) -> Result<Hit, BlobError> {
        let (segment, offset, len) = match g.blobs.get(&blob) {
            Some(b) => (b.segment, b.offset, b.len),
            None => return Err(BlobError::handler("a cached blob vanished")),
        };
        let info: SegmentInfo = g
            .segment_info(segment)
            .ok_or_else(|| BlobError::handler("a cached blob's segment vanished"))?;
        g.lease(session, blob, &self.cfg.quota)?;
        Ok(Hit {
            handle: self.handle_of(blob, segment, offset, len),
            segment: info,
        })
    }

    /// Loads `key` from the disk tier into a new blob leased to `session`
    /// (checksum verified), and caches it in memory again if it fits.
    /// Blocks on disk reads: called on the offload pool.
    pub(crate) fn cache_load(
        self: &Arc<Self>,
        session: u64,
        key: &str,
    ) -> Result<Option<Hit>, BlobError> {
        match self.cache_get(session, key)? {
            Lookup::Hit(h) => return Ok(Some(h)),
            Lookup::Miss => return Ok(None),
            Lookup::OnDisk => {}
        }
        let Some(d) = &self.disk else {
            return Ok(None);
        };
        let ctx = BlobCtx {
            store: self,
            session,
        };
        let got = d.tier.get(key, |len| {
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
        // Back into memory if it fits; a full cache still serves the blob.
        if let Err(e) = g.cache_insert(self.epoch, key, &handle, true) {
            tracing::debug!(key = %key, error = %e, "loaded from disk, not cached in memory");
        }
        let segment = g
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
            let in_memory = match g.cache.remove(key) {
                Some(b) => {
                    g.uncache(b);
                    true
                }
                None => false,
            };
            // A queued put of the key no longer answers gets.
            g.pending.remove(key);
            let rx = match &self.disk {
                Some(d) => {
                    let (tx, rx) = std::sync::mpsc::channel();
                    d.send(DiskJob::Remove {
                        key: key.to_owned(),
                        done: tx,
                    })?;
                    Some(rx)
                }
                None => None,
            };
            (in_memory, rx)
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
}

impl Inner {
    /// The writer is done with one put of `key` (blob `blob`): unpin it and
    /// forget the key's pending entry once its last queued put is written.
    fn finish_pending(&mut self, key: &str, blob: u64) {
        if let Some(e) = self.pending.get_mut(key)
            && e.0 == blob
        {
            e.1 -= 1;
            if e.1 == 0 {
                self.pending.remove(key);
            }
        }
        if let Some(b) = self.blobs.get_mut(&blob) {
            b.pins -= 1;
        }
        self.maybe_free(blob);
    }
}

/// Where the `cradle-server` binary keeps its disk cache by default:
/// `$XDG_CACHE_HOME/cradle`, else `$HOME/.cache/cradle`, else
/// `/tmp/cradle-$UID/cache`.
pub fn default_disk_cache_dir() -> std::path::PathBuf {
    let non_empty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    if let Some(x) = non_empty("XDG_CACHE_HOME") {
        return std::path::PathBuf::from(x).join("cradle");
    }
    if let Some(h) = non_empty("HOME") {
        return std::path::PathBuf::from(h).join(".cache").join("cradle");
    }
    let uid = rustix::process::geteuid().as_raw();
    std::path::PathBuf::from(format!("/tmp/cradle-{uid}/cache"))
}

/// The default disk budget: 16 GiB, at most half the space available on
/// the tier's filesystem now.
const DEFAULT_DISK_BUDGET: u64 = 16 << 30;

/// Opens the disk tier in `dir` (created if missing) with `budget`, or the
/// default; every failure names the directory and what to do.
pub(crate) fn open_tier(
    dir: &std::path::Path,
    budget: Option<u64>,
) -> Result<DiskTier, crate::StartError> {
    let bad = |m: String| crate::StartError::InvalidConfig(m);
    if budget == Some(0) {
        return Err(bad(
            "--disk-cache-bytes must be more than 0 (or use --no-disk-cache)".into(),
        ));
    }
    let budget = budget.unwrap_or_else(|| {
        // The free space of the filesystem the directory is (or will be)
        // on: its nearest existing ancestor's.
        let available = dir
            .ancestors()
            .find_map(|d| rustix::fs::statvfs(d).ok())
            .map_or(u64::MAX, |s| s.f_bavail.saturating_mul(s.f_frsize));
        DEFAULT_DISK_BUDGET.min(available / 2).max(1 << 20)
    });
    DiskTier::open(dir, budget).map_err(|e| {
        bad(format!(
            "disk cache {}: {e} (choose another directory with --disk-cache DIR, or run without one: --no-disk-cache)",
            dir.display()
        ))
    })
}
