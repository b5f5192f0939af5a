//! The mail outbox dispatcher: delivers queued mails through the mailer port, retrying with exponential backoff
//! and giving up (a dead letter, kept for inspection) after a fixed number of attempts.
//!
//! Mails are queued in the same transaction as the change that causes them, so the request that caused a mail
//! never waits for SMTP and never fails because of it. Several dispatchers (one per instance) can run at once:
//! claims skip rows another dispatcher holds, and a claim is a lease that expires if its holder dies.
//!
//! A lease also runs out under a holder that is alive but slow (a sluggish SMTP server, a paused process), and then
//! another dispatcher claims the same mails. So a round starts a mail only while at least half the lease is left:
//! the mails it has not reached are handed back, due at once, for whoever claims next, and a mail started in time
//! has half a lease to be delivered before anyone else may take it. A round cut short by a stop hands back the
//! mails it has not reached in the same way, so a stopping instance leaves them to the others at once rather than
//! holding them for the rest of its lease.

use time::Duration;

use crate::ports::{Clock, MailOutbox, Mailer, PortError};

/// How the dispatcher paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatcherConfig {
    /// Mails claimed per round.
    pub batch: u32,
    /// How long a claim is held before another dispatcher may take the mail over.
    pub lease: Duration,
    /// Attempts before a mail is marked dead.
    pub max_attempts: u32,
    /// The wait after the first failure; it doubles with each further failure.
    pub retry_base: Duration,
    /// The longest wait between attempts.
    pub retry_max: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            batch: 20,
            lease: Duration::minutes(2),
            max_attempts: 10,
            retry_base: Duration::seconds(2),
            retry_max: Duration::minutes(10),
        }
    }
}

impl DispatcherConfig {
    /// The wait before the next attempt after `attempts` failed ones (1 = the first failure).
    #[must_use]
    pub fn retry_after(&self, attempts: u32) -> Duration {
        let factor = 1_i32.checked_shl(attempts.saturating_sub(1).min(20)).unwrap_or(i32::MAX);
        self.retry_base.saturating_mul(factor).min(self.retry_max)
    }
}

/// What one round of the dispatcher did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Mails delivered.
    pub sent: usize,
    /// Mails that failed and will be retried.
    pub retried: usize,
    /// Mails that failed for the last time.
    pub dead: usize,
}

/// Delivers the outbox through a mailer.
#[derive(Debug, Clone)]
pub struct Dispatcher<O, M, C> {
    outbox: O,
    mailer: M,
    clock: C,
    config: DispatcherConfig,
}

impl<O: MailOutbox, M: Mailer, C: Clock> Dispatcher<O, M, C> {
    /// Wires a dispatcher.
    pub const fn new(outbox: O, mailer: M, clock: C, config: DispatcherConfig) -> Self {
        Self { outbox, mailer, clock, config }
    }

    /// Claims one batch of due mails and tries each once, while at least half the lease is left (see the module
    /// docs). `stop` is asked before each mail, so a shutdown waits for at most the mail in flight; mails claimed
    /// but not tried are handed back, due at once.
    ///
    /// # Errors
    /// [`PortError`] when the outbox cannot be read or updated.
    pub async fn run_round(&self, stop: impl Fn() -> bool) -> Result<RoundReport, PortError> {
        let now = self.clock.now();
        let claimed = self.outbox.claim_due_mail(now, self.config.batch, self.config.lease).await?;
        let last_start = now + self.config.lease / 2;
        // The end of this claim's lease, as the outbox recorded it, so only mails still held by it are handed back.
        let held_until = now.saturating_add(self.config.lease);
        let mut report = RoundReport::default();
        let mut claimed = claimed.into_iter();
        while let Some(message) = claimed.next() {
            if stop() || self.clock.now() > last_start {
                let untried: Vec<_> = std::iter::once(message.id).chain(claimed.map(|message| message.id)).collect();
                // Handing back only spares the others the wait: if it fails, the lease hands the mails on as it
                // did before, and what this round did is still reported.
                if let Err(error) = self.outbox.release_mail(untried, held_until, self.clock.now()).await {
                    tracing::warn!(error = %format!("{error:#}"), "handing back untried mail failed; its lease will");
                }
                break;
            }
            match self.mailer.send(message.mail).await {
                Ok(()) => {
                    self.outbox.mark_mail_sent(message.id, self.clock.now()).await?;
                    report.sent += 1;
                }
                Err(error) => {
                    let attempts = message.attempts + 1;
                    let retry_at = (attempts < self.config.max_attempts)
                        .then(|| self.clock.now() + self.config.retry_after(attempts));
                    if retry_at.is_some() {
                        report.retried += 1;
                    } else {
                        report.dead += 1;
                    }
                    // The whole cause chain goes into the row, for whoever inspects a dead letter.
                    let reason = format!("{:#}", anyhow::Error::new(error));
                    self.outbox.mark_mail_failed(message.id, retry_at, reason).await?;
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::future::ready;
    use std::sync::atomic::Ordering;

    use uuid::Uuid;

    use super::*;
    use time::OffsetDateTime;
    use time::macros::datetime;

    use crate::ports::{MockClock, MockMailOutbox, MockMailer, OutboxMessage, OutgoingMail};
    use crate::user::EmailAddress;

    const NOW: OffsetDateTime = datetime!(2026-11-25 12:00 UTC);

    fn clock() -> MockClock {
        let mut clock = MockClock::new();
        clock.expect_now().return_const(NOW);
        clock
    }

    fn message(attempts: u32) -> OutboxMessage {
        OutboxMessage {
            id: Uuid::new_v4(),
            mail: OutgoingMail {
                to: EmailAddress::parse("ada@example.com").unwrap(),
                subject: "s".to_owned(),
                text: "t".to_owned(),
                html: "h".to_owned(),
            },
            attempts,
        }
    }

    fn outbox_with(messages: Vec<OutboxMessage>) -> MockMailOutbox {
        let mut outbox = MockMailOutbox::new();
        outbox.expect_claim_due_mail().times(1).returning(move |_, _, _| Box::pin(ready(Ok(messages.clone()))));
        outbox
    }

    /// Expects `id`, and only it, to be marked sent once.
    fn expect_sent(outbox: &mut MockMailOutbox, id: Uuid) {
        outbox
            .expect_mark_mail_sent()
            .times(1)
            .withf(move |sent, _| *sent == id)
            .returning(|_, _| Box::pin(ready(Ok(()))));
    }

    /// A mailer that delivers one mail and, while it is in flight, raises the returned flag (a stop request).
    fn mailer_stopped_during_its_first_send() -> (MockMailer, std::sync::Arc<std::sync::atomic::AtomicBool>) {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let raised = std::sync::Arc::clone(&stop);
        let mut mailer = MockMailer::new();
        mailer.expect_send().times(1).returning(move |_| {
            raised.store(true, Ordering::SeqCst);
            Box::pin(ready(Ok(())))
        });
        (mailer, stop)
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_maximum() {
        let config = DispatcherConfig::default();
        assert_eq!(config.retry_after(1), Duration::seconds(2));
        assert_eq!(config.retry_after(2), Duration::seconds(4));
        assert_eq!(config.retry_after(5), Duration::seconds(32));
        assert_eq!(config.retry_after(50), Duration::minutes(10));
    }

    #[tokio::test]
    async fn delivered_mail_is_marked_sent() {
        let first = message(0);
        let id = first.id;
        let mut outbox = outbox_with(vec![first]);
        expect_sent(&mut outbox, id);
        let mut mailer = MockMailer::new();
        mailer.expect_send().times(1).returning(|_| Box::pin(ready(Ok(()))));
        let dispatcher = Dispatcher::new(outbox, mailer, clock(), DispatcherConfig::default());
        assert_eq!(dispatcher.run_round(|| false).await.unwrap(), RoundReport { sent: 1, retried: 0, dead: 0 });
    }

    #[tokio::test]
    async fn failed_mail_is_retried_later_and_dead_after_the_last_attempt() {
        let retry = message(2);
        let last = message(9);
        let (retry_id, last_id) = (retry.id, last.id);
        let mut outbox = outbox_with(vec![retry, last]);
        outbox
            .expect_mark_mail_failed()
            .times(1)
            .withf(move |id, at, error| {
                *id == retry_id && *at == Some(NOW + Duration::seconds(8)) && error.contains("down")
            })
            .returning(|_, _, _| Box::pin(ready(Ok(()))));
        outbox
            .expect_mark_mail_failed()
            .times(1)
            .withf(move |id, at, _| *id == last_id && at.is_none())
            .returning(|_, _, _| Box::pin(ready(Ok(()))));
        let mut mailer = MockMailer::new();
        mailer
            .expect_send()
            .times(2)
            .returning(|_| Box::pin(ready(Err(PortError::Unavailable(anyhow::anyhow!("smtp down"))))));
        let dispatcher = Dispatcher::new(outbox, mailer, clock(), DispatcherConfig::default());
        assert_eq!(dispatcher.run_round(|| false).await.unwrap(), RoundReport { sent: 0, retried: 1, dead: 1 });
    }

    #[tokio::test]
    async fn a_slow_round_stops_before_its_lease_could_run_out_under_a_mail() {
        // Each mail takes 40 s of a 2-minute lease: the third would start 80 s in, with 40 s left, when another
        // dispatcher may soon claim it too. It is handed back to the next claim instead of being sent twice.
        let config = DispatcherConfig::default();
        let third = message(0);
        let third_id = third.id;
        let mut outbox = outbox_with(vec![message(0), message(0), third]);
        outbox.expect_mark_mail_sent().times(2).returning(|_, _| Box::pin(ready(Ok(()))));
        // Handed back at once, under this claim's lease (claimed at NOW), due when the round gave it up.
        outbox
            .expect_release_mail()
            .times(1)
            .withf(move |ids, held_until, now| {
                *ids == [third_id] && *held_until == NOW + config.lease && *now == NOW + Duration::seconds(80)
            })
            .returning(|_, _, _| Box::pin(ready(Ok(()))));
        let elapsed = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        let mut clock = MockClock::new();
        let clock_elapsed = std::sync::Arc::clone(&elapsed);
        clock.expect_now().returning(move || NOW + Duration::seconds(clock_elapsed.load(Ordering::SeqCst)));
        let mut mailer = MockMailer::new();
        mailer.expect_send().times(2).returning(move |_| {
            elapsed.fetch_add(40, Ordering::SeqCst);
            Box::pin(ready(Ok(())))
        });
        let dispatcher = Dispatcher::new(outbox, mailer, clock, config);
        assert_eq!(dispatcher.run_round(|| false).await.unwrap(), RoundReport { sent: 2, retried: 0, dead: 0 });
    }

    #[tokio::test]
    async fn a_stopping_dispatcher_sends_nothing_more_and_hands_its_claim_back() {
        let (first, second) = (message(0), message(0));
        let ids = vec![first.id, second.id];
        let mut outbox = outbox_with(vec![first, second]);
        outbox
            .expect_release_mail()
            .times(1)
            .withf(move |released, held_until, now| {
                *released == ids && *held_until == NOW + DispatcherConfig::default().lease && *now == NOW
            })
            .returning(|_, _, _| Box::pin(ready(Ok(()))));
        let mut mailer = MockMailer::new();
        mailer.expect_send().never();
        let dispatcher = Dispatcher::new(outbox, mailer, clock(), DispatcherConfig::default());
        assert_eq!(dispatcher.run_round(|| true).await.unwrap(), RoundReport::default());
    }

    #[tokio::test]
    async fn a_stop_during_a_round_hands_back_only_the_mails_not_tried() {
        let (first, second, third) = (message(0), message(0), message(0));
        let (first_id, untried) = (first.id, vec![second.id, third.id]);
        let mut outbox = outbox_with(vec![first, second, third]);
        expect_sent(&mut outbox, first_id);
        outbox
            .expect_release_mail()
            .times(1)
            .withf(move |released, _, _| *released == untried)
            .returning(|_, _, _| Box::pin(ready(Ok(()))));
        let (mailer, stop) = mailer_stopped_during_its_first_send();
        let dispatcher = Dispatcher::new(outbox, mailer, clock(), DispatcherConfig::default());
        let report = dispatcher.run_round(|| stop.load(Ordering::SeqCst)).await.unwrap();
        assert_eq!(report, RoundReport { sent: 1, retried: 0, dead: 0 });
    }

    #[tokio::test]
    async fn a_hand_back_that_fails_leaves_the_mails_to_their_lease_and_the_round_reported() {
        let (first, second) = (message(0), message(0));
        let first_id = first.id;
        let mut outbox = outbox_with(vec![first, second]);
        expect_sent(&mut outbox, first_id);
        outbox
            .expect_release_mail()
            .times(1)
            .returning(|_, _, _| Box::pin(ready(Err(PortError::Unavailable(anyhow::anyhow!("database down"))))));
        let (mailer, stop) = mailer_stopped_during_its_first_send();
        let dispatcher = Dispatcher::new(outbox, mailer, clock(), DispatcherConfig::default());
        let report = dispatcher.run_round(|| stop.load(Ordering::SeqCst)).await.unwrap();
        assert_eq!(report, RoundReport { sent: 1, retried: 0, dead: 0 });
    }
}
