//! The admin dashboard (`/admin`): plain HTTP through the real router on both backends
//! ([`http`]), and end to end in a real headless Chromium ([`browser`]).

mod browser;
#[allow(dead_code)]
#[path = "../v1/helpers.rs"]
mod helpers;
mod http;
mod seed;
