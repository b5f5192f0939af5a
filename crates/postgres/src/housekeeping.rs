//! Housekeeping: deleting the rows nothing needs any more, in bounded batches, by one instance at a time.
//!
//! A round takes a session-level advisory lock ([`HOUSEKEEPING_LOCK`]) with `pg_try_advisory_lock`: an instance
//! that does not get it skips the round instead of waiting, so however many instances share the database, one
//! does the work. Each kind of row is then deleted by one statement per batch (`DELETE ... WHERE key IN (SELECT
//! ... LIMIT n)`), each committing on its own, so no statement holds many row locks or runs for long, and the
//! loop goes on while batches come back full.
//!
//! What is deleted, with `cutoff = now - retention`:
//! - refresh tokens of the sessions below, then those sessions: a session that expired or was revoked before the
//!   cutoff. A live session keeps its whole refresh family (the used tokens are what reuse detection recognises).
//! - email tokens that expired, or were used, before the cutoff (a used token already reads as unknown).
//! - second-step login challenges that expired before the cutoff.
//! - login backoff counts last changed before the cutoff whose block, if any, is over.
//! - rate-limit windows that started before the cutoff (the caller keeps the retention longer than a window).
//! - outbox rows sent, or given up on (dead), before the cutoff; pending mail is never touched.
//! - webhook deliveries delivered, or given up on (dead), before the cutoff; pending ones are never touched.
//! - audit events older than their own cutoff, `now - audit_retention` (`AUDIT_RETENTION`, a year by default),
//!   with their webhook deliveries.
//!
//! Account requests are not here: the worker deletes each one as it finishes it, and a waiting one is work still
//! to do. Users, pictures, second-factor secrets and recovery codes belong to accounts and go only with them.

use diesel::sql_types::{BigInt, Bool, Timestamptz};
use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use time::{Duration, OffsetDateTime};
use users_domain::ports::PortError;

use crate::errors::query_error;
use crate::repository::PgRepository;

/// The advisory lock key a housekeeping round holds (visible in `pg_locks` as `objid` 1701736000 with `classid`
/// 0, the two halves of this number): one round at a time per database, whatever the number of instances.
pub const HOUSEKEEPING_LOCK: i64 = 1_701_736_000;

/// Rows one delete statement removes at most, unless [`PurgeSettings::batch_size`] says otherwise.
pub const DEFAULT_BATCH_SIZE: u32 = 1000;

/// How long audit events are kept unless [`PurgeSettings::audit_retention`] says otherwise: a year.
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::days(365);

/// What a round deletes and in what steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeSettings {
    /// How long a row is kept after it stopped mattering (`RETENTION`).
    pub retention: Duration,
    /// How long an audit event is kept (`AUDIT_RETENTION`).
    pub audit_retention: Duration,
    /// Rows one statement deletes at most.
    pub batch_size: u32,
}

impl PurgeSettings {
    /// Settings with `retention`, the default audit retention and the default batch size.
    #[must_use]
    pub const fn new(retention: Duration) -> Self {
        Self { retention, audit_retention: DEFAULT_AUDIT_RETENTION, batch_size: DEFAULT_BATCH_SIZE }
    }
}

/// Rows one round deleted, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Expired or revoked sessions.
    pub sessions: u64,
    /// Refresh tokens of those sessions.
    pub refresh_tokens: u64,
    /// Used or expired email tokens.
    pub email_tokens: u64,
    /// Expired second-step login challenges.
    pub mfa_challenges: u64,
    /// Old login backoff counts.
    pub login_attempts: u64,
    /// Old per-address rate-limit windows.
    pub rate_limit_windows: u64,
    /// Sent or dead outbox rows.
    pub outbox_mails: u64,
    /// Delivered or dead webhook deliveries.
    pub webhook_deliveries: u64,
    /// Audit events past the audit retention.
    pub audit_events: u64,
}

impl Purged {
    /// Each kind with its count, in a fixed order, for reports and logs.
    #[must_use]
    pub const fn kinds(&self) -> [(&'static str, u64); 9] {
        [
            ("sessions", self.sessions),
            ("refresh_tokens", self.refresh_tokens),
            ("email_tokens", self.email_tokens),
            ("mfa_challenges", self.mfa_challenges),
            ("login_attempts", self.login_attempts),
            ("rate_limit_windows", self.rate_limit_windows),
            ("outbox_mails", self.outbox_mails),
            ("webhook_deliveries", self.webhook_deliveries),
            ("audit_events", self.audit_events),
        ]
    }

    /// All rows deleted.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.kinds().iter().map(|(_, count)| count).sum()
    }
}

/// How a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeOutcome {
    /// This instance held the lock and deleted these rows.
    Done(Purged),
    /// Another instance holds the lock (is running a round); nothing was done.
    Skipped,
}

/// One kind of row: the statement that deletes a batch of it (`$1` the cutoff, `$2` now, `$3` the batch size).
struct Kind {
    name: &'static str,
    delete_batch: &'static str,
    count: fn(&mut Purged) -> &mut u64,
    /// Whether `$1` is the audit cutoff rather than the general one.
    audit: bool,
}

/// In dependency order: refresh tokens before the sessions they belong to, so that deleting a session never
/// cascades to an unbounded number of tokens in one statement.
const KINDS: [Kind; 9] = [
    Kind {
        name: "refresh tokens",
        delete_batch: "DELETE FROM refresh_tokens WHERE token_hash IN ( \
            SELECT r.token_hash FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id \
            WHERE s.expires_at < $1 OR s.revoked_at < $1 LIMIT $3)",
        audit: false,
        count: |purged| &mut purged.refresh_tokens,
    },
    Kind {
        name: "sessions",
        delete_batch: "DELETE FROM sessions WHERE id IN ( \
            SELECT id FROM sessions WHERE expires_at < $1 OR revoked_at < $1 LIMIT $3)",
        audit: false,
        count: |purged| &mut purged.sessions,
    },
    Kind {
        name: "email tokens",
        delete_batch: "DELETE FROM email_tokens WHERE token_hash IN ( \
            SELECT token_hash FROM email_tokens WHERE expires_at < $1 OR used_at < $1 LIMIT $3)",
        audit: false,
        count: |purged| &mut purged.email_tokens,
    },
    Kind {
        name: "login challenges",
        delete_batch: "DELETE FROM mfa_challenges WHERE token_hash IN ( \
            SELECT token_hash FROM mfa_challenges WHERE expires_at < $1 LIMIT $3)",
        audit: false,
        count: |purged| &mut purged.mfa_challenges,
    },
    Kind {
        name: "login backoff counts",
        // A block still in force is kept whatever the retention: deleting it would lift it.
        delete_batch: "DELETE FROM login_attempts WHERE key IN ( \
            SELECT key FROM login_attempts \
            WHERE updated_at < $1 AND (blocked_until IS NULL OR blocked_until <= $2) LIMIT $3)",
        audit: false,
        count: |purged| &mut purged.login_attempts,
    },
    Kind {
        name: "rate-limit windows",
        delete_batch: "DELETE FROM rate_limit_windows WHERE (route, client) IN ( \
            SELECT route, client FROM rate_limit_windows WHERE window_start < $1 LIMIT $3)",
        audit: false,
        count: |purged| &mut purged.rate_limit_windows,
    },
    Kind {
        name: "outbox mails",
        delete_batch: "DELETE FROM mail_outbox WHERE id IN ( \
            SELECT id FROM mail_outbox \
            WHERE status <> 'pending' AND coalesce(sent_at, next_attempt_at) < $1 LIMIT $3)",
        audit: false,
        count: |purged| &mut purged.outbox_mails,
    },
    Kind {
        name: "webhook deliveries",
        delete_batch: "DELETE FROM webhook_deliveries WHERE (event_id, endpoint_id) IN ( \
            SELECT event_id, endpoint_id FROM webhook_deliveries \
            WHERE status <> 'pending' AND coalesce(delivered_at, next_attempt_at) < $1 LIMIT $3)",
        audit: false,
        count: |purged| &mut purged.webhook_deliveries,
    },
    Kind {
        name: "audit events",
        delete_batch: "DELETE FROM audit_events WHERE id IN ( \
            SELECT id FROM audit_events WHERE at < $1 ORDER BY at LIMIT $3)",
        audit: true,
        count: |purged| &mut purged.audit_events,
    },
];

/// The answer of a lock function.
#[derive(diesel::QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// A pooled connection holding the housekeeping lock. Released normally it goes back to the pool; dropped while
/// still holding the lock (an error part-way, a cancelled task) it is taken out of the pool and closed instead, so
/// that the lock ends with the connection rather than staying with a pooled one.
struct LockedConnection(Option<Object<AsyncPgConnection>>);

impl LockedConnection {
    fn get(&mut self) -> Result<&mut AsyncPgConnection, PortError> {
        self.0.as_deref_mut().ok_or_else(|| PortError::Unknown(anyhow::anyhow!("the housekeeping lock was released")))
    }

    /// Gives the lock up and hands the connection back to the pool.
    async fn unlock(mut self) -> Result<(), PortError> {
        let connection = self.get()?;
        let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1) AS locked")
            .bind::<BigInt, _>(HOUSEKEEPING_LOCK)
            .get_result::<Locked>(connection)
            .await;
        match unlocked {
            Ok(Locked { locked: true }) => {
                self.0 = None;
                Ok(())
            }
            Ok(Locked { locked: false }) => {
                Err(PortError::Unknown(anyhow::anyhow!("the housekeeping lock was not held")))
            }
            Err(error) => Err(query_error(error, connection, "releasing the housekeeping lock")),
        }
    }
}

impl Drop for LockedConnection {
    fn drop(&mut self) {
        if let Some(connection) = self.0.take() {
            drop(Object::take(connection));
        }
    }
}

impl PgRepository {
    /// Runs one housekeeping round at `now`, unless another instance is running one: deletes, batch by batch,
    /// the rows of every kind the module documents that stopped mattering more than `settings.retention` ago.
    ///
    /// # Errors
    /// [`PortError`] when a statement fails; the batches deleted before it stay deleted.
    pub async fn purge(&self, now: OffsetDateTime, settings: PurgeSettings) -> Result<PurgeOutcome, PortError> {
        let cutoff = now.checked_sub(settings.retention).ok_or_else(|| {
            PortError::Unknown(anyhow::anyhow!("a retention of {} reaches past the calendar", settings.retention))
        })?;
        let audit_cutoff = now.checked_sub(settings.audit_retention).ok_or_else(|| {
            PortError::Unknown(anyhow::anyhow!(
                "an audit retention of {} reaches past the calendar",
                settings.audit_retention
            ))
        })?;
        let mut connection = self.connection().await?;
        let locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
            .bind::<BigInt, _>(HOUSEKEEPING_LOCK)
            .get_result::<Locked>(&mut connection)
            .await;
        match locked {
            Ok(Locked { locked: true }) => {}
            Ok(Locked { locked: false }) => return Ok(PurgeOutcome::Skipped),
            Err(error) => return Err(query_error(error, &mut connection, "taking the housekeeping lock")),
        }
        let mut connection = LockedConnection(Some(connection));
        let mut purged = Purged::default();
        for kind in &KINDS {
            let cutoff = if kind.audit { audit_cutoff } else { cutoff };
            *(kind.count)(&mut purged) = delete_all(connection.get()?, kind, cutoff, now, settings.batch_size).await?;
        }
        connection.unlock().await?;
        Ok(PurgeOutcome::Done(purged))
    }
}

/// Deletes every row of `kind` the cutoff reaches, `batch_size` at a time, until a batch comes back short.
async fn delete_all(
    connection: &mut AsyncPgConnection,
    kind: &Kind,
    cutoff: OffsetDateTime,
    now: OffsetDateTime,
    batch_size: u32,
) -> Result<u64, PortError> {
    let batch_size = batch_size.max(1);
    let mut total = 0_u64;
    loop {
        let deleted = diesel::sql_query(kind.delete_batch)
            .bind::<Timestamptz, _>(cutoff)
            .bind::<Timestamptz, _>(now)
            .bind::<BigInt, _>(i64::from(batch_size))
            .execute(connection)
            .await;
        let deleted = match deleted {
            Ok(deleted) => deleted,
            Err(error) => {
                tracing::warn!(kind = kind.name, "housekeeping stopped at a failed delete");
                return Err(query_error(error, connection, "deleting a batch of old rows"));
            }
        };
        total += u64::try_from(deleted).unwrap_or(u64::MAX);
        if deleted < usize::try_from(batch_size).unwrap_or(usize::MAX) {
            return Ok(total);
        }
    }
}
