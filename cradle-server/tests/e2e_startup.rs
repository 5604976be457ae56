//! Start-up rules: one server per socket, stale sockets replaced, the socket
//! directory checked, other users refused.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

#[test]
#[ignore = "entry point of the child processes the other tests spawn"]
fn child_entry() {
    let Some((role, _)) = child_role() else {
        return;
    };
    assert_eq!(role, "raw-hello", "unknown role");
    // A client without the library's own uid check: connect, send a valid
    // Hello, and report whether the server answered with a Welcome.
    let path = cradle_client::default_socket_path();
    let stream = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The server checks the peer's uid at accept and may hang up before our
    // Hello is even sent: that is a refusal too.
    let closed = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        )
    };
    if let Err(e) = ipc_rpc::handshake::send_pod(&stream, &ipc_rpc::handshake::Hello::current()) {
        println!(
            "RESULT {}",
            if closed(&e) {
                "closed".to_string()
            } else {
                format!("error {e}")
            }
        );
        return;
    }
    let mut buf = [0u8; size_of::<ipc_rpc::handshake::Welcome>()];
    use std::os::fd::AsFd;
    match ipc_rpc::handshake::recv_with_fds(stream.as_fd(), &mut buf) {
        // A clean EOF, or a reset (the server closed with our Hello unread).
        Ok(None) => println!("RESULT closed"),
        Err(e) if closed(&e) => println!("RESULT closed"),
        Ok(Some(fds)) => println!("RESULT welcomed with {} descriptors", fds.len()),
        Err(e) => println!("RESULT error {e}"),
    }
}

fn start_expecting_failure(socket: &std::path::Path) -> (i32, String) {
    let out = Command::new(server_bin())
        .arg("--socket")
        .arg(socket)
        .arg("--disk-cache")
        .arg(socket.with_file_name("disk"))
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
    // The server's own check: a raw client (no client-side uid check) is
    // hung up on without a Welcome, so it never sees a descriptor.
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_entry",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CRADLE_CHILD_ROLE", "raw-hello")
        .env("CRADLE_SOCKET", dir.socket())
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn raw client as uid 65534");
    let (status, lines) = child_results(child);
    assert!(status.success(), "raw client: {status:?}");
    assert_eq!(
        lines,
        vec!["closed".to_string()],
        "the server must close on a foreign uid"
    );
    // The CLI as that user fails too (its own check refuses a root server
    // first: the other side of the same rule).
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
    assert!(err.contains("runs as uid 0"), "{err}");
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
        .arg("--no-disk-cache")
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

#[test]
fn a_memory_cache_budget_the_machine_cannot_hold_is_refused() {
    let _dog = Watchdog::arm("cache budget", Duration::from_secs(60));
    let dir = TempDir::new("cache-budget");
    for (value, want) in [
        ("1000T", "exceeds the memory available now"),
        ("12Q", "unknown unit"),
    ] {
        let out = Command::new(server_bin())
            .arg("--socket")
            .arg(dir.socket())
            .args(["--mem-cache-bytes", value, "--no-disk-cache"])
            .stdin(Stdio::null())
            .output()
            .expect("run cradle-server");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(if value == "12Q" { 2 } else { 1 }),
            "{err}"
        );
        assert!(err.contains(want), "{value}: {err}");
        assert!(!dir.socket().exists(), "no socket left behind");
    }
}
