//! The data export lifecycle, and the only code that writes `data_exports.status`.
//!
//! ```text
//! pending ─▶ running ─▶ ready ─▶ expired
//!    │          │
//!    └──────────┴─────▶ failed
//! ```
//!
//! A retried `data_export` job finds its export `running` and carries on from there; only
//! a permanent failure (or the last attempt) moves it to `failed`.

use engine::state_machine::{self, Actor, Lifecycle, TransitionError, Value};
use engine::{DbConn, Millis};

/// A data export's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportStatus {
    /// Requested; its job has not started.
    Pending,
    /// The job is writing the ZIP (progress on the row).
    Running,
    /// The ZIP is complete and downloadable until `expires_at`.
    Ready,
    /// It failed; `error` says why.
    Failed,
    /// Its file was deleted by `export_cleanup` after `EXPORT_RETENTION`.
    Expired,
}

impl ExportStatus {
    /// Every status.
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Running,
        Self::Ready,
        Self::Failed,
        Self::Expired,
    ];

    /// Parses a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl Lifecycle for ExportStatus {
    const ENTITY: &'static str = "data_export";
    const TABLE: &'static str = "data_exports";

    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }

    fn can_transition_to(self, to: Self) -> bool {
        use ExportStatus::*;
        match (self, to) {
            (Pending, Running) | (Pending, Failed) => true,
            (Running, Ready) | (Running, Failed) => true,
            (Ready, Expired) => true,
            (Pending, _) | (Running, _) | (Ready, _) | (Failed, _) | (Expired, _) => false,
        }
    }
}

/// `pending → running`: the job started, with the number of rows it will write.
pub async fn start(
    conn: &mut DbConn,
    id: i64,
    rows_total: i64,
    actor: &Actor,
    now: Millis,
) -> Result<(), TransitionError> {
    let extra = [
        ("started_at", Value::Int(Some(now))),
        ("rows_total", Value::Int(Some(rows_total))),
        ("rows_done", Value::Int(Some(0))),
        ("error", Value::Text(None)),
    ];
    state_machine::transition(
        conn,
        id,
        ExportStatus::Pending,
        ExportStatus::Running,
        &extra,
        actor,
        None,
        now,
    )
    .await
}

/// What a finished ZIP is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyFile {
    /// Rows written.
    pub rows: i64,
    /// File size.
    pub size_bytes: i64,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// Download links stop working after this.
    pub link_expires_at: Millis,
    /// `export_cleanup` deletes the file after this.
    pub expires_at: Millis,
}

/// `running → ready` with the file's size, checksum and expiries.
pub async fn mark_ready(
    conn: &mut DbConn,
    id: i64,
    file: &ReadyFile,
    actor: &Actor,
    now: Millis,
) -> Result<(), TransitionError> {
    let extra = [
        ("ready_at", Value::Int(Some(now))),
        ("rows_done", Value::Int(Some(file.rows))),
        ("size_bytes", Value::Int(Some(file.size_bytes))),
        ("sha256", Value::Text(Some(file.sha256.clone()))),
        ("link_expires_at", Value::Int(Some(file.link_expires_at))),
        ("expires_at", Value::Int(Some(file.expires_at))),
        ("error", Value::Text(None)),
    ];
    state_machine::transition(
        conn,
        id,
        ExportStatus::Running,
        ExportStatus::Ready,
        &extra,
        actor,
        None,
        now,
    )
    .await
}

/// `pending|running → failed` with the error the user and admins see.
pub async fn fail(
    conn: &mut DbConn,
    id: i64,
    from: ExportStatus,
    error: &str,
    actor: &Actor,
    now: Millis,
) -> Result<(), TransitionError> {
    let extra = [("error", Value::Text(Some(error.to_owned())))];
    state_machine::transition(
        conn,
        id,
        from,
        ExportStatus::Failed,
        &extra,
        actor,
        Some(error),
        now,
    )
    .await
}

/// `ready → expired`: its file is gone.
pub async fn expire(
    conn: &mut DbConn,
    id: i64,
    actor: &Actor,
    now: Millis,
) -> Result<(), TransitionError> {
    state_machine::transition(
        conn,
        id,
        ExportStatus::Ready,
        ExportStatus::Expired,
        &[],
        actor,
        Some("file deleted after EXPORT_RETENTION"),
        now,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_follow_the_diagram() {
        use ExportStatus::*;
        let edges: Vec<_> = ExportStatus::ALL
            .iter()
            .flat_map(|a| ExportStatus::ALL.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_transition_to(*b))
            .collect();
        assert_eq!(
            edges,
            [
                (Pending, Running),
                (Pending, Failed),
                (Running, Ready),
                (Running, Failed),
                (Ready, Expired)
            ]
        );
    }

    #[test]
    fn stored_names_round_trip() {
        for s in ExportStatus::ALL {
            assert_eq!(ExportStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ExportStatus::parse("done"), None);
    }
}
