//! Logs a hostile client cannot flood: every line it can cause is rate
//! limited per kind, with a count of the lines left out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One log line per kind per this period; the rest are counted.
const LOG_PERIOD: Duration = Duration::from_secs(1);

/// Rate limit of repeated log lines (the acceptor's and the workers'): at most one line per kind
/// per [`LOG_PERIOD`], the next one saying how many were suppressed.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    /// Per kind: when its last line was written, and lines suppressed since.
    kinds: HashMap<&'static str, (Instant, u64)>,
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
    /// Whether a line of `kind` may be written now; if so, how many were
    /// suppressed before it.
    pub(crate) fn allow(&mut self, kind: &'static str, now: Instant) -> Option<Suppressed> {
        match self.kinds.get_mut(kind) {
            Some((last, n)) if now.duration_since(*last) < LOG_PERIOD => {
                *n += 1;
                None
            }
            Some((last, n)) => {
                *last = now;
                Some(Suppressed(std::mem::take(n)))
            }
            None => {
                self.kinds.insert(kind, (now, 0));
                Some(Suppressed(0))
            }
        }
    }

    /// Reports every count of suppressed lines still unreported (at a stop).
    pub(crate) fn finish(&mut self) {
        for (kind, (_, n)) in &mut self.kinds {
            if *n > 0 {
                tracing::warn!("{kind}: {n} more suppressed");
                *n = 0;
            }
        }
    }

    /// Reports the counts of kinds that went quiet with lines suppressed.
    pub(crate) fn flush(&mut self, now: Instant) {
        for (kind, (last, n)) in &mut self.kinds {
            if *n > 0 && now.duration_since(*last) >= LOG_PERIOD {
                tracing::warn!("{kind}: {n} more suppressed");
                *last = now;
                *n = 0;
            }
        }
    }
}
