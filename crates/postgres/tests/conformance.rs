//! The conformance suite of the storage ports, run against Postgres: one fresh database per check.

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use users_postgres::{PgConfig, PgRepository};
use users_testkit::TestDatabase;

users_testkit::conformance_tests!(async {
    let database = TestDatabase::create().await;
    let config = PgConfig {
        url: database.url(),
        max_connections: 4,
        listing_connections: 1,
        acquire_timeout: Duration::from_secs(5),
    };
    (PgRepository::connect(&config).await.unwrap(), database)
});
