//! Connecting to the job database (SQLite or Postgres) and migrating it.
//!
//! Both backends go through sqlx's `Any` driver, so one pool type, one transaction type and,
//! nearly everywhere, one SQL text serve both. Where the dialects differ (row locks, LISTEN)
//! the code asks [`Backend`]. Values are kept to the types `Any` carries on both sides:
//! `BIGINT` milliseconds for time, `TEXT` for JSON and enums, `INTEGER` for counters.
//!
//! The engine migrates only its own tables (jobs, job_attempts, job_steps, schedules,
//! transitions), from
//! `engine/migrations/`, with its own history table ([`ENGINE_MIGRATIONS_TABLE`]): an
//! application keeps its migrations in sqlx's default `_sqlx_migrations` and runs them after
//! [`migrate`], without the two ever sharing a version number.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, AnyPool, Connection, Executor};

use crate::error::{Error, Result};

/// The pool every part of veza-jobs shares.
pub type Db = AnyPool;
/// A connection (or, through `&mut *tx`, a transaction) to write through.
pub type DbConn = AnyConnection;
/// A transaction on the job database.
pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// The SQLite file used when `DATABASE_URL` is unset.
pub const DEFAULT_SQLITE_URL: &str = "sqlite://veza-jobs.db?mode=rwc";

/// Where the engine records which of its migrations have run.
pub const ENGINE_MIGRATIONS_TABLE: &str = "_veza_engine_migrations";

/// The history that, before the engine had its own migrator, held the engine's migrations
/// and the application's together. There, the engine's were versions 1 (`0001_jobs`) and 9
/// (`0009_runtime`): now its 1 and 2. An application must not reuse versions 1 and 9.
pub const SINGLE_HISTORY_TABLE: &str = "_sqlx_migrations";
const SINGLE_HISTORY_VERSIONS: [(i64, i64); 2] = [(1, 1), (9, 2)];

/// Which database the engine runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded, one process: the default.
    Sqlite,
    /// Shared by many worker processes: row locks with SKIP LOCKED, LISTEN/NOTIFY wake-ups.
    Postgres,
}

impl Backend {
    /// The backend a URL names, or `None` for an unsupported scheme.
    pub fn from_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    /// The backend of an open connection.
    pub fn of(conn: &DbConn) -> Self {
        if conn.backend_name() == "PostgreSQL" {
            Self::Postgres
        } else {
            Self::Sqlite
        }
    }

    /// The backend of a pool (one opened by [`connect`]: its URL names one of the two).
    pub fn of_pool(db: &Db) -> Self {
        let url = db.connect_options().database_url.clone();
        Self::from_url(url.as_str()).unwrap_or(Self::Sqlite)
    }

    /// Lower-case name, as used in logs and bench output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// A list of ids as one bound parameter (sqlx's `Any` driver binds no arrays): the JSON
/// text to bind, read in SQL by [`id_in_list`].
pub(crate) fn id_list(ids: &[i64]) -> String {
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("[{}]", ids.join(","))
}

/// The condition "`column` is one of the ids in `param`" (bound with [`id_list`]). On
/// Postgres `= ANY(ARRAY(…))`: the subquery runs once and the ids are one index scan.
pub(crate) fn id_in_list(backend: Backend, column: &str, param: &str) -> String {
    match backend {
        Backend::Postgres => format!(
            "{column} = ANY(ARRAY(SELECT CAST(value AS BIGINT) \
             FROM json_array_elements_text(CAST({param} AS JSON))))"
        ),
        Backend::Sqlite => format!("{column} IN (SELECT value FROM json_each({param}))"),
    }
}

/// How long a pooled Postgres connection may sit idle before it is pinged when acquired
/// (see [`connect`]).
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Opens a pool on `url` (`sqlite://…` or `postgres://…`).
///
/// SQLite connections get WAL, a 10 s busy timeout and foreign keys: the settings under
/// which one writer and many readers share a file without `SQLITE_BUSY` errors under load.
/// And `synchronous=FULL`: every commit is on disk before it returns, as Postgres'
/// `synchronous_commit = on` — with `NORMAL` a WAL commit survives the process but not a
/// power loss, and an enqueue the caller was told is stored could vanish. Measured against
/// `NORMAL`, interleaved (`cargo bench -p engine --bench throughput`, 2026-12-06): a
/// backlog drains as fast (one sync per batch of acks), one-by-one enqueue with 8
/// producers 8.4–11.5k/s against 14–15k/s (group commit shares the syncs), enqueue→start
/// p50 1–2 ms against 1 ms.
///
/// A pooled Postgres connection is checked with a ping before it is handed out only when it
/// has been idle for [`PING_IF_IDLE_FOR`]. sqlx's default pings on every acquire: a second
/// round trip for every statement the engine and the API run. Measured interleaved against
/// it (2026-12-06): `GET /v1/jobs/{id}` on Postgres 8.1–8.8k req/s against 7.1–7.6k,
/// one-by-one enqueue 7.0–7.7k/s against 6.3–6.4k/s, enqueue→start p99 3 ms against 5 ms.
/// A connection used within the last second is as likely alive as one pinged a moment
/// ago; one that died anyway fails its statement with an error that
/// [`crate::error::is_unavailable`] names, which the runtime retries (its database backoff)
/// and the API answers with 503 — as it would for a connection lost between a ping and its
/// statement. (sqlx also pings every connection as it goes back to the pool, off the
/// caller's path; no setting turns that one off.)
pub async fn connect(url: &str, max_connections: u32) -> Result<(Db, Backend)> {
    sqlx::any::install_default_drivers();
    let backend = Backend::from_url(url).ok_or_else(|| Error::UnsupportedUrl(redact(url)))?;
    let options = AnyConnectOptions::from_str(url)?;
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            Box::pin(async move {
                if backend == Backend::Postgres && meta.idle_for >= PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    Ok((pool, backend))
}

/// The engine's migrations for `backend`, recorded in [`ENGINE_MIGRATIONS_TABLE`].
pub fn engine_migrator(backend: Backend) -> Migrator {
    let mut migrator = match backend {
        Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("migrations/postgres"),
    };
    migrator.dangerous_set_table_name(ENGINE_MIGRATIONS_TABLE);
    migrator
}

/// Applies the engine's migrations (idempotent; concurrent callers wait on sqlx's migration
/// lock). An application runs its own after this.
pub async fn migrate(db: &Db, backend: Backend) -> Result<()> {
    let migrator = engine_migrator(backend);
    adopt_single_history(db, backend, &migrator).await?;
    migrator.run(db).await?;
    Ok(())
}

/// A database migrated while the engine's migrations shared [`SINGLE_HISTORY_TABLE`] with
/// the application's already has the engine's tables: the engine migrations it ran there
/// are recorded as applied in the engine's own history (without running them again).
/// Idempotent: `skip` records only what is missing, under the migration lock.
async fn adopt_single_history(db: &Db, backend: Backend, engine: &Migrator) -> Result<()> {
    if !table_exists(db, backend, SINGLE_HISTORY_TABLE).await? {
        return Ok(());
    }
    let ran: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE success AND version IN (1, 9)",
    )
    .fetch_all(db)
    .await?;
    let adopted = SINGLE_HISTORY_VERSIONS
        .iter()
        .filter(|(old, _)| ran.contains(old))
        .map(|&(_, new)| new)
        .max();
    if let Some(last) = adopted {
        engine.skip(db, Some(last)).await?;
    }
    Ok(())
}

/// Whether the table `name` exists (on Postgres: on the search path, as sqlx resolves its
/// migration table).
pub async fn table_exists(db: &Db, backend: Backend, name: &str) -> Result<bool> {
    let sql = match backend {
        Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
        Backend::Postgres => "SELECT COUNT(to_regclass($1))",
    };
    Ok(sqlx::query_scalar::<_, i64>(sql)
        .bind(name)
        .fetch_one(db)
        .await?
        > 0)
}

/// Checks the database answers (for `/ready`).
pub async fn ping(db: &Db) -> Result<()> {
    let mut conn = db.acquire().await?;
    conn.ping().await?;
    Ok(())
}

/// A URL with its password replaced, safe to log or print.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}://{user}:***{}", &url[..scheme_end], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_is_read_from_the_url_scheme() {
        assert_eq!(Backend::from_url("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(
            Backend::from_url("postgres://u@h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::from_url("postgresql://u@h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::from_url("mysql://u@h/db"), None);
    }

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact("sqlite://veza-jobs.db"), "sqlite://veza-jobs.db");
    }
}
