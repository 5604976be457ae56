//! Server-wide limits against many cheap clients: silent connections, many
//! sessions, sessions that never read their responses. The server's memory
//! and descriptors stay bounded, its log stays readable, and a well-behaved
//! client keeps being served.

mod support;

use cradle_client::Client;
use ipc_rpc::builtin::{Ping, Stats};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

/// Raises this process's `RLIMIT_NOFILE` soft limit to the hard limit and
/// returns it.
fn raise_nofile() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if let Some(hard) = lim.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Starts a server whose log (stderr, at `info`) goes to `log`.
fn server_logging_to(socket: &Path, log: &Path, extra: &[&str]) -> ServerProc {
    let file = std::fs::File::create(log).expect("log file");
    let child = Command::new(server_bin())
        .arg("--socket")
        .arg(socket)
        .arg("--disk-cache")
        .arg(socket.with_file_name("disk"))
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn cradle-server");
    let server = ServerProc {
        child,
        socket: socket.to_path_buf(),
    };
    server.wait_ready();
    server
}

#[test]
fn five_thousand_silent_connections_leave_room_and_the_log_readable() {
    const SILENT: usize = 5000;
    let limit = raise_nofile();
    assert!(
        limit > SILENT as u64 + 200,
        "RLIMIT_NOFILE {limit} too small for {SILENT} connections"
    );
    let dog = Watchdog::arm("silent connections", Duration::from_secs(120));
    let dir = TempDir::new("silent");
    let log = dir.0.join("server.log");
    let mut server = server_logging_to(&dir.socket(), &log, &[]);
    dog.watch_child(server.pid());
    let fds_before = fd_count(server.pid());
    let mut silent = Vec::with_capacity(SILENT);
    for i in 0..SILENT {
        match UnixStream::connect(dir.socket()) {
            Ok(s) => silent.push(s),
            Err(e) => panic!("silent connection {i}: {e}"),
        }
    }
    // Every connection was accepted (the listen queue is empty once a real
    // client gets through below); the server holds only a bounded number.
    let good = Client::connect_with(dir.socket(), sleeping()).expect("a real client connects");
    assert_eq!(good.call::<Ping>(&b"hi".to_vec()).unwrap(), b"hi");
    let fds_during = fd_count(server.pid());
    eprintln!(
        "server descriptors: {fds_before} before, {fds_during} with {SILENT} silent connections"
    );
    assert!(
        fds_during < fds_before + 200,
        "the server keeps {} descriptors for silent connections",
        fds_during - fds_before
    );
    // Past the handshake timeout (2 s) the last pending ones are dropped too.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(good.call::<Ping>(&b"again".to_vec()).unwrap(), b"again");
    drop(good);
    drop(silent);
    assert!(server.terminate().success());
    let text = std::fs::read_to_string(&log).expect("read log");
    let warns = text.lines().filter(|l| l.contains("WARN")).count();
    eprintln!(
        "server log: {} lines, {warns} warnings; the warnings:",
        text.lines().count()
    );
    for l in text.lines().filter(|l| l.contains("WARN")) {
        eprintln!("  {l}");
    }
    assert!(warns > 0, "the flood was not reported at all");
    assert!(
        warns < 50,
        "{warns} warning lines for {SILENT} silent connections"
    );
}

#[test]
fn stats_with_4096_sessions_fits_one_frame_and_lists_the_busiest() {
    const SESSIONS: usize = 4096;
    let limit = raise_nofile();
    assert!(limit > 2 * SESSIONS as u64 + 200, "RLIMIT_NOFILE {limit}");
    let (_dog, dir, _server) = with_server(
        "stats 4096",
        Duration::from_secs(300),
        &["--max-sessions", "4200"],
    );
    // The busiest session: a well-behaved client with many calls.
    let good = Client::connect_with(dir.socket(), sleeping()).unwrap();
    for i in 0..200u32 {
        let p = i.to_le_bytes().to_vec();
        assert_eq!(good.call::<Ping>(&p).unwrap(), p);
    }
    let raw: Vec<RawSession> = (0..SESSIONS)
        .map(|_| RawSession::open(&dir.socket()))
        .collect();
    // The acceptor hands a session to its worker after the handshake the
    // raw client saw: the last few may still be on their way.
    let mut s = good.call::<Stats>(&()).expect("stats with 4096 sessions");
    eventually(Duration::from_secs(30), || {
        s = good.call::<Stats>(&()).expect("stats with 4096 sessions");
        s.sessions == SESSIONS as u64 + 1
    });
    eprintln!(
        "stats: {} sessions open, {} listed",
        s.sessions,
        s.per_session.len()
    );
    assert_eq!(s.sessions, SESSIONS as u64 + 1);
    assert!(!s.per_session.is_empty() && s.per_session.len() <= SESSIONS + 1);
    let busiest = s.per_session.iter().max_by_key(|p| p.calls).unwrap();
    assert!(
        busiest.calls >= 200,
        "the busiest session is not listed: {busiest:?}"
    );
    // The CLI prints it too (when the workspace's binaries are built).
    let cli = std::path::Path::new(server_bin()).with_file_name("cradle");
    if cli.exists() {
        let out = Command::new(&cli)
            .arg("--socket")
            .arg(dir.socket())
            .arg("stats")
            .output()
            .expect("run cradle stats");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cradle stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Its own session is one more.
        assert!(
            text.contains("4098 connected now"),
            "cradle stats said: {text}"
        );
    } else {
        eprintln!("{} not built: CLI part skipped", cli.display());
    }
    drop(raw);
}

/// `RssAnon` (heap and other private memory) of `pid`, in bytes.
fn rss_anon(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .expect("RssAnon line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("RssAnon value");
    kib * 1024
}

/// 16 sessions that never read, each sending the largest pings its ring
/// takes, for `secs`; a well-behaved client calls meanwhile. Returns the
/// stats at the end, the server's `RssAnon` growth, and the good calls.
fn never_readers(
    server: &ServerProc,
    socket: &Path,
    secs: u64,
) -> (ipc_rpc::builtin::ServerStats, u64, u64, usize) {
    use ipc_core::ring::FrameMeta;
    use ipc_rpc::{Method, Outbox, SendError, wire};
    use std::time::Instant;
    let good = Client::connect_with(socket, sleeping()).unwrap();
    assert_eq!(good.call::<Ping>(&b"warm".to_vec()).unwrap(), b"warm");
    let base = rss_anon(server.pid());
    let raw: Vec<RawSession> = (0..16).map(|_| RawSession::open(socket)).collect();
    let payload = ipc_core::ring::max_payload_len(raw[0].cap()) - 64;
    let body = vec![0x5au8; payload];
    let mut outs: Vec<_> = raw.iter().map(|r| Outbox::new(r.producer())).collect();
    let mut ids = vec![0u64; raw.len()];
    let (mut sent, mut calls, mut peak) = (0u64, 0u64, 0u64);
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        for (i, out) in outs.iter_mut().enumerate() {
            loop {
                let meta = FrameMeta {
                    request_id: ids[i],
                    tag: Ping::ID,
                    kind: wire::REQUEST,
                    flags: 0,
                };
                match out.try_send(meta, &body) {
                    Ok(()) => {
                        ids[i] += 1;
                        sent += 1;
                    }
                    Err(SendError::Full { .. }) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            raw[i].kick();
        }
        let p = calls.to_le_bytes().to_vec();
        assert_eq!(good.call::<Ping>(&p).expect("well-behaved call"), p);
        calls += 1;
        peak = peak.max(rss_anon(server.pid()));
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = good.call::<Stats>(&()).unwrap();
    eprintln!(
        "16 never-reading sessions sent {sent} pings of {payload} B; {calls} good calls; \
         server RssAnon {} KiB at start, peak {} KiB",
        base / 1024,
        peak / 1024
    );
    (stats, peak.saturating_sub(base), calls, payload)
}

#[test]
fn never_reading_sessions_cannot_grow_the_server_heap_without_bound() {
    // 64 KiB rings: without byte caps, 1,024 queued answers of ~32 KiB per
    // session would be 512 MiB of heap for 16 sessions.
    let (_dog, dir, server) = with_server(
        "backlog bytes",
        Duration::from_secs(120),
        &["--ring-bytes", "65536"],
    );
    let (stats, growth, calls, payload) = never_readers(&server, &dir.socket(), 2);
    assert!(calls > 0);
    let queued: u64 = stats.per_session.iter().map(|p| u64::from(p.backlog)).sum();
    eprintln!(
        "{queued} answers queued in all; heap growth {} KiB",
        growth / 1024
    );
    // Each session stops being served at four rings (8 answers) of bytes.
    for p in &stats.per_session {
        assert!(
            u64::from(p.backlog) * payload as u64 <= 8 * 32 * 1024 + payload as u64,
            "session {} has {} answers queued",
            p.id,
            p.backlog
        );
    }
    assert!(
        growth < 64 << 20,
        "the server's heap grew by {} MiB",
        growth >> 20
    );
}

#[test]
fn the_server_wide_backlog_cap_holds_across_sessions() {
    let (_dog, dir, server) = with_server(
        "backlog global",
        Duration::from_secs(120),
        &["--ring-bytes", "65536", "--max-backlog-bytes", "1M"],
    );
    let (stats, growth, calls, payload) = never_readers(&server, &dir.socket(), 2);
    assert!(calls > 0);
    let queued: u64 = stats.per_session.iter().map(|p| u64::from(p.backlog)).sum();
    eprintln!(
        "{queued} answers queued in all; heap growth {} KiB",
        growth / 1024
    );
    // 1 MiB, plus at most one answer over it (one worker).
    assert!(
        queued * payload as u64 <= (1 << 20) + payload as u64,
        "{queued} answers of {payload} B queued past a 1 MiB cap"
    );
    assert!(queued > 0, "nothing was held back at all");
}

#[test]
fn sessions_breaking_the_protocol_in_a_loop_do_not_flood_the_log() {
    use ipc_core::ring::FrameMeta;
    use ipc_rpc::{Method, Outbox, wire};
    const SESSIONS: usize = 300;
    let dog = Watchdog::arm("violation loop", Duration::from_secs(120));
    let dir = TempDir::new("violations");
    let log = dir.0.join("server.log");
    let mut server = server_logging_to(&dir.socket(), &log, &["--log-level", "info"]);
    dog.watch_child(server.pid());
    for i in 0..SESSIONS {
        // A frame of the response kind in the request ring: a violation,
        // the session is closed.
        let raw = RawSession::open(&dir.socket());
        let mut out = Outbox::new(raw.producer());
        let meta = FrameMeta {
            request_id: i as u64,
            tag: Ping::ID,
            kind: wire::RESPONSE,
            flags: 0,
        };
        out.try_send(meta, &vec![0u8; 8]).unwrap();
        raw.kick();
        // Wait until the server closed it (EOF on the control socket).
        let mut s = raw.stream.try_clone().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut b = [0u8; 64];
        loop {
            match std::io::Read::read(&mut s, &mut b) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) => panic!("session {i}: {e}"),
            }
        }
    }
    let good = Client::connect_with(dir.socket(), sleeping()).unwrap();
    let st = good.call::<Stats>(&()).unwrap();
    assert_eq!(
        st.sessions_killed, SESSIONS as u64,
        "every session was closed"
    );
    drop(good);
    assert!(server.terminate().success());
    let text = std::fs::read_to_string(&log).expect("read log");
    let closed = text
        .lines()
        .filter(|l| l.contains("session closed for a protocol violation"))
        .count();
    let opened = text
        .lines()
        .filter(|l| l.contains("session opened"))
        .count();
    eprintln!("{closed} violation lines and {opened} opened lines for {SESSIONS} sessions");
    assert!(closed > 0, "the violations were not reported at all");
    assert!(closed < 30, "{closed} lines for {SESSIONS} violations");
    assert!(opened < 30, "{opened} lines for {SESSIONS} sessions");
    assert!(
        text.contains("more suppressed"),
        "the suppressed lines are not counted:\n{text}"
    );
    // The lines name the session through its span.
    assert!(
        text.lines()
            .any(|l| l.contains("session{id=") && l.contains("protocol violation")),
        "{text}"
    );
}
