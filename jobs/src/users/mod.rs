//! Accounts: asking for deletion, cancelling it within the recovery period, and reading
//! where an erasure stands. The HTTP routes call these functions; the erasure itself is the
//! [`crate::hard_delete`] job, enqueued by the daily `hard_delete` schedule once
//! `recovery_deadline` has passed.
//!
//! | function | success | errors (suggested HTTP status) |
//! |---|---|---|
//! | [`request_deletion`] | `active → deletion_requested`, deadline = now + `ACCOUNT_RECOVERY_DAYS` | not found (404), already requested (409), erased (410) |
//! | [`cancel_deletion`] | `deletion_requested → active` | not found (404), not requested (409), deadline passed (409), erased (410) |
//! | [`deletion_status`] | status, deadline, receipt once erasure started | not found (404) |
//! | [`list_deletions`] | every account with a deletion (pending or erased) and its receipt, by id | — |

pub mod state;

use std::time::Duration;

use engine::clock::duration_ms;
use engine::state_machine::{Actor, TransitionError};
use engine::{Backend, Db, DbConn, Engine, Millis};
use serde::Serialize;
use sqlx::Row;

pub use self::state::UserStatus;
use crate::hard_delete::receipt::{self, Receipt};

/// How long a deletion can be cancelled (`ACCOUNT_RECOVERY_DAYS`).
#[derive(Debug, Clone)]
pub struct AccountSettings {
    /// The recovery period.
    pub recovery_period: Duration,
}

impl Default for AccountSettings {
    fn default() -> Self {
        Self {
            recovery_period: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Why a deletion request, cancellation or status read did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeletionError {
    /// No such user (404).
    #[error("user {0} does not exist")]
    NotFound(i64),
    /// Deletion was already requested (409); it can be cancelled until the deadline.
    #[error(
        "deletion of user {user_id} is already requested; it can be cancelled until {recovery_deadline} (ms since the epoch)"
    )]
    AlreadyRequested {
        /// The user.
        user_id: i64,
        /// Until when it can be cancelled.
        recovery_deadline: Millis,
    },
    /// Nothing to cancel: the account is active (409).
    #[error("user {0} has no pending deletion to cancel")]
    NotRequested(i64),
    /// The recovery period is over (409): the account will be erased and cannot be restored.
    #[error(
        "the recovery period of user {user_id} ended at {recovery_deadline} (ms since the epoch); the account can no longer be restored"
    )]
    DeadlinePassed {
        /// The user.
        user_id: i64,
        /// When the period ended.
        recovery_deadline: Millis,
    },
    /// The account is erased (410).
    #[error("user {0} is erased")]
    Erased(i64),
    /// The row changed between our read and our write (409: try again).
    #[error("user {0} changed concurrently; try again")]
    Concurrent(i64),
    /// The database failed (500/503).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl DeletionError {
    fn from_transition(user_id: i64, e: TransitionError) -> Self {
        match e {
            TransitionError::Database(e) => Self::Database(e),
            _ => Self::Concurrent(user_id),
        }
    }
}

/// Where an account's deletion stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeletionStatus {
    /// The user.
    pub user_id: i64,
    /// `active`, `deletion_requested` or `erased`.
    pub status: UserStatus,
    /// When deletion was requested (None when active).
    pub deletion_requested_at: Option<Millis>,
    /// Cancellation is possible before this; the hard delete runs after it.
    pub recovery_deadline: Option<Millis>,
    /// When the database step erased the account.
    pub erased_at: Option<Millis>,
    /// Whether public tracks are kept (credited to an anonymous artist) on erasure.
    pub keep_public_tracks: bool,
    /// The erasure receipt, once the hard delete has started (complete when `finished_at`
    /// is set).
    pub receipt: Option<Receipt>,
}

struct UserRow {
    status: UserStatus,
    recovery_deadline: Option<Millis>,
}

async fn load_user(conn: &mut DbConn, user_id: i64) -> Result<UserRow, DeletionError> {
    let row = sqlx::query("SELECT status, recovery_deadline FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(DeletionError::NotFound(user_id))?;
    let status: String = row.try_get(0)?;
    Ok(UserRow {
        status: UserStatus::parse(&status).ok_or_else(|| {
            DeletionError::Database(sqlx::Error::Decode(
                format!("unknown user status {status:?}").into(),
            ))
        })?,
        recovery_deadline: row.try_get(1)?,
    })
}

/// Asks for the deletion of `user_id`: `active → deletion_requested` with
/// `recovery_deadline = now + ACCOUNT_RECOVERY_DAYS`, audited as `actor`. With
/// `keep_public_tracks`, records whether the user's public tracks survive the erasure
/// (credited to an anonymous artist) or are deleted too; `None` keeps the stored choice.
pub async fn request_deletion(
    engine: &Engine,
    settings: &AccountSettings,
    user_id: i64,
    keep_public_tracks: Option<bool>,
    actor: &Actor,
) -> Result<DeletionStatus, DeletionError> {
    let now = engine.clock().now_ms();
    let mut tx = engine.db().begin().await?;
    write_first(&mut tx, user_id).await?;
    let user = load_user(&mut tx, user_id).await?;
    match user.status {
        UserStatus::Active => {}
        UserStatus::DeletionRequested => {
            return Err(DeletionError::AlreadyRequested {
                user_id,
                recovery_deadline: user.recovery_deadline.unwrap_or_default(),
            });
        }
        UserStatus::Erased => return Err(DeletionError::Erased(user_id)),
    }
    if let Some(keep) = keep_public_tracks {
        sqlx::query("UPDATE users SET keep_public_tracks = $1 WHERE id = $2")
            .bind(i64::from(keep))
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
    }
    let deadline = now.saturating_add(duration_ms(settings.recovery_period));
    state::request_deletion(&mut tx, user_id, deadline, actor, now)
        .await
        .map_err(|e| DeletionError::from_transition(user_id, e))?;
    tx.commit().await?;
    tracing::info!(
        user_id,
        recovery_deadline = deadline,
        "account deletion requested"
    );
    deletion_status(engine.db(), user_id).await
}

/// Cancels a pending deletion before its recovery deadline:
/// `deletion_requested → active`. At or after the deadline it is
/// [`DeletionError::DeadlinePassed`].
pub async fn cancel_deletion(
    engine: &Engine,
    user_id: i64,
    actor: &Actor,
) -> Result<DeletionStatus, DeletionError> {
    let now = engine.clock().now_ms();
    let mut tx = engine.db().begin().await?;
    write_first(&mut tx, user_id).await?;
    let user = load_user(&mut tx, user_id).await?;
    match user.status {
        UserStatus::DeletionRequested => {}
        UserStatus::Active => return Err(DeletionError::NotRequested(user_id)),
        UserStatus::Erased => return Err(DeletionError::Erased(user_id)),
    }
    let deadline = user.recovery_deadline.unwrap_or(Millis::MIN);
    if now >= deadline {
        return Err(DeletionError::DeadlinePassed {
            user_id,
            recovery_deadline: deadline,
        });
    }
    state::cancel_deletion(&mut tx, user_id, actor, now)
        .await
        .map_err(|e| DeletionError::from_transition(user_id, e))?;
    tx.commit().await?;
    tracing::info!(user_id, "account deletion cancelled");
    deletion_status(engine.db(), user_id).await
}

/// A no-op write on the user's row, first in a read-then-write transaction: on SQLite it
/// takes the write lock now (waiting up to the busy timeout) instead of failing with
/// "database is locked" when a worker commits between our read and our write; on Postgres
/// it locks the row, so two requests for one account are serialised.
async fn write_first(conn: &mut DbConn, user_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET id = id WHERE id = $1")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The columns [`deletion_from_row`] reads: the account, then its receipt (if any).
fn deletion_select() -> String {
    format!(
        "SELECT u.id, u.status, u.deletion_requested_at, u.recovery_deadline, u.erased_at, \
         u.keep_public_tracks, {} FROM users u",
        receipt::JOINED_COLUMNS
    )
}

fn deletion_from_row(row: &sqlx::any::AnyRow) -> Result<DeletionStatus, sqlx::Error> {
    let user_id: i64 = row.try_get(0)?;
    let status: String = row.try_get(1)?;
    Ok(DeletionStatus {
        user_id,
        status: UserStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown user status {status:?}").into()))?,
        deletion_requested_at: row.try_get(2)?,
        recovery_deadline: row.try_get(3)?,
        erased_at: row.try_get(4)?,
        keep_public_tracks: row.try_get::<i64, _>(5)? != 0,
        receipt: receipt::from_row(user_id, row, 6)?,
    })
}

/// The account's status, deadline and, once the hard delete has started, its receipt.
pub async fn deletion_status(db: &Db, user_id: i64) -> Result<DeletionStatus, DeletionError> {
    let sql = format!(
        "{} LEFT JOIN erasure_receipts r ON r.user_id = u.id WHERE u.id = $1",
        deletion_select()
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_optional(db)
        .await?
        .ok_or(DeletionError::NotFound(user_id))?;
    Ok(deletion_from_row(&row)?)
}

/// The accounts whose deletion is pending or done, with their receipts, by id from
/// `after_id` (exclusive), at most `limit`: only those in `statuses`, or both non-active
/// statuses when it is empty (an `Active` in `statuses` matches nothing: an active account
/// has no deletion).
pub async fn list_deletions(
    engine: &Engine,
    statuses: &[UserStatus],
    after_id: i64,
    limit: i64,
) -> Result<Vec<DeletionStatus>, sqlx::Error> {
    let Some(sql) = list_deletions_sql(engine.backend(), statuses) else {
        return Ok(Vec::new());
    };
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after_id)
        .bind(limit)
        .fetch_all(engine.db())
        .await?
        .iter()
        .map(deletion_from_row)
        .collect()
}

/// The statement of [`list_deletions`] (`$1` the cursor, `$2` the limit), or `None` when
/// `statuses` wants only active accounts (public for the query-plan test).
#[doc(hidden)]
pub fn list_deletions_sql(backend: Backend, statuses: &[UserStatus]) -> Option<String> {
    use engine::state_machine::Lifecycle;
    let wanted: Vec<&str> = if statuses.is_empty() {
        vec![
            UserStatus::DeletionRequested.as_str(),
            UserStatus::Erased.as_str(),
        ]
    } else {
        statuses
            .iter()
            .filter(|s| **s != UserStatus::Active)
            .map(|s| s.as_str())
            .collect()
    };
    if wanted.is_empty() {
        return None;
    }
    // The names come from the enum, never from the caller. Both planners must read the
    // partial index `users_with_deletion` (the few accounts with a deletion, in id order)
    // rather than `users_deletion_due` and a sort: `status <> 'active'` is the index's own
    // term, which Postgres needs to match it, and SQLite, whose cost model prefers the
    // status index, is told with INDEXED BY (an error, not a silent scan, if it cannot).
    let names: Vec<String> = wanted.iter().map(|s| format!("'{s}'")).collect();
    Some(format!(
        "{}{hint} LEFT JOIN erasure_receipts r ON r.user_id = u.id \
         WHERE u.status <> 'active' AND u.status IN ({}) AND u.id > $1 \
         ORDER BY u.id LIMIT $2",
        deletion_select(),
        names.join(", "),
        hint = match backend {
            Backend::Sqlite => " INDEXED BY users_with_deletion",
            Backend::Postgres => "",
        },
    ))
}
