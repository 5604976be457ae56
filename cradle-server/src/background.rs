//! Threads that do the server's background work (closing freed blobs'
//! descriptors, writing the disk tier) run at a lower priority than the
//! threads that answer calls.
//!
//! Their work is large and never urgent: closing the last descriptor of a
//! 100 MiB blob frees 25,600 pages in the kernel (~5–8 ms of CPU), and the
//! disk tier's copy of it is ~40–90 ms of `pwrite`. On a two-core machine
//! either one, at the priority of the workers, takes a core away from a
//! call in flight (measured: a 100 MiB `put` that replaced a key ran
//! 2–9 ms longer while the reaper freed the old value; docs/benchmarks.md
//! §9). A nice value of 10 gives such a thread about a tenth of a core
//! against a busy worker (CFS weights 110 against 1024), so it yields to
//! calls but is never starved: the memory is freed and the entries reach
//! the disk on a machine that never goes idle too.

/// The nice value of the background threads.
pub(crate) const NICE: i32 = 10;

/// Lowers the calling thread's priority to [`NICE`]; a failure (a seccomp
/// filter, say) leaves it as it was, which costs only latency.
pub(crate) fn lower_this_thread() {
    // SAFETY: `gettid` has no preconditions; `setpriority` on our own
    // thread id changes only this thread's nice value (Linux applies
    // PRIO_PROCESS to a single thread when given a thread id).
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_calling_thread_alone_is_lowered() {
        std::thread::spawn(|| {
            super::lower_this_thread();
            // SAFETY: reads this thread's own nice value.
            let nice = unsafe {
                *libc::__errno_location() = 0;
                libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
            };
            assert_eq!(nice, super::NICE);
        })
        .join()
        .unwrap();
        // SAFETY: as above, for the test's own thread.
        let mine = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        assert_ne!(mine, super::NICE, "only the calling thread changes");
    }
}
