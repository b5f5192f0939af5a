//! One's own account: changing the profile (and the email address, confirmed by mail) and deleting the account.

use crate::audit::EventType;
use crate::permissions::Role;
use crate::ports::{
    EmailTokenPurpose, Guard, PortError, Ports, ProfileChanges, UpdateError, UserStore as _, UserUpdate,
};
use crate::service::Service;
use crate::sessions::Principal;
use crate::throttle::Checked;
use crate::user::{EmailAddress, Password, User};

/// A change of one's own profile, possibly including the email address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeUpdate {
    /// The profile fields to change.
    pub profile: ProfileChanges,
    /// A new email address, confirmed by mail before it takes effect.
    pub email: Option<EmailAddress>,
    /// The current password, required with `email`.
    pub current_password: Option<String>,
}

/// Why changing one's own profile failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateMeError {
    /// Changing the email address needs the current password, and none was given.
    #[error("current password required")]
    CurrentPasswordRequired,
    /// The current password given is wrong.
    #[error("invalid current password")]
    InvalidCurrentPassword,
    /// Too many wrong passwords for this account (current-password checks share the login backoff).
    #[error("too many attempts")]
    RateLimited {
        /// How long until the next attempt is accepted.
        retry_after: time::Duration,
    },
    /// The new email address belongs to another account.
    #[error("email taken")]
    EmailTaken,
    /// The new nickname belongs to another account.
    #[error("nickname taken")]
    NicknameTaken,
    /// The account no longer exists.
    #[error("not found")]
    NotFound,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Why deleting one's own account failed; nothing was deleted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeleteMeError {
    /// The current password given is wrong.
    #[error("invalid current password")]
    InvalidCurrentPassword,
    /// Too many wrong passwords for this account.
    #[error("too many attempts")]
    RateLimited {
        /// How long until the next attempt is accepted.
        retry_after: time::Duration,
    },
    /// The account is the last unlocked ADMIN, which must not disappear.
    #[error("last admin")]
    LastAdmin,
    /// The account no longer exists.
    #[error("not found")]
    NotFound,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

impl<P: Ports> Service<P> {
    /// Changes the caller's own profile. A new email address needs the current password and only takes effect
    /// when the link mailed to it is followed (it becomes the pending address meanwhile); the old address is told,
    /// without the link.
    ///
    /// # Errors
    /// [`UpdateMeError`] as described on its variants; on an error nothing is changed.
    pub async fn update_me(&self, principal: &Principal, update: MeUpdate) -> Result<User, UpdateMeError> {
        let user = &principal.user;
        let new_email = update.email.filter(|email| email.canonical() != user.email.canonical());
        if let Some(new_email) = &new_email {
            let current = update.current_password.as_deref().ok_or(UpdateMeError::CurrentPasswordRequired)?;
            match self.check_current_password(principal, current).await? {
                Checked::Matches => {}
                Checked::Wrong => return Err(UpdateMeError::InvalidCurrentPassword),
                Checked::Blocked { retry_after } => return Err(UpdateMeError::RateLimited { retry_after }),
            }
            if self.ports.users().find_user_by_email(new_email.clone()).await?.is_some() {
                return Err(UpdateMeError::EmailTaken);
            }
        }
        if update.profile.is_empty() && new_email.is_none() {
            return Ok(user.clone());
        }
        let now = self.now();
        let mut change = UserUpdate::new(user.id, now);
        let mut fields = changed_profile_fields(&update.profile);
        if new_email.is_some() {
            fields.push("pending_email");
        }
        if !fields.is_empty() {
            change.events.push(self.event_by(EventType::UserUpdated, principal, user.id).detail("fields", fields));
        }
        change.fields.profile = update.profile;
        if let Some(new_email) = new_email {
            let (secret, token) =
                self.email_token(user.id, EmailTokenPurpose::EmailChange, Some(new_email.clone()), now);
            change.fields.pending_email = Some(Some(new_email.clone()));
            change.drop_tokens = vec![EmailTokenPurpose::EmailChange];
            change.issue_token = Some(token);
            change.mails = vec![
                self.mails.confirm_new_email(&new_email, user.id, secret.expose()),
                self.mails.email_change_requested(&user.email, &new_email),
            ];
        }
        self.ports.users().update_user(change).await.map_err(|error| match error {
            UpdateError::NicknameTaken => UpdateMeError::NicknameTaken,
            UpdateError::NotFound => UpdateMeError::NotFound,
            UpdateError::Port(error) => UpdateMeError::Port(error),
            other => UpdateMeError::Port(PortError::Unknown(anyhow::Error::new(other))),
        })
    }

    /// Deletes the caller's account, with their sessions, tokens and pictures, after checking their password. The
    /// last unlocked ADMIN cannot delete themself.
    ///
    /// # Errors
    /// [`DeleteMeError`] as described on its variants.
    pub async fn delete_me(&self, principal: &Principal, current_password: &str) -> Result<(), DeleteMeError> {
        let user = &principal.user;
        match self.check_current_password(principal, current_password).await? {
            Checked::Matches => {}
            Checked::Wrong => return Err(DeleteMeError::InvalidCurrentPassword),
            Checked::Blocked { retry_after } => return Err(DeleteMeError::RateLimited { retry_after }),
        }
        // Decided on the row as stored now and guarded on its role: a promotion to ADMIN that commits while the
        // password is being checked must not let the last unlocked ADMIN disappear.
        for _ in 0..super::DECIDE_ATTEMPTS {
            let Some(current) = self.ports.users().find_user(user.id).await? else {
                return Err(DeleteMeError::NotFound);
            };
            let guard = Guard { role: Some(current.role), another_admin: current.role == Role::Admin };
            let event = self.event_by(EventType::UserDeleted, principal, user.id);
            return match self.delete_user_with_pictures(user.id, guard, vec![event]).await {
                Ok(()) => Ok(()),
                Err(UpdateError::RoleChanged) => continue,
                Err(UpdateError::LastAdmin) => Err(DeleteMeError::LastAdmin),
                Err(UpdateError::NotFound) => Err(DeleteMeError::NotFound),
                Err(UpdateError::Port(error)) => Err(DeleteMeError::Port(error)),
                Err(other) => Err(DeleteMeError::Port(PortError::Unknown(anyhow::Error::new(other)))),
            };
        }
        Err(PortError::Unknown(anyhow::anyhow!("the user's role kept changing during the deletion")).into())
    }

    /// Checks the caller's current password on the same per-account backoff as login: a wrong one counts as a
    /// failed login, and while the account is blocked no password is checked at all.
    pub(crate) async fn check_current_password(
        &self,
        principal: &Principal,
        candidate: &str,
    ) -> Result<Checked, PortError> {
        let user = &principal.user;
        let failed = self.event_by(EventType::LoginFailed, principal, user.id).detail("factor", "current_password");
        self.check_password_throttled(
            user.email.canonical(),
            Password::normalize(candidate),
            Some(user.password_hash.clone()),
            // With a second factor on, a right password alone is no success: only a right code clears the count,
            // so password checks cannot wipe out the failures of guessed codes.
            !user.mfa_enabled,
            failed,
        )
        .await
    }
}

/// The names of the profile fields a change sets, as the trail records them.
pub(crate) fn changed_profile_fields(profile: &ProfileChanges) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if profile.nickname.is_some() {
        fields.push("nickname");
    }
    if profile.first_name.is_some() {
        fields.push("first_name");
    }
    if profile.last_name.is_some() {
        fields.push("last_name");
    }
    if profile.bio.is_some() {
        fields.push("bio");
    }
    if profile.linkedin_profile_url.is_some() {
        fields.push("linkedin_profile_url");
    }
    if profile.github_profile_url.is_some() {
        fields.push("github_profile_url");
    }
    fields
}
