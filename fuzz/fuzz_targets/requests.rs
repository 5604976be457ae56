//! What a worker reads from a session: request frames in the request ring
//! (written by a hostile client: any header, any payload, any byte of the
//! ring at any time) and their rkyv payloads, validated as each built-in and
//! blob method's request type; and the response ring, whose `head` the client
//! writes.
//!
//! The decoding path is the worker's (`serve` in `cradle-server/src/worker.rs`):
//! `Inbox::try_recv` (the consumer's commit-word, stamp, length, padding and
//! payload-length checks, then a private aligned copy), a frame of another
//! kind than REQUEST ends the session, a request with an undefined flag is
//! answered with a Malformed error (tag: its method id) and the session goes
//! on, the method id picks the request type (an unknown one is answered
//! with an UnknownMethod error, tag 0), `Wire::decode` validates it
//! (`Wire::access` for `cradle.ping`, whose archive is echoed back
//! unchanged; a payload that does not validate is answered Malformed).
//! Answers go out through an `Outbox` on the response ring, as the worker's
//! replies do.
//!
//! Checked beyond "no panic and no sanitizer report": a frame handed out lies
//! inside the ring and its payload inside the frame; a poisoned ring end
//! keeps failing with the same error; a payload that validates decodes to a
//! value that encodes and decodes back to itself; `access` and `decode` agree;
//! every answer the client reads carries the request id and tag the worker's
//! rules give, and an error's payload decodes to the expected code.

#![no_main]

use arbitrary::Arbitrary;
use ipc_core::ring::{
    CONTROL_LEN, Consumer, FrameMeta, Producer, RingError, RingRegion, heap_channel,
    max_payload_len,
};
use ipc_rpc::blob::{
    Acquire, AuthorPool, CacheGet, CacheList, CacheLoad, CachePut, CachePutDurable, CacheRemove,
    CreateLarge, MapSegment, Release, SealLarge, SealSmall,
};
use ipc_rpc::builtin::{Ping, Stats};
use ipc_rpc::example::Invert;
use ipc_rpc::rkyv::ser::allocator::Arena;
use ipc_rpc::rkyv::util::AlignedVec;
use ipc_rpc::{
    ErrorCode, Inbox, Method, Outbox, RemoteError, SendError, Wire, encode_to_vec, wire,
};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::fmt::Debug;

/// The method ids the server registers, in a fixed order (a fuzz byte picks one).
const METHODS: [u64; 16] = [
    Ping::ID,
    Stats::ID,
    AuthorPool::ID,
    SealSmall::ID,
    CreateLarge::ID,
    SealLarge::ID,
    Acquire::ID,
    MapSegment::ID,
    Release::ID,
    CachePut::ID,
    CachePutDurable::ID,
    CacheGet::ID,
    CacheLoad::ID,
    CacheRemove::ID,
    Invert::ID,
    CacheList::ID,
];

#[derive(Arbitrary, Debug)]
enum Tag {
    /// One of the server's methods.
    Known(u8),
    /// Any id.
    Raw(u64),
}

impl Tag {
    fn id(&self) -> u64 {
        match *self {
            Tag::Known(i) => METHODS[i as usize % METHODS.len()],
            Tag::Raw(id) => id,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op<'a> {
    /// The client publishes a frame with a well-formed commit word.
    Send {
        request_id: u64,
        tag: Tag,
        /// 1 (REQUEST) most of the time: `kind % 8`.
        kind: u8,
        flags: u16,
        payload: &'a [u8],
    },
    /// The client publishes the encoding of a valid request of a known
    /// method, so that validation gets past the first bytes.
    SendValid {
        request_id: u64,
        which: u8,
        seed: u64,
        key_len: u16,
    },
    /// The client writes one byte anywhere in the request ring's frame area.
    Poke { offset: u32, value: u8 },
    /// The client writes a 64-bit word (a commit word, a header field).
    PokeWord { offset: u32, value: u64 },
    /// The client writes the response ring's `head`.
    SetResponseHead(u64),
    /// The worker serves the session (one round of up to 64 frames).
    Serve,
    /// The client reads and releases its responses.
    ClientDrain,
}

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    /// One payload straight into a method's request validation.
    Decode { which: u8, payload: &'a [u8] },
    /// A session: a request ring and a response ring of `1 << (7 + cap % 6)`
    /// bytes, and a sequence of client and worker steps.
    Session { cap: u8, ops: Vec<Op<'a>> },
}

/// Decodes `bytes` as `T` the way the server does, and checks what a
/// successful decode must satisfy.
fn check<T: Wire + PartialEq + Debug>(bytes: &[u8]) -> bool {
    let accessed = T::access(bytes).is_ok();
    match T::decode(bytes) {
        Ok(v) => {
            assert!(accessed, "decode succeeded where access failed");
            let mut arena = Arena::new();
            let again = encode_to_vec(&v, &mut arena, 1 << 20).expect("re-encode");
            let w = T::decode(&again).expect("a re-encoded value validates");
            assert_eq!(v, w, "round trip changed the value");
            true
        }
        Err(_) => {
            assert!(!accessed, "access succeeded where decode failed");
            false
        }
    }
}

/// Validates `bytes` as the request type of method `id`; `None` for an id
/// the server does not know.
fn validate(id: u64, bytes: &[u8]) -> Option<bool> {
    Some(match id {
        Ping::ID => check::<<Ping as Method>::Request>(bytes),
        Stats::ID => check::<<Stats as Method>::Request>(bytes),
        AuthorPool::ID => check::<<AuthorPool as Method>::Request>(bytes),
        SealSmall::ID => check::<<SealSmall as Method>::Request>(bytes),
        CreateLarge::ID => check::<<CreateLarge as Method>::Request>(bytes),
        SealLarge::ID => check::<<SealLarge as Method>::Request>(bytes),
        Acquire::ID => check::<<Acquire as Method>::Request>(bytes),
        MapSegment::ID => check::<<MapSegment as Method>::Request>(bytes),
        Release::ID => check::<<Release as Method>::Request>(bytes),
        CachePut::ID => check::<<CachePut as Method>::Request>(bytes),
        CachePutDurable::ID => check::<<CachePutDurable as Method>::Request>(bytes),
        CacheGet::ID => check::<<CacheGet as Method>::Request>(bytes),
        CacheLoad::ID => check::<<CacheLoad as Method>::Request>(bytes),
        CacheRemove::ID => check::<<CacheRemove as Method>::Request>(bytes),
        CacheList::ID => check::<<CacheList as Method>::Request>(bytes),
        Invert::ID => check::<<Invert as Method>::Request>(bytes),
        _ => return None,
    })
}

/// A valid request of method `METHODS[which]`, built from `seed`.
fn valid_request(which: u8, seed: u64, key_len: u16) -> (u64, AlignedVec<16>) {
    use ipc_rpc::blob::{BlobHandle, ListRequest, PutRequest, ReleaseBatch};
    let mut arena = Arena::new();
    let max = 1 << 20;
    let handle = BlobHandle {
        epoch: seed,
        id: seed.rotate_left(7),
        segment: seed >> 3,
        offset: seed & 0xffff,
        len: seed.rotate_right(11),
    };
    let key: String = (0..key_len % 1100)
        .map(|i| char::from(b'a' + ((seed % 26 + u64::from(i)) % 26) as u8))
        .collect();
    let id = METHODS[which as usize % METHODS.len()];
    let bytes = match id {
        Ping::ID => encode_to_vec(&key.clone().into_bytes(), &mut arena, max),
        Stats::ID | AuthorPool::ID => encode_to_vec(&(), &mut arena, max),
        SealSmall::ID => encode_to_vec(&(seed, seed >> 1), &mut arena, max),
        CreateLarge::ID | SealLarge::ID | MapSegment::ID => encode_to_vec(&seed, &mut arena, max),
        Acquire::ID => encode_to_vec(&(handle, seed & 1 == 1), &mut arena, max),
        Release::ID => {
            let n = (seed % 17) as usize;
            let batch = ReleaseBatch {
                leases: (0..n as u64).map(|i| seed ^ i).collect(),
                aborted: (0..(n / 3) as u64).map(|i| seed.wrapping_add(i)).collect(),
            };
            encode_to_vec(&batch, &mut arena, max)
        }
        CachePut::ID | CachePutDurable::ID => {
            let put = PutRequest {
                key,
                handle,
                if_absent: seed & 2 == 2,
            };
            encode_to_vec(&put, &mut arena, max)
        }
        CacheGet::ID | CacheLoad::ID | CacheRemove::ID => encode_to_vec(&key, &mut arena, max),
        CacheList::ID => {
            let split = (seed as usize) % (key.len() + 1);
            let list = ListRequest {
                prefix: key[..split].to_owned(),
                after: key.clone(),
                limit: (seed >> 8) as u32,
            };
            encode_to_vec(&list, &mut arena, max)
        }
        _ => encode_to_vec(&handle, &mut arena, max),
    };
    (id, bytes.expect("a valid request encodes"))
}

/// One session: the server's ends and the client's ends of both rings.
struct Session {
    /// Server: request consumer (the worker's inbox).
    inbox: Inbox<RingRegion>,
    /// Server: response producer.
    outbox: Outbox<RingRegion>,
    /// Client: request producer.
    client_tx: Producer<RingRegion>,
    /// Client: response consumer.
    client_rx: Consumer<RingRegion>,
    cap: usize,
    /// The worker closed the session (a protocol violation).
    closed: bool,
    /// The error the request ring was poisoned with.
    poisoned: Option<RingError>,
    /// The answers published and not read yet, in order: header, and the
    /// error code for an ERROR frame.
    expected: VecDeque<(FrameMeta, Option<ErrorCode>)>,
    /// The client wrote the response ring's `head`: the server may have
    /// overwritten answers it had not read, so they are no longer checked.
    head_forged: bool,
}

impl Session {
    fn new(cap: usize) -> Self {
        let (client_tx, rx) = heap_channel(cap).expect("request ring");
        let (tx, client_rx) = heap_channel(cap).expect("response ring");
        Session {
            inbox: Inbox::new(rx),
            outbox: Outbox::new(tx),
            client_tx,
            client_rx,
            cap,
            closed: false,
            poisoned: None,
            expected: VecDeque::new(),
            head_forged: false,
        }
    }

    /// Writes `bytes` at `offset` of the request ring's frame area, as a
    /// client may at any time.
    fn poke(&mut self, offset: u32, bytes: &[u8]) {
        let offset = (offset as usize % self.cap) & !(bytes.len() - 1);
        let base = self.client_tx.memory().base().as_ptr();
        // SAFETY: `offset + bytes.len() <= cap` (offset is below `cap`, aligned
        // down to the power-of-two length, and `cap` is a multiple of it), so
        // the write lies inside the frame area, which starts `CONTROL_LEN`
        // bytes into the region the producer keeps alive. This thread is the
        // only one touching the ring, and no reference to those bytes exists
        // (the ring ends use raw pointers and atomics).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                base.add(CONTROL_LEN + offset),
                bytes.len(),
            )
        };
    }

    /// Writes the response ring's `head` word, as a client may at any time.
    fn set_response_head(&mut self, head: u64) {
        self.head_forged = true;
        let base = self.client_rx.memory().base().as_ptr();
        // SAFETY: `head` is the 8-byte word at offset 128 of the region the
        // client's consumer keeps alive, 8-aligned (the region is 128-aligned);
        // only this thread touches the ring. A plain write stands for a
        // hostile process's store; the producer reads the word atomically.
        unsafe { std::ptr::write_volatile(base.add(128).cast::<u64>(), head) };
    }

    fn send(&mut self, meta: FrameMeta, payload: &[u8]) {
        let max = max_payload_len(self.cap);
        if payload.len() > max {
            return;
        }
        let w = match self.client_tx.reserve(payload.len()) {
            Ok(w) => w,
            Err(_) => return,
        };
        let mut w = w;
        w.write_at(0, payload).expect("window holds the payload");
        w.commit(payload.len(), meta).expect("commit");
    }

    /// One worker round (`serve`): up to 64 frames, then release.
    fn serve(&mut self) {
        if self.closed {
            return;
        }
        for _ in 0..64 {
            let pos = self.inbox.consumer().position();
            let msg = match self.inbox.try_recv() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    if let Some(p) = &self.poisoned {
                        assert_eq!(p, &e, "a poisoned ring keeps its error");
                    }
                    self.poisoned = Some(e);
                    self.closed = true;
                    break;
                }
            };
            assert!(msg.bytes.len() <= max_payload_len(self.cap));
            let meta = msg.meta;
            if meta.kind != wire::REQUEST {
                self.closed = true;
                break;
            }
            let bytes = msg.bytes.to_vec();
            let after = self.inbox.consumer().position();
            assert!(after > pos && after - pos <= 2 * self.cap as u64);
            let mut copy = AlignedVec::<16>::new();
            copy.extend_from_slice(&bytes);
            // The worker's dispatch: undefined flags are refused before the
            // method is looked up (nothing runs, the session stays; the memo
            // flags are defined and ignored by these methods); then an
            // unknown id, then the request's validation.
            let verdict = if meta.flags & !wire::REQUEST_FLAGS != 0 {
                Err(ErrorCode::Malformed)
            } else {
                match validate(meta.tag, &copy) {
                    None => Err(ErrorCode::UnknownMethod),
                    Some(false) => Err(ErrorCode::Malformed),
                    Some(true) => Ok(()),
                }
            };
            let answer = match verdict {
                Ok(()) => FrameMeta {
                    request_id: meta.request_id,
                    tag: meta.tag,
                    kind: wire::RESPONSE,
                    flags: wire::NO_FLAGS,
                },
                // As `reply::error_meta`: tag 0 only for an unknown method.
                Err(code) => FrameMeta {
                    request_id: meta.request_id,
                    tag: if code == ErrorCode::UnknownMethod {
                        0
                    } else {
                        meta.tag
                    },
                    kind: wire::ERROR,
                    flags: wire::NO_FLAGS,
                },
            };
            let sent = match verdict {
                Ok(()) if meta.tag == Ping::ID => self.outbox.try_send_encoded(answer, &copy),
                Ok(()) => self.outbox.try_send(answer, &true),
                Err(code) => {
                    let err = RemoteError {
                        code: code.to_u32(),
                        message: format!(
                            "request {:#x} (method {:#018x}, flags {:#06x}) refused",
                            meta.request_id, meta.tag, meta.flags
                        ),
                    };
                    self.outbox.try_send(answer, &err)
                }
            };
            if sent.is_ok() {
                self.expected.push_back((answer, verdict.err()));
            }
            match sent {
                Ok(()) | Err(SendError::Full { .. }) | Err(SendError::TooLarge { .. }) => {}
                Err(SendError::Ring(_)) => {
                    // The client corrupted the response ring's head: the
                    // worker closes the session.
                    self.closed = true;
                    break;
                }
                Err(e) => panic!("unexpected send error: {e}"),
            }
        }
        self.inbox.consumer().release();
        if let Some(p) = &self.poisoned {
            // Every later call fails the same way.
            let again = self.inbox.try_recv().map(|m| m.map(|m| m.meta));
            assert_eq!(again, Err(p.clone()));
        }
    }

    fn client_drain(&mut self) {
        while let Ok(Some(f)) = self.client_rx.peek() {
            let meta = f.meta();
            let mut payload = AlignedVec::<16>::new();
            payload.extend_from_slice(&f.payload().to_vec());
            f.consume();
            let expected = self.expected.pop_front();
            if self.head_forged {
                continue;
            }
            let (want, code) = expected.expect("no answer is read that was not sent");
            assert_eq!(meta, want, "the answer's header");
            if let Some(code) = code {
                let err = RemoteError::decode(&payload).expect("an error payload decodes");
                assert_eq!(ErrorCode::from_u32(err.code), code);
            }
        }
        self.client_rx.release();
    }
}

fuzz_target!(|input: Input<'_>| {
    match input {
        Input::Decode { which, payload } => {
            let mut bytes = AlignedVec::<16>::new();
            bytes.extend_from_slice(payload);
            let id = METHODS[which as usize % METHODS.len()];
            validate(id, &bytes);
        }
        Input::Session { cap, ops } => {
            let mut s = Session::new(1 << (7 + cap % 6));
            for op in ops.iter().take(256) {
                match op {
                    Op::Send {
                        request_id,
                        tag,
                        kind,
                        flags,
                        payload,
                    } => {
                        let kind = match kind % 8 {
                            0..=4 => wire::REQUEST,
                            k => u16::from(k),
                        };
                        // Non-zero flags one time in four (the rest exercise
                        // request validation, which such a frame skips).
                        let flags = if flags % 4 == 0 { flags >> 2 } else { 0 };
                        let meta = FrameMeta {
                            request_id: *request_id,
                            tag: tag.id(),
                            kind,
                            flags,
                        };
                        s.send(meta, payload);
                    }
                    Op::SendValid {
                        request_id,
                        which,
                        seed,
                        key_len,
                    } => {
                        let (tag, bytes) = valid_request(*which, *seed, *key_len);
                        let meta = FrameMeta {
                            request_id: *request_id,
                            tag,
                            kind: wire::REQUEST,
                            flags: 0,
                        };
                        s.send(meta, &bytes);
                    }
                    Op::Poke { offset, value } => s.poke(*offset, &[*value]),
                    Op::PokeWord { offset, value } => s.poke(*offset, &value.to_le_bytes()),
                    Op::SetResponseHead(h) => s.set_response_head(*h),
                    Op::Serve => s.serve(),
                    Op::ClientDrain => s.client_drain(),
                }
            }
            s.serve();
        }
    }
});
