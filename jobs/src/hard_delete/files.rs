//! The files an erasure removes (part of step 2, before the database transaction): the
//! audio, cover and thumbnails of the tracks it deletes, the avatar, the export ZIPs and the
//! outbox e-mails. Idempotent: a missing file is fine.
//!
//! Nothing outside its root is ever deleted. Under `MEDIA_ROOT` every path is located with
//! [`locate_for_removal`]: the directories on the way are resolved, and a path that leads
//! outside the root through a symbolic link is refused (logged, counted on the receipt as
//! `media_paths_refused`); a path that is itself a symbolic link is removed as a link,
//! whatever it points at (counted as `media_links_removed`): its target may be outside the
//! root or someone else's file, and deleting the link is what removes it from this
//! account. Directories are never removed recursively: a thumbnail directory loses the
//! files and links directly in it, then goes if empty.

use std::path::Path;

use engine::{JobContext, JobError};
use sqlx::Row;

use super::ErasureSettings;
use super::receipt::Collected;
use crate::exports::{file_path_in, part_path_in};
use crate::media_path::{PathError, Removable, locate_for_removal};
use crate::send_email::outbox_dir_of;

/// Ids per `IN (…)` list.
const IN_CHUNK: usize = 500;

/// What was removed from (or refused under) `MEDIA_ROOT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MediaTally {
    /// Files deleted.
    pub(crate) files: u64,
    /// Symbolic links deleted as links (their targets untouched).
    pub(crate) links: u64,
    /// Paths refused: leading outside the root, or naming a directory where a file was
    /// expected.
    pub(crate) refused: u64,
}

/// What [`remove_files`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Removed {
    /// Under `MEDIA_ROOT`.
    pub(crate) media: MediaTally,
    /// Export ZIPs under `EXPORT_DIR`.
    pub(crate) exports: u64,
}

/// Unlinks `path` (never following it); `Ok(false)` if it was not there.
async fn unlink(path: &Path) -> Result<bool, JobError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(JobError::transient(format!(
            "cannot delete {}: {e}",
            path.display()
        ))),
    }
}

/// Locates `relative` under `root` for removal, on the blocking pool. A refused path is
/// logged and counted, and comes back as `None`, like a missing one.
async fn locate(
    root: &Path,
    relative: &str,
    tally: &mut MediaTally,
) -> Result<Option<Removable>, JobError> {
    let (root_owned, rel) = (root.to_owned(), relative.to_owned());
    let located = tokio::task::spawn_blocking(move || locate_for_removal(&root_owned, &rel))
        .await
        .map_err(|e| JobError::transient(format!("locating a file to delete: {e}")))?;
    match located {
        Ok(Removable::Missing) => Ok(None),
        Ok(found) => Ok(Some(found)),
        Err(e) if e.is_refused() => {
            tracing::warn!(path = relative, error = %e, "erasure: refusing to delete a path outside MEDIA_ROOT");
            tally.refused += 1;
            Ok(None)
        }
        // MEDIA_ROOT unmounted or unreadable: retry rather than finish with files left.
        Err(e @ (PathError::Root { .. } | PathError::Io { .. } | PathError::NotFound(_))) => {
            Err(JobError::transient(e.to_string()))
        }
        Err(e) => Err(JobError::transient(e.to_string())),
    }
}

/// Removes the file `relative` under `root` (see the module doc for links and refusals).
pub(crate) async fn remove_media_file(
    root: &Path,
    relative: &str,
    tally: &mut MediaTally,
) -> Result<(), JobError> {
    match locate(root, relative, tally).await? {
        None | Some(Removable::Missing) => {}
        Some(Removable::File(p)) => tally.files += u64::from(unlink(&p).await?),
        Some(Removable::Link(p)) => {
            if unlink(&p).await? {
                tracing::info!(
                    path = relative,
                    "erasure: removed a symbolic link, not its target"
                );
                tally.links += 1;
            }
        }
        Some(Removable::Dir(_)) => {
            tracing::warn!(
                path = relative,
                "erasure: a file path names a directory; left in place"
            );
            tally.refused += 1;
        }
    }
    Ok(())
}

/// Removes the files and links directly in directory `relative` under `root`, then the
/// directory if it is empty. A link where the directory should be is removed as a link.
pub(crate) async fn remove_media_dir(
    root: &Path,
    relative: &str,
    tally: &mut MediaTally,
) -> Result<(), JobError> {
    let dir = match locate(root, relative, tally).await? {
        None | Some(Removable::Missing) => return Ok(()),
        Some(Removable::File(_) | Removable::Link(_)) => {
            return remove_media_file(root, relative, tally).await;
        }
        Some(Removable::Dir(dir)) => dir,
    };
    let (files, links) = remove_entries(&dir).await?;
    tally.files += files;
    tally.links += links;
    if links > 0 {
        tracing::info!(
            path = relative,
            links,
            "erasure: removed symbolic links, not their targets"
        );
    }
    Ok(())
}

/// Removes the files and links in `dir` (a real directory: the caller resolved it; never
/// its subdirectories), then `dir` if it is empty; returns (files, links) removed.
async fn remove_entries(dir: &Path) -> Result<(u64, u64), JobError> {
    let cannot_read =
        |e: std::io::Error| JobError::transient(format!("cannot read {}: {e}", dir.display()));
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(cannot_read(e)),
    };
    let (mut files, mut links) = (0, 0);
    while let Some(entry) = entries.next_entry().await.map_err(cannot_read)? {
        // `DirEntry::file_type` does not follow links.
        let Ok(kind) = entry.file_type().await else {
            continue;
        };
        if kind.is_dir() {
            continue;
        }
        if unlink(&entry.path()).await? {
            if kind.is_symlink() {
                links += 1;
            } else {
                files += 1;
            }
        }
    }
    let _ = tokio::fs::remove_dir(dir).await;
    Ok((files, links))
}

/// Removes `MAIL_OUTBOX_DIR/user-{id}/` and the files in it; returns files removed. A link
/// in its place is removed as a link; a missing outbox is fine.
pub(crate) async fn remove_outbox(
    settings: &ErasureSettings,
    user_id: i64,
) -> Result<u64, JobError> {
    let dir = outbox_dir_of(&settings.mail_outbox_dir, user_id);
    match tokio::fs::symlink_metadata(&dir).await {
        Ok(meta) if meta.is_dir() => Ok(remove_entries(&dir).await?.0),
        Ok(_) => Ok(u64::from(unlink(&dir).await?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(JobError::transient(format!(
            "cannot read {}: {e}",
            dir.display()
        ))),
    }
}

/// The placeholders `$first, $first+1, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deletes the files of the tracks to delete and of the user's avatar and exports.
pub(crate) async fn remove_files(
    ctx: &JobContext,
    settings: &ErasureSettings,
    user_id: i64,
    collected: &Collected,
) -> Result<Removed, JobError> {
    let root = &settings.media_root;
    let mut media = MediaTally::default();
    for chunk in collected.delete_track_ids.chunks(IN_CHUNK) {
        let sql = format!(
            "SELECT id, file_path, thumbnails, cover_path FROM tracks WHERE id IN ({})",
            placeholders(1, chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(ctx.db()).await?;
        for r in rows {
            let id: i64 = r.try_get(0)?;
            let file_path: String = r.try_get(1)?;
            let thumbnails: Option<String> = r.try_get(2)?;
            let cover: Option<String> = r.try_get(3)?;
            remove_media_file(root, &file_path, &mut media).await?;
            if let Some(list) =
                thumbnails.and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            {
                for entry in list.as_array().into_iter().flatten() {
                    for key in ["jpg", "webp"] {
                        if let Some(p) = entry[key].as_str() {
                            remove_media_file(root, p, &mut media).await?;
                        }
                    }
                }
            }
            remove_media_dir(root, &crate::thumbnail::thumbnail_dir(id), &mut media).await?;
            // The track's own cover (`cover_path`, recorded by the web backend for the owner's
            // upload), never `thumbnail_source`: that column says what the thumbnails were
            // made from, and rows of older releases may name someone else's file there.
            if let Some(cover) = cover {
                // A cover another remaining track still uses stays.
                let users: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM tracks WHERE cover_path = $1 AND id <> $2 \
                     AND (owner_id IS NULL OR owner_id <> $3 OR (is_public = 1 AND $4 = 1))",
                )
                .bind(&cover)
                .bind(id)
                .bind(user_id)
                .bind(i64::from(collected.keep_public_tracks))
                .fetch_one(ctx.db())
                .await?;
                if users == 0 {
                    remove_media_file(root, &cover, &mut media).await?;
                }
            }
        }
    }
    let avatar: Option<Option<String>> =
        sqlx::query_scalar("SELECT avatar_path FROM user_profiles WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(ctx.db())
            .await?;
    if let Some(Some(avatar)) = avatar {
        remove_media_file(root, &avatar, &mut media).await?;
    }
    let exports = remove_export_files(settings, &collected.export_ids).await?;
    Ok(Removed { media, exports })
}

/// Removes the finished and partial ZIPs of `export_ids` (unlinked: a link is removed as a
/// link); returns files removed.
pub(crate) async fn remove_export_files(
    settings: &ErasureSettings,
    export_ids: &[i64],
) -> Result<u64, JobError> {
    let mut removed = 0;
    for id in export_ids {
        for path in [
            file_path_in(&settings.export_dir, *id),
            part_path_in(&settings.export_dir, *id),
        ] {
            removed += u64::from(unlink(&path).await?);
        }
    }
    Ok(removed)
}
