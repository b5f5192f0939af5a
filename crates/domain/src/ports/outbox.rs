//! The outboxes: mail queued in the same transaction as the change that causes it, and enumeration-prone
//! requests (forgotten password, resend) queued for a worker, so the request itself does the same work for every
//! address. Several workers may run at once: claims skip what another worker holds and are leases that expire.

use std::future::Future;

use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::PortError;
use crate::user::EmailAddress;

/// A rendered mail, ready to send. Its `Debug` form leaves the bodies out: they hold live verification and reset
/// links.
#[derive(Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    /// The recipient.
    pub to: EmailAddress,
    /// The subject line (never contains CR or LF).
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// The HTML body.
    pub html: String,
}

impl std::fmt::Debug for OutgoingMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutgoingMail")
            .field("to", &self.to)
            .field("subject", &self.subject)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .field("html", &format_args!("<{} bytes>", self.html.len()))
            .finish()
    }
}

/// Mail delivery (SMTP, or files under `DATA_DIR/mail`).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait Mailer: Send + Sync + 'static {
    /// Delivers one mail.
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when the server cannot be reached (the outbox retries later),
    /// [`PortError::Unknown`] when it refuses the message.
    fn send(&self, mail: OutgoingMail) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// A mail waiting in the outbox, as claimed by the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The outbox row.
    pub id: Uuid,
    /// The mail.
    pub mail: OutgoingMail,
    /// Delivery attempts made before this one.
    pub attempts: u32,
}

/// What an enumeration-prone request asks for. The request itself only queues it, the same work for every
/// address; a background worker decides what, if anything, to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountRequestKind {
    /// `POST /password/forgot`: a reset link, when the address has an account.
    PasswordReset,
    /// `POST /verify-email/resend`: a fresh verification link, when the address has an unverified account.
    Verification,
}

impl AccountRequestKind {
    /// The name stored for it.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::Verification => "verification",
        }
    }

    /// The kind stored under `name`.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        [Self::PasswordReset, Self::Verification].into_iter().find(|kind| kind.as_str() == name)
    }
}

/// A queued request, as claimed by the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRequest {
    /// The queue row.
    pub id: Uuid,
    /// What is asked for.
    pub kind: AccountRequestKind,
    /// The address it was asked for.
    pub email: EmailAddress,
}

/// The mail outbox: queued mails, as the dispatcher sees them.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait MailOutbox: Send + Sync + 'static {
    /// Queues a mail on its own (a mail caused by a change is queued by the change itself, in the same transaction).
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn queue_mail(&self, mail: OutgoingMail) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Claims up to `limit` pending mails that are due, skipping mails another dispatcher holds, and leases them
    /// until `now + lease` so a crashed dispatcher's claim expires.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn claim_due_mail(
        &self,
        now: OffsetDateTime,
        limit: u32,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<OutboxMessage>, PortError>> + Send;

    /// Hands back mails claimed but not tried (a round cut short by a stop, or by its lease running low): each of
    /// `ids` that is still pending and still held under the claim whose lease ends at `held_until` becomes due at
    /// `now`, so the next claim takes it rather than waiting for the lease to run out. A mail claimed again since (by
    /// another dispatcher, after that lease ran out), delivered or given up on is left as it is.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn release_mail(
        &self,
        ids: Vec<Uuid>,
        held_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Marks a mail delivered.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn mark_mail_sent(&self, id: Uuid, now: OffsetDateTime) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Records a failed attempt: the mail is retried at `retry_at`, or kept as dead when that is `None`.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn mark_mail_failed(
        &self,
        id: Uuid,
        retry_at: Option<OffsetDateTime>,
        error: String,
    ) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// The queue of enumeration-prone requests.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait AccountRequests: Send + Sync + 'static {
    /// Queues a request: one insert, whatever the address. A request of the same kind for the same address
    /// (case-insensitively) that is still queued absorbs this one.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn queue_account_request(
        &self,
        kind: AccountRequestKind,
        email: EmailAddress,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Claims up to `limit` queued requests, oldest first, skipping those another worker holds, and leases them
    /// until `now + lease`.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn claim_account_requests(
        &self,
        now: OffsetDateTime,
        limit: u32,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<AccountRequest>, PortError>> + Send;

    /// Removes a handled request.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn finish_account_request(&self, id: Uuid) -> impl Future<Output = Result<(), PortError>> + Send;
}
