//! Methods offered by client processes (providers), routed through the
//! server (docs/architecture.md "Provided methods").
//!
//! * [`table`] — the server-wide table: methods, providers, queues, the
//!   calls being routed, and the decisions on them as [`Action`]s.
//! * [`entries`] — `cradle.provider.register`, `cradle.provider.unregister`
//!   and `cradle.methods`.
//!
//! The rings are the workers' business: a worker routes a request under
//! the table's lock and carries out the actions for its own sessions; an
//! action for a session of another worker travels as a
//! `WorkerMsg::Relay` through that worker's channel.

pub(crate) mod entries;
pub(crate) mod relay;
pub(crate) mod table;

pub(crate) use table::{Action, Buf, Caller, Limits, Outcome, Table};

use ipc_core::sync::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The table behind its mutex, and what every worker may read without it.
#[derive(Debug)]
pub(crate) struct Providers {
    table: Mutex<Table>,
    /// The table's earliest deadline (`u64::MAX`: none), so that a worker
    /// knows without the lock whether a sweep is due and how long it may
    /// sleep.
    earliest: AtomicU64,
    /// Whether any method is provided (skips the lock for unknown ids).
    any: AtomicU64,
    /// The deadline of a call that carries none, from its arrival.
    default_timeout_ns: u64,
}

impl Providers {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            default_timeout_ns: limits.default_timeout_ns,
            table: Mutex::new(Table::new(limits)),
            earliest: AtomicU64::new(u64::MAX),
            any: AtomicU64::new(0),
        }
    }

    /// The table, locked. Call [`Providers::unlock`] instead of dropping
    /// the guard after a change of deadlines or methods.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Table> {
        // Every table operation completes its changes before anything can
        // panic, so a poisoned lock still guards a consistent table.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the figures workers read without the lock, then unlocks.
    pub(crate) fn unlock(&self, t: MutexGuard<'_, Table>) {
        // Relaxed (both): hints read by the workers' sweeps and sleeps; a
        // stale value only makes a sweep early (it rechecks under the lock)
        // or late by at most one check interval of the worker that routed
        // the call (it sweeps every millisecond while awake, and a sleeping
        // worker is woken by the action that made it routable).
        self.earliest.store(t.earliest, Ordering::Relaxed);
        self.any.store(u64::from(t.any()), Ordering::Relaxed);
        drop(t);
    }

    /// Whether any method is provided now (a hint: see `unlock`).
    pub(crate) fn any(&self) -> bool {
        // Relaxed: a hint; see `unlock`.
        self.any.load(Ordering::Relaxed) != 0
    }

    /// The earliest deadline of a call being routed (`u64::MAX`: none).
    pub(crate) fn earliest(&self) -> u64 {
        // Relaxed: a hint; see `unlock`.
        self.earliest.load(Ordering::Relaxed)
    }

    /// How long a call without a deadline may take.
    pub(crate) fn default_timeout_ns(&self) -> u64 {
        self.default_timeout_ns
    }

    /// The figures `cradle.stats` reports.
    pub(crate) fn stats(&self) -> ipc_rpc::builtin::ProvidedStats {
        self.lock().stats()
    }
}
