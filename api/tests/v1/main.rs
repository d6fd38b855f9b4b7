//! The HTTP API through the real router (poem's `TestClient`), on SQLite and Postgres: keys
//! and scopes, rate limits, every route's answers and error shapes, metrics, and a
//! property-based pass over the OpenAPI spec.

// The router's future type nests deeper than the default limit allows when compiled
// in release (`cargo test --release`).
#![recursion_limit = "256"]

mod auth;
mod contract;
mod exports;
mod fuzz;
// The GDPR test kit of the jobs crate: seeded users, the every-table scanner, the SMTP server.
#[path = "../../../jobs/tests/gdpr_support/mod.rs"]
mod gdpr_support;
mod helpers;
mod metrics;
mod payments;
mod rate_limits;
mod routes;
mod schemathesis;
mod tracks;
mod users;
