//! The CRADLE side: a private temp directory, real `cradle-server`
//! processes, the calling client, and the pipelined throughput loops.

use crate::transport::{Echo, Peer, SpawnOpts, configure, echo_ok, spawn_peer};
use cradle_client::{CallOptions, Client, ClientOptions, Pending, WaitMode};
use ipc_rpc::builtin::{Ping, Stats};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command};
use std::time::{Duration, Instant};

/// A directory created with mode 0700 under the system temp dir, removed
/// (with its contents) when dropped.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Result<Self, String> {
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = base.join(format!("cradle-bench-{}-{nanos:08x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| format!("create {}: {e}", path.display()))?;
        Ok(Self(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where the server binary is: `--server`, else next to this executable.
pub(crate) fn server_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| format!("current_exe: {e}"))?
            .with_file_name("cradle-server"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no cradle-server binary at {}; build it with \
             `cargo build --release -p cradle-server -p cradle-benches` \
             (same target directory as cradle-bench), or pass --server PATH",
            path.display()
        ))
    }
}

/// A running `cradle-server`, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    socket: PathBuf,
}

impl Server {
    /// Starts `bin --socket <dir>/<name>.sock --log-level warn --no-disk-cache
    /// [--spin-us N]` and waits until a client connects. Without a disk
    /// tier: nothing the harness does is meant to persist, and servers
    /// sharing the default disk-cache directory refuse to start.
    pub(crate) fn start(
        bin: &Path,
        dir: &Path,
        name: &str,
        spin_us: Option<u64>,
        core: Option<usize>,
    ) -> Result<Self, String> {
        Self::start_with(bin, dir, name, spin_us, core, &["--no-disk-cache"])
    }

    /// [`start`](Self::start) with `extra` flags in place of
    /// `--no-disk-cache` (e.g. a disk cache of its own).
    pub(crate) fn start_with(
        bin: &Path,
        dir: &Path,
        name: &str,
        spin_us: Option<u64>,
        core: Option<usize>,
        extra: &[&str],
    ) -> Result<Self, String> {
        let socket = dir.join(format!("{name}.sock"));
        let mut cmd = Command::new(bin);
        cmd.arg("--socket")
            .arg(&socket)
            .args(["--log-level", "warn"])
            .args(extra)
            .env_remove("RUST_LOG");
        if let Some(us) = spin_us {
            cmd.args(["--spin-us", &us.to_string()]);
        }
        configure(
            &mut cmd,
            &SpawnOpts {
                core,
                death_signal: Some(libc::SIGTERM),
                ..Default::default()
            },
        );
        let child = cmd
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let mut server = Self { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Client::connect(&server.socket) {
                Ok(_) => return Ok(server),
                Err(e) => {
                    if let Ok(Some(st)) = server.child.try_wait() {
                        return Err(format!("cradle-server ({name}) exited at start: {st}"));
                    }
                    if Instant::now() > deadline {
                        return Err(format!("cradle-server ({name}) not reachable: {e}"));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// A client of this server waiting in `wait` mode.
    pub(crate) fn connect(&self, wait: WaitMode) -> Result<Client, String> {
        Client::connect_with(
            &self.socket,
            ClientOptions {
                timeout: Duration::from_secs(30),
                wait,
            },
        )
        .map_err(|e| format!("connect {}: {e}", self.socket.display()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid (not yet reaped, so the
            // pid cannot have been reused); no memory involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        crate::transport::reap(&mut self.child, Duration::from_secs(3));
    }
}

/// Echo calls (`ipc_rpc::builtin::Ping`) through a CRADLE session; the
/// response is checked in place (`call_with`, no deserialization).
pub(crate) struct CradleEcho {
    client: Client,
    opts: CallOptions,
    cool_down: Duration,
}

impl std::fmt::Debug for CradleEcho {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CradleEcho")
            .field("opts", &self.opts)
            .finish()
    }
}

impl CradleEcho {
    pub(crate) fn new(client: Client, wait: WaitMode, cool_down: Duration) -> Self {
        Self {
            client,
            opts: CallOptions {
                timeout: Duration::from_secs(30),
                wait,
            },
            cool_down,
        }
    }
}

impl Echo for CradleEcho {
    fn round_trip(&mut self, msg: &Vec<u8>) -> Result<(), String> {
        echo_call::<Ping>(&self.client, msg, self.opts, "ping")
    }

    fn server_wakes(&self) -> Option<u64> {
        server_wakes(&self.client).ok()
    }

    fn cool_down(&self) -> Duration {
        self.cool_down
    }
}

/// The tokio client, driven from the harness thread by a current-thread
/// runtime: each round trip is one `block_on` of a call, during which the
/// runtime also runs the client's driver task (so the round trip includes
/// the driver's work, as it would in an application's runtime).
pub(crate) struct AsyncEcho {
    rt: tokio::runtime::Runtime,
    client: cradle_client::AsyncClient,
    cool_down: Duration,
}

impl std::fmt::Debug for AsyncEcho {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncEcho").finish()
    }
}

impl AsyncEcho {
    pub(crate) fn new(socket: &Path, wait: WaitMode, cool_down: Duration) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let client = rt
            .block_on(cradle_client::AsyncClient::connect_with(
                socket,
                ClientOptions {
                    timeout: Duration::from_secs(30),
                    wait,
                },
            ))
            .map_err(|e| format!("connect {}: {e}", socket.display()))?;
        Ok(Self {
            rt,
            client,
            cool_down,
        })
    }
}

impl Echo for AsyncEcho {
    fn round_trip(&mut self, msg: &Vec<u8>) -> Result<(), String> {
        // `call_with`, like the sync scenarios: the echo is checked in place.
        let ok = self
            .rt
            .block_on(
                self.client
                    .call_with::<Ping, _>(msg, |echo| echo_ok(msg, echo.as_slice())),
            )
            .map_err(|e| format!("async ping: {e}"))?;
        if ok {
            Ok(())
        } else {
            Err("echo differs from the request".into())
        }
    }

    fn server_wakes(&self) -> Option<u64> {
        self.rt
            .block_on(self.client.call::<Stats>(&()))
            .ok()
            .map(|s| s.wake_syscalls)
    }

    fn cool_down(&self) -> Duration {
        self.cool_down
    }
}

/// The server's wake-syscall counter (a `Stats` call, spinning so that the
/// answer does not itself need a wake-up).
pub(crate) fn server_wakes(client: &Client) -> Result<u64, String> {
    client
        .call_opts::<Stats>(
            &(),
            CallOptions {
                timeout: Duration::from_secs(10),
                wait: WaitMode::Spin,
            },
        )
        .map(|s| s.wake_syscalls)
        .map_err(|e| format!("stats: {e}"))
}

/// `calls` pipelined 8-byte pings with at most `window` in flight, every
/// response checked; returns the elapsed nanoseconds. `tag0` seeds the
/// sequence numbers carried in the payloads.
///
/// Through the client's batch API ([`cradle_client::Batch`]): whenever
/// answers came back, the window is topped up with one `send` (the new
/// requests staged in the ring and published together, one doorbell
/// check), and `recv_with` takes every answer present under one lock,
/// each checked in place against its request's sequence number.
pub(crate) fn pipelined(
    client: &Client,
    calls: u64,
    window: usize,
    tag0: u64,
) -> Result<u64, String> {
    let mut batch = client.batch::<Ping>();
    batch.reserve(window);
    // The requests of one top-up, rewritten in place: no allocation per
    // call, and none per run after the first (the counters count them).
    let mut reqs = REQS.with(|r| std::mem::take(&mut *r.borrow_mut()));
    if reqs.len() < window {
        reqs.resize(window, vec![0u8; 8]);
    }
    let r = pipelined_with(&mut batch, &mut reqs, calls, window, tag0);
    REQS.with(|r| *r.borrow_mut() = reqs);
    r
}

thread_local! {
    /// The request buffers of [`pipelined`], kept from one run to the next.
    static REQS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`pipelined`]'s loop, with its batch and request buffers.
fn pipelined_with(
    batch: &mut cradle_client::Batch<'_, Ping>,
    reqs: &mut [Vec<u8>],
    calls: u64,
    window: usize,
    tag0: u64,
) -> Result<u64, String> {
    let mut bad: Option<String> = None;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < calls || batch.in_flight() > 0 {
        let room = (window - batch.in_flight()).min((calls - sent) as usize);
        if room > 0 {
            for (k, r) in reqs[..room].iter_mut().enumerate() {
                let tag = tag0.wrapping_add(sent + k as u64);
                r.copy_from_slice(&tag.to_le_bytes());
            }
            let n = batch
                .send(&reqs[..room])
                .map_err(|e| format!("pipelined send: {e}"))?;
            sent += n as u64;
        }
        // The batch numbers its calls from 0 in send order: call `seq`
        // carried tag `tag0 + seq`.
        batch.recv_with(|seq, r| match r {
            Ok(echo) if echo.as_slice() == tag0.wrapping_add(seq).to_le_bytes() => {}
            Ok(_) => {
                bad.get_or_insert_with(|| "pipelined echo differs from its request".into());
            }
            Err(e) => {
                bad.get_or_insert_with(|| format!("pipelined ping: {e}"));
            }
        });
        if let Some(e) = bad {
            return Err(e);
        }
    }
    Ok(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// One call of the echo method `M` (`what` in errors) with `msg`, its
/// answer checked in place.
pub(crate) fn echo_call<M>(
    client: &Client,
    msg: &Vec<u8>,
    opts: CallOptions,
    what: &str,
) -> Result<(), String>
where
    M: ipc_rpc::Method<Request = Vec<u8>, Response = Vec<u8>>,
{
    let ok = client
        .call_with::<M, _>(msg, opts, |echo| echo_ok(msg, echo.as_slice()))
        .map_err(|e| format!("{what}: {e}"))?;
    if ok {
        Ok(())
    } else {
        Err("echo differs from the request".into())
    }
}

/// `calls` calls of the echo method `M` (`what` in errors), at most `window`
/// in flight: `send` makes the call of each tag (`tag0` onwards), whose
/// answer is checked in order; returns the elapsed nanoseconds.
pub(crate) fn windowed<'c, M>(
    calls: u64,
    window: usize,
    tag0: u64,
    what: &str,
    mut send: impl FnMut(u64) -> Result<Pending<'c, M>, String>,
) -> Result<u64, String>
where
    M: ipc_rpc::Method<Response = Vec<u8>>,
{
    let check = |tag: u64, p: Pending<'c, M>| -> Result<(), String> {
        // Checked in place (`wait_with`), as the latency scenarios do.
        let same = p
            .wait_with(|echo| echo.as_slice() == tag.to_le_bytes())
            .map_err(|e| format!("pipelined {what}: {e}"))?;
        if same {
            Ok(())
        } else {
            Err("pipelined echo differs from its request".into())
        }
    };
    let mut q: VecDeque<(u64, Pending<'c, M>)> = VecDeque::with_capacity(window);
    let start = Instant::now();
    for i in 0..calls {
        if q.len() >= window
            && let Some((tag, p)) = q.pop_front()
        {
            check(tag, p)?;
        }
        let tag = tag0.wrapping_add(i);
        q.push_back((tag, send(tag)?));
    }
    while let Some((tag, p)) = q.pop_front() {
        check(tag, p)?;
    }
    Ok(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// N client processes, each connected to the server, started together.
#[derive(Debug)]
pub(crate) struct Clients {
    peers: Vec<(Peer, BufReader<ChildStdout>)>,
}

impl Clients {
    pub(crate) fn start(
        n: u32,
        socket: &Path,
        calls: u64,
        window: usize,
        core: Option<usize>,
    ) -> Result<Self, String> {
        let mut peers = Vec::new();
        for _ in 0..n {
            let mut peer = spawn_peer(
                &[
                    "pipelined".into(),
                    socket.display().to_string(),
                    calls.to_string(),
                    window.to_string(),
                ],
                &SpawnOpts {
                    core,
                    stdin: true,
                    stdout: true,
                    ..Default::default()
                },
            )?;
            let out = peer
                .child
                .stdout
                .take()
                .ok_or("pipelined client: no stdout")?;
            peers.push((peer, BufReader::new(out)));
        }
        let mut clients = Self { peers };
        for line in clients.read_lines()? {
            if line.trim() != "ready" {
                return Err(format!("pipelined client: unexpected {line:?}"));
            }
        }
        Ok(clients)
    }

    fn read_lines(&mut self) -> Result<Vec<String>, String> {
        let mut lines = Vec::new();
        for (peer, out) in &mut self.peers {
            let mut line = String::new();
            let n = out
                .read_line(&mut line)
                .map_err(|e| format!("pipelined client: {e}"))?;
            if n == 0 {
                peer.check_alive()?;
                return Err("pipelined client closed its output".into());
            }
            lines.push(line);
        }
        Ok(lines)
    }

    /// Runs one round in every client at once; returns (calls, slowest ns).
    pub(crate) fn round(&mut self) -> Result<(u64, u64), String> {
        for (peer, _) in &mut self.peers {
            let stdin = peer.stdin.as_mut().ok_or("pipelined client: stdin")?;
            stdin
                .write_all(b"go\n")
                .and_then(|()| stdin.flush())
                .map_err(|e| format!("pipelined client: {e}"))?;
        }
        let (mut calls, mut ns) = (0u64, 0u64);
        for line in self.read_lines()? {
            let mut it = line.split_whitespace().map(str::parse::<u64>);
            match (it.next(), it.next()) {
                (Some(Ok(c)), Some(Ok(t))) => {
                    calls += c;
                    ns = ns.max(t);
                }
                _ => return Err(format!("pipelined client: unexpected {line:?}")),
            }
        }
        Ok((calls, ns))
    }
}
