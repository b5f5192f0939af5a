//! Ports: the traits through which the domain reaches the outside world.
//!
//! Adapters in the other crates implement them (Postgres, argon2, josekit, S3, SMTP); the [`crate::Service`] is
//! generic over them, so the compiler dispatches statically and domain tests plug in mockall mocks (`mock`
//! feature). Driver errors never cross a port: adapters translate them into the errors defined here.

use std::future::Future;

use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::accounts::{
    AccountRequest, AccountRequestKind, BackoffPolicy, ConfirmEmailError, EmailChangeRequest, EmailConfirmation,
    FailureCount, NewEmailToken, OutboxMessage, OwnedSession, ProfileChanges, RefreshOutcome, UpdateProfileError,
};
use crate::admin::{AdminChanges, AdminWriteError, UserQuery};
use crate::permissions::Role;
use crate::session::{AccessClaims, AccessToken, NewSession, Session, SessionId, TokenHash};
use crate::user::{
    EmailAddress, NewUser, Nickname, Password, PasswordCandidate, PasswordError, PasswordHash, User, UserId,
};

/// A failure of an infrastructure dependency, opaque to the domain except for one distinction: whether the
/// dependency is unreachable (answered as 503, retry later) or failed in some other way.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The dependency cannot be reached right now (connection refused, pool timeout, shutting down).
    #[error("dependency unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// Anything else: a bug, a constraint the domain did not expect, a corrupt row.
    #[error(transparent)]
    Unknown(anyhow::Error),
}

/// Why a user could not be inserted.
#[derive(Debug, thiserror::Error)]
pub enum InsertUserError {
    /// Another user has this email (compared case-insensitively).
    #[error("email taken")]
    EmailTaken,
    /// Another user has this nickname (compared case-insensitively).
    #[error("nickname taken")]
    NicknameTaken,
    /// The repository failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Storage of users and their sessions.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait UserRepository: Send + Sync + 'static {
    /// Inserts a new user.
    ///
    /// # Errors
    /// [`InsertUserError::EmailTaken`] or [`InsertUserError::NicknameTaken`] on a case-insensitive duplicate,
    /// [`InsertUserError::Port`] when storage fails.
    fn insert_user(&self, user: NewUser) -> impl Future<Output = Result<User, InsertUserError>> + Send;

    /// Finds a user by id.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn find_user(&self, id: UserId) -> impl Future<Output = Result<Option<User>, PortError>> + Send;

    /// Finds a user by email, case-insensitively.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn find_user_by_email(&self, email: EmailAddress) -> impl Future<Output = Result<Option<User>, PortError>> + Send;

    /// Whether a user has this nickname, compared case-insensitively.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn nickname_exists(&self, nickname: Nickname) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// Makes an existing user a verified, unlocked ADMIN with a new password hash.
    ///
    /// # Errors
    /// [`PortError`] when storage fails; `Ok(None)` when the user does not exist.
    fn promote_to_admin(
        &self,
        id: UserId,
        password_hash: PasswordHash,
    ) -> impl Future<Output = Result<Option<User>, PortError>> + Send;

    /// Starts a session after a successful login and records the login time on the user, in one transaction.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn start_session(
        &self,
        session: NewSession,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<Session, PortError>> + Send;

    /// Finds a session together with its user, in one round trip: what every authenticated request needs.
    /// Revoked and expired sessions are returned too; the service decides.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn find_session_with_user(
        &self,
        id: SessionId,
    ) -> impl Future<Output = Result<Option<(Session, User)>, PortError>> + Send;

    /// Checks that storage answers.
    ///
    /// # Errors
    /// [`PortError`] when it does not.
    fn ping(&self) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Registers a user: inserts the user, their verification token and the verification mail in one transaction,
    /// so an account never exists without its mail queued.
    ///
    /// # Errors
    /// As [`Self::insert_user`]; on any error nothing is stored.
    fn register(
        &self,
        user: NewUser,
        token: NewEmailToken,
        mail: OutgoingMail,
    ) -> impl Future<Output = Result<User, InsertUserError>> + Send;

    /// Queues a mail in the outbox.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn queue_mail(&self, mail: OutgoingMail) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Issues an email token and queues `mails`, in one transaction. Older unused tokens of the same user and
    /// purpose stop working (newest wins), and so do the user's tokens of the purposes in `token.drops`. For an email change, the user's `pending_email` becomes the token's
    /// `new_email`.
    ///
    /// # Errors
    /// [`PortError`] when storage fails; then nothing is stored.
    fn issue_email_token(
        &self,
        token: NewEmailToken,
        mails: Vec<OutgoingMail>,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Follows a verification link: consumes the user's unused, unexpired, newest `Verify` or `EmailChange` token
    /// with this hash and applies it in the same transaction. `Verify` sets `email_verified` and promotes ANONYMOUS
    /// to AUTHENTICATED (never demotes); `EmailChange` makes the pending address the account's email (verified)
    /// and clears `pending_email`.
    ///
    /// # Errors
    /// [`ConfirmEmailError::InvalidToken`] when no such token can be used, [`ConfirmEmailError::EmailTaken`] when
    /// the new address now belongs to someone else (the token stays unused), [`ConfirmEmailError::Port`].
    fn confirm_email(
        &self,
        user_id: UserId,
        hash: TokenHash,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<EmailConfirmation, ConfirmEmailError>> + Send;

    /// Finds the user of an unused, unexpired, newest `PasswordReset` token.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn find_reset_token_user(
        &self,
        hash: TokenHash,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<User>, PortError>> + Send;

    /// Resets a password in one transaction: consumes the reset token (only if still usable), stores the new hash,
    /// revokes every session of the user, clears the login backoff of the user's email and queues `mail`.
    ///
    /// # Errors
    /// [`PortError`] when storage fails; `Ok(false)` when the token was no longer usable (nothing changed).
    fn reset_password(
        &self,
        hash: TokenHash,
        password_hash: PasswordHash,
        mail: OutgoingMail,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// Changes a password in one transaction: stores the new hash, revokes every session of the user except
    /// `keep`, drops the user's outstanding email-change and password-reset tokens (a link mailed before the change
    /// must not undo it), and queues `mail`.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn change_password(
        &self,
        user_id: UserId,
        password_hash: PasswordHash,
        keep: SessionId,
        mail: OutgoingMail,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Applies profile changes and sets `updated_at`.
    ///
    /// # Errors
    /// [`UpdateProfileError`] as described on its variants.
    fn update_profile(
        &self,
        user_id: UserId,
        changes: ProfileChanges,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<User, UpdateProfileError>> + Send;

    /// `PATCH /me` in one transaction: applies the profile changes (and `updated_at`) and, with an email change,
    /// issues its token (newest wins), records the pending address and queues its mails. On any error nothing is
    /// changed.
    ///
    /// # Errors
    /// [`UpdateProfileError`] as described on its variants.
    fn update_me(
        &self,
        user_id: UserId,
        changes: ProfileChanges,
        email_change: Option<EmailChangeRequest>,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<User, UpdateProfileError>> + Send;

    /// Deletes a user with their sessions, tokens and email tokens; `Ok(false)` when there was no such user.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn delete_user(&self, user_id: UserId) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// Rotates a refresh token, race-safely: of two concurrent uses of one token exactly one rotates. See
    /// [`RefreshOutcome`] for the cases. A session is idle-expired when its last use is `idle_ttl` or more ago.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn rotate_refresh_token(
        &self,
        presented: TokenHash,
        next: TokenHash,
        now: OffsetDateTime,
        idle_ttl: Duration,
    ) -> impl Future<Output = Result<RefreshOutcome, PortError>> + Send;

    /// Revokes the session a refresh token belongs to (logout); unknown tokens are ignored.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn revoke_session_by_refresh_token(
        &self,
        presented: TokenHash,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Revokes one of the owner's sessions; `Ok(false)` when the owner has no such active session.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn revoke_session(
        &self,
        owned: OwnedSession,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// Revokes every session of a user.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn revoke_all_sessions(
        &self,
        user_id: UserId,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// The user's active (unrevoked, unexpired) sessions, newest first.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn list_sessions(
        &self,
        user_id: UserId,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<Session>, PortError>> + Send;

    /// The failure count of this key (a lower-cased email, or the hash of an unparsable one) and its block, if
    /// any failure is recorded; whether the block still holds is the domain's call.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn login_failures(&self, key: String) -> impl Future<Output = Result<Option<FailureCount>, PortError>> + Send;

    /// Counts one failure (a wrong password or code) for this key, atomically with any concurrent count, and when
    /// the new count reaches the policy's threshold blocks the key until `now + policy.block_for(count)` (never
    /// shortening a block already in place). The length of the block is the domain's [`BackoffPolicy`]; the
    /// adapter only applies it to the count it stored. Returns the end of the block, if any.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn record_login_failure(
        &self,
        key: String,
        now: OffsetDateTime,
        policy: BackoffPolicy,
    ) -> impl Future<Output = Result<Option<OffsetDateTime>, PortError>> + Send;

    /// Queues an enumeration-prone request (one insert, whatever the address).
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
    /// until `now + lease` so a crashed worker's claim expires.
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

    /// Lists users for an administrator: one page in the query's order, after its cursor, filtered.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn list_users(&self, query: UserQuery) -> impl Future<Output = Result<Vec<User>, PortError>> + Send;

    /// Applies an administrator's changes and queues `mails`, in one transaction. A change that demotes or locks
    /// an ADMIN is refused when no other unlocked ADMIN would remain (checked under a lock, so two concurrent
    /// demotions cannot both pass). `professional_status_updated_at` is set when `is_professional` changes.
    ///
    /// # Errors
    /// [`AdminWriteError`] as described on its variants; then nothing is changed.
    fn admin_update_user(
        &self,
        id: UserId,
        changes: AdminChanges,
        mails: Vec<OutgoingMail>,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<User, AdminWriteError>> + Send;

    /// Whether an unlocked ADMIN other than `besides` exists (to answer `last_admin` rather than a generic refusal
    /// when the last one tries to demote, lock or delete themself; the writes re-check under a lock).
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn another_unlocked_admin(&self, besides: UserId) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// Deletes a user, refusing to delete the last unlocked ADMIN (checked under a lock). With `expected_role`, the
    /// deletion is refused as not found when the locked row holds another role (see [`AdminChanges::expected_role`]).
    ///
    /// # Errors
    /// [`AdminWriteError::LastAdmin`], [`AdminWriteError::NotFound`], or a storage failure.
    fn admin_delete_user(
        &self,
        id: UserId,
        expected_role: Option<Role>,
    ) -> impl Future<Output = Result<(), AdminWriteError>> + Send;

    /// Forgets the failures of a key (after a successful password check).
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn clear_login_failures(&self, key: String) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// The mail outbox, as the dispatcher sees it.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait MailOutbox: Send + Sync + 'static {
    /// Claims up to `limit` pending mails that are due, skipping rows other dispatchers hold
    /// (`FOR UPDATE SKIP LOCKED`), and leases them until `now + lease` so a crashed dispatcher's claim expires.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn claim_due_mail(
        &self,
        now: OffsetDateTime,
        limit: u32,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<OutboxMessage>, PortError>> + Send;

    /// Marks a mail delivered.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn mark_mail_sent(&self, id: Uuid, now: OffsetDateTime) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Records a failed attempt: the mail is retried at `retry_at`, or marked dead when that is `None`.
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

/// Password hashing (argon2id in production).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait PasswordHasher: Send + Sync + 'static {
    /// Hashes a new password with a fresh salt.
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when the hasher is saturated and sheds load, [`PortError::Unknown`] otherwise.
    fn hash(&self, password: Password) -> impl Future<Output = Result<PasswordHash, PortError>> + Send;

    /// Runs the strength half of the password policy, [`PasswordCandidate::judge`], where CPU-bound work belongs
    /// (the blocking pool, behind the same limit as hashing): the estimator can take hundreds of milliseconds on
    /// adversarial input, which must never stall the async workers.
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when the hasher is saturated, [`PortError::Unknown`] when the work cannot run.
    /// A weak password is the inner `Err`.
    fn judge(
        &self,
        candidate: PasswordCandidate,
        clues: Vec<String>,
    ) -> impl Future<Output = Result<Result<Password, PasswordError>, PortError>> + Send;

    /// A hash in the current format that no password matches (a random output), cheap to make: what an account
    /// gets when the password someone set on it must stop working before anyone has chosen a new one.
    fn unusable(&self) -> PasswordHash;

    /// Checks a candidate (already NFKC-normalised) against a stored hash. With `None` it verifies against a fixed
    /// dummy hash and answers `false`, so that an unknown account costs the same time as a wrong password.
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when the hasher is saturated, [`PortError::Unknown`] for a malformed stored hash.
    fn verify(
        &self,
        candidate: String,
        hash: Option<PasswordHash>,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;
}

/// Why an access token was refused. One variant on purpose: callers learn nothing about which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid access token")]
pub struct InvalidToken;

/// Signing and checking access tokens (ES256 JWTs in production).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait TokenCodec: Send + Sync + 'static {
    /// Signs the claims into a compact token.
    ///
    /// # Errors
    /// [`PortError`] when signing fails.
    fn issue(&self, claims: &AccessClaims) -> Result<AccessToken, PortError>;

    /// Checks the signature first, then the registered claims (`exp`, `iss`, `aud`, `typ`), and returns the
    /// domain's claims. Expiry is judged against `now`.
    ///
    /// # Errors
    /// [`InvalidToken`] for anything but a valid, unexpired token of this deployment.
    fn verify(&self, token: &str, now: OffsetDateTime) -> Result<AccessClaims, InvalidToken>;
}

/// The source of the current time.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait Clock: Send + Sync + 'static {
    /// Now, in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// An image ready to store: already decoded, checked and re-encoded by the picture pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The object's key, generated by the domain (`profile_pictures/{user_id}/...`), never from user input.
    pub key: String,
    /// The MIME type of the encoding.
    pub content_type: String,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Object storage for profile pictures (S3/MinIO or the local file system).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait PictureStore: Send + Sync + 'static {
    /// Stores an object, replacing any object with the same key.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn put(&self, object: StoredObject) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Reads an object; `Ok(None)` when it does not exist.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn get(&self, key: String) -> impl Future<Output = Result<Option<StoredObject>, PortError>> + Send;

    /// Deletes an object; deleting a missing object succeeds.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn delete(&self, key: String) -> impl Future<Output = Result<(), PortError>> + Send;

    /// The keys of every object under `prefix` (which ends with `/`).
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn list(&self, prefix: String) -> impl Future<Output = Result<Vec<String>, PortError>> + Send;

    /// Checks that storage answers.
    ///
    /// # Errors
    /// [`PortError`] when it does not.
    fn ping(&self) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// A rendered mail, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
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
