//! Logs a hostile client cannot flood: every line it can cause is rate
//! limited per kind, with a count of the lines left out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One log line per kind per this period; the rest are counted.
const LOG_PERIOD: Duration = Duration::from_secs(1);

/// Rate limit of repeated log lines (the acceptor's and the workers'): at
/// most one line per kind per [`LOG_PERIOD`]; the next line, or a summary
/// once the kind goes quiet, says how many were left out. A summary has the
/// level of the lines it counts.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    kinds: HashMap<&'static str, Kind>,
}

/// What the limiter remembers of one kind of line.
#[derive(Debug)]
struct Kind {
    /// When its last line was written.
    last: Instant,
    /// Lines left out since.
    suppressed: u64,
    /// Its lines are `info`, not `warn`.
    info: bool,
}

/// `" (N more suppressed)"`, or nothing when N is 0.
pub(crate) struct Suppressed(u64);

impl std::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} more suppressed)"),
        }
    }
}

impl LogLimiter {
    /// Whether a warning of `kind` may be written now; if so, how many were
    /// suppressed before it.
    pub(crate) fn allow(&mut self, kind: &'static str, now: Instant) -> Option<Suppressed> {
        self.allow_at(kind, false, now)
    }

    /// [`allow`](Self::allow) for an `info` line.
    pub(crate) fn allow_info(&mut self, kind: &'static str, now: Instant) -> Option<Suppressed> {
        self.allow_at(kind, true, now)
    }

    fn allow_at(&mut self, kind: &'static str, info: bool, now: Instant) -> Option<Suppressed> {
        match self.kinds.get_mut(kind) {
            Some(k) if now.duration_since(k.last) < LOG_PERIOD => {
                k.suppressed += 1;
                None
            }
            Some(k) => {
                k.last = now;
                Some(Suppressed(std::mem::take(&mut k.suppressed)))
            }
            None => {
                self.kinds.insert(
                    kind,
                    Kind {
                        last: now,
                        suppressed: 0,
                        info,
                    },
                );
                Some(Suppressed(0))
            }
        }
    }

    /// Reports every count of suppressed lines still unreported (at a stop).
    pub(crate) fn finish(&mut self) {
        for (kind, k) in &mut self.kinds {
            report(kind, k);
        }
    }

    /// Whether a count of suppressed lines waits to be reported by
    /// [`flush`](Self::flush): a thread that sleeps must then wake up within
    /// the log period (otherwise it may sleep until there is work).
    pub(crate) fn pending(&self) -> bool {
        self.kinds.values().any(|k| k.suppressed > 0)
    }

    /// Reports the counts of kinds that went quiet with lines suppressed.
    pub(crate) fn flush(&mut self, now: Instant) {
        for (kind, k) in &mut self.kinds {
            if now.duration_since(k.last) >= LOG_PERIOD && report(kind, k) {
                k.last = now;
            }
        }
    }
}

/// Logs how many lines of `kind` were left out, if any; returns whether.
fn report(kind: &str, k: &mut Kind) -> bool {
    let n = std::mem::take(&mut k.suppressed);
    match (n, k.info) {
        (0, _) => return false,
        (n, true) => tracing::info!("{kind}: {n} more suppressed"),
        (n, false) => tracing::warn!("{kind}: {n} more suppressed"),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_and_period_then_the_count() {
        let mut l = LogLimiter::default();
        let t0 = Instant::now();
        assert_eq!(l.allow("a", t0).map(|s| s.0), Some(0));
        for i in 1..=5 {
            assert!(l.allow("a", t0 + Duration::from_millis(i)).is_none());
        }
        // Another kind is not held back by the first.
        assert_eq!(l.allow_info("b", t0).map(|s| s.0), Some(0));
        let later = t0 + LOG_PERIOD;
        assert_eq!(l.allow("a", later).map(|s| s.0), Some(5));
        assert!(l.allow("a", later).is_none());
        // A summary clears the count: nothing is reported twice.
        l.finish();
        assert_eq!(l.kinds["a"].suppressed, 0);
        assert_eq!(l.allow("a", later + LOG_PERIOD).map(|s| s.0), Some(0));
    }
}
