//! `cradle --remote URL --token-file F <command>`: every command that talks
//! to a server (ping, stats, put, get, ls, rm, methods, call, memo ls|clear)
//! through a `cradle-gateway` (docs/operations.md "The gateway").

use super::{
    Command, GetReport, LsEntry, LsReport, MemoCalls, MemoCommand, PingReport, Report, RmReport,
    TRANSFER, emit, fmt_bytes, memo_clear, memo_ls, memo_totals, ping_loop, progress_bar,
    progress_forced, provided, stats_report, write_file,
};
use cradle_client::{RemoteClient, RemoteOptions};
use ipc_rpc::builtin::{Ping, Stats};
use ipc_rpc::memo::{MemoClear, MemoList};
use serde::Serialize;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

/// Where and how to reach the gateway.
pub(super) struct Target {
    pub(super) url: String,
    pub(super) token_file: Option<PathBuf>,
    pub(super) ca_file: Option<PathBuf>,
}

/// `cradle --remote … put`'s result.
#[derive(Debug, Serialize)]
struct RemotePutReport {
    key: String,
    bytes: u64,
    /// false: `--if-absent` found the key and left it unchanged.
    stored: bool,
    /// Bytes that crossed the network (0: the gateway had the content).
    bytes_sent: u64,
    /// BLAKE3 of the content, hex.
    blake3: String,
}

impl Report for RemotePutReport {
    fn human(&self) -> String {
        if !self.stored {
            return format!(
                "put {}: already present, left unchanged (--if-absent)",
                self.key
            );
        }
        let sent = if self.bytes_sent == 0 {
            "the gateway had the content: nothing sent".to_owned()
        } else {
            format!("{} sent", fmt_bytes(self.bytes_sent))
        };
        format!("put {}: {}, {sent}", self.key, fmt_bytes(self.bytes))
    }
}

impl MemoCalls for RemoteClient {
    fn memo_list(&self, method: &str) -> Result<Vec<ipc_rpc::memo::MemoMethodStats>, String> {
        self.call::<MemoList>(&method.to_owned())
            .map_err(|e| e.to_string())
    }

    fn memo_clear(&self, method: &str) -> Result<u64, String> {
        self.call::<MemoClear>(&method.to_owned())
            .map_err(|e| e.to_string())
    }
}

/// Runs `work` (a transfer of `total` bytes) while the CLI's transfer bar
/// ([`progress_bar`], shown under the same rules as for local transfers)
/// follows `moved()`, the bytes that have crossed the network so far; a
/// second thread reads the counter ten times a second.
fn with_progress<T>(
    what: &'static str,
    total: u64,
    wanted: bool,
    moved: impl Fn() -> u64 + Sync,
    work: impl FnOnce() -> T,
) -> T {
    let bar = progress_bar(what, total, wanted, TRANSFER);
    if bar.is_hidden() {
        return work();
    }
    let (done, ticks) = std::sync::mpsc::channel::<()>();
    let r = std::thread::scope(|s| {
        let (bar, moved) = (&bar, &moved);
        s.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                ticks.recv_timeout(std::time::Duration::from_millis(100))
            {
                bar.set_position(moved().min(total));
            }
        });
        let r = work();
        drop(done);
        r
    });
    bar.finish_and_clear();
    r
}

/// Connects to the gateway; `timeout`: the deadline of each call in
/// seconds (else the client's default).
fn connect(t: &Target, timeout: Option<f64>) -> Result<RemoteClient, String> {
    let token_file = t
        .token_file
        .as_deref()
        .ok_or("--remote needs --token-file (the gateway's token)")?;
    let mut opts = RemoteOptions::from_token_file(token_file)
        .map_err(|e| format!("token file {}: {e}", token_file.display()))?;
    if let Some(ca) = &t.ca_file {
        opts = opts
            .with_ca_file(ca)
            .map_err(|e| format!("--ca-file {}: {e}", ca.display()))?;
    }
    if let Some(secs) = timeout {
        if !(secs > 0.0 && secs.is_finite()) {
            return Err("--timeout must be a positive number of seconds".into());
        }
        opts.timeout = std::time::Duration::from_secs_f64(secs);
    }
    RemoteClient::connect(&t.url, opts).map_err(|e| e.to_string())
}

/// Runs `command` through the gateway.
pub(super) fn run(t: &Target, command: Command, json: bool) -> Result<(), String> {
    // A call's deadline travels with it (the gateway caps it).
    let timeout = match &command {
        Command::Call { timeout, .. } => Some(*timeout),
        _ => None,
    };
    let remote = connect(t, timeout)?;
    match command {
        Command::Methods => {
            let list = remote
                .call::<ipc_rpc::provide::ListMethods>(&())
                .map_err(|e| format!("cannot list the methods: {e}"))?;
            emit(&provided::methods_report(list), json)
        }
        Command::Call {
            method,
            raw_hex,
            stdin,
            timeout,
            raw,
        } => {
            let args = provided::CallArgs {
                target: method,
                raw_hex,
                stdin,
                timeout,
                raw,
            };
            let r = provided::call_remote(&remote, args)?;
            match r.raw_body() {
                Some(b) => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(b)
                        .and_then(|()| out.flush())
                        .map_err(|e| format!("writing stdout: {e}"))
                }
                None => emit(&r, json),
            }
        }
        Command::Memo {
            what: MemoCommand::Ls { method },
        } => memo_ls(&remote, method.as_deref().unwrap_or("")).and_then(|r| emit(&r, json)),
        Command::Memo {
            what: MemoCommand::Clear { method },
        } => memo_clear(&remote, method.as_deref().unwrap_or("")).and_then(|r| emit(&r, json)),
        Command::Ping { count, size, .. } => {
            ping(&remote, count, size).and_then(|r| emit(&r, json))
        }
        Command::Stats => {
            let s = remote.call::<Stats>(&()).map_err(|e| e.to_string())?;
            let memo = remote
                .call::<MemoList>(&String::new())
                .map_err(|e| e.to_string())?;
            emit(&stats_report(s, memo_totals(memo)), json)
        }
        Command::Put {
            key,
            file,
            if_absent,
            sync,
            no_progress,
            ..
        } => put(&remote, &key, &file, if_absent, sync, !no_progress).and_then(|r| emit(&r, json)),
        Command::Get {
            key,
            output,
            no_progress,
        } => {
            // The size, for the bar: asked only when a bar may be drawn.
            let total = if !no_progress && (std::io::stderr().is_terminal() || progress_forced()) {
                remote
                    .cache()
                    .list(&key)
                    .ok()
                    .and_then(|ks| ks.into_iter().find(|k| k.key == key))
                    .map_or(0, |k| k.size)
            } else {
                0
            };
            let before = remote.bytes_received();
            let bytes = with_progress(
                "get",
                total,
                !no_progress,
                || remote.bytes_received() - before,
                || remote.cache().get(&key),
            )
            .map_err(|e| format!("cannot get {key}: {e}"))?
            .ok_or_else(|| format!("no entry for {key} in the cache"))?;
            match output {
                Some(path) => {
                    write_file(&bytes, &path, !no_progress)?;
                    emit(
                        &GetReport {
                            key,
                            bytes: bytes.len() as u64,
                            output: path,
                        },
                        json,
                    )
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    match out.write_all(&bytes).and_then(|()| out.flush()) {
                        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                            Err(format!("writing stdout: {e}"))
                        }
                        _ => Ok(()),
                    }
                }
            }
        }
        Command::Rm { key } => {
            if remote
                .cache()
                .remove(&key)
                .map_err(|e| format!("cannot remove {key}: {e}"))?
            {
                emit(&RmReport { key, removed: true }, json)
            } else {
                Err(format!("no entry for {key} in the cache"))
            }
        }
        Command::Ls { prefix } => {
            let prefix = prefix.unwrap_or_default();
            let keys = remote
                .cache()
                .list(&prefix)
                .map_err(|e| format!("cannot list the cache: {e}"))?;
            let keys = keys
                .into_iter()
                .map(|k| LsEntry {
                    tier: match (k.in_memory, k.on_disk) {
                        (true, true) => "memory+disk",
                        (true, false) => "memory",
                        _ => "disk",
                    },
                    key: k.key,
                    bytes: k.size,
                })
                .collect();
            emit(&LsReport { prefix, keys }, json)
        }
        Command::Completions { .. } | Command::Man => {
            Err("completions and man need no server: run them without --remote".into())
        }
    }
}

fn ping(remote: &RemoteClient, count: u64, size: usize) -> Result<PingReport, String> {
    if count == 0 {
        return Err("--count must be at least 1".into());
    }
    ping_loop(count, size, "remote", |payload| {
        remote
            .call::<Ping>(payload)
            .map(|echo| echo == *payload)
            .map_err(|e| e.to_string())
    })
}

fn put(
    remote: &RemoteClient,
    key: &str,
    file: &Path,
    if_absent: bool,
    sync: bool,
    progress: bool,
) -> Result<RemotePutReport, String> {
    let mut bytes = Vec::new();
    let read = if file == Path::new("-") {
        std::io::stdin().lock().read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut bytes))
    };
    read.map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let before = remote.bytes_sent();
    let cache = remote.cache();
    let stored = with_progress(
        "put",
        bytes.len() as u64,
        progress,
        || remote.bytes_sent() - before,
        || match (sync, if_absent) {
            (true, a) => cache.put_durable(key, &bytes, a),
            (false, true) => cache.put_if_absent(key, &bytes),
            (false, false) => cache.put(key, &bytes).map(|()| true),
        },
    )
    .map_err(|e| format!("cannot put {key}: {e}"))?;
    Ok(RemotePutReport {
        key: key.to_owned(),
        bytes: bytes.len() as u64,
        stored,
        bytes_sent: remote.bytes_sent() - before,
        blake3: cradle_client::ContentDigest::of(&bytes).hex(),
    })
}
