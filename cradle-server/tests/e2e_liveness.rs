//! Deaths and shutdowns: `kill -9` of a client, `kill -9` of the server,
//! SIGTERM. Every test arms a watchdog; detection times are logged, not
//! asserted.

mod support;

use cradle_client::{CallError, CallOptions, Client, WaitMode};
use ipc_rpc::builtin::Ping;
use std::io::BufRead;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
#[ignore = "entry point of the child client processes the other tests spawn"]
fn child_entry() {
    let Some((role, args)) = child_role() else {
        return;
    };
    let wait = match args.first().map(String::as_str) {
        Some("spin") => WaitMode::Spin,
        _ => WaitMode::Sleep,
    };
    let client = Client::connect(cradle_client::default_socket_path()).expect("connect");
    let opts = CallOptions {
        timeout: Duration::from_secs(30),
        wait,
    };
    println!("RESULT started");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    match role.as_str() {
        // Calls until the server goes away; reports how the call failed and
        // when (wall clock, to compare with the parent's kill time).
        "loop" => {
            let mut n = 0u64;
            loop {
                let t = Instant::now();
                match client.call_opts::<Ping>(&n.to_le_bytes().to_vec(), opts) {
                    Ok(r) => assert_eq!(r, n.to_le_bytes()),
                    Err(e) => {
                        let kind = match e {
                            CallError::PeerDead => "PeerDead",
                            CallError::Shutdown => "Shutdown",
                            CallError::Timeout(_) => "Timeout",
                            _ => "Other",
                        };
                        println!(
                            "RESULT {kind} {} {} {n} {e}",
                            now_ns(),
                            t.elapsed().as_micros()
                        );
                        return;
                    }
                }
                n += 1;
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// The child's next `RESULT` line (the test harness prints lines of its own).
fn next_result(out: &mut impl BufRead) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).expect("child output") == 0 {
            return String::new();
        }
        // libtest may print "test child_entry ... " on the same line.
        if let Some(i) = line.find("RESULT ") {
            return line[i..].to_string();
        }
    }
}

/// Waits for the child's "RESULT started".
fn await_started(child: &mut std::process::Child) -> std::io::BufReader<std::process::ChildStdout> {
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let line = next_result(&mut out);
    assert_eq!(
        line.trim(),
        "RESULT started",
        "child did not start: {line:?}"
    );
    out
}

#[test]
fn kill9_of_a_client_mid_burst_frees_its_session_and_others_continue() {
    let (dog, dir, _server) = with_server("kill -9 client", Duration::from_secs(120), &[]);
    let me = Client::connect_with(dir.socket(), sleeping()).unwrap();
    for round in 0..3 {
        let mut child = spawn_child("loop", &dir.socket(), &["sleep".into()]);
        dog.watch_child(child.id());
        let _out = await_started(&mut child);
        assert!(eventually(Duration::from_secs(10), || open_sessions(
            &dir.socket()
        ) == 2));
        std::thread::sleep(Duration::from_millis(50 + 100 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let freed = eventually(Duration::from_secs(10), || {
            open_sessions(&dir.socket()) == 1
        });
        assert!(
            freed,
            "round {round}: the dead client's session was not freed"
        );
        assert_eq!(
            me.call::<Ping>(&b"still here".to_vec()).unwrap(),
            b"still here"
        );
    }
}

#[test]
fn kill9_of_the_server_fails_blocked_calls_with_peer_dead_then_a_new_server_starts() {
    let (dog, dir, mut server) = with_server("kill -9 server", Duration::from_secs(120), &[]);
    let mut children = Vec::new();
    for wait in ["spin", "sleep", "sleep"] {
        let mut c = spawn_child("loop", &dir.socket(), &[wait.into()]);
        dog.watch_child(c.id());
        let out = await_started(&mut c);
        children.push((wait, c, out));
    }
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = now_ns();
    server.kill9();
    for (wait, mut c, mut out) in children {
        let line = next_result(&mut out);
        c.wait().unwrap();
        let f: Vec<&str> = line.trim().split(' ').collect();
        assert_eq!(f.first(), Some(&"RESULT"), "{line}");
        assert_eq!(f[1], "PeerDead", "{wait} client: {line}");
        let detected_ns: u128 = f[2].parse().unwrap();
        eprintln!(
            "{wait} client saw PeerDead {:.3} ms after kill -9 (call had run {} µs, {} calls before)",
            (detected_ns.saturating_sub(killed_at)) as f64 / 1e6,
            f[3],
            f[4]
        );
    }
    // A new server starts on the same path without manual cleanup.
    let server2 = ServerProc::start(&dir.socket(), &[]);
    dog.watch_child(server2.pid());
    let c = Client::connect(dir.socket()).unwrap();
    assert_eq!(c.call::<Ping>(&b"again".to_vec()).unwrap(), b"again");
}

#[test]
fn sigterm_shuts_down_cleanly_and_clients_are_told() {
    let (dog, dir, mut server) = with_server("SIGTERM", Duration::from_secs(60), &[]);
    let mut c = spawn_child("loop", &dir.socket(), &["sleep".into()]);
    dog.watch_child(c.id());
    let mut out = await_started(&mut c);
    std::thread::sleep(Duration::from_millis(200));
    let status = server.terminate();
    assert!(status.success(), "server exit status {status:?}");
    assert!(!dir.socket().exists(), "the socket file was not removed");
    let line = next_result(&mut out);
    c.wait().unwrap();
    assert!(
        line.starts_with("RESULT Shutdown") || line.starts_with("RESULT PeerDead"),
        "client saw: {line}"
    );
    eprintln!("client after SIGTERM: {}", line.trim());
}
