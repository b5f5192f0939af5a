//! Test support for user-management: a fresh, migrated Postgres database per test, and the [`conformance`] suite
//! every set of storage adapters must pass.
//!
//! [`TestDatabase::create`] clones a template database that holds every migration (built once per migration
//! set, shared by all test processes) into a database of its own, and drops that database again when the value
//! goes out of scope. Tests never share a database, so they run in parallel without cleanup between them.
//!
//! The server comes from `UM_TEST_DATABASE_URL`, an admin URL to its `postgres` database that `cargo xtask test`
//! sets after starting Postgres. Without it, or without a server behind it, tests fail with a message naming
//! `cargo xtask test`: a test that needs Postgres never skips silently.

// This crate exists only for tests, where a panic with a clear message is the right way to report a broken
// environment: the test fails and says why, and no caller could do anything better with an error value.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod conformance;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness as _, embed_migrations};

/// The environment variable holding the admin URL of the test server.
pub const DATABASE_URL_VAR: &str = "UM_TEST_DATABASE_URL";

/// The same migrations the service runs, compiled in from `migrations/`.
const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// A hash of the migration files, computed by the build script.
const MIGRATIONS_HASH: &str = env!("UM_MIGRATIONS_HASH");

/// The advisory lock that serialises template creation across test processes (ASCII "um-tmpl8").
const TEMPLATE_LOCK_KEY: i64 = 0x756d_2d74_6d70_6c38;

/// How long any one step may wait for the server before the test fails instead of hanging.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Set once this process has seen the template ready, so later tests skip the lock and the lookup.
static TEMPLATE_READY: AtomicBool = AtomicBool::new(false);

/// The admin URL of the test server, from `UM_TEST_DATABASE_URL`.
///
/// # Panics
/// When the variable is not set, with a message saying to run the tests with `cargo xtask test`.
#[must_use]
pub fn admin_url() -> String {
    admin_url_from(std::env::var(DATABASE_URL_VAR).ok())
}

fn admin_url_from(value: Option<String>) -> String {
    match value {
        Some(url) if !url.trim().is_empty() => url,
        _ => panic!("{DATABASE_URL_VAR} is not set: run the tests with `cargo xtask test`"),
    }
}

/// The name of the migrated template database for the migrations compiled into this build.
#[must_use]
pub fn template_name() -> String {
    format!("um_template_{MIGRATIONS_HASH}")
}

/// A database of its own for one test, cloned from the migrated template and dropped on drop.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a fresh database holding every migration, building the template first if this migration set has
    /// none yet.
    ///
    /// # Panics
    /// When `UM_TEST_DATABASE_URL` is missing or not a URL, when the server cannot be reached, or when a migration
    /// fails; the message says which, and how to run the tests.
    pub async fn create() -> Self {
        let admin_url = admin_url();
        let template = ensure_template(&admin_url).await;
        let name = format!("um_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = connect(&admin_url).await;
        // Identifiers cannot be bound as parameters; both names are generated from hex digits, never from input.
        execute(&mut admin, &format!(r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#)).await;
        let url = database_url(&admin_url, &name);
        Self { name, url, admin_url }
    }

    /// A URL to this database, with the admin URL's user, host and options.
    #[must_use]
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The database's name (`um_test_<uuid>`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs one SQL statement against this database, for tests that arrange state the API cannot (yet) reach
    /// or that check what a request left behind.
    ///
    /// # Panics
    /// When the statement fails.
    pub async fn execute(&self, sql: &str) {
        let mut connection = connect(&self.url).await;
        execute(&mut connection, sql).await;
    }

    /// Runs a query whose single row has a `bigint` column named `n` (`SELECT count(*) AS n ...`) and returns it.
    ///
    /// # Panics
    /// When the query fails.
    pub async fn count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut connection = connect(&self.url).await;
        let rows: Vec<Count> = diesel_async::RunQueryDsl::load(diesel::sql_query(sql), &mut connection)
            .await
            .unwrap_or_else(|error| panic!("test query failed: {sql}: {error}"));
        rows.into_iter().next().map(|row| row.n).unwrap_or_else(|| panic!("test query returned no row: {sql}"))
    }

    /// Runs a query whose first row has a `text` column named `value` (`SELECT kid AS value ...`) and returns it.
    ///
    /// # Panics
    /// When the query fails or returns no row.
    pub async fn text(&self, sql: &str) -> String {
        #[derive(diesel::QueryableByName)]
        struct Text {
            #[diesel(sql_type = diesel::sql_types::Text)]
            value: String,
        }
        let mut connection = connect(&self.url).await;
        let rows: Vec<Text> = diesel_async::RunQueryDsl::load(diesel::sql_query(sql), &mut connection)
            .await
            .unwrap_or_else(|error| panic!("test query failed: {sql}: {error}"));
        rows.into_iter().next().map(|row| row.value).unwrap_or_else(|| panic!("test query returned no row: {sql}"))
    }
}

impl TestDatabase {
    /// Polls [`Self::count`] until it answers `expected`, for state a background worker produces (the mail queued
    /// for a forgotten password, say); returns the last count, which differs from `expected` only when 10 s passed.
    pub async fn count_eventually(&self, sql: &str, expected: i64) -> i64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let n = self.count(sql).await;
            if n == expected || std::time::Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
}

impl Drop for TestDatabase {
    /// Drops the database, disconnecting whatever still uses it (a test's connection pool, typically).
    ///
    /// Drop cannot be async, and blocking on the test's own runtime from inside it could deadlock (a
    /// current-thread runtime cannot drive the I/O it would wait for), so the work runs on a thread of its own
    /// with a small runtime, and the drop waits for it to finish.
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let worker = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(drop_database(&admin_url, &name))
        });
        let outcome = worker.join();
        // A panic here, while a failing test is already unwinding, would abort the whole test binary and hide the
        // test's own message, so a failed cleanup is reported and the leftover database named instead.
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("users-testkit: could not drop test database {}: {error}", self.name),
            Err(_) => eprintln!("users-testkit: the thread dropping test database {} panicked", self.name),
        }
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut admin = tokio::time::timeout(SERVER_TIMEOUT, AsyncPgConnection::establish(admin_url)).await??;
    diesel::sql_query(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)).execute(&mut admin).await?;
    Ok(())
}

/// Makes sure the template for this build's migrations exists, and returns its name.
///
/// The template is built under a temporary name and renamed only once every migration succeeded, so its final
/// name always means "complete"; a build that died half-way leaves only the temporary name, which the next build
/// drops. An advisory lock makes concurrent test processes wait for one builder instead of racing it.
async fn ensure_template(admin_url: &str) -> String {
    let template = template_name();
    // Called as a path: diesel-async's `RunQueryDsl` would claim a `.load` method call.
    if AtomicBool::load(&TEMPLATE_READY, Ordering::Acquire) {
        return template;
    }
    let mut admin = connect(admin_url).await;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut admin)
        .await
        .unwrap_or_else(|error| panic!("could not take the template lock: {error}"));
    if !database_exists(&mut admin, &template).await {
        build_template(&mut admin, admin_url, &template).await;
    }
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut admin)
        .await
        .unwrap_or_else(|error| panic!("could not release the template lock: {error}"));
    TEMPLATE_READY.store(true, Ordering::Release);
    template
}

async fn build_template(admin: &mut AsyncPgConnection, admin_url: &str, template: &str) {
    let building = format!("{template}_building");
    execute(admin, &format!(r#"DROP DATABASE IF EXISTS "{building}" WITH (FORCE)"#)).await;
    execute(admin, &format!(r#"CREATE DATABASE "{building}""#)).await;

    let connection = connect(&database_url(admin_url, &building)).await;
    // diesel's migration harness is synchronous: it drives the async connection from a blocking thread.
    tokio::task::spawn_blocking(move || {
        let mut wrapper = AsyncConnectionWrapper::<AsyncPgConnection>::from(connection);
        wrapper.run_pending_migrations(MIGRATIONS).map(drop)
    })
    .await
    .unwrap_or_else(|error| panic!("the migration thread failed: {error}"))
    .unwrap_or_else(|error| panic!("a migration failed while building the test template {template}: {error}"));

    // Renaming, and later cloning, need the database to have no sessions. The migration connection is closed,
    // but its server process may still be exiting, and nothing may connect to a template while it is cloned.
    execute(admin, &format!(r#"ALTER DATABASE "{building}" WITH ALLOW_CONNECTIONS false"#)).await;
    wait_until_unused(admin, &building).await;
    execute(admin, &format!(r#"ALTER DATABASE "{building}" RENAME TO "{template}""#)).await;
}

/// Waits, with a deadline, until no session is connected to `database`.
async fn wait_until_unused(admin: &mut AsyncPgConnection, database: &str) {
    #[derive(QueryableByName)]
    struct Sessions {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let deadline = Instant::now() + SERVER_TIMEOUT;
    loop {
        let sessions: Sessions = diesel::sql_query("SELECT count(*) AS count FROM pg_stat_activity WHERE datname = $1")
            .bind::<Text, _>(database)
            .get_result(admin)
            .await
            .unwrap_or_else(|error| panic!("could not list the sessions of {database}: {error}"));
        if sessions.count == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "sessions on {database} did not end within {SERVER_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn database_exists(admin: &mut AsyncPgConnection, name: &str) -> bool {
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = Bool)]
        exists: bool,
    }
    let row: Exists = diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
        .bind::<Text, _>(name)
        .get_result(admin)
        .await
        .unwrap_or_else(|error| panic!("could not look up database {name}: {error}"));
    row.exists
}

/// Connects, or fails the test with a message saying how to get a server.
async fn connect(url: &str) -> AsyncPgConnection {
    let shown = redact(url);
    match tokio::time::timeout(SERVER_TIMEOUT, AsyncPgConnection::establish(url)).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => panic!(
            "cannot connect to the test Postgres at {shown} ({error}): is it running? \
             Run the tests with `cargo xtask test`, which starts it and sets {DATABASE_URL_VAR}"
        ),
        Err(_) => panic!(
            "the test Postgres at {shown} did not answer within {SERVER_TIMEOUT:?}: \
             run the tests with `cargo xtask test`, which starts it and sets {DATABASE_URL_VAR}"
        ),
    }
}

async fn execute(connection: &mut AsyncPgConnection, statement: &str) {
    diesel::sql_query(statement)
        .execute(connection)
        .await
        .unwrap_or_else(|error| panic!("`{statement}` failed on the test Postgres: {error}"));
}

/// The admin URL with its database replaced by `database`.
fn database_url(admin_url: &str, database: &str) -> String {
    let mut url = url::Url::parse(admin_url).unwrap_or_else(|error| {
        panic!("{DATABASE_URL_VAR} must be a postgres:// URL ({error}): run the tests with `cargo xtask test`")
    });
    url.set_path(&format!("/{database}"));
    url.to_string()
}

/// The URL without its password, for messages.
fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("REDACTED"));
            }
            url.to_string()
        }
        Err(_) => "<connection string>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_database_urls_keep_the_admin_url_but_change_the_database() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "um_test_1"),
            "postgres://postgres@127.0.0.1:5432/um_test_1?sslmode=disable"
        );
        assert_eq!(database_url("postgres://u:p@h/", "x"), "postgres://u:p@h/x");
    }

    #[test]
    fn the_template_is_named_after_a_short_hash_of_the_migrations() {
        let name = template_name();
        let hash = name.strip_prefix("um_template_").unwrap();
        assert_eq!(hash.len(), 12);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn a_missing_or_empty_url_fails_with_a_message_naming_cargo_xtask_test() {
        for value in [None, Some(String::new()), Some("  ".to_owned())] {
            let payload = std::panic::catch_unwind(|| admin_url_from(value)).unwrap_err();
            let message = payload.downcast_ref::<String>().unwrap();
            assert_eq!(message, "UM_TEST_DATABASE_URL is not set: run the tests with `cargo xtask test`");
        }
        assert_eq!(admin_url_from(Some("postgres://h/postgres".to_owned())), "postgres://h/postgres");
    }

    #[test]
    fn messages_never_show_the_password() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:REDACTED@h/db");
    }
}
