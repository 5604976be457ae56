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
