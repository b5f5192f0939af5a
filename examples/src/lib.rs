//! Embedding user-management, shown.
//!
//! This package holds no library code of its own: its two examples are the point.
//!
//! - `embed_domain.rs` wires the domain to the in-memory adapters and runs register, verify, login, refresh and an
//!   administrator's change, with no server at all: `cargo run -p users-examples --example embed_domain`.
//! - `host_app.rs` mounts the HTTP routes under `/auth` in an actix-web application that has routes of its own,
//!   and drives them over HTTP: `cargo run -p users-examples --example host_app`.
//!
//! `tests/examples.rs` runs both and checks what they report, so they keep working.
