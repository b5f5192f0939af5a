//! The mailer chosen by `MAIL_BACKEND`, and the background task that delivers the outbox through it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::FutureExt as _;
use tokio::sync::Notify;
use users_domain::mail::{Dispatcher, DispatcherConfig};
use users_domain::ports::{Mailer, OutgoingMail, PortError, SystemClock};
use users_smtp::{FileMailer, SmtpMailer};

use crate::background::{Background, Round};
use crate::config::{Config, MailBackend};
use crate::state::AppService;

/// How often the dispatcher looks for due mail when the last round found none.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Account requests handled per round.
const REQUEST_BATCH: u32 = 20;

/// One of the two mailers, picked at start-up.
#[derive(Debug, Clone)]
pub enum AppMailer {
    /// `.eml` files under `DATA_DIR/mail`.
    File(FileMailer),
    /// An SMTP server (boxed: it is much larger than the file mailer, and there is one per process).
    Smtp(Box<SmtpMailer>),
}

impl AppMailer {
    /// Builds the mailer `MAIL_BACKEND` asks for.
    ///
    /// # Errors
    /// When the mail directory cannot be created or the SMTP settings are unusable.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        match &config.mail {
            MailBackend::File => {
                let dir = config.data_dir.join("mail");
                let mailer = FileMailer::new(dir.clone(), config.mail_from.clone())
                    .with_context(|| format!("MAIL_BACKEND=file: creating {}", dir.display()))?;
                Ok(Self::File(mailer))
            }
            MailBackend::Smtp(smtp) => {
                let mailer = SmtpMailer::new(smtp.clone()).context("MAIL_BACKEND=smtp: SMTP_* settings")?;
                Ok(Self::Smtp(Box::new(mailer)))
            }
        }
    }
}

impl Mailer for AppMailer {
    /// Sends through the chosen mailer. A send that panics is a failed attempt like any other, so the mail is
    /// retried with backoff and given up after the last attempt, not claimed again forever.
    fn send(&self, mail: OutgoingMail) -> impl Future<Output = Result<(), PortError>> + Send {
        let mailer = self.clone();
        let sending = async move {
            match mailer {
                Self::File(file) => file.send(mail).await,
                Self::Smtp(smtp) => smtp.send(mail).await,
            }
        };
        panic_is_failure(sending)
    }
}

/// `sending`, with a panic turned into an error. Nothing of ours is left half-changed by the unwinding: the
/// mailers hold no state across sends.
fn panic_is_failure(
    sending: impl Future<Output = Result<(), PortError>> + Send,
) -> impl Future<Output = Result<(), PortError>> + Send {
    AssertUnwindSafe(sending)
        .catch_unwind()
        .map(|sent| sent.unwrap_or_else(|_panic| Err(PortError::Unknown(anyhow::anyhow!("sending the mail panicked")))))
}

/// The running outbox dispatcher; [`OutboxWorker::stop`] lets the mail in flight finish, then ends it.
#[derive(Debug)]
pub struct OutboxWorker(Background);

impl OutboxWorker {
    /// Starts delivering the outbox in the background. Each round first handles queued account requests
    /// (forgotten password, resend), which queue the mails they call for, then delivers due mail.
    pub fn start(mailer: AppMailer, requests: AppService, lease: time::Duration) -> Self {
        let outbox = requests.ports().db.clone();
        let dispatcher = Arc::new(Dispatcher::new(
            outbox,
            mailer,
            SystemClock,
            DispatcherConfig { lease, ..DispatcherConfig::default() },
        ));
        let task = Background::spawn("outbox worker", POLL_INTERVAL, Arc::new(Notify::new()), move |stop| {
            let (requests, dispatcher) = (requests.clone(), Arc::clone(&dispatcher));
            async move {
                // Busy when either part got something done, failed when neither did and one failed.
                let (handled, requests_failed) = match requests.handle_account_requests(REQUEST_BATCH).await {
                    Ok(handled) => (handled, false),
                    Err(error) => {
                        let error = anyhow::Error::new(error);
                        tracing::warn!(error = %format!("{error:#}"), "handling account requests failed");
                        (0, true)
                    }
                };
                let (sent, outbox_failed) = match dispatcher.run_round(|| stop.is_set()).await {
                    Ok(report) => {
                        if report.dead > 0 {
                            tracing::warn!(dead = report.dead, "mail given up after the last attempt");
                        }
                        (report.sent + report.retried + report.dead > 0, false)
                    }
                    Err(error) => {
                        tracing::warn!(error = %format!("{:#}", anyhow::Error::new(error)), "outbox round failed");
                        (false, true)
                    }
                };
                if handled > 0 || sent {
                    Round::Busy
                } else if requests_failed || outbox_failed {
                    Round::Failed
                } else {
                    Round::Idle
                }
            }
        });
        Self(task)
    }

    /// Asks the dispatcher to stop between mails and waits until it has.
    pub async fn stop(self) {
        self.0.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panicking_transport() -> Result<(), PortError> {
        panic!("the transport panics")
    }

    #[tokio::test]
    async fn a_send_that_panics_is_a_failed_attempt() {
        let outcome = panic_is_failure(async { panicking_transport() }).await;
        assert!(matches!(outcome, Err(PortError::Unknown(ref error)) if error.to_string().contains("panicked")));
        assert!(panic_is_failure(async { Ok(()) }).await.is_ok());
    }
}
