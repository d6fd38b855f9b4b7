//! GDPR data exports over HTTP, through the real router on both backends: request → job →
//! list → the link of the e-mail (received by a real SMTP server, or the `.eml` of the
//! outbox) → download → unzip; the daily limit under parallel requests; tampered and
//! expired links; unknown users; the body streamed from disk with its length.

use std::io::Read;
use std::time::Duration;

use api::auth::Scope;
use api::auth::rate_limit::Limiter;
use engine::testing::{TestDb, drain};
use engine::{Clock, backend_tests};
use jobs::JobsConfig;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::gdpr_support::smtp_sink::SmtpSink;
use crate::gdpr_support::{self, Person, Seeded, World, decode_quoted_printable};
use crate::helpers::{Answer, GENEROUS, TestApp, get, post};

backend_tests!(
    schema = jobs::schema::migrator;
    an_export_is_requested_listed_mailed_downloaded_and_complete,
    the_daily_limit_holds_under_ten_parallel_requests,
    tampered_links_are_403_and_expired_ones_410,
    unknown_users_are_404,
    the_download_streams_the_file_from_disk_with_its_length,
);

/// The test app on a manual clock (2026-05-01 12:00 UTC), its job settings changed by
/// `configure`.
pub(crate) fn gdpr_app(db: TestDb, configure: impl FnOnce(&mut JobsConfig)) -> TestApp {
    TestApp::build(
        db,
        Limiter::memory(GENEROUS),
        Clock::manual(gdpr_support::start_time()),
        configure,
    )
}

/// The GDPR test kit's view of `app` (same engine, clock, settings and media root).
pub(crate) fn world_of(app: &TestApp) -> World {
    World {
        engine: app.engine.clone(),
        clock: app.engine.clock().clone(),
        settings: app.jobs.gdpr.clone(),
        backend: app.db.backend,
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

/// A user with personal data everywhere, and another user they talk to.
pub(crate) async fn seeded_user(w: &World, tag: &str) -> (Person, Person, Seeded) {
    let user = Person::new(tag);
    let other = Person::new("other");
    gdpr_support::insert_user(w, &user).await;
    gdpr_support::insert_user(w, &other).await;
    let seeded = gdpr_support::seed(w, &user, &other).await;
    (user, other, seeded)
}

/// The first `http://…` link of a decoded message.
fn link_in(text: &str) -> String {
    let start = text.find("http://").expect("a link in the message");
    text[start..]
        .split_whitespace()
        .next()
        .expect("link")
        .to_owned()
}

/// The e-mail's link as a path for the test client: the base URL must be
/// `EXPORT_LINK_BASE_URL`, and the rest exactly `/{id}/download?expires={ms}&token={hex}`.
fn link_path(app: &TestApp, link: &str, export_id: i64) -> String {
    let base = &app.jobs.gdpr.exports.link_base_url;
    let rest = link
        .strip_prefix(base.as_str())
        .unwrap_or_else(|| panic!("{link} does not start with EXPORT_LINK_BASE_URL {base}"));
    let (path, query) = rest.split_once('?').expect("a query");
    assert_eq!(path, format!("/{export_id}/download"), "{link}");
    let names: Vec<&str> = query
        .split('&')
        .map(|p| p.split_once('=').expect("name=value").0)
        .collect();
    assert_eq!(names, ["expires", "token"], "{link}");
    // The base's path part is the route's prefix.
    let origin_end = base
        .match_indices('/')
        .nth(2)
        .map_or(base.len(), |(i, _)| i);
    let full = format!("{}{rest}", &base[origin_end..]);
    assert!(full.starts_with("/v1/exports/"), "{full}");
    full
}

/// The link of the only `.eml` in user `user_id`'s directory of `MAIL_OUTBOX_DIR`, and
/// its recipient line.
fn outbox_link(app: &TestApp, user_id: i64) -> (String, String) {
    let dir = &jobs::send_email::outbox_dir_of(&app.jobs.gdpr.mail.outbox_dir, user_id);
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("outbox {}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let raw = std::fs::read_to_string(&files[0]).expect("read .eml");
    let (headers, body) = raw.split_once("\r\n\r\n").expect("headers and body");
    let to = headers
        .lines()
        .find(|l| l.starts_with("To: "))
        .expect("a To header")
        .to_owned();
    (link_in(&decode_quoted_printable(body)), to)
}

/// POST an export for `user_id`, run the jobs, and return the export id.
async fn ready_export(app: &TestApp, key: &str, user_id: i64) -> i64 {
    let accepted = post(
        app,
        &format!("/v1/users/{user_id}/exports"),
        Some(key),
        None,
    )
    .await;
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    let report = drain(&app.engine).await;
    assert_eq!(
        (report.succeeded, report.failed, report.retried),
        (1, 0, 0),
        "data_export: the ZIP, then the e-mail: {report:?}"
    );
    accepted.body["export_id"].as_i64().expect("export_id")
}

/// The download's body as bytes.
async fn download(app: &TestApp, path: &str) -> (Answer, Vec<u8>) {
    let resp = app.client.get(path).send().await.0;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().into_vec().await.expect("body");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    (
        Answer {
            status,
            headers,
            body,
            text,
        },
        bytes,
    )
}

fn ndjson(zip: &mut zip::ZipArchive<std::io::Cursor<Vec<u8>>>, name: &str) -> Vec<Value> {
    let mut text = String::new();
    zip.by_name(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .read_to_string(&mut text)
        .expect("read");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}: {l}")))
        .collect()
}

fn json_file(zip: &mut zip::ZipArchive<std::io::Cursor<Vec<u8>>>, name: &str) -> Value {
    let mut text = String::new();
    zip.by_name(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .read_to_string(&mut text)
        .expect("read");
    serde_json::from_str(&text).expect("json")
}

async fn an_export_is_requested_listed_mailed_downloaded_and_complete(db: TestDb) {
    // Arrange: a real SMTP server receives the mail; links point at this API.
    let smtp = SmtpSink::start().await;
    let app = gdpr_app(db, |c| {
        c.gdpr.mail.smtp_url = Some(smtp.url());
        c.gdpr.exports.link_base_url = "http://veza.test/v1/exports".into();
    });
    let w = world_of(&app);
    let (user, _other, seeded) = seeded_user(&w, "alice").await;
    let write = app.key(Scope::Write).await;
    let read = app.key(Scope::Read).await;
    let path = format!("/v1/users/{}/exports", user.id);

    // Act: request.
    let accepted = post(&app, &path, Some(&write), None).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    let export_id = accepted.body["export_id"].as_i64().expect("export_id");
    let job_id = accepted.body["job_id"].as_i64().expect("job_id");
    assert_eq!(accepted.body["remaining_today"], 2);
    let job = get(&app, &format!("/v1/jobs/{job_id}"), Some(&read)).await;
    assert_eq!(job.body["kind"], "data_export", "{}", job.text);
    let pending = get(&app, &path, Some(&read)).await;
    assert_eq!(pending.status, 200, "{}", pending.text);
    assert_eq!(pending.body["exports"][0]["status"], "pending");
    assert_eq!(pending.body["exports"][0]["id"], export_id);

    // The job writes the ZIP, then sends the e-mail over SMTP.
    let report = drain(&app.engine).await;
    assert_eq!(
        (report.succeeded, report.failed, report.retried),
        (1, 0, 0),
        "{report:?}"
    );

    // Assert: listed ready with size, checksum, progress and expiries.
    let listed = get(&app, &path, Some(&read)).await;
    let e = &listed.body["exports"][0];
    assert_eq!(e["status"], "ready", "{}", listed.text);
    let size = e["size_bytes"].as_i64().expect("size");
    let sha = e["sha256"].as_str().expect("sha256").to_owned();
    assert!(size > 0);
    assert_eq!(sha.len(), 64);
    let now = app.engine.clock().now_ms();
    let week = 7 * 24 * 3600 * 1000;
    assert_eq!(e["link_expires_at"], now + week, "{}", listed.text);
    assert_eq!(e["expires_at"], now + week);
    assert_eq!(e["progress"]["percent"], 100.0);
    assert_eq!(e["progress"]["rows_done"], e["progress"]["rows_total"]);

    // The e-mail reached the user, with a link to this API's download route.
    let mails = smtp.received();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].rcpt_to, std::slice::from_ref(&user.email));
    let (_, body) = mails[0].data.split_once("\r\n\r\n").expect("body");
    let link = link_in(&decode_quoted_printable(body));
    let download_path = link_path(&app, &link, export_id);

    // The link downloads the file without an API key.
    let (answer, bytes) = download(&app, &download_path).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("content-type"), Some("application/zip"));
    assert_eq!(
        answer.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(
        answer.header("content-disposition"),
        Some(format!("attachment; filename=\"veza-data-export-{export_id}.zip\"").as_str())
    );
    assert_eq!(answer.header("x-checksum-sha256"), Some(sha.as_str()));
    assert_eq!(bytes.len() as i64, size);
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);

    // Every category and the manifest.
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a ZIP");
    let mut names: Vec<String> = zip
        .file_names()
        .map(|n| n.expect("a file name").into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = jobs::data_export::FILES.map(str::to_owned).to_vec();
    expected.sort();
    assert_eq!(names, expected);
    let profile = json_file(&mut zip, "profile.json");
    assert_eq!(profile["account"]["email"], user.email.as_str());
    assert_eq!(profile["account"]["username"], user.username.as_str());
    assert_eq!(
        profile["account"]["display_name"],
        user.display_name.as_str()
    );
    assert_eq!(profile["profile"]["location"], "Lyon");
    let tracks = ndjson(&mut zip, "tracks.ndjson");
    let mut track_ids: Vec<i64> = tracks.iter().map(|t| t["id"].as_i64().unwrap()).collect();
    track_ids.sort_unstable();
    let mut own: Vec<i64> = seeded
        .private_tracks
        .iter()
        .chain(&seeded.public_tracks)
        .copied()
        .collect();
    own.sort_unstable();
    assert_eq!(track_ids, own);
    let playlists = ndjson(&mut zip, "playlists.ndjson");
    assert_eq!(playlists.len(), seeded.playlists.len());
    let items: usize = playlists
        .iter()
        .map(|p| p["items"].as_array().expect("items").len())
        .sum();
    assert_eq!(items as i64, seeded.playlist_items);
    let messages = ndjson(&mut zip, "messages.ndjson");
    assert_eq!(
        messages.len() as i64,
        seeded.messages_sent + seeded.messages_received
    );
    assert_eq!(
        messages.iter().filter(|m| m["direction"] == "sent").count() as i64,
        seeded.messages_sent
    );
    let plays = ndjson(&mut zip, "playback_history.ndjson");
    assert_eq!(plays.len() as i64, seeded.plays);
    let manifest = json_file(&mut zip, "manifest.json");
    assert_eq!(
        manifest["schema_version"],
        jobs::data_export::SCHEMA_VERSION
    );
    assert_eq!(manifest["export_id"], export_id);
    assert_eq!(manifest["user_id"], user.id);
    assert_eq!(manifest["generated_at"], now);
    assert_eq!(manifest["counts"]["tracks"], tracks.len());
    assert_eq!(manifest["counts"]["playlists"], playlists.len());
    assert_eq!(manifest["counts"]["playlist_items"], items);
    assert_eq!(manifest["counts"]["messages"], messages.len());
    assert_eq!(manifest["counts"]["playback_history"], plays.len());
}

async fn the_daily_limit_holds_under_ten_parallel_requests(db: TestDb) {
    let app = gdpr_app(db, |_| {});
    let w = world_of(&app);
    let user = Person::new("bob");
    gdpr_support::insert_user(&w, &user).await;
    let write = app.key(Scope::Write).await;
    let path = format!("/v1/users/{}/exports", user.id);
    let limit = app.jobs.gdpr.exports.daily_limit;
    assert_eq!(limit, 3, "EXPORT_DAILY_LIMIT's default");

    // Act: ten requests at once.
    let answers =
        futures::future::join_all((0..10).map(|_| post(&app, &path, Some(&write), None))).await;

    // Assert: exactly the limit accepted, the rest refused with Retry-After.
    let accepted: Vec<&Answer> = answers.iter().filter(|a| a.status == 202).collect();
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status != 202).collect();
    assert_eq!(accepted.len(), limit as usize, "{:?}", statuses(&answers));
    for a in &refused {
        a.assert_problem(429, "quota_exceeded");
        // Every request is at the same (manual) instant: the window frees up in 24 h.
        assert_eq!(a.header("retry-after"), Some("86400"), "{}", a.text);
    }
    let mut remaining: Vec<i64> = accepted
        .iter()
        .map(|a| a.body["remaining_today"].as_i64().unwrap())
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, [0, 1, 2]);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_exports WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(app.engine.db())
        .await
        .expect("count");
    assert_eq!(rows, i64::from(limit), "no row for a refused request");
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE kind = 'data_export'")
        .fetch_one(app.engine.db())
        .await
        .expect("count");
    assert_eq!(jobs, i64::from(limit), "no job for a refused request");

    // The window rolls: one second before 24 h still refused, after it accepted again.
    app.engine
        .clock()
        .advance(Duration::from_secs(24 * 3600 - 1));
    let early = post(&app, &path, Some(&write), None).await;
    early.assert_problem(429, "quota_exceeded");
    assert_eq!(early.header("retry-after"), Some("1"));
    app.engine.clock().advance(Duration::from_secs(1));
    assert_eq!(post(&app, &path, Some(&write), None).await.status, 202);
}

fn statuses(answers: &[Answer]) -> Vec<u16> {
    answers.iter().map(|a| a.status).collect()
}

/// `path` with its `name=` query value replaced by `value`.
fn with_param(path: &str, name: &str, value: &str) -> String {
    let (route, query) = path.split_once('?').expect("query");
    let query: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((n, _)) if n == name => format!("{n}={value}"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{route}?{}", query.join("&"))
}

fn param<'a>(path: &'a str, name: &str) -> &'a str {
    path.split_once('?')
        .expect("query")
        .1
        .split('&')
        .find_map(|p| p.strip_prefix(&format!("{name}=")))
        .expect("param")
}

async fn tampered_links_are_403_and_expired_ones_410(db: TestDb) {
    // Arrange: no SMTP_URL: the e-mail lands in the outbox as an .eml.
    let app = gdpr_app(db, |_| {});
    let w = world_of(&app);
    let (user, _, _) = seeded_user(&w, "carol").await;
    let write = app.key(Scope::Write).await;
    let export_id = ready_export(&app, &write, user.id).await;
    let (link, to) = outbox_link(&app, user.id);
    assert!(to.contains(&user.email), "{to}");
    let good = link_path(&app, &link, export_id);

    // A changed token character, a stretched expiry, another export's id: 403, no key
    // needed to be told so.
    let token = param(&good, "token").to_owned();
    let mut flipped = token.clone();
    let last = flipped.pop().expect("char");
    flipped.push(if last == '0' { '1' } else { '0' });
    let expires: i64 = param(&good, "expires").parse().expect("expires");
    let other_id = good.replace(
        &format!("/{export_id}/download"),
        &format!("/{}/download", export_id + 1),
    );
    for bad in [
        with_param(&good, "token", &flipped),
        with_param(&good, "token", "not-hex"),
        with_param(&good, "token", ""),
        with_param(&good, "expires", &(expires + 86_400_000).to_string()),
        other_id,
    ] {
        let (answer, _) = download(&app, &bad).await;
        answer.assert_problem(403, "invalid_link");
    }
    // Missing parameters are bad requests.
    let (answer, _) = download(&app, &format!("/v1/exports/{export_id}/download")).await;
    answer.assert_problem(400, "bad_request");

    // The real link works (with or without a key: the token is the proof)...
    let (answer, bytes) = download(&app, &good).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(!bytes.is_empty());

    // ...until it expires (EXPORT_LINK_TTL, 7 days): then 410, token still valid.
    app.engine
        .clock()
        .advance(Duration::from_secs(7 * 24 * 3600 - 1));
    assert_eq!(download(&app, &good).await.0.status, 200);
    app.engine.clock().advance(Duration::from_secs(1));
    let (answer, _) = download(&app, &good).await;
    answer.assert_problem(410, "gone");
    // Tampering still says 403 after the expiry (the token is checked first).
    let (answer, _) = download(&app, &with_param(&good, "token", &flipped)).await;
    answer.assert_problem(403, "invalid_link");
}

async fn unknown_users_are_404(db: TestDb) {
    let app = gdpr_app(db, |_| {});
    let write = app.key(Scope::Write).await;
    let read = app.key(Scope::Read).await;
    post(&app, "/v1/users/424242/exports", Some(&write), None)
        .await
        .assert_problem(404, "not_found");
    get(&app, "/v1/users/424242/exports", Some(&read))
        .await
        .assert_problem(404, "not_found");
    post(&app, "/v1/users/abc/exports", Some(&write), None)
        .await
        .assert_problem(400, "bad_request");
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_exports")
        .fetch_one(app.engine.db())
        .await
        .expect("count");
    assert_eq!(rows, 0);
    assert_eq!(
        drain(&app.engine).await,
        Default::default(),
        "nothing enqueued"
    );
}

async fn the_download_streams_the_file_from_disk_with_its_length(db: TestDb) {
    let app = gdpr_app(db, |_| {});
    let w = world_of(&app);
    let (user, _, _) = seeded_user(&w, "dave").await;
    let write = app.key(Scope::Write).await;
    let export_id = ready_export(&app, &write, user.id).await;
    let (link, _) = outbox_link(&app, user.id);
    let path = link_path(&app, &link, export_id);
    let file = jobs::exports::export_file_path(&app.jobs.gdpr.exports, export_id);
    let original = std::fs::read(&file).expect("the ZIP");

    // Act: the answer (status and headers) first, without reading its body.
    let resp = app.client.get(&path).send().await.0;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(original.len().to_string().as_str())
    );
    // Overwrite the file in place (same inode, same length) before the body is read: a
    // body read into memory by the route would still hold the old bytes; a stream from the
    // open file reads the new ones.
    let marker = vec![b'#'; original.len()];
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .expect("open for writing");
        f.write_all(&marker).expect("overwrite");
        f.sync_all().expect("sync");
    }
    let body = resp.into_body().into_vec().await.expect("body");

    // Assert: the bytes came from the disk as the body was read.
    assert_eq!(body.len(), original.len());
    assert_eq!(
        body, marker,
        "the body must be streamed from the file, not buffered"
    );
}
