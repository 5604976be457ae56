//! Memoized methods offered by providers, end to end: provider processes
//! (this test binary re-executed as `provider`) offer `test.pwork`
//! memoized; callers in other processes call it.
//!
//! * 64 identical calls from 4 processes run the provider's handler once;
//!   equal blob contents give one key, one byte different another; the
//!   memo flags bypass and refresh;
//! * a result is served after its provider left, and after a restart of
//!   the server (from the disk tier), by a new provider's server;
//! * the provider killed mid-run: every waiter gets `ProviderGone`, nothing
//!   is cached, the next provider runs it;
//! * a caller killed mid-run does not end the run: its result is cached;
//! * a provider offering the method not memoized is refused;
//! * a caller that timed out while waiting for a run gives back the result
//!   lease its late answer carries.

mod support;

use cradle_client::{Blob, Call, CallError, Client, ErrorCode, HandlerError, MemoMode};
use ipc_core::sync::{AtomicU64, Ordering};
use ipc_rpc::example::work_byte;
use ipc_rpc::memo::{MemoList, MemoMethodStats};
use ipc_rpc::provide::{Offer, Register};
use std::io::Write;
use std::time::Duration;
use support::*;

ipc_rpc::method! {
    /// (seed, sleep ms, result length) and one optional argument blob →
    /// (provider pid, its run number, value); a result blob of the given
    /// length whose bytes follow from the value.
    pub PWork = "test.pwork" version 1: (u64, u64, u64) => (u32, u64, u64);
}

/// Runs of the handler in this (provider) process.
static RUNS: AtomicU64 = AtomicU64::new(0);

fn pwork(
    call: &mut Call<'_>,
    (seed, sleep_ms, out_len): (u64, u64, u64),
) -> Result<(u32, u64, u64), HandlerError> {
    // Relaxed: a counter read by this handler only.
    let run = RUNS.fetch_add(1, Ordering::Relaxed) + 1;
    // The test may have stopped reading (a closed pipe is no failure).
    let _ = writeln!(std::io::stdout(), "RESULT run {run}");
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_millis(sleep_ms));
    let mut value = seed;
    for b in call.blobs() {
        for &x in b.iter() {
            value = value.wrapping_mul(31).wrapping_add(u64::from(x));
        }
    }
    if out_len > 0 {
        let mut w = call.client().create(out_len as usize)?;
        let bytes: Vec<u8> = (0..out_len).map(|i| work_byte(value, i)).collect();
        w.write_at(0, &bytes);
        call.attach(w.seal()?);
    }
    Ok((std::process::id(), run, value))
}

/// One call with `input` as its argument blob; checks the result blob.
fn call_with(c: &Client, req: (u64, u64, u64), input: Option<&Blob>) -> (u32, u64, u64) {
    let handles: Vec<_> = input.iter().map(|b| b.handle()).collect();
    let (done, results) = c.call_with_blobs::<PWork>(&req, &handles).expect("pwork");
    check(&results, done.2, req.2);
    done
}

fn check(results: &[cradle_client::BlobRef], value: u64, len: u64) {
    if len == 0 {
        assert!(results.is_empty());
        return;
    }
    assert_eq!(results.len(), 1, "one result blob");
    let r = &results[0];
    assert_eq!(r.len() as u64, len);
    let bad = r
        .iter()
        .enumerate()
        .filter(|(i, b)| **b != work_byte(value, *i as u64))
        .count();
    assert_eq!(bad, 0, "every byte of the result is right");
}

fn stats(c: &Client) -> MemoMethodStats {
    let all = c
        .call::<MemoList>(&"test.pwork".to_owned())
        .expect("memo list");
    assert_eq!(all.len(), 1, "{all:?}");
    all[0].clone()
}

#[test]
#[ignore = "entry point of the child processes the test spawns"]
fn child_entry() {
    let Some((role, args)) = child_role() else {
        return;
    };
    let c =
        Client::connect_with(cradle_client::default_socket_path(), sleeping()).expect("connect");
    match role.as_str() {
        "provider" => {
            println!("RESULT providing {}", std::process::id());
            std::io::stdout().flush().unwrap();
            let r = c
                .provider()
                .concurrency(4)
                .serve::<PWork>(pwork)
                .memoized()
                .run();
            // The test may have closed our stdout by now.
            let _ = writeln!(std::io::stdout(), "RESULT ended {r:?}");
        }
        // 16 identical calls at once, from 16 threads, each with its own
        // argument blob of equal bytes.
        "caller" => {
            let sleep_ms: u64 = args[0].parse().unwrap();
            std::thread::scope(|s| {
                let threads: Vec<_> = (0..16)
                    .map(|_| {
                        let c = &c;
                        s.spawn(move || {
                            let input = blob(c, &input_bytes(10_000, None));
                            call_with(c, (1, sleep_ms, 100_000), Some(&input))
                        })
                    })
                    .collect();
                for t in threads {
                    let (pid, run, value) = t.join().unwrap();
                    println!("RESULT {pid} {run} {value}");
                }
            });
            std::io::stdout().flush().unwrap();
        }
        // One slow call; killed by the test mid-run.
        "slow" => {
            println!("RESULT calling");
            std::io::stdout().flush().unwrap();
            let _ = c.call_with_blobs::<PWork>(&(77, 1500, 1000), &[]);
        }
        other => panic!("unknown role {other}"),
    }
}

/// Starts a provider and waits until the server lists it.
fn provider(dog: &Watchdog, socket: &std::path::Path) -> std::process::Child {
    let child = spawn_child("provider", socket, &[]);
    dog.watch_child(child.id());
    let c = Client::connect(socket).unwrap();
    let ready = eventually(Duration::from_secs(30), || {
        c.methods()
            .map(|l| {
                l.iter()
                    .any(|m| m.name == "test.pwork" && !m.providers.is_empty())
            })
            .unwrap_or(false)
    });
    assert!(ready, "the provider never registered");
    child
}

/// Waits until the provider `prov` prints that its first run started.
fn first_run_started(prov: &mut std::process::Child) {
    use std::io::BufRead;
    let out = prov.stdout.take().expect("the provider's stdout");
    let mut lines = std::io::BufReader::new(out).lines();
    let ran = lines.any(|l| l.is_ok_and(|l| l.contains("RESULT run 1")));
    assert!(ran, "the provider started the run");
}

fn kill(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn identical_calls_from_four_processes_run_the_provider_once() {
    let (dog, dir, _server) = with_server("provided memo once", Duration::from_secs(120), &[]);
    let socket = dir.socket();
    let prov = provider(&dog, &socket);
    let children: Vec<_> = (0..4)
        .map(|_| spawn_child("caller", &socket, &["1500".to_owned()]))
        .collect();
    let mut answers = Vec::new();
    for ch in children {
        let (status, lines) = child_results(ch);
        assert!(status.success(), "caller: {status} {lines:?}");
        answers.extend(lines);
    }
    assert_eq!(answers.len(), 64, "{answers:?}");
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    let first: Vec<u64> = answers[0].split(' ').map(|w| w.parse().unwrap()).collect();
    assert_eq!(first[1], 1, "the provider ran once for 64 calls");
    let c = Client::connect_with(&socket, sleeping()).unwrap();
    let st = stats(&c);
    assert_eq!((st.misses, st.hits, st.entries), (1, 63, 1), "{st:?}");
    eprintln!("single flight: {} of 63 waited for the run", st.waits);

    // The same bytes in this process's own blob: a hit.
    let same = blob(&c, &input_bytes(10_000, None));
    let d = call_with(&c, (1, 1500, 100_000), Some(&same));
    assert_eq!((u64::from(d.0), d.1, d.2), (first[0], 1, first[2]));
    // One byte different: another key, a run.
    let other = blob(&c, &input_bytes(10_000, Some(5000)));
    let d2 = call_with(&c, (1, 1500, 100_000), Some(&other));
    assert_eq!(d2.1, 2, "one byte different: a run");
    assert_ne!(d2.2, d.2);
    // Another argument value: a run, then a hit.
    assert_eq!(call_with(&c, (2, 0, 0), None).1, 3);
    assert_eq!(call_with(&c, (2, 0, 0), None).1, 3, "a hit");
    // The flags: bypass runs and stores nothing, refresh runs and stores.
    assert_eq!(
        c.call_memo::<PWork>(&(2, 0, 0), MemoMode::Bypass)
            .unwrap()
            .1,
        4
    );
    assert_eq!(call_with(&c, (2, 0, 0), None).1, 3, "bypass left the entry");
    assert_eq!(
        c.call_memo::<PWork>(&(2, 0, 0), MemoMode::Refresh)
            .unwrap()
            .1,
        5
    );
    assert_eq!(call_with(&c, (2, 0, 0), None).1, 5, "refresh replaced it");
    let st = stats(&c);
    assert_eq!((st.entries, st.bypassed), (3, 1), "{st:?}");
    assert!(st.saved_ns >= 64 * 1_400_000_000, "{st:?}");
    // `cradle memo ls` shows it like a compiled-in method.
    let out = std::process::Command::new(cli_bin())
        .arg("--socket")
        .arg(&socket)
        .args(["memo", "ls", "test.pwork"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("test.pwork@1"),
        "{text}"
    );
    kill(prov);
}

#[test]
fn results_outlive_their_provider_and_a_restart() {
    let dog = Watchdog::arm("provided memo restart", Duration::from_secs(120));
    let dir = TempDir::new("provided-memo-restart");
    let disk_arg = format!("--disk-cache={}", dir.0.join("disk").display());
    let input = input_bytes(300_000, None);
    let first = {
        let mut server = ServerProc::start(&dir.socket(), &[&disk_arg]);
        dog.watch_child(server.pid());
        let prov = provider(&dog, &dir.socket());
        let c = Client::connect_with(dir.socket(), sleeping()).unwrap();
        let b = blob(&c, &input);
        let d = call_with(&c, (3, 0, 1 << 20), Some(&b));
        assert_eq!(d.1, 1);
        kill(prov);
        let gone = eventually(Duration::from_secs(30), || {
            c.methods()
                .map(|l| !l.iter().any(|m| m.name == "test.pwork"))
                .unwrap_or(false)
        });
        assert!(gone, "the server forgot the killed provider");
        // No provider now: the entry still answers.
        assert_eq!(call_with(&c, (3, 0, 1 << 20), Some(&b)), d);
        // A miss has nobody to run it.
        match c.call_with_blobs::<PWork>(&(4, 0, 0), &[]) {
            Err(cradle_client::BlobError::Call(CallError::Remote { code, .. })) => {
                assert_eq!(code, ErrorCode::UnknownMethod);
            }
            other => panic!("a miss without a provider: {other:?}"),
        }
        drop(c);
        assert!(server.terminate().success());
        d
    };
    let mut server = ServerProc::start(&dir.socket(), &[&disk_arg]);
    dog.watch_child(server.pid());
    let prov = provider(&dog, &dir.socket());
    let c = Client::connect_with(dir.socket(), sleeping()).unwrap();
    let b = blob(&c, &input);
    let d = call_with(&c, (3, 0, 1 << 20), Some(&b));
    assert_eq!(d, first, "served from disk: the first provider's answer");
    let st = stats(&c);
    assert_eq!((st.hits, st.misses), (1, 0), "{st:?}");
    kill(prov);
    drop(c);
    assert!(server.terminate().success());
}

#[test]
fn a_provider_killed_mid_run_fails_every_waiter_and_caches_nothing() {
    let (dog, dir, _server) = with_server("provided memo killed", Duration::from_secs(120), &[]);
    let socket = dir.socket();
    let mut prov = provider(&dog, &socket);
    let c = Client::connect_with(&socket, sleeping()).unwrap();
    let waiting: Vec<_> = (0..4)
        .map(|_| c.send::<PWork>(&(9, 5000, 0)).expect("send"))
        .collect();
    // Wait until the provider runs it, then kill it.
    first_run_started(&mut prov);
    // The other three wait for that run (not yet in the server, they would
    // find no provider after the kill: `UnknownMethod`).
    let joined = eventually(Duration::from_secs(30), || stats(&c).waits == 3);
    assert!(joined, "three calls wait for the run: {:?}", stats(&c));
    kill(prov);
    for p in waiting {
        match p.wait() {
            Err(CallError::Remote { code, message }) => {
                assert_eq!(code, ErrorCode::ProviderGone, "{message}");
            }
            other => panic!("a waiter of a killed run: {other:?}"),
        }
    }
    let st = stats(&c);
    assert_eq!((st.entries, st.errors), (0, 1), "nothing cached: {st:?}");
    // The next provider runs it.
    let prov = provider(&dog, &socket);
    assert_eq!(c.call::<PWork>(&(9, 0, 0)).unwrap().1, 1);
    assert_eq!(stats(&c).entries, 1);
    kill(prov);
}

#[test]
fn a_caller_killed_mid_run_leaves_the_run_to_finish_and_be_cached() {
    let (dog, dir, _server) = with_server("provided memo caller", Duration::from_secs(120), &[]);
    let socket = dir.socket();
    let mut prov = provider(&dog, &socket);
    let slow = spawn_child("slow", &socket, &[]);
    dog.watch_child(slow.id());
    first_run_started(&mut prov);
    kill(slow);
    let c = Client::connect_with(&socket, sleeping()).unwrap();
    // Joins the run in flight (or finds its entry).
    let (done, results) = c.call_with_blobs::<PWork>(&(77, 1500, 1000), &[]).unwrap();
    check(&results, done.2, 1000);
    assert_eq!(done.1, 1, "one run, not ended by its caller's death");
    let st = stats(&c);
    assert_eq!((st.misses, st.entries, st.errors), (1, 1, 0), "{st:?}");
    kill(prov);
}

#[test]
fn a_provider_of_the_plain_kind_is_refused_beside_a_memoized_one() {
    let (dog, dir, _server) = with_server("provided memo mixed", Duration::from_secs(60), &[]);
    let socket = dir.socket();
    let prov = provider(&dog, &socket);
    let c = Client::connect(&socket).unwrap();
    let plain = Offer {
        name: "test.pwork".into(),
        version: 1,
        schema_hash: <PWork as ipc_rpc::Method>::SCHEMA_HASH,
        concurrency: 1,
        idempotent: false,
        memoized: false,
    };
    match c.call::<Register>(&plain) {
        Err(CallError::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::SchemaMismatch);
            assert!(message.contains("memoized"), "{message}");
        }
        other => panic!("a plain offer beside a memoized one: {other:?}"),
    }
    kill(prov);
}

#[test]
fn a_late_answer_with_result_blobs_gives_its_leases_back() {
    let (dog, dir, _server) = with_server("provided memo late", Duration::from_secs(120), &[]);
    let socket = dir.socket();
    let prov = provider(&dog, &socket);
    let observer = Client::connect(&socket).unwrap();
    let leases = |c: &Client| c.call::<ipc_rpc::builtin::Stats>(&()).unwrap().blobs.leases;
    let base = leases(&observer);
    let impatient = Client::connect_with(
        &socket,
        cradle_client::ClientOptions {
            timeout: Duration::from_millis(300),
            wait: cradle_client::WaitMode::Sleep,
        },
    )
    .unwrap();
    // A patient caller starts a 1.5 s run; the impatient one joins it and
    // times out; its answer (a RESPONSE whose envelope leases the result
    // blob to its session) comes when the run ends.
    let c = Client::connect_with(&socket, sleeping()).unwrap();
    std::thread::scope(|s| {
        let patient = s.spawn(|| c.call_with_blobs::<PWork>(&(5, 1500, 4096), &[]));
        // Let the patient call's run reach the provider first.
        std::thread::sleep(Duration::from_millis(300));
        match impatient.call_with_blobs::<PWork>(&(5, 1500, 4096), &[]) {
            Err(cradle_client::BlobError::Call(CallError::Timeout(_))) => {}
            other => panic!("expected a timeout: {other:?}"),
        }
        let (done, results) = patient.join().unwrap().unwrap();
        check(&results, done.2, 4096);
    });
    c.flush().unwrap();
    // The impatient client reads the late answer with its next call and
    // gives the lease back.
    let back = eventually(Duration::from_secs(30), || {
        let _ = impatient.call::<ipc_rpc::builtin::Ping>(&vec![1]);
        let _ = impatient.flush();
        leases(&observer) == base
    });
    assert!(back, "leases {} after, {base} before", leases(&observer));
    kill(prov);
}
