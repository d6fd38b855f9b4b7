//! Durable steps (`ctx.step`, `ctx.step_tx`) on both backends, through the real runtime:
//! a retried job resumes after its last finished step, a changed step sequence fails
//! loudly, a step's domain writes commit with its result, an attempt that lost its job
//! records no step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use engine::testing::{TestDb, drain};
use engine::{Clock, Engine, Job, JobError, JobState, Outcome, Registry, backend_tests};
use serde::{Deserialize, Serialize};

backend_tests!(
    a_retried_job_resumes_after_its_last_finished_step,
    a_changed_step_sequence_fails_the_job_loudly,
    a_step_tx_commits_its_writes_with_its_result_once,
    an_attempt_that_lost_its_job_records_no_step,
    a_durable_sleep_holds_no_worker_and_keeps_its_deadline,
    a_signal_wakes_its_waiting_job_with_its_payload_once,
    a_wait_for_a_signal_that_never_comes_ends_at_its_timeout,
    a_signal_sent_while_the_attempt_decides_to_wait_is_not_missed,
);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Await {
    /// Attempt 1 holds at the gate after it found no signal, before it ends waiting.
    gated: bool,
}

impl Job for Await {
    const KIND: &'static str = "await";
}

/// Gates for the racing test: the handler says it reached the gate, the test opens it.
#[derive(Clone, Default)]
struct Gate {
    reached: Arc<tokio::sync::Notify>,
    open: Arc<tokio::sync::Notify>,
}

fn await_world(t: &TestDb, gate: &Gate) -> (Engine, Clock, Arc<Mutex<Vec<Option<String>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    let (s, g) = (Arc::clone(&seen), gate.clone());
    registry.register::<Await, _, _>(move |args, ctx| {
        let (seen, gate) = (Arc::clone(&s), g.clone());
        async move {
            let got = ctx
                .wait_for_signal::<String>("go", Duration::from_secs(3600))
                .await;
            if args.gated && ctx.attempt == 1 {
                gate.reached.notify_one();
                gate.open.notified().await;
            }
            let got = got?;
            seen.lock().unwrap().push(got);
            Ok(Outcome::Succeeded)
        }
    });
    let clock = Clock::manual(start());
    (t.engine(registry, clock.clone()), clock, seen)
}

async fn a_signal_wakes_its_waiting_job_with_its_payload_once(t: TestDb) {
    let (engine, clock, seen) = await_world(&t, &Gate::default());
    let admin = engine::Actor::cli();
    let id = engine.enqueue(Await { gated: false }).await.unwrap().id();
    drain(&engine).await;
    let job = engine::admin::get_job(engine.db(), id).await.unwrap().job;
    assert_eq!(
        (job.status, job.run_at),
        (JobState::Pending, clock.now_ms() + 3_600_000)
    );

    clock.advance(Duration::from_secs(60));
    engine
        .signal(id, "go", &serde_json::json!("refund-7"), &admin)
        .await
        .unwrap();
    let job = engine::admin::get_job(engine.db(), id).await.unwrap().job;
    assert_eq!(job.run_at, clock.now_ms(), "woken: due now, not in an hour");
    let again = engine
        .signal(id, "go", &serde_json::json!("x"), &admin)
        .await;
    assert!(
        matches!(again, Err(engine::Error::SignalAlreadySent { .. })),
        "{again:?}"
    );
    let report = drain(&engine).await;
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!(*seen.lock().unwrap(), [Some("refund-7".to_owned())]);

    let finished = engine
        .signal(id, "other", &serde_json::json!(1), &admin)
        .await;
    assert!(
        matches!(finished, Err(engine::Error::InvalidJobState { .. })),
        "{finished:?}"
    );
    let unknown = engine
        .signal(999_999, "go", &serde_json::json!(1), &admin)
        .await;
    assert!(
        matches!(unknown, Err(engine::Error::JobNotFound(999_999))),
        "{unknown:?}"
    );
}

async fn a_wait_for_a_signal_that_never_comes_ends_at_its_timeout(t: TestDb) {
    let (engine, clock, seen) = await_world(&t, &Gate::default());
    let id = engine.enqueue(Await { gated: false }).await.unwrap().id();
    drain(&engine).await;
    clock.advance(Duration::from_secs(3599));
    drain(&engine).await;
    assert!(seen.lock().unwrap().is_empty(), "not yet");
    clock.advance(Duration::from_secs(1));
    drain(&engine).await;
    assert_eq!(*seen.lock().unwrap(), [None]);
    let steps = engine::steps::list(engine.db(), id).await.unwrap();
    assert_eq!(steps.last().map(|s| s.result.as_str()), Some("null"));
}

/// The race a signal must not lose: the attempt looked (no signal), the signal is sent
/// while the job is still running, then the attempt ends waiting for an hour. The ack sees
/// the mark the signal left and makes the job due at once.
async fn a_signal_sent_while_the_attempt_decides_to_wait_is_not_missed(t: TestDb) {
    let gate = Gate::default();
    let (engine, _clock, seen) = await_world(&t, &gate);
    let id = engine.enqueue(Await { gated: true }).await.unwrap().id();
    let pool = engine::worker::WorkerPool::start(&engine);
    tokio::time::timeout(Duration::from_secs(10), gate.reached.notified())
        .await
        .expect("attempt 1 reached the gate");
    let status = engine::admin::get_job(engine.db(), id)
        .await
        .unwrap()
        .job
        .status;
    assert_eq!(status, JobState::Running);
    engine
        .signal(id, "go", &serde_json::json!("late"), &engine::Actor::cli())
        .await
        .unwrap();
    gate.open.notify_one();
    let mut done = false;
    for _ in 0..200 {
        if engine::admin::get_job(engine.db(), id)
            .await
            .unwrap()
            .job
            .status
            == JobState::Succeeded
        {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
    assert!(done, "the job waits for its deadline instead of its signal");
    assert_eq!(*seen.lock().unwrap(), [Some("late".to_owned())]);
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Nap {}

impl Job for Nap {
    const KIND: &'static str = "nap";
}

/// A job that sleeps an hour between two steps goes back to the queue (pending, no
/// attempt used) until then; earlier drains run nothing; the deadline is the first
/// attempt's, not recomputed; after it the job resumes with the second step.
async fn a_durable_sleep_holds_no_worker_and_keeps_its_deadline(t: TestDb) {
    let ran = Ran::default();
    let mut registry = Registry::new();
    let r = ran.clone();
    registry.register::<Nap, _, _>(move |_, ctx| {
        let ran = r.clone();
        async move {
            ctx.step("a", async || {
                ran.hit("a");
                Ok(())
            })
            .await?;
            ran.hit("awake?");
            ctx.sleep("cool_off", Duration::from_secs(3600)).await?;
            ctx.step("b", async || {
                ran.hit("b");
                Ok(())
            })
            .await?;
            Ok(Outcome::Succeeded)
        }
    });
    let clock = Clock::manual(start());
    let engine = t.engine(registry, clock.clone());
    let t0 = clock.now_ms();
    let id = engine.enqueue(Nap {}).await.unwrap().id();
    let budget = engine::admin::get_job(engine.db(), id)
        .await
        .unwrap()
        .job
        .max_attempts;

    drain(&engine).await;
    let job = engine::admin::get_job(engine.db(), id).await.unwrap();
    assert_eq!(job.job.status, JobState::Pending, "waiting holds no worker");
    assert_eq!(job.job.run_at, t0 + 3_600_000);
    assert_eq!(job.attempts[0].outcome.as_deref(), Some("snoozed"));
    assert_eq!((ran.get("a"), ran.get("b")), (1, 0));

    clock.advance(Duration::from_secs(1800));
    drain(&engine).await;
    assert_eq!(ran.get("awake?"), 1, "not due: not run");

    clock.advance(Duration::from_secs(1800));
    let report = drain(&engine).await;
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!((ran.get("a"), ran.get("awake?"), ran.get("b")), (1, 2, 1));
    let job = engine::admin::get_job(engine.db(), id).await.unwrap();
    assert_eq!(job.job.attempt, 2);
    assert_eq!(
        job.job.max_attempts,
        budget + 1,
        "the sleep used no attempt"
    );
    let names: Vec<String> = engine::steps::list(engine.db(), id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| format!("{}={}", s.name, s.result))
        .collect();
    assert_eq!(
        names,
        [
            "a=null".to_owned(),
            format!("cool_off:until={}", t0 + 3_600_000),
            format!("cool_off={}", t0 + 3_600_000),
            "b=null".to_owned()
        ]
    );
}

/// How many times each step ran.
#[derive(Clone, Default)]
struct Ran(Arc<Mutex<HashMap<String, u32>>>);

impl Ran {
    fn hit(&self, step: &str) {
        *self.0.lock().unwrap().entry(step.to_owned()).or_default() += 1;
    }
    fn get(&self, step: &str) -> u32 {
        self.0.lock().unwrap().get(step).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Flow {
    /// Step "b" asks to be retried on this many first attempts.
    b_fails: u32,
    /// From attempt 2 on, the second step is named "b2" instead of "b".
    renamed: bool,
    /// Step "b" is a `step_tx` writing a row to `flow_log`.
    b_writes: bool,
    /// After step "a", the job's lease is taken over (another worker's attempt).
    stolen_after_a: bool,
}

impl Job for Flow {
    const KIND: &'static str = "flow";
}

fn flow() -> Flow {
    Flow {
        b_fails: 0,
        renamed: false,
        b_writes: false,
        stolen_after_a: false,
    }
}

fn start() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

fn world(t: &TestDb) -> (Engine, Clock, Ran, Arc<Mutex<Vec<String>>>) {
    let ran = Ran::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    let (r, s) = (ran.clone(), Arc::clone(&seen));
    registry
        .register::<Flow, _, _>(move |args, ctx| {
            let (ran, seen) = (r.clone(), Arc::clone(&s));
            async move {
                let a: u64 = ctx
                    .step("a", async || {
                        ran.hit("a");
                        Ok(40 + u64::from(ctx.attempt))
                    })
                    .await?;
                if args.stolen_after_a {
                    sqlx::query("UPDATE jobs SET attempt = attempt + 1 WHERE id = $1")
                        .bind(ctx.job_id)
                        .execute(ctx.db())
                        .await?;
                }
                let second = if args.renamed && ctx.attempt > 1 {
                    "b2"
                } else {
                    "b"
                };
                let b: String = if args.b_writes {
                    ctx.step_tx(second, async |tx| {
                        ran.hit(second);
                        sqlx::query("INSERT INTO flow_log (job_id) VALUES ($1)")
                            .bind(ctx.job_id)
                            .execute(&mut *tx)
                            .await?;
                        Ok(format!("b after {a}"))
                    })
                    .await?
                } else {
                    ctx.step(second, async || {
                        ran.hit(second);
                        if ctx.attempt <= args.b_fails {
                            return Err(JobError::retry_at(ctx.now_ms() + 1_000, "b: not yet"));
                        }
                        Ok(format!("b after {a}"))
                    })
                    .await?
                };
                if args.b_writes && ctx.attempt == 1 {
                    return Err(JobError::retry_at(ctx.now_ms() + 1_000, "after b"));
                }
                ctx.step("c", async || {
                    ran.hit("c");
                    Ok(())
                })
                .await?;
                seen.lock().unwrap().push(format!("a={a} b={b}"));
                Ok(Outcome::Succeeded)
            }
        })
        .concurrency(4);
    let clock = Clock::manual(start());
    (t.engine(registry, clock.clone()), clock, ran, seen)
}

async fn status(engine: &Engine, id: i64) -> (JobState, Option<String>) {
    let job = engine::admin::get_job(engine.db(), id).await.unwrap().job;
    (job.status, job.last_error)
}

async fn a_retried_job_resumes_after_its_last_finished_step(t: TestDb) {
    let (engine, clock, ran, seen) = world(&t);
    let id = engine
        .enqueue(Flow {
            b_fails: 1,
            ..flow()
        })
        .await
        .unwrap()
        .id();
    drain(&engine).await;
    assert_eq!(status(&engine, id).await.0, JobState::Retrying);
    assert_eq!((ran.get("a"), ran.get("b"), ran.get("c")), (1, 1, 0));

    clock.advance(Duration::from_secs(2));
    let report = drain(&engine).await;
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!(
        (ran.get("a"), ran.get("b"), ran.get("c")),
        (1, 2, 1),
        "a finished on attempt 1 and is not run again"
    );
    // Attempt 2 got attempt 1's result of "a" (41), not a fresh one (42).
    assert_eq!(*seen.lock().unwrap(), ["a=41 b=b after 41"]);
    let steps = engine::steps::list(engine.db(), id).await.unwrap();
    let stored: Vec<(u32, &str, &str, u32)> = steps
        .iter()
        .map(|s| (s.seq, s.name.as_str(), s.result.as_str(), s.attempt))
        .collect();
    assert_eq!(
        stored,
        [
            (0, "a", "41", 1),
            (1, "b", "\"b after 41\"", 2),
            (2, "c", "null", 2)
        ]
    );
    // The job's detail carries them, beside its two attempts, from the same statement.
    let detail = engine::admin::get_job(engine.db(), id).await.unwrap();
    assert_eq!(detail.steps, steps);
    assert_eq!(detail.attempts.len(), 2);
    assert_eq!(detail.attempts[0].outcome.as_deref(), Some("retrying"));
}

async fn a_changed_step_sequence_fails_the_job_loudly(t: TestDb) {
    let (engine, clock, ran, _) = world(&t);
    let id = engine
        .enqueue(Flow {
            b_fails: 1,
            renamed: true,
            ..flow()
        })
        .await
        .unwrap()
        .id();
    drain(&engine).await;
    // Attempt 1 finished "a" only ("b" asked for a retry): attempt 2 asks "a" then "b2",
    // which is new, so it runs. Make "b" finished first, then rename it.
    assert_eq!(status(&engine, id).await.0, JobState::Retrying);
    sqlx::query(
        "INSERT INTO job_steps (job_id, seq, name, result, attempt, finished_at) \
         VALUES ($1, 1, 'b', '\"stored\"', 1, 0)",
    )
    .bind(id)
    .execute(engine.db())
    .await
    .unwrap();
    clock.advance(Duration::from_secs(2));
    drain(&engine).await;
    let (state, error) = status(&engine, id).await;
    assert_eq!(state, JobState::Failed, "a permanent failure, not a retry");
    let error = error.unwrap_or_default();
    assert!(
        error.contains("not deterministic") && error.contains("\"b\"") && error.contains("\"b2\""),
        "{error}"
    );
    assert_eq!(
        (ran.get("b2"), ran.get("c")),
        (0, 0),
        "nothing ran past the mismatch"
    );
}

async fn a_step_tx_commits_its_writes_with_its_result_once(t: TestDb) {
    let (engine, clock, ran, _) = world(&t);
    sqlx::query("CREATE TABLE flow_log (job_id BIGINT NOT NULL)")
        .execute(engine.db())
        .await
        .unwrap();
    let id = engine
        .enqueue(Flow {
            b_writes: true,
            ..flow()
        })
        .await
        .unwrap()
        .id();
    drain(&engine).await;
    assert_eq!(status(&engine, id).await.0, JobState::Retrying);
    clock.advance(Duration::from_secs(2));
    drain(&engine).await;
    assert_eq!(status(&engine, id).await.0, JobState::Succeeded);
    assert_eq!(
        ran.get("b"),
        1,
        "the step_tx finished on attempt 1 is not run again"
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM flow_log WHERE job_id = $1")
        .bind(id)
        .fetch_one(engine.db())
        .await
        .unwrap();
    assert_eq!(rows, 1, "its write is there once");
}

async fn an_attempt_that_lost_its_job_records_no_step(t: TestDb) {
    let (engine, _clock, ran, _) = world(&t);
    let id = engine
        .enqueue(Flow {
            stolen_after_a: true,
            ..flow()
        })
        .await
        .unwrap()
        .id();
    drain(&engine).await;
    assert_eq!(ran.get("b"), 1, "b ran");
    let steps = engine::steps::list(engine.db(), id).await.unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a"], "b's result was refused by the fence");
    assert_eq!(ran.get("c"), 0, "the attempt stopped at the refusal");
}
