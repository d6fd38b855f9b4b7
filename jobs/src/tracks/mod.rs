//! Uploaded tracks: the rows the media jobs read and move through their lifecycle.

pub mod state;

pub use state::TrackStatus;
