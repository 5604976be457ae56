//! Write-behind to the disk tier: one writer thread takes jobs in the order
//! the memory cache queued them (one FIFO, so a remove comes after every
//! earlier put of its key), and the opening of the tier at start-up.
//!
//! This file knows nothing of blobs or of the memory cache: a put hands it
//! a [`QueuedPut`] (the bytes and what to do when done), so the calls go one
//! way only, cache → persist.

use super::error::BlobError;
use crate::disk::DiskTier;
use ipc_core::sync::{AtomicU64, Ordering};
use ipc_rpc::ErrorCode;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The answer a waiting caller gets from the writer.
pub(crate) type Done<T> = Sender<Result<T, String>>;

/// A put waiting for the disk writer.
pub(crate) trait QueuedPut: Send {
    /// The key.
    fn key(&self) -> &str;
    /// Whether a newer put or a remove of the key came after this one: the
    /// writer then skips it (writing it could only bring back an older
    /// value).
    fn superseded(&self) -> bool;
    /// Calls `write` with the bytes to store.
    fn with_bytes(&self, write: &mut dyn FnMut(&[u8]) -> Result<(), String>) -> Result<(), String>;
    /// The writer is done with it (written, skipped or failed).
    fn finish(self: Box<Self>, outcome: &Result<(), String>);
}

/// Why a superseded put was not written.
pub(crate) const SUPERSEDED: &str =
    "a newer put or a remove of the key came first, so this value was not written to disk";

/// Work for the disk writer.
enum DiskJob {
    /// Write a put (with `done`, someone waits for the answer).
    Put {
        put: Box<dyn QueuedPut>,
        durable: bool,
        done: Option<Done<()>>,
    },
    /// Remove `key` from the tier.
    Remove { key: String, done: Done<bool> },
    /// Unlink a file the tier retired.
    Discard(std::path::PathBuf),
}

/// The disk tier and its writer thread.
pub(crate) struct DiskWriter {
    tier: Arc<DiskTier>,
    jobs: Mutex<Option<Sender<DiskJob>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Jobs sent, not finished (puts, removes, discards).
    queued: Arc<AtomicU64>,
}

impl std::fmt::Debug for DiskWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskWriter")
            .field("dir", &self.tier.dir())
            .finish()
    }
}

impl DiskWriter {
    /// The tier, without a writer until [`start`](Self::start).
    pub(crate) fn new(tier: DiskTier) -> Self {
        Self {
            tier: Arc::new(tier),
            jobs: Mutex::new(None),
            writer: Mutex::new(None),
            queued: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The tier (reads and index queries go to it directly).
    pub(crate) fn tier(&self) -> &DiskTier {
        &self.tier
    }

    /// Jobs waiting for the writer.
    pub(crate) fn queued(&self) -> u64 {
        // Relaxed: a statistic; pairs with nothing.
        self.queued.load(Ordering::Relaxed)
    }

    /// Starts the writer thread.
    pub(crate) fn start(&self) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let tier = Arc::clone(&self.tier);
        let queued = Arc::clone(&self.queued);
        let handle = std::thread::Builder::new()
            .name("cradle-disk".into())
            .spawn(move || {
                crate::background::lower_this_thread();
                run(&tier, &rx, &queued)
            })?;
        *self.jobs.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        *self.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }

    /// Stops taking jobs, lets the writer finish the queued ones and waits
    /// for it: a clean shutdown loses no put.
    pub(crate) fn stop(&self) {
        drop(self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take());
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = writer {
            let queued = self.queued();
            if queued > 0 {
                tracing::info!(queued, "writing the queued puts to the disk cache");
            }
            let _ = w.join();
        }
    }

    fn send(&self, job: DiskJob) -> Result<(), DiskJob> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = jobs.as_ref() else {
            return Err(job);
        };
        // Relaxed: a statistic; counted before the send so that the
        // writer's decrement never comes first.
        self.queued.fetch_add(1, Ordering::Relaxed);
        tx.send(job).map_err(|back| {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            back.0
        })
    }

    /// Queues a put; if the writer has stopped, the put is finished with
    /// the error and handed back as an error.
    pub(crate) fn put(
        &self,
        put: Box<dyn QueuedPut>,
        durable: bool,
        done: Option<Done<()>>,
    ) -> Result<(), BlobError> {
        match self.send(DiskJob::Put { put, durable, done }) {
            Ok(()) => Ok(()),
            Err(DiskJob::Put { put, .. }) => {
                let e = stopped();
                put.finish(&Err(e.message.clone()));
                Err(e)
            }
            Err(_) => Err(stopped()),
        }
    }

    /// Queues the removal of `key` behind every earlier put of it.
    pub(crate) fn remove(&self, key: &str, done: Done<bool>) -> Result<(), BlobError> {
        self.send(DiskJob::Remove {
            key: key.to_owned(),
            done,
        })
        .map_err(|_| stopped())
    }

    /// Unlinks a retired file off the call path (at once if the writer
    /// has stopped).
    pub(crate) fn discard(&self, path: std::path::PathBuf) {
        if let Err(DiskJob::Discard(p)) = self.send(DiskJob::Discard(path)) {
            self.tier.discard(&p);
        }
    }
}

fn stopped() -> BlobError {
    BlobError::new(ErrorCode::Shutdown, "the disk cache's writer has stopped")
}

/// The writer thread: one job at a time, in order.
fn run(tier: &DiskTier, rx: &Receiver<DiskJob>, queued: &AtomicU64) {
    for job in rx {
        match job {
            DiskJob::Put { put, durable, done } => {
                let r = if put.superseded() {
                    Err(SUPERSEDED.to_owned())
                } else {
                    let key = put.key().to_owned();
                    // `superseded` is asked again under the tier's lock,
                    // just before the file is renamed into place.
                    let current = || !put.superseded();
                    put.with_bytes(
                        &mut |bytes| match tier.put_if(&key, bytes, durable, &current) {
                            Ok(Some(_)) => Ok(()),
                            Ok(None) => Err(SUPERSEDED.to_owned()),
                            Err(e) => Err(e.to_string()),
                        },
                    )
                };
                if let Err(e) = &r
                    && e != SUPERSEDED
                {
                    crate::metrics::cells::disk_write_failed();
                    tracing::warn!(key = %put.key(), error = %e, "could not write a cache entry to disk; the key has no disk copy");
                }
                // Relaxed: a statistic; before `finish`, which wakes the
                // puts waiting for the writer.
                queued.fetch_sub(1, Ordering::Relaxed);
                put.finish(&r);
                if let Some(done) = done {
                    let _ = done.send(r);
                }
            }
            DiskJob::Remove { key, done } => {
                let _ = done.send(tier.remove(&key).map_err(|e| e.to_string()));
                queued.fetch_sub(1, Ordering::Relaxed);
            }
            DiskJob::Discard(path) => {
                tier.discard(&path);
                queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Where the `cradle-server` binary keeps its disk cache by default:
/// `$XDG_CACHE_HOME/cradle`, else `$HOME/.cache/cradle`, else
/// `/tmp/cradle-$UID/cache`.
///
/// ```
/// let dir = cradle_server::default_disk_cache_dir();
/// assert!(dir.ends_with("cradle") || dir.ends_with("cache"));
/// ```
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
/// default; every failure is one line naming the directory, what went
/// wrong and what to do.
pub(crate) fn open_tier(
    dir: &std::path::Path,
    budget: Option<u64>,
) -> Result<DiskTier, crate::error::StartError> {
    let bad = |m: String| crate::error::StartError::InvalidConfig(m);
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
    DiskTier::open(dir, budget).map_err(|e| bad(e.to_string()))
}
