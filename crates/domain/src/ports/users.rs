//! Users, and the changes that touch a user together with what hangs off them (email tokens, sessions, the login
//! backoff, mail), each applied atomically.
//!
//! The domain decides every value of a change (the new role, which tokens die, which sessions end, which mails go
//! out) and states the preconditions it decided under in a [`Guard`]; the store applies it in one transaction and
//! reports a failed precondition as an [`UpdateError`], deciding nothing itself.

use std::future::Future;

use time::OffsetDateTime;

use super::PortError;
use super::email_tokens::{EmailTokenPurpose, NewEmailToken};
use super::outbox::OutgoingMail;
use super::sessions::SessionEnd;
use crate::audit::AuditEvent;
use crate::permissions::Role;
use crate::session::TokenHash;
use crate::user::{Bio, EmailAddress, NewUser, Nickname, PasswordHash, PersonName, ProfileUrl, User, UserId};

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

/// A new user with what is stored beside it in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    /// The user.
    pub user: NewUser,
    /// Its verification link, when the address is not verified yet.
    pub token: Option<NewEmailToken>,
    /// Mails to queue.
    pub mails: Vec<OutgoingMail>,
    /// Events of the trail.
    pub events: Vec<AuditEvent>,
}

/// New values for a user's columns; `None` leaves a column as it is, `Some(None)` clears an optional one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFields {
    /// Profile fields.
    pub profile: ProfileChanges,
    /// The login address.
    pub email: Option<EmailAddress>,
    /// The address waiting for confirmation.
    pub pending_email: Option<Option<EmailAddress>>,
    /// Whether the address is verified.
    pub email_verified: Option<bool>,
    /// The role.
    pub role: Option<Role>,
    /// Whether an administrator locked the account.
    pub is_locked: Option<bool>,
    /// Professional status, with the time it changed (the status time records the last change).
    pub professional: Option<(bool, OffsetDateTime)>,
    /// The password hash.
    pub password_hash: Option<PasswordHash>,
}

impl UserFields {
    /// Whether no column changes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The preconditions a change was decided under, checked by the store on the row it locks for the change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Guard {
    /// The role the user had when the change was decided; a row holding another role by then fails with
    /// [`UpdateError::RoleChanged`], so a decision is never applied to a state it was not made for.
    pub role: Option<Role>,
    /// Refuse with [`UpdateError::LastAdmin`] unless an unlocked ADMIN other than this user exists, checked under
    /// a lock that serialises every such change, so two concurrent removals of the last two ADMINs cannot both
    /// pass. The domain sets it on changes that may take an unlocked ADMIN away (a demotion, a lock, a deletion).
    pub another_admin: bool,
}

/// One decided change to a user and what hangs off them, applied atomically, in this order: guard checked, token
/// consumed, columns written (and `updated_at` set to `now` when any changes), tokens dropped, token issued,
/// sessions ended, backoff cleared, mails queued, events written. On any error nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserUpdate {
    /// Whose row.
    pub id: UserId,
    /// The preconditions.
    pub guard: Guard,
    /// Consume this email token: it must belong to the user, be unused, and expire after `now`, or the change
    /// fails with [`UpdateError::TokenUnusable`] (so of two concurrent uses of one link exactly one applies).
    pub consume_token: Option<TokenHash>,
    /// The columns to write.
    pub fields: UserFields,
    /// Delete the user's unused email tokens of these purposes.
    pub drop_tokens: Vec<EmailTokenPurpose>,
    /// Store this email token (after the drops, so it survives a drop of its own purpose).
    pub issue_token: Option<NewEmailToken>,
    /// End sessions of the user.
    pub end_sessions: SessionEnd,
    /// Forget the login failures of this backoff key.
    pub clear_failures: Option<String>,
    /// Queue these mails.
    pub mails: Vec<OutgoingMail>,
    /// Write these events.
    pub events: Vec<AuditEvent>,
    /// The time of the change.
    pub now: OffsetDateTime,
}

impl UserUpdate {
    /// A change of user `id` at `now` that does nothing yet.
    #[must_use]
    pub fn new(id: UserId, now: OffsetDateTime) -> Self {
        Self {
            id,
            guard: Guard::default(),
            consume_token: None,
            fields: UserFields::default(),
            drop_tokens: Vec::new(),
            issue_token: None,
            end_sessions: SessionEnd::Keep,
            clear_failures: None,
            mails: Vec::new(),
            events: Vec::new(),
            now,
        }
    }
}

/// Why a user could not be inserted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InsertUserError {
    /// Another user has this email (compared case-insensitively).
    #[error("email taken")]
    EmailTaken,
    /// Another user has this nickname (compared case-insensitively).
    #[error("nickname taken")]
    NicknameTaken,
    /// The store failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Why a change or a deletion was not applied; nothing was stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// The user does not exist.
    #[error("user not found")]
    NotFound,
    /// [`Guard::role`] did not hold.
    #[error("the user's role changed")]
    RoleChanged,
    /// [`Guard::another_admin`] did not hold.
    #[error("last admin")]
    LastAdmin,
    /// [`UserUpdate::consume_token`] was not usable.
    #[error("token not usable")]
    TokenUnusable,
    /// Another user has the new nickname.
    #[error("nickname taken")]
    NicknameTaken,
    /// Another user has the new email address.
    #[error("email taken")]
    EmailTaken,
    /// The store failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Storage of users.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait UserStore: Send + Sync + 'static {
    /// Inserts a user with its token, mails and events, in one transaction.
    ///
    /// # Errors
    /// [`InsertUserError::EmailTaken`] or [`InsertUserError::NicknameTaken`] on a case-insensitive duplicate,
    /// [`InsertUserError::Port`]; on any error nothing is stored.
    fn insert_user(&self, account: NewAccount) -> impl Future<Output = Result<User, InsertUserError>> + Send;

    /// A user by id.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn find_user(&self, id: UserId) -> impl Future<Output = Result<Option<User>, PortError>> + Send;

    /// A user by email, compared case-insensitively.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn find_user_by_email(&self, email: EmailAddress) -> impl Future<Output = Result<Option<User>, PortError>> + Send;

    /// Whether a user has this nickname, compared case-insensitively.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn nickname_exists(&self, nickname: Nickname) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// Whether an unlocked ADMIN other than `besides` exists (a read without locks; writes check
    /// [`Guard::another_admin`] under one).
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn another_unlocked_admin(&self, besides: UserId) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// One page of users in the query's order, after its cursor, filtered. Rows that no longer parse are skipped.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn list_users(&self, query: UserQuery) -> impl Future<Output = Result<Vec<User>, PortError>> + Send;

    /// Applies a decided change; returns the user as stored after it.
    ///
    /// # Errors
    /// [`UpdateError`] as described on its variants.
    fn update_user(&self, update: UserUpdate) -> impl Future<Output = Result<User, UpdateError>> + Send;

    /// Deletes a user with everything that hangs off them (sessions, tokens, picture records), checking `guard`,
    /// and writes `events`, in one transaction.
    ///
    /// # Errors
    /// [`UpdateError::NotFound`], [`UpdateError::RoleChanged`], [`UpdateError::LastAdmin`], or a storage failure.
    fn delete_user(
        &self,
        id: UserId,
        guard: Guard,
        events: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<(), UpdateError>> + Send;

    /// Checks that storage answers.
    ///
    /// # Errors
    /// [`PortError`] when it does not.
    fn ping(&self) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// The orders `GET /users` can list in; every order ends with the id, so pages never overlap or skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserSort {
    /// Oldest first.
    #[default]
    CreatedAt,
    /// Newest first.
    CreatedAtDesc,
    /// By email, case-insensitively.
    Email,
    /// By nickname, case-insensitively.
    Nickname,
}

impl UserSort {
    /// Parses a `sort` query value (an allow-list: anything else is refused).
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "created_at" => Some(Self::CreatedAt),
            "-created_at" => Some(Self::CreatedAtDesc),
            "email" => Some(Self::Email),
            "nickname" => Some(Self::Nickname),
            _ => None,
        }
    }

    /// The query value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CreatedAt => "created_at",
            Self::CreatedAtDesc => "-created_at",
            Self::Email => "email",
            Self::Nickname => "nickname",
        }
    }
}

/// Where the previous page ended: the sort key of its last user, and that user's id as the tie-breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCursor {
    /// After this creation time and id.
    CreatedAt(OffsetDateTime, UserId),
    /// After this lower-cased email and id.
    Email(String, UserId),
    /// After this lower-cased nickname and id.
    Nickname(String, UserId),
}

impl UserCursor {
    /// The cursor that continues after `user` in `sort` order.
    #[must_use]
    pub fn after(user: &User, sort: UserSort) -> Self {
        match sort {
            UserSort::CreatedAt | UserSort::CreatedAtDesc => Self::CreatedAt(user.created_at, user.id),
            UserSort::Email => Self::Email(user.email.canonical(), user.id),
            UserSort::Nickname => Self::Nickname(user.nickname.as_str().to_ascii_lowercase(), user.id),
        }
    }

    /// Whether the cursor belongs to that sort order (a cursor from another order is refused).
    #[must_use]
    pub const fn fits(&self, sort: UserSort) -> bool {
        matches!(
            (self, sort),
            (Self::CreatedAt(..), UserSort::CreatedAt | UserSort::CreatedAtDesc)
                | (Self::Email(..), UserSort::Email)
                | (Self::Nickname(..), UserSort::Nickname)
        )
    }
}

/// One page of a user listing, as asked of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserQuery {
    /// The most users to return.
    pub limit: u32,
    /// The order.
    pub sort: UserSort,
    /// Continue after this point.
    pub after: Option<UserCursor>,
    /// A prefix of the email, nickname, first or last name, matched case-insensitively and literally (no
    /// wildcards: the adapter escapes `%`, `_` and `\`).
    pub prefix: Option<String>,
    /// Only users with one of these roles: the roles the caller may see, narrowed by a `role` filter.
    pub roles: Vec<Role>,
    /// Filter on `email_verified`.
    pub email_verified: Option<bool>,
    /// Filter on `is_locked`.
    pub is_locked: Option<bool>,
    /// Filter on `is_professional`.
    pub is_professional: Option<bool>,
}
