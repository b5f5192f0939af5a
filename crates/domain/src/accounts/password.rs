//! Passwords: resetting a forgotten one with a mailed link, and changing one's own.

use crate::audit::{ClientInfo, EventType};
use crate::ports::{
    EmailTokenPurpose, EmailTokenStore as _, PasswordHasher as _, PortError, Ports, SessionEnd, UpdateError,
    UserStore as _, UserUpdate,
};
use crate::service::{Service, own_details};
use crate::session::TokenHash;
use crate::sessions::Principal;
use crate::throttle::Checked;
use crate::user::PasswordError;

use super::DECIDE_ATTEMPTS;

/// Why a password reset failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResetPasswordError {
    /// Unknown, expired, used or superseded reset token.
    #[error("invalid or expired token")]
    InvalidToken,
    /// The new password breaks the policy.
    #[error("password {0}")]
    WeakPassword(#[from] PasswordError),
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Why changing one's password failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChangePasswordError {
    /// The current password given is wrong.
    #[error("invalid current password")]
    InvalidCurrentPassword,
    /// The new password breaks the policy.
    #[error("password {0}")]
    WeakPassword(#[from] PasswordError),
    /// Too many wrong passwords for this account (current-password checks share the login backoff).
    #[error("too many attempts")]
    RateLimited {
        /// How long until the next attempt is accepted.
        retry_after: time::Duration,
    },
    /// The account no longer exists.
    #[error("not found")]
    NotFound,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

impl<P: Ports> Service<P> {
    /// Sets a new password with a reset link. The link proves the mailbox, so it also confirms the address
    /// (ANONYMOUS becomes AUTHENTICATED) and takes the account back: every session ends, a pending email change is
    /// cancelled, and the login backoff of the address is cleared. It does not log in.
    ///
    /// # Errors
    /// [`ResetPasswordError`] as described on its variants.
    pub async fn reset_password(
        &self,
        token: &str,
        new_password: &str,
        client: ClientInfo,
    ) -> Result<(), ResetPasswordError> {
        let hash = TokenHash::of(token);
        let now = self.now();
        let record = self.ports.email_tokens().find_email_token(hash.clone()).await?;
        let Some(record) =
            record.filter(|record| record.purpose == EmailTokenPurpose::PasswordReset && record.expires_at > now)
        else {
            return Err(ResetPasswordError::InvalidToken);
        };
        let users = self.ports.users();
        let mut password_hash = None;
        for _ in 0..DECIDE_ATTEMPTS {
            let Some(user) = users.find_user(record.user_id).await? else {
                return Err(ResetPasswordError::InvalidToken);
            };
            let stored = match &password_hash {
                Some(stored) => Clone::clone(stored),
                None => {
                    let password = self.new_password(new_password, &own_details(&user)).await??;
                    let stored = self.ports.hasher().hash(password).await?;
                    password_hash = Some(stored.clone());
                    stored
                }
            };
            let mut update = UserUpdate::new(user.id, now);
            update.guard.role = Some(user.role);
            update.consume_token = Some(hash.clone());
            update.fields.password_hash = Some(stored);
            update.fields.pending_email = Some(None);
            update.fields.email_verified = Some(true);
            update.fields.role = Some(user.role.once_verified()).filter(|role| *role != user.role);
            update.drop_tokens = vec![EmailTokenPurpose::EmailChange];
            update.end_sessions = SessionEnd::All;
            update.clear_failures = Some(user.email.canonical());
            update.mails = vec![self.mails.password_changed(&user.email)];
            let mut event = self.event(EventType::PasswordReset, &client).by_subject(user.id, None);
            if let Some(role) = update.fields.role {
                event = event.change("role", user.role.as_str(), role.as_str());
            }
            update.events = vec![event];
            return match users.update_user(update).await {
                Ok(_) => Ok(()),
                Err(UpdateError::RoleChanged) => continue,
                Err(UpdateError::TokenUnusable | UpdateError::NotFound) => Err(ResetPasswordError::InvalidToken),
                Err(UpdateError::Port(error)) => Err(error.into()),
                Err(other) => Err(PortError::Unknown(anyhow::Error::new(other)).into()),
            };
        }
        Err(PortError::Unknown(anyhow::anyhow!("the user's role kept changing during the reset")).into())
    }

    /// Changes the caller's password after checking the current one: their other sessions end, and a pending
    /// email change or reset link mailed before dies with the old password (it would undo the change).
    ///
    /// # Errors
    /// [`ChangePasswordError`] as described on its variants.
    pub async fn change_password(
        &self,
        principal: &Principal,
        current_password: &str,
        new_password: &str,
    ) -> Result<(), ChangePasswordError> {
        let user = &principal.user;
        match self.check_current_password(principal, current_password).await? {
            Checked::Matches => {}
            Checked::Wrong => return Err(ChangePasswordError::InvalidCurrentPassword),
            Checked::Blocked { retry_after } => return Err(ChangePasswordError::RateLimited { retry_after }),
        }
        let password = self.new_password(new_password, &own_details(user)).await??;
        let password_hash = self.ports.hasher().hash(password).await?;
        let mut update = UserUpdate::new(user.id, self.now());
        update.fields.password_hash = Some(password_hash);
        update.fields.pending_email = Some(None);
        update.drop_tokens = vec![EmailTokenPurpose::EmailChange, EmailTokenPurpose::PasswordReset];
        update.end_sessions = SessionEnd::AllBut(principal.session_id);
        update.mails = vec![self.mails.password_changed(&user.email)];
        update.events = vec![self.event_by(EventType::PasswordChanged, principal, user.id)];
        match self.ports.users().update_user(update).await {
            Ok(_) => Ok(()),
            Err(UpdateError::NotFound) => Err(ChangePasswordError::NotFound),
            Err(UpdateError::Port(error)) => Err(error.into()),
            Err(other) => Err(PortError::Unknown(anyhow::Error::new(other)).into()),
        }
    }
}
