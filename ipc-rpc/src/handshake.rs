//! The control-socket handshake (see `docs/protocol.md`).
//!
//! The control socket is a Unix stream socket. It carries, in order:
//!
//! 1. client → server: one [`Hello`] (32 bytes);
//! 2. server → client: one [`Welcome`] (64 bytes) with, when `status` is
//!    [`STATUS_OK`], three descriptors in one `SCM_RIGHTS` message, in this
//!    order: the session segment (read-write), the session's doorbell eventfd
//!    (the client writes it to wake the server), the server's status segment
//!    (read-only, sealed); and a fourth, the client's wake descriptor (one
//!    end of a stream socketpair; the server sends 8 bytes on its own end to
//!    wake the client, which reads until `EAGAIN`), when the Hello asked for
//!    [`HELLO_WAKE_EVENTFD`];
//! 3. then nothing but liveness and 16-byte server → client messages told
//!    apart by their magic: a [`FdGrant`](crate::blob::FdGrant) with one
//!    descriptor, just before the response that announces it, and at most
//!    one [`Goodbye`] before the server closes on a clean shutdown. Either
//!    side closing the socket ends the session.
//!
//! All integers are little-endian (the structs are `#[repr(C)]` plain data on
//! a little-endian machine; the format is pinned to little-endian).

use bytemuck::{Pod, Zeroable};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Version of this protocol (handshake, segment layouts, frame format).
pub const PROTOCOL_VERSION: u32 = 1;

/// rkyv format features, as bits: little-endian (1), aligned (2), 32-bit
/// relative pointers (4). The workspace pins exactly these.
pub const FORMAT: u32 = 1 | 2 | 4;

/// Hash of the core schema: the protocol version, the frame header layout
/// and the built-in methods' ids. Peers with a different value cannot talk.
/// Application methods are checked per call by their id (an unknown id gets
/// an `UnknownMethod` error response).
pub const SCHEMA_HASH: u64 = {
    let mut h = crate::method_id("cradle.core", PROTOCOL_VERSION);
    h ^= (ipc_core::ring::HEADER_LEN as u64) << 32 | ipc_core::ring::FRAME_ALIGN as u64;
    h = h.rotate_left(17) ^ <crate::builtin::Ping as crate::Method>::ID;
    h = h.rotate_left(17) ^ <crate::builtin::Stats as crate::Method>::ID;
    h
};

/// `Hello::magic`.
pub const HELLO_MAGIC: u64 = u64::from_le_bytes(*b"CRDLHELO");
/// `Welcome::magic`.
pub const WELCOME_MAGIC: u64 = u64::from_le_bytes(*b"CRDLWLCM");
/// `Goodbye::magic`.
pub const GOODBYE_MAGIC: u64 = u64::from_le_bytes(*b"CRDLBYE!");

/// `Hello::flags`: the client sleeps on a descriptor (an async reactor), not
/// on futexes. The server then sends a fourth descriptor, the client's end of
/// a stream socketpair, and wakes this client by sending 8 bytes on its own
/// end wherever it would otherwise `FUTEX_WAKE` one of the session's words;
/// the client reads its end until `EAGAIN`. (The name is historical: it was
/// an eventfd, which the client shared with the server and could make
/// blocking.)
pub const HELLO_WAKE_EVENTFD: u32 = 1;

/// The session was created; three descriptors follow (four with
/// [`HELLO_WAKE_EVENTFD`]).
pub const STATUS_OK: u32 = 0;
/// `protocol` differs.
pub const STATUS_PROTOCOL_MISMATCH: u32 = 1;
/// `format` differs.
pub const STATUS_FORMAT_MISMATCH: u32 = 2;
/// `schema` differs.
pub const STATUS_SCHEMA_MISMATCH: u32 = 3;
/// The server has reached its session limit.
pub const STATUS_TOO_MANY_SESSIONS: u32 = 4;
/// The server is shutting down.
pub const STATUS_SHUTTING_DOWN: u32 = 5;
/// The server could not create the session (out of memory or descriptors).
pub const STATUS_RESOURCES: u32 = 6;

/// A person-readable reason for a `Welcome::status`.
///
/// ```
/// use ipc_rpc::handshake::{STATUS_TOO_MANY_SESSIONS, status_message};
///
/// assert_eq!(status_message(STATUS_TOO_MANY_SESSIONS), "the server has reached its session limit");
/// assert_eq!(status_message(999), "unknown status");
/// ```
pub fn status_message(status: u32) -> &'static str {
    match status {
        STATUS_OK => "ok",
        STATUS_PROTOCOL_MISMATCH => {
            "protocol version mismatch (client and server are different CRADLE releases)"
        }
        STATUS_FORMAT_MISMATCH => {
            "rkyv format mismatch (client and server were built with different wire formats)"
        }
        STATUS_SCHEMA_MISMATCH => {
            "core schema mismatch (client and server are different CRADLE releases)"
        }
        STATUS_TOO_MANY_SESSIONS => "the server has reached its session limit",
        STATUS_SHUTTING_DOWN => "the server is shutting down",
        STATUS_RESOURCES => "the server could not allocate the session (memory or descriptors)",
        _ => "unknown status",
    }
}

/// Client → server, first message.
///
/// ```
/// use ipc_rpc::handshake::{HELLO_WAKE_EVENTFD, Hello, STATUS_OK};
///
/// // An async client asks to be woken through a wake socket it can poll.
/// let hello = Hello { flags: HELLO_WAKE_EVENTFD, ..Hello::current() };
/// assert_eq!(hello.check(), Some(STATUS_OK));
/// assert_eq!(bytemuck::bytes_of(&hello).len(), 32);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Hello {
    /// [`HELLO_MAGIC`].
    pub magic: u64,
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// [`FORMAT`].
    pub format: u32,
    /// [`SCHEMA_HASH`].
    pub schema: u64,
    /// The client's pid (informative: stats and logs; the server trusts only
    /// `SO_PEERCRED`).
    pub pid: u32,
    /// [`HELLO_WAKE_EVENTFD`] or 0; servers ignore bits they do not know.
    pub flags: u32,
}

/// Server → client, the answer to [`Hello`].
///
/// ```
/// use ipc_rpc::handshake::{STATUS_SHUTTING_DOWN, WELCOME_MAGIC, Welcome, status_message};
///
/// // What a client makes of a refusal.
/// fn refusal(w: &Welcome) -> Option<&'static str> {
///     (w.status != ipc_rpc::handshake::STATUS_OK).then(|| status_message(w.status))
/// }
/// let w = Welcome { magic: WELCOME_MAGIC, status: STATUS_SHUTTING_DOWN, ..bytemuck::Zeroable::zeroed() };
/// assert_eq!(refusal(&w), Some("the server is shutting down"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Welcome {
    /// [`WELCOME_MAGIC`].
    pub magic: u64,
    /// The server's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// [`STATUS_OK`] or a `STATUS_*` error.
    pub status: u32,
    /// The server instance's epoch (random at start; handles carry it).
    pub epoch: u64,
    /// This session's id (unique within the server's life).
    pub session_id: u64,
    /// Capacity of each of the two rings in the session segment.
    pub ring_capacity: u32,
    /// Index of the worker that serves this session: its `waiting` word in the
    /// status segment is at [`crate::session::worker_waiting_offset`]`(worker)`.
    pub worker: u32,
    /// Exact length of the session segment (the client checks it with fstat).
    pub session_len: u64,
    /// Exact length of the status segment.
    pub status_len: u64,
    /// The server's pid.
    pub server_pid: u32,
    /// Reserved, 0.
    pub reserved: u32,
}

/// Server → client, optional, just before a clean close.
///
/// ```
/// use ipc_rpc::handshake::{GOODBYE_MAGIC, Goodbye, recv_with_fds, send_pod};
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixStream;
///
/// let (server, client) = UnixStream::pair()?;
/// send_pod(&server, &Goodbye { magic: GOODBYE_MAGIC, reason: 0 })?;
/// let mut buf = [0u8; 16];
/// recv_with_fds(client.as_fd(), &mut buf)?;
/// let bye: Goodbye = bytemuck::pod_read_unaligned(&buf);
/// assert_eq!(bye.magic, GOODBYE_MAGIC);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Goodbye {
    /// [`GOODBYE_MAGIC`].
    pub magic: u64,
    /// Reserved, 0.
    pub reason: u64,
}

const _: () = {
    assert!(size_of::<Hello>() == 32);
    assert!(size_of::<Welcome>() == 64);
    assert!(size_of::<Goodbye>() == 16);
    // A reader after the handshake takes 16-byte messages.
    assert!(size_of::<crate::blob::FdGrant>() == size_of::<Goodbye>());
};

impl Hello {
    /// This build's hello.
    ///
    /// ```
    /// use ipc_rpc::handshake::{Hello, PROTOCOL_VERSION, SCHEMA_HASH};
    ///
    /// let hello = Hello::current();
    /// assert_eq!((hello.protocol, hello.schema), (PROTOCOL_VERSION, SCHEMA_HASH));
    /// assert_eq!(hello.pid, std::process::id());
    /// ```
    pub fn current() -> Self {
        Self {
            magic: HELLO_MAGIC,
            protocol: PROTOCOL_VERSION,
            format: FORMAT,
            schema: SCHEMA_HASH,
            pid: std::process::id(),
            flags: 0,
        }
    }

    /// The status a server of this build answers: [`STATUS_OK`] or the first
    /// mismatch. `None` if the magic is wrong (not a CRADLE client).
    ///
    /// ```
    /// use ipc_rpc::handshake::{Hello, STATUS_OK, STATUS_SCHEMA_MISMATCH};
    ///
    /// assert_eq!(Hello::current().check(), Some(STATUS_OK));
    /// let other_release = Hello { schema: 1, ..Hello::current() };
    /// assert_eq!(other_release.check(), Some(STATUS_SCHEMA_MISMATCH));
    /// let stranger = Hello { magic: 0, ..Hello::current() };
    /// assert_eq!(stranger.check(), None);
    /// ```
    pub fn check(&self) -> Option<u32> {
        if self.magic != HELLO_MAGIC {
            None
        } else if self.protocol != PROTOCOL_VERSION {
            Some(STATUS_PROTOCOL_MISMATCH)
        } else if self.format != FORMAT {
            Some(STATUS_FORMAT_MISMATCH)
        } else if self.schema != SCHEMA_HASH {
            Some(STATUS_SCHEMA_MISMATCH)
        } else {
            Some(STATUS_OK)
        }
    }
}

/// Sends `bytes` and, if any, `fds` in one `SCM_RIGHTS` message. Retries on
/// EINTR; a short write of the bytes is an error (the messages are tiny).
///
/// ```
/// use ipc_rpc::handshake::{recv_with_fds, send_with_fds};
/// use std::io::{Read, Write};
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixStream;
///
/// let (a, b) = UnixStream::pair()?;
/// let (mut pipe_r, mut pipe_w) = std::io::pipe()?;
/// send_with_fds(a.as_fd(), b"here", &[pipe_w.as_fd()])?;
///
/// let mut buf = [0u8; 4];
/// let fds = recv_with_fds(b.as_fd(), &mut buf)?.expect("not at end of stream");
/// assert_eq!((&buf, fds.len()), (b"here", 1));
/// // The received descriptor is the same pipe.
/// std::fs::File::from(fds.into_iter().next().unwrap()).write_all(b"!")?;
/// drop(pipe_w);
/// let mut got = String::new();
/// pipe_r.read_to_string(&mut got)?;
/// assert_eq!(got, "!");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    loop {
        match sendmsg(sock, &[IoSlice::new(bytes)], &mut anc, SendFlags::NOSIGNAL) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::other(format!(
                    "short send: {n} of {} bytes",
                    bytes.len()
                )));
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// What [`read_hello`] found on a connection.
///
/// ```
/// use ipc_rpc::handshake::HelloRead;
/// let r = HelloRead::NeedMore;
/// assert_ne!(r, HelloRead::Closed);
/// ```
#[derive(Debug, PartialEq, Eq)]
pub enum HelloRead {
    /// Not all of the Hello's bytes yet: call again when the socket is
    /// readable.
    NeedMore,
    /// The peer closed, or the socket failed.
    Closed,
    /// A complete Hello (not checked yet: see [`Hello::check`]).
    Complete(Hello),
}

/// Reads what is available of a [`Hello`] into `buf[*got..]` without
/// blocking (`MSG_DONTWAIT`, whatever the socket's flags), the way the
/// server reads every connection in the handshake: a peer that sends its
/// Hello a byte at a time, or never, holds up nothing.
///
/// ```
/// use ipc_rpc::handshake::{Hello, HelloRead, read_hello};
/// use std::io::Write;
/// use std::os::fd::AsFd;
///
/// let (mut client, server) = std::os::unix::net::UnixStream::pair()?;
/// let mut buf = [0u8; size_of::<Hello>()];
/// let mut got = 0;
/// assert_eq!(read_hello(server.as_fd(), &mut buf, &mut got), HelloRead::NeedMore);
/// let hello = Hello::current();
/// client.write_all(bytemuck::bytes_of(&hello))?;
/// assert_eq!(read_hello(server.as_fd(), &mut buf, &mut got), HelloRead::Complete(hello));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn read_hello(
    sock: BorrowedFd<'_>,
    buf: &mut [u8; size_of::<Hello>()],
    got: &mut usize,
) -> HelloRead {
    let len = buf.len();
    while *got < len {
        match rustix::net::recv(sock, &mut buf[*got..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => return HelloRead::Closed,
            Ok((n, _)) => *got += n.min(len - *got),
            Err(rustix::io::Errno::AGAIN) => return HelloRead::NeedMore,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return HelloRead::Closed,
        }
    }
    HelloRead::Complete(bytemuck::pod_read_unaligned(&buf[..]))
}

/// Receives exactly `buf.len()` bytes, collecting any descriptors that come
/// with them (at most 4; more are closed and reported as an error). Returns
/// `Ok(None)` on a clean end of stream before the first byte.
///
/// ```
/// use ipc_rpc::handshake::recv_with_fds;
/// use std::io::Write;
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixStream;
///
/// let (mut a, b) = UnixStream::pair()?;
/// a.write_all(b"abc")?;
/// drop(a);
/// let mut buf = [0u8; 3];
/// let fds = recv_with_fds(b.as_fd(), &mut buf)?;
/// assert_eq!((&buf, fds.map(|f| f.len())), (b"abc", Some(0)));
/// assert!(recv_with_fds(b.as_fd(), &mut buf)?.is_none(), "the peer hung up");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Vec<OwnedFd>>> {
    let mut fds = Vec::new();
    let mut got = 0;
    while got < buf.len() {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let r = match recvmsg(sock, &mut iov, &mut anc, RecvFlags::CMSG_CLOEXEC) {
            Ok(r) => r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for msg in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = msg {
                fds.extend(rights);
            }
        }
        if r.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            return Err(io::Error::other(
                "descriptors truncated (more than expected)",
            ));
        }
        if r.bytes == 0 {
            if got == 0 && fds.is_empty() {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += r.bytes;
    }
    if fds.len() > 4 {
        return Err(io::Error::other("too many descriptors"));
    }
    Ok(Some(fds))
}

/// Sends a plain-data message without descriptors.
///
/// ```
/// use ipc_rpc::handshake::{Hello, recv_with_fds, send_pod};
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixStream;
///
/// let (client, server) = UnixStream::pair()?;
/// send_pod(&client, &Hello::current())?;
/// let mut buf = [0u8; size_of::<Hello>()];
/// recv_with_fds(server.as_fd(), &mut buf)?;
/// assert_eq!(bytemuck::pod_read_unaligned::<Hello>(&buf), Hello::current());
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn send_pod<T: Pod>(sock: impl AsFd, value: &T) -> io::Result<()> {
    send_with_fds(sock.as_fd(), bytemuck::bytes_of(value), &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

    #[test]
    fn hello_checks() {
        let h = Hello::current();
        assert_eq!(h.check(), Some(STATUS_OK));
        assert_eq!(Hello { magic: 1, ..h }.check(), None);
        assert_eq!(
            Hello { protocol: 99, ..h }.check(),
            Some(STATUS_PROTOCOL_MISMATCH)
        );
        assert_eq!(
            Hello { format: 0, ..h }.check(),
            Some(STATUS_FORMAT_MISMATCH)
        );
        assert_eq!(
            Hello { schema: 0, ..h }.check(),
            Some(STATUS_SCHEMA_MISMATCH)
        );
    }

    #[test]
    fn descriptors_travel_with_the_bytes() {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let (p, _q) = rustix::pipe::pipe().unwrap();
        let w = Welcome {
            magic: WELCOME_MAGIC,
            status: STATUS_OK,
            ..Zeroable::zeroed()
        };
        send_with_fds(a.as_fd(), bytemuck::bytes_of(&w), &[p.as_fd(), p.as_fd()]).unwrap();
        let mut buf = [0u8; size_of::<Welcome>()];
        let fds = recv_with_fds(b.as_fd(), &mut buf).unwrap().unwrap();
        assert_eq!(fds.len(), 2);
        assert_eq!(bytemuck::pod_read_unaligned::<Welcome>(&buf), w);
        drop(a);
        assert!(
            recv_with_fds(b.as_fd(), &mut buf).unwrap().is_none(),
            "clean EOF"
        );
    }
}
