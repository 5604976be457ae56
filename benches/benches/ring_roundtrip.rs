//! One ring round trip between two threads: the caller publishes an 8-byte (or
//! 64-byte) frame on ring A, an echo thread spinning on A copies the payload
//! out, publishes it on ring B, and the caller spins on B until the answer
//! arrives and checks it. Both sides spin: this is the ring's own cost with no
//! wake-ups, i.e. what a spinning CRADLE call pays for its transport.
//!
//! `floor_cache_line` is measured in the same run: two threads bouncing one
//! atomic each way, the physical limit of any shared-memory round trip here.
//!
//! `cargo bench -p cradle-benches --bench ring_roundtrip`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipc_core::ring::{Consumer, FrameMeta, Producer, RingRegion, heap_channel};
use ipc_core::sync::{AtomicBool, Ordering};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Publishes `bytes` with id `id`, spinning while the ring is full.
fn send(tx: &mut Producer<RingRegion>, id: u64, bytes: &[u8]) {
    loop {
        match tx.reserve(bytes.len()) {
            Ok(mut w) => {
                w.write_at(0, bytes).expect("window fits");
                w.commit(
                    bytes.len(),
                    FrameMeta {
                        request_id: id,
                        ..Default::default()
                    },
                )
                .expect("commit");
                return;
            }
            Err(ipc_core::ring::RingError::Full) => std::hint::spin_loop(),
            Err(e) => panic!("send: {e}"),
        }
    }
}

/// Spins until a frame arrives, copies its payload into `buf`, returns its id.
fn recv(rx: &mut Consumer<RingRegion>, buf: &mut Vec<u8>, stop: &AtomicBool) -> Option<u64> {
    loop {
        if let Some(f) = rx.peek().expect("honest peer") {
            f.payload().copy_into_vec(buf);
            let id = f.meta().request_id;
            f.consume();
            rx.release();
            return Some(id);
        }
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        std::hint::spin_loop();
    }
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_round_trip_two_threads");
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for size in [8usize, 64] {
        let (mut a_tx, mut a_rx) = heap_channel(1 << 16).expect("ring");
        let (mut b_tx, mut b_rx) = heap_channel(1 << 16).expect("ring");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let echo = std::thread::spawn(move || {
            let mut buf = Vec::with_capacity(1024);
            while let Some(id) = recv(&mut a_rx, &mut buf, &stop2) {
                send(&mut b_tx, id, &buf);
            }
        });
        let payload = vec![0xA5u8; size];
        let mut buf = Vec::with_capacity(1024);
        let mut id = 0u64;
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{size}B"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    id += 1;
                    send(&mut a_tx, id, black_box(&payload));
                    let got = recv(&mut b_rx, &mut buf, &AtomicBool::new(false));
                    assert_eq!(got, Some(id));
                    assert_eq!(buf.len(), size);
                }
                start.elapsed()
            })
        });
        stop.store(true, Ordering::Relaxed);
        echo.join().expect("echo thread");
    }
    group.finish();
}

/// The floor: two threads bouncing one cache line (an `AtomicU64` each way,
/// spinning), the least any shared-memory round trip can cost on this machine.
fn floor(c: &mut Criterion) {
    use ipc_core::sync::AtomicU64;
    #[repr(align(128))]
    struct Line(AtomicU64);
    let ping = Arc::new((Line(AtomicU64::new(0)), Line(AtomicU64::new(0))));
    let pong = ping.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let echo = std::thread::spawn(move || {
        let mut last = 0;
        while !stop2.load(Ordering::Relaxed) {
            // Acquire pairs with the Release store of the caller below.
            let v = pong.0.0.load(Ordering::Acquire);
            if v != last {
                last = v;
                // Release pairs with the caller's Acquire load.
                pong.1.0.store(v, Ordering::Release);
            } else {
                std::hint::spin_loop();
            }
        }
    });
    let mut group = c.benchmark_group("ring_round_trip_two_threads");
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    let mut n = 0u64;
    group.bench_function("floor_cache_line", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                n += 1;
                // Release/Acquire pair with the echo thread's load/store above.
                ping.0.0.store(n, Ordering::Release);
                while ping.1.0.load(Ordering::Acquire) != n {
                    std::hint::spin_loop();
                }
            }
            start.elapsed()
        })
    });
    group.finish();
    stop.store(true, Ordering::Relaxed);
    echo.join().expect("echo thread");
}

criterion_group!(benches, floor, round_trip);
criterion_main!(benches);
