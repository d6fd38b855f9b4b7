//! `/v1/tracks/{track_id}/thumbnails`: enqueueing (one unfinished job per track), refused
//! sources and unknown tracks (nothing enqueued), and reading what the job recorded.

use api::auth::Scope;
use engine::backend_tests;
use engine::testing::{TestDb, drain, enqueued};
use jobs::thumbnail::ThumbnailArgs;
use serde_json::json;

use crate::helpers::{TestApp, get, post};

backend_tests!(
    schema = jobs::schema::migrator;
    a_thumbnail_job_is_enqueued_once_per_track,
    escaping_sources_are_refused_and_nothing_is_enqueued,
    unknown_tracks_and_missing_sources_are_not_found,
    recorded_thumbnails_are_listed_after_the_job_ran,
    only_the_tracks_own_cover_is_accepted,
);

/// A track whose cover (as the web backend records it) is `covers/a.png`.
async fn track(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO tracks (status, file_path, created_at, updated_at, cover_path) \
         VALUES ('processing', 'uploads/a.mp3', $1, $1, 'covers/a.png') RETURNING id",
    )
    .bind(app.engine.clock().now_ms())
    .fetch_one(app.engine.db())
    .await
    .expect("insert track")
}

/// A small PNG at `relative` under the media root.
fn put_png(app: &TestApp, relative: &str) {
    let path = app.media.path().join(relative);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let img = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 128]));
    img.save_with_format(&path, image::ImageFormat::Png)
        .expect("write png");
}

fn path(track_id: i64) -> String {
    format!("/v1/tracks/{track_id}/thumbnails")
}

async fn a_thumbnail_job_is_enqueued_once_per_track(db: TestDb) {
    // Arrange
    let app = TestApp::new(db);
    let key = app.key(Scope::Write).await;
    let track_id = track(&app).await;
    put_png(&app, "covers/a.png");

    // Act
    let first = post(
        &app,
        &path(track_id),
        Some(&key),
        Some(json!({ "source": "covers/a.png" })),
    )
    .await;
    let second = post(
        &app,
        &path(track_id),
        Some(&key),
        Some(json!({ "source": "covers/a.png" })),
    )
    .await;

    // Assert
    assert_eq!(first.status, 202, "{}", first.text);
    assert_eq!(first.body["created"], true, "{}", first.text);
    let job_id = first.body["job_id"].as_i64().expect("job_id");
    assert_eq!(second.status, 202, "{}", second.text);
    assert_eq!(second.body["job_id"], job_id, "{}", second.text);
    assert_eq!(second.body["created"], false, "{}", second.text);
    let jobs = enqueued::<ThumbnailArgs>(&app.engine).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].0, job_id);
    assert_eq!(
        jobs[0].2,
        ThumbnailArgs {
            track_id,
            source: "covers/a.png".into()
        }
    );
}

async fn escaping_sources_are_refused_and_nothing_is_enqueued(db: TestDb) {
    // Arrange: a file outside the media root and a link to it inside.
    let app = TestApp::new(db);
    let key = app.key(Scope::Write).await;
    let track_id = track(&app).await;
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("secret.png"), b"not yours").expect("write");
    std::fs::create_dir_all(app.media.path().join("covers")).expect("mkdir");
    std::os::unix::fs::symlink(
        outside.path().join("secret.png"),
        app.media.path().join("covers/link.png"),
    )
    .expect("symlink");
    std::os::unix::fs::symlink(outside.path(), app.media.path().join("out")).expect("symlink");

    for source in [
        "../etc/passwd",
        "covers/../../etc/passwd",
        "/etc/passwd",
        "covers/link.png",
        "out/secret.png",
        "",
    ] {
        // Act
        let answer = post(
            &app,
            &path(track_id),
            Some(&key),
            Some(json!({ "source": source })),
        )
        .await;

        // Assert
        answer.assert_problem(400, "bad_request");
    }
    assert!(enqueued::<ThumbnailArgs>(&app.engine).await.is_empty());
}

async fn unknown_tracks_and_missing_sources_are_not_found(db: TestDb) {
    // Arrange
    let app = TestApp::new(db);
    let write = app.key(Scope::Write).await;
    let read = app.key(Scope::Read).await;
    let track_id = track(&app).await;
    put_png(&app, "covers/a.png");

    // Act
    let unknown = post(
        &app,
        &path(track_id + 1000),
        Some(&write),
        Some(json!({ "source": "covers/a.png" })),
    )
    .await;
    let missing = post(
        &app,
        &path(track_id),
        Some(&write),
        Some(json!({ "source": "covers/nope.png" })),
    )
    .await;
    let unknown_get = get(&app, &path(track_id + 1000), Some(&read)).await;

    // Assert
    unknown.assert_problem_saying(404, "not_found", "track");
    missing.assert_problem_saying(404, "not_found", "covers/nope.png");
    unknown_get.assert_problem(404, "not_found");
    assert!(enqueued::<ThumbnailArgs>(&app.engine).await.is_empty());
}

async fn recorded_thumbnails_are_listed_after_the_job_ran(db: TestDb) {
    // Arrange
    let app = TestApp::new(db);
    let write = app.key(Scope::Write).await;
    let read = app.key(Scope::Read).await;
    let track_id = track(&app).await;
    put_png(&app, "covers/a.png");
    let before = get(&app, &path(track_id), Some(&read)).await;
    let accepted = post(
        &app,
        &path(track_id),
        Some(&write),
        Some(json!({ "source": "covers/a.png" })),
    )
    .await;
    assert_eq!(accepted.status, 202, "{}", accepted.text);

    // Act
    drain(&app.engine).await;
    let after = get(&app, &path(track_id), Some(&read)).await;

    // Assert
    assert_eq!(before.status, 200, "{}", before.text);
    assert_eq!(before.body["thumbnails"], json!([]), "{}", before.text);
    assert_eq!(after.status, 200, "{}", after.text);
    assert_eq!(after.body["source"], "covers/a.png", "{}", after.text);
    assert!(after.body["updated_at"].is_i64(), "{}", after.text);
    let dir = format!("thumbnails/{track_id}");
    assert_eq!(
        after.body["thumbnails"],
        json!([
            { "size": 16, "jpg": format!("{dir}/16.jpg"), "webp": format!("{dir}/16.webp") },
            { "size": 32, "jpg": format!("{dir}/32.jpg"), "webp": format!("{dir}/32.webp") },
        ]),
        "{}",
        after.text
    );
    for file in ["16.jpg", "16.webp", "32.jpg", "32.webp"] {
        assert!(app.media.path().join(&dir).join(file).is_file(), "{file}");
    }
}

async fn only_the_tracks_own_cover_is_accepted(db: TestDb) {
    // Arrange: this track's cover, another user's private cover, a pipe, and a track with
    // no cover on record.
    let app = TestApp::new(db);
    let key = app.key(Scope::Write).await;
    let track_id = track(&app).await;
    put_png(&app, "covers/a.png");
    put_png(&app, "private/someone-else.png");
    let fifo = app.media.path().join("covers/pipe.png");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let bare: i64 = sqlx::query_scalar(
        "INSERT INTO tracks (status, file_path, created_at, updated_at) \
         VALUES ('processing', 'uploads/b.mp3', 0, 0) RETURNING id",
    )
    .fetch_one(app.engine.db())
    .await
    .expect("insert track");

    // Act
    let post_source = |track: i64, source: &'static str| {
        let (app, key) = (&app, &key);
        async move {
            post(
                app,
                &path(track),
                Some(key),
                Some(json!({ "source": source })),
            )
            .await
        }
    };
    let foreign = post_source(track_id, "private/someone-else.png").await;
    let pipe = post_source(track_id, "covers/pipe.png").await;
    let none = post_source(bare, "covers/a.png").await;
    let other_spelling = post_source(track_id, "./covers//a.png").await;

    // Assert
    foreign.assert_problem_saying(400, "bad_request", "is not track");
    pipe.assert_problem_saying(400, "bad_request", "not a regular file");
    none.assert_problem_saying(400, "bad_request", "no cover image on record");
    assert_eq!(other_spelling.status, 202, "{}", other_spelling.text);
    let jobs = enqueued::<ThumbnailArgs>(&app.engine).await;
    assert_eq!(
        jobs.iter().map(|j| j.2.clone()).collect::<Vec<_>>(),
        [ThumbnailArgs {
            track_id,
            source: "covers/a.png".into()
        }],
        "only the own cover, as the track records it"
    );
}
