//! The queue of enumeration-prone account requests (forgotten password, resend of the verification link).

use diesel::prelude::{ExpressionMethods as _, QueryDsl as _};
use diesel::sql_types::{BigInt, Interval, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use time::{Duration, OffsetDateTime};
use users_domain::accounts::{AccountRequest, AccountRequestKind};
use users_domain::user::EmailAddress;
use uuid::Uuid;

use crate::schema::account_requests;

/// A claimed row.
#[derive(diesel::QueryableByName)]
struct ClaimedRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    email: String,
}

/// Inserts a request, unless the same one (kind and address) is already waiting.
pub(crate) async fn queue(
    connection: &mut AsyncPgConnection,
    kind: AccountRequestKind,
    email: &EmailAddress,
    now: OffsetDateTime,
) -> Result<(), diesel::result::Error> {
    diesel::insert_into(account_requests::table)
        .values((
            account_requests::id.eq(Uuid::now_v7()),
            account_requests::kind.eq(kind.as_str()),
            account_requests::email.eq(email.as_str()),
            account_requests::created_at.eq(now),
        ))
        .on_conflict_do_nothing()
        .execute(connection)
        .await
        .map(drop)
}

/// Claims due requests, oldest first, skipping rows another worker holds, leasing them until `now + lease`. A
/// row the domain refuses (it cannot come from the service) is logged and removed, so it never blocks the queue.
pub(crate) async fn claim(
    connection: &mut AsyncPgConnection,
    now: OffsetDateTime,
    limit: u32,
    lease: Duration,
) -> Result<Vec<AccountRequest>, diesel::result::Error> {
    // UPDATE ... FROM a locked sub-select is not expressible in diesel's DSL; every value is a bound parameter.
    let rows: Vec<ClaimedRow> = diesel::sql_query(
        "UPDATE account_requests AS r SET claimed_until = $1 + $2 \
         WHERE r.id IN (SELECT id FROM account_requests WHERE claimed_until <= $1 \
                        ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING r.id, r.kind, r.email",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<Interval, _>(diesel::data_types::PgInterval::from_microseconds(
        i64::try_from(lease.whole_microseconds()).unwrap_or(i64::MAX),
    ))
    .bind::<BigInt, _>(i64::from(limit))
    .load(connection)
    .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let kind = AccountRequestKind::parse(&row.kind);
        match (kind, EmailAddress::parse(&row.email)) {
            (Some(kind), Ok(email)) => claimed.push(AccountRequest { id: row.id, kind, email }),
            _ => {
                tracing::error!(request_id = %row.id, "dropping an account request the domain refuses");
                finish(connection, row.id).await?;
            }
        }
    }
    Ok(claimed)
}

/// Removes a handled request.
pub(crate) async fn finish(connection: &mut AsyncPgConnection, id: Uuid) -> Result<(), diesel::result::Error> {
    diesel::delete(account_requests::table.filter(account_requests::id.eq(id))).execute(connection).await.map(drop)
}
