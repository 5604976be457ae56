//! `cradle`: the command-line client of the CRADLE server.

use clap::{Parser, Subcommand, ValueEnum};
use cradle_client::{CallOptions, Client, WaitMode};
use ipc_rpc::builtin::{Ping, Stats};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Talk to the per-user CRADLE server (shared-memory RPC, memory and disk
/// caches). The server must be running: start it with `cradle-server`.
#[derive(Parser, Debug)]
#[command(name = "cradle", version)]
struct Cli {
    /// Control socket of the server [default: $XDG_RUNTIME_DIR/cradle/cradle.sock,
    /// else /tmp/cradle-$UID/cradle.sock].
    #[arg(long, env = "CRADLE_SOCKET", global = true)]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure round trips: send COUNT echo calls of SIZE bytes one after the
    /// other and print the latency percentiles.
    Ping {
        /// Number of calls.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Payload bytes per call (each way).
        #[arg(long, default_value_t = 8)]
        size: usize,
        /// How the client waits for each response: spin (burn a core, lowest
        /// latency), sleep (futex at once), or spin-then-sleep (50 µs, then futex).
        #[arg(long, value_enum, default_value_t = Wait::SpinThenSleep)]
        wait: Wait,
        /// Deadline of each call, in seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Print the server's figures: sessions, calls served, uptime, blobs and
    /// cache (entries, bytes used / budget, hits, misses, evictions), and one
    /// line per connected session.
    Stats,
    /// Store FILE in the shared cache under KEY: the file is read straight
    /// into a blob in shared memory (no copy through a socket), sealed, and
    /// put in the memory cache. Prints the blob's handle.
    Put {
        /// The cache key (1 to 1024 bytes).
        key: String,
        /// A regular file.
        file: PathBuf,
        /// Only store if KEY is not in the cache yet.
        #[arg(long)]
        if_absent: bool,
        /// Return only once the entry is durable in the server's disk cache
        /// (data fdatasync'ed, directory fsync'ed): it then survives a crash
        /// of the server or of the machine. Without it the server writes the
        /// entry to disk shortly after answering.
        #[arg(long)]
        sync: bool,
        /// Never show a progress bar (shown on a terminal for files of 16 MiB or more).
        #[arg(long)]
        no_progress: bool,
    },
    /// Write the blob cached under KEY to FILE (or stdout).
    Get {
        /// The cache key.
        key: String,
        /// Output file (created or truncated) [default: stdout].
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Never show a progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Remove KEY from the cache (processes holding its blob keep it).
    Rm {
        /// The cache key.
        key: String,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Wait {
    Spin,
    Sleep,
    SpinThenSleep,
}

impl From<Wait> for WaitMode {
    fn from(w: Wait) -> Self {
        match w {
            Wait::Spin => WaitMode::Spin,
            Wait::Sleep => WaitMode::Sleep,
            Wait::SpinThenSleep => WaitMode::default(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = cli
        .socket
        .unwrap_or_else(cradle_client::default_socket_path);
    let client = match Client::connect(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cradle: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Ping {
            count,
            size,
            wait,
            timeout,
        } => ping(&client, count, size, wait, timeout),
        Command::Stats => stats(&client),
        Command::Put {
            key,
            file,
            if_absent,
            sync,
            no_progress,
        } => put(&client, &key, &file, if_absent, sync, !no_progress),
        Command::Get {
            key,
            output,
            no_progress,
        } => get(&client, &key, output.as_deref(), !no_progress),
        Command::Rm { key } => rm(&client, &key),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cradle: {e}");
            ExitCode::from(1)
        }
    }
}

fn ping(client: &Client, count: u64, size: usize, wait: Wait, timeout: f64) -> Result<(), String> {
    if count == 0 {
        return Err("--count must be at least 1".into());
    }
    if size > client.max_message() - 64 {
        return Err(format!(
            "--size {size} is larger than one message carries ({} bytes); large data goes in a blob",
            client.max_message() - 64
        ));
    }
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err("--timeout must be a positive number of seconds".into());
    }
    let opts = CallOptions {
        timeout: Duration::from_secs_f64(timeout),
        wait: wait.into(),
    };
    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut rtts = Vec::with_capacity(count as usize);
    let started = Instant::now();
    let mut last_report = started;
    for i in 0..count {
        let t = Instant::now();
        let n = client
            .call_with::<Ping, _>(&payload, opts, |echo| echo.len())
            .map_err(|e| format!("call {} of {count}: {e}", i + 1))?;
        rtts.push(t.elapsed().as_nanos() as u64);
        if n != size {
            return Err(format!("call {}: echo of {n} bytes, sent {size}", i + 1));
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprint!("\r{} / {count} calls", i + 1);
            last_report = Instant::now();
        }
    }
    if last_report != started {
        eprintln!();
    }
    let total = started.elapsed();
    rtts.sort_unstable();
    let pct = |p: f64| rtts[((rtts.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "ping: {count} calls of {size} B ({:?} wait) in {:.3} s",
        WaitMode::from(wait),
        total.as_secs_f64()
    );
    println!(
        "round trip: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        fmt_ns(pct(0.50)),
        fmt_ns(pct(0.90)),
        fmt_ns(pct(0.99)),
        fmt_ns(pct(0.999)),
        fmt_ns(*rtts.last().unwrap_or(&0))
    );
    Ok(())
}

fn fmt_ns(ns: u64) -> String {
    if ns < 10_000 {
        format!("{:.2} µs", ns as f64 / 1e3)
    } else if ns < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

/// Bytes for people: exact below 1 KiB, else two decimals of the binary unit.
fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

/// A progress line on stderr, redrawn at most every 100 ms; only on a
/// terminal and for transfers of 16 MiB or more.
struct Progress {
    what: &'static str,
    total: u64,
    shown: bool,
    enabled: bool,
    last: Instant,
    started: Instant,
}

impl Progress {
    fn new(what: &'static str, total: u64, wanted: bool) -> Self {
        use std::io::IsTerminal;
        Self {
            what,
            total,
            shown: false,
            enabled: wanted && total >= 16 << 20 && std::io::stderr().is_terminal(),
            last: Instant::now(),
            started: Instant::now(),
        }
    }

    fn update(&mut self, done: u64) {
        if !self.enabled || (self.last.elapsed() < Duration::from_millis(100) && done < self.total)
        {
            return;
        }
        self.last = Instant::now();
        self.shown = true;
        let frac = done as f64 / self.total.max(1) as f64;
        let width = 30;
        let filled = (frac * width as f64) as usize;
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-6);
        eprint!(
            "\r{} [{}{}] {:>5.1}%  {} / {}  {}/s ",
            self.what,
            "#".repeat(filled),
            " ".repeat(width - filled),
            frac * 100.0,
            fmt_bytes(done),
            fmt_bytes(self.total),
            fmt_bytes(rate as u64)
        );
    }

    fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

fn put(
    client: &Client,
    key: &str,
    file: &Path,
    if_absent: bool,
    sync: bool,
    progress: bool,
) -> Result<(), String> {
    let f =
        std::fs::File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", file.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file (its length must be known up front)",
            file.display()
        ));
    }
    let len = usize::try_from(meta.len()).map_err(|_| "file too large".to_string())?;
    let mut w = client
        .create(len)
        .map_err(|e| format!("cannot create a blob of {len} bytes: {e}"))?;
    let mut bar = Progress::new("put", len as u64, progress);
    let mut at = 0;
    while at < len {
        let n = w
            .write_from_fd(f.as_fd(), at, (len - at).min(8 << 20))
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        if n == 0 {
            return Err(format!(
                "{} shrank while being read ({at} of {len} bytes)",
                file.display()
            ));
        }
        at += n;
        bar.update(at as u64);
    }
    bar.finish();
    let blob = w.seal().map_err(|e| format!("cannot seal the blob: {e}"))?;
    let cache = client.cache();
    let stored = if sync {
        cache.put_durable(key, &blob, if_absent)
    } else if if_absent {
        cache.put_if_absent(key, &blob)
    } else {
        cache.put(key, &blob).map(|()| true)
    }
    .map_err(|e| format!("cannot put {key}: {e}"))?;
    if stored {
        let durable = if sync { " (durable on disk)" } else { "" };
        println!("put {key}: {}{durable}", blob.handle());
    } else {
        println!("put {key}: already present, left unchanged (--if-absent)");
    }
    drop(blob);
    client.flush().map_err(|e| e.to_string())
}

fn get(client: &Client, key: &str, output: Option<&Path>, progress: bool) -> Result<(), String> {
    let blob = client
        .cache()
        .get(key)
        .map_err(|e| format!("cannot get {key}: {e}"))?
        .ok_or_else(|| format!("no entry for {key} in the cache"))?;
    let (mut out, name): (Box<dyn Write>, String) = match output {
        Some(p) => (
            Box::new(
                std::fs::File::create(p)
                    .map_err(|e| format!("cannot create {}: {e}", p.display()))?,
            ),
            p.display().to_string(),
        ),
        None => (Box::new(std::io::stdout().lock()), "stdout".into()),
    };
    let mut bar = Progress::new("get", blob.len() as u64, progress && output.is_some());
    let mut done = 0;
    // A closed pipe on stdout (`cradle get K | head`) is the reader's
    // choice, not an error.
    let write_err = |e: std::io::Error| {
        if output.is_none() && e.kind() == std::io::ErrorKind::BrokenPipe {
            None
        } else {
            Some(format!("writing {name}: {e}"))
        }
    };
    for chunk in blob.chunks(8 << 20) {
        if let Err(e) = out.write_all(chunk) {
            return write_err(e).map_or(Ok(()), Err);
        }
        done += chunk.len();
        bar.update(done as u64);
    }
    if let Err(e) = out.flush() {
        return write_err(e).map_or(Ok(()), Err);
    }
    bar.finish();
    if output.is_some() {
        eprintln!("get {key}: {} bytes to {name}", blob.len());
    }
    drop(blob);
    client.flush().map_err(|e| e.to_string())
}

fn rm(client: &Client, key: &str) -> Result<(), String> {
    if client
        .cache()
        .remove(key)
        .map_err(|e| format!("cannot remove {key}: {e}"))?
    {
        println!("removed {key}");
        Ok(())
    } else {
        Err(format!("no entry for {key} in the cache"))
    }
}

fn stats(client: &Client) -> Result<(), String> {
    let s = client.call::<Stats>(&()).map_err(|e| e.to_string())?;
    println!(
        "server pid {}  workers {}  uptime {:.1} s",
        s.pid,
        s.workers,
        s.uptime_ms as f64 / 1e3
    );
    println!(
        "sessions {} open, {} since start ({} closed for protocol violations)",
        s.sessions, s.sessions_total, s.sessions_killed
    );
    println!("calls served {}", s.calls_served);
    let b = &s.blobs;
    println!(
        "blobs {} ({}; {} large, {} being written), {} leases",
        b.blobs,
        fmt_bytes(b.blob_bytes),
        b.large_blobs,
        b.writing,
        b.leases
    );
    println!(
        "pools {} segments, {} used of {}; {} author pools",
        b.pool_segments,
        fmt_bytes(b.pool_used),
        fmt_bytes(b.pool_capacity),
        b.author_pools
    );
    println!(
        "memory cache {} entries, {} used of {} budget; {} hits, {} misses, {} evictions, {} refused (full)",
        b.cache_entries,
        fmt_bytes(b.cache_bytes),
        fmt_bytes(b.cache_budget),
        b.hits,
        b.misses,
        b.evictions,
        b.cache_full
    );
    if b.disk_enabled {
        println!(
            "disk cache {} entries, {} used of {} budget; {} hits, {} misses, {} corruptions found, {} evictions, {} puts queued",
            b.disk_entries,
            fmt_bytes(b.disk_bytes),
            fmt_bytes(b.disk_budget),
            b.disk_hits,
            b.disk_misses,
            b.disk_corruptions,
            b.disk_evictions,
            b.disk_queued
        );
    } else {
        println!("disk cache: none (no disk tier configured)");
    }
    if !s.per_session.is_empty() {
        println!(
            "{:>8} {:>8} {:>12} {:>9} {:>8} {:>7} {:>10} {:>10}",
            "session", "pid", "calls", "in-flight", "backlog", "leases", "pinned", "writing"
        );
        for p in &s.per_session {
            println!(
                "{:>8} {:>8} {:>12} {:>9} {:>8} {:>7} {:>10} {:>10}",
                p.id,
                p.pid,
                p.calls,
                p.in_flight,
                p.backlog,
                p.leases,
                fmt_bytes(p.pinned_bytes),
                fmt_bytes(p.pool_bytes)
            );
        }
    }
    Ok(())
}
