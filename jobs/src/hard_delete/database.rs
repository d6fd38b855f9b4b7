//! The database step of an erasure: one transaction — the step's own
//! ([`JobContext::step_tx`]), which also stores the step's result after checking that the
//! attempt still holds its job ([`JobContext::fence`]) — that clears the account's identity
//! and profile, deletes messages (sent and received), plays, playlists, private tracks and,
//! unless the user keeps them, public tracks; kept public tracks lose their owner and are
//! credited to the anonymous artist; the payloads of the Stripe events about the user's
//! payments are erased; the user's e-mail address is scrubbed from job args and error
//! texts; the account goes `deletion_requested → erased`. The receipt records, in the same
//! transaction, the counts, the ids of what was deleted (the OpenSearch step needs them),
//! the files those rows named (the files step removes them: [`super::files`]) and the
//! step's time.
//!
//! All of it commits with the step's result or not at all: a failure before the commit
//! leaves nothing behind and the retry does it all again; after the commit the step never
//! runs again (a later job of the same user finds it done on the receipt).

use engine::state_machine::{Actor, TransitionError};
use engine::{DbConn, JobContext, JobError, Millis};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::ErasureSettings;
use super::files::{FileList, TrackFiles};
use super::receipt::{
    self, Collected, CollectedColumn, DatabaseReport, KeptRecords, Receipt, Step, StepStatus,
};
use crate::payments::event::{OF_BUYER, PAYLOAD_NOT_ERASED, erased_payload};
use crate::users::state as user_state;

/// The database step's result: ids and counts only (a job's stored steps are served by the
/// API; the paths of the files to remove stay on the receipt, see [`super::files`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DatabaseDone {
    /// When the ids were collected (the receipt's `collected_at`; the step's time since the
    /// ids are read in its transaction).
    pub(crate) collected_at: Millis,
    /// When the step was done (`database_at`).
    pub(crate) at: Millis,
    /// The counts (its file counts are the files step's).
    pub(crate) report: DatabaseReport,
    /// What the erasure keeps on purpose.
    pub(crate) kept: KeptRecords,
    /// The ids of what was deleted or anonymised.
    pub(crate) collected: Collected,
}

impl DatabaseDone {
    /// The step as a receipt whose `database_at` is set records it.
    fn from_receipt(r: Receipt, at: Millis) -> Self {
        Self {
            collected_at: r.collected_at.unwrap_or(at),
            at,
            report: r.report.database,
            kept: r.report.kept,
            collected: r.collected.map(|c| c.ids).unwrap_or_default(),
        }
    }
}

async fn exec(conn: &mut DbConn, sql: &'static str, user_id: i64) -> Result<u64, JobError> {
    Ok(sqlx::query(sql)
        .bind(user_id)
        .execute(&mut *conn)
        .await?
        .rows_affected())
}

/// Replaces the stored payload of every Stripe event about the user's payments
/// ([`OF_BUYER`]); returns how many were erased now (a payload erased before, by an
/// earlier attempt or by the retention, is not counted again). Payloads are stored without
/// personal fields since migration 0015; older ones may still hold the buyer's e-mail,
/// name and address.
async fn erase_webhook_payloads(conn: &mut DbConn, user_id: i64) -> Result<u64, JobError> {
    let sql =
        format!("UPDATE webhook_events SET payload = $2 WHERE {PAYLOAD_NOT_ERASED} AND {OF_BUYER}");
    Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .bind(erased_payload("hard_delete"))
        .execute(&mut *conn)
        .await?
        .rows_affected())
}

/// Counts the records the erasure keeps for accounting (see [`receipt::KeptRecords`]).
async fn count_kept(conn: &mut DbConn, user_id: i64) -> Result<KeptRecords, JobError> {
    let sql = format!(
        "SELECT (SELECT COUNT(*) FROM orders WHERE buyer_id = $1), \
                (SELECT COUNT(*) FROM order_items i JOIN orders o ON o.id = i.order_id \
                  WHERE o.buyer_id = $1), \
                (SELECT COUNT(*) FROM payment_refunds r JOIN orders o ON o.id = r.order_id \
                  WHERE o.buyer_id = $1), \
                (SELECT COUNT(*) FROM seller_transfers WHERE seller_id = $1), \
                (SELECT COUNT(*) FROM seller_accounts WHERE seller_id = $1), \
                (SELECT COUNT(*) FROM webhook_events WHERE {OF_BUYER})"
    );
    let (orders, order_items, payment_refunds, seller_transfers, seller_accounts, webhook_events): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_one(&mut *conn)
        .await?;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(KeptRecords {
        reason: receipt::KEPT_REASON.to_owned(),
        orders: n(orders),
        order_items: n(order_items),
        payment_refunds: n(payment_refunds),
        seller_transfers: n(seller_transfers),
        seller_accounts: n(seller_accounts),
        webhook_events: n(webhook_events),
    })
}

/// What replaces the user's e-mail address in job texts.
pub const SCRUBBED: &str = "[erased]";

/// Replaces the user's e-mail address in the engine's job texts; returns (`jobs` rows,
/// `job_attempts` rows) changed.
///
/// Which rows: every job and every attempt, of any kind and state, whose text contains
/// the address (its stored form, or lower-cased as mail servers may echo it): `jobs.args`,
/// `jobs.last_error`, `jobs.note` and `job_attempts.error`. An SMTP refusal quotes the
/// recipient (`550 5.1.1 <ana@…>: mailbox unavailable`), and args that carry an `email`
/// field carry it verbatim. An address names this user only, so matching it anywhere is
/// exact; only the address is replaced, so the rest of an error (the reply code, the
/// cause) stays useful to an operator, and args stay valid JSON (an address holds no
/// character JSON escapes).
///
/// What stays: the user's id in args (`send_email`'s `to.user_id`, `hard_delete`'s
/// `user_id`, which this very job still needs to resume its remaining steps): an id is no
/// longer linked to a person once the account is erased, and it is kept in the accounting
/// rows too (`orders.buyer_id`). Our own kinds' args hold ids only (a `send_email` reads
/// the address when it runs, and finds none after the erasure). Finished jobs go
/// altogether after `RETENTION_SUCCEEDED` / `RETENTION_FAILED` (`prune_jobs`).
async fn scrub_job_texts(conn: &mut DbConn, email: &str) -> Result<(u64, u64), JobError> {
    let mut forms = vec![email.to_owned()];
    if email.to_lowercase() != email {
        forms.push(email.to_lowercase());
    }
    let (mut jobs, mut attempts) = (0, 0);
    for form in &forms {
        // `REPLACE(x, $1, '') <> x` is "x contains $1" in both dialects, without LIKE's
        // wildcards (`_` is common in addresses); NULL texts never match.
        jobs += sqlx::query(
            "UPDATE jobs SET args = REPLACE(args, $1, $2), \
             last_error = REPLACE(last_error, $1, $2), note = REPLACE(note, $1, $2) \
             WHERE REPLACE(args, $1, '') <> args OR REPLACE(last_error, $1, '') <> last_error \
             OR REPLACE(note, $1, '') <> note",
        )
        .bind(form)
        .bind(SCRUBBED)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        attempts += sqlx::query(
            "UPDATE job_attempts SET error = REPLACE(error, $1, $2) \
             WHERE REPLACE(error, $1, '') <> error",
        )
        .bind(form)
        .bind(SCRUBBED)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok((jobs, attempts))
}

/// The ids in the first column of `rows`, sorted.
fn ids_of(rows: &[sqlx::any::AnyRow]) -> Result<Vec<i64>, sqlx::Error> {
    let mut ids = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<Vec<i64>, _>>()?;
    ids.sort_unstable();
    Ok(ids)
}

/// Deletes the user's private (`public` false) or public tracks; returns their files.
async fn delete_tracks(
    tx: &mut DbConn,
    user_id: i64,
    public: bool,
) -> Result<Vec<TrackFiles>, JobError> {
    let rows = sqlx::query(
        "DELETE FROM tracks WHERE owner_id = $1 AND is_public = $2 \
         RETURNING id, file_path, thumbnails, cover_path",
    )
    .bind(user_id)
    .bind(i64::from(public))
    .fetch_all(&mut *tx)
    .await?;
    let mut tracks = rows
        .iter()
        .map(|r| {
            let thumbnails: Option<String> = r.try_get(2)?;
            Ok(TrackFiles::new(
                r.try_get(0)?,
                r.try_get(1)?,
                thumbnails.as_deref(),
                r.try_get(3)?,
            ))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    tracks.sort_unstable_by_key(|t| t.id);
    Ok(tracks)
}

/// The database step, in the step's transaction `tx`. A receipt whose `database_at` is set
/// (an earlier job of this user did it) gives back what it records.
pub(crate) async fn erase(
    tx: &mut DbConn,
    ctx: &JobContext,
    settings: &ErasureSettings,
    user_id: i64,
) -> Result<DatabaseDone, JobError> {
    // Read on other connections, before the transaction's first statement: that one is the
    // write that locks the account row (on SQLite, a transaction that reads first may be
    // refused its write). The e-mail address is read before the transaction clears it:
    // job texts quoting it are scrubbed below.
    let receipt = receipt::load_open(ctx, user_id).await?;
    if let Some(at) = receipt.database_at {
        return Ok(DatabaseDone::from_receipt(receipt, at));
    }
    let email: Option<String> = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(ctx.db())
        .await?
        .flatten();

    let now = ctx.now_ms();
    // The account row first: it locks the row, so a concurrent export finishing for this
    // user waits for this transaction (and then sees the account erased).
    let mut d = DatabaseReport {
        users_anonymised: exec(
            tx,
            "UPDATE users SET email = NULL, username = NULL, display_name = NULL WHERE id = $1",
            user_id,
        )
        .await?,
        ..DatabaseReport::default()
    };
    let keep = sqlx::query_scalar::<_, i64>("SELECT keep_public_tracks FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?
        != 0;
    let avatar: Option<String> =
        sqlx::query_scalar("SELECT avatar_path FROM user_profiles WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
    d.profiles_anonymised = sqlx::query(
        "UPDATE user_profiles SET bio = NULL, avatar_path = NULL, location = NULL, \
         website = NULL, links = NULL, updated_at = $2 WHERE user_id = $1",
    )
    .bind(user_id)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    d.messages_deleted = exec(
        tx,
        "DELETE FROM messages WHERE sender_id = $1 OR recipient_id = $1",
        user_id,
    )
    .await?;
    d.webhook_payloads_erased = erase_webhook_payloads(tx, user_id).await?;
    let kept = count_kept(tx, user_id).await?;
    if let Some(email) = email.as_deref() {
        let (jobs, attempts) = scrub_job_texts(tx, email).await?;
        d.job_texts_scrubbed = jobs;
        d.job_attempt_errors_scrubbed = attempts;
    }
    d.playback_history_deleted = exec(
        tx,
        "DELETE FROM playback_history WHERE user_id = $1",
        user_id,
    )
    .await?;
    d.playlist_items_deleted = exec(
        tx,
        "DELETE FROM playlist_items WHERE playlist_id IN (SELECT id FROM playlists WHERE owner_id = $1)",
        user_id,
    )
    .await?;
    let playlist_ids = ids_of(
        &sqlx::query("DELETE FROM playlists WHERE owner_id = $1 RETURNING id")
            .bind(user_id)
            .fetch_all(&mut *tx)
            .await?,
    )?;
    d.playlists_deleted = playlist_ids.len() as u64;
    if keep {
        d.other_plays_detached = exec(
            tx,
            "UPDATE playback_history SET track_id = NULL WHERE track_id IN \
             (SELECT id FROM tracks WHERE owner_id = $1 AND is_public = 0)",
            user_id,
        )
        .await?;
        d.other_playlist_items_deleted = exec(
            tx,
            "DELETE FROM playlist_items WHERE track_id IN \
             (SELECT id FROM tracks WHERE owner_id = $1 AND is_public = 0)",
            user_id,
        )
        .await?;
    } else {
        d.other_plays_detached = exec(
            tx,
            "UPDATE playback_history SET track_id = NULL WHERE track_id IN \
             (SELECT id FROM tracks WHERE owner_id = $1)",
            user_id,
        )
        .await?;
        d.other_playlist_items_deleted = exec(
            tx,
            "DELETE FROM playlist_items WHERE track_id IN (SELECT id FROM tracks WHERE owner_id = $1)",
            user_id,
        )
        .await?;
    }
    let mut files = FileList {
        tracks: delete_tracks(tx, user_id, false).await?,
        avatar,
    };
    d.private_tracks_deleted = files.tracks.len() as u64;
    let mut keep_track_ids = Vec::new();
    if keep {
        keep_track_ids = ids_of(
            &sqlx::query(
                "UPDATE tracks SET owner_id = NULL, artist_name = $2, updated_at = $3 \
                 WHERE owner_id = $1 AND is_public = 1 RETURNING id",
            )
            .bind(user_id)
            .bind(&settings.anonymous_artist)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?,
        )?;
        d.public_tracks_anonymised = keep_track_ids.len() as u64;
    } else {
        let public = delete_tracks(tx, user_id, true).await?;
        d.public_tracks_deleted = public.len() as u64;
        files.tracks.extend(public);
    }
    let export_ids = ids_of(
        &sqlx::query("DELETE FROM data_exports WHERE user_id = $1 RETURNING id")
            .bind(user_id)
            .fetch_all(&mut *tx)
            .await?,
    )?;
    d.exports_deleted = export_ids.len() as u64;
    match user_state::mark_erased(tx, user_id, &Actor::job(ctx.job_id), now).await {
        Ok(()) => {}
        Err(TransitionError::Database(e)) => return Err(e.into()),
        Err(e) => {
            return Err(JobError::transient(format!(
                "the account changed during the erasure: {e}"
            )));
        }
    }
    d.status = StepStatus::Done;

    let mut delete_track_ids: Vec<i64> = files.tracks.iter().map(|t| t.id).collect();
    delete_track_ids.sort_unstable();
    let collected = Collected {
        delete_track_ids,
        keep_track_ids,
        playlist_ids,
        export_ids,
        keep_public_tracks: keep,
    };
    let mut report = receipt.report;
    report.database = d.clone();
    report.kept = kept.clone();
    let column = CollectedColumn {
        ids: collected.clone(),
        files_to_remove: Some(files),
    };
    receipt::save(
        tx,
        user_id,
        &report,
        Some(&column),
        &[Step::Collected, Step::Database],
        now,
    )
    .await?;
    tracing::info!(user_id, "erasure: database step done");
    Ok(DatabaseDone {
        collected_at: now,
        at: now,
        report: d,
        kept,
        collected,
    })
}
