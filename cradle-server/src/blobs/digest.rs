//! Content digests of sealed blobs: BLAKE3-256 of the bytes, computed once
//! (lazily, by whoever first needs it) and remembered in the blob's table
//! entry. A blob is immutable once sealed, so its digest never changes.

use super::ctx::BlobView;
use super::error::BlobError;
use super::store::BlobStore;
use ipc_rpc::blob::BlobHandle;
use ipc_rpc::memo::Digest;
use std::sync::Arc;

/// BLAKE3-256 of `bytes`, on the calling thread. BLAKE3's multi-threaded
/// mode (rayon) measured no faster on this project's 2-vCPU machine
/// (`docs/benchmarks.md` §5, `cradle-bench --memo`), and its thread pool
/// would compete with the workers: a digest runs on one offload thread.
pub(crate) fn hash(bytes: &[u8]) -> Digest {
    *blake3::hash(bytes).as_bytes()
}

impl BlobStore {
    /// The digest the table holds for the blob `h` names (checked like any
    /// client handle); `None` if not computed yet. Cheap: for the worker.
    pub(crate) fn known_digest(&self, h: &BlobHandle) -> Result<Option<Digest>, BlobError> {
        let g = self.lock();
        Ok(g.table.check(self.epoch, h)?.digest)
    }

    /// The digest of the blob `h` names: remembered, or computed now
    /// (about a millisecond per MiB on one core: call it off the worker for
    /// all but small blobs).
    pub(crate) fn digest(self: &Arc<Self>, h: &BlobHandle) -> Result<Digest, BlobError> {
        {
            let mut g = self.lock();
            let e = g.table.check(self.epoch, h)?;
            if let Some(d) = e.digest {
                return Ok(d);
            }
            g.table.pin(h.id, true)?;
        }
        self.digest_pinned(h.id)
    }

    /// The digest of blob `blob`, which nothing may free meanwhile (the
    /// caller holds a lease or a cache key on it).
    pub(crate) fn digest_of(self: &Arc<Self>, blob: u64) -> Result<Digest, BlobError> {
        {
            let mut g = self.lock();
            match g.table.blobs.get(&blob) {
                Some(e) if e.digest.is_some() => return Ok(e.digest.unwrap_or_default()),
                Some(_) => {}
                None => return Err(BlobError::handler(format!("blob {blob} vanished"))),
            }
            g.table.pin(blob, false)?;
        }
        self.digest_pinned(blob)
    }

    /// Hashes a pinned blob (the view takes over the pin) and remembers
    /// the digest. Two callers may hash one blob at once: both get the same
    /// digest.
    fn digest_pinned(self: &Arc<Self>, blob: u64) -> Result<Digest, BlobError> {
        let view = BlobView::of_pinned(self, blob).map_err(BlobError::handler)?;
        let d = hash(view.bytes());
        self.set_digest(blob, d);
        drop(view);
        Ok(d)
    }

    /// Records the digest of blob `blob` (known at birth: a result loaded
    /// from a memo entry that stored it).
    pub(crate) fn set_digest(&self, blob: u64, d: Digest) {
        if let Some(e) = self.lock().table.blobs.get_mut(&blob) {
            e.digest = Some(d);
        }
    }
}
