//! The GDPR jobs' files on disk, on both backends: export ZIPs are private to the service's
//! user (a 0700 `EXPORT_DIR`, 0600 files), and the erasure deletes only what lies inside
//! `MEDIA_ROOT` (symbolic links are resolved first, and a link leading out is removed
//! itself, never its target), after the rows that named them, from the list recorded with
//! their deletion.

mod gdpr_support;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::Duration;

use engine::testing::{TestDb, drain, perform_job};
use engine::{Actor, Outcome, backend_tests};
use gdpr_support::*;
use jobs::exports::{self, ExportStatus};
use jobs::hard_delete::HardDelete;
use jobs::users::{self, UserStatus};

backend_tests!(
    schema = jobs::schema::migrator;
    a_missing_export_dir_is_created_0700_and_the_zip_is_0600,
    an_open_export_dir_is_tightened_and_a_leftover_part_is_narrowed,
    the_erasure_deletes_links_not_their_targets_and_nothing_outside_media_root,
    the_erasure_deletes_the_tracks_cover_never_a_thumbnail_source_of_someone_else,
    files_are_removed_after_their_rows_from_the_list_recorded_with_the_deletion,
);

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Requests and runs one export of `user`; returns its id.
async fn run_export(w: &World, user: &Person) -> i64 {
    let req = exports::request_export(&w.engine, &w.settings.exports, user.id, &Actor::api_key(1))
        .await
        .unwrap();
    drain(&w.engine).await;
    let info = exports::list_exports(w.db(), user.id).await.unwrap();
    assert_eq!(info[0].status, ExportStatus::Ready, "{:?}", info[0].error);
    req.export_id
}

async fn a_missing_export_dir_is_created_0700_and_the_zip_is_0600(t: TestDb) {
    // Arrange: EXPORT_DIR two levels below an existing directory, neither there yet.
    let w = world(&t, |s| s.exports.dir = s.exports.dir.join("nested/zips"));
    let user = Person::new("ida");
    insert_user(&w, &user).await;
    assert!(!w.settings.exports.dir.exists());

    // Act
    let id = run_export(&w, &user).await;

    // Assert
    let dir = &w.settings.exports.dir;
    assert_eq!(mode(dir), 0o700, "EXPORT_DIR");
    assert_eq!(mode(dir.parent().unwrap()), 0o700, "a created parent");
    assert_eq!(
        mode(&exports::export_file_path(&w.settings.exports, id)),
        0o600
    );
}

async fn an_open_export_dir_is_tightened_and_a_leftover_part_is_narrowed(t: TestDb) {
    // Arrange: a world-readable EXPORT_DIR, as `mkdir` with the default umask makes it, and
    // the export's partial file left world-readable by an older release's crashed attempt.
    let w = world(&t, |_| {});
    let user = Person::new("jon");
    insert_user(&w, &user).await;
    let dir = w.settings.exports.dir.clone();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let next_id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM data_exports")
        .fetch_one(w.db())
        .await
        .unwrap();
    let part = exports::part_path_in(&dir, next_id);
    std::fs::write(&part, b"an old attempt's bytes").unwrap();
    std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Act
    let id = run_export(&w, &user).await;

    // Assert
    assert_eq!(id, next_id, "the leftover is this export's");
    assert_eq!(mode(&dir), 0o700);
    let zip = exports::export_file_path(&w.settings.exports, id);
    assert_eq!(mode(&zip), 0o600);
    assert!(!part.exists());
}

/// A private track of `owner` with audio at `file` (relative to MEDIA_ROOT); returns its id.
async fn private_track(w: &World, owner: i64, file: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO tracks (status, file_path, created_at, updated_at, owner_id, is_public) \
         VALUES ('ready', $1, $2, $2, $3, 0) RETURNING id",
    )
    .bind(file)
    .bind(w.now())
    .bind(owner)
    .fetch_one(w.db())
    .await
    .unwrap()
}

async fn the_erasure_deletes_links_not_their_targets_and_nothing_outside_media_root(t: TestDb) {
    // Arrange: a user whose media rows lead outside MEDIA_ROOT through symbolic links: the
    // audio's directory, the thumbnail directory and the avatar itself are links to files
    // that are not theirs. One plain file is theirs.
    let w = world(&t, |_| {});
    let user = Person::new("kai");
    insert_user(&w, &user).await;
    let u = user.id;
    let media = w.media().to_owned();
    let outside = tempfile::tempdir().unwrap();
    let put = |dir: &Path, rel: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"not yours").unwrap();
        p
    };
    let not_theirs = [
        put(outside.path(), "music/song.mp3"),
        put(outside.path(), "thumbs/64.jpg"),
        put(outside.path(), "thumbs/64.webp"),
        put(outside.path(), "thumbs/keep.txt"),
        put(outside.path(), "precious.png"),
    ];
    std::fs::create_dir_all(media.join("uploads")).unwrap();
    symlink(
        outside.path().join("music"),
        media.join(format!("uploads/{u}")),
    )
    .unwrap();
    let linked = private_track(&w, u, &format!("uploads/{u}/song.mp3")).await;
    std::fs::create_dir_all(media.join("thumbnails")).unwrap();
    symlink(
        outside.path().join("thumbs"),
        media.join(format!("thumbnails/{linked}")),
    )
    .unwrap();
    sqlx::query("UPDATE tracks SET thumbnails = $1 WHERE id = $2")
        .bind(format!(
            r#"[{{"size":64,"jpg":"thumbnails/{linked}/64.jpg","webp":"thumbnails/{linked}/64.webp"}}]"#
        ))
        .bind(linked)
        .execute(w.db())
        .await
        .unwrap();
    let avatar = format!("avatars/{u}.png");
    std::fs::create_dir_all(media.join("avatars")).unwrap();
    symlink(outside.path().join("precious.png"), media.join(&avatar)).unwrap();
    sqlx::query("INSERT INTO user_profiles (user_id, avatar_path, updated_at) VALUES ($1, $2, $3)")
        .bind(u)
        .bind(&avatar)
        .bind(w.now())
        .execute(w.db())
        .await
        .unwrap();
    let own = put(&media, &format!("plain/{u}.mp3"));
    private_track(&w, u, &format!("plain/{u}.mp3")).await;
    users::request_deletion(
        &w.engine,
        &w.settings.accounts,
        u,
        Some(false),
        &Actor::cli(),
    )
    .await
    .unwrap();
    w.clock.advance(Duration::from_secs(31 * 24 * 3600));

    // Act
    let out = perform_job(&w.engine, &HardDelete { user_id: u })
        .await
        .unwrap();

    // Assert: nothing outside MEDIA_ROOT is gone; the links and the user's file are.
    assert_eq!(out, Outcome::Succeeded);
    for f in &not_theirs {
        assert!(f.exists(), "{} was deleted", f.display());
    }
    assert!(!own.exists());
    for link in [
        media.join(&avatar),
        media.join(format!("thumbnails/{linked}")),
    ] {
        assert!(
            std::fs::symlink_metadata(&link).is_err(),
            "{} is left",
            link.display()
        );
    }
    let receipt = users::deletion_status(w.db(), u)
        .await
        .unwrap()
        .receipt
        .unwrap();
    let d = &receipt.report.database;
    assert_eq!(d.media_files_deleted, 1, "the user's own file");
    assert_eq!(
        d.media_links_removed, 2,
        "the avatar and the thumbnail directory"
    );
    assert_eq!(
        d.media_paths_refused, 3,
        "the audio and the two thumbnails, through links leading out"
    );
}

async fn the_erasure_deletes_the_tracks_cover_never_a_thumbnail_source_of_someone_else(t: TestDb) {
    // Arrange: the user's track has its own cover, but its thumbnails were made (by an
    // older release, which took any path) from another user's private cover.
    let w = world(&t, |_| {});
    let (user, other) = (Person::new("lea"), Person::new("max"));
    insert_user(&w, &user).await;
    insert_user(&w, &other).await;
    let media = w.media().to_owned();
    let put = |rel: &str| {
        let p = media.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"PNG").unwrap();
        p
    };
    let own_cover = put(&format!("covers/{}.png", user.id));
    let theirs = put(&format!("private/{}.png", other.id));
    let track = private_track(&w, user.id, &format!("uploads/{}.mp3", user.id)).await;
    sqlx::query("UPDATE tracks SET cover_path = $1, thumbnail_source = $2 WHERE id = $3")
        .bind(format!("covers/{}.png", user.id))
        .bind(format!("private/{}.png", other.id))
        .bind(track)
        .execute(w.db())
        .await
        .unwrap();
    users::request_deletion(
        &w.engine,
        &w.settings.accounts,
        user.id,
        Some(false),
        &Actor::cli(),
    )
    .await
    .unwrap();
    w.clock.advance(Duration::from_secs(31 * 24 * 3600));

    // Act
    let out = perform_job(&w.engine, &HardDelete { user_id: user.id })
        .await
        .unwrap();

    // Assert
    assert_eq!(out, Outcome::Succeeded);
    assert!(!own_cover.exists(), "the user's cover is erased");
    assert!(
        theirs.exists(),
        "the other user's cover is not theirs to erase"
    );
}

/// The receipt's internal `collected` column of `user_id`.
async fn collected_column(w: &World, user_id: i64) -> String {
    sqlx::query_scalar("SELECT collected FROM erasure_receipts WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(w.db())
        .await
        .unwrap()
}

async fn files_are_removed_after_their_rows_from_the_list_recorded_with_the_deletion(t: TestDb) {
    // Arrange: a user with a track and an avatar; MEDIA_ROOT is away (unmounted) when the
    // erasure first runs.
    let w = world(&t, |_| {});
    let user = Person::new("ned");
    insert_user(&w, &user).await;
    let u = user.id;
    let media = w.media().to_owned();
    let audio = format!("uploads/{u}/take-1.mp3");
    let avatar = format!("avatars/{u}.png");
    for rel in [&audio, &avatar] {
        let p = media.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"mine").unwrap();
    }
    private_track(&w, u, &audio).await;
    sqlx::query("INSERT INTO user_profiles (user_id, avatar_path, updated_at) VALUES ($1, $2, $3)")
        .bind(u)
        .bind(&avatar)
        .bind(w.now())
        .execute(w.db())
        .await
        .unwrap();
    users::request_deletion(&w.engine, &w.settings.accounts, u, None, &Actor::cli())
        .await
        .unwrap();
    w.clock.advance(Duration::from_secs(31 * 24 * 3600));
    let away = media.with_extension("away");
    std::fs::rename(&media, &away).unwrap();
    let job = w
        .engine
        .enqueue(HardDelete { user_id: u })
        .await
        .unwrap()
        .id();

    // Act 1: the database step commits, the files step fails.
    let first = drain(&w.engine).await;

    // Assert: the rows are gone, the files are still there and listed on the receipt.
    assert_eq!((first.succeeded, first.retried), (0, 1), "{first:?}");
    let steps: Vec<String> = engine::steps::list(w.db(), job)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(steps, ["database"]);
    let st = users::deletion_status(w.db(), u).await.unwrap();
    assert_eq!(st.status, UserStatus::Erased);
    let tracks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tracks WHERE owner_id = $1")
        .bind(u)
        .fetch_one(w.db())
        .await
        .unwrap();
    assert_eq!(tracks, 0);
    let listed = collected_column(&w, u).await;
    assert!(
        listed.contains(&audio) && listed.contains(&avatar),
        "{listed}"
    );

    // Act 2: MEDIA_ROOT is back; the retry.
    std::fs::rename(&away, &media).unwrap();
    w.clock.advance(Duration::from_secs(600));
    let second = drain(&w.engine).await;

    // Assert: the files are gone, counted, and no longer listed.
    assert_eq!((second.succeeded, second.failed), (1, 0), "{second:?}");
    for rel in [&audio, &avatar] {
        assert!(!media.join(rel).exists(), "{rel} is left");
    }
    let receipt = users::deletion_status(w.db(), u)
        .await
        .unwrap()
        .receipt
        .unwrap();
    assert!(receipt.finished_at.is_some());
    assert_eq!(receipt.report.database.media_files_deleted, 2);
    let listed = collected_column(&w, u).await;
    assert!(
        !listed.contains(&audio) && !listed.contains(&avatar),
        "{listed}"
    );
}
