//! Calls end to end: a real `cradle-server` process, clients in this process
//! and in child processes. Every test arms a watchdog.

mod support;

use cradle_client::{CallOptions, Client, WaitMode};
use ipc_rpc::builtin::{Ping, Stats};
use std::collections::VecDeque;
use std::time::Duration;
use support::*;

#[test]
#[ignore = "entry point of the child client processes the other tests spawn"]
fn child_entry() {
    let Some((role, args)) = child_role() else {
        return;
    };
    let client =
        Client::connect_with(cradle_client::default_socket_path(), sleeping()).expect("connect");
    match role.as_str() {
        // N sequential echo calls, each response checked.
        "caller" => {
            let n: u64 = args[0].parse().expect("count");
            for i in 0..n {
                let p = (i ^ u64::from(std::process::id())).to_le_bytes().to_vec();
                let r = client
                    .call::<Ping>(&p)
                    .unwrap_or_else(|e| panic!("call {i}: {e}"));
                assert_eq!(r, p, "call {i}");
            }
            println!("RESULT ok {n}");
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn one_client_one_million_pipelined_calls() {
    let (_dog, dir, _server) = with_server("1M pipelined calls", Duration::from_secs(600), &[]);
    let client = Client::connect(dir.socket()).unwrap();
    const N: u64 = 1_000_000;
    const WINDOW: usize = 256;
    let mut pending = VecDeque::with_capacity(WINDOW);
    let mut next_check = 0u64;
    for i in 0..N {
        if pending.len() == WINDOW {
            let (j, p): (u64, cradle_client::Pending<'_, Ping>) = pending.pop_front().unwrap();
            assert_eq!(p.wait().unwrap(), j.to_le_bytes(), "response {j}");
            next_check += 1;
        }
        pending.push_back((i, client.send::<Ping>(&i.to_le_bytes().to_vec()).unwrap()));
    }
    for (j, p) in pending {
        assert_eq!(p.wait().unwrap(), j.to_le_bytes(), "response {j}");
        next_check += 1;
    }
    assert_eq!(next_check, N);
    let stats = client.call::<Stats>(&()).unwrap();
    assert!(
        stats.calls_served >= N,
        "server counted {} calls",
        stats.calls_served
    );
}

#[test]
fn eight_client_processes_one_hundred_thousand_calls_each() {
    let (dog, dir, _server) = with_server("8 clients x 100k", Duration::from_secs(900), &[]);
    let children: Vec<_> = (0..8)
        .map(|_| {
            let c = spawn_child("caller", &dir.socket(), &["100000".into()]);
            dog.watch_child(c.id());
            c
        })
        .collect();
    for c in children {
        let (status, lines) = child_results(c);
        assert!(status.success(), "child failed: {status:?}");
        assert_eq!(lines, vec!["ok 100000".to_string()]);
    }
    let c = Client::connect(dir.socket()).unwrap();
    let s = c.call::<Stats>(&()).unwrap();
    assert!(
        s.calls_served >= 800_000,
        "server counted {} calls",
        s.calls_served
    );
}

#[test]
fn idle_server_with_one_hundred_clients_uses_no_cpu() {
    let (_dog, dir, server) = with_server("idle CPU", Duration::from_secs(120), &[]);
    let clients: Vec<Client> = (0..100)
        .map(|_| Client::connect_with(dir.socket(), sleeping()).unwrap())
        .collect();
    for c in &clients {
        c.call_opts::<Ping>(
            &vec![1],
            CallOptions {
                timeout: Duration::from_secs(30),
                wait: WaitMode::Sleep,
            },
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = server.cpu_time();
    std::thread::sleep(Duration::from_secs(10));
    let used = server.cpu_time() - before;
    eprintln!("server CPU over 10 s with 100 idle clients: {used:?}");
    assert!(
        used <= Duration::from_millis(100),
        "idle server used {used:?} of CPU in 10 s"
    );
    drop(clients);
}

#[test]
fn threads_share_one_client() {
    let (_dog, dir, _server) = with_server("shared client", Duration::from_secs(300), &[]);
    let client = Client::connect_with(dir.socket(), sleeping()).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let client = &client;
            s.spawn(move || {
                for i in 0..20_000u64 {
                    let p = [t.to_le_bytes(), i.to_le_bytes()].concat();
                    assert_eq!(client.call::<Ping>(&p).unwrap(), p, "thread {t} call {i}");
                }
            });
        }
    });
    assert!(client.call::<Stats>(&()).unwrap().calls_served >= 80_000);
}

#[test]
fn a_request_over_the_frame_limit_fails_at_the_caller() {
    let (_dog, dir, _server) = with_server("too large", Duration::from_secs(60), &[]);
    let client = Client::connect(dir.socket()).unwrap();
    let big = vec![0u8; client.max_message() + 1];
    match client.call::<Ping>(&big) {
        Err(cradle_client::CallError::MessageTooLarge { len, max }) => {
            assert!(len > max);
            eprintln!("{} bytes refused: limit {max}", big.len());
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    // The session is fine afterwards, and a message just under the limit works.
    let fits = vec![1u8; client.max_message() - 64];
    assert_eq!(client.call::<Ping>(&fits).unwrap().len(), fits.len());
}

ipc_rpc::method! {
    /// A method no server registers.
    Missing = "example.not_registered" version 3: u32 => u32;
}

#[test]
fn an_unknown_method_is_named_in_the_error() {
    let (_dog, dir, _server) = with_server("unknown method", Duration::from_secs(60), &[]);
    let check = |e: cradle_client::CallError| {
        assert_eq!(
            e.code(),
            Some(cradle_client::ErrorCode::UnknownMethod),
            "{e}"
        );
        let text = e.to_string();
        assert!(
            text.contains("example.not_registered") && text.contains("version 3"),
            "{text}"
        );
    };
    let client = Client::connect(dir.socket()).unwrap();
    check(client.call::<Missing>(&1).unwrap_err());
    check(client.send::<Missing>(&2).unwrap().wait().unwrap_err());
    // The session stays usable.
    assert_eq!(client.call::<Ping>(&vec![1]).unwrap(), vec![1]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = cradle_client::AsyncClient::connect(dir.socket())
            .await
            .unwrap();
        check(client.call::<Missing>(&3).await.unwrap_err());
        check(
            client
                .call_with::<Missing, _>(&4, |r| *r)
                .await
                .unwrap_err(),
        );
    });
}
