//! The blob walk-through with the tokio client: create, write, seal, share
//! through the cache, read zero-copy, have the server derive a blob, and
//! drop a `get` midway (the lease it was granted goes back).
//!
//! ```sh
//! cargo run --release -p cradle-client --example async_blobs [-- SOCKET]
//! ```
//!
//! The socket defaults to `CRADLE_SOCKET`, else the server's default path.
//! It needs a server that registers the example method (`cradle-server`).

use cradle_client::AsyncClient;
use ipc_rpc::example::Invert;
use std::process::ExitCode;
use std::time::Duration;

async fn run(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let client = AsyncClient::connect(path).await?;
    let mut w = client.create(4 << 20).await?; // large: its own memfd
    w.write_at(0, &vec![7u8; 4 << 20]);
    let blob = w.seal().await?; // kernel-enforced immutable from here
    client.cache().put("frames/42", &blob).await?;

    let r = client
        .cache()
        .get("frames/42")
        .await?
        .ok_or("just put, yet missing")?;
    if r.iter().any(|&b| b != 7) {
        return Err("the cached blob's bytes differ".into());
    }

    let out = client.call::<Invert>(blob.handle()).await?;
    let inverted = client.adopt(&out.inverted).await?;
    if inverted.iter().any(|&b| b != !7) {
        return Err("the inverted blob is wrong".into());
    }

    // A get that loses a race is dropped; no lease is left behind.
    let handle = *blob.handle();
    tokio::select! {
        r = client.get(&handle) => drop(r?),
        _ = tokio::time::sleep(Duration::ZERO) => {}
    }
    client.flush().await?;
    println!(
        "async blobs: put and got {} bytes through the cache; the server inverted them (checksum {:016x}); {} leases held now",
        r.len(),
        out.checksum,
        client.cache().stats().await?.leases
    );
    client.cache().remove("frames/42").await?;
    Ok(())
}

fn main() -> ExitCode {
    let path = std::env::args()
        .nth(1)
        .map(Into::into)
        .unwrap_or_else(cradle_client::default_socket_path);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("async_blobs: cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("async_blobs: {e}");
            ExitCode::FAILURE
        }
    }
}
