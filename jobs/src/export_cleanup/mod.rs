//! `export_cleanup`: hourly (schedule `export_cleanup`), deletes the ZIPs of exports past
//! `EXPORT_RETENTION` and marks them `expired` (`ready → expired`); a download link to one
//! then answers 410.
//!
//! It also removes stray files in `EXPORT_DIR` that no ready export owns — a partial
//! `.{id}.zip.part` left by an attempt that was cut off, or a ZIP whose export row is gone —
//! once they are older than [`STRAY_AGE`], so a file being written or just renamed is never
//! touched.

use std::path::Path;
use std::time::{Duration, SystemTime};

use engine::scheduler::{Every, Schedule};
use engine::state_machine::{Actor, TransitionError};
use engine::{Job, JobContext, JobError, JobPolicy, Outcome, RetryPolicy};
use serde::{Deserialize, Serialize};

use crate::exports::state::{self, ExportStatus};
use crate::exports::{ExportSettings, file_path_in};

/// Args: none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportCleanup {}

impl Job for ExportCleanup {
    const KIND: &'static str = "export_cleanup";
    const POLICY: JobPolicy = JobPolicy {
        retry: RetryPolicy::exponential(Duration::from_secs(60), Duration::from_secs(1800), 5),
        timeout: Duration::from_secs(600),
        concurrency: 1,
        priority: 6,
    };
}

/// Hourly.
pub fn schedule() -> Schedule {
    Schedule::new(
        "export_cleanup",
        Every::Interval(Duration::from_secs(3600)),
        &ExportCleanup {},
    )
}

/// Stray files younger than this are left alone.
pub const STRAY_AGE: Duration = Duration::from_secs(24 * 3600);

/// Rows per page.
const PAGE: i64 = 500;

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Exports moved to `expired`.
    pub expired: u64,
    /// Stray files removed.
    pub strays: u64,
}

/// Runs one cleanup.
pub async fn handle(
    _args: ExportCleanup,
    ctx: JobContext,
    settings: &ExportSettings,
) -> Result<Outcome, JobError> {
    let cleaned = clean(&ctx, settings).await?;
    tracing::info!(
        expired = cleaned.expired,
        strays = cleaned.strays,
        "export cleanup done"
    );
    Ok(Outcome::Succeeded)
}

async fn clean(ctx: &JobContext, settings: &ExportSettings) -> Result<Cleaned, JobError> {
    let now = ctx.now_ms();
    let actor = Actor::job(ctx.job_id);
    let mut cleaned = Cleaned::default();
    let mut after = 0i64;
    loop {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM data_exports WHERE status = 'ready' AND expires_at <= $1 AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(now)
        .bind(after)
        .bind(PAGE)
        .fetch_all(ctx.db())
        .await?;
        let Some(last) = ids.last() else { break };
        after = *last;
        for id in ids {
            remove(&file_path_in(&settings.dir, id)).await?;
            let mut conn = ctx.db().acquire().await?;
            match state::expire(&mut conn, id, &actor, now).await {
                Ok(()) => cleaned.expired += 1,
                Err(TransitionError::Stale { .. }) => {}
                Err(e) => return Err(JobError::transient(engine::job::error_chain(&e))),
            }
        }
    }
    cleaned.strays = remove_strays(ctx, settings).await?;
    Ok(cleaned)
}

async fn remove(path: &Path) -> Result<bool, JobError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(JobError::transient(format!(
            "cannot delete {}: {e}",
            path.display()
        ))),
    }
}

/// The export id a file of `EXPORT_DIR` belongs to (`{id}.zip`, `.{id}.zip.part`).
fn export_id_of(name: &str) -> Option<(i64, bool)> {
    if let Some(id) = name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(".zip.part"))
    {
        return id.parse().ok().map(|id| (id, true));
    }
    name.strip_suffix(".zip")
        .and_then(|id| id.parse().ok())
        .map(|id| (id, false))
}

async fn remove_strays(ctx: &JobContext, settings: &ExportSettings) -> Result<u64, JobError> {
    let mut entries = match tokio::fs::read_dir(&settings.dir).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(JobError::transient(format!("cannot read EXPORT_DIR: {e}"))),
    };
    let mut removed = 0;
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| JobError::transient(format!("cannot read EXPORT_DIR: {e}")))?
    {
        let name = entry.file_name();
        let Some((id, partial)) = name.to_str().and_then(export_id_of) else {
            continue;
        };
        let old = entry
            .metadata()
            .await
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age >= STRAY_AGE);
        if !old {
            continue;
        }
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM data_exports WHERE id = $1")
                .bind(id)
                .fetch_optional(ctx.db())
                .await?;
        let owned = !partial
            && status.as_deref().and_then(ExportStatus::parse) == Some(ExportStatus::Ready);
        if !owned && remove(&entry.path()).await? {
            tracing::info!(file = %entry.path().display(), "removed a stray export file");
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_files_are_recognised_by_name() {
        assert_eq!(export_id_of("42.zip"), Some((42, false)));
        assert_eq!(export_id_of(".42.zip.part"), Some((42, true)));
        assert_eq!(export_id_of("notes.txt"), None);
        assert_eq!(export_id_of("x.zip"), None);
    }
}
