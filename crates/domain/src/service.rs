//! The domain's entry point: [`Service`], generic over one bundle of adapters.
//!
//! The service holds the ports, the settings, the mail templates and the in-process attempt gate. The use cases are
//! its methods, written in the feature modules ([`crate::sessions`], [`crate::accounts`], [`crate::admin`],
//! [`crate::pictures`]); what is shared by several of them (checking a new password against the policy, minting an
//! email token) is here.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::audit::{AuditEvent, ClientInfo, EventType};
use crate::config::ServiceConfig;
use crate::mail::MailTemplates;
use crate::ports::{EmailTokenPurpose, NewEmailToken, PasswordHasher, PictureStore, PortError, Ports, UserStore};
use crate::session::RefreshToken;
use crate::sessions::Principal;
use crate::throttle::AttemptGate;
use crate::user::{EmailAddress, Password, PasswordError, User, UserId, clues};

/// The domain service: every use case is one method.
///
/// ```
/// # fn wire<P: users_domain::ports::Ports>(ports: P) {
/// use users_domain::{Service, ServiceConfig};
/// let service = Service::new(ports, ServiceConfig::default());
/// assert_eq!(service.config().verify_token_ttl, time::Duration::hours(24));
/// # }
/// ```
#[derive(Debug)]
pub struct Service<P> {
    pub(crate) ports: P,
    pub(crate) config: ServiceConfig,
    pub(crate) mails: MailTemplates,
    /// Per-account limit on concurrent password checks in this process, shared by clones.
    pub(crate) attempts: Arc<AttemptGate>,
    pub(crate) moves: MoveSignal,
}

/// What the service calls when a change leaves picture objects to move (see [`Service::move_pictures`]): nothing
/// unless [`Service::on_pictures_to_move`] set it.
#[derive(Clone, Default)]
pub(crate) struct MoveSignal(Option<Arc<dyn Fn() + Send + Sync>>);

impl MoveSignal {
    pub(crate) fn raise(&self) {
        if let Some(signal) = &self.0 {
            signal();
        }
    }
}

impl std::fmt::Debug for MoveSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "MoveSignal(set)" } else { "MoveSignal(none)" })
    }
}

impl<P: Clone> Clone for Service<P> {
    fn clone(&self) -> Self {
        Self {
            ports: self.ports.clone(),
            config: self.config.clone(),
            mails: self.mails.clone(),
            attempts: Arc::clone(&self.attempts),
            moves: self.moves.clone(),
        }
    }
}

impl<P: Ports> Service<P> {
    /// Wires the service to its adapters, with the default mail templates.
    pub fn new(ports: P, config: ServiceConfig) -> Self {
        let mails = MailTemplates::new(&config);
        Self::with_mails(ports, config, mails)
    }

    /// Wires the service with mail templates of the embedder's own.
    pub fn with_mails(ports: P, config: ServiceConfig, mails: MailTemplates) -> Self {
        let attempts = Arc::new(AttemptGate::new(config.login_backoff.after));
        Self { ports, config, mails, attempts, moves: MoveSignal::default() }
    }

    /// Calls `signal` whenever a change leaves picture objects to move (an upload, a deletion or a restore
    /// archived a picture or brought one back), so that whoever runs [`Service::move_pictures`] in the background
    /// starts at once rather than at its next poll. The signal must return at once (wake a task, no I/O).
    #[must_use]
    pub fn on_pictures_to_move(mut self, signal: impl Fn() + Send + Sync + 'static) -> Self {
        self.moves = MoveSignal(Some(Arc::new(signal)));
        self
    }

    /// The service's settings.
    pub const fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The adapters.
    pub const fn ports(&self) -> &P {
        &self.ports
    }

    /// The mail templates.
    pub const fn mails(&self) -> &MailTemplates {
        &self.mails
    }

    /// Checks that the database answers.
    ///
    /// # Errors
    /// [`PortError`] when it does not.
    pub async fn database_ready(&self) -> Result<(), PortError> {
        self.ports.users().ping().await
    }

    /// Checks that picture storage answers.
    ///
    /// # Errors
    /// [`PortError`] when it does not.
    pub async fn storage_ready(&self) -> Result<(), PortError> {
        self.ports.objects().ping().await
    }

    /// Now, by the service's clock.
    pub(crate) fn now(&self) -> OffsetDateTime {
        crate::ports::Clock::now(self.ports.clock())
    }

    /// An event of `kind` happening now, from `client`, naming nobody yet.
    pub(crate) fn event(&self, kind: EventType, client: &ClientInfo) -> AuditEvent {
        AuditEvent::new(kind, self.now(), client)
    }

    /// An event of `kind` happening now, done by the caller to `subject`.
    pub(crate) fn event_by(&self, kind: EventType, actor: &Principal, subject: UserId) -> AuditEvent {
        self.event(kind, &actor.client).actor(actor.user.id, Some(actor.session_id)).subject(subject)
    }

    /// Checks a new password against the whole policy, with `context` (the user's own details) as clues: the
    /// length here, the strength estimate by the hasher, off the async workers. A weak password is the inner `Err`.
    pub(crate) async fn new_password(
        &self,
        raw: &str,
        context: &[&str],
    ) -> Result<Result<Password, PasswordError>, PortError> {
        match Password::check_length(raw, self.config.password_policy) {
            Ok(candidate) => self.ports.hasher().judge(candidate, clues(context)).await,
            Err(error) => Ok(Err(error)),
        }
    }

    /// A fresh single-use email token for `purpose`, expiring after the purpose's configured lifetime: the secret
    /// for the mail, and what is stored.
    pub(crate) fn email_token(
        &self,
        user_id: UserId,
        purpose: EmailTokenPurpose,
        new_email: Option<EmailAddress>,
        now: OffsetDateTime,
    ) -> (RefreshToken, NewEmailToken) {
        let lifetime = match purpose {
            EmailTokenPurpose::PasswordReset => self.config.reset_token_ttl,
            EmailTokenPurpose::Verify | EmailTokenPurpose::EmailChange => self.config.verify_token_ttl,
        };
        let secret = RefreshToken::generate();
        let token = NewEmailToken { hash: secret.hash(), user_id, purpose, new_email, expires_at: now + lifetime };
        (secret, token)
    }
}

/// The user's own details, which their password must not be built from.
pub(crate) fn own_details(user: &User) -> Vec<&str> {
    let mut details = vec![user.email.as_str(), user.nickname.as_str()];
    details.extend(user.first_name.as_ref().map(|name| name.as_str()));
    details.extend(user.last_name.as_ref().map(|name| name.as_str()));
    details
}
