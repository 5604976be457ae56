//! Tests of the disk tier: round trips and reopen on the real filesystem,
//! damage detection, LRU eviction, and the power-cut model (`FaultyFs`).

use super::faulty::{FaultyFs, Rng};
use super::format::{self, HEADER_LEN};
use super::{
    DiskError, DiskStats, DiskTier, Fs, GetError, PutOutcome, entry_file_len, entry_file_name,
};
use ipc_core::sync::{AtomicU32, Ordering};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// A unique directory under `std::env::temp_dir()`, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        // Relaxed: only uniqueness of the number matters.
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("cradle-disk-test-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// The tier's directory inside (created by `open`).
    fn cache(&self) -> PathBuf {
        self.0.join("cache")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `len` pseudo-random bytes from `seed`.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The path of `key`'s entry file in the tier directory `dir`.
fn entry_path(dir: &Path, key: &str) -> PathBuf {
    dir.join("entries").join(entry_file_name(key))
}

/// Names in a directory.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Sum of the file lengths in `entries/`.
fn bytes_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("entries"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Flips one byte of a file.
fn flip_byte(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).unwrap();
}

/// Offset of the data in `key`'s entry file.
fn data_offset(key: &str) -> u64 {
    format::data_offset(key.len())
}

/// Asserts at compile time that the tier can be shared between threads.
#[test]
fn tier_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<DiskTier>();
    check::<FaultyFs>();
}

/// Real fs: put/get/replace/remove of 0 B … 5 MiB entries, stats, and
/// identical bytes after a reopen.
#[test]
fn round_trip_replace_remove_and_reopen() {
    let t = TempDir::new("roundtrip");
    let dir = t.cache();
    let sizes = [
        0usize,
        1,
        1024,
        4097,
        64 * 1024,
        1 << 20,
        (3 << 20) + 17,
        5 << 20,
    ];
    let budget = 64 << 20;
    let tier = DiskTier::open(&dir, budget).unwrap();
    assert_eq!(tier.dir(), dir.as_path());
    assert_eq!(
        tier.stats(),
        DiskStats {
            budget,
            ..DiskStats::default()
        }
    );
    let mut expect = HashMap::new();
    for (i, &len) in sizes.iter().enumerate() {
        let key = format!("entry/{len}/ünïcode");
        let data = payload(i as u64, len);
        let out = tier.put(&key, &data, i % 2 == 0).unwrap();
        assert_eq!(out, PutOutcome::default());
        assert_eq!(tier.len_of(&key), Some(len as u64));
        assert_eq!(tier.get_vec(&key).unwrap().as_deref(), Some(&data[..]));
        expect.insert(key, data);
    }
    let total: u64 = expect
        .iter()
        .map(|(k, d)| entry_file_len(k, d.len() as u64))
        .sum();
    let s = tier.stats();
    assert_eq!((s.entries, s.bytes, s.hits, s.misses), (8, total, 8, 0));
    assert_eq!(s.bytes, bytes_on_disk(&dir));

    // Replace with another length: the new bytes, the budget accounting
    // follows, one file per key.
    let key = "entry/1024/ünïcode".to_owned();
    let data = payload(99, 300_000);
    tier.put(&key, &data, true).unwrap();
    assert_eq!(tier.len_of(&key), Some(300_000));
    assert_eq!(tier.get_vec(&key).unwrap().as_deref(), Some(&data[..]));
    expect.insert(key, data);
    assert_eq!(tier.stats().bytes, bytes_on_disk(&dir));
    assert_eq!(names_in(&dir.join("entries")).len(), 8);

    // Remove.
    let gone = "entry/4097/ünïcode";
    assert!(tier.remove(gone).unwrap());
    assert!(!tier.remove(gone).unwrap());
    assert_eq!(tier.get_vec(gone).unwrap(), None);
    assert_eq!(tier.len_of(gone), None);
    assert!(!entry_path(&dir, gone).exists());
    expect.remove(gone);
    assert_eq!(tier.get_vec("never put").unwrap(), None);
    let s = tier.stats();
    assert_eq!((s.entries, s.misses, s.corruptions), (7, 2, 0));
    assert!(names_in(&dir.join("tmp")).is_empty());

    // Reopen: identical bytes.
    drop(tier);
    let tier = DiskTier::open(&dir, budget).unwrap();
    let s = tier.stats();
    assert_eq!((s.entries, s.corruptions, s.evictions), (7, 0, 0));
    assert_eq!(s.bytes, bytes_on_disk(&dir));
    for (k, d) in &expect {
        assert_eq!(tier.get_vec(k).unwrap().as_deref(), Some(&d[..]), "{k}");
    }
    assert_eq!(tier.get_vec(gone).unwrap(), None);
}

/// `get` asks for the length first and fills the caller's buffer; allocator
/// errors and wrong-length buffers come back without harming the entry.
#[test]
fn get_reads_into_the_callers_buffer() {
    let t = TempDir::new("alloc");
    let tier = DiskTier::open(&t.cache(), 1 << 20).unwrap();
    let data = payload(7, 10_000);
    tier.put("k", &data, false).unwrap();

    // The allocator learns the length first and gets exactly it.
    let mut asked = None;
    let mut dst = vec![0u8; 10_000];
    let got = tier
        .get("k", |len| {
            asked = Some(len);
            Ok::<_, Infallible>(&mut dst[..])
        })
        .unwrap();
    assert!(got.is_some());
    assert_eq!(asked, Some(10_000));
    assert_eq!(dst, data);

    // A failing allocator: the error comes back, the entry stays.
    match tier.get("k", |_| Err::<Vec<u8>, _>("no room")) {
        Err(GetError::Alloc("no room")) => {}
        other => panic!("{other:?}"),
    }
    // A buffer of the wrong length is refused, the entry stays.
    match tier.get("k", |len| Ok::<_, Infallible>(vec![0u8; len as usize + 1])) {
        Err(GetError::BufferLength {
            expected: 10_000,
            actual: 10_001,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(tier.len_of("k"), Some(10_000));
    assert_eq!(tier.stats().corruptions, 0);
    assert_eq!(tier.get_vec("k").unwrap().as_deref(), Some(&data[..]));
}

/// Real fs: a flipped data byte, a truncated file, an extended file, a
/// flipped key byte and a deleted file are misses, counted, and their files
/// deleted; other entries are unaffected.
#[test]
fn damaged_entries_are_never_served() {
    let t = TempDir::new("damage");
    let dir = t.cache();
    let tier = DiskTier::open(&dir, 1 << 20).unwrap();
    let keys = ["flip", "short", "long", "keyflip", "fine"];
    let datas: Vec<Vec<u8>> = (0..keys.len()).map(|i| payload(i as u64, 8192)).collect();
    for (k, d) in keys.iter().zip(&datas) {
        tier.put(k, d, true).unwrap();
    }
    // Behind the tier's back.
    flip_byte(&entry_path(&dir, "flip"), data_offset("flip") + 4000);
    let short = OpenOptions::new()
        .write(true)
        .open(entry_path(&dir, "short"))
        .unwrap();
    short.set_len(data_offset("short") + 8000).unwrap();
    OpenOptions::new()
        .append(true)
        .open(entry_path(&dir, "long"))
        .unwrap()
        .write_all(b"!")
        .unwrap();
    flip_byte(&entry_path(&dir, "keyflip"), HEADER_LEN as u64 + 1);

    for (n, k) in keys[..4].iter().enumerate() {
        assert_eq!(tier.get_vec(k).unwrap(), None, "{k} was served");
        let s = tier.stats();
        assert_eq!(s.corruptions, n as u64 + 1);
        assert_eq!(s.entries, 4 - n as u64);
        assert!(!entry_path(&dir, k).exists(), "{k}'s file is still there");
        assert_eq!(tier.len_of(k), None);
    }
    assert_eq!(
        tier.get_vec("fine").unwrap().as_deref(),
        Some(&datas[4][..])
    );
    let s = tier.stats();
    assert_eq!((s.hits, s.misses, s.entries), (1, 4, 1));
    assert_eq!(s.bytes, bytes_on_disk(&dir));

    // Deleted behind the tier's back: a miss, counted.
    std::fs::remove_file(entry_path(&dir, "fine")).unwrap();
    assert_eq!(tier.get_vec("fine").unwrap(), None);
    assert_eq!(tier.stats().corruptions, 5);
    assert_eq!(tier.stats().entries, 0);
    // The key can be stored again.
    tier.put("flip", &datas[0], false).unwrap();
    assert_eq!(
        tier.get_vec("flip").unwrap().as_deref(),
        Some(&datas[0][..])
    );
}

/// Real fs: the scan at open deletes files with a bad length, header or
/// name and empties `tmp/`; a data flip passes the header scan and is caught
/// by `get`.
#[test]
fn open_checks_headers_and_deletes_damaged_files() {
    let t = TempDir::new("scan");
    let dir = t.cache();
    let keys = ["tiny", "short", "header", "renamed", "dataflip", "fine"];
    let datas: Vec<Vec<u8>> = (0..keys.len())
        .map(|i| payload(100 + i as u64, 5000))
        .collect();
    let tier = DiskTier::open(&dir, 1 << 20).unwrap();
    for (k, d) in keys.iter().zip(&datas) {
        tier.put(k, d, false).unwrap();
    }
    drop(tier);

    let set_len = |key: &str, len: u64| {
        OpenOptions::new()
            .write(true)
            .open(entry_path(&dir, key))
            .unwrap()
            .set_len(len)
            .unwrap();
    };
    set_len("tiny", 20);
    let full = entry_file_len("short", 5000);
    set_len("short", full - 1);
    flip_byte(&entry_path(&dir, "header"), 17); // data_len
    // A valid file under another key's name.
    std::fs::rename(entry_path(&dir, "renamed"), entry_path(&dir, "elsewhere")).unwrap();
    flip_byte(&entry_path(&dir, "dataflip"), data_offset("dataflip") + 10);
    std::fs::write(dir.join("entries").join("not-an-entry"), b"hello").unwrap();
    std::fs::write(dir.join("tmp").join("0000000000000001.new"), b"half").unwrap();

    let tier = DiskTier::open(&dir, 1 << 20).unwrap();
    let s = tier.stats();
    // tiny, short, header, elsewhere, not-an-entry; dataflip's header is
    // fine (open reads headers only).
    assert_eq!(s.corruptions, 5);
    assert_eq!(s.entries, 2);
    assert_eq!(s.bytes, bytes_on_disk(&dir));
    let mut left = vec![entry_file_name("dataflip"), entry_file_name("fine")];
    left.sort();
    assert_eq!(names_in(&dir.join("entries")), left);
    assert!(names_in(&dir.join("tmp")).is_empty());
    for k in ["tiny", "short", "header", "renamed", "elsewhere"] {
        assert_eq!(tier.get_vec(k).unwrap(), None);
    }
    assert_eq!(
        tier.get_vec("fine").unwrap().as_deref(),
        Some(&datas[5][..])
    );
    assert_eq!(tier.get_vec("dataflip").unwrap(), None);
    assert_eq!(tier.stats().corruptions, 6);
    assert_eq!(tier.stats().entries, 1);
}

/// Puts `key` and checks the budget held.
fn put_checked(tier: &DiskTier, key: &str, data: &[u8]) -> PutOutcome {
    let out = tier.put(key, data, false).unwrap();
    let s = tier.stats();
    assert!(s.bytes <= s.budget, "{s:?}");
    out
}

/// The keys among `keys` the index holds (`len_of` does not touch).
fn present(tier: &DiskTier, keys: &[&str]) -> Vec<String> {
    keys.iter()
        .filter(|k| tier.len_of(k).is_some())
        .map(|k| k.to_string())
        .collect()
}

/// Real fs: evictions take exactly the least recently used entries (gets
/// count as uses), the budget holds after every put, the order survives a
/// reopen (mtimes), and a shrunk budget evicts the oldest at open.
#[test]
fn eviction_follows_lru_order_across_reopen() {
    let t = TempDir::new("lru");
    let dir = t.cache();
    let all = ["k0", "k1", "k2", "k3", "k4", "k5", "k6"];
    let flen = entry_file_len("k0", 1000);
    let data = |i: u64| payload(i, 1000);
    let tier = DiskTier::open(&dir, 4 * flen).unwrap();
    for i in 0..4 {
        assert_eq!(
            put_checked(&tier, all[i as usize], &data(i)),
            PutOutcome::default()
        );
    }
    assert!(tier.get_vec("k0").unwrap().is_some()); // order k1 k2 k3 k0
    let out = put_checked(&tier, "k4", &data(4)); // evicts k1
    assert_eq!(
        out,
        PutOutcome {
            evicted: 1,
            evicted_bytes: flen
        }
    );
    assert!(tier.get_vec("k2").unwrap().is_some()); // order k3 k0 k4 k2
    put_checked(&tier, "k5", &data(5)); // evicts k3
    assert_eq!(present(&tier, &all), ["k0", "k2", "k4", "k5"]);
    assert!(!entry_path(&dir, "k1").exists() && !entry_path(&dir, "k3").exists());
    assert!(names_in(&dir.join("tmp")).is_empty());
    assert_eq!(tier.stats().evictions, 2);

    // The order (k0 k4 k2 k5) survives a restart through the mtimes.
    drop(tier);
    let tier = DiskTier::open(&dir, 4 * flen).unwrap();
    assert_eq!(tier.stats().evictions, 0);
    put_checked(&tier, "k6", &data(6)); // evicts k0
    assert_eq!(present(&tier, &all), ["k2", "k4", "k5", "k6"]);

    // Replacing an entry by a larger one evicts others, never itself.
    let big = payload(60, 2000);
    let out = put_checked(&tier, "k6", &big); // order k4 k2 k5 k6
    assert_eq!(out.evicted, 1);
    assert_eq!(present(&tier, &all), ["k2", "k5", "k6"]);
    assert_eq!(tier.get_vec("k6").unwrap().as_deref(), Some(&big[..]));

    // A shrunk budget evicts the oldest at open: order k2 k5 k6.
    drop(tier);
    let tier = DiskTier::open(&dir, entry_file_len("k6", big.len() as u64)).unwrap();
    let s = tier.stats();
    assert_eq!((s.evictions, s.entries), (2, 1));
    assert_eq!(present(&tier, &all), ["k6"]);
    assert_eq!(s.bytes, bytes_on_disk(&dir));
}

/// An entry larger than the budget and an over-long key are refused;
/// nothing else changes.
#[test]
fn too_large_and_bad_keys_are_refused() {
    let t = TempDir::new("large");
    let budget = 10_000;
    let tier = DiskTier::open(&t.cache(), budget).unwrap();
    tier.put("small", &payload(1, 100), false).unwrap();
    let fits = budget - format::data_offset(3);
    tier.put("fit", &payload(2, fits as usize), true).unwrap();
    assert_eq!(tier.len_of("small"), None); // evicted for "fit"
    match tier.put("big", &payload(3, fits as usize + 1), false) {
        Err(DiskError::TooLarge { len, budget: b }) => {
            assert_eq!((len, b), (budget + 1, budget));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(tier.len_of("fit"), Some(fits));
    let long = "x".repeat(format::MAX_KEY_LEN + 1);
    assert!(matches!(
        tier.put(&long, b"", false),
        Err(DiskError::KeyTooLong { .. })
    ));
    assert_eq!(tier.get_vec(&long).unwrap(), None);
    let e = DiskTier::open(&t.path().join("zero"), 0)
        .unwrap()
        .put("k", b"", false)
        .unwrap_err();
    assert!(e.to_string().contains("exceeds the whole budget"), "{e}");
}

/// A directory that cannot be created fails `open` with its path in the
/// message.
#[test]
fn unusable_directory_fails_open_naming_the_path() {
    let t = TempDir::new("unusable");
    let file = t.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    // Tests run as root, so permissions would not stop them: a parent that
    // is a regular file does.
    let under = file.join("cache");
    let e = DiskTier::open(&under, 1 << 20).unwrap_err();
    assert!(matches!(e, DiskError::CreateDir { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&under.display().to_string()), "{msg}");
    assert!(msg.contains("Not a directory"), "{msg}");
    // The directory itself is a regular file.
    let e = DiskTier::open(&file, 1 << 20).unwrap_err();
    assert!(e.to_string().contains(&file.display().to_string()), "{e}");
}

/// A second tier on the same directory is refused until the first closes.
#[test]
fn one_tier_per_directory() {
    let t = TempDir::new("lock");
    let tier = DiskTier::open(&t.cache(), 1 << 20).unwrap();
    let e = DiskTier::open(&t.cache(), 1 << 20).unwrap_err();
    assert!(matches!(e, DiskError::Locked { .. }), "{e:?}");
    assert!(e.to_string().contains(&t.cache().display().to_string()));
    drop(tier);
    DiskTier::open(&t.cache(), 1 << 20).unwrap();
}

/// The value a writer stores as `version` of `key`: it names both, so any
/// value read can be checked to be one that was put for that key.
fn tagged(key: &str, version: u64) -> Vec<u8> {
    let key_hash = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
    let mut v = version.to_le_bytes().to_vec();
    v.extend_from_slice(&key_hash.to_le_bytes());
    v.extend(payload(version ^ key_hash, (version % 3000) as usize));
    v
}

/// Whether `got` is `tagged(key, v)` for some `v`.
fn is_tagged(key: &str, got: &[u8]) -> bool {
    let Some(v) = got.get(..8) else {
        return false;
    };
    let version = u64::from_le_bytes(v.try_into().unwrap());
    got == tagged(key, version)
}

/// Real fs, four threads: every value read was put for that key, no
/// corruption, and the index, the budget and the files on disk agree.
#[test]
fn concurrent_puts_gets_removes_stay_consistent() {
    let t = TempDir::new("threads");
    let dir = t.cache();
    let budget = 40_000;
    let tier = Arc::new(DiskTier::open(&dir, budget).unwrap());
    let keys: Vec<String> = (0..8).map(|i| format!("key-{i}")).collect();
    let threads: Vec<_> = (0..4u64)
        .map(|th| {
            let tier = Arc::clone(&tier);
            let keys = keys.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(th);
                for i in 0..300u64 {
                    let key = &keys[rng.below_usize(keys.len())];
                    match rng.below(10) {
                        0..=3 => {
                            let v = tagged(key, (th << 32) | i);
                            tier.put(key, &v, rng.chance(10)).unwrap();
                        }
                        4 => {
                            tier.remove(key).unwrap();
                        }
                        _ => {
                            if let Some(got) = tier.get_vec(key).unwrap() {
                                assert!(is_tagged(key, &got), "{key}: a value never put");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let s = tier.stats();
    assert_eq!(s.corruptions, 0);
    assert!(s.bytes <= budget);
    assert_eq!(s.bytes, bytes_on_disk(&dir));
    assert!(names_in(&dir.join("tmp")).is_empty());
    let found = keys
        .iter()
        .filter(|k| tier.get_vec(k).unwrap().is_some())
        .count();
    assert_eq!(found as u64, s.entries);
    assert_eq!(names_in(&dir.join("entries")).len() as u64, s.entries);
}

/// The model itself: synced data and names survive every cut, unsynced
/// ones survive as a prefix (namespace) or old/new/torn/zero content, and
/// the power stays off until `restart`.
#[test]
fn faulty_fs_model_basics() {
    let d = Path::new("/d");
    for seed in 0..64 {
        let fs = FaultyFs::new();
        fs.create_dir_all(d).unwrap();
        // Durable: data synced, name synced.
        let f = fs.create(&d.join("a")).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(d).unwrap();
        // Volatile: b then c created, nothing synced.
        for name in ["b", "c"] {
            let f = fs.create(&d.join(name)).unwrap();
            f.write_all_at(&[7u8; 1500], 0).unwrap();
        }
        fs.power_cut(seed);
        assert!(fs.create(&d.join("x")).is_err(), "the power is off");
        assert!(f.stat().is_err(), "files opened before the cut are stale");
        fs.restart();
        let read = |name: &str| {
            let f = fs.open(&d.join(name)).ok()?;
            let len = f.stat().unwrap().len as usize;
            let mut v = vec![0u8; len];
            f.read_exact_at(&mut v, 0).unwrap();
            Some(v)
        };
        assert_eq!(read("a").as_deref(), Some(&b"hello"[..]));
        let (b, c) = (read("b"), read("c"));
        // The journal keeps a prefix: c never without b.
        assert!(b.is_some() || c.is_none(), "seed {seed}");
        for v in [b, c].into_iter().flatten() {
            assert!(v.len() <= 1500 && v.iter().all(|&x| x == 7 || x == 0));
        }
    }
    let r = FaultyFs::new();
    r.create_dir_all(d).unwrap();
    r.arm(1, 3);
    r.create(&d.join("a")).unwrap();
    assert!(r.create(&d.join("b")).is_err());
    assert!(r.is_dead());
    assert_eq!(r.report().cuts, 1);
}

/// One operation of the power-cut workload.
#[derive(Clone, Debug)]
enum Op {
    /// A put of these bytes.
    Put { data: Vec<u8>, durable: bool },
    /// A remove.
    Remove,
}

/// An operation and whether it returned `Ok` before the cut.
#[derive(Clone, Debug)]
struct Rec {
    op: Op,
    acked: bool,
}

/// Totals over the seeds, to prove the cases exercised the model.
#[derive(Debug, Default)]
struct Tally {
    durable_checked: u64,
    removes_checked: u64,
    volatile_survived: u64,
    volatile_lost: u64,
    corruptions: u64,
    cut_in_recovery: u64,
    evictions: u64,
}

/// Length and hash of a value, for short assertion messages.
fn brief(v: Option<&[u8]>) -> Option<(usize, u64)> {
    v.map(|v| (v.len(), xxhash_rust::xxh3::xxh3_64(v)))
}

/// One power-cut case: a random workload on `FaultyFs`, a cut at a random
/// file operation (possibly a second one during recovery), reopen, and the
/// checks of the module's guarantees.
fn power_cut_case(seed: u64, budget: u64, tally: &mut Tally) {
    const KEYS: [&str; 5] = ["alpha", "beta", "gamma", "delta", "epsilon"];
    let mut rng = Rng::new(seed);
    let faulty = FaultyFs::new();
    let fs: Arc<dyn Fs> = Arc::new(faulty.clone());
    let dir = Path::new("/cache");
    let mut history: HashMap<&str, Vec<Rec>> = HashMap::new();
    let mut model: HashMap<&str, Vec<u8>> = HashMap::new();
    let mut evicted: HashSet<&str> = HashSet::new();

    let tier = DiskTier::open_with(dir, budget, Arc::clone(&fs)).unwrap();
    let mut evictions = 0;
    faulty.arm(rng.below(300), rng.next_u64());
    for step in 0..40 {
        let key = KEYS[rng.below_usize(KEYS.len())];
        let ok = match rng.below(10) {
            0..=5 => {
                let len = if rng.chance(10) {
                    0
                } else {
                    rng.below_usize(3000)
                };
                let data = payload(seed * 1000 + step, len);
                let durable = rng.chance(50);
                let ok = tier.put(key, &data, durable).is_ok();
                if ok {
                    model.insert(key, data.clone());
                }
                history.entry(key).or_default().push(Rec {
                    op: Op::Put { data, durable },
                    acked: ok,
                });
                ok
            }
            6..=7 => {
                let ok = tier.remove(key).is_ok();
                if ok {
                    model.remove(key);
                }
                history.entry(key).or_default().push(Rec {
                    op: Op::Remove,
                    acked: ok,
                });
                ok
            }
            _ => {
                let got = tier.get_vec(key);
                if faulty.is_dead() {
                    false
                } else {
                    // Before the cut everything is intact.
                    assert_eq!(
                        brief(got.unwrap().as_deref()),
                        brief(model.get(key).map(Vec::as_slice)),
                        "seed {seed}: {key}"
                    );
                    true
                }
            }
        };
        // Track evictions (also those of an interrupted put; a get
        // interrupted by the cut also drops its key from the index: not an
        // eviction, but marking it evicted only weakens the checks).
        for k in KEYS {
            if model.contains_key(k) && tier.len_of(k).is_none() {
                model.remove(k);
                evicted.insert(k);
            }
        }
        evictions = tier.stats().evictions;
        if !ok {
            assert!(
                faulty.is_dead(),
                "seed {seed}: an operation failed with the power on"
            );
            break;
        }
        let s = tier.stats();
        assert!(s.bytes <= budget, "seed {seed}: {s:?}");
    }
    faulty.power_cut(rng.next_u64());
    drop(tier);
    faulty.restart();

    // Sometimes the power fails again during recovery. Evictions by that
    // open may have reached the disk: they count as evictions at open.
    let mut recovery_evictions = 0;
    if rng.chance(30) {
        faulty.arm(rng.below(40), rng.next_u64());
        let reopened = DiskTier::open_with(dir, budget, Arc::clone(&fs));
        if faulty.is_dead() {
            tally.cut_in_recovery += 1;
        }
        // An open that failed did so before its evictions.
        if let Ok(t) = &reopened {
            recovery_evictions = t.stats().evictions;
        }
        faulty.power_cut(rng.next_u64());
        drop(reopened);
        faulty.restart();
    }
    let tier = DiskTier::open_with(dir, budget, Arc::clone(&fs)).unwrap();
    let at_open = tier.stats();
    assert!(at_open.bytes <= budget, "seed {seed}: {at_open:?}");
    let mut found = 0u64;
    for key in KEYS {
        let got = tier.get_vec(key).unwrap();
        let recs = history.get(key).map(Vec::as_slice).unwrap_or(&[]);
        if let Some(g) = &got {
            found += 1;
            let put_before = recs
                .iter()
                .any(|r| matches!(&r.op, Op::Put { data, .. } if data == g));
            assert!(put_before, "seed {seed}: {key} has bytes never put");
        }
        match recs.last() {
            Some(Rec {
                op:
                    Op::Put {
                        data,
                        durable: true,
                    },
                acked: true,
            }) if !evicted.contains(key) && at_open.evictions + recovery_evictions == 0 => {
                assert_eq!(
                    brief(got.as_deref()),
                    brief(Some(data)),
                    "seed {seed}: durable put of {key} lost"
                );
                tally.durable_checked += 1;
            }
            Some(Rec {
                op: Op::Remove,
                acked: true,
            }) => {
                assert_eq!(
                    brief(got.as_deref()),
                    None,
                    "seed {seed}: removed {key} came back"
                );
                tally.removes_checked += 1;
            }
            Some(Rec {
                op: Op::Put { durable: false, .. },
                acked: true,
            }) => {
                if got.is_some() {
                    tally.volatile_survived += 1;
                } else {
                    tally.volatile_lost += 1;
                }
            }
            _ => {}
        }
    }
    let s = tier.stats();
    assert_eq!(s.entries, found, "seed {seed}: {s:?}");
    tally.corruptions += s.corruptions;
    tally.evictions += at_open.evictions + recovery_evictions + evictions;
    // The tier works after recovery.
    tier.put("after", b"works", true).unwrap();
    assert_eq!(
        tier.get_vec("after").unwrap().as_deref(),
        Some(&b"works"[..])
    );
}

/// 600 seeds, ample budget: acknowledged durable puts and removes survive
/// a cut (and a second cut during recovery); everything else is absent or
/// exactly one put's bytes.
#[test]
fn power_cut_keeps_durable_puts_and_never_serves_a_mix() {
    let seeds = if cfg!(miri) { 20 } else { 600 };
    let mut tally = Tally::default();
    for seed in 0..seeds {
        power_cut_case(seed, 1 << 20, &mut tally);
    }
    // The cases covered every outcome the guarantees speak of.
    assert!(tally.durable_checked > seeds / 4, "{tally:?}");
    assert!(tally.removes_checked > 20, "{tally:?}");
    assert!(tally.volatile_survived > 20, "{tally:?}");
    assert!(tally.volatile_lost > 20, "{tally:?}");
    assert!(tally.corruptions > 20, "{tally:?}");
    assert!(tally.cut_in_recovery > 10, "{tally:?}");
    assert_eq!(tally.evictions, 0, "the budget is ample");
}

/// 300 seeds, a budget of about three entries: the same checks with
/// evictions (durable checks only for entries never evicted).
#[test]
fn power_cut_with_evictions_stays_within_budget() {
    let seeds = if cfg!(miri) { 20 } else { 300 };
    let mut tally = Tally::default();
    for seed in 0..seeds {
        // About three entries fit: puts evict often.
        power_cut_case(
            10_000 + seed,
            3 * entry_file_len("epsilon", 1500),
            &mut tally,
        );
    }
    assert!(tally.durable_checked > 10, "{tally:?}");
    assert!(tally.corruptions > 10, "{tally:?}");
    assert!(tally.evictions > seeds, "{tally:?}");
}

/// Reads a 64 MiB entry from the page cache through the tier and with a
/// plain `read`, and prints the times. Information only; run with
/// `cargo test --release -p cradle-server --lib disk::tests::timing -- --ignored --nocapture`.
#[test]
#[ignore = "timing, information only"]
fn timing_64_mib_read_vs_plain_read() {
    const LEN: usize = 64 << 20;
    const ROUNDS: u32 = 20;
    let t = TempDir::new("timing");
    let tier = DiskTier::open(&t.cache(), 1 << 30).unwrap();
    let data = payload(1, LEN);
    tier.put("big", &data, false).unwrap();
    let path = entry_path(&t.cache(), "big");
    let mut dst = vec![0u8; LEN];
    let mut file_buf = vec![0u8; LEN + 4096];

    let time = |what: &str, f: &mut dyn FnMut()| {
        f(); // warm up (page cache, page faults of the buffers)
        let start = Instant::now();
        for _ in 0..ROUNDS {
            f();
        }
        let per = start.elapsed() / ROUNDS;
        let gbps = LEN as f64 / per.as_secs_f64() / 1e9;
        println!("{what:<34} {per:>10.2?} per 64 MiB  ({gbps:.2} GB/s)");
        per
    };
    let plain_t = time("plain read_exact of the file", &mut || {
        let mut f = std::fs::File::open(&path).unwrap();
        f.read_exact(&mut file_buf[..LEN]).unwrap();
    });
    let oneshot_t = time("one pread + one-shot xxh3", &mut || {
        let f = std::fs::File::open(&path).unwrap();
        f.read_exact_at(&mut dst, data_offset("big")).unwrap();
        std::hint::black_box(xxhash_rust::xxh3::xxh3_64(&dst));
    });
    let tier_t = time("DiskTier::get (1 MiB chunks)", &mut || {
        let got = tier
            .get("big", |_| Ok::<_, Infallible>(&mut dst[..]))
            .unwrap();
        assert!(got.is_some());
    });
    let hash_t = time("xxh3 alone (in memory)", &mut || {
        std::hint::black_box(xxhash_rust::xxh3::xxh3_64(&data));
    });
    assert_eq!(dst, data);
    println!(
        "tier/plain = {:.2}, one-shot/plain = {:.2}, hash/plain = {:.2}",
        tier_t.as_secs_f64() / plain_t.as_secs_f64(),
        oneshot_t.as_secs_f64() / plain_t.as_secs_f64(),
        hash_t.as_secs_f64() / plain_t.as_secs_f64()
    );
}
