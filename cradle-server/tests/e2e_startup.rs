//! Start-up rules: one server per socket, stale sockets replaced, the socket
//! directory checked, other users refused.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

fn start_expecting_failure(socket: &std::path::Path) -> (i32, String) {
    let out = Command::new(server_bin())
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .output()
        .expect("run cradle-server");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_second_server_on_the_same_path_is_refused() {
    let (_dog, dir, _server) = with_server("singleton", Duration::from_secs(60), &[]);
    let (code, err) = start_expecting_failure(&dir.socket());
    assert_eq!(code, 1, "stderr: {err}");
    assert!(err.contains("already running"), "stderr: {err}");
    // The first one is unharmed.
    cradle_client::Client::connect(dir.socket()).unwrap();
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dog = Watchdog::arm("stale socket", Duration::from_secs(60));
    let dir = TempDir::new("stale");
    // A socket file nobody listens on, as a dead server leaves it.
    drop(std::os::unix::net::UnixListener::bind(dir.socket()).unwrap());
    assert!(dir.socket().exists());
    let server = ServerProc::start(&dir.socket(), &[]);
    dog.watch_child(server.pid());
    cradle_client::Client::connect(dir.socket()).unwrap();
}

#[test]
fn a_socket_directory_that_is_not_ours_or_private_is_refused() {
    let dog = Watchdog::arm("socket dir", Duration::from_secs(60));
    let base = TempDir::new("dirs");
    // Mode 0755.
    let open = base.0.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, err) = start_expecting_failure(&open.join("cradle.sock"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("0700") || err.contains("mode"), "{err}");
    // A symlink to a good directory.
    let real = base.0.join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = base.0.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let (code, err) = start_expecting_failure(&link.join("cradle.sock"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("symlink") || err.contains("symbolic"), "{err}");
    // Owned by another uid (we run as root in CI; otherwise chown fails and
    // the directory is ours, so only check when chown worked).
    let foreign = base.0.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).unwrap();
    if std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).is_ok() {
        let (code, err) = start_expecting_failure(&foreign.join("cradle.sock"));
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("owned") || err.contains("owner"), "{err}");
    } else {
        eprintln!("not root: the foreign-owner case is covered by the server's unit tests");
    }
    drop(dog);
}

#[test]
fn a_process_of_another_user_gets_no_session() {
    let dog = Watchdog::arm("other uid", Duration::from_secs(60));
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "not root: cannot start a process as another uid; the server's unit tests check the uid rule"
        );
        return;
    }
    let dir = TempDir::new("otheruid");
    let server = ServerProc::start(&dir.socket(), &[]);
    dog.watch_child(server.pid());
    // Let uid 65534 reach the socket, so that the server's own SO_PEERCRED
    // check is what refuses it (not the directory's permissions).
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(dir.socket(), std::fs::Permissions::from_mode(0o777)).unwrap();
    use std::os::unix::process::CommandExt;
    let out = Command::new(cli_bin())
        .args(["--socket"])
        .arg(dir.socket())
        .args(["ping", "--count", "1"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run cradle as uid 65534");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("round trip"), "{err}");
    eprintln!("uid 65534 was told: {}", err.trim());
    // The server is fine and serves us.
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    let c = cradle_client::Client::connect(dir.socket()).unwrap();
    c.call::<ipc_rpc::builtin::Ping>(&vec![1]).unwrap();
}

#[test]
fn the_client_refuses_a_server_of_another_user() {
    let dog = Watchdog::arm("foreign server", Duration::from_secs(60));
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot start a server as another uid");
        return;
    }
    let base = TempDir::new("foreign-server");
    std::fs::set_permissions(&base.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = base.0.join("sock");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let socket = dir.join("cradle.sock");
    use std::os::unix::process::CommandExt;
    let mut server = Command::new(server_bin())
        .arg("--socket")
        .arg(&socket)
        .uid(65534)
        .gid(65534)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    dog.watch_child(server.id());
    assert!(
        eventually(Duration::from_secs(20), || socket.exists()),
        "server as uid 65534 did not start"
    );
    match cradle_client::Client::connect(&socket) {
        Err(cradle_client::ConnectError::ForeignServer {
            server_uid,
            our_uid,
        }) => {
            assert_eq!((server_uid, our_uid), (65534, 0));
        }
        other => panic!("expected ForeignServer, got {other:?}"),
    }
    let _ = server.kill();
    let _ = server.wait();
}
