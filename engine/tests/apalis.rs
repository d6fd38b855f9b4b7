//! The engine's storage seen from apalis: an ordinary apalis worker, written against
//! apalis's in-memory backend, runs unchanged on [`JobStorage`]; and every apalis backend
//! trait the storage implements reads and writes the jobs table, on both databases.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use apalis::prelude::{
    AbortError, Attempt, BoxDynError, Data, FetchById, Filter, ListAllTasks, ListQueues, ListTasks,
    ListWorkers, MemoryStorage, Metrics, Reschedule, ResumeById, Status, TaskId, TaskSink, Update,
    WaitForCompletion, WorkerBuilder, WorkerContext,
};
use apalis_core::backend::Vacuum;
use engine::testing::TestDb;
use engine::worker::JobStorage;
use engine::{Clock, Engine, JobPolicy, JobState, Outcome, Registry, RetryPolicy, backend_tests};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

backend_tests!(
    an_apalis_worker_runs_unchanged_on_the_engine_storage,
    every_apalis_backend_trait_reads_and_writes_the_jobs_table,
    a_dropped_worker_hands_back_its_jobs_while_its_storage_lives_on,
);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Email {
    to: String,
}

fn email(to: &str) -> Email {
    Email { to: to.to_owned() }
}

/// What the handler sent, shared with the test through apalis's `Data`.
#[derive(Clone, Default)]
struct Outbox {
    sent: Arc<Mutex<Vec<String>>>,
    /// Stop the worker once this many are sent.
    stop_after: usize,
    /// Handlers of `hold…` addresses wait for this.
    release: Arc<Notify>,
}

/// An apalis handler as apalis's own examples write them: args, `Data`, the attempt and the
/// worker from extractors, apalis's errors. `flaky…` fails its first attempt; `boom…` is
/// refused for good.
async fn send_email(
    email: Email,
    outbox: Data<Outbox>,
    attempt: Attempt,
    worker: WorkerContext,
) -> Result<(), BoxDynError> {
    if email.to.starts_with("boom") {
        return Err(AbortError::new(std::io::Error::other("550 no such user")).into());
    }
    // apalis counts attempts from 1 inside the handler.
    if email.to.starts_with("flaky") && attempt.current() == 1 {
        return Err(std::io::Error::other("451 try again later").into());
    }
    if email.to.starts_with("hold") {
        outbox.release.notified().await;
    }
    let n = {
        let mut sent = outbox.sent.lock().unwrap();
        sent.push(email.to);
        sent.len()
    };
    if n == outbox.stop_after {
        worker.stop()?;
    }
    Ok(())
}

/// Retries after 20 ms: the tests wait for them.
const QUICK: JobPolicy = JobPolicy {
    retry: RetryPolicy::exponential(Duration::from_millis(20), Duration::from_millis(20), 3),
    ..JobPolicy::DEFAULT
};

async fn rows(engine: &Engine, queue: &str) -> Vec<(i64, JobState, i32, String)> {
    let rows: Vec<(i64, String, i32, String)> =
        sqlx::query_as("SELECT id, status, attempt, args FROM jobs WHERE kind = $1 ORDER BY id")
            .bind(queue)
            .fetch_all(engine.db())
            .await
            .unwrap();
    rows.into_iter()
        .map(|(id, s, a, args)| (id, s.parse().unwrap(), a, args))
        .collect()
}

async fn an_apalis_worker_runs_unchanged_on_the_engine_storage(t: TestDb) {
    // The worker as an apalis user has it, on apalis's in-memory backend.
    let outbox = Outbox {
        stop_after: 2,
        ..Outbox::default()
    };
    let mut memory = MemoryStorage::new();
    memory.push(email("a@example.com")).await.unwrap();
    memory.push(email("b@example.com")).await.unwrap();
    let worker = WorkerBuilder::new("email")
        .backend(memory)
        .data(outbox.clone())
        .build(send_email);
    tokio::time::timeout(Duration::from_secs(20), worker.run())
        .await
        .expect("the in-memory worker stopped")
        .unwrap();
    assert_eq!(outbox.sent.lock().unwrap().len(), 2);

    // The same worker, the backend line changed: now durable, retried on its stored
    // backoff, with its history.
    let engine = t.engine(Registry::new(), Clock::system());
    let outbox = Outbox {
        stop_after: 3,
        ..Outbox::default()
    };
    let mut storage = JobStorage::<Email>::new(&engine)
        .with_queue("email")
        .with_policy(QUICK);
    storage.push(email("a@example.com")).await.unwrap();
    storage.push(email("flaky@example.com")).await.unwrap();
    storage.push(email("b@example.com")).await.unwrap();
    let worker = WorkerBuilder::new("email")
        .backend(storage)
        .data(outbox.clone())
        .build(send_email);
    tokio::time::timeout(Duration::from_secs(20), worker.run())
        .await
        .expect("the worker on the engine's storage stopped")
        .unwrap();
    let mut sent = outbox.sent.lock().unwrap().clone();
    sent.sort();
    assert_eq!(
        sent,
        ["a@example.com", "b@example.com", "flaky@example.com"],
        "each sent once"
    );
    // The worker stopped right after the last send: its ack is written all the same.
    let jobs = rows(&engine, "email").await;
    let states: Vec<(JobState, i32)> = jobs.iter().map(|r| (r.1, r.2)).collect();
    assert_eq!(
        states,
        [
            (JobState::Succeeded, 1),
            (JobState::Succeeded, 2),
            (JobState::Succeeded, 1)
        ]
    );
    let flaky = engine::admin::get_job(engine.db(), jobs[1].0)
        .await
        .unwrap();
    let history: Vec<(u32, Option<&str>, Option<&str>)> = flaky
        .attempts
        .iter()
        .map(|a| (a.attempt, a.outcome.as_deref(), a.error.as_deref()))
        .collect();
    assert_eq!(
        history,
        [
            (1, Some("retrying"), Some("451 try again later")),
            (2, Some("succeeded"), None)
        ]
    );
}

async fn every_apalis_backend_trait_reads_and_writes_the_jobs_table(t: TestDb) {
    let engine = t.engine(Registry::new(), Clock::system());
    let mut storage = JobStorage::<Email>::new(&engine)
        .with_queue("email")
        .with_policy(QUICK);
    let mut other = JobStorage::<Email>::new(&engine).with_queue("newsletter");
    storage
        .push_bulk(vec![email("a"), email("b"), email("boom")])
        .await
        .unwrap();
    other.push(email("c")).await.unwrap();
    let ids: Vec<i64> = rows(&engine, "email").await.iter().map(|r| r.0).collect();
    let tid = |id: i64| TaskId::Int(id as u64);

    // FetchById: the task as stored, only from its own queue.
    let a = storage.fetch_by_id(&tid(ids[0])).await.unwrap().unwrap();
    assert_eq!(a.args.to, "a");
    assert_eq!(a.status(), Status::Pending);
    assert_eq!(a.queue().map(|q| q.to_string()), Some("email".into()));
    let c = rows(&engine, "newsletter").await[0].0;
    assert!(storage.fetch_by_id(&tid(c)).await.unwrap().is_none());

    // Run them; WaitForCompletion yields each result once it is final.
    let outbox = Outbox::default();
    let worker = tokio::spawn(
        WorkerBuilder::new("email")
            .backend(storage.clone())
            .data(outbox.clone())
            .build(send_email)
            .run(),
    );
    let results: Vec<_> = tokio::time::timeout(
        Duration::from_secs(20),
        storage
            .wait_for(ids.iter().map(|id| tid(*id)))
            .collect::<Vec<_>>(),
    )
    .await
    .expect("every job finished");
    let mut results: Vec<(i64, Status, Result<Outcome, String>)> = results
        .into_iter()
        .map(|r| {
            let r = r.unwrap();
            let TaskId::Int(id) = r.task_id else {
                panic!("an int id")
            };
            (id as i64, r.status, r.result)
        })
        .collect();
    results.sort_by_key(|r| r.0);
    assert_eq!(
        results,
        [
            (ids[0], Status::Done, Ok(Outcome::Succeeded)),
            (ids[1], Status::Done, Ok(Outcome::Succeeded)),
            (ids[2], Status::Killed, Err("550 no such user".to_owned())),
        ]
    );
    let checked = storage
        .check_status(ids.iter().map(|id| tid(*id)))
        .await
        .unwrap();
    assert_eq!(checked.len(), 3);

    // ListTasks / ListAllTasks, by apalis status.
    let filter = |status| Filter {
        status: Some(status),
        page: 1,
        page_size: None,
    };
    let done = storage.list_tasks(&filter(Status::Done)).await.unwrap();
    assert_eq!(done.len(), 2);
    assert_eq!(
        storage
            .list_tasks(&filter(Status::Killed))
            .await
            .unwrap()
            .len(),
        1
    );
    let pending = storage
        .list_all_tasks(&filter(Status::Pending))
        .await
        .unwrap();
    assert_eq!(pending.len(), 1, "the other queue's job");
    assert_eq!(pending[0].args, r#"{"to":"c"}"#);

    // Metrics, globally and for this queue.
    let stat = |stats: &[apalis::prelude::Statistic], title: &str| {
        stats
            .iter()
            .find(|s| s.title == title)
            .map(|s| s.value.clone())
    };
    let global = storage.global().await.unwrap();
    assert_eq!(stat(&global, "SUCCEEDED jobs").as_deref(), Some("2"));
    assert_eq!(stat(&global, "TOTAL jobs").as_deref(), Some("4"));
    let mine = storage.fetch_by_queue().await.unwrap();
    assert_eq!(stat(&mine, "FAILED jobs").as_deref(), Some("1"));
    assert_eq!(stat(&mine, "PENDING jobs").as_deref(), Some("0"));

    // ListQueues: both queues, this one with today's three attempts.
    let queues = storage.list_queues().await.unwrap();
    let names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["email", "newsletter"]);
    assert_eq!(queues[0].activity[6], 3);

    // ListWorkers: a worker is known by the jobs it holds.
    assert!(storage.list_all_workers().await.unwrap().is_empty());
    storage.push(email("hold")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let holding = loop {
        let workers = storage.list_workers().await.unwrap();
        if !workers.is_empty() {
            break workers;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hold job never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(holding.len(), 1);
    assert_eq!(holding[0].queue, "email");
    assert!(other.list_workers().await.unwrap().is_empty());
    outbox.release.notify_one();
    let hold = rows(&engine, "email").await[3].0;
    let _ = storage.wait_for([tid(hold)]).collect::<Vec<_>>().await;
    worker.abort();
    let _ = worker.await;

    // ResumeById: an admin retry of the failed job, not of a succeeded one.
    assert!(storage.resume_by_id(tid(ids[2])).await.unwrap());
    assert!(!storage.resume_by_id(tid(ids[0])).await.unwrap());
    assert_eq!(rows(&engine, "email").await[2].1, JobState::Pending);

    // Reschedule and Update change a waiting job.
    let boom = storage.fetch_by_id(&tid(ids[2])).await.unwrap().unwrap();
    let now_s = engine.clock().now_ms() / 1000;
    storage
        .reschedule(boom, Duration::from_secs(3600))
        .await
        .unwrap();
    let mut boom = storage.fetch_by_id(&tid(ids[2])).await.unwrap().unwrap();
    let run_at = boom.run_at().unwrap() as i64;
    assert!((now_s + 3599..=now_s + 3601).contains(&run_at), "{run_at}");
    boom.args = email("fixed");
    storage.update(boom).await.unwrap();
    assert_eq!(rows(&engine, "email").await[2].3, r#"{"to":"fixed"}"#);
    // A finished job is not waiting: both are refused, with its state.
    let done = storage.fetch_by_id(&tid(ids[0])).await.unwrap().unwrap();
    for refused in [
        storage
            .reschedule(done.clone(), Duration::from_secs(60))
            .await,
        storage.update(done).await,
    ] {
        assert!(
            matches!(
                refused,
                Err(engine::Error::InvalidJobState {
                    state: JobState::Succeeded,
                    ..
                })
            ),
            "{refused:?}"
        );
    }

    // Vacuum deletes this queue's finished jobs only.
    assert_eq!(storage.vacuum().await.unwrap(), 3);
    let left: Vec<i64> = rows(&engine, "email").await.iter().map(|r| r.0).collect();
    assert_eq!(left, [ids[2]]);
    assert_eq!(rows(&engine, "newsletter").await.len(), 1);
}

/// apalis users keep a clone of the storage to push with; dropping the worker (its task
/// aborted, say) must not leave the jobs it claimed ahead leased to nobody while that clone
/// lives, nor let it claim more.
async fn a_dropped_worker_hands_back_its_jobs_while_its_storage_lives_on(t: TestDb) {
    let engine = t.engine(Registry::new(), Clock::system());
    let policy = JobPolicy {
        concurrency: 2,
        ..QUICK
    };
    let mut storage = JobStorage::<Email>::new(&engine)
        .with_queue("email")
        .with_policy(policy);
    storage
        .push_bulk((0..10).map(|i| email(&format!("hold{i}"))).collect())
        .await
        .unwrap();
    let worker = tokio::spawn(
        WorkerBuilder::new("email")
            .backend(storage.clone())
            .data(Outbox::default())
            .build(send_email)
            .run(),
    );
    // Two running (held), two more claimed ahead.
    let leased = || async {
        rows(&engine, "email")
            .await
            .iter()
            .filter(|r| r.1 == JobState::Running)
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while leased().await < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never claimed ahead"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.abort();
    let _ = worker.await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while leased().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs stay leased to a dropped worker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let jobs = rows(&engine, "email").await;
    assert!(jobs.iter().all(|r| r.1 == JobState::Pending), "{jobs:?}");
    // Still nothing claimed a moment later: the core claims only for a polling worker.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(leased().await, 0);
    storage.push(email("later")).await.unwrap();
}
