//! The served OpenAPI document and the route table read from it.
//!
//! poem-openapi generates the document from the routes' types; [`finish`] adds what it
//! cannot declare, so that the served spec describes every answer the server gives:
//! poem-openapi refuses a body of the wrong media type with 415 before the route runs,
//! and [`crate::body_limit`] refuses one over the limit with 413, on every operation that
//! takes a body; and `/metrics` takes an optional bearer token (`METRICS_TOKEN`).
//!
//! [`RouteTemplates`] is the spec's paths with their methods: the HTTP metrics label
//! requests by template (bounded cardinality), and a 405 says in `Allow` which methods the
//! path has.

use std::sync::Arc;

use serde_json::{Value, json};

/// The document of `spec` (poem-openapi's JSON) with the answers it lacks (see the module
/// docs).
pub fn finish(spec: &str) -> String {
    let Ok(mut doc) = serde_json::from_str::<Value>(spec) else {
        return spec.to_owned();
    };
    let problem = |description: &str| {
        json!({
            "description": description,
            "content": {
                crate::problem::PROBLEM_JSON: {
                    "schema": { "$ref": "#/components/schemas/Problem" }
                }
            }
        })
    };
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                if op.get("requestBody").is_none() {
                    continue;
                }
                let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                    continue;
                };
                responses.entry("413").or_insert_with(|| {
                    problem(&format!(
                        "The body is larger than {} bytes (`payload_too_large`).",
                        crate::server::BODY_LIMIT
                    ))
                });
                responses.entry("415").or_insert_with(|| {
                    problem(
                        "The body's `Content-Type` is missing or not one this operation \
                         takes (`unsupported_media_type`).",
                    )
                });
            }
        }
    }
    // `/metrics` takes an optional bearer token (`METRICS_TOKEN`): poem-openapi cannot
    // declare a security scheme that is only sometimes required.
    if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
        let schemes = components
            .entry("securitySchemes")
            .or_insert_with(|| json!({}));
        if let Some(schemes) = schemes.as_object_mut() {
            schemes.insert(
                "MetricsToken".to_owned(),
                json!({
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`METRICS_TOKEN`, when it is set; `/metrics` is open otherwise."
                }),
            );
        }
    }
    if let Some(op) = doc
        .pointer_mut("/paths/~1metrics/get")
        .and_then(Value::as_object_mut)
    {
        op.insert("security".to_owned(), json!([{}, { "MetricsToken": [] }]));
    }
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| spec.to_owned())
}

/// One path template (`/v1/jobs/{id}`) and its methods.
#[derive(Debug, Clone)]
struct Template {
    segments: Vec<String>,
    methods: Vec<String>,
}

/// The spec's path templates and their methods, plus fixed extra routes.
#[derive(Debug, Clone, Default)]
pub struct RouteTemplates(Arc<Vec<Template>>);

impl RouteTemplates {
    /// The templates of an OpenAPI document's `paths`, plus `extra` (a template and its
    /// methods, for routes outside the spec).
    pub fn from_spec(spec_json: &str, extra: &[(&str, &[&str])]) -> Self {
        let spec: Value = serde_json::from_str(spec_json).unwrap_or_default();
        let mut templates: Vec<Template> = spec["paths"]
            .as_object()
            .map(|paths| {
                paths
                    .iter()
                    .map(|(path, item)| Template {
                        segments: split(path),
                        methods: item
                            .as_object()
                            .map(|ops| ops.keys().map(|m| m.to_ascii_uppercase()).collect())
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        templates.extend(extra.iter().map(|(path, methods)| Template {
            segments: split(path),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        }));
        Self(Arc::new(templates))
    }

    fn find(&self, path: &str) -> Option<&Template> {
        let segments = split(path);
        self.0.iter().find(|t| {
            t.segments.len() == segments.len()
                && t.segments
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
        })
    }

    /// The template `path` matches, or `unmatched`.
    pub fn route_of(&self, path: &str) -> String {
        self.find(path).map_or_else(
            || "unmatched".to_owned(),
            |t| format!("/{}", t.segments.join("/")),
        )
    }

    /// The `Allow` value of `path`: its methods, comma-separated (none for an unknown
    /// path).
    pub fn allow(&self, path: &str) -> Option<String> {
        self.find(path)
            .filter(|t| !t.methods.is_empty())
            .map(|t| t.methods.join(", "))
    }
}

fn split(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_labelled_with_their_route_template() {
        let spec = r#"{"paths": {"/v1/jobs": {"get": {}}, "/v1/jobs/{id}": {"get": {}},
            "/v1/jobs/{id}/retry": {"post": {}}}}"#;
        let t = RouteTemplates::from_spec(spec, &[("/docs", &["GET"])]);
        assert_eq!(t.route_of("/v1/jobs"), "/v1/jobs");
        assert_eq!(t.route_of("/v1/jobs/42"), "/v1/jobs/{id}");
        assert_eq!(t.route_of("/v1/jobs/42/retry"), "/v1/jobs/{id}/retry");
        assert_eq!(t.route_of("/docs"), "/docs");
        assert_eq!(t.route_of("/v1/jobs/42/nope"), "unmatched");
        assert_eq!(t.route_of("/wp-admin.php"), "unmatched");
    }

    #[test]
    fn allow_lists_the_methods_of_the_matching_template() {
        let spec = r#"{"paths": {"/v1/api-keys": {"get": {}, "post": {}},
            "/v1/api-keys/{id}": {"delete": {}}}}"#;
        let t = RouteTemplates::from_spec(spec, &[("/openapi.json", &["GET"])]);
        assert_eq!(t.allow("/v1/api-keys").as_deref(), Some("GET, POST"));
        assert_eq!(t.allow("/v1/api-keys/3").as_deref(), Some("DELETE"));
        assert_eq!(t.allow("/openapi.json").as_deref(), Some("GET"));
        assert_eq!(t.allow("/nowhere"), None);
    }

    #[test]
    fn operations_with_a_body_document_413_and_415() {
        let spec = r#"{"paths": {"/a": {"post": {"requestBody": {}, "responses": {"200": {}}},
            "get": {"responses": {"200": {}}}}}}"#;
        let doc: Value = serde_json::from_str(&finish(spec)).expect("json");
        let post = &doc["paths"]["/a"]["post"]["responses"];
        assert!(post["413"]["content"]["application/problem+json"].is_object());
        assert!(post["415"]["content"]["application/problem+json"].is_object());
        let get = doc["paths"]["/a"]["get"]["responses"]
            .as_object()
            .expect("responses");
        assert_eq!(get.keys().collect::<Vec<_>>(), ["200"]);
    }
}
