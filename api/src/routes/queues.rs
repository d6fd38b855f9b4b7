//! `/v1/queues`: per kind, jobs by state, the oldest due job's wait and the attempts
//! finished over the last minute and hour.

use std::collections::BTreeMap;

use engine::admin;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

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
    #[oai(nullable)]
    pub oldest_pending_age_ms: Option<i64>,
    /// Attempts finished in the last minute.
    pub finished_last_minute: i64,
    /// Attempts finished in the last hour.
    pub finished_last_hour: i64,
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
        let done = admin::throughput(db, now).await?;
        Ok(Json(
            stats
                .into_iter()
                .map(|s| {
                    let done = done.get(&s.kind).copied().unwrap_or_default();
                    QueueView {
                        counts: s
                            .counts
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect(),
                        kind: s.kind,
                        oldest_pending_age_ms: s.oldest_pending_age_ms,
                        finished_last_minute: done.last_minute,
                        finished_last_hour: done.last_hour,
                    }
                })
                .collect(),
        ))
    }
}
