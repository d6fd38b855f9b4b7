//! `/v1/queues`: per kind, jobs by state, the oldest due job's wait and the attempts
//! finished over the last minute and hour.

use std::collections::BTreeMap;

use engine::Db;
use engine::admin;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use sqlx::Row;

use super::ApiTags;
use crate::auth::{ApiKeyAuth, Scope};
use crate::problem::ApiError;
use crate::state::ApiState;

/// One kind's queue.
#[derive(Debug, Clone, Object)]
pub struct QueueView {
    /// Kind.
    pub kind: String,
    /// Jobs per state (every state, zeros included).
    pub counts: BTreeMap<String, i64>,
    /// How long the oldest due, unclaimed job has waited, in ms (none when nothing waits).
    pub oldest_pending_age_ms: Option<i64>,
    /// Attempts finished in the last minute.
    pub finished_last_minute: i64,
    /// Attempts finished in the last hour.
    pub finished_last_hour: i64,
}

/// Attempts finished per kind since `hour_ago`, and since `minute_ago`.
///
/// (This belongs in `engine::admin::stats`; `job_attempts` has no index on `finished_at`,
/// so it reads the attempts table: fine at today's retention, to be moved and indexed.)
async fn throughput(
    db: &Db,
    minute_ago: i64,
    hour_ago: i64,
) -> Result<BTreeMap<String, (i64, i64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT j.kind, SUM(CASE WHEN a.finished_at >= $1 THEN 1 ELSE 0 END), COUNT(*) \
         FROM job_attempts a JOIN jobs j ON j.id = a.job_id \
         WHERE a.finished_at >= $2 GROUP BY j.kind",
    )
    .bind(minute_ago)
    .bind(hour_ago)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
        .collect()
}

/// The queues routes.
pub struct QueuesApi(pub ApiState);

#[OpenApi(tag = "ApiTags::Queues")]
impl QueuesApi {
    /// Every kind with jobs: counts by state, oldest pending age, throughput over the last
    /// minute and hour. Scope: read.
    #[oai(path = "/v1/queues", method = "get")]
    async fn list(&self, auth: ApiKeyAuth) -> Result<Json<Vec<QueueView>>, ApiError> {
        auth.require(Scope::Read)?;
        let db = self.0.engine.db();
        let now = self.0.engine.clock().now_ms();
        let stats = admin::stats(db, now).await?;
        let mut done = throughput(db, now - 60_000, now - 3_600_000).await?;
        Ok(Json(
            stats
                .into_iter()
                .map(|s| {
                    let (minute, hour) = done.remove(&s.kind).unwrap_or_default();
                    QueueView {
                        counts: s
                            .counts
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect(),
                        kind: s.kind,
                        oldest_pending_age_ms: s.oldest_pending_age_ms,
                        finished_last_minute: minute,
                        finished_last_hour: hour,
                    }
                })
                .collect(),
        ))
    }
}
