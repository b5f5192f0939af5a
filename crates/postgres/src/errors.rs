//! Translation of driver and pool errors into the domain's port errors, so no diesel or deadpool type crosses
//! the port.
//!
//! The one distinction the domain cares about is whether Postgres is unreachable (answered with 503 and retried
//! later) or failed in some other way; unique violations on the two case-insensitive indexes additionally become
//! the domain's `EmailTaken` and `NicknameTaken`.

use std::time::Duration;

use diesel::connection::CacheSize;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::PoolError as ConnectionPoolError;
use diesel_async::pooled_connection::PoolableConnection as _;
use diesel_async::pooled_connection::deadpool::PoolError;
use diesel_async::{AsyncConnection as _, AsyncPgConnection};
use users_domain::ports::{InsertUserError, PortError};

/// The unique index behind [`InsertUserError::EmailTaken`] and
/// [`UpdateError::EmailTaken`](users_domain::ports::UpdateError::EmailTaken); its name is fixed by the migration.
pub(crate) const EMAIL_UNIQUE_INDEX: &str = "users_email_lower_key";

/// The unique index behind [`InsertUserError::NicknameTaken`] and
/// [`UpdateError::NicknameTaken`](users_domain::ports::UpdateError::NicknameTaken); its name is fixed by the
/// migration.
pub(crate) const NICKNAME_UNIQUE_INDEX: &str = "users_nickname_lower_key";

/// Translates a failure to check a connection out of the pool.
pub(crate) fn pool_error(error: PoolError) -> PortError {
    match error {
        // A connection that cannot be established is an unreachable database whatever the reason: refused,
        // reset, the server starting up or shutting down, too many clients, or credentials that stopped working.
        // Each clears up, if at all, outside this process, so retrying later is the right answer for all of them.
        PoolError::Timeout(_) | PoolError::Closed => {
            PortError::Unavailable(anyhow::Error::new(error).context("no database connection available"))
        }
        // The connection's own error, not the pool's wrapper: that one repeats its source in its message, so a log
        // line of the chain would say why twice.
        PoolError::Backend(ConnectionPoolError::ConnectionError(connection)) => PortError::Unavailable(
            anyhow::Error::new(connection).context("no database connection available: opening one failed"),
        ),
        PoolError::Backend(ConnectionPoolError::QueryError(query_error)) => {
            classify(query_error, false, "checking a database connection out of the pool")
        }
        PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => {
            PortError::Unknown(anyhow::Error::new(error).context("the connection pool is misconfigured"))
        }
    }
}

/// The error for a checkout that did not finish within the acquire timeout, whatever step it was stuck in.
pub(crate) fn acquire_timed_out(timeout: Duration) -> PortError {
    PortError::Unavailable(anyhow::anyhow!("no database connection within {} ms", timeout.as_millis()))
}

/// What Postgres answers (SQLSTATE 0A000) when a statement prepared on a connection would now return other column
/// types, after a migration changed the type of a column it reads: that statement fails on that connection every
/// time from then on, and diesel-async keeps it in its cache. The driver hands over the message, not the code, so it
/// is recognised in English only (`lc_messages` of `C` or an English locale); under a translation the connection
/// keeps failing that statement, as a 500, until it ends.
const STALE_STATEMENT: &str = "cached plan must not change result type";

/// Translates a failed query. `connection` is the connection it ran on: when the query left it broken (closed by
/// the server, or with a transaction that could not be closed), the database is treated as unreachable even if
/// the error itself does not say so, such as a server shutdown that interrupts a query in flight.
///
/// A statement the connection keeps prepared that went stale ([`STALE_STATEMENT`]) makes the connection forget
/// every statement it keeps prepared (closing them on the server), so the next request on it prepares them afresh
/// against the new column types; this request is answered as unavailable, to be retried, rather than every later
/// request on that connection failing until a restart.
pub(crate) fn query_error(error: DieselError, connection: &mut AsyncPgConnection, context: &'static str) -> PortError {
    if is_stale_statement(&error) {
        forget_prepared_statements(connection);
        return PortError::Unavailable(anyhow::Error::new(error).context(context));
    }
    classify(error, connection.is_broken(), context)
}

/// Whether `error` is Postgres refusing a prepared statement whose result types changed.
fn is_stale_statement(error: &DieselError) -> bool {
    matches!(error, DieselError::DatabaseError(_, info) if info.message() == STALE_STATEMENT)
}

/// Empties `connection`'s cache of prepared statements: replacing the cache drops every statement it held, and the
/// driver closes each on the server as it is dropped. The cache then keeps statements again, as it did.
fn forget_prepared_statements(connection: &mut AsyncPgConnection) {
    connection.set_prepared_statement_cache_size(CacheSize::Disabled);
    connection.set_prepared_statement_cache_size(CacheSize::Unbounded);
}

fn classify(error: DieselError, connection_broken: bool, context: &'static str) -> PortError {
    let unreachable = connection_broken
        || matches!(
            error,
            DieselError::DatabaseError(DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection, _)
                | DieselError::BrokenTransactionManager
        );
    let error = anyhow::Error::new(error).context(context);
    if unreachable { PortError::Unavailable(error) } else { PortError::Unknown(error) }
}

/// Translates a failed user insert, recognising the two case-insensitive unique indexes by name.
pub(crate) fn insert_user_error(
    error: DieselError,
    connection: &mut AsyncPgConnection,
    context: &'static str,
) -> InsertUserError {
    match violated_unique_index(&error) {
        Some(EMAIL_UNIQUE_INDEX) => InsertUserError::EmailTaken,
        Some(NICKNAME_UNIQUE_INDEX) => InsertUserError::NicknameTaken,
        _ => InsertUserError::Port(query_error(error, connection, context)),
    }
}

/// The name of the unique index or constraint a statement violated, if that is why it failed.
pub(crate) fn violated_unique_index(error: &DieselError) -> Option<&str> {
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => info.constraint_name(),
        _ => None,
    }
}

/// Why a transaction ended without committing: a failed statement, or an outcome the method decided on part-way
/// (a taken address, a corrupt row) that must undo what the transaction already did.
#[derive(Debug)]
pub(crate) enum TxError<E> {
    /// A statement failed; translated with [`query_error`] once the connection is free again.
    Query(DieselError),
    /// The method's own outcome, already in the port's terms.
    Abort(E),
}

impl<E> From<DieselError> for TxError<E> {
    fn from(error: DieselError) -> Self {
        Self::Query(error)
    }
}

impl<E: From<PortError>> TxError<E> {
    /// The port's error: an abort as decided, a failed statement translated as any other query error.
    pub(crate) fn into_port(self, connection: &mut AsyncPgConnection, context: &'static str) -> E {
        match self {
            Self::Query(error) => E::from(query_error(error, connection, context)),
            Self::Abort(outcome) => outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_cannot_be_sent_means_the_database_is_unavailable() {
        let error = DieselError::DatabaseError(
            DatabaseErrorKind::UnableToSendCommand,
            Box::new("connection closed".to_owned()),
        );
        assert!(matches!(classify(error, false, "test"), PortError::Unavailable(_)));
    }

    #[test]
    fn a_closed_connection_or_broken_transaction_means_the_database_is_unavailable() {
        let error = DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, Box::new("closed".to_owned()));
        assert!(matches!(classify(error, false, "test"), PortError::Unavailable(_)));
        assert!(matches!(classify(DieselError::BrokenTransactionManager, false, "test"), PortError::Unavailable(_)));
    }

    #[test]
    fn any_error_on_a_connection_left_broken_means_the_database_is_unavailable() {
        let error = DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("terminating connection due to administrator command".to_owned()),
        );
        assert!(matches!(classify(error, true, "test"), PortError::Unavailable(_)));
    }

    #[test]
    fn other_errors_are_unknown_and_keep_their_context() {
        let error = classify(DieselError::NotFound, false, "finding a user");
        match error {
            PortError::Unknown(error) => assert_eq!(error.to_string(), "finding a user"),
            PortError::Unavailable(_) => panic!("NotFound must not read as an outage"),
        }
    }

    #[test]
    fn pool_timeouts_and_refused_connections_mean_the_database_is_unavailable() {
        use deadpool::managed::TimeoutType;
        for timeout in [TimeoutType::Wait, TimeoutType::Create, TimeoutType::Recycle] {
            assert!(matches!(pool_error(PoolError::Timeout(timeout)), PortError::Unavailable(_)));
        }
        let refused = PoolError::Backend(ConnectionPoolError::ConnectionError(
            diesel::result::ConnectionError::BadConnection("connection refused".to_owned()),
        ));
        assert!(matches!(pool_error(refused), PortError::Unavailable(_)));
        assert!(matches!(pool_error(PoolError::Closed), PortError::Unavailable(_)));
        assert!(matches!(pool_error(PoolError::NoRuntimeSpecified), PortError::Unknown(_)));
    }
}
