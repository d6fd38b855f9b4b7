//! `/v1/api-keys` (admin): create (the key is in the answer, once), list, revoke; both
//! changes are in the audit trail under the caller's key.

use engine::Actor;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::ApiTags;
use crate::auth::keys::{self, ApiKeyInfo, CreatedKey};
use crate::auth::{ApiKeyAuth, Scope};
use crate::problem::ApiError;
use crate::state::ApiState;

/// A key to create.
#[derive(Debug, Clone, Object)]
pub struct NewApiKey {
    /// Who or what it is for.
    #[oai(
        validator(min_length = 1, max_length = 200),
        deserialize_with = "crate::routes::strict_string"
    )]
    pub name: String,
    /// What it may do.
    pub scope: Scope,
}

/// The API keys routes.
pub struct ApiKeysApi(pub ApiState);

#[OpenApi(tag = "ApiTags::ApiKeys")]
impl ApiKeysApi {
    /// Create a key; the answer holds the key, shown this once. Scope: admin.
    #[oai(path = "/v1/api-keys", method = "post")]
    async fn create(
        &self,
        auth: ApiKeyAuth,
        body: Json<NewApiKey>,
    ) -> Result<Json<CreatedKey>, ApiError> {
        let caller = auth.require(Scope::Admin)?;
        let now = self.0.engine.clock().now_ms();
        let actor = Actor::api_key(caller.key_id);
        let created =
            keys::create(self.0.engine.db(), &body.0.name, body.0.scope, &actor, now).await?;
        tracing::info!(
            key_id = created.info.id,
            scope = created.info.scope.as_str(),
            "API key created"
        );
        Ok(Json(created))
    }

    /// Every key (never the keys themselves). Scope: admin.
    #[oai(path = "/v1/api-keys", method = "get")]
    async fn list(&self, auth: ApiKeyAuth) -> Result<Json<Vec<ApiKeyInfo>>, ApiError> {
        auth.require(Scope::Admin)?;
        Ok(Json(keys::list(self.0.engine.db()).await?))
    }

    /// Revoke a key: it is refused from now on. Scope: admin.
    #[oai(path = "/v1/api-keys/:id", method = "delete")]
    async fn revoke(&self, auth: ApiKeyAuth, id: Path<i64>) -> Result<Json<ApiKeyInfo>, ApiError> {
        let caller = auth.require(Scope::Admin)?;
        let now = self.0.engine.clock().now_ms();
        let actor = Actor::api_key(caller.key_id);
        match keys::revoke(self.0.engine.db(), id.0, &actor, now).await? {
            Some(info) => {
                self.0.keys.forget(id.0);
                Ok(Json(info))
            }
            None => Err(ApiError::not_found(format!("API key {} not found", id.0))),
        }
    }
}
