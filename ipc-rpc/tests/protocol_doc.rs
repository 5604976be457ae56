//! `docs/protocol.md` checked against the code.
//!
//! Every fenced block tagged ```` ```hex name=NAME ```` in the document is a
//! byte dump (two hex digits per byte; `OFFSET:` labels, checked; `#` starts
//! a comment). Each NAME is built here with the real encoders (the handshake
//! structs, the ring producer, the rkyv codec) and must equal the dump byte
//! for byte, and every example listed here must appear in the document. On a
//! mismatch the test prints the bytes the code produces, ready to paste.
//!
//! The rkyv layout rules the document states (root at the end, relative
//! offsets, inline and out-of-line strings, vectors, enum tags, padding) are
//! checked by a second, independent encoder written from those rules only,
//! compared with rkyv's output over many values, and by decoding rkyv's output
//! with the same rules. The schema hash and the method ids are recomputed
//! from the formulas the document gives.

use ipc_core::ring::{Consumer, FrameMeta, Producer, RingRegion, heap_channel};
use ipc_rpc::blob::{
    Acquire, AuthorPool, BlobHandle, CacheGet, CacheList, CacheLoad, CachePut, CachePutDurable,
    CacheRemove, CreateLarge, FD_GRANT_MAGIC, FdGrant, Hit, KeyError, LargeInfo, ListPage,
    ListRequest, ListedKey, Lookup, MAX_KEY_LEN, MapSegment, PutRequest, Release, ReleaseBatch,
    SealLarge, SealSmall, SegmentInfo, check_key,
};
use ipc_rpc::builtin::{Ping, ServerStats, SessionStats, Stats};
use ipc_rpc::example::{Invert, Inverted, Work, WorkRuns};
use ipc_rpc::handshake::{
    FORMAT, GOODBYE_MAGIC, Goodbye, HELLO_MAGIC, Hello, PROTOCOL_VERSION, SCHEMA_HASH,
    WELCOME_MAGIC, Welcome,
};
use ipc_rpc::memo::{BlobDigest, CacheClaim, CacheUnclaim, MemoClear, MemoList};
use ipc_rpc::provide::{
    BYTES_SCHEMA, ListMethods, MethodInfo, Offer, ProviderInfo, Register, Unregister,
};
use ipc_rpc::rkyv::Archive;
use ipc_rpc::rkyv::ser::allocator::Arena;
use ipc_rpc::rkyv::util::AlignedVec;
use ipc_rpc::{ErrorCode, Inbox, Method, Outbox, RemoteError, Wire, encode_to_vec, wire};
use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};

const DOC: &str = include_str!("../../docs/protocol.md");

// ---------------------------------------------------------------------------
// Reading the document.

/// The `hex name=...` blocks of the document, by name, with their line.
fn doc_blocks() -> BTreeMap<String, (usize, Vec<u8>)> {
    let mut blocks = BTreeMap::new();
    let mut lines = DOC.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(name) = line.trim().strip_prefix("```hex name=") else {
            continue;
        };
        let name = name.trim().to_owned();
        let mut bytes = Vec::new();
        let mut closed = false;
        for (m, l) in lines.by_ref() {
            let l = l.trim();
            if l == "```" {
                closed = true;
                break;
            }
            let data = l.split('#').next().unwrap_or("");
            for tok in data.split_whitespace() {
                if let Some(off) = tok.strip_suffix(':') {
                    let off = usize::from_str_radix(off, 16).unwrap_or_else(|e| {
                        panic!("protocol.md:{}: bad offset label {tok:?}: {e}", m + 1)
                    });
                    assert_eq!(
                        off,
                        bytes.len(),
                        "protocol.md:{}: offset label {tok} in block {name} does not match the bytes before it",
                        m + 1
                    );
                } else {
                    assert_eq!(
                        tok.len(),
                        2,
                        "protocol.md:{}: {tok:?} is not one byte",
                        m + 1
                    );
                    let b = u8::from_str_radix(tok, 16)
                        .unwrap_or_else(|e| panic!("protocol.md:{}: bad byte {tok:?}: {e}", m + 1));
                    bytes.push(b);
                }
            }
        }
        assert!(closed, "protocol.md:{}: block {name} is not closed", n + 1);
        let prev = blocks.insert(name.clone(), (n + 1, bytes));
        assert!(prev.is_none(), "protocol.md: two blocks named {name}");
    }
    blocks
}

/// `bytes` as the document writes them: 8 bytes a line, offset labels.
fn dump(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        s.push_str(&format!("{:04x}: {}\n", i * 8, hex.join(" ")));
    }
    s
}

// ---------------------------------------------------------------------------
// Producing the examples with the real code.

fn archive<T: Wire>(value: &T) -> Vec<u8> {
    let mut arena = Arena::new();
    encode_to_vec(value, &mut arena, 1 << 20)
        .expect("example encodes")
        .to_vec()
}

const RING: usize = 4096;

/// The first `len` bytes of a ring's frame area.
fn frame_area(region: &RingRegion, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // SAFETY: the region is alive (borrowed), `len` is at most its capacity,
    // and the frame area starts CONTROL_LEN bytes after its base; no other
    // thread uses the ring, so nothing writes these bytes meanwhile.
    unsafe {
        std::ptr::copy_nonoverlapping(
            region.base().as_ptr().add(ipc_core::ring::CONTROL_LEN),
            out.as_mut_ptr(),
            len,
        )
    };
    out
}

/// Writes `bytes` at the start of a ring's frame area, as a peer process
/// would.
fn write_frame_area(region: &RingRegion, bytes: &[u8]) {
    // SAFETY: as in `frame_area`; the consumer attached to this region reads
    // only after this call returns, on this thread.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            region.base().as_ptr().add(ipc_core::ring::CONTROL_LEN),
            bytes.len(),
        )
    };
}

/// The first frame a fresh ring carries after `send`.
fn first_frame(send: impl FnOnce(&mut Outbox<RingRegion>)) -> Vec<u8> {
    let (tx, rx) = heap_channel(RING).expect("ring");
    let mut out = Outbox::new(tx);
    send(&mut out);
    let mut inbox = Inbox::new(rx);
    let len = {
        let frame = inbox.consumer().peek().expect("valid").expect("a frame");
        frame.frame_len()
    };
    frame_area(inbox.consumer().memory(), len)
}

fn handle() -> BlobHandle {
    BlobHandle {
        epoch: 0x8c1f_0a27_5e3d_9b64,
        id: 42,
        segment: 9,
        offset: 4096,
        len: 11,
    }
}

fn large_handle() -> BlobHandle {
    BlobHandle {
        id: 43,
        segment: 10,
        offset: 4096,
        len: 1 << 20,
        ..handle()
    }
}

fn pool_info(fd_sent: bool) -> SegmentInfo {
    SegmentInfo {
        segment: 9,
        len: 64 << 20,
        kind: 3,
        fd_sent,
    }
}

fn hit() -> Hit {
    Hit {
        handle: handle(),
        segment: pool_info(false),
    }
}

const KEY: &str = "images/cat.png";

fn list_request() -> ListRequest {
    ListRequest {
        prefix: "images/".to_owned(),
        after: KEY.to_owned(),
        limit: 100,
    }
}

fn list_page() -> ListPage {
    ListPage {
        keys: vec![
            ListedKey {
                key: "images/cow.png".to_owned(),
                len: 11,
                in_memory: true,
                on_disk: true,
            },
            ListedKey {
                key: "images/dog.png".to_owned(),
                len: 1 << 20,
                in_memory: false,
                on_disk: true,
            },
        ],
        more: true,
    }
}

fn thumb_id() -> u64 {
    ipc_rpc::method_id("img.thumb", 1)
}

fn ping_meta() -> FrameMeta {
    FrameMeta {
        request_id: 1,
        tag: Ping::ID,
        kind: wire::REQUEST,
        flags: 0,
    }
}

fn stats_example() -> ServerStats {
    ServerStats {
        pid: 4000,
        workers: 2,
        uptime_ms: 60_000,
        sessions: 1,
        sessions_total: 3,
        calls_served: 1234,
        sessions_killed: 0,
        wake_syscalls: 56,
        blobs: ipc_rpc::blob::BlobStats {
            blobs: 1,
            blob_bytes: 11,
            pool_segments: 1,
            pool_capacity: 64 << 20,
            pool_used: 64,
            author_pools: 1,
            leases: 1,
            cache_entries: 1,
            cache_bytes: 11,
            cache_budget: 1 << 30,
            hits: 5,
            misses: 2,
            disk_enabled: true,
            disk_entries: 1,
            disk_bytes: 4107,
            disk_budget: 10 << 30,
            ..Default::default()
        },
        per_session: vec![SessionStats {
            id: 3,
            pid: 4242,
            calls: 17,
            in_flight: 0,
            backlog: 0,
            leases: 1,
            pinned_bytes: 11,
            pool_bytes: 4 << 20,
        }],
        provided: ipc_rpc::builtin::ProvidedStats {
            methods: 1,
            providers: 2,
            calls: 40,
            replied: 40,
            ..Default::default()
        },
    }
}

/// Every example the document must show, by block name.
fn examples() -> Vec<(&'static str, Vec<u8>)> {
    let hello = Hello {
        magic: HELLO_MAGIC,
        protocol: PROTOCOL_VERSION,
        format: FORMAT,
        schema: SCHEMA_HASH,
        pid: 4242,
        flags: 0,
    };
    let welcome = Welcome {
        magic: WELCOME_MAGIC,
        protocol: PROTOCOL_VERSION,
        status: 0,
        epoch: handle().epoch,
        session_id: 3,
        ring_capacity: 256 << 10,
        worker: 1,
        session_len: ipc_rpc::session::session_len(256 << 10) as u64,
        status_len: ipc_rpc::session::status_len(2) as u64,
        server_pid: 4000,
        reserved: 0,
    };
    let goodbye = Goodbye {
        magic: GOODBYE_MAGIC,
        reason: 0,
    };
    let grant = FdGrant {
        magic: FD_GRANT_MAGIC,
        segment: 9,
    };
    let ping = b"hello".to_vec();
    let error = RemoteError {
        code: ErrorCode::UnknownMethod.to_u32(),
        message: format!(
            "this server has no method with id {:#018x}",
            0x0123_4567_89ab_cdefu64
        ),
    };
    vec![
        ("hello", bytemuck::bytes_of(&hello).to_vec()),
        ("welcome", bytemuck::bytes_of(&welcome).to_vec()),
        ("goodbye", bytemuck::bytes_of(&goodbye).to_vec()),
        ("fd-grant", bytemuck::bytes_of(&grant).to_vec()),
        (
            "ping-request",
            first_frame(|o| o.try_send(ping_meta(), &ping).expect("send")),
        ),
        (
            // The server's echo: the validated request archive, unchanged.
            "ping-response",
            first_frame(|o| {
                let meta = FrameMeta {
                    kind: wire::RESPONSE,
                    ..ping_meta()
                };
                o.try_send_encoded(meta, &archive(&ping)).expect("send")
            }),
        ),
        (
            "error-response",
            first_frame(|o| {
                let meta = FrameMeta {
                    request_id: 2,
                    tag: 0,
                    kind: wire::ERROR,
                    flags: 0,
                };
                o.try_send(meta, &error).expect("send")
            }),
        ),
        (
            "stats-request",
            first_frame(|o| {
                let meta = FrameMeta {
                    request_id: 3,
                    tag: Stats::ID,
                    kind: wire::REQUEST,
                    flags: 0,
                };
                o.try_send(meta, &()).expect("send")
            }),
        ),
        ("stats-response", archive(&stats_example())),
        (
            "author-pool-response",
            archive(&SegmentInfo {
                segment: 7,
                len: (4 << 20) + 4096,
                kind: 2,
                fd_sent: true,
            }),
        ),
        ("seal-small-request", archive(&(4096u64, 11u64))),
        ("blob-handle", archive(&handle())),
        ("create-large-request", archive(&(1u64 << 20))),
        (
            "create-large-response",
            archive(&LargeInfo {
                id: 43,
                segment: SegmentInfo {
                    segment: 10,
                    len: (1 << 20) + 4096,
                    kind: 4,
                    fd_sent: true,
                },
            }),
        ),
        ("seal-large-request", archive(&43u64)),
        ("acquire-request", archive(&(large_handle(), true))),
        ("segment-info", archive(&pool_info(true))),
        ("map-request", archive(&9u64)),
        (
            "release-request",
            archive(&ReleaseBatch {
                leases: vec![42, 43],
                aborted: vec![],
            }),
        ),
        ("release-response", archive(&2u64)),
        (
            "put-request",
            archive(&PutRequest {
                key: KEY.to_owned(),
                handle: handle(),
                if_absent: false,
            }),
        ),
        ("bool-true", archive(&true)),
        ("key-request", archive(&KEY.to_owned())),
        ("key-request-short", archive(&"cat".to_owned())),
        ("get-response-hit", archive(&Lookup::Hit(hit()))),
        ("get-response-ondisk", archive(&Lookup::OnDisk)),
        ("get-response-miss", archive(&Lookup::Miss)),
        ("load-response-some", archive(&Some(hit()))),
        ("load-response-none", archive(&None::<Hit>)),
        ("list-request", archive(&list_request())),
        ("list-page", archive(&list_page())),
        (
            "invert-response",
            archive(&Inverted {
                checksum: 0x1d6b_05c3_a9e4_7f20,
                inverted: BlobHandle { id: 44, ..handle() },
            }),
        ),
        (
            "offer-request",
            archive(&Offer {
                name: "img.thumb".to_owned(),
                version: 1,
                schema_hash: BYTES_SCHEMA,
                concurrency: 4,
                idempotent: true,
                memoized: false,
            }),
        ),
        ("envelope", {
            let mut p = vec![0u8; wire::body_offset(1)];
            wire::write_envelope(&mut p, 5_000_000_000, BYTES_SCHEMA, &[handle()]).unwrap();
            p
        }),
        (
            "invoke-frame",
            first_frame(|o| {
                let meta = FrameMeta {
                    request_id: 7,
                    tag: thumb_id(),
                    kind: wire::INVOKE,
                    flags: wire::ENVELOPE,
                };
                let mut p = vec![0u8; wire::body_offset(0)];
                wire::write_envelope(&mut p, 5_000_000_000, BYTES_SCHEMA, &[]).unwrap();
                p.extend_from_slice(b"png");
                o.try_send_encoded(meta, &p).expect("send")
            }),
        ),
        (
            "reply-frame",
            first_frame(|o| {
                let meta = FrameMeta {
                    request_id: 7,
                    tag: thumb_id(),
                    kind: wire::REPLY,
                    flags: 0,
                };
                o.try_send_encoded(meta, b"ok").expect("send")
            }),
        ),
        (
            "cancel-frame",
            first_frame(|o| {
                let meta = FrameMeta {
                    request_id: 7,
                    tag: thumb_id(),
                    kind: wire::CANCEL,
                    flags: 0,
                };
                o.try_send_encoded(meta, &[]).expect("send")
            }),
        ),
        ("padding-commit", padding_example().0),
        ("after-padding-commit", padding_example().1),
    ]
}

/// A real producer's padding frame: in a ring of 256 bytes, frames of 96
/// bytes at positions 0 and 96 leave the tail at 192, where the next 96-byte
/// frame does not fit before the end. Returns the commit word at offset 192
/// (the padding frame) and at offset 0 (the frame after it, at position 256).
fn padding_example() -> (Vec<u8>, Vec<u8>) {
    let (tx, rx) = heap_channel(256).expect("ring");
    let (mut out, mut inbox) = (Outbox::new(tx), Inbox::new(rx));
    let payload = vec![0u8; 56]; // 8 + 56 = 64 archive bytes, a 96-byte frame
    for i in 0..3 {
        let meta = FrameMeta {
            request_id: i,
            ..ping_meta()
        };
        out.try_send(meta, &payload).expect("send");
        let m = inbox.try_recv().expect("valid").expect("frame");
        assert_eq!(m.meta.request_id, i);
        inbox.consumer().release();
    }
    assert_eq!(
        out.producer().position(),
        352,
        "two frames, a padding, a frame"
    );
    let area = frame_area(inbox.consumer().memory(), 256);
    (area[192..200].to_vec(), area[0..8].to_vec())
}

#[test]
fn every_hex_block_matches_the_code() {
    let blocks = doc_blocks();
    let examples = examples();
    let mut failures = Vec::new();
    for (name, bytes) in &examples {
        match blocks.get(*name) {
            None => failures.push(format!(
                "missing block ```hex name={name}; the code gives:\n{}",
                dump(bytes)
            )),
            Some((line, doc)) if doc != bytes => failures.push(format!(
                "protocol.md:{line}: block {name} differs; the code gives:\n{}",
                dump(bytes)
            )),
            Some(_) => {}
        }
    }
    for name in blocks.keys() {
        if !examples.iter().any(|(n, _)| n == name) {
            failures.push(format!("block {name} has no example in this test"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A client that builds its request frames from the document is understood
/// by the server's inbox: the documented bytes, written into a fresh request
/// ring, come out as the documented header and value.
#[test]
fn documented_request_frames_are_accepted() {
    let blocks = doc_blocks();
    for (name, meta, check) in [
        (
            "ping-request",
            ping_meta(),
            (|b: &[u8]| assert_eq!(Vec::<u8>::decode(b).unwrap(), b"hello")) as fn(&[u8]),
        ),
        (
            "stats-request",
            FrameMeta {
                request_id: 3,
                tag: Stats::ID,
                kind: wire::REQUEST,
                flags: 0,
            },
            |b: &[u8]| <()>::decode(b).unwrap(),
        ),
    ] {
        let (_, bytes) = &blocks[name];
        let (tx, rx): (Producer<RingRegion>, Consumer<RingRegion>) = heap_channel(RING).unwrap();
        write_frame_area(tx.memory(), bytes);
        let mut inbox = Inbox::new(rx);
        let msg = inbox.try_recv().unwrap().expect("the frame is published");
        assert_eq!(msg.meta, meta, "{name}");
        check(msg.bytes);
        assert!(inbox.try_recv().unwrap().is_none(), "{name}: one frame");
    }
}

/// The documented response frames decode to what the document says.
#[test]
fn documented_response_frames_decode() {
    let blocks = doc_blocks();
    let (_, err) = &blocks["error-response"];
    let (tx, rx) = heap_channel(RING).unwrap();
    write_frame_area(tx.memory(), err);
    let mut inbox = Inbox::new(rx);
    let msg = inbox.try_recv().unwrap().unwrap();
    assert_eq!(msg.meta.kind, wire::ERROR);
    let e = RemoteError::decode(msg.bytes).unwrap();
    assert_eq!(ErrorCode::from_u32(e.code), ErrorCode::UnknownMethod);
    // The same, read by the document's rules: root at the end, code first,
    // then an out-of-line string.
    let b = msg.bytes;
    let root = b.len() - 12;
    assert_eq!(le32(b, root), 1);
    assert_eq!(read_string(b, root + 4), e.message);
}

// ---------------------------------------------------------------------------
// The formulas.

/// FNV-1a 64 as the document states it.
fn fnv_id(name: &str, version: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain([0u8]).chain(version.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

#[test]
fn method_ids_and_schema_follow_the_documented_formulas() {
    let methods: [(&str, u32, u64); 26] = [
        (Register::NAME, Register::VERSION, Register::ID),
        (Unregister::NAME, Unregister::VERSION, Unregister::ID),
        (ListMethods::NAME, ListMethods::VERSION, ListMethods::ID),
        (Ping::NAME, Ping::VERSION, Ping::ID),
        (Stats::NAME, Stats::VERSION, Stats::ID),
        (AuthorPool::NAME, AuthorPool::VERSION, AuthorPool::ID),
        (SealSmall::NAME, SealSmall::VERSION, SealSmall::ID),
        (CreateLarge::NAME, CreateLarge::VERSION, CreateLarge::ID),
        (SealLarge::NAME, SealLarge::VERSION, SealLarge::ID),
        (Acquire::NAME, Acquire::VERSION, Acquire::ID),
        (MapSegment::NAME, MapSegment::VERSION, MapSegment::ID),
        (Release::NAME, Release::VERSION, Release::ID),
        (CachePut::NAME, CachePut::VERSION, CachePut::ID),
        (
            CachePutDurable::NAME,
            CachePutDurable::VERSION,
            CachePutDurable::ID,
        ),
        (CacheGet::NAME, CacheGet::VERSION, CacheGet::ID),
        (CacheLoad::NAME, CacheLoad::VERSION, CacheLoad::ID),
        (CacheRemove::NAME, CacheRemove::VERSION, CacheRemove::ID),
        (CacheList::NAME, CacheList::VERSION, CacheList::ID),
        (Invert::NAME, Invert::VERSION, Invert::ID),
        (BlobDigest::NAME, BlobDigest::VERSION, BlobDigest::ID),
        (MemoList::NAME, MemoList::VERSION, MemoList::ID),
        (MemoClear::NAME, MemoClear::VERSION, MemoClear::ID),
        (CacheClaim::NAME, CacheClaim::VERSION, CacheClaim::ID),
        (CacheUnclaim::NAME, CacheUnclaim::VERSION, CacheUnclaim::ID),
        (Work::NAME, Work::VERSION, Work::ID),
        (WorkRuns::NAME, WorkRuns::VERSION, WorkRuns::ID),
    ];
    for (name, version, id) in methods {
        assert_eq!(fnv_id(name, version), id, "{name}");
        // The document lists each method with its version and id on one line.
        let listed = DOC.lines().any(|l| {
            l.contains(&format!("`{name}`"))
                && l.contains(&format!("| {version} |"))
                && l.contains(&format!("`{id:#018x}`"))
        });
        assert!(
            listed,
            "protocol.md lists no line with `{name}`, | {version} | and `{id:#018x}`"
        );
    }
    // SCHEMA_HASH, from the document's formula.
    let mut h = fnv_id("cradle.core", 1);
    assert!(DOC.contains(&format!("id(\"cradle.core\", 1)            = {h:#018x}")));
    h ^= (32u64 << 32) | 16;
    h = h.rotate_left(17) ^ fnv_id("cradle.ping", 1);
    h = h.rotate_left(17) ^ fnv_id("cradle.stats", 2);
    assert_eq!(h, SCHEMA_HASH);
    assert!(
        DOC.contains(&format!("{SCHEMA_HASH:#018x}")),
        "protocol.md must give the schema value {SCHEMA_HASH:#018x}"
    );
    assert_eq!(FORMAT, 7);
    // The magics, as the integers the document names.
    for (name, magic) in [
        ("CRDLHELO", HELLO_MAGIC),
        ("CRDLWLCM", WELCOME_MAGIC),
        ("CRDLBYE!", GOODBYE_MAGIC),
        ("CRDLFDGR", FD_GRANT_MAGIC),
    ] {
        assert_eq!(magic.to_le_bytes(), *name.as_bytes());
        let text = format!("\"{name}\" = {magic:#018x}");
        assert!(DOC.contains(&text), "protocol.md lacks {text}");
    }
}

/// The table of word offsets in the session segment (§3) is where the real
/// ring puts its words, for the default capacity.
#[test]
fn session_segment_word_offsets_are_as_documented() {
    use ipc_core::ring::RingMemory;
    use ipc_rpc::session::{DEFAULT_RING_CAPACITY, request_ring_offset, response_ring_offset};
    let cap = DEFAULT_RING_CAPACITY;
    let ring = RingRegion::on_heap(cap).unwrap();
    let base = ring.base().as_ptr() as usize;
    let at = |p: *const u8| p as usize - base;
    let words: [(&str, usize); 7] = [
        ("`tail`", at(std::ptr::from_ref(ring.tail()).cast())),
        ("`data_seq`", at(std::ptr::from_ref(ring.data_seq()).cast())),
        (
            "`space_waiting`",
            at(std::ptr::from_ref(ring.space_waiting()).cast()),
        ),
        ("`head`", at(std::ptr::from_ref(ring.head()).cast())),
        (
            "`data_waiting`",
            at(std::ptr::from_ref(ring.data_waiting()).cast()),
        ),
        (
            "`space_seq`",
            at(std::ptr::from_ref(ring.space_seq()).cast()),
        ),
        ("frames", at(ring.data())),
    ];
    for (name, off) in words {
        let row = format!(
            "| {name} | {} | {} |",
            request_ring_offset() + off,
            response_ring_offset(cap) + off
        );
        assert!(DOC.contains(&row), "protocol.md lacks the row {row}");
    }
}

// ---------------------------------------------------------------------------
// rkyv layouts: sizes, alignments, field offsets.

macro_rules! layout {
    ($t:ty, size $s:expr, align $a:expr $(, $f:ident @ $o:expr)*) => {{
        type A = <$t as Archive>::Archived;
        assert_eq!(size_of::<A>(), $s, "size of archived {}", stringify!($t));
        assert_eq!(align_of::<A>(), $a, "align of archived {}", stringify!($t));
        $(assert_eq!(offset_of!(A, $f), $o, "offset of {}.{}", stringify!($t), stringify!($f));)*
    }};
}

#[test]
fn archived_layouts_are_as_documented() {
    layout!(u64, size 8, align 8);
    layout!(u32, size 4, align 4);
    layout!(bool, size 1, align 1);
    layout!((), size 0, align 1);
    layout!(Vec<u8>, size 8, align 4);
    layout!(Vec<u64>, size 8, align 4);
    layout!(String, size 8, align 4);
    layout!((u64, u64), size 16, align 8);
    layout!((BlobHandle, bool), size 48, align 8);
    layout!(RemoteError, size 12, align 4, code @ 0, message @ 4);
    layout!(BlobHandle, size 40, align 8, epoch @ 0, id @ 8, segment @ 16, offset @ 24, len @ 32);
    layout!(SegmentInfo, size 24, align 8, segment @ 0, len @ 8, kind @ 16, fd_sent @ 20);
    layout!(LargeInfo, size 32, align 8, id @ 0, segment @ 8);
    layout!(ReleaseBatch, size 16, align 4, leases @ 0, aborted @ 8);
    layout!(PutRequest, size 56, align 8, key @ 0, handle @ 8, if_absent @ 48);
    layout!(Hit, size 64, align 8, handle @ 0, segment @ 40);
    layout!(Lookup, size 72, align 8);
    layout!(Option<Hit>, size 72, align 8);
    layout!(Inverted, size 48, align 8, checksum @ 0, inverted @ 8);
    layout!(ListRequest, size 20, align 4, prefix @ 0, after @ 8, limit @ 16);
    layout!(ListedKey, size 24, align 8, key @ 0, len @ 8, in_memory @ 16, on_disk @ 17);
    layout!(ListPage, size 12, align 4, keys @ 0, more @ 8);
    layout!(
        SessionStats, size 56, align 8,
        id @ 0, pid @ 8, calls @ 16, in_flight @ 24, backlog @ 28, leases @ 32,
        pinned_bytes @ 40, pool_bytes @ 48
    );
    layout!(
        ipc_rpc::blob::BlobStats, size 200, align 8,
        blobs @ 0, blob_bytes @ 8, large_blobs @ 16, writing @ 24, pool_segments @ 32,
        pool_capacity @ 40, pool_used @ 48, author_pools @ 56, leases @ 64,
        cache_entries @ 72, cache_bytes @ 80, cache_budget @ 88, hits @ 96, misses @ 104,
        evictions @ 112, cache_full @ 120, disk_enabled @ 128, disk_entries @ 136,
        disk_bytes @ 144, disk_budget @ 152, disk_hits @ 160, disk_misses @ 168,
        disk_corruptions @ 176, disk_evictions @ 184, disk_queued @ 192
    );
    layout!(
        ServerStats, size 376, align 8,
        pid @ 0, workers @ 4, uptime_ms @ 8, sessions @ 16, sessions_total @ 24,
        calls_served @ 32, sessions_killed @ 40, wake_syscalls @ 48, blobs @ 56,
        per_session @ 256, provided @ 264
    );
    layout!(
        Offer, size 32, align 8,
        name @ 0, version @ 8, schema_hash @ 16, concurrency @ 24, idempotent @ 28,
        memoized @ 29
    );
    layout!(
        ProviderInfo, size 48, align 8,
        session @ 0, pid @ 8, concurrency @ 12, in_flight @ 16, served @ 24, errors @ 32,
        p50_ns @ 40
    );
    layout!(
        MethodInfo, size 80, align 8,
        name @ 0, version @ 8, id @ 16, origin @ 24, schema_hash @ 32, queued @ 40,
        served @ 48, errors @ 56, p50_ns @ 64, providers @ 72
    );
    layout!(
        ipc_rpc::builtin::ProvidedStats, size 112, align 8,
        methods @ 0, providers @ 8, queued @ 16, in_flight @ 24, calls @ 32,
        replied @ 40, reply_errors @ 48, busy @ 56, deadline_exceeded @ 64,
        provider_gone @ 72, refused @ 80, resent @ 88, discarded @ 96, abandoned @ 104
    );
}

// ---------------------------------------------------------------------------
// An independent encoder and decoder, written from the document's rules only
// (what a client in another language implements), against rkyv.

/// An archive under construction: the document's rules, by hand.
#[derive(Default)]
struct Out(Vec<u8>);

impl Out {
    fn pos(&self) -> usize {
        self.0.len()
    }
    /// Zero bytes up to a multiple of `a`.
    fn align(&mut self, a: usize) {
        while !self.0.len().is_multiple_of(a) {
            self.0.push(0);
        }
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.align(8);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A relative pointer to `target`, counted from the start of the field
    /// that holds it (`field`).
    fn rel(&mut self, field: usize, target: usize) {
        let off = target as i64 - field as i64;
        self.0.extend_from_slice(&(off as i32).to_le_bytes());
    }
    /// The out-of-line part of a string: its bytes (align 1) if longer than
    /// 8; returns where they start.
    fn string_data(&mut self, s: &str) -> usize {
        let at = self.pos();
        if s.len() > 8 {
            self.0.extend_from_slice(s.as_bytes());
        }
        at
    }
    /// The 8-byte string field: inline (bytes, then 0xff) or out-of-line
    /// (encoded length, offset to the bytes).
    fn string_field(&mut self, s: &str, data: usize) {
        self.align(4);
        if s.len() <= 8 {
            let mut field = [0xffu8; 8];
            field[..s.len()].copy_from_slice(s.as_bytes());
            self.0.extend_from_slice(&field);
        } else {
            let l = s.len() as u32;
            let field = self.pos();
            self.u32((l & 0x3f) | 0x80 | ((l & !0x3f) << 2));
            self.rel(field, data);
        }
    }
    /// The 8-byte vector field: offset to the elements, count.
    fn vec_field(&mut self, data: usize, len: usize) {
        self.align(4);
        self.rel(self.pos(), data);
        self.u32(len as u32);
    }
    fn handle(&mut self, h: &BlobHandle) {
        for v in [h.epoch, h.id, h.segment, h.offset, h.len] {
            self.u64(v);
        }
    }
    fn segment_info(&mut self, s: &SegmentInfo) {
        self.u64(s.segment);
        self.u64(s.len);
        self.u32(s.kind);
        self.u8(s.fd_sent as u8);
        self.align(8);
    }
    fn finish(mut self, root_align: usize) -> Vec<u8> {
        self.align(root_align);
        self.0
    }
}

fn by_hand_string(s: &str) -> Vec<u8> {
    let mut o = Out::default();
    let data = o.string_data(s);
    o.string_field(s, data);
    o.finish(4)
}

fn by_hand_bytes(v: &[u8]) -> Vec<u8> {
    let mut o = Out::default();
    o.0.extend_from_slice(v);
    o.align(4);
    o.vec_field(0, v.len());
    o.finish(4)
}

fn by_hand_error(e: &RemoteError) -> Vec<u8> {
    let mut o = Out::default();
    let data = o.string_data(&e.message);
    o.align(4);
    o.u32(e.code);
    o.string_field(&e.message, data);
    o.finish(4)
}

fn by_hand_release(b: &ReleaseBatch) -> Vec<u8> {
    let mut o = Out::default();
    o.align(8);
    let leases = o.pos();
    for &id in &b.leases {
        o.u64(id);
    }
    o.align(8);
    let aborted = o.pos();
    for &id in &b.aborted {
        o.u64(id);
    }
    o.align(4);
    o.vec_field(leases, b.leases.len());
    o.vec_field(aborted, b.aborted.len());
    o.finish(4)
}

fn by_hand_put(p: &PutRequest) -> Vec<u8> {
    let mut o = Out::default();
    let data = o.string_data(&p.key);
    o.align(8);
    o.string_field(&p.key, data);
    o.handle(&p.handle);
    o.u8(p.if_absent as u8);
    o.finish(8)
}

fn by_hand_list_request(r: &ListRequest) -> Vec<u8> {
    let mut o = Out::default();
    let prefix = o.string_data(&r.prefix);
    let after = o.string_data(&r.after);
    o.align(4);
    o.string_field(&r.prefix, prefix);
    o.string_field(&r.after, after);
    o.u32(r.limit);
    o.finish(4)
}

fn by_hand_list_page(p: &ListPage) -> Vec<u8> {
    let mut o = Out::default();
    // The elements' own out-of-line data (their keys), in element order.
    let keys: Vec<usize> = p.keys.iter().map(|k| o.string_data(&k.key)).collect();
    o.align(8);
    let elements = o.pos();
    for (k, &data) in p.keys.iter().zip(&keys) {
        o.string_field(&k.key, data);
        o.u64(k.len);
        o.u8(k.in_memory as u8);
        o.u8(k.on_disk as u8);
        o.align(8);
    }
    o.align(4);
    o.vec_field(elements, p.keys.len());
    o.u8(p.more as u8);
    o.finish(4)
}

fn by_hand_lookup(l: &Lookup) -> Vec<u8> {
    let mut o = Out::default();
    match l {
        Lookup::Hit(h) => {
            o.u8(0);
            o.align(8);
            o.handle(&h.handle);
            o.segment_info(&h.segment);
        }
        Lookup::OnDisk => o.u8(1),
        Lookup::Miss => o.u8(2),
    }
    o.0.resize(72, 0);
    o.0
}

fn by_hand_option_hit(v: &Option<Hit>) -> Vec<u8> {
    let mut o = Out::default();
    match v {
        None => o.u8(0),
        Some(h) => {
            o.u8(1);
            o.align(8);
            o.handle(&h.handle);
            o.segment_info(&h.segment);
        }
    }
    o.0.resize(72, 0);
    o.0
}

fn by_hand_stats(s: &ServerStats) -> Vec<u8> {
    let mut o = Out::default();
    o.align(8);
    let sessions = o.pos();
    for x in &s.per_session {
        o.u64(x.id);
        o.u32(x.pid);
        o.u64(x.calls);
        o.u32(x.in_flight);
        o.u32(x.backlog);
        o.u64(x.leases);
        o.u64(x.pinned_bytes);
        o.u64(x.pool_bytes);
    }
    o.align(8);
    o.u32(s.pid);
    o.u32(s.workers);
    for v in [
        s.uptime_ms,
        s.sessions,
        s.sessions_total,
        s.calls_served,
        s.sessions_killed,
        s.wake_syscalls,
    ] {
        o.u64(v);
    }
    let b = &s.blobs;
    for v in [
        b.blobs,
        b.blob_bytes,
        b.large_blobs,
        b.writing,
        b.pool_segments,
        b.pool_capacity,
        b.pool_used,
        b.author_pools,
        b.leases,
        b.cache_entries,
        b.cache_bytes,
        b.cache_budget,
        b.hits,
        b.misses,
        b.evictions,
        b.cache_full,
    ] {
        o.u64(v);
    }
    o.u8(b.disk_enabled as u8);
    for v in [
        b.disk_entries,
        b.disk_bytes,
        b.disk_budget,
        b.disk_hits,
        b.disk_misses,
        b.disk_corruptions,
        b.disk_evictions,
        b.disk_queued,
    ] {
        o.u64(v);
    }
    o.vec_field(sessions, s.per_session.len());
    let p = &s.provided;
    for v in [
        p.methods,
        p.providers,
        p.queued,
        p.in_flight,
        p.calls,
        p.replied,
        p.reply_errors,
        p.busy,
        p.deadline_exceeded,
        p.provider_gone,
        p.refused,
        p.resent,
        p.discarded,
        p.abandoned,
    ] {
        o.u64(v);
    }
    o.finish(8)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Reads an archived string field at `at` by the document's rules.
fn read_string(b: &[u8], at: usize) -> String {
    let field = &b[at..at + 8];
    if field[0] & 0xc0 != 0x80 {
        let len = field.iter().position(|&x| x == 0xff).unwrap_or(8);
        String::from_utf8(field[..len].to_vec()).unwrap()
    } else {
        let raw = le32(b, at);
        let len = ((raw & 0x3f) | ((raw & !0xff) >> 2)) as usize;
        let start = (at as i64 + i64::from(le32(b, at + 4) as i32)) as usize;
        String::from_utf8(b[start..start + len].to_vec()).unwrap()
    }
}

/// Reads an archived `Vec<u8>` field at `at` by the document's rules.
fn read_bytes(b: &[u8], at: usize) -> Vec<u8> {
    let start = (at as i64 + i64::from(le32(b, at) as i32)) as usize;
    let len = le32(b, at + 4) as usize;
    b[start..start + len].to_vec()
}

fn sample_strings() -> Vec<String> {
    let mut v: Vec<String> = (0..=300).map(|n| "x".repeat(n)).collect();
    v.extend(
        [
            "",
            "é",
            "日本語",
            "12345678",
            "123456789",
            "k",
            KEY,
            "ключ-ключ",
        ]
        .map(String::from),
    );
    v.push("y".repeat(70_000));
    v
}

#[test]
fn strings_and_byte_vectors_follow_the_documented_rules() {
    for s in sample_strings() {
        let rk = archive(&s);
        assert_eq!(by_hand_string(&s), rk, "String of {} bytes", s.len());
        assert_eq!(read_string(&rk, rk.len() - 8), s);
        // And rkyv reads what the rules write (the same bytes, so also the
        // other way round); an inline string never starts with 10xxxxxx.
        assert_eq!(String::decode(&aligned(&by_hand_string(&s))).unwrap(), s);
        let e = RemoteError {
            code: 7,
            message: s.clone(),
        };
        let rk = archive(&e);
        assert_eq!(by_hand_error(&e), rk, "RemoteError, message of {}", s.len());
        let root = rk.len() - 12;
        assert_eq!(le32(&rk, root), 7);
        assert_eq!(read_string(&rk, root + 4), s);
        let bytes = s.clone().into_bytes();
        let rk = archive(&bytes);
        assert_eq!(by_hand_bytes(&bytes), rk, "Vec<u8> of {}", bytes.len());
        assert_eq!(read_bytes(&rk, rk.len() - 8), bytes);
        let put = PutRequest {
            key: s.clone(),
            handle: handle(),
            if_absent: s.len() % 2 == 0,
        };
        assert_eq!(
            by_hand_put(&put),
            archive(&put),
            "PutRequest, key of {}",
            s.len()
        );
    }
}

#[test]
fn list_requests_and_pages_follow_the_documented_rules() {
    let strings = sample_strings();
    for (i, s) in strings.iter().enumerate() {
        let r = ListRequest {
            prefix: s.clone(),
            after: strings[(i * 7 + 3) % strings.len()].clone(),
            limit: i as u32 * 1000,
        };
        assert_eq!(
            by_hand_list_request(&r),
            archive(&r),
            "ListRequest {} / {}",
            r.prefix.len(),
            r.after.len()
        );
    }
    // Pages of 0 to 12 keys, short and long mixed.
    for n in 0..13 {
        for start in [0, 5, 9, 300] {
            let p = ListPage {
                keys: (0..n)
                    .map(|i| ListedKey {
                        key: strings[(start + i * 13) % strings.len()].clone(),
                        len: (i as u64) << 33 | 7,
                        in_memory: i % 2 == 0,
                        on_disk: i % 3 != 0,
                    })
                    .collect(),
                more: n % 2 == 1,
            };
            assert_eq!(
                by_hand_list_page(&p),
                archive(&p),
                "ListPage {n} from {start}"
            );
        }
    }
    // The documented page, read by the rules: root at the end, the vector's
    // elements (24 bytes each) through its offset, each key through its own.
    let page = list_page();
    let b = archive(&page);
    let root = b.len() - 12;
    let elements = (root as i64 + i64::from(le32(&b, root) as i32)) as usize;
    assert_eq!(le32(&b, root + 4) as usize, page.keys.len());
    assert_eq!(b[root + 8], page.more as u8);
    for (i, k) in page.keys.iter().enumerate() {
        let at = elements + 24 * i;
        assert_eq!(read_string(&b, at), k.key);
        assert_eq!(
            u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap()),
            k.len
        );
        assert_eq!(
            (b[at + 16], b[at + 17]),
            (k.in_memory as u8, k.on_disk as u8)
        );
    }
    assert_eq!(ListPage::decode(&aligned(&b)).unwrap(), page);
}

/// The key rule as §7 states it, written from the text, agrees with
/// `check_key` (which the server applies too).
#[test]
fn the_key_rule_is_as_documented() {
    let rule = "1 to 1024 bytes of UTF-8 with no control\ncharacter (Unicode general category Cc: U+0000..U+001F and U+007F..U+009F;";
    assert!(
        DOC.contains(rule),
        "protocol.md must state the key rule as: {rule}"
    );
    assert_eq!(MAX_KEY_LEN, 1024);
    let documented = |k: &str| {
        (1..=1024).contains(&k.len())
            && !k
                .chars()
                .any(|c| matches!(u32::from(c), 0..=0x1f | 0x7f..=0x9f))
    };
    let mut keys: Vec<String> = sample_strings();
    keys.extend(
        [
            "a\tb",
            "\u{7f}",
            "x\u{85}y",
            "\u{9f}",
            "\u{a0}",
            "é\n",
            "日本\u{0}",
        ]
        .map(String::from),
    );
    keys.push("é".repeat(512));
    keys.push(format!("{}a", "é".repeat(512)));
    keys.extend((0u32..0x2000).filter_map(char::from_u32).map(String::from));
    for k in &keys {
        assert_eq!(check_key(k).is_ok(), documented(k), "key {k:?}");
    }
    assert_eq!(check_key(""), Err(KeyError::Empty));
    assert_eq!(check_key(&"k".repeat(1025)), Err(KeyError::TooLong(1025)));
}

#[test]
fn a_misencoded_string_is_refused() {
    // Out-of-line form with a length that fits inline: refused by validation.
    let mut b = Out::default();
    b.0.extend_from_slice(b"abc");
    b.align(4);
    b.u32(0x80 | 3);
    b.rel(4, 0);
    assert!(String::decode(&aligned(&b.0)).is_err());
    // Inline bytes that are not UTF-8: refused.
    let bad = [0xc3u8, 0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    assert!(String::decode(&aligned(&bad)).is_err());
}

#[test]
fn vectors_enums_options_and_stats_follow_the_documented_rules() {
    for n in 0..20u64 {
        for m in 0..4u64 {
            let b = ReleaseBatch {
                leases: (0..n).map(|i| 1000 + i).collect(),
                aborted: (0..m).map(|i| 2000 + i).collect(),
            };
            assert_eq!(by_hand_release(&b), archive(&b), "ReleaseBatch {n} {m}");
        }
    }
    // An empty vector points where its elements would have been written:
    // here, with no out-of-line data at all, the start of the root.
    let mut o = Out::default();
    o.vec_field(0, 0);
    o.vec_field(0, 0);
    assert_eq!(
        ReleaseBatch::decode(&aligned(&o.0)).unwrap(),
        ReleaseBatch::default()
    );
    // Pointing past the start of the object that holds it is refused.
    let mut o = Out::default();
    o.vec_field(0, 0);
    o.vec_field(8, 0);
    assert!(ReleaseBatch::decode(&aligned(&o.0)).is_err());
    // Out-of-line blocks follow field order: `aborted`'s elements written
    // before `leases`' are refused, though every offset is right.
    let mut o = Out::default();
    o.u64(2); // aborted[0] at 0
    o.u64(1); // leases[0] at 8
    o.vec_field(8, 1);
    o.vec_field(0, 1);
    assert!(ReleaseBatch::decode(&aligned(&o.0)).is_err());
    let mut o = Out::default();
    o.u64(1);
    o.u64(2);
    o.vec_field(0, 1);
    o.vec_field(8, 1);
    let ok = ReleaseBatch::decode(&aligned(&o.0)).unwrap();
    assert_eq!((ok.leases, ok.aborted), (vec![1], vec![2]));
    for l in [Lookup::Hit(hit()), Lookup::OnDisk, Lookup::Miss] {
        assert_eq!(by_hand_lookup(&l), archive(&l), "{l:?}");
    }
    for v in [None, Some(hit())] {
        assert_eq!(by_hand_option_hit(&v), archive(&v), "{v:?}");
    }
    // Tags beyond the variants and bools other than 0 and 1 are refused.
    let mut bad = archive(&Lookup::Miss);
    bad[0] = 3;
    assert!(Lookup::decode(&aligned(&bad)).is_err());
    assert!(bool::decode(&aligned(&[2])).is_err());
    assert!(bool::decode(&aligned(&[1])).unwrap());
    // `()` is the empty payload; anything else is not a `()`... but trailing
    // bytes before a root are allowed, so a client sends exactly nothing.
    assert!(archive(&()).is_empty());
    <()>::decode(&[]).unwrap();
    let mut stats = stats_example();
    assert_eq!(by_hand_stats(&stats), archive(&stats));
    stats.per_session.clear();
    assert_eq!(by_hand_stats(&stats), archive(&stats));
    stats.per_session = (0..5)
        .map(|i| SessionStats {
            id: i,
            pid: 100 + i as u32,
            ..Default::default()
        })
        .collect();
    assert_eq!(by_hand_stats(&stats), archive(&stats));
}

fn aligned(b: &[u8]) -> AlignedVec<16> {
    let mut v = AlignedVec::<16>::new();
    v.extend_from_slice(b);
    v
}
