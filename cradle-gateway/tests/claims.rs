//! Compute-once across the gateway: `RemoteCache::get_or_compute` and the
//! local `Cache::get_or_compute` share the server's claims, a remote
//! claimant that dies frees its claim, and a memoized method called from
//! both sides runs once. Real `cradle-server` and `cradle-gateway`
//! processes on loopback, TLS with a CA generated here.
//!
//! Build the binaries first when running this crate alone: `cargo build -p
//! cradle-server -p cradle-client && cargo test -p cradle-gateway`.

mod support;

use cradle_client::{Blob, Client, ClientOptions, WaitMode};
use ipc_rpc::Method;
use ipc_rpc::example::{Work, WorkDone, WorkRequest, WorkRuns};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Barrier, Mutex};
use std::time::Duration;
use support::*;

fn blob(c: &Client, bytes: &[u8]) -> Blob {
    let mut w = c.create(bytes.len()).expect("create");
    w.write_at(0, bytes);
    w.seal().expect("seal")
}

/// Where a child process finds the gateway (see [`claimant_child`]).
const CHILD_ENV: &str = "CRADLE_GW_TEST_CLAIMANT";

/// The entry point of the remote claimant the kill test spawns: it claims
/// a key through the gateway, says so on stdout, and computes forever
/// (until it is killed).
#[test]
#[ignore = "entry point of the child process a test spawns"]
fn claimant_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut it = spec.split('\n');
    let (url, token, ca, key) = (
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
    );
    let opts = cradle_client::RemoteOptions::from_token_file(token.as_ref())
        .unwrap()
        .with_ca_file(ca.as_ref())
        .unwrap();
    let remote = cradle_client::RemoteClient::connect(url, opts).unwrap();
    let r = remote.cache().get_or_compute(key, || {
        println!("COMPUTING");
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        std::thread::sleep(Duration::from_secs(600));
        Ok::<_, std::io::Error>(b"never".to_vec())
    });
    println!("UNEXPECTED {r:?}");
}

#[test]
fn a_local_and_a_remote_caller_race_and_the_value_is_computed_once() {
    let _w = Watchdog::new(180, "claim race");
    let dir = TempDir::new("claimrace");
    let _server = start_server(dir.path(), "256M");
    let pki = make_pki(dir.path());
    let gw = start_gateway(dir.path(), Some(&pki), &[]);
    let remote = remote(&gw, Some(&pki));
    let local = Client::connect(dir.path().join("cradle.sock")).unwrap();
    let value = bytes(3 << 20, 5);

    // Each order: one side starts, the other joins while it computes; and
    // both at once. A second remote caller joins the last round.
    let remote2 = support::remote(&gw, Some(&pki));
    for (round, (local_delay, remote_delay)) in
        [(0u64, 150u64), (150, 0), (0, 0)].into_iter().enumerate()
    {
        let key = format!("claims/race-{round}");
        let runs = Mutex::new(Vec::<&str>::new());
        let start = Barrier::new(3);
        let (from_local, from_remote, from_remote2) = std::thread::scope(|s| {
            let l = s.spawn(|| {
                start.wait();
                std::thread::sleep(Duration::from_millis(local_delay));
                let r = local
                    .cache()
                    .get_or_compute(&key, Duration::from_secs(60), || {
                        runs.lock().unwrap().push("local");
                        std::thread::sleep(Duration::from_millis(400));
                        Ok::<_, std::io::Error>(blob(&local, &value))
                    })
                    .expect("local get_or_compute");
                r.to_vec()
            });
            let r = s.spawn(|| {
                start.wait();
                std::thread::sleep(Duration::from_millis(remote_delay));
                remote
                    .cache()
                    .get_or_compute(&key, || {
                        runs.lock().unwrap().push("remote");
                        std::thread::sleep(Duration::from_millis(400));
                        Ok::<_, std::io::Error>(value.clone())
                    })
                    .expect("remote get_or_compute")
            });
            start.wait();
            let r2 = (round == 2).then(|| {
                remote2
                    .cache()
                    .get_or_compute(&key, || {
                        runs.lock().unwrap().push("remote2");
                        std::thread::sleep(Duration::from_millis(400));
                        Ok::<_, std::io::Error>(value.clone())
                    })
                    .expect("second remote get_or_compute")
            });
            (l.join().unwrap(), r.join().unwrap(), r2)
        });
        let runs = runs.into_inner().unwrap();
        assert_eq!(runs.len(), 1, "round {round}: computed by {runs:?}");
        assert!(
            from_local == value,
            "round {round}: the local caller's value"
        );
        assert!(
            from_remote == value,
            "round {round}: the remote caller's value"
        );
        if let Some(v) = from_remote2 {
            assert!(
                v == value,
                "round {round}: the second remote caller's value"
            );
        }
        if round == 0 {
            assert_eq!(runs, ["local"], "the local caller started first");
        }
        if round == 1 {
            assert_eq!(runs, ["remote"], "the remote caller started first");
        }
    }
    // A hit through the gateway: nothing computed.
    let again = remote
        .cache()
        .get_or_compute("claims/race-0", || -> Result<Vec<u8>, std::io::Error> {
            panic!("a cached key is not computed")
        })
        .unwrap();
    assert!(again == value);
}

#[test]
fn a_remote_claimant_killed_frees_the_claim_for_a_local_waiter() {
    let _w = Watchdog::new(180, "claimant killed");
    let dir = TempDir::new("claimkill");
    let _server = start_server(dir.path(), "256M");
    let pki = make_pki(dir.path());
    let gw = start_gateway(dir.path(), Some(&pki), &[]);
    let key = "claims/killed";
    let spec = [
        gw.url.as_str(),
        gw.token_file.to_str().unwrap(),
        pki.ca.to_str().unwrap(),
        key,
    ]
    .join("\n");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "claimant_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut claimant = Proc(child);
    let mut lines = BufReader::new(out).lines();
    loop {
        let line = lines
            .next()
            .expect("the claimant ended before computing")
            .unwrap();
        if line.contains("COMPUTING") {
            break;
        }
    }

    let local = Client::connect_with(
        dir.path().join("cradle.sock"),
        ClientOptions {
            timeout: Duration::from_secs(60),
            wait: WaitMode::default(),
        },
    )
    .unwrap();
    let computed = Mutex::new(0u32);
    let value = bytes(100_000, 3);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let r = local
                .cache()
                .get_or_compute(key, Duration::from_secs(60), || {
                    *computed.lock().unwrap() += 1;
                    Ok::<_, std::io::Error>(blob(&local, &value))
                })
                .expect("the local waiter");
            let _ = tx.send(());
            r.to_vec()
        });
        // The waiter waits while the remote claimant lives.
        assert!(
            rx.recv_timeout(Duration::from_millis(700)).is_err(),
            "the local caller did not wait for the remote claimant"
        );
        assert_eq!(*computed.lock().unwrap(), 0);
        claimant.kill();
        let got = waiter.join().unwrap();
        assert!(got == value, "the local waiter computed and got its value");
    });
    assert_eq!(*computed.lock().unwrap(), 1);
    // The remote side sees the value the local caller stored.
    let remote = remote(&gw, Some(&pki));
    assert!(remote.cache().get(key).unwrap().expect("stored") == value);
}

#[test]
fn a_remote_claimant_that_fails_gives_the_claim_to_the_next_caller() {
    let _w = Watchdog::new(120, "claimant fails");
    let dir = TempDir::new("claimfail");
    let _server = start_server(dir.path(), "256M");
    let pki = make_pki(dir.path());
    let gw = start_gateway(dir.path(), Some(&pki), &[]);
    let remote = remote(&gw, Some(&pki));
    let e = remote
        .cache()
        .get_or_compute("claims/fails", || Err::<Vec<u8>, _>("no luck"))
        .unwrap_err();
    assert!(
        matches!(e, cradle_client::ComputeOrGatewayError::Compute("no luck")),
        "{e}"
    );
    // The claim went back: the next caller computes at once.
    let v = remote
        .cache()
        .get_or_compute("claims/fails", || {
            Ok::<_, std::io::Error>(b"second".to_vec())
        })
        .unwrap();
    assert_eq!(v, b"second");
    let local = Client::connect(dir.path().join("cradle.sock")).unwrap();
    assert_eq!(
        &local.cache().get("claims/fails").unwrap().unwrap()[..],
        b"second"
    );
    // Memo keys stay the server's.
    let e = remote
        .cache()
        .get_or_compute("cradle.memo/x", || Ok::<_, std::io::Error>(b"x".to_vec()))
        .unwrap_err();
    assert!(
        matches!(e, cradle_client::ComputeOrGatewayError::Gateway(_)),
        "{e}"
    );
}

#[test]
fn a_memoized_method_called_locally_and_remotely_runs_once() {
    let _w = Watchdog::new(120, "memo across the gateway");
    let dir = TempDir::new("memo");
    let _server = start_server(dir.path(), "256M");
    let pki = make_pki(dir.path());
    let gw = start_gateway(dir.path(), Some(&pki), &[]);
    let remote = remote(&gw, Some(&pki));
    let local = Client::connect(dir.path().join("cradle.sock")).unwrap();
    let before = local.call::<WorkRuns>(&()).unwrap();

    let req = WorkRequest {
        seed: 77,
        sleep_ms: 500,
        input: None,
        out_len: 0,
    };
    let body = ipc_rpc::encode_to_vec(&req, &mut Default::default(), 1 << 20).unwrap();
    let opts = cradle_client::CallOptions {
        timeout: Duration::from_secs(30),
        wait: WaitMode::default(),
    };
    // Both at once: one runs the handler, the other waits for its result.
    let (l, r) = std::thread::scope(|s| {
        let l = s.spawn(|| {
            local
                .call_bytes_opts(Work::NAME, Work::VERSION, &body, &[], opts)
                .expect("local call")
                .0
        });
        let r = s.spawn(|| {
            remote
                .call_bytes(Work::NAME, Work::VERSION, &body, &[])
                .expect("remote call")
                .0
        });
        (l.join().unwrap(), r.join().unwrap())
    });
    assert_eq!(local.call::<WorkRuns>(&()).unwrap() - before, 1, "one run");
    assert_eq!(
        l, r,
        "the remote caller got the very bytes of the local one"
    );
    let done: WorkDone = remote.call::<Work>(&req).expect("typed remote call");
    assert_eq!(done.run, before + 1, "answered from the memo");
    assert_eq!(
        local.call::<WorkRuns>(&()).unwrap() - before,
        1,
        "still one run"
    );
    // A request that names a blob by handle is refused at the gateway.
    let h = *blob(&local, b"abc").handle();
    let bad = WorkRequest {
        input: Some(h),
        ..req
    };
    let e = remote.call::<Work>(&bad).unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
}
