//! `--load N`: the CPU hogs that run during the loaded slots of every block
//! (docs/benchmarks.md §3, "Under load"), and the Unix-socket pipelined
//! baseline the loaded pipelined target is held to.

use crate::transport::{Peer, SpawnOpts, spawn_peer};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// How long the hogs get to take their CPUs after a SIGCONT, and to leave
/// them after a SIGSTOP, before the next slot is timed.
const SETTLE: Duration = Duration::from_millis(10);

/// N busy-looping processes (`cradle-bench peer hog`), stopped (SIGSTOP)
/// outside the loaded slots so that the idle slots run on an idle machine.
#[derive(Debug)]
pub(crate) struct Hogs {
    peers: Vec<Peer>,
}

impl Hogs {
    /// Starts `n` hogs, unpinned, and stops them.
    pub(crate) fn start(n: usize) -> Result<Self, String> {
        let mut peers = Vec::with_capacity(n);
        for _ in 0..n {
            peers.push(spawn_peer(&["hog".into()], &SpawnOpts::default())?);
        }
        let hogs = Self { peers };
        hogs.signal(libc::SIGSTOP)?;
        Ok(hogs)
    }

    fn signal(&self, sig: libc::c_int) -> Result<(), String> {
        for p in &self.peers {
            let pid = libc::pid_t::try_from(p.child.id()).map_err(|e| format!("pid: {e}"))?;
            // SAFETY: kill(2) with our own child's pid (not yet reaped: the
            // `Child` is alive in `self`) and a valid signal; no memory.
            if unsafe { libc::kill(pid, sig) } != 0 {
                return Err(format!(
                    "signal {sig} to hog {pid}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        Ok(())
    }

    /// Lets the hogs run (SIGCONT).
    pub(crate) fn resume(&self) -> Result<(), String> {
        self.signal(libc::SIGCONT)?;
        std::thread::sleep(SETTLE);
        Ok(())
    }

    /// Stops the hogs (SIGSTOP).
    pub(crate) fn pause(&self) -> Result<(), String> {
        self.signal(libc::SIGSTOP)?;
        std::thread::sleep(SETTLE);
        Ok(())
    }

    /// How many hogs.
    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        // A stopped process still dies of SIGKILL; `Peer`'s own drop then
        // finds it reaped.
        for p in &mut self.peers {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// What the idle slots of a block started with, once the hogs stopped: see
/// [`settle`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settled {
    /// How long the settling took.
    pub(crate) waited: Duration,
    /// Whether the machine was idle at the end (at most as many runnable
    /// threads as CPUs in the last 4 samples); `false`: the limit ran out
    /// with other work on the machine (not the hogs: they are stopped).
    pub(crate) machine_idle: bool,
    /// This thread's contention gauge at the end.
    pub(crate) gauge: ipc_core::doorbell::GaugeState,
}

/// Runnable threads of the machine now (`/proc/loadavg`'s 4th field) and its
/// online CPUs.
fn runnable() -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let field = text.split_ascii_whitespace().nth(3)?;
    let running: u32 = field.split('/').next()?.parse().ok()?;
    let cpus = std::thread::available_parallelism().ok()?.get();
    Some((running, u32::try_from(cpus).ok()?))
}

/// After the loaded slots (the hogs stopped): lets the contention gauges
/// (docs/architecture.md §13) that the loaded slots tripped see an idle
/// machine again before the next idle slot is timed, so that an idle slot
/// measures the idle machine and not a back-off left over from the load.
///
/// A gauge backs off for up to `MAX_GAUGE_BACKOFF` after contention, and
/// judges the machine from its last 8 samples, which it takes only while
/// its thread waits; so this waits at least that long, meanwhile sampling
/// this thread's gauge (`cpu_contended`, as a waiting thread would) and,
/// in the last part, making untimed calls through `warm` (whose server
/// worker's gauge then samples the idle machine too). It returns once the
/// wait is over, this thread's gauge is not backing off and reports fewer
/// than 4 crowded samples, and the machine showed no more runnable threads
/// than CPUs in 4 samples in a row; or after `limit`, saying what held.
pub(crate) fn settle(
    limit: Duration,
    warm: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Settled, String> {
    use ipc_core::doorbell::{MAX_GAUGE_BACKOFF, cpu_contended, gauge_state};
    let start = Instant::now();
    let min = MAX_GAUGE_BACKOFF + Duration::from_millis(40);
    let mut quiet = 0u32;
    loop {
        let now = Instant::now();
        let _ = cpu_contended(now);
        let gauge = gauge_state(now);
        quiet = match runnable() {
            // This thread is one of the runnable ones.
            Some((r, cpus)) if r <= cpus => quiet + 1,
            Some(_) => 0,
            None => quiet + 1,
        };
        let waited = now.saturating_duration_since(start);
        let settled = gauge.backing_off.is_zero() && gauge.crowded_samples < 4;
        if waited >= min && (settled && quiet >= 4 || waited >= limit) {
            return Ok(Settled {
                waited,
                machine_idle: quiet >= 4,
                gauge,
            });
        }
        if waited + Duration::from_millis(150) >= min {
            warm()?;
        } else {
            std::thread::sleep(Duration::from_millis(4));
        }
    }
}

/// Pipelined 8-byte pings over a Unix stream socket, as an RPC client over a
/// socket pipelines: up to `window` calls in flight, each request written
/// with its own `write`, answers read through a buffer (one `read` takes
/// whatever has arrived), each checked; the echo peer answers each request
/// with its own `write`. The baseline of the loaded pipelined target.
#[derive(Debug)]
pub(crate) struct UnixPipelined {
    sock: UnixStream,
    peer: Peer,
    inb: Vec<u8>,
}

/// One message: a 4-byte length (8), then the 8-byte sequence number.
const MSG: usize = 12;

impl UnixPipelined {
    /// A socket pair and its echo peer (`peer stream`).
    pub(crate) fn start(core: Option<usize>) -> Result<Self, String> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let fd = theirs.as_raw_fd();
        let peer = spawn_peer(
            &["stream".into(), fd.to_string(), fd.to_string()],
            &SpawnOpts {
                keep_fds: vec![fd],
                core,
                ..Default::default()
            },
        )?;
        drop(theirs);
        Ok(Self {
            sock: ours,
            peer,
            inb: Vec::new(),
        })
    }

    /// `calls` pings, at most `window` in flight; returns the nanoseconds.
    pub(crate) fn run(&mut self, calls: u64, window: usize, tag0: u64) -> Result<u64, String> {
        self.inb.resize(window * MSG + MSG, 0);
        let start = Instant::now();
        let (mut sent, mut got, mut have) = (0u64, 0u64, 0usize);
        while got < calls {
            let room = (window as u64).saturating_sub(sent - got).min(calls - sent);
            for i in 0..room {
                let mut m = [0u8; MSG];
                m[..4].copy_from_slice(&8u32.to_le_bytes());
                m[4..].copy_from_slice(&tag0.wrapping_add(sent + i).to_le_bytes());
                if let Err(e) = self.sock.write_all(&m) {
                    self.peer.check_alive()?;
                    return Err(format!("write: {e}"));
                }
            }
            sent += room;
            let n = match self.sock.read(&mut self.inb[have..]) {
                Ok(0) => {
                    self.peer.check_alive()?;
                    return Err("the echo peer closed the socket".into());
                }
                Ok(n) => n,
                Err(e) => return Err(format!("read: {e}")),
            };
            have += n;
            let whole = have / MSG * MSG;
            for m in self.inb[..whole].chunks_exact(MSG) {
                let expect = tag0.wrapping_add(got).to_le_bytes();
                if m[..4] != 8u32.to_le_bytes() || m[4..] != expect {
                    return Err("pipelined socket echo differs from its request".into());
                }
                got += 1;
            }
            self.inb.copy_within(whole..have, 0);
            have -= whole;
        }
        Ok(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}
