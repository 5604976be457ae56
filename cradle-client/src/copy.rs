//! Large copies into a blob's window, shared with one helper thread.
//!
//! One thread copying memory does not use a machine's memory bandwidth: on
//! this project's 2-vCPU test machine one `memcpy` of 100 MiB takes ~15 ms
//! and the same bytes split between two threads ~8 ms (docs/benchmarks.md
//! §9). A large `write_at` into a blob (the copy at the heart of a `put`)
//! therefore offers its chunks to a helper thread while the caller copies
//! them too, and each side takes the next chunk not yet taken.
//!
//! The caller never *depends* on the helper. The helper is a process-wide
//! thread that sleeps on a condition variable; when it is busy elsewhere,
//! not scheduled (every core busy), or absent (a child forked after it
//! started, or a thread that could not be spawned), the caller copies every
//! chunk itself, and a
//! copy costs what it cost before plus one wake-up. A helper that claimed a
//! chunk holds the caller back only until that chunk is copied.
//!
//! The protocol (all `SeqCst`, a store-load pattern between two words):
//! the helper raises `busy` *before* it claims chunks from `next`, and
//! lowers it once it claims none; the caller, after its own claim has found
//! no chunk left, waits for `busy` to be zero. A helper claim that succeeded
//! precedes the caller's failing claim in `next`'s order, and the helper's
//! raise of `busy` precedes that claim, so the caller sees `busy` raised
//! until the chunk is done; a helper that raises `busy` after the caller
//! looked can only claim past the end, and touches no byte. So no byte of
//! the source or the window is accessed once [`copy`] has returned.

use ipc_core::sync::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Copies shorter than this stay on the caller's thread: waking the helper
/// costs a few microseconds, a 1 MiB copy about 100.
pub(crate) const PARALLEL_MIN: usize = 4 << 20;

/// What one claim takes: big enough that claims cost nothing next to the
/// copy, small enough that the two sides finish close together.
const CHUNK: usize = 1 << 20;

/// What a job does with each chunk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Copy it from `src` to `dst`.
    Copy,
    /// `munmap` it at `dst` (`src` unused).
    Unmap,
}

/// One copy (or unmap) being shared.
struct Job {
    op: Op,
    src: *const u8,
    dst: *mut u8,
    len: usize,
    /// Bytes per claim.
    chunk: usize,
    /// The next chunk to claim (an index; past the last, nothing is left).
    next: AtomicUsize,
    /// The helper is between its raise and its lowering (see the module).
    busy: AtomicUsize,
}

// SAFETY: the pointers are only dereferenced for chunks claimed through
// `next`, by the caller of `copy` or by the helper while `busy` says so; the
// caller keeps both ranges alive and unaliased until `busy` is zero after
// the last chunk was claimed (module docs). The rest are atomics.
unsafe impl Send for Job {}
// SAFETY: as for `Send`: shared access only goes through the atomics and
// the claimed, disjoint chunks.
unsafe impl Sync for Job {}

impl Job {
    fn chunks(&self) -> usize {
        self.len.div_ceil(self.chunk)
    }

    /// Claims and copies chunks until none is left.
    fn run(&self) {
        let n = self.chunks();
        loop {
            // SeqCst: pairs with the helper's raise of `busy` and the
            // caller's read of it (module docs).
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            if i >= n {
                return;
            }
            let at = i * self.chunk;
            let len = self.chunk.min(self.len - at);
            match self.op {
                // SAFETY: chunk `i` was claimed by this thread alone (`next`
                // hands each index out once); `at + len <= self.len`, inside
                // both ranges, which the caller keeps valid (module docs);
                // the source and the window do not overlap (a blob's fresh
                // mapping).
                Op::Copy => unsafe {
                    std::ptr::copy_nonoverlapping(self.src.add(at), self.dst.add(at), len)
                },
                Op::Unmap => {
                    // SAFETY: the caller of `unmap` gave up the range
                    // (`Mapping::into_raw`), and chunk `i` (page-aligned:
                    // `chunk` is) is unmapped by this thread alone. A failure
                    // cannot happen for a range that was mapped; it would
                    // leave the pages mapped, which the seal then reports.
                    let _ = unsafe { libc::munmap(self.dst.add(at).cast(), len) };
                }
            }
        }
    }
}

/// The helper thread's mailbox: the latest job not yet taken.
struct Helper {
    slot: Mutex<Option<Arc<Job>>>,
    ready: Condvar,
    /// The fork generation the thread runs in (`fork.rs`).
    generation: u64,
}

/// The helper, started on the first large copy; `None` if the thread could
/// not be spawned, or in a process forked after it started: there the
/// thread does not exist, and its mutex may have been copied locked (held
/// by the helper at the fork), so a child never touches it. Every copy then
/// stays on its caller.
fn helper() -> Option<&'static Helper> {
    static HELPER: OnceLock<Option<&'static Helper>> = OnceLock::new();
    let h = (*HELPER.get_or_init(|| {
        let h: &'static Helper = Box::leak(Box::new(Helper {
            slot: Mutex::new(None),
            ready: Condvar::new(),
            generation: crate::fork::generation(),
        }));
        std::thread::Builder::new()
            .name("cradle-copy".into())
            .spawn(move || help(h))
            .ok()
            .map(|_| h)
    }))?;
    (h.generation == crate::fork::generation()).then_some(h)
}

/// The helper's loop: take a job, share it, sleep again.
fn help(h: &Helper) {
    loop {
        let job = {
            let mut slot = h.slot.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(job) = slot.take() {
                    break job;
                }
                slot = h.ready.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        };
        // SeqCst: the raise before any claim (module docs); pairs with the
        // caller's SeqCst load of `busy`.
        job.busy.fetch_add(1, Ordering::SeqCst);
        job.run();
        // Release: the copied bytes happen-before the caller's Acquire read
        // of zero in `copy`.
        job.busy.fetch_sub(1, Ordering::Release);
    }
}

/// Copies `src` to `dst` (`src.len()` bytes), with the helper thread taking
/// some of the chunks when it can; returns once every byte is copied and
/// neither range is touched any more.
///
/// # Safety
///
/// `dst` must be valid for writes of `src.len()` bytes, not overlap `src`,
/// and not be read or written by anything else until this returns.
pub(crate) unsafe fn copy(src: &[u8], dst: *mut u8) {
    let helper = if src.len() >= PARALLEL_MIN {
        helper()
    } else {
        None
    };
    let Some(h) = helper else {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        return;
    };
    share(
        h,
        Job {
            op: Op::Copy,
            src: src.as_ptr(),
            dst,
            len: src.len(),
            chunk: CHUNK,
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
        },
    );
}

/// Unmaps `len` bytes at `ptr` (a range given up by its mapping, e.g.
/// `Mapping::into_raw`), in parts on two threads when it is large: a
/// `munmap` holds the process's mapping lock only for reading while it
/// tears down page tables, so two of them over disjoint ranges run in
/// parallel (100 MiB of 4 KiB pages: ~5.9 ms on one thread, ~3.5 ms on
/// two; docs/benchmarks.md §9). Returns once the whole range is unmapped.
///
/// # Safety
///
/// `ptr..ptr + len` must be a whole mapping (page-aligned) that nothing
/// uses or unmaps any more.
pub(crate) unsafe fn unmap(ptr: *mut u8, len: usize) {
    const PAGE: usize = 4096;
    let helper = if len >= PARALLEL_MIN { helper() } else { None };
    let Some(h) = helper else {
        // SAFETY: the caller's contract; see `Job::run` for a failure.
        let _ = unsafe { libc::munmap(ptr.cast(), len) };
        return;
    };
    share(
        h,
        Job {
            op: Op::Unmap,
            src: std::ptr::null(),
            dst: ptr,
            len,
            // Quarters: a helper that wakes late still takes a share.
            chunk: (len / 4).next_multiple_of(PAGE),
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
        },
    );
}

/// Offers `job` to the helper, runs it here too, and returns once every
/// chunk is done and the helper touches nothing of it any more.
fn share(h: &Helper, job: Job) {
    let job = Arc::new(job);
    {
        // A job the helper has not taken yet is replaced: its caller copies
        // it alone.
        let mut slot = h.slot.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(Arc::clone(&job));
    }
    h.ready.notify_one();
    job.run();
    // Every chunk is claimed; wait for the one the helper may be copying.
    // SeqCst (the first load): after this thread's failing claim in
    // `next`'s order (module docs); Acquire: pairs with the helper's Release
    // lowering, so its bytes are in place before we return.
    let mut spins = 0u32;
    while job.busy.load(Ordering::SeqCst) != 0 {
        spins += 1;
        if spins < 1 << 12 {
            std::hint::spin_loop();
        } else {
            // A helper preempted mid-chunk: let it run.
            std::thread::yield_now();
        }
    }
    // A job still in the slot (the helper never took it) is dropped here or
    // by the helper; it touches no byte either way (all chunks claimed).
    let mut slot = h.slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().is_some_and(|j| Arc::ptr_eq(j, &job)) {
        *slot = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(len: usize) {
        let src: Vec<u8> = (0..len).map(|i| (i * 31 + i / 4093) as u8).collect();
        let mut dst = vec![0u8; len];
        // SAFETY: `dst` is a separate vector of `len` bytes, used by nothing
        // else meanwhile.
        unsafe { copy(&src, dst.as_mut_ptr()) };
        assert!(src == dst, "copy of {len} bytes differs");
    }

    #[test]
    fn small_and_large_copies_are_exact() {
        for len in [
            0,
            1,
            4095,
            PARALLEL_MIN - 1,
            PARALLEL_MIN,
            PARALLEL_MIN + 1,
            3 * CHUNK + 17,
            9 * CHUNK,
        ] {
            check(len);
        }
    }

    /// A child forked while the helper runs copies alone (the helper's
    /// mutex may have been copied locked): it finishes, with exact bytes.
    #[test]
    fn a_forked_child_copies_without_the_helper() {
        check(PARALLEL_MIN); // the helper runs
        let len = PARALLEL_MIN + 5;
        let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut dst = vec![0u8; len];
        // SAFETY: the child runs only `copy` (no allocation, no lock: it
        // finds the helper of another generation) and `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            assert!(helper().is_none());
            // SAFETY: `dst` is this process's own copy, `len` bytes.
            unsafe { copy(&src, dst.as_mut_ptr()) };
            let ok = src == dst;
            // SAFETY: ends the child without running the parent's exit
            // handlers or test harness.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child, no hang (WNOHANG).
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break;
            }
            if std::time::Instant::now() > deadline {
                // SAFETY: our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("the forked child's copy hung");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child: {status}"
        );
        assert!(helper().is_some(), "the parent keeps its helper");
    }

    #[test]
    fn large_and_small_unmaps_unmap_everything() {
        for len in [4096, PARALLEL_MIN, 9 * CHUNK + 8192] {
            let seg = ipc_core::shm::Segment::create("unmap", len).unwrap();
            let map = seg.map(ipc_core::shm::Access::ReadWrite).unwrap();
            let (ptr, n) = map.into_raw();
            // SAFETY: a fresh mapping of `n` bytes given up above.
            unsafe { unmap(ptr, n) };
            // No writable mapping is left anywhere: the kernel grants the
            // seal a blob needs only then (EBUSY otherwise).
            seg.add_seals(ipc_core::shm::Seals::WRITE)
                .unwrap_or_else(|e| panic!("{n} bytes: a writable mapping is left: {e}"));
        }
    }

    #[test]
    fn concurrent_large_copies_are_exact() {
        std::thread::scope(|s| {
            for t in 0..4 {
                s.spawn(move || {
                    for k in 0..8 {
                        check(PARALLEL_MIN + t * 4099 + k * CHUNK / 3);
                    }
                });
            }
        });
    }
}
