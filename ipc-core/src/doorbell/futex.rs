//! The futex syscall pair for [`Doorbell`](super::Doorbell).

use std::time::{Duration, Instant};

use linux_futex::{AsFutex, Shared, TimedWaitError, WaitError};

use super::{Sleeper, Waker, count_wake_syscall};
use crate::sync::{Atomics, StdAtomics};

/// The std futex word (what `StdAtomics` uses).
type U32 = <StdAtomics as Atomics>::U32;

/// The longest single `futex_wait` timeout. A sleep may return early, so a
/// longer deadline just means another round; this keeps the `timespec`
/// conversion far from overflow.
const MAX_SLEEP: Duration = Duration::from_secs(24 * 60 * 60);

/// Sleep and wake with `FUTEX_WAIT` / `FUTEX_WAKE` on the `seq` word.
///
/// Uses *shared* futexes (no `FUTEX_PRIVATE_FLAG`): the kernel keys the wait
/// queue by the page's backing object and offset, so a waiter and a waker that
/// map the same memfd at different addresses in different processes meet.
///
/// The word must stay mapped while the call runs: `linux-futex` panics on
/// `EFAULT`. A `&AtomicU32` guarantees that for heap words; for shared
/// memory the segment (sealed against shrinking) outlives its doorbells.
///
/// ```
/// use ipc_core::doorbell::{Futex, Sleeper};
/// use ipc_core::sync::{AtomicU32, StdAtomics};
///
/// let seq = AtomicU32::new(1);
/// // The word no longer holds `seen` (0): returns at once.
/// Sleeper::<StdAtomics>::sleep(&Futex, &seq, 0, None);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Futex;

impl Waker<StdAtomics> for Futex {
    fn wake(&self, seq: &U32) {
        count_wake_syscall();
        // One waiter per doorbell (SPSC). The kernel takes the hash-bucket
        // lock that `futex_wait` holds while it compares `seq` with `seen`
        // and queues the waiter; our caller incremented `seq` before this
        // call, so a waiter is either already queued (and woken here) or will
        // find `seq != seen` and not sleep.
        let _woken = AsFutex::<Shared>::as_futex(seq).wake(1);
    }
}

impl Sleeper<StdAtomics> for Futex {
    fn sleep(&self, seq: &U32, seen: u32, deadline: Option<Instant>) {
        let futex = AsFutex::<Shared>::as_futex(seq);
        match deadline {
            None => match futex.wait(seen) {
                // Woken, or possibly spuriously: the caller re-polls.
                Ok(()) => {}
                // `seq != seen`: a ring happened after `seen` was read.
                Err(WaitError::WrongValue) => {}
                // EINTR: a signal; the caller re-polls and sleeps again.
                Err(WaitError::Interrupted) => {}
            },
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                match futex.wait_for(seen, left.min(MAX_SLEEP)) {
                    Ok(()) => {}
                    Err(TimedWaitError::WrongValue) => {}
                    Err(TimedWaitError::Interrupted) => {}
                    // The caller checks the deadline itself.
                    Err(TimedWaitError::TimedOut) => {}
                }
            }
        }
    }
}
