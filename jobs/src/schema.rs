//! The application's tables (tracks, payments, GDPR, API keys, dashboard sessions): their
//! migrations are `migrations/{postgres,sqlite}` at the workspace root, recorded in sqlx's
//! default `_sqlx_migrations` and run after the engine's own (`engine::db::migrate`, which
//! keeps its history apart). Versions 1 and 9 are retired: they were the engine's while
//! both shared one history (see `engine::db::SINGLE_HISTORY_TABLE`).

use engine::{Backend, Db};
use sqlx::migrate::Migrator;

/// The application's migrations for `backend`. `ignore_missing`: a database migrated while
/// the engine's migrations shared this history still lists the engine's versions 1 and 9.
pub fn migrator(backend: Backend) -> Migrator {
    let mut migrator = match backend {
        Backend::Sqlite => sqlx::migrate!("../migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("../migrations/postgres"),
    };
    migrator.set_ignore_missing(true);
    migrator
}

/// The checksums (SHA-384) `_sqlx_migrations` holds for `0008_listing_indexes` on a database
/// migrated before the engine had its own migrator: 0008 then also made the engine's
/// `job_attempts_finished` index, which now belongs to the engine's `0002_runtime`.
const LISTING_INDEXES_VERSION: i64 = 8;
const LISTING_INDEXES_CHECKSUM_BEFORE: [(Backend, &str); 2] = [
    (
        Backend::Postgres,
        "20f03d04911996e0fa5fb15b827ac01c20c11ba2632941d4dfe315650d11b0a5e432e6ee92a9679ca70545a73d5cc1a2",
    ),
    (
        Backend::Sqlite,
        "a08bb1ac4d28f6763e35e78983eaaadaef2ecf0a23d34c27dbac5be958b8b74cc5925b3a37776348f70ff7bdf27e1707",
    ),
];

/// Migrates the engine's tables, then the application's (idempotent).
pub async fn migrate(db: &Db, backend: Backend) -> engine::Result<()> {
    engine::db::migrate(db, backend).await?;
    let migrator = migrator(backend);
    adopt_listing_indexes(db, backend, &migrator).await?;
    migrator.run(db).await?;
    Ok(())
}

/// Records the current `0008_listing_indexes` checksum where the database ran its earlier
/// text (the same indexes, and the engine's one the engine now owns), so that sqlx's check
/// of applied migrations passes. Any other recorded checksum is left for sqlx to refuse.
async fn adopt_listing_indexes(
    db: &Db,
    backend: Backend,
    migrator: &Migrator,
) -> engine::Result<()> {
    let Some(current) = migrator
        .iter()
        .find(|m| m.version == LISTING_INDEXES_VERSION)
    else {
        return Ok(());
    };
    let before = LISTING_INDEXES_CHECKSUM_BEFORE
        .iter()
        .find(|(b, _)| *b == backend)
        .map(|(_, sum)| hex::decode(sum).expect("a hex constant"))
        .unwrap_or_default();
    if !engine::db::table_exists(db, backend, engine::db::SINGLE_HISTORY_TABLE).await? {
        return Ok(());
    }
    sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2 AND checksum = $3")
        .bind(current.checksum.to_vec())
        .bind(LISTING_INDEXES_VERSION)
        .bind(before)
        .execute(db)
        .await?;
    Ok(())
}
