//! Methods every CRADLE server offers.

use crate::Method;

/// Echo: the response is the request's bytes.
#[derive(Debug)]
pub struct Ping;

impl Method for Ping {
    const NAME: &'static str = "cradle.ping";
    const VERSION: u32 = 1;
    type Request = Vec<u8>;
    type Response = Vec<u8>;
}

/// Server figures.
#[derive(Debug)]
pub struct Stats;

impl Method for Stats {
    const NAME: &'static str = "cradle.stats";
    const VERSION: u32 = 2;
    type Request = ();
    type Response = ServerStats;
}

/// The answer of [`Stats`].
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq, Default,
)]
#[rkyv(crate = rkyv)]
pub struct ServerStats {
    /// The server's pid.
    pub pid: u32,
    /// Worker threads.
    pub workers: u32,
    /// Milliseconds since the server started.
    pub uptime_ms: u64,
    /// Sessions open now.
    pub sessions: u64,
    /// Sessions accepted since start.
    pub sessions_total: u64,
    /// Calls answered since start (all sessions, closed ones included).
    pub calls_served: u64,
    /// Sessions closed because the client broke the protocol.
    pub sessions_killed: u64,
    /// Futex wakes and eventfd writes the server process has made
    /// (`ipc_core::doorbell::wake_syscalls()`): stays flat while clients spin.
    pub wake_syscalls: u64,
    /// Blob store and memory cache.
    pub blobs: crate::blob::BlobStats,
    /// The open sessions, by id: all of them, or the most active ones when
    /// they would not fit one frame (`sessions` counts them all).
    pub per_session: Vec<SessionStats>,
}

/// Per-session figures in [`ServerStats`].
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq, Default,
)]
#[rkyv(crate = rkyv)]
pub struct SessionStats {
    /// Session id.
    pub id: u64,
    /// The client's pid (from `SO_PEERCRED`).
    pub pid: u32,
    /// Calls answered in this session.
    pub calls: u64,
    /// Requests taken but not yet answered (offloaded).
    pub in_flight: u32,
    /// Responses waiting for room in the response ring.
    pub backlog: u32,
    /// Blob leases the session holds.
    pub leases: u64,
    /// Bytes of the blobs it holds leases on.
    pub pinned_bytes: u64,
    /// Bytes it is writing (author pool and unsealed large blobs).
    pub pool_bytes: u64,
}
