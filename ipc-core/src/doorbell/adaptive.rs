//! Adaptive spinning: spin only while spinning pays (docs/architecture.md,
//! "Waiting under load").
//!
//! Two decisions, both made by the waiting thread alone from what it can see
//! without trusting its peer:
//!
//! * **Is this thread's CPU contended?** ([`cpu_contended`]) A spinner on a
//!   machine with no idle core holds a CPU that its peer, or anyone else,
//!   needs: measured on a 2-core machine with two CPU hogs, the woken server
//!   worker is placed on the CPU of the client that woke it (the wake-affine
//!   rule, every CPU being busy), preempts it, answers, and then spins for its
//!   whole budget while the client, the only one who could consume the answer
//!   and send the next request, waits behind it on the same runqueue. Every
//!   call then costs one full spin budget. The signal is the thread's own
//!   scheduler statistics (`/proc/thread-self/schedstat`: time on a CPU and
//!   time spent runnable but waiting for one): when more than
//!   [`CONTENDED_PERCENT`] of the time this thread wanted a CPU was spent
//!   waiting for it, the CPUs are oversubscribed, and every spin is
//!   replaced by a sleep for a back-off period (doubling while the
//!   contention lasts), after which a probe window measures again. A
//!   second, machine-wide signal covers a busy *other* CPU: when more
//!   threads are runnable than there are CPUs (`/proc/loadavg`, sampled),
//!   no CPU is idle for the peer, and a spinner would hold the one it needs.
//! * **How long to spin?** ([`SpinBudget`]) Like glibc's adaptive mutexes:
//!   a spin that catches its event keeps (and slowly grows) the budget, a
//!   spin that ends in a sleep anyway halves it, and a sleep that was woken
//!   sooner than the largest budget shows that a spin would have caught the
//!   event, which grows it back.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Contention threshold: the share (in percent) of its runnable time that a
/// thread spent waiting for a CPU above which it stops spinning.
pub const CONTENDED_PERCENT: u64 = 10;

/// The scheduler statistics are read at most this often per thread (one
/// `pread` of ~1 µs).
const CHECK_EVERY: Duration = Duration::from_millis(4);

/// A window is judged only once the thread was runnable this long in it;
/// shorter windows keep accumulating. The kernel updates a running
/// thread's CPU time at scheduler ticks and its wait time when it gets a CPU
/// again, so a window must span several ticks to be accurate (measured on a
/// 2-core VM: a thread spinning alone waited 0–2 % of 50 ms windows, one
/// spinning next to two CPU hogs 50–68 %; 2 ms windows mostly saw no update).
const MIN_RUNNABLE_NS: u64 = 20_000_000;

/// ... and only if the thread was runnable for at least this share (in
/// percent) of the window's wall time: a thread that mostly sleeps would
/// count its wake-up latencies (a microsecond or two of waiting per
/// microsecond or two of work, even on an idle machine) and learn nothing
/// about whether spinning takes a CPU from anyone.
const MIN_RUNNABLE_SHARE: u64 = 50;

/// A window older than this is discarded unjudged (a thread that slept for
/// seconds learns nothing about now from it).
const STALE_AFTER: Duration = Duration::from_millis(200);

/// First back-off after contention is seen; it doubles while the contention
/// lasts, up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(20);

/// Longest back-off: a probe (one window of spinning) at least this often.
const MAX_BACKOFF: Duration = Duration::from_millis(640);

/// Of the last 8 samples of the machine's runnable threads, this many must
/// exceed the CPUs for the machine to count as crowded.
const CROWDED_SAMPLES: u32 = 4;

/// Per-thread contention gauge.
#[derive(Debug)]
struct Gauge {
    /// `/proc/thread-self/schedstat`, opened by this thread (`None`: not
    /// available, the gauge then never reports contention).
    file: Option<File>,
    /// `/proc/loadavg` (its 4th field counts the runnable threads now).
    loadavg: Option<File>,
    /// Online CPUs of the machine (`/proc/loadavg` counts the runnable
    /// threads of the whole machine, whatever this thread's affinity).
    cpus: u32,
    /// One bit per recent sample: more runnable threads than CPUs.
    crowded: u8,
    opened: bool,
    /// Start of the current window and the figures at its start.
    since: Option<Instant>,
    cpu_ns: u64,
    delay_ns: u64,
    last_check: Option<Instant>,
    /// No spinning before this instant.
    quiet_until: Option<Instant>,
    backoff: Duration,
}

impl Gauge {
    const fn new() -> Self {
        Self {
            file: None,
            loadavg: None,
            cpus: 1,
            crowded: 0,
            opened: false,
            since: None,
            cpu_ns: 0,
            delay_ns: 0,
            last_check: None,
            quiet_until: None,
            backoff: MIN_BACKOFF,
        }
    }

    /// (time on a CPU, time runnable and waiting), nanoseconds, cumulative.
    fn open(&mut self) {
        if !self.opened {
            self.opened = true;
            self.file = File::open("/proc/thread-self/schedstat").ok();
            self.loadavg = File::open("/proc/loadavg").ok();
            self.cpus = std::fs::read_to_string("/sys/devices/system/cpu/online")
                .ok()
                .and_then(|t| count_cpus(&t))
                .or_else(|| {
                    std::thread::available_parallelism()
                        .ok()
                        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
                })
                .unwrap_or(1);
        }
    }

    /// Samples whether more threads are runnable than there are CPUs (the
    /// caller is one of them); returns whether most recent samples said so.
    fn sample_crowded(&mut self) -> bool {
        self.open();
        let mut buf = [0u8; 128];
        let running = self
            .loadavg
            .as_ref()
            .and_then(|f| f.read_at(&mut buf, 0).ok())
            .and_then(|n| parse_running(buf.get(..n)?));
        if let Some(r) = running {
            self.crowded = (self.crowded << 1) | u8::from(r > self.cpus);
        }
        self.crowded.count_ones() >= CROWDED_SAMPLES
    }

    fn read(&mut self) -> Option<(u64, u64)> {
        self.open();
        let mut buf = [0u8; 96];
        let n = self.file.as_ref()?.read_at(&mut buf, 0).ok()?;
        parse_schedstat(buf.get(..n)?)
    }

    fn start_window(&mut self, now: Instant) {
        if let Some((cpu, delay)) = self.read() {
            self.since = Some(now);
            self.cpu_ns = cpu;
            self.delay_ns = delay;
        }
    }

    fn contended(&mut self, now: Instant) -> bool {
        if let Some(until) = self.quiet_until {
            if now < until {
                return true;
            }
            // The back-off is over: measure afresh, starting now (a sample
            // of the machine at once, a new window of the thread).
            self.quiet_until = None;
            self.since = None;
            self.last_check = None;
        }
        if self
            .last_check
            .is_some_and(|t| now.saturating_duration_since(t) < CHECK_EVERY)
        {
            return false;
        }
        self.last_check = Some(now);
        if self.sample_crowded() {
            // No idle CPU for the peer: every spin would take one.
            self.quiet_until = Some(now + MIN_BACKOFF);
            return true;
        }
        let Some(since) = self.since else {
            self.start_window(now);
            return false;
        };
        if now.saturating_duration_since(since) > STALE_AFTER {
            self.start_window(now);
            return false;
        }
        let Some((cpu, delay)) = self.read() else {
            return false;
        };
        let (d_cpu, d_delay) = (
            cpu.saturating_sub(self.cpu_ns),
            delay.saturating_sub(self.delay_ns),
        );
        let runnable = d_cpu.saturating_add(d_delay);
        if runnable < MIN_RUNNABLE_NS {
            return false;
        }
        let wall =
            u64::try_from(now.saturating_duration_since(since).as_nanos()).unwrap_or(u64::MAX);
        (self.since, self.cpu_ns, self.delay_ns) = (Some(now), cpu, delay);
        if runnable.saturating_mul(100) < wall.saturating_mul(MIN_RUNNABLE_SHARE) {
            // Mostly asleep: no judgement (see MIN_RUNNABLE_SHARE).
            return false;
        }
        if d_delay.saturating_mul(100) > runnable.saturating_mul(CONTENDED_PERCENT) {
            self.quiet_until = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            true
        } else {
            self.backoff = MIN_BACKOFF;
            false
        }
    }
}

thread_local! {
    static GAUGE: RefCell<Gauge> = const { RefCell::new(Gauge::new()) };
}

/// The CPUs of a kernel CPU list (`0-3,6,8-9`: 7).
fn count_cpus(list: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in list.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u32>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => {
                part.parse::<u32>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

/// The runnable threads of a `/proc/loadavg` line (`0.52 0.58 0.59 3/218
/// 4242`: 3).
fn parse_running(bytes: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(bytes).ok()?;
    let field = text.split_ascii_whitespace().nth(3)?;
    field.split('/').next()?.parse().ok()
}

/// Parses the first two fields of a `schedstat` line: time on a CPU and time
/// waiting on a runqueue, in nanoseconds.
fn parse_schedstat(bytes: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut fields = text.split_ascii_whitespace();
    let cpu = fields.next()?.parse().ok()?;
    let delay = fields.next()?.parse().ok()?;
    Some((cpu, delay))
}

/// Whether the calling thread's CPUs are oversubscribed, so that spinning
/// would take a CPU from a thread that needs it (its peer, typically).
///
/// Two signals. The machine: more threads runnable than online CPUs in at least 4
/// of the last 8 samples of `/proc/loadavg` (taken at most every 4 ms, when
/// asked) means no CPU is idle, so a spinner holds one its peer would need
/// (20 ms without spinning, then a new sample). The thread: its scheduler
/// statistics are read at most every 4 ms, and judged over windows in which the thread
/// was runnable (running or waiting for a CPU) for at least 20 ms and half
/// the wall time. Once contention is seen, the answer stays
/// `true` for a back-off period (20 ms, doubling while the contention lasts,
/// at most 640 ms), then a new window is measured. Where
/// `/proc/thread-self/schedstat` cannot be read, always `false`.
///
/// ```
/// use std::time::Instant;
/// // A thread that has barely run has nothing to judge yet.
/// let contended = ipc_core::doorbell::cpu_contended(Instant::now());
/// # let _ = contended;
/// ```
pub fn cpu_contended(now: Instant) -> bool {
    GAUGE.with(|g| g.try_borrow_mut().is_ok_and(|mut g| g.contended(now)))
}

/// What the calling thread's contention gauge (see [`cpu_contended`]) holds,
/// read without measuring anything: for a harness that must know whether a
/// slot it times starts with the gauge still backing off after an earlier
/// contended period (that slot would then sleep where it would spin).
///
/// ```
/// use std::time::Instant;
/// let g = ipc_core::doorbell::gauge_state(Instant::now());
/// // A thread that never waited adaptively has no back-off.
/// assert!(g.backing_off.is_zero());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GaugeState {
    /// Time left in the current back-off (no spinning until it ends); zero
    /// when the gauge is not backing off.
    pub backing_off: Duration,
    /// The back-off the next contention verdict would start (20 ms after an
    /// uncontended window, doubling while contention lasts, at most 640 ms).
    pub next_backoff: Duration,
    /// Of the last 8 samples of the machine (`/proc/loadavg`), how many saw
    /// more runnable threads than CPUs.
    pub crowded_samples: u32,
}

/// The longest back-off of the contention gauge: a thread that saw
/// contention spins again at most this long after the contention ended
/// (then a probe window decides).
///
/// ```
/// assert_eq!(ipc_core::doorbell::MAX_GAUGE_BACKOFF.as_millis(), 640);
/// ```
pub const MAX_GAUGE_BACKOFF: Duration = MAX_BACKOFF;

/// The calling thread's [`GaugeState`] at `now`.
///
/// ```
/// use std::time::Instant;
/// let g = ipc_core::doorbell::gauge_state(Instant::now());
/// assert!(g.crowded_samples <= 8);
/// ```
pub fn gauge_state(now: Instant) -> GaugeState {
    GAUGE.with(|g| {
        g.try_borrow().map_or(
            GaugeState {
                backing_off: Duration::ZERO,
                next_backoff: MIN_BACKOFF,
                crowded_samples: 0,
            },
            |g| GaugeState {
                backing_off: g
                    .quiet_until
                    .map_or(Duration::ZERO, |t| t.saturating_duration_since(now)),
                next_backoff: g.backoff,
                crowded_samples: g.crowded.count_ones(),
            },
        )
    })
}

/// The smallest growth step of a [`SpinBudget`] after a successful spin.
const GROW_STEP_NS: u64 = 1_000;

/// A learned spin budget: how long the next wait should spin before it
/// sleeps, at most the caller's limit.
///
/// One per waiting side that waits repeatedly for the same peer (a client
/// session, a server worker). See the module docs for the rules.
///
/// ```
/// use std::time::{Duration, Instant};
/// use ipc_core::doorbell::SpinBudget;
///
/// let max = Duration::from_micros(50);
/// let mut b = SpinBudget::new(max);
/// assert_eq!(b.current(max), max);
/// b.missed(); // the spin ended in a sleep anyway
/// assert_eq!(b.current(max), max / 2);
/// b.slept(Duration::from_micros(40), max); // a 40 µs spin would have caught it
/// assert_eq!(b.current(max), max);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpinBudget {
    ns: u64,
}

impl SpinBudget {
    /// A budget starting at `start`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = ipc_core::doorbell::SpinBudget::new(Duration::from_micros(10));
    /// assert_eq!(b.current(Duration::from_micros(5)), Duration::from_micros(5));
    /// ```
    pub fn new(start: Duration) -> Self {
        Self {
            ns: duration_ns(start),
        }
    }

    /// The learned budget, capped at `max`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = ipc_core::doorbell::SpinBudget::new(Duration::from_micros(10));
    /// assert_eq!(b.current(Duration::MAX), Duration::from_micros(10));
    /// ```
    pub fn current(&self, max: Duration) -> Duration {
        Duration::from_nanos(self.ns).min(max)
    }

    /// How long the wait starting at `now` should spin: the learned budget
    /// capped at `max`, or zero while the thread's CPU is contended
    /// ([`cpu_contended`]).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let b = ipc_core::doorbell::SpinBudget::new(Duration::from_micros(10));
    /// assert!(b.limit(Instant::now(), Duration::from_micros(10)) <= Duration::from_micros(10));
    /// ```
    pub fn limit(&self, now: Instant, max: Duration) -> Duration {
        if max.is_zero() || cpu_contended(now) {
            Duration::ZERO
        } else {
            self.current(max)
        }
    }

    /// The spin caught its event: grow by an eighth (at least 1 µs).
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut b = ipc_core::doorbell::SpinBudget::new(Duration::ZERO);
    /// b.caught(Duration::from_micros(50));
    /// assert_eq!(b.current(Duration::MAX), Duration::from_micros(1));
    /// ```
    pub fn caught(&mut self, max: Duration) {
        let grown = self.ns.saturating_add((self.ns / 8).max(GROW_STEP_NS));
        self.ns = grown.min(duration_ns(max));
    }

    /// The spin ended in a sleep anyway: halve (below 1 µs: zero, no spin
    /// at all).
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut b = ipc_core::doorbell::SpinBudget::new(Duration::from_micros(8));
    /// b.missed();
    /// assert_eq!(b.current(Duration::MAX), Duration::from_micros(4));
    /// ```
    pub fn missed(&mut self) {
        self.ns /= 2;
        if self.ns < GROW_STEP_NS {
            self.ns = 0;
        }
    }

    /// The waiter slept and its event came `asleep` after the spin ended: a
    /// spin of `asleep` more would have caught it. If that is within `max`,
    /// the budget grows to twice it (capped at `max`); a longer sleep
    /// teaches nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// let max = Duration::from_micros(100);
    /// let mut b = ipc_core::doorbell::SpinBudget::new(Duration::ZERO);
    /// b.slept(Duration::from_micros(30), max);
    /// assert_eq!(b.current(max), Duration::from_micros(60));
    /// b.slept(Duration::from_millis(5), max); // too long to spin for
    /// assert_eq!(b.current(max), Duration::from_micros(60));
    /// ```
    pub fn slept(&mut self, asleep: Duration, max: Duration) {
        if asleep < max {
            let want = duration_ns(asleep).saturating_mul(2).min(duration_ns(max));
            self.ns = self.ns.max(want);
        }
    }
}

/// Nanoseconds of `d`, saturating.
fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_parses() {
        assert_eq!(
            parse_schedstat(b"930040 9742802 2\n"),
            Some((930_040, 9_742_802))
        );
        assert_eq!(parse_schedstat(b"x y z"), None);
        assert_eq!(parse_schedstat(b""), None);
        assert_eq!(parse_running(b"0.52 0.58 0.59 3/218 4242\n"), Some(3));
        assert_eq!(parse_running(b"0.52 0.58"), None);
        assert_eq!(count_cpus("0-1\n"), Some(2));
        assert_eq!(count_cpus("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpus("x"), None);
    }

    #[test]
    fn this_thread_has_schedstat() {
        let mut g = Gauge::new();
        assert!(g.read().is_some(), "/proc/thread-self/schedstat unreadable");
    }

    #[test]
    fn the_gauge_keeps_its_back_off() {
        // Whether this machine is contended depends on what else runs (a
        // busy CI machine is): whatever the gauge answers, a `true` must
        // come with a back-off period in the future.
        let mut g = Gauge::new();
        let start = Instant::now();
        let mut answers = 0;
        while start.elapsed() < Duration::from_millis(20) {
            let now = Instant::now();
            if g.contended(now) {
                assert!(g.quiet_until.is_some_and(|u| u > now));
            }
            answers += 1;
        }
        assert!(answers > 0);
    }

    #[test]
    fn budget_learns() {
        let max = Duration::from_micros(64);
        let mut b = SpinBudget::new(max);
        for _ in 0..10 {
            b.missed();
        }
        assert_eq!(b.current(max), Duration::ZERO);
        for _ in 0..200 {
            b.caught(max);
        }
        assert_eq!(b.current(max), max);
        b.missed();
        b.slept(Duration::from_micros(100), max);
        assert_eq!(b.current(max), max / 2);
        b.slept(Duration::from_micros(1), max);
        assert_eq!(b.current(max), max / 2);
    }
}
