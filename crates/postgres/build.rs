//! Rebuilds the crate when the migrations change: `embed_migrations!` reads the directory at compile time, and
//! cargo only tracks the files it was told about, so a newly added migration would otherwise go unnoticed.

fn main() {
    println!("cargo::rerun-if-changed=../../migrations");
}
