//! A server built from the library behaves like the binary: three lines
//! (`init_logging`, `bind`, `run_until_signal`) give a server that stops on
//! SIGINT or SIGTERM, says goodbye to its clients and removes its socket.

mod support;

use cradle_client::{CallError, Client};
use cradle_server::Server;
use ipc_rpc::builtin::Ping;
use std::path::PathBuf;
use std::time::Duration;
use support::{TempDir, Watchdog, child_role, eventually, signal, spawn_child};

/// The child process: the custom server itself.
#[test]
#[ignore = "entry point of the child process the other tests spawn"]
fn child_entry() {
    let Some((role, _)) = child_role() else {
        return;
    };
    assert_eq!(role, "library-server");
    let socket = PathBuf::from(std::env::var_os("CRADLE_SOCKET").expect("socket"));
    cradle_server::init_logging("warn");
    let server = Server::builder().socket_path(socket).bind().expect("bind");
    server.run_until_signal().expect("run");
    println!("RESULT stopped");
}

fn stops_on(sig: i32, name: &'static str) {
    let dog = Watchdog::arm(name, Duration::from_secs(60));
    let dir = TempDir::new(name);
    let socket = dir.socket();
    let child = spawn_child("library-server", &socket, &[]);
    dog.watch_child(child.id());
    let pid = child.id();
    // Connected and answered: the server runs, so its handler is installed.
    let mut client = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            client = Client::connect(&socket).ok();
            client.is_some()
        }),
        "the library server never accepted a client"
    );
    let client = client.unwrap();
    assert_eq!(client.call::<Ping>(&b"hi".to_vec()).unwrap(), b"hi");

    signal(pid, sig);
    let (status, results) = support::child_results(child);
    assert!(status.success(), "the server exited with {status}");
    assert_eq!(results, ["stopped"]);
    assert!(!socket.exists(), "the socket file was left behind");
    // The client was told the server shut down, not that it died.
    match client.call::<Ping>(&b"hi".to_vec()) {
        Err(CallError::Shutdown) => {}
        other => panic!("a call after the server stopped gave {other:?}, not Shutdown"),
    }
}

#[test]
fn library_server_stops_on_sigint_and_removes_its_socket() {
    stops_on(libc::SIGINT, "library-sigint");
}

#[test]
fn library_server_stops_on_sigterm_and_removes_its_socket() {
    stops_on(libc::SIGTERM, "library-sigterm");
}
