//! Helper process for `tests/multiprocess_ring.rs`: the other end of a ring in
//! a memfd inherited from the test process.
//!
//! ```text
//! ring-peer consume  <fd> <capacity> <count> <seed>   verify `count` frames, exit 0
//! ring-peer scribble <fd> <capacity> <millis> <seed>  write garbage for `millis` ms
//! ```
//!
//! The segment is a CRADLE segment header (128 bytes) followed by one ring
//! region; see `tests/multiprocess_ring.rs` for the producing side.

use ipc_core::doorbell::{Futex, WaitMode};
use ipc_core::ring::{Consumer, RingError, RingRegion, max_payload_len, region_len};
use ipc_core::shm::{Access, OpenExpect, Seals, Segment};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAGIC: u64 = u64::from_le_bytes(*b"RINGTEST");
const RING_OFFSET: usize = 128;

#[path = "../../tests/support/mod.rs"]
mod support;
use support::{SplitMix, payload};

fn fail(msg: String) -> ExitCode {
    eprintln!("ring-peer: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        return fail(
            "usage: ring-peer consume|scribble <fd> <capacity> <count|millis> <seed>".into(),
        );
    }
    let num = |i: usize| {
        args[i]
            .parse::<u64>()
            .map_err(|e| format!("argument {}: {e}", args[i]))
    };
    let (fd, cap, n, seed) = match (num(2), num(3), num(4), num(5)) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a as i32, b as usize, c, d),
        _ => return fail("numeric arguments expected".into()),
    };
    // SAFETY: the test process made this descriptor inheritable for us alone; we
    // take ownership of it exactly once.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let expect = OpenExpect::exact(MAGIC, 1, RING_OFFSET + region_len(cap))
        .seals(Seals::SHRINK | Seals::GROW | Seals::SEAL)
        .access(Access::ReadWrite);
    let map = match Segment::open(fd, &expect) {
        Ok((_seg, map)) => Arc::new(map),
        Err(e) => return fail(format!("open segment: {e}")),
    };
    match args[1].as_str() {
        "consume" => consume(map, cap, n, seed),
        "scribble" => scribble(&map, cap, Duration::from_millis(n), seed),
        other => fail(format!("unknown mode {other}")),
    }
}

fn consume(map: Arc<ipc_core::shm::Mapping>, cap: usize, count: u64, seed: u64) -> ExitCode {
    let region = match RingRegion::in_mapping(map, RING_OFFSET, cap) {
        Ok(r) => r,
        Err(e) => return fail(format!("ring region: {e}")),
    };
    // SAFETY: the only consumer of this ring anywhere; this process touches the
    // region only through it.
    let mut rx = unsafe { Consumer::attach(region) };
    let max = max_payload_len(cap);
    let (mut want, mut got) = (Vec::new(), Vec::new());
    let mut bytes = 0u64;
    let mut sleeps = 0u64;
    let started = Instant::now();
    for i in 0..count {
        // Alternate wait modes in stretches of 50,000 frames: spin, then sleep
        // at once, then the default spin-then-sleep.
        let mode = match (i / 50_000) % 3 {
            0 => WaitMode::Spin,
            1 => WaitMode::Sleep,
            _ => WaitMode::default(),
        };
        loop {
            match rx.peek() {
                Ok(Some(f)) => {
                    let m = f.meta();
                    if m.request_id != i {
                        return fail(format!("frame {i}: got request id {}", m.request_id));
                    }
                    f.payload().copy_into_vec(&mut got);
                    f.consume();
                    break;
                }
                Ok(None) => {
                    if mode != WaitMode::Spin {
                        sleeps += 1;
                    }
                    let deadline = Some(Instant::now() + Duration::from_secs(60));
                    match rx.wait_for_frame(&Futex, &Futex, mode, deadline) {
                        Ok(()) => {}
                        Err(RingError::Timeout) => {
                            return fail(format!("frame {i}: no frame within 60 s"));
                        }
                        Err(e) => return fail(format!("frame {i}: {e}")),
                    }
                }
                Err(e) => return fail(format!("frame {i}: {e}")),
            }
        }
        payload(seed, i, max, &mut want);
        if got != want {
            return fail(format!(
                "frame {i}: payload differs ({} vs {} bytes)",
                got.len(),
                want.len()
            ));
        }
        bytes += got.len() as u64;
        if rx.unreleased() >= (cap / 4) as u64 {
            rx.release_and_notify(&Futex);
        }
    }
    rx.release_and_notify(&Futex);
    println!(
        "ring-peer: ok frames={count} bytes={bytes} waits={sleeps} secs={:.2}",
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

/// Writes garbage into the ring region until `dur` passes. Three kinds of
/// writes: random words anywhere (control block included; rarer), random
/// commit words, and forged frames — a plausible header (small payload length,
/// random ids) and then a commit word with the right stamp for some lap and a
/// plausible length, so that the consumer parses and accepts some of them
/// while the bytes keep changing under it.
fn scribble(map: &ipc_core::shm::Mapping, cap: usize, dur: Duration, seed: u64) -> ExitCode {
    let Some(base) = map.as_mut_ptr() else {
        return fail("read-only mapping".into());
    };
    // SAFETY: the ring region starts RING_OFFSET bytes into the mapping, which
    // `Segment::open` checked to hold RING_OFFSET + region_len(cap) bytes.
    let region = unsafe { base.add(RING_OFFSET) };
    let len = region_len(cap);
    let slots = (cap / 16) as u64;
    let mut r = SplitMix(seed);
    let end = Instant::now() + dur;
    let mut writes = 0u64;
    let put = |off: usize, word: u64| {
        assert!(off.is_multiple_of(8) && off + 8 <= len);
        // SAFETY: off + 8 <= len (asserted) and 8-aligned: inside the ring region
        // of our read-write mapping; a volatile write, no reference is formed.
        // (This process is the hostile peer: another process reading these bytes
        // is the point.)
        unsafe { core::ptr::write_volatile(region.add(off).cast::<u64>(), word) };
    };
    while Instant::now() < end {
        for _ in 0..16 {
            let v = r.next_u64();
            let slot = r.next_u64() % slots;
            let frame = FRAMES + slot as usize * 16;
            let lap = r.next_u64() % 3;
            let stamp = (lap * slots + slot + 1) as u32 as u64;
            match v % 16 {
                0 => put((r.next_u64() as usize % (len / 8)) * 8, r.next_u64()),
                1..=4 => put(
                    frame,
                    (stamp << 32) | (r.next_u64() as u32 as u64 & 0x8000_0FF0),
                ),
                _ => {
                    // A forged frame of 32..=96 bytes that fits before the end.
                    let flen = 32 + 16 * (r.next_u64() % 5) as usize;
                    if slot as usize * 16 + flen > cap {
                        continue;
                    }
                    let payload_len = r.next_u64() % (flen as u64 - 31);
                    put(frame + 8, r.next_u64());
                    put(frame + 16, r.next_u64());
                    put(frame + 24, payload_len | (r.next_u64() << 32));
                    for k in (32..flen).step_by(8) {
                        put(frame + k, r.next_u64());
                    }
                    put(frame, (stamp << 32) | flen as u64);
                }
            }
            writes += 1;
        }
        // Leave the consumer some time to parse between bursts.
        std::thread::sleep(Duration::from_micros(20));
    }
    println!("ring-peer: scribbled {writes} times");
    ExitCode::SUCCESS
}

/// Offset of the frame area inside a ring region.
const FRAMES: usize = ipc_core::ring::CONTROL_LEN;
