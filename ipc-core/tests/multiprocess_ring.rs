//! Two real processes on one ring: this test process produces (or watches) and
//! the `ring-peer` helper binary consumes (or scribbles), over a memfd it
//! inherits. Each test arms a watchdog that kills the helper and aborts
//! instead of hanging.

mod support;

use ipc_core::doorbell::{Futex, WaitMode, wake_syscalls};
use ipc_core::ring::{
    Consumer, FrameMeta, HEADER_LEN, Producer, RingError, RingRegion, max_payload_len, region_len,
};
use ipc_core::shm::{Access, Mapping, Seals, Segment, init_header};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{SplitMix, Watchdog, payload};

const MAGIC: u64 = u64::from_le_bytes(*b"RINGTEST");
const RING_OFFSET: usize = 128;

/// A sealed segment with a header and one zeroed ring region, mapped here.
fn ring_segment(cap: usize) -> (Segment, Arc<Mapping>) {
    let seg = Segment::create("ring-test", RING_OFFSET + region_len(cap)).expect("memfd");
    let map = seg.map(Access::ReadWrite).expect("map");
    init_header(&map, MAGIC, 1, 0).expect("header");
    seg.add_seals(Seals::SHRINK | Seals::GROW | Seals::SEAL)
        .expect("seals");
    (seg, Arc::new(map))
}

/// Spawns `ring-peer MODE <fd> ARGS...` with the segment's descriptor
/// inherited (CLOEXEC cleared in the child only).
fn spawn_peer(seg: &Segment, mode: &str, cap: usize, n: u64, seed: u64) -> Child {
    let fd = seg.fd().as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ring-peer"));
    cmd.args([
        mode,
        &fd.to_string(),
        &cap.to_string(),
        &n.to_string(),
        &seed.to_string(),
    ])
    .stdout(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only makes
    // one fcntl system call (async-signal-safe, no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            // SAFETY: `fd` is open in the child (inherited from the parent's table)
            // for the duration of this closure.
            let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(())
        });
    }
    cmd.spawn().expect("spawn ring-peer")
}

/// Produces `count` frames of random sizes to a `ring-peer consume` process,
/// pausing now and then so that the consumer goes to sleep on the doorbell.
fn produce_to_peer(count: u64, cap: usize, seed: u64, limit: Duration) {
    let dog = Watchdog::arm("multiprocess ring", limit);
    let (seg, map) = ring_segment(cap);
    let region = RingRegion::in_mapping(map, RING_OFFSET, cap).expect("region");
    let child = spawn_peer(&seg, "consume", cap, count, seed);
    dog.watch_child(child.id());
    // SAFETY: the only producer of this ring; the child is the only consumer.
    let mut tx = unsafe { Producer::attach(region) };
    let max = max_payload_len(cap);
    let mut r = SplitMix(seed);
    let mut buf = Vec::new();
    let wakes_before = wake_syscalls();
    let started = Instant::now();
    for i in 0..count {
        payload(seed, i, max, &mut buf);
        let deadline = Some(Instant::now() + Duration::from_secs(60));
        let mut w = loop {
            match tx.reserve(buf.len()) {
                Ok(w) => break w,
                Err(RingError::Full) => {
                    tx.wait_for_room(buf.len(), &Futex, WaitMode::default(), deadline)
                        .unwrap_or_else(|e| panic!("frame {i} (seed {seed}): {e}"));
                }
                Err(e) => panic!("frame {i} (seed {seed}): {e}"),
            }
        };
        w.write_at(0, &buf).expect("fits");
        w.commit(
            buf.len(),
            FrameMeta {
                request_id: i,
                tag: seed,
                kind: 1,
                flags: 0,
            },
        )
        .expect("commit");
        tx.notify(&Futex);
        // About every 8,000 frames, pause 0.2–1 ms: the consumer runs dry and
        // sleeps (its spin budget is 50 µs), so the futex path is exercised.
        if r.next_u64().is_multiple_of(8192) {
            std::thread::sleep(Duration::from_micros(200 + r.next_u64() % 800));
        }
    }
    let out = child.wait_with_output().expect("wait ring-peer");
    let wakes = wake_syscalls() - wakes_before;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ring-peer failed (seed {seed}): {:?} {stdout}",
        out.status
    );
    assert!(stdout.contains(&format!("frames={count}")), "{stdout}");
    eprintln!(
        "{count} frames in {:.2} s, producer wake syscalls {wakes}; {}",
        started.elapsed().as_secs_f64(),
        stdout.trim()
    );
    assert!(
        wakes > 0,
        "the consumer never slept: the futex path was not exercised"
    );
    drop(dog);
}

#[test]
fn one_million_frames_between_two_processes() {
    produce_to_peer(1_000_000, 1 << 16, 0x5EED_0001, Duration::from_secs(300));
}

#[test]
#[ignore = "10 million frames: run with --ignored (about ten times the CI test's time)"]
fn ten_million_frames_between_two_processes() {
    produce_to_peer(10_000_000, 1 << 16, 0x5EED_0010, Duration::from_secs(1800));
}

/// A `ring-peer scribble` process writes garbage over the ring (indices,
/// commit words, headers, payload) while this process consumes it, for many
/// seeds. The consumer must only ever return checked frames or `Corrupt`; a
/// crash or an out-of-bounds read fails the test. Seeds are printed so that a
/// failure can be replayed.
#[test]
fn hostile_concurrent_scribbler_never_crashes_the_consumer() {
    let dog = Watchdog::arm("hostile scribbler", Duration::from_secs(120));
    let seeds: u64 = std::env::var("RING_HOSTILE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let (mut frames, mut corruptions) = (0u64, 0u64);
    for seed in 0..seeds {
        let cap = 128usize << (seed % 4);
        let (seg, map) = ring_segment(cap);
        let region = RingRegion::in_mapping(map, RING_OFFSET, cap).expect("region");
        let data = region.base().as_ptr() as usize + ipc_core::ring::CONTROL_LEN;
        let child = spawn_peer(&seg, "scribble", cap, 150, seed);
        dog.watch_child(child.id());
        let end = Instant::now() + Duration::from_millis(150);
        let mut buf = Vec::new();
        while Instant::now() < end {
            // SAFETY: the only consumer of this ring in this process (a fresh one
            // after each corruption; the previous one was dropped).
            let mut rx = unsafe { Consumer::attach(region.clone()) };
            loop {
                match rx.peek() {
                    Ok(Some(f)) => {
                        let p = f.payload();
                        assert!(
                            p.addr() >= data + HEADER_LEN,
                            "seed {seed}: payload before the ring"
                        );
                        assert!(
                            p.addr() + p.len() <= data + cap,
                            "seed {seed}: payload past the ring"
                        );
                        p.copy_into_vec(&mut buf);
                        f.consume();
                        frames += 1;
                    }
                    Ok(None) => {
                        if Instant::now() >= end {
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    Err(RingError::Corrupt(_)) => {
                        corruptions += 1;
                        break;
                    }
                    Err(e) => panic!("seed {seed}: unexpected error {e}"),
                }
            }
        }
        let out = child.wait_with_output().expect("wait scribbler");
        assert!(
            out.status.success(),
            "scribbler (seed {seed}) failed: {:?}",
            out.status
        );
    }
    eprintln!(
        "{seeds} seeds: {frames} frames accepted after checks, {corruptions} corruptions detected"
    );
    assert!(
        corruptions > 0,
        "the scribbler never produced a detectable corruption"
    );
    drop(dog);
}
