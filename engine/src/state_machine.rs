//! The one way a domain row changes status: an allowed-transition table, a guarded
//! `UPDATE … WHERE id = :id AND status = :from`, and an audit row in the same transaction.
//!
//! A domain (tracks, seller transfers, …) describes its statuses with [`Lifecycle`] in a
//! single `state.rs` module and calls [`transition`] from there; nothing else in the
//! workspace writes a `status` column (a test in the `jobs` crate scans the sources).

use std::fmt;

use sqlx::{AssertSqlSafe, Connection, Row};

use crate::clock::Millis;
use crate::db::DbConn;

/// Who caused a change, as recorded in the audit trail: `job:42`, `api_key:7`,
/// `schedule:orphan_sweep`, `webhook:evt_…`, `cli`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    /// A job (by id).
    pub fn job(id: i64) -> Self {
        Self(format!("job:{id}"))
    }
    /// An API key (by id).
    pub fn api_key(id: i64) -> Self {
        Self(format!("api_key:{id}"))
    }
    /// A named schedule.
    pub fn schedule(name: &str) -> Self {
        Self(format!("schedule:{name}"))
    }
    /// A webhook event (by the sender's event id).
    pub fn webhook(event_id: &str) -> Self {
        Self(format!("webhook:{event_id}"))
    }
    /// The command line.
    pub fn cli() -> Self {
        Self("cli".to_owned())
    }
    /// Another named caller (`apalis`, for the apalis admin traits).
    pub fn named(name: &str) -> Self {
        Self(name.to_owned())
    }
    /// The stored text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The statuses of one kind of domain row and the edges between them.
pub trait Lifecycle: Copy + Eq + fmt::Debug + Send + Sync + 'static {
    /// The entity name in the audit trail (`track`, `seller_transfer`).
    const ENTITY: &'static str;
    /// The table holding the rows; it has `id`, `status` and `updated_at` columns.
    const TABLE: &'static str;
    /// The stored name of a status.
    fn as_str(self) -> &'static str;
    /// True when `self → to` is an allowed edge.
    fn can_transition_to(self, to: Self) -> bool;
    /// True when the table has a `version` column, bumped by every transition: then a
    /// self-transition (`failed → failed`, a retry bump) is guarded by the version the
    /// caller read ([`transition_seen`]), which a status guard alone cannot do.
    const VERSIONED: bool = false;
}

/// The `from_status` of the audit row written when a row is created (its first status is
/// the `to_status`).
pub const CREATED: &str = "none";

/// A value for one of the extra columns a transition sets with the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Text or NULL.
    Text(Option<String>),
    /// Integer or NULL.
    Int(Option<i64>),
}

/// Why a transition did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// The edge is not in the table: a programming error or a bad admin request.
    #[error("{entity} cannot go from {from} to {to}")]
    NotAllowed {
        /// Entity name.
        entity: &'static str,
        /// Current status.
        from: &'static str,
        /// Requested status.
        to: &'static str,
    },
    /// The row was not in `expected` any more (a concurrent winner or a stale read), or
    /// does not exist. Nothing was written.
    #[error("{entity} {id} is no longer {expected} (changed concurrently, or missing)")]
    Stale {
        /// Entity name.
        entity: &'static str,
        /// Row id.
        id: i64,
        /// The status the caller believed it had.
        expected: &'static str,
    },
    /// The database failed.
    #[error("database error during transition")]
    Database(#[from] sqlx::Error),
}

/// Moves row `id` of `S::TABLE` from `from` to `to`, setting `extra` columns with it, and
/// writes the audit row, all on `conn` (run it inside the transaction that also enqueues
/// the follow-up job). Zero rows updated is [`TransitionError::Stale`], never a silent
/// overwrite.
///
/// The update and its audit row commit together whatever `conn` is: the function opens its
/// own transaction, a savepoint when `conn` is already in one. A caller that passes a
/// pooled connection still never leaves a status change without its audit row.
#[allow(clippy::too_many_arguments)]
pub async fn transition<S: Lifecycle>(
    conn: &mut DbConn,
    id: i64,
    from: S,
    to: S,
    extra: &[(&'static str, Value)],
    actor: &Actor,
    note: Option<&str>,
    now: Millis,
) -> Result<(), TransitionError> {
    transition_seen(conn, id, from, None, to, extra, actor, note, now).await
}

/// [`transition`] from the row as the caller read it, `from` at `version` (a
/// [`Lifecycle::VERSIONED`] table's `version` column): any change since that read, a
/// self-transition included, makes it [`TransitionError::Stale`]. Every transition of a
/// versioned table bumps the version.
#[allow(clippy::too_many_arguments)]
pub async fn transition_seen<S: Lifecycle>(
    conn: &mut DbConn,
    id: i64,
    from: S,
    version: Option<i64>,
    to: S,
    extra: &[(&'static str, Value)],
    actor: &Actor,
    note: Option<&str>,
    now: Millis,
) -> Result<(), TransitionError> {
    if !from.can_transition_to(to) {
        return Err(TransitionError::NotAllowed {
            entity: S::ENTITY,
            from: from.as_str(),
            to: to.as_str(),
        });
    }
    let mut sql = format!("UPDATE {} SET status = $1, updated_at = $2", S::TABLE);
    let first_extra = if S::VERSIONED { 6 } else { 5 };
    if S::VERSIONED {
        sql.push_str(", version = version + 1");
    }
    for (i, (column, _)) in extra.iter().enumerate() {
        sql.push_str(&format!(", {column} = ${}", i + first_extra));
    }
    sql.push_str(" WHERE id = $3 AND status = $4");
    if S::VERSIONED {
        sql.push_str(" AND ($5 IS NULL OR version = $5)");
    }
    let mut query = sqlx::query(AssertSqlSafe(sql))
        .bind(to.as_str())
        .bind(now)
        .bind(id)
        .bind(from.as_str());
    if S::VERSIONED {
        query = query.bind(version);
    }
    for (_, value) in extra {
        query = match value {
            Value::Text(v) => query.bind(v.clone()),
            Value::Int(v) => query.bind(*v),
        };
    }
    let mut tx = conn.begin().await?;
    let n = query.execute(&mut *tx).await?.rows_affected();
    if n == 0 {
        return Err(TransitionError::Stale {
            entity: S::ENTITY,
            id,
            expected: from.as_str(),
        });
    }
    record(
        &mut tx,
        S::ENTITY,
        &id.to_string(),
        from.as_str(),
        to.as_str(),
        actor,
        note,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Writes one audit row. [`transition`] calls it; the engine also records admin actions on
/// jobs (cancel, retry) with it.
#[allow(clippy::too_many_arguments)]
pub async fn record(
    conn: &mut DbConn,
    entity: &str,
    entity_id: &str,
    from: &str,
    to: &str,
    actor: &Actor,
    note: Option<&str>,
    now: Millis,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO transitions (entity, entity_id, from_status, to_status, actor, at, note) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(entity)
    .bind(entity_id)
    .bind(from)
    .bind(to)
    .bind(actor.as_str())
    .bind(now)
    .bind(note)
    .execute(conn)
    .await?;
    Ok(())
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Entity name.
    pub entity: String,
    /// Row id.
    pub entity_id: String,
    /// Status before.
    pub from_status: String,
    /// Status after.
    pub to_status: String,
    /// Who.
    pub actor: String,
    /// When (ms since the epoch).
    pub at: Millis,
    /// Free text (a reason, an error).
    pub note: Option<String>,
}

/// The audit trail of one row, oldest first.
pub async fn history(
    conn: &mut DbConn,
    entity: &str,
    entity_id: &str,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT entity, entity_id, from_status, to_status, actor, at, note FROM transitions \
         WHERE entity = $1 AND entity_id = $2 ORDER BY id",
    )
    .bind(entity)
    .bind(entity_id)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(AuditEntry {
                entity: r.try_get(0)?,
                entity_id: r.try_get(1)?,
                from_status: r.try_get(2)?,
                to_status: r.try_get(3)?,
                actor: r.try_get(4)?,
                at: r.try_get(5)?,
                note: r.try_get(6)?,
            })
        })
        .collect()
}
