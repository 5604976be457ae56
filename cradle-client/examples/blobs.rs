//! The README's blob walk-through, runnable: create, write, seal, share
//! through the cache, read zero-copy, and have the server derive a blob.
//!
//! ```sh
//! cargo run --release -p cradle-client --example blobs [-- SOCKET]
//! ```
//!
//! The socket defaults to `CRADLE_SOCKET`, else the server's default path.
//! It needs a server that registers the example method (`cradle-server`).

use cradle_client::Client;
use ipc_rpc::example::Invert;
use std::process::ExitCode;

fn run(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(path)?;
    let mut w = client.create(4 << 20)?; // large: its own memfd
    w.write_at(0, &vec![7u8; 4 << 20]);
    let blob = w.seal()?; // kernel-enforced immutable from here
    client.cache().put("frames/42", &blob)?;

    let r = client
        .cache()
        .get("frames/42")?
        .ok_or("just put, yet missing")?;
    if r.iter().any(|&b| b != 7) {
        return Err("the cached blob's bytes differ".into());
    }

    let out = client.call::<Invert>(blob.handle())?;
    let inverted = client.adopt(&out.inverted)?;
    if inverted.iter().any(|&b| b != !7) {
        return Err("the inverted blob is wrong".into());
    }
    println!(
        "blobs: put and got {} bytes through the cache; the server inverted them (checksum {:016x}) into {}",
        r.len(),
        out.checksum,
        out.inverted
    );
    client.cache().remove("frames/42")?;
    Ok(())
}

fn main() -> ExitCode {
    let path = std::env::args()
        .nth(1)
        .map(Into::into)
        .unwrap_or_else(cradle_client::default_socket_path);
    match run(&path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blobs: {e}");
            ExitCode::from(1)
        }
    }
}
