//! The account lifecycle, and the only code that writes `users.status`.
//!
//! ```text
//! active ─▶ deletion_requested ─▶ erased
//!    ▲              │
//!    └──────────────┘  (cancelled before the recovery deadline)
//! ```

use engine::state_machine::{self, Actor, Lifecycle, TransitionError, Value};
use engine::{DbConn, Millis};

/// An account's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    /// A normal account.
    Active,
    /// The owner asked for deletion; it can be cancelled until `recovery_deadline`, after
    /// which the daily `hard_delete` pass erases it.
    DeletionRequested,
    /// Personal data erased (`hard_delete`); the row stays, anonymised, for references.
    Erased,
}

impl UserStatus {
    /// Every status.
    pub const ALL: [Self; 3] = [Self::Active, Self::DeletionRequested, Self::Erased];

    /// Parses a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl Lifecycle for UserStatus {
    const ENTITY: &'static str = "user";
    const TABLE: &'static str = "users";

    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::DeletionRequested => "deletion_requested",
            Self::Erased => "erased",
        }
    }

    fn can_transition_to(self, to: Self) -> bool {
        use UserStatus::*;
        match (self, to) {
            (Active, DeletionRequested) => true,
            (DeletionRequested, Active) | (DeletionRequested, Erased) => true,
            (Active, _) | (DeletionRequested, _) | (Erased, _) => false,
        }
    }
}

/// `active → deletion_requested`, stamping the request time and the recovery deadline.
pub async fn request_deletion(
    conn: &mut DbConn,
    user_id: i64,
    recovery_deadline: Millis,
    actor: &Actor,
    now: Millis,
) -> Result<(), TransitionError> {
    let extra = [
        ("deletion_requested_at", Value::Int(Some(now))),
        ("recovery_deadline", Value::Int(Some(recovery_deadline))),
    ];
    state_machine::transition(
        conn,
        user_id,
        UserStatus::Active,
        UserStatus::DeletionRequested,
        &extra,
        actor,
        Some("deletion requested"),
        now,
    )
    .await
}

/// `deletion_requested → active`, clearing the request and its deadline.
pub async fn cancel_deletion(
    conn: &mut DbConn,
    user_id: i64,
    actor: &Actor,
    now: Millis,
) -> Result<(), TransitionError> {
    let extra = [
        ("deletion_requested_at", Value::Int(None)),
        ("recovery_deadline", Value::Int(None)),
    ];
    state_machine::transition(
        conn,
        user_id,
        UserStatus::DeletionRequested,
        UserStatus::Active,
        &extra,
        actor,
        Some("deletion cancelled"),
        now,
    )
    .await
}

/// `deletion_requested → erased`, stamping `erased_at`. The caller has already cleared the
/// identity columns in the same transaction (a CHECK constraint insists).
pub async fn mark_erased(
    conn: &mut DbConn,
    user_id: i64,
    actor: &Actor,
    now: Millis,
) -> Result<(), TransitionError> {
    let extra = [("erased_at", Value::Int(Some(now)))];
    state_machine::transition(
        conn,
        user_id,
        UserStatus::DeletionRequested,
        UserStatus::Erased,
        &extra,
        actor,
        Some("personal data erased"),
        now,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_request_cancel_and_erase_only() {
        use UserStatus::*;
        let edges: Vec<_> = UserStatus::ALL
            .iter()
            .flat_map(|a| UserStatus::ALL.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_transition_to(*b))
            .collect();
        assert_eq!(
            edges,
            [
                (Active, DeletionRequested),
                (DeletionRequested, Active),
                (DeletionRequested, Erased)
            ]
        );
    }

    #[test]
    fn stored_names_round_trip() {
        for s in UserStatus::ALL {
            assert_eq!(UserStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(UserStatus::parse("deleted"), None);
    }
}
