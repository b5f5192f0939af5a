//! The audit trail: one event per security-relevant change, written by the store in the same transaction as the
//! change, so the trail never claims a change that did not happen nor misses one that did.
//!
//! An event names who acted (`actor_id`), whom it concerns (`subject_id`), the session and client it came from, and
//! a few details (changed field names, a role's `from`/`to`, a picture version). It never carries a password, a
//! token, a secret or a code: the details are built here from values that are none of those, and a failed login
//! for an address nobody has records the address's domain only.

use std::fmt;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::session::SessionId;
use crate::user::{EmailAddress, UserId};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum EventType {
    /// Someone registered.
    UserRegistered,
    /// An address was confirmed through its link.
    UserEmailVerified,
    /// The login address changed (confirmed by the new address, or set by an administrator).
    UserEmailChanged,
    /// Staff (or the command line) created a user.
    UserCreated,
    /// Profile fields, the role, the verification or professional status changed.
    UserUpdated,
    /// An administrator locked the account.
    UserLocked,
    /// An administrator unlocked the account.
    UserUnlocked,
    /// The account was deleted, by its owner or by staff.
    UserDeleted,
    /// A login started a session.
    LoginSucceeded,
    /// A password or second-factor code was wrong, or the address is unknown.
    LoginFailed,
    /// A login was refused by the backoff before any check.
    LoginThrottled,
    /// A session ended: logout, revocation, or logout everywhere.
    SessionRevoked,
    /// A refresh token was presented again after its exchange: the family was revoked.
    SessionReuseDetected,
    /// The owner changed their password.
    PasswordChanged,
    /// A reset link was mailed.
    PasswordResetRequested,
    /// A password was set through a reset link.
    PasswordReset,
    /// The second factor was turned on.
    MfaEnabled,
    /// The second factor was turned off (by the owner or reset by an administrator).
    MfaDisabled,
    /// A recovery code stood in for the second factor.
    MfaRecoveryCodeUsed,
    /// A picture was uploaded.
    PictureUploaded,
    /// The current picture was removed.
    PictureDeleted,
    /// An archived picture became current again.
    PictureRestored,
}

impl EventType {
    /// Every type, in the order of the contract.
    pub const ALL: [Self; 22] = [
        Self::UserRegistered,
        Self::UserEmailVerified,
        Self::UserEmailChanged,
        Self::UserCreated,
        Self::UserUpdated,
        Self::UserLocked,
        Self::UserUnlocked,
        Self::UserDeleted,
        Self::LoginSucceeded,
        Self::LoginFailed,
        Self::LoginThrottled,
        Self::SessionRevoked,
        Self::SessionReuseDetected,
        Self::PasswordChanged,
        Self::PasswordResetRequested,
        Self::PasswordReset,
        Self::MfaEnabled,
        Self::MfaDisabled,
        Self::MfaRecoveryCodeUsed,
        Self::PictureUploaded,
        Self::PictureDeleted,
        Self::PictureRestored,
    ];

    /// The name events carry (`user.registered`, ...).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UserRegistered => "user.registered",
            Self::UserEmailVerified => "user.email_verified",
            Self::UserEmailChanged => "user.email_changed",
            Self::UserCreated => "user.created",
            Self::UserUpdated => "user.updated",
            Self::UserLocked => "user.locked",
            Self::UserUnlocked => "user.unlocked",
            Self::UserDeleted => "user.deleted",
            Self::LoginSucceeded => "login.succeeded",
            Self::LoginFailed => "login.failed",
            Self::LoginThrottled => "login.throttled",
            Self::SessionRevoked => "session.revoked",
            Self::SessionReuseDetected => "session.reuse_detected",
            Self::PasswordChanged => "password.changed",
            Self::PasswordResetRequested => "password.reset_requested",
            Self::PasswordReset => "password.reset",
            Self::MfaEnabled => "mfa.enabled",
            Self::MfaDisabled => "mfa.disabled",
            Self::MfaRecoveryCodeUsed => "mfa.recovery_code_used",
            Self::PictureUploaded => "picture.uploaded",
            Self::PictureDeleted => "picture.deleted",
            Self::PictureRestored => "picture.restored",
        }
    }

    /// The type with this name; `None` for anything else.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a request came from, as the edge saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The client's address.
    pub ip: Option<String>,
}

/// One event of the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Its id (time-ordered), also the `webhook-id` of its deliveries.
    pub id: Uuid,
    /// When it happened.
    pub at: OffsetDateTime,
    /// What happened.
    pub kind: EventType,
    /// Who acted, when someone signed in did (or the user themself, for their own login or registration).
    pub actor_id: Option<UserId>,
    /// Whom it concerns.
    pub subject_id: Option<UserId>,
    /// The session the actor acted through.
    pub session_id: Option<SessionId>,
    /// The client's address.
    pub ip: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
    /// What else is worth knowing: a JSON object, never holding a secret.
    pub details: Map<String, Value>,
}

/// The most characters of a `User-Agent` an event keeps, as a session does.
pub const USER_AGENT_MAX: usize = 256;

/// The most characters of a client address an event keeps (an IPv6 address with a zone fits).
pub const IP_MAX: usize = 64;

impl AuditEvent {
    /// An event of `kind` at `at` from `client`, concerning nobody yet. The client's user agent and address are cut
    /// to [`USER_AGENT_MAX`] and [`IP_MAX`] characters: a client chooses its `User-Agent`, and a long one must not
    /// make the change it came with fail.
    #[must_use]
    pub fn new(kind: EventType, at: OffsetDateTime, client: &ClientInfo) -> Self {
        let cut = |value: &Option<String>, max: usize| value.as_ref().map(|value| value.chars().take(max).collect());
        Self {
            id: Uuid::now_v7(),
            at,
            kind,
            actor_id: None,
            subject_id: None,
            session_id: None,
            ip: cut(&client.ip, IP_MAX),
            user_agent: cut(&client.user_agent, USER_AGENT_MAX),
            details: Map::new(),
        }
    }

    /// A new event of `kind` with the same actor, subject, session and client, and no details.
    #[must_use]
    pub fn retyped(&self, kind: EventType) -> Self {
        Self { id: Uuid::now_v7(), kind, details: Map::new(), ..self.clone() }
    }

    /// Names the subject.
    #[must_use]
    pub const fn subject(mut self, subject: UserId) -> Self {
        self.subject_id = Some(subject);
        self
    }

    /// Names the actor and the session they acted through.
    #[must_use]
    pub const fn actor(mut self, actor: UserId, session: Option<SessionId>) -> Self {
        self.actor_id = Some(actor);
        self.session_id = session;
        self
    }

    /// The subject acting on themself, through `session` when they are signed in.
    #[must_use]
    pub const fn by_subject(self, subject: UserId, session: Option<SessionId>) -> Self {
        self.subject(subject).actor(subject, session)
    }

    /// Adds a detail.
    #[must_use]
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// Adds a `{from, to}` detail.
    #[must_use]
    pub fn change(self, key: &str, from: &str, to: &str) -> Self {
        let mut pair = Map::new();
        pair.insert("from".to_owned(), Value::from(from));
        pair.insert("to".to_owned(), Value::from(to));
        self.detail(key, Value::Object(pair))
    }
}

/// The part of a login input that may be recorded when it names nobody: the domain after the last `@` of a
/// well-formed address, and nothing at all otherwise.
#[must_use]
pub fn unknown_login_domain(raw_email: &str) -> Option<String> {
    let email = EmailAddress::parse(raw_email).ok()?;
    let canonical = email.canonical();
    canonical.rsplit_once('@').map(|(_, domain)| domain.to_owned())
}

/// The filters of a listing of the trail, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// The most events to return.
    pub limit: u32,
    /// Continue after this event (the last of the previous page): strictly older, or as old with a smaller id.
    pub after: Option<(OffsetDateTime, Uuid)>,
    /// Only these types (none: all).
    pub kinds: Vec<EventType>,
    /// Only events by this actor.
    pub actor_id: Option<UserId>,
    /// Only events concerning this subject.
    pub subject_id: Option<UserId>,
    /// Only events at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only events before this time.
    pub until: Option<OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_its_name() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventType::parse("user.Registered"), None);
        assert_eq!(EventType::parse(""), None);
    }

    #[test]
    fn a_long_user_agent_or_address_is_cut() {
        let client = ClientInfo { user_agent: Some("é".repeat(10_000)), ip: Some("1".repeat(100)) };
        let event = AuditEvent::new(EventType::LoginFailed, OffsetDateTime::UNIX_EPOCH, &client);
        assert_eq!(event.user_agent.unwrap().chars().count(), USER_AGENT_MAX);
        assert_eq!(event.ip.unwrap().chars().count(), IP_MAX);
    }

    #[test]
    fn an_unknown_login_keeps_only_the_domain() {
        assert_eq!(unknown_login_domain("Someone@Example.COM").as_deref(), Some("example.com"));
        assert_eq!(unknown_login_domain("not an address"), None);
    }
}
