//! Single-use email tokens (verification, email change, password reset): only their SHA-256 hash is stored, the
//! token itself travels in the mail. Tokens are written by [`super::UserStore`] changes, in the same transaction as
//! what they are for; this port reads them.

use std::future::Future;

use time::OffsetDateTime;

use super::PortError;
use crate::session::TokenHash;
use crate::user::{EmailAddress, UserId};

/// What an email token is for. A token only works for its own purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
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

    /// Every purpose.
    pub const ALL: [Self; 3] = [Self::Verify, Self::EmailChange, Self::PasswordReset];

    /// Parses a stored name.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == raw)
    }
}

/// A new single-use email token, stored by a [`super::UserUpdate`] or a [`super::NewAccount`].
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
}

/// An unused email token, as found by its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailTokenRecord {
    /// Whose token it is.
    pub user_id: UserId,
    /// What it is for.
    pub purpose: EmailTokenPurpose,
    /// For [`EmailTokenPurpose::EmailChange`]: the address being confirmed.
    pub new_email: Option<EmailAddress>,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
}

/// Reading email tokens.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait EmailTokenStore: Send + Sync + 'static {
    /// The unused token with this hash, expired or not; a used or dropped token is `Ok(None)`.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn find_email_token(
        &self,
        hash: TokenHash,
    ) -> impl Future<Output = Result<Option<EmailTokenRecord>, PortError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_round_trip_through_their_stored_names() {
        for purpose in EmailTokenPurpose::ALL {
            assert_eq!(EmailTokenPurpose::parse(purpose.as_str()), Some(purpose));
        }
        assert_eq!(EmailTokenPurpose::parse("admin"), None);
    }
}
