//! The engine's metrics, through the `metrics` facade: the binary installs a Prometheus
//! recorder; without one (tests, library use) recording costs next to nothing.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `veza_job_attempts_total` | counter | `kind`, `outcome` (succeeded, skipped, retrying, failed, snoozed, released) |
//! | `veza_job_attempt_duration_seconds` | histogram | `kind`, `outcome` |
//! | `veza_job_start_latency_seconds` | histogram | `kind`: from due (`run_at`) to start |

use std::time::Duration;

use crate::clock::Millis;
use crate::storage::AttemptEnd;

/// Attempts by kind and outcome.
pub const ATTEMPTS_TOTAL: &str = "veza_job_attempts_total";
/// Attempt run time by kind and outcome.
pub const ATTEMPT_DURATION: &str = "veza_job_attempt_duration_seconds";
/// Delay from a job being due to its attempt starting.
pub const START_LATENCY: &str = "veza_job_start_latency_seconds";

/// Records one finished attempt.
pub fn record_attempt(kind: &str, due_for: Millis, took: Duration, end: &AttemptEnd) {
    let Some(outcome) = end.outcome() else {
        return; // a claim undone at shutdown: no attempt ran
    };
    let labels = [("kind", kind.to_owned()), ("outcome", outcome.to_owned())];
    metrics::counter!(ATTEMPTS_TOTAL, &labels).increment(1);
    metrics::histogram!(ATTEMPT_DURATION, &labels).record(took.as_secs_f64());
    metrics::histogram!(START_LATENCY, "kind" => kind.to_owned())
        .record(due_for.max(0) as f64 / 1000.0);
}
