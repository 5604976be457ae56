//! The gateway's counters (`GatewayStats`).

use ipc_core::sync::{AtomicU64, Ordering};

/// Counters shared by every request; each is an independent tally, read
/// only for reporting, so Relaxed suffices (no other memory is published
/// through them).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) upload_bytes: AtomicU64,
    pub(crate) download_bytes: AtomicU64,
    pub(crate) uploads: AtomicU64,
    pub(crate) uploads_refused: AtomicU64,
    pub(crate) calls: AtomicU64,
    pub(crate) unauthenticated: AtomicU64,
    pub(crate) local_connects: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(&self, c: &AtomicU64, n: u64) {
        // Relaxed: a tally; no partner (see the type's doc).
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(c: &AtomicU64) -> u64 {
        // Relaxed: a tally; no partner (see the type's doc).
        c.load(Ordering::Relaxed)
    }
}
