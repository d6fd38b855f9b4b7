//! Rate-limited logs. What a client can make happen at will (a bad webhook signature, an
//! unknown API key, a failed sign-in) and what repeats on every request during an outage
//! (Redis down) is logged at most once per [`INTERVAL`] per kind: a flood writes a line
//! every few seconds, not one per request, and the next line says how many were left out.
//!
//! ```text
//! if let Some(suppressed) = log_gate::admit("webhook_bad_signature") {
//!     tracing::warn!(suppressed, "Stripe webhook refused: signature");
//! }
//! ```

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most one log per kind this often.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Per kind: when it was last logged, and how many were left out since.
pub struct LogGate {
    interval: Duration,
    kinds: Mutex<Vec<(&'static str, Instant, u64)>>,
}

impl LogGate {
    /// A gate letting one log per kind through every `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            kinds: Mutex::new(Vec::new()),
        }
    }

    /// Whether a log of `kind` at `now` goes through: `Some(n)` with the `n` logs of that
    /// kind left out since the last one, or `None` to leave this one out.
    pub fn admit_at(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            None => {
                kinds.push((kind, now, 0));
                Some(0)
            }
            Some((_, last, suppressed)) if now.duration_since(*last) >= self.interval => {
                let left_out = *suppressed;
                *last = now;
                *suppressed = 0;
                Some(left_out)
            }
            Some((_, _, suppressed)) => {
                *suppressed += 1;
                None
            }
        }
    }
}

static GATE: LogGate = LogGate::new(INTERVAL);

/// Whether a log of `kind` goes through now (see [`LogGate::admit_at`]).
pub fn admit(kind: &'static str) -> Option<u64> {
    GATE.admit_at(kind, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_log_per_kind_per_interval_then_the_count_left_out() {
        let gate = LogGate::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(gate.admit_at("a", t0), Some(0));
        for i in 1..=99 {
            assert_eq!(gate.admit_at("a", t0 + Duration::from_millis(i * 10)), None);
        }
        // Another kind has its own allowance.
        assert_eq!(gate.admit_at("b", t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(gate.admit_at("a", t0 + Duration::from_secs(10)), Some(99));
        assert_eq!(gate.admit_at("a", t0 + Duration::from_secs(11)), None);
        assert_eq!(gate.admit_at("a", t0 + Duration::from_secs(20)), Some(1));
    }
}
