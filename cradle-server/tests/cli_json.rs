//! `cradle --json`: every command that prints gives one JSON object with the
//! fields docs/operations.md lists ("Scripting the CLI"), checked here one
//! command at a time against a real server; and the generated completion
//! scripts and man page.

mod support;

use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use support::*;

/// Runs `cradle --json ARGS` against `dir`'s server; the parsed stdout.
fn json(dir: &TempDir, args: &[&str]) -> Value {
    let out = Command::new(cli_bin())
        .env("CRADLE_SOCKET", dir.socket())
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().count(),
        1,
        "{args:?}: one line of JSON: {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} is not an unsigned number in {v}"))
}

#[test]
fn ping_json_has_the_counts_and_ordered_percentiles() {
    let (_dog, dir, _server) = with_server("json ping", Duration::from_secs(120), &[]);
    let v = json(
        &dir,
        &["ping", "--count", "500", "--size", "32", "--wait", "spin"],
    );
    assert_eq!(u(&v, "/calls"), 500);
    assert_eq!(u(&v, "/payload_bytes"), 32);
    assert_eq!(v["wait"], "spin");
    assert!(v["seconds"].as_f64().unwrap() > 0.0);
    let p: Vec<u64> = ["min_ns", "p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"]
        .iter()
        .map(|k| u(&v, &format!("/{k}")))
        .collect();
    assert!(p[0] > 0, "{v}");
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "percentiles out of order: {v}"
    );
    let mean = v["mean_ns"].as_f64().unwrap();
    assert!(mean >= p[0] as f64 && mean <= p[5] as f64, "{v}");
}

#[test]
fn stats_json_has_every_documented_group() {
    let (_dog, dir, server) = with_server("json stats", Duration::from_secs(120), &[]);
    // The readiness check's own session may still be closing on the server:
    // ask until the CLI's session is the only one open.
    let mut v = json(&dir, &["stats"]);
    assert!(
        eventually(Duration::from_secs(10), || {
            v = json(&dir, &["stats"]);
            u(&v, "/sessions/open") == 1
        }),
        "{v}"
    );
    assert_eq!(u(&v, "/server/pid"), u64::from(server.pid()));
    assert_eq!(u(&v, "/server/workers"), 1);
    assert!(v["server"]["uptime_seconds"].as_f64().unwrap() >= 0.0);
    // The CLI's own session is the one open now.
    assert_eq!(u(&v, "/sessions/open"), 1);
    assert!(u(&v, "/sessions/total") >= 1);
    assert_eq!(u(&v, "/sessions/closed_for_violations"), 0);
    u(&v, "/calls_answered");
    u(&v, "/wake_syscalls");
    for k in [
        "alive",
        "bytes",
        "large",
        "writing",
        "leases",
        "small_pool_used_bytes",
        "small_pool_capacity_bytes",
        "small_pool_segments",
        "author_pools",
    ] {
        u(&v, &format!("/blobs/{k}"));
    }
    for k in [
        "entries",
        "bytes",
        "budget_bytes",
        "hits",
        "misses",
        "evictions",
        "refused_full",
    ] {
        u(&v, &format!("/memory_cache/{k}"));
    }
    assert!(u(&v, "/memory_cache/budget_bytes") > 0);
    for k in [
        "entries",
        "bytes",
        "budget_bytes",
        "hits",
        "misses",
        "corruptions",
        "evictions",
        "queued",
    ] {
        u(&v, &format!("/disk_cache/{k}"));
    }
    for k in [
        "methods",
        "providers",
        "queued",
        "in_flight",
        "calls",
        "replied",
        "reply_errors",
        "busy",
        "deadline_exceeded",
        "provider_gone",
        "refused",
        "resent",
        "discarded",
        "abandoned",
    ] {
        u(&v, &format!("/provided/{k}"));
    }
    let sessions = v["per_session"].as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    for k in [
        "id",
        "pid",
        "calls",
        "in_flight",
        "backlog",
        "leases",
        "pinned_bytes",
        "pool_bytes",
    ] {
        u(&sessions[0], &format!("/{k}"));
    }
}

#[test]
fn stats_json_without_a_disk_tier_has_a_null_disk_cache() {
    let (_dog, dir, _server) = with_server(
        "json stats memory",
        Duration::from_secs(120),
        &["--no-disk-cache"],
    );
    let v = json(&dir, &["stats"]);
    assert!(v["disk_cache"].is_null(), "{v}");
}

#[test]
fn put_get_rm_json_report_what_they_did() {
    let (_dog, dir, _server) = with_server("json put get", Duration::from_secs(120), &[]);
    let input = dir.0.join("in.txt");
    std::fs::write(&input, b"twelve bytes").unwrap();
    let file = input.to_str().unwrap();

    let v = json(&dir, &["put", "k", file]);
    assert_eq!(v["key"], "k");
    assert_eq!(u(&v, "/bytes"), 12);
    assert_eq!(v["stored"], true);
    assert_eq!(v["durable"], false);
    assert!(v.get("handle").is_none(), "handle only with -v: {v}");

    let v = json(&dir, &["put", "--if-absent", "k", file]);
    assert_eq!(v["stored"], false);
    assert_eq!(v["durable"], false);

    let v = json(&dir, &["put", "--sync", "-v", "d", file]);
    assert_eq!(v["stored"], true);
    assert_eq!(v["durable"], true);
    assert!(v["handle"].as_str().unwrap().starts_with("blob "), "{v}");

    let output = dir.0.join("out.txt");
    let v = json(&dir, &["get", "k", "-o", output.to_str().unwrap()]);
    assert_eq!(v["key"], "k");
    assert_eq!(u(&v, "/bytes"), 12);
    assert_eq!(v["output"], output.to_str().unwrap());
    assert_eq!(std::fs::read(&output).unwrap(), b"twelve bytes");

    let v = json(&dir, &["rm", "k"]);
    assert_eq!(v["key"], "k");
    assert_eq!(v["removed"], true);

    // A get to stdout has data there, not JSON: refused with a reason.
    let out = Command::new(cli_bin())
        .env("CRADLE_SOCKET", dir.socket())
        .args(["--json", "get", "d"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-o FILE"));
    assert!(out.stdout.is_empty());
}

#[test]
fn completions_generate_for_bash_zsh_and_fish_and_man_renders() {
    let _dog = Watchdog::arm("completions", Duration::from_secs(60));
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef cradle"),
        ("fish", "complete -c cradle"),
    ] {
        // No server needed: the socket points nowhere.
        let out = Command::new(cli_bin())
            .env("CRADLE_SOCKET", "/nonexistent/cradle.sock")
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {text}");
        for sub in ["ping", "stats", "put", "get", "rm", "completions"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
        // bash and zsh spell the flag `--json`, fish `-l json`.
        assert!(
            text.contains("--json") || text.contains("-l json"),
            "{shell} completion lacks --json"
        );
    }
    let out = Command::new(cli_bin()).arg("man").output().unwrap();
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH cradle 1"), "{page}");
    assert!(page.contains("completions"), "{page}");
}

#[test]
fn the_server_logs_one_json_object_per_line() {
    let dog = Watchdog::arm("json logs", Duration::from_secs(60));
    let dir = TempDir::new("json-logs");
    let child = Command::new(server_bin())
        .arg("--socket")
        .arg(dir.socket())
        .args([
            "--no-disk-cache",
            "--log-format",
            "json",
            "--log-level",
            "info",
        ])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    dog.watch_child(child.id());
    let ready = eventually(Duration::from_secs(30), || {
        cradle_client::Client::connect(dir.socket()).is_ok()
    });
    assert!(ready, "the server did not come up");
    signal(child.id(), libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let out = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .map(|v| v["fields"]["message"].as_str().unwrap())
        .collect();
    assert!(messages.contains(&"cradle-server ready"), "{messages:?}");
    assert!(messages.contains(&"server stopped"), "{messages:?}");
    for v in &lines {
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{v}");
    }
}
