//! The engine's error type.

/// Everything that can go wrong in the engine, as seen by its callers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database failed or could not be reached.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// `DATABASE_URL` names a database the engine does not support.
    #[error("unsupported database URL {0:?}: expected sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    /// Job args could not be encoded as JSON.
    #[error("job args could not be encoded")]
    Encode(#[from] serde_json::Error),
    /// No job has this id.
    #[error("job {0} not found")]
    JobNotFound(i64),
    /// The job's state does not allow the requested operation.
    #[error("job {id} is {state}, and {operation} needs {expected}")]
    InvalidJobState {
        /// The job.
        id: i64,
        /// Its state now.
        state: crate::job::JobState,
        /// What was asked (`cancel`, `retry`).
        operation: &'static str,
        /// The states that would have allowed it.
        expected: &'static str,
    },
    /// The job was already sent a signal of this name (one per name).
    #[error("job {id} was already sent the signal {name:?}")]
    SignalAlreadySent {
        /// The job.
        id: i64,
        /// The signal's name.
        name: String,
    },
    /// Retrying the job would give a second unfinished job the same unique key.
    #[error("job {id} cannot be retried: unfinished job {holder} holds its unique key")]
    UniqueKeyHeld {
        /// The job that was to be retried.
        id: i64,
        /// The unfinished job holding the key.
        holder: i64,
    },
    /// No schedule has this name.
    #[error("no schedule named {0:?}")]
    ScheduleNotFound(String),
    /// No job kind with this name is registered.
    #[error("no job kind named {0:?} is registered")]
    UnknownKind(String),
    /// The engine was dropped before a queued call was served: an enqueue (nothing was
    /// written) or a group read.
    #[error("the engine was dropped before the call was served (an enqueue: nothing was written)")]
    ShuttingDown,
    /// A domain state transition was refused (see [`crate::state_machine`]).
    #[error(transparent)]
    Transition(#[from] crate::state_machine::TransitionError),
}

impl Error {
    /// True for a unique-constraint violation reported by either backend.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Error::Database(e) if is_unique_violation(e))
    }

    /// True when the database could not be reached or its connection broke (not when it
    /// refused a statement): worth retrying later as is.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Database(e) if is_unavailable(e))
    }

    /// This error as told to a caller other than the one it happened to, when one
    /// statement served several (a group read): its message, and whether the database was
    /// out of reach ([`Error::is_unavailable`]: 503 to retry, not 500), kept.
    pub(crate) fn copy_for_another_caller(&self) -> Error {
        let message = crate::job::error_chain(self);
        Error::Database(if self.is_unavailable() {
            sqlx::Error::Io(std::io::Error::other(message))
        } else {
            sqlx::Error::Protocol(message)
        })
    }
}

/// True when a sqlx error says the database is out of reach (connection refused or
/// broken, pool closed or exhausted, the server shutting down or its process for this
/// connection terminated: SQLSTATE classes 08 and 57P), as opposed to a statement it
/// refused.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// True when a sqlx error is a unique-constraint violation, on either backend.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for crate::job::JobError {
    /// An engine error inside a handler (an enqueue, a commit) is transient, with its
    /// cause chain.
    fn from(e: Error) -> Self {
        Self::Transient(crate::job::error_chain(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copy told to the other callers of a group keeps the message and whether the
    /// database was out of reach.
    #[test]
    fn a_copy_for_another_caller_keeps_the_message_and_the_kind() {
        let out_of_reach = Error::Database(sqlx::Error::PoolClosed);
        let copy = out_of_reach.copy_for_another_caller();
        assert!(copy.is_unavailable());
        assert!(crate::job::error_chain(&copy).contains("pool"), "{copy:?}");
        let refused = Error::Database(sqlx::Error::Protocol("bad row".into()));
        let copy = refused.copy_for_another_caller();
        assert!(!copy.is_unavailable());
        assert!(crate::job::error_chain(&copy).contains("bad row"));
    }
}
