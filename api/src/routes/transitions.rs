//! `/v1/transitions`: the audit trail of one domain row.

use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::ApiTags;
use crate::auth::{ApiKeyAuth, Scope};
use crate::problem::ApiError;
use crate::state::ApiState;

/// One status change.
#[derive(Debug, Clone, Object)]
pub struct TransitionView {
    /// Entity (`track`, `seller_transfer`, …).
    pub entity: String,
    /// Row id.
    pub entity_id: String,
    /// Status before.
    pub from_status: String,
    /// Status after.
    pub to_status: String,
    /// Who: `job:42`, `api_key:7`, `schedule:…`, `webhook:…`, `cli`.
    pub actor: String,
    /// When (ms since the Unix epoch).
    pub at: i64,
    /// A reason or error.
    #[oai(nullable)]
    pub note: Option<String>,
}

impl From<engine::state_machine::AuditEntry> for TransitionView {
    fn from(t: engine::state_machine::AuditEntry) -> Self {
        Self {
            entity: t.entity,
            entity_id: t.entity_id,
            from_status: t.from_status,
            to_status: t.to_status,
            actor: t.actor,
            at: t.at,
            note: t.note,
        }
    }
}

/// The transitions routes.
pub struct TransitionsApi(pub ApiState);

#[OpenApi(tag = "ApiTags::Transitions")]
impl TransitionsApi {
    /// The status changes of one row, oldest first (empty when there are none). Scope: read.
    #[oai(path = "/v1/transitions", method = "get")]
    async fn list(
        &self,
        auth: ApiKeyAuth,
        /// The entity, e.g. `track`.
        #[oai(validator(min_length = 1, max_length = 100))]
        entity: Query<String>,
        /// The row's id.
        #[oai(validator(min_length = 1, max_length = 100))]
        id: Query<String>,
    ) -> Result<Json<Vec<TransitionView>>, ApiError> {
        auth.require(Scope::Read)?;
        let mut conn = self.0.engine.db().acquire().await?;
        let history = engine::state_machine::history(&mut conn, &entity.0, &id.0).await?;
        Ok(Json(history.into_iter().map(Into::into).collect()))
    }
}
