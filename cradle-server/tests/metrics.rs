//! The metrics endpoint (`cradle-server --metrics`) against real clients:
//! exact per-method counts after a known number of calls, a scrape that
//! `promtool check metrics` accepts, and a real Prometheus server scraping
//! it on loopback and answering the same counts through its query API.
//!
//! promtool and prometheus come from the Debian package `prometheus`
//! (`.ci/install-prometheus.sh`). Outside CI a missing tool skips those
//! checks with a printed reason; with `CI=true` it fails the test.

mod support;

use cradle_client::Client;
use ipc_rpc::builtin::Ping;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// A free loopback port (bound, then released for the process under test).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.1 with `accept`; the status line and the body.
fn http_get(addr: SocketAddr, path: &str, accept: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}

/// The value of the sample `series` (name and labels exactly as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

/// A tool of the `prometheus` package: its path, or `None` (with the reason
/// printed) when it is missing outside CI. Missing in CI fails.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    });
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "{name} is missing: CI installs it with .ci/install-prometheus.sh (Debian package prometheus)"
        );
        eprintln!(
            "SKIPPED the {name} checks: {name} is not installed (apt-get install prometheus, or bash .ci/install-prometheus.sh)"
        );
    }
    found
}

/// Percent-encodes a query-string value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

const PINGS: u64 = 1234;
const MISSES: u64 = 17;

/// Makes exactly `PINGS` pings and `MISSES` cache gets of absent keys.
fn make_calls(socket: &Path) {
    let client = Client::connect(socket).unwrap();
    for i in 0..PINGS {
        let echo = client.call::<Ping>(&vec![i as u8; 8]).unwrap();
        assert_eq!(echo.len(), 8);
    }
    let cache = client.cache();
    for i in 0..MISSES {
        assert!(cache.get(&format!("absent-{i}")).unwrap().is_none());
    }
}

#[test]
fn a_scrape_counts_every_call_and_passes_promtool() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_dog, dir, _server) = with_server(
        "metrics scrape",
        Duration::from_secs(120),
        &["--metrics", &addr.to_string()],
    );
    make_calls(&dir.socket());

    let (status, text) = http_get(addr, "/metrics", "*/*").unwrap();
    assert!(status.contains("200"), "{status}");
    let ping = r#"cradle_calls_total{method="cradle.ping",outcome="ok"}"#;
    assert_eq!(sample(&text, ping), Some(PINGS as f64), "{text}");
    let get = r#"cradle_calls_total{method="cradle.cache.get",outcome="ok"}"#;
    assert_eq!(sample(&text, get), Some(MISSES as f64), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"cradle_call_duration_seconds_count{method="cradle.ping"}"#
        ),
        Some(PINGS as f64)
    );
    assert_eq!(
        sample(
            &text,
            r#"cradle_call_duration_seconds_bucket{le="+Inf",method="cradle.ping"}"#
        ),
        Some(PINGS as f64)
    );
    assert_eq!(
        sample(&text, r#"cradle_cache_misses_total{tier="memory"}"#),
        Some(MISSES as f64)
    );
    // The harness's readiness probe, then `make_calls`'s client.
    assert_eq!(sample(&text, "cradle_sessions_opened_total"), Some(2.0));
    assert!(sample(&text, "cradle_sessions").is_some_and(|n| n <= 1.0));
    assert_eq!(
        sample(&text, "cradle_sessions_closed_for_violations_total"),
        Some(0.0)
    );
    for name in [
        "cradle_wake_syscalls_total",
        "cradle_disk_write_queue",
        "cradle_disk_write_failures_total",
        "cradle_quota_refusals_total",
        r#"cradle_cache_entries{tier="disk"}"#,
        r#"cradle_cache_budget_bytes{tier="memory"}"#,
    ] {
        assert!(sample(&text, name).is_some(), "{name} missing:\n{text}");
    }

    // OpenMetrics for a scraper that asks for it.
    let (_, om) = http_get(
        addr,
        "/metrics",
        "application/openmetrics-text;version=1.0.0",
    )
    .unwrap();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert_eq!(sample(&om, ping), Some(PINGS as f64));
    // Anything but /metrics is not found.
    let (status, _) = http_get(addr, "/", "*/*").unwrap();
    assert!(status.contains("404"), "{status}");

    if let Some(promtool) = tool("promtool") {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A Prometheus server on loopback, killed on drop.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asks Prometheus for the instant value of `query`.
fn query(prom: SocketAddr, q: &str) -> Option<f64> {
    let (status, body) = http_get(
        prom,
        &format!("/api/v1/query?query={}", urlencode(q)),
        "*/*",
    )
    .ok()?;
    if !status.contains("200") {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v.pointer("/data/result/0/value/1")?.as_str()?.parse().ok()
}

#[test]
fn a_real_prometheus_scrapes_the_exact_counts() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (dog, dir, _server) = with_server(
        "metrics prometheus",
        Duration::from_secs(180),
        &["--metrics", &addr.to_string()],
    );
    make_calls(&dir.socket());

    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: cradle\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let prom_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.0.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prometheus");
    dog.watch_child(child.id());
    let mut prom = Prometheus(child);

    let ping = r#"cradle_calls_total{job="cradle",method="cradle.ping",outcome="ok"}"#;
    let get = r#"cradle_calls_total{job="cradle",method="cradle.cache.get",outcome="ok"}"#;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = (None, None);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = prom.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = prom.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("prometheus exited ({status}): {err}");
        }
        seen = (query(prom_addr, ping), query(prom_addr, get));
        if seen.0.is_some() && seen.1.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(seen, (Some(PINGS as f64), Some(MISSES as f64)));
    assert_eq!(
        query(prom_addr, r#"up{job="cradle"}"#),
        Some(1.0),
        "the target is up"
    );
    assert_eq!(
        query(
            prom_addr,
            r#"cradle_call_duration_seconds_count{job="cradle",method="cradle.ping"}"#
        ),
        Some(PINGS as f64)
    );
}

#[test]
fn the_documented_alerts_pass_promtool_check_rules() {
    let _dog = Watchdog::arm("alert rules", Duration::from_secs(60));
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
    )
    .unwrap();
    let start = doc
        .find("# cradle.rules.yml")
        .expect("docs/operations.md has the alert rules");
    let rules = &doc[start..];
    let rules = &rules[..rules.find("```").expect("the rules block ends")];
    for alert in [
        "CradleDiskWriteBehindFailing",
        "CradleCacheThrashing",
        "CradleSessionsClosedForViolations",
    ] {
        assert!(rules.contains(alert), "{alert} missing");
    }
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = TempDir::new("alert-rules");
    let file = dir.0.join("cradle.rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("3 rules found"), "{text}");
}
