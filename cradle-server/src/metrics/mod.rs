//! The metrics endpoint (`--metrics`): `GET /metrics` answers the server's
//! figures in the OpenMetrics text format, encoded by `prometheus-client`.
//!
//! A scrape reads what the server keeps anyway: the counters of [`Shared`]
//! (plain atomics), the blob store's figures ([`BlobStore::stats`], which
//! holds the store's lock for the time of a copy of a few counters, as a
//! `cradle.stats` call does), the doorbells' wake count, and the per-method
//! cells of [`cells`] (atomics, no lock). It never takes the session map's
//! lock or anything a worker holds while serving.
//!
//! The endpoint runs on its own thread, one connection at a time, each with
//! a deadline: a slow or hostile scraper delays only other scrapes.

pub(crate) mod cells;

use crate::blobs::BlobStore;
use crate::link::HandleInner;
use crate::stats::Shared;
use cells::{BOUNDS_NS, CallCells, OUTCOMES};
use ipc_core::sync::Ordering;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the metrics endpoint listens: a TCP address (`127.0.0.1:9464`) or
/// a Unix socket path (anything containing a `/`).
///
/// ```
/// use cradle_server::MetricsAddr;
/// let tcp: MetricsAddr = "127.0.0.1:9464".parse()?;
/// assert_eq!(tcp, MetricsAddr::Tcp("127.0.0.1:9464".parse()?));
/// let unix: MetricsAddr = "/run/user/1000/cradle/metrics.sock".parse()?;
/// assert!(matches!(unix, MetricsAddr::Unix(_)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    /// A TCP address; use a loopback one: the figures are the user's.
    Tcp(SocketAddr),
    /// A Unix socket path (created mode 0600, removed at shutdown).
    Unix(PathBuf),
}

impl std::str::FromStr for MetricsAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.contains('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        s.parse().map(Self::Tcp).map_err(|_| {
            format!("{s:?} is neither HOST:PORT (e.g. 127.0.0.1:9464) nor a socket path")
        })
    }
}

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "http://{a}/metrics"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A bound metrics listener, not serving yet.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `addr`; a Unix socket is made mode 0600.
    pub(crate) fn bind(addr: &MetricsAddr) -> std::io::Result<Self> {
        let l = match addr {
            MetricsAddr::Tcp(a) => {
                let l = TcpListener::bind(a)?;
                l.set_nonblocking(true)?;
                Self::Tcp(l)
            }
            MetricsAddr::Unix(p) => {
                let l = UnixListener::bind(p)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
                l.set_nonblocking(true)?;
                Self::Unix(l, p.clone())
            }
        };
        Ok(l)
    }

    /// The TCP address actually bound (port 0 picks one).
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(l) => l.local_addr().ok(),
            Self::Unix(..) => None,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Self::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What a scrape reads.
#[derive(Debug)]
pub(crate) struct Sources {
    pub(crate) shared: Arc<Shared>,
    pub(crate) store: Arc<BlobStore>,
    pub(crate) calls: Arc<CallCells>,
}

/// The server's figures as a `prometheus-client` collector.
#[derive(Debug)]
struct ServerCollector(Arc<Sources>);

/// Encodes one unlabelled gauge or counter.
fn one<M: EncodeMetric>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    m: M,
) -> Result<(), std::fmt::Error> {
    let me = e.encode_descriptor(name, help, unit, m.metric_type())?;
    m.encode(me)
}

/// Encodes a family with one label `key`, one sample per (value, figure).
fn by_label<M: EncodeMetric>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    key: &str,
    samples: Vec<(&str, M)>,
) -> Result<(), std::fmt::Error> {
    let Some(ty) = samples.first().map(|(_, m)| m.metric_type()) else {
        return Ok(());
    };
    let mut me = e.encode_descriptor(name, help, unit, ty)?;
    for (value, m) in samples {
        m.encode(me.encode_family(&[(key, value)])?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Collector for ServerCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let src = &self.0;
        let sh = &src.shared;
        let calls = src.calls.figures();

        // Per method: calls by outcome, then service-time histograms.
        let mut me = e.encode_descriptor(
            "cradle_calls",
            "Calls answered, by method and outcome (ok, or the error code sent back).",
            None,
            MetricType::Counter,
        )?;
        for m in &calls {
            for (i, &outcome) in OUTCOMES.iter().enumerate() {
                // Every method shows `ok`; error outcomes once they happen.
                if i == 0 || m.outcomes[i] > 0 {
                    counter(m.outcomes[i])
                        .encode(me.encode_family(&[("method", m.name), ("outcome", outcome)])?)?;
                }
            }
        }
        let mut me = e.encode_descriptor(
            "cradle_call_duration",
            "Server-side service time of answered calls (decode, handler, encode), by method.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for m in calls.iter().filter(|m| m.buckets.iter().any(|&b| b > 0)) {
            // Per bucket, not cumulative: the encoder adds them up. Its
            // +Inf bound is spelled `f64::MAX`.
            let buckets: Vec<(f64, u64)> = m
                .buckets
                .iter()
                .enumerate()
                .map(|(i, &n)| (BOUNDS_NS.get(i).map_or(f64::MAX, |&b| b as f64 / 1e9), n))
                .collect();
            me.encode_family(&[("method", m.name)])?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    m.sum_ns as f64 / 1e9,
                    m.buckets.iter().sum(),
                    &buckets,
                    None,
                )?;
        }
        let quota = calls
            .iter()
            .map(|m| m.outcomes[cells::outcome_index(ipc_rpc::ErrorCode::QuotaExceeded.to_u32())])
            .sum();
        one(
            &mut e,
            "cradle_quota_refusals",
            "Calls refused because a session quota (leases, bytes, requests in flight) was exceeded.",
            None,
            counter(quota),
        )?;

        // Sessions. Relaxed (all): statistics, see `Shared`.
        one(
            &mut e,
            "cradle_sessions",
            "Client sessions open now.",
            None,
            gauge(sh.sessions_open.load(Ordering::Relaxed)),
        )?;
        one(
            &mut e,
            "cradle_sessions_opened",
            "Client sessions accepted since the server started.",
            None,
            counter(sh.sessions_total.load(Ordering::Relaxed)),
        )?;
        one(
            &mut e,
            "cradle_sessions_closed_for_violations",
            "Sessions the server closed because the client broke the protocol.",
            None,
            counter(sh.sessions_killed.load(Ordering::Relaxed)),
        )?;
        one(
            &mut e,
            "cradle_wake_syscalls",
            "Futex wakes and eventfd writes the server made to wake clients.",
            None,
            counter(ipc_core::doorbell::wake_syscalls()),
        )?;
        one(
            &mut e,
            "cradle_uptime",
            "Time since the server started.",
            Some(&Unit::Seconds),
            ConstGauge::new(sh.started.elapsed().as_secs_f64()),
        )?;
        one(
            &mut e,
            "cradle_workers",
            "Worker threads serving the sessions' rings.",
            None,
            gauge(u64::from(sh.workers)),
        )?;

        // Blobs and caches.
        let b = src.store.stats();
        one(
            &mut e,
            "cradle_blobs",
            "Sealed blobs alive (leased or cached).",
            None,
            gauge(b.blobs),
        )?;
        one(
            &mut e,
            "cradle_blob",
            "Bytes of the sealed blobs alive.",
            Some(&Unit::Bytes),
            gauge(b.blob_bytes),
        )?;
        one(
            &mut e,
            "cradle_blobs_writing",
            "Large blobs being written (not sealed yet).",
            None,
            gauge(b.writing),
        )?;
        one(
            &mut e,
            "cradle_blob_leases",
            "Blob leases held by clients.",
            None,
            gauge(b.leases),
        )?;
        one(
            &mut e,
            "cradle_small_blob_pool_used",
            "Bytes of shared memory holding live small blobs.",
            Some(&Unit::Bytes),
            gauge(b.pool_used),
        )?;
        one(
            &mut e,
            "cradle_small_blob_pool_capacity",
            "Bytes of shared memory reserved for small blobs.",
            Some(&Unit::Bytes),
            gauge(b.pool_capacity),
        )?;
        let mut tiers = vec![("memory", b.cache_entries)];
        let mut bytes = vec![("memory", b.cache_bytes)];
        let mut budget = vec![("memory", b.cache_budget)];
        let mut hits = vec![("memory", b.hits)];
        let mut misses = vec![("memory", b.misses)];
        let mut evictions = vec![("memory", b.evictions)];
        if b.disk_enabled {
            tiers.push(("disk", b.disk_entries));
            bytes.push(("disk", b.disk_bytes));
            budget.push(("disk", b.disk_budget));
            hits.push(("disk", b.disk_hits));
            misses.push(("disk", b.disk_misses));
            evictions.push(("disk", b.disk_evictions));
        }
        let g = |v: Vec<(&'static str, u64)>| v.into_iter().map(|(t, n)| (t, gauge(n))).collect();
        let c = |v: Vec<(&'static str, u64)>| v.into_iter().map(|(t, n)| (t, counter(n))).collect();
        by_label(
            &mut e,
            "cradle_cache_entries",
            "Cache entries, by tier.",
            None,
            "tier",
            g(tiers),
        )?;
        by_label(
            &mut e,
            "cradle_cache",
            "Bytes held by the cache entries, by tier.",
            Some(&Unit::Bytes),
            "tier",
            g(bytes),
        )?;
        by_label(
            &mut e,
            "cradle_cache_budget",
            "The cache's budget, by tier.",
            Some(&Unit::Bytes),
            "tier",
            g(budget),
        )?;
        by_label(
            &mut e,
            "cradle_cache_hits",
            "Cache lookups a tier served, by tier.",
            None,
            "tier",
            c(hits),
        )?;
        by_label(
            &mut e,
            "cradle_cache_misses",
            "Cache lookups a tier could not serve, by tier.",
            None,
            "tier",
            c(misses),
        )?;
        by_label(
            &mut e,
            "cradle_cache_evictions",
            "Entries evicted to stay within the budget, by tier.",
            None,
            "tier",
            c(evictions),
        )?;
        one(
            &mut e,
            "cradle_cache_full_refusals",
            "Puts refused because the memory cache could evict nothing (all held).",
            None,
            counter(b.cache_full),
        )?;
        if b.disk_enabled {
            one(
                &mut e,
                "cradle_disk_write_queue",
                "Puts waiting to be written to the disk tier (write-behind queue depth).",
                None,
                gauge(b.disk_queued),
            )?;
            one(
                &mut e,
                "cradle_disk_write_failures",
                "Write-behind writes to the disk tier that failed.",
                None,
                counter(cells::disk_write_failures()),
            )?;
            one(
                &mut e,
                "cradle_disk_corruptions",
                "Damaged disk entries found (checksum, truncation) and dropped.",
                None,
                counter(b.disk_corruptions),
            )?;
        }
        Ok(())
    }
}

/// Renders one scrape in the OpenMetrics text format.
pub(crate) fn render(sources: &Arc<Sources>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ServerCollector(Arc::clone(sources))));
    let mut out = String::with_capacity(16 << 10);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// The same exposition in the Prometheus text format 0.0.4, for scrapers
/// that do not ask for OpenMetrics (`curl`, `promtool check metrics`): the
/// two differ only in that a counter family's `# HELP`/`# TYPE` lines name
/// its samples (`x_total`), and that 0.0.4 has no `# UNIT` or `# EOF`.
pub(crate) fn to_text_004(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let counters: std::collections::HashSet<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in lines {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// How long one connection may take, from accept to the last byte sent.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// How often the idle endpoint looks at the shutdown flag.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(200);

/// Serves `listener` until the server shuts down.
pub(crate) fn serve(listener: Listener, sources: Arc<Sources>, handle: Arc<HandleInner>) {
    use std::os::fd::AsFd;
    loop {
        // Acquire: pairs with the Release store in `ServerHandle::shutdown`.
        if handle.shutdown.load(Ordering::Acquire) {
            return;
        }
        let fd = match &listener {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        };
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec::try_from(SHUTDOWN_CHECK).ok();
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "metrics endpoint: poll failed; it stops");
                return;
            }
        }
        let accepted: std::io::Result<Box<dyn Conn>> = match &listener {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Box::new(s) as Box<dyn Conn>),
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Box::new(s) as Box<dyn Conn>),
        };
        match accepted {
            Ok(mut c) => {
                if let Err(e) = answer(c.as_mut(), &sources) {
                    tracing::debug!(error = %e, "metrics endpoint: connection dropped");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                std::thread::sleep(SHUTDOWN_CHECK);
            }
        }
    }
}

/// A connection to a scraper.
trait Conn: Read + Write {
    fn set_timeouts(&self, d: Duration) -> std::io::Result<()>;
}

impl Conn for std::net::TcpStream {
    fn set_timeouts(&self, d: Duration) -> std::io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_read_timeout(Some(d))?;
        self.set_write_timeout(Some(d))
    }
}

impl Conn for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, d: Duration) -> std::io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_read_timeout(Some(d))?;
        self.set_write_timeout(Some(d))
    }
}

/// Reads one HTTP request head (at most 8 KiB, within the deadline) and
/// answers it: the figures for `GET /metrics`, 404 or 405 otherwise.
fn answer(c: &mut dyn Conn, sources: &Arc<Sources>) -> std::io::Result<()> {
    let deadline = Instant::now() + CONNECTION_DEADLINE;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || head.len() > 8 << 10 {
            return Err(std::io::Error::other("request head too slow or too long"));
        }
        c.set_timeouts(left)?;
        let n = c.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, target) = (words.next(), words.next());
    let path = target.map(|t| t.split(|&b| b == b'?').next().unwrap_or_default());
    // Prometheus asks for OpenMetrics in its Accept header; anything else
    // gets the classic text format.
    let openmetrics = String::from_utf8_lossy(&head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .any(|(k, v)| {
            k.eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        });
    let (status, ctype, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => match render(sources) {
            Ok(text) if openmetrics => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Ok(text) => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                to_text_004(&text),
            ),
            Err(_) => (
                "500 Internal Server Error",
                "text/plain; charset=utf-8",
                "encoding the metrics failed\n".to_owned(),
            ),
        },
        (Some(b"GET"), _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "the metrics are at /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET is served\n".to_owned(),
        ),
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::Error::other("deadline passed"));
    }
    c.set_timeouts(left)?;
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    c.write_all(reply.as_bytes())?;
    c.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            "127.0.0.1:9464".parse::<MetricsAddr>(),
            Ok(MetricsAddr::Tcp("127.0.0.1:9464".parse().unwrap()))
        );
        assert_eq!(
            "./m.sock".parse::<MetricsAddr>(),
            Ok(MetricsAddr::Unix("./m.sock".into()))
        );
        assert!("localhost".parse::<MetricsAddr>().is_err());
    }

    #[test]
    fn text_004_names_counter_families_by_their_samples() {
        let om = "# HELP a_b Calls.\n# TYPE a_b counter\na_b_total{m=\"x\"} 3\n\
                  # HELP t Time.\n# TYPE t gauge\n# UNIT t seconds\nt 1.5\n# EOF\n";
        assert_eq!(
            to_text_004(om),
            "# HELP a_b_total Calls.\n# TYPE a_b_total counter\na_b_total{m=\"x\"} 3\n\
             # HELP t Time.\n# TYPE t gauge\nt 1.5\n"
        );
    }
}
