//! The figures the call path adds to for the metrics endpoint: per method,
//! calls by outcome and a service-time histogram. Nothing here takes a lock
//! or allocates after construction; this file depends on nothing else in the
//! crate, so any part of the server can count into it.
//!
//! The cells are sharded by writer. Each worker owns one shard and is its
//! only writer, so it adds with a plain load and store (no read-modify-write
//! instruction, no cache line shared with another writer); the offload pool's
//! threads share the last shard and add with `fetch_add`. A scrape sums the
//! shards.

use ipc_core::sync::{AtomicU64, Ordering};
use std::time::Duration;

/// Outcome labels, indexed by [`outcome_index`]: `ok`, then one per wire
/// error code (1 to 9), then `other`.
pub(crate) const OUTCOMES: [&str; 11] = [
    "ok",
    "unknown_method",
    "malformed",
    "handler_panicked",
    "handler_error",
    "quota_exceeded",
    "response_too_large",
    "shutdown",
    "bad_handle",
    "cache_full",
    "other",
];

/// Upper bounds (inclusive) of the service-time buckets, in nanoseconds:
/// 250 ns to 10 s in 1-2.5-5 steps; a last bucket takes the rest (+Inf).
pub(crate) const BOUNDS_NS: [u64; 23] = [
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// Cells per method in a shard: outcome counters, buckets (+Inf included),
/// the sum of service times in nanoseconds.
const BUCKET0: usize = OUTCOMES.len();
const SUM: usize = BUCKET0 + BOUNDS_NS.len() + 1;
const CELLS: usize = SUM + 1;

/// The label of calls to method ids the server does not have.
pub(crate) const UNKNOWN_METHOD: &str = "(unknown)";

/// The outcome index of a call answered with wire error `code` (0: a response).
pub(crate) fn outcome_index(code: u32) -> usize {
    match code {
        0..=9 => code as usize,
        _ => OUTCOMES.len() - 1,
    }
}

/// Per-method call figures, sharded by writer.
#[derive(Debug)]
pub(crate) struct CallCells {
    /// Method ids, sorted; slot `ids.len()` is [`UNKNOWN_METHOD`].
    ids: Box<[u64]>,
    names: Box<[&'static str]>,
    /// `owned` single-writer shards (one per worker), then the pool's shard.
    shards: Box<[Box<[AtomicU64]>]>,
    owned: usize,
}

/// One method's figures, summed over the shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MethodFigures {
    /// The method's name ([`UNKNOWN_METHOD`] for ids the server lacks).
    pub(crate) name: &'static str,
    /// Calls per outcome, as [`OUTCOMES`].
    pub(crate) outcomes: [u64; OUTCOMES.len()],
    /// Calls per bucket (not cumulative), as [`BOUNDS_NS`], then +Inf.
    pub(crate) buckets: [u64; BOUNDS_NS.len() + 1],
    /// Sum of service times, nanoseconds.
    pub(crate) sum_ns: u64,
}

impl CallCells {
    /// Cells for `methods` (id, name), written by `workers` workers (each
    /// its own shard) and the offload pool.
    pub(crate) fn new(methods: &[(u64, &'static str)], workers: usize) -> Self {
        let mut m = methods.to_vec();
        m.sort_by_key(|&(id, _)| id);
        m.dedup_by_key(|&mut (id, _)| id);
        let slots = m.len() + 1;
        let shards = (0..=workers)
            .map(|_| (0..slots * CELLS).map(|_| AtomicU64::new(0)).collect())
            .collect();
        let mut names: Vec<&'static str> = m.iter().map(|&(_, n)| n).collect();
        names.push(UNKNOWN_METHOD);
        Self {
            ids: m.iter().map(|&(id, _)| id).collect(),
            names: names.into(),
            shards,
            owned: workers,
        }
    }

    /// The slot of method `id` (binary search over a handful of ids).
    #[inline]
    fn slot(&self, id: u64) -> usize {
        self.ids.binary_search(&id).unwrap_or(self.ids.len())
    }

    /// The two cells a call adds to besides the sum: its outcome's and its bucket's.
    #[inline]
    fn cells(&self, tag: u64, code: u32, took: Duration) -> (usize, usize, usize, u64) {
        let base = self.slot(tag) * CELLS;
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS.partition_point(|&b| b < ns);
        (
            base + outcome_index(code),
            base + BUCKET0 + bucket,
            base + SUM,
            ns,
        )
    }

    /// Counts a call answered by worker `worker` (the only writer of its
    /// shard): method `tag`, wire error `code` (0: a response), service time
    /// `took`.
    #[inline]
    pub(crate) fn record_owned(&self, worker: usize, tag: u64, code: u32, took: Duration) {
        let Some(shard) = self.shards.get(worker).filter(|_| worker < self.owned) else {
            return self.record_shared(tag, code, took);
        };
        let (o, b, s, ns) = self.cells(tag, code, took);
        // Relaxed (all three): this worker is the shard's only writer, so a
        // load and a store lose nothing; the scrape reads them without
        // ordering (statistics, no data published through them).
        shard[o].store(shard[o].load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        shard[b].store(shard[b].load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        shard[s].store(
            shard[s].load(Ordering::Relaxed).wrapping_add(ns),
            Ordering::Relaxed,
        );
    }

    /// Counts a call answered by the offload pool (several writers).
    pub(crate) fn record_shared(&self, tag: u64, code: u32, took: Duration) {
        let shard = &self.shards[self.owned];
        let (o, b, s, ns) = self.cells(tag, code, took);
        // Relaxed (all three): statistics read by the scrape without
        // ordering; `fetch_add` because the pool's threads share the shard.
        shard[o].fetch_add(1, Ordering::Relaxed);
        shard[b].fetch_add(1, Ordering::Relaxed);
        shard[s].fetch_add(ns, Ordering::Relaxed);
    }

    /// Every method's figures, summed over the shards (no lock: loads only).
    pub(crate) fn figures(&self) -> Vec<MethodFigures> {
        (0..self.names.len())
            .map(|slot| {
                let mut f = MethodFigures {
                    name: self.names[slot],
                    outcomes: [0; OUTCOMES.len()],
                    buckets: [0; BOUNDS_NS.len() + 1],
                    sum_ns: 0,
                };
                for shard in &self.shards {
                    let cells = &shard[slot * CELLS..(slot + 1) * CELLS];
                    // Relaxed (all): statistics; see `record_owned`.
                    for (o, c) in f.outcomes.iter_mut().zip(&cells[..BUCKET0]) {
                        *o += c.load(Ordering::Relaxed);
                    }
                    for (b, c) in f.buckets.iter_mut().zip(&cells[BUCKET0..SUM]) {
                        *b += c.load(Ordering::Relaxed);
                    }
                    f.sum_ns = f.sum_ns.wrapping_add(cells[SUM].load(Ordering::Relaxed));
                }
                f
            })
            .collect()
    }
}

/// Disk write-behind writes that failed since start (process-wide: one
/// disk tier per server, counted where the write-behind thread logs it).
static DISK_WRITE_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Counts a failed write-behind write.
pub(crate) fn disk_write_failed() {
    // Relaxed: a statistic, read by the scrape without ordering.
    DISK_WRITE_FAILURES.fetch_add(1, Ordering::Relaxed);
}

/// Failed write-behind writes since start.
pub(crate) fn disk_write_failures() -> u64 {
    // Relaxed: a statistic.
    DISK_WRITE_FAILURES.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_land_in_their_method_outcome_and_bucket() {
        let c = CallCells::new(&[(7, "b"), (3, "a")], 2);
        c.record_owned(0, 3, 0, Duration::from_nanos(300));
        c.record_owned(1, 3, 0, Duration::from_nanos(250));
        c.record_owned(1, 7, 5, Duration::from_secs(20));
        c.record_shared(7, 4, Duration::from_micros(3));
        c.record_shared(99, 1, Duration::ZERO);
        let f = c.figures();
        assert_eq!(
            f.iter().map(|m| m.name).collect::<Vec<_>>(),
            ["a", "b", UNKNOWN_METHOD]
        );
        assert_eq!(f[0].outcomes[0], 2);
        assert_eq!(f[0].buckets[0], 1, "250 ns is in the 250 ns bucket (le)");
        assert_eq!(f[0].buckets[1], 1);
        assert_eq!(f[0].sum_ns, 550);
        assert_eq!(f[1].outcomes[outcome_index(5)], 1);
        assert_eq!(f[1].outcomes[outcome_index(4)], 1);
        assert_eq!(f[1].buckets[BOUNDS_NS.len()], 1, "20 s is in +Inf");
        assert_eq!(f[1].buckets[4], 1, "3 µs is in the 5 µs bucket");
        assert_eq!(f[2].outcomes[1], 1);
        assert_eq!(outcome_index(1000), OUTCOMES.len() - 1);
    }
}
