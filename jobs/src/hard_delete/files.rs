//! The files step of an erasure: the audio, cover and thumbnails of the tracks the
//! database step deleted, the avatar its profile named, the export ZIPs and the outbox
//! e-mails. Idempotent: a missing file is fine.
//!
//! It runs after the database step, from the list that step wrote on the receipt in its
//! transaction ([`FileList`], read from the rows it deleted): the rows are the only record
//! of these paths, so they are recorded in the very transaction that deletes the rows and
//! cannot be lost once the rows are gone; and a file goes only when no row points at it any
//! more, so one pass is enough: no thumbnail or export file is written for a row that is
//! gone, an e-mail written after it sees the account erased and removes its own file (see
//! `send_email`), and a cover another track still uses stays. The list is cleared from the
//! receipt once the files are removed.
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
use serde::{Deserialize, Serialize};

use super::ErasureSettings;
use super::receipt::{self, DatabaseReport};
use crate::exports::{file_path_in, part_path_in};
use crate::media_path::{PathError, Removable, locate_for_removal};
use crate::send_email::outbox_dir_of;

/// The files of the rows the database step deleted, as those rows named them (paths
/// relative to `MEDIA_ROOT`). Export ZIPs are named by the export ids and outbox e-mails by
/// the user id, so they need no list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileList {
    /// The deleted tracks.
    pub(crate) tracks: Vec<TrackFiles>,
    /// The avatar the profile named.
    pub(crate) avatar: Option<String>,
}

/// A deleted track's files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TrackFiles {
    /// Its id: its thumbnail directory is `thumbnails/{id}`.
    pub(crate) id: i64,
    /// `file_path`: the audio.
    pub(crate) audio: String,
    /// The `jpg` and `webp` paths of its recorded thumbnails.
    pub(crate) thumbnails: Vec<String>,
    /// `cover_path`: its own cover (never `thumbnail_source`, which says what the
    /// thumbnails were made from; rows of older releases may name someone else's file there).
    pub(crate) cover: Option<String>,
}

impl TrackFiles {
    /// A track row's files; `thumbnails` is the column's JSON (`[{"jpg": …, "webp": …}]`).
    pub(crate) fn new(
        id: i64,
        audio: String,
        thumbnails: Option<&str>,
        cover: Option<String>,
    ) -> Self {
        let list = thumbnails
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .unwrap_or_default();
        let thumbnails = list
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|entry| ["jpg", "webp"].map(|key| entry[key].as_str().map(str::to_owned)))
            .flatten()
            .collect();
        Self {
            id,
            audio,
            thumbnails,
            cover,
        }
    }
}

/// What was removed from (or refused under) `MEDIA_ROOT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MediaTally {
    /// Files deleted.
    pub(crate) files: u64,
    /// Symbolic links deleted as links (their targets untouched).
    pub(crate) links: u64,
    /// Paths refused: leading outside the root, or naming a directory where a file was
    /// expected.
    pub(crate) refused: u64,
}

/// The files step's result: what it removed (counted in the receipt's `database` section).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Removed {
    /// Under `MEDIA_ROOT`.
    pub(crate) media: MediaTally,
    /// Export ZIPs under `EXPORT_DIR`.
    pub(crate) exports: u64,
    /// `.eml` files under `MAIL_OUTBOX_DIR`.
    pub(crate) outbox: u64,
}

impl Removed {
    /// The counts a receipt's `database` section holds.
    pub(crate) fn from_report(d: &DatabaseReport) -> Self {
        Self {
            media: MediaTally {
                files: d.media_files_deleted,
                links: d.media_links_removed,
                refused: d.media_paths_refused,
            },
            exports: d.export_files_deleted,
            outbox: d.outbox_files_deleted,
        }
    }

    /// Writes the counts into a receipt's `database` section.
    pub(crate) fn write_to(self, d: &mut DatabaseReport) {
        d.media_files_deleted = self.media.files;
        d.media_links_removed = self.media.links;
        d.media_paths_refused = self.media.refused;
        d.export_files_deleted = self.exports;
        d.outbox_files_deleted = self.outbox;
    }
}

/// The files step: removes the files the database step listed on the receipt, then clears
/// the list there and writes the counts. A receipt without a list (this step ran before
/// and its result was not recorded, or an earlier job or an older release removed the
/// files) gives back the counts it holds.
pub(crate) async fn remove(
    ctx: &JobContext,
    settings: &ErasureSettings,
    user_id: i64,
) -> Result<Removed, JobError> {
    let mut receipt = receipt::load_open(ctx, user_id).await?;
    let mut collected = receipt.collected.take().unwrap_or_default();
    let Some(list) = collected.files_to_remove.take() else {
        return Ok(Removed::from_report(&receipt.report.database));
    };
    let mut removed = Removed::default();
    remove_media(ctx, settings, &list, &mut removed.media).await?;
    removed.exports = remove_export_files(settings, &collected.ids.export_ids).await?;
    removed.outbox = remove_outbox(settings, user_id).await?;
    removed.write_to(&mut receipt.report.database);
    let mut conn = ctx.db().acquire().await?;
    receipt::save(
        &mut conn,
        user_id,
        &receipt.report,
        Some(&collected),
        &[],
        ctx.now_ms(),
    )
    .await?;
    tracing::info!(
        user_id,
        files = removed.media.files,
        links = removed.media.links,
        refused = removed.media.refused,
        "erasure: files step done"
    );
    Ok(removed)
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

/// Deletes the files of the deleted tracks and the avatar.
async fn remove_media(
    ctx: &JobContext,
    settings: &ErasureSettings,
    list: &FileList,
    media: &mut MediaTally,
) -> Result<(), JobError> {
    let root = &settings.media_root;
    for track in &list.tracks {
        remove_media_file(root, &track.audio, media).await?;
        for thumbnail in &track.thumbnails {
            remove_media_file(root, thumbnail, media).await?;
        }
        remove_media_dir(root, &crate::thumbnail::thumbnail_dir(track.id), media).await?;
        if let Some(cover) = &track.cover {
            // A cover another track still uses (someone else's, or a kept public track)
            // stays.
            let users: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM tracks WHERE cover_path = $1")
                    .bind(cover)
                    .fetch_one(ctx.db())
                    .await?;
            if users == 0 {
                remove_media_file(root, cover, media).await?;
            }
        }
    }
    if let Some(avatar) = &list.avatar {
        remove_media_file(root, avatar, media).await?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_track_rows_thumbnail_paths_are_listed_and_a_bad_column_lists_none() {
        let t = TrackFiles::new(
            7,
            "a.mp3".into(),
            Some(
                r#"[{"size":64,"jpg":"thumbnails/7/64.jpg","webp":"thumbnails/7/64.webp"},{"size":128,"jpg":"thumbnails/7/128.jpg"}]"#,
            ),
            Some("c.png".into()),
        );
        assert_eq!(
            t.thumbnails,
            [
                "thumbnails/7/64.jpg",
                "thumbnails/7/64.webp",
                "thumbnails/7/128.jpg"
            ]
        );
        for column in [None, Some("not json"), Some(r#"{"jpg":"x.jpg"}"#)] {
            assert!(
                TrackFiles::new(7, "a.mp3".into(), column, None)
                    .thumbnails
                    .is_empty(),
                "{column:?}"
            );
        }
    }
}
