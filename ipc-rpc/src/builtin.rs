//! Methods every CRADLE server offers.

crate::method! {
    /// Echo: the response is the request's bytes.
    pub Ping = "cradle.ping" version 1: Vec<u8> => Vec<u8>;

    /// Server figures.
    pub Stats = "cradle.stats" version 2: () => ServerStats;
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
    /// One entry per open session.
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
