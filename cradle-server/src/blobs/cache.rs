//! The memory cache's index: key → blob, with an LRU order and a byte count.
//! What may be evicted (blobs nobody holds) is decided by the store.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug)]
struct Entry {
    blob: u64,
    len: u64,
    /// Position in `lru`.
    tick: u64,
}

/// Key → blob id, least recently used first.
#[derive(Debug)]
pub(crate) struct MemCache {
    budget: u64,
    used: u64,
    tick: u64,
    entries: HashMap<String, Entry>,
    lru: BTreeMap<u64, String>,
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
            tick: 0,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
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

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The blob and length under `key`, without touching the order.
    pub(crate) fn peek(&self, key: &str) -> Option<(u64, u64)> {
        self.entries.get(key).map(|e| (e.blob, e.len))
    }

    /// Marks `key` most recently used.
    pub(crate) fn touch(&mut self, key: &str) {
        let t = self.next_tick();
        if let Some(e) = self.entries.get_mut(key) {
            if let Some(k) = self.lru.remove(&e.tick) {
                self.lru.insert(t, k);
            }
            e.tick = t;
        }
    }

    /// A lookup: counts a hit or a miss; a hit becomes most recently used.
    pub(crate) fn get(&mut self, key: &str) -> Option<u64> {
        match self.entries.get(key) {
            Some(e) => {
                let blob = e.blob;
                self.hits += 1;
                self.touch(key);
                Some(blob)
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Stores `blob` under `key` as most recently used; returns the blob it
    /// replaced. The caller made room.
    pub(crate) fn insert(&mut self, key: &str, blob: u64, len: u64) -> Option<u64> {
        let old = self.remove(key);
        let tick = self.next_tick();
        self.lru.insert(tick, key.to_owned());
        self.entries
            .insert(key.to_owned(), Entry { blob, len, tick });
        self.used += len;
        old
    }

    /// Removes `key`; returns its blob.
    pub(crate) fn remove(&mut self, key: &str) -> Option<u64> {
        let e = self.entries.remove(key)?;
        self.lru.remove(&e.tick);
        self.used -= e.len;
        Some(e.blob)
    }

    /// `(key, blob, len)`, least recently used first.
    pub(crate) fn oldest_first(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.lru
            .values()
            .filter_map(|k| self.entries.get(k).map(|e| (k.as_str(), e.blob, e.len)))
    }
}
