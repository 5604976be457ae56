//! The server: builder, start-up, run, shutdown.

use crate::acceptor::{AcceptorCtx, run_acceptor};
use crate::blobs::budget::MemoryLimits;
use crate::blobs::{BlobConfig, BlobCtx, BlobStore, SessionQuota};
use crate::error::{HandlerError, ServerError, StartError};
use crate::link::{HandleInner, WorkerLink, WorkerMsg};
use crate::memo::{Memo, MemoMethod};
use crate::methods::{self, Entry, Handler, Registry};
use crate::metrics::{self, MetricsAddr, cells::CallCells};
use crate::provided::entries::Known;
use crate::provided::{self, Limits as ProvidedLimits, Providers};
use crate::startup;
use crate::stats::Shared;
use crate::worker::{WorkerCtx, payload_limit, run_worker};
use ipc_core::doorbell::EventFd;
use ipc_core::sync::{AtomicBool, Ordering};
use ipc_rpc::Method;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// Default size of a server pool segment.
const DEFAULT_POOL_SEGMENT: u64 = 64 << 20;
/// Default size of a session's author pool.
const DEFAULT_AUTHOR_POOL: u64 = 8 << 20;

/// Configures and binds a [`Server`]. Created by [`Server::builder`].
///
/// ```no_run
/// use cradle_server::{HandlerError, Server};
/// use ipc_rpc::builtin::Ping;
///
/// let server = Server::builder()
///     .socket_path("/tmp/cradle-demo/cradle.sock".into())
///     .workers(2)
///     .bind()?;
/// let handle = server.handle();
/// std::thread::spawn(move || { /* later */ handle.shutdown(); });
/// server.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ServerBuilder {
    socket_path: Option<PathBuf>,
    workers: usize,
    ring_capacity: usize,
    max_sessions: usize,
    handshake_timeout: Duration,
    max_in_flight: u32,
    max_backlog: usize,
    max_backlog_bytes: Option<u64>,
    offload_threads: usize,
    spin: Duration,
    spin_fixed: bool,
    mem_cache_bytes: Option<u64>,
    max_held_bytes: Option<u64>,
    quota: SessionQuota,
    pool_segment_bytes: u64,
    author_pool_bytes: u64,
    disk_cache: Option<PathBuf>,
    disk_cache_bytes: Option<u64>,
    metrics: Option<MetricsAddr>,
    entries: Vec<Entry>,
    memos: Vec<MemoMethod>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("socket_path", &self.socket_path)
            .field("workers", &self.workers)
            .field("ring_capacity", &self.ring_capacity)
            .field("max_sessions", &self.max_sessions)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_backlog", &self.max_backlog)
            .field("offload_threads", &self.offload_threads)
            .field("spin", &self.spin)
            .field("spin_fixed", &self.spin_fixed)
            .field("mem_cache_bytes", &self.mem_cache_bytes)
            .field("quota", &self.quota)
            .field("disk_cache", &self.disk_cache)
            .field("metrics", &self.metrics)
            .field("methods", &self.entries.len())
            .field("memoized", &self.memos.len())
            .finish()
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            socket_path: None,
            workers: 1,
            ring_capacity: ipc_rpc::session::DEFAULT_RING_CAPACITY,
            max_sessions: 4096,
            handshake_timeout: Duration::from_secs(2),
            max_in_flight: 1024,
            max_backlog: 1024,
            max_backlog_bytes: None,
            offload_threads: 2,
            spin: crate::worker::DEFAULT_SPIN,
            spin_fixed: false,
            mem_cache_bytes: None,
            max_held_bytes: None,
            quota: SessionQuota::default(),
            pool_segment_bytes: DEFAULT_POOL_SEGMENT,
            author_pool_bytes: DEFAULT_AUTHOR_POOL,
            disk_cache: None,
            disk_cache_bytes: None,
            metrics: None,
            entries: Vec::new(),
            memos: Vec::new(),
        }
    }
}

impl ServerBuilder {
    /// The control socket (default [`default_socket_path`](crate::default_socket_path)).
    ///
    /// ```
    /// use cradle_server::Server;
    /// let b = Server::builder().socket_path("/run/user/1000/cradle/cradle.sock".into());
    /// # let _ = b;
    /// ```
    pub fn socket_path(mut self, path: PathBuf) -> Self {
        self.socket_path = Some(path);
        self
    }

    /// Worker threads serving rings (default 1).
    ///
    /// ```
    /// use cradle_server::Server;
    /// let b = Server::builder().workers(2);
    /// # let _ = b;
    /// ```
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Capacity of each of a session's two rings, a power of two (default
    /// [`DEFAULT_RING_CAPACITY`](ipc_rpc::session::DEFAULT_RING_CAPACITY)).
    ///
    /// ```
    /// use cradle_server::Server;
    /// let b = Server::builder().ring_capacity(1 << 20);
    /// # let _ = b;
    /// ```
    pub fn ring_capacity(mut self, bytes: usize) -> Self {
        self.ring_capacity = bytes;
        self
    }

    /// Most sessions open at once (default 4096).
    ///
    /// ```
    /// use cradle_server::Server;
    /// let b = Server::builder().max_sessions(256);
    /// # let _ = b;
    /// ```
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n;
        self
    }

    /// How long a new connection may take to send its Hello (default 2 s).
    ///
    /// ```
    /// use cradle_server::Server;
    /// let b = Server::builder().handshake_timeout(std::time::Duration::from_millis(500));
    /// # let _ = b;
    /// ```
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// Offloaded requests in flight per session (default 1024); beyond it a
    /// request is answered `QuotaExceeded` at once.
    ///
    /// ```
    /// use cradle_server::Server;
    /// let b = Server::builder().max_in_flight(64);
    /// # let _ = b;
    /// ```
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Responses queued per session while its response ring is full (default
    /// 1024); at this many the server stops taking the session's requests
    /// until the client drains its responses.
    ///
    /// ```
    /// use cradle_server::Server;
    /// let b = Server::builder().max_backlog(256);
    /// # let _ = b;
    /// ```
    pub fn max_backlog(mut self, n: usize) -> Self {
        self.max_backlog = n;
        self
    }

    /// Heap bytes of queued responses, all sessions together, beyond which
    /// the server stops taking requests from sessions that have responses
    /// queued (clients that do not read their answers) [default: an eighth
    /// of the memory cache budget, between 32 MiB and 1 GiB]. One session
    /// alone may queue at most four response rings' worth.
    ///
    /// ```no_run
    /// let server = cradle_server::Server::builder()
    ///     .max_backlog_bytes(64 << 20)
    ///     .bind()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_backlog_bytes(mut self, bytes: u64) -> Self {
        self.max_backlog_bytes = Some(bytes);
        self
    }

    /// The longest a worker keeps polling after its last frame before it
    /// goes to sleep in `epoll_wait` (default 100 µs). The spin is learned
    /// below this limit (it shrinks while spins end in a sleep anyway) and
    /// skipped while the machine has no CPU to spare (docs/architecture.md
    /// §13). Longer keeps spinning clients from needing a wake-up syscall on
    /// a noisy machine, at the cost of up to that much CPU after a burst.
    ///
    /// ```
    /// use cradle_server::Server;
    /// let b = Server::builder().spin(std::time::Duration::from_millis(5));
    /// # let _ = b;
    /// ```
    pub fn spin(mut self, d: Duration) -> Self {
        self.spin = d;
        self
    }

    /// Spin the whole [`spin`](Self::spin) after every burst, whatever the
    /// load (default: off, the spin is learned and skipped on a busy
    /// machine). For benchmarks and tests that must see no wake-up syscall
    /// while clients spin; on a busy machine it costs clients the latency
    /// docs/architecture.md §13 describes.
    ///
    /// ```
    /// use cradle_server::Server;
    /// let b = Server::builder()
    ///     .spin(std::time::Duration::from_millis(20))
    ///     .spin_fixed(true);
    /// # let _ = b;
    /// ```
    pub fn spin_fixed(mut self, fixed: bool) -> Self {
        self.spin_fixed = fixed;
        self
    }

    /// Threads of the offload pool (default 2).
    ///
    /// ```
    /// use cradle_server::Server;
    /// let b = Server::builder().offload_threads(4);
    /// # let _ = b;
    /// ```
    pub fn offload_threads(mut self, n: usize) -> Self {
        self.offload_threads = n;
        self
    }

    /// The memory cache's budget in bytes (default: a quarter of
    /// `MemAvailable`, at most half the cgroup's `memory.max`). `bind`
    /// refuses a budget above either.
    ///
    /// ```
    /// use cradle_server::Server;
    /// let b = Server::builder().mem_cache_bytes(512 << 20);
    /// # let _ = b;
    /// ```
    pub fn mem_cache_bytes(mut self, bytes: u64) -> Self {
        self.mem_cache_bytes = Some(bytes);
        self
    }

    /// Server-wide limit on blob bytes held outside the memory cache
    /// (leased, pinned by handlers, waiting for the disk writer) plus bytes
    /// being written (author pools, unsealed blobs, handlers' result
    /// blobs), all sessions together; an allocation that would cross it
    /// fails with `QuotaExceeded`. Default: twice the memory cache's
    /// budget, at least 256 MiB.
    ///
    /// ```
    /// let b = cradle_server::Server::builder().max_held_bytes(1 << 30);
    /// ```
    pub fn max_held_bytes(mut self, bytes: u64) -> Self {
        self.max_held_bytes = Some(bytes);
        self
    }

    /// Keep a disk tier behind the memory cache in `dir` (created 0700 if
    /// missing; must be writable). Without this call the server has none.
    /// [`default_disk_cache_dir`](crate::default_disk_cache_dir) is where the
    /// `cradle-server` binary puts it.
    ///
    /// ```
    /// use cradle_server::Server;
    /// let b = Server::builder().disk_cache(cradle_server::default_disk_cache_dir());
    /// # let _ = b;
    /// ```
    pub fn disk_cache(mut self, dir: PathBuf) -> Self {
        self.disk_cache = Some(dir);
        self
    }

    /// The disk tier's budget in bytes (default: 16 GiB, at most half the
    /// space available on its filesystem at start).
    ///
    /// ```
    /// use cradle_server::Server;
    /// let b = Server::builder().disk_cache_bytes(50 << 30);
    /// # let _ = b;
    /// ```
    pub fn disk_cache_bytes(mut self, bytes: u64) -> Self {
        self.disk_cache_bytes = Some(bytes);
        self
    }

    /// Per-session blob limits (default [`SessionQuota::default`]).
    ///
    /// ```
    /// use cradle_server::{Server, SessionQuota};
    /// let b = Server::builder().session_quota(SessionQuota {
    ///     leases: 1024,
    ///     ..SessionQuota::default()
    /// });
    /// # let _ = b;
    /// ```
    pub fn session_quota(mut self, quota: SessionQuota) -> Self {
        self.quota = quota;
        self
    }

    /// Size of each server pool segment for small blobs (default 64 MiB).
    ///
    /// ```
    /// use cradle_server::Server;
    /// let b = Server::builder().pool_segment_bytes(16 << 20);
    /// # let _ = b;
    /// ```
    pub fn pool_segment_bytes(mut self, bytes: u64) -> Self {
        self.pool_segment_bytes = bytes;
        self
    }

    /// Size of each session's author pool (default 8 MiB, created on the
    /// session's first small blob).
    ///
    /// ```
    /// use cradle_server::Server;
    /// let b = Server::builder().author_pool_bytes(4 << 20);
    /// # let _ = b;
    /// ```
    pub fn author_pool_bytes(mut self, bytes: u64) -> Self {
        self.author_pool_bytes = bytes;
        self
    }

    /// Serves the server's figures at `GET /metrics` on `addr`, in the
    /// Prometheus (OpenMetrics) text format (default: no endpoint). With
    /// it, every call is also timed and counted per method and outcome.
    ///
    /// ```
    /// let b = cradle_server::Server::builder().metrics("127.0.0.1:9464".parse()?);
    /// # let _ = b;
    /// # Ok::<(), String>(())
    /// ```
    pub fn metrics(mut self, addr: MetricsAddr) -> Self {
        self.metrics = Some(addr);
        self
    }

    /// Serves method `M` on the offload pool, with access to blobs: the
    /// handler may read blobs the client passes by handle and create result
    /// blobs ([`BlobCtx`]), whose handles it returns in the response.
    ///
    /// ```
    /// use cradle_server::Server;
    /// use ipc_rpc::example::{Invert, Inverted};
    ///
    /// // Reads the argument blob, returns an inverted copy as a new blob.
    /// let b = Server::builder().offload_blob::<Invert, _>(|ctx, handle| {
    ///     let input = ctx.read(&handle)?;
    ///     let mut out = ctx.create(input.bytes().len())?;
    ///     for (o, i) in out.bytes_mut().iter_mut().zip(input.bytes()) {
    ///         *o = !*i;
    ///     }
    ///     Ok(Inverted { checksum: 0, inverted: out.seal()? })
    /// });
    /// # let _ = b;
    /// ```
    pub fn offload_blob<M, F>(self, f: F) -> Self
    where
        M: Method,
        F: Fn(&BlobCtx<'_>, M::Request) -> Result<M::Response, HandlerError>
            + Send
            + Sync
            + 'static,
    {
        self.register::<M>(Handler::Offload(methods::offload_blob::<M, F>(f)))
    }

    /// Serves method `M` on the worker thread. For short handlers that never
    /// block. A panic is caught and answered `HandlerPanicked`.
    ///
    /// ```
    /// use cradle_server::{HandlerError, Server};
    /// use ipc_rpc::builtin::Ping;
    ///
    /// // A second echo under another name would be registered the same way.
    /// let b = Server::builder().inline::<Ping, _>(|bytes: Vec<u8>| {
    ///     if bytes.len() > 1024 {
    ///         return Err(HandlerError::new("at most 1024 bytes"));
    ///     }
    ///     Ok(bytes)
    /// });
    /// // Ping is a builtin: binding this builder fails with DuplicateMethod.
    /// # let _ = b;
    /// ```
    pub fn inline<M, F>(self, f: F) -> Self
    where
        M: Method,
        F: Fn(M::Request) -> Result<M::Response, HandlerError> + Send + Sync + 'static,
    {
        self.register::<M>(Handler::Inline(methods::inline::<M, F>(f)))
    }

    /// Serves method `M` on the offload pool; the answer is published later
    /// by request id. For handlers that block or take long.
    ///
    /// ```
    /// use cradle_server::Server;
    /// use ipc_rpc::builtin::Ping;
    ///
    /// let b = Server::builder().offload::<Ping, _>(|bytes: Vec<u8>| {
    ///     std::thread::sleep(std::time::Duration::from_millis(10)); // may block
    ///     Ok(bytes)
    /// });
    /// # let _ = b;
    /// ```
    pub fn offload<M, F>(self, f: F) -> Self
    where
        M: Method,
        F: Fn(M::Request) -> Result<M::Response, HandlerError> + Send + Sync + 'static,
    {
        self.register::<M>(Handler::Offload(methods::offload::<M, F>(f)))
    }

    /// Serves method `M` on the offload pool like
    /// [`offload_blob`](Self::offload_blob), **memoized**: its answer
    /// depends only on its request and on the bytes of the blobs the
    /// request passes, so the server answers a call from the shared cache
    /// when it has answered an equal one before (this run or, through the
    /// disk tier, an earlier one), and identical calls in flight share one
    /// run. `M::Request` lists the blobs it passes and `M::Response` the
    /// blobs it returns ([`BlobRefs`](ipc_rpc::memo::BlobRefs)); result
    /// blobs are kept with the entry and leased to every caller it answers.
    /// A failed run caches nothing. See `docs/architecture.md` §14.
    ///
    /// ```
    /// use cradle_server::Server;
    /// use ipc_rpc::example::{Work, WorkDone};
    ///
    /// // Hashes the input blob; a second call with equal bytes is a cache hit.
    /// let b = Server::builder().memoized::<Work, _>(|ctx, req| {
    ///     let value = match req.input {
    ///         Some(h) => ctx.read(&h)?.bytes().iter().map(|&b| u64::from(b)).sum(),
    ///         None => 0,
    ///     };
    ///     Ok(WorkDone { value, run: 1, output: None })
    /// });
    /// # let _ = b;
    /// ```
    pub fn memoized<M, F>(mut self, f: F) -> Self
    where
        M: Method,
        M::Request: ipc_rpc::memo::BlobRefs,
        M::Response: ipc_rpc::memo::BlobRefs,
        F: Fn(&BlobCtx<'_>, M::Request) -> Result<M::Response, HandlerError>
            + Send
            + Sync
            + 'static,
    {
        self.memos.push(MemoMethod::compiled::<M, F>(f));
        self
    }

    fn register<M: Method>(mut self, handler: Handler) -> Self {
        self.entries.push(Entry {
            id: M::ID,
            name: M::NAME,
            version: M::VERSION,
            schema_hash: M::SCHEMA_HASH,
            handler,
        });
        self
    }

    fn validate(&self) -> Result<(), StartError> {
        let bad = |m: String| Err(StartError::InvalidConfig(m));
        if !(1..=1024).contains(&self.workers) {
            return bad(format!("workers must be 1..=1024, not {}", self.workers));
        }
        if let Err(e) = ipc_core::ring::check_capacity(self.ring_capacity) {
            return bad(format!("ring capacity: {e}"));
        }
        if self.max_sessions == 0 {
            return bad("max_sessions must be at least 1".into());
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1".into());
        }
        if self.max_backlog_bytes == Some(0) {
            return bad("max_backlog_bytes must be more than zero".into());
        }
        if self.max_backlog == 0 {
            return bad("max_backlog must be at least 1".into());
        }
        for (what, n) in [
            ("pool segments", self.pool_segment_bytes),
            ("author pools", self.author_pool_bytes),
        ] {
            if !(2 * ipc_rpc::blob::DATA_OFFSET..=1 << 40).contains(&n) || !n.is_multiple_of(4096) {
                return bad(format!(
                    "{what} must be a multiple of 4096 bytes, 8 KiB to 1 TiB, not {n}"
                ));
            }
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout must be more than zero".into());
        }
        let offloads = self
            .entries
            .iter()
            .any(|e| matches!(e.handler, Handler::Offload(_)));
        if (offloads || !self.memos.is_empty()) && self.offload_threads == 0 {
            return bad("offload handlers are registered but offload_threads is 0".into());
        }
        Ok(())
    }

    /// Runs every start-up check and binds the socket (docs/design.md §3, §10):
    /// socket directory (created 0700 if missing; must be ours, 0700, not a
    /// symlink), singleton lock, stale socket removal, bind + listen,
    /// `PR_SET_DUMPABLE 0`, `RLIMIT_NOFILE` raised, status segment sealed.
    ///
    /// ```no_run
    /// let server = cradle_server::Server::builder()
    ///     .socket_path("/tmp/cradle-demo/cradle.sock".into())
    ///     .bind()?;
    /// println!("listening on {}", server.socket_path().display());
    /// # Ok::<(), cradle_server::StartError>(())
    /// ```
    pub fn bind(self) -> Result<Server, StartError> {
        self.validate()?;
        // The memory budget is checked before anything touches the socket
        // directory.
        let cache_budget = self.checked_cache_budget()?;
        let path = self
            .socket_path
            .clone()
            .unwrap_or_else(startup::default_socket_path);
        let (dir, name) = startup::split_socket_path(&path)?;
        startup::set_not_dumpable()?;
        startup::raise_nofile_limit();
        let euid = rustix::process::geteuid().as_raw();
        startup::ensure_socket_dir(&dir, euid)?;
        let lock = startup::take_lock(&dir, &name, &path)?;
        // After the singleton lock, so that a second server hears "already
        // running" rather than "disk cache in use"; before the socket, so
        // that a server that cannot use its disk cache never listens.
        let disk = match &self.disk_cache {
            Some(dir) => Some(crate::blobs::open_tier(dir, self.disk_cache_bytes)?),
            None => None,
        };
        startup::remove_stale(&path)?;
        let listener = startup::bind_listener(&path)?;
        let socket_file = SocketFile::new(path.clone());

        let epoch = startup::random_epoch();
        let status = startup::create_status_segment(self.workers, epoch)?;
        let backlog_limit = self
            .max_backlog_bytes
            .unwrap_or((cache_budget / 8).clamp(32 << 20, 1 << 30));
        let shared = Arc::new(Shared::new(self.workers).with_backlog_limit(backlog_limit));
        let mut store = BlobStore::new(
            epoch,
            BlobConfig {
                pool_segment_len: self.pool_segment_bytes,
                author_pool_len: self.author_pool_bytes,
                cache_budget,
                held_limit: self
                    .max_held_bytes
                    .unwrap_or_else(|| crate::blobs::default_held_limit(cache_budget)),
                quota: self.quota,
            },
        );
        if let Some(tier) = disk {
            store = store.with_disk(tier);
        }
        let store = Arc::new(store);

        let (handle, receivers) = control_links(self.workers)?;
        let providers = Arc::new(Providers::new(ProvidedLimits::default(), self.workers));
        let max_payload = ipc_core::ring::max_payload_len(self.ring_capacity);
        let memo = Memo::new(Arc::clone(&store), self.memos);
        let mut entries = self.entries;
        entries.extend(memo.entries());
        entries.extend(methods::builtin_entries(
            &shared,
            &store,
            &providers,
            max_payload,
        ));
        let mut known: Vec<Known> = entries
            .iter()
            .map(|e| Known {
                id: e.id,
                name: e.name,
                version: e.version,
                schema_hash: e.schema_hash,
            })
            .collect();
        known.extend(provided::entries::known_self());
        entries.extend(provided::entries::entries(
            &providers,
            &memo,
            Arc::clone(&handle.links),
            known,
            max_payload,
        ));
        let names: Vec<(u64, &'static str)> = entries.iter().map(|e| (e.id, e.name)).collect();
        let registry = Registry::new(entries)
            .map_err(|(name, id)| StartError::DuplicateMethod { name, id })?;
        let metrics = match &self.metrics {
            Some(addr) => Some(MetricsEndpoint {
                listener: metrics::Listener::bind(addr).map_err(|source| StartError::System {
                    what: "binding the metrics endpoint",
                    source,
                })?,
                calls: Arc::new(CallCells::new(&names, self.workers)),
            }),
            None => None,
        };
        Ok(Server {
            metrics,
            path,
            listener,
            status,
            epoch,
            registry: Arc::new(registry),
            shared,
            store,
            providers,
            memo,
            handle,
            receivers,
            ring_capacity: self.ring_capacity,
            max_sessions: self.max_sessions,
            handshake_timeout: self.handshake_timeout,
            max_in_flight: self.max_in_flight,
            max_backlog: self.max_backlog,
            offload_threads: self.offload_threads,
            spin: self.spin,
            spin_fixed: self.spin_fixed,
            euid,
            socket_file,
            _lock: lock,
        })
    }

    /// The memory cache's budget: the one set, if `/proc/meminfo` and the
    /// cgroup allow it, else the default derived from them.
    fn checked_cache_budget(&self) -> Result<u64, StartError> {
        let limits = MemoryLimits::read().map_err(|e| StartError::System {
            what: "read /proc/meminfo",
            source: e,
        })?;
        let budget = match self.mem_cache_bytes {
            Some(b) => {
                limits.check(b).map_err(StartError::InvalidConfig)?;
                b
            }
            None => limits.default_budget(),
        };
        tracing::debug!(
            budget = %bytesize::ByteSize(budget).display().iec(),
            available = %bytesize::ByteSize(limits.available).display().iec(),
            cgroup_max = ?limits.cgroup_max.map(|b| bytesize::ByteSize(b).display().iec().to_string()),
            "memory cache budget"
        );
        Ok(budget)
    }
}

/// Removes the socket file on drop, if it is still the one we bound.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl SocketFile {
    fn new(path: PathBuf) -> Self {
        let id = std::fs::symlink_metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Self { path, id }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let now = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now.is_some() && now == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The shutdown handle every thread shares and, per worker, its channel's
/// receiving end.
fn control_links(
    workers: usize,
) -> Result<(Arc<HandleInner>, Vec<Receiver<WorkerMsg>>), StartError> {
    let sys = |e: std::io::Error| StartError::System {
        what: "eventfd",
        source: e,
    };
    let mut links = Vec::with_capacity(workers);
    let mut receivers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (link, rx) = WorkerLink::new().map_err(sys)?;
        links.push(link);
        receivers.push(rx);
    }
    let handle = Arc::new(HandleInner {
        shutdown: AtomicBool::new(false),
        acceptor_bell: EventFd::new().map_err(sys)?,
        links: links.into(),
    });
    Ok((handle, receivers))
}

/// Stops a running server from any thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    inner: Arc<HandleInner>,
}

impl ServerHandle {
    /// Asks the server to shut down: every session gets a `Goodbye`, the
    /// socket file is removed and [`Server::run`] returns `Ok`. Idempotent.
    ///
    /// ```no_run
    /// let server = cradle_server::Server::builder().bind()?;
    /// let handle = server.handle();
    /// std::thread::spawn(move || {
    ///     std::thread::sleep(std::time::Duration::from_secs(60));
    ///     handle.shutdown();
    /// });
    /// server.run()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(&self) {
        // Release: pairs with the Acquire loads in the acceptor and worker
        // loops, which then see everything done before the request.
        self.inner.shutdown.store(true, Ordering::Release);
        if let Err(e) = self.inner.acceptor_bell.notify() {
            tracing::error!(error = %e, "cannot wake the acceptor");
        }
        for link in self.inner.links.iter() {
            link.wake();
        }
    }

    /// Whether shutdown was requested.
    ///
    /// ```no_run
    /// let server = cradle_server::Server::builder().bind()?;
    /// let handle = server.handle();
    /// assert!(!handle.is_shutting_down());
    /// handle.shutdown();
    /// assert!(handle.is_shutting_down());
    /// server.run()?; // returns at once
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_shutting_down(&self) -> bool {
        // Acquire: pairs with the Release store in `shutdown`.
        self.inner.shutdown.load(Ordering::Acquire)
    }
}

/// A bound server, ready to [`run`](Self::run).
pub struct Server {
    path: PathBuf,
    listener: OwnedFd,
    status: startup::StatusSegment,
    epoch: u64,
    registry: Arc<Registry>,
    shared: Arc<Shared>,
    store: Arc<BlobStore>,
    providers: Arc<Providers>,
    memo: Arc<Memo>,
    handle: Arc<HandleInner>,
    receivers: Vec<Receiver<WorkerMsg>>,
    ring_capacity: usize,
    max_sessions: usize,
    handshake_timeout: Duration,
    max_in_flight: u32,
    max_backlog: usize,
    offload_threads: usize,
    spin: Duration,
    spin_fixed: bool,
    euid: u32,
    /// Dropped before the lock: the socket goes first.
    socket_file: SocketFile,
    _lock: File,
    metrics: Option<MetricsEndpoint>,
}

/// The metrics endpoint of a bound server and the per-method cells the
/// workers and the offload pool count into.
#[derive(Debug)]
struct MetricsEndpoint {
    listener: metrics::Listener,
    calls: Arc<CallCells>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("path", &self.path)
            .field("epoch", &self.epoch)
            .field("workers", &self.receivers.len())
            .finish()
    }
}

impl Server {
    /// A builder with the defaults.
    ///
    /// ```
    /// let builder = cradle_server::Server::builder().workers(2);
    /// # let _ = builder;
    /// ```
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// A handle that can stop [`run`](Self::run) from another thread.
    ///
    /// ```no_run
    /// let server = cradle_server::Server::builder().bind()?;
    /// let handle = server.handle(); // Clone + Send: stop the server from anywhere
    /// # drop(handle);
    /// # Ok::<(), cradle_server::StartError>(())
    /// ```
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            inner: Arc::clone(&self.handle),
        }
    }

    /// The control socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// The disk cache's directory, if the server has one.
    ///
    /// ```no_run
    /// let server = cradle_server::Server::builder().bind()?;
    /// assert_eq!(server.disk_cache_dir(), None); // no disk_cache() asked for
    /// # Ok::<(), cradle_server::StartError>(())
    /// ```
    pub fn disk_cache_dir(&self) -> Option<&Path> {
        self.store.disk_dir()
    }

    /// The memory cache's budget in bytes.
    ///
    /// ```no_run
    /// let server = cradle_server::Server::builder().mem_cache_bytes(64 << 20).bind()?;
    /// assert_eq!(server.cache_budget(), 64 << 20);
    /// # Ok::<(), cradle_server::StartError>(())
    /// ```
    pub fn cache_budget(&self) -> u64 {
        self.store.stats().cache_budget
    }

    /// This instance's epoch (random at start).
    ///
    /// ```no_run
    /// let server = cradle_server::Server::builder().bind()?;
    /// println!("instance {:016x}", server.epoch()); // blob handles of other instances are refused
    /// # Ok::<(), cradle_server::StartError>(())
    /// ```
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The TCP address the metrics endpoint listens on, if it has one
    /// ([`ServerBuilder::metrics`]; port 0 picks a free port).
    ///
    /// ```no_run
    /// let server = cradle_server::Server::builder()
    ///     .metrics("127.0.0.1:0".parse()?)
    ///     .bind()?;
    /// println!("scrape http://{}/metrics", server.metrics_addr().unwrap());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.listener.local_addr())
    }

    /// Serves until [`ServerHandle::shutdown`]; then says goodbye to every
    /// session, removes the socket file and returns `Ok`.
    ///
    /// ```no_run
    /// let server = cradle_server::Server::builder().bind()?;
    /// server.run()?; // until ServerHandle::shutdown; see also run_until_signal
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run(self) -> Result<(), ServerError> {
        let Server {
            path,
            listener,
            status,
            epoch,
            registry,
            shared,
            store,
            providers,
            memo,
            handle,
            receivers,
            ring_capacity,
            max_sessions,
            handshake_timeout,
            max_in_flight,
            max_backlog,
            offload_threads,
            spin,
            spin_fixed,
            euid,
            socket_file,
            _lock,
            metrics,
        } = self;
        let calls = metrics.as_ref().map(|m| Arc::clone(&m.calls));
        let stop = ServerHandle {
            inner: Arc::clone(&handle),
        };
        store.start_disk().map_err(ServerError::Spawn)?;
        memo.start(
            Arc::clone(&handle.links),
            Arc::clone(&providers),
            payload_limit(ring_capacity),
        )
        .map_err(ServerError::Spawn)?;
        let jobs = crate::offload::spawn_pool(
            offload_threads,
            Arc::clone(&handle.links),
            Arc::clone(&store),
            calls.clone(),
        )
        .map_err(ServerError::Spawn)?;
        let mut workers = Vec::with_capacity(receivers.len());
        for (index, rx) in receivers.into_iter().enumerate() {
            let ctx = WorkerCtx {
                index,
                registry: Arc::clone(&registry),
                shared: Arc::clone(&shared),
                handle: Arc::clone(&handle),
                status: Arc::clone(&status.map),
                jobs: jobs.clone(),
                store: Arc::clone(&store),
                memo: Arc::clone(&memo),
                max_in_flight,
                max_backlog,
                max_payload: payload_limit(ring_capacity),
                spin,
                spin_fixed,
                calls: calls.clone(),
                providers: Arc::clone(&providers),
            };
            let stop_on_error = stop.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("cradle-worker-{index}"))
                .spawn(move || {
                    let r = run_worker(&ctx, &rx);
                    if let Err(e) = &r {
                        tracing::error!(worker = index, error = %e, "worker failed; shutting down");
                        stop_on_error.shutdown();
                    }
                    r
                });
            match spawned {
                Ok(j) => workers.push(j),
                Err(e) => {
                    stop.shutdown();
                    for j in workers {
                        let _ = j.join();
                    }
                    return Err(ServerError::Spawn(e));
                }
            }
        }
        // Only the workers hold job senders now: the pool stops after them.
        drop(jobs);
        let metrics_thread = match metrics {
            Some(m) => {
                let sources = Arc::new(metrics::Sources {
                    shared: Arc::clone(&shared),
                    store: Arc::clone(&store),
                    calls: m.calls,
                });
                let handle = Arc::clone(&handle);
                let listener = m.listener;
                let spawned = std::thread::Builder::new()
                    .name("cradle-metrics".into())
                    .spawn(move || metrics::serve(listener, sources, handle));
                match spawned {
                    Ok(j) => Some(j),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the metrics endpoint; serving without it");
                        None
                    }
                }
            }
            None => None,
        };
        tracing::debug!(socket = %path.display(), epoch, "serving");

        let actx = AcceptorCtx {
            listener,
            handle: Arc::clone(&handle),
            shared,
            status_ro: status.ro_fd.try_clone().map_err(ServerError::Spawn)?,
            status_len: status.len,
            epoch,
            euid,
            ring_capacity,
            max_sessions,
            handshake_timeout,
        };
        let (accepted, farewell) = run_acceptor(&actx);
        if let Err(e) = &accepted {
            tracing::error!(error = %e, "acceptor failed; shutting down");
        }
        stop.shutdown();
        let mut result = accepted.map_err(ServerError::Acceptor);
        for (index, j) in workers.into_iter().enumerate() {
            match j.join() {
                Ok(Ok(())) => {}
                Ok(Err(message)) => {
                    if result.is_ok() {
                        result = Err(ServerError::Worker { index, message });
                    }
                }
                Err(_) => {
                    if result.is_ok() {
                        result = Err(ServerError::Panicked("worker"));
                    }
                }
            }
        }
        if let Some(j) = metrics_thread {
            let _ = j.join();
        }
        memo.stop();
        // Every put queued for the disk tier is written before we return.
        store.stop_disk();
        // Stop accepting before the socket file disappears.
        drop(actx);
        drop(socket_file);
        // Clients that reached the socket before it went are told why.
        farewell.finish();
        tracing::info!(socket = %path.display(), "server stopped");
        result
    }
}
