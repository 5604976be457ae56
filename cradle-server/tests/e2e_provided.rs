//! Provided methods (docs/architecture.md "Provided methods"): a real
//! `cradle-server`, providers and callers speaking the protocol by hand
//! ([`RawPeer`]) or through the client library. Every test arms a watchdog.

mod support;

use cradle_client::Client;
use ipc_core::ring::FrameMeta;
use ipc_rpc::provide::{BYTES_SCHEMA, ListMethods, Offer, Origin, Register, Unregister};
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
        let x = u64::decode(body).expect("u64 body");
        let r = ipc_rpc::encode_to_vec(
            &(x * 2),
            &mut ipc_rpc::rkyv::ser::allocator::Arena::new(),
            1 << 16,
        )
        .unwrap();
        p.reply(&meta, wire::REPLY, 0, &r);
    }
}

fn double_offer(concurrency: u32, idempotent: bool) -> Offer {
    Offer {
        name: Double::NAME.into(),
        version: Double::VERSION,
        schema_hash: Double::SCHEMA_HASH,
        concurrency,
        idempotent,
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
