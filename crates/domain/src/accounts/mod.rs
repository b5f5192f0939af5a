//! Accounts: registration and email verification, forgotten and changed passwords, and one's own profile.
//!
//! Every mail is queued in the same change as what causes it, so a mail is never lost and never sent for a change
//! that did not happen. Enumeration-prone routes (register, resend, forgot) behave the same, as seen from outside,
//! whether or not the address has an account: register hashes the password either way, resend and forgot only
//! queue a request that a worker ([`Service::handle_account_requests`]) handles later.

mod password;
mod profile;
mod requests;

pub use password::{ChangePasswordError, ResetPasswordError};
pub(crate) use profile::changed_profile_fields;
pub use profile::{DeleteMeError, MeUpdate, UpdateMeError};

use crate::audit::{AuditEvent, ClientInfo, EventType};
use crate::permissions::Role;
use crate::ports::{
    EmailTokenPurpose, EmailTokenStore as _, InsertUserError, MailOutbox as _, NewAccount, PasswordHasher as _,
    PortError, Ports, UpdateError, UserStore as _, UserUpdate,
};
use crate::service::Service;
use crate::session::TokenHash;
use crate::user::{
    Bio, EmailAddress, NewUser, Nickname, PasswordError, PasswordHash, PersonName, ProfileUrl, User, UserId,
};

/// A registration, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The address to verify.
    pub email: EmailAddress,
    /// The raw password; the policy is checked with the user's own details as context.
    pub password: String,
    /// The chosen nickname, or `None` for a generated one.
    pub nickname: Option<Nickname>,
    /// First name.
    pub first_name: Option<PersonName>,
    /// Last name.
    pub last_name: Option<PersonName>,
    /// Biography.
    pub bio: Option<Bio>,
    /// LinkedIn profile.
    pub linkedin_profile_url: Option<ProfileUrl>,
    /// GitHub profile.
    pub github_profile_url: Option<ProfileUrl>,
}

/// Why a registration was refused. An address that already has an account is *not* an error: the owner gets a
/// mail instead, and the caller sees the same answer as for a new account.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The password breaks the policy.
    #[error("password {0}")]
    WeakPassword(#[from] PasswordError),
    /// The chosen nickname belongs to someone else (nicknames are public, so saying so reveals nothing).
    #[error("nickname taken")]
    NicknameTaken,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
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
#[non_exhaustive]
pub enum VerifyEmailError {
    /// Unknown, expired, used, superseded, or not this user's token.
    #[error("invalid or expired token")]
    InvalidToken,
    /// The new address was taken by another account in the meantime; the link stays usable.
    #[error("email taken")]
    EmailTaken,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// How often a generated nickname is retried on a collision.
const NICKNAME_ATTEMPTS: usize = 8;

/// How often a change decided on a row whose role changed meanwhile is decided again on the new row.
pub(crate) const DECIDE_ATTEMPTS: usize = 3;

impl<P: Ports> Service<P> {
    /// Registers an account (role ANONYMOUS) and queues its verification mail; for an address that already has an
    /// account, queues a mail to its owner instead. The password is hashed in both cases so the two take
    /// comparable time.
    ///
    /// # Errors
    /// [`RegisterError`] as described on its variants.
    pub async fn register(&self, registration: Registration, client: ClientInfo) -> Result<(), RegisterError> {
        let password_hash = self.hash_new_password(&registration).await?;
        let users = self.ports.users();
        // A taken nickname is reported before the email is looked at, whatever the email: nicknames are public,
        // so an answer that depended on the email would turn this check into an account oracle.
        if let Some(nickname) = &registration.nickname
            && users.nickname_exists(nickname.clone()).await?
        {
            return Err(RegisterError::NicknameTaken);
        }
        if let Some(existing) = users.find_user_by_email(registration.email.clone()).await? {
            return Ok(self.answer_existing_address(&existing, &client).await?);
        }
        let event = self.event(EventType::UserRegistered, &client);
        match self.create_account(&registration, password_hash, Role::Anonymous, false, event).await {
            Ok(_) => Ok(()),
            // Taken between the check above and the insert: rare, and still independent of the email.
            Err(InsertUserError::NicknameTaken) => Err(RegisterError::NicknameTaken),
            // Registered concurrently by someone else: answer as for any existing address.
            Err(InsertUserError::EmailTaken) => match users.find_user_by_email(registration.email.clone()).await? {
                Some(existing) => Ok(self.answer_existing_address(&existing, &client).await?),
                None => Ok(()),
            },
            Err(InsertUserError::Port(error)) => Err(error.into()),
        }
    }

    /// A registration for an address that has an account: a verified owner is told "already registered"; an
    /// account never confirmed may have been created by someone else before the owner (account pre-hijacking), so
    /// its owner gets a link to set the password instead, which confirms the address and replaces the other
    /// password. The caller's answer is the same either way.
    ///
    /// The trail records the second registration of an unconfirmed address as `password.reset_requested` (the
    /// other password died and a link went out); nothing is recorded for a confirmed one (no change happens).
    async fn answer_existing_address(&self, existing: &User, client: &ClientInfo) -> Result<(), PortError> {
        if existing.email_verified {
            let mail = self.mails.already_registered(&existing.email);
            return self.ports.outbox().queue_mail(mail).await;
        }
        let now = self.now();
        let (secret, token) = self.email_token(existing.id, EmailTokenPurpose::PasswordReset, None, now);
        let mut update = UserUpdate::new(existing.id, now);
        // Whoever registered the address first must not be able to confirm it with their own link, nor log in with
        // their password: it dies now, so even a verification link sent later (a resend) only confirms an account
        // that nobody can log in to until the mailbox owner sets a password through this link.
        update.fields.password_hash = Some(self.ports.hasher().unusable());
        update.drop_tokens = EmailTokenPurpose::ALL.to_vec();
        update.mails = vec![self.mails.finish_registration(&existing.email, secret.expose())];
        update.issue_token = Some(token);
        update.events.push(
            self.event(EventType::PasswordResetRequested, client)
                .subject(existing.id)
                .detail("reason", "registered_again"),
        );
        match self.ports.users().update_user(update).await {
            // Deleted meanwhile: nothing to answer, and the caller's answer is the same anyway.
            Ok(_) | Err(UpdateError::NotFound) => Ok(()),
            Err(UpdateError::Port(error)) => Err(error),
            Err(other) => Err(PortError::Unknown(anyhow::Error::new(other))),
        }
    }

    /// Checks a new account's password against the policy, with the account's own details as context, and hashes
    /// it.
    pub(crate) async fn hash_new_password(&self, registration: &Registration) -> Result<PasswordHash, RegisterError> {
        let mut context = vec![registration.email.as_str()];
        context.extend(registration.nickname.as_ref().map(Nickname::as_str));
        context.extend(registration.first_name.as_ref().map(PersonName::as_str));
        context.extend(registration.last_name.as_ref().map(PersonName::as_str));
        let password = self.new_password(&registration.password, &context).await??;
        Ok(self.ports.hasher().hash(password).await?)
    }

    /// Stores a new account. A generated nickname that collides is generated again; a chosen one that is taken is
    /// [`InsertUserError::NicknameTaken`]. An unverified account gets its verification token and mail in the same
    /// transaction, and `event` (the registration or creation, naming the new user as its subject, and as its actor
    /// when it names none) too.
    pub(crate) async fn create_account(
        &self,
        registration: &Registration,
        password_hash: PasswordHash,
        role: Role,
        email_verified: bool,
        event: AuditEvent,
    ) -> Result<User, InsertUserError> {
        let generated = registration.nickname.is_none();
        for _ in 0..NICKNAME_ATTEMPTS {
            let nickname = registration.nickname.clone().unwrap_or_else(|| Nickname::generate(&mut rand::thread_rng()));
            let user = NewUser {
                id: UserId::generate(),
                email: registration.email.clone(),
                nickname: nickname.clone(),
                first_name: registration.first_name.clone(),
                last_name: registration.last_name.clone(),
                bio: registration.bio.clone(),
                linkedin_profile_url: registration.linkedin_profile_url.clone(),
                github_profile_url: registration.github_profile_url.clone(),
                role,
                email_verified,
                password_hash: password_hash.clone(),
            };
            let mut event = event.clone().subject(user.id).detail("role", role.as_str());
            if event.actor_id.is_none() {
                event.actor_id = Some(user.id);
            }
            let mut account = NewAccount { user, token: None, mails: Vec::new(), events: vec![event] };
            if !email_verified {
                let (secret, token) = self.email_token(account.user.id, EmailTokenPurpose::Verify, None, self.now());
                account.mails.push(self.mails.verify_email(
                    &account.user.email,
                    &nickname,
                    account.user.id,
                    secret.expose(),
                ));
                account.token = Some(token);
            }
            match self.ports.users().insert_user(account).await {
                Err(InsertUserError::NicknameTaken) if generated => {}
                other => return other,
            }
        }
        Err(PortError::Unknown(anyhow::anyhow!("no free generated nickname found")).into())
    }

    /// Follows a verification link (registration or email change): the token must be the user's, unused and
    /// unexpired. A registration link verifies the address; an email-change link makes the pending address the
    /// account's. Either proves the mailbox, so ANONYMOUS becomes AUTHENTICATED ([`Role::once_verified`]), and a
    /// reset link mailed to an old address dies with an email change.
    ///
    /// # Errors
    /// [`VerifyEmailError`] as described on its variants.
    pub async fn verify_email(
        &self,
        user_id: UserId,
        token: &str,
        client: ClientInfo,
    ) -> Result<EmailConfirmation, VerifyEmailError> {
        let hash = TokenHash::of(token);
        let now = self.now();
        let record = self.ports.email_tokens().find_email_token(hash.clone()).await?;
        let Some(record) = record.filter(|record| record.user_id == user_id && record.expires_at > now) else {
            return Err(VerifyEmailError::InvalidToken);
        };
        let new_email = match record.purpose {
            EmailTokenPurpose::Verify => None,
            EmailTokenPurpose::EmailChange => {
                Some(record.new_email.ok_or_else(|| corrupt("an email-change token without an address"))?)
            }
            _ => return Err(VerifyEmailError::InvalidToken),
        };
        for _ in 0..DECIDE_ATTEMPTS {
            let Some(user) = self.ports.users().find_user(user_id).await? else {
                return Err(VerifyEmailError::InvalidToken);
            };
            let mut update = UserUpdate::new(user_id, now);
            update.guard.role = Some(user.role);
            update.consume_token = Some(hash.clone());
            update.fields.email_verified = Some(true);
            update.fields.role = Some(user.role.once_verified()).filter(|role| *role != user.role);
            let event = if let Some(new_email) = &new_email {
                update.fields.email = Some(new_email.clone());
                update.fields.pending_email = Some(None);
                update.drop_tokens = vec![EmailTokenPurpose::PasswordReset];
                self.event(EventType::UserEmailChanged, &client)
            } else {
                self.event(EventType::UserEmailVerified, &client)
            };
            let mut event = event.by_subject(user_id, None);
            if let Some(role) = update.fields.role {
                event = event.change("role", user.role.as_str(), role.as_str());
            }
            update.events.push(event);
            return match self.ports.users().update_user(update).await {
                Ok(user) if new_email.is_some() => Ok(EmailConfirmation::EmailChanged(user)),
                Ok(user) => Ok(EmailConfirmation::Verified(user)),
                Err(UpdateError::RoleChanged) => continue,
                Err(UpdateError::TokenUnusable | UpdateError::NotFound) => Err(VerifyEmailError::InvalidToken),
                Err(UpdateError::EmailTaken) => Err(VerifyEmailError::EmailTaken),
                Err(UpdateError::Port(error)) => Err(error.into()),
                Err(other) => Err(PortError::Unknown(anyhow::Error::new(other)).into()),
            };
        }
        Err(PortError::Unknown(anyhow::anyhow!("the user's role kept changing during verification")).into())
    }
}

/// A port error for a stored value the domain refuses.
pub(crate) fn corrupt(what: &'static str) -> PortError {
    PortError::Unknown(anyhow::anyhow!("storage holds {what}"))
}
