//! The blob scenarios (docs/design.md §8; the blob rows of §9 and its page-fault
//! counter).
//!
//! This process is the **author**: it creates, writes and seals the blobs
//! and holds them (the author's lease). The **reader** is a second process,
//! `cradle-bench peer blob-reader`, a client of the same `cradle-server`,
//! driven by one-line commands on its stdin and answering one line on its
//! stdout; it also holds one end of a socketpair for the Unix-socket
//! baseline. Both clients use `WaitMode::Spin` against a server started with
//! `--spin-us 20000` (it keeps polling 20 ms after each request), as
//! `cradle-spin` does.
//!
//! * `blob-create-seal` (this process): `create(4096)`, `write_at(0, 4 KiB)`,
//!   `seal()`, drop of the `Blob`, timed as one operation; then
//!   [`FAULT_OPS`] more, untimed, counting this process's minor faults
//!   (after the warm-up, and separately on a new session). Next to it, in
//!   the same blocks: an 8-byte `Ping` on the same client
//!   (`ping-same-client`), and the same operation with each of its four
//!   phases timed on its own.
//! * `blob-pass-mapped` (the reader): the reader has `get` the blob once and
//!   keeps that `BlobRef` (a large blob stays mapped while one of its refs
//!   lives); one operation is `get(handle)` + drop of the new `BlobRef`.
//! * first map (the reader): a fresh client (connected, one `Ping`, the
//!   segment not mapped by it): the `get`, then one byte read per page (the
//!   first touch: page faults), then the sum of every `u64` word of the blob
//!   (the full read, pages present).
//! * Unix socket (this process sends, the reader receives): a 1-byte
//!   request, the blob's bytes written from this process's own mapping of
//!   the blob, read by the reader into a pre-faulted buffer, then the same
//!   sum.
//! * `blob-small` / `blob-large` (this process): create + write of the whole
//!   blob + seal + drop, through the author pool (`create`, sizes up to
//!   `SMALL_BLOB_MAX`) or a memfd of its own (`create_large`).
//!
//! The latency scenarios run in interleaved blocks (create, pass at every
//! size, threshold at every size and path; again); the first-map and
//! full-read repetitions alternate blob and socket.

use crate::Progress;
use crate::counters::{Snapshot, minor_faults};
use crate::cradle::Server;
use crate::report::{self, BlobReport, FirstMap, Latency};
use crate::transport::{Peer, SpawnOpts, spawn_peer};
use cradle_client::{
    Blob, BlobHandle, BlobRef, CallOptions, Client, ClientOptions, SMALL_BLOB_MAX, WaitMode,
};
use ipc_rpc::builtin::Ping;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ChildStdout;
use std::time::{Duration, Instant};

pub(crate) const CREATE: &str = "blob-create-seal";
pub(crate) const PASS: &str = "blob-pass-mapped";
pub(crate) const SMALL: &str = "blob-small";
pub(crate) const LARGE: &str = "blob-large";
/// The reference: an 8-byte `Ping` on the author's client, same run.
pub(crate) const PING: &str = "ping-same-client";
/// The phases of `blob-create-seal`, timed one by one.
pub(crate) const PHASES: [&str; 4] = ["create", "write_at", "seal", "drop"];
/// Creates counted for page faults (docs/design.md §9: 0 over 10k creates from a
/// warm pool).
pub(crate) const FAULT_OPS: u64 = 10_000;
/// The size of the create + write + seal scenario.
pub(crate) const CREATE_LEN: usize = 4096;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
pub(crate) const GIB: usize = 1 << 30;
const PAGE: usize = 4096;
/// The author writes big blobs this much at a time.
const CHUNK: usize = MIB;
/// Untimed operations per scenario before the measured blocks. The
/// creates are enough to go round the session's rings (256 KiB each way by
/// default; ~64 bytes each way per create) several times, so that the
/// rings' first-touch page faults are behind us.
const WARM_CREATES: u64 = 20_000;
/// The server's polling tail (`--spin-us 20000`) plus a margin: the pause
/// before a socket transfer, which must not share the 2 vCPUs with it.
const COOL_DOWN: Duration = Duration::from_millis(25);
const WARM_PASSES: u64 = 200;
const WARM_THRESHOLD: u64 = 8;

/// Sizes of the pass scenario: those up to `--blob-max`, and that one.
const PASS_SIZES: [usize; 6] = [4 * KIB, 64 * KIB, MIB, 16 * MIB, 256 * MIB, GIB];
/// Sizes of the first-map and full-read scenarios (large blobs only).
const FIRST_SIZES: [usize; 5] = [MIB, 16 * MIB, 64 * MIB, 256 * MIB, GIB];
/// Sizes of the small/large threshold.
const THRESHOLD_FULL: [usize; 11] = [
    4 * KIB,
    8 * KIB,
    16 * KIB,
    32 * KIB,
    64 * KIB,
    128 * KIB,
    256 * KIB,
    512 * KIB,
    MIB,
    2 * MIB,
    4 * MIB,
];
const THRESHOLD_QUICK: [usize; 5] = [4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB];

/// The entry size of the disk-tier scenario (issue 7's target names it).
const DISK_LEN: usize = 64 << 20;

/// What the blob part of a run measures.
#[derive(Debug, Clone)]
pub(crate) struct BlobPlan {
    /// Operations per latency scenario, all blocks.
    pub(crate) ops: u64,
    pub(crate) blocks: usize,
    pub(crate) pass_sizes: Vec<usize>,
    pub(crate) first_sizes: Vec<usize>,
    pub(crate) threshold_sizes: Vec<usize>,
    /// Operations per threshold size and path, all blocks.
    pub(crate) threshold_ops: u64,
    /// Repetitions of the first-map and socket measurements per size.
    pub(crate) reps: usize,
}

impl BlobPlan {
    pub(crate) fn new(ops: u64, blocks: usize, max: usize, quick: bool) -> Self {
        let mut pass_sizes: Vec<usize> = PASS_SIZES.into_iter().filter(|&s| s <= max).collect();
        if !pass_sizes.contains(&max) {
            pass_sizes.push(max);
        }
        pass_sizes.sort_unstable();
        let mut first_sizes: Vec<usize> = FIRST_SIZES.into_iter().filter(|&s| s <= max).collect();
        if max > SMALL_BLOB_MAX && !first_sizes.contains(&max) {
            first_sizes.push(max);
        }
        first_sizes.sort_unstable();
        Self {
            ops,
            blocks,
            pass_sizes,
            first_sizes,
            threshold_sizes: if quick {
                THRESHOLD_QUICK.to_vec()
            } else {
                THRESHOLD_FULL.to_vec()
            },
            threshold_ops: (ops / if quick { 16 } else { 8 }).max(8 * blocks as u64),
            reps: if quick { 3 } else { 7 },
        }
    }
}

/// `--blob-max`: bytes, or a number with K, M or G (KiB, MiB, GiB accepted).
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let lower = s.trim().to_ascii_lowercase();
    let t = lower.strip_suffix("ib").unwrap_or(&lower);
    let (num, mul) = match t.as_bytes().last() {
        Some(b'k') => (&t[..t.len() - 1], KIB),
        Some(b'm') => (&t[..t.len() - 1], MIB),
        Some(b'g') => (&t[..t.len() - 1], GIB),
        _ => (t, 1),
    };
    let n: usize = num
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a size: {e}"))?;
    let bytes = n
        .checked_mul(mul)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if (64 * KIB..=4 * GIB).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(format!("{s:?}: between 64K and 4G"))
    }
}

/// The wrapping sum of the little-endian `u64` words of `b` (a last partial
/// word zero-padded): the work both sides of the full-read comparison do.
pub(crate) fn sum_words(b: &[u8]) -> u64 {
    let (words, rest) = b.as_chunks::<8>();
    let mut acc = words
        .iter()
        .fold(0u64, |a, w| a.wrapping_add(u64::from_le_bytes(*w)));
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        acc = acc.wrapping_add(u64::from_le_bytes(last));
    }
    acc
}

/// Reads one byte of every page of `b`, so that each page is touched once
/// (the first touch of a page of a fresh mapping faults it in).
fn touch_pages(b: &[u8]) -> u64 {
    let mut acc = 0u64;
    for i in (0..b.len()).step_by(PAGE) {
        // SAFETY: `i < b.len()`, so the pointer is to an initialised byte of
        // a live slice; a volatile read only so that the loop is kept.
        let v = unsafe { std::ptr::read_volatile(b.as_ptr().add(i)) };
        acc = acc.wrapping_add(u64::from(v));
    }
    acc
}

fn elapsed_ns(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A latency scenario whose sample vector is allocated and touched up front
/// (so that recording a sample does not fault a page in the measured loop).
pub(crate) fn latency(name: &'static str, size: usize, total: u64) -> Latency {
    let total = usize::try_from(total).unwrap_or(usize::MAX);
    let mut samples = Vec::with_capacity(total);
    samples.resize(total, u64::MAX);
    samples.clear();
    Latency {
        name,
        payload: size,
        baseline: name,
        loaded: false,
        samples,
        block_p50: Vec::new(),
        client_wakes: 0,
        server_wakes: None,
        allocs: 0,
        minflt: 0,
    }
}

/// One measured block of `n` operations of `op`, timed one by one in this
/// process, with this process's counters.
pub(crate) fn measure(
    l: &mut Latency,
    n: u64,
    mut op: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let first = l.samples.len();
    let c0 = Snapshot::now();
    for _ in 0..n {
        let t = Instant::now();
        op()?;
        l.samples.push(elapsed_ns(t));
    }
    let c = c0.delta(&Snapshot::now());
    l.client_wakes += c.wakes;
    l.allocs += c.allocs;
    l.minflt += c.minflt;
    l.block_p50.push(block_p50(&l.samples[first..]));
    Ok(())
}

fn block_p50(s: &[u64]) -> u64 {
    let mut v = s.to_vec();
    v.sort_unstable();
    report::percentile(&v, 0.5)
}

/// One operation of the create scenarios: create (`large`: `create_large`,
/// else `create`, which must take the author pool), write every byte from
/// `bytes`, seal, drop the `Blob` (its release is batched).
fn create_seal(client: &Client, len: usize, large: bool, bytes: &[u8]) -> Result<(), String> {
    let made = if large {
        client.create_large(len)
    } else {
        client.create(len)
    };
    let mut w = made.map_err(|e| format!("create {len} B: {e}"))?;
    if w.is_large() != large {
        return Err(format!(
            "create({len}) made a {} blob",
            if w.is_large() { "large" } else { "small" }
        ));
    }
    w.write_at(0, &bytes[..len]);
    let blob = w.seal().map_err(|e| format!("seal {len} B: {e}"))?;
    drop(blob);
    Ok(())
}

/// `blob-create-seal` with each phase timed on its own (four more clock
/// reads per operation); adds each phase's nanoseconds to `phases`.
fn create_seal_phases(
    client: &Client,
    bytes: &[u8],
    phases: &mut [Vec<u64>; 4],
) -> Result<(), String> {
    let t0 = Instant::now();
    let mut w = client
        .create(CREATE_LEN)
        .map_err(|e| format!("create {CREATE_LEN} B: {e}"))?;
    let t1 = Instant::now();
    w.write_at(0, &bytes[..CREATE_LEN]);
    let t2 = Instant::now();
    let blob = w.seal().map_err(|e| format!("seal {CREATE_LEN} B: {e}"))?;
    let t3 = Instant::now();
    drop(blob);
    let t4 = Instant::now();
    for (v, (a, b)) in phases
        .iter_mut()
        .zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4)])
    {
        v.push(u64::try_from((b - a).as_nanos()).unwrap_or(u64::MAX));
    }
    Ok(())
}

/// The reference operation: an 8-byte `Ping`, its echo checked in place.
fn ping(client: &Client, msg: &Vec<u8>) -> Result<(), String> {
    let opts = CallOptions {
        timeout: Duration::from_secs(30),
        wait: WaitMode::Spin,
    };
    let ok = client
        .call_with::<Ping, _>(msg, opts, |echo| echo.as_slice() == msg.as_slice())
        .map_err(|e| format!("ping: {e}"))?;
    if ok {
        Ok(())
    } else {
        Err("ping: the echo differs".into())
    }
}

/// Creates, writes and seals a blob of `len` bytes with `create` (the author
/// pool up to `SMALL_BLOB_MAX`, a memfd of its own above), [`CHUNK`] bytes
/// at a time from `bytes`, each chunk's index in its first 8 bytes; returns
/// it with its [`sum_words`].
fn author(client: &Client, len: usize, bytes: &mut [u8]) -> Result<(Blob, u64), String> {
    let mut w = client
        .create(len)
        .map_err(|e| format!("create {}: {e}", report::size(len)))?;
    let chunk = CHUNK.min(bytes.len());
    let (mut at, mut index, mut sum) = (0usize, 0u64, 0u64);
    while at < len {
        let k = chunk.min(len - at);
        let part = &mut bytes[..k];
        if k >= 8 {
            part[..8].copy_from_slice(&index.to_le_bytes());
        }
        w.write_at(at, part);
        // CHUNK is a multiple of 8: the chunks' sums add up to the blob's.
        sum = sum.wrapping_add(sum_words(part));
        at += k;
        index += 1;
    }
    let blob = w
        .seal()
        .map_err(|e| format!("seal {}: {e}", report::size(len)))?;
    Ok((blob, sum))
}

/// A handle as the reader's command line carries it.
fn handle_words(h: &BlobHandle) -> String {
    format!("{} {} {} {} {}", h.epoch, h.id, h.segment, h.offset, h.len)
}

/// The reader process, seen from here.
#[derive(Debug)]
struct Reader {
    peer: Peer,
    out: BufReader<ChildStdout>,
}

impl Reader {
    fn start(socket: &Path, sock: &UnixStream, core: Option<usize>) -> Result<Self, String> {
        let fd = sock.as_raw_fd();
        let mut peer = spawn_peer(
            &[
                "blob-reader".into(),
                socket.display().to_string(),
                fd.to_string(),
            ],
            &SpawnOpts {
                keep_fds: vec![fd],
                core,
                stdin: true,
                stdout: true,
                ..Default::default()
            },
        )?;
        let out = peer.child.stdout.take().ok_or("blob reader: no stdout")?;
        let mut r = Self {
            peer,
            out: BufReader::new(out),
        };
        match r.line()?.as_str() {
            "ready" => Ok(r),
            other => Err(format!("blob reader: unexpected {other:?}")),
        }
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        let n = self
            .out
            .read_line(&mut line)
            .map_err(|e| format!("blob reader: {e}"))?;
        if n == 0 {
            self.peer.check_alive()?;
            return Err("the blob reader closed its output".into());
        }
        Ok(line.trim_end().to_string())
    }

    /// Sends one command, returns the answer line.
    fn cmd(&mut self, cmd: &str) -> Result<String, String> {
        let stdin = self.peer.stdin.as_mut().ok_or("blob reader: stdin")?;
        if let Err(e) = writeln!(stdin, "{cmd}").and_then(|()| stdin.flush()) {
            self.peer.check_alive()?;
            return Err(format!("blob reader: {e}"));
        }
        self.line()
    }

    fn ok(&mut self, cmd: &str) -> Result<(), String> {
        match self.cmd(cmd)?.as_str() {
            "ok" => Ok(()),
            other => Err(format!("blob reader, {cmd:?}: unexpected {other:?}")),
        }
    }

    /// The numbers of an answer.
    fn numbers(&mut self, cmd: &str, n: usize) -> Result<Vec<u64>, String> {
        let line = self.cmd(cmd)?;
        let v = line
            .split_ascii_whitespace()
            .map(str::parse::<u64>)
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|e| format!("blob reader, {cmd:?}: {e} in {line:?}"))?;
        if v.len() != n {
            return Err(format!(
                "blob reader, {cmd:?}: {} numbers, expected {n}",
                v.len()
            ));
        }
        Ok(v)
    }

    /// `n` pass operations on the blob in `slot`, into `l` (if any).
    fn pass(&mut self, slot: usize, n: u64, l: Option<&mut Latency>) -> Result<(), String> {
        let count = usize::try_from(n).map_err(|e| e.to_string())?;
        let v = self.numbers(&format!("pass {slot} {n}"), 3 + count)?;
        if let Some(l) = l {
            l.allocs += v[0];
            l.minflt += v[1];
            l.client_wakes += v[2];
            l.samples.extend_from_slice(&v[3..]);
            l.block_p50.push(block_p50(&v[3..]));
        }
        Ok(())
    }
}

/// One socket transfer: a thread of this process waits for the reader's
/// 1-byte request and writes `bytes`; the reader times request, receipt and
/// sum. Returns the reader's nanoseconds.
fn socket_round(
    reader: &mut Reader,
    sock: &UnixStream,
    bytes: &[u8],
    sum: u64,
) -> Result<u64, String> {
    std::thread::scope(|s| {
        let sender = s.spawn(move || -> Result<(), String> {
            let mut end = sock;
            let mut go = [0u8; 1];
            end.read_exact(&mut go)
                .map_err(|e| format!("socket sender: {e}"))?;
            end.write_all(bytes)
                .map_err(|e| format!("socket sender: {e}"))
        });
        let answer = reader.numbers(&format!("sock {} {sum}", bytes.len()), 1);
        let sent = sender
            .join()
            .map_err(|_| "the socket sender panicked".to_string())?;
        let v = answer?;
        sent?;
        Ok(v[0])
    })
}

/// Runs every blob scenario against a server of its own.
pub(crate) fn run(
    server_bin: &Path,
    dir: &Path,
    plan: &BlobPlan,
    (here, there): (Option<usize>, Option<usize>),
    progress: &mut Progress,
    started: Instant,
) -> Result<BlobReport, String> {
    progress.show("blobs: starting the server and the reader ...");
    let server = Server::start(server_bin, dir, "blob", Some(20_000), there)?;
    let client = server.connect(WaitMode::Spin)?;
    let (sock, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    // A reader that died mid-transfer must not leave the sender waiting.
    sock.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| format!("socket timeout: {e}"))?;
    let mut reader = Reader::start(server.socket(), &theirs, here)?;
    drop(theirs);

    let biggest = plan.threshold_sizes.iter().copied().max().unwrap_or(0);
    let mut bytes: Vec<u8> = (0..biggest.max(CHUNK).max(CREATE_LEN))
        .map(|i| (i * 7 + 3) as u8)
        .collect();
    let blocks = plan.blocks.max(1);
    let per = (plan.ops / blocks as u64).max(1);
    let tper = (plan.threshold_ops / blocks as u64).max(1);
    let total = per * blocks as u64;
    let ttotal = tper * blocks as u64;

    let mut create = latency(CREATE, CREATE_LEN, total);
    let mut reference = latency(PING, 8, total);
    let ping_msg = vec![7u8; 8];
    let mut phases: [Vec<u64>; 4] = std::array::from_fn(|_| {
        let mut v = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        v.resize(v.capacity(), u64::MAX);
        v.clear();
        v
    });
    let mut pass: Vec<Latency> = plan
        .pass_sizes
        .iter()
        .map(|&s| latency(PASS, s, total))
        .collect();
    let mut small: Vec<Latency> = plan
        .threshold_sizes
        .iter()
        .filter(|&&s| s <= SMALL_BLOB_MAX)
        .map(|&s| latency(SMALL, s, ttotal))
        .collect();
    let mut large: Vec<Latency> = plan
        .threshold_sizes
        .iter()
        .map(|&s| latency(LARGE, s, ttotal))
        .collect();

    // The page-fault counter of a new session: one create (the author pool
    // is created and mapped, pre-faulted), then FAULT_OPS more, untimed. The
    // session's rings are touched for the first time as they fill.
    progress.show("blobs: page-fault counter, new session");
    let cold = {
        let fresh = server.connect(WaitMode::Spin)?;
        create_seal(&fresh, CREATE_LEN, false, &bytes)?;
        let c0 = Snapshot::now();
        for _ in 0..FAULT_OPS {
            create_seal(&fresh, CREATE_LEN, false, &bytes)?;
        }
        let c = c0.delta(&Snapshot::now());
        fresh.flush().map_err(|e| format!("flush: {e}"))?;
        c
    };

    // The passed blobs: authored here and held (the author's lease) until
    // the end of the pass scenario; the reader maps each once, checks its
    // length and sum, and keeps that first BlobRef.
    let mut held = Vec::with_capacity(plan.pass_sizes.len());
    for (slot, &size) in plan.pass_sizes.iter().enumerate() {
        progress.show(&format!(
            "blobs: writing and mapping the {} blob",
            report::size(size)
        ));
        let (blob, sum) = author(&client, size, &mut bytes)?;
        reader.ok(&format!("map {slot} {} {sum}", handle_words(blob.handle())))?;
        held.push(blob);
    }

    progress.show("blobs: warm-up");
    for _ in 0..WARM_CREATES {
        create_seal(&client, CREATE_LEN, false, &bytes)?;
    }
    for _ in 0..WARM_PASSES {
        ping(&client, &ping_msg)?;
    }
    for slot in 0..pass.len() {
        reader.pass(slot, WARM_PASSES, None)?;
    }
    for (i, &size) in plan.threshold_sizes.iter().enumerate() {
        for _ in 0..WARM_THRESHOLD {
            if i < small.len() {
                create_seal(&client, size, false, &bytes)?;
            }
            create_seal(&client, size, true, &bytes)?;
        }
    }

    // The page-fault counter: FAULT_OPS creates from the warm pool, untimed.
    progress.show("blobs: page-fault counter");
    let c0 = Snapshot::now();
    for _ in 0..FAULT_OPS {
        create_seal(&client, CREATE_LEN, false, &bytes)?;
    }
    let counted = c0.delta(&Snapshot::now());

    for b in 0..blocks {
        let show = |p: &mut Progress, what: &str| {
            p.show(&format!(
                "[blob block {}/{blocks}] {what} ({:.0} s)",
                b + 1,
                started.elapsed().as_secs_f64()
            ));
        };
        show(progress, CREATE);
        measure(&mut create, per, || {
            create_seal(&client, CREATE_LEN, false, &bytes)
        })?;
        show(progress, PING);
        measure(&mut reference, per, || ping(&client, &ping_msg))?;
        show(progress, &format!("{CREATE} by phase"));
        for _ in 0..per {
            create_seal_phases(&client, &bytes, &mut phases)?;
        }
        for (slot, l) in pass.iter_mut().enumerate() {
            show(progress, &format!("{PASS} {}", report::size(l.payload)));
            reader.pass(slot, per, Some(l))?;
        }
        for (i, l) in large.iter_mut().enumerate() {
            show(
                progress,
                &format!("{SMALL}/{LARGE} {}", report::size(l.payload)),
            );
            let size = l.payload;
            if let Some(s) = small.get_mut(i) {
                measure(s, tper, || create_seal(&client, size, false, &bytes))?;
            }
            measure(l, tper, || create_seal(&client, size, true, &bytes))?;
        }
    }
    for slot in 0..held.len() {
        reader.ok(&format!("unmap {slot}"))?;
    }
    drop(held);
    client.flush().map_err(|e| format!("flush: {e}"))?;

    // First map and full read against the socket, one size at a time (the
    // blob and the reader's buffer are freed before the next size).
    let mut first = Vec::with_capacity(plan.first_sizes.len());
    for &size in &plan.first_sizes {
        progress.show(&format!(
            "blobs: first map and full read, {} ({:.0} s)",
            report::size(size),
            started.elapsed().as_secs_f64()
        ));
        let (blob, sum) = author(&client, size, &mut bytes)?;
        let h = handle_words(blob.handle());
        // This process's own mapping of the blob: what the socket sends.
        let mine: BlobRef = client
            .get(blob.handle())
            .map_err(|e| format!("get {}: {e}", report::size(size)))?;
        let mut f = FirstMap {
            size,
            get_ns: Vec::new(),
            touch_ns: Vec::new(),
            minflt: Vec::new(),
            read_ns: Vec::new(),
            sock_ns: Vec::new(),
        };
        // Untimed: faults in the sender's mapping and the reader's buffer.
        std::thread::sleep(COOL_DOWN);
        socket_round(&mut reader, &sock, &mine, sum)?;
        for rep in 0..plan.reps {
            for blob_turn in [rep % 2 == 0, rep % 2 != 0] {
                if blob_turn {
                    let v = reader.numbers(&format!("first {h} {sum}"), 4)?;
                    f.get_ns.push(v[0]);
                    f.touch_ns.push(v[1]);
                    f.minflt.push(v[2]);
                    f.read_ns.push(v[3]);
                } else {
                    std::thread::sleep(COOL_DOWN);
                    f.sock_ns
                        .push(socket_round(&mut reader, &sock, &mine, sum)?);
                }
            }
        }
        reader.ok("sockfree")?;
        drop(mine);
        drop(blob);
        client.flush().map_err(|e| format!("flush: {e}"))?;
        first.push(f);
    }

    progress.show("blobs: stopping the server and the reader ...");
    drop(reader);
    drop(client);
    drop(server);

    progress.show("blobs: a memory miss served from the disk tier, 64 MiB");
    let disk = crate::disk::run(server_bin, dir, DISK_LEN, plan.reps.max(5))?;
    Ok(BlobReport {
        create,
        reference,
        phases: PHASES.into_iter().zip(phases).collect(),
        cold_minflt: cold.minflt,
        counted_ops: FAULT_OPS,
        counted_minflt: counted.minflt,
        counted_allocs: counted.allocs,
        counted_wakes: counted.wakes,
        pass,
        first,
        small,
        large,
        small_max: SMALL_BLOB_MAX,
        disk: Some(disk),
    })
}

/// The reader process (`cradle-bench peer blob-reader <socket> <fd>`): a
/// client of the blob server, and the receiving end of the socket baseline
/// (`fd`, an inherited socketpair end). Says `ready`, then answers each
/// command line with one line; exits at the end of its input, or with an
/// error, which the harness reports.
///
/// * `map SLOT HANDLE SUM`: `get`, check length and sum, keep the `BlobRef`.
/// * `pass SLOT N`: N × (`get` + drop), each timed; answers
///   `allocs minflt wakes ns...` (counters of this process over the loop).
/// * `unmap SLOT`: drops the kept `BlobRef`, flushes the releases.
/// * `first HANDLE SUM`: a fresh client; answers `get_ns touch_ns minflt read_ns`.
/// * `sock LEN SUM`: request, receive LEN bytes, sum; answers the nanoseconds.
/// * `sockfree`: frees the receive buffer.
pub(crate) fn reader(socket: &str, fd: RawFd) -> Result<(), String> {
    let opts = ClientOptions {
        timeout: Duration::from_secs(30),
        wait: WaitMode::Spin,
    };
    let client =
        Client::connect_with(socket, opts).map_err(|e| format!("connect {socket}: {e}"))?;
    let (_, file) = crate::peer::inherited(fd);
    let sock = UnixStream::from(OwnedFd::from(file));
    let mut held: HashMap<u64, BlobRef> = HashMap::new();
    let mut samples: Vec<u64> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut out = io::stdout().lock();
    let mut say = |s: &str| -> Result<(), String> {
        writeln!(out, "{s}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("stdout: {e}"))
    };
    say("ready")?;
    for line in io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        let w: Vec<&str> = line.split_ascii_whitespace().collect();
        let num = |i: usize| -> Result<u64, String> {
            w.get(i)
                .ok_or_else(|| format!("{line:?}: argument {i} missing"))?
                .parse::<u64>()
                .map_err(|e| format!("{line:?}: argument {i}: {e}"))
        };
        let handle = |i: usize| -> Result<BlobHandle, String> {
            Ok(BlobHandle {
                epoch: num(i)?,
                id: num(i + 1)?,
                segment: num(i + 2)?,
                offset: num(i + 3)?,
                len: num(i + 4)?,
            })
        };
        let answer = match w.first().copied() {
            Some("map") => {
                let h = handle(2)?;
                let r = client.get(&h).map_err(|e| format!("get {h}: {e}"))?;
                if r.len() as u64 != h.len || sum_words(&r) != num(7)? {
                    return Err(format!("{h}: wrong length or contents"));
                }
                held.insert(num(1)?, r);
                "ok".to_string()
            }
            Some("pass") => {
                let h = *held
                    .get(&num(1)?)
                    .ok_or_else(|| format!("{line:?}: nothing mapped in that slot"))?
                    .handle();
                let n = usize::try_from(num(2)?).map_err(|e| e.to_string())?;
                if samples.len() < n {
                    // Written now, so that the loop below faults no page in.
                    samples.resize(n, u64::MAX);
                }
                let c0 = Snapshot::now();
                for s in &mut samples[..n] {
                    let t = Instant::now();
                    let r = client.get(&h).map_err(|e| format!("get {h}: {e}"))?;
                    let len = r.len();
                    drop(r);
                    *s = elapsed_ns(t);
                    if len as u64 != h.len {
                        return Err(format!("{h}: a ref of {len} bytes"));
                    }
                }
                let c = c0.delta(&Snapshot::now());
                let mut a = format!("{} {} {}", c.allocs, c.minflt, c.wakes);
                for s in &samples[..n] {
                    let _ = write!(a, " {s}");
                }
                a
            }
            Some("unmap") => {
                held.remove(&num(1)?);
                client.flush().map_err(|e| format!("flush: {e}"))?;
                "ok".to_string()
            }
            Some("first") => first_map(socket, opts, &handle(1)?, num(6)?)?,
            Some("sock") => {
                let len = usize::try_from(num(1)?).map_err(|e| e.to_string())?;
                let sum = num(2)?;
                if buf.len() != len {
                    drop(std::mem::take(&mut buf));
                    // Non-zero: written now, every page faulted in before timing.
                    buf = vec![0x5a; len];
                }
                let t = Instant::now();
                let mut end = &sock;
                end.write_all(b"g")
                    .map_err(|e| format!("socket request: {e}"))?;
                end.read_exact(&mut buf)
                    .map_err(|e| format!("socket receive: {e}"))?;
                let got = sum_words(&buf);
                let ns = elapsed_ns(t);
                if got != sum {
                    return Err(format!("{len} bytes over the socket: wrong sum"));
                }
                ns.to_string()
            }
            Some("sockfree") => {
                drop(std::mem::take(&mut buf));
                "ok".to_string()
            }
            _ => return Err(format!("unknown command {line:?}")),
        };
        say(&answer)?;
    }
    Ok(())
}

/// The first map of `h` by a fresh client of this process: the `get`, the
/// first touch of every page, and the full read with the pages present.
fn first_map(
    socket: &str,
    opts: ClientOptions,
    h: &BlobHandle,
    sum: u64,
) -> Result<String, String> {
    let fresh = Client::connect_with(socket, opts).map_err(|e| format!("connect {socket}: {e}"))?;
    // One call first: the session's rings are faulted in and the server is
    // polling, so the `get` below is the blob's cost only.
    fresh
        .call::<Ping>(&vec![0u8; 8])
        .map_err(|e| format!("ping: {e}"))?;
    let t = Instant::now();
    let r = fresh.get(h).map_err(|e| format!("get {h}: {e}"))?;
    let get_ns = elapsed_ns(t);
    let f0 = minor_faults();
    let t = Instant::now();
    let touched = touch_pages(&r);
    let touch_ns = elapsed_ns(t);
    let minflt = minor_faults().saturating_sub(f0);
    let t = Instant::now();
    let got = sum_words(&r);
    let read_ns = elapsed_ns(t);
    std::hint::black_box(touched);
    if r.len() as u64 != h.len || got != sum {
        return Err(format!("{h}: wrong length or contents"));
    }
    drop(r);
    fresh.flush().map_err(|e| format!("flush: {e}"))?;
    Ok(format!("{get_ns} {touch_ns} {minflt} {read_ns}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("4K").is_err());
        assert!(parse_size("5G").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn plans() {
        let p = BlobPlan::new(4000, 8, 64 << 20, true);
        assert_eq!(
            p.pass_sizes,
            [4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20]
        );
        assert_eq!(p.first_sizes, [1 << 20, 16 << 20, 64 << 20]);
        let p = BlobPlan::new(10_000, 16, 1 << 30, false);
        assert_eq!(p.pass_sizes.len(), 6);
        assert_eq!(p.first_sizes.last(), Some(&(1 << 30)));
        assert_eq!(p.threshold_ops, 1250);
    }

    #[test]
    fn word_sums() {
        let b: Vec<u8> = (0..20u8).collect();
        let whole = sum_words(&b);
        let w0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let w1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let w2 = u64::from_le_bytes([16, 17, 18, 19, 0, 0, 0, 0]);
        assert_eq!(whole, w0.wrapping_add(w1).wrapping_add(w2));
        assert_eq!(sum_words(&b[..8]).wrapping_add(sum_words(&b[8..])), whole);
        assert_eq!(touch_pages(&[3u8; 8193]), 9);
    }
}
