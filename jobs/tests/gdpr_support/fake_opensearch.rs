//! A local fake OpenSearch node (wiremock) answering the erasure's requests as OpenSearch
//! does: `DELETE /{index}/_doc/{id}` → `{"result":"deleted"}`, `_delete_by_query` /
//! `_update_by_query` → counts of the `terms._id` list sent, `failures: []`. Faults (a 500,
//! a 404 on the user document) are mounted on top, for a number of requests.

use serde_json::{Value, json};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// A request the fake received.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) body: Option<Value>,
}

pub(crate) struct FakeOpenSearch {
    pub(crate) server: MockServer,
}

fn ids_in(req: &Request) -> usize {
    req.body_json::<Value>()
        .ok()
        .and_then(|b| b["query"]["terms"]["_id"].as_array().map(Vec::len))
        .unwrap_or(0)
}

impl FakeOpenSearch {
    pub(crate) async fn start() -> Self {
        let server = MockServer::start().await;
        Mock::given(method("DELETE"))
            .and(path_regex(r"^/[^/]+/_doc/[^/]+$"))
            .respond_with(|req: &Request| {
                let mut parts = req.url.path().trim_start_matches('/').split('/');
                let index = parts.next().unwrap_or_default().to_owned();
                let id = parts.nth(1).unwrap_or_default().to_owned();
                ResponseTemplate::new(200).set_body_json(json!({
                    "_index": index, "_id": id, "_version": 2, "result": "deleted",
                    "_shards": {"total": 2, "successful": 1, "failed": 0},
                    "_seq_no": 5, "_primary_term": 1
                }))
            })
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path_regex(r"^/[^/]+/_delete_by_query$"))
            .respond_with(|req: &Request| {
                let n = ids_in(req);
                ResponseTemplate::new(200).set_body_json(json!({
                    "took": 3, "timed_out": false, "total": n, "deleted": n, "batches": 1,
                    "version_conflicts": 0, "noops": 0, "failures": []
                }))
            })
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path_regex(r"^/[^/]+/_update_by_query$"))
            .respond_with(|req: &Request| {
                let n = ids_in(req);
                ResponseTemplate::new(200).set_body_json(json!({
                    "took": 3, "timed_out": false, "total": n, "updated": n, "batches": 1,
                    "version_conflicts": 0, "noops": 0, "failures": []
                }))
            })
            .mount(&server)
            .await;
        Self { server }
    }

    pub(crate) fn url(&self) -> String {
        self.server.uri()
    }

    /// The next `times` requests `verb path` answer `status` with an OpenSearch error body.
    pub(crate) async fn fail(&self, verb: &str, path: &str, status: u16, times: u64) {
        let body = if status == 404 {
            json!({"_index": "users", "_id": "0", "result": "not_found"})
        } else {
            json!({"error": {"type": "internal_server_error", "reason": "boom"}, "status": status})
        };
        Mock::given(method(verb))
            .and(path_regex(format!("^{}$", regex_escape(path))))
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .with_priority(1)
            .up_to_n_times(times)
            .mount(&self.server)
            .await;
    }

    /// Every request received, in order.
    pub(crate) async fn requests(&self) -> Vec<Seen> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|r| Seen {
                method: r.method.to_string(),
                path: r.url.path().to_owned(),
                query: r.url.query().unwrap_or_default().to_owned(),
                body: serde_json::from_slice(&r.body).ok(),
            })
            .collect()
    }

    /// Requests to `path`.
    pub(crate) async fn to(&self, path: &str) -> Vec<Seen> {
        self.requests()
            .await
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '_' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}
