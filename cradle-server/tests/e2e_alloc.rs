//! Heap allocations on the client's call path after warm-up: 0, counted by a
//! counting global allocator in this test binary (the only test here, so no
//! other test thread allocates meanwhile).

mod support;

use cradle_client::{CallOptions, Client, WaitMode};
use ipc_core::sync::{AtomicU64, Ordering};
use ipc_rpc::builtin::Ping;
use std::alloc::{GlobalAlloc, Layout, System};
use std::time::Duration;
use support::*;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // Relaxed: a statistic read after the measured loop by the same thread.
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // Relaxed: as in `alloc`.
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn calls_allocate_nothing_after_warm_up() {
    let (_dog, dir, _server) = with_server("alloc count", Duration::from_secs(120), &[]);
    let client = Client::connect(dir.socket()).unwrap();
    let req = vec![5u8; 64];
    for wait in [WaitMode::Spin, WaitMode::Sleep, WaitMode::default()] {
        let opts = CallOptions {
            timeout: Duration::from_secs(30),
            wait,
        };
        for _ in 0..1000 {
            client
                .call_with::<Ping, _>(&req, opts, |r| r.len())
                .unwrap();
        }
        let before = ALLOCS.load(Ordering::Relaxed);
        let mut total = 0;
        for _ in 0..10_000 {
            total += client
                .call_with::<Ping, _>(&req, opts, |r| r.len())
                .unwrap();
        }
        let allocs = ALLOCS.load(Ordering::Relaxed) - before;
        assert_eq!(total, 640_000);
        eprintln!("{wait:?}: {allocs} heap allocations over 10,000 calls");
        assert_eq!(allocs, 0, "{wait:?}: the call path allocated");
    }
}
