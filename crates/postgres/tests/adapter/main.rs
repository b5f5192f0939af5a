//! Adapter tests: [`users_postgres::PgRepository`] and the migrations against a real Postgres, one module per
//! storage port (and one for the guarded user change, the biggest of them).
//!
//! They test what is the adapter's job: storing and reading rows faithfully (leniently where the domain allows),
//! applying a decided change atomically, checking the stated preconditions under the right locks, mapping driver
//! errors. The rules that decide a change (promotion, which tokens die, reuse handling) are the domain's and are
//! tested there.
//!
//! Every test gets a database of its own from `users-testkit`, cloned from the migrated template and dropped at
//! the end, so the tests run in parallel. They need `UM_TEST_DATABASE_URL`, which `cargo xtask test` sets; without
//! it they fail and say so.

// clippy.toml lets `#[test]` functions unwrap, but not the helpers they share in `support`; in a test crate a panic
// with the failing call's location is exactly the report wanted, so the whole crate may unwrap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod attacks_shared_state;
mod audit;
mod availability;
mod email_tokens;
mod housekeeping;
mod listing;
mod migrations;
mod outbox;
mod pictures;
mod rate_limits;
mod requests;
mod second_factor;
mod sessions;
mod signing_keys;
mod support;
mod throttle;
mod user_updates;
mod users;
