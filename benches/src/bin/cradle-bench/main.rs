//! `cradle-bench`: CRADLE's comparative latency harness (docs/design.md §9,
//! docs/benchmarks.md).
//!
//! Every measurement is a ping-pong between two processes. The baselines'
//! echo sides are this binary re-executed as `cradle-bench peer <kind>`; the
//! CRADLE scenarios call real `cradle-server` processes started on sockets in
//! a private 0700 temp directory. All scenarios run in interleaved blocks
//! (A B C … A B C …) so that a disturbance hits them alike; ratios are the
//! median of the per-block ratios of the p50s. The blob scenarios
//! (`blobs.rs`) follow, against their own server, with a reader process.

mod blobs;
mod counters;
mod cradle;
mod disk;
mod idle;
mod load;
mod memo;
mod peer;
mod provided;
mod report;
mod scrape;
mod transport;

use clap::{Parser, Subcommand};
use counters::Snapshot;
use cradle_client::WaitMode;
use report::{FLOOR, Latency, Report, Throughput};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use transport::{Echo, MAX_PAYLOAD};

#[global_allocator]
static ALLOC: counters::Counting = counters::Counting;

/// Payloads of a full run.
const FULL_PAYLOADS: [usize; 6] = [8, 64, 512, 4096, 16384, 65536];
/// Payloads of `--quick`.
const QUICK_PAYLOADS: [usize; 3] = [8, 64, 4096];
/// What the call scenarios measured: latencies, throughputs, and notes on
/// the contention gauge of the idle slots.
type CallResults = (Vec<Latency>, Vec<Throughput>, Vec<String>);

/// In-flight calls of the pipelined scenarios.
const WINDOW: usize = 256;
/// Invocations the pipelined scenario's provider takes beyond the one its
/// thread runs (`Provider::queue_depth`): the whole window.
const PROVIDER_DEPTH: u32 = WINDOW as u32 - 1;

/// Latency harness of CRADLE: measures round trips between two processes for
/// raw baselines (shared-memory spin and futex ping-pongs, a Unix socket, a
/// pipe, TCP on 127.0.0.1) and for CRADLE calls against a real
/// cradle-server, in interleaved blocks; prints percentiles, ratios to the
/// floor and to the Unix socket, hot-path counters and the docs/design.md §9 targets.
///
/// Then the blob scenarios (--blobs): create + write + seal of a 4 KiB blob
/// and its page faults, the pass of a blob the reader has already mapped
/// (4 KiB to 1 GiB), the first map of a large blob, a full read against the
/// same bytes over a Unix socket, and the small/large threshold.
///
/// Then the memo scenarios (--memo): hits of a memoized method (small, and
/// with a 64 MiB blob in and out) against an unmemoized call of the same
/// size, the miss overhead, and first-digest rates.
///
/// cradle-server must sit next to this binary (build both with
/// `cargo build --release -p cradle-server -p cradle-benches`) or be named
/// with --server. A full run takes a few minutes; --quick under one.
#[derive(Debug, Parser)]
#[command(name = "cradle-bench", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    peer: Option<Hidden>,

    /// A short run for CI and smoke tests: payloads 8,64,4096, 4,000 calls per
    /// scenario, 8 blocks, 50,000 pipelined calls per block, 4,000 blob
    /// operations, blobs up to 64 MiB (unless given).
    #[arg(long)]
    quick: bool,

    /// Round trips measured per scenario (transport x payload), split evenly
    /// over the blocks [default: 100000; --quick: 4000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(16..=100_000_000))]
    iters: Option<u64>,

    /// Payload sizes in bytes, comma-separated, 1 to 65536 each
    /// [default: 8,64,512,4096,16384,65536; --quick: 8,64,4096].
    #[arg(long, value_name = "B,B,...", value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    payloads: Option<Vec<u32>>,

    /// Interleaved blocks (at least 8) [default: 16; --quick: 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(8..=10_000))]
    blocks: Option<u32>,

    /// Pin the two sides of every ping-pong: this process to core 0, each echo
    /// peer and cradle-server to core 1 (sched_setaffinity). The extra client
    /// processes of the N-client scenario and the blob reader go to core 0
    /// (so the blob socket transfer runs both ends on core 0).
    #[arg(long)]
    pin: bool,

    /// Client processes of the N-client pipelined scenario.
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    clients: u32,

    /// Pipelined calls per block and per client [default: 500000; --quick: 50000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1000..=1_000_000_000))]
    pipelined_calls: Option<u64>,

    /// Write the results as a JSON array (one object per scenario, then the
    /// targets, then the run) to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Draw p50 against payload for every transport (log-log) as an SVG to FILE.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,

    /// The cradle-server binary [default: cradle-server next to this executable].
    #[arg(long, value_name = "PATH")]
    server: Option<PathBuf>,

    /// Which scenarios run: `on`, the call scenarios then the blob
    /// scenarios; `off`, the call scenarios only; `only`, the blob scenarios
    /// only.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = BlobMode::On)]
    blobs: BlobMode,

    /// Operations per blob latency scenario (4 KiB create + write + seal;
    /// get + drop per size), split over the blocks; the small/large
    /// threshold runs an eighth of it (--quick: a sixteenth) per size and
    /// path [default: 10000; --quick: 4000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(64..=10_000_000))]
    blob_ops: Option<u64>,

    /// CPU hogs of the loaded slots: every block runs the latency scenarios
    /// (but tcp and the metrics server) and the pipelined ones once more
    /// while N busy-looping processes run, and the table shows idle and
    /// loaded side by side; 0: no loaded slots [default: the number of
    /// cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=256))]
    load: Option<u32>,

    /// Instead of the scenarios: connect N sessions to a fresh server, leave
    /// them idle, and report the server's wake-ups and CPU time over
    /// --idle-seconds, its memory and descriptors per session, and the
    /// shared memory of the rings.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    idle_sessions: Option<u64>,

    /// The quiet period of --idle-sessions, in seconds.
    #[arg(long, value_name = "S", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    idle_seconds: u64,
    /// The memo scenarios (memoized calls of cradle.example.work: hits,
    /// misses, bypass, first digests): `on` after the others, `off`, or
    /// `only` them.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = BlobMode::On)]
    memo: BlobMode,

    /// Largest blob of the pass, first-map and full-read scenarios: bytes,
    /// or a number with K, M or G (powers of 1024), 64K to 4G
    /// [default: 1G; --quick: 64M].
    #[arg(long, value_name = "BYTES", value_parser = blobs::parse_size)]
    blob_max: Option<usize>,
}

/// `--blobs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BlobMode {
    On,
    Off,
    Only,
}

#[derive(Debug, Subcommand)]
enum Hidden {
    /// The other side of a baseline (started by the harness itself).
    #[command(hide = true)]
    Peer {
        kind: String,
        #[arg(allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Hidden::Peer { kind, args }) = &cli.peer {
        return match peer::run(kind, args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cradle-bench peer {kind}: {e}");
                ExitCode::from(1)
            }
        };
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ncradle-bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// The settings of one run, after defaults.
#[derive(Debug)]
struct Plan {
    payloads: Vec<usize>,
    iters: u64,
    blocks: usize,
    pipelined_calls: u64,
    clients: u32,
    pin: bool,
    /// CPU hogs of the loaded slots (0: none).
    load: usize,
    blobs: BlobMode,
    memo: BlobMode,
    quick: bool,
    blob: blobs::BlobPlan,
}

impl Plan {
    fn from(cli: &Cli) -> Self {
        let mut payloads: Vec<usize> = match &cli.payloads {
            Some(p) => p.iter().map(|&b| b as usize).collect(),
            None if cli.quick => QUICK_PAYLOADS.to_vec(),
            None => FULL_PAYLOADS.to_vec(),
        };
        payloads.sort_unstable();
        payloads.dedup();
        let blocks = cli.blocks.unwrap_or(if cli.quick { 8 } else { 16 }) as usize;
        Self {
            payloads,
            iters: cli.iters.unwrap_or(if cli.quick { 4_000 } else { 100_000 }),
            blocks,
            pipelined_calls: cli.pipelined_calls.unwrap_or(if cli.quick {
                50_000
            } else {
                500_000
            }),
            clients: cli.clients,
            pin: cli.pin,
            load: cli.load.map_or_else(
                || std::thread::available_parallelism().map_or(1, |n| n.get()),
                |n| n as usize,
            ),
            blobs: if cli.memo == BlobMode::Only {
                BlobMode::Only
            } else {
                cli.blobs
            },
            memo: cli.memo,
            quick: cli.quick,
            blob: blobs::BlobPlan::new(
                cli.blob_ops
                    .unwrap_or(if cli.quick { 4_000 } else { 10_000 }),
                blocks,
                cli.blob_max
                    .unwrap_or(if cli.quick { 64 << 20 } else { 1 << 30 }),
                cli.quick,
            ),
        }
    }
}

/// A transport under measurement and its per-payload scenarios.
struct Slot {
    name: &'static str,
    baseline: &'static str,
    echo: Box<dyn Echo>,
    /// Also measured under `--load`.
    loaded: bool,
}

/// The progress line on stderr.
struct Progress {
    tty: bool,
    last: Instant,
}

impl Progress {
    fn show(&mut self, msg: &str) {
        if self.tty {
            eprint!("\r\x1b[2K{msg}");
        } else if self.last.elapsed() > Duration::from_secs(2) {
            eprintln!("{msg}");
            self.last = Instant::now();
        }
    }

    fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let started = Instant::now();
    let plan = Plan::from(cli);
    let server_bin = cradle::server_binary(cli.server.as_deref())?;
    if let Some(n) = cli.idle_sessions {
        let dir = cradle::TempDir::new()?;
        eprintln!(
            "{n} idle sessions: connecting, then {} s of quiet ...",
            cli.idle_seconds
        );
        let r = idle::run(&server_bin, dir.path(), n as usize, cli.idle_seconds)?;
        print!("{}", r.table());
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (here, there) = if plan.pin {
        if cores < 2 {
            return Err("--pin needs two cores".into());
        }
        counters::pin_to(0).map_err(|e| format!("pin to core 0: {e}"))?;
        (Some(0), Some(1))
    } else {
        (None, None)
    };
    let mut progress = Progress {
        tty: std::io::stderr().is_terminal(),
        last: Instant::now(),
    };

    // Declared first: dropped last, after the servers and clients.
    let dir = cradle::TempDir::new()?;
    let (latency, throughput, notes) = if plan.blobs == BlobMode::Only {
        (Vec::new(), Vec::new(), Vec::new())
    } else {
        calls(
            &plan,
            &server_bin,
            &dir,
            (here, there),
            &mut progress,
            started,
        )?
    };
    let blobs = if plan.blobs == BlobMode::Off || plan.memo == BlobMode::Only {
        None
    } else {
        Some(blobs::run(
            &server_bin,
            dir.path(),
            &plan.blob,
            (here, there),
            &mut progress,
            started,
        )?)
    };
    let memo = if plan.memo == BlobMode::Off {
        None
    } else {
        Some(memo::run(
            &server_bin,
            dir.path(),
            plan.blocks,
            plan.quick,
            there,
            &mut progress,
        )?)
    };
    drop(dir);
    progress.done();

    let report = Report {
        latency,
        throughput,
        blobs,
        memo,
        command: std::iter::once("cradle-bench".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        date: report::today(),
        blocks: plan.blocks,
        pinned: plan.pin,
        load: plan.load,
        seconds: started.elapsed().as_secs_f64(),
    };
    print!("{}", report.table());
    if !notes.is_empty() {
        println!("\nContention gauge of the idle slots (docs/benchmarks.md §3, \"Under load\"):");
        for n in &notes {
            println!("  {n}");
        }
    }
    if let Some(path) = &cli.json {
        std::fs::write(path, report.json())
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &cli.plot {
        std::fs::write(path, report.svg()).map_err(|e| format!("write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The call scenarios: baselines and CRADLE calls at every payload, and the
/// pipelined throughput, in interleaved blocks.
fn calls(
    plan: &Plan,
    server_bin: &std::path::Path,
    dir: &cradle::TempDir,
    (here, there): (Option<usize>, Option<usize>),
    progress: &mut Progress,
    started: Instant,
) -> Result<CallResults, String> {
    progress.show("starting servers and peers ...");
    let spin_server = cradle::Server::start(server_bin, dir.path(), "spin", Some(20_000), there)?;
    let sleep_server = cradle::Server::start(server_bin, dir.path(), "sleep", None, there)?;
    let idle_server = cradle::Server::start(server_bin, dir.path(), "idle", Some(0), there)?;
    // Provider processes (provided.rs) on the spinning and the idle server.
    let spin_provider = provided::ProviderPeer::start(spin_server.socket(), "spin", 0, there)?;
    let idle_provider = provided::ProviderPeer::start(idle_server.socket(), "sleep", 0, there)?;
    // The spinning server again, with its metrics endpoint on a Unix socket:
    // the call path's cost of the metrics, and of a scrape.
    let metrics_sock = dir.path().join("metrics-endpoint.sock");
    let metrics_server = cradle::Server::start_with(
        server_bin,
        dir.path(),
        "metrics",
        Some(20_000),
        there,
        &[
            "--no-disk-cache",
            "--metrics",
            metrics_sock.to_str().ok_or("temp dir path is not UTF-8")?,
        ],
    )?;

    let slot = |name, baseline, echo, loaded| Slot {
        name,
        baseline,
        echo,
        loaded,
    };
    let mut slots = vec![
        slot(
            FLOOR,
            FLOOR,
            Box::new(transport::ShmEcho::start(false, there)?) as Box<dyn Echo>,
            true,
        ),
        slot(
            "floor-futex",
            FLOOR,
            Box::new(transport::ShmEcho::start(true, there)?),
            true,
        ),
        slot(report::UNIX, FLOOR, transport::unix_socket(there)?, true),
        slot("pipe", FLOOR, transport::pipe(there)?, true),
        slot("tcp", FLOOR, transport::tcp(there)?, false),
        slot(
            "cradle-spin",
            FLOOR,
            Box::new(cradle::CradleEcho::new(
                spin_server.connect(WaitMode::Spin)?,
                WaitMode::Spin,
                // The server keeps polling 20 ms after the last call.
                Duration::from_millis(25),
            )),
            true,
        ),
        slot(
            report::SPIN_METRICS,
            "cradle-spin",
            Box::new(cradle::CradleEcho::new(
                metrics_server.connect(WaitMode::Spin)?,
                WaitMode::Spin,
                Duration::from_millis(25),
            )),
            false,
        ),
        // The defaults on both sides: the client's adaptive spin-then-sleep
        // against a server with its default (adaptive) spin.
        slot(
            report::DEFAULT,
            FLOOR,
            Box::new(cradle::CradleEcho::new(
                sleep_server.connect(WaitMode::default())?,
                WaitMode::default(),
                Duration::ZERO,
            )),
            true,
        ),
        slot(
            "cradle-sleep",
            "floor-futex",
            Box::new(cradle::CradleEcho::new(
                sleep_server.connect(WaitMode::Sleep)?,
                WaitMode::Sleep,
                Duration::ZERO,
            )),
            true,
        ),
        slot(
            "cradle-sleep-both",
            "floor-futex",
            Box::new(cradle::CradleEcho::new(
                idle_server.connect(WaitMode::Sleep)?,
                WaitMode::Sleep,
                Duration::ZERO,
            )),
            true,
        ),
    ];
    // The tokio client in the same two modes as the sync client it is held
    // to (docs/design.md §9: p50 <= 2x the sync client in the same mode).
    slots.push(slot(
        "cradle-async",
        "cradle-spin",
        Box::new(cradle::AsyncEcho::new(
            spin_server.socket(),
            WaitMode::Spin,
            Duration::from_millis(25),
        )?),
        true,
    ));
    slots.push(slot(
        "cradle-async-sleep",
        "cradle-sleep-both",
        Box::new(cradle::AsyncEcho::new(
            idle_server.socket(),
            WaitMode::Sleep,
            Duration::ZERO,
        )?),
        true,
    ));

    // The same echo served by a provider process instead of the server:
    // each call crosses the server twice.
    slots.push(Slot {
        name: report::PROVIDED_SPIN,
        baseline: "cradle-spin",
        echo: Box::new(provided::ProvidedEcho::new(
            spin_server.connect(WaitMode::Spin)?,
            spin_provider,
            WaitMode::Spin,
            Duration::from_millis(25),
        )),
        loaded: false,
    });
    slots.push(Slot {
        name: report::PROVIDED_SLEEP,
        baseline: "cradle-sleep-both",
        echo: Box::new(provided::ProvidedEcho::new(
            idle_server.connect(WaitMode::Sleep)?,
            idle_provider,
            WaitMode::Sleep,
            Duration::ZERO,
        )),
        loaded: false,
    });
    // The pipelined throughput goes through a provider of its own, on a
    // spinning server of its own. That provider sleeps when idle: with the
    // caller and the server spinning, a third spinning process would
    // oversubscribe a 2-core machine (pipelined, its ring is rarely empty
    // anyway). The blob pass is a latency scenario: it calls the spinning
    // provider of `provided-spin` (which also serves `bench.blob`).
    let prov_server =
        cradle::Server::start(server_bin, dir.path(), "provided", Some(20_000), there)?;
    let prov_provider =
        provided::ProviderPeer::start(prov_server.socket(), "sleep", PROVIDER_DEPTH, there)?;
    let prov_client = prov_server.connect(WaitMode::Spin)?;
    let prov_calls = (plan.pipelined_calls / 10).max(1_000);
    let blob_sizes = [4usize << 10, 64 << 20];
    let blob_client = spin_server.connect(WaitMode::Spin)?;
    let blob_inputs = blob_sizes
        .iter()
        .map(|&n| provided::make_blob(&blob_client, n))
        .collect::<Result<Vec<_>, _>>()?;
    let blob_opts = cradle_client::CallOptions {
        timeout: Duration::from_secs(30),
        wait: WaitMode::Spin,
    };
    let blob_per_block = ((plan.iters / plan.blocks as u64) / 4).max(16);
    let mut blob_lat: Vec<Latency> = blob_sizes
        .iter()
        .map(|&n| Latency {
            name: report::PROVIDED_BLOB,
            payload: n,
            baseline: report::PROVIDED_BLOB,
            samples: Vec::new(),
            block_p50: Vec::new(),
            client_wakes: 0,
            server_wakes: None,
            allocs: 0,
            minflt: 0,
            loaded: false,
        })
        .collect();
    let mut through_provider = Throughput {
        name: report::PROVIDED_PIPELINED,
        clients: 1,
        window: WINDOW,
        payload: 8,
        calls: 0,
        block_rates: Vec::new(),
        client_wakes: None,
        server_wakes: None,
        allocs: None,
        scrapes: None,
        loaded: false,
    };

    let pipe_client = spin_server.connect(WaitMode::Spin)?;
    // Under load, the defaults on both sides (a spinning client on a busy
    // machine is a choice this scenario does not make for the user).
    let pipe_default = sleep_server.connect(WaitMode::default())?;
    let metrics_client = metrics_server.connect(WaitMode::Spin)?;
    let mut n_clients = cradle::Clients::start(
        plan.clients,
        spin_server.socket(),
        plan.pipelined_calls,
        WINDOW,
        here,
    )?;
    let mut unix_pipe = load::UnixPipelined::start(there)?;
    let hogs = if plan.load > 0 {
        Some(load::Hogs::start(plan.load)?)
    } else {
        None
    };

    let per_block = (plan.iters / plan.blocks as u64).max(1);
    let mut latency: Vec<Latency> = Vec::new();
    for loaded in [false, true] {
        if loaded && hogs.is_none() {
            continue;
        }
        for &p in &plan.payloads {
            for s in slots.iter().filter(|s| !loaded || s.loaded) {
                latency.push(Latency {
                    name: s.name,
                    payload: p,
                    baseline: s.baseline,
                    loaded,
                    samples: Vec::with_capacity((per_block as usize) * plan.blocks),
                    block_p50: Vec::with_capacity(plan.blocks),
                    client_wakes: 0,
                    server_wakes: s.echo.server_wakes().map(|_| 0),
                    allocs: 0,
                    minflt: 0,
                });
            }
        }
    }
    let mut messages: Vec<Vec<u8>> = plan
        .payloads
        .iter()
        .map(|&p| (0..p.min(MAX_PAYLOAD)).map(|i| (i * 7 + 3) as u8).collect())
        .collect();
    let mut scratch: Vec<u64> = Vec::with_capacity(per_block as usize);
    let pipelined = |name, loaded, counters: bool| Throughput {
        name,
        loaded,
        clients: 1,
        window: WINDOW,
        payload: 8,
        calls: 0,
        block_rates: Vec::new(),
        client_wakes: counters.then_some(0),
        server_wakes: counters.then_some(0),
        allocs: counters.then_some(0),
        scrapes: None,
    };
    let mut one = pipelined("cradle-pipelined", false, true);
    let mut one_loaded = pipelined("cradle-pipelined", true, true);
    let mut sock = pipelined(report::UNIX_PIPELINED, false, false);
    let mut sock_loaded = pipelined(report::UNIX_PIPELINED, true, false);
    // The same 1-client run against the server with a metrics endpoint,
    // without and with a scraper at work.
    let mut unscraped = Throughput {
        scrapes: Some(0),
        ..pipelined(report::PIPELINED_METRICS, false, false)
    };
    let mut scraped = Throughput {
        scrapes: Some(0),
        ..pipelined(report::PIPELINED_SCRAPED, false, false)
    };
    let mut many = Throughput {
        clients: plan.clients,
        ..pipelined("cradle-pipelined-n", false, false)
    };

    // Warm-up: page in buffers, fill caches and the client's arenas.
    let warm = per_block.clamp(1, 2_000);
    let mut tag = 0u64;
    for (pi, msg) in messages.iter_mut().enumerate() {
        for s in &mut slots {
            progress.show(&format!(
                "warm-up {} {}",
                s.name,
                report::size(plan.payloads[pi])
            ));
            s.echo.begin()?;
            for _ in 0..warm {
                tag += 1;
                stamp(msg, tag);
                s.echo.round_trip(msg)?;
            }
            s.echo.end()?;
            std::thread::sleep(s.echo.cool_down());
        }
    }
    cradle::pipelined(&pipe_client, plan.pipelined_calls.min(20_000), WINDOW, 0)?;
    provided::pipelined(&prov_client, prov_calls.min(5_000), WINDOW, 0)?;
    for (blob, _) in &blob_inputs {
        for _ in 0..16 {
            provided::blob_round_trip(&blob_client, blob, blob_opts)?;
        }
    }
    cradle::pipelined(&pipe_default, plan.pipelined_calls.min(20_000), WINDOW, 0)?;
    cradle::pipelined(&metrics_client, plan.pipelined_calls.min(20_000), WINDOW, 0)?;
    unix_pipe.run(plan.pipelined_calls.min(20_000), WINDOW, 0)?;
    scrape::once(&metrics_sock)?;
    std::thread::sleep(Duration::from_millis(25));

    // Per idle slot (name, payload): in how many blocks this thread's
    // contention gauge was busy (backing off, or the machine crowded in most
    // recent samples) when the slot started, of how many.
    let mut gauge_log: std::collections::BTreeMap<(&str, usize), (u32, u32)> =
        std::collections::BTreeMap::new();
    // What the settling after each block's loaded slots found.
    let mut settles: Vec<load::Settled> = Vec::new();
    let mut latency_pass = |loaded: bool,
                            b: usize,
                            slots: &mut [Slot],
                            latency: &mut [Latency],
                            tag: &mut u64,
                            progress: &mut Progress|
     -> Result<(), String> {
        for (pi, msg) in messages.iter_mut().enumerate() {
            for s in slots.iter_mut().filter(|s| !loaded || s.loaded) {
                let payload = plan.payloads[pi];
                let l = latency
                    .iter_mut()
                    .find(|l| l.name == s.name && l.payload == payload && l.loaded == loaded)
                    .ok_or("no latency entry for a slot")?;
                progress.show(&format!(
                    "[block {}/{}] {} {}{} ({:.0} s)",
                    b + 1,
                    plan.blocks,
                    s.name,
                    report::size(l.payload),
                    if loaded { " loaded" } else { "" },
                    started.elapsed().as_secs_f64()
                ));
                if !loaded {
                    // This thread's contention gauge as the idle slot starts
                    // (a back-off left over from the loaded slots would make
                    // it sleep where it spins on an idle machine).
                    let g = ipc_core::doorbell::gauge_state(Instant::now());
                    let busy = !g.backing_off.is_zero() || g.crowded_samples >= 4;
                    let e = gauge_log.entry((s.name, payload)).or_insert((0, 0));
                    e.0 += u32::from(busy);
                    e.1 += 1;
                }
                s.echo.begin()?;
                let sw0 = s.echo.server_wakes();
                let c0 = Snapshot::now();
                let first = l.samples.len();
                for _ in 0..per_block {
                    *tag += 1;
                    stamp(msg, *tag);
                    let t = Instant::now();
                    s.echo.round_trip(msg)?;
                    let ns = t.elapsed().as_nanos();
                    l.samples.push(u64::try_from(ns).unwrap_or(u64::MAX));
                }
                let c = c0.delta(&Snapshot::now());
                let sw1 = s.echo.server_wakes();
                s.echo.end()?;
                l.client_wakes += c.wakes;
                l.allocs += c.allocs;
                l.minflt += c.minflt;
                if let (Some(total), Some(a), Some(z)) = (l.server_wakes.as_mut(), sw0, sw1) {
                    *total += z.saturating_sub(a);
                }
                scratch.clear();
                scratch.extend_from_slice(&l.samples[first..]);
                scratch.sort_unstable();
                l.block_p50.push(report::percentile(&scratch, 0.5));
                std::thread::sleep(s.echo.cool_down());
            }
        }
        Ok(())
    };
    // One pipelined run of the 1-client scenario, with its counters.
    let one_run = |t: &mut Throughput, tag: &mut u64| -> Result<(), String> {
        let pipe_client = if t.loaded {
            &pipe_default
        } else {
            &pipe_client
        };
        let sw0 = cradle::server_wakes(pipe_client)?;
        let c0 = Snapshot::now();
        let ns = cradle::pipelined(pipe_client, plan.pipelined_calls, WINDOW, *tag)?;
        let c = c0.delta(&Snapshot::now());
        let sw1 = cradle::server_wakes(pipe_client)?;
        *tag += plan.pipelined_calls;
        t.calls += plan.pipelined_calls;
        t.block_rates
            .push(plan.pipelined_calls as f64 * 1e9 / ns.max(1) as f64);
        for (slot, v) in [
            (&mut t.client_wakes, c.wakes),
            (&mut t.allocs, c.allocs),
            (&mut t.server_wakes, sw1.saturating_sub(sw0)),
        ] {
            if let Some(x) = slot {
                *x += v;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
        Ok(())
    };
    let mut sock_run = |t: &mut Throughput, tag: &mut u64| -> Result<(), String> {
        let ns = unix_pipe.run(plan.pipelined_calls, WINDOW, *tag)?;
        *tag += plan.pipelined_calls;
        t.calls += plan.pipelined_calls;
        t.block_rates
            .push(plan.pipelined_calls as f64 * 1e9 / ns.max(1) as f64);
        Ok(())
    };

    for b in 0..plan.blocks {
        latency_pass(false, b, &mut slots, &mut latency, &mut tag, progress)?;
        // Pipelined throughput, 1 client (this process), then N processes.
        progress.show(&format!(
            "[block {}/{}] cradle-pipelined ({:.0} s)",
            b + 1,
            plan.blocks,
            started.elapsed().as_secs_f64()
        ));
        one_run(&mut one, &mut tag)?;
        progress.show(&format!(
            "[block {}/{}] cradle-pipelined x{} ({:.0} s)",
            b + 1,
            plan.blocks,
            plan.clients,
            started.elapsed().as_secs_f64()
        ));
        let (calls, ns) = n_clients.round()?;
        many.calls += calls;
        many.block_rates.push(calls as f64 * 1e9 / ns.max(1) as f64);
        std::thread::sleep(Duration::from_millis(25));
        // Pipelined through one provider process.
        progress.show(&format!(
            "[block {}/{}] {} ({:.0} s)",
            b + 1,
            plan.blocks,
            through_provider.name,
            started.elapsed().as_secs_f64()
        ));
        let ns = provided::pipelined(&prov_client, prov_calls, WINDOW, tag)?;
        tag += prov_calls;
        through_provider.calls += prov_calls;
        through_provider
            .block_rates
            .push(prov_calls as f64 * 1e9 / ns.max(1) as f64);
        // A blob to the provider and back, 4 KiB and 64 MiB.
        for (l, (blob, _)) in blob_lat.iter_mut().zip(&blob_inputs) {
            progress.show(&format!(
                "[block {}/{}] {} {} ({:.0} s)",
                b + 1,
                plan.blocks,
                l.name,
                report::size(l.payload),
                started.elapsed().as_secs_f64()
            ));
            let first = l.samples.len();
            let c0 = Snapshot::now();
            for _ in 0..blob_per_block {
                let t = Instant::now();
                provided::blob_round_trip(&blob_client, blob, blob_opts)?;
                l.samples
                    .push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
            let c = c0.delta(&Snapshot::now());
            l.client_wakes += c.wakes;
            l.allocs += c.allocs;
            l.minflt += c.minflt;
            // Not `scratch`: the latency pass holds it.
            let mut sorted = l.samples[first..].to_vec();
            sorted.sort_unstable();
            l.block_p50.push(report::percentile(&sorted, 0.5));
        }
        std::thread::sleep(Duration::from_millis(25));
        sock_run(&mut sock, &mut tag)?;
        // Pipelined against the server with a metrics endpoint: unscraped,
        // then with a scraper fetching /metrics every SCRAPE_EVERY.
        for (t, scraping) in [(&mut unscraped, false), (&mut scraped, true)] {
            progress.show(&format!(
                "[block {}/{}] {} ({:.0} s)",
                b + 1,
                plan.blocks,
                t.name,
                started.elapsed().as_secs_f64()
            ));
            let scraper = scraping.then(|| scrape::Scraper::start(&metrics_sock));
            let ns = cradle::pipelined(&metrics_client, plan.pipelined_calls, WINDOW, tag)?;
            if let Some(s) = scraper {
                let n = s.stop()?;
                if let Some(total) = t.scrapes.as_mut() {
                    *total += n;
                }
            }
            tag += plan.pipelined_calls;
            t.calls += plan.pipelined_calls;
            t.block_rates
                .push(plan.pipelined_calls as f64 * 1e9 / ns.max(1) as f64);
            std::thread::sleep(Duration::from_millis(25));
        }
        // The same again while the hogs run.
        if let Some(h) = &hogs {
            h.resume()?;
            let r = latency_pass(true, b, &mut slots, &mut latency, &mut tag, progress)
                .and_then(|()| {
                    progress.show(&format!(
                        "[block {}/{}] cradle-pipelined loaded ({:.0} s)",
                        b + 1,
                        plan.blocks,
                        started.elapsed().as_secs_f64()
                    ));
                    one_run(&mut one_loaded, &mut tag)
                })
                .and_then(|()| sock_run(&mut sock_loaded, &mut tag));
            h.pause()?;
            r?;
            // The next block's idle slots start once the gauges have seen
            // the idle machine again (load.rs, `settle`).
            if b + 1 < plan.blocks {
                let mut warm = || {
                    pipe_default
                        .call::<ipc_rpc::builtin::Ping>(&vec![0u8; 8])
                        .map(|_| ())
                        .map_err(|e| format!("settle: {e}"))
                };
                settles.push(load::settle(Duration::from_secs(2), &mut warm)?);
            }
        }
    }
    let mut notes = Vec::new();
    if !settles.is_empty() {
        let n = settles.len();
        let idle = settles.iter().filter(|s| s.machine_idle).count();
        let waited: Duration = settles.iter().map(|s| s.waited).sum();
        let busy = settles
            .iter()
            .filter(|s| !s.gauge.backing_off.is_zero() || s.gauge.crowded_samples >= 4)
            .count();
        notes.push(format!(
            "settling after the loaded slots: {n} times, {:.0} ms on average; machine idle at \
             the end {idle}/{n} (else other work ran: not the hogs, which are stopped); this \
             thread's gauge still busy at the end {busy}/{n}",
            waited.as_secs_f64() * 1e3 / n as f64
        ));
    }
    for ((name, payload), (busy, of)) in &gauge_log {
        // The default mode's slot is the one whose waits run on this
        // thread and adapt to its gauge (the async slots wait on the
        // runtime's threads; the spin and sleep slots do not adapt).
        if *name == report::DEFAULT {
            notes.push(format!(
                "idle slot {name} {}: this thread's gauge busy at its start in {busy} of {of} \
                 blocks",
                report::size(*payload)
            ));
        }
    }
    progress.show("stopping servers and peers ...");
    let load = hogs.as_ref().map_or(0, load::Hogs::len);
    drop(hogs);
    drop(n_clients);
    drop(pipe_client);
    drop(pipe_default);
    drop(metrics_client);
    drop(slots);
    drop(blob_inputs);
    drop(blob_client);
    drop(prov_client);
    drop(prov_provider);
    drop((
        spin_server,
        sleep_server,
        idle_server,
        metrics_server,
        prov_server,
    ));
    latency.extend(blob_lat);
    let mut throughput = vec![one, many, unscraped, scraped, through_provider, sock];
    if load > 0 {
        throughput.extend([one_loaded, sock_loaded]);
    }
    Ok((latency, throughput, notes))
}

/// Writes the call's sequence number into the first bytes of the payload.
fn stamp(msg: &mut [u8], tag: u64) {
    let b = tag.to_le_bytes();
    let k = msg.len().min(8);
    msg[..k].copy_from_slice(&b[..k]);
}
