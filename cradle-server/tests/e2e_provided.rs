//! Provided methods (docs/architecture.md "Provided methods"): a real
//! `cradle-server`, providers and callers speaking the protocol by hand
//! ([`RawPeer`]) or through the client library. Every test arms a watchdog.

mod support;

use cradle_client::Client;
use ipc_core::ring::FrameMeta;
use ipc_rpc::builtin::Stats;
use ipc_rpc::provide::{BYTES_SCHEMA, Offer, Origin, Unregister};
use ipc_rpc::{ErrorCode, Method, Wire, wire};
use std::time::Duration;
use support::*;

ipc_rpc::method! {
    /// Doubles a number (served by a raw provider in these tests).
    pub Double = "test.double" version 1: u64 => u64;
}

const SEC: Duration = Duration::from_secs(1);

/// Serves `Double` on `p` for `n` invocations, checking each INVOKE.
fn serve_double(p: &mut RawPeer, n: usize) {
    for _ in 0..n {
        let (meta, payload) = p.recv_kind(wire::INVOKE, 20 * SEC).expect("an INVOKE");
        assert_eq!(meta.tag, Double::ID);
        assert_eq!(meta.flags, wire::ENVELOPE);
        let (env, body) = wire::Envelope::split(&payload).expect("envelope");
        assert!(env.deadline_ns > wire::monotonic_ns(), "a live deadline");
        assert_eq!(env.schema_hash, Double::SCHEMA_HASH);
        reply_doubled(p, &meta, body);
    }
}

/// Answers the invocation `meta` of `Double` whose body is `body`.
fn reply_doubled(p: &mut RawPeer, meta: &FrameMeta, body: &[u8]) {
    let x = u64::decode(body).expect("u64 body");
    let r = ipc_rpc::encode_to_vec(
        &(x * 2),
        &mut ipc_rpc::rkyv::ser::allocator::Arena::new(),
        1 << 16,
    )
    .unwrap();
    p.reply(meta, wire::REPLY, 0, &r);
}

fn double_offer(concurrency: u32, idempotent: bool) -> Offer {
    Offer {
        name: Double::NAME.into(),
        version: Double::VERSION,
        schema_hash: Double::SCHEMA_HASH,
        concurrency,
        idempotent,
        memoized: false,
    }
}

#[test]
fn a_library_caller_reaches_a_raw_provider() {
    let (_dog, dir, _server) = with_server("provided routing", Duration::from_secs(60), &[]);
    let mut provider = RawPeer::open(&dir.socket());
    provider.register(double_offer(4, false)).expect("register");
    let caller = Client::connect(dir.socket()).unwrap();
    let t = std::thread::spawn(move || {
        for i in 0..100u64 {
            assert_eq!(caller.call::<Double>(&i).expect("provided call"), 2 * i);
        }
    });
    serve_double(&mut provider, 100);
    t.join().unwrap();
    let m = listed(&dir.socket(), Double::NAME).expect("listed");
    assert_eq!(m.origin, Origin::Provided as u8);
    assert_eq!(m.served, 100);
    assert_eq!(m.providers.len(), 1);
    assert_eq!(m.providers[0].served, 100);
    assert_eq!(m.providers[0].in_flight, 0);
    assert_eq!(m.schema_hash, Double::SCHEMA_HASH);
}

#[test]
fn bytes_call_with_envelope_and_a_provider_error() {
    let (_dog, dir, _server) = with_server("provided bytes", Duration::from_secs(60), &[]);
    let mut provider = RawPeer::open(&dir.socket());
    provider
        .register(offer("test.bytes", 1, false))
        .expect("register");
    let id = ipc_rpc::method_id("test.bytes", 1);
    let mut caller = RawPeer::open(&dir.socket());
    let deadline = wire::deadline_after(10 * SEC);
    let req = caller.request_raw(
        id,
        wire::ENVELOPE,
        &enveloped(deadline, BYTES_SCHEMA, &[], b"abc"),
    );
    let (meta, payload) = provider.recv_kind(wire::INVOKE, 10 * SEC).expect("INVOKE");
    let (env, body) = wire::Envelope::split(&payload).unwrap();
    assert_eq!(env.deadline_ns, deadline, "the caller's deadline travels");
    assert_eq!(body, b"abc", "the body is copied verbatim");
    provider.reply(&meta, wire::REPLY, 0, b"ABC!");
    assert_eq!(caller.answer(req, 10 * SEC).unwrap(), (0, b"ABC!".to_vec()));

    // An error answer is forwarded as the caller's ERROR frame.
    let req = caller.request_raw(id, 0, b"x");
    let (meta, _) = provider.recv_kind(wire::INVOKE, 10 * SEC).expect("INVOKE");
    let err = ipc_rpc::RemoteError {
        code: ErrorCode::Handler.to_u32(),
        message: "no such picture".into(),
    };
    let bytes = ipc_rpc::encode_to_vec(
        &err,
        &mut ipc_rpc::rkyv::ser::allocator::Arena::new(),
        1 << 16,
    )
    .unwrap();
    provider.reply(&meta, wire::REPLY_ERROR, 0, &bytes);
    let e = caller.answer(req, 10 * SEC).unwrap_err();
    assert_eq!(e, err);
    let m = listed(&dir.socket(), "test.bytes").unwrap();
    assert_eq!((m.served, m.errors), (1, 1));
}

fn code(e: &ipc_rpc::RemoteError) -> ErrorCode {
    ErrorCode::from_u32(e.code)
}

/// The `cradle.stats` entry of session `id`.
/// A raw provider of `name` (version 1) on `dir`'s server, registered with
/// `concurrency` and `idempotent`, and the method's id.
fn raw_provider(dir: &TempDir, name: &str, concurrency: u32, idempotent: bool) -> (RawPeer, u64) {
    let mut p = RawPeer::open(&dir.socket());
    p.register(offer(name, concurrency, idempotent)).unwrap();
    (p, ipc_rpc::method_id(name, 1))
}

/// One call of `id` by `c`, which provider `p` answers with a frame of
/// `kind`, `flags` and `body`: what the caller gets.
fn relayed(
    c: &mut RawPeer,
    p: &mut RawPeer,
    id: u64,
    kind: u16,
    flags: u16,
    body: &[u8],
) -> Result<(u16, Vec<u8>), ipc_rpc::RemoteError> {
    let r = c.request_raw(id, 0, b"");
    let (inv, _) = p.recv_kind(wire::INVOKE, 10 * SEC).unwrap();
    p.reply(&inv, kind, flags, body);
    c.answer(r, 10 * SEC)
}

fn session_stats(socket: &std::path::Path, id: u64) -> Option<ipc_rpc::builtin::SessionStats> {
    let c = Client::connect(socket).unwrap();
    c.call::<Stats>(&())
        .unwrap()
        .per_session
        .into_iter()
        .find(|s| s.id == id)
}

#[test]
fn two_providers_share_the_calls_fewest_in_flight_first() {
    let (_dog, dir, _server) = with_server("provided balance", Duration::from_secs(60), &[]);
    let mut peers = [RawPeer::open(&dir.socket()), RawPeer::open(&dir.socket())];
    for p in &mut peers {
        p.register(offer("test.bal", 2, false)).unwrap();
    }
    let id = ipc_rpc::method_id("test.bal", 1);
    let mut caller = RawPeer::open(&dir.socket());
    let reqs: Vec<u64> = (0..6u8).map(|i| caller.request_raw(id, 0, &[i])).collect();
    // Four go out (two each), two wait in the server's queue.
    let mut held: Vec<(usize, FrameMeta, Vec<u8>)> = Vec::new();
    for (k, p) in peers.iter_mut().enumerate() {
        for _ in 0..2 {
            let (meta, payload) = p.recv_kind(wire::INVOKE, 10 * SEC).expect("two each");
            held.push((k, meta, payload));
        }
        assert!(
            p.recv_kind(wire::INVOKE, SEC / 5).is_none(),
            "provider {k} is at its concurrency"
        );
    }
    let m = listed(&dir.socket(), "test.bal").unwrap();
    assert_eq!(m.queued, 2);
    assert!(m.providers.iter().all(|p| p.in_flight == 2));
    // Each answer frees a slot, which a queued call takes.
    let mut answered = 0;
    while let Some((k, meta, payload)) = held.pop() {
        let (_, body) = wire::Envelope::split(&payload).unwrap();
        peers[k].reply(&meta, wire::REPLY, 0, body);
        answered += 1;
        if answered <= 2 {
            let (meta, payload) = peers[k]
                .recv_kind(wire::INVOKE, 10 * SEC)
                .expect("a queued call for the freed slot");
            held.insert(0, (k, meta, payload));
        }
    }
    for (i, r) in reqs.into_iter().enumerate() {
        assert_eq!(caller.answer(r, 10 * SEC).unwrap(), (0, vec![i as u8]));
    }
    let m = listed(&dir.socket(), "test.bal").unwrap();
    assert_eq!(m.served, 6);
    assert_eq!(m.queued, 0);
    assert_eq!(m.providers.iter().map(|p| p.served).sum::<u64>(), 6);
    assert!(
        m.providers
            .iter()
            .all(|p| p.served >= 2 && p.in_flight == 0)
    );
}

#[test]
fn registration_rules() {
    let (_dog, dir, _server) = with_server("provided registration", Duration::from_secs(60), &[]);
    let mut p = RawPeer::open(&dir.socket());
    let refused = |r: Result<(), ipc_rpc::RemoteError>| code(&r.unwrap_err());
    assert_eq!(
        refused(p.register(offer("cradle.mine", 1, false))),
        ErrorCode::Refused
    );
    assert_eq!(refused(p.register(offer("", 1, false))), ErrorCode::Refused);
    assert_eq!(
        refused(p.register(offer("bad\nname", 1, false))),
        ErrorCode::Refused
    );
    assert_eq!(
        refused(p.register(offer(&"x".repeat(300), 1, false))),
        ErrorCode::Refused
    );
    assert_eq!(
        refused(p.register(offer("test.zero", 0, false))),
        ErrorCode::Refused
    );
    p.register(offer("test.r", 1, false)).unwrap();
    assert_eq!(
        refused(p.register(offer("test.r", 1, false))),
        ErrorCode::Refused,
        "twice"
    );
    let mut q = RawPeer::open(&dir.socket());
    let other_schema = Offer {
        schema_hash: 42,
        ..offer("test.r", 1, false)
    };
    let e = q.register(other_schema).unwrap_err();
    assert_eq!(code(&e), ErrorCode::SchemaMismatch, "{}", e.message);
    assert_eq!(
        refused(q.register(offer("test.r", 1, true))),
        ErrorCode::SchemaMismatch,
        "idempotent flag differs"
    );
    // A caller with another schema hash is refused, naming both.
    let id = ipc_rpc::method_id("test.r", 1);
    let r = q.request_raw(id, wire::ENVELOPE, &enveloped(0, 7, &[], b""));
    let e = q.answer(r, 10 * SEC).unwrap_err();
    assert_eq!(code(&e), ErrorCode::SchemaMismatch);
    assert!(e.message.contains("0x0000000000000007"), "{}", e.message);
    // Unregister: the method is gone, calls get UnknownMethod.
    assert!(p.call::<Unregister>(&id).unwrap());
    assert!(!p.call::<Unregister>(&id).unwrap(), "not twice");
    assert!(listed(&dir.socket(), "test.r").is_none());
    let r = q.request_raw(id, 0, b"");
    assert_eq!(
        code(&q.answer(r, 10 * SEC).unwrap_err()),
        ErrorCode::UnknownMethod
    );
    // The builtin ones are listed as such.
    let ping = listed(&dir.socket(), "cradle.ping").unwrap();
    assert_eq!(ping.origin, Origin::Builtin as u8);
    assert!(listed(&dir.socket(), "cradle.provider.register").is_some());
}

#[test]
fn the_queue_bound_answers_busy_and_deadlines_end_queued_and_held_calls() {
    let (_dog, dir, _server) = with_server("provided busy", Duration::from_secs(120), &[]);
    let (mut p, id) = raw_provider(&dir, "test.stall", 1, false);
    // One held by the provider, 1024 queued (two callers: a session has at
    // most 1024 in flight), the rest Busy.
    let mut c1 = RawPeer::open(&dir.socket());
    let mut c2 = RawPeer::open(&dir.socket());
    let d = wire::deadline_after(Duration::from_secs(60));
    let body = enveloped(d, 0, &[], b"");
    let r1: Vec<u64> = (0..1000)
        .map(|_| c1.request_raw(id, wire::ENVELOPE, &body))
        .collect();
    assert!(eventually(10 * SEC, || listed(&dir.socket(), "test.stall")
        .is_some_and(|m| m.queued == 999)));
    let r2: Vec<u64> = (0..40)
        .map(|_| c2.request_raw(id, wire::ENVELOPE, &body))
        .collect();
    let (held, _) = p.recv_kind(wire::INVOKE, 10 * SEC).expect("one delivered");
    let mut busy = 0;
    for r in r2.iter().rev().take(15) {
        let e = c2.answer(*r, 10 * SEC).unwrap_err();
        assert_eq!(code(&e), ErrorCode::Busy, "{}", e.message);
        busy += 1;
    }
    assert_eq!(busy, 15);
    let m = listed(&dir.socket(), "test.stall").unwrap();
    assert_eq!(m.queued, 1024);
    assert_eq!(m.providers[0].in_flight, 1);
    // The callers leave: their queued calls go, the held one is
    // cancelled (CANCEL to the provider; its late reply is discarded).
    drop(c1);
    drop(c2);
    let _ = r1;
    let (cancel, _) = p
        .recv_kind(wire::CANCEL, 10 * SEC)
        .expect("CANCEL for the held call");
    assert_eq!(cancel.request_id, held.request_id);
    p.reply(&held, wire::REPLY, 0, b"late");
    assert!(eventually(10 * SEC, || {
        listed(&dir.socket(), "test.stall")
            .is_some_and(|m| m.queued == 0 && m.providers[0].in_flight == 0)
    }));
    std::thread::sleep(SEC / 10);
    p.pump();
    assert!(
        p.stash
            .iter()
            .all(|(m, _)| m.kind == wire::CANCEL || m.kind == wire::INVOKE),
        "only invocations of the departed callers (and their cancels)"
    );
    p.stash.clear();

    // A short deadline expires in the queue.
    let mut c3 = RawPeer::open(&dir.socket());
    let blocker = c3.request_raw(id, 0, b"");
    let (inv, _) = p.recv_kind(wire::INVOKE, 10 * SEC).expect("delivered");
    let short = c3.request_raw(
        id,
        wire::ENVELOPE,
        &enveloped(wire::deadline_after(SEC / 10), 0, &[], b""),
    );
    let e = c3.answer(short, 5 * SEC).unwrap_err();
    assert_eq!(code(&e), ErrorCode::DeadlineExceeded, "{}", e.message);
    p.reply(&inv, wire::REPLY, 0, b"ok");
    assert_eq!(c3.answer(blocker, 10 * SEC).unwrap(), (0, b"ok".to_vec()));
    let expired = c3.request_raw(id, 0, b"");
    let (inv, _) = p
        .recv_kind(wire::INVOKE, 10 * SEC)
        .expect("the slot is free again");
    p.reply(&inv, wire::REPLY, 0, b"ok");
    assert_eq!(c3.answer(expired, 10 * SEC).unwrap(), (0, b"ok".to_vec()));
    // In flight past its deadline: DeadlineExceeded to the caller, CANCEL
    // to the provider.
    let late = c3.request_raw(
        id,
        wire::ENVELOPE,
        &enveloped(wire::deadline_after(SEC / 5), 0, &[], b""),
    );
    let (inv, _) = p.recv_kind(wire::INVOKE, 10 * SEC).expect("delivered");
    let e = c3.answer(late, 5 * SEC).unwrap_err();
    assert_eq!(code(&e), ErrorCode::DeadlineExceeded);
    let (cancel, _) = p.recv_kind(wire::CANCEL, 10 * SEC).expect("CANCEL");
    assert_eq!(cancel.request_id, inv.request_id);
    p.reply(&inv, wire::REPLY, 0, b"too late");
    // An expired request is never delivered.
    let dead = c3.request_raw(id, wire::ENVELOPE, &enveloped(1, 0, &[], b""));
    assert_eq!(
        code(&c3.answer(dead, 5 * SEC).unwrap_err()),
        ErrorCode::DeadlineExceeded
    );
    assert!(p.recv_kind(wire::INVOKE, SEC / 5).is_none());
    assert!(eventually(10 * SEC, || {
        listed(&dir.socket(), "test.stall")
            .is_some_and(|m| m.queued == 0 && m.providers[0].in_flight == 0)
    }));
}

#[test]
fn a_provider_that_goes_away_fails_or_resends_its_calls() {
    let (_dog, dir, _server) = with_server("provided gone", Duration::from_secs(60), &[]);
    // Not idempotent: ProviderGone.
    let (mut p, id) = raw_provider(&dir, "test.once", 4, false);
    let mut c = RawPeer::open(&dir.socket());
    let reqs: Vec<u64> = (0..4).map(|_| c.request_raw(id, 0, b"")).collect();
    for _ in 0..4 {
        p.recv_kind(wire::INVOKE, 10 * SEC).expect("delivered");
    }
    let t = std::time::Instant::now();
    drop(p);
    for r in reqs {
        let e = c.answer(r, 10 * SEC).unwrap_err();
        assert_eq!(code(&e), ErrorCode::ProviderGone, "{}", e.message);
    }
    assert!(t.elapsed() < 10 * SEC);
    eprintln!("ProviderGone after {:?}", t.elapsed());
    assert!(
        listed(&dir.socket(), "test.once").is_none(),
        "no provider left"
    );

    // Idempotent with another provider: sent again, answered right.
    let mut a = RawPeer::open(&dir.socket());
    let mut b = RawPeer::open(&dir.socket());
    a.register(offer("test.again", 1, true)).unwrap();
    b.register(offer("test.again", 1, true)).unwrap();
    let id = ipc_rpc::method_id("test.again", 1);
    let r1 = c.request_raw(id, 0, b"one");
    let r2 = c.request_raw(id, 0, b"two");
    let (ia, pa) = a.recv_kind(wire::INVOKE, 10 * SEC).unwrap();
    let (ib, pb) = b.recv_kind(wire::INVOKE, 10 * SEC).unwrap();
    let _ = (ia, ib);
    drop(a);
    // b gets a's call after answering its own.
    let (_, body_b) = wire::Envelope::split(&pb).unwrap();
    b.reply(&ib, wire::REPLY, 0, body_b);
    let (again, pa2) = b.recv_kind(wire::INVOKE, 10 * SEC).expect("resent to b");
    assert_eq!(pa2, pa, "the same call, the same bytes");
    let (_, body) = wire::Envelope::split(&pa2).unwrap();
    b.reply(&again, wire::REPLY, 0, body);
    assert_eq!(c.answer(r1, 10 * SEC).unwrap().1, b"one");
    assert_eq!(c.answer(r2, 10 * SEC).unwrap().1, b"two");
    // Unregistering while holding a call: the call fails, a CANCEL comes.
    let r = c.request_raw(id, 0, b"x");
    let (inv, _) = b.recv_kind(wire::INVOKE, 10 * SEC).unwrap();
    assert!(b.call::<Unregister>(&id).unwrap());
    assert_eq!(
        code(&c.answer(r, 10 * SEC).unwrap_err()),
        ErrorCode::ProviderGone
    );
    let (cancel, _) = b.recv_kind(wire::CANCEL, 10 * SEC).expect("CANCEL");
    assert_eq!(cancel.request_id, inv.request_id);
    let st = Client::connect(dir.socket())
        .unwrap()
        .call::<Stats>(&())
        .unwrap()
        .provided;
    assert_eq!(
        (st.provider_gone, st.resent, st.replied),
        (5, 1, 2),
        "{st:?}"
    );
    assert_eq!(
        (st.queued, st.in_flight, st.methods, st.providers),
        (0, 0, 0, 0)
    );
}

#[test]
fn a_hostile_provider_hurts_only_its_own_calls() {
    let (_dog, dir, _server) = with_server("provided hostile", Duration::from_secs(60), &[]);
    let (mut p, id) = raw_provider(&dir, "test.evil", 8, false);
    let mut c = RawPeer::open(&dir.socket());
    // Replies to invocations it was never sent: discarded, nothing else.
    for i in 0..100u64 {
        let meta = FrameMeta {
            request_id: 1_000_000 + i,
            tag: id,
            kind: wire::REPLY,
            flags: 0,
        };
        p.send_encoded(meta, b"forged");
    }
    // A garbage error answer: the caller gets Malformed.
    let got = relayed(
        &mut c,
        &mut p,
        id,
        wire::REPLY_ERROR,
        0,
        b"\xff\xff garbage",
    );
    assert_eq!(code(&got.unwrap_err()), ErrorCode::Malformed);
    // A garbage body is relayed as is (the caller's library decodes it).
    let got = relayed(&mut c, &mut p, id, wire::REPLY, 0, &[0xff; 7]);
    assert_eq!(got.unwrap(), (0, vec![0xff; 7]));
    // Unknown flags, a bad envelope: Malformed.
    let got = relayed(&mut c, &mut p, id, wire::REPLY, 0x80, b"");
    assert_eq!(code(&got.unwrap_err()), ErrorCode::Malformed);
    let got = relayed(&mut c, &mut p, id, wire::REPLY, wire::ENVELOPE, &[0xff; 40]);
    assert_eq!(code(&got.unwrap_err()), ErrorCode::Malformed);
    // A forged result handle: BadHandle, never a lease.
    let forged = ipc_rpc::blob::BlobHandle {
        epoch: 1,
        id: 77,
        segment: 3,
        offset: 0,
        len: 4096,
    };
    let body = enveloped(0, 0, &[forged], b"r");
    let got = relayed(&mut c, &mut p, id, wire::REPLY, wire::ENVELOPE, &body);
    assert_eq!(code(&got.unwrap_err()), ErrorCode::BadHandle);
    // A reply to the wrong method id: discarded; the call stays held.
    let r = c.request_raw(id, 0, b"");
    let (inv, _) = p.recv_kind(wire::INVOKE, 10 * SEC).unwrap();
    let wrong = FrameMeta { tag: 12345, ..inv };
    p.reply(&wrong, wire::REPLY, 0, b"wrong");
    p.reply(&inv, wire::REPLY, 0, b"right");
    assert_eq!(c.answer(r, 10 * SEC).unwrap(), (0, b"right".to_vec()));
    // The provider is still served, and so is everyone else.
    let ok = Client::connect(dir.socket()).unwrap();
    ok.call::<ipc_rpc::builtin::Ping>(&vec![1, 2, 3]).unwrap();
    let stats = ok.call::<Stats>(&()).unwrap();
    assert_eq!(stats.sessions_killed, 0);
    assert_eq!(
        session_stats(&dir.socket(), c.raw.welcome.session_id).map(|s| s.leases),
        Some(0),
        "no lease from the forged handle"
    );
    // A frame of a kind no client sends: that provider is closed for it;
    // its calls fail, others are untouched.
    let r = c.request_raw(id, 0, b"");
    p.recv_kind(wire::INVOKE, 10 * SEC).unwrap();
    let bad = FrameMeta {
        request_id: 1,
        tag: id,
        kind: wire::RESPONSE,
        flags: 0,
    };
    p.send_encoded(bad, b"");
    assert_eq!(
        code(&c.answer(r, 10 * SEC).unwrap_err()),
        ErrorCode::ProviderGone
    );
    let stats = ok.call::<Stats>(&()).unwrap();
    assert_eq!(stats.sessions_killed, 1);
    assert!(stats.provided.discarded >= 101, "{:?}", stats.provided);
}

#[test]
fn blobs_pass_by_lease_both_ways() {
    let (_dog, dir, _server) = with_server("provided blobs", Duration::from_secs(60), &[]);
    let (mut p, id) = raw_provider(&dir, "test.blob", 1, false);
    let lib = Client::connect(dir.socket()).unwrap();
    let mut w = lib.create(4096).unwrap();
    w.write_at(0, b"argument");
    let arg = w.seal().unwrap();
    let mut w = lib.create(100).unwrap();
    w.write_at(0, b"result");
    let res = w.seal().unwrap();
    let mut c = RawPeer::open(&dir.socket());
    let (ps, cs) = (p.raw.welcome.session_id, c.raw.welcome.session_id);
    let r = c.request_raw(id, wire::ENVELOPE, &enveloped(0, 0, &[*arg.handle()], b"q"));
    let (inv, payload) = p.recv_kind(wire::INVOKE, 10 * SEC).unwrap();
    let (env, body) = wire::Envelope::split(&payload).unwrap();
    assert_eq!(env.blobs, vec![*arg.handle()]);
    assert_eq!(body, b"q");
    assert_eq!(
        session_stats(&dir.socket(), ps).unwrap().leases,
        1,
        "the provider holds the argument"
    );
    p.reply(
        &inv,
        wire::REPLY,
        wire::ENVELOPE,
        &enveloped(0, 0, &[*res.handle()], b"a"),
    );
    let (flags, payload) = c.answer(r, 10 * SEC).unwrap();
    assert_eq!(flags, wire::ENVELOPE);
    let (env, body) = wire::Envelope::split(&payload).unwrap();
    assert_eq!(env.blobs, vec![*res.handle()]);
    assert_eq!((env.deadline_ns, env.schema_hash), (0, 0));
    assert_eq!(body, b"a");
    assert_eq!(
        session_stats(&dir.socket(), cs).unwrap().leases,
        1,
        "the caller holds the result"
    );
    // A stale argument handle: BadHandle, nothing delivered.
    let mut stale = *arg.handle();
    stale.id += 1000;
    let r = c.request_raw(id, wire::ENVELOPE, &enveloped(0, 0, &[stale], b""));
    assert_eq!(
        code(&c.answer(r, 10 * SEC).unwrap_err()),
        ErrorCode::BadHandle
    );
    assert!(p.recv_kind(wire::INVOKE, SEC / 5).is_none());
    // Leases go with their sessions.
    drop(c);
    drop(p);
    drop(arg);
    drop(res);
    lib.flush().unwrap();
    assert!(eventually(10 * SEC, || lib
        .call::<Stats>(&())
        .unwrap()
        .blobs
        .leases
        == 0));
}

#[test]
fn a_caller_that_leaves_mid_call_leaves_nothing_behind() {
    let (_dog, dir, _server) = with_server("provided caller gone", Duration::from_secs(60), &[]);
    let (mut p, id) = raw_provider(&dir, "test.slow", 2, false);
    let mut c = RawPeer::open(&dir.socket());
    for _ in 0..5 {
        c.request_raw(id, 0, b"");
    }
    let (a, _) = p.recv_kind(wire::INVOKE, 10 * SEC).unwrap();
    let (b, _) = p.recv_kind(wire::INVOKE, 10 * SEC).unwrap();
    assert!(eventually(10 * SEC, || listed(&dir.socket(), "test.slow")
        .unwrap()
        .queued
        == 3));
    drop(c);
    let mut cancelled = vec![
        p.recv_kind(wire::CANCEL, 10 * SEC).unwrap().0.request_id,
        p.recv_kind(wire::CANCEL, 10 * SEC).unwrap().0.request_id,
    ];
    cancelled.sort();
    assert_eq!(
        cancelled,
        vec![
            a.request_id.min(b.request_id),
            a.request_id.max(b.request_id)
        ]
    );
    assert!(
        p.recv_kind(wire::INVOKE, SEC / 5).is_none(),
        "queued calls dropped"
    );
    p.reply(&a, wire::REPLY, 0, b"late");
    let m = listed(&dir.socket(), "test.slow").unwrap();
    assert_eq!((m.queued, m.providers[0].in_flight), (0, 0));
    assert_eq!(open_sessions(&dir.socket()), 1, "the provider only");
}

#[test]
fn calls_cross_workers() {
    // Three workers: sessions are dealt round robin, so callers and
    // providers sit on different workers and every hop is a message.
    let (_dog, dir, _server) = with_server(
        "provided across workers",
        Duration::from_secs(60),
        &["--workers", "3"],
    );
    let mut a = RawPeer::open(&dir.socket());
    let mut b = RawPeer::open(&dir.socket());
    a.register(double_offer(8, true)).unwrap();
    b.register(double_offer(8, true)).unwrap();
    let callers: Vec<_> = (0..4)
        .map(|k| {
            let socket = dir.socket();
            std::thread::spawn(move || {
                let c = Client::connect(socket).unwrap();
                for i in 0..200u64 {
                    let x = k * 1000 + i;
                    assert_eq!(c.call::<Double>(&x).unwrap(), 2 * x);
                }
            })
        })
        .collect();
    let stop = std::sync::Arc::new(ipc_core::sync::AtomicBool::new(false));
    let serve = |mut p: RawPeer, stop: std::sync::Arc<ipc_core::sync::AtomicBool>| {
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(ipc_core::sync::Ordering::Relaxed) {
                if let Some((meta, payload)) = p.recv_kind(wire::INVOKE, SEC / 20) {
                    let (_, body) = wire::Envelope::split(&payload).unwrap();
                    reply_doubled(&mut p, &meta, body);
                    n += 1;
                }
            }
            (p, n)
        })
    };
    let ta = serve(a, stop.clone());
    let tb = serve(b, stop.clone());
    for c in callers {
        c.join().unwrap();
    }
    stop.store(true, ipc_core::sync::Ordering::Relaxed);
    let (mut a, na) = ta.join().unwrap();
    let (b, nb) = tb.join().unwrap();
    assert_eq!(na + nb, 800);
    assert!(na > 0 && nb > 0, "both providers used: {na} + {nb}");
    let m = listed(&dir.socket(), Double::NAME).unwrap();
    assert_eq!(m.served, 800);
    // A deadline and a provider's death, across workers too.
    let mut c = RawPeer::open(&dir.socket());
    drop(b);
    assert!(eventually(10 * SEC, || listed(&dir.socket(), Double::NAME)
        .is_some_and(|m| m.providers.len() == 1)));
    let r = c.request_raw(
        Double::ID,
        wire::ENVELOPE,
        &enveloped(wire::deadline_after(SEC / 5), 0, &[], &[0u8; 8]),
    );
    let (inv, _) = a.recv_kind(wire::INVOKE, 10 * SEC).unwrap();
    assert_eq!(
        code(&c.answer(r, 10 * SEC).unwrap_err()),
        ErrorCode::DeadlineExceeded
    );
    let (cancel, _) = a.recv_kind(wire::CANCEL, 10 * SEC).unwrap();
    assert_eq!(cancel.request_id, inv.request_id);
    let r = c.request_raw(Double::ID, 0, &[0u8; 8]);
    a.recv_kind(wire::INVOKE, 10 * SEC).unwrap();
    drop(a);
    assert_eq!(
        code(&c.answer(r, 10 * SEC).unwrap_err()),
        ErrorCode::ProviderGone
    );
}

#[test]
#[ignore = "entry point of the child processes the other tests spawn"]
fn child_entry() {
    let Some((role, _args)) = child_role() else {
        return;
    };
    let socket = std::env::var("CRADLE_SOCKET").expect("CRADLE_SOCKET");
    match role.as_str() {
        // Registers test.kill and takes invocations without ever answering,
        // until it is killed.
        "holding-provider" => {
            let mut p = RawPeer::open(std::path::Path::new(&socket));
            p.register(offer("test.kill", 1000, false))
                .expect("register");
            println!("RESULT registered");
            loop {
                p.pump();
                p.stash.clear();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn kill_9_of_a_provider_holding_100_calls() {
    let (_dog, dir, _server) = with_server("provided kill -9", Duration::from_secs(120), &[]);
    let lib = Client::connect(dir.socket()).unwrap();
    let baseline = lib.call::<Stats>(&()).unwrap();
    let mut child = spawn_child("holding-provider", &dir.socket(), &[]);
    assert!(eventually(30 * SEC, || listed(&dir.socket(), "test.kill").is_some()));
    let id = ipc_rpc::method_id("test.kill", 1);
    // Every call passes a blob: the provider holds 100 leases when it dies.
    let mut w = lib.create(64).unwrap();
    w.write_at(0, b"argument");
    let arg = w.seal().unwrap();
    let mut c = RawPeer::open(&dir.socket());
    let body = enveloped(0, 0, &[*arg.handle()], b"");
    let reqs: Vec<u64> = (0..100)
        .map(|_| c.request_raw(id, wire::ENVELOPE, &body))
        .collect();
    assert!(eventually(30 * SEC, || listed(&dir.socket(), "test.kill")
        .is_some_and(|m| m.providers[0].in_flight == 100)));
    assert_eq!(lib.call::<Stats>(&()).unwrap().blobs.leases, 1 + 100);
    let t = std::time::Instant::now();
    child.kill().unwrap();
    for r in reqs {
        let e = c.answer(r, 30 * SEC).unwrap_err();
        assert_eq!(code(&e), ErrorCode::ProviderGone, "{}", e.message);
    }
    eprintln!(
        "100 calls answered ProviderGone {:?} after kill -9",
        t.elapsed()
    );
    let _ = child.wait();
    // The provider's leases went with it; the method is gone.
    assert!(listed(&dir.socket(), "test.kill").is_none());
    let st = lib.call::<Stats>(&()).unwrap();
    assert_eq!(st.blobs.leases, 1, "only the author's own lease");
    assert_eq!(st.provided.provider_gone, 100);
    assert_eq!((st.provided.queued, st.provided.in_flight), (0, 0));
    drop(arg);
    drop(c);
    lib.flush().unwrap();
    assert!(eventually(10 * SEC, || {
        let now = lib.call::<Stats>(&()).unwrap();
        now.blobs.leases == baseline.blobs.leases && now.sessions == baseline.sessions
    }));
}
