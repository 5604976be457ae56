//! `cradle-server`: the per-user CRADLE server (thin wrapper over the library).

use clap::Parser;
use cradle_server::{
    BlobCtx, HandlerError, LogFormat, MetricsAddr, Server, SessionQuota, default_disk_cache_dir,
    default_socket_path,
};
use ipc_core::sync::{AtomicU64, Ordering};
use ipc_rpc::blob::BlobHandle;
use ipc_rpc::example::{Invert, Inverted, Work, WorkDone, WorkRequest, WorkRuns, work_byte};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// CRADLE server: shared-memory RPC, memory cache and blob exchange for the
/// applications of one user on this machine.
///
/// One server runs per user. Applications connect to its control socket,
/// by default $XDG_RUNTIME_DIR/cradle/cradle.sock, or /tmp/cradle-$UID/cradle.sock
/// when XDG_RUNTIME_DIR is not set. The socket's directory must belong to you
/// and have mode 0700 (it is created so if missing). Requests and responses
/// then travel through shared memory; the socket carries only the handshake,
/// descriptors and liveness.
///
/// Stop the server with SIGINT (Ctrl-C) or SIGTERM: it says goodbye to every
/// client, removes its socket and exits 0.
#[derive(Debug, Parser)]
#[command(name = "cradle-server", version, about, long_about)]
struct Args {
    /// Control socket path [default: $XDG_RUNTIME_DIR/cradle/cradle.sock,
    /// else /tmp/cradle-$UID/cradle.sock].
    #[arg(long, env = "CRADLE_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Worker threads that serve the sessions' rings.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: u16,

    /// Capacity of each session ring in bytes (a power of two, 128 B to 1 GiB);
    /// one message can carry up to about half of it.
    #[arg(long, value_name = "N", default_value_t = ipc_rpc::session::DEFAULT_RING_CAPACITY)]
    ring_bytes: usize,

    /// Most client sessions open at once.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_sessions: usize,

    /// At most this many microseconds a worker keeps polling after its last
    /// request before it sleeps (the spin is learned below it, and skipped
    /// while the machine has no idle CPU). Raise it (e.g. 5000) when clients
    /// spin and must never pay a wake-up; a burst then costs up to that much
    /// CPU.
    #[arg(long, value_name = "US", default_value_t = 100)]
    spin_us: u64,

    /// Spin all of --spin-us after every burst, even on a busy machine (for
    /// benchmarks and tests that must see no wake-up while clients spin).
    #[arg(long)]
    spin_fixed: bool,

    /// Heap bytes of responses queued for clients that do not read them,
    /// all sessions together, e.g. 256M; beyond it their requests wait
    /// [default: an eighth of the memory cache budget, 32 MiB to 1 GiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    max_backlog_bytes: Option<u64>,

    /// Memory cache budget, e.g. 4G or 512M [default: a quarter of
    /// MemAvailable, at most half the cgroup's memory.max]. Blob memory
    /// cannot be swapped out, so a budget above MemAvailable or memory.max is
    /// refused at start.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    mem_cache_bytes: Option<u64>,

    /// Server-wide limit on blob bytes held outside the memory cache
    /// (leased, being read by handlers, waiting for the disk) plus bytes
    /// being written, all clients together [default: twice the memory
    /// cache budget, at least 256M].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    max_held_bytes: Option<u64>,

    /// Directory of the disk cache, the tier that survives restarts
    /// [default: $XDG_CACHE_HOME/cradle, else ~/.cache/cradle]. Created with
    /// mode 0700 if missing; the server refuses to start if it cannot write
    /// there.
    #[arg(
        long,
        value_name = "DIR",
        env = "CRADLE_DISK_CACHE",
        conflicts_with = "no_disk_cache"
    )]
    disk_cache: Option<PathBuf>,

    /// Disk cache budget, e.g. 50G [default: 16 GiB, at most half the free
    /// space of its filesystem]. Least recently used entries are evicted to
    /// stay within it.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    disk_cache_bytes: Option<u64>,

    /// Run with the memory cache only: nothing is written to disk and
    /// `cradle put --sync` fails.
    #[arg(long)]
    no_disk_cache: bool,

    /// Per-client limit on the bytes of blobs it holds leases on, and
    /// separately on the bytes it is writing (e.g. 8G).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "16G")]
    session_quota_bytes: u64,

    /// Per-client limit on blob leases held at once.
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    session_max_leases: u64,

    /// Log level: error, warn, info, debug or trace (RUST_LOG, if set, wins).
    #[arg(long, value_name = "LEVEL", default_value = "info",
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: String,

    /// Log line format: text (for people) or json (one object per line, for
    /// log shippers).
    #[arg(long, value_name = "FORMAT", default_value = "text",
          value_parser = ["text", "json"])]
    log_format: String,

    /// Serve Prometheus metrics at GET /metrics on ADDR: HOST:PORT (use a
    /// loopback address, e.g. 127.0.0.1:9464) or a Unix socket path (made
    /// mode 0600). Off by default; with it every call is also timed per method.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<MetricsAddr>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    cradle_server::parse_byte_count(s)
}

/// The example blob method (`cradle.example.invert`): checksums an image
/// and returns an inverted copy of it as a new blob, leased to the caller.
fn invert(ctx: &BlobCtx<'_>, h: BlobHandle) -> Result<Inverted, HandlerError> {
    let input = ctx.read(&h)?;
    let bytes = input.bytes();
    let checksum = xxhash_rust::xxh3::xxh3_64(bytes);
    let mut out = ctx.create(bytes.len())?;
    for (o, i) in out.bytes_mut().iter_mut().zip(bytes) {
        *o = !*i;
    }
    drop(input);
    Ok(Inverted {
        checksum,
        inverted: out.seal()?,
    })
}

/// The example memoized method (`cradle.example.work`): hashes the input
/// blob with the seed, sleeps `sleep_ms` (standing for real work), returns
/// the hash and an `out_len`-byte result blob made from it; `runs` counts
/// its runs (`cradle.example.work_runs`), so a caller sees whether the memo
/// answered.
fn work(runs: &AtomicU64, ctx: &BlobCtx<'_>, req: WorkRequest) -> Result<WorkDone, HandlerError> {
    let value = match req.input {
        Some(h) => xxhash_rust::xxh3::xxh3_64_with_seed(ctx.read(&h)?.bytes(), req.seed),
        None => xxhash_rust::xxh3::xxh3_64_with_seed(&[], req.seed),
    };
    std::thread::sleep(std::time::Duration::from_millis(u64::from(
        req.sleep_ms.min(60_000),
    )));
    let output = match req.out_len {
        0 => None,
        n => {
            let len = usize::try_from(n).map_err(|_| HandlerError::new("out_len too large"))?;
            let mut b = ctx.create(len)?;
            // work_byte repeats every 2048 bytes ((i / 8) as u8 wraps).
            let pattern: Vec<u8> = (0..2048u64).map(|i| work_byte(value, i)).collect();
            for chunk in b.bytes_mut().chunks_mut(2048) {
                chunk.copy_from_slice(&pattern[..chunk.len()]);
            }
            Some(b.seal()?)
        }
    };
    // Relaxed: a counter read by the test method; it publishes nothing.
    let run = runs.fetch_add(1, Ordering::Relaxed) + 1;
    Ok(WorkDone { value, run, output })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let format = args.log_format.parse().unwrap_or(LogFormat::Text);
    cradle_server::init_logging_as(&args.log_level, format);
    let socket = args.socket.unwrap_or_else(default_socket_path);
    let builder = Server::builder()
        .socket_path(socket)
        .workers(usize::from(args.workers))
        .ring_capacity(args.ring_bytes)
        .max_sessions(args.max_sessions)
        .spin(std::time::Duration::from_micros(args.spin_us))
        .spin_fixed(args.spin_fixed)
        .session_quota(SessionQuota {
            leases: args.session_max_leases,
            pinned_bytes: args.session_quota_bytes,
            pool_bytes: args.session_quota_bytes,
        })
        .offload_blob::<Invert, _>(invert);
    let runs = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&runs);
    let builder = builder
        .memoized::<Work, _>(move |ctx, req| work(&counted, ctx, req))
        // Relaxed: see `work`.
        .inline::<WorkRuns, _>(move |()| Ok(runs.load(Ordering::Relaxed)));
    let builder = match args.max_backlog_bytes {
        Some(b) => builder.max_backlog_bytes(b),
        None => builder,
    };
    let builder = match args.metrics.clone() {
        Some(addr) => builder.metrics(addr),
        None => builder,
    };
    let builder = match args.mem_cache_bytes {
        Some(b) => builder.mem_cache_bytes(b),
        None => builder,
    };
    let builder = match args.max_held_bytes {
        Some(b) => builder.max_held_bytes(b),
        None => builder,
    };
    let builder = if args.no_disk_cache {
        builder
    } else {
        let b = builder.disk_cache(args.disk_cache.unwrap_or_else(default_disk_cache_dir));
        match args.disk_cache_bytes {
            Some(n) => b.disk_cache_bytes(n),
            None => b,
        }
    };
    let server = match builder.bind() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cradle-server: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(addr) = &args.metrics {
        match server.metrics_addr() {
            Some(a) => tracing::info!(address = %format!("http://{a}/metrics"), "metrics endpoint"),
            None => tracing::info!(address = %addr, "metrics endpoint"),
        }
    }
    match server.run_until_signal() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cradle-server: {e}");
            ExitCode::from(1)
        }
    }
}
