//! `orphan_sweep`: finds tracks stuck in `processing` whose upload died half-way (the file
//! never reached `MEDIA_ROOT`) and moves them to `failed`, so the uploader sees an error
//! instead of a spinner forever.
//!
//! Triggered at boot and hourly by the `orphan_sweep` schedule (unique key
//! `schedule:orphan_sweep`). Idempotent: each row moves through the guarded transition
//! `processing → failed`, so a second run, or a concurrent one, changes nothing. It never
//! deletes rows or files, and never touches a track whose file exists, a recent track, or
//! a track in another state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::scheduler::{Every, Schedule};
use engine::state_machine::{Actor, TransitionError};
use engine::{Job, JobContext, JobError, JobPolicy, Outcome, RetryPolicy};
use serde::{Deserialize, Serialize};

use crate::tracks::state::{self, TrackStatus};

/// The message a swept track carries.
pub const STATUS_MESSAGE: &str = "orphan cleanup: file missing on disk after >1h in processing";

/// Args: none; the sweep reads its settings from [`SweepSettings`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphanSweep {}

impl Job for OrphanSweep {
    const KIND: &'static str = "orphan_sweep";
    const POLICY: JobPolicy = JobPolicy {
        retry: RetryPolicy::exponential(Duration::from_secs(30), Duration::from_secs(900), 5),
        timeout: Duration::from_secs(300),
        concurrency: 1,
        priority: 5,
    };
}

/// Where uploads live and how old a `processing` track must be to count as orphaned.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    /// `MEDIA_ROOT`.
    pub media_root: PathBuf,
    /// `ORPHAN_TRACK_AGE`.
    pub min_age: Duration,
}

/// The boot + hourly schedule.
pub fn schedule() -> Schedule {
    Schedule::new(
        "orphan_sweep",
        Every::Interval(Duration::from_secs(3600)),
        &OrphanSweep {},
    )
    .run_at_boot()
}

/// Rows examined per page.
const PAGE: i64 = 500;

/// Runs one sweep.
pub async fn handle(
    _args: OrphanSweep,
    ctx: JobContext,
    settings: &SweepSettings,
) -> Result<Outcome, JobError> {
    let now = ctx.now_ms();
    let cutoff = now - i64::try_from(settings.min_age.as_millis()).unwrap_or(i64::MAX);
    let actor = Actor::job(ctx.job_id);
    let (mut after_id, mut swept, mut seen) = (0i64, 0u64, 0u64);
    loop {
        let page: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, file_path FROM tracks \
             WHERE status = 'processing' AND created_at < $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(cutoff)
        .bind(after_id)
        .bind(PAGE)
        .fetch_all(ctx.db())
        .await?;
        let Some((last, _)) = page.last() else { break };
        after_id = *last;
        for (id, file_path) in &page {
            seen += 1;
            if file_exists(&settings.media_root, file_path).await {
                continue;
            }
            let mut conn = ctx.db().acquire().await?;
            match state::transition(
                &mut conn,
                *id,
                TrackStatus::Processing,
                TrackStatus::Failed,
                Some(STATUS_MESSAGE),
                &actor,
                now,
            )
            .await
            {
                Ok(()) => swept += 1,
                // Finished or failed by someone else since we read it: leave it be.
                Err(TransitionError::Stale { .. }) => {}
                Err(e) => return Err(JobError::transient(engine::job::error_chain(&e))),
            }
        }
    }
    tracing::info!(examined = seen, swept, "orphan sweep done");
    Ok(Outcome::Succeeded)
}

/// True when `relative` names an existing file under `root`. A path that escapes the root
/// (`..`, absolute) is treated as present: the sweep must never fail a track it cannot
/// judge.
async fn file_exists(root: &Path, relative: &str) -> bool {
    let rel = Path::new(relative);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        tracing::warn!(
            path = relative,
            "track file path escapes MEDIA_ROOT; not sweeping it"
        );
        return true;
    }
    match tokio::fs::metadata(root.join(rel)).await {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        // Permission errors, a missing mount…: unknown, so keep the track.
        Err(e) => {
            tracing::warn!(path = relative, error = %e, "cannot check track file; not sweeping it");
            true
        }
    }
}
