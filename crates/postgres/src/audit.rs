//! The audit trail on `audit_events`: [`insert_events`] writes a change's events inside its transaction (the
//! table's trigger queues one webhook delivery per matching active endpoint in the same transaction);
//! [`AuditTrail`] writes events that stand alone and reads pages of the trail.

use diesel::prelude::Insertable;
use diesel::result::Error as DieselError;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::OffsetDateTime;
use users_domain::audit::{AuditEvent, EventQuery, EventType};
use users_domain::ports::{AuditTrail, PortError};
use users_domain::{SessionId, UserId};
use uuid::Uuid;

use crate::errors::query_error;
use crate::repository::PgRepository;
use crate::reused::Reuse as _;
use crate::schema::audit_events;

/// One page of the trail, newest first, after the cursor ($1, $2), filtered by the types in $3 ([`TYPE_FILTER`]
/// goes in the gap). Each other filter is a no-op when its parameter is null; the statement is planned with the
/// values (it is not a cached prepared statement), so the unused ones fold away and the rest can use an index.
const LIST_EVENTS: &str = "\
    SELECT id, at, type, actor_id, subject_id, session_id, ip, user_agent, details::text AS details \
    FROM audit_events \
    WHERE ($1::timestamptz IS NULL OR (at, id) < ($1, $2)) \
      AND {TYPE_FILTER} \
      AND ($4::uuid IS NULL OR actor_id = $4) \
      AND ($5::uuid IS NULL OR subject_id = $5) \
      AND ($6::timestamptz IS NULL OR at >= $6) \
      AND ($7::timestamptz IS NULL OR at < $7) \
    ORDER BY at DESC, id DESC \
    LIMIT $8";

/// An event as inserted.
#[derive(Insertable)]
#[diesel(table_name = audit_events)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct NewEventRow<'a> {
    id: Uuid,
    at: OffsetDateTime,
    kind: &'static str,
    actor_id: Option<Uuid>,
    subject_id: Option<Uuid>,
    session_id: Option<Uuid>,
    ip: Option<&'a str>,
    user_agent: Option<&'a str>,
    details: serde_json::Value,
}

impl<'a> From<&'a AuditEvent> for NewEventRow<'a> {
    fn from(event: &'a AuditEvent) -> Self {
        Self {
            id: event.id,
            at: event.at,
            kind: event.kind.as_str(),
            actor_id: event.actor_id.map(|id| id.as_uuid()),
            subject_id: event.subject_id.map(|id| id.as_uuid()),
            session_id: event.session_id.map(|id| id.as_uuid()),
            ip: event.ip.as_deref(),
            user_agent: event.user_agent.as_deref(),
            details: serde_json::Value::Object(event.details.clone()),
        }
    }
}

/// Writes events; run inside the transaction of the change they record, as its last step (or next to last). Each
/// is one single-row insert, a statement the connection prepares once per combination of present optional fields
/// and reuses; the table's trigger queues the event's webhook deliveries in the same transaction. Each event counts
/// once on `audit_events_total{type}` as it is written: a transaction that then fails to commit leaves its events
/// counted, which only happens when the database fails.
pub(crate) async fn insert_events(
    connection: &mut AsyncPgConnection,
    events: &[AuditEvent],
) -> Result<(), DieselError> {
    for event in events {
        diesel::insert_into(audit_events::table).values(NewEventRow::from(event)).reused().execute(connection).await?;
        metrics::counter!("audit_events_total", "type" => event.kind.as_str()).increment(1);
    }
    Ok(())
}

/// An event as read back.
#[derive(QueryableByName)]
pub(crate) struct EventRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Timestamptz)]
    at: OffsetDateTime,
    #[diesel(sql_type = Text)]
    r#type: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    actor_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    subject_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    session_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    ip: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    user_agent: Option<String>,
    #[diesel(sql_type = Text)]
    details: String,
}

impl EventRow {
    /// The event, or `None` for a type this version does not know (written by a newer one): skipped, like rows
    /// that no longer parse elsewhere.
    pub(crate) fn into_event(self) -> Option<AuditEvent> {
        let kind = EventType::parse(&self.r#type)?;
        let details = match serde_json::from_str(&self.details) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        Some(AuditEvent {
            id: self.id,
            at: self.at,
            kind,
            actor_id: self.actor_id.map(UserId::from_uuid),
            subject_id: self.subject_id.map(UserId::from_uuid),
            session_id: self.session_id.map(SessionId::from_uuid),
            ip: self.ip,
            user_agent: self.user_agent,
            details,
        })
    }
}

impl AuditTrail for PgRepository {
    async fn record_events(&self, events: Vec<AuditEvent>) -> Result<(), PortError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection().await?;
        let written = connection
            .transaction::<_, DieselError, _>(async |connection| insert_events(connection, &events).await)
            .await;
        written.map_err(|error| query_error(error, &mut connection, "recording audit events"))
    }

    async fn list_events(&self, query: EventQuery) -> Result<Vec<AuditEvent>, PortError> {
        let mut connection = self.connection().await?;
        let rows = list_statement("", &query).load::<EventRow>(&mut connection).await;
        match rows {
            Ok(rows) => Ok(rows.into_iter().filter_map(EventRow::into_event).collect()),
            Err(error) => Err(query_error(error, &mut connection, "listing audit events")),
        }
    }
}

/// The listing statement for `query`, after `prefix` (`EXPLAIN` in tests).
fn list_statement(
    prefix: &str,
    query: &EventQuery,
) -> diesel::query_builder::BoxedSqlQuery<'static, diesel::pg::Pg, diesel::query_builder::SqlQuery> {
    let kinds: Vec<String> = query.kinds.iter().map(|kind| kind.as_str().to_owned()).collect();
    // One type is an equality, so the (type, at, id) index is walked in order; several are a list the planner
    // weighs as a whole.
    let type_filter = match kinds.len() {
        0 => "cardinality($3::text[]) = 0",
        1 => "type = ($3::text[])[1]",
        _ => "type = ANY($3::text[])",
    };
    sql_query(format!("{prefix}{}", LIST_EVENTS.replace("{TYPE_FILTER}", type_filter)))
        .into_boxed()
        .bind::<Nullable<Timestamptz>, _>(query.after.map(|(at, _)| at))
        .bind::<Nullable<SqlUuid>, _>(query.after.map(|(_, id)| id))
        .bind::<Array<Text>, _>(kinds)
        .bind::<Nullable<SqlUuid>, _>(query.actor_id.map(|id| id.as_uuid()))
        .bind::<Nullable<SqlUuid>, _>(query.subject_id.map(|id| id.as_uuid()))
        .bind::<Nullable<Timestamptz>, _>(query.since)
        .bind::<Nullable<Timestamptz>, _>(query.until)
        .bind::<BigInt, _>(i64::from(query.limit))
}

/// One line of an `EXPLAIN`.
#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text)]
    #[diesel(column_name = "QUERY PLAN")]
    line: String,
}

impl PgRepository {
    /// The plan Postgres chooses for the statement
    /// [`list_events`](users_domain::ports::AuditTrail::list_events) runs, for tests that check the indexes are used.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    #[doc(hidden)]
    pub async fn explain_list_events(&self, query: EventQuery) -> Result<String, PortError> {
        let mut connection = self.connection().await?;
        match list_statement("EXPLAIN (FORMAT TEXT) ", &query).load::<PlanLine>(&mut connection).await {
            Ok(lines) => Ok(lines.into_iter().map(|line| line.line).collect::<Vec<_>>().join("\n")),
            Err(error) => Err(query_error(error, &mut connection, "explaining an event listing")),
        }
    }
}
