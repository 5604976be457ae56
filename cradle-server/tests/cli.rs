//! The `cradle` command line against a real server (the no-server cases are
//! in `cradle-client/tests/cli.rs`).

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

#[test]
fn ping_and_stats_work_against_a_server() {
    let (_dog, dir, _server) = with_server("cli", Duration::from_secs(120), &[]);
    for wait in ["spin", "sleep", "spin-then-sleep"] {
        let out = Command::new(cli_bin())
            .env("CRADLE_SOCKET", dir.socket())
            .args(["ping", "--count", "2000", "--size", "64", "--wait", wait])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{wait}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("2000 calls of 64 B") && text.contains("p50") && text.contains("p99"),
            "{text}"
        );
    }
    let out = Command::new(cli_bin())
        .arg("--socket")
        .arg(dir.socket())
        .arg("stats")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("calls served") && text.contains("sessions 1 open"),
        "{text}"
    );
    // Bad flags: a clear error and a non-zero exit code.
    let out = Command::new(cli_bin())
        .arg("--socket")
        .arg(dir.socket())
        .args(["ping", "--size", "100000000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("blob"));
}

fn cradle(dir: &TempDir, args: &[&str]) -> std::process::Output {
    Command::new(cli_bin())
        .env("CRADLE_SOCKET", dir.socket())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn put_get_rm_move_a_file_through_the_cache() {
    let (_dog, dir, _server) = with_server("cli blobs", Duration::from_secs(120), &[]);
    let input = dir.0.join("in.bin");
    let bytes: Vec<u8> = (0..20u32 << 20).map(|i| (i * 7 + (i >> 9)) as u8).collect();
    std::fs::write(&input, &bytes).unwrap();
    let small = dir.0.join("small.txt");
    std::fs::write(&small, b"hello cradle\n").unwrap();

    let out = cradle(&dir, &["put", "img", input.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("put img: blob ") && text.contains("20971520 bytes"),
        "{text}"
    );
    let out = cradle(&dir, &["put", "note", small.to_str().unwrap()]);
    assert!(out.status.success());

    let output = dir.0.join("out.bin");
    let out = cradle(&dir, &["get", "img", "-o", output.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&output).unwrap() == bytes, "bytes differ");
    let out = cradle(&dir, &["get", "note"]);
    assert_eq!(out.stdout, b"hello cradle\n");

    let out = cradle(
        &dir,
        &["put", "--if-absent", "note", input.to_str().unwrap()],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("already present"));

    let out = cradle(&dir, &["stats"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("memory cache 2 entries"), "{text}");
    assert!(text.contains("2 hits, 0 misses"), "{text}");

    let out = cradle(&dir, &["rm", "img"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "removed img");
    // Each failure: one line on stderr, exit 1.
    for (args, want) in [
        (
            vec!["rm", "img"],
            "no entry for img in the cache".to_string(),
        ),
        (
            vec!["get", "img"],
            "no entry for img in the cache".to_string(),
        ),
        (
            vec!["put", "k", "/nonexistent/file"],
            "cannot open /nonexistent/file".to_string(),
        ),
        (
            vec!["put", "k", dir.0.to_str().unwrap()],
            "is not a regular file".to_string(),
        ),
    ] {
        let out = cradle(&dir, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: {err}");
    }
}
