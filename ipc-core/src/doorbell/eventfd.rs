//! The eventfd syscall pair for [`Doorbell`](super::Doorbell).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll};
use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
use rustix::io::Errno;

use super::{Sleeper, Waker, count_wake_syscall};
use crate::sync::{Atomics, Ordering, StdAtomics};

/// The std futex word (what `StdAtomics` uses).
type U32 = <StdAtomics as Atomics>::U32;

/// The longest single `poll` timeout (a sleep may return early; the caller
/// loops until its deadline).
const MAX_SLEEP: Duration = Duration::from_secs(24 * 60 * 60);

/// A non-blocking, close-on-exec eventfd used as a doorbell.
///
/// The wake side writes 1 ([`notify`](Self::notify)); the sleep side polls
/// until the fd is readable ([`wait_readable`](Self::wait_readable)) and then
/// resets the counter ([`drain`](Self::drain)). The same fd can be registered
/// with tokio's `AsyncFd` or an epoll set instead of blocking in `poll`.
///
/// A reader that must not trust the writer (a server reading a doorbell its
/// client writes) need not read it at all: registered edge-triggered
/// (`EPOLLET`) in an epoll set, every successful write raises a new edge
/// whether or not the counter was already non-zero, so the reader learns of
/// each ring without a `read(2)` that a client in control of the shared file
/// status flags could turn into a blocking one (tested below).
///
/// As a [`Sleeper`] it ignores the futex `seq` word except as a shortcut: the
/// eventfd counter itself remembers a wake that happened before the sleep, so
/// no wake-up is lost between the waiter's last poll and its `poll(2)`. It
/// drains *before* returning, and the doorbell re-polls the condition after
/// that, so a drained wake never hides a frame.
///
/// ```
/// use ipc_core::doorbell::EventFd;
///
/// let efd = EventFd::new()?;
/// efd.notify()?;
/// efd.notify()?;
/// assert!(efd.wait_readable(None)?);
/// assert_eq!(efd.drain()?, 2);
/// assert_eq!(efd.drain()?, 0);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct EventFd {
    /// An eventfd in non-blocking mode.
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd (`EFD_CLOEXEC | EFD_NONBLOCK`, counter 0).
    pub fn new() -> io::Result<Self> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Self { fd })
    }

    /// Adopt an eventfd received from elsewhere (a peer, `SCM_RIGHTS`).
    ///
    /// Sets `O_NONBLOCK` on it if missing (the file description is shared
    /// with the sender, which uses it non-blocking too), so a hostile sender
    /// cannot make [`drain`](Self::drain) or [`notify`](Self::notify) block.
    /// If `fd` is not an eventfd, the operations fail with errors (never
    /// undefined behaviour).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let flags = fcntl_getfl(&fd)?;
        if !flags.contains(OFlags::NONBLOCK) {
            fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
        }
        Ok(Self { fd })
    }

    /// Borrow the descriptor (to register it with epoll or `AsyncFd`, or to
    /// send it to a peer).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Give up ownership of the descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Add 1 to the eventfd counter, waking a reader. Counts as one wake
    /// syscall ([`wake_syscalls`](super::wake_syscalls)).
    ///
    /// A counter already at its maximum (`EAGAIN`) is readable anyway, so
    /// that is success.
    pub fn notify(&self) -> io::Result<()> {
        count_wake_syscall();
        loop {
            match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
                Ok(8) => return Ok(()),
                Ok(_) => return Err(io::ErrorKind::WriteZero.into()),
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Read and reset the counter; returns the number of notifications
    /// since the last drain (0 if none: the fd is non-blocking).
    pub fn drain(&self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        loop {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(8) => return Ok(u64::from_ne_bytes(buf)),
                Ok(_) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Err(Errno::AGAIN) => return Ok(0),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Block until the fd is readable (`true`) or `deadline` passes
    /// (`false`). Does not drain. Signals (`EINTR`) are retried.
    pub fn wait_readable(&self, deadline: Option<Instant>) -> io::Result<bool> {
        loop {
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now()).min(MAX_SLEEP);
                    Some(Timespec::try_from(left).map_err(|_| io::ErrorKind::InvalidInput)?)
                }
            };
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, timeout.as_ref()) {
                Ok(0) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(false);
                    }
                    // Clamped timeout expired early: go round again.
                }
                Ok(_) => {
                    let revents = fds[0].revents();
                    if revents.contains(PollFlags::IN) {
                        return Ok(true);
                    }
                    if revents.intersects(PollFlags::ERR | PollFlags::NVAL | PollFlags::HUP) {
                        return Err(io::Error::other("eventfd poll error"));
                    }
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Waker<StdAtomics> for EventFd {
    fn wake(&self, _seq: &U32) {
        // The only failure of a write to a valid eventfd, a full counter, is
        // success (`notify`); any other error means the fd is not an eventfd
        // (a peer handed us something else). Dropping it is safe: the waiter
        // still has its deadline and the peer-death path.
        let _ = self.notify();
    }
}

impl Sleeper<StdAtomics> for EventFd {
    fn sleep(&self, seq: &U32, seen: u32, deadline: Option<Instant>) {
        // Acquire: pairs with the Release `fetch_add` in `Doorbell::ring`. A
        // shortcut only: a ring after `seen` is also in the eventfd counter.
        if seq.load(Ordering::Acquire) != seen {
            return;
        }
        // Errors and timeouts end the sleep; the doorbell re-polls and checks
        // its deadline (a sleeper may return early).
        if let Ok(true) = self.wait_readable(deadline) {
            let _ = self.drain();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};

    fn events(ep: &OwnedFd) -> usize {
        let mut buf = Vec::<Event>::with_capacity(4);
        let zero = Timespec::default();
        epoll::wait(ep, rustix::buffer::spare_capacity(&mut buf), Some(&zero)).unwrap();
        buf.len()
    }

    /// What a reader that never reads relies on: with `EPOLLET`, every
    /// write raises one edge, also while the counter is non-zero, also at
    /// the counter's maximum less one; nothing is reported without a write.
    #[test]
    fn every_write_raises_an_edge_without_any_read() {
        let efd = EventFd::new().unwrap();
        let ep = epoll::create(CreateFlags::CLOEXEC).unwrap();
        epoll::add(
            &ep,
            efd.as_fd(),
            EventData::new_u64(7),
            EventFlags::IN | EventFlags::ET,
        )
        .unwrap();
        assert_eq!(events(&ep), 0);
        for round in 0..1000 {
            efd.notify().unwrap();
            assert_eq!(events(&ep), 1, "round {round}: the write raised no edge");
            assert_eq!(events(&ep), 0, "round {round}: an edge without a write");
        }
        // Two writes before one wait: one event (enough for a reader that
        // then looks at all its work).
        efd.notify().unwrap();
        efd.notify().unwrap();
        assert_eq!(events(&ep), 1);
        assert_eq!(events(&ep), 0);
        // Near the maximum: the last write that fits still raises an edge.
        let max = 0xffff_ffff_ffff_fffe_u64;
        let have = 1002u64;
        rustix::io::write(&efd.fd, &(max - have - 1).to_ne_bytes()).unwrap();
        assert_eq!(events(&ep), 1);
        efd.notify().unwrap();
        assert_eq!(events(&ep), 1);
        // Full: the write fails (EAGAIN, success for `notify`), no edge.
        efd.notify().unwrap();
        assert_eq!(events(&ep), 0);
    }
}
