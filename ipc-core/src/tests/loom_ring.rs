//! loom model of the frame ring (docs/design.md §5).
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p ipc-core --release --lib loom_ring`.
//!
//! The ring runs over `LoomMem`: loom atomics for `head`, `tail`, the commit
//! words and the doorbell words, a heap buffer for the frame bytes, and one
//! loom `UnsafeCell` per 16-byte slot as a *causality marker*: the producer
//! touches the marker of every slot it writes with `with_mut`, the consumer
//! those it reads with `with`. loom panics if two such accesses are not ordered
//! by happens-before, so the model checks that the `head` Release/Acquire pair
//! keeps the producer from reusing bytes the consumer still reads, and the
//! commit word's pair keeps the consumer from reading bytes not yet written.

use crate::ring::{Consumer, FrameMeta, Producer, RingError, RingMemory, max_payload_len};
use crate::sync::LoomAtomics;
use loom::cell::UnsafeCell as LoomCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicU32, AtomicU64};

const CAP: usize = 128;

struct Inner {
    head: AtomicU64,
    tail: AtomicU64,
    commits: Vec<AtomicU64>,
    bells: [AtomicU32; 4],
    data: Box<[core::cell::UnsafeCell<u128>]>,
    markers: Vec<LoomCell<()>>,
}

#[derive(Clone)]
struct LoomMem(Arc<Inner>);

impl LoomMem {
    fn new() -> Self {
        let slots = CAP / 16;
        Self(Arc::new(Inner {
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            commits: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            bells: [
                AtomicU32::new(0),
                AtomicU32::new(0),
                AtomicU32::new(0),
                AtomicU32::new(0),
            ],
            data: (0..slots).map(|_| core::cell::UnsafeCell::new(0)).collect(),
            markers: (0..slots).map(|_| LoomCell::new(())).collect(),
        }))
    }

    /// Slots covered by `len` bytes at `ptr` (a pointer into the frame area).
    fn slots(&self, ptr: *const u8, len: usize) -> core::ops::Range<usize> {
        let off = ptr as usize - self.data() as usize;
        off / 16..(off + len.max(1)).div_ceil(16)
    }

    fn mark_write(&self, ptr: *const u8, len: usize) {
        for s in self.slots(ptr, len) {
            self.0.markers[s].with_mut(|_| ());
        }
    }

    fn mark_read(&self, ptr: *const u8, len: usize) {
        for s in self.slots(ptr, len) {
            self.0.markers[s].with(|_| ());
        }
    }
}

// SAFETY: capacity is constant and valid (128); `data` is CAP bytes of 16-aligned
// heap memory (u128 cells) living as long as the Arc; commit words are separate
// loom atomics, so the ring never accesses the first 8 bytes of a slot through
// `data()` (it writes the header from offset 8 and the payload from offset 32);
// all control words are distinct atomics.
unsafe impl RingMemory for LoomMem {
    type A = LoomAtomics;
    fn capacity(&self) -> usize {
        CAP
    }
    fn head(&self) -> &AtomicU64 {
        &self.0.head
    }
    fn tail(&self) -> &AtomicU64 {
        &self.0.tail
    }
    fn commit_word(&self, offset: usize) -> &AtomicU64 {
        &self.0.commits[offset / 16]
    }
    fn data(&self) -> *mut u8 {
        core::cell::UnsafeCell::raw_get(self.0.data.as_ptr()).cast::<u8>()
    }
    fn data_seq(&self) -> &AtomicU32 {
        &self.0.bells[0]
    }
    fn data_waiting(&self) -> &AtomicU32 {
        &self.0.bells[1]
    }
    fn space_seq(&self) -> &AtomicU32 {
        &self.0.bells[2]
    }
    fn space_waiting(&self) -> &AtomicU32 {
        &self.0.bells[3]
    }
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (i as u8) ^ (k as u8).wrapping_mul(7))
        .collect()
}

/// Sends frames of the given payload sizes and checks they arrive intact and
/// in order, with the consumer releasing after every `release_every` frames.
fn model(sizes: &'static [usize], release_every: u64) {
    model_batched(sizes, release_every, 1);
}

/// [`model`] with the producer staging frames (`WriteWindow::stage`) and
/// publishing them `batch` at a time with one `publish_staged` (and before
/// it waits for room: the consumer cannot release frames it does not see).
fn model_batched(sizes: &'static [usize], release_every: u64, batch: usize) {
    loom::model(move || {
        let mem = LoomMem::new();
        // SAFETY: one producer and one consumer over this memory.
        let (mut tx, mut rx) =
            unsafe { (Producer::attach(mem.clone()), Consumer::attach(mem.clone())) };
        let pmem = mem.clone();
        let producer = loom::thread::spawn(move || {
            for (i, &len) in sizes.iter().enumerate() {
                assert!(len <= max_payload_len(CAP));
                let bytes = payload(i as u64, len);
                loop {
                    match tx.reserve(len) {
                        Ok(mut w) => {
                            pmem.mark_write(w.as_mut_ptr().cast_const().wrapping_sub(32), 32 + len);
                            w.write_at(0, &bytes).unwrap();
                            let meta = FrameMeta {
                                request_id: i as u64,
                                ..Default::default()
                            };
                            if batch == 1 {
                                w.commit(len, meta).unwrap();
                            } else {
                                w.stage(len, meta).unwrap();
                                if (i + 1) % batch == 0 || i + 1 == sizes.len() {
                                    tx.publish_staged();
                                }
                            }
                            break;
                        }
                        Err(RingError::Full) => {
                            tx.publish_staged();
                            loom::thread::yield_now()
                        }
                        Err(e) => panic!("producer: {e}"),
                    }
                }
            }
        });
        let mut got = 0u64;
        while (got as usize) < sizes.len() {
            match rx.peek() {
                Ok(Some(f)) => {
                    let p = f.payload();
                    mem.mark_read((p.addr() - 32) as *const u8, 32 + p.len());
                    assert_eq!(f.meta().request_id, got);
                    assert_eq!(p.to_vec(), payload(got, sizes[got as usize]));
                    f.consume();
                    got += 1;
                    if got % release_every == 0 {
                        rx.release();
                    }
                }
                Ok(None) => {
                    rx.release();
                    loom::thread::yield_now();
                }
                Err(e) => panic!("consumer: {e}"),
            }
        }
        producer.join().unwrap();
    });
}

/// Three 48-byte frames in a 128-byte ring: the third needs a padding frame
/// and the wrap, and room only after the first two are released.
#[test]
fn loom_ring_wrap_with_padding() {
    model(&[16, 16, 16], 1);
}

/// Frames of mixed sizes with batched release (every second frame).
#[test]
fn loom_ring_batched_release() {
    model(&[0, 16, 8, 0], 2);
}

/// A batch of three frames published with one store: the consumer sees
/// none or all of the batch's bytes, each after it was written.
#[test]
fn loom_ring_staged_batch() {
    model_batched(&[0, 8, 0], 3, 3);
}

/// Staged frames across the wrap: the padding frame's commit word is the
/// one held back, and the producer publishes what it staged before it
/// waits for room.
#[test]
fn loom_ring_staged_batch_with_padding() {
    model_batched(&[16, 16, 16], 1, 2);
}
