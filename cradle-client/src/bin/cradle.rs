//! `cradle`: the command-line client of the CRADLE server.

use clap::{Parser, Subcommand, ValueEnum};
use cradle_client::{Blob, CallOptions, Client, WaitMode};
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
    /// Store FILE (or standard input, `-`) in the shared cache under KEY: a
    /// file is read straight into a blob in shared memory (no copy through a
    /// socket), sealed, and put in the cache. Prints the key, the size and
    /// where it is kept.
    Put {
        /// The cache key: 1 to 1024 bytes of UTF-8, no control characters.
        key: String,
        /// A regular file, or `-` for standard input.
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
        /// Also print the blob's handle (its id, segment, offset, length).
        #[arg(short, long)]
        verbose: bool,
    },
    /// Write the blob cached under KEY to FILE (or stdout). A file is written
    /// under a temporary name beside it and renamed when complete, so an
    /// interrupted get never leaves a partial FILE.
    Get {
        /// The cache key.
        key: String,
        /// Output file (replaced when complete) [default: stdout].
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

impl Command {
    /// The cache key the command names, if any.
    fn key(&self) -> Option<&str> {
        match self {
            Self::Put { key, .. } | Self::Get { key, .. } | Self::Rm { key } => Some(key),
            Self::Ping { .. } | Self::Stats => None,
        }
    }
}

/// Checks a cache key before anything is sent: the server refuses the same
/// keys, but a message that quotes the key and says what is wrong is more use
/// here.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the cache key is empty; give a name of 1 to 1024 bytes".into());
    }
    if key.len() > ipc_rpc::blob::MAX_KEY_LEN {
        return Err(format!(
            "the cache key is {} bytes long; at most {} are allowed",
            key.len(),
            ipc_rpc::blob::MAX_KEY_LEN
        ));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the cache key {key:?} contains the control character {c:?}; use printable characters"
        ));
    }
    Ok(())
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
    if let Some(key) = cli.command.key()
        && let Err(e) = check_key(key)
    {
        eprintln!("cradle: {e}");
        return ExitCode::from(2);
    }
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
            verbose,
        } => put(
            &client,
            &key,
            &file,
            PutOptions {
                if_absent,
                sync,
                progress: !no_progress,
                verbose,
            },
        ),
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

/// Bytes for people: "512 B", "1.5 MiB".
fn fmt_bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
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

/// The switches of `cradle put`.
#[derive(Debug, Clone, Copy)]
struct PutOptions {
    if_absent: bool,
    sync: bool,
    progress: bool,
    verbose: bool,
}

fn put(client: &Client, key: &str, file: &Path, opts: PutOptions) -> Result<(), String> {
    let blob = if file == Path::new("-") {
        blob_from_stdin(client)?
    } else {
        blob_from_file(client, file, opts.progress)?
    };
    let len = blob.len() as u64;
    let cache = client.cache();
    let stored = if opts.sync {
        cache.put_durable(key, &blob, opts.if_absent)
    } else if opts.if_absent {
        cache.put_if_absent(key, &blob)
    } else {
        cache.put(key, &blob).map(|()| true)
    }
    .map_err(|e| format!("cannot put {key}: {e}"))?;
    if stored {
        let where_ = if opts.sync {
            "in the memory cache and durable on disk"
        } else {
            "in the memory cache (written to the disk cache, if the server has one, shortly)"
        };
        println!("put {key}: {}, {where_}", fmt_bytes(len));
        if opts.verbose {
            println!("handle {}", blob.handle());
        }
    } else {
        println!("put {key}: already present, left unchanged (--if-absent)");
    }
    drop(blob);
    client.flush().map_err(|e| e.to_string())
}

/// A sealed blob with the bytes of regular file `file`, read straight into
/// the shared mapping.
fn blob_from_file(client: &Client, file: &Path, progress: bool) -> Result<Blob, String> {
    let f =
        std::fs::File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", file.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file (its length must be known up front); pipe it in with `-` instead",
            file.display()
        ));
    }
    let len = usize::try_from(meta.len()).map_err(|_| "file too large".to_string())?;
    let mut w = client
        .create(len)
        .map_err(|e| format!("cannot create a blob of {}: {e}", fmt_bytes(len as u64)))?;
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
    w.seal().map_err(|e| format!("cannot seal the blob: {e}"))
}

/// A sealed blob with everything standard input gives until end of file.
/// Its length is known only at the end, so the bytes are gathered first (one
/// copy), then written into the blob.
fn blob_from_stdin(client: &Client) -> Result<Blob, String> {
    use std::io::Read;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    let mut stdin = std::io::stdin().lock();
    loop {
        let mut chunk = Vec::with_capacity(8 << 20);
        let n = (&mut stdin)
            .take(8 << 20)
            .read_to_end(&mut chunk)
            .map_err(|e| format!("reading standard input: {e}"))?;
        if n == 0 {
            break;
        }
        total += n;
        chunks.push(chunk);
    }
    let mut w = client
        .create(total)
        .map_err(|e| format!("cannot create a blob of {}: {e}", fmt_bytes(total as u64)))?;
    let mut at = 0;
    for c in &chunks {
        w.write_at(at, c);
        at += c.len();
    }
    w.seal().map_err(|e| format!("cannot seal the blob: {e}"))
}

fn get(client: &Client, key: &str, output: Option<&Path>, progress: bool) -> Result<(), String> {
    let blob = client
        .cache()
        .get(key)
        .map_err(|e| format!("cannot get {key}: {e}"))?
        .ok_or_else(|| format!("no entry for {key} in the cache"))?;
    match output {
        Some(path) => write_file(&blob, path, progress)?,
        None => {
            // A closed pipe on stdout (`cradle get K | head`) is the
            // reader's choice, not an error.
            let mut out = std::io::stdout().lock();
            let written = blob
                .chunks(8 << 20)
                .try_for_each(|c| out.write_all(c))
                .and_then(|()| out.flush());
            match written {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(format!("writing stdout: {e}"));
                }
                _ => {}
            }
        }
    }
    drop(blob);
    // Every byte is delivered: a lease that cannot be released (the server
    // went away meanwhile) is no failure of the get.
    if let Err(e) = client.flush() {
        eprintln!(
            "cradle: warning: {key} was delivered in full, but its lease was not released: {e}"
        );
    }
    Ok(())
}

/// Writes `bytes` to a temporary file beside `path` and renames it over
/// `path` once complete and synced. On an error or SIGINT/SIGTERM/SIGHUP the
/// temporary file is removed and `path` is left as it was.
fn write_file(bytes: &[u8], path: &Path, progress: bool) -> Result<(), String> {
    use ipc_core::sync::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| format!("cannot install a signal handler: {e}"))?;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} names no file", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.cradle-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let mut bar = Progress::new("get", bytes.len() as u64, progress);
        let mut done = 0;
        for chunk in bytes.chunks(4 << 20) {
            // Relaxed: the flag is only a request to stop, set by the
            // signal handler of this thread's own process; nothing else is
            // published through it.
            if stop.load(Ordering::Relaxed) {
                return Err("interrupted; nothing was written".to_string());
            }
            f.write_all(chunk)
                .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
            done += chunk.len();
            bar.update(done as u64);
        }
        bar.finish();
        f.sync_all()
            .map_err(|e| format!("syncing {}: {e}", tmp.display()))?;
        if stop.load(Ordering::Relaxed) {
            return Err("interrupted; nothing was written".to_string());
        }
        std::fs::rename(&tmp, path)
            .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    eprintln!(
        "wrote {} to {}",
        fmt_bytes(bytes.len() as u64),
        path.display()
    );
    Ok(())
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
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    println!(
        "server       pid {}, {}, up {:.1} s",
        s.pid,
        plural(u64::from(s.workers), "worker thread", "worker threads"),
        s.uptime_ms as f64 / 1e3
    );
    println!(
        "clients      {} connected now, {} since start, {} disconnected for breaking the protocol",
        s.sessions, s.sessions_total, s.sessions_killed
    );
    println!("calls        {} answered", s.calls_served);
    let b = &s.blobs;
    println!(
        "blobs        {} alive ({}), of which {} large and {} still being written; clients hold {}",
        b.blobs,
        fmt_bytes(b.blob_bytes),
        b.large_blobs,
        b.writing,
        plural(b.leases, "lease", "leases")
    );
    println!(
        "small blobs  {} of shared memory in use, of {} reserved ({}); {} writing small blobs",
        fmt_bytes(b.pool_used),
        fmt_bytes(b.pool_capacity),
        plural(b.pool_segments, "segment", "segments"),
        plural(b.author_pools, "client", "clients")
    );
    println!(
        "memory cache {}, {} of {}; {} served, {} not found here, {} evicted, {} refused (full)",
        plural(b.cache_entries, "entry", "entries"),
        fmt_bytes(b.cache_bytes),
        fmt_bytes(b.cache_budget),
        plural(b.hits, "get", "gets"),
        b.misses,
        b.evictions,
        plural(b.cache_full, "put", "puts")
    );
    if b.disk_enabled {
        println!(
            "disk cache   {}, {} of {}; {} served, {} not found here, {} damaged entries dropped, {} evicted, {} waiting to be written",
            plural(b.disk_entries, "entry", "entries"),
            fmt_bytes(b.disk_bytes),
            fmt_bytes(b.disk_budget),
            plural(b.disk_hits, "get", "gets"),
            b.disk_misses,
            b.disk_corruptions,
            b.disk_evictions,
            plural(b.disk_queued, "put", "puts")
        );
    } else {
        println!("disk cache   none (this server keeps no disk tier)");
    }
    if (s.per_session.len() as u64) < s.sessions {
        println!(
            "the {} most active of {} sessions:",
            s.per_session.len(),
            s.sessions
        );
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
