//! The values of user administration that pass through the repository port: list queries with keyset
//! pagination, and the changes an administrator makes to another user.

use time::OffsetDateTime;

use crate::accounts::{NewEmailToken, ProfileChanges};
use crate::permissions::Role;
use crate::user::{EmailAddress, UserId};

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
    pub fn after(user: &crate::user::User, sort: UserSort) -> Self {
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

/// One page of a user listing, as asked of the repository.
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

/// What an administrator changes on another user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminChanges {
    /// The target's role the caller's rights were checked against. The repository refuses the write (as not found)
    /// when the locked row holds another role by then, so a concurrent promotion cannot slip a target out of
    /// the caller's reach between the check and the write. `None` skips the check.
    pub expected_role: Option<Role>,
    /// Profile fields.
    pub profile: ProfileChanges,
    /// A new role.
    pub role: Option<Role>,
    /// Grant or withdraw professional status (`professional_status_updated_at` is set when it changes).
    pub is_professional: Option<bool>,
    /// Lock or unlock.
    pub is_locked: Option<bool>,
    /// Mark the email verified or not.
    pub email_verified: Option<bool>,
    /// A new login address, effective at once; the repository answers [`AdminWriteError::EmailTaken`] when another
    /// account has it, clears any pending email change and drops the user's outstanding email tokens.
    pub email: Option<EmailAddress>,
    /// The verification link to store for an unverified new address, in the same transaction.
    pub email_token: Option<NewEmailToken>,
}

impl AdminChanges {
    /// Whether the request changes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        Self { expected_role: None, ..self.clone() } == Self::default()
    }
}

/// Why an administrator's change or deletion was refused by storage.
#[derive(Debug, thiserror::Error)]
pub enum AdminWriteError {
    /// The change would leave no unlocked ADMIN.
    #[error("last admin")]
    LastAdmin,
    /// The new nickname belongs to someone else.
    #[error("nickname taken")]
    NicknameTaken,
    /// The new email address belongs to someone else.
    #[error("email taken")]
    EmailTaken,
    /// The user no longer exists.
    #[error("not found")]
    NotFound,
    /// The repository failed.
    #[error(transparent)]
    Port(#[from] crate::ports::PortError),
}
