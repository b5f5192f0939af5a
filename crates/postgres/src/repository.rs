//! [`PgRepository`]: the pool every storage port of this adapter runs on.
//!
//! Every port method checks out one connection under the acquire timeout, runs its queries with bound parameters
//! and translates errors at the boundary (see [`crate::errors`]), so callers see only domain types. The port
//! implementations live in the module of their port (`users`, `sessions`, `email_tokens`, `throttle`, `outbox`,
//! `requests`, `second_factor`, `pictures`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use diesel_async::RunQueryDsl as _;
use diesel_async::pooled_connection::deadpool::{Hook, HookError, Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, PoolError, RecyclingMethod};
use users_domain::ports::PortError;

use crate::errors::{acquire_timed_out, pool_error};
use crate::placement::ConnectionPlacement;
use crate::setup::{PgConfig, PgSetupError};
use crate::tls::Connector;

/// The Postgres implementation of every storage port of the domain, on one connection pool. Cloning is cheap and
/// shares the pool.
#[derive(Clone)]
pub struct PgRepository {
    pool: Pool<AsyncPgConnection>,
    acquire_timeout: Duration,
}

impl fmt::Debug for PgRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PgRepository")
            .field("max_connections", &status.max_size)
            .field("open_connections", &status.size)
            .field("idle_connections", &status.available)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

impl PgRepository {
    /// Builds the connection pool. Connections are opened lazily, on first use, so this succeeds while Postgres is
    /// still starting; readiness is what [`UserStore::ping`](users_domain::ports::UserStore::ping) is for.
    ///
    /// Every checkout is bounded by `acquire_timeout`, so requests fail as unavailable instead of hanging while
    /// Postgres is down. A connection is checked locally on every checkout, and with a round trip when it sat
    /// unused for [`VERIFY_AFTER_IDLE`] or longer, so connections broken by a Postgres restart are replaced and the
    /// pool recovers without a restart of the service.
    ///
    /// # Errors
    /// [`PgSetupError::InvalidUrl`] when the URL does not parse, [`PgSetupError::InvalidConfig`] for zero
    /// connections or a zero timeout, [`PgSetupError::Pool`] when the pool cannot be built.
    pub async fn connect(config: &PgConfig) -> Result<Self, PgSetupError> {
        Self::connect_placed(config, ConnectionPlacement::new()).await
    }

    /// As [`connect`](Self::connect), with new connections opened where `placement` says: on the worker threads
    /// a server registers with it (see [`ConnectionPlacement`]).
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_placed(config: &PgConfig, placement: ConnectionPlacement) -> Result<Self, PgSetupError> {
        Ok(Self { pool: placed_pool(config, placement)?, acquire_timeout: config.acquire_timeout })
    }

    /// Checks a connection out of the pool within the acquire timeout.
    ///
    /// The pool's own timeouts apply per step (waiting for a slot, each recycle attempt, opening a connection);
    /// this outer bound makes the acquire timeout hold for the whole checkout, however many steps it takes.
    pub(crate) async fn connection(&self) -> Result<Object<AsyncPgConnection>, PortError> {
        match tokio::time::timeout(self.acquire_timeout, self.pool.get()).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(pool_error(error)),
            Err(_elapsed) => Err(acquire_timed_out(self.acquire_timeout)),
        }
    }
}

/// How long a pooled connection may sit unused before a checkout proves it alive with a round trip first.
pub const VERIFY_AFTER_IDLE: Duration = Duration::from_secs(1);

/// How long the round trip that proves an idle connection alive may take before the connection is given up.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(1);

/// The pool of diesel-async connections [`PgRepository`] runs on.
pub type ConnectionPool = Pool<AsyncPgConnection>;

/// Builds the pool exactly as [`PgRepository::connect`] does: at most `max_connections` connections honouring the
/// URL's `sslmode`, opened lazily, one idle for [`VERIFY_AFTER_IDLE`] or longer verified with a round trip before
/// reuse, and every step of a checkout bounded by `acquire_timeout`.
///
/// The service goes through [`PgRepository`]; this is for tools that must read with the very same connections,
/// such as the ceiling `cargo xtask bench baseline` measures `GET /me` against. A caller bounds its whole checkout
/// by `acquire_timeout` itself, as [`PgRepository`] does.
///
/// # Errors
/// [`PgSetupError::InvalidUrl`] when the URL does not parse, [`PgSetupError::InvalidConfig`] for zero
/// connections or a zero timeout, [`PgSetupError::Pool`] when the pool cannot be built.
pub fn connection_pool(config: &PgConfig) -> Result<ConnectionPool, PgSetupError> {
    placed_pool(config, ConnectionPlacement::new())
}

/// The pool of [`connection_pool`], opening connections where `placement` says.
fn placed_pool(config: &PgConfig, placement: ConnectionPlacement) -> Result<ConnectionPool, PgSetupError> {
    // Parsed once: `sslmode`, the roots of `sslrootcert` and the driver's settings serve every connection.
    let connector = Arc::new(Connector::from_url(&config.url)?);
    if config.max_connections == 0 {
        return Err(PgSetupError::InvalidConfig("max_connections must be at least 1"));
    }
    if config.acquire_timeout.is_zero() {
        return Err(PgSetupError::InvalidConfig("acquire_timeout must be longer than zero"));
    }
    // A checkout always makes the manager's local check (no transaction left dangling, the connection not marked
    // broken by an earlier error). The round trip that proves the server still holds the connection (`SELECT 1`)
    // is made only for a connection idle for `VERIFY_AFTER_IDLE` or longer (the `post_recycle` hook below): that is
    // where a Postgres restart or an idle-connection timeout leaves dead connections, while one handed back
    // moments ago is as alive as a round trip would show. Verifying every checkout cost a second statement per
    // request, half of what Postgres ran under load.
    let mut manager_config = ManagerConfig::default();
    manager_config.recycling_method = RecyclingMethod::Fast;
    let opener = placement.clone();
    manager_config.custom_setup = Box::new(move |_url| {
        let connector = Arc::clone(&connector);
        let opener = opener.clone();
        Box::pin(async move {
            opener
                .open(move || {
                    let connector = Arc::clone(&connector);
                    async move { connector.connect().await }
                })
                .await
        })
    });
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(config.url.clone(), manager_config);
    Pool::builder(manager)
        .max_size(config.max_connections)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(config.acquire_timeout))
        .create_timeout(Some(config.acquire_timeout))
        .recycle_timeout(Some(config.acquire_timeout))
        .pre_recycle(Hook::sync_fn(move |_connection, metrics| {
            // Dropped, so that the pool opens one on this worker instead (see `ConnectionPlacement`).
            if placement.misplaced(metrics.created) {
                return Err(HookError::message("opened before the server's workers started"));
            }
            Ok(())
        }))
        .post_recycle(Hook::async_fn(|connection, metrics| {
            Box::pin(async move {
                if metrics.last_used() < VERIFY_AFTER_IDLE {
                    return Ok(());
                }
                // Bounded on its own (the pool's recycle timeout does not cover hooks), so a connection whose server
                // stopped answering is given up early and another tried within the same acquire timeout.
                match tokio::time::timeout(VERIFY_TIMEOUT, diesel::sql_query("SELECT 1").execute(connection)).await {
                    Ok(Ok(_)) => Ok(()),
                    // The pool drops this connection and hands out (or opens) another.
                    Ok(Err(error)) => Err(HookError::Backend(PoolError::QueryError(error))),
                    Err(_elapsed) => Err(HookError::message("the liveness check timed out")),
                }
            })
        }))
        .build()
        .map_err(|error| PgSetupError::Pool(Box::new(error)))
}
