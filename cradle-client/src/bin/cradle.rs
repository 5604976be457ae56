//! `cradle`: the command-line client of the CRADLE server.

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use cradle_client::{Blob, CallOptions, Client, WaitMode};
use indicatif::{ProgressBar, ProgressStyle};
use ipc_rpc::builtin::{Ping, Stats};
use ipc_rpc::memo::{MemoClear, MemoList};
use serde::Serialize;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[path = "cradle/provided.rs"]
mod provided;
#[path = "cradle/remote.rs"]
mod remote;

/// Talk to the per-user CRADLE server (shared-memory RPC, memory and disk
/// caches). The server must be running: start it with `cradle-server`.
#[derive(Parser, Debug)]
#[command(name = "cradle", version)]
struct Cli {
    /// Control socket of the server [default: $XDG_RUNTIME_DIR/cradle/cradle.sock,
    /// else /tmp/cradle-$UID/cradle.sock].
    #[arg(long, env = "CRADLE_SOCKET", global = true)]
    socket: Option<PathBuf>,

    /// Draw progress bars on stderr even when it is not a terminal and the
    /// work is small (put, get, ping; `--no-progress` still wins).
    #[arg(long, global = true)]
    progress: bool,

    /// Print the result as one JSON object on stdout instead of text (the
    /// fields are listed in docs/operations.md, "Scripting the CLI").
    #[arg(long, global = true)]
    json: bool,

    /// Talk to a server on another machine through its `cradle-gateway`:
    /// `cradle+https://HOST:PORT` (or `cradle+http://127.0.0.1:PORT` on
    /// loopback). Every command that talks to a server works remotely.
    #[arg(long, env = "CRADLE_REMOTE", global = true, value_name = "URL")]
    remote: Option<String>,

    /// The gateway's token file (with --remote).
    #[arg(long, env = "CRADLE_TOKEN_FILE", global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// PEM certificates of the authorities that sign the gateway's
    /// certificate (with --remote) [default: the system's].
    #[arg(long, env = "CRADLE_CA_FILE", global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,

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
        /// latency), sleep (futex at once), or spin-then-sleep (a learned spin of at
        /// most 50 µs, none on a busy machine, then futex).
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
    /// List the cache's keys (both tiers) with their sizes and the tier that
    /// holds each, in key order.
    Ls {
        /// Only keys that start with PREFIX.
        prefix: Option<String>,
    },
    /// Remove KEY from the cache (processes holding its blob keep it).
    Rm {
        /// The cache key.
        key: String,
    },
    /// List the methods the server answers: its own (builtin), those
    /// compiled into it, and those client processes provide, with one line
    /// per provider (pid, calls in flight / concurrency, served, errors,
    /// median latency).
    Methods,
    /// Call a bytes method by name (a method a client process provides,
    /// whose request and response are plain bytes) and print the response
    /// as hex, then the blobs it passed back.
    Call {
        /// The method: NAME or NAME@VERSION (version 1 by default).
        method: String,
        /// The request body as hex digits (e.g. `68656c6c6f`).
        #[arg(long, value_name = "HEX", conflicts_with = "stdin")]
        raw_hex: Option<String>,
        /// Read the request body from standard input.
        #[arg(long)]
        stdin: bool,
        /// Deadline of the call, in seconds (the server and the provider see it).
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// Write the response body to stdout as is (no hex, no blob lines).
        #[arg(long, conflicts_with = "json")]
        raw: bool,
    },
    /// The memo of memoized methods: results the server keeps in the cache
    /// so that an equal call is answered without running the method again.
    Memo {
        #[command(subcommand)]
        what: MemoCommand,
    },
    /// Print a completion script for SHELL on stdout, e.g.
    /// `cradle completions bash > ~/.local/share/bash-completion/completions/cradle`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the man page (roff) on stdout, e.g. `cradle man | man -l -`.
    Man,
}

/// Shells `cradle completions` writes for.
#[derive(Copy, Clone, Debug, ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl Command {
    /// The cache key the command names, if any.
    fn key(&self) -> Option<&str> {
        match self {
            Self::Put { key, .. } | Self::Get { key, .. } | Self::Rm { key } => Some(key),
            Self::Ping { .. }
            | Self::Methods
            | Self::Call { .. }
            | Self::Stats
            | Self::Ls { .. }
            | Self::Memo { .. }
            | Self::Completions { .. }
            | Self::Man => None,
        }
    }
}

/// `cradle memo …`.
#[derive(Debug, Subcommand)]
enum MemoCommand {
    /// Per memoized method: entries and their bytes (both tiers), hits,
    /// misses (runs), calls that waited for an identical call's run,
    /// failed runs, damaged entries found, and the compute time saved (the
    /// sum, over hits, of the run time of the run that made the entry).
    /// Counters start at zero when the server starts.
    Ls {
        /// Only this method (`name` or `name@version`).
        method: Option<String>,
    },
    /// Remove the memo entries of every memoized method, or of METHOD,
    /// from memory and disk (callers holding result blobs keep them).
    Clear {
        /// Only this method (`name` or `name@version`).
        method: Option<String>,
    },
}

/// Checks a cache key before anything is sent, by the rule the server
/// applies (`ipc_rpc::blob::check_key`), so that the message can say which
/// key and what is wrong before any work is done.
fn check_key(key: &str) -> Result<(), String> {
    ipc_rpc::blob::check_key(key).map_err(|e| e.to_string())
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

/// What a command prints: text for people by default, one JSON object
/// with `--json`. A new command returns one of these and is dispatched with
/// one line in `main`.
trait Report: Serialize {
    /// The text shown without `--json`.
    fn human(&self) -> String;
}

/// Prints `report` in the chosen form.
fn emit(report: &impl Report, json: bool) -> Result<(), String> {
    let text = if json {
        serde_json::to_string(report).map_err(|e| format!("encoding JSON: {e}"))?
    } else {
        report.human()
    };
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{}", text.trim_end_matches('\n')).and_then(|()| out.flush()) {
        // A closed pipe (`cradle stats | head -1`) is the reader's choice.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("writing stdout: {e}")),
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let _ = FORCE_PROGRESS.set(cli.progress);
    // Commands that need no server.
    match cli.command {
        Command::Completions { shell } => {
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "cradle", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cradle: writing the man page: {e}");
                    ExitCode::from(1)
                }
            };
        }
        _ => {}
    }
    if let Some(key) = cli.command.key()
        && let Err(e) = check_key(key)
    {
        eprintln!("cradle: {e}");
        return ExitCode::from(2);
    }
    if json && let Command::Get { output: None, .. } = cli.command {
        eprintln!("cradle: get --json needs -o FILE: standard output carries the data");
        return ExitCode::from(2);
    }
    if let Some(url) = cli.remote {
        let target = remote::Target {
            url,
            token_file: cli.token_file,
            ca_file: cli.ca_file,
        };
        return match remote::run(&target, cli.command, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cradle: {e}");
                ExitCode::from(1)
            }
        };
    }
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
        } => ping(&client, count, size, wait, timeout).and_then(|r| emit(&r, json)),
        Command::Stats => stats(&client).and_then(|r| emit(&r, json)),
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
        )
        .and_then(|r| emit(&r, json)),
        Command::Get {
            key,
            output,
            no_progress,
        } => get(&client, &key, output.as_deref(), !no_progress)
            .and_then(|r| r.map_or(Ok(()), |r| emit(&r, json))),
        Command::Rm { key } => rm(&client, &key).and_then(|r| emit(&r, json)),
        Command::Ls { prefix } => {
            ls(&client, prefix.as_deref().unwrap_or("")).and_then(|r| emit(&r, json))
        }
        Command::Methods => provided::methods(&client).and_then(|r| emit(&r, json)),
        Command::Call {
            method,
            raw_hex,
            stdin,
            timeout,
            raw,
        } => provided::call(
            &client,
            provided::CallArgs {
                target: method,
                raw_hex,
                stdin,
                timeout,
                raw,
            },
        )
        .and_then(|r| match r.raw_body() {
            Some(b) => {
                let mut out = std::io::stdout().lock();
                out.write_all(b)
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("writing stdout: {e}"))
            }
            None => emit(&r, json),
        }),
        Command::Memo {
            what: MemoCommand::Ls { method },
        } => memo_ls(&client, method.as_deref().unwrap_or("")).and_then(|r| emit(&r, json)),
        Command::Memo {
            what: MemoCommand::Clear { method },
        } => memo_clear(&client, method.as_deref().unwrap_or("")).and_then(|r| emit(&r, json)),
        Command::Completions { .. } | Command::Man => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cradle: {e}");
            ExitCode::from(1)
        }
    }
}

/// `cradle ping`'s result.
#[derive(Debug, Serialize)]
struct PingReport {
    /// Calls made.
    calls: u64,
    /// Payload bytes per call, each way.
    payload_bytes: usize,
    /// spin, sleep or spin-then-sleep.
    wait: &'static str,
    /// Wall time of all calls.
    seconds: f64,
    /// Round-trip percentiles and extremes, nanoseconds (HdrHistogram,
    /// 3 significant digits).
    min_ns: u64,
    mean_ns: f64,
    p50_ns: u64,
    p90_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    max_ns: u64,
}

impl Report for PingReport {
    fn human(&self) -> String {
        format!(
            "ping: {} calls of {} B ({} wait) in {:.3} s\nround trip: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.calls,
            self.payload_bytes,
            self.wait,
            self.seconds,
            fmt_ns(self.p50_ns),
            fmt_ns(self.p90_ns),
            fmt_ns(self.p99_ns),
            fmt_ns(self.p999_ns),
            fmt_ns(self.max_ns)
        )
    }
}

fn ping(
    client: &Client,
    count: u64,
    size: usize,
    wait: Wait,
    timeout: f64,
) -> Result<PingReport, String> {
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
    let label = match wait {
        Wait::Spin => "spin",
        Wait::Sleep => "sleep",
        Wait::SpinThenSleep => "spin-then-sleep",
    };
    ping_loop(count, size, label, |payload| {
        client
            .call_with::<Ping, _>(payload, opts, |echo| echo.as_slice() == payload.as_slice())
            .map_err(|e| e.to_string())
    })
}

/// Times `count` calls of `call` with a `size`-byte payload (local or
/// remote); `call` answers whether the echo equals what was sent.
fn ping_loop(
    count: u64,
    size: usize,
    wait: &'static str,
    mut call: impl FnMut(&Vec<u8>) -> Result<bool, String>,
) -> Result<PingReport, String> {
    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    // 1 ns to 1 hour at 3 significant digits: every round trip fits.
    let mut rtts = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
        .map_err(|e| format!("latency histogram: {e}"))?;
    let bar = progress_bar("ping", count, true, "{prefix} {wide_bar} {pos}/{len} calls");
    let started = Instant::now();
    for i in 0..count {
        let t = Instant::now();
        let same = call(&payload).map_err(|e| format!("call {} of {count}: {e}", i + 1))?;
        rtts.saturating_record(t.elapsed().as_nanos().max(1) as u64);
        if !same {
            return Err(format!(
                "call {}: the echo differs from the {size} bytes sent",
                i + 1
            ));
        }
        bar.inc(1);
    }
    let total = started.elapsed();
    bar.finish_and_clear();
    Ok(PingReport {
        calls: count,
        payload_bytes: size,
        wait,
        seconds: total.as_secs_f64(),
        min_ns: rtts.min(),
        mean_ns: rtts.mean(),
        p50_ns: rtts.value_at_quantile(0.50),
        p90_ns: rtts.value_at_quantile(0.90),
        p99_ns: rtts.value_at_quantile(0.99),
        p999_ns: rtts.value_at_quantile(0.999),
        max_ns: rtts.max(),
    })
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

/// `--progress`: bars are drawn whatever stderr is (set once in `main`).
static FORCE_PROGRESS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn progress_forced() -> bool {
    FORCE_PROGRESS.get().copied().unwrap_or(false)
}

/// A progress bar on stderr (indicatif), or a hidden one: shown only when
/// `wanted`, stderr is a terminal and the work is big enough to watch
/// (16 MiB for transfers; a ping run of 100,000 calls or more), or, with
/// `--progress`, whenever `wanted`.
fn progress_bar(what: &'static str, total: u64, wanted: bool, template: &str) -> ProgressBar {
    use std::io::IsTerminal;
    let big = if what == "ping" {
        total >= 100_000
    } else {
        total >= 16 << 20
    };
    let forced = wanted && progress_forced();
    let shown = forced || (wanted && big && std::io::stderr().is_terminal());
    if !shown {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>-");
    let bar = ProgressBar::new(total).with_style(style).with_prefix(what);
    if forced && !std::io::stderr().is_terminal() {
        // indicatif hides a bar whose stderr is no terminal; draw anyway.
        bar.set_draw_target(indicatif::ProgressDrawTarget::term_like(Box::new(
            PlainStderr,
        )));
    }
    bar
}

/// Stderr as a terminal of 80 columns for `--progress` when it is not one
/// (a pipe, a file): the bar's lines and escape sequences are written as
/// they are.
#[derive(Debug)]
struct PlainStderr;

impl PlainStderr {
    fn put(s: &str) -> std::io::Result<()> {
        std::io::stderr().lock().write_all(s.as_bytes())
    }
}

impl indicatif::TermLike for PlainStderr {
    fn width(&self) -> u16 {
        80
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        if n == 0 {
            Ok(())
        } else {
            Self::put(&format!("\x1b[{n}A"))
        }
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        if n == 0 {
            Ok(())
        } else {
            Self::put(&format!("\x1b[{n}B"))
        }
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        if n == 0 {
            Ok(())
        } else {
            Self::put(&format!("\x1b[{n}C"))
        }
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        if n == 0 {
            Ok(())
        } else {
            Self::put(&format!("\x1b[{n}D"))
        }
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        Self::put(&format!("{s}\n"))
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        Self::put(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Self::put("\r\x1b[2K")
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().lock().flush()
    }
}

/// The template of a transfer's bar.
const TRANSFER: &str = "{prefix} [{wide_bar}] {percent:>3}%  {binary_bytes} / {binary_total_bytes}  {binary_bytes_per_sec}";

/// The switches of `cradle put`.
#[derive(Debug, Clone, Copy)]
struct PutOptions {
    if_absent: bool,
    sync: bool,
    progress: bool,
    verbose: bool,
}

/// `cradle put`'s result.
#[derive(Debug, Serialize)]
struct PutReport {
    key: String,
    /// The blob's length.
    bytes: u64,
    /// false: `--if-absent` found the key and left it unchanged.
    stored: bool,
    /// `--sync`: durable on disk when the command returned.
    durable: bool,
    /// Where the server keeps it: `memory`, `memory+disk` (written behind,
    /// or durable with `--sync`), or `disk` (larger than the memory
    /// budget).
    tier: &'static str,
    /// The blob's handle (`-v` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    handle: Option<String>,
}

impl Report for PutReport {
    fn human(&self) -> String {
        if !self.stored {
            return format!(
                "put {}: already present, left unchanged (--if-absent)",
                self.key
            );
        }
        let where_ = match (self.tier, self.durable) {
            ("disk", true) => "durable in the disk cache (larger than the memory cache's budget)",
            ("disk", false) => {
                "kept in the disk cache (larger than the memory cache's budget), written shortly"
            }
            (_, true) => "in the memory cache and durable on disk",
            ("memory+disk", false) => "in the memory cache, and written to the disk cache shortly",
            _ => "in the memory cache (the server has no disk tier)",
        };
        let mut s = format!("put {}: {}, {where_}", self.key, fmt_bytes(self.bytes));
        if let Some(h) = &self.handle {
            s.push_str(&format!("\nhandle {h}"));
        }
        s
    }
}

fn put(client: &Client, key: &str, file: &Path, opts: PutOptions) -> Result<PutReport, String> {
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
    // Which tier keeps it follows from the server's budgets.
    let budgets = cache
        .stats()
        .map_err(|e| format!("put {key} done, but the server's figures are unavailable: {e}"))?;
    let tier = match (budgets.disk_enabled, len > budgets.cache_budget) {
        (true, true) => "disk",
        (true, false) => "memory+disk",
        (false, _) => "memory",
    };
    let report = PutReport {
        tier,
        key: key.to_owned(),
        bytes: len,
        stored,
        durable: stored && opts.sync,
        handle: opts.verbose.then(|| blob.handle().to_string()),
    };
    drop(blob);
    client.flush().map_err(|e| e.to_string())?;
    Ok(report)
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
    let bar = progress_bar("put", len as u64, progress, TRANSFER);
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
        bar.set_position(at as u64);
    }
    bar.finish_and_clear();
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

/// `cradle get -o FILE`'s result (a get to stdout prints only the data).
#[derive(Debug, Serialize)]
struct GetReport {
    key: String,
    /// Bytes written.
    bytes: u64,
    /// The file written.
    output: PathBuf,
}

impl Report for GetReport {
    fn human(&self) -> String {
        format!(
            "wrote {} to {}",
            fmt_bytes(self.bytes),
            self.output.display()
        )
    }
}

fn get(
    client: &Client,
    key: &str,
    output: Option<&Path>,
    progress: bool,
) -> Result<Option<GetReport>, String> {
    let blob = client
        .cache()
        .get(key)
        .map_err(|e| format!("cannot get {key}: {e}"))?
        .ok_or_else(|| format!("no entry for {key} in the cache"))?;
    let report = match output {
        Some(path) => {
            write_file(&blob, path, progress)?;
            Some(GetReport {
                key: key.to_owned(),
                bytes: blob.len() as u64,
                output: path.to_owned(),
            })
        }
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
            None
        }
    };
    drop(blob);
    // Every byte is delivered: a lease that cannot be released (the server
    // went away meanwhile) is no failure of the get.
    if let Err(e) = client.flush() {
        eprintln!(
            "cradle: warning: {key} was delivered in full, but its lease was not released: {e}"
        );
    }
    Ok(report)
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
        let bar = progress_bar("get", bytes.len() as u64, progress, TRANSFER);
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
            bar.set_position(done as u64);
        }
        bar.finish_and_clear();
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
    result
}

/// `cradle rm`'s result.
#[derive(Debug, Serialize)]
struct RmReport {
    key: String,
    /// Always true: a missing key is an error (exit 1).
    removed: bool,
}

impl Report for RmReport {
    fn human(&self) -> String {
        format!("removed {}", self.key)
    }
}

fn rm(client: &Client, key: &str) -> Result<RmReport, String> {
    if client
        .cache()
        .remove(key)
        .map_err(|e| format!("cannot remove {key}: {e}"))?
    {
        Ok(RmReport {
            key: key.to_owned(),
            removed: true,
        })
    } else {
        Err(format!("no entry for {key} in the cache"))
    }
}

/// `cradle ls`'s result.
#[derive(Debug, Serialize)]
struct LsReport {
    /// The prefix asked for ("" for every key).
    prefix: String,
    /// Every matching key, in key order.
    keys: Vec<LsEntry>,
}

#[derive(Debug, Serialize)]
struct LsEntry {
    key: String,
    bytes: u64,
    /// `memory`, `disk`, or `memory+disk`.
    tier: &'static str,
}

impl Report for LsReport {
    fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        for k in &self.keys {
            let _ = writeln!(o, "{:>11}  {:<11}  {}", fmt_bytes(k.bytes), k.tier, k.key);
        }
        let total: u64 = self.keys.iter().map(|k| k.bytes).sum();
        let what = if self.prefix.is_empty() {
            String::new()
        } else {
            format!(" under {:?}", self.prefix)
        };
        let _ = write!(
            o,
            "{} {}{what}, {}",
            self.keys.len(),
            if self.keys.len() == 1 { "key" } else { "keys" },
            fmt_bytes(total)
        );
        o
    }
}

/// Every key under `prefix`, a page at a time (each page fits one frame).
fn ls(client: &Client, prefix: &str) -> Result<LsReport, String> {
    use ipc_rpc::blob::{CacheList, ListRequest};
    let mut keys = Vec::new();
    let mut after = String::new();
    loop {
        let page = client
            .call::<CacheList>(&ListRequest {
                prefix: prefix.to_owned(),
                after: after.clone(),
                limit: 10_000,
            })
            .map_err(|e| format!("cannot list the cache: {e}"))?;
        let last = page.keys.last().map(|k| k.key.clone());
        keys.extend(page.keys.into_iter().map(|k| LsEntry {
            tier: match (k.in_memory, k.on_disk) {
                (true, true) => "memory+disk",
                (true, false) => "memory",
                _ => "disk",
            },
            key: k.key,
            bytes: k.len,
        }));
        match (page.more, last) {
            (true, Some(last)) => after = last,
            // `more` with an empty page would loop for ever: stop instead.
            _ => break,
        }
    }
    Ok(LsReport {
        prefix: prefix.to_owned(),
        keys,
    })
}

/// `cradle stats`'s result: the server's `cradle.stats` answer, grouped.
#[derive(Debug, Serialize)]
struct StatsReport {
    server: ServerPart,
    sessions: SessionsPart,
    /// Calls answered since start.
    calls_answered: u64,
    /// Futex wakes and eventfd writes the server made.
    wake_syscalls: u64,
    blobs: BlobsPart,
    memory_cache: CachePart,
    /// Absent when the server keeps no disk tier.
    disk_cache: Option<DiskPart>,
    /// Memoized methods, all together.
    memo: MemoTotals,
    /// Methods offered by client processes, and their calls.
    provided: ProvidedPart,
    /// One entry per connected session.
    per_session: Vec<SessionPart>,
}

/// The memo's figures, all memoized methods together.
#[derive(Debug, Serialize, Default)]
struct MemoTotals {
    methods: u64,
    entries: u64,
    bytes: u64,
    hits: u64,
    misses: u64,
    waits: u64,
    errors: u64,
    damaged: u64,
    saved_seconds: f64,
}

/// One memoized method in `cradle memo ls`.
#[derive(Debug, Serialize)]
struct MemoMethodPart {
    method: String,
    entries: u64,
    bytes: u64,
    hits: u64,
    misses: u64,
    waits: u64,
    bypassed: u64,
    errors: u64,
    damaged: u64,
    run_seconds: f64,
    saved_seconds: f64,
}

/// `cradle memo ls`'s result.
#[derive(Debug, Serialize)]
struct MemoReport {
    methods: Vec<MemoMethodPart>,
}

/// The calls of `cradle memo`, to a local server or through the gateway.
trait MemoCalls {
    /// `cradle.memo.list`.
    fn memo_list(&self, method: &str) -> Result<Vec<ipc_rpc::memo::MemoMethodStats>, String>;
    /// `cradle.memo.clear`.
    fn memo_clear(&self, method: &str) -> Result<u64, String>;
}

impl MemoCalls for Client {
    fn memo_list(&self, method: &str) -> Result<Vec<ipc_rpc::memo::MemoMethodStats>, String> {
        self.call::<MemoList>(&method.to_owned())
            .map_err(|e| e.to_string())
    }

    fn memo_clear(&self, method: &str) -> Result<u64, String> {
        self.call::<MemoClear>(&method.to_owned())
            .map_err(|e| e.to_string())
    }
}

fn memo_ls(client: &impl MemoCalls, method: &str) -> Result<MemoReport, String> {
    let list = client.memo_list(method)?;
    if list.is_empty() && !method.is_empty() {
        return Err(format!("the server has no memoized method {method:?}"));
    }
    Ok(MemoReport {
        methods: list
            .into_iter()
            .map(|m| MemoMethodPart {
                method: m.method,
                entries: m.entries,
                bytes: m.bytes,
                hits: m.hits,
                misses: m.misses,
                waits: m.waits,
                bypassed: m.bypassed,
                errors: m.errors,
                damaged: m.damaged,
                run_seconds: m.run_ns as f64 / 1e9,
                saved_seconds: m.saved_ns as f64 / 1e9,
            })
            .collect(),
    })
}

impl Report for MemoReport {
    fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        if self.methods.is_empty() {
            let _ = writeln!(o, "no memoized methods on this server");
            return o;
        }
        let _ = writeln!(
            o,
            "{:<32} {:>8} {:>10} {:>8} {:>8} {:>7} {:>7} {:>8} {:>10}",
            "method", "entries", "bytes", "hits", "misses", "waited", "failed", "damaged", "saved"
        );
        for m in &self.methods {
            let _ = writeln!(
                o,
                "{:<32} {:>8} {:>10} {:>8} {:>8} {:>7} {:>7} {:>8} {:>9.3}s",
                m.method,
                m.entries,
                fmt_bytes(m.bytes),
                m.hits,
                m.misses,
                m.waits,
                m.errors,
                m.damaged,
                m.saved_seconds
            );
        }
        o
    }
}

/// `cradle memo clear`'s result.
#[derive(Debug, Serialize)]
struct MemoClearReport {
    method: Option<String>,
    removed: u64,
}

fn memo_clear(client: &impl MemoCalls, method: &str) -> Result<MemoClearReport, String> {
    if !method.is_empty() {
        memo_ls(client, method)?;
    }
    let removed = client.memo_clear(method)?;
    Ok(MemoClearReport {
        method: (!method.is_empty()).then(|| method.to_owned()),
        removed,
    })
}

impl Report for MemoClearReport {
    fn human(&self) -> String {
        format!(
            "removed {} memo {}{}\n",
            self.removed,
            if self.removed == 1 {
                "entry"
            } else {
                "entries"
            },
            self.method
                .as_ref()
                .map_or(String::new(), |m| format!(" of {m}"))
        )
    }
}

/// `ipc_rpc::builtin::ProvidedStats`, as is.
#[derive(Debug, Serialize)]
struct ProvidedPart {
    methods: u64,
    providers: u64,
    queued: u64,
    in_flight: u64,
    calls: u64,
    replied: u64,
    reply_errors: u64,
    busy: u64,
    deadline_exceeded: u64,
    provider_gone: u64,
    refused: u64,
    resent: u64,
    discarded: u64,
    abandoned: u64,
}

#[derive(Debug, Serialize)]
struct ServerPart {
    pid: u32,
    workers: u32,
    uptime_seconds: f64,
}

#[derive(Debug, Serialize)]
struct SessionsPart {
    /// Connected now.
    open: u64,
    /// Accepted since start.
    total: u64,
    /// Closed for breaking the protocol.
    closed_for_violations: u64,
}

#[derive(Debug, Serialize)]
struct BlobsPart {
    alive: u64,
    bytes: u64,
    large: u64,
    writing: u64,
    leases: u64,
    small_pool_used_bytes: u64,
    small_pool_capacity_bytes: u64,
    small_pool_segments: u64,
    author_pools: u64,
}

#[derive(Debug, Serialize)]
struct CachePart {
    entries: u64,
    bytes: u64,
    budget_bytes: u64,
    hits: u64,
    misses: u64,
    evictions: u64,
    refused_full: u64,
}

#[derive(Debug, Serialize)]
struct DiskPart {
    entries: u64,
    bytes: u64,
    budget_bytes: u64,
    hits: u64,
    misses: u64,
    corruptions: u64,
    evictions: u64,
    queued: u64,
}

#[derive(Debug, Serialize)]
struct SessionPart {
    id: u64,
    pid: u32,
    calls: u64,
    in_flight: u32,
    backlog: u32,
    leases: u64,
    pinned_bytes: u64,
    pool_bytes: u64,
}

fn stats(client: &Client) -> Result<StatsReport, String> {
    let s = client.call::<Stats>(&()).map_err(|e| e.to_string())?;
    let memo = memo_totals(
        client
            .call::<MemoList>(&String::new())
            .map_err(|e| e.to_string())?,
    );
    Ok(stats_report(s, memo))
}

/// The memo's figures, all memoized methods together.
fn memo_totals(list: Vec<ipc_rpc::memo::MemoMethodStats>) -> MemoTotals {
    list.into_iter().fold(MemoTotals::default(), |mut t, m| {
        t.methods += 1;
        t.entries += m.entries;
        t.bytes += m.bytes;
        t.hits += m.hits;
        t.misses += m.misses;
        t.waits += m.waits;
        t.errors += m.errors;
        t.damaged += m.damaged;
        t.saved_seconds += m.saved_ns as f64 / 1e9;
        t
    })
}

/// The report of a `cradle.stats` answer (and the memo's figures), local
/// or remote.
fn stats_report(s: ipc_rpc::builtin::ServerStats, memo: MemoTotals) -> StatsReport {
    let b = &s.blobs;
    StatsReport {
        server: ServerPart {
            pid: s.pid,
            workers: s.workers,
            uptime_seconds: s.uptime_ms as f64 / 1e3,
        },
        sessions: SessionsPart {
            open: s.sessions,
            total: s.sessions_total,
            closed_for_violations: s.sessions_killed,
        },
        calls_answered: s.calls_served,
        wake_syscalls: s.wake_syscalls,
        blobs: BlobsPart {
            alive: b.blobs,
            bytes: b.blob_bytes,
            large: b.large_blobs,
            writing: b.writing,
            leases: b.leases,
            small_pool_used_bytes: b.pool_used,
            small_pool_capacity_bytes: b.pool_capacity,
            small_pool_segments: b.pool_segments,
            author_pools: b.author_pools,
        },
        memory_cache: CachePart {
            entries: b.cache_entries,
            bytes: b.cache_bytes,
            budget_bytes: b.cache_budget,
            hits: b.hits,
            misses: b.misses,
            evictions: b.evictions,
            refused_full: b.cache_full,
        },
        disk_cache: b.disk_enabled.then_some(DiskPart {
            entries: b.disk_entries,
            bytes: b.disk_bytes,
            budget_bytes: b.disk_budget,
            hits: b.disk_hits,
            misses: b.disk_misses,
            corruptions: b.disk_corruptions,
            evictions: b.disk_evictions,
            queued: b.disk_queued,
        }),
        memo,
        provided: {
            let p = &s.provided;
            ProvidedPart {
                methods: p.methods,
                providers: p.providers,
                queued: p.queued,
                in_flight: p.in_flight,
                calls: p.calls,
                replied: p.replied,
                reply_errors: p.reply_errors,
                busy: p.busy,
                deadline_exceeded: p.deadline_exceeded,
                provider_gone: p.provider_gone,
                refused: p.refused,
                resent: p.resent,
                discarded: p.discarded,
                abandoned: p.abandoned,
            }
        },
        per_session: s
            .per_session
            .iter()
            .map(|p| SessionPart {
                id: p.id,
                pid: p.pid,
                calls: p.calls,
                in_flight: p.in_flight,
                backlog: p.backlog,
                leases: p.leases,
                pinned_bytes: p.pinned_bytes,
                pool_bytes: p.pool_bytes,
            })
            .collect(),
    }
}

impl Report for StatsReport {
    fn human(&self) -> String {
        use std::fmt::Write as _;
        let plural =
            |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut o = String::new();
        let (sv, se, b, m) = (
            &self.server,
            &self.sessions,
            &self.blobs,
            &self.memory_cache,
        );
        let _ = writeln!(
            o,
            "server       pid {}, {}, up {:.1} s",
            sv.pid,
            plural(u64::from(sv.workers), "worker thread", "worker threads"),
            sv.uptime_seconds
        );
        let _ = writeln!(
            o,
            "clients      {} connected now, {} since start, {} disconnected for breaking the protocol",
            se.open, se.total, se.closed_for_violations
        );
        let _ = writeln!(o, "calls        {} answered", self.calls_answered);
        let _ = writeln!(
            o,
            "blobs        {} alive ({}), of which {} large and {} still being written; clients hold {}",
            b.alive,
            fmt_bytes(b.bytes),
            b.large,
            b.writing,
            plural(b.leases, "lease", "leases")
        );
        let _ = writeln!(
            o,
            "small blobs  {} of shared memory in use, of {} reserved ({}); {} writing small blobs",
            fmt_bytes(b.small_pool_used_bytes),
            fmt_bytes(b.small_pool_capacity_bytes),
            plural(b.small_pool_segments, "segment", "segments"),
            plural(b.author_pools, "client", "clients")
        );
        let _ = writeln!(
            o,
            "memory cache {}, {} of {}; {} served, {} not found here, {} evicted, {} refused (full)",
            plural(m.entries, "entry", "entries"),
            fmt_bytes(m.bytes),
            fmt_bytes(m.budget_bytes),
            plural(m.hits, "get", "gets"),
            m.misses,
            m.evictions,
            plural(m.refused_full, "put", "puts")
        );
        match &self.disk_cache {
            Some(d) => {
                let _ = writeln!(
                    o,
                    "disk cache   {}, {} of {}; {} served, {} not found here, {} damaged entries dropped, {} evicted, {} waiting to be written",
                    plural(d.entries, "entry", "entries"),
                    fmt_bytes(d.bytes),
                    fmt_bytes(d.budget_bytes),
                    plural(d.hits, "get", "gets"),
                    d.misses,
                    d.corruptions,
                    d.evictions,
                    plural(d.queued, "put", "puts")
                );
            }
            None => {
                let _ = writeln!(o, "disk cache   none (this server keeps no disk tier)");
            }
        }
        let mm = &self.memo;
        let _ = writeln!(
            o,
            "memo         {} memoized, {}, {}; {} answered from the memo ({} after waiting for an identical call), {} runs, {} failed, {} damaged entries; {:.3} s of compute saved",
            plural(mm.methods, "method", "methods"),
            plural(mm.entries, "entry", "entries"),
            fmt_bytes(mm.bytes),
            plural(mm.hits, "call", "calls"),
            mm.waits,
            mm.misses,
            mm.errors,
            mm.damaged,
            mm.saved_seconds
        );
        let p = &self.provided;
        let _ = writeln!(
            o,
            "provided     {} by {} (client processes); {} queued, {} in flight; {} routed, {} answered ({} with an error), {} busy, {} past deadline, {} provider gone, {} sent again",
            plural(p.methods, "method", "methods"),
            plural(p.providers, "provider", "providers"),
            p.queued,
            p.in_flight,
            plural(p.calls, "call", "calls"),
            p.replied,
            p.reply_errors,
            p.busy,
            p.deadline_exceeded,
            p.provider_gone,
            p.resent
        );
        if (self.per_session.len() as u64) < se.open {
            let _ = writeln!(
                o,
                "the {} most active of {} sessions:",
                self.per_session.len(),
                se.open
            );
        }
        if !self.per_session.is_empty() {
            let _ = writeln!(
                o,
                "{:>8} {:>8} {:>12} {:>9} {:>8} {:>7} {:>10} {:>10}",
                "session", "pid", "calls", "in-flight", "backlog", "leases", "pinned", "writing"
            );
            for p in &self.per_session {
                let _ = writeln!(
                    o,
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
        o
    }
}
