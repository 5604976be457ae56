//! A server of your own, built from the library: one method of its own
//! besides the builtin ones, with the binary's logging and signal handling.
//!
//! ```sh
//! cargo run -p cradle-server --example custom_server -- /tmp/my-cradle/cradle.sock
//! cradle --socket /tmp/my-cradle/cradle.sock ping      # the builtins answer too
//! ```
//!
//! Without an argument it listens on the default socket (and so refuses to
//! start while the per-user `cradle-server` runs).

use cradle_server::{HandlerError, Server};
use std::process::ExitCode;

ipc_rpc::method! {
    /// Adds two numbers; overflow is an error, not a wrap.
    pub Add = "example.add" version 1: (u64, u64) => u64;
}

fn main() -> ExitCode {
    cradle_server::init_logging("info");
    let mut builder = Server::builder()
        .inline::<Add, _>(|(a, b)| a.checked_add(b).ok_or(HandlerError::new("overflow")));
    if let Some(path) = std::env::args_os().nth(1) {
        builder = builder.socket_path(path.into());
    }
    let served = builder
        .bind()
        .map_err(|e| e.to_string())
        .and_then(|server| server.run_until_signal().map_err(|e| e.to_string()));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("custom_server: {e}");
            ExitCode::from(1)
        }
    }
}
