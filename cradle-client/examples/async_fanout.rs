//! A small async app: connect to the CRADLE server, fan out 1,000 echo calls
//! from as many tasks, check every answer, and print how long it took.
//!
//! ```sh
//! cargo run --release -p cradle-client --example async_fanout [-- SOCKET]
//! ```
//!
//! The socket defaults to `CRADLE_SOCKET`, else the server's default path.
//! Blobs are in the `blobs` example (the sync client).

use cradle_client::AsyncClient;
use ipc_rpc::builtin::{Ping, Stats};
use std::process::ExitCode;
use std::time::Instant;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let path = std::env::args()
        .nth(1)
        .map(Into::into)
        .unwrap_or_else(cradle_client::default_socket_path);
    let client = match AsyncClient::connect(&path).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("async_fanout: {e}");
            return ExitCode::from(1);
        }
    };
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000u32 {
        let client = client.clone();
        tasks.spawn(async move {
            let req = format!("call {i}").into_bytes();
            let echo = client.call::<Ping>(&req).await?;
            Ok::<bool, cradle_client::CallError>(echo == req)
        });
    }
    let (mut ok, mut wrong) = (0u32, 0u32);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(true)) => ok += 1,
            Ok(Ok(false)) => wrong += 1,
            Ok(Err(e)) => {
                eprintln!("async_fanout: call failed: {e}");
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("async_fanout: task failed: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let took = started.elapsed();
    let stats = client.call::<Stats>(&()).await;
    println!(
        "1000 concurrent calls: {ok} echoed correctly, {wrong} wrong, in {:.2} ms; server has served {} calls",
        took.as_secs_f64() * 1e3,
        stats.map(|s| s.calls_served).unwrap_or(0)
    );
    if wrong == 0 && ok == 1000 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
