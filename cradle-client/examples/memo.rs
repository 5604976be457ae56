//! A memoized method, from the calling side: the stock server's
//! `cradle.example.work` sleeps 500 ms per run; the second call with an
//! equal argument (another blob with the same bytes) is answered from the
//! memo, and `get_or_compute` computes a value once.
//!
//! ```sh
//! cargo run --release -p cradle-client --example memo [-- SOCKET]
//! cradle memo ls
//! ```
//!
//! The socket defaults to `CRADLE_SOCKET`, else the server's default path.

use cradle_client::{Client, MemoMode};
use ipc_rpc::example::{Work, WorkRequest, WorkRuns};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn run(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(path)?;
    let image = |c: &Client| -> Result<_, Box<dyn std::error::Error>> {
        let mut w = c.create(1 << 20)?;
        w.write_at(0, &vec![42u8; 1 << 20]);
        Ok(w.seal()?)
    };
    let (a, b) = (image(&client)?, image(&client)?);
    for (name, blob) in [("first call", &a), ("equal blob", &b)] {
        let req = WorkRequest {
            seed: 7,
            sleep_ms: 500,
            input: Some(*blob.handle()),
            out_len: 4 << 20,
        };
        let t = Instant::now();
        let done = client.call::<Work>(&req)?;
        let out = client.adopt(&done.output.ok_or("no result blob")?)?;
        println!(
            "{name}: value {:016x}, run {}, {} result bytes, {:.1} ms",
            done.value,
            done.run,
            out.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let req = WorkRequest {
        seed: 7,
        sleep_ms: 0,
        input: None,
        out_len: 0,
    };
    let fresh = client.call_memo::<Work>(&req, MemoMode::Bypass)?;
    println!("bypassed: run {}", fresh.run);
    println!("handler runs so far: {}", client.call::<WorkRuns>(&())?);
    let v = client
        .cache()
        .get_or_compute("example/answer", Duration::from_secs(60), || {
            let mut w = client.create(2)?;
            w.write_at(0, b"42");
            w.seal()
        })?;
    println!("get_or_compute: {}", String::from_utf8_lossy(&v));
    Ok(())
}

fn main() -> ExitCode {
    let path = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(cradle_client::default_socket_path);
    match run(&path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memo example: {e}");
            ExitCode::from(1)
        }
    }
}
