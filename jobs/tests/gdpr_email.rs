//! The export e-mail over real SMTP on both backends: an SMTP server on loopback
//! (mailin-embedded) receives it, and its link then passes the download check. It is the
//! last step of the `data_export` workflow (`build_zip`, then `send_email`): a 4xx reply is
//! retried with backoff, a 5xx reply fails the job at once (the export stays ready); a
//! failed or cut-off e-mail step is run again without building the ZIP again, and sends one
//! e-mail — or, when the attempt was cut off after the server took the message, the same
//! message again. A `send_email` job queued by the previous release still sends its e-mail.

mod gdpr_support;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use engine::testing::{TcpProxy, TestDb, drain, enqueued};
use engine::{Actor, JobState, backend_tests};
use gdpr_support::smtp_sink::{SmtpSink, Stall};
use gdpr_support::*;
use jobs::data_export::DataExport;
use jobs::exports::{self, ExportRequested, verify_download};
use jobs::send_email::SendEmail;

backend_tests!(
    schema = jobs::schema::migrator;
    export_email_arrives_over_smtp_with_a_working_link,
    a_4xx_reply_is_retried_with_backoff,
    a_5xx_reply_fails_at_once,
    a_failed_email_step_is_retried_alone_without_building_the_zip_again,
    an_attempt_cut_off_between_the_steps_sends_one_email,
    an_attempt_cut_off_after_the_server_took_the_email_sends_the_same_email_again,
    an_export_made_ready_by_the_previous_release_gets_one_email_from_its_send_email_job,
);

/// A user with a requested export whose e-mail goes to the world's mailer.
async fn export_with_mail(w: &World) -> (Person, ExportRequested) {
    let user = Person::new("sam");
    insert_user(w, &user).await;
    let req = exports::request_export(&w.engine, &w.settings.exports, user.id, &Actor::api_key(1))
        .await
        .unwrap();
    (user, req)
}

/// The fields of an export row that building the ZIP again, or a second `ready`, would
/// change (the tests advance the clock between attempts).
type ExportRow = (
    String,
    Option<i64>,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    i64,
    Option<String>,
);

async fn export_row(w: &World, id: i64) -> ExportRow {
    sqlx::query_as(
        "SELECT status, rows_total, rows_done, size_bytes, sha256, started_at, ready_at, \
         link_expires_at, updated_at, error FROM data_exports WHERE id = $1",
    )
    .bind(id)
    .fetch_one(w.db())
    .await
    .unwrap()
}

/// The ZIP file's identity: inode and modification time (a rebuild renames a new file
/// over it).
fn zip_identity(w: &World, id: i64) -> (u64, i64, i64) {
    let meta = std::fs::metadata(exports::export_file_path(&w.settings.exports, id)).unwrap();
    (meta.ino(), meta.mtime(), meta.mtime_nsec())
}

/// The job's finished steps as `(name, attempt)`.
async fn steps(w: &World, job_id: i64) -> Vec<(String, u32)> {
    engine::steps::list(w.db(), job_id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.attempt))
        .collect()
}

/// The job's state and last error.
async fn job_state(w: &World, job_id: i64) -> (JobState, String) {
    let job = engine::admin::get_job(w.db(), job_id).await.unwrap().job;
    (job.status, job.last_error.unwrap_or_default())
}

/// How many times export `id` became ready.
async fn ready_transitions(w: &World, id: i64) -> i64 {
    count(
        w,
        "SELECT COUNT(*) FROM transitions WHERE entity = 'data_export' \
         AND entity_id = CAST($1 AS TEXT) AND to_status = 'ready'",
        id,
    )
    .await
}

/// The message's header `name` (first occurrence), without the name.
fn header<'a>(data: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}: ");
    data.split("\r\n")
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name} header in {data}"))
}

/// The first `http://…` link in a message.
fn link_in(data: &str) -> String {
    let start = data.find("http://").expect("a link in the message");
    data[start..].split_whitespace().next().unwrap().to_owned()
}

/// `(id, expires, token)` from `…/{id}/download?expires=…&token=…`.
fn parse_link(link: &str) -> (i64, i64, String) {
    let (path, query) = link.split_once('?').unwrap();
    let id = path
        .trim_end_matches("/download")
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut expires = 0;
    let mut token = String::new();
    for pair in query.split('&') {
        match pair.split_once('=').unwrap() {
            ("expires", v) => expires = v.parse().unwrap(),
            ("token", v) => token = v.to_owned(),
            _ => {}
        }
    }
    (id, expires, token)
}

async fn export_email_arrives_over_smtp_with_a_working_link(t: TestDb) {
    let sink = SmtpSink::start().await;
    let w = world(&t, |s| {
        s.mail.smtp_url = Some(sink.url());
        s.mail.from = "Veza Exports <exports@veza.test>".parse().unwrap();
        s.exports.link_base_url = "http://veza.test/v1/exports".into();
    });
    let (user, req) = export_with_mail(&w).await;
    let export_id = req.export_id;
    let report = drain(&w.engine).await;
    assert_eq!(
        (report.succeeded, report.failed, report.retried),
        (1, 0, 0),
        "one data_export job: the ZIP, then the e-mail: {report:?}"
    );
    assert_eq!(
        steps(&w, req.job_id).await,
        [("build_zip".to_owned(), 1), ("send_email".to_owned(), 1)]
    );
    assert!(
        enqueued::<SendEmail>(&w.engine).await.is_empty(),
        "the export no longer enqueues a send_email job"
    );

    let got = sink.received();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.mail_from, "exports@veza.test");
    assert_eq!(m.rcpt_to, std::slice::from_ref(&user.email));
    assert!(
        m.data.contains("Subject: Your Veza data export is ready"),
        "{}",
        m.data
    );
    assert!(
        m.data
            .contains("From: \"Veza Exports\" <exports@veza.test>"),
        "{}",
        m.data
    );
    assert!(
        m.data
            .contains(&format!("Message-ID: <export-ready-{export_id}@veza-jobs>")),
        "{}",
        m.data
    );
    assert_eq!(
        header(&m.data, "Date"),
        "Fri, 01 May 2026 12:00:00 +0000",
        "dated when the export became ready, the same on every send"
    );
    assert!(
        m.data
            .contains("Content-Transfer-Encoding: quoted-printable"),
        "{}",
        m.data
    );

    // The link in the mail (decoded as a mail client would) opens the export.
    let (_, body) = m.data.split_once("\r\n\r\n").unwrap();
    let text = decode_quoted_printable(body);
    assert!(
        text.contains("Download it here until 2026-05-08 12:00 UTC"),
        "{text}"
    );
    let link = link_in(&text);
    assert!(
        link.starts_with(&format!(
            "http://veza.test/v1/exports/{export_id}/download?"
        )),
        "{link}"
    );
    let (id, expires, token) = parse_link(&link);
    assert_eq!(id, export_id);
    let ok = verify_download(w.db(), &w.settings.exports, id, expires, &token, w.now())
        .await
        .unwrap();
    assert_eq!(
        ok.path,
        exports::export_file_path(&w.settings.exports, export_id)
    );
    assert!(ok.path.exists());
    assert!(
        !w.settings.mail.outbox_dir.exists(),
        "with SMTP_URL nothing goes to the outbox"
    );
}

async fn a_4xx_reply_is_retried_with_backoff(t: TestDb) {
    let sink = SmtpSink::start().await;
    sink.reply_to_data(&["451 4.3.0 Mailbox busy, try later"]);
    let w = world(&t, |s| s.mail.smtp_url = Some(sink.url()));
    let (user, req) = export_with_mail(&w).await;
    let first = drain(&w.engine).await;
    assert_eq!(
        (first.succeeded, first.retried, first.failed),
        (0, 1, 0),
        "{first:?}"
    );
    let (state, error) = job_state(&w, req.job_id).await;
    assert_eq!(state, JobState::Retrying);
    assert!(error.contains("451"), "{error:?}");
    assert!(sink.received().is_empty());

    // Not before its backoff (30 s base).
    w.clock.advance(Duration::from_secs(20));
    assert_eq!(drain(&w.engine).await.succeeded, 0);
    w.clock.advance(Duration::from_secs(20));
    let second = drain(&w.engine).await;
    assert_eq!((second.succeeded, second.retried), (1, 0), "{second:?}");
    assert_eq!(job_state(&w, req.job_id).await.0, JobState::Succeeded);
    let got = sink.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_to, std::slice::from_ref(&user.email));
    assert_eq!(sink.data_replies_given().len(), 2);
}

async fn a_5xx_reply_fails_at_once(t: TestDb) {
    let sink = SmtpSink::start().await;
    sink.reply_to_data(&["554 5.7.1 Message rejected"]);
    let w = world(&t, |s| s.mail.smtp_url = Some(sink.url()));
    let (_, req) = export_with_mail(&w).await;
    let report = drain(&w.engine).await;
    let (state, error) = job_state(&w, req.job_id).await;
    assert_eq!(
        (report.succeeded, report.retried, report.failed),
        (0, 0, 1),
        "{report:?} {error}"
    );
    assert_eq!(state, JobState::Failed);
    assert!(error.contains("554"), "{error:?}");
    let row = export_row(&w, req.export_id).await;
    assert_eq!(
        (row.0.as_str(), row.9),
        ("ready", None),
        "the export is ready, only its e-mail failed"
    );
    w.clock.advance(Duration::from_secs(3600));
    assert_eq!(
        drain(&w.engine).await,
        engine::testing::DrainReport::default(),
        "never retried"
    );
    assert_eq!(sink.data_replies_given().len(), 1);
}

/// After a first attempt that built the ZIP and failed in the e-mail step (the job now in
/// `state`): it waits to be retried with `build_zip` stored, the export ready and no e-mail
/// sent. Returns the export row and the ZIP's identity, for [`retry_sends_one_email`].
async fn built_not_sent(
    w: &World,
    req: &ExportRequested,
    state: JobState,
    sink: &SmtpSink,
) -> (ExportRow, (u64, i64, i64)) {
    assert_eq!(state, JobState::Retrying);
    assert_eq!(steps(w, req.job_id).await, [("build_zip".to_owned(), 1)]);
    let ready = export_row(w, req.export_id).await;
    assert_eq!(ready.0, "ready");
    assert!(sink.received().is_empty());
    (ready, zip_identity(w, req.export_id))
}

/// The retry, a minute later, of an export left as [`built_not_sent`] found it: it runs
/// `send_email` alone, leaves the export row and the ZIP as they were (not started over:
/// progress, times, checksum, file), and sends `user` exactly one e-mail.
async fn retry_sends_one_email(
    w: &World,
    req: &ExportRequested,
    user: &Person,
    sink: &SmtpSink,
    (ready, zip): (ExportRow, (u64, i64, i64)),
) {
    w.clock.advance(Duration::from_secs(60));
    let second = drain(&w.engine).await;
    assert_eq!(
        (second.succeeded, second.retried, second.failed),
        (1, 0, 0),
        "{second:?} {:?}",
        job_state(w, req.job_id).await
    );
    assert_eq!(
        steps(w, req.job_id).await,
        [("build_zip".to_owned(), 1), ("send_email".to_owned(), 2)],
        "build_zip finished on attempt 1 and was not run again"
    );
    assert_eq!(
        export_row(w, req.export_id).await,
        ready,
        "not started over"
    );
    assert_eq!(
        zip_identity(w, req.export_id),
        zip,
        "the ZIP was not rewritten"
    );
    assert_eq!(ready_transitions(w, req.export_id).await, 1);
    let got = sink.received();
    assert_eq!(got.len(), 1, "exactly one e-mail");
    assert_eq!(got[0].rcpt_to, std::slice::from_ref(&user.email));
}

/// The SMTP server is unreachable when the e-mail step runs: the job is retried for the
/// e-mail alone. The retry replays `build_zip` from its stored result — the ZIP is not
/// written again, the export row is untouched and becomes ready once — and sends one
/// e-mail.
async fn a_failed_email_step_is_retried_alone_without_building_the_zip_again(t: TestDb) {
    let sink = SmtpSink::start().await;
    let proxy = TcpProxy::start(sink.addr).await;
    let w = world(&t, |s| {
        s.mail.smtp_url = Some(format!("smtp://{}", proxy.addr));
    });
    let (user, other) = (Person::new("ada"), Person::new("bob"));
    insert_user(&w, &user).await;
    insert_user(&w, &other).await;
    seed(&w, &user, &other).await;
    let req = exports::request_export(&w.engine, &w.settings.exports, user.id, &Actor::api_key(1))
        .await
        .unwrap();
    proxy.cut();

    let first = drain(&w.engine).await;
    assert_eq!(
        (first.succeeded, first.retried, first.failed),
        (0, 1, 0),
        "{first:?}"
    );
    let (state, error) = job_state(&w, req.job_id).await;
    assert!(error.contains("SMTP"), "{error}");
    let built = built_not_sent(&w, &req, state, &sink).await;
    assert_eq!(
        built.0.9, None,
        "the e-mail's failure is not written on the export"
    );
    assert_eq!(built.0.2, built.0.1.unwrap(), "every row written");

    proxy.restore();
    retry_sends_one_email(&w, &req, &user, &sink, built).await;
}

/// The attempt is cut off (its handler dropped, as when its process dies) in the e-mail
/// step, before the server has the message. The next attempt resumes at the e-mail step:
/// one e-mail, the ZIP built once.
async fn an_attempt_cut_off_between_the_steps_sends_one_email(t: TestDb) {
    let sink = SmtpSink::start().await;
    sink.stall(Stall::Mail);
    let w = export_world_with_timeout(&t, Duration::from_secs(5), |s| {
        s.mail.smtp_url = Some(sink.url());
    });
    let (user, req) = export_with_mail(&w).await;

    let first = drain(&w.engine).await;
    assert_eq!(
        (first.succeeded, first.retried, first.failed),
        (0, 1, 0),
        "{first:?}"
    );
    assert_eq!(sink.held(), 1, "the attempt reached the e-mail step");
    let (state, error) = job_state(&w, req.job_id).await;
    assert!(error.contains("timed out"), "{error}");
    sink.release();
    let built = built_not_sent(&w, &req, state, &sink).await;

    retry_sends_one_email(&w, &req, &user, &sink, built).await;
}

/// The window that remains: the server has taken the message, and the attempt is cut off
/// before its reply (or before the step's result is committed). The next attempt sends it
/// again — the same message: same Message-ID (receivers drop the repeat), same Date,
/// subject and text.
async fn an_attempt_cut_off_after_the_server_took_the_email_sends_the_same_email_again(t: TestDb) {
    let sink = SmtpSink::start().await;
    sink.stall(Stall::DataEnd);
    let w = export_world_with_timeout(&t, Duration::from_secs(5), |s| {
        s.mail.smtp_url = Some(sink.url());
    });
    let (_, req) = export_with_mail(&w).await;

    let first = drain(&w.engine).await;
    assert_eq!((first.succeeded, first.retried), (0, 1), "{first:?}");
    assert_eq!(sink.held(), 1);
    assert_eq!(sink.received().len(), 1, "the server has the message");
    assert_eq!(steps(&w, req.job_id).await, [("build_zip".to_owned(), 1)]);
    sink.release();

    w.clock.advance(Duration::from_secs(60));
    let second = drain(&w.engine).await;
    assert_eq!((second.succeeded, second.retried), (1, 0), "{second:?}");
    let got = sink.received();
    assert_eq!(got.len(), 2, "sent again: delivery is at least once");
    assert_eq!(
        header(&got[0].data, "Message-ID"),
        format!("<export-ready-{}@veza-jobs>", req.export_id)
    );
    assert_eq!(
        got[0].data, got[1].data,
        "the repeat is the same message, byte for byte"
    );
    assert_eq!(ready_transitions(&w, req.export_id).await, 1);
}

/// Upgrading while an export is between its `ready` commit and its job's acknowledgement:
/// the previous release marked it ready and enqueued a `send_email` job in one transaction,
/// then its worker died. The `data_export` job, run again by this release, finds the export
/// ready with no finished step: it leaves the export and its file alone and sends nothing;
/// the queued `send_email` job sends the one e-mail.
async fn an_export_made_ready_by_the_previous_release_gets_one_email_from_its_send_email_job(
    t: TestDb,
) {
    let sink = SmtpSink::start().await;
    let w = world(&t, |s| s.mail.smtp_url = Some(sink.url()));
    let (user, req) = export_with_mail(&w).await;
    // What the previous release left: a ZIP, the export ready, a send_email job.
    let file = exports::export_file_path(&w.settings.exports, req.export_id);
    std::fs::create_dir_all(&w.settings.exports.dir).unwrap();
    std::fs::write(&file, b"the previous release's ZIP").unwrap();
    let now = w.now();
    let actor = Actor::job(req.job_id);
    let mut tx = w.engine.begin().await.unwrap();
    exports::state::start(&mut tx, req.export_id, 1, &actor, now)
        .await
        .unwrap();
    let ready = exports::state::ReadyFile {
        rows: 1,
        size_bytes: 26,
        sha256: "0".repeat(64),
        link_expires_at: now + 7 * 86_400_000,
        expires_at: now + 7 * 86_400_000,
    };
    exports::state::mark_ready(&mut tx, req.export_id, &ready, &actor, now)
        .await
        .unwrap();
    tx.enqueue(SendEmail::export_ready(user.id, req.export_id))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let before = export_row(&w, req.export_id).await;

    let report = drain(&w.engine).await;
    assert_eq!(
        (report.succeeded, report.retried, report.failed),
        (2, 0, 0),
        "{report:?}"
    );
    let export_job = engine::admin::get_job(w.db(), req.job_id).await.unwrap();
    assert_eq!(
        export_job.attempts[0].outcome.as_deref(),
        Some("skipped"),
        "{export_job:?}"
    );
    assert_eq!(
        steps(&w, req.job_id).await,
        [("build_zip".to_owned(), 1)],
        "its one step says the export was ready already"
    );
    assert_eq!(export_row(&w, req.export_id).await, before);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"the previous release's ZIP",
        "the file is left alone"
    );
    assert_eq!(ready_transitions(&w, req.export_id).await, 1);
    assert_eq!(sink.received().len(), 1, "exactly one e-mail");
    assert!(enqueued::<DataExport>(&w.engine).await[0].1 == JobState::Succeeded);
}
