//! Start-up: the adapter's typed configuration, its setup errors and the embedded migrations.
//!
//! Everything here runs once, before the service answers requests, so its errors are plain setup failures that
//! `main` reports and exits on, not port errors.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness as _, embed_migrations};

use crate::tls::Connector;

/// The migrations of `migrations/` at the repository root, compiled into the binary so a deployment needs no
/// files next to it.
const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// The session-level advisory lock held while migrating, so that several instances starting at once migrate one
/// after the other instead of racing on the same DDL. The value is arbitrary but fixed (ASCII "um-migr8").
const MIGRATION_LOCK_KEY: i64 = 0x756d_2d6d_6967_7238;

/// How long [`run_migrations`] waits for its connection: start-up should fail with a message, not hang.
const MIGRATION_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A boxed error source, so that driver types stay out of this crate's public API.
type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// How to reach Postgres, read once at start-up (from `DATABASE_URL` by the binary).
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// A Postgres connection string, as a `postgres://` URL or in `key=value` form. Its `sslmode` (`disable`,
    /// `prefer` (the default), `require`, `verify-ca`, `verify-full`) and `sslrootcert` are read as libpq reads
    /// them; see the `tls` module.
    pub url: String,
    /// The most connections the main pool (every statement but the user listing) opens at once.
    pub max_connections: usize,
    /// The most connections the user listing's own pool opens at once, besides `max_connections`: listings run on
    /// connections that plan every statement with its values (see `users/list.rs`), so they are kept apart, and a
    /// flood of them waits for these without holding the connections every other request needs.
    pub listing_connections: usize,
    /// How long a request waits for a connection before it fails as unavailable: waiting for a free slot,
    /// recycling and opening a connection all count against it.
    pub acquire_timeout: Duration,
}

impl Default for PgConfig {
    /// The local development database (the `DATABASE_URL` default), 16 connections, 4 more for user listings and a
    /// 3 s acquire timeout.
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/user_management".to_owned(),
            max_connections: 16,
            listing_connections: 4,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

impl fmt::Debug for PgConfig {
    /// Shows the URL without its password, so the configuration can be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &redact(&self.url))
            .field("max_connections", &self.max_connections)
            .field("listing_connections", &self.listing_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

/// The URL with any password replaced, or a placeholder when it is not a URL (a `key=value` string may hold a
/// password anywhere in it).
fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                // Setting a password only fails for URLs that cannot carry one, which this one just did.
                let _ = url.set_password(Some("REDACTED"));
            }
            url.to_string()
        }
        Err(_) => "<connection string>".to_owned(),
    }
}

/// Why the adapter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PgSetupError {
    /// The connection string does not parse.
    #[error("the database URL is not a valid Postgres connection string")]
    InvalidUrl(#[source] BoxError),
    /// A setting is out of range.
    #[error("invalid database configuration: {0}")]
    InvalidConfig(&'static str),
    /// The TLS settings of the connection string (`sslmode`, `sslrootcert`) cannot be used.
    #[error("invalid TLS settings in the database URL: {0}")]
    InvalidTls(String),
    /// The connection pool could not be built.
    #[error("could not build the database connection pool")]
    Pool(#[source] BoxError),
    /// No connection could be opened to run the migrations.
    #[error("could not connect to the database to migrate it")]
    Connect(#[source] BoxError),
    /// A migration failed; the failed migration was rolled back.
    #[error("could not run the database migrations")]
    Migrate(#[source] BoxError),
}

/// Runs the embedded migrations that have not run yet on the database at `url`.
///
/// Concurrent callers (several instances starting together) are serialised by a Postgres advisory lock, so each
/// migration runs once. Each migration runs in its own transaction. The connection honours `sslmode` exactly as
/// the pool's do, so `require` against a server without TLS fails here, before anything is served.
///
/// # Errors
/// [`PgSetupError::InvalidUrl`] for a bad URL, [`PgSetupError::InvalidTls`] for bad TLS settings,
/// [`PgSetupError::Connect`] when Postgres cannot be reached within 10 s (or the TLS requirement is not met),
/// [`PgSetupError::Migrate`] when a migration fails.
pub async fn run_migrations(url: &str) -> Result<(), PgSetupError> {
    let connector = Connector::from_url(url)?;
    let mut connection = tokio::time::timeout(MIGRATION_CONNECT_TIMEOUT, connector.connect())
        .await
        .map_err(|_elapsed| {
            PgSetupError::Connect(format!("no answer within {} s", MIGRATION_CONNECT_TIMEOUT.as_secs()).into())
        })?
        .map_err(|error| PgSetupError::Connect(Box::new(error)))?;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(&mut connection)
        .await
        .map_err(|error| PgSetupError::Migrate(Box::new(error)))?;
    // diesel's migration harness is synchronous; the wrapper drives the async connection from a blocking thread
    // of the current runtime, so the runtime's worker threads keep serving other tasks meanwhile.
    let outcome = tokio::task::spawn_blocking(move || {
        let mut wrapper = AsyncConnectionWrapper::<AsyncPgConnection>::from(connection);
        wrapper.run_pending_migrations(MIGRATIONS).map(drop)
    })
    .await;
    // The advisory lock belongs to the connection's session, which ended when the wrapper was dropped above.
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(PgSetupError::Migrate(error)),
        Err(join_error) => Err(PgSetupError::Migrate(Box::new(join_error))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_the_local_database_with_16_and_4_connections_and_3_seconds() {
        let config = PgConfig::default();
        assert_eq!(config.url, "postgres://postgres@127.0.0.1:5432/user_management");
        assert_eq!(config.max_connections, 16);
        assert_eq!(config.listing_connections, 4);
        assert_eq!(config.acquire_timeout, Duration::from_secs(3));
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let config = PgConfig { url: "postgres://app:s3cret@db:5432/users".to_owned(), ..PgConfig::default() };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("db:5432/users"), "{shown}");
        let key_value = PgConfig { url: "host=db password=s3cret".to_owned(), ..PgConfig::default() };
        assert!(!format!("{key_value:?}").contains("s3cret"));
    }

    #[test]
    fn urls_are_checked_the_way_the_driver_reads_them() {
        let validate = |url: &str| Connector::from_url(url).map(drop);
        assert!(validate("postgres://postgres@127.0.0.1:5432/db").is_ok());
        assert!(validate("host=127.0.0.1 user=postgres dbname=db").is_ok());
        assert!(matches!(validate("postgres://host:notaport/db"), Err(PgSetupError::InvalidUrl(_))));
        assert!(matches!(validate("mysql://host/db"), Err(PgSetupError::InvalidUrl(_))));
        assert!(matches!(validate("postgres://host/db?sslmode=sometimes"), Err(PgSetupError::InvalidTls(_))));
    }
}
