//! The harness's command line without running a benchmark: help, bad flags,
//! and a missing server (a clear message and exit code 1, no panic).

use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cradle-bench"))
}

#[test]
fn help_explains_every_option() {
    let out = bench().arg("--help").output().expect("run cradle-bench");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--quick",
        "--iters",
        "--payloads",
        "--blocks",
        "--pin",
        "--clients",
        "--json",
        "--plot",
        "--server",
        "--blobs",
        "--blob-ops",
        "--blob-max",
    ] {
        assert!(help.contains(opt), "{opt} missing from --help:\n{help}");
    }
    assert!(
        !help.contains("Commands:"),
        "the peer subcommand is hidden:\n{help}"
    );
}

#[test]
fn bad_flags_are_usage_errors_not_panics() {
    for args in [
        &["--payloads", "8,abc"][..],
        &["--payloads", "70000"],
        &["--blocks", "3"],
        &["--iters", "0"],
        &["--no-such-flag"],
        &["--blobs", "sometimes"],
        &["--blob-ops", "10"],
        &["--blob-max", "4K"],
        &["--blob-max", "5G"],
        &["--blob-max", "lots"],
    ] {
        let out = bench().args(args).output().expect("run cradle-bench");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn a_missing_server_is_a_clear_error() {
    let out = bench()
        .args(["--quick", "--server", "/nonexistent/cradle-server"])
        .output()
        .expect("run cradle-bench");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no cradle-server binary at /nonexistent/cradle-server"),
        "{err}"
    );
    assert!(
        err.contains("cargo build --release -p cradle-server -p cradle-benches"),
        "{err}"
    );
}
