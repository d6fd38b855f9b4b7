//! The dashboard's pages, one module per section.

pub mod gdpr;
pub mod jobs;
pub mod login;
pub mod overview;
pub mod schedules;
pub mod transfers;
