//! `sqlx::migrate!` embeds the migrations at compile time, but cargo does not notice a new
//! file in their folders by itself: this makes a new migration rebuild this crate.

fn main() {
    println!("cargo:rerun-if-changed=../migrations/sqlite");
    println!("cargo:rerun-if-changed=../migrations/postgres");
}
