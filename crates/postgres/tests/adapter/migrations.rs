//! The migrations: idempotent, reversible, and a clear error when Postgres cannot be reached.

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use diesel_migrations::{FileBasedMigrations, MigrationHarness as _};
use users_domain::ports::UserStore as _;
use users_postgres::{PgSetupError, run_migrations};
use users_testkit::TestDatabase;

use crate::support::{account, new_user, repository};

/// The tables the migrations create.
const TABLES: i64 = 13;

async fn table_count(url: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let mut connection = AsyncPgConnection::establish(url).await.unwrap();
    let query = "SELECT count(*) AS count FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_name IN \
                 ('users', 'sessions', 'refresh_tokens', 'email_tokens', 'login_attempts', 'mail_outbox', \
                  'pictures', 'picture_variants', 'totp_secrets', 'recovery_codes', 'mfa_challenges', \
                  'rate_limit_windows', 'signing_keys')";
    let row: Count = diesel::sql_query(query).get_result(&mut connection).await.unwrap();
    row.count
}

/// Reverts every migration of `migrations/` with the down scripts, the way `diesel migration revert --all` would.
async fn revert_all(url: &str) {
    let connection = AsyncPgConnection::establish(url).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations");
        let migrations = FileBasedMigrations::from_path(directory).unwrap();
        let mut wrapper = AsyncConnectionWrapper::<AsyncPgConnection>::from(connection);
        wrapper.revert_all_migrations(migrations).unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent() {
    let database = TestDatabase::create().await;
    // The template already holds every migration, so both runs find nothing pending and change nothing.
    run_migrations(&database.url()).await.unwrap();
    run_migrations(&database.url()).await.unwrap();
    assert_eq!(table_count(&database.url()).await, TABLES);
    repository(&database).await.insert_user(account(new_user("ada@example.com", "ada"))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_revert_cleanly_and_apply_again_on_an_empty_database() {
    let database = TestDatabase::create().await;
    revert_all(&database.url()).await;
    assert_eq!(table_count(&database.url()).await, 0, "down.sql removes every table");

    run_migrations(&database.url()).await.unwrap();
    run_migrations(&database.url()).await.unwrap();
    assert_eq!(table_count(&database.url()).await, TABLES);
    repository(&database).await.insert_user(account(new_user("ada@example.com", "ada"))).await.unwrap();
}

#[tokio::test]
async fn concurrent_migration_runs_on_an_empty_database_both_succeed() {
    let database = TestDatabase::create().await;
    revert_all(&database.url()).await;
    let url = database.url();
    let (first, second) = tokio::join!(run_migrations(&url), run_migrations(&url));
    first.unwrap();
    second.unwrap();
    assert_eq!(table_count(&url).await, TABLES);
}

#[tokio::test]
async fn migrating_an_unreachable_database_fails_with_a_connect_error() {
    let error = run_migrations("postgres://postgres@127.0.0.1:1/postgres").await.unwrap_err();
    assert!(matches!(error, PgSetupError::Connect(_)), "{error:?}");
}
