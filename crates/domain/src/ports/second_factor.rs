//! The second factor (TOTP with recovery codes), as stored, and the one-time-password algorithm.
//!
//! Which code is right, when a login needs a second step and which mails go out are the domain's rules. The
//! [`OneTimePasswords`] port computes codes (RFC 6238) and seals secrets for storage; the [`SecondFactorStore`]
//! keeps the secret, the last step used, the hashed recovery codes and the pending second steps of logins, and
//! applies a [`SecondFactorChange`] atomically, checking the preconditions the domain stated.

use std::future::Future;

use time::OffsetDateTime;

use super::PortError;
use super::outbox::OutgoingMail;
use crate::audit::AuditEvent;
use crate::session::{NewSession, Session, TokenHash};
use crate::user::UserId;

/// A TOTP secret as stored: sealed by [`OneTimePasswords::generate`] (encrypted when the deployment has a data
/// key), opaque to the domain and to storage. Two sealings of one secret differ, so equality means "the same
/// stored value".
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret(pub Vec<u8>);

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedSecret({} bytes)", self.0.len())
    }
}

/// A freshly generated TOTP secret: what its owner is shown once, and what is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct NewTotpSecret {
    /// The secret in base32 (RFC 4648, no padding), for typing into an authenticator app.
    pub base32: String,
    /// The `otpauth://totp/...` URI naming the issuer and the account, for a QR code.
    pub otpauth_uri: String,
    /// The secret as stored.
    pub sealed: SealedSecret,
}

impl std::fmt::Debug for NewTotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewTotpSecret").field("sealed", &self.sealed).finish_non_exhaustive()
    }
}

/// RFC 6238 time-based one-time passwords (SHA-1, 6 digits, 30-second steps) and the sealing of their secrets.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait OneTimePasswords: Send + Sync + 'static {
    /// A new random 160-bit secret for `account` (the user's email) at `issuer`.
    ///
    /// # Errors
    /// [`PortError`] when the secret cannot be sealed.
    fn generate(&self, issuer: &str, account: &str) -> Result<NewTotpSecret, PortError>;

    /// The time step (seconds since the Unix epoch divided by 30) among the one of `now` and its two neighbours
    /// whose code is `code` (six ASCII digits), compared in constant time; `None` when no step matches.
    ///
    /// # Errors
    /// [`PortError`] when the sealed secret cannot be opened (a wrong or missing data key, a corrupt value).
    fn matching_step(&self, secret: &SealedSecret, code: &str, now: OffsetDateTime) -> Result<Option<i64>, PortError>;
}

/// A user's TOTP secret as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpRecord {
    /// The secret.
    pub secret: SealedSecret,
    /// Whether it was confirmed (the second factor is on); an unconfirmed secret waits for its first code.
    pub enabled: bool,
    /// The last time step whose code was accepted: a code is accepted only for a later step.
    pub last_used_step: Option<i64>,
}

/// A login waiting for its second step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaChallenge {
    /// Whose login.
    pub user_id: UserId,
    /// When the step stops being accepted.
    pub expires_at: OffsetDateTime,
    /// Codes tried so far, this one included.
    pub attempts: u32,
}

/// A new pending second step of a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMfaChallenge {
    /// The hash of the `mfa_token` handed to the client.
    pub token_hash: TokenHash,
    /// Whose login.
    pub user_id: UserId,
    /// When the step stops being accepted.
    pub expires_at: OffsetDateTime,
}

/// A second factor shown by its owner, which a change consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecondFactorProof {
    /// A TOTP code that was right for this time step: accepted only when the step is later than the last one
    /// accepted, which then becomes this one.
    Step(i64),
    /// A recovery code, by its hash: accepted only when it is one of the user's unused codes, which is then used.
    RecoveryCode(TokenHash),
}

/// What a change does to the second factor itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SecondFactorAction {
    /// Nothing (the change only consumes a proof, e.g. for a login).
    #[default]
    Keep,
    /// Stores `secret` unconfirmed, replacing an unconfirmed one. Requires that no second factor is on.
    Stage {
        /// The new secret.
        secret: SealedSecret,
    },
    /// Turns the second factor on with these recovery codes. Requires an unconfirmed secret equal to `secret`
    /// (the one the proof's code was checked against).
    Enable {
        /// The secret that was confirmed.
        secret: SealedSecret,
        /// Hashes of the new recovery codes.
        recovery_codes: Vec<TokenHash>,
    },
    /// Replaces every recovery code with these. Requires the second factor on.
    ReplaceRecoveryCodes(Vec<TokenHash>),
    /// Turns the second factor off: deletes the secret, the recovery codes and the user's pending login steps.
    /// Requires the second factor on.
    Disable,
}

/// One decided change to a user's second factor, applied atomically in this order: the action's requirement
/// checked (on the locked record), the login step consumed, the proof consumed, the action applied (the user's
/// `mfa_enabled` follows it), the session started (with the user's last login time), the backoff cleared, the mails
/// queued, the events written. On any error nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondFactorChange {
    /// Whose second factor.
    pub user_id: UserId,
    /// Consume this pending login step: it must belong to the user and expire after `now`.
    pub consume_challenge: Option<TokenHash>,
    /// The proof to consume.
    pub proof: Option<SecondFactorProof>,
    /// What happens to the second factor.
    pub action: SecondFactorAction,
    /// Start this session (a login's second step).
    pub start_session: Option<NewSession>,
    /// Forget the login failures of this backoff key.
    pub clear_failures: Option<String>,
    /// Queue these mails.
    pub mails: Vec<OutgoingMail>,
    /// Write these events.
    pub events: Vec<AuditEvent>,
    /// The time of the change.
    pub now: OffsetDateTime,
}

impl SecondFactorChange {
    /// A change of user `user_id`'s second factor at `now` that does nothing yet.
    #[must_use]
    pub const fn new(user_id: UserId, now: OffsetDateTime) -> Self {
        Self {
            user_id,
            consume_challenge: None,
            proof: None,
            action: SecondFactorAction::Keep,
            start_session: None,
            clear_failures: None,
            mails: Vec::new(),
            events: Vec::new(),
            now,
        }
    }
}

/// Why a [`SecondFactorChange`] was not applied; nothing was stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecondFactorError {
    /// The action's requirement did not hold (the second factor is on, or off, or the unconfirmed secret is not
    /// the one checked), or the user does not exist.
    #[error("the second factor is not in the expected state")]
    StateChanged,
    /// The login step is unknown, expired, already consumed, or another user's.
    #[error("login step not usable")]
    ChallengeUnusable,
    /// The proof was already used (a replayed step, a used or unknown recovery code).
    #[error("proof not accepted")]
    ProofRejected,
    /// The store failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Storage of second factors and of logins waiting for their second step.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait SecondFactorStore: Send + Sync + 'static {
    /// The user's TOTP secret, confirmed or not.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn find_totp(&self, user_id: UserId) -> impl Future<Output = Result<Option<TotpRecord>, PortError>> + Send;

    /// How many unused recovery codes the user has.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn recovery_codes_left(&self, user_id: UserId) -> impl Future<Output = Result<u32, PortError>> + Send;

    /// Applies a decided change; returns the session it started, if any.
    ///
    /// # Errors
    /// [`SecondFactorError`] as described on its variants.
    fn apply_second_factor(
        &self,
        change: SecondFactorChange,
    ) -> impl Future<Output = Result<Option<Session>, SecondFactorError>> + Send;

    /// Stores a pending second step of a login.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn create_mfa_challenge(&self, challenge: NewMfaChallenge) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Counts one more code tried on the pending step with this hash, atomically with concurrent tries, and returns
    /// it with the new count, provided it expires after `now` and fewer than `max_attempts` codes were tried on it
    /// before; otherwise (unknown, expired, used up) `None`, and nothing changes.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn take_mfa_attempt(
        &self,
        token_hash: TokenHash,
        now: OffsetDateTime,
        max_attempts: u32,
    ) -> impl Future<Output = Result<Option<MfaChallenge>, PortError>> + Send;
}
