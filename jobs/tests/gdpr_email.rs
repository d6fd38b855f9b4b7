//! `send_email` over real SMTP on both backends: an SMTP server on loopback
//! (mailin-embedded) receives the export e-mail, whose link then passes the download check;
//! a 4xx reply is retried with backoff, a 5xx reply fails the job at once.

mod gdpr_support;

use std::time::Duration;

use engine::testing::{TestDb, drain, enqueued};
use engine::{Actor, JobState, backend_tests};
use gdpr_support::smtp_sink::SmtpSink;
use gdpr_support::*;
use jobs::exports::{self, verify_download};
use jobs::send_email::SendEmail;

backend_tests!(
    schema = jobs::schema::migrator;
    export_email_arrives_over_smtp_with_a_working_link,
    a_4xx_reply_is_retried_with_backoff,
    a_5xx_reply_fails_at_once,
);

/// A user with a ready export whose e-mail goes to `sink`; returns (user, export id).
async fn export_with_mail(w: &World) -> (Person, i64) {
    let user = Person::new("sam");
    insert_user(w, &user).await;
    let req = exports::request_export(&w.engine, &w.settings.exports, user.id, &Actor::api_key(1))
        .await
        .unwrap();
    (user, req.export_id)
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
    let (user, export_id) = export_with_mail(&w).await;
    let report = drain(&w.engine).await;
    assert_eq!(
        (report.succeeded, report.failed, report.retried),
        (2, 0, 0),
        "{report:?}"
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
    let (user, _) = export_with_mail(&w).await;
    let first = drain(&w.engine).await;
    assert_eq!(
        (first.succeeded, first.retried, first.failed),
        (1, 1, 0),
        "{first:?}"
    );
    let mails = enqueued::<SendEmail>(&w.engine).await;
    assert_eq!(mails[0].1, JobState::Retrying);
    let error: Option<String> = sqlx::query_scalar("SELECT last_error FROM jobs WHERE id = $1")
        .bind(mails[0].0)
        .fetch_one(w.db())
        .await
        .unwrap();
    assert!(error.as_deref().unwrap().contains("451"), "{error:?}");
    assert!(sink.received().is_empty());

    // Not before its backoff (30 s base).
    w.clock.advance(Duration::from_secs(20));
    assert_eq!(drain(&w.engine).await.succeeded, 0);
    w.clock.advance(Duration::from_secs(20));
    let second = drain(&w.engine).await;
    assert_eq!((second.succeeded, second.retried), (1, 0), "{second:?}");
    assert_eq!(
        enqueued::<SendEmail>(&w.engine).await[0].1,
        JobState::Succeeded
    );
    let got = sink.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_to, std::slice::from_ref(&user.email));
    assert_eq!(sink.data_replies_given().len(), 2);
}

async fn a_5xx_reply_fails_at_once(t: TestDb) {
    let sink = SmtpSink::start().await;
    sink.reply_to_data(&["554 5.7.1 Message rejected"]);
    let w = world(&t, |s| s.mail.smtp_url = Some(sink.url()));
    export_with_mail(&w).await;
    let report = drain(&w.engine).await;
    let errors: Vec<Option<String>> = sqlx::query_scalar("SELECT last_error FROM jobs")
        .fetch_all(w.db())
        .await
        .unwrap();
    assert_eq!(
        (report.succeeded, report.retried, report.failed),
        (1, 0, 1),
        "{report:?} {errors:?}"
    );
    let mails = enqueued::<SendEmail>(&w.engine).await;
    assert_eq!(mails[0].1, JobState::Failed);
    let error: Option<String> = sqlx::query_scalar("SELECT last_error FROM jobs WHERE id = $1")
        .bind(mails[0].0)
        .fetch_one(w.db())
        .await
        .unwrap();
    assert!(error.as_deref().unwrap().contains("554"), "{error:?}");
    w.clock.advance(Duration::from_secs(3600));
    assert_eq!(
        drain(&w.engine).await,
        engine::testing::DrainReport::default(),
        "never retried"
    );
    assert_eq!(sink.data_replies_given().len(), 1);
}
