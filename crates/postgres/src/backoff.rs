//! The per-account backoff: consecutive failures counted atomically, and the block the domain's policy gives them.

use diesel::prelude::{OptionalExtension as _, QueryDsl as _};
use diesel::sql_types::{Text, Timestamptz};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::OffsetDateTime;
use users_domain::accounts::{BackoffPolicy, FailureCount};
use users_domain::ports::PortError;

use crate::errors::TxError;
use crate::schema::login_attempts;

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

/// The stored failures of `key`, if any; see the port's `login_failures`.
pub(crate) async fn failures(
    connection: &mut AsyncPgConnection,
    key: &str,
) -> Result<Option<FailureCount>, TxError<PortError>> {
    let row: Option<(i32, Option<OffsetDateTime>)> = login_attempts::table
        .find(key)
        .select((login_attempts::failures, login_attempts::blocked_until))
        .get_result(connection)
        .await
        .optional()?;
    row.map(|(failures, blocked_until)| Ok(FailureCount { failures: count(failures)?, blocked_until })).transpose()
}

/// Counts one failure of `key` and applies the block the domain's policy gives for the new count; see the port's
/// `record_login_failure`.
///
/// The count is one upsert, so concurrent failures are each counted once; its row lock holds until commit, and
/// the block is written in the same transaction from the count the upsert returned. A block already in place is
/// never shortened.
pub(crate) async fn record_failure(
    connection: &mut AsyncPgConnection,
    key: &str,
    now: OffsetDateTime,
    policy: BackoffPolicy,
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
            .get_result(connection)
            .await?;
            let failures = count(counted.failures)?;
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
            .get_result(connection)
            .await?;
            let until = blocked.blocked_until;
            Ok(until)
        })
        .await
}

/// A stored count as the domain's type; the column's check keeps it positive.
fn count(failures: i32) -> Result<u32, TxError<PortError>> {
    u32::try_from(failures).map_err(|error| {
        TxError::Abort(PortError::Unknown(anyhow::Error::new(error).context("a negative login failure count")))
    })
}
