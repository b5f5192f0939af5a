//! The login backoff: the domain's [`LoginThrottle`] on the `login_attempts` table. Consecutive failures are
//! counted atomically per key and blocked as the domain's [`BackoffPolicy`] says for the stored count.

use diesel::prelude::{OptionalExtension as _, QueryDsl as _};
use diesel::result::Error as DieselError;
use diesel::sql_types::{Text, Timestamptz};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::OffsetDateTime;
use users_domain::audit::AuditEvent;
use users_domain::ports::{BackoffPolicy, FailureCount, LoginThrottle, PortError};

use crate::audit::insert_events;
use crate::errors::{TxError, query_error};
use crate::repository::PgRepository;
use crate::reused::Reuse as _;
use crate::schema::login_attempts;

impl LoginThrottle for PgRepository {
    async fn login_failures(&self, key: String) -> Result<Option<FailureCount>, PortError> {
        let mut connection = self.connection().await?;
        let found = failures(&mut connection, &key).await;
        found.map_err(|error| error.into_port(&mut connection, "reading the login backoff"))
    }

    async fn record_login_failure(
        &self,
        key: String,
        now: OffsetDateTime,
        policy: BackoffPolicy,
        events: Vec<AuditEvent>,
    ) -> Result<Option<OffsetDateTime>, PortError> {
        let mut connection = self.connection().await?;
        let recorded = record_failure(&mut connection, &key, now, policy, &events).await;
        recorded.map_err(|error| error.into_port(&mut connection, "counting a failed login"))
    }

    async fn clear_login_failures(&self, key: String) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        match clear(&mut connection, &key).await {
            Ok(()) => Ok(()),
            Err(error) => Err(query_error(error, &mut connection, "clearing the login backoff")),
        }
    }
}

/// The count a failure upsert returns.
#[derive(diesel::QueryableByName)]
struct Counted {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    failures: i32,
}

/// The block a failure upsert leaves.
#[derive(diesel::QueryableByName)]
struct Blocked {
    #[diesel(sql_type = diesel::sql_types::Nullable<Timestamptz>)]
    blocked_until: Option<OffsetDateTime>,
}

/// The stored failures of `key`, if any.
async fn failures(connection: &mut AsyncPgConnection, key: &str) -> Result<Option<FailureCount>, TxError<PortError>> {
    let row: Option<(i32, Option<OffsetDateTime>)> = login_attempts::table
        .find(key)
        .select((login_attempts::failures, login_attempts::blocked_until))
        .get_result(connection)
        .await
        .optional()?;
    row.map(|(failures, blocked_until)| Ok(FailureCount { failures: count(failures)?, blocked_until })).transpose()
}

/// Counts one failure of `key` and applies the block the domain's policy gives for the new count.
///
/// The count is one upsert, so concurrent failures are each counted once; its row lock holds until commit, and
/// the block is written in the same transaction from the count the upsert returned. A block already in place is
/// never shortened. The failure's events are written in the same transaction.
async fn record_failure(
    connection: &mut AsyncPgConnection,
    key: &str,
    now: OffsetDateTime,
    policy: BackoffPolicy,
    events: &[AuditEvent],
) -> Result<Option<OffsetDateTime>, TxError<PortError>> {
    connection
        .transaction::<_, TxError<PortError>, _>(async |connection| {
            // diesel's DSL cannot express this upsert's RETURNING of the updated count through an alias, so it is
            // written out; every value is a bound parameter.
            let counted: Counted = diesel::sql_query(
                "INSERT INTO login_attempts AS a (key, failures, updated_at) VALUES ($1, 1, $2) \
                 ON CONFLICT (key) DO UPDATE SET failures = a.failures + 1, updated_at = $2 \
                 RETURNING a.failures",
            )
            .bind::<Text, _>(key)
            .bind::<Timestamptz, _>(now)
            .reused()
            .get_result(connection)
            .await?;
            let failures = count(counted.failures)?;
            insert_events(connection, events).await?;
            let Some(block) = policy.block_for(failures) else { return Ok(None) };
            let until = now.checked_add(block).ok_or_else(|| {
                TxError::Abort(PortError::Unknown(anyhow::anyhow!("a login block of {block} runs past the calendar")))
            })?;
            // GREATEST ignores NULL, so a key without a block gets this one, and a longer block stays.
            let blocked: Blocked = diesel::sql_query(
                "UPDATE login_attempts SET blocked_until = GREATEST(blocked_until, $2) WHERE key = $1 \
                 RETURNING blocked_until",
            )
            .bind::<Text, _>(key)
            .bind::<Timestamptz, _>(until)
            .reused()
            .get_result(connection)
            .await?;
            let until = blocked.blocked_until;
            Ok(until)
        })
        .await
}

/// Forgets the failures of `key`; also run inside a user change that clears them.
pub(crate) async fn clear(connection: &mut AsyncPgConnection, key: &str) -> Result<(), DieselError> {
    diesel::delete(login_attempts::table.find(key)).execute(connection).await.map(drop)
}

/// A stored count as the domain's type; the column's check keeps it positive.
fn count(failures: i32) -> Result<u32, TxError<PortError>> {
    u32::try_from(failures).map_err(|error| {
        TxError::Abort(PortError::Unknown(anyhow::Error::new(error).context("a negative login failure count")))
    })
}
