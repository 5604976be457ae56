//! `--idle-sessions N`: what N connected, idle sessions cost the server
//! (docs/benchmarks.md §5): its wake-ups and CPU time over a quiet period,
//! its private memory per session, and the shared memory of their rings.

use crate::cradle::Server;
use cradle_client::Client;
use ipc_rpc::builtin::Ping;
use std::path::Path;
use std::time::{Duration, Instant};

/// The figures of one run.
#[derive(Debug)]
pub(crate) struct IdleReport {
    pub(crate) sessions: usize,
    pub(crate) seconds: f64,
    /// Context switches of every server thread over the quiet period (each
    /// wake-up from a sleep is one).
    pub(crate) wakeups: u64,
    /// CPU time of every server thread over the quiet period, ns.
    pub(crate) cpu_ns: u64,
    pub(crate) threads: usize,
    /// Server `RssAnon` before and after the sessions, bytes.
    pub(crate) anon: (u64, u64),
    /// Server descriptors before and after.
    pub(crate) fds: (usize, usize),
    /// `Shmem` of the whole machine (/proc/meminfo) before and after, bytes.
    pub(crate) shmem: (u64, u64),
    /// Size of one session segment (both rings), bytes.
    pub(crate) segment: u64,
    /// p50 / p90 of an active spinning client's 8-byte calls (ns) before the
    /// idle sessions connect, and while they are connected.
    pub(crate) active: ([u64; 2], [u64; 2]),
}

/// Calls an active client makes to time itself against the idle sessions.
const ACTIVE_CALLS: usize = 20_000;

/// p50 and p90 (ns) of `ACTIVE_CALLS` spinning 8-byte pings.
fn active_latency(client: &Client) -> Result<[u64; 2], String> {
    let opts = cradle_client::CallOptions {
        timeout: Duration::from_secs(10),
        wait: cradle_client::WaitMode::Spin,
    };
    let msg = vec![7u8; 8];
    let mut ns = Vec::with_capacity(ACTIVE_CALLS);
    for _ in 0..ACTIVE_CALLS {
        let t = Instant::now();
        let n = client
            .call_with::<Ping, _>(&msg, opts, |echo| echo.len())
            .map_err(|e| format!("active client: {e}"))?;
        ns.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        if n != msg.len() {
            return Err("active client: echo of another length".into());
        }
    }
    Ok([
        crate::report::percentile(&ns, 0.5),
        crate::report::percentile(&ns, 0.9),
    ])
}

/// A `Key: value kB` field of a /proc status-like file, in bytes.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn read(path: impl AsRef<Path>) -> Result<String, String> {
    let p = path.as_ref();
    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// (context switches, CPU ns, threads) summed over the process's threads.
fn thread_totals(pid: u32) -> Result<(u64, u64, usize), String> {
    let dir = format!("/proc/{pid}/task");
    let (mut switches, mut cpu, mut n) = (0u64, 0u64, 0usize);
    for e in std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
        let path = e.map_err(|e| format!("{dir}: {e}"))?.path();
        // A thread may end between the listing and the reads.
        let (Ok(status), Ok(sched)) = (
            std::fs::read_to_string(path.join("status")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue;
        };
        for key in ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"] {
            if let Some(v) = status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l[key.len()..].trim().parse::<u64>().ok())
            {
                switches += v;
            }
        }
        cpu += sched
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        n += 1;
    }
    Ok((switches, cpu, n))
}

fn anon_bytes(pid: u32) -> Result<u64, String> {
    kb_field(&read(format!("/proc/{pid}/status"))?, "RssAnon:").ok_or("no RssAnon".into())
}

fn fd_count(pid: u32) -> Result<usize, String> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .map_err(|e| format!("{dir}: {e}"))?
        .count())
}

fn shmem() -> Result<u64, String> {
    kb_field(&read("/proc/meminfo")?, "Shmem:").ok_or("no Shmem in /proc/meminfo".into())
}

/// Starts a server (default settings), connects `sessions` clients (each
/// makes one call, then stays idle), waits a second for the workers to go
/// to sleep, then counts the server's wake-ups and CPU time over `seconds`.
pub(crate) fn run(
    server_bin: &Path,
    dir: &Path,
    sessions: usize,
    seconds: u64,
) -> Result<IdleReport, String> {
    let server = Server::start_with(
        server_bin,
        dir,
        "idle-sessions",
        None,
        None,
        &["--no-disk-cache"],
    )?;
    let pid = server.pid();
    let active = Client::connect(server.socket()).map_err(|e| format!("active client: {e}"))?;
    let active_alone = active_latency(&active)?;
    std::thread::sleep(Duration::from_millis(500));
    let (anon0, fds0, shm0) = (anon_bytes(pid)?, fd_count(pid)?, shmem()?);
    let mut clients = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let c = Client::connect(server.socket()).map_err(|e| format!("session {i}: {e}"))?;
        c.call::<Ping>(&vec![1])
            .map_err(|e| format!("session {i}: {e}"))?;
        clients.push(c);
    }
    let segment = ipc_rpc::session::session_len(ipc_rpc::session::DEFAULT_RING_CAPACITY) as u64;
    std::thread::sleep(Duration::from_secs(1));
    let (anon1, fds1, shm1) = (anon_bytes(pid)?, fd_count(pid)?, shmem()?);
    let (s0, c0, threads) = thread_totals(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let (s1, c1, _) = thread_totals(pid)?;
    let secs = t0.elapsed().as_secs_f64();
    let active_crowd = active_latency(&active)?;
    drop(active);
    drop(clients);
    drop(server);
    Ok(IdleReport {
        sessions,
        seconds: secs,
        wakeups: s1.saturating_sub(s0),
        cpu_ns: c1.saturating_sub(c0),
        threads,
        anon: (anon0, anon1),
        fds: (fds0, fds1),
        shmem: (shm0, shm1),
        segment,
        active: (active_alone, active_crowd),
    })
}

impl IdleReport {
    /// The table and the targets (PASS / MISS).
    pub(crate) fn table(&self) -> String {
        let n = self.sessions.max(1) as f64;
        let anon = self.anon.1.saturating_sub(self.anon.0) as f64 / n;
        let shm = self.shmem.1.saturating_sub(self.shmem.0) as f64 / n;
        let fds = self.fds.1.saturating_sub(self.fds.0) as f64 / n;
        let rate = self.wakeups as f64 / self.seconds;
        let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
        format!(
            "\n{} idle sessions, server measured over {:.1} s ({} threads)\n\
             \x20 wake-ups (context switches, all threads)  {} ({:.2}/s)\n\
             \x20 CPU time, all threads                     {:.3} ms\n\
             \x20 server private memory (RssAnon) / session {:.1} KiB ({:.1} -> {:.1} MiB)\n\
             \x20 descriptors / session                     {:.1}\n\
             \x20 shared memory (machine Shmem) / session   {:.1} KiB (segment: {} KiB, two rings)\n\
             \x20 an active client's spinning 8 B calls      p50 {:.3} / p90 {:.3} us alone, \
             p50 {:.3} / p90 {:.3} us next to the idle sessions\n\
             \ntargets (issue 18)\n\
             \x20 {}  0 server wake-ups over {:.0} s with {} idle sessions     {}\n\
             \x20 {}  server memory <= 64 KiB per session                      {:.1} KiB\n\
             \x20 {}  rings <= 1 MiB per session                               {:.1} KiB\n",
            self.sessions,
            self.seconds,
            self.threads,
            self.wakeups,
            rate,
            self.cpu_ns as f64 / 1e6,
            anon / 1024.0,
            self.anon.0 as f64 / 1048576.0,
            self.anon.1 as f64 / 1048576.0,
            fds,
            shm / 1024.0,
            self.segment / 1024,
            self.active.0[0] as f64 / 1e3,
            self.active.0[1] as f64 / 1e3,
            self.active.1[0] as f64 / 1e3,
            self.active.1[1] as f64 / 1e3,
            verdict(self.wakeups == 0),
            self.seconds,
            self.sessions,
            self.wakeups,
            verdict(anon <= 64.0 * 1024.0),
            anon / 1024.0,
            verdict(shm <= 1048576.0),
            shm / 1024.0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields() {
        let status = "Name:\tx\nRssAnon:\t    1234 kB\nRssFile:\t 1 kB\n";
        assert_eq!(kb_field(status, "RssAnon:"), Some(1234 * 1024));
        assert_eq!(kb_field(status, "Shmem:"), None);
        let (_, cpu, n) = thread_totals(std::process::id()).expect("own /proc");
        assert!(n >= 1 && cpu > 0);
    }
}
