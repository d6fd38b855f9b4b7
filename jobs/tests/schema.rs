//! The two migration histories: the engine's own tables in `_veza_engine_migrations`, the
//! application's in `_sqlx_migrations`; and the adoption of a database migrated while one
//! history held both (versions 1 and 9 were the engine's, 0008 also made an engine index).

use engine::db::{ENGINE_MIGRATIONS_TABLE, SINGLE_HISTORY_TABLE};
use engine::testing::TestDb;
use engine::{Backend, Db};
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// What a database migrated by the single history ran, in its order, with its versions.
fn single_history(backend: Backend) -> Migrator {
    let (engine_tables, engine_runtime, listing_indexes) = match backend {
        Backend::Postgres => (
            include_str!("../../engine/migrations/postgres/0001_jobs.sql"),
            include_str!("../../engine/migrations/postgres/0002_runtime.sql"),
            include_str!("fixtures/single_history/postgres_0008_listing_indexes.sql"),
        ),
        Backend::Sqlite => (
            include_str!("../../engine/migrations/sqlite/0001_jobs.sql"),
            include_str!("../../engine/migrations/sqlite/0002_runtime.sql"),
            include_str!("fixtures/single_history/sqlite_0008_listing_indexes.sql"),
        ),
    };
    let simple = |version: i64, description: &str, sql: &'static str| {
        Migration::new(
            version,
            description.to_owned().into(),
            MigrationType::Simple,
            sqlx::SqlStr::from_static(sql),
            false,
        )
    };
    let app = jobs::schema::migrator(backend);
    let app_version = |v: i64| {
        app.iter()
            .find(|m| m.version == v)
            .cloned()
            .expect("an application migration")
    };
    let mut migrations = vec![simple(1, "jobs", engine_tables)];
    migrations.extend((2..=7).map(app_version));
    migrations.push(simple(8, "listing indexes", listing_indexes));
    migrations.push(simple(9, "runtime", engine_runtime));
    migrations.extend([14, 15, 16].map(app_version));
    Migrator::with_migrations(migrations)
}

/// Every (table, index) of the database, sorted; the migration tables left out.
async fn indexes(db: &Db, backend: Backend) -> Vec<(String, String)> {
    let sql = match backend {
        Backend::Sqlite => {
            "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' \
             AND name NOT LIKE 'sqlite_autoindex%' ORDER BY 1, 2"
        }
        Backend::Postgres => {
            "SELECT tablename::text, indexname::text FROM pg_indexes \
             WHERE schemaname = current_schema() ORDER BY 1, 2"
        }
    };
    sqlx::query_as::<_, (String, String)>(sql)
        .fetch_all(db)
        .await
        .unwrap()
        .into_iter()
        .filter(|(table, _)| !table.starts_with('_'))
        .collect()
}

/// Every engine migration's version, in order (all of them applied, none other).
fn engine_versions(backend: Backend) -> Vec<i64> {
    engine::db::engine_migrator(backend)
        .iter()
        .map(|m| m.version)
        .collect()
}

async fn versions(db: &Db, table: &str) -> Vec<i64> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM {table} ORDER BY version"
    )))
    .fetch_all(db)
    .await
    .unwrap()
}

async fn a_single_history_database_is_adopted_with_its_data(backend: Backend) {
    let Some(old) = TestDb::blank(backend).await else {
        return;
    };
    single_history(backend).run(&old.db).await.unwrap();
    let before = indexes(&old.db, backend).await;
    // A job queued by the release that had this schema (its columns only).
    let kept: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (kind, args, status, max_attempts, run_at, created_at) \
         VALUES ('orphan_sweep', '{}', 'pending', 3, 0, 0) RETURNING id",
    )
    .fetch_one(&old.db)
    .await
    .unwrap();

    jobs::schema::migrate(&old.db, backend).await.unwrap();
    // Again: nothing left to do, nothing refused.
    jobs::schema::migrate(&old.db, backend).await.unwrap();

    assert_eq!(
        versions(&old.db, ENGINE_MIGRATIONS_TABLE).await,
        engine_versions(backend)
    );
    let engine_rows: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT execution_time FROM {ENGINE_MIGRATIONS_TABLE} WHERE version <= 2"
    )))
    .fetch_all(&old.db)
    .await
    .unwrap();
    assert!(
        engine_rows.iter().all(|&t| t == -1),
        "adopted, not run again: {engine_rows:?}"
    );
    assert_eq!(
        engine::admin::get_job(&old.db, kept)
            .await
            .unwrap()
            .job
            .kind,
        "orphan_sweep",
        "the job survives the adoption"
    );
    let fresh = TestDb::with_schema(backend, jobs::schema::migrator)
        .await
        .unwrap();
    let after = indexes(&old.db, backend).await;
    let old_tables: Vec<_> = after
        .iter()
        .filter(|(table, _)| table != "job_steps" && table != "job_signals")
        .filter(|(_, index)| index != "jobs_scheduled" && index != "jobs_children")
        .cloned()
        .collect();
    assert_eq!(
        old_tables, before,
        "adoption keeps every index (job_steps and job_signals are new, and so are the \
         later migrations' jobs_scheduled and jobs_children)"
    );
    assert_eq!(
        after,
        indexes(&fresh.db, backend).await,
        "an adopted database has the schema of a new one"
    );
}

async fn the_engine_migrates_only_its_own_tables(backend: Backend) {
    let Some(t) = TestDb::new(backend).await else {
        return;
    };
    let tables: Vec<String> = sqlx::query_scalar(match backend {
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name <> 'sqlite_sequence' ORDER BY name"
        }
        Backend::Postgres => {
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() \
             ORDER BY tablename"
        }
    })
    .fetch_all(&t.db)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            ENGINE_MIGRATIONS_TABLE,
            "job_attempts",
            "job_signals",
            "job_steps",
            "jobs",
            "schedules",
            "transitions"
        ]
    );
    assert!(
        !engine::db::table_exists(&t.db, backend, SINGLE_HISTORY_TABLE)
            .await
            .unwrap()
    );

    // The application's history then starts beside it, at its own versions.
    jobs::schema::migrate(&t.db, backend).await.unwrap();
    let app = versions(&t.db, SINGLE_HISTORY_TABLE).await;
    assert!(!app.contains(&1) && !app.contains(&9), "{app:?}");
    assert_eq!(
        versions(&t.db, ENGINE_MIGRATIONS_TABLE).await,
        engine_versions(backend)
    );
}

/// A database whose recorded 0008 is neither text is refused, not silently "fixed".
async fn an_unknown_checksum_is_still_refused(backend: Backend) {
    let Some(t) = TestDb::with_schema(backend, jobs::schema::migrator).await else {
        return;
    };
    sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = 8")
        .bind(vec![0u8; 48])
        .execute(&t.db)
        .await
        .unwrap();
    let refused = jobs::schema::migrate(&t.db, backend).await.unwrap_err();
    assert!(
        matches!(
            refused,
            engine::Error::Migrate(sqlx::migrate::MigrateError::VersionMismatch(8))
        ),
        "{refused:?}"
    );
}

macro_rules! on_both {
    ($($name:ident),*) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(engine::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(engine::Backend::Postgres).await;
            }
        }
    )*};
}

on_both!(
    a_single_history_database_is_adopted_with_its_data,
    the_engine_migrates_only_its_own_tables,
    an_unknown_checksum_is_still_refused
);
