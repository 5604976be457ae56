//! The store under pressure, end to end: a disk that fills up during
//! write-behind never brings back an older value; puts into a small memory
//! budget wait for the disk writer instead of failing; a deleted live
//! disk-cache directory does not admit a second server; a read-only disk
//! cache is refused in one line; a blob larger than the memory budget is
//! kept on disk; and many sessions together cannot hold more blob memory
//! than the server-wide limit.
//!
//! The tests that need a real small filesystem mount a tmpfs (root only);
//! where mounting is not permitted they say so and skip that part.

mod support;

use cradle_client::Client;
use ipc_rpc::ErrorCode;
use ipc_rpc::builtin::{Ping, Stats};
use ipc_rpc::example::Invert;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

/// The bytes under `key`, `None` on a miss.
fn value(c: &Client, key: &str) -> Option<Vec<u8>> {
    c.cache().get(key).expect("get").map(|r| r.to_vec())
}

/// A tmpfs mounted on `dir` (created) for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts it with `options`; `None` (and a line saying why) if this
    /// process may not mount.
    fn mount(dir: &Path, options: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self(dir.to_owned())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED the tmpfs part: mount -t tmpfs -o {options} failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED the tmpfs part: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn sequential_20_mib_puts_into_64_mib_with_a_disk_tier_all_succeed() {
    let _dog = Watchdog::arm("sequential puts", Duration::from_secs(300));
    let dir = TempDir::new("seq-puts");
    let disk = dir.0.join("disk");
    let _s = ServerProc::start(
        &dir.socket(),
        &[
            "--mem-cache-bytes",
            "64M",
            "--disk-cache",
            disk.to_str().unwrap(),
        ],
    );
    let c = Client::connect(dir.socket()).unwrap();
    let data = vec![0x5a; 20 << 20];
    let mut failures = Vec::new();
    for i in 0..30 {
        let b = blob(&c, &data);
        if let Err(e) = c.cache().put(&format!("seq{i}"), &b) {
            failures.push(format!("put {i}: {e}"));
        }
        // No lease is left behind: the put alone must find its room.
        drop(b);
        c.flush().unwrap();
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let st = c.call::<Stats>(&()).unwrap().blobs;
    assert!(st.cache_bytes <= 64 << 20, "{st:?}");
}

#[test]
fn enospc_during_write_behind_never_brings_back_an_older_value() {
    let _dog = Watchdog::arm("enospc", Duration::from_secs(300));
    let dir = TempDir::new("enospc");
    let disk = dir.0.join("disk");
    let Some(_fs) = Tmpfs::mount(&disk, "size=8m,mode=0700") else {
        return;
    };
    // The disk budget is larger than the filesystem: writes hit ENOSPC.
    let args = [
        "--mem-cache-bytes",
        "16M",
        "--disk-cache",
        disk.to_str().unwrap(),
        "--disk-cache-bytes",
        "1G",
    ];
    let mut s = ServerProc::start(&dir.socket(), &args);
    let c = Client::connect(dir.socket()).unwrap();
    let v1 = vec![1u8; 1 << 20];
    let v2 = vec![2u8; 12 << 20];
    assert!(
        c.cache()
            .put_durable("k", &blob(&c, &v1), false)
            .expect("durable put of v1")
    );
    // Acknowledged; its write-behind fails (12 MiB on an 8 MiB tmpfs).
    c.cache().put("k", &blob(&c, &v2)).expect("put of v2");
    c.flush().unwrap();
    let got = value(&c, "k");
    assert!(
        got.is_none() || got.as_deref() == Some(&v2[..]),
        "v1 came back"
    );
    // Memory evicts v2 (a 12 MiB filler into a 16 MiB budget).
    c.cache()
        .put("filler", &blob(&c, &vec![3u8; 12 << 20]))
        .expect("filler");
    c.flush().unwrap();
    let got = value(&c, "k");
    assert!(
        got.is_none() || got.as_deref() == Some(&v2[..]),
        "after eviction: {:?} bytes of {:?}",
        got.as_ref().map(Vec::len),
        got.as_ref().and_then(|v| v.first())
    );
    // A clean restart: still never v1.
    drop(c);
    assert!(s.terminate().success());
    let _s = ServerProc::start(&dir.socket(), &args);
    let c = Client::connect(dir.socket()).unwrap();
    let got = value(&c, "k");
    assert!(
        got.is_none() || got.as_deref() == Some(&v2[..]),
        "after a restart: {:?} bytes",
        got.as_ref().map(Vec::len)
    );
}

#[test]
fn a_deleted_live_disk_cache_directory_does_not_admit_a_second_server() {
    let _dog = Watchdog::arm("deleted cache dir", Duration::from_secs(120));
    let dir = TempDir::new("rm-cache-a");
    let other = TempDir::new("rm-cache-b");
    let disk = dir.0.join("disk");
    let _a = ServerProc::start(&dir.socket(), &["--disk-cache", disk.to_str().unwrap()]);
    std::fs::remove_dir_all(&disk).unwrap();
    let mut second = Command::new(server_bin())
        .arg("--socket")
        .arg(other.socket())
        .arg("--disk-cache")
        .arg(&disk)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must stop on its own; if it serves instead, stop it and fail.
    let exited = eventually(Duration::from_secs(30), || {
        other.socket().exists() || second.try_wait().unwrap().is_some()
    });
    if !exited || other.socket().exists() {
        let _ = second.kill();
        let _ = second.wait();
        panic!("a second server started on the deleted live disk cache directory");
    }
    let out = second.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("in use by another server"), "{err}");
    assert!(err.contains(&disk.display().to_string()), "{err}");
    assert!(!other.socket().exists());
    // The first server still works.
    let c = Client::connect(dir.socket()).unwrap();
    c.call::<Ping>(&b"x".to_vec()).unwrap();
}

#[test]
fn a_read_only_disk_cache_is_refused_in_one_clean_line() {
    let _dog = Watchdog::arm("read-only cache", Duration::from_secs(120));
    let dir = TempDir::new("ro-cache");
    let disk = dir.0.join("disk");
    let Some(_fs) = Tmpfs::mount(&disk, "ro,size=1m,mode=0700") else {
        return;
    };
    let out = Command::new(server_bin())
        .arg("--socket")
        .arg(dir.socket())
        .arg("--disk-cache")
        .arg(&disk)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("disk cache")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    let line = lines[0];
    assert_eq!(line.matches("disk cache:").count(), 1, "{line}");
    assert_eq!(line.matches("--no-disk-cache").count(), 1, "{line}");
    assert_eq!(
        line.matches(&*disk.display().to_string()).count(),
        1,
        "{line}"
    );
    assert!(line.contains("Read-only file system"), "{line}");
}

#[test]
fn a_blob_larger_than_the_memory_budget_is_kept_on_disk_and_served_from_there() {
    let _dog = Watchdog::arm("oversized blob", Duration::from_secs(120));
    let dir = TempDir::new("oversized");
    let _s = ServerProc::start(&dir.socket(), &["--mem-cache-bytes", "1M"]);
    let c = Client::connect(dir.socket()).unwrap();
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    c.cache()
        .put("big", &blob(&c, &data))
        .expect("put over the budget");
    c.flush().unwrap();
    // Written to disk (meanwhile a get is served from memory).
    assert!(eventually(Duration::from_secs(30), || {
        let st = c.call::<Stats>(&()).unwrap().blobs;
        st.disk_queued == 0 && st.disk_entries == 1
    }));
    let st = c.call::<Stats>(&()).unwrap().blobs;
    assert_eq!(
        (st.cache_entries, st.blobs),
        (0, 0),
        "memory let it go: {st:?}"
    );
    // Served from disk, into a blob memory does not keep.
    assert_eq!(value(&c, "big").as_deref(), Some(&data[..]));
    c.flush().unwrap();
    let st = c.call::<Stats>(&()).unwrap().blobs;
    assert_eq!(
        (st.disk_hits, st.cache_entries, st.blobs),
        (1, 0, 0),
        "{st:?}"
    );
}

#[test]
fn sixteen_pinning_sessions_cannot_hold_past_the_server_wide_limit() {
    const LIMIT: u64 = 128 << 20;
    const BLOB: usize = 16 << 20;
    let _dog = Watchdog::arm("pinning sessions", Duration::from_secs(300));
    let dir = TempDir::new("pinning");
    let _s = ServerProc::start(
        &dir.socket(),
        &[
            "--mem-cache-bytes",
            "32M",
            "--max-held-bytes",
            "128M",
            "--no-disk-cache",
        ],
    );
    let socket = dir.socket();
    let setup = Client::connect(&socket).unwrap();
    setup
        .cache()
        .put("shared", &blob(&setup, b"still served"))
        .unwrap();
    setup.flush().unwrap();
    // Each session creates (never writes) and seals 16 MiB blobs and keeps
    // them, until the server refuses; they all stay connected meanwhile.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(17));
    let pinners: Vec<_> = (0..16)
        .map(|_| {
            let socket = socket.clone();
            let barrier = std::sync::Arc::clone(&barrier);
            std::thread::spawn(move || {
                let c = Client::connect(&socket).unwrap();
                let mut held = Vec::new();
                let refusal = loop {
                    match c.create(BLOB).and_then(|w| w.seal()) {
                        Ok(b) => held.push(b),
                        Err(e) => break e,
                    }
                };
                barrier.wait();
                // Hold everything until the checks below are done.
                barrier.wait();
                drop(held);
                refusal
            })
        })
        .collect();
    barrier.wait();
    // Others still work: a ping, a cached value.
    let other = Client::connect(&socket).unwrap();
    other.call::<Ping>(&b"hi".to_vec()).unwrap();
    assert_eq!(
        value(&other, "shared").as_deref(),
        Some(&b"still served"[..])
    );
    let st = other.call::<Stats>(&()).unwrap();
    let total: u64 = st
        .per_session
        .iter()
        .map(|p| p.pinned_bytes + p.pool_bytes)
        .sum();
    // Every session's own bytes, plus at most the one small cached blob
    // the other client leased (free: it is in the memory cache).
    assert!(total <= LIMIT + (64 << 10), "{total} bytes held");
    assert!(
        total >= LIMIT - 2 * BLOB as u64,
        "{total}: the limit was reached"
    );
    barrier.wait();
    for p in pinners {
        let e = p.join().unwrap();
        let m = e.to_string();
        assert!(
            e.code() == Some(ErrorCode::QuotaExceeded) || m.starts_with("quota exceeded"),
            "{e:?}"
        );
        assert!(m.contains("server-wide limit of 128 MiB"), "{m}");
    }
}

#[test]
fn a_handler_cannot_allocate_past_the_server_wide_limit() {
    let _dog = Watchdog::arm("handler allocation", Duration::from_secs(120));
    let dir = TempDir::new("invert-limit");
    let _s = ServerProc::start(
        &dir.socket(),
        &[
            "--mem-cache-bytes",
            "16M",
            "--max-held-bytes",
            "64M",
            "--no-disk-cache",
        ],
    );
    let c = Client::connect(dir.socket()).unwrap();
    // A 40 MiB blob never written: inverting it needs another 40 MiB.
    let input = c.create(40 << 20).unwrap().seal().unwrap();
    let e = c.call::<Invert>(input.handle()).unwrap_err();
    let m = e.to_string();
    assert!(m.contains("server-wide limit of 64 MiB"), "{m}");
    // Once the input is gone, the same call on a smaller blob works.
    drop(input);
    c.flush().unwrap();
    let small = blob(&c, &[7u8; 1 << 20]);
    let r = c.call::<Invert>(small.handle()).unwrap();
    let inv = c.adopt(&r.inverted).unwrap();
    assert!(inv.iter().all(|&b| b == !7));
}
