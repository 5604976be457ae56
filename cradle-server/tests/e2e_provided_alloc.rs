//! Heap allocations of the **server** per provided call after warm-up: 0,
//! with one worker (caller and provider on it) and with two (every action
//! crosses workers). Counted by a malloc-counting shim preloaded into the
//! server (`tests/support/malloc_count.c`, built here with `cc`), read on
//! SIGUSR2. The provider is raw (frames by hand, no allocation in the
//! loop), the caller the sync client.

mod support;

use cradle_client::{CallOptions, Client, ClientOptions, WaitMode};
use ipc_core::ring::FrameMeta;
use ipc_core::sync::{AtomicBool, Ordering};
use ipc_rpc::provide::{Offer, Register};
use ipc_rpc::{Inbox, Method, Outbox, wire};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::*;

ipc_rpc::method! {
    /// An echo served by the raw provider of this test.
    pub Echo = "test.alloc.echo" version 1: Vec<u8> => Vec<u8>;
}

/// Builds the shim into `dir`.
fn build_shim(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/malloc_count.c");
    let out = dir.join("malloc_count.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("this test needs a C compiler (`cc`) to build its malloc counter");
    assert!(status.success(), "cc failed on {}", src.display());
    out
}

/// The server's allocations so far.
fn allocations(pid: u32, dir: &Path) -> u64 {
    let file = dir.join(pid.to_string());
    let _ = std::fs::remove_file(&file);
    signal(pid, libc::SIGUSR2);
    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            text = std::fs::read_to_string(&file).unwrap_or_default();
            text.ends_with('\n')
        }),
        "no count from the server"
    );
    text.trim().parse().expect("a count")
}

/// Answers every INVOKE with its body until `stop`; sends its worker index
/// on `ready` once registered.
fn raw_provider(socket: PathBuf, stop: Arc<AtomicBool>, ready: std::sync::mpsc::Sender<u32>) {
    let raw = RawSession::open(&socket);
    let mut out = Outbox::new(raw.producer());
    let mut inbox = Inbox::new(raw.consumer());
    let offer = Offer {
        name: Echo::NAME.into(),
        version: Echo::VERSION,
        schema_hash: Echo::SCHEMA_HASH,
        concurrency: 1024,
        idempotent: false,
        memoized: false,
    };
    let meta = FrameMeta {
        request_id: 1,
        tag: Register::ID,
        kind: wire::REQUEST,
        flags: 0,
    };
    out.try_send(meta, &offer).expect("register");
    raw.kick();
    loop {
        if let Some(m) = inbox.try_recv().expect("ring") {
            assert_eq!(m.meta.kind, wire::RESPONSE, "registered");
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    ready.send(raw.welcome.worker).expect("ready");
    // Relaxed: a stop flag; nothing is published through it.
    while !stop.load(Ordering::Relaxed) {
        let mut any = false;
        while let Some(m) = inbox.try_recv().expect("ring") {
            if m.meta.kind != wire::INVOKE {
                continue;
            }
            let (_, body) = wire::split_envelope(m.bytes).expect("envelope");
            let reply = FrameMeta {
                kind: wire::REPLY,
                flags: 0,
                ..m.meta
            };
            while out.try_send_encoded(reply, body).is_err() {
                std::thread::yield_now();
            }
            any = true;
        }
        if any {
            inbox.consumer().release();
            raw.kick();
        } else {
            std::thread::yield_now();
        }
    }
}

/// `n` sequential calls, then `n` calls 200 deep.
fn calls(c: &Client, n: usize) {
    let opts = CallOptions {
        timeout: Duration::from_secs(30),
        wait: WaitMode::Sleep,
    };
    let req = vec![7u8; 8];
    for _ in 0..n {
        assert_eq!(c.call_with::<Echo, _>(&req, opts, |r| r.len()).unwrap(), 8);
    }
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..n {
        if pending.len() >= 200 {
            let p: cradle_client::Pending<'_, Echo> = pending.pop_front().unwrap();
            assert_eq!(p.wait().unwrap(), req);
        }
        pending.push_back(c.send::<Echo>(&req).unwrap());
    }
    for p in pending {
        assert_eq!(p.wait().unwrap(), req);
    }
}

fn measure(workers: &str) {
    let dog = Watchdog::arm("provided allocations", Duration::from_secs(300));
    let dir = TempDir::new("provided-alloc");
    let shim = build_shim(&dir.0);
    // The server inherits these; this process was started without them.
    // SAFETY: set before any thread of this test starts, removed at once
    // after the spawn; nothing else reads the environment meanwhile.
    unsafe {
        std::env::set_var("LD_PRELOAD", &shim);
        std::env::set_var("CRADLE_MALLOC_COUNT_DIR", &dir.0);
    }
    let server = ServerProc::start(&dir.socket(), &["--workers", workers]);
    // SAFETY: as above.
    unsafe { std::env::remove_var("LD_PRELOAD") };
    dog.watch_child(server.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let provider = {
        let (socket, stop) = (dir.socket(), Arc::clone(&stop));
        std::thread::spawn(move || raw_provider(socket, stop, tx))
    };
    let provider_worker = rx.recv().expect("the provider registered");
    let c = Client::connect_with(
        dir.socket(),
        ClientOptions {
            timeout: Duration::from_secs(30),
            wait: WaitMode::Sleep,
        },
    )
    .unwrap();
    if workers == "2" {
        // Sessions are dealt round robin: the one after the caller's lands
        // on the provider's worker, so the caller's is on the other one.
        let probe = RawSession::open(&dir.socket());
        assert_eq!(
            probe.welcome.worker, provider_worker,
            "caller and provider apart"
        );
    }
    calls(&c, 5000);
    let before = allocations(server.pid(), &dir.0);
    assert!(
        before > 0,
        "the shim counts (the server allocates at start)"
    );
    calls(&c, 10_000);
    let after = allocations(server.pid(), &dir.0);
    // Relaxed: see `raw_provider`.
    stop.store(true, Ordering::Relaxed);
    provider.join().unwrap();
    eprintln!(
        "--workers {workers}: {} server allocations over 20,000 provided calls",
        after - before
    );
    // No allocation per call: a per-call allocation shows as 10,000 here.
    // A container of the worker reaching a new high-water mark under an
    // interleaving it had not met in the warm-up (seen once in a few runs
    // on a loaded machine) allocates once, not per call: up to 2 are let
    // through, and printed above.
    assert!(
        after - before <= 2,
        "{} server allocations on the provided-call path over 10,000 calls",
        after - before
    );
}

#[test]
fn no_server_allocation_per_provided_call() {
    measure("1");
    measure("2");
}
