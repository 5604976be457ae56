//! Memoized calls end to end, with the stock server's
//! `cradle.example.work` (a handler that counts its runs): single flight
//! across processes, keys over blob contents, restarts (served from disk),
//! damaged disk entries, the memo flags, reserved keys, eviction, and
//! compute-once claims (`get_or_compute`) with a claimant killed.

mod support;

use cradle_client::{Client, MemoMode};
use ipc_rpc::Method;
use ipc_rpc::example::{Work, WorkDone, WorkRequest, WorkRuns, work_byte};
use ipc_rpc::memo::{MemoClear, MemoList, MemoMethodStats};
use std::io::Write;
use std::time::Duration;
use support::*;

fn runs(c: &Client) -> u64 {
    c.call::<WorkRuns>(&()).expect("work_runs")
}

fn work_stats(c: &Client) -> MemoMethodStats {
    let all = c
        .call::<MemoList>(&Work::NAME.to_owned())
        .expect("memo list");
    assert_eq!(all.len(), 1, "{all:?}");
    all[0].clone()
}

/// Checks a result blob's bytes against `value`; returns a short summary.
fn check_output(c: &Client, d: &WorkDone, len: u64) {
    let h = d.output.expect("an output blob");
    assert_eq!(h.len, len);
    let r = c.adopt(&h).expect("adopt the output");
    let bad = r
        .iter()
        .enumerate()
        .filter(|(i, b)| **b != work_byte(d.value, *i as u64))
        .count();
    assert_eq!(bad, 0, "every byte of the output is right");
}

#[test]
#[ignore = "entry point of the child processes the test spawns"]
fn child_entry() {
    let Some((role, args)) = child_role() else {
        return;
    };
    let c = Client::connect(cradle_client::default_socket_path()).expect("connect");
    match role.as_str() {
        // 16 identical calls at once, each process with its own input blob
        // (equal bytes).
        "caller" => {
            let input = blob(&c, &input_bytes(10_000, None));
            let req = WorkRequest {
                seed: 1,
                sleep_ms: 1500,
                input: Some(*input.handle()),
                out_len: 100_000,
            };
            let pending: Vec<_> = (0..16)
                .map(|_| c.send::<Work>(&req).expect("send"))
                .collect();
            for p in pending {
                let d = p.wait().expect("work");
                check_output(&c, &d, req.out_len);
                println!("RESULT {} {}", d.value, d.run);
            }
            std::io::stdout().flush().unwrap();
        }
        // get_or_compute; `args[0]` is how long computing takes, `args[1]`
        // whether to print before computing (so the test can kill us).
        "computer" => {
            let ms: u64 = args[0].parse().unwrap();
            let r = c
                .cache()
                .get_or_compute("shared/thing", Duration::from_secs(60), || {
                    println!("RESULT computing {}", std::process::id());
                    std::io::stdout().flush().unwrap();
                    std::thread::sleep(Duration::from_millis(ms));
                    Ok::<_, std::io::Error>(blob(
                        &c,
                        format!("made by {}", std::process::id()).as_bytes(),
                    ))
                })
                .expect("get_or_compute");
            println!("RESULT got {}", String::from_utf8_lossy(&r));
            std::io::stdout().flush().unwrap();
        }
        // One slow call with a result blob; killed by the test mid-run.
        "slow" => {
            let req = WorkRequest {
                seed: 77,
                sleep_ms: 2000,
                input: None,
                out_len: 1000,
            };
            let p = c.send::<Work>(&req).expect("send");
            println!("RESULT sent");
            std::io::stdout().flush().unwrap();
            let _ = p.wait();
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn sixty_four_identical_calls_from_four_processes_run_the_handler_once() {
    let (_dog, dir, _server) = with_server("memo single flight", Duration::from_secs(120), &[]);
    let children: Vec<_> = (0..4)
        .map(|_| spawn_child("caller", &dir.socket(), &[]))
        .collect();
    let mut answers = Vec::new();
    for ch in children {
        let (status, lines) = child_results(ch);
        assert!(status.success(), "caller: {status} {lines:?}");
        answers.extend(lines);
    }
    assert_eq!(answers.len(), 64, "{answers:?}");
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "identical answers: {answers:?}"
    );
    let c = Client::connect(dir.socket()).unwrap();
    assert_eq!(runs(&c), 1, "the handler ran once for 64 calls");
    let st = work_stats(&c);
    assert_eq!((st.misses, st.hits), (1, 63), "{st:?}");
    eprintln!("single flight: {} of 63 waited for the run", st.waits);

    // The same bytes in this process's own blob: a hit, no run.
    let same = blob(&c, &input_bytes(10_000, None));
    let mut req = WorkRequest {
        seed: 1,
        sleep_ms: 1500,
        input: Some(*same.handle()),
        out_len: 100_000,
    };
    let d = c.call::<Work>(&req).unwrap();
    assert_eq!(d.run, 1);
    assert_eq!(runs(&c), 1, "two blobs with equal bytes: one key");
    // One byte different: another key.
    let other = blob(&c, &input_bytes(10_000, Some(5000)));
    req.input = Some(*other.handle());
    req.sleep_ms = 0;
    let d2 = c.call::<Work>(&req).unwrap();
    assert_eq!((d2.run, runs(&c)), (2, 2), "one byte different: a run");
    assert_ne!(d2.value, d.value);
    check_output(&c, &d2, 100_000);
    // Another argument value: another run.
    req.seed = 2;
    assert_eq!(c.call::<Work>(&req).unwrap().run, 3);
    assert_eq!(c.call::<Work>(&req).unwrap().run, 3, "and a hit after it");
    // The flags: bypass runs and stores nothing, refresh runs and stores.
    assert_eq!(c.call_memo::<Work>(&req, MemoMode::Bypass).unwrap().run, 4);
    assert_eq!(
        c.call::<Work>(&req).unwrap().run,
        3,
        "bypass left the entry"
    );
    assert_eq!(c.call_memo::<Work>(&req, MemoMode::Refresh).unwrap().run, 5);
    assert_eq!(c.call::<Work>(&req).unwrap().run, 5, "refresh replaced it");
    let st = work_stats(&c);
    assert_eq!(st.entries, 3, "{st:?}");
    assert_eq!(st.bypassed, 1);
    assert!(st.saved_ns >= 63 * 1_400_000_000, "{st:?}");
}

#[test]
fn memo_keys_cannot_be_written_by_clients_and_clear_removes_entries() {
    let (_dog, dir, _server) = with_server("memo reserved", Duration::from_secs(60), &[]);
    let c = Client::connect(dir.socket()).unwrap();
    let req = WorkRequest {
        seed: 9,
        sleep_ms: 0,
        input: None,
        out_len: 10,
    };
    assert_eq!(c.call::<Work>(&req).unwrap().run, 1);
    let b = blob(&c, b"poison");
    let key = format!("{}{}@1/00", ipc_rpc::memo::MEMO_PREFIX, Work::NAME);
    let e = c.cache().put(&key, &b).unwrap_err().to_string();
    assert!(e.contains("memo entries"), "{e}");
    let e = c.cache().remove(&key).unwrap_err().to_string();
    assert!(e.contains("memo entries"), "{e}");
    assert_eq!(c.call::<MemoClear>(&String::new()).unwrap(), 1);
    assert_eq!(work_stats(&c).entries, 0);
    assert_eq!(c.call::<Work>(&req).unwrap().run, 2, "cleared: runs again");
}

#[test]
fn a_result_survives_a_restart_and_a_damaged_entry_is_a_reported_miss() {
    let dog = Watchdog::arm("memo restart", Duration::from_secs(120));
    let dir = TempDir::new("memo-restart");
    let disk = dir.0.join("disk");
    let disk_arg = format!("--disk-cache={}", disk.display());
    let input = input_bytes(300_000, None);
    let req_for = |h| WorkRequest {
        seed: 3,
        sleep_ms: 0,
        input: Some(h),
        out_len: 1 << 20,
    };
    let first = {
        let mut server = ServerProc::start(&dir.socket(), &[&disk_arg]);
        dog.watch_child(server.pid());
        let c = Client::connect(dir.socket()).unwrap();
        let b = blob(&c, &input);
        let d = c.call::<Work>(&req_for(*b.handle())).unwrap();
        assert_eq!(d.run, 1);
        drop(c);
        // A clean stop writes every queued put.
        assert!(server.terminate().success());
        d
    };
    {
        let mut server = ServerProc::start(&dir.socket(), &[&disk_arg]);
        dog.watch_child(server.pid());
        let c = Client::connect(dir.socket()).unwrap();
        let b = blob(&c, &input);
        let d = c.call::<Work>(&req_for(*b.handle())).unwrap();
        assert_eq!((d.value, d.run), (first.value, 1), "served from disk");
        assert_eq!(runs(&c), 0, "the handler did not run in this server");
        check_output(&c, &d, 1 << 20);
        assert_eq!(work_stats(&c).hits, 1);
        drop(c);
        assert!(server.terminate().success());
    }
    // Damage every entry's last byte.
    let entries = disk.join("entries");
    let mut damaged = 0;
    for f in std::fs::read_dir(&entries).unwrap() {
        let p = f.unwrap().path();
        let mut bytes = std::fs::read(&p).unwrap();
        *bytes.last_mut().unwrap() ^= 0xff;
        std::fs::write(&p, bytes).unwrap();
        damaged += 1;
    }
    assert!(damaged >= 2, "the entry and its result: {damaged} files");
    let server = ServerProc::start(&dir.socket(), &[&disk_arg]);
    dog.watch_child(server.pid());
    let c = Client::connect(dir.socket()).unwrap();
    let b = blob(&c, &input);
    let d = c.call::<Work>(&req_for(*b.handle())).unwrap();
    assert_eq!(
        (d.value, d.run),
        (first.value, 1),
        "recomputed, never served"
    );
    assert_eq!(runs(&c), 1, "a damaged entry is a miss");
    check_output(&c, &d, 1 << 20);
    let st = work_stats(&c);
    assert_eq!(st.damaged, 1, "reported: {st:?}");
    assert!(c.cache().stats().unwrap().disk_corruptions >= 1);
}

#[test]
fn result_blobs_count_against_the_budget_and_held_ones_are_not_evicted() {
    let (_dog, dir, _server) = with_server(
        "memo eviction",
        Duration::from_secs(120),
        &["--mem-cache-bytes=16M", "--no-disk-cache"],
    );
    let c = Client::connect(dir.socket()).unwrap();
    let req = |seed| WorkRequest {
        seed,
        sleep_ms: 0,
        input: None,
        out_len: 5 << 20,
    };
    let kept = c.call::<Work>(&req(0)).unwrap();
    let held = c.adopt(&kept.output.unwrap()).unwrap();
    let before = c.cache().stats().unwrap();
    assert!(
        before.cache_bytes >= 5 << 20,
        "the result counts: {before:?}"
    );
    for seed in 1..6 {
        let d = c.call::<Work>(&req(seed)).unwrap();
        check_output(&c, &d, 5 << 20);
        c.flush().unwrap();
    }
    let after = c.cache().stats().unwrap();
    assert!(after.evictions > 0, "{after:?}");
    assert!(after.cache_bytes <= after.cache_budget, "{after:?}");
    // The held result was not evicted: its entry still answers, no run.
    assert!(
        held.iter()
            .enumerate()
            .all(|(i, b)| *b == work_byte(kept.value, i as u64))
    );
    let n = runs(&c);
    let again = c.call::<Work>(&req(0)).unwrap();
    assert_eq!((again.value, again.run), (kept.value, kept.run));
    assert_eq!(runs(&c), n, "its entry was kept: no run");
    assert_eq!(
        again.output.unwrap().id,
        kept.output.unwrap().id,
        "the held blob answers"
    );
}

#[test]
fn get_or_compute_from_three_processes_computes_once_and_survives_a_killed_claimant() {
    let (_dog, dir, _server) = with_server("memo claims", Duration::from_secs(120), &[]);
    // One computes; the others receive its blob.
    let kids: Vec<_> = (0..3)
        .map(|_| spawn_child("computer", &dir.socket(), &["800".into()]))
        .collect();
    let mut computing = 0;
    let mut got = Vec::new();
    for k in kids {
        let (status, lines) = child_results(k);
        assert!(status.success(), "{status} {lines:?}");
        computing += lines.iter().filter(|l| l.starts_with("computing")).count();
        got.extend(lines.into_iter().filter(|l| l.starts_with("got")));
    }
    assert_eq!(computing, 1, "one process computed");
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|g| g == &got[0]), "{got:?}");

    // The claimant killed mid-computation: the next one computes.
    let c = Client::connect(dir.socket()).unwrap();
    assert!(c.cache().remove("shared/thing").unwrap());
    let mut first = spawn_child("computer", &dir.socket(), &["60000".into()]);
    {
        use std::io::BufRead;
        let out = first.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(out).lines();
        // libtest prints its own lines first.
        let line = lines
            .find(|l| l.as_ref().is_ok_and(|l| l.contains("RESULT computing")))
            .expect("the first computer starts computing");
        assert!(line.is_ok());
    }
    let second = spawn_child("computer", &dir.socket(), &["10".into()]);
    std::thread::sleep(Duration::from_millis(300));
    first.kill().unwrap();
    first.wait().unwrap();
    let (status, lines) = child_results(second);
    assert!(status.success(), "{status} {lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("computing")),
        "{lines:?}"
    );
    let me = lines
        .iter()
        .find_map(|l| l.strip_prefix("computing "))
        .unwrap()
        .to_owned();
    assert!(
        lines.iter().any(|l| l == &format!("got made by {me}")),
        "{lines:?}"
    );
}

/// Reads a child's stdout until a `RESULT <what>` line.
fn wait_for_line(child: &mut std::process::Child, what: &str) {
    use std::io::BufRead;
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    // libtest prints its own lines first.
    let found = lines.any(|l| l.is_ok_and(|l| l.contains(&format!("RESULT {what}"))));
    assert!(found, "the child printed {what}");
}

#[test]
fn a_run_whose_caller_is_killed_is_run_again_for_a_waiter() {
    let (_dog, dir, _server) = with_server("memo killed caller", Duration::from_secs(60), &[]);
    let mut slow = spawn_child("slow", &dir.socket(), &[]);
    wait_for_line(&mut slow, "sent");
    let c = Client::connect(dir.socket()).unwrap();
    let req = WorkRequest {
        seed: 77,
        sleep_ms: 2000,
        input: None,
        out_len: 1000,
    };
    // The child's request is taken first (its run lasts 2 s); ours joins
    // the run in flight, then the run's caller dies.
    std::thread::sleep(Duration::from_millis(300));
    let p = c.send::<Work>(&req).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    slow.kill().unwrap();
    slow.wait().unwrap();
    let d = p.wait().expect("the waiter gets a correct answer");
    check_output(&c, &d, 1000);
    let st = work_stats(&c);
    // The first run could not create its result for a dead session.
    assert_eq!((st.errors, st.misses, st.waits), (1, 2, 1), "{st:?}");
    assert_eq!(st.entries, 1);
    assert_eq!(
        c.call::<Work>(&req).unwrap(),
        d,
        "cached after the second run"
    );
}

#[test]
fn a_server_killed_amid_write_behind_keeps_whole_entries_or_none() {
    let dog = Watchdog::arm("memo kill -9", Duration::from_secs(120));
    let dir = TempDir::new("memo-kill9");
    let disk_arg = format!("--disk-cache={}", dir.0.join("disk").display());
    let req = |seed| WorkRequest {
        seed,
        sleep_ms: 0,
        input: None,
        out_len: 24 << 20,
    };
    let mut values = Vec::new();
    for round in 0..3u64 {
        let mut server = ServerProc::start(&dir.socket(), &[&disk_arg]);
        dog.watch_child(server.pid());
        let c = Client::connect(dir.socket()).unwrap();
        // Every seed so far answers correctly: from disk, or run again.
        for (seed, value) in &values {
            let d = c.call::<Work>(&req(*seed)).unwrap();
            assert_eq!(d.value, *value);
            check_output(&c, &d, 24 << 20);
        }
        let d = c.call::<Work>(&req(round)).unwrap();
        check_output(&c, &d, 24 << 20);
        values.push((round, d.value));
        eprintln!("round {round}: {:?}", work_stats(&c));
        // Killed while the entry may still be on its way to disk.
        server.kill9();
    }
}

#[test]
fn the_async_client_computes_once_and_passes_memo_flags() {
    let (_dog, dir, _server) = with_server("memo async", Duration::from_secs(60), &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = cradle_client::AsyncClient::connect(dir.socket())
            .await
            .unwrap();
        let mut ran = 0;
        for _ in 0..2 {
            let v = c
                .cache()
                .get_or_compute("async/thing", Duration::from_secs(10), || {
                    ran += 1;
                    async {
                        let mut w = c.create(3).await?;
                        w.write_at(0, b"abc");
                        w.seal().await
                    }
                })
                .await
                .unwrap();
            assert_eq!(&v[..], b"abc");
        }
        assert_eq!(ran, 1, "computed once");
        let req = WorkRequest {
            seed: 4,
            sleep_ms: 0,
            input: None,
            out_len: 0,
        };
        assert_eq!(c.call::<Work>(&req).await.unwrap().run, 1);
        assert_eq!(c.call::<Work>(&req).await.unwrap().run, 1);
        assert_eq!(
            c.call_memo::<Work>(&req, MemoMode::Refresh)
                .await
                .unwrap()
                .run,
            2
        );
        assert_eq!(c.call::<Work>(&req).await.unwrap().run, 2);
    });
}

#[test]
fn digests_and_the_memo_commands_of_the_cli() {
    let (_dog, dir, _server) = with_server("memo cli", Duration::from_secs(60), &[]);
    let c = Client::connect(dir.socket()).unwrap();
    let bytes = input_bytes(5 << 20, None);
    let (a, b) = (blob(&c, &bytes), blob(&c, &bytes));
    let d = c.digest(a.handle()).unwrap();
    assert_eq!(d, *blake3::hash(&bytes).as_bytes(), "BLAKE3 of the bytes");
    assert_eq!(
        c.digest(b.handle()).unwrap(),
        d,
        "equal bytes, equal digests"
    );
    let req = WorkRequest {
        seed: 1,
        sleep_ms: 20,
        input: Some(*a.handle()),
        out_len: 64,
    };
    c.call::<Work>(&req).unwrap();
    c.call::<Work>(&WorkRequest {
        input: Some(*b.handle()),
        ..req
    })
    .unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(cli_bin())
            .arg("--socket")
            .arg(dir.socket())
            .args(args)
            .output()
            .expect("run cradle");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let ls: serde_json::Value = serde_json::from_str(&cli(&["memo", "ls", "--json"])).unwrap();
    let m = &ls["methods"][0];
    assert_eq!(m["method"], "cradle.example.work@1");
    assert_eq!(
        (
            m["entries"].as_u64(),
            m["hits"].as_u64(),
            m["misses"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert!(m["saved_seconds"].as_f64().unwrap() >= 0.02, "{m}");
    let text = cli(&["memo", "ls", "cradle.example.work"]);
    assert!(text.contains("cradle.example.work@1"), "{text}");
    let stats: serde_json::Value = serde_json::from_str(&cli(&["stats", "--json"])).unwrap();
    assert_eq!(stats["memo"]["hits"].as_u64(), Some(1), "{stats}");
    assert_eq!(cli(&["memo", "clear"]).trim(), "removed 1 memo entry");
    let ls: serde_json::Value = serde_json::from_str(&cli(&["memo", "ls", "--json"])).unwrap();
    assert_eq!(ls["methods"][0]["entries"].as_u64(), Some(0));
    let bad = std::process::Command::new(cli_bin())
        .arg("--socket")
        .arg(dir.socket())
        .args(["memo", "ls", "no.such.method"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no memoized method"));
}

/// A claim the server grants to a waiter whose future was dropped is given
/// up by that client's salvage as soon as the late answer arrives: the
/// next waiter gets the claim then, not at the claim's deadline (a minute
/// here, longer than the next waiter waits).
#[test]
fn a_claim_granted_to_a_dropped_get_or_compute_goes_to_the_next_waiter() {
    use ipc_rpc::memo::{CacheClaim, CacheUnclaim, Claim, ClaimRequest};
    let (_dog, dir, _server) = with_server("memo dropped claim", Duration::from_secs(120), &[]);
    let key = "dropped/claim";
    // A holds the claim.
    let a = Client::connect(dir.socket()).unwrap();
    let hold = ClaimRequest {
        key: key.to_owned(),
        claim_ms: 60_000,
        wait_ms: 0,
    };
    assert!(matches!(
        a.call::<CacheClaim>(&hold).unwrap(),
        Claim::Claimed
    ));
    // B waits for it, then drops its future: its claim request stays
    // queued in the server, nobody reads its answer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let b = rt
        .block_on(cradle_client::AsyncClient::connect(dir.socket()))
        .unwrap();
    let dropped = rt.block_on(async {
        let never = || async {
            Err::<cradle_client::Blob, _>(std::io::Error::other("B must never compute"))
        };
        let cache = b.cache();
        let claim = cache.get_or_compute(key, Duration::from_secs(60), never);
        tokio::time::timeout(Duration::from_millis(300), claim).await
    });
    assert!(dropped.is_err(), "B's get_or_compute was still waiting");
    // C queues behind B, with 20 s to wait (the claim lasts 60 s).
    let c = Client::connect_with(
        dir.socket(),
        cradle_client::ClientOptions {
            timeout: Duration::from_secs(20),
            wait: cradle_client::WaitMode::Sleep,
        },
    )
    .unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            c.cache().get_or_compute(key, Duration::from_secs(60), || {
                Ok::<_, std::io::Error>(blob(&c, b"made by C"))
            })
        });
        // Let C's claim request reach the server, behind B's.
        std::thread::sleep(Duration::from_millis(300));
        // A gives up: the server grants the claim to B's session; B's
        // client gives it up when its driver reads the late answer (B's
        // runtime runs only inside `block_on`: keep it busy meanwhile).
        assert!(a.call::<CacheUnclaim>(&key.to_owned()).unwrap());
        rt.block_on(async {
            while !waiter.is_finished() {
                let _ = b.call::<ipc_rpc::builtin::Ping>(&vec![1]).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let got = waiter
            .join()
            .unwrap()
            .expect("C gets the claim and computes");
        assert_eq!(&got[..], b"made by C");
    });
}

/// Threads (and tasks) of one process that share a client are one session
/// to the server, which answers `Claimed` again to the session holding a
/// key's claim: the client lets one `get_or_compute` per key ask at a time,
/// so eight threads of one client and eight tasks of one async client
/// compute a key once each, and all get its bytes.
#[test]
fn threads_and_tasks_sharing_one_client_compute_a_key_once() {
    use ipc_core::sync::{AtomicU32, Ordering};
    let (_dog, dir, _server) = with_server("memo one client", Duration::from_secs(120), &[]);
    let c = Client::connect(dir.socket()).unwrap();
    let ran = AtomicU32::new(0);
    std::thread::scope(|s| {
        let all: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    c.cache()
                        .get_or_compute("one/client", Duration::from_secs(60), || {
                            ran.fetch_add(1, Ordering::Relaxed);
                            // Long enough for every other thread to ask.
                            std::thread::sleep(Duration::from_millis(300));
                            Ok::<_, std::io::Error>(blob(&c, b"once"))
                        })
                        .expect("get_or_compute")
                })
            })
            .collect();
        for t in all {
            assert_eq!(&t.join().unwrap()[..], b"once");
        }
    });
    assert_eq!(ran.load(Ordering::Relaxed), 1, "eight threads, one run");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ran = std::sync::Arc::new(AtomicU32::new(0));
    rt.block_on(async {
        let c = std::sync::Arc::new(
            cradle_client::AsyncClient::connect(dir.socket())
                .await
                .unwrap(),
        );
        let all: Vec<_> = (0..8)
            .map(|_| {
                let (c, ran) = (c.clone(), ran.clone());
                tokio::spawn(async move {
                    let v = c
                        .cache()
                        .get_or_compute("one/async-client", Duration::from_secs(60), || {
                            ran.fetch_add(1, Ordering::Relaxed);
                            async {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                let mut w = c.create(4).await?;
                                w.write_at(0, b"once");
                                w.seal().await
                            }
                        })
                        .await
                        .expect("get_or_compute");
                    v[..].to_vec()
                })
            })
            .collect();
        for t in all {
            assert_eq!(t.await.unwrap(), b"once");
        }
    });
    assert_eq!(ran.load(Ordering::Relaxed), 1, "eight tasks, one run");
}
