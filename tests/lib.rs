//! End-to-end test support: the job kinds that both the `crash-worker` binary and the
//! tests in this package register, so that the tests can enqueue exactly what the child
//! processes run.
//!
//! - [`AbortWorker`]: aborts the process that runs it, on every attempt.
//! - [`SleepMs`]: sleeps, then succeeds; appends `start …` / `end …` lines to a marker file
//!   so that a test can see an attempt began (and whether it ended).
//! - [`Noop`]: succeeds at once.
//! - [`StepFlow`]: a workflow of durable steps, each appending a line to a marker file,
//!   with a pause between steps (where the crash test kills its worker).

use std::io::Write as _;
use std::time::Duration;

use engine::{Job, JobPolicy, Outcome, Registry, RetryPolicy};
use serde::{Deserialize, Serialize};

/// Quick retries (100 ms doubling to 1 s), so that a rescued job runs again within the
/// test's patience; a long timeout, so that only the tests cut attempts short.
pub const TEST_POLICY: JobPolicy = JobPolicy {
    retry: RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1), 20),
    timeout: Duration::from_secs(300),
    concurrency: 8,
    priority: 0,
};

/// Kills its own worker process mid-job (`std::process::abort()`), every time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortWorker {}

impl Job for AbortWorker {
    const KIND: &'static str = "abort_worker";
    const POLICY: JobPolicy = JobPolicy {
        concurrency: 1,
        ..TEST_POLICY
    };
}

/// Sleeps `ms` milliseconds, then succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SleepMs {
    /// How long the attempt takes.
    pub ms: u64,
    /// A file that gets `start <job> <attempt> <worker>` when an attempt begins and
    /// `end <job> <attempt> <worker>` when it finishes its sleep.
    #[serde(default)]
    pub marker: Option<String>,
}

impl SleepMs {
    /// A sleep with no marker file.
    pub fn new(ms: u64) -> Self {
        Self { ms, marker: None }
    }

    /// A sleep that records its start and end in `marker`.
    pub fn with_marker(ms: u64, marker: impl Into<String>) -> Self {
        Self {
            ms,
            marker: Some(marker.into()),
        }
    }
}

impl Job for SleepMs {
    const KIND: &'static str = "sleep_ms";
    const POLICY: JobPolicy = TEST_POLICY;
}

/// Does nothing and succeeds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Noop {}

impl Job for Noop {
    const KIND: &'static str = "noop";
    const POLICY: JobPolicy = TEST_POLICY;
}

/// A workflow of `steps` durable steps (`ctx.step`); step `i` appends
/// `step <i> <job> <attempt> <worker>` to `marker`, and the handler pauses `gap_ms` after
/// each step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFlow {
    /// How many steps.
    pub steps: u32,
    /// The pause after each step.
    pub gap_ms: u64,
    /// The file each step appends its line to.
    pub marker: String,
}

impl Job for StepFlow {
    const KIND: &'static str = "step_flow";
    const POLICY: JobPolicy = TEST_POLICY;
}

/// Appends one line to `path` (created if missing), flushed before returning.
fn append_line(path: &str, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{line}")?;
    f.sync_data()
}

/// The three test kinds with their handlers.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<AbortWorker, _, _>(|_, ctx| async move {
        eprintln!(
            "abort_worker: job {} attempt {} aborts worker {}",
            ctx.job_id, ctx.attempt, ctx.worker_id
        );
        std::process::abort()
    });
    r.register::<SleepMs, _, _>(|args, ctx| async move {
        let line = |what: &str| format!("{what} {} {} {}", ctx.job_id, ctx.attempt, ctx.worker_id);
        if let Some(path) = &args.marker {
            append_line(path, &line("start")).map_err(engine::JobError::transient)?;
        }
        tokio::time::sleep(Duration::from_millis(args.ms)).await;
        if let Some(path) = &args.marker {
            append_line(path, &line("end")).map_err(engine::JobError::transient)?;
        }
        Ok(Outcome::Succeeded)
    });
    r.register::<Noop, _, _>(|_, _| async { Ok(Outcome::Succeeded) });
    r.register::<StepFlow, _, _>(|args, ctx| async move {
        for i in 0..args.steps {
            ctx.step(&format!("s{i}"), async || {
                let line = format!("step {i} {} {} {}", ctx.job_id, ctx.attempt, ctx.worker_id);
                append_line(&args.marker, &line).map_err(engine::JobError::transient)
            })
            .await?;
            tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
        }
        Ok(Outcome::Succeeded)
    });
    r
}

/// The lines of a marker file (none if it does not exist yet).
pub fn marker_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}
