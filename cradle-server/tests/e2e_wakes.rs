//! Wake-up syscalls over 100,000 spinning calls: 0 on both sides. Alone in
//! its test binary, because the client-side counter is process-wide.

mod support;

use cradle_client::{Client, ClientOptions, WaitMode};
use ipc_rpc::builtin::{Ping, Stats};
use std::time::Duration;
use support::*;

#[test]
fn spinning_calls_make_no_wake_syscalls_on_either_side() {
    let dog = Watchdog::arm("wake counters", Duration::from_secs(300));
    let dir = TempDir::new("wakes");
    // Both sides spin: the server polls for 20 ms after each request, even on
    // a busy machine (`--spin-fixed`: the adaptive spin stops there), so a
    // scheduling hiccup of this 2-vCPU VM does not put it to sleep between two
    // calls (with the default 100 µs it sleeps a few dozen times per 100,000).
    let server = ServerProc::start(&dir.socket(), &["--spin-us", "20000", "--spin-fixed"]);
    dog.watch_child(server.pid());
    let client = Client::connect_with(
        dir.socket(),
        ClientOptions {
            timeout: Duration::from_secs(30),
            wait: WaitMode::Spin,
        },
    )
    .unwrap();
    let payload = vec![7u8; 8];
    // Warm up: the first call may find the server asleep and wake it.
    for _ in 0..10_000 {
        client.call::<Ping>(&payload).unwrap();
    }
    let server_before = client.call::<Stats>(&()).unwrap().wake_syscalls;
    let client_before = ipc_core::doorbell::wake_syscalls();
    for _ in 0..100_000 {
        assert_eq!(client.call::<Ping>(&payload).unwrap().len(), 8);
    }
    let client_wakes = ipc_core::doorbell::wake_syscalls() - client_before;
    let server_wakes = client.call::<Stats>(&()).unwrap().wake_syscalls - server_before;
    eprintln!(
        "wake syscalls over 100,000 spinning calls: client {client_wakes}, server {server_wakes}"
    );
    assert_eq!(
        client_wakes, 0,
        "the client woke the server while it was awake"
    );
    assert_eq!(server_wakes, 0, "the server woke the client while it spun");
}
