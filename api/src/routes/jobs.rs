//! `/v1/jobs`: list (filters, cursor pagination), one job with its attempts, retry and
//! cancel (admin, audited as `api_key:{id}`). Args and texts are served redacted, for every
//! scope, as the dashboard shows them ([`crate::redact`]).

use engine::admin::{self, AttemptRecord, JobDetail, JobFilter, JobSummary};
use engine::steps::StepRecord;
use engine::{Actor, JobState};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::{ApiTags, DateTimeParam};
use crate::auth::{ApiKeyAuth, Scope};
use crate::problem::ApiError;
use crate::redact::{redact, redact_json_text, redact_text};
use crate::state::ApiState;

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for its run time, then a worker.
    Pending,
    /// Held by a worker.
    Running,
    /// Done.
    Succeeded,
    /// Failed an attempt; waiting for its backoff.
    Retrying,
    /// Failed for good; only an admin retry moves it on.
    Failed,
    /// Cancelled by an admin.
    Cancelled,
}

impl From<JobStatus> for JobState {
    fn from(s: JobStatus) -> Self {
        match s {
            JobStatus::Pending => Self::Pending,
            JobStatus::Running => Self::Running,
            JobStatus::Succeeded => Self::Succeeded,
            JobStatus::Retrying => Self::Retrying,
            JobStatus::Failed => Self::Failed,
            JobStatus::Cancelled => Self::Cancelled,
        }
    }
}

impl From<JobState> for JobStatus {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Pending => Self::Pending,
            JobState::Running => Self::Running,
            JobState::Succeeded => Self::Succeeded,
            JobState::Retrying => Self::Retrying,
            JobState::Failed => Self::Failed,
            JobState::Cancelled => Self::Cancelled,
        }
    }
}

/// A job as listed. Times are ms since the Unix epoch.
#[derive(Debug, Clone, Object)]
pub struct JobView {
    /// Id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// State.
    pub status: JobStatus,
    /// Attempts started (in the current set; an admin retry starts a new set).
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Priority (lower first).
    pub priority: i32,
    /// Enqueued at.
    pub created_at: i64,
    /// When it runs next (pending or retrying), else none.
    #[oai(nullable)]
    pub next_run_at: Option<i64>,
    /// Finished at (succeeded, failed, cancelled).
    #[oai(nullable)]
    pub finished_at: Option<i64>,
    /// The latest error (addresses and keys in it replaced by `[redacted]`).
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// A note from the handler (why it skipped; addresses and keys in it replaced by
    /// `[redacted]`).
    #[oai(nullable)]
    pub note: Option<String>,
    /// Unique key.
    #[oai(nullable)]
    pub unique_key: Option<String>,
}

impl From<JobSummary> for JobView {
    fn from(j: JobSummary) -> Self {
        let next_run_at =
            matches!(j.status, JobState::Pending | JobState::Retrying).then_some(j.run_at);
        Self {
            id: j.id,
            kind: j.kind,
            status: j.status.into(),
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            priority: j.priority,
            created_at: j.created_at,
            next_run_at,
            finished_at: j.finished_at,
            last_error: j.last_error.as_deref().map(redact_text),
            note: j.note.as_deref().map(redact_text),
            unique_key: j.unique_key,
        }
    }
}

/// One finished durable step of the job (`ctx.step`).
#[derive(Debug, Clone, Object)]
pub struct StepView {
    /// Position in the job's step sequence, from 0.
    pub seq: u32,
    /// The step's name.
    pub name: String,
    /// Its stored result, redacted like the args.
    pub result: serde_json::Value,
    /// The attempt that finished it.
    pub attempt: u32,
    /// Finished at.
    pub finished_at: i64,
}

impl From<StepRecord> for StepView {
    fn from(s: StepRecord) -> Self {
        Self {
            seq: s.seq,
            name: s.name,
            result: redact_json_text(&s.result),
            attempt: s.attempt,
            finished_at: s.finished_at,
        }
    }
}

/// One attempt.
#[derive(Debug, Clone, Object)]
pub struct AttemptView {
    /// 1-based within its set of attempts.
    pub attempt: u32,
    /// The worker that ran it.
    pub worker_id: String,
    /// Started at.
    pub started_at: i64,
    /// Ended at (none while running).
    #[oai(nullable)]
    pub finished_at: Option<i64>,
    /// `succeeded`, `skipped`, `retrying`, `failed`, `lease_expired`, `released` or
    /// `snoozed` (the job waited: a snooze or a durable sleep; no attempt used).
    #[oai(nullable)]
    pub outcome: Option<String>,
    /// The error (or the skip reason; addresses and keys in it replaced by `[redacted]`).
    #[oai(nullable)]
    pub error: Option<String>,
}

impl From<AttemptRecord> for AttemptView {
    fn from(a: AttemptRecord) -> Self {
        Self {
            attempt: a.attempt,
            worker_id: a.worker_id,
            started_at: a.started_at,
            finished_at: a.finished_at,
            outcome: a.outcome,
            error: a.error.as_deref().map(redact_text),
        }
    }
}

/// A job with its args and attempt history.
#[derive(Debug, Clone, Object)]
pub struct JobDetailView {
    /// The listed fields.
    #[oai(flatten)]
    pub job: JobView,
    /// The args, as enqueued, with the values of secret or personal fields (`email`,
    /// `api_key`, …) and values that look like an address or a key replaced by `[redacted]`.
    pub args: serde_json::Value,
    /// The worker holding it while running.
    #[oai(nullable)]
    pub locked_by: Option<String>,
    /// Every attempt, oldest first, with its error.
    pub attempts: Vec<AttemptView>,
    /// Its finished durable steps, in order (empty for a job without steps): a retry
    /// resumes after the last one.
    pub steps: Vec<StepView>,
    /// The job that enqueued this one in a fan-out step and waits for it.
    #[oai(nullable)]
    pub parent_id: Option<i64>,
    /// The jobs this one enqueued in fan-out steps, in order (the first 500): each wakes
    /// it when it ends.
    pub children: Vec<ChildView>,
    /// What it waits for while it waits holding no worker (a durable sleep, a signal, its
    /// children), until its `run_at` at the latest; none otherwise.
    #[oai(nullable)]
    pub waiting_for: Option<String>,
}

/// A child job, as its parent lists it.
#[derive(Debug, Clone, Object)]
pub struct ChildView {
    /// Id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// State.
    pub status: JobStatus,
    /// Finished at.
    #[oai(nullable)]
    pub finished_at: Option<i64>,
}

impl From<JobDetail> for JobDetailView {
    fn from(d: JobDetail) -> Self {
        Self {
            job: d.job.into(),
            args: redact(&d.args),
            locked_by: d.locked_by,
            attempts: d.attempts.into_iter().map(Into::into).collect(),
            steps: d.steps.into_iter().map(Into::into).collect(),
            parent_id: d.parent_id,
            children: d
                .children
                .into_iter()
                .map(|c| ChildView {
                    id: c.id,
                    kind: c.kind,
                    status: c.status.into(),
                    finished_at: c.finished_at,
                })
                .collect(),
            waiting_for: d.waiting_for.as_deref().map(redact_text),
        }
    }
}

/// A page of jobs.
#[derive(Debug, Clone, Object)]
pub struct JobPageView {
    /// Newest first.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; none on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<i64>,
}

/// A signal sent.
#[derive(Debug, Clone, Object)]
pub struct SignalView {
    /// The job.
    pub id: i64,
    /// The signal's name.
    pub signal: String,
}

/// The state a retry or cancel left the job in.
#[derive(Debug, Clone, Object)]
pub struct JobStateView {
    /// Id.
    pub id: i64,
    /// Its state now.
    pub status: JobStatus,
}

/// The jobs routes.
pub struct JobsApi(pub ApiState);

#[OpenApi(tag = "ApiTags::Jobs")]
impl JobsApi {
    /// List jobs, newest first, one page at a time. Scope: read.
    ///
    /// The cursor is the last id of the previous page, so pages stay stable while new jobs
    /// are enqueued.
    #[oai(path = "/v1/jobs", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        auth: ApiKeyAuth,
        /// Only this kind.
        kind: Query<Option<String>>,
        /// Only this state.
        status: Query<Option<JobStatus>>,
        /// Enqueued at or after (RFC 3339).
        since: Query<Option<DateTimeParam>>,
        /// Enqueued before (RFC 3339).
        until: Query<Option<DateTimeParam>>,
        /// Page size, 1 to 500 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<u32>>,
        /// The previous page's `next_cursor`.
        cursor: Query<Option<i64>>,
    ) -> Result<Json<JobPageView>, ApiError> {
        auth.require(Scope::Read)?;
        let filter = JobFilter {
            kind: kind.0,
            status: status.0.map(Into::into),
            since: since.0.map(|t| t.0),
            until: until.0.map(|t| t.0),
            before_id: cursor.0,
            limit: limit.0,
            unique_key: None,
        };
        let page = admin::list_jobs(self.0.engine.db(), &filter).await?;
        Ok(Json(JobPageView {
            jobs: page.jobs.into_iter().map(Into::into).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    /// One job: args, state, attempt history with errors, next run. Scope: read.
    #[oai(path = "/v1/jobs/:id", method = "get")]
    async fn get(&self, auth: ApiKeyAuth, id: Path<i64>) -> Result<Json<JobDetailView>, ApiError> {
        auth.require(Scope::Read)?;
        let job = self.0.engine.job_detail(id.0).await?;
        Ok(Json(job.into()))
    }

    /// Retry a failed or cancelled job with fresh attempts. Scope: admin.
    ///
    /// 409 `invalid_job_state` when the job is not failed or cancelled; 409
    /// `unique_key_held` when an unfinished job holds its unique key.
    #[oai(path = "/v1/jobs/:id/retry", method = "post")]
    async fn retry(&self, auth: ApiKeyAuth, id: Path<i64>) -> Result<Json<JobStateView>, ApiError> {
        let caller = auth.require(Scope::Admin)?;
        let state = self
            .0
            .engine
            .retry(id.0, &Actor::api_key(caller.key_id))
            .await?;
        Ok(Json(JobStateView {
            id: id.0,
            status: state.into(),
        }))
    }

    /// Cancel a pending or retrying job (a running job is not interrupted). Scope: admin.
    ///
    /// 409 `invalid_job_state` when the job is in another state.
    #[oai(path = "/v1/jobs/:id/cancel", method = "post")]
    async fn cancel(
        &self,
        auth: ApiKeyAuth,
        id: Path<i64>,
    ) -> Result<Json<JobStateView>, ApiError> {
        let caller = auth.require(Scope::Admin)?;
        let state = self
            .0
            .engine
            .cancel(id.0, &Actor::api_key(caller.key_id))
            .await?;
        Ok(Json(JobStateView {
            id: id.0,
            status: state.into(),
        }))
    }

    /// Send the signal `name` to a job that waits for it (`ctx.wait_for_signal`): the
    /// body, any JSON, is its payload, and a job waiting for it runs at once. One signal
    /// per name per job; sent before the job waits, it is there when it does. Scope: admin.
    ///
    /// 400 `bad_request` for a name that is not 1–64 of `a-z 0-9 _ . -`; 404 when no job
    /// has this id; 409 `signal_already_sent` when the job was already sent it; 409
    /// `invalid_job_state` when the job is finished.
    #[oai(path = "/v1/jobs/:id/signals/:name", method = "post")]
    async fn signal(
        &self,
        auth: ApiKeyAuth,
        id: Path<i64>,
        name: Path<String>,
        payload: Json<serde_json::Value>,
    ) -> Result<Json<SignalView>, ApiError> {
        let caller = auth.require(Scope::Admin)?;
        let valid = (1..=64).contains(&name.0.len())
            && name
                .0
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if !valid {
            return Err(ApiError::bad_request(format!(
                "signal name {:?} is not 1-64 characters of a-z, 0-9, _ . -",
                name.0
            )));
        }
        self.0
            .engine
            .signal(id.0, &name.0, &payload.0, &Actor::api_key(caller.key_id))
            .await?;
        Ok(Json(SignalView {
            id: id.0,
            signal: name.0,
        }))
    }
}
