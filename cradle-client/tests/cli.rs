//! The `cradle` command line without a server: help, bad flags, and the one
//! clear line when no server runs. (Against a real server:
//! `cradle-server/tests/cli.rs`, which relies on this package's tests to have
//! the `cradle` binary built.)

use std::process::Command;

fn cradle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cradle"))
}

#[test]
fn no_server_is_one_clear_line_and_exit_1() {
    let dir = std::env::temp_dir().join(format!("cradle-cli-none-{}", std::process::id()));
    let socket = dir.join("cradle.sock");
    for cmd in ["ping", "stats"] {
        let out = cradle()
            .arg("--socket")
            .arg(&socket)
            .arg(cmd)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert_eq!(err.lines().count(), 1, "{cmd}: {err}");
        assert_eq!(
            err.trim(),
            format!(
                "cradle: no CRADLE server at {}; start one with `cradle-server`",
                socket.display()
            )
        );
    }
    // CRADLE_SOCKET is honoured the same way.
    let out = cradle()
        .env("CRADLE_SOCKET", &socket)
        .arg("stats")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains(&socket.display().to_string()));
}

#[test]
fn help_explains_the_commands_and_bad_flags_fail_clearly() {
    let out = cradle().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for word in [
        "cradle-server",
        "ping",
        "stats",
        "--socket",
        "CRADLE_SOCKET",
    ] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
    let out = cradle()
        .args(["ping", "--wait", "forever"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap's usage error code");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--wait"));
}
