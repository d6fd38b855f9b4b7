//! The HTTP API through the real router (poem's `TestClient`), on SQLite and Postgres: keys
//! and scopes, rate limits, every route's answers and error shapes, metrics, and a
//! property-based pass over the OpenAPI spec.

mod auth;
mod fuzz;
mod helpers;
mod metrics;
mod rate_limits;
mod routes;
mod tracks;
