//! Durable steps: a handler that does several things in turn names each one
//! (`ctx.step("build_zip", async || …)`), and each finished step's result is stored with
//! the job (`job_steps`). When the job runs again — a retry after an error, or another
//! worker after a crash — every finished step returns its stored result without running,
//! and the handler resumes at the first unfinished one. A step runs again only if its
//! attempt ended before the step's result was committed.
//!
//! ```text
//! async fn export(args: Export, ctx: JobContext) -> Result<Outcome, JobError> {
//!     let zip: ZipInfo = ctx.step("build_zip", async || build_zip(&args).await).await?;
//!     ctx.step_tx("record", async |tx| record(tx, &zip).await).await?;
//!     ctx.step("email", async || send_email(&zip).await).await?;
//!     Ok(Outcome::Succeeded)
//! }
//! ```
//!
//! Rules, each checked:
//! - **Determinism.** Steps are matched to their stored results by position; a replay that
//!   asks for a different name at a position fails the job permanently (its code or args
//!   changed under it), it never hands one step's result to another.
//! - **One at a time.** A step started while another is running is refused (their order
//!   would depend on scheduling).
//! - **Fenced.** A result is stored only while the attempt still holds its job
//!   ([`JobContext::fence`], in the transaction that stores it): an attempt that lost its
//!   lease records nothing and stops with [`JobError::LeaseLost`].
//! - **With its writes.** [`JobContext::step_tx`] runs the step in a transaction that also
//!   stores its result: its domain writes and its being finished commit together.
//!
//! Results are JSON (`serde`); a step with nothing to return returns `()`. Outside the
//! queue ([`JobContext::unleased`]) steps run and are remembered for that context only.
//!
//! **Waiting holds no worker.** [`JobContext::sleep`] and [`JobContext::wait_for_signal`]
//! end the attempt as [`JobError::Waiting`] (a snooze: the job is `pending` again with its
//! `run_at` at the deadline, no attempt used) and are finished steps once their time has
//! come or their signal is there. [`Engine::signal`] stores a signal (one per name per job)
//! and moves a waiting job's `run_at` to now; a signal that arrives while the job is running
//! marks it (`wake_pending`), and an attempt that then ends waiting is run again at once, so
//! no signal waits for a deadline.
//!
//! **Fan-out, fan-in.** [`JobContext::fan_out`] is a step that enqueues child jobs (in its
//! transaction, with its being finished) and then waits, holding no worker, until every
//! child has ended; it returns how each ended ([`ChildOutcome`]: succeeded, failed or
//! cancelled, with the error), so the parent decides what a failed child means. A child
//! that ends wakes its parent the way a signal does, from a database trigger on the child's
//! status (engine migration 0005_children), so that no path to a final state forgets it.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;

use crate::clock::Millis;
use crate::context::JobContext;
use crate::db::{Backend, Db, DbConn};
use crate::engine::{Engine, JobTx};
use crate::error::Error;
use crate::job::{Job, JobError, JobState, NewJob};
use crate::state_machine::Actor;

/// How long a parent waits before it looks at its children again even if none woke it: a
/// safety net, since every child that ends wakes its parent (a child deduplicated onto a
/// job that is not this parent's, by its unique key, is seen at the next look only).
pub const FAN_IN_RECHECK_MS: Millis = 3_600_000;

/// How a child of a [`JobContext::fan_out`] ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChildOutcome {
    /// The child job.
    pub id: i64,
    /// Its kind.
    pub kind: String,
    /// `succeeded` (also when its handler skipped it), `failed` or `cancelled`.
    pub state: JobState,
    /// Its last error, if it had one (also for a child that succeeded after a retry).
    pub error: Option<String>,
}

impl ChildOutcome {
    /// Whether it succeeded.
    pub fn succeeded(&self) -> bool {
        self.state == JobState::Succeeded
    }
}

/// The jobs a [`JobContext::fan_out`] step enqueues, in the step's transaction.
pub struct Children<'a> {
    tx: &'a mut JobTx,
    parent: Option<i64>,
    ids: Vec<i64>,
}

impl Children<'_> {
    /// Enqueues `job` as a child: it exists if and only if the step commits, and its end
    /// wakes the parent. Returns its id. With a unique key that an unfinished job holds,
    /// that job is waited for instead (it is not this parent's child, so it does not wake
    /// it: the parent sees it end at its next look, [`FAN_IN_RECHECK_MS`]).
    pub async fn enqueue<J: Job>(&mut self, job: impl Into<NewJob<J>>) -> Result<i64, JobError> {
        let engine = self.tx.engine().clone();
        let job = engine
            .encode(job.into(), engine.clock().now_ms())
            .map_err(JobError::permanent)?;
        let mut row = job.row();
        row.parent_id = self.parent;
        let id = self
            .tx
            .insert_row(&row)
            .await
            .map_err(JobError::transient)?
            .id();
        self.ids.push(id);
        Ok(id)
    }

    /// The step's transaction, for writes that must commit with the children.
    pub fn conn(&mut self) -> &mut DbConn {
        self.tx
    }
}

/// A finished step, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    /// Position in the job's step sequence, from 0.
    pub seq: u32,
    /// The step's name.
    pub name: String,
    /// Its result, as JSON text.
    pub result: String,
    /// The attempt that finished it.
    pub attempt: u32,
    /// When it finished (ms since the epoch).
    pub finished_at: Millis,
}

/// The finished steps of job `id`, in order.
pub async fn list(db: &Db, job_id: i64) -> crate::Result<Vec<StepRecord>> {
    let rows = sqlx::query(
        "SELECT seq, name, result, attempt, finished_at FROM job_steps \
         WHERE job_id = $1 ORDER BY seq",
    )
    .bind(job_id)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StepRecord {
                seq: u32::try_from(r.try_get::<i32, _>(0)?).unwrap_or(0),
                name: r.try_get(1)?,
                result: r.try_get(2)?,
                attempt: u32::try_from(r.try_get::<i32, _>(3)?).unwrap_or(0),
                finished_at: r.try_get(4)?,
            })
        })
        .collect()
}

/// An attempt's view of its job's steps (shared by the clones of its [`JobContext`]).
#[derive(Debug, Default)]
pub(crate) struct Steps {
    /// The stored steps (read on the first step of the attempt), then those it finishes.
    done: Option<Vec<(String, String)>>,
    /// The position of the next step.
    next: usize,
    /// A step is running.
    running: bool,
}

/// Shared by an attempt's contexts.
pub(crate) type SharedSteps = Arc<Mutex<Steps>>;

/// What [`JobContext::begin_step`] found at the step's position.
enum Found {
    /// Finished before: its stored result.
    Done(String),
    /// To run, at this position.
    Run(usize),
}

impl JobContext {
    /// Runs step `name` unless it finished before, and returns its result (the stored one
    /// when it did). See the module doc for the rules.
    pub async fn step<T, F>(&self, name: &str, run: F) -> Result<T, JobError>
    where
        T: Serialize + DeserializeOwned,
        F: AsyncFnOnce() -> Result<T, JobError>,
    {
        self.run_step(name, async move |seq| {
            let value = run().await?;
            let mut tx = self.db().begin().await?;
            self.record_step(&mut tx, seq, name, &value).await?;
            tx.commit().await?;
            Ok(value)
        })
        .await
    }

    /// [`JobContext::step`] whose work runs in a transaction that also stores its result:
    /// its domain writes and its being finished commit together, after the fence.
    pub async fn step_tx<T, F>(&self, name: &str, run: F) -> Result<T, JobError>
    where
        T: Serialize + DeserializeOwned,
        F: AsyncFnOnce(&mut DbConn) -> Result<T, JobError>,
    {
        self.run_step(name, async move |seq| {
            let mut tx = self.db().begin().await?;
            let value = run(&mut tx).await?;
            self.record_step(&mut tx, seq, name, &value).await?;
            tx.commit().await?;
            Ok(value)
        })
        .await
    }

    /// The stored result of step `name` if it finished before; else `body` run at the
    /// step's position (it stores the result), remembered when it succeeds.
    async fn run_step<T, B>(&self, name: &str, body: B) -> Result<T, JobError>
    where
        T: Serialize + DeserializeOwned,
        B: AsyncFnOnce(usize) -> Result<T, JobError>,
    {
        let seq = match self.begin_step(name).await? {
            Found::Done(result) => return self.replayed(name, &result),
            Found::Run(seq) => seq,
        };
        let outcome = body(seq).await;
        self.end_step(name, seq, &outcome);
        outcome
    }

    /// Takes the next position: loads the stored steps on the first call, refuses a step
    /// while another runs and a name that differs from the stored one.
    async fn begin_step(&self, name: &str) -> Result<Found, JobError> {
        let loaded = self.steps().lock().expect("steps lock").done.is_some();
        if !loaded && self.is_leased() {
            let stored = list(self.db(), self.job_id).await?;
            let mut steps = self.steps().lock().expect("steps lock");
            if steps.done.is_none() {
                steps.done = Some(stored.into_iter().map(|s| (s.name, s.result)).collect());
            }
        }
        let mut steps = self.steps().lock().expect("steps lock");
        if steps.running {
            return Err(JobError::permanent(format!(
                "step {name:?} started while another step of job {} was running: steps run one at a time",
                self.job_id
            )));
        }
        let seq = steps.next;
        let done = steps.done.get_or_insert_with(Vec::new);
        let found = match done.get(seq) {
            Some((stored, result)) if stored == name => Found::Done(result.clone()),
            Some((stored, _)) => {
                return Err(JobError::permanent(format!(
                    "job {} is not deterministic: its step {seq} was {stored:?} and is now {name:?} \
                     (its handler or args changed since that step finished)",
                    self.job_id
                )));
            }
            None => Found::Run(seq),
        };
        steps.next += 1;
        if matches!(found, Found::Run(_)) {
            steps.running = true;
        }
        Ok(found)
    }

    /// Ends a step that ran: remembered when it finished; on failure its position is given
    /// back (the handler is expected to stop; if it goes on, the next step takes it).
    fn end_step<T: Serialize>(&self, name: &str, seq: usize, outcome: &Result<T, JobError>) {
        let mut steps = self.steps().lock().expect("steps lock");
        steps.running = false;
        match outcome {
            Ok(value) => {
                let json = serde_json::to_string(value).unwrap_or_default();
                steps
                    .done
                    .get_or_insert_with(Vec::new)
                    .push((name.to_owned(), json));
            }
            Err(_) => steps.next = seq,
        }
    }

    /// A durable sleep: the job waits `duration` from the first time it reaches this point,
    /// holding no worker ([`JobError::Waiting`]); later attempts see the same deadline (it
    /// is stored as the step `{name}:until`), and the sleep is a finished step once it has
    /// passed. Propagate its error with `?`.
    pub async fn sleep(&self, name: &str, duration: std::time::Duration) -> Result<(), JobError> {
        let until: Millis = self
            .step(&format!("{name}:until"), async || {
                Ok(self
                    .now_ms()
                    .saturating_add(crate::clock::duration_ms(duration)))
            })
            .await?;
        self.sleep_until(name, until).await
    }

    /// A durable sleep until `until` (ms since the epoch; it must be the same on every
    /// attempt: derive it from args or a step's result, not from the clock).
    pub async fn sleep_until(&self, name: &str, until: Millis) -> Result<(), JobError> {
        self.step::<Millis, _>(name, async || {
            if self.now_ms() >= until {
                Ok(until)
            } else {
                Err(JobError::Waiting {
                    until,
                    reason: format!("sleep {name:?}"),
                })
            }
        })
        .await?;
        Ok(())
    }

    /// Waits, holding no worker, for the signal `name` ([`Engine::signal`]) for at most
    /// `timeout` from the first time the job reaches this point: its payload, or `None`
    /// once the timeout has passed without it. Propagate its error with `?`.
    pub async fn wait_for_signal<T>(
        &self,
        name: &str,
        timeout: std::time::Duration,
    ) -> Result<Option<T>, JobError>
    where
        T: Serialize + DeserializeOwned,
    {
        let until: Millis = self
            .step(&format!("signal:{name}:until"), async || {
                Ok(self
                    .now_ms()
                    .saturating_add(crate::clock::duration_ms(timeout)))
            })
            .await?;
        self.step(&format!("signal:{name}"), async || {
            let payload: Option<String> = sqlx::query_scalar(
                "SELECT payload FROM job_signals WHERE job_id = $1 AND name = $2",
            )
            .bind(self.job_id)
            .bind(name)
            .fetch_optional(self.db())
            .await?;
            match payload {
                Some(payload) => serde_json::from_str(&payload).map(Some).map_err(|e| {
                    JobError::permanent(format!(
                        "the payload of signal {name:?} does not decode as this wait's type: {e}"
                    ))
                }),
                None if self.now_ms() >= until => Ok(None),
                None => Err(JobError::Waiting {
                    until,
                    reason: format!("signal {name:?}"),
                }),
            }
        })
        .await
    }

    /// Fan-out and fan-in, as two steps: `name` runs `spawn`, which enqueues children
    /// through [`Children::enqueue`], and stores their ids, in one transaction (fenced,
    /// committed with `spawn`'s own writes through [`Children::conn`]); `{name}:join` waits,
    /// holding no worker, until every child has ended, and stores how each ended. Returns
    /// the outcomes in the order the children were enqueued; a failed or cancelled child is
    /// an outcome, not an error, so the parent decides what it means. Propagate its error
    /// with `?` (it is [`JobError::Waiting`] while children run).
    ///
    /// Outside the queue ([`JobContext::unleased`]) the children are enqueued without a
    /// parent, and the join waits for them like any other.
    pub async fn fan_out<F>(&self, name: &str, spawn: F) -> Result<Vec<ChildOutcome>, JobError>
    where
        F: AsyncFnOnce(&mut Children<'_>) -> Result<(), JobError>,
    {
        let ids: Vec<i64> = self
            .run_step(name, async move |seq| {
                let mut tx = self.engine.begin().await.map_err(JobError::transient)?;
                let mut children = Children {
                    tx: &mut tx,
                    parent: self.is_leased().then_some(self.job_id),
                    ids: Vec::new(),
                };
                spawn(&mut children).await?;
                let ids = children.ids;
                self.record_step(&mut tx, seq, name, &ids).await?;
                tx.commit().await.map_err(JobError::transient)?;
                Ok(ids)
            })
            .await?;
        self.step(&format!("{name}:join"), async || {
            let outcomes = outcomes_of(self.db(), self.engine.backend(), &ids).await?;
            let running = outcomes.iter().filter(|c| !c.state.is_final()).count();
            if running == 0 {
                Ok(outcomes)
            } else {
                Err(JobError::Waiting {
                    until: self.now_ms().saturating_add(FAN_IN_RECHECK_MS),
                    reason: format!("{running} of the {} children of {name:?} to end", ids.len()),
                })
            }
        })
        .await
    }

    fn replayed<T: DeserializeOwned>(&self, name: &str, result: &str) -> Result<T, JobError> {
        serde_json::from_str(result).map_err(|e| {
            JobError::permanent(format!(
                "the stored result of step {name:?} of job {} does not decode as this step's type: {e}",
                self.job_id
            ))
        })
    }

    /// Stores a finished step in `tx`, fenced: nothing is stored by an attempt that lost
    /// its job.
    async fn record_step<T: Serialize>(
        &self,
        tx: &mut DbConn,
        seq: usize,
        name: &str,
        value: &T,
    ) -> Result<(), JobError> {
        if !self.is_leased() {
            return Ok(());
        }
        let result = serde_json::to_string(value).map_err(|e| {
            JobError::permanent(format!("the result of step {name:?} does not encode: {e}"))
        })?;
        self.fence(tx).await?;
        sqlx::query(
            "INSERT INTO job_steps (job_id, seq, name, result, attempt, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(self.job_id)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .bind(name)
        .bind(result)
        .bind(i64::from(self.attempt))
        .bind(self.now_ms())
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// How the jobs `ids` stand, in that order (a job no longer there — pruned or deleted — is
/// reported failed, saying so).
async fn outcomes_of(
    db: &Db,
    backend: Backend,
    ids: &[i64],
) -> Result<Vec<ChildOutcome>, JobError> {
    let rows: Vec<(i64, String, String, Option<String>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, kind, status, last_error FROM jobs WHERE {}",
            crate::db::id_in_list(backend, "id", "$1")
        )))
        .bind(crate::db::id_list(ids))
        .fetch_all(db)
        .await?;
    Ok(ids
        .iter()
        .map(|&id| match rows.iter().find(|r| r.0 == id) {
            Some((_, kind, status, error)) => ChildOutcome {
                id,
                kind: kind.clone(),
                state: status.parse().unwrap_or(JobState::Failed),
                error: error.clone(),
            },
            None => ChildOutcome {
                id,
                kind: String::new(),
                state: JobState::Failed,
                error: Some(format!("job {id} no longer exists (pruned or deleted)")),
            },
        })
        .collect())
}

/// The children of job `parent`: id, kind, state, in the order they were enqueued.
pub async fn children(db: &Db, parent: i64) -> crate::Result<Vec<(i64, String, JobState)>> {
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, kind, status FROM jobs WHERE parent_id = $1 ORDER BY id")
            .bind(parent)
            .fetch_all(db)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, kind, status)| (id, kind, status.parse().unwrap_or(JobState::Failed)))
        .collect())
}

impl Engine {
    /// Sends the signal `name` with `payload` to job `id` (for its
    /// [`JobContext::wait_for_signal`]) and wakes the job if it waits: one signal per name
    /// per job ([`Error::SignalAlreadySent`] for a second), refused for a finished job
    /// ([`Error::InvalidJobState`]). Sent before the job waits, it is there when it does.
    pub async fn signal(
        &self,
        id: i64,
        name: &str,
        payload: &serde_json::Value,
        actor: &Actor,
    ) -> crate::Result<()> {
        let now = self.clock().now_ms();
        let mut tx = self.db().begin().await?;
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT status, kind FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let (status, kind) = row.ok_or(Error::JobNotFound(id))?;
        let state: JobState = status.parse().unwrap_or(JobState::Failed);
        if state.is_final() {
            return Err(Error::InvalidJobState {
                id,
                state,
                operation: "signal",
                expected: "pending, running or retrying",
            });
        }
        let inserted = sqlx::query(
            "INSERT INTO job_signals (job_id, name, payload, sent_at, sent_by) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job_id, name) DO NOTHING",
        )
        .bind(id)
        .bind(name)
        .bind(payload.to_string())
        .bind(now)
        .bind(actor.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(Error::SignalAlreadySent {
                id,
                name: name.to_owned(),
            });
        }
        // A waiting job runs now; a running one is marked, so that its attempt, if it ends
        // waiting, is run again at once (the ack reads the mark).
        sqlx::query(
            "UPDATE jobs SET wake_pending = 1, \
                 scheduled = CASE WHEN status = 'pending' AND run_at > $2 THEN 0 ELSE scheduled END, \
                 run_at = CASE WHEN status = 'pending' AND run_at > $2 THEN $2 ELSE run_at END \
             WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.wake_everywhere(&kind);
        Ok(())
    }
}
