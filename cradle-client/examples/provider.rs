//! A provider: this process offers two methods through the CRADLE server,
//! and any other client calls them (see the `caller` example, or
//! `cradle call demo.checksum --raw-hex 68656c6c6f`).
//!
//! ```sh
//! cargo run --release -p cradle-client --example provider [-- --concurrency N]
//! ```
//!
//! * `demo.checksum` (a bytes method): FNV-1a of the body and of the blobs
//!   passed with the call;
//! * `demo.thumbnail` (typed): every `step`-th byte of the image blob passed
//!   with the call, returned as a result blob.
//!
//! It serves until SIGINT or SIGTERM, then withdraws its methods and prints
//! how many calls it served. The socket is `CRADLE_SOCKET`, else the
//! server's default path.

#[path = "demo/methods.rs"]
mod methods;

use cradle_client::{Call, Client, HandlerError};
use methods::{CHECKSUM, FNV_START, Thumbnail, fnv1a};
use std::process::ExitCode;

/// `demo.checksum`: the body, then each blob, without copying a blob.
fn checksum(call: &mut Call<'_>, body: &[u8]) -> Result<Vec<u8>, HandlerError> {
    let h = call
        .blobs()
        .iter()
        .fold(fnv1a(FNV_START, body), |h, b| fnv1a(h, b));
    Ok(h.to_le_bytes().to_vec())
}

/// `demo.thumbnail`: reads the image in place, writes the thumbnail into a
/// new blob, and passes it back with the answer.
fn thumbnail(call: &mut Call<'_>, step: u32) -> Result<u64, HandlerError> {
    let step = step.max(1) as usize;
    let image = call.blobs().first().ok_or("pass the image as a blob")?;
    let thumb: Vec<u8> = image.iter().step_by(step).copied().collect();
    let mut w = call.client().create(thumb.len())?;
    w.write_at(0, &thumb);
    let blob = w.seal()?;
    call.attach(blob);
    Ok(fnv1a(FNV_START, &thumb))
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut concurrency = 4;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--concurrency" => concurrency = args.next().ok_or("--concurrency N")?.parse()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let client = Client::connect_default()?;
    let provider = client
        .provider()
        .concurrency(concurrency)
        .serve_bytes(CHECKSUM, 1, checksum)
        .idempotent()
        .serve::<Thumbnail>(thumbnail);
    // SIGINT / SIGTERM stop it cleanly.
    let stopper = provider.stopper();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            stopper.stop();
        }
    });
    println!(
        "provider: serving {CHECKSUM} and {} (pid {}, {concurrency} at once)",
        <Thumbnail as cradle_client::Method>::NAME,
        std::process::id()
    );
    let report = provider.run()?;
    println!(
        "provider: stopped after {} calls ({} errors)",
        report.served, report.errors
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("provider: {e}");
            ExitCode::from(1)
        }
    }
}
