//! The OpenSearch part of an erasure, in four independent requests:
//!
//! | part | request | success |
//! |---|---|---|
//! | user document | `DELETE /{users}/_doc/{id}` | 2xx, or 404 (already gone) |
//! | deleted tracks | `POST /{tracks}/_delete_by_query` with `terms` on `_id` | 2xx without `failures` |
//! | playlists | `POST /{playlists}/_delete_by_query` with `terms` on `_id` | 2xx without `failures` |
//! | kept public tracks | `POST /{tracks}/_update_by_query`, a script crediting the anonymous artist | 2xx without `failures` |
//!
//! An empty id list sends nothing. `send()` is `Ok` on any HTTP answer, 4xx and 5xx
//! included, so every status code is checked here; the body of a failed answer goes into
//! the error (truncated). Id lists are sent in chunks of [`IDS_PER_REQUEST`].
//!
//! Documents are expected to carry `artist_name` and `owner_id` fields (tracks): the
//! anonymisation sets the first to the anonymous artist's name and clears the second.

use std::time::Duration;

use opensearch::auth::Credentials;
use opensearch::http::StatusCode;
use opensearch::http::response::Response;
use opensearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use opensearch::params::{Conflicts, Refresh};
use opensearch::{DeleteByQueryParts, DeleteParts, OpenSearch, UpdateByQueryParts};
use serde_json::{Value, json};

/// Ids per `_delete_by_query` / `_update_by_query` request.
pub const IDS_PER_REQUEST: usize = 1000;
/// Longest error body kept in a message.
const BODY_IN_ERROR: usize = 300;

/// The indices holding users, tracks and playlists (`OPENSEARCH_*_INDEX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchIndices {
    /// Users' documents, `_id` = user id.
    pub users: String,
    /// Tracks' documents, `_id` = track id.
    pub tracks: String,
    /// Playlists' documents, `_id` = playlist id.
    pub playlists: String,
}

impl Default for SearchIndices {
    fn default() -> Self {
        Self {
            users: "users".to_owned(),
            tracks: "tracks".to_owned(),
            playlists: "playlists".to_owned(),
        }
    }
}

/// A client for one OpenSearch node.
#[derive(Debug, Clone)]
pub struct SearchEraser {
    client: OpenSearch,
    /// The indices.
    pub indices: SearchIndices,
}

/// What a user-document deletion found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocDeleted {
    /// It was deleted now.
    Deleted,
    /// It was not there (404).
    AlreadyGone,
}

impl SearchEraser {
    /// A client for `url` (`http://host:9200`, credentials in the URL are sent as basic
    /// auth), with a 30 s request timeout.
    pub fn new(url: &str, indices: SearchIndices) -> Result<Self, String> {
        let mut parsed =
            opensearch::http::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "the scheme must be http or https, not {}",
                parsed.scheme()
            ));
        }
        let credentials = (!parsed.username().is_empty()).then(|| {
            Credentials::Basic(
                parsed.username().to_owned(),
                parsed.password().unwrap_or_default().to_owned(),
            )
        });
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(parsed))
            .timeout(Duration::from_secs(30));
        if let Some(c) = credentials {
            builder = builder.auth(c);
        }
        let transport = builder.build().map_err(|e| e.to_string())?;
        Ok(Self {
            client: OpenSearch::new(transport),
            indices,
        })
    }

    /// Deletes the user's document; 404 means it is already gone.
    pub async fn delete_user_doc(&self, user_id: i64) -> Result<DocDeleted, String> {
        let id = user_id.to_string();
        let index = &self.indices.users;
        let response = self
            .client
            .delete(DeleteParts::IndexId(index, &id))
            .refresh(Refresh::True)
            .send()
            .await
            .map_err(|e| format!("{index}: {e}"))?;
        match response.status_code() {
            s if s.is_success() => Ok(DocDeleted::Deleted),
            StatusCode::NOT_FOUND => Ok(DocDeleted::AlreadyGone),
            _ => Err(failure(index, response).await),
        }
    }

    /// Deletes the documents `ids` from `index`; returns how many the index deleted.
    pub async fn delete_ids(&self, index: &str, ids: &[i64]) -> Result<u64, String> {
        let mut deleted = 0;
        for chunk in ids.chunks(IDS_PER_REQUEST) {
            let response = self
                .client
                .delete_by_query(DeleteByQueryParts::Index(&[index]))
                .conflicts(Conflicts::Proceed)
                .refresh(true)
                .body(json!({ "query": { "terms": { "_id": id_strings(chunk) } } }))
                .send()
                .await
                .map_err(|e| format!("{index}: {e}"))?;
            deleted += by_query_count(index, response, "deleted").await?;
        }
        Ok(deleted)
    }

    /// Credits the track documents `ids` to `artist_name`; returns how many were updated.
    pub async fn anonymise_tracks(&self, ids: &[i64], artist_name: &str) -> Result<u64, String> {
        let index = self.indices.tracks.as_str();
        let mut updated = 0;
        for chunk in ids.chunks(IDS_PER_REQUEST) {
            let response = self
                .client
                .update_by_query(UpdateByQueryParts::Index(&[index]))
                .conflicts(Conflicts::Proceed)
                .refresh(true)
                .body(json!({
                    "query": { "terms": { "_id": id_strings(chunk) } },
                    "script": {
                        "lang": "painless",
                        "source": "ctx._source.artist_name = params.artist_name; ctx._source.owner_id = null;",
                        "params": { "artist_name": artist_name }
                    }
                }))
                .send()
                .await
                .map_err(|e| format!("{index}: {e}"))?;
            updated += by_query_count(index, response, "updated").await?;
        }
        Ok(updated)
    }
}

fn id_strings(ids: &[i64]) -> Vec<String> {
    ids.iter().map(i64::to_string).collect()
}

/// The error of a non-2xx answer: index, status and the start of the body.
async fn failure(index: &str, response: Response) -> String {
    let status = response.status_code();
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(BODY_IN_ERROR).collect();
    format!("{index}: HTTP {status}: {body}")
}

/// The `field` count of a `_delete_by_query` / `_update_by_query` answer, after checking its
/// status, `timed_out` and `failures`.
async fn by_query_count(index: &str, response: Response, field: &str) -> Result<u64, String> {
    if !response.status_code().is_success() {
        return Err(failure(index, response).await);
    }
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("{index}: unreadable answer: {e}"))?;
    if body["timed_out"].as_bool() == Some(true) {
        return Err(format!("{index}: the request timed out on the server"));
    }
    if let Some(failures) = body["failures"].as_array().filter(|f| !f.is_empty()) {
        let first: String = failures[0]
            .to_string()
            .chars()
            .take(BODY_IN_ERROR)
            .collect();
        return Err(format!(
            "{index}: {} failures, first: {first}",
            failures.len()
        ));
    }
    Ok(body[field].as_u64().unwrap_or(0))
}
