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
