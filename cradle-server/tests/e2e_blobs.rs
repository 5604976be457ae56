//! Blobs by handle and the memory cache, end to end: real server process,
//! real clients. Each test arms a watchdog.

mod support;

use cradle_client::{BlobError, BlobHandle, CallError, Client, ErrorCode};
use ipc_rpc::builtin::Stats;
use ipc_rpc::example::Invert;
use std::time::Duration;
use support::*;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut r = SplitMix(seed);
    (0..len).map(|_| r.next_u64() as u8).collect()
}

fn put_bytes(c: &Client, bytes: &[u8]) -> cradle_client::Blob {
    let mut w = c.create(bytes.len()).expect("create");
    w.write_at(0, bytes);
    w.seal().expect("seal")
}

fn stats(c: &Client) -> ipc_rpc::builtin::ServerStats {
    c.call::<Stats>(&()).expect("stats")
}

#[test]
fn blobs_of_every_size_pass_through_the_cache_to_another_client() {
    let (_dog, dir, _server) = with_server("blob sizes", Duration::from_secs(120), &[]);
    let a = Client::connect(dir.socket()).unwrap();
    let b = Client::connect(dir.socket()).unwrap();
    let sizes = [0, 1, 63, 4096, 256 << 10, (256 << 10) + 1, 3 << 20];
    for (i, &len) in sizes.iter().enumerate() {
        let bytes = pattern(len, i as u64);
        let blob = put_bytes(&a, &bytes);
        assert_eq!(blob.len(), len);
        let key = format!("k{i}");
        a.cache().put(&key, &blob).unwrap();
        let got = b.cache().get(&key).unwrap().expect("hit");
        assert_eq!(&got[..], &bytes[..], "size {len}");
        // By handle, without the cache.
        let again = b.get(blob.handle()).unwrap();
        assert_eq!(&again[..], &bytes[..]);
    }
    assert!(b.cache().get("absent").unwrap().is_none());
    let s = stats(&b).blobs;
    assert_eq!(s.cache_entries, sizes.len() as u64);
    assert_eq!(s.hits, sizes.len() as u64);
    assert_eq!(s.misses, 1);
    assert_eq!(s.large_blobs, 2, "the two blobs above 256 KiB");
}

#[test]
fn forged_stale_and_foreign_handles_are_refused() {
    let (_dog, dir, _server) = with_server("blob handles", Duration::from_secs(60), &[]);
    let a = Client::connect(dir.socket()).unwrap();
    let blob = put_bytes(&a, b"precious");
    let h = *blob.handle();
    let bad = |h: BlobHandle| match a.get(&h) {
        Err(BlobError::Call(CallError::Remote {
            code: ErrorCode::BadHandle,
            message,
        })) => message,
        other => panic!("{h}: expected BadHandle, got {other:?}"),
    };
    assert!(
        bad(BlobHandle {
            epoch: h.epoch ^ 1,
            ..h
        })
        .contains("another server instance")
    );
    assert!(
        bad(BlobHandle {
            id: h.id + 1000,
            ..h
        })
        .contains("unknown")
    );
    assert!(
        bad(BlobHandle {
            len: h.len + 1,
            ..h
        })
        .contains("forged")
    );
    assert!(
        bad(BlobHandle {
            offset: h.offset + 64,
            ..h
        })
        .contains("forged")
    );
    assert!(
        bad(BlobHandle {
            segment: h.segment + 1,
            ..h
        })
        .contains("forged")
    );
    drop(blob);
    a.flush().unwrap();
    assert!(bad(h).contains("stale"));
    // The session is still fine.
    let ok = put_bytes(&a, b"next");
    assert_eq!(&a.get(ok.handle()).unwrap()[..], b"next");
}

#[test]
fn the_example_handler_returns_an_inverted_blob() {
    let (_dog, dir, _server) = with_server("blob invert", Duration::from_secs(60), &[]);
    let a = Client::connect(dir.socket()).unwrap();
    for len in [1000, 1 << 20] {
        let bytes = pattern(len, 9);
        let blob = put_bytes(&a, &bytes);
        let r = a.call::<Invert>(blob.handle()).unwrap();
        assert_eq!(r.checksum, xxhash_rust::xxh3::xxh3_64(&bytes));
        let inv = a.adopt(&r.inverted).unwrap();
        assert!(inv.iter().zip(&bytes).all(|(x, y)| *x == !*y));
    }
    a.flush().unwrap();
    let s = stats(&a).blobs;
    assert_eq!((s.blobs, s.leases), (0, 0), "{s:?}");
}

#[test]
fn a_handler_given_a_forged_handle_answers_bad_handle() {
    let (_dog, dir, _server) = with_server("handler bad handle", Duration::from_secs(60), &[]);
    let c = Client::connect(dir.socket()).unwrap();
    let mut w = c.create(1000).unwrap();
    w.write_at(0, &[3; 1000]);
    let blob = w.seal().unwrap();
    let mut forged = *blob.handle();
    forged.len += 1;
    let e = c.call::<Invert>(&forged).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadHandle), "{e}");
    // The real handle still works.
    let r = c.call::<Invert>(blob.handle()).unwrap();
    assert_eq!(c.adopt(&r.inverted).unwrap()[0], !3);
}
