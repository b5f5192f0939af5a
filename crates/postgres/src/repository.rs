//! [`PgRepository`]: the pools every storage port of this adapter runs on: one for every statement but the user
//! listing, and a small one for the listing (see `users/list.rs`).
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

/// The Postgres implementation of every storage port of the domain, on one connection pool, with a second small one
/// for the user listing. Cloning is cheap and shares the pools.
#[derive(Clone)]
pub struct PgRepository {
    pool: Pool<AsyncPgConnection>,
    /// Connections whose sessions plan every statement with its values (`plan_cache_mode = force_custom_plan`), for
    /// the user listing alone: it is kept prepared there, and could not safely be anywhere else (see
    /// `users/list.rs`). Every other statement keeps the default, where a statement on a key runs a plan made once.
    listings: Pool<AsyncPgConnection>,
    acquire_timeout: Duration,
}

impl fmt::Debug for PgRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PgRepository")
            .field("max_connections", &status.max_size)
            .field("open_connections", &status.size)
            .field("idle_connections", &status.available)
            .field("listing_connections", &self.listings.status().max_size)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

impl PgRepository {
    /// Builds the connection pools: `max_connections` for every statement but the user listing, and
    /// `listing_connections` for the listing, whose sessions plan every execution with its values. Connections are
    /// opened lazily, on first use, so this succeeds while Postgres is still starting; readiness is what
    /// [`UserStore::ping`](users_domain::ports::UserStore::ping) is for.
    ///
    /// Every checkout is bounded by `acquire_timeout`, so requests fail as unavailable instead of hanging while
    /// Postgres is down. A connection is checked locally on every checkout, and with a round trip when it sat
    /// unused for [`VERIFY_AFTER_IDLE`] or longer, so connections broken by a Postgres restart are replaced and the
    /// pool recovers without a restart of the service.
    ///
    /// # Errors
    /// [`PgSetupError::InvalidUrl`] when the URL does not parse, [`PgSetupError::InvalidConfig`] for zero
    /// connections in either pool or a zero timeout, [`PgSetupError::Pool`] when a pool cannot be built.
    pub async fn connect(config: &PgConfig) -> Result<Self, PgSetupError> {
        Self::connect_placed(config, ConnectionPlacement::new()).await
    }

    /// As [`connect`](Self::connect), with new connections opened where `placement` says: on the worker threads
    /// a server registers with it (see [`ConnectionPlacement`]).
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_placed(config: &PgConfig, placement: ConnectionPlacement) -> Result<Self, PgSetupError> {
        if config.listing_connections == 0 {
            return Err(PgSetupError::InvalidConfig("listing_connections must be at least 1"));
        }
        let connector = Connector::from_url(&config.url)?;
        let listing_connector = connector.with_setting(CUSTOM_PLANS.0, CUSTOM_PLANS.1);
        Ok(Self {
            pool: placed_pool(config, connector, config.max_connections, placement.clone())?,
            listings: placed_pool(config, listing_connector, config.listing_connections, placement)?,
            acquire_timeout: config.acquire_timeout,
        })
    }

    /// Checks a connection out of the pool within the acquire timeout.
    ///
    /// The pool's own timeouts apply per step (waiting for a slot, each recycle attempt, opening a connection);
    /// this outer bound makes the acquire timeout hold for the whole checkout, however many steps it takes.
    pub(crate) async fn connection(&self) -> Result<Object<AsyncPgConnection>, PortError> {
        checkout(&self.pool, self.acquire_timeout).await
    }

    /// Checks a connection out of the user listing's pool within the acquire timeout, as
    /// [`connection`](Self::connection) does from the main one.
    pub(crate) async fn listing_connection(&self) -> Result<Object<AsyncPgConnection>, PortError> {
        checkout(&self.listings, self.acquire_timeout).await
    }

    /// Opens a connection of the user listing's pool and closes it again: a session that does not report
    /// `plan_cache_mode = force_custom_plan` is refused there, as on every listing connection. For start-up, so that
    /// a pooler that drops start-up options is reported before the first request rather than by every `GET /users`
    /// answering 503 while the rest of the service works. The connection is taken out of the pool and closed, so it
    /// holds no Postgres backend until the first listing.
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when no listing connection can be had, with the reason.
    pub async fn check_listing_connection(&self) -> Result<(), PortError> {
        let connection = self.listing_connection().await?;
        drop(Object::take(connection));
        Ok(())
    }
}

/// The session setting of the user listing's connections: every execution of a prepared statement is planned with
/// its values, never with a generic plan. A connection whose session does not report it is refused.
const CUSTOM_PLANS: (&str, &str) = ("plan_cache_mode", "force_custom_plan");

/// A connection from `pool`, within `acquire_timeout` for the whole checkout.
async fn checkout(
    pool: &Pool<AsyncPgConnection>,
    acquire_timeout: Duration,
) -> Result<Object<AsyncPgConnection>, PortError> {
    match tokio::time::timeout(acquire_timeout, pool.get()).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(pool_error(error)),
        Err(_elapsed) => Err(acquire_timed_out(acquire_timeout)),
    }
}

/// How long a pooled connection may sit unused before a checkout proves it alive with a round trip first.
pub const VERIFY_AFTER_IDLE: Duration = Duration::from_secs(1);

/// How long the round trip that proves an idle connection alive may take before the connection is given up.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(1);

/// A pool of diesel-async connections, as the main one [`PgRepository`] runs on.
pub type ConnectionPool = Pool<AsyncPgConnection>;

/// Builds the main pool exactly as [`PgRepository::connect`] does: at most `max_connections` connections honouring the
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
    placed_pool(config, Connector::from_url(&config.url)?, config.max_connections, ConnectionPlacement::new())
}

/// A pool of at most `size` connections opened by `connector` where `placement` says, with the checks and timeouts of
/// `config`.
fn placed_pool(
    config: &PgConfig,
    connector: Connector,
    size: usize,
    placement: ConnectionPlacement,
) -> Result<ConnectionPool, PgSetupError> {
    // Parsed once: `sslmode`, the roots of `sslrootcert` and the driver's settings serve every connection.
    let connector = Arc::new(connector);
    if size == 0 {
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
        .max_size(size)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository on `database` whose listing connections lack the start-up option their sessions are checked
    /// for, as behind a pooler that drops start-up options.
    fn behind_a_dropping_pooler(url: &str) -> PgRepository {
        let config = PgConfig { url: url.to_owned(), listing_connections: 1, ..PgConfig::default() };
        let connector = Connector::from_url(url).unwrap();
        let dropping = connector.requiring_without_asking(CUSTOM_PLANS.0, CUSTOM_PLANS.1);
        PgRepository {
            pool: placed_pool(&config, connector, 1, ConnectionPlacement::new()).unwrap(),
            listings: placed_pool(&config, dropping, 1, ConnectionPlacement::new()).unwrap(),
            acquire_timeout: config.acquire_timeout,
        }
    }

    #[tokio::test]
    async fn the_start_up_check_refuses_listing_sessions_that_do_not_plan_with_the_values() {
        let database = users_testkit::TestDatabase::create().await;
        let config = PgConfig { url: database.url(), ..PgConfig::default() };
        let repository = PgRepository::connect(&config).await.unwrap();
        repository.check_listing_connection().await.unwrap();
        assert_eq!(repository.listings.status().size, 0, "the checked connection is closed, not kept");

        match behind_a_dropping_pooler(&database.url()).check_listing_connection().await {
            Err(PortError::Unavailable(error)) => {
                let message = format!("{error:#}");
                assert!(message.contains("plan_cache_mode is auto, not the force_custom_plan"), "{message}");
                assert_eq!(message.matches("plan_cache_mode is auto").count(), 1, "said once: {message}");
            }
            other => panic!("a listing session without the setting passed the check: {other:?}"),
        }
    }
}
