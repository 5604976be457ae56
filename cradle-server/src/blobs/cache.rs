//! The memory cache: key → blob, within a byte budget, and the policy that
//! chooses what to evict ([`EvictionPolicy`], implemented by [`Lru`]).
//!
//! To change the eviction policy, write another [`EvictionPolicy`] and name
//! it in [`Policy`]. The cache only asks it for candidates in order; which
//! of them may really go (nothing a client or handler holds, nothing the
//! disk writer still needs) is decided by the caller through
//! [`MemCache::plan_eviction`].

use std::collections::{BTreeMap, HashMap};

/// The order in which the memory cache gives entries up.
pub(crate) trait EvictionPolicy: Default + std::fmt::Debug {
    /// `key` was stored.
    fn inserted(&mut self, key: &str);
    /// `key` was read or stored again.
    fn touched(&mut self, key: &str);
    /// `key` left the cache.
    fn removed(&mut self, key: &str);
    /// Every key, the first to evict first.
    fn candidates(&self) -> Box<dyn Iterator<Item = &str> + '_>;
}

/// The policy the cache uses.
pub(crate) type Policy = Lru;

/// Least recently used first.
#[derive(Debug, Default)]
pub(crate) struct Lru {
    tick: u64,
    /// Key → its position in `order`.
    ticks: HashMap<String, u64>,
    /// Position → key, oldest first.
    order: BTreeMap<u64, String>,
}

impl EvictionPolicy for Lru {
    fn inserted(&mut self, key: &str) {
        self.touched(key);
    }

    fn touched(&mut self, key: &str) {
        self.tick += 1;
        let t = self.tick;
        // A key already known moves without allocating (every cache hit).
        if let Some(at) = self.ticks.get_mut(key) {
            let old = std::mem::replace(at, t);
            let k = self.order.remove(&old).unwrap_or_else(|| key.to_owned());
            self.order.insert(t, k);
            return;
        }
        self.ticks.insert(key.to_owned(), t);
        self.order.insert(t, key.to_owned());
    }

    fn removed(&mut self, key: &str) {
        if let Some(t) = self.ticks.remove(key) {
            self.order.remove(&t);
        }
    }

    fn candidates(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(self.order.values().map(String::as_str))
    }
}

/// Whether the blob of an entry could leave memory now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evictable {
    /// Nothing but the cache refers to it.
    Now,
    /// Only the disk writer still needs it: once written, it can go.
    AfterWrite,
    /// A client's lease or a handler's pin holds it.
    Held,
}

/// What making room for a new entry takes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Eviction {
    /// Evict these keys (possibly none).
    Evict(Vec<String>),
    /// Not yet: enough would be free once the disk writer has written
    /// `queued` bytes of entries.
    WaitForWriter { queued: u64 },
    /// Impossible: only `free` bytes could ever be made free, `held` bytes
    /// are held by leases or handlers.
    Held { free: u64, held: u64 },
}

#[derive(Debug)]
struct Entry {
    blob: u64,
    len: u64,
}

/// Key → blob id within a byte budget, with its counters.
#[derive(Debug)]
pub(crate) struct MemCache {
    budget: u64,
    used: u64,
    entries: HashMap<String, Entry>,
    policy: Policy,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) evictions: u64,
    pub(crate) full: u64,
}

impl MemCache {
    pub(crate) fn new(budget: u64) -> Self {
        Self {
            budget,
            used: 0,
            entries: HashMap::new(),
            policy: Policy::default(),
            hits: 0,
            misses: 0,
            evictions: 0,
            full: 0,
        }
    }

    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The blob and length under `key`, without counting or touching.
    pub(crate) fn peek(&self, key: &str) -> Option<(u64, u64)> {
        self.entries.get(key).map(|e| (e.blob, e.len))
    }

    /// Marks `key` used.
    pub(crate) fn touch(&mut self, key: &str) {
        if self.entries.contains_key(key) {
            self.policy.touched(key);
        }
    }

    /// What storing `len` bytes under `key` takes; `status` says whether a
    /// blob could leave memory. Counts nothing.
    #[cfg(test)]
    pub(crate) fn plan_eviction(
        &self,
        key: &str,
        len: u64,
        status: impl Fn(u64) -> Evictable,
    ) -> Eviction {
        self.plan_eviction_with(key, len, |_, b| (status(b), 0))
    }

    /// [`plan_eviction`](Self::plan_eviction) where `status` sees the key
    /// too and says how many more bytes leave with it (a memo entry takes
    /// its result blobs along, which are pinned by it until then).
    pub(crate) fn plan_eviction_with(
        &self,
        key: &str,
        len: u64,
        status: impl Fn(&str, u64) -> (Evictable, u64),
    ) -> Eviction {
        let replaced = self.entries.get(key).map_or(0, |e| e.len);
        let after = self.used - replaced + len;
        if after <= self.budget {
            return Eviction::Evict(Vec::new());
        }
        let need = after - self.budget;
        let (mut free, mut later, mut held) = (0, 0, 0);
        let mut victims = Vec::new();
        for k in self.policy.candidates() {
            if free >= need {
                break;
            }
            let Some(e) = self.entries.get(k).filter(|_| k != key) else {
                continue;
            };
            match status(k, e.blob) {
                (Evictable::Now, along) => {
                    victims.push(k.to_owned());
                    free += e.len + along;
                }
                (Evictable::AfterWrite, along) => later += e.len + along,
                (Evictable::Held, _) => held += e.len,
            }
        }
        if free >= need {
            Eviction::Evict(victims)
        } else if free + later >= need {
            Eviction::WaitForWriter { queued: later }
        } else {
            Eviction::Held { free, held }
        }
    }

    /// Stores `blob` under `key`; returns the blob it replaced. The caller
    /// made room (see [`plan_eviction`](Self::plan_eviction)).
    pub(crate) fn insert(&mut self, key: &str, blob: u64, len: u64) -> Option<u64> {
        let old = self.remove(key);
        self.policy.inserted(key);
        self.entries.insert(key.to_owned(), Entry { blob, len });
        self.used += len;
        old
    }

    /// Removes `key`; returns its blob.
    pub(crate) fn remove(&mut self, key: &str) -> Option<u64> {
        let e = self.entries.remove(key)?;
        self.policy.removed(key);
        self.used -= e.len;
        Some(e.blob)
    }

    /// `(key, len)` of every entry whose key starts with `prefix`.
    pub(crate) fn keys<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, u64)> {
        self.entries
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, e)| (k.as_str(), e.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_offers_the_least_recently_used_first_and_skips_held_entries() {
        let mut c = MemCache::new(300);
        for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
            c.insert(k, i as u64, 100);
        }
        c.touch("a");
        let all_free = |_| Evictable::Now;
        assert_eq!(
            c.plan_eviction("d", 100, all_free),
            Eviction::Evict(vec!["b".into()])
        );
        let b_held = |blob| {
            if blob == 1 {
                Evictable::Held
            } else {
                Evictable::Now
            }
        };
        assert_eq!(
            c.plan_eviction("d", 100, b_held),
            Eviction::Evict(vec!["c".into()])
        );
        let queued = |_| Evictable::AfterWrite;
        assert_eq!(
            c.plan_eviction("d", 100, queued),
            Eviction::WaitForWriter { queued: 300 }
        );
        let held = |_| Evictable::Held;
        assert_eq!(
            c.plan_eviction("d", 100, held),
            Eviction::Held { free: 0, held: 300 }
        );
        // Replacing a key needs only the difference.
        assert_eq!(c.plan_eviction("a", 100, held), Eviction::Evict(vec![]));
    }
}
