//! The memo scenarios (`--memo`): memoized calls of the stock server's
//! `cradle.example.work` against a server of their own, in interleaved
//! blocks, with the baselines measured in the same blocks:
//!
//! * `ping-same-size`: an unmemoized call (`cradle.ping`, answered on the
//!   worker) whose request has the size of the memoized call's request;
//! * `memo-hit-small`: a hit, small request and response, no blob;
//! * `memo-bypass-small`: the same call with `MEMO_BYPASS` (the handler
//!   runs on the offload pool, nothing is stored);
//! * `memo-hit-64MiB`: a hit whose request passes a 64 MiB blob (digested
//!   once, before) and whose answer leases a 64 MiB result blob;
//! * `memo-miss` and `memo-bypass` with a 5 ms handler and a 4 KiB result
//!   blob: what a miss adds (key, digest of the result, storing the entry);
//! * the first digest of a blob: `cradle.blob.digest` on fresh blobs, and
//!   BLAKE3 in this process on one thread and with rayon, in GiB/s.

use crate::Progress;
use crate::blobs::{latency, measure};
use crate::cradle::Server;
use crate::report::{self, Latency, Target, block_ratio, summarize};
use cradle_client::{Blob, Client, MemoMode, WaitMode};
use ipc_rpc::builtin::Ping;
use ipc_rpc::example::{Work, WorkRequest};
use ipc_rpc::memo::BlobDigest;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

pub(crate) const PING_SAME: &str = "ping-same-size";
pub(crate) const HIT_SMALL: &str = "memo-hit-small";
pub(crate) const BYPASS_SMALL: &str = "memo-bypass-small";
pub(crate) const HIT_LARGE: &str = "memo-hit-64MiB";
pub(crate) const MISS: &str = "memo-miss-5ms";
pub(crate) const BYPASS: &str = "memo-bypass-5ms";

/// The blob argument and result of the large hit.
const LARGE: usize = 64 << 20;
/// The handler time of the miss scenarios.
const HANDLER_MS: u32 = 5;

/// Digest rates, GiB/s.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DigestRates {
    pub(crate) bytes: usize,
    /// `cradle.blob.digest` of a fresh blob, end to end (best of 3).
    pub(crate) server: f64,
    /// BLAKE3 in this process, one thread (best of 3).
    pub(crate) one_thread: f64,
    /// BLAKE3 in this process, rayon (best of 3).
    pub(crate) rayon: f64,
}

/// What the memo scenarios measured.
#[derive(Debug)]
pub(crate) struct MemoReport {
    pub(crate) latency: Vec<Latency>,
    pub(crate) digest: DigestRates,
}

/// Iterations per block: small calls, large hits, misses.
fn per_block(quick: bool) -> (u64, u64, u64) {
    if quick {
        (500, 100, 4)
    } else {
        (5000, 1000, 16)
    }
}

fn err(what: &str) -> impl Fn(cradle_client::CallError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn filled(c: &Client, len: usize) -> Result<Blob, String> {
    let mut w = c.create(len).map_err(|e| format!("create: {e}"))?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 13 + 5) as u8).collect();
    let mut at = 0;
    while at < len {
        let n = chunk.len().min(len - at);
        w.write_at(at, &chunk[..n]);
        at += n;
    }
    w.seal().map_err(|e| format!("seal: {e}"))
}

fn gib_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / (1u64 << 30) as f64
}

/// Best of 3: `f` hashes `bytes` once.
fn best(bytes: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    let mut rate: f64 = 0.0;
    for _ in 0..3 {
        let t = Instant::now();
        f()?;
        rate = rate.max(gib_s(bytes, t.elapsed().as_secs_f64()));
    }
    Ok(rate)
}

pub(crate) fn run(
    server_bin: &Path,
    dir: &Path,
    blocks: usize,
    quick: bool,
    there: Option<usize>,
    progress: &mut Progress,
) -> Result<MemoReport, String> {
    progress.show("memo: starting the server ...");
    let server = Server::start(server_bin, dir, "memo", Some(20_000), there)?;
    let c = server.connect(WaitMode::Spin)?;
    let (n_small, n_large, n_miss) = per_block(quick);
    let blocks = blocks.max(1);

    let small = WorkRequest {
        seed: 11,
        sleep_ms: 0,
        input: None,
        out_len: 0,
    };
    let req_len = ipc_rpc::encode_to_vec(
        &small,
        &mut ipc_rpc::rkyv::ser::allocator::Arena::new(),
        1 << 20,
    )
    .map_err(|e| format!("encode: {e}"))?
    .len();
    let ping = vec![7u8; req_len];
    progress.show("memo: the 64 MiB argument and result (first run, digests)");
    let arg = filled(&c, LARGE)?;
    let large = WorkRequest {
        seed: 12,
        sleep_ms: 0,
        input: Some(*arg.handle()),
        out_len: LARGE as u64,
    };
    // The first run: digests the argument, makes and stores the result.
    let first = c.call::<Work>(&large).map_err(err("large run"))?;
    let out = first.output.ok_or("no result blob")?;
    // Held for the whole scenario: later adopts reuse its mapping.
    let keep = c.adopt(&out).map_err(|e| format!("adopt: {e}"))?;
    c.call::<Work>(&small).map_err(err("small run"))?;

    let mut l_ping = latency(PING_SAME, req_len, n_small * blocks as u64);
    let mut l_hit = latency(HIT_SMALL, req_len, n_small * blocks as u64);
    let mut l_bypass_small = latency(BYPASS_SMALL, req_len, n_small * blocks as u64);
    let mut l_large = latency(HIT_LARGE, LARGE, n_large * blocks as u64);
    let mut l_miss = latency(MISS, req_len, n_miss * blocks as u64);
    let mut l_bypass = latency(BYPASS, req_len, n_miss * blocks as u64);
    let mut seed = 1_000_000u64;
    for b in 0..blocks {
        progress.show(&format!("memo: block {}/{blocks}", b + 1));
        measure(&mut l_ping, n_small, || {
            c.call::<Ping>(&ping).map(|_| ()).map_err(err("ping"))
        })?;
        measure(&mut l_hit, n_small, || {
            let d = c.call::<Work>(&small).map_err(err("hit"))?;
            (d.run == 2)
                .then_some(())
                .ok_or_else(|| "the small hit ran".into())
        })?;
        measure(&mut l_bypass_small, n_small, || {
            c.call_memo::<Work>(&small, MemoMode::Bypass)
                .map(|_| ())
                .map_err(err("bypass"))
        })?;
        measure(&mut l_large, n_large, || {
            let d = c.call::<Work>(&large).map_err(err("large hit"))?;
            let h = d.output.ok_or("no result blob")?;
            if d.run != first.run || h.id != out.id {
                return Err("the large hit ran".into());
            }
            drop(c.adopt(&h).map_err(|e| format!("adopt: {e}"))?);
            Ok(())
        })?;
        let fresh = |seed: u64| WorkRequest {
            seed,
            sleep_ms: HANDLER_MS,
            input: None,
            out_len: 4096,
        };
        measure(&mut l_miss, n_miss, || {
            seed += 1;
            let d = c.call::<Work>(&fresh(seed)).map_err(err("miss"))?;
            drop(
                c.adopt(&d.output.ok_or("no result")?)
                    .map_err(|e| e.to_string())?,
            );
            Ok(())
        })?;
        measure(&mut l_bypass, n_miss, || {
            seed += 1;
            let d = c
                .call_memo::<Work>(&fresh(seed), MemoMode::Bypass)
                .map_err(err("bypass"))?;
            drop(
                c.adopt(&d.output.ok_or("no result")?)
                    .map_err(|e| e.to_string())?,
            );
            Ok(())
        })?;
        c.flush().map_err(err("flush"))?;
    }
    drop(keep);

    progress.show("memo: first digests");
    let dbytes = if quick { 64 << 20 } else { 256 << 20 };
    let server_rate = {
        let mut rate: f64 = 0.0;
        for _ in 0..3 {
            let b = filled(&c, dbytes)?;
            let t = Instant::now();
            c.call::<BlobDigest>(b.handle()).map_err(err("digest"))?;
            rate = rate.max(gib_s(dbytes, t.elapsed().as_secs_f64()));
        }
        rate
    };
    let buf: Vec<u8> = (0..dbytes).map(|i| (i * 13 + 5) as u8).collect();
    let one_thread = best(dbytes, || {
        std::hint::black_box(blake3::hash(&buf));
        Ok(())
    })?;
    let rayon = best(dbytes, || {
        let mut h = blake3::Hasher::new();
        h.update_rayon(&buf);
        std::hint::black_box(h.finalize());
        Ok(())
    })?;
    Ok(MemoReport {
        latency: vec![l_ping, l_hit, l_bypass_small, l_large, l_miss, l_bypass],
        digest: DigestRates {
            bytes: dbytes,
            server: server_rate,
            one_thread,
            rayon,
        },
    })
}

impl MemoReport {
    fn find(&self, name: &str) -> Option<&Latency> {
        self.latency.iter().find(|l| l.name == name)
    }

    fn ratio(&self, a: &str, b: &str) -> Option<f64> {
        block_ratio(self.find(a)?, self.find(b)?)
    }

    pub(crate) fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(
            "\nmemo (cradle.example.work on a cradle-server --spin-us 20000 of its own; \
             client WaitMode::Spin)\n\n",
        );
        let _ = writeln!(
            s,
            "{:<18} {:>7} {:>8} {:>9} {:>9} {:>9} {:>10}",
            "scenario", "size", "n", "p50 us", "p90 us", "p99 us", "max us"
        );
        for l in &self.latency {
            let m = summarize(&l.samples);
            let us = |x: u64| x as f64 / 1e3;
            let _ = writeln!(
                s,
                "{:<18} {:>7} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>10.1}",
                l.name,
                report::size(l.payload),
                m.n,
                us(m.p50),
                us(m.p90),
                us(m.p99),
                us(m.max)
            );
        }
        let d = &self.digest;
        let _ = writeln!(
            s,
            "\nfirst digest of a {} blob: {:.2} GiB/s through cradle.blob.digest; \
             BLAKE3 here: {:.2} GiB/s on one thread, {:.2} GiB/s with rayon",
            report::size(d.bytes),
            d.server,
            d.one_thread,
            d.rayon
        );
        s
    }

    pub(crate) fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let mut push = |what: &str, scenario: &str, r: Option<f64>, limit: f64, base: &str| {
            out.push(Target {
                what: what.into(),
                scenario: scenario.into(),
                payload: None,
                measured: r,
                unit: "x",
                pass: r.map(|r| r <= limit),
                detail: match r {
                    Some(r) => format!("{r:.2}x {base} (limit {limit}x)"),
                    None => "not measured".into(),
                },
            });
        };
        push(
            "memo hit, small, p50 <= 1.5x an unmemoized call of its size",
            HIT_SMALL,
            self.ratio(HIT_SMALL, PING_SAME),
            1.5,
            PING_SAME,
        );
        push(
            "memo hit, 64 MiB blob in and out, p50 <= 2x the small hit",
            HIT_LARGE,
            self.ratio(HIT_LARGE, HIT_SMALL),
            2.0,
            HIT_SMALL,
        );
        push(
            "memo miss, 5 ms handler, p50 <= 1.05x the bypassed call",
            MISS,
            self.ratio(MISS, BYPASS),
            1.05,
            BYPASS,
        );
        out
    }

    pub(crate) fn json_items(&self) -> Vec<Value> {
        let mut v: Vec<Value> = self
            .latency
            .iter()
            .map(|l| {
                let m = summarize(&l.samples);
                json!({
                    "kind": "latency",
                    "name": l.name,
                    "payload_bytes": l.payload,
                    "n": m.n,
                    "p50_ns": m.p50,
                    "p90_ns": m.p90,
                    "p99_ns": m.p99,
                    "p999_ns": m.p999,
                    "max_ns": m.max,
                    "blocks": l.block_p50.len(),
                })
            })
            .collect();
        let d = &self.digest;
        v.push(json!({
            "kind": "digest",
            "name": "first-digest",
            "payload_bytes": d.bytes,
            "server_gib_per_s": d.server,
            "blake3_one_thread_gib_per_s": d.one_thread,
            "blake3_rayon_gib_per_s": d.rayon,
        }));
        v
    }
}
