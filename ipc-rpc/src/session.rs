//! Shared segment layouts of a session (see `docs/protocol.md`).
//!
//! **Session segment** — one memfd per session, created by the server, sealed
//! `SHRINK | GROW | SEAL` before its descriptor is sent, mapped read-write by
//! both sides:
//!
//! ```text
//!  offset                     size              contents
//!  0                          128               segment header, magic SESSION_MAGIC, kind 0
//!  128                        region_len(C)     request ring  (client produces, server consumes)
//!  128 + region_len(C)        region_len(C)     response ring (server produces, client consumes)
//! ```
//!
//! where `C` is `Welcome::ring_capacity` and `region_len(C) = 256 + C`.
//!
//! **Status segment** — one per server, sealed `SHRINK | GROW | FUTURE_WRITE |
//! SEAL` before any descriptor leaves, mapped read-only by clients:
//!
//! ```text
//!  0        128   segment header, magic STATUS_MAGIC, kind 1
//!  128      128   epoch: u64 | server pid: u32 | workers: u32
//!  256+128i 128   worker i's `waiting` word (u32), one line each
//! ```
//!
//! A client that publishes a request rings the doorbell made of the request
//! ring's `data_seq` and its worker's `waiting` word: when the worker sleeps,
//! it writes 1 to the session's eventfd, which is in the worker's epoll set.

use ipc_core::ring::region_len;
use ipc_core::shm::HEADER_SIZE;

/// Magic of the session segment.
pub const SESSION_MAGIC: u64 = u64::from_le_bytes(*b"CRDLSESS");
/// Magic of the status segment.
pub const STATUS_MAGIC: u64 = u64::from_le_bytes(*b"CRDLSTAT");
/// Layout version of both segments.
pub const LAYOUT_VERSION: u32 = 1;
/// Header kind of the session segment.
pub const SESSION_KIND: u32 = 0;
/// Header kind of the status segment.
pub const STATUS_KIND: u32 = 1;

/// Default capacity of each ring: 256 KiB, so one message carries up to
/// `256 KiB / 2 - 48` bytes; larger data goes in a blob. Pages are touched
/// lazily, so an idle session costs a few pages, not 512 KiB.
pub const DEFAULT_RING_CAPACITY: usize = 256 << 10;

/// Offset of the request ring region.
///
/// ```
/// use ipc_rpc::session::{request_ring_offset, response_ring_offset};
///
/// // The request ring comes first, right after the segment header.
/// assert_eq!(request_ring_offset(), ipc_core::shm::HEADER_SIZE);
/// assert!(request_ring_offset() < response_ring_offset(4096));
/// ```
pub const fn request_ring_offset() -> usize {
    HEADER_SIZE
}

/// Offset of the response ring region.
///
/// ```
/// use ipc_core::ring::region_len;
/// use ipc_rpc::session::{request_ring_offset, response_ring_offset};
///
/// let cap = 1 << 16;
/// assert_eq!(response_ring_offset(cap), request_ring_offset() + region_len(cap));
/// ```
pub const fn response_ring_offset(capacity: usize) -> usize {
    HEADER_SIZE + region_len(capacity)
}

/// Length of a session segment with rings of `capacity`.
///
/// ```
/// use ipc_core::ring::region_len;
/// use ipc_rpc::session::{DEFAULT_RING_CAPACITY, response_ring_offset, session_len};
///
/// let cap = DEFAULT_RING_CAPACITY;
/// // The response ring ends the segment: a client checks fstat against this.
/// assert_eq!(session_len(cap), response_ring_offset(cap) + region_len(cap));
/// ```
pub const fn session_len(capacity: usize) -> usize {
    HEADER_SIZE + 2 * region_len(capacity)
}

/// Offset of the epoch (u64) in the status segment.
pub const STATUS_EPOCH_OFFSET: usize = HEADER_SIZE;
/// Offset of the server pid (u32) in the status segment.
pub const STATUS_PID_OFFSET: usize = HEADER_SIZE + 8;
/// Offset of the worker count (u32) in the status segment.
pub const STATUS_WORKERS_OFFSET: usize = HEADER_SIZE + 12;

/// Offset of worker `i`'s `waiting` word in the status segment.
///
/// ```
/// use ipc_rpc::session::worker_waiting_offset;
///
/// // One 128-byte line per worker, so that workers never share a cache line.
/// assert_eq!(worker_waiting_offset(1) - worker_waiting_offset(0), 128);
/// assert_eq!(worker_waiting_offset(0) % 128, 0);
/// ```
pub const fn worker_waiting_offset(worker: usize) -> usize {
    HEADER_SIZE + 128 + 128 * worker
}

/// Length of the status segment for `workers` workers (rounded up to a page).
///
/// ```
/// use ipc_rpc::session::{status_len, worker_waiting_offset};
///
/// assert_eq!(status_len(4), 4096);
/// assert!(status_len(64) >= worker_waiting_offset(64));
/// assert_eq!(status_len(64) % 4096, 0);
/// ```
pub const fn status_len(workers: usize) -> usize {
    let raw = worker_waiting_offset(workers);
    (raw + 4095) & !4095
}

const _: () = {
    assert!(request_ring_offset().is_multiple_of(128));
    assert!(response_ring_offset(DEFAULT_RING_CAPACITY).is_multiple_of(128));
};

/// The control socket's default path: `$XDG_RUNTIME_DIR/cradle/cradle.sock`,
/// else `/tmp/cradle-$UID/cradle.sock` (docs/design.md §3). `CRADLE_SOCKET` and
/// `--socket` override it in the binaries.
///
/// ```
/// let path = ipc_rpc::session::default_socket_path();
/// assert!(path.is_absolute());
/// assert_eq!(path.file_name().unwrap(), "cradle.sock");
/// ```
pub fn default_socket_path() -> std::path::PathBuf {
    // A relative XDG_RUNTIME_DIR is ignored, as the XDG spec asks.
    match std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty() && std::path::Path::new(d).is_absolute())
    {
        Some(dir) => std::path::PathBuf::from(dir)
            .join("cradle")
            .join("cradle.sock"),
        None => {
            let uid = rustix::process::geteuid().as_raw();
            std::path::PathBuf::from(format!("/tmp/cradle-{uid}")).join("cradle.sock")
        }
    }
}
