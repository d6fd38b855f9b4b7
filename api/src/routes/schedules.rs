//! `/v1/schedules`: list with last and next run; run one now (admin).

use engine::{Actor, Enqueued};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::ApiTags;
use crate::auth::{ApiKeyAuth, Scope};
use crate::problem::ApiError;
use crate::state::ApiState;

/// A schedule. Times are ms since the Unix epoch.
#[derive(Debug, Clone, Object)]
pub struct ScheduleView {
    /// Name.
    pub name: String,
    /// The kind it enqueues.
    pub kind: String,
    /// Interval or cron expression.
    pub every: String,
    /// Fires at boot too.
    pub run_at_boot: bool,
    /// Last time it fired.
    #[oai(nullable)]
    pub last_run_at: Option<i64>,
    /// Next time it fires.
    pub next_run_at: i64,
    /// The job of its last run.
    #[oai(nullable)]
    pub last_job_id: Option<i64>,
}

/// What running a schedule now did.
#[derive(Debug, Clone, Object)]
pub struct RunView {
    /// The job: new, or the unfinished previous run.
    pub job_id: i64,
    /// False when the previous run is unfinished and nothing new was enqueued.
    pub enqueued: bool,
}

/// The schedules routes.
pub struct SchedulesApi(pub ApiState);

#[OpenApi(tag = "ApiTags::Schedules")]
impl SchedulesApi {
    /// Every schedule with its last and next run. Scope: read.
    #[oai(path = "/v1/schedules", method = "get")]
    async fn list(&self, auth: ApiKeyAuth) -> Result<Json<Vec<ScheduleView>>, ApiError> {
        auth.require(Scope::Read)?;
        let list = self.0.scheduler.list().await?;
        Ok(Json(
            list.into_iter()
                .map(|s| ScheduleView {
                    name: s.name,
                    kind: s.kind,
                    every: s.every,
                    run_at_boot: s.run_at_boot,
                    last_run_at: s.last_run_at,
                    next_run_at: s.next_run_at,
                    last_job_id: s.last_job_id,
                })
                .collect(),
        ))
    }

    /// Enqueue a schedule's job now (nothing new while its previous run is unfinished).
    /// Scope: admin.
    #[oai(path = "/v1/schedules/:name/run", method = "post")]
    async fn run(&self, auth: ApiKeyAuth, name: Path<String>) -> Result<Json<RunView>, ApiError> {
        let caller = auth.require(Scope::Admin)?;
        let run = self
            .0
            .scheduler
            .run_now(&name.0, &Actor::api_key(caller.key_id))
            .await?;
        Ok(Json(match run {
            Enqueued::Inserted(id) => RunView {
                job_id: id,
                enqueued: true,
            },
            Enqueued::Existing(id) => RunView {
                job_id: id,
                enqueued: false,
            },
        }))
    }
}
