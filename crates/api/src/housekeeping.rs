//! Housekeeping: deleting the rows nothing needs any more (see `PgRepository::purge` for which), every
//! `PURGE_INTERVAL` in the background of `serve`, and once from `user-management purge`.
//!
//! Every instance runs the loop; the adapter's advisory lock lets one round run at a time across all of them, and
//! an instance that finds the lock taken skips its round. A failed round is logged and the next one tries again:
//! housekeeping never stops the service.

use std::time::Duration as StdDuration;

use time::{Duration, OffsetDateTime};
use tokio::task::JoinHandle;
use users_domain::ports::PortError;
use users_postgres::{PgRepository, PurgeOutcome, PurgeSettings};

/// How long after start-up the first round runs: soon, but not in the middle of a rolling restart's burst of
/// connections.
const FIRST_ROUND_DELAY: StdDuration = StdDuration::from_secs(10);

/// Runs one round now with `settings`.
///
/// # Errors
/// [`PortError`] when the database fails; what was deleted before stays deleted.
pub async fn run_once(db: &PgRepository, settings: PurgeSettings) -> Result<PurgeOutcome, PortError> {
    db.purge(OffsetDateTime::now_utc(), settings).await
}

/// The background loop of `serve`; [`HousekeepingWorker::stop`] ends it.
#[derive(Debug)]
pub struct HousekeepingWorker {
    task: JoinHandle<()>,
}

impl HousekeepingWorker {
    /// Starts the loop: a first round shortly after start-up, then one every `interval`.
    #[must_use]
    pub fn start(db: PgRepository, settings: PurgeSettings, interval: Duration) -> Self {
        let interval = interval.unsigned_abs();
        let task = tokio::spawn(async move {
            tokio::time::sleep(FIRST_ROUND_DELAY).await;
            loop {
                round(&db, settings).await;
                tokio::time::sleep(interval).await;
            }
        });
        Self { task }
    }

    /// Ends the loop. A round cut off mid-way loses only its current batch (each commits on its own), and the
    /// adapter closes the connection that held the lock, which releases it.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// One round, with its outcome logged.
async fn round(db: &PgRepository, settings: PurgeSettings) {
    match run_once(db, settings).await {
        Ok(PurgeOutcome::Done(purged)) => tracing::info!(
            deleted = purged.total(),
            sessions = purged.sessions,
            refresh_tokens = purged.refresh_tokens,
            email_tokens = purged.email_tokens,
            mfa_challenges = purged.mfa_challenges,
            login_attempts = purged.login_attempts,
            rate_limit_windows = purged.rate_limit_windows,
            outbox_mails = purged.outbox_mails,
            webhook_deliveries = purged.webhook_deliveries,
            audit_events = purged.audit_events,
            "housekeeping round done"
        ),
        Ok(PurgeOutcome::Skipped) => tracing::debug!("housekeeping skipped: another instance holds the lock"),
        Err(error) => {
            let error = anyhow::Error::new(error);
            tracing::warn!(error = %format_args!("{error:#}"), "housekeeping round failed; the next round tries again");
        }
    }
}
