//! Time, injected. Every timestamp the engine writes comes from a [`Clock`], never from the
//! database's `now()`, so tests can move time forward and one SQL text serves both backends.
//!
//! Timestamps are stored as milliseconds since the Unix epoch (`BIGINT`) on SQLite and
//! Postgres alike: one representation, millisecond precision, and ordering that is a plain
//! integer comparison on an index.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

/// Milliseconds since the Unix epoch, as stored in every `*_at` column.
pub type Millis = i64;

/// Converts stored milliseconds to a UTC time (out-of-range values clamp to the epoch).
pub fn to_datetime(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Milliseconds in a duration, saturating.
pub fn duration_ms(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The source of "now" for the engine: the system clock in production, a manual one in tests.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
    /// Added to the wall clock (tests of a host whose clock is off).
    skew_ms: i64,
}

impl Clock {
    /// The real wall clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// The wall clock of a host whose clock is off by `skew_ms` (tests: a worker whose
    /// clock runs ahead must not steal leases on Postgres, where leases use the database's
    /// clock).
    pub fn skewed(skew_ms: i64) -> Self {
        Self {
            manual: None,
            skew_ms,
        }
    }

    /// A clock that stands still at `start` until [`Clock::advance`] or [`Clock::set`] moves it.
    pub fn manual(start: DateTime<Utc>) -> Self {
        Self {
            manual: Some(Arc::new(AtomicI64::new(start.timestamp_millis()))),
            skew_ms: 0,
        }
    }

    /// Now, in milliseconds since the epoch.
    pub fn now_ms(&self) -> Millis {
        match &self.manual {
            Some(t) => t.load(Ordering::SeqCst),
            None => Utc::now().timestamp_millis() + self.skew_ms,
        }
    }

    /// "Now" for lease arithmetic on `backend`: the database's clock on Postgres unless this
    /// is a manual (test) clock (see [`crate::storage`]).
    pub fn lease_now(&self, backend: crate::Backend) -> crate::storage::LeaseNow {
        match (backend, &self.manual) {
            (crate::Backend::Postgres, None) => crate::storage::LeaseNow::Database,
            _ => crate::storage::LeaseNow::At(self.now_ms()),
        }
    }

    /// Now, as a UTC time.
    pub fn now(&self) -> DateTime<Utc> {
        to_datetime(self.now_ms())
    }

    /// Moves a manual clock forward. Panics on the system clock: tests only.
    pub fn advance(&self, by: Duration) {
        let t = self
            .manual
            .as_ref()
            .expect("advance() needs a manual clock");
        t.fetch_add(duration_ms(by), Ordering::SeqCst);
    }

    /// Sets a manual clock. Panics on the system clock: tests only.
    pub fn set(&self, to: DateTime<Utc>) {
        let t = self.manual.as_ref().expect("set() needs a manual clock");
        t.store(to.timestamp_millis(), Ordering::SeqCst);
    }

    /// True for a manual (test) clock.
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = Clock::manual(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now_ms(), start.timestamp_millis() + 1500);
    }
}
