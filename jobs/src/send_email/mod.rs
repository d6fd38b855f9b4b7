//! `send_email`: sends a notification e-mail over SMTP (lettre), or, when `SMTP_URL` is
//! unset, writes it as an `.eml` file into `MAIL_OUTBOX_DIR/user-{id}/` and logs it.
//!
//! The outbox is kept per recipient so that `hard_delete` can erase a user's messages with
//! the rest of their data ([`outbox_dir_of`]). A message written while its recipient is
//! being erased is not left behind: after writing, the handler reads the user's status
//! again and removes the file if the erasure committed meanwhile; the erasure lists the
//! directory again after its commit. Whichever runs second sees the other's effect.
//!
//! The args name the recipient by user id and the message by template and ids, never by
//! address or content: the address is read when the job runs (an erased account gets no
//! mail, and no e-mail address sits in the jobs table), and the message is rendered then
//! (for an export, its signed download link).
//!
//! The sending itself is [`send`]: this kind's handler calls it, and so does `data_export`,
//! whose last step e-mails the export it made (the export no longer enqueues this kind;
//! the kind stays for the jobs already queued and for other messages to come).
//!
//! SMTP replies: `4xx` is transient (retried with the caller's backoff), `5xx` is permanent
//! (the job fails at once); connection errors and timeouts are transient. Delivery is at
//! least once, and a repeat is the same message: everything in it is derived from what it
//! is about, never from when or how often it is sent — its `Message-ID`
//! (`<export-ready-{id}@veza-jobs>`, so that receivers recognise a duplicate), its `Date`
//! (when the export became ready), its text, and its outbox file name
//! (`export-ready-{id}.eml`, written to a temporary name and renamed over, so a repeat
//! replaces the file instead of adding a second one). A send is repeated only when the
//! attempt ends between the hand-over and the caller recording it: SMTP's answer lost, or
//! the process gone before the caller commits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::{Job, JobContext, JobError, JobPolicy, Millis, Outcome, RetryPolicy};
use lettre::message::header::ContentType;
use lettre::message::{Body, Mailbox, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::exports::{ExportSettings, ExportStatus, download_link};
use crate::users::UserStatus;

/// Who receives the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Recipient {
    /// A user, at the address on their account when the job runs.
    User {
        /// `users.id`.
        user_id: i64,
    },
}

/// What the message says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Template {
    /// "Your data export is ready", with its download link.
    ExportReady {
        /// `data_exports.id`.
        export_id: i64,
    },
}

/// Args: recipient and template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendEmail {
    /// To whom.
    pub to: Recipient,
    /// What.
    pub template: Template,
}

impl SendEmail {
    /// The "export ready" e-mail of `export_id` to its owner.
    pub fn export_ready(user_id: i64, export_id: i64) -> Self {
        Self {
            to: Recipient::User { user_id },
            template: Template::ExportReady { export_id },
        }
    }
}

impl Job for SendEmail {
    const KIND: &'static str = "send_email";
    const POLICY: JobPolicy = JobPolicy {
        retry: RetryPolicy::exponential(Duration::from_secs(30), Duration::from_secs(3600), 10),
        timeout: Duration::from_secs(120),
        concurrency: 4,
        priority: 3,
    };

    fn unique_key(&self) -> Option<String> {
        match self.template {
            Template::ExportReady { export_id } => {
                Some(format!("send_email:export_ready:{export_id}"))
            }
        }
    }
}

/// The mail settings, from `SMTP_URL`, `MAIL_FROM` and `MAIL_OUTBOX_DIR`.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// `SMTP_URL` (`smtp://host:port`, `smtps://user:pass@host`, `?tls=required`…); unset:
    /// the outbox.
    pub smtp_url: Option<String>,
    /// `MAIL_FROM`: the sender, `Name <address>` or `address`.
    pub from: Mailbox,
    /// `MAIL_OUTBOX_DIR`: where `.eml` files go without `SMTP_URL`.
    pub outbox_dir: PathBuf,
    /// Timeout of each SMTP command.
    pub timeout: Duration,
}

impl MailSettings {
    /// The outbox in `outbox_dir`, sent from `Veza <no-reply@veza.local>`.
    pub fn new(outbox_dir: impl Into<PathBuf>) -> Self {
        Self {
            smtp_url: None,
            from: default_from(),
            outbox_dir: outbox_dir.into(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// `Veza <no-reply@veza.local>`.
pub fn default_from() -> Mailbox {
    Mailbox::new(
        Some("Veza".to_owned()),
        Address::new("no-reply", "veza.local").expect("a valid address"),
    )
}

/// Where messages go.
#[derive(Clone)]
pub enum Mailer {
    /// An SMTP server.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// `.eml` files in a directory per recipient under this one.
    Outbox(PathBuf),
}

/// The outbox directory of user `user_id`'s messages.
pub fn outbox_dir_of(outbox_dir: &Path, user_id: i64) -> PathBuf {
    outbox_dir.join(format!("user-{user_id}"))
}

impl Mailer {
    /// The mailer `settings` describe; an unusable `SMTP_URL` is an error naming it.
    ///
    /// Each message goes over a connection of its own (a pool of size 0: a connection is
    /// closed after its message, never handed to the next). lettre's pool takes back a
    /// connection whose send was dropped midway — an attempt cut off by its timeout, a lost
    /// lease or a shutdown — without knowing it is mid-command: the next message on it
    /// would read the replies meant for the dropped one (a `503 Bad sequence of commands`,
    /// read as a permanent refusal). Export e-mails are few; a connection each costs
    /// nothing that matters.
    pub fn new(settings: &MailSettings) -> Result<Self, String> {
        match &settings.smtp_url {
            Some(url) => AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                .map(|b| {
                    Mailer::Smtp(
                        b.timeout(Some(settings.timeout))
                            .pool_config(PoolConfig::new().max_size(0))
                            .build(),
                    )
                })
                .map_err(|e| format!("SMTP_URL cannot be used: {e}")),
            None => Ok(Mailer::Outbox(settings.outbox_dir.clone())),
        }
    }
}

/// What the handler needs.
#[derive(Clone)]
pub struct MailContext {
    /// The mailer (or why it could not be built: each job then fails with it).
    pub mailer: Result<Mailer, String>,
    /// The settings.
    pub settings: MailSettings,
    /// For the links in export e-mails.
    pub exports: ExportSettings,
}

/// A rendered message.
struct Rendered {
    subject: String,
    body: String,
    /// What the message is about, e.g. `export-ready-42`: its `Message-ID` is
    /// `<{key}@veza-jobs>` and its outbox file `{key}.eml`.
    key: String,
    /// Its `Date`: when what it announces happened (the same on every send).
    date: Millis,
}

/// Where a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Accepted by the SMTP server (a `2xx` reply to its data).
    Smtp,
    /// Written as an `.eml` file into the recipient's outbox directory.
    Outbox,
}

/// What [`send`] did. Holds no address or content: it is stored as a step result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "delivery", rename_all = "snake_case")]
pub enum Delivery {
    /// Sent.
    Sent {
        /// Its `Message-ID`, the same on every send of this message.
        message_id: String,
        /// Where it went.
        via: Via,
    },
    /// Not sent, and there is nothing to send any more (the recipient is erased or has no
    /// address, the export is gone or no longer ready): why.
    NotSent {
        /// Why.
        reason: String,
    },
}

/// Sends one message: `Ok(Sent)` once it is handed over, `Ok(NotSent)` when there is nothing
/// to send any more, `Err` when it should be tried again (transient) or cannot be sent
/// (permanent). Sending the same `args` again sends the same message (see the module doc).
pub async fn send(
    ctx: &JobContext,
    mail: &MailContext,
    args: &SendEmail,
) -> Result<Delivery, JobError> {
    let mailer = mail.mailer.as_ref().map_err(JobError::permanent)?;
    let Recipient::User { user_id } = args.to;
    let not_sent = |reason: String| Ok(Delivery::NotSent { reason });
    let row = sqlx::query("SELECT email, display_name, status FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(ctx.db())
        .await?;
    let Some(row) = row else {
        return not_sent(format!("user {user_id} does not exist"));
    };
    let email: Option<String> = row.try_get(0)?;
    let name: Option<String> = row.try_get(1)?;
    let status: String = row.try_get(2)?;
    if UserStatus::parse(&status) == Some(UserStatus::Erased) {
        return not_sent(format!("user {user_id} is erased"));
    }
    let Some(email) = email else {
        return not_sent(format!("user {user_id} has no e-mail address"));
    };
    let address: Address = email.parse().map_err(|e| {
        JobError::permanent(format!("user {user_id}'s e-mail address is not valid: {e}"))
    })?;
    let rendered = match render(ctx, mail, &args.template).await? {
        Ok(r) => r,
        Err(reason) => return not_sent(reason),
    };
    let message_id = format!("<{}@veza-jobs>", rendered.key);
    // lettre picks the transfer encoding: quoted-printable here, as the link line is longer
    // than 78 characters (soft line breaks keep it intact for mail clients).
    let body = Body::new(rendered.body);
    let message = Message::builder()
        .from(mail.settings.from.clone())
        .to(Mailbox::new(name, address))
        .subject(rendered.subject)
        .message_id(Some(message_id.clone()))
        .date(std::time::SystemTime::from(engine::clock::to_datetime(
            rendered.date,
        )))
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(body),
        )
        .map_err(|e| JobError::permanent(format!("building the message: {e}")))?;
    match mailer {
        Mailer::Smtp(smtp) => match smtp.send(message).await {
            Ok(response) => {
                tracing::info!(user_id, code = %response.code(), %message_id, "e-mail sent");
                Ok(Delivery::Sent {
                    message_id,
                    via: Via::Smtp,
                })
            }
            Err(e) if e.is_permanent() => Err(JobError::permanent(format!(
                "the SMTP server refused the message: {e}"
            ))),
            Err(e) => Err(JobError::transient(format!("SMTP: {e}"))),
        },
        Mailer::Outbox(dir) => {
            let dir = outbox_dir_of(dir, user_id);
            let path = write_to_outbox(&dir, &rendered.key, &message.formatted()).await?;
            if erased_since(ctx, user_id).await? {
                // The erasure committed while we wrote: its second pass may have missed us.
                remove_written(&path).await?;
                return not_sent(format!(
                    "user {user_id} was erased while the message was written"
                ));
            }
            tracing::info!(user_id, file = %path.display(), "SMTP_URL unset: e-mail written to the outbox");
            Ok(Delivery::Sent {
                message_id,
                via: Via::Outbox,
            })
        }
    }
}

/// Sends one message ([`send`]).
pub async fn handle(
    args: SendEmail,
    ctx: JobContext,
    mail: &MailContext,
) -> Result<Outcome, JobError> {
    match send(&ctx, mail, &args).await? {
        Delivery::Sent { .. } => Ok(Outcome::Succeeded),
        Delivery::NotSent { reason } => Ok(Outcome::Skipped { reason }),
    }
}

/// Writes `bytes` as `dir/{key}.eml`: into a temporary file first, then renamed over, so a
/// reader never sees half a message and a second send of the same message replaces the
/// first instead of adding another. Returns the file's path.
async fn write_to_outbox(dir: &Path, key: &str, bytes: &[u8]) -> Result<PathBuf, JobError> {
    let outbox =
        |e: std::io::Error| JobError::transient(format!("writing to MAIL_OUTBOX_DIR: {e}"));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| JobError::transient(format!("creating MAIL_OUTBOX_DIR: {e}")))?;
    let path = dir.join(format!("{key}.eml"));
    let tmp = dir.join(format!(".{key}.eml.tmp"));
    tokio::fs::write(&tmp, bytes).await.map_err(outbox)?;
    tokio::fs::rename(&tmp, &path).await.map_err(outbox)?;
    Ok(path)
}

/// Whether user `user_id` is erased now (read after the outbox file was written).
async fn erased_since(ctx: &JobContext, user_id: i64) -> Result<bool, JobError> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(ctx.db())
        .await?;
    Ok(status.is_none_or(|s| UserStatus::parse(&s) == Some(UserStatus::Erased)))
}

async fn remove_written(path: &Path) -> Result<(), JobError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(JobError::transient(format!(
            "removing {} of an erased user: {e}",
            path.display()
        ))),
    }
}

/// Renders `template`, or `Err(reason)` when there is nothing to send any more.
async fn render(
    ctx: &JobContext,
    mail: &MailContext,
    template: &Template,
) -> Result<Result<Rendered, String>, JobError> {
    match *template {
        Template::ExportReady { export_id } => {
            let row = sqlx::query(
                "SELECT status, link_expires_at, size_bytes, ready_at FROM data_exports \
                 WHERE id = $1",
            )
            .bind(export_id)
            .fetch_optional(ctx.db())
            .await?;
            let Some(row) = row else {
                return Ok(Err(format!("export {export_id} no longer exists")));
            };
            let status: String = row.try_get(0)?;
            let expires: Option<i64> = row.try_get(1)?;
            let size: Option<i64> = row.try_get(2)?;
            let ready_at: Option<i64> = row.try_get(3)?;
            let (Some(ExportStatus::Ready), Some(expires), Some(ready_at)) =
                (ExportStatus::parse(&status), expires, ready_at)
            else {
                return Ok(Err(format!(
                    "export {export_id} is no longer ready ({status})"
                )));
            };
            let link = download_link(&mail.exports, export_id, expires);
            let until = engine::clock::to_datetime(expires).format("%Y-%m-%d %H:%M UTC");
            let size_mb = size.unwrap_or_default() as f64 / 1_048_576.0;
            Ok(Ok(Rendered {
                subject: "Your Veza data export is ready".to_owned(),
                body: format!(
                    "Hello,\n\n\
                     the copy of your Veza data you asked for is ready ({size_mb:.1} MB, ZIP).\n\n\
                     Download it here until {until}:\n\n\
                     {link}\n\n\
                     The link is personal: do not share it. If you did not ask for this export,\n\
                     please contact support.\n\n\
                     -- Veza\n"
                ),
                key: format!("export-ready-{export_id}"),
                date: ready_at,
            }))
        }
    }
}
