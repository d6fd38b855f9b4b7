//! What a job is: its kind's contract ([`Job`]), its policy, its outcome and its engine state.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::{Millis, duration_ms};

/// A job kind: serde args that name their kind and carry their policy.
///
/// ```
/// use engine::{Job, JobPolicy, RetryPolicy};
/// use serde::{Deserialize, Serialize};
/// use std::time::Duration;
///
/// /// Moves tracks stuck in `processing` without a file to `failed`.
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct OrphanSweep {}
///
/// impl Job for OrphanSweep {
///     const KIND: &'static str = "orphan_sweep"; // stored in every row: never rename
///     const POLICY: JobPolicy = JobPolicy {
///         retry: RetryPolicy::exponential(Duration::from_secs(10), Duration::from_secs(600), 5),
///         timeout: Duration::from_secs(300),
///         concurrency: 1,
///         priority: 0,
///     };
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The kind's name, stored in every row: snake_case and never renamed.
    const KIND: &'static str;
    /// Retries, timeout, concurrency and default priority of this kind.
    const POLICY: JobPolicy = JobPolicy::DEFAULT;

    /// While an unfinished job (pending, running or retrying) holds this key, enqueueing
    /// another job with the same key inserts nothing and returns the holder's id.
    fn unique_key(&self) -> Option<String> {
        None
    }
}

/// How a kind is run: retries, timeout, how many at once in one process, default priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPolicy {
    /// When to retry after a transient failure.
    pub retry: RetryPolicy,
    /// An attempt running longer than this is cut off and counts as a transient failure.
    pub timeout: Duration,
    /// Jobs of this kind one process runs at once.
    pub concurrency: usize,
    /// Default priority: lower runs first (0 is the highest).
    pub priority: i32,
}

impl JobPolicy {
    /// 20 attempts from 1 s to 1 h apart, 60 s timeout, 4 at once, priority 0.
    pub const DEFAULT: Self = Self {
        retry: RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(3600), 20),
        timeout: Duration::from_secs(60),
        concurrency: 4,
        priority: 0,
    };
}

/// Exponential backoff with jitter: the one backoff formula of veza-jobs. Jobs persist it as
/// their `run_at` (and carry `base` and `cap` on their row, so that any process rescuing a
/// job retries it on the job's own policy); the domain rows that mirror a job's retries
/// (seller transfers' `next_retry_at`) and the runtime's own database-error backoff use the
/// same [`RetryPolicy::delay`].
///
/// After failed attempt `n` (1-based) the job waits `min(cap, base·2^(n-1))`, then ±10 %
/// jitter so that jobs failing together do not retry together. With `base = 1 s`,
/// `cap = 1 h`: 1 s, 2 s, 4 s, 8 s, … 34 min, then 1 h for every later attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failure.
    pub base: Duration,
    /// Longest delay.
    pub cap: Duration,
    /// Attempts in all, the first included; the job fails after the last one.
    pub max_attempts: u32,
}

/// The jitter band: ±10 % of the delay.
const JITTER_FRACTION: f64 = 0.10;

impl RetryPolicy {
    /// A policy of `max_attempts` attempts, `base` doubling up to `cap` between them.
    pub const fn exponential(base: Duration, cap: Duration, max_attempts: u32) -> Self {
        Self {
            base,
            cap,
            max_attempts,
        }
    }

    /// The policy stored on a job row: `base` and `cap` in milliseconds.
    pub fn from_row(base_ms: Millis, cap_ms: Millis, max_attempts: u32) -> Self {
        let ms = |v: Millis| Duration::from_millis(u64::try_from(v.max(0)).unwrap_or(0));
        Self::exponential(ms(base_ms), ms(cap_ms), max_attempts)
    }

    /// The delay after failed attempt `attempt` (1-based), before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(62);
        let factor = 1u64 << exp;
        let base_ms = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let ms = base_ms.saturating_mul(factor);
        Duration::from_millis(ms).min(self.cap)
    }

    /// When the next attempt runs after failed attempt `attempt` at `now`: the delay with
    /// jitter drawn from `rng` (a parameter, so that tests can pin it).
    pub fn next_run_at(&self, attempt: u32, now: Millis, rng: &mut impl Rng) -> Millis {
        let delay = duration_ms(self.delay(attempt));
        let band = (delay as f64 * JITTER_FRACTION) as i64;
        let jitter = if band > 0 {
            rng.random_range(-band..=band)
        } else {
            0
        };
        now.saturating_add(delay + jitter)
    }
}

/// What a handler reports when it did its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The work is done.
    Succeeded,
    /// Nothing to do, on purpose (say, `REDIS_URL` unset): the job succeeds and the reason is
    /// recorded on it and on the attempt.
    Skipped {
        /// Why, for the admin reading the job.
        reason: String,
    },
    /// Not now: run again after this long without using an attempt (the job goes back to
    /// `pending`, its `max_attempts` grows by one, the attempt is recorded as `snoozed`).
    /// For work that waits on something outside (a rate limit, a file still uploading).
    Snooze(Duration),
}

/// Why a handler did not finish its work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Worth retrying (timeouts, 5xx, connection errors): retried with the job's backoff
    /// until the attempts run out.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help (bad input, 4xx): the job fails at once.
    #[error("{0}")]
    Permanent(String),
    /// Worth retrying, at this time (ms since the epoch) rather than after the job's
    /// backoff: a domain row that schedules its own retries (`next_retry_at`) returns the
    /// same number here, so the row and the job agree. Counts as an attempt.
    #[error("{error}")]
    RetryAt {
        /// When the next attempt may run.
        at: Millis,
        /// What went wrong.
        error: String,
    },
    /// Worth retrying after this long (a `Retry-After` header, a rate limit). Counts as an
    /// attempt.
    #[error("{error}")]
    RetryAfter {
        /// How long to wait.
        after: Duration,
        /// What went wrong.
        error: String,
    },
    /// Not a failure: the job waits until `until` (ms since the epoch) — a durable sleep
    /// ([`crate::JobContext::sleep`]) — holding no worker and using no attempt; it is
    /// recorded as a snoozed attempt and resumes at its next unfinished step.
    #[error("waiting until {until}: {reason}")]
    Waiting {
        /// When the job may run again.
        until: Millis,
        /// What it waits for.
        reason: String,
    },
    /// This attempt no longer holds the job's lease (another worker may run it now): the
    /// handler must stop without writing anything. Returned by [`crate::JobContext::fence`];
    /// nothing is recorded for the attempt by this worker.
    #[error("this attempt lost its lease on job {job_id}; another worker may be running it")]
    LeaseLost {
        /// The job.
        job_id: i64,
    },
}

impl JobError {
    /// A transient error from anything displayable, with its cause chain.
    pub fn transient(e: impl fmt::Display) -> Self {
        Self::Transient(e.to_string())
    }

    /// A permanent error from anything displayable.
    pub fn permanent(e: impl fmt::Display) -> Self {
        Self::Permanent(e.to_string())
    }

    /// Retry at `at` (ms since the epoch).
    pub fn retry_at(at: Millis, e: impl fmt::Display) -> Self {
        Self::RetryAt {
            at,
            error: e.to_string(),
        }
    }

    /// Retry after `after`.
    pub fn retry_after(after: Duration, e: impl fmt::Display) -> Self {
        Self::RetryAfter {
            after,
            error: e.to_string(),
        }
    }

    /// A transient error carrying a sqlx error and its sources.
    pub fn database(e: &sqlx::Error) -> Self {
        Self::Transient(error_chain(e))
    }
}

impl From<sqlx::Error> for JobError {
    /// A database error is transient: the next attempt may find the database back.
    fn from(e: sqlx::Error) -> Self {
        Self::database(&e)
    }
}

/// `e` followed by each of its sources, `": "`-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The engine-level state of a job.
///
/// ```text
/// pending ─▶ running ─▶ succeeded
///               │  ▲
///               ▼  │
///            retrying          running ─▶ failed   (permanent error, attempts exhausted)
/// pending|retrying ─▶ cancelled (admin)    failed|cancelled ─▶ pending (admin retry)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its `run_at`, then for a worker. Set by enqueue, admin retry, shutdown release.
    Pending,
    /// Claimed by a worker that holds its lease. Left by ack, by lease expiry or by release.
    Running,
    /// Done; kept until the pruner removes it (`RETENTION_SUCCEEDED`).
    Succeeded,
    /// Failed an attempt, waiting for its backoff `run_at`; will run again.
    Retrying,
    /// Failed for good: a permanent error, attempts exhausted or args that do not decode.
    /// Only an admin retry moves it on.
    Failed,
    /// Stopped by an admin before it ran again. Only an admin retry moves it on.
    Cancelled,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 6] = [
        Self::Pending,
        Self::Running,
        Self::Succeeded,
        Self::Retrying,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The name stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// True once the job will not run again without an admin.
    pub fn is_final(self) -> bool {
        match self {
            Self::Succeeded | Self::Failed | Self::Cancelled => true,
            Self::Pending | Self::Running | Self::Retrying => false,
        }
    }

    /// The edges of the diagram above. The storage module's guarded UPDATEs implement
    /// exactly these; a test checks them against this table.
    pub fn can_transition_to(self, to: JobState) -> bool {
        use JobState::*;
        match (self, to) {
            (Pending, Running) | (Retrying, Running) => true,
            (Running, Succeeded) | (Running, Retrying) | (Running, Failed) => true,
            // shutdown release: the attempt is handed to another worker
            (Running, Pending) => true,
            (Pending, Cancelled) | (Retrying, Cancelled) => true,
            (Failed, Pending) | (Cancelled, Pending) => true,
            (Pending, _) | (Running, _) | (Retrying, _) => false,
            (Succeeded, _) | (Failed, _) | (Cancelled, _) => false,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown job status {s:?}: expected one of {}",
                    Self::ALL.map(JobState::as_str).join(", ")
                )
            })
    }
}

/// A job to enqueue: typed args plus optional overrides of its kind's defaults.
#[derive(Debug, Clone)]
pub struct NewJob<J: Job> {
    /// The args.
    pub args: J,
    /// When it may run first (default: now).
    pub run_at: Option<Millis>,
    /// Priority (default: the kind's).
    pub priority: Option<i32>,
    /// Attempts in all (default: the kind's retry policy).
    pub max_attempts: Option<u32>,
    /// Unique key (default: [`Job::unique_key`]).
    pub unique_key: Option<String>,
}

impl<J: Job> NewJob<J> {
    /// A job with its kind's defaults.
    pub fn new(args: J) -> Self {
        let unique_key = args.unique_key();
        Self {
            args,
            run_at: None,
            priority: None,
            max_attempts: None,
            unique_key,
        }
    }

    /// Runs no earlier than `at`.
    pub fn run_at(mut self, at: Millis) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Overrides the priority (lower runs first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Overrides the number of attempts.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n.max(1));
        self
    }

    /// Sets the unique key.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
}

impl<J: Job> From<J> for NewJob<J> {
    fn from(args: J) -> Self {
        Self::new(args)
    }
}

/// What enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", content = "job_id", rename_all = "snake_case")]
pub enum Enqueued {
    /// A new job was inserted.
    Inserted(i64),
    /// An unfinished job already held the unique key; nothing was inserted.
    Existing(i64),
}

impl Enqueued {
    /// The id of the job that will do the work.
    pub fn id(self) -> i64 {
        match self {
            Self::Inserted(id) | Self::Existing(id) => id,
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const SECS: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn delay_doubles_from_base_up_to_cap() {
        let p = RetryPolicy::exponential(SECS(1), SECS(60), 10);
        let delays: Vec<u64> = (1..=9).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(
            p.delay(u32::MAX),
            SECS(60),
            "huge attempt numbers saturate at the cap"
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let p = RetryPolicy::exponential(SECS(10), SECS(3600), 10);
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=8 {
            let delay = duration_ms(p.delay(attempt));
            let band = delay / 10;
            for _ in 0..50 {
                let at = p.next_run_at(attempt, 1_000_000, &mut rng);
                let waited = at - 1_000_000;
                assert!(
                    (delay - band..=delay + band).contains(&waited),
                    "{waited} vs {delay}"
                );
            }
        }
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
        assert!(
            "done"
                .parse::<JobState>()
                .unwrap_err()
                .contains("expected one of pending")
        );
    }

    #[test]
    fn final_states_have_no_automatic_way_out() {
        for from in JobState::ALL.into_iter().filter(|s| s.is_final()) {
            let exits: Vec<_> = JobState::ALL
                .into_iter()
                .filter(|to| from.can_transition_to(*to))
                .collect();
            let expected: &[JobState] = if from == JobState::Succeeded {
                &[]
            } else {
                &[JobState::Pending]
            };
            assert_eq!(exits, expected, "from {from}");
        }
    }
}
