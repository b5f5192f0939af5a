//! The per-email login backoff: consecutive failures counted atomically, and the block they earn.

use diesel::prelude::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _};
use diesel::sql_types::{Text, Timestamptz};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::OffsetDateTime;
use users_domain::accounts::BackoffPolicy;
use users_domain::ports::PortError;

use crate::errors::TxError;
use crate::schema::login_attempts;

/// The count an attempt reservation returns.
#[derive(diesel::QueryableByName)]
struct Counted {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    failures: i32,
}

/// Reserves one login attempt for `key` before its password is checked; see the port's
/// `begin_login_attempt`.
///
/// The count is one upsert whose update only applies while the key is not blocked. Its row lock holds until
/// commit, and a concurrent upsert that waited on it re-checks the committed row, so of a burst of parallel
/// attempts exactly those under the threshold are counted and let through; the others find the block. The block
/// itself is computed by the domain's own [`BackoffPolicy::block_for`] from the count the upsert returned, and
/// written in the same transaction.
pub(crate) async fn begin_attempt(
    connection: &mut AsyncPgConnection,
    key: &str,
    now: OffsetDateTime,
    policy: BackoffPolicy,
) -> Result<Option<OffsetDateTime>, TxError<PortError>> {
    connection
        .transaction::<_, TxError<PortError>, _>(async |connection| {
            // diesel's DSL has no WHERE on ON CONFLICT DO UPDATE, so this one statement is written out; every value
            // is a bound parameter.
            let counted: Option<Counted> = diesel::sql_query(
                "INSERT INTO login_attempts AS a (key, failures, updated_at) VALUES ($1, 1, $2) \
                 ON CONFLICT (key) DO UPDATE SET failures = a.failures + 1, updated_at = $2 \
                 WHERE a.blocked_until IS NULL OR a.blocked_until <= $2 \
                 RETURNING a.failures",
            )
            .bind::<Text, _>(key)
            .bind::<Timestamptz, _>(now)
            .get_result(connection)
            .await
            .optional()?;
            let counted = counted.map(|row| row.failures);
            let Some(failures) = counted else {
                // Blocked: nothing was counted; answer with the end of the block.
                let until: Option<OffsetDateTime> = login_attempts::table
                    .find(key)
                    .select(login_attempts::blocked_until)
                    .get_result(connection)
                    .await?;
                return Ok(until);
            };
            // The column's check keeps the count positive, so the conversion cannot fail on a stored row.
            let failures = u32::try_from(failures).map_err(|error| {
                TxError::Abort(PortError::Unknown(anyhow::Error::new(error).context("a negative login failure count")))
            })?;
            let blocked_until = match policy.block_for(failures) {
                None => None,
                Some(block) => Some(now.checked_add(block).ok_or_else(|| {
                    TxError::Abort(PortError::Unknown(anyhow::anyhow!(
                        "a login block of {block} runs past the calendar"
                    )))
                })?),
            };
            diesel::update(login_attempts::table.find(key))
                .set(login_attempts::blocked_until.eq(blocked_until))
                .execute(connection)
                .await?;
            Ok(None)
        })
        .await
}
