//! The disk tier, end to end: what is put survives a restart, a durable put
//! survives `kill -9` of the server at any moment, damaged entries are never
//! served, the disk budget holds, memory eviction keeps the disk copy, and a
//! directory the server cannot write stops it at start. (Power cuts, which
//! `kill -9` cannot simulate, are in `cradle-server/src/disk/tests.rs`.)

mod support;

use cradle_client::{CallError, Client};
use ipc_rpc::blob::BlobStats;
use ipc_rpc::builtin::{Ping, Stats};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;
use xxhash_rust::xxh3::xxh3_64;

/// Deterministic bytes for (seed, len).
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut r = SplitMix(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn stats(c: &Client) -> BlobStats {
    c.call::<Stats>(&()).expect("stats").blobs
}

fn disk_dir(dir: &TempDir) -> PathBuf {
    dir.0.join("disk")
}

/// A server on `dir`'s socket with its disk cache in `dir/disk`.
fn server(dir: &TempDir, extra: &[&str]) -> ServerProc {
    let disk = disk_dir(dir);
    let mut args = vec!["--disk-cache", disk.to_str().unwrap()];
    args.extend_from_slice(extra);
    ServerProc::start(&dir.socket(), &args)
}

/// The checksum of the blob under `key`, `None` on a miss.
fn checksum_of(c: &Client, key: &str) -> Option<u64> {
    c.cache().get(key).expect("get").map(|r| xxh3_64(&r))
}

#[test]
#[ignore = "entry point of the child processes the other tests spawn"]
fn child_entry() {
    let Some((role, args)) = child_role() else {
        return;
    };
    let c = Client::connect(cradle_client::default_socket_path()).expect("connect");
    match role.as_str() {
        // Durable puts until the server dies; one line per acknowledged put.
        "durable-writer" => {
            let round: u64 = args[0].parse().unwrap();
            for i in 0u64.. {
                let len = if i % 10 == 9 {
                    2 << 20
                } else {
                    1024 + (i as usize * 7919) % (256 << 10)
                };
                let data = bytes(round << 32 | i, len);
                let put = c.create(len).and_then(|mut w| {
                    w.write_at(0, &data);
                    let b = w.seal()?;
                    Ok(c.cache().put_durable(&format!("r{round}-{i}"), &b, false)?)
                });
                match put {
                    Ok(_) => {
                        println!("RESULT ack {i} {len}");
                        use std::io::Write;
                        std::io::stdout().flush().unwrap();
                    }
                    Err(e) => {
                        println!("RESULT stopped {e}");
                        return;
                    }
                }
            }
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn a_hundred_blobs_survive_a_server_restart() {
    let _dog = Watchdog::arm("disk restart", Duration::from_secs(600));
    let dir = TempDir::new("disk-restart");
    let mut s = server(&dir, &[]);
    let c = Client::connect(dir.socket()).unwrap();
    // 1 KiB ... 64 MiB, geometrically.
    let sizes: Vec<usize> = (0..100)
        .map(|i| (1024.0 * 2f64.powf(16.0 * i as f64 / 99.0)) as usize)
        .collect();
    let mut sums = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let data = bytes(i as u64, len);
        sums.push(xxh3_64(&data));
        let b = blob(&c, &data);
        c.cache().put(&format!("k{i}"), &b).unwrap();
    }
    drop(c);
    // A clean stop writes every queued put before exiting.
    assert!(s.terminate().success());
    let _s = server(&dir, &[]);
    let c = Client::connect(dir.socket()).unwrap();
    let st = stats(&c);
    assert_eq!(st.disk_entries, 100, "{st:?}");
    assert_eq!(st.cache_entries, 0, "memory starts empty");
    for (i, sum) in sums.iter().enumerate() {
        assert_eq!(
            checksum_of(&c, &format!("k{i}")),
            Some(*sum),
            "k{i} ({} bytes)",
            sizes[i]
        );
    }
    let st = stats(&c);
    assert_eq!((st.disk_hits, st.disk_corruptions), (100, 0), "{st:?}");
    eprintln!(
        "100 blobs, {} MiB in all, read back after a restart",
        sizes.iter().sum::<usize>() >> 20
    );
}

#[test]
fn kill_9_during_durable_puts_never_loses_an_acknowledged_one() {
    let _dog = Watchdog::arm("disk kill -9", Duration::from_secs(600));
    let dir = TempDir::new("disk-kill");
    let mut acked: Vec<(String, u64, usize)> = Vec::new();
    let mut rng = SplitMix(42);
    for round in 0..20u64 {
        let mut s = server(&dir, &[]);
        let child = spawn_child("durable-writer", &dir.socket(), &[round.to_string()]);
        // Let it run 30-400 ms, then kill the server mid-stream.
        let delay = 30 + rng.next_u64() % 370;
        std::thread::sleep(Duration::from_millis(delay));
        s.kill9();
        let (status, lines) = child_results(child);
        assert!(status.success(), "writer: {status}");
        let mut round_acks: Vec<(u64, usize)> = Vec::new();
        for l in &lines {
            if let Some(rest) = l.strip_prefix("ack ") {
                let mut it = rest.split_whitespace();
                let i: u64 = it.next().unwrap().parse().unwrap();
                let len: usize = it.next().unwrap().parse().unwrap();
                round_acks.push((i, len));
            }
        }
        let next = round_acks.iter().map(|&(i, _)| i + 1).max().unwrap_or(0);
        for (i, len) in round_acks {
            acked.push((format!("r{round}-{i}"), round << 32 | i, len));
        }
        // Restart: every acknowledged put of every round is there, intact;
        // the one in flight at the kill is intact or absent.
        let _s = server(&dir, &[]);
        let c = Client::connect(dir.socket()).unwrap();
        for (key, seed, len) in &acked {
            assert_eq!(
                checksum_of(&c, key),
                Some(xxh3_64(&bytes(*seed, *len))),
                "round {round}: acknowledged {key} lost or damaged"
            );
        }
        let in_flight = format!("r{round}-{next}");
        if let Some(r) = c.cache().get(&in_flight).unwrap() {
            let seed = round << 32 | next;
            assert_eq!(
                xxh3_64(&r),
                xxh3_64(&bytes(seed, r.len())),
                "{in_flight} torn"
            );
        }
        let st = stats(&c);
        assert_eq!(st.disk_corruptions, 0, "round {round}: {st:?}");
        eprintln!(
            "round {round}: killed after {delay} ms; {} acknowledged puts so far, all present",
            acked.len()
        );
    }
    assert!(
        acked.len() >= 20,
        "too few puts to mean anything: {}",
        acked.len()
    );
}

/// The entry file holding `key` (found by its key bytes in the header).
fn entry_file(disk: &Path, key: &str) -> PathBuf {
    for e in std::fs::read_dir(disk.join("entries")).unwrap() {
        let p = e.unwrap().path();
        let head = std::fs::read(&p).unwrap();
        let head = &head[..head.len().min(4096)];
        if head.windows(key.len()).any(|w| w == key.as_bytes()) {
            return p;
        }
    }
    panic!("no entry file for {key} in {}", disk.display());
}

#[test]
fn damaged_entries_are_reported_and_never_served() {
    let _dog = Watchdog::arm("disk damage", Duration::from_secs(120));
    let dir = TempDir::new("disk-damage");
    let mut s = server(&dir, &[]);
    let c = Client::connect(dir.socket()).unwrap();
    let data: Vec<Vec<u8>> = [100 << 10, 1 << 20, 3 << 20, 5000]
        .iter()
        .enumerate()
        .map(|(i, &n)| bytes(100 + i as u64, n))
        .collect();
    for (i, d) in data.iter().enumerate() {
        c.cache()
            .put_durable(&format!("d{i}"), &blob(&c, d), false)
            .unwrap();
    }
    drop(c);
    assert!(s.terminate().success());
    // A fresh server: memory is empty, every get goes to disk. The damage
    // is done behind its back, while it runs.
    let s = server(&dir, &[]);
    let c = Client::connect(dir.socket()).unwrap();
    let disk = disk_dir(&dir);
    // d0: one byte flipped in the data.
    let f0 = entry_file(&disk, "d0");
    let mut b0 = std::fs::read(&f0).unwrap();
    let at = b0.len() - 1000;
    b0[at] ^= 0x40;
    std::fs::write(&f0, &b0).unwrap();
    // d1: truncated to half.
    let f1 = entry_file(&disk, "d1");
    let len1 = std::fs::metadata(&f1).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f1)
        .unwrap()
        .set_len(len1 / 2)
        .unwrap();
    // d3: a byte of its header flipped.
    let f3 = entry_file(&disk, "d3");
    let mut b3 = std::fs::read(&f3).unwrap();
    b3[9] ^= 1;
    std::fs::write(&f3, &b3).unwrap();

    assert!(
        c.cache().get("d0").unwrap().is_none(),
        "flipped data served"
    );
    assert!(
        c.cache().get("d1").unwrap().is_none(),
        "truncated entry served"
    );
    assert!(
        c.cache().get("d3").unwrap().is_none(),
        "damaged header served"
    );
    assert_eq!(
        checksum_of(&c, "d2"),
        Some(xxh3_64(&data[2])),
        "intact entry"
    );
    let st = stats(&c);
    assert_eq!(st.disk_corruptions, 3, "{st:?}");
    assert!(
        !f0.exists() && !f1.exists() && !f3.exists(),
        "damaged files dropped"
    );
    // Still serving, no SIGBUS.
    assert_eq!(c.call::<Ping>(&b"alive".to_vec()).unwrap(), b"alive");
    assert!(Path::new(&format!("/proc/{}", s.pid())).exists());
    let out = std::process::Command::new(cli_bin())
        .env("CRADLE_SOCKET", dir.socket())
        .arg("stats")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 damaged entries dropped"), "{text}");
}

#[test]
fn the_disk_budget_holds_and_eviction_is_lru() {
    let _dog = Watchdog::arm("disk budget", Duration::from_secs(120));
    let dir = TempDir::new("disk-budget");
    // Memory holds one 100 KiB entry; disk about nine.
    let _s = server(
        &dir,
        &["--disk-cache-bytes", "1000K", "--mem-cache-bytes", "150K"],
    );
    let c = Client::connect(dir.socket()).unwrap();
    let len = 100 << 10;
    let budget = 1000 << 10;
    // Durable puts of e{i}, the budget checked after each.
    let put_all = |keys: std::ops::Range<u64>| {
        for i in keys {
            c.cache()
                .put_durable(&format!("e{i}"), &blob(&c, &bytes(i, len)), false)
                .unwrap();
            let st = stats(&c);
            assert!(st.disk_bytes <= budget, "after e{i}: {st:?}");
        }
        c.flush().unwrap();
    };
    put_all(0..9);
    assert_eq!(stats(&c).disk_evictions, 0);
    // e0 is used again (from disk): now e1 is the least recently used.
    assert_eq!(checksum_of(&c, "e0"), Some(xxh3_64(&bytes(0, len))));
    put_all(9..12);
    let st = stats(&c);
    assert_eq!(st.disk_evictions, 3, "{st:?}");
    for k in ["e1", "e2", "e3"] {
        assert!(c.cache().get(k).unwrap().is_none(), "{k} should be evicted");
    }
    for i in [0, 4, 5, 8, 11] {
        assert_eq!(
            checksum_of(&c, &format!("e{i}")),
            Some(xxh3_64(&bytes(i, len))),
            "e{i}"
        );
    }
}

#[test]
fn memory_eviction_keeps_the_disk_copy_and_remove_removes_both() {
    let _dog = Watchdog::arm("disk tiers", Duration::from_secs(120));
    let dir = TempDir::new("disk-tiers");
    let _s = server(&dir, &["--mem-cache-bytes", "300K"]);
    let c = Client::connect(dir.socket()).unwrap();
    let len = 100 << 10;
    for i in 0..5 {
        c.cache()
            .put_durable(&format!("m{i}"), &blob(&c, &bytes(i, len)), false)
            .unwrap();
    }
    c.flush().unwrap();
    let st = stats(&c);
    assert!(st.evictions >= 2 && st.disk_entries == 5, "{st:?}");
    // m0 left memory; it comes back from disk.
    assert_eq!(checksum_of(&c, "m0"), Some(xxh3_64(&bytes(0, len))));
    assert_eq!(stats(&c).disk_hits, 1);
    // Remove takes it out of both tiers.
    assert!(c.cache().remove("m0").unwrap());
    assert!(c.cache().get("m0").unwrap().is_none());
    assert_eq!(stats(&c).disk_entries, 4);
    assert!(!c.cache().remove("m0").unwrap());
}

#[test]
fn a_disk_cache_directory_that_cannot_be_written_stops_the_server() {
    let _dog = Watchdog::arm("disk unwritable", Duration::from_secs(60));
    let dir = TempDir::new("disk-unwritable");
    let file = dir.0.join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let bad = file.join("cache");
    let out = std::process::Command::new(server_bin())
        .arg("--socket")
        .arg(dir.socket())
        .arg("--disk-cache")
        .arg(&bad)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(err.contains("--no-disk-cache"), "{err}");
    assert!(!dir.socket().exists());
    // Without a disk cache, a durable put fails clearly.
    let _s = ServerProc::start(&dir.socket(), &["--no-disk-cache"]);
    let c = Client::connect(dir.socket()).unwrap();
    let b = blob(&c, b"x");
    match c.cache().put_durable("k", &b, false) {
        Err(CallError::Remote { message, .. }) => {
            assert!(message.contains("--no-disk-cache"), "{message}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
}
