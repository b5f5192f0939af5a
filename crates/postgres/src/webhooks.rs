//! The webhook outbox: `webhook_endpoints` written from the configuration, and `webhook_deliveries`, one row per
//! event and endpoint, queued by the audit table's trigger in the transaction of the change. Not a port of the
//! domain: delivering events over HTTP is the binary's business.
//!
//! A claim leases its rows by moving `next_attempt_at` past the lease, in the statement that picks them
//! (`FOR UPDATE SKIP LOCKED`), like the mail outbox: two instances never hold the same delivery, and one that dies
//! mid-delivery lets its lease run out, after which another claims the delivery again. Delivery is therefore at
//! least once; receivers deduplicate by `webhook-id` (the event id).

use diesel::result::Error as DieselError;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
use time::{Duration, OffsetDateTime};
use users_domain::audit::AuditEvent;
use users_domain::ports::PortError;
use uuid::Uuid;

use crate::audit::EventRow;
use crate::errors::query_error;
use crate::repository::PgRepository;

/// The longest `last_error` kept, in characters.
const MAX_ERROR_CHARS: usize = 500;

/// Claims due deliveries of active endpoints, oldest first, leasing them in the same statement, and returns each
/// with its event and endpoint URL.
const CLAIM_DUE: &str = "\
    WITH claimed AS ( \
        UPDATE webhook_deliveries d SET next_attempt_at = $2 \
        FROM ( \
            SELECT d.event_id, d.endpoint_id FROM webhook_deliveries d \
            JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.active \
            WHERE d.status = 'pending' AND d.next_attempt_at <= $1 \
            ORDER BY d.next_attempt_at \
            LIMIT $3 \
            FOR UPDATE OF d SKIP LOCKED \
        ) due \
        WHERE d.event_id = due.event_id AND d.endpoint_id = due.endpoint_id \
        RETURNING d.event_id, d.endpoint_id, d.attempts \
    ) \
    SELECT a.id, a.at, a.type, a.actor_id, a.subject_id, a.session_id, a.ip, a.user_agent, a.details::text AS details, \
           claimed.endpoint_id, claimed.attempts, e.url \
    FROM claimed JOIN audit_events a ON a.id = claimed.event_id JOIN webhook_endpoints e ON e.id = claimed.endpoint_id";

/// One claimed delivery.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    /// The event to deliver.
    pub event: AuditEvent,
    /// The endpoint's id.
    pub endpoint_id: i64,
    /// The endpoint's URL.
    pub url: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

#[derive(QueryableByName)]
struct ClaimedRow {
    #[diesel(embed)]
    event: EventRow,
    #[diesel(sql_type = BigInt)]
    endpoint_id: i64,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Text)]
    url: String,
}

/// What became of an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The endpoint answered 2xx.
    Delivered,
    /// It did not; try again at this time.
    RetryAt(OffsetDateTime, String),
    /// It did not, and that was the last attempt.
    Dead(String),
}

/// A stored error: bounded, without NUL.
fn stored_error(error: &str) -> String {
    error.chars().filter(|c| *c != '\0').take(MAX_ERROR_CHARS).collect()
}

impl PgRepository {
    /// Makes `webhook_endpoints` match the configuration: each of `urls` active with `events`, every other endpoint
    /// inactive (its pending deliveries wait, unclaimed, and resume if the URL comes back). In one transaction, so
    /// instances starting together with the same configuration end in the same state.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    pub async fn sync_webhook_endpoints(&self, urls: &[String], events: &[String]) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        let synced = connection
            .transaction::<_, DieselError, _>(async |connection| {
                sql_query("UPDATE webhook_endpoints SET active = false WHERE NOT (url = ANY($1))")
                    .bind::<Array<Text>, _>(urls)
                    .execute(connection)
                    .await?;
                for url in urls {
                    sql_query(
                        "INSERT INTO webhook_endpoints (url, events, active) VALUES ($1, $2, true) \
                         ON CONFLICT (url) DO UPDATE SET events = excluded.events, active = true",
                    )
                    .bind::<Text, _>(url)
                    .bind::<Array<Text>, _>(events)
                    .execute(connection)
                    .await?;
                }
                Ok(())
            })
            .await;
        synced.map_err(|error| query_error(error, &mut connection, "writing the webhook endpoints"))
    }

    /// Claims up to `limit` due deliveries at `now`, leased until `now + lease`.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    pub async fn claim_webhook_deliveries(
        &self,
        now: OffsetDateTime,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, PortError> {
        let mut connection = self.connection().await?;
        let rows = sql_query(CLAIM_DUE)
            .bind::<Timestamptz, _>(now)
            .bind::<Timestamptz, _>(now + lease)
            .bind::<BigInt, _>(i64::from(limit))
            .load::<ClaimedRow>(&mut connection)
            .await;
        let rows = rows.map_err(|error| query_error(error, &mut connection, "claiming webhook deliveries"))?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let event = row.event.into_event()?;
                Some(ClaimedDelivery {
                    event,
                    endpoint_id: row.endpoint_id,
                    url: row.url,
                    attempts: u32::try_from(row.attempts).unwrap_or(0),
                })
            })
            .collect())
    }

    /// Records the outcome of an attempt of a claimed delivery at `now`.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    pub async fn finish_webhook_attempt(
        &self,
        event_id: Uuid,
        endpoint_id: i64,
        now: OffsetDateTime,
        outcome: &DeliveryOutcome,
    ) -> Result<(), PortError> {
        let (status, next, error, delivered_at) = match outcome {
            DeliveryOutcome::Delivered => ("delivered", now, None, Some(now)),
            DeliveryOutcome::RetryAt(at, error) => ("pending", *at, Some(stored_error(error)), None),
            DeliveryOutcome::Dead(error) => ("dead", now, Some(stored_error(error)), None),
        };
        let mut connection = self.connection().await?;
        let finished = sql_query(
            "UPDATE webhook_deliveries SET status = $3, next_attempt_at = $4, last_error = $5, delivered_at = $6, \
             attempts = attempts + 1 WHERE event_id = $1 AND endpoint_id = $2 AND status = 'pending'",
        )
        .bind::<SqlUuid, _>(event_id)
        .bind::<BigInt, _>(endpoint_id)
        .bind::<Text, _>(status)
        .bind::<Timestamptz, _>(next)
        .bind::<Nullable<Text>, _>(error)
        .bind::<Nullable<Timestamptz>, _>(delivered_at)
        .execute(&mut connection)
        .await;
        finished.map(drop).map_err(|error| query_error(error, &mut connection, "recording a webhook attempt"))
    }
}
