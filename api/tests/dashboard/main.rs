//! The admin dashboard (`/admin`): plain HTTP through the real router on both backends
//! ([`http`]), and end to end in a real headless Chromium ([`browser`]).

// The router's future type nests deeper than the default limit allows when compiled
// in release (`cargo test --release`).
#![recursion_limit = "256"]

mod browser;
#[allow(dead_code)]
#[path = "../v1/helpers.rs"]
mod helpers;
mod http;
mod seed;
