//! Hostile clients, each against a server that a well-behaved client keeps
//! using: the well-behaved client keeps getting answers, the server survives.
//! Seeds are fixed and printed.

mod support;

use cradle_client::Client;
use ipc_core::ring::FrameMeta;
use ipc_rpc::builtin::{Ping, Stats};
use ipc_rpc::{Method, Outbox, SendError, wire};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// Calls from a well-behaved client until `stop` is set; returns how many.
fn keep_calling(client: &Client, until: Instant) -> u64 {
    let mut n = 0u64;
    while Instant::now() < until {
        let p = n.to_le_bytes().to_vec();
        let r = client
            .call::<Ping>(&p)
            .unwrap_or_else(|e| panic!("well-behaved call {n}: {e}"));
        assert_eq!(r, p);
        n += 1;
    }
    n
}

fn server_alive(server: &mut ServerProc) {
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server died"
    );
}

#[test]
fn a_client_scribbling_over_its_session_does_not_hurt_the_others() {
    let (_dog, dir, mut server) = with_server("scribbler", Duration::from_secs(120), &[]);
    let good = Client::connect_with(dir.socket(), sleeping()).unwrap();
    for seed in 0..4u64 {
        let raw = Arc::new(RawSession::open(&dir.socket()));
        let len = raw.map.len();
        let end = Instant::now() + Duration::from_millis(750);
        let r2 = raw.clone();
        let scribbler = std::thread::spawn(move || {
            let mut rng = SplitMix(seed);
            let mut out = Outbox::new(r2.producer());
            let mut writes = 0u64;
            while Instant::now() < end {
                // Honest-looking requests mixed with garbage anywhere (our own
                // producer may find its ring corrupt too: that is fine).
                let meta = FrameMeta {
                    request_id: writes,
                    tag: Ping::ID,
                    kind: wire::REQUEST,
                    flags: 0,
                };
                let _ = out.try_send(meta, &vec![1u8; 16]);
                for _ in 0..32 {
                    let off = (rng.next_u64() as usize % (len / 8)) * 8;
                    r2.scribble(off, rng.next_u64());
                    writes += 1;
                }
                r2.kick();
                std::thread::sleep(Duration::from_micros(50));
            }
            writes
        });
        let calls = keep_calling(&good, end);
        let writes = scribbler.join().unwrap();
        server_alive(&mut server);
        eprintln!(
            "seed {seed}: {writes} garbage words written, {calls} good calls answered meanwhile"
        );
        assert!(calls > 0);
    }
    let s = good.call::<Stats>(&()).unwrap();
    eprintln!(
        "sessions closed for protocol violations: {}",
        s.sessions_killed
    );
    assert!(
        s.sessions_killed >= 1,
        "no scribbling session was detected and closed"
    );
}

#[test]
fn a_client_that_never_drains_its_responses_is_throttled_alone() {
    let (_dog, dir, mut server) = with_server("never drains", Duration::from_secs(120), &[]);
    let good = Client::connect_with(dir.socket(), sleeping()).unwrap();
    let raw = RawSession::open(&dir.socket());
    let mut out = Outbox::new(raw.producer());
    let end = Instant::now() + Duration::from_secs(2);
    let (mut sent, mut calls) = (0u64, 0u64);
    while Instant::now() < end {
        // Fill the request ring whenever the server takes requests; never read.
        for _ in 0..256 {
            let meta = FrameMeta {
                request_id: sent,
                tag: Ping::ID,
                kind: wire::REQUEST,
                flags: 0,
            };
            match out.try_send(meta, &vec![0u8; 512]) {
                Ok(()) => sent += 1,
                Err(SendError::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        raw.kick();
        calls += keep_calling(&good, Instant::now() + Duration::from_millis(20));
    }
    server_alive(&mut server);
    let s = good.call::<Stats>(&()).unwrap();
    let mine = s
        .per_session
        .iter()
        .find(|p| p.id == raw.welcome.session_id)
        .expect("hostile session listed");
    eprintln!(
        "never-draining client sent {sent} requests; backlog {} ; good calls {calls}",
        mine.backlog
    );
    assert!(calls > 0);
    assert!(
        mine.backlog > 0,
        "the server should hold that client's responses back"
    );
}

#[test]
fn a_client_flooding_requests_does_not_starve_the_others() {
    let (_dog, dir, mut server) = with_server("flood", Duration::from_secs(120), &[]);
    let good = Client::connect_with(dir.socket(), sleeping()).unwrap();
    let raw = Arc::new(RawSession::open(&dir.socket()));
    let end = Instant::now() + Duration::from_secs(2);
    let r2 = raw.clone();
    let flooder = std::thread::spawn(move || {
        let mut out = Outbox::new(r2.producer());
        let mut inbox = ipc_rpc::Inbox::new(r2.consumer());
        let (mut sent, mut got) = (0u64, 0u64);
        while Instant::now() < end {
            let meta = FrameMeta {
                request_id: sent,
                tag: Ping::ID,
                kind: wire::REQUEST,
                flags: 0,
            };
            if out.try_send(meta, &vec![0u8; 8]).is_ok() {
                sent += 1;
                r2.kick();
            }
            while let Ok(Some(_)) = inbox.try_recv() {
                got += 1;
            }
            inbox.consumer().release_and_notify(&r2.eventfd);
        }
        (sent, got)
    });
    let calls = keep_calling(&good, end);
    let (sent, got) = flooder.join().unwrap();
    server_alive(&mut server);
    eprintln!(
        "flooder sent {sent}, got {got} answers; the good client made {calls} calls meanwhile"
    );
    assert!(calls > 0 && got > 0);
}

#[test]
fn clients_that_never_finish_the_handshake_block_nobody_and_are_dropped() {
    let (_dog, dir, mut server) = with_server("no handshake", Duration::from_secs(120), &[]);
    let mut silent: Vec<_> = (0..20)
        .map(|_| std::os::unix::net::UnixStream::connect(dir.socket()).unwrap())
        .collect();
    let good = Client::connect_with(dir.socket(), sleeping()).unwrap();
    assert_eq!(good.call::<Ping>(&b"x".to_vec()).unwrap(), b"x");
    // After the handshake timeout (2 s by default) the server hangs up on them.
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut b = [0u8; 1];
        // Ok(0) is the hang-up; an error (our 30 s read timeout) is a failure.
        match s.read(&mut b) {
            Ok(0) => {}
            other => panic!("the server should close a silent connection, got {other:?}"),
        }
    }
    server_alive(&mut server);
    assert_eq!(good.call::<Ping>(&b"y".to_vec()).unwrap(), b"y");
}
