//! Shared helpers of the tests: the integration tests use it as `mod support`,
//! the `ring-peer` helper binary and the ring's unit tests include it with
//! `#[path]`, so that both ends of a multi-process test generate the same
//! payloads from one definition.
#![allow(dead_code, unreachable_pub)]

use std::sync::mpsc;
use std::time::Duration;

/// Aborts the whole test process if it is not dropped within `limit`, after
/// killing the child processes registered with it: a deadlock fails fast
/// instead of hanging CI. It asserts nothing about speed; the limits are
/// generous multiples of the normal run time.
pub(crate) struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pids: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
}

impl Watchdog {
    pub(crate) fn arm(name: &'static str, limit: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let pids = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
        let pids2 = pids.clone();
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("watchdog: {name} still running after {limit:?}; aborting");
                for pid in pids2.lock().map(|p| p.clone()).unwrap_or_default() {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status();
                }
                std::process::abort();
            }
        });
        Self {
            done: Some(tx),
            thread: Some(thread),
            pids,
        }
    }

    /// Kill this child too if the watchdog fires.
    pub(crate) fn watch_child(&self, pid: u32) {
        if let Ok(mut p) = self.pids.lock() {
            p.push(pid);
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// SplitMix64, the generator shared with the helper binaries.
pub(crate) struct SplitMix(pub(crate) u64);
impl SplitMix {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Payload of frame `i` for `seed` in the multi-process ring tests: 15 in 16
/// frames are short (0..=64 bytes), the rest up to `max` bytes.
pub(crate) fn payload(seed: u64, i: u64, max: usize, out: &mut Vec<u8>) {
    let mut r = SplitMix(seed ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let pick = r.next_u64();
    let len = if !pick.is_multiple_of(16) {
        (pick >> 8) as usize % 65
    } else {
        (pick >> 8) as usize % (max + 1)
    };
    out.clear();
    while out.len() < len {
        let w = r.next_u64().to_le_bytes();
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&w[..take]);
    }
}
