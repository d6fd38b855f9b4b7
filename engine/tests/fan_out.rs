//! Fan-out and fan-in (`ctx.fan_out`) on both backends, through the real runtime: a parent
//! enqueues children with its step, waits holding no worker, is woken by its children (not
//! by its recheck: the clock never moves here) and sees which of them failed; every way a
//! child can end wakes it, an ack or an admin's cancel.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use engine::steps::{ChildOutcome, FAN_IN_RECHECK_MS};
use engine::testing::{TestDb, drain};
use engine::{Clock, Engine, Job, JobError, JobState, Outcome, Registry, backend_tests};
use serde::{Deserialize, Serialize};

backend_tests!(
    a_parent_waits_for_its_children_and_sees_which_failed,
    a_child_cancelled_by_an_admin_wakes_its_waiting_parent,
    a_child_that_ends_while_its_parent_decides_to_wait_is_not_missed,
);

/// Spawns one [`Kid`] per entry of `fail` (failing permanently where true), then records
/// how they ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Parent {
    fail: Vec<bool>,
}

impl Job for Parent {
    const KIND: &'static str = "parent";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kid {
    fail: bool,
}

impl Job for Kid {
    const KIND: &'static str = "kid";
}

#[derive(Clone, Default)]
struct Seen {
    spawns: Arc<Mutex<usize>>,
    outcomes: Arc<Mutex<Vec<Vec<ChildOutcome>>>>,
    /// Attempt 1 of the parent holds here after it looked at its children, before it
    /// ends waiting (for the racing test).
    gate: Option<(Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>)>,
}

/// The engine, with workers for the kids when `kids_run` (else they wait until cancelled).
fn world(t: &TestDb, seen: &Seen, kids_run: bool) -> (Engine, Clock) {
    let mut registry = Registry::new();
    let s = seen.clone();
    registry.register::<Parent, _, _>(move |args, ctx| {
        let seen = s.clone();
        async move {
            let joined = ctx
                .fan_out("kids", async |children| {
                    *seen.spawns.lock().unwrap() += 1;
                    for fail in &args.fail {
                        children.enqueue(Kid { fail: *fail }).await?;
                    }
                    Ok(())
                })
                .await;
            if let Some((reached, open)) = &seen.gate
                && ctx.attempt == 1
            {
                reached.notify_one();
                open.notified().await;
            }
            seen.outcomes.lock().unwrap().push(joined?);
            Ok(Outcome::Succeeded)
        }
    });
    if kids_run {
        registry.register::<Kid, _, _>(|args, _ctx| async move {
            if args.fail {
                Err(JobError::permanent("kid refused"))
            } else {
                Ok(Outcome::Succeeded)
            }
        });
    }
    let clock = Clock::manual(Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap());
    (t.engine(registry, clock.clone()), clock)
}

async fn a_parent_waits_for_its_children_and_sees_which_failed(t: TestDb) {
    let seen = Seen::default();
    let (engine, _clock) = world(&t, &seen, true);
    let id = engine
        .enqueue(Parent {
            fail: vec![false, true, false],
        })
        .await
        .unwrap()
        .id();
    let report = drain(&engine).await;
    assert_eq!(report.failed, 1, "the failing kid: {report:?}");

    let job = engine::admin::get_job(engine.db(), id).await.unwrap().job;
    assert_eq!(job.status, JobState::Succeeded, "woken by its children");
    assert_eq!(*seen.spawns.lock().unwrap(), 1, "children enqueued once");
    let outcomes = seen.outcomes.lock().unwrap().clone();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    let states: Vec<JobState> = outcomes[0].iter().map(|c| c.state).collect();
    assert_eq!(
        states,
        [JobState::Succeeded, JobState::Failed, JobState::Succeeded]
    );
    assert!(outcomes[0].iter().all(|c| c.kind == "kid"));
    assert_eq!(outcomes[0][1].error.as_deref(), Some("kid refused"));
    assert!(outcomes[0][0].succeeded() && !outcomes[0][1].succeeded());

    let children = engine::steps::children(engine.db(), id).await.unwrap();
    let ids: Vec<i64> = children.iter().map(|c| c.0).collect();
    assert_eq!(ids, outcomes[0].iter().map(|c| c.id).collect::<Vec<_>>());
    let steps: Vec<String> = engine::steps::list(engine.db(), id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(steps, ["kids", "kids:join"]);
}

/// The parent waits (its children are not run: no worker for them here); an admin cancels
/// one child, then the other: the first wakes the parent, which looks and waits again;
/// the second wakes it and it finishes, seeing both cancelled.
async fn a_child_cancelled_by_an_admin_wakes_its_waiting_parent(t: TestDb) {
    let seen = Seen::default();
    let (engine, clock) = world(&t, &seen, false);
    let id = engine
        .enqueue(Parent {
            fail: vec![false, false],
        })
        .await
        .unwrap()
        .id();
    drain(&engine).await;
    let job = engine::admin::get_job(engine.db(), id).await.unwrap().job;
    assert_eq!(
        (job.status, job.run_at),
        (JobState::Pending, clock.now_ms() + FAN_IN_RECHECK_MS),
        "waiting for its children, holding no worker"
    );
    let kids = engine::steps::children(engine.db(), id).await.unwrap();
    assert_eq!(kids.len(), 2);
    // What an admin sees: the children, what the parent waits for, each child's parent.
    let detail = engine::admin::get_job(engine.db(), id).await.unwrap();
    let shown: Vec<(i64, JobState)> = detail.children.iter().map(|c| (c.id, c.status)).collect();
    assert_eq!(
        shown,
        [
            (kids[0].0, JobState::Pending),
            (kids[1].0, JobState::Pending)
        ]
    );
    assert_eq!(
        detail.waiting_for.as_deref(),
        Some("2 of the 2 children of \"kids\" to end")
    );
    let kid = engine::admin::get_job(engine.db(), kids[0].0)
        .await
        .unwrap();
    assert_eq!((kid.parent_id, kid.waiting_for), (Some(id), None));

    clock.advance(Duration::from_secs(5));
    engine
        .cancel(kids[0].0, &engine::Actor::cli())
        .await
        .unwrap();
    let job = engine::admin::get_job(engine.db(), id).await.unwrap().job;
    assert_eq!(job.run_at, clock.now_ms(), "woken by the cancel");
    drain(&engine).await;
    let job = engine::admin::get_job(engine.db(), id).await.unwrap().job;
    assert_eq!(job.status, JobState::Pending, "one child still to end");
    assert!(seen.outcomes.lock().unwrap().is_empty());

    clock.advance(Duration::from_secs(5));
    engine
        .cancel(kids[1].0, &engine::Actor::cli())
        .await
        .unwrap();
    drain(&engine).await;
    let job = engine::admin::get_job(engine.db(), id).await.unwrap().job;
    assert_eq!(job.status, JobState::Succeeded);
    let detail = engine::admin::get_job(engine.db(), id).await.unwrap();
    assert_eq!(detail.waiting_for, None, "no longer waiting");
    let outcomes = seen.outcomes.lock().unwrap().clone();
    let states: Vec<JobState> = outcomes[0].iter().map(|c| c.state).collect();
    assert_eq!(states, [JobState::Cancelled, JobState::Cancelled]);
    assert_eq!(*seen.spawns.lock().unwrap(), 1);
}

/// The race a fan-in must not lose: the children end after the parent looked at them and
/// before its attempt ended waiting. The child's end marks the running parent, and the
/// parent's waiting attempt is then run again at once, not at its recheck an hour later.
async fn a_child_that_ends_while_its_parent_decides_to_wait_is_not_missed(t: TestDb) {
    let reached = Arc::new(tokio::sync::Notify::new());
    let open = Arc::new(tokio::sync::Notify::new());
    let seen = Seen {
        gate: Some((Arc::clone(&reached), Arc::clone(&open))),
        ..Seen::default()
    };
    let (engine, clock) = world(&t, &seen, false);
    let id = engine
        .enqueue(Parent { fail: vec![false] })
        .await
        .unwrap()
        .id();
    let drained = tokio::spawn({
        let engine = engine.clone();
        async move { drain(&engine).await }
    });
    tokio::time::timeout(Duration::from_secs(10), reached.notified())
        .await
        .expect("the parent reaches the gate");
    // The parent saw its child unfinished (no worker runs kids here); end the child now.
    let kid = engine::steps::children(engine.db(), id).await.unwrap()[0].0;
    engine.cancel(kid, &engine::Actor::cli()).await.unwrap();
    open.notify_one();
    drained.await.unwrap();
    let job = engine::admin::get_job(engine.db(), id).await.unwrap().job;
    assert_eq!(
        job.status,
        JobState::Succeeded,
        "run again at once (run_at {} vs now {})",
        job.run_at,
        clock.now_ms()
    );
}
