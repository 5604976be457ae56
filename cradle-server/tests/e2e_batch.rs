//! Batches of calls (`Client::batch`) end to end, against the real server:
//! every call answered and checked, errors and deadlines per call, a
//! server killed mid-batch, a batch larger than the ring, and no heap
//! allocation per call once the batch is warm. Every test arms a watchdog.

mod support;

use cradle_client::{CallError, CallOptions, Client, ClientOptions, WaitMode};
use ipc_rpc::blob::BlobHandle;
use ipc_rpc::builtin::Ping;
use ipc_rpc::example::{Work, WorkRequest};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;
use support::*;

thread_local! {
    /// Allocations made by this thread.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting each thread's allocations (tests run on
/// threads of their own: each counts only its own).
struct PerThread;

fn count() {
    // `try_with`: a thread being torn down has no count any more.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; counting touches a thread-local `Cell`, never the memory the
// allocator hands out (and allocates nothing: the `Cell` is const-initialized).
unsafe impl GlobalAlloc for PerThread {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: our caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (i.e. `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: our caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: PerThread = PerThread;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// `calls` pings through `batch`-style pipelining, `window` in flight, each
/// answer checked against its call's tag (`tag0 + seq`); the requests are
/// rewritten in place (`reqs`), so the loop itself allocates nothing.
fn pipelined(client: &Client, calls: u64, window: usize, tag0: u64, reqs: &mut [Vec<u8>]) {
    let mut batch = client.batch::<Ping>();
    let mut sent = 0u64;
    let mut checked = 0u64;
    while sent < calls || batch.in_flight() > 0 {
        let room = (window - batch.in_flight()).min((calls - sent) as usize);
        if room > 0 {
            for (k, r) in reqs[..room].iter_mut().enumerate() {
                r.copy_from_slice(&(tag0 + sent + k as u64).to_le_bytes());
            }
            sent += batch.send(&reqs[..room]).expect("send") as u64;
        }
        batch.recv_with(|seq, r| {
            let echo = r.unwrap_or_else(|e| panic!("call {seq}: {e}"));
            assert_eq!(echo.as_slice(), (tag0 + seq).to_le_bytes(), "call {seq}");
            checked += 1;
        });
    }
    assert_eq!(checked, calls);
}

#[test]
fn every_call_of_a_batch_is_answered_and_checked() {
    let (_dog, dir, _server) = with_server("batch answered", Duration::from_secs(300), &[]);
    for wait in [WaitMode::Spin, WaitMode::default(), WaitMode::Sleep] {
        let client = Client::connect_with(
            dir.socket(),
            ClientOptions {
                timeout: Duration::from_secs(30),
                wait,
            },
        )
        .unwrap();
        // Pipelined, 256 in flight, topped up as answers come.
        let mut reqs = vec![vec![0u8; 8]; 256];
        pipelined(&client, 50_000, 256, 1 << 40, &mut reqs);
        // All at once: varied lengths, then every answer.
        let reqs: Vec<Vec<u8>> = (0..1000u32)
            .map(|i| i.to_le_bytes().repeat(i as usize % 50))
            .collect();
        let mut batch = client.batch::<Ping>();
        assert_eq!(batch.send(&reqs).unwrap(), reqs.len());
        assert_eq!(batch.in_flight(), reqs.len());
        let mut seen = vec![false; reqs.len()];
        let n = batch.wait_all_with(|seq, r| {
            let echo = r.unwrap_or_else(|e| panic!("call {seq}: {e}"));
            assert_eq!(echo.as_slice(), reqs[seq as usize].as_slice());
            assert!(!seen[seq as usize], "call {seq} answered twice");
            seen[seq as usize] = true;
        });
        assert_eq!(n, reqs.len());
        assert!(seen.iter().all(|&s| s));
        assert_eq!((batch.sent(), batch.in_flight()), (1000, 0));
        // Single calls still work on the same client.
        assert_eq!(client.call::<Ping>(&vec![9; 3]).unwrap(), [9; 3]);
    }
}

#[test]
fn errors_in_a_batch_stay_with_their_calls() {
    let (_dog, dir, _server) = with_server("batch errors", Duration::from_secs(120), &[]);
    let client = Client::connect(dir.socket()).unwrap();
    // Every third request names a blob that does not exist: those calls
    // fail on the server, the others succeed.
    let bogus = BlobHandle {
        epoch: 1,
        id: 999_999,
        segment: 77,
        offset: 4096,
        len: 16,
    };
    let reqs: Vec<WorkRequest> = (0..30u64)
        .map(|i| WorkRequest {
            seed: 1000 + i,
            sleep_ms: 0,
            input: (i % 3 == 1).then_some(bogus),
            out_len: 0,
        })
        .collect();
    let mut batch = client.batch::<Work>();
    assert_eq!(batch.send(&reqs).unwrap(), 30);
    let (mut ok, mut failed) = (0, 0);
    batch.wait_all_with(|seq, r| match r {
        Ok(done) => {
            assert_ne!(seq % 3, 1, "call {seq} should have failed");
            assert!(done.output.is_none());
            ok += 1;
        }
        Err(e) => {
            assert_eq!(seq % 3, 1, "call {seq} failed: {e}");
            assert!(matches!(e, CallError::Remote { .. }), "call {seq}: {e:?}");
            failed += 1;
        }
    });
    assert_eq!((ok, failed), (20, 10));

    // A request too large for a frame stops the send there: the calls
    // before it are in flight, it and those after it were not sent.
    let huge = vec![0u8; client.max_message() + 1];
    let (a, b) = (vec![1u8], vec![2u8]);
    let mut pings = client.batch::<Ping>();
    let e = pings.send([&a, &b, &huge, &a]).unwrap_err();
    assert!(matches!(e, CallError::MessageTooLarge { .. }), "{e:?}");
    assert_eq!((pings.sent(), pings.in_flight()), (2, 2));
    let mut got = Vec::new();
    pings.wait_all_with(|seq, r| got.push((seq, r.unwrap().to_vec())));
    got.sort();
    assert_eq!(got, [(0, vec![1]), (1, vec![2])]);
}

#[test]
fn a_deadline_inside_a_batch_times_out_only_the_late_calls() {
    let (_dog, dir, _server) = with_server("batch deadline", Duration::from_secs(120), &[]);
    let client = Client::connect(dir.socket()).unwrap();
    let opts = CallOptions {
        timeout: Duration::from_millis(400),
        wait: WaitMode::default(),
    };
    let req = |seed, sleep_ms| WorkRequest {
        seed,
        sleep_ms,
        input: None,
        out_len: 0,
    };
    // Call 1 sleeps far beyond the timeout; the others answer at once.
    let reqs = [req(1, 0), req(2, 3000), req(3, 0), req(4, 0)];
    let mut batch = client.batch_opts::<Work>(opts);
    assert_eq!(batch.send(&reqs).unwrap(), 4);
    let mut results = Vec::new();
    batch.wait_all_with(|seq, r| results.push((seq, r.map(|_| ()).map_err(|e| e.to_string()))));
    results.sort_by_key(|r| r.0);
    assert_eq!(results.len(), 4);
    for (seq, r) in &results {
        if *seq == 1 {
            assert!(
                r.as_ref().is_err_and(|e| e.contains("no response within")),
                "call 1: {r:?}"
            );
        } else {
            assert!(r.is_ok(), "call {seq}: {r:?}");
        }
    }
    // The late answer comes while other calls run: it is dropped, and
    // they get their own answers.
    let mut reqs = vec![vec![0u8; 8]; 64];
    let end = std::time::Instant::now() + Duration::from_millis(3500);
    let mut tag = 0;
    while std::time::Instant::now() < end {
        pipelined(&client, 640, 64, tag, &mut reqs);
        tag += 640;
        std::thread::sleep(Duration::from_millis(50));
    }
    pipelined(&client, 640, 64, tag, &mut reqs);
}

#[test]
fn a_server_killed_mid_batch_resolves_every_call_with_an_error() {
    for wait in [WaitMode::Spin, WaitMode::Sleep] {
        let (_dog, dir, mut server) =
            with_server("batch server killed", Duration::from_secs(120), &[]);
        let client = Client::connect_with(
            dir.socket(),
            ClientOptions {
                timeout: Duration::from_secs(60),
                wait,
            },
        )
        .unwrap();
        // Slow calls: most are still running or queued at the kill.
        let reqs: Vec<WorkRequest> = (0..64u64)
            .map(|i| WorkRequest {
                seed: 5000 + i,
                sleep_ms: 100,
                input: None,
                out_len: 0,
            })
            .collect();
        let mut batch = client.batch::<Work>();
        assert_eq!(batch.send(&reqs).unwrap(), 64);
        std::thread::sleep(Duration::from_millis(150));
        server.kill9();
        let (mut ok, mut dead) = (0, 0);
        let n = batch.wait_all_with(|seq, r| match r {
            Ok(_) => ok += 1,
            Err(CallError::PeerDead) => dead += 1,
            Err(e) => panic!("call {seq}: {e:?}"),
        });
        assert_eq!(n, 64);
        assert_eq!(ok + dead, 64);
        assert!(dead > 0, "{wait:?}: every call answered before the kill");
        assert_eq!(batch.in_flight(), 0);
        // A dead server refuses new batches at once.
        let e = batch.send(&reqs).unwrap_err();
        assert!(matches!(e, CallError::PeerDead), "{e:?}");
    }
}

#[test]
fn a_batch_larger_than_the_ring_goes_through_in_parts() {
    // 4 KiB rings: about 80 of these requests fit at once.
    let (_dog, dir, _server) = with_server(
        "batch larger than the ring",
        Duration::from_secs(120),
        &["--ring-bytes", "4096"],
    );
    for wait in [WaitMode::Spin, WaitMode::Sleep] {
        let client = Client::connect_with(
            dir.socket(),
            ClientOptions {
                timeout: Duration::from_secs(30),
                wait,
            },
        )
        .unwrap();
        let reqs: Vec<Vec<u8>> = (0..20_000u64).map(|i| i.to_le_bytes().to_vec()).collect();
        let mut batch = client.batch::<Ping>();
        // One send for all: it publishes and waits for room as it goes,
        // setting answers aside meanwhile.
        assert_eq!(batch.send(&reqs).unwrap(), reqs.len());
        let mut next = 0u64;
        let n = batch.wait_all_with(|seq, r| {
            let echo = r.unwrap_or_else(|e| panic!("call {seq}: {e}"));
            assert_eq!(echo.as_slice(), seq.to_le_bytes());
            assert_eq!(seq, next, "answers in order");
            next += 1;
        });
        assert_eq!(n, reqs.len());
    }
}

#[test]
fn a_warm_batch_allocates_nothing_per_call() {
    let (_dog, dir, _server) = with_server("batch allocations", Duration::from_secs(300), &[]);
    for wait in [WaitMode::Spin, WaitMode::default()] {
        let client = Client::connect_with(
            dir.socket(),
            ClientOptions {
                timeout: Duration::from_secs(30),
                wait,
            },
        )
        .unwrap();
        let mut reqs = vec![vec![0u8; 8]; 256];
        // Warm-up: the batch's queue, the inbox buffer, the arena grow.
        pipelined(&client, 20_000, 256, 0, &mut reqs);
        let mut batch = client.batch::<Ping>();
        // A batch kept across rounds: its queue has grown once.
        for _ in 0..4 {
            batch.send(&reqs).unwrap();
            batch.wait_all_with(|_, r| assert!(r.is_ok()));
        }
        let before = allocations();
        let calls = 100_000u64;
        let mut sent = 0u64;
        let mut checked = 0u64;
        let tag0 = batch.sent();
        while sent < calls || batch.in_flight() > 0 {
            let room = (256 - batch.in_flight()).min((calls - sent) as usize);
            if room > 0 {
                for (k, r) in reqs[..room].iter_mut().enumerate() {
                    r.copy_from_slice(&(tag0 + sent + k as u64).to_le_bytes());
                }
                sent += batch.send(&reqs[..room]).unwrap() as u64;
            }
            batch.recv_with(|seq, r| {
                assert_eq!(r.unwrap().as_slice(), seq.to_le_bytes());
                checked += 1;
            });
        }
        let made = allocations() - before;
        assert_eq!(checked, calls);
        assert_eq!(
            made, 0,
            "{wait:?}: {made} allocations in {calls} batched calls"
        );
    }
}
