//! Adapter tests: [`users_postgres::PgRepository`] and the migrations against a real Postgres.
//!
//! Every test gets a database of its own from `users-testkit`, cloned from the migrated template and dropped at
//! the end, so the tests run in parallel. They need `UM_TEST_DATABASE_URL`, which `cargo xtask test` sets; without
//! it they fail and say so.

// clippy.toml lets `#[test]` functions unwrap, but not the helpers they share in `support`; in a test crate a panic
// with the failing call's location is exactly the report wanted, so the whole crate may unwrap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod accounts;
mod admin;
mod availability;
mod backoff;
mod migrations;
mod outbox;
mod pictures;
mod repository;
mod sessions;
mod support;
