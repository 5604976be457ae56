//! Results: percentiles, per-block ratios, the docs/design.md §9 targets, and the
//! three outputs (terminal table, JSON, SVG plot).

use serde_json::Value;
use std::fmt::Write as _;

/// The floor every latency scenario is compared with.
pub(crate) const FLOOR: &str = "floor-spin";
/// The second reference column: a Unix-socket ping-pong.
pub(crate) const UNIX: &str = "unix-socket";
/// The default wait modes on both sides.
pub(crate) const DEFAULT: &str = "cradle-default";
/// Pipelined pings over a Unix socket (the loaded pipelined target's baseline).
pub(crate) const UNIX_PIPELINED: &str = "unix-socket-pipelined";
/// The spinning call against a server with its metrics endpoint on.
pub(crate) const SPIN_METRICS: &str = "cradle-spin-metrics";
/// Pipelined calls against that server, nobody scraping.
pub(crate) const PIPELINED_METRICS: &str = "cradle-pipelined-metrics";
/// The same while a scraper fetches /metrics every 100 ms.
pub(crate) const PIPELINED_SCRAPED: &str = "cradle-pipelined-scraped";
/// "8 B", "4 KiB", "64 MiB".
fn size_label(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// The echo served by a provider process, everyone spinning.
pub(crate) const PROVIDED_SPIN: &str = "provided-spin";
/// The echo served by a provider process, everyone asleep between calls.
pub(crate) const PROVIDED_SLEEP: &str = "provided-sleep-both";
/// Pipelined echo calls through one provider process.
pub(crate) const PROVIDED_PIPELINED: &str = "provided-pipelined";
/// A blob passed to a provider and back (payload: the blob's size).
pub(crate) const PROVIDED_BLOB: &str = "provided-blob";

/// One latency scenario: a transport at one payload size.
#[derive(Debug)]
pub(crate) struct Latency {
    pub(crate) name: &'static str,
    pub(crate) payload: usize,
    /// The baseline its `ratio_to_baseline` is taken against.
    pub(crate) baseline: &'static str,
    /// Measured while the `--load` hogs ran (its ratios are to the loaded
    /// baselines).
    pub(crate) loaded: bool,
    /// Every measured round trip, in nanoseconds, all blocks.
    pub(crate) samples: Vec<u64>,
    /// The p50 of each block, in block order.
    pub(crate) block_p50: Vec<u64>,
    pub(crate) client_wakes: u64,
    pub(crate) server_wakes: Option<u64>,
    pub(crate) allocs: u64,
    pub(crate) minflt: u64,
}

/// One throughput scenario (pipelined calls).
#[derive(Debug)]
pub(crate) struct Throughput {
    pub(crate) name: &'static str,
    /// Measured while the `--load` hogs ran.
    pub(crate) loaded: bool,
    pub(crate) clients: u32,
    pub(crate) window: usize,
    pub(crate) payload: usize,
    pub(crate) calls: u64,
    /// Calls per second of each block.
    pub(crate) block_rates: Vec<f64>,
    /// Counters of the measuring process (1-client case only).
    pub(crate) client_wakes: Option<u64>,
    pub(crate) server_wakes: Option<u64>,
    pub(crate) allocs: Option<u64>,
    /// Scrapes of the metrics endpoint during the scenario (the metrics
    /// scenarios only).
    pub(crate) scrapes: Option<u64>,
}

/// Percentiles of a latency scenario (HdrHistogram, 3 significant digits:
/// exact below 2,048 ns, within 0.1 % above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) n: u64,
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
}

/// An HdrHistogram of nanosecond samples: 1 ns to 1 hour, 3 significant
/// digits (longer samples count as 1 hour).
fn histogram(samples: &[u64]) -> hdrhistogram::Histogram<u64> {
    // Bounds are constants that HdrHistogram accepts.
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
        .expect("valid histogram bounds");
    for &ns in samples {
        h.saturating_record(ns.max(1));
    }
    h
}

/// Percentile `q` (0 < q <= 1) of samples (in any order); 0 if empty.
pub(crate) fn percentile(samples: &[u64], q: f64) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    histogram(samples).value_at_quantile(q)
}

pub(crate) fn summarize(samples: &[u64]) -> Summary {
    let h = histogram(samples);
    let q = |q: f64| {
        if samples.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    Summary {
        n: samples.len() as u64,
        p50: q(0.50),
        p90: q(0.90),
        p99: q(0.99),
        p999: q(0.999),
        // Exact, not the histogram's bucket edge.
        max: samples.iter().copied().max().unwrap_or(0),
    }
}

/// The median (mean of the middle two for an even count); `None` if empty.
pub(crate) fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// The median over blocks of `f(a's block p50, b's block p50)`.
fn per_block(a: &Latency, b: &Latency, f: impl Fn(f64, f64) -> f64) -> Option<f64> {
    let v: Vec<f64> = a
        .block_p50
        .iter()
        .zip(&b.block_p50)
        .filter(|(_, y)| **y > 0)
        .map(|(x, y)| f(*x as f64, *y as f64))
        .collect();
    median(&v)
}

/// The median of the per-block ratios `a / b` of the p50s.
pub(crate) fn block_ratio(a: &Latency, b: &Latency) -> Option<f64> {
    per_block(a, b, |x, y| x / y)
}

/// Everything one run produced.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) latency: Vec<Latency>,
    pub(crate) throughput: Vec<Throughput>,
    /// The blob scenarios, unless `--blobs off`.
    pub(crate) blobs: Option<BlobReport>,
    /// The memo scenarios, unless `--memo off`.
    pub(crate) memo: Option<crate::memo::MemoReport>,
    pub(crate) command: String,
    pub(crate) date: String,
    pub(crate) blocks: usize,
    pub(crate) pinned: bool,
    /// CPU hogs of the loaded slots (0: none ran).
    pub(crate) load: usize,
    pub(crate) seconds: f64,
}

/// One docs/design.md §9 target as measured in this run.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) what: String,
    pub(crate) scenario: String,
    pub(crate) payload: Option<usize>,
    /// The measured value (a ratio, or calls/s).
    pub(crate) measured: Option<f64>,
    pub(crate) unit: &'static str,
    pub(crate) pass: Option<bool>,
    pub(crate) detail: String,
}

impl Report {
    /// The idle scenario `name` at `payload`.
    pub(crate) fn find(&self, name: &str, payload: usize) -> Option<&Latency> {
        self.find_in(name, payload, false)
    }

    /// The scenario `name` at `payload`, idle or loaded.
    pub(crate) fn find_in(&self, name: &str, payload: usize, loaded: bool) -> Option<&Latency> {
        self.latency
            .iter()
            .find(|l| l.name == name && l.payload == payload && l.loaded == loaded)
    }

    /// `l` against `base` measured in the same conditions (idle or loaded).
    pub(crate) fn ratio_to(&self, l: &Latency, base: &str) -> Option<f64> {
        block_ratio(l, self.find_in(base, l.payload, l.loaded)?)
    }

    /// The median block rate of a throughput scenario.
    fn rate(&self, name: &str, loaded: bool) -> Option<f64> {
        self.throughput
            .iter()
            .find(|t| t.name == name && t.loaded == loaded)
            .and_then(|t| median(&t.block_rates))
    }

    /// The targets of docs/design.md §9 that this harness measures.
    pub(crate) fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        if !self.latency.is_empty() || !self.throughput.is_empty() {
            self.call_targets(&mut out);
        }
        if let Some(b) = &self.blobs {
            out.extend(b.targets());
        }
        if let Some(m) = &self.memo {
            out.extend(m.targets());
        }
        out
    }

    /// The targets of the call scenarios.
    fn call_targets(&self, out: &mut Vec<Target>) {
        for (payload, limit) in [(8usize, 3.0f64), (64, 4.0)] {
            let what = format!("spinning call {payload} B, p50 <= {limit}x the floor");
            let r = self
                .find("cradle-spin", payload)
                .and_then(|c| self.ratio_to(c, FLOOR));
            out.push(Target {
                what,
                scenario: "cradle-spin".into(),
                payload: Some(payload),
                measured: r,
                unit: "x floor-spin",
                pass: r.map(|r| r <= limit),
                detail: match r {
                    Some(r) => format!("{r:.2}x (limit {limit}x)"),
                    None => format!("not measured ({payload} B not in --payloads)"),
                },
            });
        }
        let speedup = match (self.find("cradle-spin", 8), self.find(UNIX, 8)) {
            (Some(c), Some(u)) => block_ratio(u, c),
            _ => None,
        };
        out.push(Target {
            what: "spinning call 8 B, >= 20x faster than the Unix socket".into(),
            scenario: "cradle-spin".into(),
            payload: Some(8),
            measured: speedup,
            unit: "x faster than unix-socket",
            pass: speedup.map(|s| s >= 20.0),
            detail: match speedup {
                Some(s) => format!("{s:.1}x faster (need >= 20x)"),
                None => "not measured (8 B not in --payloads)".into(),
            },
        });
        for name in ["cradle-sleep", "cradle-sleep-both"] {
            let (ratio, diff) = match (self.find(name, 8), self.find("floor-futex", 8)) {
                (Some(c), Some(f)) => (block_ratio(c, f), per_block(c, f, |x, y| x - y)),
                _ => (None, None),
            };
            let pass = match (ratio, diff) {
                (Some(r), Some(d)) => Some(r <= 1.5 || d <= 3000.0),
                _ => None,
            };
            out.push(Target {
                what: format!("{name} 8 B, p50 <= 1.5x floor-futex (or <= futex + 3 us)"),
                scenario: name.into(),
                payload: Some(8),
                measured: ratio,
                unit: "x floor-futex",
                pass,
                detail: match (ratio, diff) {
                    (Some(r), Some(d)) => format!("{r:.2}x, {:+.2} us over the futex", d / 1e3),
                    _ => "not measured (8 B not in --payloads)".into(),
                },
            });
        }
        // Async (tokio) client against the sync client in the same mode
        // (docs/design.md §9: p50 <= 2x), ratio of per-block p50s.
        for (name, sync) in [
            ("cradle-async", "cradle-spin"),
            ("cradle-async-sleep", "cradle-sleep-both"),
        ] {
            let r = match (self.find(name, 8), self.find(sync, 8)) {
                (Some(a), Some(b)) => block_ratio(a, b),
                _ => None,
            };
            out.push(Target {
                what: format!("{name} 8 B, p50 <= 2x {sync}"),
                scenario: name.into(),
                payload: Some(8),
                measured: r,
                unit: "x sync client",
                pass: r.map(|r| r <= 2.0),
                detail: match r {
                    Some(r) => format!("{r:.2}x {sync} (limit 2x)"),
                    None => "not measured".into(),
                },
            });
        }
        self.metrics_targets(out);
        self.provided_figures(out);
        let rate = self.rate("cradle-pipelined", false);
        out.push(Target {
            what: "pipelined 8 B, window 256, 1 client: >= 10 M calls/s".into(),
            scenario: "cradle-pipelined".into(),
            payload: Some(8),
            measured: rate,
            unit: "calls/s",
            pass: rate.map(|r| r >= 10e6),
            detail: match rate {
                Some(r) => format!("{:.2} M calls/s (need >= 10 M)", r / 1e6),
                None => "not measured".into(),
            },
        });
        self.load_targets(out);
    }

    /// Issue 18's targets: waiting on a busy machine (the `--load` slots)
    /// and the idle fast paths that must not regress for it.
    fn load_targets(&self, out: &mut Vec<Target>) {
        let mut push = |what: String, scenario: &str, measured: Option<f64>, unit, pass, detail| {
            out.push(Target {
                what,
                scenario: scenario.into(),
                payload: Some(8),
                measured,
                unit,
                pass,
                detail,
            })
        };
        let q = |l: &Latency, q: f64| percentile(&l.samples, q) as f64;
        let not = |why: &str| format!("not measured ({why})");
        // Loaded default mode against the loaded futex and Unix socket.
        let def = self.find_in(DEFAULT, 8, true);
        for (base, limit) in [("floor-futex", 1.0f64), (UNIX, 0.5)] {
            let b = self.find_in(base, 8, true);
            let (r50, r90) = match (def, b) {
                (Some(d), Some(b)) => (block_ratio(d, b), Some(q(d, 0.9) / q(b, 0.9).max(1.0))),
                _ => (None, None),
            };
            let worst = match (r50, r90) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            push(
                format!("loaded: {DEFAULT} 8 B p50 and p90 <= {limit}x {base} loaded"),
                DEFAULT,
                worst,
                "x loaded baseline (worse of p50, p90)",
                worst.map(|w| w <= limit),
                match (r50, r90) {
                    (Some(a), Some(b)) => format!("p50 {a:.2}x, p90 {b:.2}x (limit {limit}x)"),
                    _ => not("no --load run at 8 B"),
                },
            );
        }
        let r = match (
            self.find_in("cradle-sleep", 8, true),
            self.find_in("pipe", 8, true),
        ) {
            (Some(a), Some(b)) => block_ratio(a, b),
            _ => None,
        };
        push(
            "loaded: cradle-sleep 8 B p50 <= pipe loaded".into(),
            "cradle-sleep",
            r,
            "x pipe (loaded)",
            r.map(|r| r <= 1.0),
            r.map_or_else(
                || not("no --load run at 8 B"),
                |r| format!("{r:.2}x (limit 1x)"),
            ),
        );
        let r = match (
            self.find_in("cradle-async-sleep", 8, true),
            self.find_in("cradle-sleep-both", 8, true),
        ) {
            (Some(a), Some(b)) => block_ratio(a, b),
            _ => None,
        };
        push(
            "loaded: cradle-async-sleep 8 B p50 <= 2x cradle-sleep-both".into(),
            "cradle-async-sleep",
            r,
            "x cradle-sleep-both (loaded)",
            r.map(|r| r <= 2.0),
            r.map_or_else(
                || not("no --load run at 8 B"),
                |r| format!("{r:.2}x (limit 2x)"),
            ),
        );
        let r = self.find(DEFAULT, 8).and_then(|d| self.ratio_to(d, FLOOR));
        push(
            format!("idle: {DEFAULT} 8 B p50 <= 2x the floor"),
            DEFAULT,
            r,
            "x floor-spin",
            r.map(|r| r <= 2.0),
            r.map_or_else(
                || not("8 B not in --payloads"),
                |r| format!("{r:.2}x (limit 2x)"),
            ),
        );
        let r = match (
            self.find("cradle-sleep-both", 8),
            self.find("floor-futex", 8),
        ) {
            (Some(a), Some(b)) => block_ratio(a, b),
            _ => None,
        };
        push(
            "idle: cradle-sleep-both 8 B p50 <= 1.2x floor-futex".into(),
            "cradle-sleep-both",
            r,
            "x floor-futex",
            r.map(|r| r <= 1.2),
            r.map_or_else(
                || not("8 B not in --payloads"),
                |r| format!("{r:.2}x (limit 1.2x)"),
            ),
        );
        let r = self.rate("cradle-pipelined", false);
        push(
            "idle: pipelined 8 B, window 256, 1 client >= 10 M calls/s".into(),
            "cradle-pipelined",
            r,
            "calls/s",
            r.map(|r| r >= 10e6),
            r.map_or_else(
                || not("no pipelined run"),
                |r| format!("{:.2} M calls/s (need >= 10 M)", r / 1e6),
            ),
        );
        let (c, u) = (
            self.rate("cradle-pipelined", true),
            self.rate(UNIX_PIPELINED, true),
        );
        let r = match (c, u) {
            (Some(c), Some(u)) if u > 0.0 => Some(c / u),
            _ => None,
        };
        push(
            "loaded: pipelined 8 B >= 5x the Unix socket's pipelined rate".into(),
            "cradle-pipelined",
            r,
            "x unix-socket-pipelined (loaded)",
            r.map(|r| r >= 5.0),
            match (r, c, u) {
                (Some(r), Some(c), Some(u)) => format!(
                    "{r:.2}x: {:.2} against {:.2} M calls/s (need >= 5x)",
                    c / 1e6,
                    u / 1e6
                ),
                _ => not("no --load run"),
            },
        );
    }

    /// Provided calls against the direct (compiled-in) call in the same
    /// mode, and a 64 MiB blob pass against a 4 KiB one: reported (INFO),
    /// no target of docs/design.md §9 applies.
    fn provided_figures(&self, out: &mut Vec<Target>) {
        let pairs = [
            (PROVIDED_SPIN, 8, "cradle-spin", 8, "x direct call"),
            (PROVIDED_SLEEP, 8, "cradle-sleep-both", 8, "x direct call"),
            (
                PROVIDED_BLOB,
                64 << 20,
                PROVIDED_BLOB,
                4 << 10,
                "x 4 KiB blob",
            ),
        ];
        for (name, size, base, base_size, unit) in pairs {
            let (r, p50) = match (self.find(name, size), self.find(base, base_size)) {
                (Some(a), Some(b)) => (block_ratio(a, b), Some(summarize(&a.samples).p50)),
                _ => (None, None),
            };
            out.push(Target {
                what: format!(
                    "{name} {}, p50 against {base} {}",
                    size_label(size),
                    size_label(base_size)
                ),
                scenario: name.into(),
                payload: Some(size),
                measured: r,
                unit,
                pass: None,
                detail: match (r, p50) {
                    (Some(r), Some(p)) => format!(
                        "{r:.2}{} (p50 {:.2} us)",
                        unit.trim_start_matches('x'),
                        p as f64 / 1e3
                    ),
                    _ => "not measured".into(),
                },
            });
        }
    }

    /// The metrics endpoint's cost: the spinning call with metrics on
    /// against off, and pipelined throughput with a scraper at work against
    /// none (medians of per-block ratios, same run).
    fn metrics_targets(&self, out: &mut Vec<Target>) {
        let r = match (self.find(SPIN_METRICS, 8), self.find("cradle-spin", 8)) {
            (Some(on), Some(off)) => block_ratio(on, off),
            _ => None,
        };
        out.push(Target {
            what: "spinning call 8 B with --metrics, p50 <= 1.05x without".into(),
            scenario: SPIN_METRICS.into(),
            payload: Some(8),
            measured: r,
            unit: "x cradle-spin",
            pass: r.map(|r| r <= 1.05),
            detail: match r {
                Some(r) => format!("{r:.3}x cradle-spin (limit 1.05x)"),
                None => "not measured (8 B not in --payloads)".into(),
            },
        });
        let find = |name: &str| self.throughput.iter().find(|t| t.name == name);
        let ratios: Vec<f64> = match (find(PIPELINED_SCRAPED), find(PIPELINED_METRICS)) {
            (Some(a), Some(b)) => a
                .block_rates
                .iter()
                .zip(&b.block_rates)
                .filter(|(_, y)| **y > 0.0)
                .map(|(x, y)| x / y)
                .collect(),
            _ => Vec::new(),
        };
        let r = median(&ratios);
        let scrapes = find(PIPELINED_SCRAPED).and_then(|t| t.scrapes).unwrap_or(0);
        out.push(Target {
            what: "pipelined 8 B while scraped every 100 ms, >= 0.95x unscraped".into(),
            scenario: PIPELINED_SCRAPED.into(),
            payload: Some(8),
            measured: r,
            unit: "x unscraped calls/s",
            pass: r.map(|r| r >= 0.95),
            detail: match r {
                Some(r) => format!("{r:.3}x ({scrapes} scrapes; need >= 0.95x)"),
                None => "not measured".into(),
            },
        });
    }

    /// The terminal table, the throughput lines, the blob tables and the
    /// targets.
    pub(crate) fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\ncradle-bench {} ({} blocks, interleaved{}; {:.0} s)\n",
            self.date,
            self.blocks,
            if self.pinned {
                ", pinned to cores 0/1"
            } else {
                ""
            },
            self.seconds
        );
        if !self.latency.is_empty() {
            self.call_table(&mut s);
        }
        if !self.throughput.is_empty() {
            s.push_str("\nthroughput (8 B pings, validated)\n");
            for t in &self.throughput {
                let med = median(&t.block_rates).unwrap_or(0.0);
                let min = t.block_rates.iter().copied().fold(f64::INFINITY, f64::min);
                let max = t.block_rates.iter().copied().fold(0.0, f64::max);
                let name = if t.loaded {
                    format!("{} loaded", t.name)
                } else {
                    t.name.to_string()
                };
                let _ = writeln!(
                    s,
                    "{:<29} clients {:>2}  window {:>3}  {:>10} calls  median {:>6.2} M calls/s  (blocks {:.2}..{:.2}){}",
                    name,
                    t.clients,
                    t.window,
                    t.calls,
                    med / 1e6,
                    min / 1e6,
                    max / 1e6,
                    match (t.client_wakes, t.server_wakes, t.allocs) {
                        (Some(c), Some(sv), Some(a)) => format!(
                            "  wake c {} wake s {} allocs {} /call",
                            per(c, t.calls),
                            per(sv, t.calls),
                            per(a, t.calls)
                        ),
                        _ => String::new(),
                    }
                );
            }
        }
        if let Some(b) = &self.blobs {
            s.push_str(&b.table());
        }
        if let Some(m) = &self.memo {
            s.push_str(&m.table());
        }
        s.push_str("\ntargets (docs/design.md §9)\n");
        for t in self.targets() {
            let verdict = match (t.pass, t.measured) {
                (Some(true), _) => "PASS",
                (Some(false), _) => "MISS",
                (None, Some(_)) => "INFO",
                (None, None) => "----",
            };
            let _ = writeln!(s, "  {verdict}  {:<62} {}", t.what, t.detail);
        }
        s
    }

    /// The latency table of the call scenarios.
    fn call_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "{:<18} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7}",
            "transport",
            "payload",
            "n",
            "p50 us",
            "p90 us",
            "p99 us",
            "p99.9 us",
            "max us",
            "x floor",
            "x unix",
            "wake c",
            "wake s",
            "allocs",
            "minflt"
        );
        let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
        let mut last_payload = None;
        for l in self.latency.iter().filter(|l| !l.loaded) {
            if last_payload.is_some_and(|p| p != l.payload) {
                s.push('\n');
            }
            last_payload = Some(l.payload);
            let m = summarize(&l.samples);
            let _ = writeln!(
                s,
                "{:<18} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7}",
                l.name,
                size(l.payload),
                m.n,
                us(m.p50),
                us(m.p90),
                us(m.p99),
                us(m.p999),
                us(m.max),
                ratio(self.ratio_to(l, FLOOR)),
                ratio(self.ratio_to(l, UNIX)),
                per(l.client_wakes, m.n),
                l.server_wakes.map_or("-".into(), |w| per(w, m.n)),
                per(l.allocs, m.n),
                per(l.minflt, m.n),
            );
        }
        s.push_str(
            "\n(x floor / x unix: median over blocks of the block-p50 ratio; wake c / wake s: \
             wake syscalls per call in the calling / serving process; allocs, minflt: heap \
             allocations and minor page faults per call in the calling process)\n",
        );
        if self.latency.iter().any(|l| l.loaded) {
            self.load_table(s);
        }
    }

    /// Idle and loaded side by side, for every scenario measured both ways.
    fn load_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\nidle and loaded ({} CPU hogs), side by side\n\n{:<19} {:>7} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} | {:>6} {:>6}",
            self.load, "", "", "idle", "", "", "loaded", "", "", "", "", "", "", ""
        );
        let _ = writeln!(
            s,
            "{:<19} {:>7} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} | {:>6} {:>6}",
            "transport",
            "payload",
            "p50 us",
            "p90 us",
            "p99 us",
            "p50 us",
            "p90 us",
            "p99 us",
            "p99.9 us",
            "x futex",
            "x unix",
            "wake c",
            "wake s"
        );
        let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
        let mut last_payload = None;
        for l in self.latency.iter().filter(|l| l.loaded) {
            if last_payload.is_some_and(|p| p != l.payload) {
                s.push('\n');
            }
            last_payload = Some(l.payload);
            let m = summarize(&l.samples);
            let i = self.find(l.name, l.payload).map(|i| summarize(&i.samples));
            let iu = |f: fn(&Summary) -> u64| i.as_ref().map_or("-".into(), |i| us(f(i)));
            let _ = writeln!(
                s,
                "{:<19} {:>7} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} | {:>6} {:>6}",
                l.name,
                size(l.payload),
                iu(|m| m.p50),
                iu(|m| m.p90),
                iu(|m| m.p99),
                us(m.p50),
                us(m.p90),
                us(m.p99),
                us(m.p999),
                ratio(self.ratio_to(l, "floor-futex")),
                ratio(self.ratio_to(l, UNIX)),
                per(l.client_wakes, m.n),
                l.server_wakes.map_or("-".into(), |w| per(w, m.n)),
            );
        }
        s.push_str(
            "\n(loaded: the same scenario while the hogs run, in the same blocks; x futex / x \
             unix: median over blocks of the block-p50 ratio to floor-futex / unix-socket \
             loaded; wake c / wake s: loaded, per call)\n",
        );
    }

    /// The JSON array: one object per scenario, then one per target.
    pub(crate) fn json(&self) -> String {
        let mut items = Vec::new();
        for l in &self.latency {
            let m = summarize(&l.samples);
            let mut o = Obj::default();
            o.str("kind", "latency");
            o.str("name", l.name);
            o.num("load", if l.loaded { self.load as f64 } else { 0.0 });
            o.num("payload_bytes", l.payload as f64);
            o.num("n", m.n as f64);
            o.num("p50_ns", m.p50 as f64);
            o.num("p90_ns", m.p90 as f64);
            o.num("p99_ns", m.p99 as f64);
            o.num("p999_ns", m.p999 as f64);
            o.num("max_ns", m.max as f64);
            o.opt("ratio_to_baseline", self.ratio_to(l, l.baseline));
            o.str("baseline", l.baseline);
            o.opt("ratio_to_floor", self.ratio_to(l, FLOOR));
            o.opt("ratio_to_unix_socket", self.ratio_to(l, UNIX));
            o.null("calls_per_s");
            o.num("blocks", l.block_p50.len() as f64);
            let p = |x: u64| (m.n > 0).then(|| x as f64 / m.n as f64);
            o.opt("wake_syscalls_client_per_call", p(l.client_wakes));
            o.opt("wake_syscalls_server_per_call", l.server_wakes.and_then(&p));
            o.opt("allocs_per_call", p(l.allocs));
            o.opt("minor_faults_per_call", p(l.minflt));
            items.push(o.finish());
        }
        for t in &self.throughput {
            let mut o = Obj::default();
            o.str("kind", "throughput");
            o.str("name", t.name);
            o.num("load", if t.loaded { self.load as f64 } else { 0.0 });
            o.num("payload_bytes", t.payload as f64);
            o.num("n", t.calls as f64);
            for k in ["p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"] {
                o.null(k);
            }
            o.null("ratio_to_baseline");
            o.null("baseline");
            o.opt("calls_per_s", median(&t.block_rates));
            o.num("clients", f64::from(t.clients));
            o.num("window", t.window as f64);
            o.num("blocks", t.block_rates.len() as f64);
            let p = |x: Option<u64>| x.map(|x| x as f64 / t.calls.max(1) as f64);
            o.opt("wake_syscalls_client_per_call", p(t.client_wakes));
            o.opt("wake_syscalls_server_per_call", p(t.server_wakes));
            o.opt("allocs_per_call", p(t.allocs));
            o.opt("scrapes", t.scrapes.map(|n| n as f64));
            items.push(o.finish());
        }
        if let Some(b) = &self.blobs {
            items.extend(b.json_items());
        }
        if let Some(m) = &self.memo {
            items.extend(m.json_items());
        }
        for t in self.targets() {
            let mut o = Obj::default();
            o.str("kind", "target");
            o.str("name", &format!("target: {}", t.what));
            o.str("scenario", &t.scenario);
            match t.payload {
                Some(p) => o.num("payload_bytes", p as f64),
                None => o.null("payload_bytes"),
            }
            o.opt("measured", t.measured);
            o.str("unit", t.unit);
            o.raw("pass", t.pass.map_or(Value::Null, Value::Bool));
            o.str("detail", &t.detail);
            items.push(o.finish());
        }
        let mut meta = Obj::default();
        meta.str("kind", "run");
        meta.str("name", "run");
        meta.str("command", &self.command);
        meta.str("date", &self.date);
        meta.num("blocks", self.blocks as f64);
        meta.raw("pinned", Value::Bool(self.pinned));
        meta.num("load", self.load as f64);
        meta.num("seconds", (self.seconds * 10.0).round() / 10.0);
        items.push(meta.finish());
        // Serialising a tree of `Value`s cannot fail.
        let mut out = serde_json::to_string_pretty(&Value::Array(items)).unwrap_or_default();
        out.push('\n');
        out
    }

    /// p50 against payload, log-log, one line per transport.
    pub(crate) fn svg(&self) -> String {
        let mut names: Vec<&str> = Vec::new();
        for l in &self.latency {
            if !names.contains(&l.name) {
                names.push(l.name);
            }
        }
        let pts: Vec<(&str, f64, f64)> = self
            .latency
            .iter()
            .map(|l| {
                (
                    l.name,
                    l.payload as f64,
                    summarize(&l.samples).p50.max(1) as f64,
                )
            })
            .collect();
        let (w, h) = (920.0, 560.0);
        let (left, right, top, bottom) = (80.0, 210.0, 50.0, 60.0);
        let xs: Vec<f64> = pts.iter().map(|p| p.1.log2()).collect();
        let (mut x0, mut x1) = (
            xs.iter().copied().fold(f64::INFINITY, f64::min),
            xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        if !x0.is_finite() {
            (x0, x1) = (3.0, 16.0);
        }
        if x1 - x0 < 1.0 {
            (x0, x1) = (x0 - 1.0, x1 + 1.0);
        }
        let ys: Vec<f64> = pts.iter().map(|p| p.2.log10()).collect();
        let y0 = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let y1 = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (y0, y1) = if y0.is_finite() {
            (y0.floor(), y1.ceil().max(y0.floor() + 1.0))
        } else {
            (2.0, 5.0)
        };
        let px = |x: f64| left + (x.log2() - x0) / (x1 - x0) * (w - left - right);
        let py = |y: f64| h - bottom - (y.log10() - y0) / (y1 - y0) * (h - top - bottom);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="24" font-size="15" text-anchor="middle">Round trip p50 against payload, two processes (cradle-bench, {})</text>"#,
            (left + w - right) / 2.0,
            esc(&self.date)
        );
        // Horizontal grid: decades, and 2x/5x marks.
        let mut d = y0 as i32;
        while f64::from(d) <= y1 {
            for m in [1.0, 2.0, 5.0] {
                let v = m * 10f64.powi(d);
                if v.log10() > y1 + 1e-9 {
                    continue;
                }
                let y = py(v);
                let major = m == 1.0;
                let _ = writeln!(
                    s,
                    r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" />"##,
                    w - right,
                    if major { "#bbb" } else { "#eee" }
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                    left - 6.0,
                    y + 4.0,
                    ns_label(v)
                );
            }
            d += 1;
        }
        // Vertical grid at the measured payloads.
        let mut payloads: Vec<usize> = self.latency.iter().map(|l| l.payload).collect();
        payloads.sort_unstable();
        payloads.dedup();
        for p in &payloads {
            let x = px(*p as f64);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#eee" />"##,
                h - bottom
            );
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                h - bottom + 18.0,
                size(*p)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{top}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
            w - left - right,
            h - top - bottom
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">payload each way (log scale)</text>"#,
            (left + w - right) / 2.0,
            h - 18.0
        );
        let _ = writeln!(
            s,
            r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">round trip p50 (log scale)</text>"#,
            (top + h - bottom) / 2.0,
            (top + h - bottom) / 2.0
        );
        const COLORS: [&str; 10] = [
            "#000000", "#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#d62728", "#ff7f0e", "#8c564b",
            "#e377c2", "#17becf",
        ];
        for (i, name) in names.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let dash = if name.starts_with("cradle") {
                ""
            } else {
                r#" stroke-dasharray="5,3""#
            };
            let line: Vec<String> = pts
                .iter()
                .filter(|p| p.0 == *name)
                .map(|p| format!("{:.1},{:.1}", px(p.1), py(p.2)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{c}" stroke-width="2"{dash} points="{}"/>"#,
                line.join(" ")
            );
            for p in pts.iter().filter(|p| p.0 == *name) {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                    px(p.1),
                    py(p.2)
                );
            }
            let ly = top + 10.0 + 20.0 * i as f64;
            let lx = w - right + 15.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/>"#,
                lx + 24.0
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}">{}</text>"#,
                lx + 30.0,
                ly + 4.0,
                esc(name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// The blob scenarios of one run (`blobs.rs`).
#[derive(Debug)]
pub(crate) struct BlobReport {
    /// `blob-create-seal`: 4 KiB create + write + seal + drop, this process.
    pub(crate) create: Latency,
    /// `ping-same-client`: an 8-byte `Ping` on the same client, same blocks.
    pub(crate) reference: Latency,
    /// `blob-create-seal` again, each phase timed on its own: (phase, ns).
    pub(crate) phases: Vec<(&'static str, Vec<u64>)>,
    /// Minor faults over the first `counted_ops` creates of a new session.
    pub(crate) cold_minflt: u64,
    /// The page-fault counter: operations after the warm-up, untimed, and
    /// this process's minor faults, allocations and wake syscalls over them.
    pub(crate) counted_ops: u64,
    pub(crate) counted_minflt: u64,
    pub(crate) counted_allocs: u64,
    pub(crate) counted_wakes: u64,
    /// `blob-pass-mapped` per size, timed in the reader (its counters).
    pub(crate) pass: Vec<Latency>,
    /// First map and full read, per size.
    pub(crate) first: Vec<FirstMap>,
    /// The threshold: `blob-small` (sizes up to `small_max`) and
    /// `blob-large` (every size), this process.
    pub(crate) small: Vec<Latency>,
    pub(crate) large: Vec<Latency>,
    pub(crate) small_max: usize,
    /// A memory miss served from the disk tier against a plain read.
    pub(crate) disk: Option<crate::disk::DiskLoad>,
}

/// First map and full read of one large blob: one entry per repetition.
#[derive(Debug)]
pub(crate) struct FirstMap {
    pub(crate) size: usize,
    /// `get` by a fresh client of the reader.
    pub(crate) get_ns: Vec<u64>,
    /// One byte read per page, the first time.
    pub(crate) touch_ns: Vec<u64>,
    /// The reader's minor faults during the touch.
    pub(crate) minflt: Vec<u64>,
    /// The sum of every word, pages present.
    pub(crate) read_ns: Vec<u64>,
    /// Request, receipt over the Unix socket and the same sum.
    pub(crate) sock_ns: Vec<u64>,
}

fn median_ns(v: &[u64]) -> Option<f64> {
    median(&v.iter().map(|&x| x as f64).collect::<Vec<_>>())
}

impl FirstMap {
    fn per_gib(&self, ns: Option<f64>) -> Option<f64> {
        ns.map(|x| x * crate::blobs::GIB as f64 / self.size as f64)
    }

    /// First map of a GiB: (get + touch) of each repetition, median, per GiB.
    fn map_per_gib(&self) -> Option<f64> {
        let v: Vec<u64> = self
            .get_ns
            .iter()
            .zip(&self.touch_ns)
            .map(|(g, t)| g + t)
            .collect();
        self.per_gib(median_ns(&v))
    }

    /// Median over repetitions of socket / read (read: pages present).
    fn socket_to_read(&self) -> Option<f64> {
        let v: Vec<f64> = self
            .sock_ns
            .iter()
            .zip(&self.read_ns)
            .filter(|(_, r)| **r > 0)
            .map(|(s, r)| *s as f64 / *r as f64)
            .collect();
        median(&v)
    }

    /// Median over repetitions of socket / (get + touch + read): against a
    /// reader that maps the blob for this one read.
    fn socket_to_cold(&self) -> Option<f64> {
        let v: Vec<f64> = (0..self.sock_ns.len().min(self.read_ns.len()))
            .filter_map(|i| {
                let cold = self.get_ns.get(i)? + self.touch_ns.get(i)? + self.read_ns.get(i)?;
                (cold > 0).then(|| self.sock_ns[i] as f64 / cold as f64)
            })
            .collect();
        median(&v)
    }
}

impl BlobReport {
    /// Flatness of the pass: (median over blocks of the per-block
    /// max p50 / min p50 over the sizes, the same of the whole-run p50s).
    pub(crate) fn flatness(&self) -> Option<(f64, f64)> {
        if self.pass.len() < 2 {
            return None;
        }
        let blocks = self.pass.iter().map(|l| l.block_p50.len()).min()?;
        let spread = |v: &[u64]| -> Option<f64> {
            let lo = v.iter().copied().min()?;
            let hi = v.iter().copied().max()?;
            (lo > 0).then(|| hi as f64 / lo as f64)
        };
        let per_block: Vec<f64> = (0..blocks)
            .filter_map(|b| {
                let v: Vec<u64> = self.pass.iter().map(|l| l.block_p50[b]).collect();
                spread(&v)
            })
            .collect();
        let whole: Vec<u64> = self
            .pass
            .iter()
            .map(|l| summarize(&l.samples).p50)
            .collect();
        Some((median(&per_block)?, spread(&whole)?))
    }

    /// Per size taken by both paths: the median over blocks of the
    /// large / small p50 ratio.
    pub(crate) fn threshold_ratios(&self) -> Vec<(usize, f64)> {
        self.small
            .iter()
            .filter_map(|s| {
                let l = self.large.iter().find(|l| l.payload == s.payload)?;
                Some((s.payload, block_ratio(l, s)?))
            })
            .collect()
    }

    /// The smallest size from which the large path is faster than the
    /// small one at every larger size measured with both; `None` if the
    /// small path is faster at the largest.
    pub(crate) fn crossover(&self) -> Option<usize> {
        let mut cross = None;
        for &(size, r) in self.threshold_ratios().iter().rev() {
            if r < 1.0 {
                cross = Some(size);
            } else {
                break;
            }
        }
        cross
    }

    fn pass_range(&self) -> String {
        match (self.pass.first(), self.pass.last()) {
            (Some(a), Some(b)) => format!("{}..{}", size(a.payload), size(b.payload)),
            _ => "-".into(),
        }
    }

    /// The blob rows of docs/design.md §9.
    /// The disk scenario's medians: (load ms, read ms, median of the
    /// per-repetition load/read ratios).
    pub(crate) fn disk_summary(&self) -> Option<(f64, f64, f64)> {
        let d = self.disk.as_ref()?;
        let ms = |v: &[u64]| median(&v.iter().map(|&n| n as f64 / 1e6).collect::<Vec<_>>());
        let ratios: Vec<f64> = d
            .load_ns
            .iter()
            .zip(&d.read_ns)
            .map(|(&l, &r)| l as f64 / r.max(1) as f64)
            .collect();
        Some((ms(&d.load_ns)?, ms(&d.read_ns)?, median(&ratios)?))
    }

    pub(crate) fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let p50 = (!self.create.samples.is_empty())
            .then(|| summarize(&self.create.samples).p50 as f64 / 1e3);
        if let Some((load, read, ratio)) = self.disk_summary() {
            let bytes = self.disk.as_ref().map_or(0, |d| d.size);
            out.push(Target {
                what: format!(
                    "memory miss served from disk, {}, <= 2x a plain read",
                    size(bytes)
                ),
                scenario: "disk-load".into(),
                payload: Some(bytes),
                measured: Some(ratio),
                unit: "x",
                pass: Some(ratio <= 2.0),
                detail: format!("{ratio:.2}x: load {load:.1} ms, read {read:.1} ms (limit 2x)"),
            });
        }
        out.push(Target {
            what: "blob create + write + seal 4 KiB, spinning, p50 <= 2 us".into(),
            scenario: crate::blobs::CREATE.into(),
            payload: Some(self.create.payload),
            measured: p50,
            unit: "us",
            pass: p50.map(|p| p <= 2.0),
            detail: match p50 {
                Some(p) => format!("{p:.3} us (limit 2 us)"),
                None => "not measured".into(),
            },
        });
        out.push(Target {
            what: format!(
                "minor faults over {} creates from a warm pool = 0",
                self.counted_ops
            ),
            scenario: crate::blobs::CREATE.into(),
            payload: Some(self.create.payload),
            measured: Some(self.counted_minflt as f64),
            unit: "minor faults",
            pass: Some(self.counted_minflt == 0),
            detail: format!(
                "{} minor faults over {} create + write + seal + drop (limit 0)",
                self.counted_minflt, self.counted_ops
            ),
        });
        let flat = self.flatness();
        out.push(Target {
            what: format!(
                "pass a mapped blob {}, p50 flat within 2x",
                self.pass_range()
            ),
            scenario: crate::blobs::PASS.into(),
            payload: None,
            measured: flat.map(|f| f.0),
            unit: "max p50 / min p50",
            pass: flat.map(|f| f.0 <= 2.0),
            detail: match flat {
                Some((b, w)) => {
                    format!("max/min p50 {b:.2}x (whole-run p50s {w:.2}x; limit 2x)")
                }
                None => "not measured (fewer than two sizes)".into(),
            },
        });
        let big = self.first.last();
        out.push(Target {
            what: "first map of a large blob, per GiB, next to a Unix socket".into(),
            scenario: "blob-first-map".into(),
            payload: big.map(|f| f.size),
            measured: big.and_then(|f| f.map_per_gib()).map(|x| x / 1e6),
            unit: "ms per GiB (get + first touch)",
            pass: None,
            detail: match big {
                Some(f) => format!(
                    "{}: get {} us + touch {} ms/GiB; read {} vs socket {} ms/GiB ({}x)",
                    size(f.size),
                    fmt(median_ns(&f.get_ns).map(|x| x / 1e3), 1),
                    fmt(f.per_gib(median_ns(&f.touch_ns)).map(|x| x / 1e6), 1),
                    fmt(f.per_gib(median_ns(&f.read_ns)).map(|x| x / 1e6), 1),
                    fmt(f.per_gib(median_ns(&f.sock_ns)).map(|x| x / 1e6), 1),
                    fmt(f.socket_to_read(), 1),
                ),
                None => "not measured (--blob-max below 1 MiB)".into(),
            },
        });
        out
    }

    /// The blob tables of the terminal report.
    pub(crate) fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(
            "\nblobs (a cradle-server --spin-us 20000 of their own; clients WaitMode::Spin; \
             author: this process; reader: `cradle-bench peer blob-reader`, another process)\n\n",
        );
        let _ = writeln!(
            s,
            "{:<18} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7} {:>7} {:>7} {:>7}",
            "scenario",
            "size",
            "n",
            "p50 us",
            "p90 us",
            "p99 us",
            "p99.9 us",
            "max us",
            "x min",
            "wake c",
            "allocs",
            "minflt"
        );
        let min_pass = self
            .pass
            .iter()
            .map(|l| summarize(&l.samples).p50)
            .min()
            .unwrap_or(0);
        let row = |s: &mut String, l: &Latency, x_min: Option<f64>| {
            let m = summarize(&l.samples);
            let _ = writeln!(
                s,
                "{:<18} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7} {:>7} {:>7} {:>7}",
                l.name,
                size(l.payload),
                m.n,
                us(m.p50),
                us(m.p90),
                us(m.p99),
                us(m.p999),
                us(m.max),
                x_min.map_or("-".into(), |r| format!("{r:.2}")),
                per(l.client_wakes, m.n),
                per(l.allocs, m.n),
                per(l.minflt, m.n),
            );
        };
        row(&mut s, &self.create, None);
        row(&mut s, &self.reference, None);
        s.push('\n');
        for l in &self.pass {
            let p = summarize(&l.samples).p50;
            row(
                &mut s,
                l,
                (min_pass > 0).then(|| p as f64 / min_pass as f64),
            );
        }
        s.push('\n');
        for l in &self.large {
            if let Some(sm) = self.small.iter().find(|x| x.payload == l.payload) {
                row(&mut s, sm, None);
            }
            row(&mut s, l, None);
        }
        let _ = writeln!(
            s,
            "\n({}: create(4 KiB) + write_at(0, 4 KiB) + seal() + drop(Blob), timed together \
             in this process; releases are batched, every 64th drop sends them. {}: an \
             8-byte Ping (call_with, echo checked in place) on the same client, same blocks. \
             {}: get(handle) + drop(BlobRef) in the reader, which has mapped the blob once \
             and keeps that first BlobRef; its counters are the reader's; x min: p50 / the \
             smallest p50 of the sizes. {} / {}: create (author pool, sizes <= {}) or \
             create_large (a memfd of its own) + write_at(0, whole blob) + seal() + drop(Blob), \
             this process. wake c, allocs, minflt: per operation, in the timing process)",
            crate::blobs::CREATE,
            crate::blobs::PING,
            crate::blobs::PASS,
            crate::blobs::SMALL,
            crate::blobs::LARGE,
            size(self.small_max),
        );
        let n = self.counted_ops;
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|(name, v)| format!("{name} {}", us(summarize(v).p50)))
            .collect();
        if !phases.is_empty() {
            let _ = writeln!(
                s,
                "\n{} by phase, each timed on its own (p50 us over {} ops): {}",
                crate::blobs::CREATE,
                self.phases.first().map_or(0, |p| p.1.len()),
                phases.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "page-fault counter: {n} more {} operations after the warm-up, untimed: \
             {} minor faults, {} allocations/op, {} wake syscalls/op (this process); \
             the first {n} of a new session: {} minor faults",
            crate::blobs::CREATE,
            self.counted_minflt,
            per(self.counted_allocs, n),
            per(self.counted_wakes, n),
            self.cold_minflt,
        );
        if let Some((b, w)) = self.flatness() {
            let _ = writeln!(
                s,
                "pass flatness {}: max p50 / min p50 = {b:.2}x (median over blocks of the \
                 per-block ratio; of the whole-run p50s: {w:.2}x)",
                self.pass_range()
            );
        }
        let ratios: Vec<String> = self
            .threshold_ratios()
            .iter()
            .map(|(sz, r)| format!("{} {r:.2}x", size(*sz)))
            .collect();
        if !ratios.is_empty() {
            let _ = writeln!(
                s,
                "threshold, large / small p50 (median over blocks): {}; crossover: {}",
                ratios.join(", "),
                match self.crossover() {
                    Some(c) => format!("create_large is faster from {} on", size(c)),
                    None => format!(
                        "none up to {}: the author pool is faster at every size both paths take",
                        size(self.small.last().map_or(0, |l| l.payload))
                    ),
                }
            );
        }
        if !self.first.is_empty() {
            let reps = self.first.iter().map(|f| f.get_ns.len()).max().unwrap_or(0);
            let _ = writeln!(
                s,
                "\nfirst map by a fresh reader client, and a full read against a Unix socket \
                 (medians of {reps} repetitions)\n"
            );
            let _ = writeln!(
                s,
                "{:>8} {:>9} {:>9} {:>9} {:>13} {:>8} {:>9} {:>12} {:>10} {:>14} {:>8} {:>8}",
                "size",
                "get us",
                "(min) us",
                "touch ms",
                "touch ms/GiB",
                "minflt",
                "read ms",
                "read ms/GiB",
                "socket ms",
                "socket ms/GiB",
                "sock/rd",
                "sock/cold"
            );
            for f in &self.first {
                let ms = |x: Option<f64>| fmt(x.map(|v| v / 1e6), 3);
                let _ = writeln!(
                    s,
                    "{:>8} {:>9} {:>9} {:>9} {:>13} {:>8} {:>9} {:>12} {:>10} {:>14} {:>8} {:>8}",
                    size(f.size),
                    fmt(median_ns(&f.get_ns).map(|x| x / 1e3), 1),
                    fmt(f.get_ns.iter().min().map(|&x| x as f64 / 1e3), 1),
                    ms(median_ns(&f.touch_ns)),
                    fmt(f.per_gib(median_ns(&f.touch_ns)).map(|x| x / 1e6), 1),
                    fmt(median_ns(&f.minflt), 0),
                    ms(median_ns(&f.read_ns)),
                    fmt(f.per_gib(median_ns(&f.read_ns)).map(|x| x / 1e6), 1),
                    ms(median_ns(&f.sock_ns)),
                    fmt(f.per_gib(median_ns(&f.sock_ns)).map(|x| x / 1e6), 1),
                    fmt(f.socket_to_read(), 2),
                    fmt(f.socket_to_cold(), 2),
                );
            }
            s.push_str(
                "\n(get: Client::get by a fresh client of the reader, which has not mapped the \
                 segment: Acquire + the descriptor over the control socket + mmap + checks; \
                 median, and the fastest repetition. \
                 touch: one byte read per 4 KiB page, the first time (page faults; minflt: how \
                 many). read: the wrapping sum of every u64 word, pages present. socket: a \
                 1-byte request, then the same bytes written by this process (from its own \
                 mapping of the blob) into a Unix stream socketpair, read by the reader into a \
                 pre-faulted buffer, then the same sum. sock/rd: socket / read; sock/cold: \
                 socket / (get + touch + read); both medians of the per-repetition ratios)\n",
            );
        }
        if let (Some(d), Some((load, read, ratio))) = (&self.disk, self.disk_summary()) {
            s.push_str(&format!(
                "\ndisk tier: a memory miss served from disk, {} entry in the page cache \
                 ({} repetitions, interleaved): load {load:.2} ms, plain read {read:.2} ms, \
                 load / read {ratio:.2}x\n(load: Cache::get of a key only on disk: get answers \
                 OnDisk, load preads the entry into a new blob, checks its xxh3, caches and \
                 leases it, the client maps it. read: std::fs::read of the same entry file \
                 into a new Vec. Medians; the ratio is the median of per-repetition ratios)\n",
                size(d.size),
                d.load_ns.len()
            ));
        }
        s
    }

    /// JSON objects: one per blob scenario, the fault counter, one per
    /// first-map size.
    fn json_items(&self) -> Vec<Value> {
        let mut items = Vec::new();
        let min_pass = self
            .pass
            .iter()
            .map(|l| summarize(&l.samples).p50)
            .min()
            .unwrap_or(0);
        let ratios = self.threshold_ratios();
        let all = [&self.create, &self.reference]
            .into_iter()
            .chain(&self.pass)
            .chain(&self.small)
            .chain(&self.large);
        for l in all {
            let m = summarize(&l.samples);
            let mut o = Obj::default();
            o.str("kind", "blob-latency");
            o.str("name", l.name);
            o.num("payload_bytes", l.payload as f64);
            o.str(
                "timed_in",
                if l.name == crate::blobs::PASS {
                    "reader"
                } else {
                    "author"
                },
            );
            o.num("n", m.n as f64);
            o.num("p50_ns", m.p50 as f64);
            o.num("p90_ns", m.p90 as f64);
            o.num("p99_ns", m.p99 as f64);
            o.num("p999_ns", m.p999 as f64);
            o.num("max_ns", m.max as f64);
            o.num("blocks", l.block_p50.len() as f64);
            if l.name == crate::blobs::PASS {
                o.opt(
                    "ratio_to_min_p50",
                    (min_pass > 0).then(|| m.p50 as f64 / min_pass as f64),
                );
            }
            if l.name == crate::blobs::LARGE {
                o.opt(
                    "large_to_small",
                    ratios
                        .iter()
                        .find(|(sz, _)| *sz == l.payload)
                        .map(|(_, r)| *r),
                );
            }
            let p = |x: u64| (m.n > 0).then(|| x as f64 / m.n as f64);
            o.opt("wake_syscalls_per_op", p(l.client_wakes));
            o.opt("allocs_per_op", p(l.allocs));
            o.opt("minor_faults_per_op", p(l.minflt));
            items.push(o.finish());
        }
        let mut o = Obj::default();
        o.str("kind", "blob-counter");
        o.str("name", "blob-create-seal page-fault counter");
        o.num("payload_bytes", self.create.payload as f64);
        o.num("ops", self.counted_ops as f64);
        o.num("minor_faults", self.counted_minflt as f64);
        o.num("allocs", self.counted_allocs as f64);
        o.num("wake_syscalls", self.counted_wakes as f64);
        o.num("new_session_minor_faults", self.cold_minflt as f64);
        for (name, v) in &self.phases {
            o.num(&format!("phase_{name}_p50_ns"), summarize(v).p50 as f64);
        }
        items.push(o.finish());
        let mut o = Obj::default();
        o.str("kind", "blob-summary");
        o.str("name", "blob-pass-mapped flatness and threshold crossover");
        let flat = self.flatness();
        o.opt("pass_max_to_min_p50_block_median", flat.map(|f| f.0));
        o.opt("pass_max_to_min_p50_whole_run", flat.map(|f| f.1));
        o.opt("crossover_bytes", self.crossover().map(|c| c as f64));
        o.num("small_max_bytes", self.small_max as f64);
        items.push(o.finish());
        for f in &self.first {
            let mut o = Obj::default();
            o.str("kind", "blob-first-map");
            o.str("name", "blob-first-map");
            o.num("payload_bytes", f.size as f64);
            o.num("repetitions", f.get_ns.len() as f64);
            o.opt("get_ns", median_ns(&f.get_ns));
            o.opt("touch_ns", median_ns(&f.touch_ns));
            o.opt("touch_ns_per_gib", f.per_gib(median_ns(&f.touch_ns)));
            o.opt("map_ns_per_gib", f.map_per_gib());
            o.opt("minor_faults", median_ns(&f.minflt));
            o.opt("read_ns", median_ns(&f.read_ns));
            o.opt("read_ns_per_gib", f.per_gib(median_ns(&f.read_ns)));
            o.opt("unix_socket_ns", median_ns(&f.sock_ns));
            o.opt("unix_socket_ns_per_gib", f.per_gib(median_ns(&f.sock_ns)));
            o.opt("socket_to_read", f.socket_to_read());
            o.opt("socket_to_cold", f.socket_to_cold());
            for (k, v) in [
                ("get_ns_each", &f.get_ns),
                ("touch_ns_each", &f.touch_ns),
                ("read_ns_each", &f.read_ns),
                ("unix_socket_ns_each", &f.sock_ns),
            ] {
                o.raw(k, Value::from(v.clone()));
            }
            items.push(o.finish());
        }
        items
    }
}

/// `x` with `decimals` decimals, "-" for `None`.
fn fmt(x: Option<f64>, decimals: usize) -> String {
    x.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

/// "8 B", "4 KiB", "64 KiB", "16 MiB", "1 GiB".
pub(crate) fn size(b: usize) -> String {
    for (unit, name) in [(1usize << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if b >= unit && b.is_multiple_of(unit) {
            return format!("{} {name}", b / unit);
        }
    }
    format!("{b} B")
}

/// Nanoseconds as microseconds, 3 decimals.
fn us(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e3)
}

/// `x / n`, 3 decimals; "-" when `n` is 0.
fn per(x: u64, n: u64) -> String {
    if n == 0 {
        "-".to_string()
    } else {
        format!("{:.3}", x as f64 / n as f64)
    }
}

fn ns_label(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{} us", ns / 1e3)
    } else {
        format!("{ns} ns")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A flat JSON object under construction (keys in insertion order are not
/// kept: serde_json's map sorts them).
#[derive(Debug, Default)]
struct Obj(serde_json::Map<String, Value>);

impl Obj {
    fn raw(&mut self, k: &str, v: Value) {
        self.0.insert(k.to_owned(), v);
    }
    fn null(&mut self, k: &str) {
        self.raw(k, Value::Null);
    }
    fn str(&mut self, k: &str, v: &str) {
        self.raw(k, Value::from(v));
    }
    fn num(&mut self, k: &str, v: f64) {
        self.opt(k, Some(v));
    }
    /// A whole number as an integer, another finite one as a float, else null.
    fn opt(&mut self, k: &str, v: Option<f64>) {
        let v = match v {
            Some(v) if v.is_finite() && v == v.trunc() && v.abs() < 9e15 => Value::from(v as i64),
            Some(v) => serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
            None => Value::Null,
        };
        self.raw(k, v);
    }
    fn finish(self) -> Value {
        Value::Object(self.0)
    }
}

/// Today's UTC date, YYYY-MM-DD (civil-from-days, Howard Hinnant's algorithm).
pub(crate) fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lat(name: &'static str, payload: usize, p50s: &[u64]) -> Latency {
        Latency {
            name,
            payload,
            baseline: FLOOR,
            loaded: false,
            samples: p50s.to_vec(),
            block_p50: p50s.to_vec(),
            client_wakes: 0,
            server_wakes: Some(0),
            allocs: 0,
            minflt: 0,
        }
    }

    fn report(latency: Vec<Latency>) -> Report {
        Report {
            latency,
            throughput: vec![Throughput {
                name: "cradle-pipelined",
                loaded: false,
                clients: 1,
                window: 256,
                payload: 8,
                calls: 10,
                block_rates: vec![4e6, 6e6, 7e6],
                client_wakes: Some(0),
                server_wakes: Some(0),
                allocs: Some(10),
                scrapes: None,
            }],
            blobs: None,
            memo: None,
            command: "cradle-bench \"--quick\"".into(),
            date: "2026-11-22".into(),
            blocks: 3,
            pinned: false,
            load: 0,
            seconds: 1.0,
        }
    }

    #[test]
    fn hdr_percentiles() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), 500);
        assert_eq!(percentile(&v, 0.99), 990);
        assert_eq!(percentile(&v, 0.999), 999);
        assert_eq!(percentile(&v, 1.0), 1000);
        assert_eq!(percentile(&[7], 0.5), 7);
        assert_eq!(percentile(&[], 0.5), 0);
        let s = summarize(&[5, 1, 3]);
        assert_eq!((s.n, s.p50, s.max), (3, 3, 5));
        // Above 2,048 ns: within 0.1 %.
        let big: Vec<u64> = (1..=1000).map(|i| i * 1_000_003).collect();
        let p50 = percentile(&big, 0.5) as f64;
        assert!((p50 / 500_001_500.0 - 1.0).abs() < 1e-3, "{p50}");
        assert_eq!(summarize(&big).max, 1_000_003_000);
    }

    #[test]
    fn median_of_block_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let a = lat("cradle-spin", 8, &[300, 600, 330]);
        let b = lat(FLOOR, 8, &[100, 100, 110]);
        assert_eq!(block_ratio(&a, &b), Some(3.0));
    }

    #[test]
    fn targets_come_from_the_measurements() {
        let r = report(vec![
            lat(FLOOR, 8, &[100, 100, 100]),
            lat("floor-futex", 8, &[4000, 4000, 4000]),
            lat(UNIX, 8, &[5000, 5000, 5000]),
            lat("cradle-spin", 8, &[200, 250, 200]),
            lat("cradle-sleep", 8, &[5000, 9000, 9000]),
            lat(SPIN_METRICS, 8, &[210, 250, 200]),
        ]);
        let t = r.targets();
        assert_eq!(t[0].pass, Some(true));
        assert_eq!(t[0].measured, Some(2.0));
        assert_eq!(t[1].pass, None, "64 B was not measured");
        assert_eq!(t[2].measured, Some(25.0));
        assert_eq!(t[2].pass, Some(true));
        assert_eq!(t[3].pass, Some(false), "2.25x and +5 us");
        assert_eq!(t[4].pass, None);
        assert_eq!(t[5].pass, None, "no async scenario measured");
        assert_eq!(t[7].scenario, SPIN_METRICS);
        assert_eq!(t[7].measured, Some(1.0), "median of 1.05, 1.0, 1.0");
        assert_eq!(t[7].pass, Some(true));
        assert_eq!(t[8].scenario, PIPELINED_SCRAPED);
        assert_eq!(t[8].pass, None, "no scraped run measured");
        let pipelined = t
            .iter()
            .find(|x| x.scenario == "cradle-pipelined" && x.what.starts_with("pipelined 8 B"))
            .expect("the pipelined target");
        assert_eq!(pipelined.measured, Some(6e6));
        assert_eq!(pipelined.pass, Some(false), "6 M is below the 10 M target");
        let table = r.table();
        assert!(table.contains("PASS"), "{table}");
        assert!(table.contains("MISS"), "{table}");
    }

    #[test]
    fn load_targets_compare_loaded_with_loaded() {
        let loaded = |name, p50s: &[u64]| Latency {
            loaded: true,
            ..lat(name, 8, p50s)
        };
        let mut r = report(vec![
            lat(FLOOR, 8, &[100, 100, 100]),
            lat(DEFAULT, 8, &[150, 150, 150]),
            lat("floor-futex", 8, &[4000, 4000, 4000]),
            lat("cradle-sleep-both", 8, &[4400, 4400, 4400]),
            loaded("floor-futex", &[3000, 3000, 3000]),
            loaded(UNIX, &[8000, 8000, 8000]),
            loaded(DEFAULT, &[2000, 2000, 2000]),
            loaded("pipe", &[2000, 2000, 2000]),
            loaded("cradle-sleep", &[2500, 2500, 2500]),
        ]);
        r.load = 2;
        let t = r.targets();
        let by = |what: &str| {
            t.iter()
                .find(|t| t.what.contains(what))
                .unwrap_or_else(|| panic!("no target {what}"))
        };
        let futex = by("1x floor-futex loaded");
        assert_eq!(futex.pass, Some(true), "{}", futex.detail);
        assert_eq!(futex.measured, Some(2000.0 / 3000.0));
        assert_eq!(by("0.5x unix-socket loaded").pass, Some(true));
        assert_eq!(by("cradle-sleep 8 B p50 <= pipe").pass, Some(false));
        assert_eq!(by("loaded: cradle-async-sleep").pass, None);
        assert_eq!(by("idle: cradle-default").pass, Some(true));
        assert_eq!(by("idle: cradle-sleep-both").measured, Some(1.1));
        assert_eq!(
            by("5x the Unix socket").pass,
            None,
            "no loaded pipelined run"
        );
        assert!(r.table().contains("idle and loaded (2 CPU hogs)"));
    }

    #[test]
    fn json_and_svg_are_well_formed_enough() {
        let r = report(vec![
            lat(FLOOR, 8, &[100, 100, 100]),
            lat(FLOOR, 4096, &[900, 900, 900]),
            lat("cradle-spin", 8, &[200, 250, 200]),
            lat("cradle-spin", 4096, &[2000, 2500, 2000]),
        ]);
        let j: Value = serde_json::from_str(&r.json()).expect("the JSON parses");
        let items = j.as_array().unwrap();
        let floor = &items[0];
        assert_eq!(floor["kind"], "latency");
        assert_eq!(floor["name"], "floor-spin");
        assert_eq!(floor["p50_ns"], 100);
        let spin = items
            .iter()
            .find(|o| o["name"] == "cradle-spin" && o["payload_bytes"] == 8)
            .unwrap();
        assert_eq!(spin["ratio_to_baseline"], 2);
        let run = items.last().unwrap();
        assert_eq!(run["kind"], "run");
        assert_eq!(run["command"], "cradle-bench \"--quick\"");
        assert!(
            items
                .iter()
                .any(|o| o["kind"] == "target" && o["pass"].is_boolean())
        );
        let s = r.svg();
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(!s.contains("NaN") && !s.contains("inf"));
    }

    fn blob_report() -> BlobReport {
        use crate::blobs::{CREATE, LARGE, PASS, PING, SMALL};
        BlobReport {
            create: lat(CREATE, 4096, &[1500, 1600, 1700]),
            reference: lat(PING, 8, &[500, 500, 500]),
            phases: vec![("create", vec![100, 200]), ("seal", vec![900, 1000])],
            cold_minflt: 120,
            counted_ops: 10_000,
            counted_minflt: 0,
            counted_allocs: 780,
            counted_wakes: 0,
            pass: vec![
                lat(PASS, 4096, &[1000, 1000, 1000]),
                lat(PASS, 1 << 30, &[1500, 2500, 1800]),
            ],
            first: vec![FirstMap {
                size: 1 << 30,
                get_ns: vec![50_000, 60_000],
                touch_ns: vec![100_000_000, 120_000_000],
                minflt: vec![16_384, 16_384],
                read_ns: vec![150_000_000, 150_000_000],
                sock_ns: vec![600_000_000, 450_000_000],
            }],
            small: vec![
                lat(SMALL, 4096, &[100, 100, 100]),
                lat(SMALL, 1 << 18, &[1000, 1000, 1000]),
            ],
            large: vec![
                lat(LARGE, 4096, &[500, 500, 500]),
                lat(LARGE, 1 << 18, &[800, 800, 800]),
                lat(LARGE, 1 << 20, &[2000, 2000, 2000]),
            ],
            small_max: 1 << 18,
            disk: None,
        }
    }

    #[test]
    fn blob_targets_and_outputs() {
        let b = blob_report();
        assert_eq!(b.flatness(), Some((1.8, 1.8)));
        assert_eq!(b.threshold_ratios(), vec![(4096, 5.0), (1 << 18, 0.8)]);
        assert_eq!(b.crossover(), Some(1 << 18));
        let f = &b.first[0];
        assert_eq!(f.map_per_gib(), Some(110_055_000.0));
        assert_eq!(f.socket_to_read(), Some(3.5));
        let t = b.targets();
        assert_eq!(t.len(), 4);
        assert_eq!((t[0].measured, t[0].pass), (Some(1.6), Some(true)));
        assert_eq!(t[1].pass, Some(true));
        assert_eq!((t[2].measured, t[2].pass), (Some(1.8), Some(true)));
        assert_eq!(t[3].pass, None, "reported, no limit");

        // A run of the blob scenarios only: no call targets, no call table.
        let mut r = report(Vec::new());
        r.throughput.clear();
        r.blobs = Some(b);
        assert_eq!(r.targets().len(), 4);
        let table = r.table();
        assert!(!table.contains("transport"), "{table}");
        assert!(table.contains("blob-pass-mapped"), "{table}");
        assert!(
            table.contains("crossover: create_large is faster from 256 KiB on"),
            "{table}"
        );
        assert!(table.contains("INFO"), "{table}");
        let j = r.json();
        assert_eq!(j.matches('{').count(), j.matches('}').count());
        assert!(j.contains(r#""kind": "blob-first-map""#), "{j}");
        assert!(j.contains(r#""crossover_bytes": 262144"#), "{j}");
        assert!(j.contains(r#""minor_faults": 0"#), "{j}");

        // A miss.
        let mut b = blob_report();
        b.counted_minflt = 3;
        b.create = lat(crate::blobs::CREATE, 4096, &[2500, 2600, 2400]);
        b.small[1] = lat(crate::blobs::SMALL, 1 << 18, &[500, 500, 500]);
        let t = b.targets();
        assert_eq!(t[0].pass, Some(false));
        assert_eq!(t[1].pass, Some(false));
        assert_eq!(b.crossover(), None);
    }

    #[test]
    fn sizes_and_dates() {
        assert_eq!(size(8), "8 B");
        assert_eq!(size(4096), "4 KiB");
        assert_eq!(size(65536), "64 KiB");
        assert_eq!(size(1 << 20), "1 MiB");
        assert_eq!(size(3 << 30), "3 GiB");
        assert_eq!(size(1536 << 10), "1536 KiB");
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}
