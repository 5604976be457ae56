//! Hot-path counters of this process: heap allocations (a counting global
//! allocator), minor page faults (`getrusage`), wake syscalls (ipc-core's own
//! counter), and CPU pinning.

use ipc_core::sync::{AtomicU64, Ordering};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io;

/// The system allocator, counting every allocation (alloc, alloc_zeroed,
/// realloc) of the process.
#[derive(Debug)]
pub(crate) struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn count() {
    // Relaxed: a statistic read as a before/after difference on this thread.
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees are ours; counting touches no memory
// the allocator hands out.
unsafe impl GlobalAlloc for Counting {
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

/// Allocations made by this process so far.
pub(crate) fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Minor page faults of this process so far (`getrusage(RUSAGE_SELF)`).
pub(crate) fn minor_faults() -> u64 {
    // SAFETY: `rusage` is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable `rusage` for the duration of the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ru.ru_minflt).unwrap_or(0)
}

/// Wake syscalls (futex wakes, eventfd writes) of this process so far.
pub(crate) fn wake_syscalls() -> u64 {
    ipc_core::doorbell::wake_syscalls()
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    pub(crate) allocs: u64,
    pub(crate) minflt: u64,
    pub(crate) wakes: u64,
}

impl Snapshot {
    pub(crate) fn now() -> Self {
        Self {
            wakes: wake_syscalls(),
            minflt: minor_faults(),
            allocs: allocations(),
        }
    }

    /// `later - self`, field by field.
    pub(crate) fn delta(&self, later: &Snapshot) -> Snapshot {
        Snapshot {
            allocs: later.allocs.saturating_sub(self.allocs),
            minflt: later.minflt.saturating_sub(self.minflt),
            wakes: later.wakes.saturating_sub(self.wakes),
        }
    }
}

/// Pins the calling thread (and what it forks afterwards) to `core` with
/// `sched_setaffinity`. Async-signal-safe: usable in `pre_exec`.
pub(crate) fn pin_to(core: usize) -> io::Result<()> {
    // SAFETY: `cpu_set_t` is a plain bit set; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if core >= 8 * size_of::<libc::cpu_set_t>() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `core` is below the set's capacity (checked above); CPU_SET
    // only sets one bit of `set`.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size we pass; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
