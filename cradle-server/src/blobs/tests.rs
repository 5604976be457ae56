//! The store's tables in one process: handle checks, leases, quotas, the
//! cache's LRU eviction. Cross-process behaviour is in `tests/e2e_blobs*.rs`.

use super::store::{BlobConfig, BlobStore, default_held_limit};
use super::{BlobCtx, SessionQuota};
use ipc_core::shm::{Access, Segment};
use ipc_rpc::ErrorCode;
use ipc_rpc::blob::{AUTHOR_KIND, BlobHandle, DATA_OFFSET, Lookup};
use std::sync::Arc;

/// The handle of a memory hit, `None` otherwise (no disk tier here).
fn hit(st: &BlobStore, session: u64, key: &str) -> Option<BlobHandle> {
    match st.cache_get(session, key).unwrap() {
        Lookup::Hit(h) => Some(h.handle),
        Lookup::Miss => None,
        Lookup::OnDisk => panic!("no disk tier in these tests"),
    }
}

const EPOCH: u64 = 0xE90C;

fn store(budget: u64, quota: SessionQuota) -> Arc<BlobStore> {
    Arc::new(BlobStore::new(
        EPOCH,
        BlobConfig {
            pool_segment_len: 1 << 20,
            author_pool_len: 64 << 10,
            cache_budget: budget,
            held_limit: default_held_limit(budget),
            quota,
        },
    ))
}

/// Writes `bytes` at `DATA_OFFSET` of the session's author pool (as its
/// client would) and seals them.
fn small(st: &BlobStore, session: u64, bytes: &[u8]) -> BlobHandle {
    let (info, fd) = st.author_pool(session).unwrap();
    assert_eq!(info.kind, AUTHOR_KIND);
    let seg = Segment::from_fd(fd).unwrap();
    let map = seg.map(Access::ReadWrite).unwrap();
    // SAFETY: a test-private mapping of the pool; the store reads it only
    // during `seal_small` below, on this thread.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            map.as_mut_ptr().unwrap().add(DATA_OFFSET as usize),
            bytes.len(),
        );
    }
    st.seal_small(session, DATA_OFFSET, bytes.len() as u64)
        .unwrap()
}

#[test]
fn a_sealed_small_blob_is_a_copy_and_reads_back() {
    let st = store(1 << 20, SessionQuota::default());
    st.open_session(1);
    let h = small(&st, 1, b"hello blob");
    assert_eq!(h.epoch, EPOCH);
    assert_eq!(h.len, 10);
    let ctx = BlobCtx {
        store: &st,
        session: 1,
    };
    assert_eq!(ctx.read(&h).unwrap().bytes(), b"hello blob");
    let s = st.stats();
    assert_eq!(
        (s.blobs, s.leases, s.pool_segments, s.author_pools),
        (1, 1, 1, 1)
    );
    // Releasing the only lease frees it.
    assert_eq!(st.release(1, &[h.id], &[]), 1);
    assert_eq!(st.stats().blobs, 0);
    assert_eq!(st.stats().pool_used, 0);
    // A lease the session does not hold is not released twice.
    assert_eq!(st.release(1, &[h.id], &[]), 0);
}

#[test]
fn every_kind_of_bad_handle_is_refused() {
    let st = store(1 << 20, SessionQuota::default());
    st.open_session(1);
    let h = small(&st, 1, &[7; 100]);
    let msg = |h: BlobHandle| st.acquire(1, &h, false).unwrap_err();
    let e = msg(BlobHandle { epoch: 1, ..h });
    assert_eq!(e.code, ErrorCode::BadHandle);
    assert!(e.message.contains("another server instance"), "{e}");
    assert!(msg(BlobHandle { id: 999, ..h }).message.contains("unknown"));
    assert!(msg(BlobHandle { len: 101, ..h }).message.contains("forged"));
    assert!(
        msg(BlobHandle { offset: 0, ..h })
            .message
            .contains("forged")
    );
    st.release(1, &[h.id], &[]);
    assert!(msg(h).message.contains("stale"));
}

#[test]
fn quotas_are_per_session() {
    let quota = SessionQuota {
        leases: 3,
        pinned_bytes: 1 << 20,
        pool_bytes: 1 << 20,
    };
    let st = store(1 << 20, quota);
    st.open_session(1);
    st.open_session(2);
    let h = small(&st, 1, &[1; 10]);
    st.acquire(1, &h, false).unwrap();
    st.acquire(1, &h, false).unwrap();
    let e = st.acquire(1, &h, false).unwrap_err();
    assert_eq!(e.code, ErrorCode::QuotaExceeded);
    // Another session is not affected.
    st.acquire(2, &h, false).unwrap();
    // Bytes being written: a large blob over the quota.
    let e = st.create_large(2, 2 << 20).unwrap_err();
    assert_eq!(e.code, ErrorCode::QuotaExceeded);
    st.close_session(1);
    st.close_session(2);
    assert_eq!(st.stats().blobs, 0);
}

#[test]
fn cache_evicts_least_recently_used_unheld_entries() {
    let st = store(300, SessionQuota::default());
    st.open_session(1);
    let a = small(&st, 1, &[1; 100]);
    let b = small(&st, 1, &[2; 100]);
    let c = small(&st, 1, &[3; 100]);
    assert!(st.cache_put("a", &a, false).unwrap());
    assert!(st.cache_put("b", &b, false).unwrap());
    assert!(st.cache_put("c", &c, false).unwrap());
    assert!(!st.cache_put("a", &c, true).unwrap(), "put_if_absent");
    // The author still holds all three: nothing can go.
    let d = small(&st, 1, &[4; 100]);
    assert_eq!(
        st.cache_put("d", &d, false).unwrap_err().code,
        ErrorCode::CacheFull
    );
    st.release(1, &[a.id, b.id, c.id], &[]);
    // Touch "a": now "b" is the least recently used.
    let got = hit(&st, 1, "a").unwrap();
    st.release(1, &[got.id], &[]);
    st.cache_put("d", &d, false).unwrap();
    assert!(hit(&st, 1, "b").is_none(), "b evicted");
    let s = st.stats();
    assert_eq!((s.evictions, s.cache_entries, s.cache_bytes), (1, 3, 300));
    assert_eq!(s.blobs, 3, "b's blob is freed with its last reference");
    // Held by a lease ("c" got): survives; "a" goes instead.
    let held = hit(&st, 1, "c").unwrap();
    let e = small(&st, 1, &[5; 100]);
    st.cache_put("e", &e, false).unwrap();
    assert!(hit(&st, 1, "a").is_none());
    assert!(hit(&st, 1, "c").is_some());
    // Replacing a key: its old blob lives on for its reader.
    st.cache_put("c", &e, false).unwrap();
    let ctx = BlobCtx {
        store: &st,
        session: 1,
    };
    assert_eq!(ctx.read(&held).unwrap().bytes(), &[3; 100]);
    assert!(st.cache_remove("c").unwrap());
    assert!(!st.cache_remove("c").unwrap());
    st.close_session(1);
    let s = st.stats();
    assert_eq!(s.leases, 0);
    assert_eq!(s.blobs, 2, "d and e stay cached");
}

#[test]
fn large_blob_seal_needs_every_writable_mapping_gone() {
    let st = store(1 << 30, SessionQuota::default());
    st.open_session(1);
    let (id, info, fd) = st.create_large(1, 10_000).unwrap();
    assert_eq!(info.len, DATA_OFFSET + 10_000);
    let seg = Segment::from_fd(fd).unwrap();
    let map = seg.map(Access::ReadWrite).unwrap();
    let e = st.seal_large(1, id).unwrap_err();
    assert!(e.message.contains("still mapped writable"), "{e}");
    drop(map);
    let h = st.seal_large(1, id).unwrap();
    assert_eq!((h.offset, h.len), (DATA_OFFSET, 10_000));
    // The author's read-write descriptor is now useless for writing.
    assert!(seg.map(Access::ReadWrite).is_err());
    assert_eq!(st.session_figures(1).2, 0, "no bytes being written");
    // Another session cannot seal or abort someone else's blob.
    st.open_session(2);
    let (id2, _, _fd2) = st.create_large(1, 100).unwrap();
    assert!(st.seal_large(2, id2).is_err());
    st.release(2, &[], &[id2]);
    assert_eq!(st.stats().writing, 1);
    st.release(1, &[], &[id2]);
    assert_eq!(st.stats().writing, 0);
}

/// Information only (no assertion on time): the server-side cost of a 4 KiB
/// small seal plus its release, in this process.
/// `cargo test --release -p cradle-server --lib seal_cost -- --ignored --nocapture`
#[test]
#[ignore = "timing, information only"]
fn seal_cost() {
    let st = store(1 << 30, SessionQuota::default());
    st.open_session(1);
    let h = small(&st, 1, &[1; 4096]);
    st.release(1, &[h.id], &[]);
    let n: u32 = std::env::var("SEAL_COST_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let t = std::time::Instant::now();
    for _ in 0..n {
        let h = st.seal_small(1, DATA_OFFSET, 4096).unwrap();
        st.release(1, &[h.id], &[]);
    }
    eprintln!("seal_small + release, 4 KiB: {:?} per op", t.elapsed() / n);
}

/// Information only: where a 64 MiB load from the disk tier spends its time.
/// `cargo test --release -p cradle-server --lib load_cost -- --ignored --nocapture`
#[test]
#[ignore = "timing, information only"]
fn load_cost() {
    use crate::disk::DiskTier;
    use std::time::Instant;
    let dir = std::env::temp_dir().join(format!("cradle-load-cost-{}", std::process::id()));
    let tier = DiskTier::open(&dir, 1 << 30).unwrap();
    let data = vec![5u8; 64 << 20];
    tier.put("k", &data, false).unwrap();
    drop(data);
    let st = store(1 << 30, SessionQuota::default());
    st.open_session(1);
    let ctx = BlobCtx {
        store: &st,
        session: 1,
    };
    let file = std::fs::read_dir(dir.join("entries"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for _ in 0..3 {
        let t = Instant::now();
        let v = std::fs::read(&file).unwrap();
        let read = t.elapsed();
        drop(v);
        let t = Instant::now();
        let v = tier.get_vec("k").unwrap().unwrap();
        let into_vec = t.elapsed();
        drop(v);
        let t = Instant::now();
        let b = ctx.create(64 << 20).unwrap();
        let create = t.elapsed();
        let t = Instant::now();
        let b = tier.get("k", |_| Ok::<_, String>(b)).unwrap().unwrap();
        let pread = t.elapsed();
        let t = Instant::now();
        let h = b.seal().unwrap();
        let seal = t.elapsed();
        let t = Instant::now();
        st.release(1, &[h.id], &[]);
        let free = t.elapsed();
        eprintln!(
            "read {read:?} | tier.get into Vec {into_vec:?} | into a blob: create {create:?} + pread/check {pread:?} + seal {seal:?}; free {free:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A store whose disk tier lives in `fs` (an in-memory filesystem that can
/// fill up), with its writer running.
fn disk_store(budget: u64, fs: &crate::disk::FaultyFs, disk_budget: u64) -> Arc<BlobStore> {
    let tier = crate::disk::DiskTier::open_with(
        std::path::Path::new("/cache"),
        disk_budget,
        Arc::new(fs.clone()),
    )
    .unwrap();
    let st = Arc::new(
        BlobStore::new(
            EPOCH,
            BlobConfig {
                pool_segment_len: 1 << 20,
                author_pool_len: 64 << 10,
                cache_budget: budget,
                held_limit: default_held_limit(budget),
                quota: SessionQuota::default(),
            },
        )
        .with_disk(tier),
    );
    st.start_disk().unwrap();
    st
}

/// Waits until the disk writer has nothing queued.
fn drain(st: &BlobStore) {
    let d = st.disk.as_ref().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while d.queued() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the disk writer is stuck"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The bytes under `key` as a client would get them (memory, else a load
/// from disk), `None` on a miss; leases are given back.
fn value(st: &Arc<BlobStore>, session: u64, key: &str) -> Option<Vec<u8>> {
    let h = match st.cache_get(session, key).unwrap() {
        Lookup::Hit(h) => h.handle,
        Lookup::Miss => return None,
        Lookup::OnDisk => st.cache_load(session, key).unwrap()?.handle,
    };
    let ctx = BlobCtx { store: st, session };
    let v = ctx.read(&h).unwrap().bytes().to_vec();
    st.release(session, &[h.id], &[]);
    Some(v)
}

/// Puts `n` unheld 100-byte fillers, pushing older entries out of memory.
fn fill(st: &Arc<BlobStore>, session: u64, n: usize) {
    for i in 0..n {
        let f = small(st, session, &[0xf0; 100]);
        st.cache_put(&format!("filler{i}"), &f, false).unwrap();
        st.release(session, &[f.id], &[]);
    }
}

#[test]
fn a_failed_write_behind_never_lets_a_key_go_back_to_an_older_value() {
    let fs = crate::disk::FaultyFs::new();
    let st = disk_store(300, &fs, 1 << 20);
    st.open_session(1);
    let v1 = small(&st, 1, &[1; 100]);
    assert!(st.cache_put_durable("k", &v1, false).unwrap());
    assert_eq!(st.disk.as_ref().unwrap().tier().len_of("k"), Some(100));
    // The disk fills up: the write-behind of v2 fails (ENOSPC), after v2
    // was acknowledged.
    fs.set_full(true);
    let v2 = small(&st, 1, &[2; 120]);
    assert!(st.cache_put("k", &v2, false).unwrap());
    // Already at the acknowledgement, v1 is no longer on disk.
    assert_eq!(st.disk.as_ref().unwrap().tier().len_of("k"), None);
    drain(&st);
    st.release(1, &[v1.id, v2.id], &[]);
    assert_eq!(value(&st, 1, "k"), Some(vec![2; 120]), "v2 from memory");
    // Memory evicts v2: a miss, never v1.
    fill(&st, 1, 3);
    drain(&st);
    assert!(st.lock().cache.peek("k").is_none(), "k left memory");
    assert_eq!(value(&st, 1, "k"), None);
    // A clean restart with the disk usable again: still never v1.
    st.close_session(1);
    st.stop_disk();
    drop(st);
    fs.set_full(false);
    let st = disk_store(300, &fs, 1 << 20);
    st.open_session(1);
    assert_eq!(value(&st, 1, "k"), None);
    st.stop_disk();
}

#[test]
fn a_put_the_writer_has_not_reached_is_never_overtaken_by_an_older_one() {
    let fs = crate::disk::FaultyFs::new();
    let st = disk_store(1 << 20, &fs, 1 << 20);
    st.open_session(1);
    // Many puts of one key back to back: whatever the writer has done when
    // each is acknowledged, the disk never holds an older value than the
    // last acknowledged one once it is done, and after a restart.
    for round in 0..50u8 {
        let v = small(&st, 1, &vec![round; 64 + usize::from(round)]);
        st.cache_put("k", &v, false).unwrap();
        st.release(1, &[v.id], &[]);
        let on_disk = st.disk.as_ref().unwrap().tier().len_of("k");
        assert!(
            on_disk.is_none() || on_disk == Some(64 + u64::from(round)),
            "round {round}: disk holds {on_disk:?}"
        );
    }
    drain(&st);
    st.close_session(1);
    st.stop_disk();
    drop(st);
    let st = disk_store(300, &fs, 1 << 20);
    st.open_session(1);
    assert_eq!(value(&st, 1, "k"), Some(vec![49; 64 + 49]));
    st.stop_disk();
}

#[test]
fn a_get_counts_one_hit_or_one_miss_per_tier() {
    let fs = crate::disk::FaultyFs::new();
    let st = disk_store(300, &fs, 1 << 20);
    st.open_session(1);
    let a = small(&st, 1, &[7; 100]);
    st.cache_put("a", &a, false).unwrap();
    st.release(1, &[a.id], &[]);
    drain(&st);
    fill(&st, 1, 3);
    drain(&st);
    let figures = |st: &BlobStore| {
        let s = st.stats();
        (s.hits, s.misses, s.disk_hits, s.disk_misses)
    };
    let before = figures(&st);
    // Served from disk: one memory miss, one disk hit.
    assert_eq!(value(&st, 1, "a"), Some(vec![7; 100]));
    let after = figures(&st);
    assert_eq!(
        (
            after.0 - before.0,
            after.1 - before.1,
            after.2 - before.2,
            after.3 - before.3
        ),
        (0, 1, 1, 0)
    );
    // In neither tier: one miss in each.
    assert_eq!(value(&st, 1, "absent"), None);
    let again = figures(&st);
    assert_eq!(
        (
            again.0 - after.0,
            again.1 - after.1,
            again.2 - after.2,
            again.3 - after.3
        ),
        (0, 1, 0, 1)
    );
    // Loaded back into memory: one memory hit, nothing on disk.
    assert_eq!(value(&st, 1, "a"), Some(vec![7; 100]));
    let last = figures(&st);
    assert_eq!(
        (
            last.0 - again.0,
            last.1 - again.1,
            last.2 - again.2,
            last.3 - again.3
        ),
        (1, 0, 0, 0)
    );
    st.stop_disk();
}

#[test]
fn a_blob_over_the_memory_budget_goes_to_disk_or_names_both_budgets() {
    let fs = crate::disk::FaultyFs::new();
    let st = disk_store(1000, &fs, 1 << 20);
    st.open_session(1);
    let big = small(&st, 1, &[3; 5000]);
    assert!(st.cache_put("big", &big, false).unwrap());
    assert_eq!(st.stats().cache_entries, 0, "not in the memory cache");
    st.release(1, &[big.id], &[]);
    drain(&st);
    assert_eq!(st.stats().blobs, 0, "memory let it go once written");
    assert_eq!(value(&st, 1, "big"), Some(vec![3; 5000]));
    let s = st.stats();
    assert_eq!((s.cache_entries, s.blobs), (0, 0), "served, not kept");
    st.stop_disk();

    // A disk tier too small for it.
    let fs = crate::disk::FaultyFs::new();
    let st = disk_store(1000, &fs, 4096);
    st.open_session(1);
    let big = small(&st, 1, &[3; 5000]);
    let e = st.cache_put("big", &big, false).unwrap_err();
    assert_eq!(e.code, ErrorCode::CacheFull);
    for needle in ["--mem-cache-bytes", "--disk-cache-bytes", "1000 B", "4 KiB"] {
        assert!(e.message.contains(needle), "{needle}: {e}");
    }
    st.stop_disk();

    // No disk tier at all.
    let st = store(1000, SessionQuota::default());
    st.open_session(1);
    let big = small(&st, 1, &[3; 5000]);
    let e = st.cache_put("big", &big, false).unwrap_err();
    assert_eq!(e.code, ErrorCode::CacheFull);
    assert!(e.message.contains("no disk tier configured"), "{e}");
    assert!(e.message.contains("--mem-cache-bytes"), "{e}");
}

#[test]
fn a_server_wide_limit_caps_what_all_sessions_hold_or_write() {
    let st = Arc::new(BlobStore::new(
        EPOCH,
        BlobConfig {
            pool_segment_len: 1 << 20,
            author_pool_len: 64 << 10,
            cache_budget: 1 << 20,
            held_limit: 1 << 20,
            quota: SessionQuota::default(),
        },
    ));
    // A cached blob nobody holds (its author pool counts: 64 KiB).
    st.open_session(9);
    let c = small(&st, 9, &[5; 100]);
    st.cache_put("c", &c, false).unwrap();
    st.release(9, &[c.id], &[]);
    // Sessions writing (and then holding) 300 KiB each: the fourth is over.
    let mut ids = Vec::new();
    for s in 1..=3 {
        st.open_session(s);
        ids.push(st.create_large(s, 300 << 10).unwrap().0);
    }
    st.open_session(4);
    let e = st.create_large(4, 300 << 10).unwrap_err();
    assert_eq!(e.code, ErrorCode::QuotaExceeded);
    assert!(e.message.contains("server-wide limit of 1 MiB"), "{e}");
    // A handler cannot allocate past it either.
    let ctx = BlobCtx {
        store: &st,
        session: 4,
    };
    let e = ctx.create(300 << 10).unwrap_err();
    assert!(e.to_string().contains("server-wide limit"), "{e}");
    // Reading what is cached costs nothing: others still work.
    assert!(hit(&st, 4, "c").is_some());
    let (held, writing, limit, refused) = st.held_figures();
    assert!(held + writing <= limit, "{held} + {writing} > {limit}");
    assert_eq!(refused, 2);
    // One writer gives up: room again.
    st.release(1, &[], &[ids[0]]);
    st.create_large(4, 300 << 10).unwrap();
    for s in [1, 2, 3, 4, 9] {
        st.close_session(s);
    }
    assert_eq!(st.held_figures().0 + st.held_figures().1, 0);
}

#[test]
fn list_names_every_key_with_its_size_and_tiers() {
    let fs = crate::disk::FaultyFs::new();
    let st = disk_store(300, &fs, 1 << 20);
    st.open_session(1);
    for (k, n) in [("img/a", 100), ("img/b", 50), ("txt/c", 10)] {
        let b = small(&st, 1, &vec![1; n]);
        st.cache_put(k, &b, false).unwrap();
        st.release(1, &[b.id], &[]);
    }
    drain(&st);
    fill(&st, 1, 2);
    drain(&st);
    let (l, more) = st.list("img/", "", |_| true);
    assert!(!more);
    let got: Vec<_> = l
        .iter()
        .map(|e| (e.key.as_str(), e.len, e.in_memory, e.on_disk))
        .collect();
    assert_eq!(
        got,
        [("img/a", 100, false, true), ("img/b", 50, true, true)],
        "a was evicted from memory"
    );
    // Pages: two keys at a time, each page after the last key of the one
    // before, every key once.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let mut room = 2;
        let (page, more) = st.list("", &after, |_| {
            room -= 1;
            room >= 0
        });
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|e| e.key.clone()));
        if !more {
            break;
        }
        after = page.last().expect("a page before more").key.clone();
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "in order, each once");
    assert_eq!(seen.len(), 5);
    st.stop_disk();
}
