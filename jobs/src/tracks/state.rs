//! The track lifecycle, and the only code that writes `tracks.status`.
//!
//! ```text
//! processing ─▶ ready
//!      │
//!      └──────▶ failed
//! ```

use engine::state_machine::{self, Actor, Lifecycle, TransitionError, Value};
use engine::{DbConn, Millis};

/// A track's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackStatus {
    /// Uploaded; transcoding and thumbnails are under way.
    Processing,
    /// Playable.
    Ready,
    /// Processing failed; `status_message` says why.
    Failed,
}

impl Lifecycle for TrackStatus {
    const ENTITY: &'static str = "track";
    const TABLE: &'static str = "tracks";

    fn as_str(self) -> &'static str {
        match self {
            Self::Processing => "processing",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }

    fn can_transition_to(self, to: Self) -> bool {
        use TrackStatus::*;
        match (self, to) {
            (Processing, Ready) | (Processing, Failed) => true,
            (Processing, Processing) | (Ready, _) | (Failed, _) => false,
        }
    }
}

impl TrackStatus {
    /// Parses a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Processing, Self::Ready, Self::Failed]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// Moves track `id` from `from` to `to` with a status message, writing the audit row, on
/// `conn` (the caller's transaction).
pub async fn transition(
    conn: &mut DbConn,
    id: i64,
    from: TrackStatus,
    to: TrackStatus,
    message: Option<&str>,
    actor: &Actor,
    now: Millis,
) -> Result<(), TransitionError> {
    let extra = [("status_message", Value::Text(message.map(str::to_owned)))];
    state_machine::transition(conn, id, from, to, &extra, actor, message, now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_processing_tracks_move() {
        use TrackStatus::*;
        let all = [Processing, Ready, Failed];
        let edges: Vec<_> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_transition_to(*b))
            .collect();
        assert_eq!(edges, [(Processing, Ready), (Processing, Failed)]);
    }

    #[test]
    fn stored_names_round_trip() {
        for s in [
            TrackStatus::Processing,
            TrackStatus::Ready,
            TrackStatus::Failed,
        ] {
            assert_eq!(TrackStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(TrackStatus::parse("deleted"), None);
    }
}
