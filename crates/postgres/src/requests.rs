//! The queue of enumeration-prone account requests (forgotten password, resend of the verification link): the
//! domain's [`AccountRequests`] on the `account_requests` table.
//!
//! One waiting request per kind and address (a unique index on the lower-cased address): a repeat is absorbed by
//! the insert. Claims are leases (`claimed_until`) taken with `FOR UPDATE SKIP LOCKED`, so several workers share
//! the queue and a crashed worker's claim expires.

use diesel::prelude::{ExpressionMethods as _, QueryDsl as _};
use diesel::sql_types::{BigInt, Interval, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use time::{Duration, OffsetDateTime};
use users_domain::ports::{AccountRequest, AccountRequestKind, AccountRequests, PortError};
use users_domain::user::EmailAddress;
use uuid::Uuid;

use crate::errors::query_error;
use crate::repository::PgRepository;
use crate::schema::account_requests;

impl AccountRequests for PgRepository {
    async fn queue_account_request(
        &self,
        kind: AccountRequestKind,
        email: EmailAddress,
        now: OffsetDateTime,
    ) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        let queued = queue(&mut connection, kind, &email, now).await;
        queued.map_err(|error| query_error(error, &mut connection, "queueing an account request"))
    }

    async fn claim_account_requests(
        &self,
        now: OffsetDateTime,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<AccountRequest>, PortError> {
        let mut connection = self.connection().await?;
        let claimed = claim(&mut connection, now, limit, lease).await;
        claimed.map_err(|error| query_error(error, &mut connection, "claiming account requests"))
    }

    async fn finish_account_request(&self, id: Uuid) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        let finished = finish(&mut connection, id).await;
        finished.map_err(|error| query_error(error, &mut connection, "finishing an account request"))
    }
}

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
async fn queue(
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
async fn claim(
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
async fn finish(connection: &mut AsyncPgConnection, id: Uuid) -> Result<(), diesel::result::Error> {
    diesel::delete(account_requests::table.filter(account_requests::id.eq(id))).execute(connection).await.map(drop)
}
