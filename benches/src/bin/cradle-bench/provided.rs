//! The "provided call" scenarios: the same echo as the CRADLE scenarios,
//! but served by a provider process (`cradle-bench peer provider`, the
//! client library's `Provider`) instead of a handler compiled into the
//! server. Each call crosses the server twice (caller → server → provider
//! → server → caller). Also: the pipelined throughput through one provider,
//! and a blob passed to the provider and back (4 KiB against 64 MiB).

use crate::transport::{Echo, Peer, SpawnOpts, spawn_peer};
use cradle_client::{CallOptions, Client, HandlerError, WaitMode};
use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

ipc_rpc::method! {
    /// The provider's echo.
    pub(crate) BenchEcho = "bench.echo" version 1: Vec<u8> => Vec<u8>;
    /// Passes the blob passed with the call back as the result; answers its
    /// length.
    pub(crate) BenchBlob = "bench.blob" version 1: () => u64;
}

/// A provider process serving `bench.echo` and `bench.blob` through the
/// server at `socket`, stopped when dropped (its stdin closes).
pub(crate) struct ProviderPeer {
    _peer: Peer,
}

impl ProviderPeer {
    /// Starts the provider (waiting in `wait`: `spin` is spin-then-sleep
    /// 20 ms, like the spinning server; `sleep`; taking up to `depth`
    /// invocations beyond the one its thread runs: `Provider::queue_depth`)
    /// and waits until the server lists it.
    pub(crate) fn start(
        socket: &Path,
        wait: &str,
        depth: u32,
        core: Option<usize>,
    ) -> Result<Self, String> {
        let peer = spawn_peer(
            &[
                "provider".into(),
                socket.display().to_string(),
                wait.to_owned(),
                format!("depth={depth}"),
            ],
            &SpawnOpts {
                core,
                stdin: true,
                ..Default::default()
            },
        )?;
        let mut me = Self { _peer: peer };
        let c = Client::connect(socket).map_err(|e| format!("connect: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listed = c
                .methods()
                .map_err(|e| format!("cradle.methods: {e}"))?
                .iter()
                .any(|m| m.name == "bench.blob" && !m.providers.is_empty());
            if listed {
                return Ok(me);
            }
            me._peer.check_alive()?;
            if Instant::now() > deadline {
                return Err("the bench provider did not register".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The provider process (one thread, `depth` invocations queued beyond
/// it): serves until its stdin closes; with `report`, then prints the calls
/// it served and the allocations this process made (for profiling by hand:
/// docs/benchmarks.md §6).
pub(crate) fn provider(socket: &str, wait: &str, depth: u32, report: bool) -> Result<(), String> {
    let wait = match wait {
        "spin" => WaitMode::SpinThenSleep(Duration::from_millis(20)),
        "sleep" => WaitMode::Sleep,
        w => return Err(format!("wait mode {w:?}")),
    };
    let client = Client::connect_with(
        socket,
        cradle_client::ClientOptions {
            timeout: Duration::from_secs(30),
            wait,
        },
    )
    .map_err(|e| format!("connect {socket}: {e}"))?;
    let p = client
        .provider()
        .queue_depth(depth)
        .serve::<BenchEcho>(|_call, msg| Ok::<_, HandlerError>(msg))
        .serve::<BenchBlob>(|call, ()| {
            let blob = call.take_blobs().pop().ok_or("pass a blob")?;
            let n = blob.len() as u64;
            call.attach_ref(blob);
            Ok(n)
        });
    let stopper = p.stopper();
    std::thread::spawn(move || {
        // The harness closes our stdin to stop us.
        for _ in std::io::stdin().lock().lines() {}
        stopper.stop();
    });
    let served = p.run().map_err(|e| format!("provider: {e}"))?;
    if report {
        println!(
            "provider: {} calls served, {} allocations in this process",
            served.served,
            crate::counters::allocations()
        );
    }
    Ok(())
}

/// Echo calls of the provided `bench.echo`, checked in place.
pub(crate) struct ProvidedEcho {
    client: Client,
    opts: CallOptions,
    cool_down: Duration,
    _provider: ProviderPeer,
}

impl ProvidedEcho {
    pub(crate) fn new(
        client: Client,
        provider: ProviderPeer,
        wait: WaitMode,
        cool_down: Duration,
    ) -> Self {
        Self {
            client,
            opts: CallOptions {
                timeout: Duration::from_secs(30),
                wait,
            },
            cool_down,
            _provider: provider,
        }
    }
}

impl Echo for ProvidedEcho {
    fn round_trip(&mut self, msg: &Vec<u8>) -> Result<(), String> {
        crate::cradle::echo_call::<BenchEcho>(&self.client, msg, self.opts, "bench.echo")
    }

    fn server_wakes(&self) -> Option<u64> {
        crate::cradle::server_wakes(&self.client).ok()
    }

    fn cool_down(&self) -> Duration {
        self.cool_down
    }
}

/// `calls` pipelined 8-byte `bench.echo` calls through the provider, at
/// most `window` in flight, every answer checked; returns the nanoseconds.
pub(crate) fn pipelined(
    client: &Client,
    calls: u64,
    window: usize,
    tag0: u64,
) -> Result<u64, String> {
    crate::cradle::windowed::<BenchEcho>(calls, window, tag0, "bench.echo", |tag| {
        client
            .send::<BenchEcho>(&tag.to_le_bytes().to_vec())
            .map_err(|e| format!("pipelined send: {e}"))
    })
}

/// For profiling by hand (`cradle-bench peer provided-pipelined SOCKET
/// CALLS WINDOW [spin|sleep]`, docs/benchmarks.md §6): `calls` pipelined
/// `bench.echo` calls through the provider serving on the server at
/// `socket`, waiting in `wait`; prints the calls per second and this
/// process's allocations per call.
pub(crate) fn pipelined_peer(
    socket: &str,
    calls: u64,
    window: usize,
    wait: &str,
) -> Result<(), String> {
    let wait = match wait {
        "spin" => WaitMode::Spin,
        "sleep" => WaitMode::Sleep,
        w => return Err(format!("wait mode {w:?}")),
    };
    let client = Client::connect_with(
        socket,
        cradle_client::ClientOptions {
            timeout: Duration::from_secs(30),
            wait,
        },
    )
    .map_err(|e| format!("connect {socket}: {e}"))?;
    let a0 = crate::counters::allocations();
    let ns = pipelined(&client, calls, window, 0)?;
    let allocs = crate::counters::allocations() - a0;
    println!(
        "{calls} calls, window {window}: {:.3} M calls/s, {:.2} allocations per call",
        calls as f64 * 1e3 / ns.max(1) as f64,
        allocs as f64 / calls as f64
    );
    Ok(())
}

/// A blob of `len` bytes for the blob scenario, and a reference to it that
/// keeps its segment mapped in the caller (as an application that reads its
/// results would).
pub(crate) fn make_blob(
    client: &Client,
    len: usize,
) -> Result<(cradle_client::Blob, cradle_client::BlobRef), String> {
    let mut w = client.create(len).map_err(|e| format!("create: {e}"))?;
    w.write_at(0, &[1]);
    w.write_at(len - 1, &[2]);
    let blob = w.seal().map_err(|e| format!("seal: {e}"))?;
    let r = client.get(blob.handle()).map_err(|e| format!("get: {e}"))?;
    Ok((blob, r))
}

/// One `bench.blob` call: `blob` goes to the provider and comes back as the
/// result, adopted; its first and last bytes checked.
pub(crate) fn blob_round_trip(
    client: &Client,
    blob: &cradle_client::Blob,
    opts: CallOptions,
) -> Result<(), String> {
    let (n, back) = client
        .call_with_blobs_opts::<BenchBlob>(&(), &[blob.handle()], opts)
        .map_err(|e| format!("bench.blob: {e}"))?;
    let r = back.first().ok_or("bench.blob: no result blob")?;
    if n as usize != blob.len() || r.len() != blob.len() || r[0] != 1 || r[r.len() - 1] != 2 {
        return Err("bench.blob: the result blob differs".into());
    }
    Ok(())
}
