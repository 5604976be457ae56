//! Ring unit tests. They make no syscalls, so Miri runs them all
//! (`cargo +nightly miri test -p ipc-core --lib ring::`).

use super::*;
use crate::sync::Ordering;

/// SplitMix64 and friends, shared with the integration tests and `ring-peer`.
#[path = "../../tests/support/mod.rs"]
mod support;
use support::SplitMix;

/// The payload of message `i`: its length and bytes are a function of `i`.
fn payload_of(i: u64, max: usize) -> Vec<u8> {
    let mut r = SplitMix(i);
    let len = (r.below(max as u64 + 1)) as usize;
    (0..len)
        .map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8))
        .collect()
}

fn push(tx: &mut Producer<RingRegion>, bytes: &[u8], id: u64) -> Result<(), RingError> {
    let mut w = tx.reserve(bytes.len())?;
    w.write_at(0, bytes)?;
    w.commit(
        bytes.len(),
        FrameMeta {
            request_id: id,
            tag: !id,
            kind: id as u16,
            flags: 3,
        },
    )
}

fn pop(rx: &mut Consumer<RingRegion>) -> Result<Option<(FrameMeta, Vec<u8>)>, RingError> {
    match rx.peek()? {
        None => Ok(None),
        Some(f) => {
            let out = (f.meta(), f.payload().to_vec());
            f.consume();
            Ok(Some(out))
        }
    }
}

const STEPS: u64 = if cfg!(miri) { 60 } else { 200_000 };

#[test]
fn round_trip_keeps_meta_and_bytes() {
    let (mut tx, mut rx) = heap_channel(1024).unwrap();
    assert_eq!(pop(&mut rx).unwrap(), None);
    push(&mut tx, b"abc", 42).unwrap();
    assert!(rx.has_frame());
    let (meta, bytes) = pop(&mut rx).unwrap().unwrap();
    assert_eq!(
        meta,
        FrameMeta {
            request_id: 42,
            tag: !42,
            kind: 42,
            flags: 3
        }
    );
    assert_eq!(bytes, b"abc");
    assert_eq!(pop(&mut rx).unwrap(), None);
    assert!(!rx.has_frame());
}

#[test]
fn peek_without_consume_sees_the_same_frame() {
    let (mut tx, mut rx) = heap_channel(1024).unwrap();
    push(&mut tx, b"one", 1).unwrap();
    push(&mut tx, b"two", 2).unwrap();
    let f = rx.peek().unwrap().unwrap();
    assert_eq!(f.meta().request_id, 1);
    let _ = f; // not consumed: the frame stays in the ring
    let f = rx.peek().unwrap().unwrap();
    assert_eq!(f.meta().request_id, 1);
    f.consume();
    assert_eq!(pop(&mut rx).unwrap().unwrap().0.request_id, 2);
}

#[test]
fn dropped_window_publishes_nothing() {
    let (mut tx, mut rx) = heap_channel(1024).unwrap();
    let mut w = tx.reserve(10).unwrap();
    w.write_at(0, b"ghost").unwrap();
    let _ = w; // dropped without commit
    assert_eq!(pop(&mut rx).unwrap(), None);
    push(&mut tx, b"real", 9).unwrap();
    assert_eq!(pop(&mut rx).unwrap().unwrap().1, b"real");
}

#[test]
fn window_bounds_are_checked() {
    let (mut tx, _rx) = heap_channel(1024).unwrap();
    let mut w = tx.reserve(8).unwrap();
    assert!(w.len() >= 8);
    let len = w.len();
    assert!(matches!(
        w.write_at(len - 1, b"xy"),
        Err(RingError::CommitTooLong { .. })
    ));
    assert!(matches!(
        w.write_at(usize::MAX, b"x"),
        Err(RingError::CommitTooLong { .. })
    ));
    assert!(matches!(
        w.commit(len + 1, FrameMeta::default()),
        Err(RingError::CommitTooLong { .. })
    ));
}

#[test]
fn capacities_are_checked() {
    for bad in [0, 64, 100, 1000, MAX_CAPACITY * 2] {
        assert_eq!(heap_channel(bad).err(), Some(RingError::BadCapacity(bad)));
    }
    assert!(heap_channel(MIN_CAPACITY).is_ok());
}

#[test]
fn too_large_is_refused_and_max_always_fits() {
    let cap = 1024;
    let (mut tx, mut rx) = heap_channel(cap).unwrap();
    let max = max_payload_len(cap);
    assert!(matches!(
        tx.reserve(max + 1),
        Err(RingError::TooLarge { .. })
    ));
    assert!(matches!(
        tx.reserve(usize::MAX),
        Err(RingError::TooLarge { .. })
    ));
    // From every 16-byte offset of an empty ring, a maximal frame fits.
    for id in 0..(cap / 16) as u64 {
        let bytes = vec![id as u8; max];
        push(&mut tx, &bytes, id).unwrap();
        assert_eq!(pop(&mut rx).unwrap().unwrap().1, bytes);
        rx.release();
        // Advance the ring by one slot with an empty-payload frame... of 32 bytes,
        // then a 16-byte shift comes from alternating payload sizes.
        push(&mut tx, &[], 1000 + id).unwrap();
        pop(&mut rx).unwrap().unwrap();
        if id % 2 == 0 {
            push(&mut tx, &[1; 1], 2000 + id).unwrap(); // 48-byte frame
        } else {
            push(&mut tx, &[1; 17], 2000 + id).unwrap(); // 64-byte frame
        }
        pop(&mut rx).unwrap().unwrap();
        rx.release();
    }
}

#[test]
fn full_until_released_then_resumes() {
    let (mut tx, mut rx) = heap_channel(256).unwrap();
    let mut sent = 0u64;
    while push(&mut tx, &[7; 16], sent).is_ok() {
        sent += 1;
    }
    assert!(
        sent >= 4,
        "a 256-byte ring holds several 48-byte frames, got {sent}"
    );
    assert_eq!(push(&mut tx, &[7; 16], sent), Err(RingError::Full));
    // Consuming without releasing gives the producer nothing.
    // (The next frame needs a 16-byte padding frame plus 48 + 16 bytes: two
    // released frames make room.)
    for want in 0..2 {
        let (m, _) = pop(&mut rx).unwrap().unwrap();
        assert_eq!(m.request_id, want);
    }
    assert_eq!(push(&mut tx, &[7; 16], sent), Err(RingError::Full));
    assert!(!tx.has_room(16).unwrap());
    assert!(rx.release());
    assert!(
        !rx.release(),
        "a second release with nothing consumed stores nothing"
    );
    assert!(tx.has_room(16).unwrap());
    push(&mut tx, &[7; 16], sent).unwrap();
    let mut next = 2;
    while let Some((m, b)) = pop(&mut rx).unwrap() {
        assert_eq!((m.request_id, b), (next, vec![7; 16]));
        next += 1;
    }
    assert_eq!(next, sent + 1);
}

#[test]
fn random_sizes_wrap_in_order_single_thread() {
    // Under Miri a smaller ring still wraps several times in 60 steps.
    let cap = if cfg!(miri) { 512 } else { 4096 };
    let max = max_payload_len(cap);
    let (mut tx, mut rx) = heap_channel(cap).unwrap();
    let mut r = SplitMix(0xC0FFEE);
    let (mut sent, mut got) = (0u64, 0u64);
    while got < STEPS {
        // Push a random burst, then pop a random burst.
        for _ in 0..r.below(6) {
            let p = payload_of(sent, max);
            match push(&mut tx, &p, sent) {
                Ok(()) => sent += 1,
                Err(RingError::Full) => break,
                Err(e) => panic!("push {sent}: {e}"),
            }
        }
        for _ in 0..r.below(6) {
            match pop(&mut rx).unwrap() {
                Some((m, b)) => {
                    assert_eq!(m.request_id, got);
                    assert_eq!(b, payload_of(got, max), "payload of message {got}");
                    got += 1;
                }
                None => break,
            }
        }
        if r.below(3) == 0 {
            rx.release();
        }
    }
    assert!(
        tx.position() > 4 * cap as u64,
        "the test wrapped the ring several times"
    );
}

#[test]
fn two_threads_random_sizes_in_order() {
    let cap = if cfg!(miri) { 512 } else { 2048 };
    let max = max_payload_len(cap);
    let (mut tx, mut rx) = heap_channel(cap).unwrap();
    let n = STEPS;
    let producer = std::thread::spawn(move || {
        let mut i = 0;
        while i < n {
            let p = payload_of(i, max);
            match push(&mut tx, &p, i) {
                Ok(()) => i += 1,
                Err(RingError::Full) => std::thread::yield_now(),
                Err(e) => panic!("push {i}: {e}"),
            }
        }
    });
    let mut got = 0;
    while got < n {
        match pop(&mut rx).unwrap() {
            Some((m, b)) => {
                assert_eq!(m.request_id, got);
                assert_eq!(b, payload_of(got, max));
                got += 1;
                if got % 4 == 0 {
                    rx.release();
                }
            }
            None => {
                rx.release();
                std::thread::yield_now();
            }
        }
    }
    producer.join().unwrap();
}

// ---- hostile producer -------------------------------------------------------

/// Writes `bytes` at `offset` of the region (control block included).
fn scribble(region: &RingRegion, offset: usize, bytes: &[u8]) {
    assert!(offset + bytes.len() <= region_len(region.capacity()));
    // SAFETY: in bounds (asserted); single-threaded test, so no other access races.
    unsafe {
        core::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            region.base().as_ptr().add(offset),
            bytes.len(),
        )
    }
}

fn commit_at(region: &RingRegion, offset: usize, word: u64) {
    region.commit_word(offset).store(word, Ordering::Release);
}

fn expect_corrupt(rx: &mut Consumer<RingRegion>) -> CorruptionKind {
    match rx.peek() {
        Err(RingError::Corrupt(c)) => {
            // Poisoned: the same error again.
            assert_eq!(rx.peek().err(), Some(RingError::Corrupt(c)));
            c.kind
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn consumer_over(region: &RingRegion) -> Consumer<RingRegion> {
    // SAFETY: the tests attach exactly one consumer (and at most one producer).
    unsafe { Consumer::attach(region.clone()) }
}

#[test]
fn hostile_bad_stamp() {
    let region = RingRegion::on_heap(1024).unwrap();
    let mut rx = consumer_over(&region);
    commit_at(&region, 0, (5u64 << 32) | 64);
    assert_eq!(
        expect_corrupt(&mut rx),
        CorruptionKind::BadStamp {
            expected: 1,
            found: 5
        }
    );
}

#[test]
fn hostile_bad_lengths() {
    let cap = 1024u64;
    for len in [
        0u32,
        8,
        16,
        31,
        33,
        40 + 1,
        (max_frame_len(cap as usize) + 16) as u32,
        0x7FFF_FFF0,
    ] {
        let region = RingRegion::on_heap(cap as usize).unwrap();
        let mut rx = consumer_over(&region);
        commit_at(&region, 0, (1u64 << 32) | len as u64);
        assert_eq!(
            expect_corrupt(&mut rx),
            CorruptionKind::BadLength(len),
            "len {len}"
        );
    }
}

#[test]
fn hostile_frame_running_past_the_end() {
    // A legal-looking frame near the end that would cross it.
    let region = RingRegion::on_heap(1024).unwrap();
    let mut tx = unsafe_producer(&region);
    let mut rx = consumer_over(&region);
    for i in 0..15 {
        push(&mut tx, &[1; 16], i).unwrap(); // 15 * 48 = 720
        pop(&mut rx).unwrap().unwrap();
    }
    rx.release();
    // At 720, a 320-byte frame ends at 1040 > 1024.
    commit_at(&region, 720, ((stamp(720) as u64) << 32) | 320);
    assert_eq!(expect_corrupt(&mut rx), CorruptionKind::BadLength(320));
}

fn unsafe_producer(region: &RingRegion) -> Producer<RingRegion> {
    // SAFETY: one producer per region in these tests.
    unsafe { Producer::attach(region.clone()) }
}

#[test]
fn hostile_bad_padding() {
    // Padding at offset 0, and padding that does not reach the end.
    let region = RingRegion::on_heap(1024).unwrap();
    let mut rx = consumer_over(&region);
    commit_at(&region, 0, (1u64 << 32) | (PAD_FLAG | 1024) as u64);
    assert_eq!(expect_corrupt(&mut rx), CorruptionKind::BadPadding(1024));

    let region = RingRegion::on_heap(1024).unwrap();
    let mut tx = unsafe_producer(&region);
    let mut rx = consumer_over(&region);
    push(&mut tx, &[], 0).unwrap(); // 32 bytes
    pop(&mut rx).unwrap().unwrap();
    commit_at(
        &region,
        32,
        ((stamp(32) as u64) << 32) | (PAD_FLAG | 512) as u64,
    );
    assert_eq!(expect_corrupt(&mut rx), CorruptionKind::BadPadding(512));
}

#[test]
fn hostile_payload_len_beyond_frame() {
    let region = RingRegion::on_heap(1024).unwrap();
    let mut rx = consumer_over(&region);
    scribble(&region, CONTROL_LEN + 24, &17u32.to_ne_bytes());
    commit_at(&region, 0, (1u64 << 32) | 48);
    assert_eq!(
        expect_corrupt(&mut rx),
        CorruptionKind::BadPayloadLen {
            payload_len: 17,
            frame_len: 48
        }
    );
}

#[test]
fn hostile_head_is_caught_by_the_producer() {
    for bad_head in [u64::MAX, 48, 1, 4096 * 4] {
        let region = RingRegion::on_heap(256).unwrap();
        let mut tx = unsafe_producer(&region);
        // Fill the ring so the producer must read the head.
        while push(&mut tx, &[0; 16], 0).is_ok() {}
        region.head().store(bad_head, Ordering::Release);
        let valid = bad_head % 16 == 0 && bad_head <= tx.position();
        match push(&mut tx, &[0; 16], 0) {
            Err(RingError::Corrupt(c)) => {
                assert!(!valid, "head {bad_head} is legal");
                assert_eq!(c.kind, CorruptionKind::BadHead(bad_head));
                assert!(
                    matches!(tx.reserve(0), Err(RingError::Corrupt(_))),
                    "poisoned"
                );
            }
            Ok(()) | Err(RingError::Full) => assert!(valid, "head {bad_head} accepted"),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Runs the consumer over whatever is in the region and checks that it only
/// ever returns frames that lie inside the frame area, or errors.
fn drain_hostile(region: &RingRegion, rx: &mut Consumer<RingRegion>) {
    let cap = region.capacity();
    let base = region.data() as usize;
    for _ in 0..(cap / 16 + 2) {
        match rx.peek() {
            Ok(None) | Err(RingError::Corrupt(_)) => return,
            Ok(Some(f)) => {
                let p = f.payload();
                let start = rx_payload_addr(&f);
                assert!(
                    start >= base && start + p.len() <= base + cap,
                    "payload out of the ring"
                );
                assert!(f.frame_len() >= HEADER_LEN + p.len());
                let mut buf = vec![0; p.len()];
                p.copy_to_slice(&mut buf);
                f.consume();
            }
            Err(e) => panic!("consumer returned a non-corruption error: {e}"),
        }
    }
}

fn rx_payload_addr<M: RingMemory>(f: &Frame<'_, M>) -> usize {
    // The Debug of ShmSlice carries the pointer; use a dedicated accessor instead.
    f.payload().addr()
}

#[test]
fn hostile_random_garbage_everywhere_many_seeds() {
    let seeds = if cfg!(miri) { 8 } else { 3000 };
    for seed in 0..seeds {
        let mut r = SplitMix(seed);
        let cap = 128 << r.below(4);
        let region = RingRegion::on_heap(cap as usize).unwrap();
        // Honest traffic first, sometimes, so the consumer sits mid-ring.
        let mut tx = unsafe_producer(&region);
        let mut rx = consumer_over(&region);
        for i in 0..r.below(20) {
            let p = payload_of(i, max_payload_len(cap as usize));
            if push(&mut tx, &p, i).is_err() {
                break;
            }
            pop(&mut rx).unwrap().unwrap();
            rx.release();
        }
        // Then garbage: whole region, or targeted at the next commit word.
        let len = region_len(cap as usize);
        let mode = r.below(3);
        let mut g = vec![0u8; len];
        g.iter_mut().for_each(|b| *b = r.next_u64() as u8);
        match mode {
            0 => scribble(&region, 0, &g),
            1 => {
                let off = CONTROL_LEN + (rx.position() as usize & (cap as usize - 1));
                scribble(&region, off, &g[..16.min(len - off)]);
            }
            _ => {
                let off = CONTROL_LEN + (rx.position() as usize & (cap as usize - 1));
                // A commit word with the right stamp and a random length.
                let w = ((stamp(rx.position()) as u64) << 32) | (r.next_u64() as u32 as u64);
                scribble(&region, off, &w.to_ne_bytes());
                scribble(&region, off + 8, &g[..24.min(len - off - 8)]);
            }
        }
        drain_hostile(&region, &mut rx);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 2000 },
        failure_persistence: None,
        ..Default::default()
    })]

    /// Fuzz over frame parsing: any bytes in the frame area, any read position.
    #[test]
    fn any_bytes_never_crash_the_consumer(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 256),
        skip in 0usize..16,
    ) {
        let region = RingRegion::on_heap(256).unwrap();
        let mut tx = unsafe_producer(&region);
        let mut rx = consumer_over(&region);
        for i in 0..skip {
            push(&mut tx, &[], i as u64).unwrap();
            pop(&mut rx).unwrap().unwrap();
            rx.release();
        }
        scribble(&region, CONTROL_LEN, &bytes);
        drain_hostile(&region, &mut rx);
    }
}

/// `Producer` and `Consumer` are `Send + !Sync` (checked at compile time: the
/// `!Sync` half makes the call below ambiguous, a compile error, if either
/// type ever becomes `Sync`).
#[test]
fn ends_are_send_but_not_sync() {
    fn send<T: Send>() {}
    send::<Producer<RingRegion>>();
    send::<Consumer<RingRegion>>();
    trait AmbiguousIfSync<A> {
        fn check() {}
    }
    impl<T: ?Sized> AmbiguousIfSync<()> for T {}
    impl<T: ?Sized + Sync> AmbiguousIfSync<u8> for T {}
    <Producer<RingRegion> as AmbiguousIfSync<_>>::check();
    <Consumer<RingRegion> as AmbiguousIfSync<_>>::check();
}

#[test]
fn staged_frames_appear_together_and_commit_publishes_them() {
    let (mut tx, mut rx) = heap_channel(1024).unwrap();
    let stage = |tx: &mut Producer<RingRegion>, id: u64| {
        let mut w = tx.reserve(4).unwrap();
        w.write_at(0, &id.to_le_bytes()[..4]).unwrap();
        w.stage(
            4,
            FrameMeta {
                request_id: id,
                ..Default::default()
            },
        )
        .unwrap();
    };
    // Many laps: padding frames get staged too.
    for lap in 0..200u64 {
        let n = 1 + lap % 9;
        for i in 0..n {
            stage(&mut tx, lap * 100 + i);
            assert!(!rx.has_frame(), "a staged frame is not visible");
        }
        assert_eq!(tx.published() + n * 48, tx.position());
        if lap % 2 == 0 {
            assert!(tx.publish_staged());
        } else {
            // A plain commit publishes the staged frames before it.
            push(&mut tx, &[], lap * 100 + n).unwrap();
        }
        assert!(!tx.has_staged());
        let expect = if lap % 2 == 0 { n } else { n + 1 };
        for i in 0..expect {
            let (meta, bytes) = pop(&mut rx).unwrap().expect("published");
            assert_eq!(meta.request_id, lap * 100 + i);
            if i < n {
                assert_eq!(bytes, (lap * 100 + i).to_le_bytes()[..4]);
            }
        }
        assert_eq!(pop(&mut rx).unwrap(), None);
        rx.release();
        assert!(!tx.publish_staged(), "nothing left to publish");
    }
}

#[test]
fn hostile_head_into_staged_frames_is_caught() {
    let region = RingRegion::on_heap(1024).unwrap();
    let mut tx = unsafe_producer(&region);
    // Fill the ring with published frames, then stage one more.
    while push(&mut tx, &[0; 16], 1).is_ok() {}
    // The consumer claims to have read one frame beyond the published ones.
    let published = tx.published();
    region.head().store(published - 48, Ordering::Release);
    tx.reserve(16)
        .unwrap()
        .stage(16, FrameMeta::default())
        .unwrap();
    region.head().store(tx.published() + 48, Ordering::Release);
    while let Ok(w) = tx.reserve(16) {
        w.stage(16, FrameMeta::default()).unwrap();
    }
    let e = tx.reserve(16).map(|_| ()).unwrap_err();
    assert!(
        matches!(
            e,
            RingError::Corrupt(Corruption {
                kind: CorruptionKind::BadHead(_),
                ..
            })
        ),
        "{e:?}"
    );
}
