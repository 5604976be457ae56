//! An idle async client (connected, no calls) uses no CPU: measured on this
//! process alone, so it has its own test binary.

mod support;

use cradle_client::AsyncClient;
use ipc_rpc::builtin::Ping;
use std::time::Duration;
use support::*;

#[test]
fn an_idle_async_client_uses_no_cpu() {
    let (_dog, dir, _server) = with_server("async idle", Duration::from_secs(120), &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let c = AsyncClient::connect(dir.socket()).await.unwrap();
        c.call::<Ping>(&vec![1]).await.unwrap();
        c
    });
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_time(std::process::id());
    std::thread::sleep(Duration::from_secs(10));
    let used = cpu_time(std::process::id()) - before;
    eprintln!("this process's CPU over 10 s with an idle async client: {used:?}");
    assert!(
        used <= Duration::from_millis(100),
        "idle async client used {used:?}"
    );
    // Still works after the pause.
    rt.block_on(async { assert_eq!(client.call::<Ping>(&vec![2]).await.unwrap(), vec![2]) });
}
