//! Account deletion end to end on both backends: request and cancel within the recovery
//! period, then the daily schedule's hard delete after it, against real Redis
//! (`TEST_REDIS_URL`) and a local fake OpenSearch, with a scanner proving that no table
//! keeps the user's e-mail, username or display name.

mod gdpr_support;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use engine::scheduler::Scheduler;
use engine::testing::{TestDb, drain, enqueued, perform_job, query_plan};
use engine::{Actor, Backend, JobState, Outcome, backend_tests};
use gdpr_support::fake_opensearch::FakeOpenSearch;
use gdpr_support::smtp_sink::SmtpSink;
use gdpr_support::*;
use jobs::exports;
use jobs::hard_delete::receipt::{Receipt, StepStatus};
use jobs::hard_delete::scan::HardDeleteScan;
use jobs::hard_delete::{HardDelete, OPENSEARCH_SKIPPED, REDIS_SKIPPED};
use jobs::payments::{self, EventOutcome, StripeEvent};
use jobs::send_email::outbox_dir_of;
use jobs::users::{self, DeletionError, UserStatus};
use serde_json::{Value, json};

const DAY: Duration = Duration::from_secs(24 * 3600);

backend_tests!(
    schema = jobs::schema::migrator;
    deletion_can_be_cancelled_before_the_deadline,
    cancelling_at_or_after_the_deadline_is_a_conflict,
    hard_delete_after_the_deadline_erases_every_store,
    public_tracks_are_deleted_unless_kept_and_unset_stores_are_skipped,
    one_failing_index_is_retried_alone,
    a_missing_user_document_and_empty_lists_need_no_request,
    unreachable_redis_leaves_the_step_unfinished,
    listing_deletions_reads_the_partial_index,
    every_stripe_event_of_the_buyers_payments_is_erased_whatever_its_outcome,
    an_smtp_refusal_quoting_the_address_is_scrubbed_from_job_texts,
    an_erasure_whose_job_ended_unfinished_is_enqueued_again_by_the_next_scan,
    a_failed_redis_step_is_retried_without_running_the_finished_steps_again,
    the_closed_receipt_is_built_from_the_stored_step_results,
);

async fn deletion_can_be_cancelled_before_the_deadline(t: TestDb) {
    let w = world(&t, |_| {});
    let user = Person::new("ana");
    insert_user(&w, &user).await;
    let actor = Actor::api_key(7);
    let accounts = &w.settings.accounts;
    let t0 = w.now();

    let st = users::request_deletion(&w.engine, accounts, user.id, Some(true), &actor)
        .await
        .unwrap();
    assert_eq!(st.status, UserStatus::DeletionRequested);
    assert_eq!(st.deletion_requested_at, Some(t0));
    assert_eq!(st.recovery_deadline, Some(t0 + 30 * 86_400_000));
    assert!(st.keep_public_tracks);
    assert!(st.receipt.is_none());
    assert!(matches!(
        users::request_deletion(&w.engine, accounts, user.id, None, &actor).await,
        Err(DeletionError::AlreadyRequested { recovery_deadline, .. }) if recovery_deadline == t0 + 30 * 86_400_000
    ));

    // The last millisecond of the recovery period: still restorable.
    w.clock.advance(30 * DAY - Duration::from_millis(1));
    let st = users::cancel_deletion(&w.engine, user.id, &actor)
        .await
        .unwrap();
    assert_eq!(st.status, UserStatus::Active);
    assert_eq!(
        (st.deletion_requested_at, st.recovery_deadline),
        (None, None)
    );
    assert!(matches!(
        users::cancel_deletion(&w.engine, user.id, &actor).await,
        Err(DeletionError::NotRequested(_))
    ));
    let audit = engine::state_machine::history(
        &mut w.db().acquire().await.unwrap(),
        "user",
        &user.id.to_string(),
    )
    .await
    .unwrap();
    let edges: Vec<_> = audit
        .iter()
        .map(|a| {
            (
                a.from_status.as_str(),
                a.to_status.as_str(),
                a.actor.as_str(),
            )
        })
        .collect();
    assert_eq!(
        edges,
        [
            ("active", "deletion_requested", "api_key:7"),
            ("deletion_requested", "active", "api_key:7")
        ]
    );

    // A restored account is not erased by the daily pass, and can ask again.
    w.clock.advance(2 * DAY);
    perform_job(&w.engine, &HardDeleteScan {}).await.unwrap();
    assert!(enqueued::<HardDelete>(&w.engine).await.is_empty());
    let st = users::request_deletion(&w.engine, accounts, user.id, None, &actor)
        .await
        .unwrap();
    assert_eq!(st.status, UserStatus::DeletionRequested);
    assert!(matches!(
        users::deletion_status(w.db(), 1).await,
        Err(DeletionError::NotFound(1))
    ));
}

async fn cancelling_at_or_after_the_deadline_is_a_conflict(t: TestDb) {
    let w = world(&t, |_| {});
    let user = Person::new("cy");
    insert_user(&w, &user).await;
    let actor = Actor::api_key(1);
    let st = users::request_deletion(&w.engine, &w.settings.accounts, user.id, None, &actor)
        .await
        .unwrap();
    w.clock.advance(30 * DAY);
    match users::cancel_deletion(&w.engine, user.id, &actor).await {
        Err(DeletionError::DeadlinePassed {
            recovery_deadline, ..
        }) => assert_eq!(Some(recovery_deadline), st.recovery_deadline),
        other => panic!("expected DeadlinePassed, got {other:?}"),
    }
    let st = users::deletion_status(w.db(), user.id).await.unwrap();
    assert_eq!(st.status, UserStatus::DeletionRequested, "nothing changed");
    // Before the deadline, the hard delete job refuses to run (an early manual enqueue).
    let w2 = world(&t, |_| {});
    let early = Person::new("dee");
    insert_user(&w2, &early).await;
    users::request_deletion(&w2.engine, &w2.settings.accounts, early.id, None, &actor)
        .await
        .unwrap();
    let out = perform_job(&w2.engine, &HardDelete { user_id: early.id })
        .await
        .unwrap();
    assert!(
        matches!(&out, Outcome::Skipped { reason } if reason.contains("recovery period is not over")),
        "{out:?}"
    );
}

fn files_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

fn ids(v: &[i64]) -> Value {
    json!(v.iter().map(i64::to_string).collect::<Vec<_>>())
}

async fn hard_delete_after_the_deadline_erases_every_store(t: TestDb) {
    let os = FakeOpenSearch::start().await;
    let redis = redis_url();
    let w = world(&t, |s| {
        s.erasure.opensearch_url = Some(os.url());
        s.erasure.redis_url = redis.clone();
        // Keep the earlier export's file until the erasure (cleanup would remove it first).
        s.exports.retention = 90 * DAY;
    });
    let (user, other) = (Person::new("ana"), Person::new("bob"));
    insert_user(&w, &user).await;
    insert_user(&w, &other).await;
    let seeded = seed(&w, &user, &other).await;
    let actor = Actor::api_key(3);

    // The user exported their data before: the ZIP must go too.
    let export = exports::request_export(&w.engine, &w.settings.exports, user.id, &actor)
        .await
        .unwrap();
    // The other user too: their e-mail must stay in the outbox.
    exports::request_export(&w.engine, &w.settings.exports, other.id, &actor)
        .await
        .unwrap();
    drain(&w.engine).await;
    let export_file = exports::export_file_path(&w.settings.exports, export.export_id);
    assert!(export_file.exists());
    // Without SMTP_URL, each "export ready" e-mail is an .eml file in its recipient's outbox.
    let user_outbox = outbox_dir_of(&w.settings.mail.outbox_dir, user.id);
    let other_outbox = outbox_dir_of(&w.settings.mail.outbox_dir, other.id);
    assert_eq!(files_in(&user_outbox), 1);
    assert_eq!(files_in(&other_outbox), 1);

    // Redis: 154 keys of the user (several SCAN pages), 4 of another user whose id starts
    // with the same digits, and global keys.
    let user_keys: Vec<String> = (0..154).map(|i| format!("user:{}:k{i}", user.id)).collect();
    let other_keys: Vec<String> = (0..4).map(|i| format!("user:{}0:k{i}", user.id)).collect();
    let global_keys = vec![
        format!("global:{}:charts", user.id),
        format!("user:{}", user.id),
        format!("users:{}:count", user.id),
    ];
    let client = match &redis {
        Some(url) => {
            let c = redis_client(url).await;
            redis_set(&c, &user_keys).await;
            redis_set(&c, &other_keys).await;
            redis_set(&c, &global_keys).await;
            Some(c)
        }
        None => None,
    };

    // A Stripe event of the user's order, stored with the buyer's e-mail in its payload.
    let now = w.clock.now_ms();
    let order: i64 = sqlx::query_scalar(
        "INSERT INTO orders (buyer_id, currency, amount_total, created_at, updated_at) \
         VALUES ($1, 'eur', 1000, $2, $2) RETURNING id",
    )
    .bind(user.id)
    .bind(now)
    .fetch_one(w.engine.db())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO webhook_events (id, type, object_id, order_id, outcome, actor, received_at, payload) \
         VALUES ('evt_buyer', 'payment_intent.succeeded', 'pi_1', $1, 'transfers_created', 'webhook:evt_buyer', $2, $3)",
    )
    .bind(order)
    .bind(now)
    .bind(format!(r#"{{"data":{{"object":{{"receipt_email":"{}"}}}}}}"#, user.email))
    .execute(w.engine.db())
    .await
    .unwrap();

    // The scanner sees the user's identity before: it is not blind.
    let before = find_everywhere(&w, &user.identity()).await;
    for place in [
        "users.email",
        "webhook_events.payload",
        "users.username",
        "users.display_name",
        "user_profiles.bio",
        "messages.body",
        "tracks.artist_name",
        "playlists.name",
    ] {
        assert!(
            before.iter().any(|h| h.starts_with(place)),
            "{place} not found in {before:#?}"
        );
    }

    let scheduler = Scheduler::new(w.engine.clone(), jobs::gdpr::schedules());
    scheduler.register().await.unwrap();
    users::request_deletion(&w.engine, &w.settings.accounts, user.id, Some(true), &actor)
        .await
        .unwrap();

    // Day 30, 03:00: the deadline (12:00) has not passed; the pass enqueues nothing.
    w.clock
        .set(Utc.with_ymd_and_hms(2026, 5, 31, 3, 0, 0).unwrap());
    let fired: Vec<&str> = scheduler
        .tick()
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(fired.contains(&"hard_delete"), "{fired:?}");
    drain(&w.engine).await;
    assert!(enqueued::<HardDelete>(&w.engine).await.is_empty());
    assert_eq!(
        users::deletion_status(w.db(), user.id)
            .await
            .unwrap()
            .status,
        UserStatus::DeletionRequested
    );

    // Day 31, 03:00: past the deadline.
    w.clock
        .set(Utc.with_ymd_and_hms(2026, 6, 1, 3, 0, 0).unwrap());
    let fired: Vec<&str> = scheduler
        .tick()
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(fired.contains(&"hard_delete"), "{fired:?}");
    let report = drain(&w.engine).await;
    assert_eq!((report.retried, report.failed), (0, 0), "{report:?}");
    let jobs = enqueued::<HardDelete>(&w.engine).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].1, JobState::Succeeded);
    assert_eq!(jobs[0].2.user_id, user.id);

    // Status and receipt.
    let st = users::deletion_status(w.db(), user.id).await.unwrap();
    assert_eq!(st.status, UserStatus::Erased);
    assert_eq!(st.erased_at, Some(w.now()));
    let receipt = st.receipt.expect("a receipt");
    assert_eq!(receipt.finished_at, Some(w.now()));
    assert!(receipt.started_at <= receipt.finished_at.unwrap());
    let d = &receipt.report.database;
    assert_eq!(d.status, StepStatus::Done);
    assert_eq!((d.users_anonymised, d.profiles_anonymised), (1, 1));
    assert_eq!(
        d.messages_deleted,
        (seeded.messages_sent + seeded.messages_received) as u64
    );
    assert_eq!(d.playback_history_deleted, seeded.plays as u64);
    assert_eq!(
        (d.playlists_deleted, d.playlist_items_deleted),
        (2, seeded.playlist_items as u64)
    );
    assert_eq!(
        (
            d.private_tracks_deleted,
            d.public_tracks_deleted,
            d.public_tracks_anonymised
        ),
        (2, 0, 2)
    );
    assert_eq!(
        d.other_plays_detached, 1,
        "the other user's play of a private track"
    );
    assert_eq!(d.media_files_deleted, seeded.private_files.len() as u64);
    assert_eq!((d.exports_deleted, d.export_files_deleted), (1, 1));
    assert_eq!(d.outbox_files_deleted, 1);
    let receipt_json = serde_json::to_string(&receipt).unwrap();
    for needle in user.identity() {
        assert!(
            !receipt_json.contains(needle),
            "the receipt holds no personal data"
        );
    }

    // Database rows.
    let (email, username, name): (Option<String>, Option<String>, Option<String>) =
        sqlx::query_as("SELECT email, username, display_name FROM users WHERE id = $1")
            .bind(user.id)
            .fetch_one(w.db())
            .await
            .unwrap();
    assert_eq!((email, username, name), (None, None, None));
    let left: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM user_profiles WHERE user_id = $1 AND bio IS NULL \
         AND avatar_path IS NULL AND location IS NULL AND website IS NULL AND links IS NULL",
    )
    .bind(user.id)
    .fetch_one(w.db())
    .await
    .unwrap();
    assert_eq!(left, 1, "the profile row stays, every field cleared");
    for (sql, left) in [
        (
            "SELECT COUNT(*) FROM messages WHERE sender_id = $1 OR recipient_id = $1",
            0,
        ),
        (
            "SELECT COUNT(*) FROM playback_history WHERE user_id = $1",
            0,
        ),
        ("SELECT COUNT(*) FROM playlists WHERE owner_id = $1", 0),
        ("SELECT COUNT(*) FROM tracks WHERE owner_id = $1", 0),
        ("SELECT COUNT(*) FROM data_exports WHERE user_id = $1", 0),
    ] {
        assert_eq!(count(&w, sql, user.id).await, left, "{sql}");
    }
    let kept: Vec<(i64, Option<i64>, String)> = sqlx::query_as(
        "SELECT id, owner_id, artist_name FROM tracks WHERE artist_name = 'Anonymous artist' ORDER BY id",
    )
    .fetch_all(w.db())
    .await
    .unwrap();
    assert_eq!(
        kept,
        seeded
            .public_tracks
            .iter()
            .map(|id| (*id, None, "Anonymous artist".to_owned()))
            .collect::<Vec<_>>()
    );
    // The other user keeps everything of theirs, including the kept track in their playlist.
    assert_eq!(
        count(
            &w,
            "SELECT COUNT(*) FROM playlist_items WHERE playlist_id = $1",
            seeded.other_playlist
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &w,
            "SELECT COUNT(*) FROM playback_history WHERE user_id = $1",
            other.id
        )
        .await,
        3
    );
    assert_eq!(
        count(
            &w,
            "SELECT COUNT(*) FROM playback_history WHERE user_id = $1 AND track_id IS NULL",
            other.id
        )
        .await,
        1
    );
    let other_email: Option<String> = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(other.id)
        .fetch_one(w.db())
        .await
        .unwrap();
    assert_eq!(other_email.as_deref(), Some(other.email.as_str()));

    // Files.
    for f in &seeded.private_files {
        assert!(!f.exists(), "{} should be deleted", f.display());
    }
    for f in seeded.public_files.iter().chain(&seeded.other_files) {
        assert!(f.exists(), "{} should be kept", f.display());
    }
    assert!(!export_file.exists(), "the export ZIP is deleted");
    assert!(!user_outbox.exists(), "the user's e-mails are deleted");
    assert_eq!(files_in(&other_outbox), 1, "the other user's e-mail stays");

    // Redis.
    if let Some(c) = &client {
        assert_eq!(redis_exists(c, &user_keys).await, 0, "all 154 keys gone");
        assert_eq!(
            redis_exists(c, &other_keys).await,
            4,
            "the other user's keys intact"
        );
        assert_eq!(redis_exists(c, &global_keys).await, 3, "global keys intact");
        let r = &receipt.report.redis;
        assert_eq!((r.status, r.keys_deleted), (StepStatus::Done, 154));
        assert!(r.scan_pages >= 2, "several SCAN pages: {}", r.scan_pages);
        redis_del(c, &other_keys).await;
        redis_del(c, &global_keys).await;
    } else {
        assert_eq!(receipt.report.redis.reason.as_deref(), Some(REDIS_SKIPPED));
    }

    // OpenSearch: the right paths and bodies, one request each.
    let seen = os.requests().await;
    let paths: Vec<(&str, &str)> = seen
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("DELETE", format!("/users/_doc/{}", user.id).as_str()),
            ("POST", "/tracks/_delete_by_query"),
            ("POST", "/playlists/_delete_by_query"),
            ("POST", "/tracks/_update_by_query"),
        ]
    );
    assert_eq!(
        seen[1].body.as_ref().unwrap()["query"]["terms"]["_id"],
        ids(&seeded.private_tracks)
    );
    assert_eq!(
        seen[2].body.as_ref().unwrap()["query"]["terms"]["_id"],
        ids(&seeded.playlists)
    );
    let update = seen[3].body.as_ref().unwrap();
    assert_eq!(update["query"]["terms"]["_id"], ids(&seeded.public_tracks));
    assert_eq!(
        update["script"]["params"]["artist_name"],
        "Anonymous artist"
    );
    for r in &seen[1..] {
        assert!(
            r.query.contains("conflicts=proceed") && r.query.contains("refresh=true"),
            "{}",
            r.query
        );
    }
    let o = &receipt.report.opensearch;
    assert_eq!(o.status, StepStatus::Done);
    assert_eq!(
        (
            o.tracks_deleted.affected,
            o.playlists_deleted.affected,
            o.tracks_anonymised.affected
        ),
        (2, 2, 2)
    );

    // Nothing of the user's identity is left in any table.
    let after = find_everywhere(&w, &user.identity()).await;
    assert!(after.is_empty(), "personal data left behind: {after:#?}");
    // … while the other user's identity is still found (the scanner still sees).
    assert!(!find_everywhere(&w, &[&other.email]).await.is_empty());

    // Running it again, or the next day's pass, changes nothing.
    let again = perform_job(&w.engine, &HardDelete { user_id: user.id })
        .await
        .unwrap();
    assert!(matches!(again, Outcome::Skipped { .. }), "{again:?}");
    w.clock.advance(DAY);
    scheduler.tick().await.unwrap();
    drain(&w.engine).await;
    assert_eq!(enqueued::<HardDelete>(&w.engine).await.len(), 1);
    assert_eq!(os.requests().await.len(), 4);
}

async fn past_deadline(w: &World, user: &Person, keep: Option<bool>) {
    users::request_deletion(
        &w.engine,
        &w.settings.accounts,
        user.id,
        keep,
        &Actor::cli(),
    )
    .await
    .unwrap();
    w.clock.advance(31 * DAY);
}

async fn public_tracks_are_deleted_unless_kept_and_unset_stores_are_skipped(t: TestDb) {
    let w = world(&t, |_| {});
    let (user, other) = (Person::new("eve"), Person::new("fox"));
    insert_user(&w, &user).await;
    insert_user(&w, &other).await;
    let seeded = seed(&w, &user, &other).await;
    past_deadline(&w, &user, Some(false)).await;
    let out = perform_job(&w.engine, &HardDelete { user_id: user.id })
        .await
        .unwrap();
    assert_eq!(out, Outcome::Succeeded);

    let receipt = receipt(&w, user.id).await;
    let d = &receipt.report.database;
    assert_eq!(
        (
            d.private_tracks_deleted,
            d.public_tracks_deleted,
            d.public_tracks_anonymised
        ),
        (2, 2, 0)
    );
    assert_eq!(
        d.other_playlist_items_deleted, 1,
        "the other's playlist item of a deleted public track"
    );
    assert_eq!(d.other_plays_detached, 2);
    assert_eq!(
        d.media_files_deleted,
        (seeded.private_files.len() + seeded.public_files.len()) as u64
    );
    assert_eq!(
        count(
            &w,
            "SELECT COUNT(*) FROM tracks WHERE owner_id = $1 OR artist_name = 'Anonymous artist'",
            user.id
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &w,
            "SELECT COUNT(*) FROM playlist_items WHERE playlist_id = $1",
            seeded.other_playlist
        )
        .await,
        1
    );
    for f in seeded.private_files.iter().chain(&seeded.public_files) {
        assert!(!f.exists(), "{}", f.display());
    }
    for f in &seeded.other_files {
        assert!(f.exists());
    }
    // Unset stores: skipped, with the reason on the receipt.
    assert_eq!(receipt.report.redis.status, StepStatus::Skipped);
    assert_eq!(receipt.report.redis.reason.as_deref(), Some(REDIS_SKIPPED));
    assert_eq!(receipt.report.opensearch.status, StepStatus::Skipped);
    assert_eq!(
        receipt.report.opensearch.reason.as_deref(),
        Some(OPENSEARCH_SKIPPED)
    );
    assert!(receipt.redis_at.is_some() && receipt.finished_at.is_some());
    assert!(find_everywhere(&w, &user.identity()).await.is_empty());
}

async fn one_failing_index_is_retried_alone(t: TestDb) {
    let os = FakeOpenSearch::start().await;
    os.fail("POST", "/playlists/_delete_by_query", 500, 1).await;
    let redis = redis_url();
    let w = world(&t, |s| {
        s.erasure.opensearch_url = Some(os.url());
        s.erasure.redis_url = redis.clone();
        s.erasure.indices.playlists = "playlists".into();
    });
    let (user, other) = (Person::new("gus"), Person::new("hal"));
    insert_user(&w, &user).await;
    insert_user(&w, &other).await;
    seed(&w, &user, &other).await;
    let keys: Vec<String> = (0..10).map(|i| format!("user:{}:k{i}", user.id)).collect();
    let client = match &redis {
        Some(url) => {
            let c = redis_client(url).await;
            redis_set(&c, &keys).await;
            Some(c)
        }
        None => None,
    };
    past_deadline(&w, &user, Some(true)).await;
    w.engine
        .enqueue(HardDelete { user_id: user.id })
        .await
        .unwrap();

    let first = drain(&w.engine).await;
    assert_eq!((first.succeeded, first.retried), (0, 1), "{first:?}");
    let jobs = enqueued::<HardDelete>(&w.engine).await;
    assert_eq!(jobs[0].1, JobState::Retrying);
    let st = users::deletion_status(w.db(), user.id).await.unwrap();
    assert_eq!(st.status, UserStatus::Erased, "the database step is done");
    let r = st.receipt.unwrap();
    assert!(r.database_at.is_some() && r.redis_at.is_some());
    assert!(r.opensearch_at.is_none() && r.finished_at.is_none());
    let o = &r.report.opensearch;
    assert_eq!(o.status, StepStatus::Pending);
    assert_eq!(o.playlists_deleted.status, StepStatus::Pending);
    assert!(
        o.playlists_deleted
            .last_error
            .as_deref()
            .unwrap()
            .contains("500"),
        "{o:?}"
    );
    for part in [&o.user_document, &o.tracks_deleted, &o.tracks_anonymised] {
        assert_eq!(part.status, StepStatus::Done, "{part:?}");
    }
    // Every index was tried despite the failure.
    let per_path = |seen: &[gdpr_support::fake_opensearch::Seen], p: &str| {
        seen.iter().filter(|r| r.path == p).count()
    };
    let seen = os.requests().await;
    assert_eq!(seen.len(), 4);
    assert_eq!(per_path(&seen, "/playlists/_delete_by_query"), 1);

    // A key appearing now is not touched by the retry: the Redis step is done, not re-run.
    let late = vec![format!("user:{}:late", user.id)];
    if let Some(c) = &client {
        assert_eq!(redis_exists(c, &keys).await, 0);
        redis_set(c, &late).await;
    }

    w.clock.advance(Duration::from_secs(600));
    let second = drain(&w.engine).await;
    assert_eq!((second.succeeded, second.retried), (1, 0), "{second:?}");
    let seen = os.requests().await;
    assert_eq!(seen.len(), 5, "only the failed part is sent again");
    assert_eq!(per_path(&seen, "/playlists/_delete_by_query"), 2);
    assert_eq!(seen[4].path, "/playlists/_delete_by_query");
    let r = receipt(&w, user.id).await;
    assert!(r.finished_at.is_some());
    assert_eq!(
        r.report.opensearch.playlists_deleted.status,
        StepStatus::Done
    );
    assert_eq!(r.report.opensearch.playlists_deleted.last_error, None);
    if let Some(c) = &client {
        assert_eq!(redis_exists(c, &late).await, 1);
        redis_del(c, &late).await;
    }
}

async fn a_missing_user_document_and_empty_lists_need_no_request(t: TestDb) {
    let os = FakeOpenSearch::start().await;
    let w = world(&t, |s| s.erasure.opensearch_url = Some(os.url()));
    let user = Person::new("ivy");
    insert_user(&w, &user).await;
    os.fail("DELETE", &format!("/users/_doc/{}", user.id), 404, 1)
        .await;
    past_deadline(&w, &user, None).await;
    let out = perform_job(&w.engine, &HardDelete { user_id: user.id })
        .await
        .unwrap();
    assert_eq!(out, Outcome::Succeeded);
    let seen = os.requests().await;
    assert_eq!(
        seen.len(),
        1,
        "no tracks, no playlists: nothing but the user document"
    );
    assert_eq!(seen[0].method, "DELETE");
    let r = receipt(&w, user.id).await;
    let o = &r.report.opensearch;
    assert_eq!(o.status, StepStatus::Done);
    assert_eq!(o.user_document.note.as_deref(), Some("already gone (404)"));
    assert_eq!(o.tracks_deleted.note.as_deref(), Some("nothing to send"));
    assert_eq!(o.playlists_deleted.note.as_deref(), Some("nothing to send"));
    assert_eq!(o.tracks_anonymised.note.as_deref(), Some("nothing to send"));
}

async fn unreachable_redis_leaves_the_step_unfinished(t: TestDb) {
    let w = world(&t, |s| {
        s.erasure.redis_url = Some("redis://127.0.0.1:1".into())
    });
    let user = Person::new("jo");
    insert_user(&w, &user).await;
    past_deadline(&w, &user, None).await;
    let err = perform_job(&w.engine, &HardDelete { user_id: user.id })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, engine::JobError::Transient(m) if m.contains("Redis")),
        "{err:?}"
    );
    let r = receipt(&w, user.id).await;
    assert!(
        r.database_at.is_some(),
        "the database step is done and kept"
    );
    assert!(r.redis_at.is_none() && r.finished_at.is_none());
    assert_eq!(r.report.redis.status, StepStatus::Pending);
    assert!(r.report.redis.last_error.is_some());
    assert_eq!(
        r.report.opensearch.status,
        StepStatus::Skipped,
        "the other store was still handled"
    );
}

/// `GET /v1/deletions` among 20,000 users of whom 50 asked for deletion reads the partial
/// index `users_with_deletion` in id order: no scan of every user, no sort.
async fn listing_deletions_reads_the_partial_index(t: TestDb) {
    let values = "n, CASE WHEN n % 400 = 0 THEN 'deletion_requested' ELSE 'active' END, \
                  CASE WHEN n % 400 = 0 THEN n END, n, n";
    let fill = match t.backend {
        Backend::Postgres => format!(
            "INSERT INTO users (id, status, recovery_deadline, created_at, updated_at) \
             SELECT {values} FROM generate_series(1, 20000) AS n"
        ),
        Backend::Sqlite => format!(
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 20000) \
             INSERT INTO users (id, status, recovery_deadline, created_at, updated_at) \
             SELECT {values} FROM s"
        ),
    };
    sqlx::query(sqlx::AssertSqlSafe(fill))
        .execute(&t.db)
        .await
        .unwrap();
    sqlx::query("ANALYZE").execute(&t.db).await.unwrap();

    let sql = users::list_deletions_sql(t.backend, &[]).expect("a statement");
    let plan = query_plan(&t.db, t.backend, &sql, &[0, 51]).await;
    assert!(
        plan.contains("users_with_deletion"),
        "the listing must use the partial index:\n{plan}"
    );
    let lower = plan.to_lowercase();
    let full_scan = lower
        .lines()
        .any(|l| l.contains("seq scan on users") || l.trim_start().starts_with("scan u"));
    assert!(
        !full_scan && !lower.contains("temp b-tree") && !lower.contains("sort"),
        "no scan of users, no sort:\n{plan}"
    );
}

/// An order of `buyer` (1000 EUR cents), optionally paid by `pi_{tag}` / `ch_{tag}` and
/// fully refunded.
async fn insert_order(w: &World, buyer: i64, paid_and_refunded: Option<&str>) -> i64 {
    let now = w.now();
    let (pi, ch) = paid_and_refunded.map_or((None, None), |tag| {
        (Some(format!("pi_{tag}")), Some(format!("ch_{tag}")))
    });
    sqlx::query_scalar(
        "INSERT INTO orders (buyer_id, currency, amount_total, stripe_payment_intent_id, \
         stripe_charge_id, paid_at, refunded_at, created_at, updated_at) \
         VALUES ($1, 'eur', 1000, $2, $3, $4, $4, $5, $5) RETURNING id",
    )
    .bind(buyer)
    .bind(pi)
    .bind(ch)
    .bind(paid_and_refunded.map(|_| now))
    .bind(now)
    .fetch_one(w.db())
    .await
    .unwrap()
}

/// A Stripe event as the webhook receives it, its object carrying `person`'s e-mail, name
/// and address the way Stripe sends them.
fn stripe_event(id: &str, kind: &str, mut object: Value, person: &Person) -> StripeEvent {
    let address = json!({ "line1": format!("1 rue {}", person.username), "city": "Lyon" });
    let personal = json!({
        "receipt_email": person.email,
        "shipping": { "name": person.display_name, "address": address, "phone": "+33600000000" },
        "billing_details": { "email": person.email, "name": person.display_name, "address": address },
        "customer": { "id": "cus_1", "email": person.email, "name": person.display_name },
    });
    for (k, v) in personal.as_object().unwrap() {
        object[k] = v.clone();
    }
    StripeEvent::from_value(json!({
        "id": id, "object": "event", "type": kind, "livemode": false,
        "data": { "object": object },
    }))
    .unwrap()
}

async fn every_stripe_event_of_the_buyers_payments_is_erased_whatever_its_outcome(t: TestDb) {
    // Arrange: the user's unpaid order, the user's paid and fully refunded order, another
    // buyer's order; events that are refused or ignored, none of which records its payment
    // on the order.
    let w = world(&t, |_| {});
    let (user, other) = (Person::new("ivy"), Person::new("jon"));
    insert_user(&w, &user).await;
    insert_user(&w, &other).await;
    // The user sells too: their payout account is an accounting record the erasure keeps.
    let mut conn = w.db().acquire().await.unwrap();
    payments::orders::upsert_seller_account(&mut conn, user.id, "acct_ivy", w.now())
        .await
        .unwrap();
    drop(conn);
    let unpaid = insert_order(&w, user.id, None).await;
    let refunded = insert_order(&w, user.id, Some("refunded")).await;
    let others = insert_order(&w, other.id, None).await;
    let intent = |id: &str, order: i64, amount: i64| {
        json!({
            "id": id, "object": "payment_intent", "amount": amount, "amount_received": amount,
            "currency": "eur", "status": "succeeded", "latest_charge": id.replace("pi_", "ch_"),
            "metadata": { "order_id": order.to_string() },
        })
    };
    let events = [
        // Refused: the amount differs from the order's.
        stripe_event(
            "evt_short",
            "payment_intent.succeeded",
            intent("pi_short", unpaid, 999),
            &user,
        ),
        // Ignored: the refund of that payment, without metadata; no order recorded it.
        stripe_event(
            "evt_unlinked",
            "charge.refunded",
            json!({ "id": "ch_short", "object": "charge", "amount": 999, "amount_refunded": 999,
                    "refunded": true, "currency": "eur", "payment_intent": "pi_short" }),
            &user,
        ),
        // Ignored: a refund of it that did not succeed.
        stripe_event(
            "evt_pending",
            "refund.updated",
            json!({ "id": "re_short", "object": "refund", "amount": 999, "currency": "eur",
                    "status": "pending", "charge": "ch_short", "payment_intent": "pi_short" }),
            &user,
        ),
        // Ignored: a payment arriving after the order's full refund.
        stripe_event(
            "evt_late",
            "payment_intent.succeeded",
            intent("pi_refunded", refunded, 1000),
            &user,
        ),
        // The other buyer's refused payment: it stays.
        stripe_event(
            "evt_other",
            "payment_intent.succeeded",
            intent("pi_other", others, 5),
            &other,
        ),
    ];
    for event in &events {
        let outcome = payments::process_event(&w.engine, event, &Actor::webhook(&event.id))
            .await
            .unwrap();
        assert!(
            matches!(
                outcome,
                EventOutcome::Rejected { .. } | EventOutcome::Ignored { .. }
            ),
            "{}: {outcome:?}",
            event.id
        );
    }

    // The stored payloads never held the buyers' e-mail, name or address …
    let found = find_everywhere(
        &w,
        &[
            &user.email,
            &user.display_name,
            &user.username,
            &other.email,
        ],
    )
    .await;
    assert!(
        found.iter().all(|h| h.starts_with("users.")),
        "personal data stored with the events: {found:#?}"
    );
    // … but still what the engine reads.
    let stored: String =
        sqlx::query_scalar("SELECT payload FROM webhook_events WHERE id = 'evt_short'")
            .fetch_one(w.db())
            .await
            .unwrap();
    let stored = StripeEvent::from_json(&stored).unwrap();
    assert_eq!(stored.object["amount_received"], 999);
    assert_eq!(stored.object["metadata"]["order_id"], unpaid.to_string());
    assert_eq!(
        (stored.payment_intent_id(), stored.charge_id()),
        (Some("pi_short"), Some("ch_short"))
    );
    // Each event is linked to its order when the order is known.
    let links: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT id, order_id FROM webhook_events ORDER BY id")
            .fetch_all(w.db())
            .await
            .unwrap();
    assert_eq!(
        links,
        [
            ("evt_late".to_owned(), Some(refunded)),
            ("evt_other".to_owned(), Some(others)),
            ("evt_pending".to_owned(), None),
            ("evt_short".to_owned(), Some(unpaid)),
            ("evt_unlinked".to_owned(), None),
        ]
    );

    // Act
    past_deadline(&w, &user, None).await;
    let out = perform_job(&w.engine, &HardDelete { user_id: user.id })
        .await
        .unwrap();
    assert_eq!(out, Outcome::Succeeded);

    // Assert: the receipt counts exactly the payloads erased: the user's four events, the
    // unlinked ones found through the payment they are about; the other buyer's event stays.
    let receipt = receipt(&w, user.id).await;
    let erased: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM webhook_events WHERE payload = '{\"erased\":\"by hard_delete\"}' ORDER BY id",
    )
    .fetch_all(w.db())
    .await
    .unwrap();
    assert_eq!(
        erased,
        ["evt_late", "evt_pending", "evt_short", "evt_unlinked"]
    );
    assert_eq!(receipt.report.database.webhook_payloads_erased, 4);
    // The accounting rows stay, and the receipt says which and why.
    let kept = &receipt.report.kept;
    assert_eq!(
        (
            kept.orders,
            kept.order_items,
            kept.payment_refunds,
            kept.seller_transfers,
            kept.seller_accounts,
            kept.webhook_events
        ),
        (2, 0, 0, 0, 1, 4)
    );
    assert_eq!(kept.reason, jobs::hard_delete::receipt::KEPT_REASON);
    assert_eq!(
        count(
            &w,
            "SELECT COUNT(*) FROM orders WHERE buyer_id = $1",
            user.id
        )
        .await,
        2
    );
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_events")
        .fetch_one(w.db())
        .await
        .unwrap();
    assert_eq!(
        left, 5,
        "the rows stay, so a redelivery is still recognised"
    );
    let redelivered = payments::process_event(&w.engine, &events[0], &Actor::webhook("evt_short"))
        .await
        .unwrap();
    assert_eq!(redelivered, EventOutcome::Duplicate);
}

async fn an_smtp_refusal_quoting_the_address_is_scrubbed_from_job_texts(t: TestDb) {
    // Arrange: the "export ready" e-mail is refused by the mail server, which quotes the
    // recipient; another user's job quotes their own address.
    let (user, other) = (Person::new("kim"), Person::new("lou"));
    let sink = SmtpSink::start().await;
    sink.reply_to_data(&[&format!(
        "554 5.7.1 <{}>: Recipient address rejected",
        user.email
    )]);
    let w = world(&t, |s| s.mail.smtp_url = Some(sink.url()));
    insert_user(&w, &user).await;
    insert_user(&w, &other).await;
    exports::request_export(&w.engine, &w.settings.exports, user.id, &Actor::api_key(1))
        .await
        .unwrap();
    drain(&w.engine).await;
    let other_job: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (kind, args, status, max_attempts, run_at, created_at, finished_at, last_error) \
         VALUES ('send_email', '{}', 'failed', 1, 0, 0, 0, $1) RETURNING id",
    )
    .bind(format!("550 <{}> unknown", other.email))
    .fetch_one(w.db())
    .await
    .unwrap();
    assert_eq!(
        quoting(&w, &user.email).await,
        (1, 1),
        "the refusal quotes the address"
    );

    // Act
    past_deadline(&w, &user, None).await;
    let out = perform_job(&w.engine, &HardDelete { user_id: user.id })
        .await
        .unwrap();
    assert_eq!(out, Outcome::Succeeded);

    // Assert: the address is gone, the rest of the error stays; the other user's stays.
    assert_eq!(quoting(&w, &user.email).await, (0, 0));
    let errors: Vec<String> = sqlx::query_scalar(
        "SELECT error FROM job_attempts WHERE error LIKE '%Recipient address rejected%'",
    )
    .fetch_all(w.db())
    .await
    .unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("554") && errors[0].contains("<[erased]>"),
        "{errors:?}"
    );
    let d = receipt(&w, user.id).await.report.database;
    assert_eq!(
        (d.job_texts_scrubbed, d.job_attempt_errors_scrubbed),
        (1, 1)
    );
    let kept: Option<String> = sqlx::query_scalar("SELECT last_error FROM jobs WHERE id = $1")
        .bind(other_job)
        .fetch_one(w.db())
        .await
        .unwrap();
    assert!(kept.unwrap().contains(&other.email));
    assert!(find_everywhere(&w, &user.identity()).await.is_empty());
}

/// (jobs, job attempts) whose texts contain `email`.
async fn quoting(w: &World, email: &str) -> (i64, i64) {
    let pattern = format!("%{email}%");
    let jobs: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE last_error LIKE $1 OR args LIKE $1 OR note LIKE $1",
    )
    .bind(&pattern)
    .fetch_one(w.db())
    .await
    .unwrap();
    let attempts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_attempts WHERE error LIKE $1")
        .bind(&pattern)
        .fetch_one(w.db())
        .await
        .unwrap();
    (jobs, attempts)
}

/// `hard_delete` owns no status of its own to fail: an unfinished receipt is what says the
/// erasure is owed. So when its job ends without finishing (an admin cancelled it, its
/// attempts ran out while Redis was away), no discard hook is needed: the next daily scan
/// enqueues the erasure again and it resumes from the receipt.
async fn an_erasure_whose_job_ended_unfinished_is_enqueued_again_by_the_next_scan(t: TestDb) {
    let w = world(&t, |s| {
        s.erasure.redis_url = Some("redis://127.0.0.1:1".into())
    });
    let user = Person::new("kai");
    insert_user(&w, &user).await;
    past_deadline(&w, &user, None).await;
    perform_job(&w.engine, &HardDeleteScan {}).await.unwrap();
    let jobs = enqueued::<HardDelete>(&w.engine).await;
    assert_eq!(jobs.len(), 1);
    let first = jobs[0].0;
    // Its attempt erases the database and stops at Redis.
    drain(&w.engine).await;
    let r = receipt(&w, user.id).await;
    assert!(r.database_at.is_some() && r.finished_at.is_none());
    // The job ends without its handler finishing.
    w.engine.cancel(first, &Actor::cli()).await.unwrap();
    // The next scan owes the user the rest of the erasure.
    w.clock.advance(DAY);
    perform_job(&w.engine, &HardDeleteScan {}).await.unwrap();
    let again: Vec<_> = enqueued::<HardDelete>(&w.engine)
        .await
        .into_iter()
        .filter(|(id, state, args)| {
            *id != first && *state == JobState::Pending && args.user_id == user.id
        })
        .collect();
    assert_eq!(again.len(), 1, "the erasure is enqueued again");

    // The new job has no steps of its own: it resumes from the receipt. Redis is fixed (here,
    // unset) in the process that runs it.
    let w2 = world(&t, |_| {});
    w2.clock
        .set(chrono::DateTime::from_timestamp_millis(w.now()).unwrap());
    let report = drain(&w2.engine).await;
    assert_eq!((report.succeeded, report.failed), (1, 0), "{report:?}");
    assert_eq!(
        step_names(&w, again[0].0).await,
        ["database@1", "files@1", "redis@1", "opensearch@1"]
    );
    assert_eq!(
        erasures(&w, user.id).await,
        1,
        "the database step is not run again"
    );
    let r = receipt(&w, user.id).await;
    assert!(r.finished_at.is_some());
    assert_eq!(r.job_id, Some(again[0].0));
    assert_eq!(
        r.report.database.users_anonymised, 1,
        "the first job's counts stay"
    );
    assert_eq!(r.report.redis.reason.as_deref(), Some(REDIS_SKIPPED));
}

/// `user` (and `other`, whose data must survive) with seeded data, past the recovery
/// deadline, and the `HardDelete` job of `user` enqueued: its seeded data and job id.
async fn erasure_due(w: &World, user: &Person, other: &Person) -> (Seeded, i64) {
    insert_user(w, user).await;
    insert_user(w, other).await;
    let seeded = seed(w, user, other).await;
    past_deadline(w, user, Some(true)).await;
    let job = w
        .engine
        .enqueue(HardDelete { user_id: user.id })
        .await
        .unwrap()
        .id();
    (seeded, job)
}

/// The erasure receipt of `user_id` (which must have one).
async fn receipt(w: &World, user_id: i64) -> Receipt {
    users::deletion_status(w.db(), user_id)
        .await
        .unwrap()
        .receipt
        .expect("a receipt")
}

/// The steps the job `id` finished, in order, each as `name@attempt` (the attempt that
/// finished it).
async fn step_names(w: &World, id: i64) -> Vec<String> {
    engine::steps::list(w.db(), id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| format!("{}@{}", s.name, s.attempt))
        .collect()
}

/// How many times the account went `deletion_requested → erased`.
async fn erasures(w: &World, user_id: i64) -> usize {
    engine::state_machine::history(
        &mut w.db().acquire().await.unwrap(),
        "user",
        &user_id.to_string(),
    )
    .await
    .unwrap()
    .iter()
    .filter(|a| a.to_status == "erased")
    .count()
}

/// Redis down for the first attempt: the database and files steps finish and are kept, and
/// OpenSearch is still handled; the retry (Redis fixed) runs only the `redis` step and the
/// `opensearch` step, which finds its work done and sends nothing again.
async fn a_failed_redis_step_is_retried_without_running_the_finished_steps_again(t: TestDb) {
    let os = FakeOpenSearch::start().await;
    let w = world(&t, |s| {
        s.erasure.redis_url = Some("redis://127.0.0.1:1".into());
        s.erasure.opensearch_url = Some(os.url());
    });
    let user = Person::new("lin");
    let (seeded, job) = erasure_due(&w, &user, &Person::new("mo")).await;

    let first = drain(&w.engine).await;
    assert_eq!((first.succeeded, first.retried), (0, 1), "{first:?}");
    assert_eq!(
        step_names(&w, job).await,
        ["database@1", "files@1"],
        "the finished steps are stored; the failed one is not"
    );
    assert_eq!(
        os.requests().await.len(),
        4,
        "OpenSearch was handled despite Redis"
    );
    let r = receipt(&w, user.id).await;
    assert!(r.database_at.is_some() && r.opensearch_at.is_some());
    assert!(r.redis_at.is_none() && r.finished_at.is_none());
    assert!(r.report.redis.last_error.is_some());
    for f in &seeded.private_files {
        assert!(!f.exists(), "{} should be deleted", f.display());
    }

    // The retry, in a process where Redis is fixed (here, unset).
    let w2 = world(&t, |s| s.erasure.opensearch_url = Some(os.url()));
    w2.clock
        .set(chrono::DateTime::from_timestamp_millis(w.now()).unwrap());
    w2.clock.advance(Duration::from_secs(600));
    let second = drain(&w2.engine).await;
    assert_eq!((second.succeeded, second.failed), (1, 0), "{second:?}");
    assert_eq!(
        step_names(&w, job).await,
        ["database@1", "files@1", "redis@2", "opensearch@2"]
    );
    assert_eq!(os.requests().await.len(), 4, "nothing sent again");
    assert_eq!(erasures(&w, user.id).await, 1);
    let r = receipt(&w, user.id).await;
    assert!(r.finished_at.is_some());
    let d = &r.report.database;
    assert_eq!(
        (d.private_tracks_deleted, d.public_tracks_anonymised),
        (2, 2)
    );
    assert_eq!(d.media_files_deleted, seeded.private_files.len() as u64);
    assert_eq!(r.report.redis.reason.as_deref(), Some(REDIS_SKIPPED));
    assert_eq!(r.report.opensearch.status, StepStatus::Done);
}

/// The receipt is closed from the steps' stored results, not from what the steps wrote on
/// it as they went: rewrite two stored results between the attempts, and the closed
/// receipt says what they say.
async fn the_closed_receipt_is_built_from_the_stored_step_results(t: TestDb) {
    let os = FakeOpenSearch::start().await;
    os.fail("POST", "/playlists/_delete_by_query", 500, 1).await;
    let w = world(&t, |s| s.erasure.opensearch_url = Some(os.url()));
    let user = Person::new("nia");
    let (_, job) = erasure_due(&w, &user, &Person::new("oz")).await;
    let first = drain(&w.engine).await;
    assert_eq!((first.succeeded, first.retried), (0, 1), "{first:?}");
    assert_eq!(
        step_names(&w, job).await,
        ["database@1", "files@1", "redis@1"]
    );

    for (step, from, to) in [
        ("redis", REDIS_SKIPPED, "skipped: as the stored step says"),
        (
            "database",
            r#""messages_deleted":5,"#,
            r#""messages_deleted":55,"#,
        ),
    ] {
        let changed = sqlx::query(
            "UPDATE job_steps SET result = REPLACE(result, $1, $2) \
             WHERE job_id = $3 AND name = $4 AND result LIKE $5",
        )
        .bind(from)
        .bind(to)
        .bind(job)
        .bind(step)
        .bind(format!("%{from}%"))
        .execute(w.db())
        .await
        .unwrap()
        .rows_affected();
        assert_eq!(changed, 1, "the stored result of {step}");
    }
    let before = receipt(&w, user.id).await;
    assert_eq!(before.report.redis.reason.as_deref(), Some(REDIS_SKIPPED));
    assert_eq!(before.report.database.messages_deleted, 5);

    w.clock.advance(Duration::from_secs(600));
    let second = drain(&w.engine).await;
    assert_eq!((second.succeeded, second.failed), (1, 0), "{second:?}");
    let r = receipt(&w, user.id).await;
    assert!(r.finished_at.is_some());
    assert_eq!(
        r.report.redis.reason.as_deref(),
        Some("skipped: as the stored step says")
    );
    assert_eq!(r.report.database.messages_deleted, 55);
    assert_eq!(
        (r.database_at, r.redis_at),
        (before.database_at, before.redis_at),
        "the steps' times"
    );
    assert_eq!(r.report.opensearch.status, StepStatus::Done);
}
