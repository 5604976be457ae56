//! What clients hear while the server stops on SIGTERM: calls in progress
//! fail with "shut down" (never "died"), and clients connecting meanwhile
//! are told that the server is shutting down, or that none is running —
//! never a bare "Connection reset by peer" or "Broken pipe".

mod support;

use cradle_client::{AsyncClient, Client, ClientOptions, ConnectError};
use ipc_rpc::CallError;
use ipc_rpc::builtin::Ping;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

/// How a connection attempt or call ended, as a short category, with one
/// example message per category.
type Outcomes = Arc<Mutex<BTreeMap<String, (u64, String)>>>;

fn record(out: &Outcomes, category: &str, message: String) {
    let mut m = out.lock().unwrap();
    let e = m.entry(category.to_owned()).or_insert((0, message));
    e.0 += 1;
}

fn connect_error_category(e: &ConnectError) -> &'static str {
    match e {
        ConnectError::NoServer { .. } => "connect: no server",
        ConnectError::Refused { .. } => "connect: refused",
        _ => "connect: other",
    }
}

fn call_error_category(e: &CallError) -> &'static str {
    match e {
        CallError::Shutdown => "call: shut down",
        CallError::PeerDead => "call: died",
        _ => "call: other",
    }
}

#[test]
fn clients_hear_shut_down_during_sigterm() {
    let (_dog, dir, mut server) = with_server("shutdown words", Duration::from_secs(120), &[]);
    let socket: PathBuf = dir.socket();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Outcomes = Arc::default();
    let mut threads = Vec::new();
    // Sessions with calls in progress.
    for i in 0..4u64 {
        let (socket, out) = (socket.clone(), outcomes.clone());
        threads.push(std::thread::spawn(move || {
            let c = Client::connect_with(&socket, ClientOptions::default()).unwrap();
            let mut n = i << 32;
            loop {
                let p = n.to_le_bytes().to_vec();
                match c.call::<Ping>(&p) {
                    Ok(r) => assert_eq!(r, p),
                    Err(e) => {
                        record(&out, call_error_category(&e), e.to_string());
                        return;
                    }
                }
                n += 1;
            }
        }));
    }
    // An async session with calls in progress.
    {
        let (socket, out) = (socket.clone(), outcomes.clone());
        threads.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let c = AsyncClient::connect(&socket).await.unwrap();
                let mut n = 0u64;
                loop {
                    let p = n.to_le_bytes().to_vec();
                    match c.call::<Ping>(&p).await {
                        Ok(r) => assert_eq!(r, p),
                        Err(e) => {
                            record(&out, call_error_category(&e), e.to_string());
                            return;
                        }
                    }
                    n += 1;
                }
            });
        }));
    }
    // Clients connecting until after the server is gone.
    for _ in 0..3 {
        let (socket, out, stop) = (socket.clone(), outcomes.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match Client::connect(&socket) {
                    Ok(c) => match c.call::<Ping>(&b"x".to_vec()) {
                        Ok(_) => record(&out, "connect+call: ok", String::new()),
                        Err(e) => record(&out, call_error_category(&e), e.to_string()),
                    },
                    Err(e) => record(&out, connect_error_category(&e), e.to_string()),
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let status = server.terminate();
    assert!(status.success(), "server exit status {status:?}");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let outcomes = outcomes.lock().unwrap();
    for (category, (n, example)) in outcomes.iter() {
        eprintln!("{n:>7} {category}: {example}");
    }
    for (category, (_, example)) in outcomes.iter() {
        let lower = example.to_lowercase();
        assert!(
            !lower.contains("reset") && !lower.contains("broken pipe") && !lower.contains("died"),
            "{category}: {example}"
        );
        assert!(
            category != "connect: other" && category != "call: other",
            "{category}: {example}"
        );
    }
    assert!(
        outcomes.get("call: shut down").map_or(0, |o| o.0) >= 5,
        "every session's call should end with shut down"
    );
}
