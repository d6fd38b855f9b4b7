//! Account deletion over HTTP, through the real router on both backends: request, restore
//! before the deadline, 409 after it; the daily `hard_delete` schedule on a controlled
//! clock erases the account, `GET` shows the receipt, and no table holds the user's e-mail,
//! username or display name any more; bad input.

use std::time::Duration;

use api::auth::Scope;
use chrono::{TimeZone, Utc};
use engine::backend_tests;
use engine::scheduler::Scheduler;
use engine::testing::{TestDb, drain};
use serde_json::json;

use crate::exports::{gdpr_app, seeded_user, world_of};
use crate::gdpr_support::fake_opensearch::FakeOpenSearch;
use crate::gdpr_support::{self, Person};
use crate::helpers::{get, post, send};

backend_tests!(
    schema = jobs::schema::migrator;
    deletion_is_requested_restored_before_the_deadline_and_refused_after,
    the_daily_schedule_erases_the_account_and_the_receipt_shows_it,
    bad_input_is_refused,
    accounts_with_a_deletion_are_listed_with_their_erasure_progress,
);

const DAY_MS: i64 = 24 * 3600 * 1000;

async fn deletion_is_requested_restored_before_the_deadline_and_refused_after(db: TestDb) {
    let app = gdpr_app(db, |_| {});
    let w = world_of(&app);
    let user = Person::new("erin");
    gdpr_support::insert_user(&w, &user).await;
    let write = app.key(Scope::Write).await;
    let read = app.key(Scope::Read).await;
    let path = format!("/v1/users/{}/deletion", user.id);
    let start = app.engine.clock().now_ms();

    let before = get(&app, &path, Some(&read)).await;
    assert_eq!(before.status, 200, "{}", before.text);
    assert_eq!(before.body["status"], "active");
    assert!(before.body["recovery_deadline"].is_null());

    // Request: 202, deadline = now + ACCOUNT_RECOVERY_DAYS (30).
    let requested = post(
        &app,
        &path,
        Some(&write),
        Some(json!({"keep_public_tracks": true})),
    )
    .await;
    assert_eq!(requested.status, 202, "{}", requested.text);
    assert_eq!(requested.body["status"], "deletion_requested");
    assert_eq!(requested.body["deletion_requested_at"], start);
    assert_eq!(requested.body["recovery_deadline"], start + 30 * DAY_MS);
    assert_eq!(requested.body["keep_public_tracks"], true);
    let shown = get(&app, &path, Some(&read)).await;
    assert_eq!(shown.body["status"], "deletion_requested");
    assert_eq!(shown.body["recovery_deadline"], start + 30 * DAY_MS);
    assert!(shown.body["receipt"].is_null());

    // A second request: 409, the deadline unchanged.
    post(
        &app,
        &path,
        Some(&write),
        Some(json!({"keep_public_tracks": false})),
    )
    .await
    .assert_problem(409, "deletion_already_requested");
    assert_eq!(
        get(&app, &path, Some(&read)).await.body["keep_public_tracks"],
        true
    );

    // Restore one second before the deadline: active again, the deadline cleared.
    app.engine
        .clock()
        .advance(Duration::from_millis((30 * DAY_MS - 1000) as u64));
    let restored = send(&app, "DELETE", &path, Some(&write), None).await;
    assert_eq!(restored.status, 200, "{}", restored.text);
    assert_eq!(restored.body["status"], "active");
    assert!(restored.body["recovery_deadline"].is_null());
    assert!(restored.body["deletion_requested_at"].is_null());
    send(&app, "DELETE", &path, Some(&write), None)
        .await
        .assert_problem(409, "no_pending_deletion");
    // The audit trail has both transitions, by the API key.
    let audit = get(
        &app,
        &format!("/v1/transitions?entity=user&id={}", user.id),
        Some(&read),
    )
    .await;
    assert_eq!(audit.status, 200, "{}", audit.text);
    let text = audit.text.clone();
    assert!(
        text.contains("deletion_requested") && text.contains("api_key:"),
        "{text}"
    );

    // Ask again; at the new deadline, restoring is refused.
    let again = post(
        &app,
        &path,
        Some(&write),
        Some(json!({"keep_public_tracks": false})),
    )
    .await;
    assert_eq!(again.status, 202, "{}", again.text);
    let deadline = again.body["recovery_deadline"].as_i64().expect("deadline");
    let now = app.engine.clock().now_ms();
    app.engine
        .clock()
        .advance(Duration::from_millis((deadline - now) as u64));
    send(&app, "DELETE", &path, Some(&write), None)
        .await
        .assert_problem(409, "recovery_period_over");
    assert_eq!(
        get(&app, &path, Some(&read)).await.body["status"],
        "deletion_requested"
    );
}

async fn the_daily_schedule_erases_the_account_and_the_receipt_shows_it(db: TestDb) {
    // Arrange: a user with data everywhere (rows, files, an export ZIP), a fake OpenSearch,
    // the real daily schedule on the app's manual clock (2026-05-01 12:00 UTC).
    let search = FakeOpenSearch::start().await;
    let app = gdpr_app(db, |c| c.gdpr.erasure.opensearch_url = Some(search.url()));
    let w = world_of(&app);
    let (user, other, seeded) = seeded_user(&w, "frank").await;
    let write = app.key(Scope::Write).await;
    let read = app.key(Scope::Read).await;
    let exported = post(
        &app,
        &format!("/v1/users/{}/exports", user.id),
        Some(&write),
        None,
    )
    .await;
    assert_eq!(exported.status, 202, "{}", exported.text);
    drain(&app.engine).await;
    let zip = jobs::exports::export_file_path(
        &app.jobs.gdpr.exports,
        exported.body["export_id"].as_i64().expect("id"),
    );
    assert!(zip.exists());
    let path = format!("/v1/users/{}/deletion", user.id);
    let requested = post(
        &app,
        &path,
        Some(&write),
        Some(json!({"keep_public_tracks": true})),
    )
    .await;
    assert_eq!(requested.status, 202, "{}", requested.text);
    // The daily hard_delete schedule, as `jobs::gdpr::schedules` defines it.
    let daily = jobs::gdpr::schedules()
        .into_iter()
        .filter(|s| s.name == "hard_delete")
        .collect();
    let scheduler = Scheduler::new(app.engine.clone(), daily);
    scheduler.register().await.expect("register");
    let clock = app.engine.clock().clone();

    // The daily pass the night before the deadline (05-31 03:00; deadline 05-31 12:00)
    // leaves the account alone.
    clock.set(Utc.with_ymd_and_hms(2026, 5, 31, 3, 0, 0).unwrap());
    let fired = scheduler.tick().await.expect("tick");
    assert!(
        fired.iter().any(|(name, _)| *name == "hard_delete"),
        "{fired:?}"
    );
    drain(&app.engine).await;
    assert_eq!(
        get(&app, &path, Some(&read)).await.body["status"],
        "deletion_requested"
    );

    // Act: the next night's pass, past the deadline.
    clock.set(Utc.with_ymd_and_hms(2026, 6, 1, 3, 0, 0).unwrap());
    let fired = scheduler.tick().await.expect("tick");
    assert_eq!(
        fired
            .iter()
            .filter(|(name, _)| *name == "hard_delete")
            .count(),
        1,
        "{fired:?}"
    );
    let report = drain(&app.engine).await;
    assert_eq!(
        (report.succeeded, report.failed, report.retried),
        (2, 0, 0),
        "hard_delete_scan, then one hard_delete: {report:?}"
    );

    // Assert: erased, with a complete receipt holding counts and skip reasons.
    let shown = get(&app, &path, Some(&read)).await;
    assert_eq!(shown.status, 200, "{}", shown.text);
    let b = &shown.body;
    assert_eq!(b["status"], "erased", "{}", shown.text);
    assert_eq!(b["erased_at"], clock.now_ms());
    let r = &b["receipt"];
    assert!(r["finished_at"].is_i64(), "{}", shown.text);
    let db_step = &r["database"];
    assert_eq!(db_step["status"], "done");
    assert_eq!(db_step["users_anonymised"], 1);
    assert_eq!(db_step["profiles_anonymised"], 1);
    assert_eq!(
        db_step["messages_deleted"],
        seeded.messages_sent + seeded.messages_received
    );
    assert_eq!(db_step["playback_history_deleted"], seeded.plays);
    assert_eq!(db_step["playlists_deleted"], seeded.playlists.len());
    assert_eq!(
        db_step["private_tracks_deleted"],
        seeded.private_tracks.len()
    );
    assert_eq!(
        db_step["public_tracks_anonymised"],
        seeded.public_tracks.len()
    );
    assert_eq!(db_step["public_tracks_deleted"], 0);
    assert_eq!(db_step["exports_deleted"], 1);
    assert_eq!(db_step["export_files_deleted"], 1);
    assert_eq!(
        db_step["outbox_files_deleted"], 1,
        "the export-ready e-mail"
    );
    assert_eq!(r["redis"]["status"], "skipped");
    assert_eq!(r["redis"]["reason"], jobs::hard_delete::REDIS_SKIPPED);
    assert_eq!(r["opensearch"]["status"], "done", "{}", shown.text);
    assert_eq!(r["opensearch"]["user_document"]["status"], "done");
    assert!(!zip.exists(), "the export ZIP is gone");
    for f in &seeded.private_files {
        assert!(!f.exists(), "{} survived", f.display());
    }
    for f in seeded.public_files.iter().chain(&seeded.other_files) {
        assert!(f.exists(), "{} was removed", f.display());
    }

    // No table holds the user's identity any more; the other user's is intact.
    let hits = gdpr_support::find_everywhere(&w, &user.identity()).await;
    assert!(hits.is_empty(), "personal data left: {hits:?}");
    let theirs = gdpr_support::find_everywhere(&w, &[&other.email]).await;
    assert!(!theirs.is_empty(), "the scanner finds what is there");

    // An erased account: restore and new exports are refused for good.
    send(&app, "DELETE", &path, Some(&write), None)
        .await
        .assert_problem(410, "gone");
    post(
        &app,
        &format!("/v1/users/{}/exports", user.id),
        Some(&write),
        None,
    )
    .await
    .assert_problem(410, "gone");
    post(
        &app,
        &path,
        Some(&write),
        Some(json!({"keep_public_tracks": false})),
    )
    .await
    .assert_problem(410, "gone");
}

async fn bad_input_is_refused(db: TestDb) {
    let app = gdpr_app(db, |_| {});
    let w = world_of(&app);
    let user = Person::new("gina");
    gdpr_support::insert_user(&w, &user).await;
    let write = app.key(Scope::Write).await;
    let read = app.key(Scope::Read).await;
    let path = format!("/v1/users/{}/deletion", user.id);

    // Malformed JSON, a missing field, a wrong type: 400, nothing changed.
    let raw = |body: &'static str| {
        app.client
            .post(&path)
            .header("X-API-Key", &write)
            .content_type("application/json")
            .body(body)
            .send()
    };
    for body in [
        "{\"keep_public_tracks\": tru",
        "{}",
        "{\"keep_public_tracks\": \"yes\"}",
        "[]",
    ] {
        crate::helpers::Answer::of(raw(body).await)
            .await
            .assert_problem(400, "bad_request");
    }
    // No body at all: poem answers 415 (no Content-Type), as a problem document.
    post(&app, &path, Some(&write), None)
        .await
        .assert_problem(415, "unsupported_media_type");
    assert_eq!(get(&app, &path, Some(&read)).await.body["status"], "active");

    // An unknown user, a non-numeric id.
    let ghost = "/v1/users/424242/deletion";
    post(
        &app,
        ghost,
        Some(&write),
        Some(json!({"keep_public_tracks": false})),
    )
    .await
    .assert_problem(404, "not_found");
    send(&app, "DELETE", ghost, Some(&write), None)
        .await
        .assert_problem(404, "not_found");
    get(&app, ghost, Some(&read))
        .await
        .assert_problem(404, "not_found");
    get(&app, "/v1/users/abc/deletion", Some(&read))
        .await
        .assert_problem(400, "bad_request");

    // A double request: the second is 409.
    let body = Some(json!({"keep_public_tracks": false}));
    assert_eq!(
        post(&app, &path, Some(&write), body.clone()).await.status,
        202
    );
    post(&app, &path, Some(&write), body)
        .await
        .assert_problem(409, "deletion_already_requested");
    // Scopes: a read key cannot ask or restore.
    send(&app, "DELETE", &path, Some(&read), None)
        .await
        .assert_problem(403, "forbidden");
}

async fn accounts_with_a_deletion_are_listed_with_their_erasure_progress(db: TestDb) {
    // Arrange: an active account, one erased, one whose erasure is stuck on OpenSearch,
    // and one within its recovery period.
    let search = FakeOpenSearch::start().await;
    let app = gdpr_app(db, |c| c.gdpr.erasure.opensearch_url = Some(search.url()));
    let w = world_of(&app);
    let [active, done, stuck, pending] = ["ivy", "jon", "kim", "lea"].map(Person::new);
    for p in [&active, &done, &stuck, &pending] {
        gdpr_support::insert_user(&w, p).await;
    }
    let write = app.key(Scope::Write).await;
    let read = app.key(Scope::Read).await;
    let request = |user: &Person| {
        let path = format!("/v1/users/{}/deletion", user.id);
        let write = write.clone();
        let app = &app;
        async move {
            let answer = post(
                app,
                &path,
                Some(&write),
                Some(json!({"keep_public_tracks": false})),
            )
            .await;
            assert_eq!(answer.status, 202, "{}", answer.text);
        }
    };
    request(&done).await;
    request(&stuck).await;
    search
        .fail("DELETE", &format!("/users/_doc/{}", stuck.id), 500, 1000)
        .await;
    app.engine
        .clock()
        .advance(Duration::from_secs(31 * 24 * 3600));
    for user in [&done, &stuck] {
        app.engine
            .enqueue(jobs::hard_delete::HardDelete { user_id: user.id })
            .await
            .expect("enqueue");
    }
    let report = drain(&app.engine).await;
    assert_eq!(
        (report.succeeded, report.retried),
        (1, 1),
        "one erasure done, one waiting for OpenSearch: {report:?}"
    );
    request(&pending).await;
    let now = app.engine.clock().now_ms();

    // Act + Assert: every account with a deletion, by id; the active one is not there.
    // (Test users have random ids: the expected order is sorted.)
    let sorted = |mut v: Vec<i64>| {
        v.sort_unstable();
        v
    };
    let all = get(&app, "/v1/deletions", Some(&read)).await;
    assert_eq!(all.status, 200, "{}", all.text);
    let rows = all.body["deletions"].as_array().expect("deletions").clone();
    let ids: Vec<i64> = rows
        .iter()
        .map(|d| d["user_id"].as_i64().unwrap())
        .collect();
    let every = sorted(vec![done.id, stuck.id, pending.id]);
    assert_eq!(ids, every);
    assert!(all.body["next_cursor"].is_null());
    let row = |user: &Person| rows.iter().find(|d| d["user_id"] == user.id).unwrap();
    let (d, s, p) = (row(&done), row(&stuck), row(&pending));
    assert_eq!(d["status"], "erased");
    assert!(
        d["receipt"]["started_at"].is_i64() && d["receipt"]["finished_at"].is_i64(),
        "{d}"
    );
    assert_eq!(s["status"], "erased", "the database step is done: {s}");
    assert!(
        s["receipt"]["started_at"].is_i64() && s["receipt"]["finished_at"].is_null(),
        "started, unfinished: {s}"
    );
    assert_eq!(p["status"], "deletion_requested");
    assert_eq!(p["recovery_deadline"], now + 30 * DAY_MS);
    assert!(p["receipt"].is_null() && p["erased_at"].is_null(), "{p}");

    // By status.
    let ids_of = |answer: &crate::helpers::Answer| -> Vec<i64> {
        assert_eq!(answer.status, 200, "{}", answer.text);
        answer.body["deletions"]
            .as_array()
            .expect("deletions")
            .iter()
            .map(|d| d["user_id"].as_i64().unwrap())
            .collect()
    };
    let erased = get(&app, "/v1/deletions?status=erased", Some(&read)).await;
    assert_eq!(ids_of(&erased), sorted(vec![done.id, stuck.id]));
    let waiting = get(&app, "/v1/deletions?status=deletion_requested", Some(&read)).await;
    assert_eq!(ids_of(&waiting), [pending.id]);

    // Pages.
    let first = get(&app, "/v1/deletions?limit=2", Some(&read)).await;
    assert_eq!(ids_of(&first), every[..2]);
    assert_eq!(first.body["next_cursor"], every[1]);
    let next = get(
        &app,
        &format!("/v1/deletions?limit=2&cursor={}", every[1]),
        Some(&read),
    )
    .await;
    assert_eq!(ids_of(&next), every[2..]);
    assert!(next.body["next_cursor"].is_null());

    // Bad input, no key.
    for bad in [
        "/v1/deletions?status=active",
        "/v1/deletions?status=gone",
        "/v1/deletions?limit=0",
        "/v1/deletions?limit=501",
        "/v1/deletions?cursor=x",
    ] {
        get(&app, bad, Some(&read))
            .await
            .assert_problem(400, "bad_request");
    }
    get(&app, "/v1/deletions", None)
        .await
        .assert_problem(401, "unauthorized");
}
