//! The mail outbox: the domain's [`MailOutbox`] on the `mail_outbox` table. Mails are queued on their own or in
//! the transaction of the change that causes them ([`insert_mail`]), and the dispatcher drains them through the
//! port.
//!
//! A claim leases its rows by moving `next_attempt_at` past the lease instead of holding a transaction open while
//! the mail is sent: a dispatcher that crashes mid-send lets its lease run out, and another claims the mail again.

use diesel::prelude::{ExpressionMethods as _, QueryDsl as _};
use diesel::result::Error as DieselError;
use diesel::sql_types::{Array, BigInt, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use time::{Duration, OffsetDateTime};
use users_domain::ports::{MailOutbox, OutboxMessage, OutgoingMail, PortError};
use uuid::Uuid;

use crate::errors::query_error;
use crate::repository::PgRepository;
use crate::reused::Reuse as _;
use crate::rows::{ClaimedMailRow, NewMailRow};
use crate::schema::mail_outbox;

/// The longest `last_error` kept, in characters: enough for an SMTP reply, bounded against a chatty server.
const MAX_ERROR_CHARS: usize = 1000;

/// What a row whose recipient no longer parses is buried with.
const UNPARSABLE_ROW_ERROR: &str = "the stored recipient address is not a valid email address";

/// Claims due pending rows, oldest first, and leases them in the same statement. The subquery's
/// `FOR UPDATE SKIP LOCKED` makes concurrent claims pass over each other's rows instead of waiting for them, and
/// a row leased by a claim that committed first no longer matches `next_attempt_at <= $1` when re-checked under
/// the lock, so no two claims ever return the same row.
const CLAIM_DUE_MAIL: &str = "\
    UPDATE mail_outbox SET next_attempt_at = $2 \
    WHERE id IN ( \
        SELECT id FROM mail_outbox \
        WHERE status = 'pending' AND next_attempt_at <= $1 \
        ORDER BY created_at, id \
        LIMIT $3 \
        FOR UPDATE SKIP LOCKED \
    ) \
    RETURNING id, to_address, subject, text_body, html_body, attempts, created_at";

/// Marks the rows of a claim that cannot become mails as dead, so that they stop being claimed.
const BURY_UNPARSABLE: &str = "\
    UPDATE mail_outbox SET status = 'dead', last_error = $2 \
    WHERE id = ANY($1) AND status = 'pending'";

/// Queues one mail, pending and due at once; also run inside the transaction of the change the mail reports.
pub(crate) async fn insert_mail(connection: &mut AsyncPgConnection, mail: &OutgoingMail) -> Result<(), DieselError> {
    diesel::insert_into(mail_outbox::table).values(NewMailRow::from(mail)).reused().execute(connection).await.map(drop)
}

/// An error message as stored: at most [`MAX_ERROR_CHARS`] characters, and without NUL, which Postgres text
/// cannot hold and which would otherwise make recording the failure fail too.
fn stored_error(error: &str) -> String {
    error.chars().filter(|c| *c != '\0').take(MAX_ERROR_CHARS).collect()
}

impl MailOutbox for PgRepository {
    async fn queue_mail(&self, mail: OutgoingMail) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        match insert_mail(&mut connection, &mail).await {
            Ok(()) => Ok(()),
            Err(error) => Err(query_error(error, &mut connection, "queueing a mail")),
        }
    }

    async fn claim_due_mail(
        &self,
        now: OffsetDateTime,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<OutboxMessage>, PortError> {
        let lease_end = now
            .checked_add(lease)
            .ok_or_else(|| PortError::Unknown(anyhow::anyhow!("a mail lease of {lease} runs past the calendar")))?;
        let mut connection = self.connection().await?;
        let claimed = diesel::sql_query(CLAIM_DUE_MAIL)
            .bind::<Timestamptz, _>(now)
            .bind::<Timestamptz, _>(lease_end)
            .bind::<BigInt, _>(i64::from(limit))
            .load::<ClaimedMailRow>(&mut connection)
            .await;
        let mut rows = match claimed {
            Ok(rows) => rows,
            Err(error) => return Err(query_error(error, &mut connection, "claiming due mail")),
        };
        // RETURNING does not keep the subquery's order.
        rows.sort_by_key(|row| (row.created_at, row.id));

        // A row that does not parse (edited by hand, or written by an older version) would fail every batch it
        // lands in for ever if it failed this one, holding up the good mails with it. It is dead-lettered instead,
        // where an operator finds it with its reason, and the rest of the batch goes out.
        let mut messages = Vec::with_capacity(rows.len());
        let mut unparsable = Vec::new();
        for row in rows {
            let id = row.id;
            match OutboxMessage::try_from(row) {
                Ok(message) => messages.push(message),
                Err(_) => unparsable.push(id),
            }
        }
        if !unparsable.is_empty() {
            let buried = diesel::sql_query(BURY_UNPARSABLE)
                .bind::<Array<diesel::sql_types::Uuid>, _>(&unparsable)
                .bind::<Text, _>(UNPARSABLE_ROW_ERROR)
                .execute(&mut connection)
                .await;
            // If this fails the claim still stands: the good mails go out, and the bad rows come back after the
            // lease to be buried then.
            if let Err(error) = buried {
                return Err(query_error(error, &mut connection, "dead-lettering unparsable mail"));
            }
        }
        Ok(messages)
    }

    async fn release_mail(
        &self,
        ids: Vec<Uuid>,
        held_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), PortError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection().await?;
        // A claim's lease is the row's next attempt time (see CLAIM_DUE_MAIL): a row still at this claim's lease end
        // is still this claim's; one claimed again since carries another dispatcher's.
        let released = diesel::update(mail_outbox::table)
            .filter(mail_outbox::id.eq_any(&ids))
            .filter(mail_outbox::status.eq("pending"))
            .filter(mail_outbox::next_attempt_at.eq(held_until))
            .set(mail_outbox::next_attempt_at.eq(now))
            .execute(&mut connection)
            .await;
        match released {
            Ok(_) => Ok(()),
            Err(error) => Err(query_error(error, &mut connection, "handing back claimed mail")),
        }
    }

    async fn mark_mail_sent(&self, id: Uuid, now: OffsetDateTime) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        // Delivery is the final word: even a row another dispatcher gave up on after this one's lease ran out is
        // sent now. A row already marked sent keeps its first delivery time.
        let updated = diesel::update(mail_outbox::table.find(id))
            .filter(mail_outbox::status.ne("sent"))
            .set((
                mail_outbox::status.eq("sent"),
                mail_outbox::sent_at.eq(now),
                mail_outbox::attempts.eq(mail_outbox::attempts + 1),
                // The bodies carry live verification and reset links; once delivered they must not linger in the
                // database, its replicas or its backups. Recipient and subject stay for the record.
                mail_outbox::text_body.eq(""),
                mail_outbox::html_body.eq(""),
            ))
            .reused()
            .execute(&mut connection)
            .await;
        match updated {
            Ok(_) => Ok(()),
            Err(error) => Err(query_error(error, &mut connection, "marking a mail sent")),
        }
    }

    async fn mark_mail_failed(
        &self,
        id: Uuid,
        retry_at: Option<OffsetDateTime>,
        error: String,
    ) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        let last_error = stored_error(&error);
        // Only a pending row records a failure: a late report from a dispatcher whose lease ran out must neither
        // resurrect a mail another one delivered nor one already given up on.
        let pending = diesel::update(mail_outbox::table.find(id)).filter(mail_outbox::status.eq("pending"));
        let updated = match retry_at {
            Some(retry_at) => {
                pending
                    .set((
                        mail_outbox::attempts.eq(mail_outbox::attempts + 1),
                        mail_outbox::last_error.eq(&last_error),
                        mail_outbox::next_attempt_at.eq(retry_at),
                    ))
                    .execute(&mut connection)
                    .await
            }
            None => {
                pending
                    .set((
                        mail_outbox::attempts.eq(mail_outbox::attempts + 1),
                        mail_outbox::last_error.eq(&last_error),
                        mail_outbox::status.eq("dead"),
                        // A dead letter keeps what explains it (recipient, subject, error), not the links it held.
                        mail_outbox::text_body.eq(""),
                        mail_outbox::html_body.eq(""),
                    ))
                    .execute(&mut connection)
                    .await
            }
        };
        match updated {
            Ok(_) => Ok(()),
            Err(error) => Err(query_error(error, &mut connection, "recording a failed mail delivery")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_is_cut_to_a_thousand_characters_not_bytes() {
        let long = "é".repeat(1500);
        let stored = stored_error(&long);
        assert_eq!(stored.chars().count(), 1000);
        assert!(stored.chars().all(|c| c == 'é'));
    }

    #[test]
    fn nul_characters_are_dropped_from_a_stored_error() {
        assert_eq!(stored_error("550\0 rejected"), "550 rejected");
    }
}
