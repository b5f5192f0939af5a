//! The per-email login backoff: consecutive failures counted atomically, and the block they earn.

use diesel::prelude::{ExpressionMethods as _, QueryDsl as _};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::OffsetDateTime;
use users_domain::accounts::BackoffPolicy;
use users_domain::ports::PortError;

use crate::errors::TxError;
use crate::schema::login_attempts;

/// Counts one more failure for `key` and, past the policy's threshold, blocks it until `now + block_for(count)`.
///
/// The count is one upsert, so concurrent failures each add one. The block is computed by the domain's own
/// [`BackoffPolicy::block_for`] from the count that upsert returned, and written in the same transaction: the
/// upsert's row lock holds until commit, so concurrent failures are applied one after the other and the block
/// always belongs to the highest count, never to an earlier one that finished late.
pub(crate) async fn record_failure(
    connection: &mut AsyncPgConnection,
    key: &str,
    now: OffsetDateTime,
    policy: BackoffPolicy,
) -> Result<(), TxError<PortError>> {
    connection
        .transaction::<_, TxError<PortError>, _>(async |connection| {
            let failures: i32 = diesel::insert_into(login_attempts::table)
                .values((
                    login_attempts::key.eq(key),
                    login_attempts::failures.eq(1),
                    login_attempts::updated_at.eq(now),
                ))
                .on_conflict(login_attempts::key)
                .do_update()
                .set((login_attempts::failures.eq(login_attempts::failures + 1), login_attempts::updated_at.eq(now)))
                .returning(login_attempts::failures)
                .get_result(connection)
                .await?;
            // The column's check keeps the count positive, so the conversion cannot fail on a stored row.
            let failures = u32::try_from(failures).map_err(|error| {
                TxError::Abort(PortError::Unknown(anyhow::Error::new(error).context("a negative login failure count")))
            })?;
            let Some(block) = policy.block_for(failures) else { return Ok(()) };
            let blocked_until = now.checked_add(block).ok_or_else(|| {
                TxError::Abort(PortError::Unknown(anyhow::anyhow!("a login block of {block} runs past the calendar")))
            })?;
            diesel::update(login_attempts::table.find(key))
                .set(login_attempts::blocked_until.eq(blocked_until))
                .execute(connection)
                .await?;
            Ok(())
        })
        .await
}
