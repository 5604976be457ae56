//! Provided methods end to end, with the client library on both sides
//! (`e2e_provided.rs` drives the server with raw providers instead):
//! provider processes (this test binary re-executed as `provider`) offer
//! methods through a real server, caller processes call them.
//!
//! * two providers and eight callers: every answer right, both providers
//!   used, and the counts `cradle methods --json` reports add up;
//! * a provider killed (SIGKILL) with 100 calls in flight: every caller gets
//!   `ProviderGone`, and the server forgets the provider;
//! * a provider that stalls: calls past their deadline fail, in flight and
//!   queued, and the server's figures return to zero;
//! * the async provider serves many calls at once;
//! * a session that provides also makes ordinary calls (the response ring
//!   carries both).

mod support;

use cradle_client::{AsyncClient, Call, CallError, Client, ErrorCode, HandlerError, MethodInfo};
use std::time::{Duration, Instant};
use support::*;

ipc_rpc::method! {
    /// Sleeps the given milliseconds, then answers them.
    pub Stall = "test.stall" version 1: u64 => u64;
    /// Adds.
    pub Add = "test.add" version 1: (u64, u64) => u64;
}

/// The bytes method the providers offer: the body reversed.
const REVERSE: &str = "test.reverse";

fn reverse(_call: &mut Call<'_>, body: &[u8]) -> Result<Vec<u8>, HandlerError> {
    Ok(body.iter().rev().copied().collect())
}

fn stall(_call: &mut Call<'_>, ms: u64) -> Result<u64, HandlerError> {
    std::thread::sleep(Duration::from_millis(ms));
    Ok(ms)
}

/// Runs a provider of `test.reverse`, `test.add` and `test.stall` with the
/// concurrency in `args[0]` until killed or the server goes.
fn provide(args: &[String]) {
    let concurrency: u32 = args.first().map_or(4, |a| a.parse().unwrap());
    let c =
        Client::connect_with(cradle_client::default_socket_path(), sleeping()).expect("connect");
    let r = c
        .provider()
        .concurrency(concurrency)
        .serve_bytes(REVERSE, 1, reverse)
        .serve::<Add>(|call, (a, b)| {
            // A provider's session makes ordinary calls too.
            let echo = call
                .client()
                .call::<ipc_rpc::builtin::Ping>(&b"x".to_vec())?;
            assert_eq!(echo, b"x");
            Ok(a + b)
        })
        .serve::<Stall>(stall)
        .run();
    println!("RESULT ended {r:?}");
}

/// `n` calls of each method, every answer checked.
fn call_many(n: u64) {
    let c =
        Client::connect_with(cradle_client::default_socket_path(), sleeping()).expect("connect");
    for i in 0..n {
        let body = i.to_le_bytes();
        let (r, blobs) = c.call_bytes(REVERSE, 1, &body, &[]).expect("reverse");
        assert!(blobs.is_empty());
        let mut want = body;
        want.reverse();
        assert_eq!(r, want);
        assert_eq!(c.call::<Add>(&(i, 1)).expect("add"), i + 1);
    }
    println!("RESULT calls {}", 2 * n);
}

#[test]
#[ignore = "entry point of the child processes the test spawns"]
fn child_entry() {
    let Some((role, args)) = child_role() else {
        return;
    };
    match role.as_str() {
        "provider" => provide(&args),
        "caller" => call_many(args[0].parse().unwrap()),
        other => panic!("unknown role {other}"),
    }
}

fn method<'a>(list: &'a [MethodInfo], name: &str) -> Option<&'a MethodInfo> {
    list.iter().find(|m| m.name == name)
}

/// Whether `name` is listed with `ok` true of it within `limit`.
fn method_soon(c: &Client, name: &str, limit: Duration, ok: impl Fn(&MethodInfo) -> bool) -> bool {
    eventually(limit, || {
        c.methods()
            .ok()
            .and_then(|l| method(&l, name).map(&ok))
            .unwrap_or(false)
    })
}

/// The `cradle` CLI, on the server at `socket`.
fn cli(socket: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(cli_bin());
    cmd.arg("--socket").arg(socket);
    cmd
}

/// Waits until `name` has `n` providers (0: it is not listed any more).
fn wait_providers(c: &Client, name: &str, n: usize) {
    let ok = eventually(Duration::from_secs(30), || {
        c.methods()
            .ok()
            .map(|l| method(&l, name).map_or(0, |m| m.providers.len()) == n)
            .unwrap_or(false)
    });
    assert!(ok, "{name} never had {n} providers: {:?}", c.methods());
}

#[test]
fn two_providers_and_eight_callers_add_up() {
    let (dog, dir, _server) = with_server("provided balance", Duration::from_secs(240), &[]);
    let socket = dir.socket();
    let mut providers: Vec<_> = (0..2)
        .map(|_| spawn_child("provider", &socket, &["2".into()]))
        .collect();
    for p in &providers {
        dog.watch_child(p.id());
    }
    let c = Client::connect_with(&socket, sleeping()).unwrap();
    wait_providers(&c, REVERSE, 2);
    const N: u64 = 200;
    let callers: Vec<_> = (0..8)
        .map(|_| spawn_child("caller", &socket, &[N.to_string()]))
        .collect();
    for ch in callers {
        let (status, lines) = child_results(ch);
        assert!(status.success(), "caller: {status} {lines:?}");
        assert_eq!(lines, [format!("calls {}", 2 * N)]);
    }
    // The CLI's view: 8 × N calls of each method, shared by both providers.
    let out = cli(&socket).args(["methods", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let methods = v["methods"].as_array().unwrap();
    for name in [REVERSE, "test.add"] {
        let m = methods
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {v}"));
        assert_eq!(m["origin"], "provided");
        let ps = m["providers"].as_array().unwrap();
        assert_eq!(ps.len(), 2, "{m}");
        let per: Vec<u64> = ps.iter().map(|p| p["served"].as_u64().unwrap()).collect();
        assert_eq!(per.iter().sum::<u64>(), 8 * N, "{m}");
        assert_eq!(m["served"].as_u64().unwrap(), 8 * N, "{m}");
        assert!(per.iter().all(|&s| s > 0), "both providers serve: {per:?}");
        assert_eq!(m["errors"].as_u64().unwrap(), 0, "{m}");
        for p in ps {
            assert_eq!(p["in_flight"].as_u64().unwrap(), 0, "{p}");
            assert!(p["pid"].as_u64().unwrap() > 0, "{p}");
        }
    }
    // The human table names both.
    let out = cli(&socket).arg("methods").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("test.reverse@1") && text.contains("provided"),
        "{text}"
    );
    assert!(text.contains("cradle.ping@1"), "{text}");
    // A bytes call from the CLI.
    let out = cli(&socket)
        .args(["call", "test.reverse@1", "--raw-hex", "010203"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "030201");
    // The body from standard input, the response as is.
    let mut child = cli(&socket)
        .args(["call", "test.reverse", "--stdin", "--raw"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"olleh");
    // An unknown method is one clear line naming it.
    let out = cli(&socket)
        .args(["call", "test.nothing@3", "--raw-hex", "00"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("test.nothing") && err.contains("version 3"),
        "{err}"
    );
    for p in &mut providers {
        p.kill().ok();
        p.wait().ok();
    }
}

#[test]
fn a_killed_provider_fails_its_100_calls_in_flight_with_provider_gone() {
    let (dog, dir, _server) = with_server("provided kill", Duration::from_secs(240), &[]);
    let socket = dir.socket();
    let mut provider = spawn_child("provider", &socket, &["100".into()]);
    dog.watch_child(provider.id());
    let c = Client::connect_with(&socket, sleeping()).unwrap();
    wait_providers(&c, "test.stall", 1);
    let calls: Vec<_> = (0..100)
        .map(|_| c.send::<Stall>(&600_000).expect("send"))
        .collect();
    // All 100 held by the provider.
    let held = method_soon(&c, "test.stall", Duration::from_secs(30), |m| {
        m.providers[0].in_flight == 100
    });
    assert!(held, "{:?}", c.methods());
    let killed = Instant::now();
    provider.kill().unwrap();
    provider.wait().unwrap();
    for p in calls {
        match p.wait() {
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::ProviderGone), "{e}"),
            Ok(v) => panic!("a killed provider answered {v}"),
        }
    }
    eprintln!(
        "100 calls in flight answered ProviderGone {:?} after SIGKILL",
        killed.elapsed()
    );
    // The method has no provider left: a new call is refused at once.
    wait_providers(&c, "test.stall", 0);
    let e = c.call::<Stall>(&1).unwrap_err();
    assert!(
        matches!(
            e.code(),
            Some(ErrorCode::UnknownMethod | ErrorCode::ProviderGone)
        ),
        "{e}"
    );
}

#[test]
fn a_stalling_provider_makes_calls_miss_their_deadlines_and_nothing_stays_behind() {
    let (dog, dir, _server) = with_server("provided deadlines", Duration::from_secs(240), &[]);
    let socket = dir.socket();
    let mut provider = spawn_child("provider", &socket, &["1".into()]);
    dog.watch_child(provider.id());
    let c = Client::connect_with(&socket, sleeping()).unwrap();
    wait_providers(&c, "test.stall", 1);
    let short = cradle_client::CallOptions {
        timeout: Duration::from_millis(300),
        wait: cradle_client::WaitMode::Sleep,
    };
    // In flight: the provider sleeps past the deadline.
    let e = c.call_opts::<Stall>(&2_000, short).unwrap_err();
    let missed = |e: &CallError| {
        matches!(e, CallError::Timeout(_)) || e.code() == Some(ErrorCode::DeadlineExceeded)
    };
    assert!(missed(&e), "{e}");
    // Queued: the provider (concurrency 1) is still busy with the first.
    let e = c.call_opts::<Stall>(&1, short).unwrap_err();
    assert!(missed(&e), "{e}");
    // The provider comes back: a call with time to spare is answered.
    assert_eq!(c.call::<Stall>(&5).unwrap(), 5);
    // The server holds nothing for the expired calls any more.
    let clean = method_soon(&c, "test.stall", Duration::from_secs(10), |m| {
        m.queued == 0 && m.providers[0].in_flight == 0
    });
    assert!(clean, "{:?}", c.methods());
    provider.kill().ok();
    provider.wait().ok();
}

#[test]
fn the_async_provider_serves_many_calls_at_once() {
    let (_dog, dir, _server) = with_server("provided async", Duration::from_secs(120), &[]);
    let socket = dir.socket();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let p = AsyncClient::connect(&socket).await.unwrap();
        let provider = p
            .provider()
            .concurrency(64)
            .serve::<Stall, _>(|_call, ms| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(ms)
            })
            .serve_bytes(REVERSE, 1, |call, mut b| async move {
                b.reverse();
                for blob in call.take_blobs() {
                    call.attach_ref(blob);
                }
                Ok(b)
            });
        let stop = provider.stopper();
        let served = tokio::spawn(provider.run());
        let c = AsyncClient::connect(&socket).await.unwrap();
        let ok = async {
            loop {
                let l = c.methods().await.unwrap();
                if method(&l, "test.stall").is_some_and(|m| m.providers.len() == 1) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), ok)
            .await
            .unwrap();
        // 64 calls of 200 ms each, all in flight together.
        let start = Instant::now();
        let calls = (0..64).map(|_| {
            let c = c.clone();
            async move { c.call::<Stall>(&200).await }
        });
        for r in futures_join(calls).await {
            assert_eq!(r.unwrap(), 200);
        }
        eprintln!("64 async calls of 200 ms took {:?}", start.elapsed());
        // A blob passed to the provider comes back as a result blob.
        let mut w = c.create(3).await.unwrap();
        w.write_at(0, b"abc");
        let blob = w.seal().await.unwrap();
        let (r, back) = c
            .call_bytes(REVERSE, 1, b"xy", &[blob.handle()])
            .await
            .unwrap();
        assert_eq!(r, b"yx");
        assert_eq!(back.len(), 1);
        assert_eq!(&back[0][..], b"abc");
        stop.stop();
        let report = served.await.unwrap().unwrap();
        assert_eq!(report.served, 65);
        assert_eq!(report.errors, 0);
    });
}

/// Awaits every future (in order), with no extra dependency.
async fn futures_join<F: std::future::Future + Send + 'static>(
    fs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

ipc_rpc::method! {
    /// Answers `n` and passes back a new blob of `n` bytes.
    pub Make = "test.make" version 1: u64 => u64;
}

/// Blobs alive and leases held, as the server counts them.
fn blob_figures(c: &Client) -> (u64, u64) {
    let s = c.call::<ipc_rpc::builtin::Stats>(&()).unwrap();
    (s.blobs.blobs, s.blobs.leases)
}

#[test]
fn blobs_passed_and_returned_are_all_given_back() {
    let (_dog, dir, _server) = with_server("provided leases", Duration::from_secs(120), &[]);
    let socket = dir.socket();
    let pc = Client::connect_with(&socket, sleeping()).unwrap();
    let provider = pc.provider().concurrency(2).serve::<Make>(|call, n| {
        let mut w = call.client().create(n as usize)?;
        w.write_at(0, &vec![9; n as usize]);
        call.attach(w.seal()?);
        // The argument blobs (if any) are read and let go.
        Ok(n + call.blobs().iter().map(|b| b.len() as u64).sum::<u64>())
    });
    let stop = provider.stopper();
    std::thread::scope(|s| {
        let served = s.spawn(move || provider.run());
        let c = Client::connect_with(&socket, sleeping()).unwrap();
        wait_providers(&c, "test.make", 1);
        let baseline = blob_figures(&c);
        let mut w = c.create(1 << 20).unwrap();
        w.write_at(0, &[1]);
        let arg = w.seal().unwrap();
        for n in [10u64, 300 << 10, 2 << 20] {
            // A plain call takes no blob: the result's lease is given back.
            let plain = c.call::<Make>(&n);
            if plain.is_err() {
                stop.stop();
            }
            assert_eq!(plain.unwrap(), n);
            // With blobs: the argument goes, the result comes back mapped.
            let (r, back) = c.call_with_blobs::<Make>(&n, &[arg.handle()]).unwrap();
            assert_eq!(r, n + (1 << 20));
            assert_eq!(back.len(), 1);
            assert_eq!(back[0].len() as u64, n);
            assert!(back[0].iter().all(|&b| b == 9));
        }
        drop(arg);
        c.flush().unwrap();
        let back_to_baseline = eventually(Duration::from_secs(10), || {
            c.flush().ok();
            blob_figures(&c) == baseline
        });
        let now = blob_figures(&c);
        // Stopped before asserting: a failure must not leave the provider
        // thread (and so this scope) running.
        stop.stop();
        let report = served.join().unwrap().unwrap();
        assert!(
            back_to_baseline,
            "blobs and leases {now:?}, before {baseline:?}"
        );
        assert_eq!((report.served, report.errors), (6, 0));
    });
}
