//! The disk tier of the shared cache (docs/design.md §8): a bounded, crash-safe,
//! LRU key → bytes store in a directory, the second tier behind the memory
//! cache. It survives restarts.
//!
//! # Layout
//!
//! ```text
//! <dir>/            mode 0700, created if missing
//!   lock            flock(LOCK_EX) while a tier has the directory open
//!   entries/<h>     one file per entry; <h> = xxh3-128(key), 32 hex digits
//!   tmp/*           files being written, or retired; emptied at open
//! ```
//!
//! An entry file is a fixed 40-byte header (magic, format version, key
//! length, data length, xxh3-64 of the data, xxh3-64 of the header fields
//! and the key), the key, zero padding to a 64-byte boundary, then the data;
//! its length is exactly what the header implies (see `format.rs` for the
//! byte layout).
//!
//! # Writing
//!
//! `put` writes a new file in `tmp/` (header and key, then the data, then
//! the file's mtime), `fdatasync`s it if the put is durable, `rename`s it
//! over `entries/<h>`, and, if durable, `fsync`s `entries/`; only then is a
//! durable put acknowledged. A file is never modified after the rename, so a
//! crash leaves, for each name, either the old file or the new one (rename
//! is atomic), and a new file whose data did not reach the disk fails its
//! checksums: the reader sees the old state, the new state, or a miss, never
//! a mix. Evicted and removed entries are first renamed into `tmp/` (under
//! the index lock, so a concurrent `put` of the same key can never lose its
//! new file to the unlink) and unlinked after the lock is released.
//!
//! # Reading
//!
//! Reads use `pread` only, never `mmap`: a file truncated behind the
//! server's back under a mapping would raise `SIGBUS` in the server, while
//! `pread` merely returns short. `get` reads the header and the key, checks
//! them and the file length (`fstat`), asks the caller for a destination of
//! the data's length, then reads the data straight into it in 1 MiB chunks,
//! hashing each chunk right after reading it (xxh3, streaming); nothing is
//! copied twice. Any mismatch
//! (bytes flipped, file truncated or extended, short read, another key) is
//! never served: the entry is dropped from the index, its file deleted, a
//! warning logged, `corruptions` counted, and the caller gets a miss.
//!
//! # Index and LRU order
//!
//! The index (key hash → key, lengths, recency) lives in memory behind one
//! `Mutex`; file I/O happens outside it, except the renames and unlinks that
//! must stay ordered with the index. At open it is rebuilt by reading only
//! the headers (header checksum, name = hash of the key, file length =
//! header-implied length; bad files are deleted and counted), ordered by
//! file modification time. The tier keeps the mtimes meaningful: a `put`
//! stamps its file, and a hit re-stamps it (`futimens`, best effort), with
//! a clock that never repeats a value, so the LRU order survives a restart.
//! If the budget shrank, the oldest entries are evicted at open. The budget
//! counts whole files (header, key, padding, data).
//!
//! # Why not redb or SQLite
//!
//! An embedded database would give transactions we do not need and cost
//! what we do need: values of many MiB copied through its page cache or
//! read through `mmap` (redb and LMDB map the file: a truncated file means
//! `SIGBUS`), a single file whose corruption can take every entry with it,
//! and compaction. A cache needs much less: entries are independent and
//! written once, so one file per entry, `rename` for atomic replacement, a
//! checksum per entry for detection, and an index that can always be
//! rebuilt from the headers are enough, and let reads go from the page
//! cache straight into a shared-memory blob with one `pread`.
//!
//! # Concurrency
//!
//! All methods take `&self`; the tier is `Send + Sync`. A `get` that races
//! with a `put` of the same key returns the old or the new value, both
//! checked. One tier per directory: a second open (in any process) fails
//! with [`DiskError::Locked`]. The lock is held twice: an `flock` on
//! `<dir>/lock`, and an abstract Unix socket named after the directory's
//! canonical path and the user id (`fs.rs`), which nothing on the
//! filesystem can remove: after `rm -rf` of a live directory, a second
//! server that recreates it still finds the directory in use.

mod error;
#[cfg(test)]
mod faulty;
mod format;
mod fs;
#[cfg(test)]
mod tests;

pub(crate) use error::{DiskError, GetError};
#[cfg(test)]
pub(crate) use faulty::FaultyFs;
pub(crate) use fs::{Fs, FsFile, FsLock, RealFs};

use format::{Damage, HEADER_LEN, MAX_KEY_LEN};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};
use xxhash_rust::xxh3::{Xxh3Default, xxh3_64, xxh3_128};

/// Data is read (and hashed) in chunks of this size, so each chunk is
/// hashed while it is still in the CPU cache.
const READ_CHUNK: usize = 1 << 20;

/// Step of the mtime clock when the wall clock did not advance (1 µs, so
/// filesystems with microsecond timestamps keep the order too).
const MTIME_STEP: Duration = Duration::from_micros(1);

/// Figures of the tier; plain counters since open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DiskStats {
    /// Entries in the index.
    pub(crate) entries: u64,
    /// Bytes of their files (header, key, padding, data).
    pub(crate) bytes: u64,
    /// The byte budget.
    pub(crate) budget: u64,
    /// `get`s that returned data.
    pub(crate) hits: u64,
    /// `get`s that returned nothing (absent or damaged).
    pub(crate) misses: u64,
    /// Damaged entries found (at open or by `get`) and deleted.
    pub(crate) corruptions: u64,
    /// Entries evicted to stay within the budget (at open or by `put`).
    pub(crate) evictions: u64,
}

/// What a [`DiskTier::put`] evicted to make room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PutOutcome {
    /// Entries evicted.
    pub(crate) evicted: u64,
    /// Bytes of their files.
    pub(crate) evicted_bytes: u64,
}

/// The disk tier: see the module documentation.
pub(crate) struct DiskTier {
    /// The directory given to `open`.
    dir: PathBuf,
    /// `<dir>/entries`.
    entries: PathBuf,
    /// `<dir>/tmp`.
    tmp: PathBuf,
    /// Upper bound of `Index::bytes` after every `put` and `open`.
    budget: u64,
    /// Where every file operation goes.
    fs: Arc<dyn Fs>,
    /// The in-memory index; see [`Index`].
    index: Mutex<Index>,
    /// Holds `<dir>/lock` while the tier lives.
    _lock: FsLock,
}

/// One entry of the index.
#[derive(Debug)]
struct Slot {
    /// The key (the map is keyed by its hash; two keys with one hash share
    /// a file, the later replacing the earlier).
    key: Box<str>,
    /// Length of the data.
    data_len: u64,
    /// Length of the file, counted against the budget.
    file_len: u64,
    /// Position in the LRU order: its key in `Index::lru`.
    tick: u64,
    /// Unique per file renamed into place: tells a reader whether the file
    /// it judged is still the one the index points to.
    generation: u64,
}

/// The index and the counters, behind `DiskTier::index`.
#[derive(Debug)]
struct Index {
    /// Entries by the xxh3-128 hash of their key (their file name).
    slots: HashMap<u128, Slot>,
    /// Recency: tick → key hash; the first is the least recently used.
    /// Exactly one item per slot, `lru[slot.tick] == hash`.
    lru: BTreeMap<u64, u128>,
    /// Next tick; greater than every tick in `lru`.
    next_tick: u64,
    /// Next generation (see [`Slot::generation`]).
    next_generation: u64,
    /// Next number for a file name in `tmp/`.
    next_seq: u64,
    /// Last mtime handed out; every new one is later.
    last_mtime: SystemTime,
    /// Sum of `file_len` over `slots`.
    bytes: u64,
    /// Changes made to `entries/` (renames in and out, unlinks).
    dir_changes: u64,
    /// The value of `dir_changes` the last completed `fsync` of `entries/`
    /// covers; `dir_changes > dir_synced` means some change may not be
    /// durable yet.
    dir_synced: u64,
    /// See [`DiskStats`].
    hits: u64,
    /// See [`DiskStats`].
    misses: u64,
    /// See [`DiskStats`].
    corruptions: u64,
    /// See [`DiskStats`].
    evictions: u64,
}

impl Index {
    /// The entry for `key`, if the index holds it.
    fn lookup(&self, hash: u128, key: &str) -> Option<&Slot> {
        self.slots.get(&hash).filter(|s| &*s.key == key)
    }

    /// Inserts an entry as the most recently used, replacing the one with
    /// the same hash; returns its generation.
    fn insert(&mut self, hash: u128, key: &str, data_len: u64, file_len: u64) -> u64 {
        self.remove(hash);
        let tick = self.take_tick();
        let generation = self.next_generation;
        self.next_generation += 1;
        self.lru.insert(tick, hash);
        self.bytes += file_len;
        self.slots.insert(
            hash,
            Slot {
                key: key.into(),
                data_len,
                file_len,
                tick,
                generation,
            },
        );
        generation
    }

    /// Removes an entry.
    fn remove(&mut self, hash: u128) -> Option<Slot> {
        let slot = self.slots.remove(&hash)?;
        self.lru.remove(&slot.tick);
        self.bytes -= slot.file_len;
        Some(slot)
    }

    /// Makes an entry the most recently used.
    fn touch(&mut self, hash: u128) {
        let tick = self.take_tick();
        if let Some(slot) = self.slots.get_mut(&hash) {
            self.lru.remove(&slot.tick);
            slot.tick = tick;
            self.lru.insert(tick, hash);
        }
    }

    /// Removes and returns the least recently used entry.
    fn pop_lru(&mut self) -> Option<(u128, Slot)> {
        let (_, hash) = self.lru.pop_first()?;
        let slot = self.slots.remove(&hash)?;
        self.bytes -= slot.file_len;
        Some((hash, slot))
    }

    /// A new tick.
    fn take_tick(&mut self) -> u64 {
        let t = self.next_tick;
        self.next_tick += 1;
        t
    }

    /// A new number for a file name in `tmp/`.
    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// A modification time later than every one handed out before.
    fn next_mtime(&mut self) -> SystemTime {
        let now = SystemTime::now();
        let t = if now > self.last_mtime {
            now
        } else {
            self.last_mtime + MTIME_STEP
        };
        self.last_mtime = t;
        t
    }

    /// Counters and sizes.
    fn stats(&self, budget: u64) -> DiskStats {
        DiskStats {
            entries: self.slots.len() as u64,
            bytes: self.bytes,
            budget,
            hits: self.hits,
            misses: self.misses,
            corruptions: self.corruptions,
            evictions: self.evictions,
        }
    }
}

/// An entry found by the scan at open.
struct Found {
    /// The key's hash (the file name).
    hash: u128,
    /// The key.
    key: Box<str>,
    /// Data length.
    data_len: u64,
    /// File length.
    file_len: u64,
    /// Modification time: the LRU order.
    mtime: SystemTime,
}

/// Why reading an entry in [`DiskTier::get`] did not return data.
enum ReadFail<E> {
    /// The entry is damaged.
    Damage(Damage),
    /// The caller's allocator failed.
    Alloc(E),
    /// The caller's buffer has the wrong length.
    BufferLength {
        /// The data length.
        expected: u64,
        /// The buffer's length.
        actual: usize,
    },
}

impl<E> From<Damage> for ReadFail<E> {
    fn from(d: Damage) -> Self {
        Self::Damage(d)
    }
}

/// The xxh3-128 hash of a key: its file name.
fn hash_key(key: &str) -> u128 {
    xxh3_128(key.as_bytes())
}

/// The file name of a key hash: 32 lowercase hex digits.
fn file_name(hash: u128) -> String {
    format!("{hash:032x}")
}

/// The key hash a file name stands for, if it is an entry name.
fn parse_file_name(name: &OsStr) -> Option<u128> {
    let s = name.to_str()?;
    let canonical = s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !canonical {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

/// The file name for `key` in `entries/` (for tests that damage files).
#[cfg(test)]
pub(crate) fn entry_file_name(key: &str) -> String {
    file_name(hash_key(key))
}

/// The length of the file of an entry (what counts against the budget).
#[cfg(test)]
pub(crate) fn entry_file_len(key: &str, data_len: u64) -> u64 {
    format::file_len(key.len(), data_len).unwrap_or(u64::MAX)
}

impl DiskTier {
    /// Opens (or creates) the tier in `dir` on the real filesystem, with a
    /// budget of `budget` bytes. See [`open_with`](Self::open_with).
    pub(crate) fn open(dir: &Path, budget: u64) -> Result<Self, DiskError> {
        Self::open_with(dir, budget, Arc::new(RealFs))
    }

    /// Opens (or creates) the tier in `dir` through `fs`.
    ///
    /// Creates `dir`, `dir/entries` and `dir/tmp` (mode 0700) if missing,
    /// locks `dir/lock`, empties `tmp/`, proves the directory writable
    /// (creates, syncs and removes a probe file), rebuilds the index from
    /// the entry headers (deleting and counting damaged files), and evicts
    /// the oldest entries if they exceed `budget`.
    ///
    /// Errors: [`DiskError::CreateDir`], [`DiskError::Locked`],
    /// [`DiskError::Unusable`] (all naming the path), or
    /// [`DiskError::Io`] if a directory cannot be listed.
    pub(crate) fn open_with(dir: &Path, budget: u64, fs: Arc<dyn Fs>) -> Result<Self, DiskError> {
        let entries = dir.join("entries");
        let tmp = dir.join("tmp");
        for d in [dir, &entries, &tmp] {
            fs.create_dir_all(d)
                .map_err(|source| DiskError::CreateDir {
                    path: d.to_owned(),
                    source,
                })?;
        }
        let lock_path = dir.join("lock");
        let lock = fs.lock(&lock_path).map_err(|source| {
            if source.kind() == io::ErrorKind::WouldBlock {
                DiskError::Locked {
                    dir: dir.to_owned(),
                }
            } else {
                DiskError::Unusable {
                    dir: dir.to_owned(),
                    probe: lock_path.clone(),
                    source,
                }
            }
        })?;
        clear_tmp(&*fs, &tmp)?;
        probe(&*fs, dir, &tmp)?;

        let mut index = Index {
            slots: HashMap::new(),
            lru: BTreeMap::new(),
            next_tick: 0,
            next_generation: 0,
            next_seq: 0,
            last_mtime: SystemTime::UNIX_EPOCH,
            bytes: 0,
            dir_changes: 0,
            dir_synced: 0,
            hits: 0,
            misses: 0,
            corruptions: 0,
            evictions: 0,
        };
        let mut found = Vec::new();
        let mut deleted = false;
        let names = fs
            .list(&entries)
            .map_err(|source| DiskError::io("list", &entries, source))?;
        let mut head = vec![0u8; HEADER_LEN + MAX_KEY_LEN];
        for name in names {
            let path = entries.join(&name);
            match scan_entry(&*fs, &path, &name, &mut head) {
                Ok(f) => found.push(f),
                Err(ScanFail::Vanished) => {}
                // Not the entry's fault (EMFILE, ENOMEM, ...): deleting
                // valid entries would be wrong, so opening fails.
                Err(ScanFail::Open(source)) => return Err(DiskError::io("open", &path, source)),
                Err(ScanFail::Damage(damage)) => {
                    tracing::warn!(path = %path.display(), reason = %damage, "damaged disk cache entry deleted");
                    index.corruptions += 1;
                    deleted = true;
                    if let Err(e) = fs.remove(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot delete a damaged disk cache entry");
                    }
                }
            }
        }
        // Oldest first; the name breaks ties (equal mtimes come from
        // another writer or a coarse filesystem clock).
        found.sort_by(|a, b| a.mtime.cmp(&b.mtime).then(a.hash.cmp(&b.hash)));
        for f in found {
            index.last_mtime = index.last_mtime.max(f.mtime);
            index.insert(f.hash, &f.key, f.data_len, f.file_len);
        }
        while index.bytes > budget {
            let Some((hash, slot)) = index.pop_lru() else {
                break;
            };
            index.evictions += 1;
            deleted = true;
            let path = entries.join(file_name(hash));
            if let Err(e) = fs.remove(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete an evicted disk cache entry");
            }
            tracing::debug!(
                key = &*slot.key,
                bytes = slot.file_len,
                "evicted at open (over budget)"
            );
        }
        if deleted && let Err(e) = fs.sync_dir(&entries) {
            tracing::warn!(path = %entries.display(), error = %e, "cannot fsync the disk cache directory");
        }
        tracing::info!(
            dir = %dir.display(),
            entries = index.slots.len(),
            bytes = %bytesize::ByteSize(index.bytes).display().iec(),
            budget = %bytesize::ByteSize(budget).display().iec(),
            corruptions = index.corruptions,
            evictions = index.evictions,
            "disk cache opened"
        );
        Ok(Self {
            dir: dir.to_owned(),
            entries,
            tmp,
            budget,
            fs,
            index: Mutex::new(index),
            _lock: lock,
        })
    }

    /// The tier's directory, as given to `open`.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The counters and sizes.
    pub(crate) fn stats(&self) -> DiskStats {
        self.lock().stats(self.budget)
    }

    /// The data length of `key`'s entry, if the index holds one (the file
    /// is not read: a later `get` may still find it damaged).
    pub(crate) fn len_of(&self, key: &str) -> Option<u64> {
        self.lock().lookup(hash_key(key), key).map(|s| s.data_len)
    }

    /// The byte budget.
    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    /// Whether an entry of `data_len` bytes under `key` could fit in the
    /// budget at all (its file: header, key, padding, data).
    pub(crate) fn fits(&self, key: &str, data_len: u64) -> bool {
        key.len() <= MAX_KEY_LEN
            && format::file_len(key.len(), data_len).is_some_and(|l| l <= self.budget)
    }

    /// Counts a lookup that found nothing in this tier (a key the memory
    /// tier missed too, see the store's statistics).
    pub(crate) fn count_miss(&self) {
        self.lock().misses += 1;
    }

    /// `(key, data length)` of every entry whose key starts with `prefix`,
    /// in no particular order.
    pub(crate) fn keys(&self, prefix: &str) -> Vec<(String, u64)> {
        self.lock()
            .slots
            .values()
            .filter(|s| s.key.starts_with(prefix))
            .map(|s| (s.key.to_string(), s.data_len))
            .collect()
    }

    /// Takes `key`'s entry out of the index and its file out of `entries/`
    /// at once (a rename into `tmp/`, without `fsync`): from now on no
    /// `get`, and no later open of the directory, serves it. Returns the
    /// retired file to [`discard`](Self::discard) later (unlinking a large
    /// file takes time), or `None` if there was no entry.
    ///
    /// Used before a newer value of the key is acknowledged but not yet
    /// written, so that the key can never fall back to this older value.
    ///
    /// Errors: [`DiskError::Io`] if the file could not be moved nor
    /// unlinked; the entry has left the index all the same.
    pub(crate) fn invalidate(&self, key: &str) -> Result<Option<PathBuf>, DiskError> {
        let hash = hash_key(key);
        let mut ix = self.lock();
        if ix.lookup(hash, key).is_none() {
            return Ok(None);
        }
        ix.remove(hash);
        let seq = ix.take_seq();
        ix.dir_changes += 1;
        let from = self.entries.join(file_name(hash));
        let to = self.tmp.join(format!("{seq:016x}.old"));
        match self.fs.rename(&from, &to) {
            Ok(()) => Ok(Some(to)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                // Under the lock still: no put can rename a new file onto
                // the name between the failed rename and this unlink.
                self.fs
                    .remove(&from)
                    .map_err(|source| DiskError::io("unlink", &from, source))
                    .map_err(|err| {
                        tracing::warn!(path = %from.display(), rename = %e, error = %err, "cannot invalidate a disk cache entry");
                        err
                    })?;
                Ok(None)
            }
        }
    }

    /// Stores `data` under `key`, replacing any entry for `key`, and evicts
    /// least recently used entries until the files fit in the budget.
    ///
    /// With `durable`, returns only after the file's data is `fdatasync`ed
    /// and the directory `fsync`ed: the entry survives a power loss (unless
    /// a later `put` or `remove` of the key supersedes it). Without, the
    /// entry may be lost, or fall back to an older value of the key, on a
    /// power loss, but is never served torn.
    ///
    /// Errors: [`DiskError::TooLarge`] if the file (header, key, data)
    /// exceeds the whole budget, [`DiskError::KeyTooLong`], or
    /// [`DiskError::Io`]; on an error before the rename nothing changed.
    /// If only the final directory `fsync` fails, the entry is in place but
    /// not known durable.
    #[cfg(test)]
    pub(crate) fn put(
        &self,
        key: &str,
        data: &[u8],
        durable: bool,
    ) -> Result<PutOutcome, DiskError> {
        self.put_if(key, data, durable, &|| true)
            .map(|o| o.unwrap_or_default())
    }

    /// [`put`](Self::put), but the new file replaces the entry only if
    /// `current()` still holds when it is renamed into place (asked under
    /// the index lock, so no `invalidate` or `remove` of the key runs
    /// meanwhile); otherwise nothing changes and the answer is `Ok(None)`.
    /// `current` must not call the tier.
    pub(crate) fn put_if(
        &self,
        key: &str,
        data: &[u8],
        durable: bool,
        current: &dyn Fn() -> bool,
    ) -> Result<Option<PutOutcome>, DiskError> {
        if key.len() > MAX_KEY_LEN {
            return Err(DiskError::KeyTooLong {
                len: key.len(),
                max: MAX_KEY_LEN,
            });
        }
        let data_len = data.len() as u64;
        let file_len = format::file_len(key.len(), data_len).unwrap_or(u64::MAX);
        if file_len > self.budget {
            return Err(DiskError::TooLarge {
                len: file_len,
                budget: self.budget,
            });
        }
        let mut head = Vec::new();
        format::encode_head(key.as_bytes(), data_len, xxh3_64(data), &mut head);
        let hash = hash_key(key);
        let (seq, mtime) = {
            let mut ix = self.lock();
            (ix.take_seq(), ix.next_mtime())
        };
        let tmp = self.tmp.join(format!("{seq:016x}.new"));
        if let Err(e) = self.write_new(&tmp, &head, data, mtime, durable) {
            self.discard(&tmp);
            return Err(e);
        }

        let dest = self.entries.join(file_name(hash));
        let mut outcome = PutOutcome::default();
        let mut retired = Vec::new();
        {
            let mut ix = self.lock();
            // Under the lock: the index and the directory change together,
            // so a concurrent put, remove or eviction of this name cannot
            // interleave with ours.
            if !current() {
                drop(ix);
                self.discard(&tmp);
                return Ok(None);
            }
            if let Err(source) = self.fs.rename(&tmp, &dest) {
                drop(ix);
                self.discard(&tmp);
                return Err(DiskError::io("rename", &tmp, source));
            }
            ix.dir_changes += 1;
            ix.insert(hash, key, data_len, file_len);
            // The new entry is the most recently used and fits alone, so
            // the loop stops before reaching it.
            while ix.bytes > self.budget {
                let Some((victim, slot)) = ix.pop_lru() else {
                    break;
                };
                ix.evictions += 1;
                outcome.evicted += 1;
                outcome.evicted_bytes += slot.file_len;
                let seq = ix.take_seq();
                ix.dir_changes += 1;
                if let Some(p) = self.retire(victim, seq) {
                    retired.push(p);
                }
            }
        }
        for p in &retired {
            self.discard(p);
        }
        if durable {
            self.sync_entries()?;
        }
        if outcome.evicted > 0 {
            tracing::debug!(
                evicted = outcome.evicted,
                bytes = outcome.evicted_bytes,
                "disk cache evicted entries to make room"
            );
        }
        Ok(Some(outcome))
    }

    /// Reads `key`'s data into a destination the caller allocates once it
    /// knows the length: `alloc(data_len)` must return a buffer of exactly
    /// `data_len` bytes. Returns `Ok(None)` on a miss.
    ///
    /// The data is read with `pread` straight into the buffer and checked
    /// against its checksum; a damaged entry (see the module documentation)
    /// is deleted, counted in `corruptions`, and reported as a miss (the
    /// buffer is dropped). A hit makes the entry the most recently used,
    /// also across restarts (its file's mtime is updated, best effort).
    ///
    /// Errors: [`GetError::Alloc`] and [`GetError::BufferLength`] from the
    /// allocator, or [`GetError::Disk`] if the file cannot be opened for a
    /// reason that is not the entry's fault; the entry is kept in all three
    /// cases.
    pub(crate) fn get<B, E>(
        &self,
        key: &str,
        alloc: impl FnOnce(u64) -> Result<B, E>,
    ) -> Result<Option<B>, GetError<E>>
    where
        B: AsMut<[u8]>,
    {
        let hash = hash_key(key);
        let generation = {
            let mut ix = self.lock();
            match ix.lookup(hash, key) {
                Some(slot) => slot.generation,
                None => {
                    ix.misses += 1;
                    return Ok(None);
                }
            }
        };
        let path = self.entries.join(file_name(hash));
        let file = match self.fs.open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.damaged(hash, key, generation, &path, Damage::Vanished);
                return Ok(None);
            }
            Err(source) => return Err(GetError::Disk(DiskError::io("open", &path, source))),
        };
        let buf = match read_entry(&*file, key, alloc) {
            Ok(buf) => buf,
            Err(ReadFail::Damage(damage)) => {
                self.damaged(hash, key, generation, &path, damage);
                return Ok(None);
            }
            Err(ReadFail::Alloc(e)) => return Err(GetError::Alloc(e)),
            Err(ReadFail::BufferLength { expected, actual }) => {
                return Err(GetError::BufferLength { expected, actual });
            }
        };
        let mtime = {
            let mut ix = self.lock();
            ix.hits += 1;
            // Whatever file of this key the index holds now (the one read,
            // or a newer one a racing put renamed in) becomes the most
            // recently used.
            if ix.lookup(hash, key).is_some() {
                ix.touch(hash);
                Some(ix.next_mtime())
            } else {
                None
            }
        };
        if let Some(mtime) = mtime
            && let Err(e) = file.set_mtime(mtime)
        {
            tracing::debug!(path = %path.display(), error = %e, "cannot update a disk cache entry's mtime");
        }
        Ok(Some(buf))
    }

    /// [`get`](Self::get) into a new `Vec` (the tests' reader; the server
    /// reads into blobs).
    #[cfg(test)]
    pub(crate) fn get_vec(&self, key: &str) -> Result<Option<Vec<u8>>, DiskError> {
        let alloc = |len: u64| usize::try_from(len).map(|n| vec![0u8; n]);
        let failed = |what: String| {
            let path = self.entries.join(file_name(hash_key(key)));
            DiskError::io("read", &path, io::Error::other(what))
        };
        match self.get(key, alloc) {
            Ok(v) => Ok(v),
            Err(GetError::Disk(e)) => Err(e),
            Err(GetError::Alloc(e)) => {
                Err(failed(format!("the entry does not fit in memory: {e}")))
            }
            Err(GetError::BufferLength { expected, actual }) => Err(failed(format!(
                "entry of {expected} bytes, buffer of {actual}"
            ))),
        }
    }

    /// Removes `key`'s entry and makes the removal durable (unlink, then
    /// `fsync` of the directory). Returns whether there was one.
    ///
    /// Even when there is none, the directory is `fsync`ed if some eviction
    /// or deletion may not be durable yet: a file of this key evicted just
    /// before could otherwise come back after a power loss.
    ///
    /// Errors: [`DiskError::Io`]; if the rename out of `entries/` failed the
    /// entry is kept, if the `fsync` failed it is gone but not known
    /// durably gone.
    pub(crate) fn remove(&self, key: &str) -> Result<bool, DiskError> {
        let hash = hash_key(key);
        let retired = {
            let mut ix = self.lock();
            if ix.lookup(hash, key).is_none() {
                let pending = ix.dir_changes > ix.dir_synced;
                drop(ix);
                if pending {
                    self.sync_entries()?;
                }
                return Ok(false);
            }
            let seq = ix.take_seq();
            let from = self.entries.join(file_name(hash));
            let to = self.tmp.join(format!("{seq:016x}.old"));
            ix.dir_changes += 1;
            let retired = match self.fs.rename(&from, &to) {
                Ok(()) => Some(to),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(source) => return Err(DiskError::io("rename", &from, source)),
            };
            ix.remove(hash);
            retired
        };
        if let Some(p) = retired {
            self.discard(&p);
        }
        self.sync_entries()?;
        Ok(true)
    }

    /// `fsync`s `entries/`, making every change made to it so far durable.
    fn sync_entries(&self) -> Result<(), DiskError> {
        let covered = self.lock().dir_changes;
        self.fs
            .sync_dir(&self.entries)
            .map_err(|source| DiskError::io("fsync", &self.entries, source))?;
        let mut ix = self.lock();
        ix.dir_synced = ix.dir_synced.max(covered);
        Ok(())
    }

    /// Locks the index; a panic elsewhere while it was held does not make
    /// it unusable (no code under the lock leaves it half-updated).
    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes a new entry file at `tmp`: head, data, mtime, and if `durable`
    /// `fdatasync`.
    fn write_new(
        &self,
        tmp: &Path,
        head: &[u8],
        data: &[u8],
        mtime: SystemTime,
        durable: bool,
    ) -> Result<(), DiskError> {
        let file = self
            .fs
            .create(tmp)
            .map_err(|source| DiskError::io("create", tmp, source))?;
        file.write_all_at(head, 0)
            .and_then(|()| file.write_all_at(data, head.len() as u64))
            .map_err(|source| DiskError::io("write", tmp, source))?;
        // After the writes, which would move it.
        if let Err(e) = file.set_mtime(mtime) {
            tracing::debug!(path = %tmp.display(), error = %e, "cannot set a disk cache entry's mtime");
        }
        if durable {
            file.sync_data()
                .map_err(|source| DiskError::io("fdatasync", tmp, source))?;
        }
        Ok(())
    }

    /// Moves an entry's file out of `entries/` into `tmp/` (called under the
    /// index lock, after the entry left the index); returns the new path to
    /// unlink once the lock is released, or `None` if nothing is left.
    fn retire(&self, hash: u128, seq: u64) -> Option<PathBuf> {
        let from = self.entries.join(file_name(hash));
        let to = self.tmp.join(format!("{seq:016x}.old"));
        match self.fs.rename(&from, &to) {
            Ok(()) => Some(to),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %from.display(), error = %e, "cannot move an evicted disk cache entry; unlinking it in place");
                if let Err(e) = self.fs.remove(&from) {
                    tracing::warn!(path = %from.display(), error = %e, "cannot delete an evicted disk cache entry; it will be found again at the next open");
                }
                None
            }
        }
    }

    /// Unlinks a file in `tmp/`, best effort (the next open empties `tmp/`).
    pub(crate) fn discard(&self, path: &Path) {
        if let Err(e) = self.fs.remove(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a disk cache file");
        }
    }

    /// Handles a damaged entry found by `get`: a miss, and unless a racing
    /// `put` or `remove` already replaced the file that was read (its
    /// generation changed), the entry is dropped, its file deleted and the
    /// corruption counted.
    fn damaged(&self, hash: u128, key: &str, generation: u64, path: &Path, damage: Damage) {
        let mut ix = self.lock();
        ix.misses += 1;
        let current = ix
            .slots
            .get(&hash)
            .is_some_and(|s| s.generation == generation);
        if !current {
            tracing::debug!(path = %path.display(), reason = %damage, "disk cache entry replaced while it was read");
            return;
        }
        ix.remove(hash);
        ix.corruptions += 1;
        ix.dir_changes += 1;
        tracing::warn!(path = %path.display(), key, reason = %damage, "damaged disk cache entry deleted");
        // Under the lock: no put can rename a new file onto this name
        // between the generation check and the unlink.
        if let Err(e) = self.fs.remove(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a damaged disk cache entry");
        }
    }
}

impl fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskTier")
            .field("dir", &self.dir)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Empties `tmp/` at open: files of writes a crash interrupted, or retired
/// entries not yet unlinked.
fn clear_tmp(fs: &dyn Fs, tmp: &Path) -> Result<(), DiskError> {
    let names = fs
        .list(tmp)
        .map_err(|source| DiskError::io("list", tmp, source))?;
    for name in names {
        let path = tmp.join(name);
        if let Err(e) = fs.remove(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a leftover disk cache file");
        }
    }
    Ok(())
}

/// Proves the directory writable: creates, writes, syncs and removes a
/// file in `tmp/`.
fn probe(fs: &dyn Fs, dir: &Path, tmp: &Path) -> Result<(), DiskError> {
    let path = tmp.join("probe");
    let unusable = |source| DiskError::Unusable {
        dir: dir.to_owned(),
        probe: path.clone(),
        source,
    };
    let file = fs.create(&path).map_err(unusable)?;
    let written = file
        .write_all_at(b"probe", 0)
        .and_then(|()| file.sync_data());
    drop(file);
    let removed = fs.remove(&path);
    written.and(removed).map_err(unusable)
}

/// Why the scan at open did not accept a file.
enum ScanFail {
    /// The file is damaged (or not an entry).
    Damage(Damage),
    /// The file disappeared meanwhile.
    Vanished,
    /// The file could not be opened.
    Open(io::Error),
}

impl From<Damage> for ScanFail {
    fn from(d: Damage) -> Self {
        Self::Damage(d)
    }
}

/// Reads and checks the header of the entry file at `path` (the scan at
/// open). `head` is a scratch buffer of `HEADER_LEN + MAX_KEY_LEN` bytes.
fn scan_entry(fs: &dyn Fs, path: &Path, name: &OsStr, head: &mut [u8]) -> Result<Found, ScanFail> {
    let hash = parse_file_name(name).ok_or(Damage::BadName)?;
    let file = match fs.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ScanFail::Vanished),
        Err(e) => return Err(ScanFail::Open(e)),
    };
    let stat = file.stat().map_err(Damage::Read)?;
    let n = usize::try_from(stat.len)
        .unwrap_or(usize::MAX)
        .min(head.len());
    let head = &mut head[..n];
    file.read_exact_at(head, 0).map_err(Damage::Read)?;
    let (header, key) = format::decode_head(head)?;
    let key = std::str::from_utf8(key).map_err(|_| Damage::KeyNotUtf8)?;
    if hash_key(key) != hash {
        return Err(Damage::NameMismatch.into());
    }
    let expected = header.file_len();
    if expected != Some(stat.len) {
        return Err(Damage::Length {
            expected,
            actual: stat.len,
        }
        .into());
    }
    Ok(Found {
        hash,
        key: key.into(),
        data_len: header.data_len,
        file_len: stat.len,
        mtime: stat.mtime,
    })
}

/// Reads and checks the entry in `file` for `key`: header, key, file length,
/// then the data into `alloc(data_len)`, hashed chunk by chunk.
fn read_entry<B, E>(
    file: &dyn FsFile,
    key: &str,
    alloc: impl FnOnce(u64) -> Result<B, E>,
) -> Result<B, ReadFail<E>>
where
    B: AsMut<[u8]>,
{
    let mut head_buf = [0u8; HEADER_LEN + MAX_KEY_LEN];
    // The index only holds keys up to MAX_KEY_LEN, so this always fits.
    let head = head_buf
        .get_mut(..HEADER_LEN + key.len())
        .ok_or(Damage::KeyMismatch)?;
    file.read_exact_at(head, 0).map_err(Damage::Read)?;
    let (header, stored_key) = format::decode_head(head)?;
    if stored_key != key.as_bytes() {
        return Err(Damage::KeyMismatch.into());
    }
    let stat = file.stat().map_err(Damage::Read)?;
    let expected = header.file_len();
    if expected != Some(stat.len) {
        return Err(Damage::Length {
            expected,
            actual: stat.len,
        }
        .into());
    }
    let mut buf = alloc(header.data_len).map_err(ReadFail::Alloc)?;
    let dst = buf.as_mut();
    if dst.len() as u64 != header.data_len {
        return Err(ReadFail::BufferLength {
            expected: header.data_len,
            actual: dst.len(),
        });
    }
    let mut hasher = Xxh3Default::new();
    let mut offset = header.data_offset();
    for chunk in dst.chunks_mut(READ_CHUNK) {
        file.read_exact_at(chunk, offset).map_err(Damage::Read)?;
        hasher.update(chunk);
        offset += chunk.len() as u64;
    }
    if hasher.digest() != header.data_hash {
        return Err(Damage::DataChecksum.into());
    }
    Ok(buf)
}
