//! Server-wide and per-session figures for the `Stats` builtin.
//!
//! Workers update plain atomics (a session's counters are written by its
//! worker only); the map of open sessions is locked only when a session opens
//! or closes, and when someone asks for the figures.

use crate::blobs::BlobStore;
use ipc_core::sync::{AtomicU32, AtomicU64, Ordering};
use ipc_rpc::builtin::{ServerStats, SessionStats};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Sessions listed in a `Stats` answer at most (the most active ones; the
/// answer's `sessions` counts every open session). Enough for a person
/// reading `cradle stats`, and about 14 KiB on the wire.
pub(crate) const MAX_LISTED: usize = 256;

/// How many per-session entries fit a `Stats` answer of at most
/// `max_payload` bytes: the archived root, alignment slack, then one
/// archived entry each (the archived form is fixed-size: no strings).
pub(crate) fn listed_room(max_payload: usize) -> usize {
    use ipc_rpc::rkyv::Archived;
    let fixed = size_of::<Archived<ServerStats>>() + 64;
    max_payload.saturating_sub(fixed) / size_of::<Archived<SessionStats>>()
}

/// Figures of one open session.
#[derive(Debug)]
pub(crate) struct SessionCounters {
    /// Session id.
    pub(crate) id: u64,
    /// The client's pid (`SO_PEERCRED`).
    pub(crate) pid: u32,
    /// Calls answered.
    pub(crate) calls: AtomicU64,
    /// Offloaded requests not yet answered.
    pub(crate) in_flight: AtomicU32,
    /// Responses waiting for room.
    pub(crate) backlog: AtomicU32,
}

impl SessionCounters {
    pub(crate) fn new(id: u64, pid: u32) -> Self {
        Self {
            id,
            pid,
            calls: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            backlog: AtomicU32::new(0),
        }
    }

    /// Publishes the worker's private figures (Relaxed: statistics, read
    /// without ordering by `Shared::snapshot`; only the worker writes them).
    pub(crate) fn publish(&self, calls: u64, in_flight: u32, backlog: u32) {
        self.calls.store(calls, Ordering::Relaxed);
        self.in_flight.store(in_flight, Ordering::Relaxed);
        self.backlog.store(backlog, Ordering::Relaxed);
    }
}

/// State shared by the acceptor, the workers and the `Stats` handler.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) started: Instant,
    pub(crate) pid: u32,
    pub(crate) workers: u32,
    /// Sessions open now (the acceptor checks `max_sessions` against it).
    pub(crate) sessions_open: AtomicU64,
    pub(crate) sessions_total: AtomicU64,
    pub(crate) calls_served: AtomicU64,
    pub(crate) sessions_killed: AtomicU64,
    /// Heap bytes of all sessions' response backlogs (each worker adds and
    /// subtracts its sessions' shares).
    pub(crate) backlog_bytes: AtomicU64,
    /// Server-wide cap on `backlog_bytes`: beyond it, sessions with a
    /// backlog have no more requests taken.
    pub(crate) backlog_limit: u64,
    sessions: Mutex<HashMap<u64, Arc<SessionCounters>>>,
}

impl Shared {
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            started: Instant::now(),
            pid: std::process::id(),
            workers: workers as u32,
            sessions_open: AtomicU64::new(0),
            sessions_total: AtomicU64::new(0),
            calls_served: AtomicU64::new(0),
            sessions_killed: AtomicU64::new(0),
            backlog_bytes: AtomicU64::new(0),
            backlog_limit: u64::MAX,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The same, with a server-wide cap on response backlog bytes.
    pub(crate) fn with_backlog_limit(mut self, bytes: u64) -> Self {
        self.backlog_limit = bytes;
        self
    }

    fn map(&self) -> MutexGuard<'_, HashMap<u64, Arc<SessionCounters>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single insert/remove calls), so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an opening session.
    pub(crate) fn session_opened(&self, c: Arc<SessionCounters>) {
        // Relaxed: statistics and a soft limit; no data is published through
        // these counters.
        self.sessions_open.fetch_add(1, Ordering::Relaxed);
        // Relaxed: statistics.
        self.sessions_total.fetch_add(1, Ordering::Relaxed);
        self.map().insert(c.id, c);
    }

    /// Unregisters a closed session.
    pub(crate) fn session_closed(&self, id: u64, killed: bool) {
        if self.map().remove(&id).is_some() {
            // Relaxed: statistics and a soft limit.
            self.sessions_open.fetch_sub(1, Ordering::Relaxed);
        }
        if killed {
            // Relaxed: statistics.
            self.sessions_killed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sessions open now.
    pub(crate) fn open_sessions(&self) -> u64 {
        // Relaxed: a soft limit; an off-by-one under a race is harmless.
        self.sessions_open.load(Ordering::Relaxed)
    }

    /// The figures the `Stats` builtin answers, in one frame of at most
    /// `max_payload` bytes: every server-wide figure, and the most active
    /// sessions (at most [`MAX_LISTED`], at most what fits), by id;
    /// `sessions` counts them all.
    pub(crate) fn snapshot(&self, store: &BlobStore, max_payload: usize) -> ServerStats {
        let mut per_session: Vec<SessionStats> = self
            .map()
            .values()
            .map(|c| SessionStats {
                id: c.id,
                pid: c.pid,
                // Relaxed (all three): statistics, see `SessionCounters::publish`.
                calls: c.calls.load(Ordering::Relaxed),
                in_flight: c.in_flight.load(Ordering::Relaxed),
                backlog: c.backlog.load(Ordering::Relaxed),
                leases: 0,
                pinned_bytes: 0,
                pool_bytes: 0,
            })
            .collect();
        for s in &mut per_session {
            (s.leases, s.pinned_bytes, s.pool_bytes) = store.session_figures(s.id);
        }
        let open = per_session.len() as u64;
        let keep = listed_room(max_payload).min(MAX_LISTED);
        if per_session.len() > keep {
            // Busiest first: calls answered, then work held, then memory.
            per_session.sort_unstable_by_key(|s| {
                std::cmp::Reverse((
                    s.calls,
                    u64::from(s.in_flight) + u64::from(s.backlog) + s.leases,
                    s.pinned_bytes + s.pool_bytes,
                ))
            });
            per_session.truncate(keep);
        }
        per_session.sort_by_key(|s| s.id);
        ServerStats {
            pid: self.pid,
            workers: self.workers,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            sessions: open,
            // Relaxed (all three): statistics.
            sessions_total: self.sessions_total.load(Ordering::Relaxed),
            calls_served: self.calls_served.load(Ordering::Relaxed),
            sessions_killed: self.sessions_killed.load(Ordering::Relaxed),
            wake_syscalls: ipc_core::doorbell::wake_syscalls(),
            blobs: store.stats(),
            per_session,
            provided: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_rpc::rkyv;

    /// The room computed for a frame limit is what the encoder needs.
    #[test]
    fn listed_room_fits_the_frame() {
        for max_payload in [0, 100, 1000, 4000, 16_000, 131_024, 1 << 20] {
            let n = listed_room(max_payload);
            let stats = ServerStats {
                per_session: vec![
                    SessionStats {
                        id: u64::MAX,
                        calls: u64::MAX,
                        ..SessionStats::default()
                    };
                    n
                ],
                ..ServerStats::default()
            };
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&stats).unwrap();
            if n > 0 {
                assert!(
                    bytes.len() <= max_payload,
                    "{n} entries encode to {} bytes > {max_payload}",
                    bytes.len()
                );
            }
            // A frame of 1000 bytes or more lists at least one session.
            assert!(max_payload < 1000 || n > 0, "no room at {max_payload}");
        }
    }
}
