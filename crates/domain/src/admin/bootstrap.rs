//! The first administrator: `create-admin` and the `BOOTSTRAP_ADMIN_*` settings.

use crate::audit::{ClientInfo, EventType};
use crate::permissions::Role;
use crate::ports::{
    InsertUserError, NewAccount, PasswordHasher as _, PortError, Ports, UpdateError, UserStore as _, UserUpdate,
};
use crate::service::Service;
use crate::user::{EmailAddress, NewUser, Nickname, PasswordError, PasswordHash, User, UserId};

/// Why `create-admin` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateAdminError {
    /// The password breaks the policy.
    #[error("password {0}")]
    WeakPassword(#[from] PasswordError),
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// How often a generated nickname is retried when it collides with an existing one.
const NICKNAME_ATTEMPTS: usize = 8;

impl<P: Ports> Service<P> {
    /// Creates a verified ADMIN with this email and password, or makes the existing user with this email one
    /// (verified, unlocked, with this password).
    ///
    /// # Errors
    /// [`CreateAdminError::WeakPassword`] when the password breaks the policy (nothing is changed),
    /// [`CreateAdminError::Port`] when a dependency fails.
    pub async fn create_admin(&self, email: EmailAddress, raw_password: &str) -> Result<User, CreateAdminError> {
        let password = self.new_password(raw_password, &[email.as_str()]).await??;
        let password_hash = self.ports.hasher().hash(password).await?;
        let users = self.ports.users();
        if let Some(existing) = users.find_user_by_email(email.clone()).await? {
            return Ok(self.promote_to_admin(existing.id, password_hash).await?);
        }
        for _ in 0..NICKNAME_ATTEMPTS {
            let user = NewUser {
                id: UserId::generate(),
                email: email.clone(),
                nickname: Nickname::generate(&mut rand::thread_rng()),
                first_name: None,
                last_name: None,
                bio: None,
                linkedin_profile_url: None,
                github_profile_url: None,
                role: Role::Admin,
                email_verified: true,
                password_hash: password_hash.clone(),
            };
            let event = self
                .event(EventType::UserCreated, &ClientInfo::default())
                .subject(user.id)
                .detail("role", Role::Admin.as_str())
                .detail("by", "command_line");
            match users.insert_user(NewAccount { user, token: None, mails: Vec::new(), events: vec![event] }).await {
                Ok(user) => return Ok(user),
                Err(InsertUserError::NicknameTaken) => {}
                // Someone registered the address between the lookup and the insert: promote that account instead.
                Err(InsertUserError::EmailTaken) => {
                    let existing = users.find_user_by_email(email.clone()).await?;
                    let id = existing
                        .map(|user| user.id)
                        .ok_or_else(|| PortError::Unknown(anyhow::anyhow!("email reported taken but no user found")))?;
                    return Ok(self.promote_to_admin(id, password_hash).await?);
                }
                Err(InsertUserError::Port(error)) => return Err(error.into()),
            }
        }
        Err(PortError::Unknown(anyhow::anyhow!("no free generated nickname found")).into())
    }

    /// Makes an existing user a verified, unlocked ADMIN with a new password hash.
    async fn promote_to_admin(&self, id: UserId, password_hash: PasswordHash) -> Result<User, PortError> {
        let mut update = UserUpdate::new(id, self.now());
        update.fields.role = Some(Role::Admin);
        update.fields.email_verified = Some(true);
        update.fields.is_locked = Some(false);
        update.fields.password_hash = Some(password_hash);
        update.events = vec![
            self.event(EventType::UserUpdated, &ClientInfo::default())
                .subject(id)
                .detail("fields", vec!["role", "email_verified", "is_locked", "password"])
                .detail("role", "ADMIN")
                .detail("by", "command_line"),
        ];
        match self.ports.users().update_user(update).await {
            Ok(user) => Ok(user),
            Err(UpdateError::Port(error)) => Err(error),
            Err(other) => Err(PortError::Unknown(anyhow::Error::new(other).context("promoting to ADMIN"))),
        }
    }

    /// Makes sure a verified ADMIN with this email exists (the `BOOTSTRAP_ADMIN_*` settings): an existing ADMIN is
    /// left untouched, so restarting never resets a password changed since; anyone else goes through
    /// [`Self::create_admin`].
    ///
    /// # Errors
    /// As [`Self::create_admin`].
    pub async fn ensure_admin(&self, email: EmailAddress, raw_password: &str) -> Result<User, CreateAdminError> {
        if let Some(existing) = self.ports.users().find_user_by_email(email.clone()).await?
            && existing.role == Role::Admin
        {
            return Ok(existing);
        }
        self.create_admin(email, raw_password).await
    }
}
