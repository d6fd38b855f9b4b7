//! `/v1/transitions`: the audit trail of one domain row.

use engine::state_machine::Lifecycle;
use jobs::exports::ExportStatus;
use jobs::tracks::TrackStatus;
use jobs::users::UserStatus;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::ApiTags;
use crate::auth::{ApiKeyAuth, Scope};
use crate::problem::ApiError;
use crate::state::ApiState;

/// The kinds of rows with an audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum Entity {
    /// A job (`/v1/jobs/{id}`): cancels and retries.
    Job,
    /// A track.
    Track,
    /// A seller transfer (`/v1/transfers/{id}`).
    SellerTransfer,
    /// A user's account (deletion requested, restored, erased).
    User,
    /// A data export.
    DataExport,
    /// An API key (created, revoked).
    ApiKey,
    /// A schedule, by name (run now).
    Schedule,
}

impl Entity {
    /// Every entity.
    pub const ALL: [Self; 7] = [
        Self::Job,
        Self::Track,
        Self::SellerTransfer,
        Self::User,
        Self::DataExport,
        Self::ApiKey,
        Self::Schedule,
    ];

    /// The name the audit trail stores, from each domain's own constant.
    pub fn name(self) -> &'static str {
        match self {
            Self::Job => "job",
            Self::Track => TrackStatus::ENTITY,
            Self::SellerTransfer => jobs::transfers::state::ENTITY,
            Self::User => UserStatus::ENTITY,
            Self::DataExport => ExportStatus::ENTITY,
            Self::ApiKey => crate::auth::keys::ENTITY,
            Self::Schedule => "schedule",
        }
    }

    /// The table of the rows with integer ids (schedules are named, and known to the
    /// scheduler).
    fn table(self) -> Option<&'static str> {
        match self {
            Self::Job => Some("jobs"),
            Self::Track => Some("tracks"),
            Self::SellerTransfer => Some("seller_transfers"),
            Self::User => Some("users"),
            Self::DataExport => Some("data_exports"),
            Self::ApiKey => Some("api_keys"),
            Self::Schedule => None,
        }
    }

    /// True when the row exists now: a row of its table, or a schedule of this process
    /// (as `/v1/schedules` lists them).
    async fn exists(self, state: &ApiState, id: &str) -> Result<bool, sqlx::Error> {
        let Some(table) = self.table() else {
            return Ok(state.scheduler.schedules().iter().any(|s| s.name == id));
        };
        let Ok(id) = id.parse::<i64>() else {
            // Integer ids only: no such row.
            return Ok(false);
        };
        let sql = format!("SELECT 1 FROM {table} WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(state.engine.db())
            .await?;
        Ok(row.is_some())
    }
}

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
    /// The status changes of one row, oldest first. Scope: read.
    ///
    /// 404 when there is no such row and no trail of it, as `/v1/jobs/{id}` answers for a
    /// job that does not exist; an existing row that never changed has an empty trail, and
    /// the trail of a deleted row (a track erased with its owner, a pruned job) stays
    /// readable.
    #[oai(path = "/v1/transitions", method = "get")]
    async fn list(
        &self,
        auth: ApiKeyAuth,
        /// The kind of row.
        entity: Query<Entity>,
        /// The row's id (a schedule's name).
        #[oai(validator(min_length = 1, max_length = 100))]
        id: Query<String>,
    ) -> Result<Json<Vec<TransitionView>>, ApiError> {
        auth.require(Scope::Read)?;
        let (entity, id) = (entity.0, id.0);
        let mut conn = self.0.engine.db().acquire().await?;
        let history = engine::state_machine::history(&mut conn, entity.name(), &id).await?;
        if history.is_empty() && !entity.exists(&self.0, &id).await? {
            return Err(ApiError::not_found(format!(
                "no {} {id:?}: no such row and no transitions",
                entity.name()
            )));
        }
        Ok(Json(history.into_iter().map(Into::into).collect()))
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::ToJSON;

    use super::*;

    #[test]
    fn each_entity_is_named_in_the_query_as_in_the_audit_trail() {
        for entity in Entity::ALL {
            assert_eq!(
                entity.to_json(),
                Some(serde_json::Value::from(entity.name())),
                "{entity:?}"
            );
        }
    }
}
