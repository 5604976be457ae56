//! Methods every CRADLE server offers.

crate::method! {
    /// Echo: the response is the request's bytes.
    ///
    /// ```
    /// # fn round_trip<T: ipc_rpc::Wire>(v: &T) -> T {
    /// #     let mut arena = ipc_rpc::rkyv::ser::allocator::Arena::new();
    /// #     T::decode(&ipc_rpc::encode_to_vec(v, &mut arena, 1 << 16).unwrap()).unwrap()
    /// # }
    /// use ipc_rpc::Method;
    /// use ipc_rpc::builtin::Ping;
    ///
    /// let request: <Ping as Method>::Request = b"are you there?".to_vec();
    /// // A server answers with the same bytes.
    /// let answer: <Ping as Method>::Response = round_trip(&request);
    /// assert_eq!(answer, request);
    /// assert_eq!((Ping::NAME, Ping::VERSION), ("cradle.ping", 1));
    /// ```
    pub Ping = "cradle.ping" version 1: Vec<u8> => Vec<u8>;

    /// Server figures.
    ///
    /// ```
    /// # fn round_trip<T: ipc_rpc::Wire>(v: &T) -> T {
    /// #     let mut arena = ipc_rpc::rkyv::ser::allocator::Arena::new();
    /// #     T::decode(&ipc_rpc::encode_to_vec(v, &mut arena, 1 << 16).unwrap()).unwrap()
    /// # }
    /// use ipc_rpc::Method;
    /// use ipc_rpc::builtin::{ServerStats, Stats};
    ///
    /// let _request: <Stats as Method>::Request = ();
    /// let answer: <Stats as Method>::Response = ServerStats { pid: 4242, workers: 2, ..Default::default() };
    /// assert_eq!(round_trip(&answer), answer);
    /// ```
    pub Stats = "cradle.stats" version 2: () => ServerStats;
}

/// The answer of [`Stats`].
///
/// ```
/// use ipc_rpc::builtin::{ServerStats, SessionStats};
///
/// let stats = ServerStats {
///     sessions: 2,
///     per_session: vec![
///         SessionStats { id: 1, calls: 10, ..Default::default() },
///         SessionStats { id: 2, calls: 5, in_flight: 1, ..Default::default() },
///     ],
///     ..Default::default()
/// };
/// let busy: Vec<u64> = stats.per_session.iter().filter(|s| s.in_flight > 0).map(|s| s.id).collect();
/// assert_eq!(busy, [2]);
/// ```
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
    /// Methods offered by client processes, and the calls routed to them.
    pub provided: ProvidedStats,
}

/// Provided methods in [`ServerStats`]: what is offered now, and how the
/// calls routed to providers ended since the server started
/// (`docs/protocol.md`, provided methods).
///
/// ```
/// use ipc_rpc::builtin::ProvidedStats;
///
/// let p = ProvidedStats { calls: 10, replied: 7, deadline_exceeded: 2, provider_gone: 1, ..Default::default() };
/// // Every call routed ends one way or another (or is still queued or held).
/// assert_eq!(p.calls, p.replied + p.deadline_exceeded + p.provider_gone + p.queued + p.in_flight + p.refused + p.abandoned);
/// ```
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq, Default,
)]
#[rkyv(crate = rkyv)]
pub struct ProvidedStats {
    /// Provided methods now.
    pub methods: u64,
    /// Registrations now (one provider of one method each).
    pub providers: u64,
    /// Calls waiting in the server for a provider now.
    pub queued: u64,
    /// Calls held by providers now.
    pub in_flight: u64,
    /// Calls routed (sent to a provider or queued) since start.
    pub calls: u64,
    /// Calls answered by a provider (REPLY or REPLY_ERROR).
    pub replied: u64,
    /// ... of which with an error (REPLY_ERROR).
    pub reply_errors: u64,
    /// Calls refused `Busy` (not counted in `calls`).
    pub busy: u64,
    /// Calls answered `DeadlineExceeded` after they were routed.
    pub deadline_exceeded: u64,
    /// Calls answered `ProviderGone`.
    pub provider_gone: u64,
    /// Routed calls that ended otherwise: an argument blob that failed its
    /// check when the call was delivered (`BadHandle`).
    pub refused: u64,
    /// Calls sent again to another provider (idempotent methods).
    pub resent: u64,
    /// Replies discarded: to a call cancelled or ended, never sent, or
    /// held by another provider.
    pub discarded: u64,
    /// Calls dropped or cancelled because their caller left.
    pub abandoned: u64,
}

/// Per-session figures in [`ServerStats`].
///
/// ```
/// use ipc_rpc::builtin::SessionStats;
///
/// // A session that holds blobs: leases pin their bytes on the server.
/// let s = SessionStats { id: 7, pid: 1234, leases: 3, pinned_bytes: 3 << 20, ..Default::default() };
/// assert_eq!(s.pinned_bytes / s.leases, 1 << 20);
/// ```
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
