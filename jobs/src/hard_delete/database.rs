//! The database part of an erasure (steps 1 and 2).
//!
//! Step 1 reads the ids of the user's tracks, playlists and exports before anything
//! changes. Step 2 first removes the files those rows point at (audio, cover and
//! thumbnails of deleted tracks, the avatar, export ZIPs) and the user's outbox e-mails
//! (see [`super::files`]: never outside their root) — then, in one transaction: clears the account's identity and profile, deletes
//! messages (sent and received), plays, playlists, private tracks and, unless the user
//! keeps them, public tracks; kept public tracks lose their owner and are credited to the
//! anonymous artist; the payloads of the Stripe events about the user's payments are
//! erased; the user's e-mail address is scrubbed from job args and error texts; the
//! account goes `deletion_requested → erased`; the receipt records
//! the counts and the step's time. A retry after a failure before the commit does it all
//! again; after the commit, the step is not run again.

use engine::state_machine::{Actor, TransitionError};
use engine::{DbConn, JobContext, JobError};

use super::ErasureSettings;
use super::files::{remove_export_files, remove_files, remove_outbox};
use super::receipt::{self, Collected, KeptRecords, Report, Step};
use crate::payments::event::{OF_BUYER, PAYLOAD_NOT_ERASED, erased_payload};
use crate::users::state as user_state;

/// Step 1: the ids of what the erasure removes or anonymises, read before anything changes.
pub(crate) async fn collect(
    conn: &mut DbConn,
    user_id: i64,
    keep_public_tracks: bool,
) -> Result<Collected, sqlx::Error> {
    let tracks: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, is_public FROM tracks WHERE owner_id = $1 ORDER BY id")
            .bind(user_id)
            .fetch_all(&mut *conn)
            .await?;
    let (keep, delete): (Vec<_>, Vec<_>) = tracks
        .into_iter()
        .partition(|(_, public)| keep_public_tracks && *public != 0);
    let playlist_ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM playlists WHERE owner_id = $1 ORDER BY id")
            .bind(user_id)
            .fetch_all(&mut *conn)
            .await?;
    let export_ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM data_exports WHERE user_id = $1 ORDER BY id")
            .bind(user_id)
            .fetch_all(&mut *conn)
            .await?;
    Ok(Collected {
        delete_track_ids: delete.into_iter().map(|(id, _)| id).collect(),
        keep_track_ids: keep.into_iter().map(|(id, _)| id).collect(),
        playlist_ids,
        export_ids,
        keep_public_tracks,
    })
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

/// Step 2. `collected` is extended with anything created since step 1 and saved.
pub(crate) async fn erase(
    ctx: &JobContext,
    settings: &ErasureSettings,
    user_id: i64,
    collected: &mut Collected,
    report: &mut Report,
) -> Result<(), JobError> {
    let keep = collected.keep_public_tracks;
    let mut conn = ctx.db().acquire().await?;
    let again = collect(&mut conn, user_id, keep).await?;
    collected.merge(again);
    let removed = remove_files(ctx, settings, user_id, collected).await?;
    report.database.media_files_deleted += removed.media.files;
    report.database.media_links_removed += removed.media.links;
    report.database.media_paths_refused += removed.media.refused;
    report.database.export_files_deleted += removed.exports;
    report.database.outbox_files_deleted += remove_outbox(settings, user_id).await?;
    receipt::save(
        &mut conn,
        user_id,
        report,
        Some(collected),
        None,
        ctx.now_ms(),
    )
    .await?;
    // Read before the transaction clears it: job texts quoting it are scrubbed below. (Read
    // here, not in the transaction, so that the transaction's first statement is the write
    // that locks the account row.)
    let email: Option<String> = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?
        .flatten();
    drop(conn);

    let now = ctx.now_ms();
    let d = &mut report.database;
    let mut tx = ctx.db().begin().await?;
    // The account row first: it locks the row, so a concurrent export finishing for this
    // user waits for this transaction (and then sees the account erased).
    d.users_anonymised = exec(
        &mut tx,
        "UPDATE users SET email = NULL, username = NULL, display_name = NULL WHERE id = $1",
        user_id,
    )
    .await?;
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
        &mut tx,
        "DELETE FROM messages WHERE sender_id = $1 OR recipient_id = $1",
        user_id,
    )
    .await?;
    d.webhook_payloads_erased = erase_webhook_payloads(&mut tx, user_id).await?;
    report.kept = count_kept(&mut tx, user_id).await?;
    let d = &mut report.database;
    if let Some(email) = email.as_deref() {
        let (jobs, attempts) = scrub_job_texts(&mut tx, email).await?;
        d.job_texts_scrubbed = jobs;
        d.job_attempt_errors_scrubbed = attempts;
    }
    d.playback_history_deleted = exec(
        &mut tx,
        "DELETE FROM playback_history WHERE user_id = $1",
        user_id,
    )
    .await?;
    d.playlist_items_deleted = exec(
        &mut tx,
        "DELETE FROM playlist_items WHERE playlist_id IN (SELECT id FROM playlists WHERE owner_id = $1)",
        user_id,
    )
    .await?;
    d.playlists_deleted = exec(
        &mut tx,
        "DELETE FROM playlists WHERE owner_id = $1",
        user_id,
    )
    .await?;
    if keep {
        d.other_plays_detached = exec(
            &mut tx,
            "UPDATE playback_history SET track_id = NULL WHERE track_id IN \
             (SELECT id FROM tracks WHERE owner_id = $1 AND is_public = 0)",
            user_id,
        )
        .await?;
        d.other_playlist_items_deleted = exec(
            &mut tx,
            "DELETE FROM playlist_items WHERE track_id IN \
             (SELECT id FROM tracks WHERE owner_id = $1 AND is_public = 0)",
            user_id,
        )
        .await?;
    } else {
        d.other_plays_detached = exec(
            &mut tx,
            "UPDATE playback_history SET track_id = NULL WHERE track_id IN \
             (SELECT id FROM tracks WHERE owner_id = $1)",
            user_id,
        )
        .await?;
        d.other_playlist_items_deleted = exec(
            &mut tx,
            "DELETE FROM playlist_items WHERE track_id IN (SELECT id FROM tracks WHERE owner_id = $1)",
            user_id,
        )
        .await?;
    }
    d.private_tracks_deleted = exec(
        &mut tx,
        "DELETE FROM tracks WHERE owner_id = $1 AND is_public = 0",
        user_id,
    )
    .await?;
    if keep {
        d.public_tracks_anonymised = sqlx::query(
            "UPDATE tracks SET owner_id = NULL, artist_name = $2, updated_at = $3 \
             WHERE owner_id = $1 AND is_public = 1",
        )
        .bind(user_id)
        .bind(&settings.anonymous_artist)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    } else {
        d.public_tracks_deleted = exec(
            &mut tx,
            "DELETE FROM tracks WHERE owner_id = $1 AND is_public = 1",
            user_id,
        )
        .await?;
    }
    d.exports_deleted = exec(
        &mut tx,
        "DELETE FROM data_exports WHERE user_id = $1",
        user_id,
    )
    .await?;
    match user_state::mark_erased(&mut tx, user_id, &Actor::job(ctx.job_id), now).await {
        Ok(()) => {}
        Err(TransitionError::Database(e)) => return Err(e.into()),
        Err(e) => {
            return Err(JobError::transient(format!(
                "the account changed during the erasure: {e}"
            )));
        }
    }
    d.status = receipt::StepStatus::Done;
    receipt::save(
        &mut tx,
        user_id,
        report,
        Some(collected),
        Some(Step::Database),
        now,
    )
    .await?;
    tx.commit().await?;
    // An export that became ready just before our transaction may have written its file
    // after the first pass: remove again (the rows are gone now, no new file can appear).
    // Likewise an e-mail written meanwhile (a later one sees `erased` and removes its own
    // file: see `send_email`). The receipt was saved: these are not counted.
    remove_export_files(settings, &collected.export_ids).await?;
    remove_outbox(settings, user_id).await?;
    Ok(())
}
