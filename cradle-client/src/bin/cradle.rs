//! `cradle`: the command-line client of the CRADLE server.

use clap::{Parser, Subcommand, ValueEnum};
use cradle_client::{CallOptions, Client, WaitMode};
use ipc_rpc::builtin::{Ping, Stats};
use std::path::PathBuf;
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
    /// Print the server's figures: sessions, calls served, uptime, and one line
    /// per connected session.
    Stats,
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
    if !s.per_session.is_empty() {
        println!(
            "{:>8} {:>8} {:>12} {:>9} {:>8}",
            "session", "pid", "calls", "in-flight", "backlog"
        );
        for p in &s.per_session {
            println!(
                "{:>8} {:>8} {:>12} {:>9} {:>8}",
                p.id, p.pid, p.calls, p.in_flight, p.backlog
            );
        }
    }
    Ok(())
}
