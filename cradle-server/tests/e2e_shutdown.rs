//! What clients hear while the server stops on SIGTERM: calls in progress
//! fail with "shut down" (never "died"), and clients connecting meanwhile
//! are told that the server is shutting down, or that none is running —
//! never a bare "Connection reset by peer" or "Broken pipe".

mod support;

use cradle_client::{AsyncClient, Client, ClientOptions, ConnectError};
use ipc_core::sync::{AtomicBool, Ordering};
use ipc_rpc::CallError;
use ipc_rpc::builtin::Ping;
use std::collections::BTreeMap;
use std::path::PathBuf;
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

/// A `cradle get` that has mapped its blob delivers every byte and exits 0
/// (with a warning) even if the server dies before the lease is released.
#[test]
fn a_complete_get_succeeds_when_the_server_dies_before_the_release() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let (_dog, dir, mut server) = with_server("get then death", Duration::from_secs(120), &[]);
    let cli = cli_bin();
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    let file = dir.0.join("input");
    std::fs::write(&file, &data).unwrap();
    let put = Command::new(&cli)
        .arg("--socket")
        .arg(dir.socket())
        .args(["put", "--no-progress", "k"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let mut get = Command::new(&cli)
        .arg("--socket")
        .arg(dir.socket())
        .args(["get", "k"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    _dog.watch_child(get.id());
    let mut stdout = get.stdout.take().unwrap();
    // The first byte means the blob is mapped; the pipe then holds the rest
    // back while the server dies.
    let mut got = vec![0u8; 1];
    stdout.read_exact(&mut got).unwrap();
    server.kill9();
    stdout.read_to_end(&mut got).unwrap();
    let mut stderr = String::new();
    get.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = get.wait().unwrap();
    eprintln!("cradle get: {status}; stderr: {stderr}");
    assert!(got == data, "the bytes delivered differ from the blob");
    assert!(status.success(), "cradle get failed: {stderr}");
    assert!(stderr.contains("warning"), "no warning: {stderr}");
}
