//! Every `/v1` route's happy path and error shapes, problem documents for what the router
//! itself refuses, request ids, and pagination that holds under concurrent inserts.

use std::collections::HashSet;

use api::auth::Scope;
use engine::backend_tests;
use engine::testing::{TestDb, drain};
use serde_json::{Value, json};

use crate::helpers::{Answer, TestApp, get, post, send};

backend_tests!(
    schema = jobs::schema::migrator;
    jobs_are_listed_inspected_retried_and_cancelled,
    transitions_of_a_row_that_does_not_exist_are_404_like_the_row,
    queues_count_by_state_and_throughput,
    schedules_are_listed_and_run_now_with_an_audited_actor,
    api_keys_are_created_listed_and_revoked,
    every_refusal_is_a_problem_document,
    request_ids_are_echoed_or_generated,
    pages_stay_stable_while_jobs_are_inserted,
    a_read_key_gets_job_args_and_errors_redacted,
    a_job_shows_its_finished_steps_redacted_in_order,
    a_signal_is_stored_once_for_an_unfinished_job,
    a_parent_shows_its_children_and_what_it_waits_for,
    a_database_out_of_reach_is_a_503_to_retry,
);

/// `GET /v1/jobs/{id}` of a fan-out parent lists its children (with their states), says
/// what it waits for (redacted like errors), and each child names its parent. (The
/// fan-out's semantics are the engine's tests/fan_out.rs; here the rows are written as
/// the engine writes them.)
async fn a_parent_shows_its_children_and_what_it_waits_for(db: TestDb) {
    let app = TestApp::new(db);
    let read = app.key(Scope::Read).await;
    let parent = app.enqueue(false).await;
    let kids = [app.enqueue(false).await, app.enqueue(true).await];
    for kid in kids {
        sqlx::query("UPDATE jobs SET parent_id = $1 WHERE id = $2")
            .bind(parent)
            .bind(kid)
            .execute(app.engine.db())
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome, error) \
         VALUES ($1, 1, 'w', 1, 2, 'snoozed', 'signal \"from jane.doe@example.com\"')",
    )
    .bind(parent)
    .execute(app.engine.db())
    .await
    .unwrap();
    let detail = get(&app, &format!("/v1/jobs/{parent}"), Some(&read)).await;
    assert_eq!(detail.status, 200, "{}", detail.text);
    assert_eq!(
        detail.body["waiting_for"],
        json!("signal \"from [redacted]\""),
        "{}",
        detail.text
    );
    assert_eq!(detail.body["parent_id"], Value::Null);
    assert_eq!(
        detail.body["children"],
        json!([
            {"id": kids[0], "kind": detail.body["kind"], "status": "pending", "finished_at": null},
            {"id": kids[1], "kind": detail.body["kind"], "status": "pending", "finished_at": null},
        ])
    );
    let kid = get(&app, &format!("/v1/jobs/{}", kids[0]), Some(&read)).await;
    assert_eq!(kid.body["parent_id"], json!(parent));
    assert_eq!(kid.body["children"], json!([]));
    assert_eq!(kid.body["waiting_for"], Value::Null, "it never waited");
}

/// `POST /v1/jobs/{id}/signals/{name}`: stored with its payload for an unfinished job,
/// once; a second is 409, a finished job 409, a bad name 400, an unknown job 404. (How a
/// waiting job takes it is the engine's tests/steps.rs.)
async fn a_signal_is_stored_once_for_an_unfinished_job(db: TestDb) {
    let app = TestApp::new(db);
    let admin = app.key(Scope::Admin).await;
    let waiting = app.enqueue(false).await;
    let path = format!("/v1/jobs/{waiting}/signals/refund.v1");
    let sent = send(
        &app,
        "POST",
        &path,
        Some(&admin),
        Some(json!({"amount": 1200})),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    assert_eq!(sent.body, json!({"id": waiting, "signal": "refund.v1"}));
    let stored: (String, String) =
        sqlx::query_as("SELECT payload, sent_by FROM job_signals WHERE job_id = $1")
            .bind(waiting)
            .fetch_one(app.engine.db())
            .await
            .unwrap();
    assert_eq!(stored.0, r#"{"amount":1200}"#);
    assert!(stored.1.starts_with("api_key:"), "{}", stored.1);

    send(&app, "POST", &path, Some(&admin), Some(json!(null)))
        .await
        .assert_problem(409, "signal_already_sent");
    send(
        &app,
        "POST",
        &format!("/v1/jobs/{waiting}/signals/Bad%20Name"),
        Some(&admin),
        Some(json!(1)),
    )
    .await
    .assert_problem(400, "bad_request");
    send(
        &app,
        "POST",
        "/v1/jobs/999999/signals/go",
        Some(&admin),
        Some(json!(1)),
    )
    .await
    .assert_problem(404, "not_found");
    drain(&app.engine).await;
    send(
        &app,
        "POST",
        &format!("/v1/jobs/{waiting}/signals/late"),
        Some(&admin),
        Some(json!(1)),
    )
    .await
    .assert_problem(409, "invalid_job_state");
}

/// `GET /v1/jobs/{id}` lists the job's finished durable steps in order, their results
/// redacted like args (the steps' own semantics are the engine's tests/steps.rs).
async fn a_job_shows_its_finished_steps_redacted_in_order(db: TestDb) {
    let app = TestApp::new(db);
    let read = app.key(Scope::Read).await;
    let job = app.enqueue(false).await;
    let plain = get(&app, &format!("/v1/jobs/{job}"), Some(&read)).await;
    assert_eq!(plain.body["steps"], json!([]), "{}", plain.text);
    for (seq, name, result) in [
        (
            1,
            "send_email",
            r#"{"to":"jane.doe@example.com","message_id":"m-1"}"#,
        ),
        (0, "build_zip", r#"{"bytes":1024}"#),
    ] {
        sqlx::query(
            "INSERT INTO job_steps (job_id, seq, name, result, attempt, finished_at) \
             VALUES ($1, $2, $3, $4, 1, 1700000000000)",
        )
        .bind(job)
        .bind(seq)
        .bind(name)
        .bind(result)
        .execute(app.engine.db())
        .await
        .unwrap();
    }
    let detail = get(&app, &format!("/v1/jobs/{job}"), Some(&read)).await;
    assert_eq!(detail.status, 200, "{}", detail.text);
    assert_eq!(
        detail.body["steps"],
        json!([
            {"seq": 0, "name": "build_zip", "result": {"bytes": 1024}, "attempt": 1,
             "finished_at": 1_700_000_000_000_i64},
            {"seq": 1, "name": "send_email",
             "result": {"to": "[redacted]", "message_id": "m-1"}, "attempt": 1,
             "finished_at": 1_700_000_000_000_i64},
        ])
    );
    assert_eq!(
        detail.body["attempts"].as_array().map(Vec::len),
        Some(0),
        "steps are not attempts"
    );
}

async fn jobs_are_listed_inspected_retried_and_cancelled(db: TestDb) {
    // Arrange: one job that fails for good, one that succeeds, one pending.
    let app = TestApp::new(db);
    let admin = app.key(Scope::Admin).await;
    let failing = app.enqueue(true).await;
    let fine = app.enqueue(false).await;
    drain(&app.engine).await;
    let pending = app.enqueue(false).await;

    // List, newest first, with filters.
    let all = get(&app, "/v1/jobs", Some(&admin)).await;
    assert_eq!(all.status, 200, "{}", all.text);
    let ids: Vec<i64> = all.body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, vec![pending, fine, failing]);
    assert_eq!(all.body["next_cursor"], Value::Null);
    let failed = get(&app, "/v1/jobs?status=failed&kind=probe", Some(&admin)).await;
    assert_eq!(
        failed.body["jobs"].as_array().map(Vec::len),
        Some(1),
        "{}",
        failed.text
    );
    assert_eq!(failed.body["jobs"][0]["id"], failing);
    assert_eq!(failed.body["jobs"][0]["next_run_at"], Value::Null);
    let none = get(&app, "/v1/jobs?since=2999-01-01T00:00:00Z", Some(&admin)).await;
    assert_eq!(none.body["jobs"], json!([]));
    let before = get(
        &app,
        "/v1/jobs?until=2999-01-01T00:00:00Z&limit=2",
        Some(&admin),
    )
    .await;
    assert_eq!(before.body["jobs"].as_array().map(Vec::len), Some(2));
    assert_eq!(before.body["next_cursor"], fine);

    // One job: args, attempts with their errors, next run.
    let detail = get(&app, &format!("/v1/jobs/{failing}"), Some(&admin)).await;
    assert_eq!(detail.status, 200, "{}", detail.text);
    assert_eq!(detail.body["args"], json!({"fail": true}));
    assert_eq!(detail.body["status"], "failed");
    assert_eq!(detail.body["attempts"][0]["outcome"], "failed");
    assert!(
        detail.body["attempts"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("told to fail")),
        "{}",
        detail.text
    );
    let waiting = get(&app, &format!("/v1/jobs/{pending}"), Some(&admin)).await;
    assert!(waiting.body["next_run_at"].is_i64(), "{}", waiting.text);
    get(&app, "/v1/jobs/999999", Some(&admin))
        .await
        .assert_problem(404, "not_found");

    // Retry the failed job; cancel it; cancelling again is a conflict.
    let retried = post(
        &app,
        &format!("/v1/jobs/{failing}/retry"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(retried.status, 200, "{}", retried.text);
    assert_eq!(retried.body, json!({"id": failing, "status": "pending"}));
    let cancelled = post(
        &app,
        &format!("/v1/jobs/{failing}/cancel"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(
        cancelled.body,
        json!({"id": failing, "status": "cancelled"})
    );
    let again = post(
        &app,
        &format!("/v1/jobs/{failing}/cancel"),
        Some(&admin),
        None,
    )
    .await;
    again.assert_problem_saying(409, "invalid_job_state", "cancelled");
    post(&app, &format!("/v1/jobs/{fine}/retry"), Some(&admin), None)
        .await
        .assert_problem(409, "invalid_job_state");
    post(&app, "/v1/jobs/999999/retry", Some(&admin), None)
        .await
        .assert_problem(404, "not_found");

    // The audit trail names the key.
    let key_id = api::auth::keys::list(app.engine.db()).await.expect("keys")[0].id;
    let trail = get(
        &app,
        &format!("/v1/transitions?entity=job&id={failing}"),
        Some(&admin),
    )
    .await;
    assert_eq!(trail.status, 200, "{}", trail.text);
    let actors: Vec<&str> = trail
        .body
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["actor"].as_str())
        .collect();
    let expected = format!("api_key:{key_id}");
    assert_eq!(
        actors,
        vec![expected.as_str(), expected.as_str()],
        "{}",
        trail.text
    );
    get(&app, "/v1/transitions?entity=track", Some(&admin))
        .await
        .assert_problem(400, "bad_request");
}

async fn transitions_of_a_row_that_does_not_exist_are_404_like_the_row(db: TestDb) {
    // Arrange: a job with no transitions, a track that changed once and was then deleted
    // (as an erasure deletes tracks), and nothing else.
    let app = TestApp::new(db);
    let key = app.key(Scope::Read).await;
    let quiet = app.enqueue(false).await;
    let now = app.engine.clock().now_ms();
    let mut tx = app.engine.db().begin().await.expect("begin");
    let track: i64 = sqlx::query_scalar(
        "INSERT INTO tracks (status, file_path, created_at, updated_at) \
         VALUES ('processing', 'a.wav', $1, $1) RETURNING id",
    )
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .expect("track");
    jobs::tracks::state::transition(
        &mut tx,
        track,
        jobs::tracks::TrackStatus::Processing,
        jobs::tracks::TrackStatus::Ready,
        None,
        &engine::Actor::cli(),
        now,
    )
    .await
    .expect("transition");
    sqlx::query("DELETE FROM tracks WHERE id = $1")
        .bind(track)
        .execute(&mut *tx)
        .await
        .expect("delete");
    tx.commit().await.expect("commit");

    // A job that does not exist: 404, as /v1/jobs/{id} answers.
    get(&app, "/v1/jobs/999999", Some(&key))
        .await
        .assert_problem(404, "not_found");
    let missing = get(&app, "/v1/transitions?entity=job&id=999999", Some(&key)).await;
    missing.assert_problem_saying(404, "not_found", "no job \"999999\"");
    for absent in [
        "entity=track&id=424242",
        "entity=seller_transfer&id=1",
        "entity=user&id=1",
        "entity=data_export&id=1",
        "entity=api_key&id=999",
        "entity=schedule&id=nope",
        "entity=job&id=not-a-number",
    ] {
        get(&app, &format!("/v1/transitions?{absent}"), Some(&key))
            .await
            .assert_problem(404, "not_found");
    }
    // An existing row that never changed: an empty trail.
    let empty = get(
        &app,
        &format!("/v1/transitions?entity=job&id={quiet}"),
        Some(&key),
    )
    .await;
    assert_eq!(
        (empty.status, &empty.body),
        (200, &json!([])),
        "{}",
        empty.text
    );
    let schedule = get(
        &app,
        "/v1/transitions?entity=schedule&id=nightly_probe",
        Some(&key),
    )
    .await;
    assert_eq!(schedule.status, 200, "{}", schedule.text);
    // A deleted row keeps its trail.
    let deleted = get(
        &app,
        &format!("/v1/transitions?entity=track&id={track}"),
        Some(&key),
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    assert_eq!(deleted.body[0]["to_status"], "ready", "{}", deleted.text);
    // An entity nothing is audited under: a bad request, naming the parameter.
    let unknown = get(&app, "/v1/transitions?entity=invoice&id=1", Some(&key)).await;
    unknown.assert_problem(400, "bad_request");
    assert!(unknown.text.contains("entity"), "{}", unknown.text);
}

async fn queues_count_by_state_and_throughput(db: TestDb) {
    let app = TestApp::new(db);
    let key = app.key(Scope::Read).await;
    app.enqueue(true).await;
    app.enqueue(false).await;
    drain(&app.engine).await;
    app.enqueue(false).await;

    let queues = get(&app, "/v1/queues", Some(&key)).await;
    assert_eq!(queues.status, 200, "{}", queues.text);
    let probe = &queues.body[0];
    assert_eq!(probe["kind"], "probe");
    assert_eq!(
        probe["counts"],
        json!({"pending": 1, "running": 0, "succeeded": 1, "retrying": 0, "failed": 1, "cancelled": 0})
    );
    assert!(
        probe["oldest_pending_age_ms"]
            .as_i64()
            .is_some_and(|a| a >= 0)
    );
    assert_eq!(
        (
            probe["finished_last_minute"].as_i64(),
            probe["finished_last_hour"].as_i64()
        ),
        (Some(2), Some(2))
    );
}

async fn schedules_are_listed_and_run_now_with_an_audited_actor(db: TestDb) {
    let app = TestApp::new(db);
    let admin = app.key(Scope::Admin).await;

    let list = get(&app, "/v1/schedules", Some(&admin)).await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.body[0]["name"], "nightly_probe");
    assert_eq!(list.body[0]["kind"], "probe");

    let run = post(&app, "/v1/schedules/nightly_probe/run", Some(&admin), None).await;
    assert_eq!(run.status, 200, "{}", run.text);
    assert_eq!(run.body["enqueued"], true);
    let job = run.body["job_id"].as_i64().expect("job id");
    // Its previous run is unfinished: nothing new.
    let again = post(&app, "/v1/schedules/nightly_probe/run", Some(&admin), None).await;
    assert_eq!(again.body, json!({"job_id": job, "enqueued": false}));
    post(&app, "/v1/schedules/nope/run", Some(&admin), None)
        .await
        .assert_problem(404, "not_found");

    let trail = get(
        &app,
        "/v1/transitions?entity=schedule&id=nightly_probe",
        Some(&admin),
    )
    .await;
    assert!(
        trail.body[0]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("api_key:")),
        "{}",
        trail.text
    );
}

async fn api_keys_are_created_listed_and_revoked(db: TestDb) {
    let app = TestApp::new(db);
    let admin = app.key(Scope::Admin).await;

    let created = send(
        &app,
        "POST",
        "/v1/api-keys",
        Some(&admin),
        Some(json!({"name": "grafana", "scope": "read"})),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.text);
    let key = created.body["key"].as_str().expect("key");
    assert!(key.starts_with("vz_"));
    assert_eq!(created.body["scope"], "read");

    let list = get(&app, "/v1/api-keys", Some(&admin)).await;
    assert_eq!(list.body.as_array().map(Vec::len), Some(2), "{}", list.text);
    assert!(!list.text.contains(key), "a listing shows a key");
    assert!(list.body[1]["key"].is_null());

    let id = created.body["id"].as_i64().expect("id");
    let revoked = send(
        &app,
        "DELETE",
        &format!("/v1/api-keys/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert!(revoked.body["revoked_at"].is_i64(), "{}", revoked.text);
    send(&app, "DELETE", "/v1/api-keys/999999", Some(&admin), None)
        .await
        .assert_problem(404, "not_found");
}

async fn every_refusal_is_a_problem_document(db: TestDb) {
    let app = TestApp::new(db);
    let admin = app.key(Scope::Admin).await;
    let raw = |method: &str, path: &str, body: &'static str| {
        let method: poem::http::Method = method.parse().expect("method");
        app.client
            .request(method, path)
            .header("X-API-Key", admin.as_str())
            .content_type("application/json")
            .body(body)
            .send()
    };

    // Bad JSON, wrong types, missing fields.
    Answer::of(raw("POST", "/v1/api-keys", "{not json").await)
        .await
        .assert_problem(400, "bad_request");
    Answer::of(raw("POST", "/v1/api-keys", r#"{"name": "x", "scope": 5}"#).await)
        .await
        .assert_problem(400, "bad_request");
    Answer::of(raw("POST", "/v1/api-keys", r#"{"name": "x", "scope": "root"}"#).await)
        .await
        .assert_problem(400, "bad_request");
    Answer::of(raw("POST", "/v1/api-keys", "{}").await)
        .await
        .assert_problem(400, "bad_request");
    // Oversized body.
    let big = format!(
        "{{\"name\": \"{}\", \"scope\": \"read\"}}",
        "x".repeat(100_000)
    );
    let answer = Answer::of(
        app.client
            .post("/v1/api-keys")
            .header("X-API-Key", admin.as_str())
            .content_type("application/json")
            .body(big)
            .send()
            .await,
    )
    .await;
    answer.assert_problem(413, "payload_too_large");
    // Wrong parameter types and values.
    for path in [
        "/v1/jobs/abc",
        "/v1/jobs?status=done",
        "/v1/jobs?limit=0",
        "/v1/jobs?limit=501",
        "/v1/jobs?limit=many",
        "/v1/jobs?since=yesterday",
        "/v1/jobs?cursor=x",
    ] {
        let a = get(&app, path, Some(&admin)).await;
        a.assert_problem(400, "bad_request");
    }
    // Unknown routes, with and without a key; a wrong method.
    get(&app, "/v1/nope", Some(&admin))
        .await
        .assert_problem(404, "not_found");
    get(&app, "/v1/nope", None)
        .await
        .assert_problem(401, "unauthorized");
    get(&app, "/nope", None)
        .await
        .assert_problem(404, "not_found");
    send(&app, "PUT", "/v1/jobs", Some(&admin), None)
        .await
        .assert_problem(405, "method_not_allowed");
}

async fn request_ids_are_echoed_or_generated(db: TestDb) {
    let app = TestApp::new(db);
    let echoed = Answer::of(
        app.client
            .get("/health")
            .header("X-Request-Id", "abc-123")
            .send()
            .await,
    )
    .await;
    assert_eq!(echoed.header("x-request-id"), Some("abc-123"));
    let generated = get(&app, "/nope", None).await;
    assert_eq!(generated.header("x-request-id").map(str::len), Some(24));
    let bad = Answer::of(
        app.client
            .get("/health")
            .header("X-Request-Id", "a b\tc")
            .send()
            .await,
    )
    .await;
    assert_ne!(bad.header("x-request-id"), Some("a b\tc"));
}

async fn pages_stay_stable_while_jobs_are_inserted(db: TestDb) {
    let app = TestApp::new(db);
    let key = app.key(Scope::Read).await;
    let mut before = HashSet::new();
    for _ in 0..40 {
        before.insert(app.enqueue(false).await);
    }

    // Page through while another task keeps enqueueing.
    let engine = app.engine.clone();
    let inserter = tokio::spawn(async move {
        for _ in 0..40 {
            engine
                .enqueue(crate::helpers::Probe { fail: false })
                .await
                .expect("enqueue");
            tokio::task::yield_now().await;
        }
    });
    let mut seen = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let path = match cursor {
            Some(c) => format!("/v1/jobs?limit=7&cursor={c}"),
            None => "/v1/jobs?limit=7".to_owned(),
        };
        let page = get(&app, &path, Some(&key)).await;
        assert_eq!(page.status, 200, "{}", page.text);
        seen.extend(
            page.body["jobs"]
                .as_array()
                .expect("jobs")
                .iter()
                .map(|j| j["id"].as_i64().expect("id")),
        );
        match page.body["next_cursor"].as_i64() {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    inserter.await.expect("inserter");

    // Strictly newest first: no job twice, none skipped of those there at the start.
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");
    let seen: HashSet<i64> = seen.into_iter().collect();
    assert!(
        before.is_subset(&seen),
        "a job present from the start was skipped"
    );
}

async fn a_read_key_gets_job_args_and_errors_redacted(db: TestDb) {
    // Arrange: a job whose args carry an address and a key, and whose error quotes the
    // address (as an SMTP refusal does).
    let app = TestApp::new(db);
    let read = app.key(Scope::Read).await;
    let args = json!({
        "fail": true,
        "email": "jane.doe@example.com",
        "api_key": "plain-looking-value",
        "nested": {"to": "bob@example.org"},
        "track_id": 4242
    });
    let mut conn = app.engine.db().acquire().await.unwrap();
    let job = app
        .engine
        .enqueue_json(&mut conn, "probe", &args.to_string(), None)
        .await
        .expect("enqueue")
        .id();
    drop(conn);
    drain(&app.engine).await;
    let refusal = "554 5.7.1 <jane.doe@example.com>: Recipient address rejected";
    sqlx::query("UPDATE jobs SET last_error = $1 WHERE id = $2")
        .bind(refusal)
        .bind(job)
        .execute(app.engine.db())
        .await
        .unwrap();
    sqlx::query("UPDATE job_attempts SET error = $1 WHERE job_id = $2")
        .bind(refusal)
        .bind(job)
        .execute(app.engine.db())
        .await
        .unwrap();

    // Act
    let detail = get(&app, &format!("/v1/jobs/{job}"), Some(&read)).await;
    let list = get(&app, "/v1/jobs", Some(&read)).await;

    // Assert
    assert_eq!((detail.status, list.status), (200, 200), "{}", detail.text);
    assert_eq!(
        detail.body["args"],
        json!({
            "fail": true,
            "email": "[redacted]",
            "api_key": "[redacted]",
            "nested": {"to": "[redacted]"},
            "track_id": 4242
        })
    );
    let redacted = "554 5.7.1 <[redacted]>: Recipient address rejected";
    assert_eq!(detail.body["last_error"], redacted);
    assert_eq!(detail.body["attempts"][0]["error"], redacted);
    assert_eq!(list.body["jobs"][0]["last_error"], redacted);
    for answer in [&detail, &list] {
        assert!(!answer.text.contains("jane.doe"), "{}", answer.text);
        assert!(
            !answer.text.contains("plain-looking-value"),
            "{}",
            answer.text
        );
    }
}

/// A route whose database is out of reach answers 503 `unavailable` (send it again later),
/// not 500 (a bug of ours): here the pool is closed after the key was checked and cached.
async fn a_database_out_of_reach_is_a_503_to_retry(db: TestDb) {
    let app = TestApp::new(db);
    let read = app.key(Scope::Read).await;
    let id = app.enqueue(false).await;
    let path = format!("/v1/jobs/{id}");
    assert_eq!(get(&app, &path, Some(&read)).await.status, 200);

    app.engine.db().close().await;
    let answer = get(&app, &path, Some(&read)).await;
    answer.assert_problem_saying(503, "unavailable", "database is unavailable");
}
