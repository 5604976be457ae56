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
    // The ping clients' sessions may still be closing on the server: ask
    // until the stats client's own session is the only one open.
    let mut text = String::new();
    let alone = eventually(Duration::from_secs(10), || {
        let out = Command::new(cli_bin())
            .arg("--socket")
            .arg(dir.socket())
            .arg("stats")
            .output()
            .unwrap();
        assert!(out.status.success());
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("1 connected now")
    });
    assert!(alone && text.contains("answered"), "{text}");
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
        text.starts_with("put img: 20.0 MiB, in the memory cache"),
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
    assert!(text.contains("2 gets served, 0 not found here"), "{text}");

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

#[test]
fn put_reads_stdin_and_prints_the_handle_only_when_verbose() {
    use std::io::Write;
    use std::process::Stdio;
    let (_dog, dir, _server) = with_server("cli stdin", Duration::from_secs(120), &[]);
    // 3 MiB and a bit through a pipe: more than one read chunk, a large blob.
    let bytes: Vec<u8> = (0..(3u32 << 20) + 12_345)
        .map(|i| (i % 251) as u8)
        .collect();
    let mut child = Command::new(cli_bin())
        .env("CRADLE_SOCKET", dir.socket())
        .args(["put", "-v", "piped", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = {
        let bytes = bytes.clone();
        std::thread::spawn(move || stdin.write_all(&bytes).unwrap())
    };
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("put piped: 3.0 MiB"), "{text}");
    assert!(text.contains("\nhandle "), "-v prints the handle: {text}");
    let got = cradle(&dir, &["get", "piped"]);
    assert!(got.status.success());
    assert!(got.stdout == bytes, "the bytes read back differ");

    // Without -v, no handle details.
    let out = cradle(&dir, &["put", "again", "/dev/null"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("pipe it in with `-`"), "{err}");
    let small = dir.0.join("s.txt");
    std::fs::write(&small, b"x").unwrap();
    let out = cradle(&dir, &["put", "again", small.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        !text.contains("handle") && !text.contains("blob "),
        "{text}"
    );
}

#[test]
fn bad_keys_are_refused_before_anything_is_sent() {
    let (_dog, dir, _server) = with_server("cli keys", Duration::from_secs(60), &[]);
    let long = "k".repeat(1025);
    for (key, want) in [
        ("", "the cache key is empty"),
        (long.as_str(), "1025 bytes long; at most 1024"),
        ("a\nb", "control character"),
    ] {
        for args in [vec!["get", key], vec!["rm", key], vec!["put", key, "-"]] {
            let out = cradle(&dir, &args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }
}

#[test]
fn an_interrupted_get_leaves_no_partial_file() {
    let (_dog, dir, _server) = with_server(
        "cli interrupted get",
        Duration::from_secs(180),
        &["--mem-cache-bytes", "2G"],
    );
    // 1 GiB takes long enough to write that the signal lands mid-way.
    let input = dir.0.join("big.bin");
    {
        let f = std::fs::File::create(&input).unwrap();
        f.set_len(1 << 30).unwrap();
    }
    let out = cradle(&dir, &["put", "big", input.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&input).unwrap();

    let target = dir.0.join("out.bin");
    std::fs::write(&target, b"the old contents").unwrap();
    let child = Command::new(cli_bin())
        .env("CRADLE_SOCKET", dir.socket())
        .args(["get", "big", "-o", target.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let tmp_exists = || {
        std::fs::read_dir(&dir.0)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp"))
    };
    assert!(
        eventually(Duration::from_secs(30), tmp_exists),
        "the temporary file never appeared"
    );
    signal(child.id(), libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"the old contents");
    assert!(!tmp_exists(), "the temporary file was left behind");
}

#[test]
fn ls_lists_both_tiers_in_pages_and_a_blob_over_the_memory_budget_goes_to_disk() {
    let (_dog, dir, _server) = with_server(
        "cli ls",
        Duration::from_secs(120),
        &["--mem-cache-bytes", "4M"],
    );
    // 150 keys of about 1,000 bytes: more than one page of `cradle.cache.list`.
    let client = cradle_client::Client::connect(dir.socket()).unwrap();
    let mut want = Vec::new();
    for i in 0..150 {
        let key = format!("many/{i:03}-{}", "k".repeat(990));
        let mut w = client.create(i + 1).unwrap();
        w.write_at(0, &vec![1; i + 1]);
        let blob = w.seal().unwrap();
        client.cache().put(&key, &blob).unwrap();
        want.push((key, i + 1));
    }
    client.flush().unwrap();

    // 6 MiB: over the 4 MiB memory budget, kept on disk.
    let big = dir.0.join("big.bin");
    let bytes: Vec<u8> = (0..6u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(&big, &bytes).unwrap();
    let out = cradle(&dir, &["put", "--sync", "big", big.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("durable in the disk cache (larger than the memory cache's budget)"),
        "{text}"
    );
    let got = cradle(&dir, &["get", "big"]);
    assert!(got.status.success());
    assert!(got.stdout == bytes, "the blob read back from disk differs");

    let out = cradle(&dir, &["ls", "many/"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 151, "150 keys and a total line: {text}");
    for (line, (key, _)) in lines.iter().zip(&want) {
        assert!(line.ends_with(key.as_str()), "{line}");
    }
    assert!(
        lines[150].starts_with("150 keys under \"many/\""),
        "{}",
        lines[150]
    );

    let out = cradle(&dir, &["ls", "big"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().next().unwrap().contains("disk ") && text.contains("6.0 MiB"),
        "{text}"
    );
    let out = cradle(&dir, &["ls", "nothing-here/"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("0 keys"));

    // --json: every key with its size and tier.
    let out = cradle(&dir, &["--json", "ls"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ls --json parses");
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 151);
    let bigk = keys.iter().find(|k| k["key"] == "big").unwrap();
    assert_eq!(bigk["bytes"], 6u64 << 20);
    assert_eq!(bigk["tier"], "disk");
}
