//! A wake descriptor for a peer that must not be trusted: one end of a
//! socketpair, written with `MSG_DONTWAIT`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, SendFlags, Shutdown, SocketFlags, SocketType, send, shutdown, socketpair,
};

use super::{Waker, count_wake_syscall};
use crate::sync::{Atomics, StdAtomics};

/// The waking end of a socketpair whose other end a peer sleeps on.
///
/// Made for waking a process that may be hostile. An eventfd handed to the
/// peer shares its *open file description* with us: the peer can clear
/// `O_NONBLOCK` on it and fill its counter, and our next write blocks for
/// good. Here the two ends are distinct file descriptions, the peer holds
/// only its own, and every write passes `MSG_DONTWAIT | MSG_NOSIGNAL`, which
/// make it non-blocking and silent whatever the file status flags say:
///
/// * a full buffer (`EAGAIN`: the peer has not read the earlier wakes, so a
///   wake is pending anyway) is success;
/// * a peer that closed its end (`EPIPE`, `ECONNRESET`) has nobody to wake:
///   success too, and no `SIGPIPE`.
///
/// Our end is shut for reading, so whatever the peer writes into its end is
/// refused there (`EPIPE` on its side) instead of queueing here.
///
/// The peer sleeps until its end is readable (poll, epoll, tokio `AsyncFd`)
/// and then reads until `EAGAIN`: each wake is 8 bytes (a native-endian 1,
/// as on an eventfd), and several wakes may be queued.
///
/// ```
/// use ipc_core::doorbell::WakeSocket;
///
/// let (ours, theirs) = WakeSocket::pair()?;
/// ours.notify()?;
/// ours.notify()?;
/// let mut buf = [0u8; 64];
/// let n = rustix::io::read(&theirs, &mut buf)?;
/// assert_eq!(n, 16);
/// assert_eq!(u64::from_ne_bytes(buf[..8].try_into().unwrap()), 1);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct WakeSocket {
    /// Our end: written only, shut for reading.
    fd: OwnedFd,
}

impl WakeSocket {
    /// A new pair: our waking end and the peer's end (close-on-exec,
    /// non-blocking, a stream socket), to be sent to the peer.
    pub fn pair() -> io::Result<(Self, OwnedFd)> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        shutdown(&ours, Shutdown::Read)?;
        Ok((Self { fd: ours }, theirs))
    }

    /// Queue one wake (8 bytes) for the peer, never blocking. Counts as one
    /// wake syscall ([`wake_syscalls`](super::wake_syscalls)).
    ///
    /// A full buffer or a vanished peer is success (see the type's docs);
    /// other errors are returned.
    pub fn notify(&self) -> io::Result<()> {
        count_wake_syscall();
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        loop {
            match send(&self.fd, &1u64.to_ne_bytes(), flags) {
                Ok(_) => return Ok(()),
                Err(Errno::AGAIN | Errno::PIPE | Errno::CONNRESET) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for WakeSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Waker<StdAtomics> for WakeSocket {
    fn wake(&self, _seq: &<StdAtomics as Atomics>::U32) {
        // `notify` fails only on a broken socket of ours; the sleeper still
        // has its deadline and the peer-death path.
        let _ = self.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};

    #[test]
    fn a_peer_in_blocking_mode_that_never_reads_cannot_block_notify() {
        let (ours, theirs) = WakeSocket::pair().unwrap();
        // The peer makes its end blocking: a different file description.
        let fl = fcntl_getfl(&theirs).unwrap();
        fcntl_setfl(&theirs, fl - OFlags::NONBLOCK).unwrap();
        // Fill far beyond any socket buffer: every call returns.
        for _ in 0..100_000 {
            ours.notify().unwrap();
        }
        // Our own end can be made blocking too: MSG_DONTWAIT still holds.
        let fl = fcntl_getfl(&ours).unwrap();
        fcntl_setfl(&ours, fl - OFlags::NONBLOCK).unwrap();
        ours.notify().unwrap();
    }

    #[test]
    fn a_closed_peer_is_not_an_error() {
        let (ours, theirs) = WakeSocket::pair().unwrap();
        drop(theirs);
        ours.notify().unwrap();
        ours.notify().unwrap();
    }

    #[test]
    fn the_peer_cannot_write_into_our_end() {
        let (ours, theirs) = WakeSocket::pair().unwrap();
        let r = rustix::net::send(
            &theirs,
            &[0u8; 8],
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        );
        assert_eq!(r, Err(Errno::PIPE));
        drop(ours);
    }
}
