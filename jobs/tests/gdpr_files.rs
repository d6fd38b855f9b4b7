//! The GDPR jobs' files on disk, on both backends: export ZIPs are private to the service's
//! user (a 0700 `EXPORT_DIR`, 0600 files), and the erasure deletes only what lies inside
//! `MEDIA_ROOT` (symbolic links are resolved first, and a link leading out is removed
//! itself, never its target).

mod gdpr_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use engine::testing::{TestDb, drain};
use engine::{Actor, backend_tests};
use gdpr_support::*;
use jobs::exports::{self, ExportStatus};

backend_tests!(
    a_missing_export_dir_is_created_0700_and_the_zip_is_0600,
    an_open_export_dir_is_tightened_and_a_leftover_part_is_narrowed,
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
    let next_id: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM data_exports")
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
