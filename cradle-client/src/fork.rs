//! Fork detection without a system call per call.
//!
//! A `pthread_atfork` child handler bumps a process-wide generation; a client
//! remembers the generation it was created in and refuses to run in another.
//! A forked child shares the parent's mappings, so using the parent's client
//! there would make two producers on one ring: the check turns that into an
//! error instead of a corrupted ring.

use ipc_core::sync::{AtomicU64, Ordering};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTER: Once = Once::new();

extern "C" fn in_child() {
    // Relaxed: the child is single-threaded right after fork, and the value is
    // only compared by this same thread (or threads it spawns later, which
    // synchronize with it through their creation).
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The current fork generation (registers the handler on first use).
pub(crate) fn generation() -> u64 {
    REGISTER.call_once(|| {
        // SAFETY: `in_child` is an `extern "C" fn()` that only performs an atomic
        // add (async-signal-safe); the other two handlers are absent.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        // ENOMEM is the only documented failure; without the handler a child
        // would go undetected, so say so loudly rather than silently.
        assert_eq!(rc, 0, "pthread_atfork failed: {rc}");
    });
    // Relaxed: see `in_child`.
    GENERATION.load(Ordering::Relaxed)
}
