//! The disk tier: a memory-cache miss served from disk, against a plain
//! `read` of the same file (issue 7's performance target).
//!
//! A server with a disk cache in the run's temporary directory and a memory
//! budget that holds one of two 64 MiB entries. Both are put durably; then
//! each `get` of the key memory does not hold is a miss served from disk
//! (`cradle.cache.get` answers `OnDisk`, `cradle.cache.load` reads the entry
//! with `pread` into a new blob and checks its checksum), and it evicts the
//! other key from memory for the next round. The baseline, interleaved with
//! it (A B A B ...): `std::fs::read` of the same entry file into a new
//! `Vec`. Both read from the page cache (the files were just written) into
//! fresh memory, so both pay the same page faults.

use crate::cradle::Server;
use cradle_client::{Client, WaitMode};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One measurement per repetition, in nanoseconds.
#[derive(Debug)]
pub(crate) struct DiskLoad {
    pub(crate) size: usize,
    /// `Cache::get` of a key only on disk, until the `BlobRef` is mapped.
    pub(crate) load_ns: Vec<u64>,
    /// `std::fs::read` of the same entry file.
    pub(crate) read_ns: Vec<u64>,
}

fn put(client: &Client, key: &str, size: usize, byte: u8) -> Result<(), String> {
    let mut w = client
        .create(size)
        .map_err(|e| format!("create {size}: {e}"))?;
    let chunk = vec![byte; 1 << 20];
    for at in (0..size).step_by(chunk.len()) {
        w.write_at(at, &chunk[..chunk.len().min(size - at)]);
    }
    let blob = w.seal().map_err(|e| format!("seal: {e}"))?;
    client
        .cache()
        .put_durable(key, &blob, false)
        .map_err(|e| format!("put_durable {key}: {e}"))?;
    drop(blob);
    client.flush().map_err(|e| format!("flush: {e}"))
}

/// The entry file of `key`: the one whose header holds the key's bytes.
fn entry_file(disk: &Path, key: &str) -> Result<PathBuf, String> {
    let entries = disk.join("entries");
    let list = std::fs::read_dir(&entries).map_err(|e| format!("{}: {e}", entries.display()))?;
    for e in list {
        let p = e.map_err(|e| e.to_string())?.path();
        let mut head = vec![0u8; 4096];
        let n = std::io::Read::read(
            &mut std::fs::File::open(&p).map_err(|e| e.to_string())?,
            &mut head,
        )
        .map_err(|e| e.to_string())?;
        if head[..n].windows(key.len()).any(|w| w == key.as_bytes()) {
            return Ok(p);
        }
    }
    Err(format!("no entry file for {key} in {}", entries.display()))
}

/// Runs `reps` interleaved repetitions of both sides for `size`-byte entries.
pub(crate) fn run(bin: &Path, dir: &Path, size: usize, reps: usize) -> Result<DiskLoad, String> {
    let disk = dir.join("disk-tier");
    let mem = (size + size / 2).to_string();
    let server = Server::start_with(
        bin,
        dir,
        "disk",
        Some(20_000),
        None,
        &[
            "--disk-cache",
            disk.to_str().ok_or("temp path")?,
            "--mem-cache-bytes",
            &mem,
        ],
    )?;
    let client = server.connect(WaitMode::Spin)?;
    let keys = ["disk-a", "disk-b"];
    put(&client, keys[0], size, 1)?;
    put(&client, keys[1], size, 2)?;
    let files = [entry_file(&disk, keys[0])?, entry_file(&disk, keys[1])?];
    let mut out = DiskLoad {
        size,
        load_ns: Vec::with_capacity(reps),
        read_ns: Vec::with_capacity(reps),
    };
    // "disk-b" was put last: memory holds it, so "disk-a" is the miss.
    for rep in 0..reps + 1 {
        let k = rep % 2;
        let t = Instant::now();
        let r = client
            .cache()
            .get(keys[k])
            .map_err(|e| format!("get {}: {e}", keys[k]))?
            .ok_or_else(|| format!("{} missing from both tiers", keys[k]))?;
        let load = t.elapsed().as_nanos() as u64;
        if r.len() != size || r[size / 2] != k as u8 + 1 {
            return Err(format!("{}: wrong bytes from the disk tier", keys[k]));
        }
        drop(r);
        client.flush().map_err(|e| format!("flush: {e}"))?;
        let t = Instant::now();
        let v = std::fs::read(&files[k]).map_err(|e| format!("read: {e}"))?;
        let read = t.elapsed().as_nanos() as u64;
        if v.len() < size {
            return Err("entry file shorter than the entry".into());
        }
        drop(v);
        // The first round warms both paths up.
        if rep > 0 {
            out.load_ns.push(load);
            out.read_ns.push(read);
        }
    }
    let st = client.cache().stats().map_err(|e| format!("stats: {e}"))?;
    if st.disk_hits < reps as u64 {
        return Err(format!(
            "only {} of {reps} gets were served from disk (memory held the key?)",
            st.disk_hits
        ));
    }
    Ok(out)
}
