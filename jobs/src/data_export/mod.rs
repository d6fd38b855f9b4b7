//! `data_export`: writes one user's personal data into a ZIP under `EXPORT_DIR`, then
//! e-mails them its download link.
//!
//! Enqueued by [`crate::exports::request_export`] with the export row, one job per export
//! (unique key `data_export:{id}`). The job is a workflow of two durable steps
//! ([`engine::steps`]): each finished step's result is stored with the job, and a retry, or
//! another worker after a crash, gets it back instead of running the step again, resuming
//! at the first unfinished one.
//!
//! 1. **`build_zip`** ([`JobContext::step_tx`]) writes the ZIP, then, in the step's own
//!    transaction, checks the account is not erased and marks the export `ready` (size,
//!    SHA-256, expiries). That transaction also stores the step's result ([`ZipStep`]) and
//!    passes the fence, so the export becomes ready exactly when the step is finished:
//!    afterwards no attempt writes the ZIP again or marks it ready twice; before, a retry
//!    starts the ZIP over.
//! 2. **`send_email`** ([`JobContext::step`]) sends the "export ready" e-mail with the
//!    signed link ([`crate::send_email::send`]: over SMTP, or into the outbox without
//!    `SMTP_URL`). Its result ([`Delivery`]) holds the `Message-ID`, not the address.
//!
//! The ZIP holds one file per category plus a manifest:
//!
//! | file | content |
//! |---|---|
//! | `profile.json` | the account (e-mail, username, display name, status, dates), its profile, and the seller's payout account (`acct_…`) if any |
//! | `tracks.ndjson` | one line per track the user owns |
//! | `playlists.ndjson` | one line per playlist, with its items |
//! | `messages.ndjson` | one line per message sent or received |
//! | `playback_history.ndjson` | one line per play |
//! | `purchases.ndjson` | one line per order the user bought, with its items and refunds |
//! | `payouts.ndjson` | one line per payout to the user as a seller (`seller_transfers`) |
//! | `payment_events.ndjson` | one line per stored Stripe event about the user's payments, with its stored payload |
//! | `manifest.json` | schema version, generation time, row counts per file |
//!
//! No payment or shipping address is stored by veza-jobs: orders carry none, and Stripe
//! events are stored without the buyer's e-mail, name, address or card details since
//! migration 0015 (`payments::StripeEvent::stored_payload`). An event stored before then may
//! still hold them in its payload: `payment_events.ndjson` gives every stored payload as it
//! is, so whatever is held is in the export.
//!
//! Rows are read in keyset pages of `page_size` and streamed into the ZIP (written on a
//! blocking-pool thread), never collected: memory does not grow with the export. The file
//! is written as `.{id}.zip.part` and renamed to `{id}.zip` once complete and synced;
//! progress (`rows_done` of `rows_total`) is updated on the row after every page, each
//! update committed on its own. The step's transaction stays idle meanwhile (its first
//! statement is the one that locks the user's row): it holds a pooled connection, no lock.
//!
//! **The e-mail is sent once, or sent again identical.** A retry after `build_zip` finished
//! runs `send_email` only. The one window left is inside that step: when the attempt ends
//! after the message was handed over (the SMTP server took it, or its `.eml` was written)
//! and before the step's result commits — the server's reply lost, the process killed, the
//! lease lost — the next attempt sends it again. The repeat is the same message (same
//! `Message-ID` `<export-ready-{id}@veza-jobs>`, which receivers use to drop duplicates;
//! same `Date`, the time the export became ready; same text), and in the outbox it replaces
//! the same file, `export-ready-{id}.eml`. An attempt that ends anywhere else sends nothing
//! twice.
//!
//! **Failures.** A failure of `build_zip` removes the partial file and records the error on
//! the export. I/O and database errors are retried (the export stays `running`, its
//! `error` says what happened); on the last attempt, or when the account was erased
//! meanwhile, the export becomes `failed`. A failure of `send_email` leaves the export
//! `ready` and untouched: the job alone is retried (SMTP `4xx`, connection errors) or fails
//! (`5xx`), with the error on the job. An erased account is never e-mailed: the e-mail step
//! reads the account (and the export) when it runs.
//!
//! Until this workflow, the export enqueued a `send_email` job with its `ready` change; such
//! jobs, queued before an upgrade, still run (the kind stays), and an export found `ready`
//! before its `build_zip` ran is left to that job ([`ZipStep::AlreadyReady`]).

mod zip_sink;

use std::path::Path;
use std::time::Duration;

use chrono::{Datelike, Timelike};
use engine::clock::{duration_ms, to_datetime};
use engine::state_machine::{Actor, TransitionError};
use engine::{DbConn, Job, JobContext, JobError, JobPolicy, Millis, Outcome, RetryPolicy};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use self::zip_sink::ZipSink;
use crate::exports::state::{self, ExportStatus, ReadyFile};
use crate::exports::{ExportSettings, file_path_in, part_path_in};
use crate::payments::event::OF_BUYER;
use crate::send_email::{self, Delivery, MailContext, SendEmail};
use crate::users::UserStatus;

/// The version of the archive's layout, in `manifest.json`.
/// 2: `purchases.ndjson`, `payouts.ndjson`, `payment_events.ndjson` and the profile's
/// `payout_account` added (the files and fields of version 1 are unchanged).
pub const SCHEMA_VERSION: u32 = 2;

/// The files of an export, in the order they are written.
pub const FILES: [&str; 9] = [
    "profile.json",
    "tracks.ndjson",
    "playlists.ndjson",
    "messages.ndjson",
    "playback_history.ndjson",
    "purchases.ndjson",
    "payouts.ndjson",
    "payment_events.ndjson",
    "manifest.json",
];

/// Args: the export row to fill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataExport {
    /// `data_exports.id`.
    pub export_id: i64,
}

impl Job for DataExport {
    const KIND: &'static str = "data_export";
    /// The retries are those `send_email` gives an e-mail (10 attempts, 30 s doubling up
    /// to an hour: about three hours in all), since the e-mail is this job's last step: an
    /// SMTP outage of more than a few minutes must not lose it. A ZIP that keeps failing
    /// is retried as long before its export is `failed`.
    const POLICY: JobPolicy = JobPolicy {
        retry: RetryPolicy::exponential(Duration::from_secs(30), Duration::from_secs(3600), 10),
        timeout: Duration::from_secs(3600),
        concurrency: 2,
        priority: 5,
    };

    fn unique_key(&self) -> Option<String> {
        Some(format!("data_export:{}", self.export_id))
    }
}

/// A failure of one attempt.
struct Failure {
    permanent: bool,
    message: String,
}

impl Failure {
    fn transient(message: impl Into<String>) -> Self {
        Self {
            permanent: false,
            message: message.into(),
        }
    }
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            permanent: true,
            message: message.into(),
        }
    }
    fn io(what: &str, e: &std::io::Error) -> Self {
        Self::transient(format!("{what}: {e}"))
    }
    fn db(e: &sqlx::Error) -> Self {
        Self::transient(format!("database: {}", engine::job::error_chain(e)))
    }
}

/// Rows written per file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// `profile.json` (1).
    pub profile: i64,
    /// `tracks.ndjson`.
    pub tracks: i64,
    /// `playlists.ndjson` lines.
    pub playlists: i64,
    /// Items inside those playlists.
    pub playlist_items: i64,
    /// `messages.ndjson`.
    pub messages: i64,
    /// `playback_history.ndjson`.
    pub playback_history: i64,
    /// `purchases.ndjson` lines (orders).
    pub purchases: i64,
    /// Items inside those orders.
    pub purchase_items: i64,
    /// `payouts.ndjson`.
    pub payouts: i64,
    /// `payment_events.ndjson`.
    pub payment_events: i64,
}

impl Counts {
    fn total(&self) -> i64 {
        self.profile
            + self.tracks
            + self.playlists
            + self.playlist_items
            + self.messages
            + self.playback_history
            + self.purchases
            + self.purchase_items
            + self.payouts
            + self.payment_events
    }
}

/// When the engine ends a `data_export` job whose handler did not end its export (the last
/// attempt timed out, panicked or lost its worker; an admin cancelled it), the export
/// fails with the reason, in the same transaction: never left `pending` or `running`.
/// Registered as the kind's discard hook (`engine::registry::KindBuilder::on_discard`).
pub fn on_discard<'c>(
    conn: &'c mut engine::DbConn,
    job: engine::Discarded<DataExport>,
) -> futures::future::BoxFuture<'c, engine::Result<()>> {
    Box::pin(async move {
        let id = job.args.export_id;
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM data_exports WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
        let Some(from) = status.as_deref().and_then(ExportStatus::parse) else {
            return Ok(());
        };
        if !matches!(from, ExportStatus::Pending | ExportStatus::Running) {
            return Ok(()); // the handler ended it already
        }
        let why = match &job.reason {
            engine::DiscardReason::Failed(e) => format!("export failed: {e}"),
            engine::DiscardReason::Cancelled => "export cancelled by an admin".to_owned(),
        };
        state::fail(conn, id, from, &why, &job.actor, job.now).await?;
        Ok(())
    })
}

/// What the `build_zip` step did; stored as its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "zip", rename_all = "snake_case")]
pub enum ZipStep {
    /// The ZIP was written and the export marked `ready`.
    Ready(ReadyZip),
    /// The export was `ready` when the step first ran: an earlier release made it ready and
    /// enqueued its e-mail as a `send_email` job in the same transaction, and this job was
    /// cut off before it was acknowledged. Nothing to build or send: the job stops here.
    AlreadyReady,
}

/// A ready export, as the `build_zip` step left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyZip {
    /// Rows written.
    pub rows: i64,
    /// The ZIP's size in bytes.
    pub size_bytes: i64,
    /// Hex SHA-256 of the ZIP.
    pub sha256: String,
    /// When it became ready (the e-mail's `Date`).
    pub ready_at: Millis,
    /// When its download link stops working.
    pub link_expires_at: Millis,
}

/// Runs one export: the `build_zip` step, then the `send_email` step (see the module doc).
pub async fn handle(
    args: DataExport,
    ctx: JobContext,
    settings: &ExportSettings,
    mail: &MailContext,
) -> Result<Outcome, JobError> {
    let id = args.export_id;
    let row = sqlx::query("SELECT user_id, status FROM data_exports WHERE id = $1")
        .bind(id)
        .fetch_optional(ctx.db())
        .await?;
    let Some(row) = row else {
        return Ok(Outcome::Skipped {
            reason: format!("export {id} no longer exists (the account was erased)"),
        });
    };
    let user_id: i64 = row.try_get(0)?;
    let status: String = row.try_get(1)?;
    let status = ExportStatus::parse(&status)
        .ok_or_else(|| JobError::permanent(format!("unknown export status {status:?}")))?;
    match status {
        // `ready`: either this job's `build_zip` finished (it is replayed below and the
        // e-mail step runs) or an earlier release made it ready (the step says so).
        ExportStatus::Pending | ExportStatus::Running | ExportStatus::Ready => {}
        ExportStatus::Expired | ExportStatus::Failed => {
            return Ok(Outcome::Skipped {
                reason: format!("export {id} is already {}", status_name(status)),
            });
        }
    }

    // Step 1. A failure of our own work is recorded on the export (and its files removed)
    // once the step's transaction is rolled back; an error of the step itself (the fence
    // refused the commit, the commit failed) leaves both alone: the export may be ready.
    let mut failure = None;
    let built = ctx
        .step_tx("build_zip", async |tx| {
            build_zip(&ctx, settings, id, user_id, status, tx)
                .await
                .map_err(|f| {
                    // What the step is told; the job's error is `record_failure`'s, below.
                    let e = if f.permanent {
                        JobError::Permanent(f.message.clone())
                    } else {
                        JobError::Transient(f.message.clone())
                    };
                    failure = Some(f);
                    e
                })
        })
        .await;
    let ready = match built {
        Ok(ZipStep::Ready(ready)) => ready,
        Ok(ZipStep::AlreadyReady) => {
            return Ok(Outcome::Skipped {
                reason: format!("export {id} was already ready (its e-mail is a send_email job)"),
            });
        }
        Err(e) => {
            let Some(failure) = failure else {
                return Err(e);
            };
            remove_quietly(&part_path_in(&settings.dir, id)).await;
            remove_quietly(&file_path_in(&settings.dir, id)).await;
            return Err(record_failure(&ctx, id, failure).await);
        }
    };
    tracing::info!(
        export_id = id,
        user_id,
        rows = ready.rows,
        "data export ready"
    );

    // Step 2. Its failures leave the export as it is (ready): the job is retried for the
    // e-mail alone.
    let delivery = ctx
        .step("send_email", async || {
            send_email::send(&ctx, mail, &SendEmail::export_ready(user_id, id)).await
        })
        .await?;
    if let Delivery::NotSent { reason } = &delivery {
        tracing::info!(export_id = id, user_id, reason, "export e-mail not sent");
    }
    Ok(Outcome::Succeeded)
}

fn status_name(s: ExportStatus) -> &'static str {
    engine::state_machine::Lifecycle::as_str(s)
}

async fn remove_quietly(path: &Path) {
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove export file"),
    }
}

/// Records `failure` on the export: `failed` when it is permanent or this is the last
/// attempt, else the error text only (the job is retried). Returns the job's error.
async fn record_failure(ctx: &JobContext, id: i64, failure: Failure) -> JobError {
    let last = ctx.attempt >= ctx.max_attempts;
    let message = format!("export failed: {}", failure.message);
    let now = ctx.now_ms();
    let recorded = async {
        let mut conn = ctx.db().acquire().await?;
        if failure.permanent || last {
            for from in [ExportStatus::Running, ExportStatus::Pending] {
                match state::fail(&mut conn, id, from, &message, &Actor::job(ctx.job_id), now).await
                {
                    Ok(()) => break,
                    // Not in that state (or the row is gone with an erased account).
                    Err(TransitionError::Stale { .. }) => {}
                    Err(TransitionError::Database(e)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(export_id = id, error = %e, "cannot mark export failed")
                    }
                }
            }
        } else {
            sqlx::query("UPDATE data_exports SET error = $1, updated_at = $2 WHERE id = $3")
                .bind(format!("{message} (will retry)"))
                .bind(now)
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        Ok::<_, sqlx::Error>(())
    }
    .await;
    if let Err(e) = recorded {
        tracing::warn!(export_id = id, error = %e, "cannot record the export's failure");
    }
    tracing::warn!(export_id = id, permanent = failure.permanent, error = %failure.message, "data export attempt failed");
    if failure.permanent {
        JobError::Permanent(message)
    } else {
        JobError::Transient(message)
    }
}

async fn user_status(ctx: &JobContext, user_id: i64) -> Result<Option<UserStatus>, Failure> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(ctx.db())
        .await
        .map_err(|e| Failure::db(&e))?;
    Ok(status.as_deref().and_then(UserStatus::parse))
}

const ERASED: &str = "the account was erased; its data can no longer be exported";

/// The body of the `build_zip` step: writes the ZIP, then marks the export ready in `tx`
/// (the step's transaction, which also stores the result). `tx` is left untouched until
/// then: its first statement is the write that locks the user's row, so while the ZIP is
/// written it holds no lock and no snapshot (on SQLite a read first would pin a snapshot
/// that the progress writes then make stale), only a pooled connection.
async fn build_zip(
    ctx: &JobContext,
    settings: &ExportSettings,
    id: i64,
    user_id: i64,
    status: ExportStatus,
    tx: &mut DbConn,
) -> Result<ZipStep, Failure> {
    if status == ExportStatus::Ready {
        return Ok(ZipStep::AlreadyReady);
    }
    match user_status(ctx, user_id).await? {
        Some(UserStatus::Active | UserStatus::DeletionRequested) => {}
        Some(UserStatus::Erased) | None => return Err(Failure::permanent(ERASED)),
    }
    let expected = count_rows(ctx, user_id).await?;
    let now = ctx.now_ms();
    let mut conn = ctx.db().acquire().await.map_err(|e| Failure::db(&e))?;
    match status {
        ExportStatus::Pending => {
            state::start(
                &mut conn,
                id,
                expected.total(),
                &Actor::job(ctx.job_id),
                now,
            )
            .await
            .map_err(|e| Failure::transient(format!("starting the export: {e}")))?;
        }
        _ => {
            // A retry: start over, with a fresh total.
            sqlx::query(
                "UPDATE data_exports SET rows_total = $1, rows_done = 0, updated_at = $2 WHERE id = $3",
            )
            .bind(expected.total())
            .bind(now)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(|e| Failure::db(&e))?;
        }
    }
    drop(conn);

    let dir = settings.dir.clone();
    tokio::task::spawn_blocking(move || crate::exports::ensure_export_dir(&dir))
        .await
        .map_err(|e| Failure::transient(format!("preparing EXPORT_DIR: {e}")))?
        .map_err(|e| Failure::io("preparing EXPORT_DIR", &e))?;
    let part = part_path_in(&settings.dir, id);
    let file = file_path_in(&settings.dir, id);
    let generated_at = ctx.now_ms();
    let mut writer = Writer {
        ctx,
        export_id: id,
        user_id,
        page: settings.page_size.max(1),
        sink: ZipSink::create(part.clone(), zip_time(generated_at)),
        done: 0,
        counts: Counts::default(),
    };
    let written = async {
        writer.profile().await?;
        writer.tracks().await?;
        writer.playlists().await?;
        writer.messages().await?;
        writer.playback_history().await?;
        writer.purchases().await?;
        writer.payouts().await?;
        writer.payment_events().await?;
        writer.manifest(generated_at).await
    }
    .await;
    let Writer { sink, counts, .. } = writer;
    if let Err(failure) = written {
        // Wait for the writer thread before the caller removes the partial file.
        sink.abandon().await;
        return Err(failure);
    }
    let finished = sink
        .finish()
        .await
        .map_err(|e| Failure::io("writing the ZIP", &e))?;
    tokio::fs::rename(&part, &file)
        .await
        .map_err(|e| Failure::io("renaming the finished ZIP", &e))?;
    let ready = mark_ready(ctx, settings, id, user_id, &counts, &finished, tx).await?;
    Ok(ZipStep::Ready(ready))
}

/// In `tx`: checks the account is not erased (locking its row, so a concurrent erasure
/// waits for us or we see it) and marks the export ready. The caller commits.
async fn mark_ready(
    ctx: &JobContext,
    settings: &ExportSettings,
    id: i64,
    user_id: i64,
    counts: &Counts,
    finished: &zip_sink::Finished,
    tx: &mut DbConn,
) -> Result<ReadyZip, Failure> {
    let now = ctx.now_ms();
    let alive = sqlx::query(
        "UPDATE users SET updated_at = updated_at WHERE id = $1 AND status <> 'erased'",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await
    .map_err(|e| Failure::db(&e))?
    .rows_affected();
    if alive == 0 {
        return Err(Failure::permanent(ERASED));
    }
    let ready = ReadyFile {
        rows: counts.total(),
        size_bytes: i64::try_from(finished.size).unwrap_or(i64::MAX),
        sha256: finished.sha256.clone(),
        link_expires_at: now.saturating_add(duration_ms(settings.link_ttl)),
        expires_at: now.saturating_add(duration_ms(settings.retention)),
    };
    match state::mark_ready(tx, id, &ready, &Actor::job(ctx.job_id), now).await {
        Ok(()) => {}
        Err(TransitionError::Database(e)) => return Err(Failure::db(&e)),
        Err(e) => {
            return Err(Failure::permanent(format!(
                "export {id} changed meanwhile: {e}"
            )));
        }
    }
    Ok(ReadyZip {
        rows: ready.rows,
        size_bytes: ready.size_bytes,
        sha256: ready.sha256,
        ready_at: now,
        link_expires_at: ready.link_expires_at,
    })
}

async fn count_rows(ctx: &JobContext, user_id: i64) -> Result<Counts, Failure> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT (SELECT COUNT(*) FROM tracks WHERE owner_id = $1), \
                (SELECT COUNT(*) FROM playlists WHERE owner_id = $1), \
                (SELECT COUNT(*) FROM playlist_items i JOIN playlists p ON p.id = i.playlist_id \
                  WHERE p.owner_id = $1), \
                (SELECT COUNT(*) FROM messages WHERE sender_id = $1 OR recipient_id = $1), \
                (SELECT COUNT(*) FROM playback_history WHERE user_id = $1), \
                (SELECT COUNT(*) FROM orders WHERE buyer_id = $1), \
                (SELECT COUNT(*) FROM order_items i JOIN orders o ON o.id = i.order_id \
                  WHERE o.buyer_id = $1), \
                (SELECT COUNT(*) FROM seller_transfers WHERE seller_id = $1), \
                (SELECT COUNT(*) FROM webhook_events WHERE {OF_BUYER})"
    )))
    .bind(user_id)
    .fetch_one(ctx.db())
    .await
    .map_err(|e| Failure::db(&e))?;
    let get = |i: usize| row.try_get::<i64, _>(i).map_err(|e| Failure::db(&e));
    Ok(Counts {
        profile: 1,
        tracks: get(0)?,
        playlists: get(1)?,
        playlist_items: get(2)?,
        messages: get(3)?,
        playback_history: get(4)?,
        purchases: get(5)?,
        purchase_items: get(6)?,
        payouts: get(7)?,
        payment_events: get(8)?,
    })
}

fn zip_time(ms: Millis) -> zip::DateTime {
    let t = to_datetime(ms);
    zip::DateTime::from_date_and_time(
        u16::try_from(t.year()).unwrap_or(1980),
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
    )
    .unwrap_or_default()
}

/// Streams the categories into the sink, keeping count and reporting progress.
struct Writer<'a> {
    ctx: &'a JobContext,
    export_id: i64,
    user_id: i64,
    page: i64,
    sink: ZipSink,
    done: i64,
    counts: Counts,
}

#[derive(Serialize)]
struct UserOut {
    id: i64,
    email: Option<String>,
    username: Option<String>,
    display_name: Option<String>,
    status: String,
    keep_public_tracks: bool,
    deletion_requested_at: Option<Millis>,
    recovery_deadline: Option<Millis>,
    created_at: Millis,
    updated_at: Millis,
}

#[derive(Serialize)]
struct ProfileOut {
    bio: Option<String>,
    avatar_path: Option<String>,
    location: Option<String>,
    website: Option<String>,
    links: Option<serde_json::Value>,
    updated_at: Millis,
}

#[derive(Serialize)]
struct PayoutAccountOut {
    stripe_account_id: String,
    created_at: Millis,
    updated_at: Millis,
}

#[derive(Serialize)]
struct ProfileFile {
    account: UserOut,
    profile: Option<ProfileOut>,
    /// The seller's Stripe connected account, where payouts go.
    payout_account: Option<PayoutAccountOut>,
}

#[derive(Serialize)]
struct PurchaseItemOut {
    id: i64,
    seller_id: i64,
    product_ref: Option<String>,
    amount: i64,
    currency: String,
}

#[derive(Serialize)]
struct RefundOut {
    id: i64,
    stripe_object_id: String,
    amount: i64,
    kind: String,
    created_at: Millis,
}

#[derive(Serialize)]
struct PurchaseOut {
    id: i64,
    currency: String,
    amount_total: i64,
    stripe_payment_intent_id: Option<String>,
    stripe_charge_id: Option<String>,
    paid_at: Option<Millis>,
    refunded_at: Option<Millis>,
    created_at: Millis,
    items: Vec<PurchaseItemOut>,
    refunds: Vec<RefundOut>,
}

#[derive(Serialize)]
struct PayoutOut {
    id: i64,
    order_id: i64,
    order_item_id: i64,
    amount: i64,
    currency: String,
    status: String,
    stripe_transfer_id: Option<String>,
    stripe_reversal_id: Option<String>,
    created_at: Millis,
    updated_at: Millis,
}

#[derive(Serialize)]
struct PaymentEventOut {
    id: String,
    #[serde(rename = "type")]
    type_: String,
    order_id: Option<i64>,
    outcome: String,
    received_at: Millis,
    /// As stored (JSON), or the text when it is not JSON.
    payload: serde_json::Value,
}

#[derive(Serialize)]
struct TrackOut {
    id: i64,
    title: Option<String>,
    artist_name: Option<String>,
    status: String,
    is_public: bool,
    file_path: String,
    created_at: Millis,
    updated_at: Millis,
}

#[derive(Serialize)]
struct PlaylistHead {
    id: i64,
    name: String,
    description: Option<String>,
    is_public: bool,
    created_at: Millis,
    updated_at: Millis,
}

#[derive(Serialize)]
struct ItemOut {
    id: i64,
    track_id: i64,
    position: i64,
    added_at: Millis,
}

#[derive(Serialize)]
struct MessageOut {
    id: i64,
    direction: &'static str,
    sender_id: i64,
    recipient_id: i64,
    body: String,
    created_at: Millis,
    read_at: Option<Millis>,
}

#[derive(Serialize)]
struct PlayOut {
    id: i64,
    track_id: Option<i64>,
    played_at: Millis,
    duration_ms: i64,
    client: Option<String>,
}

#[derive(Serialize)]
struct Manifest {
    schema_version: u32,
    export_id: i64,
    user_id: i64,
    generated_at: Millis,
    generated_at_utc: String,
    times: &'static str,
    counts: Counts,
    files: Vec<ManifestFile>,
}

#[derive(Serialize)]
struct ManifestFile {
    name: &'static str,
    format: &'static str,
    rows: i64,
}

fn line(buf: &mut Vec<u8>, value: &impl Serialize) -> Result<(), Failure> {
    serde_json::to_writer(&mut *buf, value)
        .map_err(|e| Failure::permanent(format!("encoding JSON: {e}")))?;
    buf.push(b'\n');
    Ok(())
}

fn db<T>(r: Result<T, sqlx::Error>) -> Result<T, Failure> {
    r.map_err(|e| Failure::db(&e))
}

impl Writer<'_> {
    async fn start(&mut self, name: &'static str) -> Result<(), Failure> {
        self.sink
            .start_file(name)
            .await
            .map_err(|e| Failure::io("writing the ZIP", &e))
    }

    async fn write(&mut self, bytes: Vec<u8>) -> Result<(), Failure> {
        self.sink
            .write(bytes)
            .await
            .map_err(|e| Failure::io("writing the ZIP", &e))
    }

    /// Counts `rows` more and records progress on the export row. The row vanishing means
    /// the account was erased meanwhile: the export stops.
    async fn progress(&mut self, rows: i64) -> Result<(), Failure> {
        self.done += rows;
        let n = db(sqlx::query(
            "UPDATE data_exports SET rows_done = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(self.done)
        .bind(self.ctx.now_ms())
        .bind(self.export_id)
        .execute(self.ctx.db())
        .await)?
        .rows_affected();
        if n == 0 {
            return Err(Failure::permanent(ERASED));
        }
        Ok(())
    }

    async fn page(&self, sql: &'static str, after: i64) -> Result<Vec<AnyRow>, Failure> {
        db(sqlx::query(sql)
            .bind(self.user_id)
            .bind(after)
            .bind(self.page)
            .fetch_all(self.ctx.db())
            .await)
    }

    async fn profile(&mut self) -> Result<(), Failure> {
        let u = db(sqlx::query(
            "SELECT id, email, username, display_name, status, keep_public_tracks, \
             deletion_requested_at, recovery_deadline, created_at, updated_at FROM users WHERE id = $1",
        )
        .bind(self.user_id)
        .fetch_optional(self.ctx.db())
        .await)?
        .ok_or_else(|| Failure::permanent(ERASED))?;
        let account = db((|| {
            Ok(UserOut {
                id: u.try_get(0)?,
                email: u.try_get(1)?,
                username: u.try_get(2)?,
                display_name: u.try_get(3)?,
                status: u.try_get(4)?,
                keep_public_tracks: u.try_get::<i64, _>(5)? != 0,
                deletion_requested_at: u.try_get(6)?,
                recovery_deadline: u.try_get(7)?,
                created_at: u.try_get(8)?,
                updated_at: u.try_get(9)?,
            })
        })())?;
        let p = db(sqlx::query(
            "SELECT bio, avatar_path, location, website, links, updated_at \
             FROM user_profiles WHERE user_id = $1",
        )
        .bind(self.user_id)
        .fetch_optional(self.ctx.db())
        .await)?;
        let profile = match p {
            None => None,
            Some(p) => Some(db((|| {
                let links: Option<String> = p.try_get(4)?;
                Ok(ProfileOut {
                    bio: p.try_get(0)?,
                    avatar_path: p.try_get(1)?,
                    location: p.try_get(2)?,
                    website: p.try_get(3)?,
                    links: links
                        .map(|l| serde_json::from_str(&l).unwrap_or(serde_json::Value::String(l))),
                    updated_at: p.try_get(5)?,
                })
            })())?),
        };
        let a = db(sqlx::query(
            "SELECT stripe_account_id, created_at, updated_at FROM seller_accounts WHERE seller_id = $1",
        )
        .bind(self.user_id)
        .fetch_optional(self.ctx.db())
        .await)?;
        let payout_account = match a {
            None => None,
            Some(a) => Some(db((|| {
                Ok(PayoutAccountOut {
                    stripe_account_id: a.try_get(0)?,
                    created_at: a.try_get(1)?,
                    updated_at: a.try_get(2)?,
                })
            })())?),
        };
        self.start("profile.json").await?;
        let bytes = serde_json::to_vec_pretty(&ProfileFile {
            account,
            profile,
            payout_account,
        })
        .map_err(|e| Failure::permanent(format!("encoding JSON: {e}")))?;
        self.write(bytes).await?;
        self.counts.profile = 1;
        self.progress(1).await
    }

    /// Writes the NDJSON file `name` from `sql`, the user's rows a page at a time by
    /// keyset (`$1` the user, `$2` the last id written, `$3` the page size), each row made
    /// into `(id, line)` by `out`, with progress recorded after each page; returns how
    /// many rows it wrote. `line_bytes` sizes the page's buffer.
    async fn ndjson<T: Serialize>(
        &mut self,
        name: &'static str,
        sql: &'static str,
        line_bytes: usize,
        out: impl Fn(&AnyRow) -> Result<(i64, T), sqlx::Error>,
    ) -> Result<i64, Failure> {
        self.start(name).await?;
        let (mut after, mut written) = (0i64, 0i64);
        loop {
            let rows = self.page(sql, after).await?;
            if rows.is_empty() {
                return Ok(written);
            }
            let mut buf = Vec::with_capacity(rows.len() * line_bytes);
            for r in &rows {
                let (id, value) = db(out(r))?;
                after = id;
                line(&mut buf, &value)?;
            }
            let n = rows.len() as i64;
            self.write(buf).await?;
            written += n;
            self.progress(n).await?;
        }
    }

    async fn tracks(&mut self) -> Result<(), Failure> {
        let rows = self
            .ndjson(
                "tracks.ndjson",
                "SELECT id, title, artist_name, status, is_public, file_path, created_at, updated_at \
                 FROM tracks WHERE owner_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                200,
                |r| {
            let t = TrackOut {
                id: r.try_get(0)?,
                title: r.try_get(1)?,
                artist_name: r.try_get(2)?,
                status: r.try_get(3)?,
                is_public: r.try_get::<i64, _>(4)? != 0,
                file_path: r.try_get(5)?,
                created_at: r.try_get(6)?,
                updated_at: r.try_get(7)?,
            };
                    Ok((t.id, t))
                },
            )
            .await?;
        self.counts.tracks += rows;
        Ok(())
    }

    async fn playlists(&mut self) -> Result<(), Failure> {
        self.start("playlists.ndjson").await?;
        let mut after = 0i64;
        loop {
            let rows = self
                .page(
                    "SELECT id, name, description, is_public, created_at, updated_at \
                     FROM playlists WHERE owner_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                    after,
                )
                .await?;
            if rows.is_empty() {
                return Ok(());
            }
            for r in &rows {
                let head = db((|| {
                    Ok(PlaylistHead {
                        id: r.try_get(0)?,
                        name: r.try_get(1)?,
                        description: r.try_get(2)?,
                        is_public: r.try_get::<i64, _>(3)? != 0,
                        created_at: r.try_get(4)?,
                        updated_at: r.try_get(5)?,
                    })
                })())?;
                after = head.id;
                self.playlist(&head).await?;
            }
        }
    }

    /// One playlist line: its fields, then `"items":[…]` streamed page by page.
    async fn playlist(&mut self, head: &PlaylistHead) -> Result<(), Failure> {
        let mut open = serde_json::to_vec(head)
            .map_err(|e| Failure::permanent(format!("encoding JSON: {e}")))?;
        open.pop(); // the closing brace: the items follow
        open.extend_from_slice(br#","items":["#);
        self.write(open).await?;
        let (mut after, mut first, mut items) = (0i64, true, 0i64);
        loop {
            let rows = db(sqlx::query(
                "SELECT id, track_id, position, added_at FROM playlist_items \
                 WHERE playlist_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(head.id)
            .bind(after)
            .bind(self.page)
            .fetch_all(self.ctx.db())
            .await)?;
            if rows.is_empty() {
                break;
            }
            let mut buf = Vec::with_capacity(rows.len() * 80);
            for r in &rows {
                let item = db((|| {
                    Ok(ItemOut {
                        id: r.try_get(0)?,
                        track_id: r.try_get(1)?,
                        position: r.try_get(2)?,
                        added_at: r.try_get(3)?,
                    })
                })())?;
                after = item.id;
                if !first {
                    buf.push(b',');
                }
                first = false;
                serde_json::to_writer(&mut buf, &item)
                    .map_err(|e| Failure::permanent(format!("encoding JSON: {e}")))?;
            }
            let n = rows.len() as i64;
            items += n;
            self.write(buf).await?;
            self.progress(n).await?;
        }
        self.write(b"]}\n".to_vec()).await?;
        self.counts.playlists += 1;
        self.counts.playlist_items += items;
        self.progress(1).await
    }

    async fn messages(&mut self) -> Result<(), Failure> {
        let user_id = self.user_id;
        let rows = self
            .ndjson(
                "messages.ndjson",
                // Each side is a bounded range scan of its own index; a plain
                // `sender_id = $1 OR recipient_id = $1` makes SQLite sort every remaining
                // row for each page (time and memory growing with the mailbox).
                "SELECT id, sender_id, recipient_id, body, created_at, read_at FROM messages \
                 WHERE id IN ( \
                   SELECT id FROM (SELECT id FROM messages WHERE sender_id = $1 AND id > $2 \
                                   ORDER BY id LIMIT $3) AS sent \
                   UNION ALL \
                   SELECT id FROM (SELECT id FROM messages WHERE recipient_id = $1 AND id > $2 \
                                   ORDER BY id LIMIT $3) AS received) \
                 ORDER BY id LIMIT $3",
                200,
                |r| {
                    let sender_id: i64 = r.try_get(1)?;
                    let m = MessageOut {
                        id: r.try_get(0)?,
                        direction: if sender_id == user_id {
                            "sent"
                        } else {
                            "received"
                        },
                        sender_id,
                        recipient_id: r.try_get(2)?,
                        body: r.try_get(3)?,
                        created_at: r.try_get(4)?,
                        read_at: r.try_get(5)?,
                    };
                    Ok((m.id, m))
                },
            )
            .await?;
        self.counts.messages += rows;
        Ok(())
    }

    async fn playback_history(&mut self) -> Result<(), Failure> {
        let rows = self
            .ndjson(
                "playback_history.ndjson",
                "SELECT id, track_id, played_at, duration_ms, client FROM playback_history \
                 WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                100,
                |r| {
                    let p = PlayOut {
                        id: r.try_get(0)?,
                        track_id: r.try_get(1)?,
                        played_at: r.try_get(2)?,
                        duration_ms: r.try_get(3)?,
                        client: r.try_get(4)?,
                    };
                    Ok((p.id, p))
                },
            )
            .await?;
        self.counts.playback_history += rows;
        Ok(())
    }

    /// The orders the user bought, each with its items and the refunds recorded for it.
    /// An order has a handful of items and refunds: they are read per order.
    async fn purchases(&mut self) -> Result<(), Failure> {
        self.start("purchases.ndjson").await?;
        let mut after = 0i64;
        loop {
            let rows = self
                .page(
                    "SELECT id, currency, amount_total, stripe_payment_intent_id, stripe_charge_id, \
                     paid_at, refunded_at, created_at FROM orders \
                     WHERE buyer_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                    after,
                )
                .await?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut buf = Vec::with_capacity(rows.len() * 300);
            let mut items_written = 0i64;
            for r in &rows {
                let mut order = db((|| {
                    Ok(PurchaseOut {
                        id: r.try_get(0)?,
                        currency: r.try_get(1)?,
                        amount_total: r.try_get(2)?,
                        stripe_payment_intent_id: r.try_get(3)?,
                        stripe_charge_id: r.try_get(4)?,
                        paid_at: r.try_get(5)?,
                        refunded_at: r.try_get(6)?,
                        created_at: r.try_get(7)?,
                        items: Vec::new(),
                        refunds: Vec::new(),
                    })
                })())?;
                after = order.id;
                let items: Vec<(i64, i64, Option<String>, i64, String)> = db(sqlx::query_as(
                    "SELECT id, seller_id, product_ref, amount, currency FROM order_items \
                     WHERE order_id = $1 ORDER BY id",
                )
                .bind(order.id)
                .fetch_all(self.ctx.db())
                .await)?;
                order.items = items
                    .into_iter()
                    .map(
                        |(id, seller_id, product_ref, amount, currency)| PurchaseItemOut {
                            id,
                            seller_id,
                            product_ref,
                            amount,
                            currency,
                        },
                    )
                    .collect();
                let refunds: Vec<(i64, String, i64, String, i64)> = db(sqlx::query_as(
                    "SELECT id, stripe_object_id, amount, kind, created_at FROM payment_refunds \
                     WHERE order_id = $1 ORDER BY id",
                )
                .bind(order.id)
                .fetch_all(self.ctx.db())
                .await)?;
                order.refunds = refunds
                    .into_iter()
                    .map(
                        |(id, stripe_object_id, amount, kind, created_at)| RefundOut {
                            id,
                            stripe_object_id,
                            amount,
                            kind,
                            created_at,
                        },
                    )
                    .collect();
                items_written += order.items.len() as i64;
                line(&mut buf, &order)?;
            }
            let n = rows.len() as i64;
            self.write(buf).await?;
            self.counts.purchases += n;
            self.counts.purchase_items += items_written;
            self.progress(n + items_written).await?;
        }
    }

    /// The payouts to the user as a seller.
    async fn payouts(&mut self) -> Result<(), Failure> {
        let rows = self
            .ndjson(
                "payouts.ndjson",
                "SELECT id, order_id, order_item_id, amount, currency, status, \
                 stripe_transfer_id, stripe_reversal_id, created_at, updated_at \
                 FROM seller_transfers WHERE seller_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                200,
                |r| {
                    let p = PayoutOut {
                        id: r.try_get(0)?,
                        order_id: r.try_get(1)?,
                        order_item_id: r.try_get(2)?,
                        amount: r.try_get(3)?,
                        currency: r.try_get(4)?,
                        status: r.try_get(5)?,
                        stripe_transfer_id: r.try_get(6)?,
                        stripe_reversal_id: r.try_get(7)?,
                        created_at: r.try_get(8)?,
                        updated_at: r.try_get(9)?,
                    };
                    Ok((p.id, p))
                },
            )
            .await?;
        self.counts.payouts += rows;
        Ok(())
    }

    /// The stored Stripe events about the user's payments ([`OF_BUYER`]), by event id.
    async fn payment_events(&mut self) -> Result<(), Failure> {
        self.start("payment_events.ndjson").await?;
        let sql = format!(
            "SELECT id, type, order_id, outcome, received_at, payload FROM webhook_events \
             WHERE {OF_BUYER} AND id > $2 ORDER BY id LIMIT $3"
        );
        let mut after = String::new();
        loop {
            let rows = db(sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(self.user_id)
                .bind(&after)
                .bind(self.page)
                .fetch_all(self.ctx.db())
                .await)?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut buf = Vec::with_capacity(rows.len() * 500);
            for r in &rows {
                let e = db((|| {
                    let payload: String = r.try_get(5)?;
                    Ok(PaymentEventOut {
                        id: r.try_get(0)?,
                        type_: r.try_get(1)?,
                        order_id: r.try_get(2)?,
                        outcome: r.try_get(3)?,
                        received_at: r.try_get(4)?,
                        payload: serde_json::from_str(&payload)
                            .unwrap_or(serde_json::Value::String(payload)),
                    })
                })())?;
                after.clone_from(&e.id);
                line(&mut buf, &e)?;
            }
            let n = rows.len() as i64;
            self.write(buf).await?;
            self.counts.payment_events += n;
            self.progress(n).await?;
        }
    }

    async fn manifest(&mut self, generated_at: Millis) -> Result<(), Failure> {
        let c = &self.counts;
        let manifest = Manifest {
            schema_version: SCHEMA_VERSION,
            export_id: self.export_id,
            user_id: self.user_id,
            generated_at,
            generated_at_utc: to_datetime(generated_at).to_rfc3339(),
            times: "every *_at field is milliseconds since the Unix epoch, UTC",
            counts: c.clone(),
            files: vec![
                ManifestFile {
                    name: "profile.json",
                    format: "json",
                    rows: c.profile,
                },
                ManifestFile {
                    name: "tracks.ndjson",
                    format: "ndjson",
                    rows: c.tracks,
                },
                ManifestFile {
                    name: "playlists.ndjson",
                    format: "ndjson",
                    rows: c.playlists,
                },
                ManifestFile {
                    name: "messages.ndjson",
                    format: "ndjson",
                    rows: c.messages,
                },
                ManifestFile {
                    name: "playback_history.ndjson",
                    format: "ndjson",
                    rows: c.playback_history,
                },
                ManifestFile {
                    name: "purchases.ndjson",
                    format: "ndjson",
                    rows: c.purchases,
                },
                ManifestFile {
                    name: "payouts.ndjson",
                    format: "ndjson",
                    rows: c.payouts,
                },
                ManifestFile {
                    name: "payment_events.ndjson",
                    format: "ndjson",
                    rows: c.payment_events,
                },
            ],
        };
        self.start("manifest.json").await?;
        let bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Failure::permanent(format!("encoding JSON: {e}")))?;
        self.write(bytes).await
    }
}
