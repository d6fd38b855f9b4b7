//! The database part of an erasure (steps 1 and 2).
//!
//! Step 1 reads the ids of the user's tracks, playlists and exports before anything
//! changes. Step 2 first removes the files those rows point at (audio, cover and
//! thumbnails of deleted tracks, the avatar, export ZIPs) and the user's outbox e-mails
//! (see [`super::files`]: never outside their root) — then, in one transaction: clears the account's identity and profile, deletes
//! messages (sent and received), plays, playlists, private tracks and, unless the user
//! keeps them, public tracks; kept public tracks lose their owner and are credited to the
//! anonymous artist; the account goes `deletion_requested → erased`; the receipt records
//! the counts and the step's time. A retry after a failure before the commit does it all
//! again; after the commit, the step is not run again.

use engine::state_machine::{Actor, TransitionError};
use engine::{DbConn, JobContext, JobError};

use super::ErasureSettings;
use super::files::{remove_export_files, remove_files, remove_outbox};
use super::receipt::{self, Collected, Report, Step};
use crate::users::state as user_state;

fn db(e: sqlx::Error) -> JobError {
    JobError::database(&e)
}

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
        .await
        .map_err(db)?
        .rows_affected())
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
    let mut conn = ctx.db().acquire().await.map_err(db)?;
    let again = collect(&mut conn, user_id, keep).await.map_err(db)?;
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
    .await
    .map_err(db)?;
    drop(conn);

    let now = ctx.now_ms();
    let d = &mut report.database;
    let mut tx = ctx.db().begin().await.map_err(db)?;
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
    .await
    .map_err(db)?
    .rows_affected();
    d.messages_deleted = exec(
        &mut tx,
        "DELETE FROM messages WHERE sender_id = $1 OR recipient_id = $1",
        user_id,
    )
    .await?;
    d.webhook_payloads_erased = exec(
        &mut tx,
        "UPDATE webhook_events SET payload = '{\"erased\":\"by hard_delete\"}' \
         WHERE order_id IN (SELECT id FROM orders WHERE buyer_id = $1)",
        user_id,
    )
    .await?;
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
        .await
        .map_err(db)?
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
        Err(TransitionError::Database(e)) => return Err(db(e)),
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
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    // An export that became ready just before our transaction may have written its file
    // after the first pass: remove again (the rows are gone now, no new file can appear).
    // Likewise an e-mail written meanwhile (a later one sees `erased` and removes its own
    // file: see `send_email`). The receipt was saved: these are not counted.
    remove_export_files(settings, &collected.export_ids).await?;
    remove_outbox(settings, user_id).await?;
    Ok(())
}
