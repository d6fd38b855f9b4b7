//! Data exports end to end on both backends: the ZIP's content and its e-mail (one job, two
//! steps), the daily limit under parallel requests, signed download links (tampering,
//! expiry), retention cleanup, a full disk, an erased account, and an e-mail sent again
//! replacing its outbox file.

mod gdpr_support;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use engine::testing::{TestDb, drain, enqueued, perform_job};
use engine::{Actor, Job, JobContext, JobState, Outcome, backend_tests};
use gdpr_support::*;
use jobs::data_export::{DataExport, FILES, SCHEMA_VERSION};
use jobs::export_cleanup::ExportCleanup;
use jobs::exports::{
    self, DownloadError, ExportRequestError, ExportStatus, download_token, verify_download,
};
use jobs::payments::orders::{self, NewOrderItem};
use jobs::payments::{self, EventOutcome, StripeEvent};
use jobs::send_email::{Delivery, MailContext, Mailer, SendEmail, Via};
use jobs::transfers::state::{self as transfer_state, NewTransfer};
use jobs::users;
use serde_json::{Value, json};

const DAY: Duration = Duration::from_secs(24 * 3600);

backend_tests!(
    schema = jobs::schema::migrator;
    export_zip_holds_every_category_and_the_manifest,
    daily_limit_holds_under_parallel_requests,
    download_links_refuse_tampering_and_expire,
    cleanup_deletes_files_past_retention,
    a_full_disk_removes_the_partial_file_and_the_export_retries,
    an_erased_account_is_not_exported,
    an_export_whose_job_ends_without_it_fails_with_the_reason,
    the_export_holds_purchases_payouts_and_stored_payment_events,
    an_email_sent_again_replaces_its_outbox_file,
);

/// Every entry of the ZIP at `path`, by name.
fn unzip(path: &Path) -> BTreeMap<String, String> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut out = BTreeMap::new();
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).unwrap();
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        out.insert(f.name().unwrap().into_owned(), text);
    }
    out
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn export_zip_holds_every_category_and_the_manifest(t: TestDb) {
    let w = world(&t, |s| s.exports.page_size = 2); // several pages per category
    let (user, other) = (Person::new("kim"), Person::new("lou"));
    insert_user(&w, &user).await;
    insert_user(&w, &other).await;
    let seeded = seed(&w, &user, &other).await;
    let actor = Actor::api_key(5);

    let req = exports::request_export(&w.engine, &w.settings.exports, user.id, &actor)
        .await
        .unwrap();
    assert_eq!(req.remaining_today, 2);
    let listed = exports::list_exports(w.db(), user.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, ExportStatus::Pending);
    let job =
        engine::testing::assert_enqueued::<DataExport>(&w.engine, |j| j.export_id == req.export_id)
            .await;
    assert_eq!(job, req.job_id);

    let report = drain(&w.engine).await;
    assert_eq!(
        (report.succeeded, report.failed, report.retried),
        (1, 0, 0),
        "one job: the ZIP, then the e-mail"
    );

    let info = &exports::list_exports(w.db(), user.id).await.unwrap()[0];
    assert_eq!(info.status, ExportStatus::Ready);
    let path = exports::export_file_path(&w.settings.exports, req.export_id);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(info.size_bytes, Some(bytes.len() as i64));
    use sha2::Digest;
    assert_eq!(
        info.sha256.as_deref(),
        Some(hex::encode(sha2::Sha256::digest(&bytes)).as_str())
    );
    let total = 1
        + 4
        + 2
        + seeded.playlist_items
        + seeded.messages_sent
        + seeded.messages_received
        + seeded.plays;
    assert_eq!(info.progress.rows_total, Some(total));
    assert_eq!(info.progress.rows_done, total);
    assert_eq!(info.progress.percent, Some(100.0));
    assert_eq!(info.ready_at, Some(w.now()));
    assert_eq!(info.link_expires_at, Some(w.now() + 7 * 86_400_000));
    assert_eq!(info.expires_at, Some(w.now() + 7 * 86_400_000));
    assert!(!exports::part_path_in(&w.settings.exports.dir, req.export_id).exists());

    let files = unzip(&path);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    let mut expected: Vec<&str> = FILES.to_vec();
    expected.sort();
    assert_eq!(names, expected);

    let profile: Value = serde_json::from_str(&files["profile.json"]).unwrap();
    assert_eq!(profile["account"]["email"], user.email.as_str());
    assert_eq!(profile["account"]["username"], user.username.as_str());
    assert_eq!(
        profile["account"]["display_name"],
        user.display_name.as_str()
    );
    assert_eq!(profile["profile"]["location"], "Lyon");
    assert_eq!(profile["profile"]["links"][0]["label"], "site");

    let tracks = ndjson(&files["tracks.ndjson"]);
    let track_ids: Vec<i64> = tracks.iter().map(|t| t["id"].as_i64().unwrap()).collect();
    let mut mine = [seeded.private_tracks.clone(), seeded.public_tracks.clone()].concat();
    mine.sort();
    assert_eq!(track_ids, mine, "the user's tracks only, every one");
    assert_eq!(tracks.iter().filter(|t| t["is_public"] == true).count(), 2);

    let playlists = ndjson(&files["playlists.ndjson"]);
    assert_eq!(playlists.len(), 2);
    for p in &playlists {
        assert!(p["name"].as_str().unwrap().contains(&user.username));
        let items = p["items"].as_array().unwrap();
        assert_eq!(items.len(), 3, "items streamed over pages of 2: {p}");
        assert_eq!(items[2]["track_id"], seeded.other_track);
    }

    let messages = ndjson(&files["messages.ndjson"]);
    let sent = messages.iter().filter(|m| m["direction"] == "sent").count() as i64;
    let received = messages
        .iter()
        .filter(|m| m["direction"] == "received")
        .count() as i64;
    assert_eq!(
        (sent, received),
        (seeded.messages_sent, seeded.messages_received)
    );
    assert!(
        messages[0]["body"]
            .as_str()
            .unwrap()
            .contains(&user.display_name)
    );

    let plays = ndjson(&files["playback_history.ndjson"]);
    assert_eq!(plays.len() as i64, seeded.plays);
    assert!(
        plays
            .iter()
            .all(|p| p["track_id"] == seeded.public_tracks[0])
    );

    let manifest: Value = serde_json::from_str(&files["manifest.json"]).unwrap();
    assert_eq!(manifest["schema_version"], SCHEMA_VERSION);
    assert_eq!(manifest["export_id"], req.export_id);
    assert_eq!(manifest["generated_at"], w.now());
    assert_eq!(manifest["generated_at_utc"], "2026-05-01T12:00:00+00:00");
    let counts = &manifest["counts"];
    assert_eq!(counts["profile"], 1);
    assert_eq!(counts["tracks"], 4);
    assert_eq!(counts["playlists"], 2);
    assert_eq!(counts["playlist_items"], seeded.playlist_items);
    assert_eq!(
        counts["messages"],
        seeded.messages_sent + seeded.messages_received
    );
    assert_eq!(counts["playback_history"], seeded.plays);
    for f in manifest["files"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        assert!(files.contains_key(name));
        if name.ends_with(".ndjson") {
            assert_eq!(
                f["rows"].as_u64().unwrap() as usize,
                files[name].lines().count(),
                "{name}"
            );
        }
    }
    // Nothing of the other user but what the user's own messages and playlists reference.
    let everything = files.values().cloned().collect::<String>();
    assert!(!everything.contains(&other.email));

    // The job's two steps: the ZIP (its result: what the export became), then the e-mail,
    // which, without SMTP_URL, is written to the outbox with a working link. No send_email
    // job any more.
    let steps = engine::steps::list(w.db(), req.job_id).await.unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["build_zip", "send_email"]);
    let zip_step: Value = serde_json::from_str(&steps[0].result).unwrap();
    assert_eq!(zip_step["zip"], "ready");
    assert_eq!(zip_step["rows"], total);
    assert_eq!(zip_step["sha256"], info.sha256.as_deref().unwrap());
    assert_eq!(zip_step["link_expires_at"], info.link_expires_at.unwrap());
    let mail_step: Delivery = serde_json::from_str(&steps[1].result).unwrap();
    assert_eq!(
        mail_step,
        Delivery::Sent {
            message_id: format!("<export-ready-{}@veza-jobs>", req.export_id),
            via: Via::Outbox
        }
    );
    assert!(
        !steps[1].result.contains(&user.email),
        "no address in the stored result"
    );
    assert!(enqueued::<SendEmail>(&w.engine).await.is_empty());
    let user_outbox = jobs::send_email::outbox_dir_of(&w.settings.mail.outbox_dir, user.id);
    let outbox: Vec<_> = std::fs::read_dir(&user_outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        outbox,
        [user_outbox.join(format!("export-ready-{}.eml", req.export_id))]
    );
    let eml = std::fs::read_to_string(&outbox[0]).unwrap();
    assert!(
        eml.contains(&format!("To: \"{}\" <{}>", user.display_name, user.email)),
        "{eml}"
    );
    let (_, body) = eml.split_once("\r\n\r\n").unwrap();
    let body = decode_quoted_printable(body);
    let expires = info.link_expires_at.unwrap();
    let link = exports::download_link(&w.settings.exports, req.export_id, expires);
    assert!(body.contains(&link), "{body}");

    // The job's args and the audit trail hold no personal data.
    let args: Vec<String> = sqlx::query_scalar("SELECT args FROM jobs")
        .fetch_all(w.db())
        .await
        .unwrap();
    assert!(args.iter().all(|a| !a.contains(&user.email)), "{args:?}");
    let audit = engine::state_machine::history(
        &mut w.db().acquire().await.unwrap(),
        "data_export",
        &req.export_id.to_string(),
    )
    .await
    .unwrap();
    let edges: Vec<_> = audit
        .iter()
        .map(|a| (a.from_status.as_str(), a.to_status.as_str()))
        .collect();
    assert_eq!(
        edges,
        [
            ("none", "pending"),
            ("pending", "running"),
            ("running", "ready")
        ]
    );
}

async fn daily_limit_holds_under_parallel_requests(t: TestDb) {
    let w = world(&t, |_| {});
    let user = Person::new("max");
    insert_user(&w, &user).await;
    let requests = (0..10).map(|_| {
        let engine = w.engine.clone();
        let settings = w.settings.exports.clone();
        let id = user.id;
        tokio::spawn(async move {
            exports::request_export(&engine, &settings, id, &Actor::api_key(1)).await
        })
    });
    let results: Vec<_> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 3, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        match r {
            Err(ExportRequestError::LimitReached {
                limit,
                retry_after,
                retry_at,
            }) => {
                assert_eq!(*limit, 3);
                assert_eq!(*retry_after, DAY, "all three were made at the same instant");
                assert_eq!(*retry_at, w.now() + 86_400_000);
            }
            other => panic!("expected LimitReached, got {other:?}"),
        }
    }
    let rows = count(
        &w,
        "SELECT COUNT(*) FROM data_exports WHERE user_id = $1",
        user.id,
    )
    .await;
    assert_eq!(rows, 3);
    assert_eq!(
        enqueued::<DataExport>(&w.engine).await.len(),
        3,
        "one job per accepted request"
    );

    // Rolling window: one millisecond before 24 h, still refused; at 24 h, accepted.
    w.clock.advance(DAY - Duration::from_millis(1));
    assert!(matches!(
        exports::request_export(&w.engine, &w.settings.exports, user.id, &Actor::api_key(1)).await,
        Err(ExportRequestError::LimitReached { retry_after, .. }) if retry_after == Duration::from_millis(1)
    ));
    w.clock.advance(Duration::from_millis(1));
    exports::request_export(&w.engine, &w.settings.exports, user.id, &Actor::api_key(1))
        .await
        .unwrap();
    assert!(matches!(
        exports::request_export(&w.engine, &w.settings.exports, 1, &Actor::api_key(1)).await,
        Err(ExportRequestError::UserNotFound(1))
    ));
}

/// A user with one ready export; returns (export id, link expiry).
async fn ready_export(w: &World, user: &Person) -> (i64, i64) {
    insert_user(w, user).await;
    let req = exports::request_export(&w.engine, &w.settings.exports, user.id, &Actor::api_key(1))
        .await
        .unwrap();
    drain(&w.engine).await;
    let info = exports::list_exports(w.db(), user.id).await.unwrap();
    assert_eq!(info[0].status, ExportStatus::Ready);
    (req.export_id, info[0].link_expires_at.unwrap())
}

async fn download_links_refuse_tampering_and_expire(t: TestDb) {
    let w = world(&t, |_| {});
    let user = Person::new("ned");
    let (id, expires) = ready_export(&w, &user).await;
    let s = &w.settings.exports;
    let token = download_token(&s.signing_key, id, expires);

    let ok = verify_download(w.db(), s, id, expires, &token, w.now())
        .await
        .unwrap();
    assert_eq!(ok.path, exports::export_file_path(s, id));
    assert_eq!(ok.user_id, user.id);
    assert_eq!(
        ok.size_bytes as u64,
        std::fs::metadata(&ok.path).unwrap().len()
    );

    let mut flipped = token.clone().into_bytes();
    flipped[0] = if flipped[0] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).unwrap();
    for (eid, exp, tok) in [
        (id, expires, flipped.as_str()),
        (id + 1, expires, token.as_str()),
        (id, expires + 86_400_000, token.as_str()),
        (id, expires, ""),
        (id, expires, "zz"),
    ] {
        assert!(
            matches!(
                verify_download(w.db(), s, eid, exp, tok, w.now()).await,
                Err(DownloadError::Forbidden)
            ),
            "{eid} {exp} {tok}"
        );
    }
    // Another key's token is forbidden too.
    let foreign = download_token(&exports::SigningKey::new(vec![1; 32]), id, expires);
    assert!(matches!(
        verify_download(w.db(), s, id, expires, &foreign, w.now()).await,
        Err(DownloadError::Forbidden)
    ));
    // Expired: gone (a forged later expiry stays forbidden, above).
    assert!(matches!(
        verify_download(w.db(), s, id, expires, &token, expires).await,
        Err(DownloadError::Gone)
    ));
    assert!(
        verify_download(w.db(), s, id, expires, &token, expires - 1)
            .await
            .is_ok()
    );
}

async fn cleanup_deletes_files_past_retention(t: TestDb) {
    let w = world(&t, |s| s.exports.retention = 2 * DAY);
    let user = Person::new("oli");
    let (id, expires) = ready_export(&w, &user).await;
    let s = w.settings.exports.clone();
    let token = download_token(&s.signing_key, id, expires);
    let file = exports::export_file_path(&s, id);
    // A stray partial file of a long-dead attempt, and a fresh one of a running export.
    let stray = exports::part_path_in(&s.dir, 999_999);
    std::fs::write(&stray, b"partial").unwrap();
    let old = std::time::SystemTime::now() - 2 * DAY;
    std::fs::File::options()
        .write(true)
        .open(&stray)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let fresh = exports::part_path_in(&s.dir, 999_998);
    std::fs::write(&fresh, b"partial").unwrap();

    // Before the retention: nothing expires.
    w.clock.advance(DAY);
    perform_job(&w.engine, &ExportCleanup {}).await.unwrap();
    assert!(file.exists());
    assert!(!stray.exists(), "an old stray part is removed");
    assert!(fresh.exists(), "a recent part is left alone");

    w.clock.advance(DAY);
    perform_job(&w.engine, &ExportCleanup {}).await.unwrap();
    assert!(!file.exists());
    let info = &exports::list_exports(w.db(), user.id).await.unwrap()[0];
    assert_eq!(info.status, ExportStatus::Expired);
    // The link has not expired (7 days) but the export has: gone.
    assert!(matches!(
        verify_download(w.db(), &s, id, expires, &token, w.now()).await,
        Err(DownloadError::Gone)
    ));
    // A second run changes nothing.
    perform_job(&w.engine, &ExportCleanup {}).await.unwrap();
    let expired = count(&w, "SELECT COUNT(*) FROM transitions WHERE entity = 'data_export' AND to_status = 'expired' AND entity_id = CAST($1 AS TEXT)", id).await;
    assert_eq!(expired, 1);
}

async fn a_full_disk_removes_the_partial_file_and_the_export_retries(t: TestDb) {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: /dev/full is missing on this system");
        return;
    }
    let w = world(&t, |_| {});
    let (user, other) = (Person::new("pia"), Person::new("quin"));
    insert_user(&w, &user).await;
    insert_user(&w, &other).await;
    seed(&w, &user, &other).await;
    let req = exports::request_export(&w.engine, &w.settings.exports, user.id, &Actor::api_key(1))
        .await
        .unwrap();
    // The partial file lands on a full disk: /dev/full answers ENOSPC to every write.
    let part = exports::part_path_in(&w.settings.exports.dir, req.export_id);
    std::fs::create_dir_all(&w.settings.exports.dir).unwrap();
    std::os::unix::fs::symlink("/dev/full", &part).unwrap();

    let first = drain(&w.engine).await;
    assert_eq!((first.succeeded, first.retried), (0, 1), "{first:?}");
    assert!(
        std::fs::symlink_metadata(&part).is_err(),
        "the partial file is removed"
    );
    assert!(!exports::export_file_path(&w.settings.exports, req.export_id).exists());
    let info = &exports::list_exports(w.db(), user.id).await.unwrap()[0];
    assert_eq!(info.status, ExportStatus::Running, "it will be retried");
    let error = info.error.as_deref().unwrap();
    assert!(error.contains("No space left on device"), "{error}");
    assert!(error.contains("will retry"), "{error}");
    let steps = engine::steps::list(w.db(), req.job_id).await.unwrap();
    assert!(steps.is_empty(), "no step finished: {steps:?}");
    assert!(
        !w.settings.mail.outbox_dir.exists(),
        "no e-mail for a failed export"
    );

    // Space is back: the retry completes.
    w.clock.advance(Duration::from_secs(120));
    let second = drain(&w.engine).await;
    assert_eq!((second.succeeded, second.retried), (1, 0), "{second:?}");
    let info = &exports::list_exports(w.db(), user.id).await.unwrap()[0];
    assert_eq!(info.status, ExportStatus::Ready);
    assert_eq!(info.error, None);
    unzip(&exports::export_file_path(
        &w.settings.exports,
        req.export_id,
    ));
}

async fn an_erased_account_is_not_exported(t: TestDb) {
    let w = world(&t, |_| {});
    let user = Person::new("ray");
    insert_user(&w, &user).await;
    let req = exports::request_export(&w.engine, &w.settings.exports, user.id, &Actor::api_key(1))
        .await
        .unwrap();
    // The account is erased before the export job runs.
    users::request_deletion(
        &w.engine,
        &w.settings.accounts,
        user.id,
        None,
        &Actor::cli(),
    )
    .await
    .unwrap();
    w.clock.advance(31 * DAY);
    let out = perform_job(
        &w.engine,
        &jobs::hard_delete::HardDelete { user_id: user.id },
    )
    .await
    .unwrap();
    assert_eq!(out, Outcome::Succeeded);
    let out = perform_job(
        &w.engine,
        &DataExport {
            export_id: req.export_id,
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(&out, Outcome::Skipped { reason } if reason.contains("no longer exists")),
        "{out:?}"
    );
    assert!(!exports::export_file_path(&w.settings.exports, req.export_id).exists());
    assert!(!exports::part_path_in(&w.settings.exports.dir, req.export_id).exists());
    assert!(matches!(
        exports::request_export(&w.engine, &w.settings.exports, user.id, &Actor::api_key(1)).await,
        Err(ExportRequestError::UserErased(_))
    ));
}

/// The engine ends the job without its handler ending the export: an admin cancels it, or
/// its worker dies on the last attempt while the export is `running`. The export fails with
/// the reason in the same transaction, instead of staying `pending` or `running` forever.
async fn an_export_whose_job_ends_without_it_fails_with_the_reason(t: TestDb) {
    let w = world(&t, |_| {});
    let user = Person::new("kim");
    insert_user(&w, &user).await;
    let actor = Actor::api_key(5);
    let status = |id: i64| {
        let db = w.db().clone();
        async move {
            let rows: (String, Option<String>) =
                sqlx::query_as("SELECT status, error FROM data_exports WHERE id = $1")
                    .bind(id)
                    .fetch_one(&db)
                    .await
                    .unwrap();
            rows
        }
    };

    let cancelled = exports::request_export(&w.engine, &w.settings.exports, user.id, &actor)
        .await
        .unwrap();
    w.engine
        .cancel(cancelled.job_id, &Actor::api_key(1))
        .await
        .unwrap();
    assert_eq!(
        status(cancelled.export_id).await,
        ("failed".into(), Some("export cancelled by an admin".into()))
    );

    let lost = exports::request_export(&w.engine, &w.settings.exports, user.id, &actor)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET max_attempts = 1 WHERE id = $1")
        .bind(lost.job_id)
        .execute(w.db())
        .await
        .unwrap();
    // A worker claims it, starts the export, and dies.
    let now = w.clock.now_ms();
    let mut conn = w.db().acquire().await.unwrap();
    engine::storage::exchange(
        &mut conn,
        "w-dead",
        DataExport::KIND,
        &[],
        1,
        now,
        engine::storage::LeaseNow::At(now),
        1_000,
    )
    .await
    .unwrap();
    jobs::exports::state::start(&mut conn, lost.export_id, 10, &Actor::job(lost.job_id), now)
        .await
        .unwrap();
    drop(conn);
    w.clock.advance(Duration::from_secs(5));
    assert_eq!(engine::worker::rescue_expired(&w.engine).await.unwrap(), 1);
    let (state, error) = status(lost.export_id).await;
    assert_eq!(state, "failed");
    assert!(
        error.unwrap().contains("lease expired: worker w-dead"),
        "the reason is the job's"
    );
    let job = engine::admin::get_job(w.db(), lost.job_id).await.unwrap();
    assert_eq!(job.job.status, JobState::Failed);
}

/// A Stripe event as the webhook receives it.
fn stripe_event(id: &str, kind: &str, object: Value) -> StripeEvent {
    StripeEvent::from_value(json!({
        "id": id, "object": "event", "type": kind, "livemode": false,
        "data": { "object": object },
    }))
    .unwrap()
}

async fn the_export_holds_purchases_payouts_and_stored_payment_events(t: TestDb) {
    // Arrange: the user bought an order of two items (its payment refused for its amount,
    // then partly refunded); the user sells an item of another buyer's order and has a
    // payout account; the other buyer has an order and an event of their own.
    let w = world(&t, |s| s.exports.page_size = 1); // several pages per category
    let (user, other) = (Person::new("max"), Person::new("ned"));
    insert_user(&w, &user).await;
    insert_user(&w, &other).await;
    let now = w.now();
    let mut conn = w.db().acquire().await.unwrap();
    let item = |seller_id: i64, amount: i64, product: &str| NewOrderItem {
        seller_id,
        amount,
        product_ref: Some(product.to_owned()),
    };
    let (bought, bought_items) = orders::create_order(
        &mut conn,
        Some(user.id),
        "eur",
        1000,
        &[
            item(other.id, 500, "track:1"),
            item(other.id, 400, "track:2"),
        ],
        now,
    )
    .await
    .unwrap();
    let (sold, sold_items) = orders::create_order(
        &mut conn,
        Some(other.id),
        "eur",
        700,
        &[item(user.id, 600, "track:3")],
        now,
    )
    .await
    .unwrap();
    orders::upsert_seller_account(&mut conn, user.id, "acct_max", now)
        .await
        .unwrap();
    let payout = transfer_state::create_pending(
        &mut conn,
        &NewTransfer {
            order_id: sold,
            order_item_id: sold_items[0],
            seller_id: user.id,
            amount: 600,
            currency: "eur".into(),
        },
        &Actor::cli(),
        now,
    )
    .await
    .unwrap()
    .unwrap();
    drop(conn);
    let events = [
        stripe_event(
            "evt_short",
            "payment_intent.succeeded",
            json!({ "id": "pi_max", "object": "payment_intent", "amount": 999,
                    "amount_received": 999, "currency": "eur", "receipt_email": user.email,
                    "metadata": { "order_id": bought.to_string() } }),
        ),
        stripe_event(
            "evt_part",
            "charge.refunded",
            json!({ "id": "ch_max", "object": "charge", "amount": 1000, "amount_refunded": 100,
                    "refunded": false, "currency": "eur", "payment_intent": "pi_max",
                    "metadata": { "order_id": bought.to_string() } }),
        ),
        stripe_event(
            "evt_ned",
            "payment_intent.succeeded",
            json!({ "id": "pi_ned", "object": "payment_intent", "amount": 1, "currency": "eur",
                    "metadata": { "order_id": sold.to_string() } }),
        ),
    ];
    for e in &events {
        let outcome = payments::process_event(&w.engine, e, &Actor::webhook(&e.id))
            .await
            .unwrap();
        assert!(
            !matches!(
                outcome,
                EventOutcome::Duplicate | EventOutcome::TransfersCreated { .. }
            ),
            "{outcome:?}"
        );
    }

    // Act
    let req = exports::request_export(&w.engine, &w.settings.exports, user.id, &Actor::api_key(5))
        .await
        .unwrap();
    drain(&w.engine).await;

    // Assert
    let files = unzip(&exports::export_file_path(
        &w.settings.exports,
        req.export_id,
    ));
    let purchases = ndjson(&files["purchases.ndjson"]);
    assert_eq!(
        purchases.len(),
        1,
        "the user's purchases only: {purchases:?}"
    );
    let p = &purchases[0];
    assert_eq!(
        (p["id"].as_i64(), p["amount_total"].as_i64()),
        (Some(bought), Some(1000))
    );
    let ids: Vec<i64> = p["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, bought_items);
    assert_eq!(p["items"][1]["product_ref"], "track:2");
    assert_eq!(p["refunds"][0]["amount"], 100);
    assert_eq!(p["refunds"][0]["kind"], "partial");

    let payouts = ndjson(&files["payouts.ndjson"]);
    assert_eq!(payouts.len(), 1, "{payouts:?}");
    assert_eq!(payouts[0]["id"], payout);
    assert_eq!(payouts[0]["order_item_id"], sold_items[0]);
    assert_eq!(
        (payouts[0]["amount"].as_i64(), payouts[0]["status"].as_str()),
        (Some(600), Some("pending"))
    );
    let profile: Value = serde_json::from_str(&files["profile.json"]).unwrap();
    assert_eq!(profile["payout_account"]["stripe_account_id"], "acct_max");

    let stored = ndjson(&files["payment_events.ndjson"]);
    let ids: Vec<&str> = stored.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["evt_part", "evt_short"]);
    assert_eq!(stored[1]["outcome"], "rejected");
    assert_eq!(stored[1]["order_id"], bought);
    assert_eq!(
        stored[1]["payload"]["data"]["object"]["amount_received"],
        999
    );
    assert!(
        !files["payment_events.ndjson"].contains(&user.email),
        "stored payloads hold no e-mail"
    );

    let manifest: Value = serde_json::from_str(&files["manifest.json"]).unwrap();
    assert_eq!(manifest["schema_version"], SCHEMA_VERSION);
    let c = &manifest["counts"];
    assert_eq!(
        (
            &c["purchases"],
            &c["purchase_items"],
            &c["payouts"],
            &c["payment_events"]
        ),
        (&json!(1), &json!(2), &json!(1), &json!(2))
    );
    let info = &exports::list_exports(w.db(), user.id).await.unwrap()[0];
    assert_eq!(info.status, ExportStatus::Ready);
    assert_eq!(
        info.progress.rows_total,
        Some(1 + 1 + 2 + 1 + 2),
        "profile, purchases, payouts, events"
    );
    assert_eq!(info.progress.rows_done, 1 + 1 + 2 + 1 + 2);
}

/// The e-mail step run again (its attempt cut off after the outbox file was written, before
/// its result was committed) writes the same file again, not a second message.
async fn an_email_sent_again_replaces_its_outbox_file(t: TestDb) {
    let w = world(&t, |_| {});
    let user = Person::new("uma");
    let (id, _) = ready_export(&w, &user).await;
    let dir = jobs::send_email::outbox_dir_of(&w.settings.mail.outbox_dir, user.id);
    let file = dir.join(format!("export-ready-{id}.eml"));
    let first = std::fs::read(&file).unwrap();

    w.clock.advance(Duration::from_secs(3600));
    let mail = MailContext {
        mailer: Mailer::new(&w.settings.mail),
        settings: w.settings.mail.clone(),
        exports: w.settings.exports.clone(),
    };
    let ctx = JobContext::unleased(w.engine.clone(), DataExport::KIND, 2, 5);
    let again = jobs::send_email::send(&ctx, &mail, &SendEmail::export_ready(user.id, id))
        .await
        .unwrap();
    assert!(
        matches!(
            &again,
            Delivery::Sent {
                via: Via::Outbox,
                ..
            }
        ),
        "{again:?}"
    );
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        files,
        std::slice::from_ref(&file),
        "one message, no temporary file left"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        first,
        "the same message, byte for byte, an hour later"
    );
}
