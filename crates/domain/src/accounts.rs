//! The values that account workflows pass through the repository port: single-use email tokens, refresh-token
//! rotation outcomes, profile changes, the login backoff policy and outbox messages.

use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::ports::OutgoingMail;
use crate::session::{Session, SessionId, TokenHash};
use crate::user::{Bio, EmailAddress, Nickname, PersonName, ProfileUrl, User, UserId};

/// What an email token is for. A token only works for its own purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmailTokenPurpose {
    /// Verifying the address given at registration.
    Verify,
    /// Confirming a new address (the token carries it).
    EmailChange,
    /// Resetting a forgotten password.
    PasswordReset,
}

impl EmailTokenPurpose {
    /// The name stored in the database.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::EmailChange => "email_change",
            Self::PasswordReset => "password_reset",
        }
    }

    /// Parses a stored name.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Verify, Self::EmailChange, Self::PasswordReset].into_iter().find(|p| p.as_str() == raw)
    }
}

/// A new single-use email token. Issuing it invalidates the user's older tokens of the same purpose (newest wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEmailToken {
    /// SHA-256 of the token; the token itself only travels in the mail.
    pub hash: TokenHash,
    /// Whose token it is.
    pub user_id: UserId,
    /// What it is for.
    pub purpose: EmailTokenPurpose,
    /// For [`EmailTokenPurpose::EmailChange`]: the address being confirmed.
    pub new_email: Option<EmailAddress>,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
    /// Other purposes whose outstanding tokens of this user die in the same transaction (older tokens of this
    /// token's own purpose always do). An account taken back by its mailbox owner loses the verification link of
    /// whoever registered it first.
    pub drops: Vec<EmailTokenPurpose>,
    /// When set, the user's password hash is replaced by this one in the same transaction: an account taken back
    /// by its mailbox owner gets a hash no password matches, so the first registrant's password dies at once.
    pub replaces_password: Option<crate::user::PasswordHash>,
}

/// What following a verification link did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailConfirmation {
    /// The registration address is verified (ANONYMOUS became AUTHENTICATED).
    Verified(User),
    /// The pending address became the account's address.
    EmailChanged(User),
}

/// Why a verification link did not work.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmEmailError {
    /// Unknown, expired, used, superseded, or not this user's token.
    #[error("invalid or expired token")]
    InvalidToken,
    /// The new address was taken by another account in the meantime.
    #[error("email taken")]
    EmailTaken,
    /// The repository failed.
    #[error(transparent)]
    Port(#[from] crate::ports::PortError),
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(clippy::large_enum_variant, reason = "returned once per refresh and consumed at once; boxing buys nothing")]
pub enum RefreshOutcome {
    /// The token was valid: it is now used, `next` is stored in its place, and the session's last use is now.
    Rotated {
        /// The session, after the update.
        session: Session,
        /// Its user, as stored now.
        user: User,
    },
    /// The token was already used: its whole session (the token family) has been revoked.
    Reused,
    /// The user is locked: nothing was changed, so an unlock restores the session.
    Locked,
    /// Unknown token, or its session is revoked or expired (absolutely or by idleness): nothing was changed.
    Invalid,
}

/// A change to a user's own profile; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileChanges {
    /// New nickname.
    pub nickname: Option<Nickname>,
    /// New first name, or cleared.
    pub first_name: Option<Option<PersonName>>,
    /// New last name, or cleared.
    pub last_name: Option<Option<PersonName>>,
    /// New biography, or cleared.
    pub bio: Option<Option<Bio>>,
    /// New LinkedIn URL, or cleared.
    pub linkedin_profile_url: Option<Option<ProfileUrl>>,
    /// New GitHub URL, or cleared.
    pub github_profile_url: Option<Option<ProfileUrl>>,
}

impl ProfileChanges {
    /// Whether the request changes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// An email change requested together with a profile update: the confirmation token and the mails to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailChangeRequest {
    /// The `EmailChange` token carrying the new address.
    pub token: NewEmailToken,
    /// The confirmation (to the new address) and the notice (to the old one).
    pub mails: Vec<OutgoingMail>,
}

/// Why a profile update failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateProfileError {
    /// Another user has this nickname.
    #[error("nickname taken")]
    NicknameTaken,
    /// The user no longer exists.
    #[error("user not found")]
    NotFound,
    /// The repository failed.
    #[error(transparent)]
    Port(#[from] crate::ports::PortError),
}

/// Exponential backoff after repeated login failures for one email (`LOGIN_BACKOFF_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Failures allowed before the first block.
    pub after: u32,
    /// The first block's length; each further failure doubles it.
    pub base: Duration,
    /// The longest block.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self { after: 5, base: Duration::seconds(1), max: Duration::minutes(15) }
    }
}

impl BackoffPolicy {
    /// How long to block after `failures` consecutive failures; `None` while under the threshold.
    #[must_use]
    pub fn block_for(&self, failures: u32) -> Option<Duration> {
        let over = failures.checked_sub(self.after)?;
        // 2^over, saturating long before it could overflow: 2^20 seconds is already far beyond any sane maximum.
        let factor = 1_i32.checked_shl(over.min(20)).unwrap_or(i32::MAX);
        Some(self.base.saturating_mul(factor).min(self.max))
    }
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

/// The stored failures of one backoff key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureCount {
    /// Consecutive failures since the last success.
    pub failures: u32,
    /// The end of the block these failures earned, if any (possibly already past).
    pub blocked_until: Option<OffsetDateTime>,
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

/// A session as listed to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// The session.
    pub session: Session,
    /// Whether it is the session of the request that lists them.
    pub current: bool,
}

/// Identifies a session for revocation by its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedSession {
    /// The owner.
    pub user_id: UserId,
    /// The session.
    pub session_id: SessionId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_after_the_threshold_doubles_and_caps() {
        let policy = BackoffPolicy::default();
        assert_eq!(policy.block_for(4), None);
        assert_eq!(policy.block_for(5), Some(Duration::seconds(1)));
        assert_eq!(policy.block_for(6), Some(Duration::seconds(2)));
        assert_eq!(policy.block_for(8), Some(Duration::seconds(8)));
        assert_eq!(policy.block_for(15), Some(Duration::minutes(15)));
        assert_eq!(policy.block_for(u32::MAX), Some(Duration::minutes(15)));
    }

    #[test]
    fn purposes_round_trip_through_their_stored_names() {
        for purpose in [EmailTokenPurpose::Verify, EmailTokenPurpose::EmailChange, EmailTokenPurpose::PasswordReset] {
            assert_eq!(EmailTokenPurpose::parse(purpose.as_str()), Some(purpose));
        }
        assert_eq!(EmailTokenPurpose::parse("admin"), None);
    }
}
