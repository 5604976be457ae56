//! The tokio client against the real server.

mod support;

use cradle_client::{AsyncClient, CallError};
use ipc_rpc::builtin::{Ping, Stats};
use std::time::{Duration, Instant};
use support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Compile-time: the client is `Send + Sync + Clone`, and so is what a task
/// needs to hold across an `.await` of a call.
#[test]
fn client_and_call_futures_are_send() {
    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<AsyncClient>();
    // Never polled: only its type is checked.
    let _ = |c: AsyncClient| {
        let fut = async move { c.call::<Ping>(&vec![1]).await };
        send(&fut);
    };
}

#[test]
fn one_hundred_thousand_calls_from_64_tasks() {
    let (_dog, dir, _server) = with_server("async 64 tasks", Duration::from_secs(600), &[]);
    runtime().block_on(async {
        let client = AsyncClient::connect(dir.socket()).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..64u64 {
            let client = client.clone();
            tasks.spawn(async move {
                for i in 0..(100_000 / 64 + 1) as u64 {
                    let req = [t.to_le_bytes(), i.to_le_bytes()].concat();
                    let r = client
                        .call::<Ping>(&req)
                        .await
                        .unwrap_or_else(|e| panic!("task {t} call {i}: {e}"));
                    assert_eq!(r, req, "task {t} call {i}");
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let s = client.call::<Stats>(&()).await.unwrap();
        assert!(
            s.calls_served >= 100_000,
            "server counted {}",
            s.calls_served
        );
    });
}

#[test]
fn dropped_calls_leave_the_client_usable() {
    let (_dog, dir, _server) = with_server("async cancel", Duration::from_secs(300), &[]);
    runtime().block_on(async {
        let client = AsyncClient::connect(dir.socket()).await.unwrap();
        let mut rng = SplitMix(7);
        let (mut done, mut cancelled) = (0u32, 0u32);
        for i in 0..10_000u64 {
            let req = i.to_le_bytes().to_vec();
            let t = Duration::from_micros(1 + rng.next_u64() % 40);
            tokio::select! {
                r = client.call::<Ping>(&req) => { assert_eq!(r.unwrap(), req); done += 1 }
                _ = tokio::time::sleep(t) => cancelled += 1,
            }
        }
        eprintln!(
            "10,000 calls raced against 1–40 µs timers: {done} completed, {cancelled} dropped"
        );
        // Late responses were discarded; the client still answers correctly.
        for i in 0..1000u64 {
            let req = (i + 1_000_000).to_le_bytes().to_vec();
            assert_eq!(client.call::<Ping>(&req).await.unwrap(), req);
        }
        let s = client.call::<Stats>(&()).await.unwrap();
        assert_eq!(s.sessions, 1);
    });
}

#[test]
fn kill9_of_the_server_resolves_a_thousand_pending_calls_to_peer_dead() {
    let (dog, dir, mut server) = with_server("async kill -9", Duration::from_secs(120), &[]);
    let rt = runtime();
    let client = rt.block_on(AsyncClient::connect(dir.socket())).unwrap();
    // Freeze the server so that the calls stay pending, then kill it.
    stop_and_wait(server.pid());
    let handles: Vec<_> = (0..1000u64)
        .map(|i| {
            let c = client.clone();
            rt.spawn(async move {
                c.call_timeout::<Ping>(&i.to_le_bytes().to_vec(), Duration::from_secs(30))
                    .await
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    server.kill9();
    let results: Vec<_> = rt.block_on(async {
        let mut out = Vec::new();
        for h in handles {
            out.push((h.await.unwrap(), killed.elapsed()));
        }
        out
    });
    let slowest = results.iter().map(|r| r.1).max().unwrap();
    let peer_dead = results
        .iter()
        .filter(|r| matches!(r.0, Err(CallError::PeerDead)))
        .count();
    let other: Vec<_> = results
        .iter()
        .filter(|r| !matches!(r.0, Err(CallError::PeerDead)))
        .map(|r| format!("{:?}", r.0))
        .take(3)
        .collect();
    eprintln!("1000 pending calls: {peer_dead} PeerDead, all resolved {slowest:?} after kill -9");
    assert_eq!(peer_dead, 1000, "not PeerDead: {other:?}");
    drop(dog);
}

/// Requests of 48 KiB into 256 KiB rings: only a few fit, so most calls wait
/// for room (FIFO turns, woken by the server's space doorbell through the
/// eventfd). Every call must complete, none may fail.
#[test]
fn a_full_request_ring_makes_callers_wait_not_fail() {
    let (_dog, dir, _server) = with_server("async ring full", Duration::from_secs(300), &[]);
    runtime().block_on(async {
        let client = AsyncClient::connect(dir.socket()).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..32u8 {
            let client = client.clone();
            tasks.spawn(async move {
                for i in 0..30u32 {
                    let req = vec![t ^ i as u8; 48 << 10];
                    let r = client
                        .call::<Ping>(&req)
                        .await
                        .unwrap_or_else(|e| panic!("task {t} call {i}: {e}"));
                    assert!(r == req, "task {t} call {i}: wrong echo");
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    });
}
