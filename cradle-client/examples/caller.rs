//! A caller of the methods the `provider` example offers: no Rust type is
//! shared with the provider but the method's spelling, and blobs travel
//! both ways by handle.
//!
//! ```sh
//! cargo run --release -p cradle-client --example provider &
//! cargo run --release -p cradle-client --example caller
//! ```
//!
//! Exits 0 when both answers check out. The socket is `CRADLE_SOCKET`,
//! else the server's default path.

#[path = "demo/methods.rs"]
mod methods;

use cradle_client::Client;
use methods::{CHECKSUM, FNV_START, Thumbnail, fnv1a};
use std::process::ExitCode;

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_default()?;

    // A bytes method, by name, with a blob passed along.
    let mut w = client.create(1 << 20)?;
    let image: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    w.write_at(0, &image);
    let blob = w.seal()?;
    let (sum, _) = client.call_bytes(CHECKSUM, 1, b"hello", &[blob.handle()])?;
    let want = fnv1a(fnv1a(FNV_START, b"hello"), &image);
    if sum != want.to_le_bytes() {
        return Err(format!("checksum {sum:02x?}, expected {want:016x}").into());
    }

    // A typed method: the image goes as a blob, the thumbnail comes back as one.
    let (thumb_sum, thumbs) = client.call_with_blobs::<Thumbnail>(&16, &[blob.handle()])?;
    let thumb = thumbs.first().ok_or("no thumbnail blob came back")?;
    let want: Vec<u8> = image.iter().step_by(16).copied().collect();
    if thumb[..] != want[..] || thumb_sum != fnv1a(FNV_START, &want) {
        return Err("the thumbnail is wrong".into());
    }
    println!(
        "caller: {CHECKSUM} of 5 B + a 1 MiB blob = {want_sum:016x}; thumbnail of {} B came back as {}",
        thumb.len(),
        thumb.handle(),
        want_sum = u64::from_le_bytes(sum.try_into().map_err(|_| "8 bytes")?),
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("caller: {e}");
            ExitCode::from(1)
        }
    }
}
