//! Account and session workflows of [`Service`]: registration and verification, refresh-token rotation, logout,
//! sessions, password reset and change, and self-service profile changes.
//!
//! Every mail is queued in the same transaction as the change that causes it (the repository's outbox), so a
//! mail is never lost and never sent for a change that did not happen. Enumeration-prone routes (register,
//! resend, forgot) behave the same, as seen from outside, whether or not the address has an account.

use crate::accounts::{
    AccountRequestKind, ConfirmEmailError, EmailChangeRequest, EmailConfirmation, EmailTokenPurpose, NewEmailToken,
    OwnedSession, ProfileChanges, RefreshOutcome, SessionSummary, UpdateProfileError,
};
use crate::admin::AdminWriteError;
use crate::permissions::Role;
use crate::ports::{Clock, InsertUserError, PasswordHasher, PortError, TokenCodec, UserRepository};
use crate::service::{Principal, Service};
use crate::session::{RefreshToken, SessionId, TokenHash, TokenPair};
use crate::throttle::Checked;
use crate::user::{
    Bio, EmailAddress, NewUser, Nickname, Password, PasswordError, PasswordHash, PersonName, ProfileUrl, User, UserId,
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

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Unknown, used, revoked or expired refresh token.
    #[error("invalid refresh token")]
    InvalidToken,
    /// The user is locked; the session survives for when they are unlocked.
    #[error("account locked")]
    AccountLocked,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Why a password reset failed.
#[derive(Debug, thiserror::Error)]
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

/// Why a self-service change that needs the current password failed.
#[derive(Debug, thiserror::Error)]
pub enum SelfServiceError {
    /// The current password given is wrong.
    #[error("invalid current password")]
    InvalidCurrentPassword,
    /// Changing the email address needs the current password, and none was given.
    #[error("current password required")]
    CurrentPasswordRequired,
    /// The new password breaks the policy.
    #[error("password {0}")]
    WeakPassword(#[from] PasswordError),
    /// The new email address belongs to another account.
    #[error("email taken")]
    EmailTaken,
    /// The new nickname belongs to another account.
    #[error("nickname taken")]
    NicknameTaken,
    /// The account no longer exists.
    #[error("not found")]
    NotFound,
    /// The account is the last unlocked ADMIN, which must not disappear.
    #[error("last admin")]
    LastAdmin,
    /// Too many wrong passwords for this account (current-password checks share the login backoff).
    #[error("too many attempts")]
    RateLimited {
        /// How long until the next attempt is accepted.
        retry_after: time::Duration,
    },
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

impl From<UpdateProfileError> for SelfServiceError {
    fn from(error: UpdateProfileError) -> Self {
        match error {
            UpdateProfileError::NicknameTaken => Self::NicknameTaken,
            UpdateProfileError::NotFound => Self::NotFound,
            UpdateProfileError::Port(error) => Self::Port(error),
        }
    }
}

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

/// How often a generated nickname is retried on a collision.
const NICKNAME_ATTEMPTS: usize = 8;

/// How long a worker holds a claimed account request before another may take it over.
const ACCOUNT_REQUEST_LEASE: time::Duration = time::Duration::minutes(2);

impl<R, H, T, C> Service<R, H, T, C>
where
    R: UserRepository,
    H: PasswordHasher,
    T: TokenCodec,
    C: Clock,
{
    /// Registers an account (role ANONYMOUS) and queues its verification mail; for an address that already has an
    /// account, queues an "already registered" mail to its owner instead. The password is hashed in both cases so
    /// the two take comparable time.
    ///
    /// # Errors
    /// [`RegisterError`] as described on its variants.
    pub async fn register(&self, registration: Registration) -> Result<(), RegisterError> {
        let password_hash = self.hash_new_password(&registration).await?;
        // A taken nickname is reported before the email is looked at, whatever the email: nicknames are public,
        // so an answer that depended on the email would turn this check into an account oracle.
        if let Some(nickname) = &registration.nickname
            && self.repo.nickname_exists(nickname.clone()).await?
        {
            return Err(RegisterError::NicknameTaken);
        }
        if let Some(existing) = self.repo.find_user_by_email(registration.email.clone()).await? {
            return Ok(self.answer_existing_address(&existing).await?);
        }
        match self.create_account(&registration, password_hash, Role::Anonymous, false).await {
            Ok(_) => Ok(()),
            // Taken between the check above and the insert: rare, and still independent of the email.
            Err(InsertUserError::NicknameTaken) => Err(RegisterError::NicknameTaken),
            // Registered concurrently by someone else: answer as for any existing address.
            Err(InsertUserError::EmailTaken) => match self.repo.find_user_by_email(registration.email.clone()).await? {
                Some(existing) => Ok(self.answer_existing_address(&existing).await?),
                None => Ok(()),
            },
            Err(InsertUserError::Port(error)) => Err(error.into()),
        }
    }

    /// A registration for an address that has an account: a verified owner is told "already registered"; an
    /// account never confirmed may have been created by someone else before the owner (account pre-hijacking), so
    /// its owner gets a link to set the password instead, which confirms the address and replaces the other
    /// password. The caller's answer is the same either way.
    async fn answer_existing_address(&self, existing: &User) -> Result<(), PortError> {
        if existing.email_verified {
            return self.repo.queue_mail(self.mails.already_registered(&existing.email)).await;
        }
        let (secret, mut token) = self.email_token(
            existing.id,
            EmailTokenPurpose::PasswordReset,
            None,
            self.clock.now() + self.config.reset_token_ttl,
        );
        // Whoever registered the address first must not be able to confirm it with their own link (and password)
        // once the mailbox owner has taken the account back.
        token.drops = vec![EmailTokenPurpose::Verify, EmailTokenPurpose::EmailChange];
        // Nor with their password: it dies now, so even a verification link sent later (a resend) only confirms an
        // account that nobody can log in to until the mailbox owner sets a password through this link.
        token.replaces_password = Some(self.hasher.unusable());
        let mail = self.mails.finish_registration(&existing.email, secret.expose());
        self.repo.issue_email_token(token, vec![mail]).await
    }

    /// A fresh single-use email token: the secret for the mail, and what is stored (its hash, owner, purpose, expiry).
    fn email_token(
        &self,
        user_id: UserId,
        purpose: EmailTokenPurpose,
        new_email: Option<EmailAddress>,
        expires_at: time::OffsetDateTime,
    ) -> (RefreshToken, NewEmailToken) {
        let secret = RefreshToken::generate();
        let token = NewEmailToken {
            hash: secret.hash(),
            user_id,
            purpose,
            new_email,
            expires_at,
            drops: Vec::new(),
            replaces_password: None,
        };
        (secret, token)
    }

    /// Checks a new account's password against the policy, with the account's own details as context, and hashes
    /// it.
    pub(crate) async fn hash_new_password(&self, registration: &Registration) -> Result<PasswordHash, RegisterError> {
        let mut context = vec![registration.email.as_str()];
        context.extend(registration.nickname.as_ref().map(Nickname::as_str));
        context.extend(registration.first_name.as_ref().map(PersonName::as_str));
        context.extend(registration.last_name.as_ref().map(PersonName::as_str));
        let password = self.new_password(&registration.password, &context).await??;
        Ok(self.hasher.hash(password).await?)
    }

    /// Stores a new account. A generated nickname that collides is generated again; a chosen one that is taken is
    /// [`InsertUserError::NicknameTaken`]. An unverified account gets its verification token and mail in the same
    /// transaction.
    pub(crate) async fn create_account(
        &self,
        registration: &Registration,
        password_hash: PasswordHash,
        role: Role,
        email_verified: bool,
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
            let inserted = if email_verified {
                self.repo.insert_user(user).await
            } else {
                let (secret, token) = self.email_token(
                    user.id,
                    EmailTokenPurpose::Verify,
                    None,
                    self.clock.now() + self.config.verify_token_ttl,
                );
                let mail = self.mails.verify_email(&user.email, &nickname, user.id, secret.expose());
                self.repo.register(user, token, mail).await
            };
            match inserted {
                Err(InsertUserError::NicknameTaken) if generated => {}
                other => return other,
            }
        }
        Err(PortError::Unknown(anyhow::anyhow!("no free generated nickname found")).into())
    }

    /// Follows a verification link (registration or email change).
    ///
    /// # Errors
    /// [`ConfirmEmailError`] as described on its variants.
    pub async fn verify_email(&self, user_id: UserId, token: &str) -> Result<EmailConfirmation, ConfirmEmailError> {
        self.repo.confirm_email(user_id, TokenHash::of(token), self.clock.now()).await
    }

    /// Asks for a fresh verification link for the address. The request only queues it, the same work whatever the
    /// address, so neither the answer nor its timing tells whether an account exists; the worker
    /// ([`Self::handle_account_requests`]) sends the link when the address has an unverified account.
    ///
    /// # Errors
    /// [`PortError`] when a dependency fails.
    pub async fn resend_verification(&self, email: EmailAddress) -> Result<(), PortError> {
        self.repo.queue_account_request(AccountRequestKind::Verification, email, self.clock.now()).await
    }

    /// Handles up to `limit` queued requests (forgotten password, resend): looks each address up, and issues the
    /// token and queues the mail the account calls for, or nothing. Returns how many were handled. A request whose
    /// handling fails stays queued and is taken up again when its claim expires.
    ///
    /// # Errors
    /// [`PortError`] when a dependency fails.
    pub async fn handle_account_requests(&self, limit: u32) -> Result<usize, PortError> {
        let claimed = self.repo.claim_account_requests(self.clock.now(), limit, ACCOUNT_REQUEST_LEASE).await?;
        let mut first_error = None;
        for request in &claimed {
            // One request that fails stays claimed until its lease ends and is tried again then; the others go on.
            let handled = match request.kind {
                AccountRequestKind::PasswordReset => self.send_reset_link(request.email.clone()).await,
                AccountRequestKind::Verification => self.send_verification_link(request.email.clone()).await,
            };
            let finished = match handled {
                Ok(()) => self.repo.finish_account_request(request.id).await,
                Err(error) => Err(error),
            };
            if let Err(error) = finished {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(claimed.len()), Err)
    }

    /// Sends a fresh verification link when the address has an unverified account; otherwise does nothing.
    async fn send_verification_link(&self, email: EmailAddress) -> Result<(), PortError> {
        let Some(user) = self.repo.find_user_by_email(email).await? else { return Ok(()) };
        if user.email_verified {
            return Ok(());
        }
        let (secret, token) =
            self.email_token(user.id, EmailTokenPurpose::Verify, None, self.clock.now() + self.config.verify_token_ttl);
        let mail = self.mails.verify_email(&user.email, &user.nickname, user.id, secret.expose());
        self.repo.issue_email_token(token, vec![mail]).await
    }

    /// Exchanges a refresh token for a new pair, rotating it. A token presented twice revokes its session.
    ///
    /// # Errors
    /// [`RefreshError`] as described on its variants.
    pub async fn refresh(&self, presented: &str) -> Result<TokenPair, RefreshError> {
        let now = self.clock.now();
        let next = RefreshToken::generate();
        let outcome = self
            .repo
            .rotate_refresh_token(TokenHash::of(presented), next.hash(), now, self.config.refresh_token_idle_ttl)
            .await?;
        match outcome {
            RefreshOutcome::Rotated { session, user } => Ok(self.token_pair(user.id, session.id, next, now)?),
            RefreshOutcome::Locked => Err(RefreshError::AccountLocked),
            RefreshOutcome::Reused | RefreshOutcome::Invalid => Err(RefreshError::InvalidToken),
        }
    }

    /// Ends the session a refresh token belongs to; an unknown token is accepted silently.
    ///
    /// # Errors
    /// [`PortError`] when a dependency fails.
    pub async fn logout(&self, presented: &str) -> Result<(), PortError> {
        self.repo.revoke_session_by_refresh_token(TokenHash::of(presented), self.clock.now()).await
    }

    /// Ends every session of the caller; their access tokens stop working at once.
    ///
    /// # Errors
    /// [`PortError`] when a dependency fails.
    pub async fn logout_all(&self, principal: &Principal) -> Result<(), PortError> {
        self.repo.revoke_all_sessions(principal.user.id, self.clock.now()).await
    }

    /// The caller's active sessions, the current one marked.
    ///
    /// # Errors
    /// [`PortError`] when a dependency fails.
    pub async fn sessions(&self, principal: &Principal) -> Result<Vec<SessionSummary>, PortError> {
        let sessions = self.repo.list_sessions(principal.user.id, self.clock.now()).await?;
        Ok(sessions
            .into_iter()
            .map(|session| SessionSummary { current: session.id == principal.session_id, session })
            .collect())
    }

    /// Ends one of the caller's sessions; `Ok(false)` when they have no such active session.
    ///
    /// # Errors
    /// [`PortError`] when a dependency fails.
    pub async fn revoke_session(&self, principal: &Principal, session_id: SessionId) -> Result<bool, PortError> {
        let owned = OwnedSession { user_id: principal.user.id, session_id };
        self.repo.revoke_session(owned, self.clock.now()).await
    }

    /// Asks for a password reset link for the address. Like [`Self::resend_verification`], the request only queues
    /// it; the worker mails the link when the address has an account.
    ///
    /// # Errors
    /// [`PortError`] when a dependency fails.
    pub async fn forgot_password(&self, email: EmailAddress) -> Result<(), PortError> {
        self.repo.queue_account_request(AccountRequestKind::PasswordReset, email, self.clock.now()).await
    }

    /// Mails a password reset link when the address has an account; otherwise does nothing.
    async fn send_reset_link(&self, email: EmailAddress) -> Result<(), PortError> {
        let Some(user) = self.repo.find_user_by_email(email).await? else { return Ok(()) };
        let (secret, token) = self.email_token(
            user.id,
            EmailTokenPurpose::PasswordReset,
            None,
            self.clock.now() + self.config.reset_token_ttl,
        );
        let mail = self.mails.password_reset(&user.email, secret.expose());
        self.repo.issue_email_token(token, vec![mail]).await
    }

    /// Sets a new password with a reset token: revokes every session and clears the login backoff; does not log in.
    ///
    /// # Errors
    /// [`ResetPasswordError`] as described on its variants.
    pub async fn reset_password(&self, token: &str, new_password: &str) -> Result<(), ResetPasswordError> {
        let hash = TokenHash::of(token);
        let now = self.clock.now();
        let user = self.repo.find_reset_token_user(hash.clone(), now).await?.ok_or(ResetPasswordError::InvalidToken)?;
        let password = self.new_password(new_password, &own_details(&user)).await??;
        let password_hash = self.hasher.hash(password).await?;
        let mail = self.mails.password_changed(&user.email);
        if self.repo.reset_password(hash, password_hash, mail, now).await? {
            Ok(())
        } else {
            Err(ResetPasswordError::InvalidToken)
        }
    }

    /// Changes the caller's password after checking the current one; their other sessions end.
    ///
    /// # Errors
    /// [`SelfServiceError`] as described on its variants.
    pub async fn change_password(
        &self,
        principal: &Principal,
        current_password: &str,
        new_password: &str,
    ) -> Result<(), SelfServiceError> {
        self.check_current_password(&principal.user, current_password).await?;
        let password = self.new_password(new_password, &own_details(&principal.user)).await??;
        let password_hash = self.hasher.hash(password).await?;
        let mail = self.mails.password_changed(&principal.user.email);
        self.repo
            .change_password(principal.user.id, password_hash, principal.session_id, mail, self.clock.now())
            .await?;
        Ok(())
    }

    /// Changes the caller's own profile. A new email address needs the current password and only takes effect
    /// when the link mailed to it is followed; the old address is told, without the link.
    ///
    /// # Errors
    /// [`SelfServiceError`] as described on its variants; on an error nothing is changed.
    pub async fn update_me(&self, principal: &Principal, update: MeUpdate) -> Result<User, SelfServiceError> {
        let user = &principal.user;
        let new_email = update.email.filter(|email| email.canonical() != user.email.canonical());
        if let Some(new_email) = &new_email {
            let current = update.current_password.as_deref().ok_or(SelfServiceError::CurrentPasswordRequired)?;
            self.check_current_password(user, current).await?;
            if self.repo.find_user_by_email(new_email.clone()).await?.is_some() {
                return Err(SelfServiceError::EmailTaken);
            }
        }
        let now = self.clock.now();
        let email_change = new_email.map(|new_email| {
            let (secret, token) = self.email_token(
                user.id,
                EmailTokenPurpose::EmailChange,
                Some(new_email.clone()),
                now + self.config.verify_token_ttl,
            );
            let mails = vec![
                self.mails.confirm_new_email(&new_email, user.id, secret.expose()),
                self.mails.email_change_requested(&user.email, &new_email),
            ];
            EmailChangeRequest { token, mails }
        });
        if update.profile.is_empty() && email_change.is_none() {
            return Ok(user.clone());
        }
        Ok(self.repo.update_me(user.id, update.profile, email_change, now).await?)
    }

    /// Deletes the caller's account after checking their password.
    ///
    /// # Errors
    /// [`SelfServiceError::InvalidCurrentPassword`], [`SelfServiceError::NotFound`] or a dependency failure.
    pub async fn delete_me(&self, principal: &Principal, current_password: &str) -> Result<(), SelfServiceError> {
        self.check_current_password(&principal.user, current_password).await?;
        // The same guarded deletion as the admin route: the last unlocked ADMIN cannot delete themself either.
        self.repo.admin_delete_user(principal.user.id, None).await.map_err(|error| match error {
            AdminWriteError::LastAdmin => SelfServiceError::LastAdmin,
            AdminWriteError::NotFound | AdminWriteError::NicknameTaken | AdminWriteError::EmailTaken => {
                SelfServiceError::NotFound
            }
            AdminWriteError::Port(error) => SelfServiceError::Port(error),
        })
    }

    /// Checks the caller's current password on the same per-account backoff as login: a wrong one counts as a
    /// failed login, and while the account is blocked no password is checked at all.
    async fn check_current_password(&self, user: &User, candidate: &str) -> Result<(), SelfServiceError> {
        let checked = self
            .check_password_throttled(
                user.email.canonical(),
                Password::normalize(candidate),
                Some(user.password_hash.clone()),
            )
            .await?;
        match checked {
            Checked::Matches => Ok(()),
            Checked::Wrong => Err(SelfServiceError::InvalidCurrentPassword),
            Checked::Blocked { retry_after } => Err(SelfServiceError::RateLimited { retry_after }),
        }
    }
}

/// The user's own details, which their password must not be built from.
fn own_details(user: &User) -> Vec<&str> {
    let mut details = vec![user.email.as_str(), user.nickname.as_str()];
    details.extend(user.first_name.as_ref().map(PersonName::as_str));
    details.extend(user.last_name.as_ref().map(PersonName::as_str));
    details
}

#[cfg(test)]
mod tests {
    use std::future::ready;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::accounts::AccountRequest;
    use crate::ports::{MockPasswordHasher, MockTokenCodec, MockUserRepository};
    use crate::service::tests::{
        NOW, STRONG, allow_judging, hasher_hashing, judging_hasher, service, session_of, throttled_repo, user,
    };
    use crate::session::AccessToken;

    fn registration(email: &str) -> Registration {
        Registration {
            email: EmailAddress::parse(email).unwrap(),
            password: STRONG.to_owned(),
            nickname: None,
            first_name: None,
            last_name: None,
            bio: None,
            linkedin_profile_url: None,
            github_profile_url: None,
        }
    }

    #[tokio::test]
    async fn registering_a_new_address_stores_an_anonymous_user_with_a_verify_token_and_its_mail() {
        let mut repo = MockUserRepository::new();
        repo.expect_find_user_by_email().returning(|_| Box::pin(ready(Ok(None))));
        let seen = Arc::new(Mutex::new(None));
        let seen_in_mock = Arc::clone(&seen);
        repo.expect_register().times(1).returning(move |new, token, mail| {
            *seen_in_mock.lock().unwrap() = Some((new.clone(), token, mail));
            let mut created = user(Role::Anonymous, false, false);
            created.id = new.id;
            Box::pin(ready(Ok(created)))
        });
        repo.expect_queue_mail().never();
        let svc = service(repo, hasher_hashing(), MockTokenCodec::new());
        svc.register(registration("new@example.com")).await.unwrap();

        let (new, token, mail) = seen.lock().unwrap().take().unwrap();
        assert_eq!(new.role, Role::Anonymous);
        assert!(!new.email_verified);
        assert_eq!(token.purpose, EmailTokenPurpose::Verify);
        assert_eq!(token.user_id, new.id);
        assert_eq!(token.expires_at, NOW + time::Duration::hours(24));
        assert_eq!(mail.to.as_str(), "new@example.com");
        // The mail carries the token whose hash is stored, and only the hash is stored.
        let prefix = format!("http://localhost:8080/verify-email/{}/", new.id);
        let start = mail.text.find(&prefix).unwrap() + prefix.len();
        let secret: String = mail.text[start..].chars().take_while(|c| !c.is_whitespace()).collect();
        assert_eq!(TokenHash::of(&secret), token.hash);
        assert_ne!(secret, token.hash.as_str());
    }

    #[tokio::test]
    async fn registering_an_existing_address_mails_its_owner_and_looks_the_same() {
        let mut repo = MockUserRepository::new();
        repo.expect_find_user_by_email().returning(|_| Box::pin(ready(Ok(Some(user(Role::Admin, true, false))))));
        repo.expect_register().never();
        repo.expect_queue_mail()
            .times(1)
            .withf(|mail| mail.to.as_str() == "ada@example.com" && mail.subject == "You already have an account")
            .returning(|_| Box::pin(ready(Ok(()))));
        // The password is hashed anyway, so both paths cost the same.
        let svc = service(repo, hasher_hashing(), MockTokenCodec::new());
        assert!(svc.register(registration("ada@example.com")).await.is_ok());
    }

    #[tokio::test]
    async fn registering_an_unconfirmed_address_mails_its_owner_a_link_to_choose_the_password() {
        let mut repo = MockUserRepository::new();
        repo.expect_find_user_by_email().returning(|_| Box::pin(ready(Ok(Some(user(Role::Anonymous, false, false))))));
        repo.expect_register().never();
        repo.expect_queue_mail().never();
        repo.expect_issue_email_token()
            .times(1)
            .withf(|token, mails| {
                token.purpose == EmailTokenPurpose::PasswordReset
                    && mails.len() == 1
                    && mails[0].subject == "Finish setting up your account"
                    && mails[0].text.contains("/password/reset?token=")
            })
            .returning(|_, _| Box::pin(ready(Ok(()))));
        let mut hasher = hasher_hashing();
        hasher.expect_unusable().returning(|| PasswordHash::new("$argon2id$unusable".to_owned()));
        let svc = service(repo, hasher, MockTokenCodec::new());
        assert!(svc.register(registration("ada@example.com")).await.is_ok());
    }

    #[tokio::test]
    async fn a_weak_or_personal_password_is_refused_before_anything_is_stored() {
        let mut weak = registration("margaretthatcher@example.com");
        weak.password = "margaretthatcher1".to_owned();
        let svc = service(throttled_repo(), judging_hasher(), MockTokenCodec::new());
        assert!(matches!(svc.register(weak).await, Err(RegisterError::WeakPassword(_))));
    }

    #[tokio::test]
    async fn a_chosen_nickname_that_is_taken_is_reported_before_the_email_is_looked_at() {
        let mut repo = MockUserRepository::new();
        repo.expect_nickname_exists().times(1).returning(|_| Box::pin(ready(Ok(true))));
        repo.expect_find_user_by_email().never();
        repo.expect_register().never();
        let svc = service(repo, hasher_hashing(), MockTokenCodec::new());
        let mut chosen = registration("new@example.com");
        chosen.nickname = Some(Nickname::parse("taken").unwrap());
        assert!(matches!(svc.register(chosen).await, Err(RegisterError::NicknameTaken)));

        let mut repo = MockUserRepository::new();
        repo.expect_find_user_by_email().returning(|_| Box::pin(ready(Ok(None))));
        let mut calls = 0;
        repo.expect_register().times(2).returning(move |new, _, _| {
            calls += 1;
            if calls == 1 {
                return Box::pin(ready(Err(InsertUserError::NicknameTaken)));
            }
            let mut created = user(Role::Anonymous, false, false);
            created.id = new.id;
            Box::pin(ready(Ok(created)))
        });
        let svc = service(repo, hasher_hashing(), MockTokenCodec::new());
        assert!(svc.register(registration("new@example.com")).await.is_ok());
    }

    #[tokio::test]
    async fn refresh_outcomes_map_to_tokens_or_errors() {
        for (outcome, expect_ok) in
            [(RefreshOutcome::Invalid, false), (RefreshOutcome::Reused, false), (RefreshOutcome::Locked, false)]
        {
            let mut repo = MockUserRepository::new();
            let locked = outcome == RefreshOutcome::Locked;
            repo.expect_rotate_refresh_token().returning(move |_, _, _, _| Box::pin(ready(Ok(outcome.clone()))));
            let svc = service(repo, MockPasswordHasher::new(), MockTokenCodec::new());
            let result = svc.refresh("token").await;
            assert_eq!(result.is_ok(), expect_ok);
            if locked {
                assert!(matches!(result, Err(RefreshError::AccountLocked)));
            } else {
                assert!(matches!(result, Err(RefreshError::InvalidToken)));
            }
        }
        let owner = user(Role::Authenticated, true, false);
        let session = session_of(&owner, false);
        let session_id = session.id;
        let mut repo = MockUserRepository::new();
        repo.expect_rotate_refresh_token()
            .withf(|presented, next, at, idle| {
                *presented == TokenHash::of("token")
                    && *next != *presented
                    && *at == NOW
                    && *idle == time::Duration::days(7)
            })
            .returning(move |_, _, _, _| {
                Box::pin(ready(Ok(RefreshOutcome::Rotated { session: session.clone(), user: owner.clone() })))
            });
        let mut tokens = MockTokenCodec::new();
        tokens
            .expect_issue()
            .withf(move |claims| claims.session_id == session_id)
            .returning(|_| Ok(AccessToken::new("signed".to_owned())));
        let svc = service(repo, MockPasswordHasher::new(), tokens);
        let pair = svc.refresh("token").await.unwrap();
        assert_ne!(pair.refresh_token.expose(), "token");
    }

    #[tokio::test]
    async fn reset_with_an_unknown_token_changes_nothing() {
        let mut repo = MockUserRepository::new();
        repo.expect_find_reset_token_user().returning(|_, _| Box::pin(ready(Ok(None))));
        repo.expect_reset_password().never();
        let svc = service(repo, MockPasswordHasher::new(), MockTokenCodec::new());
        assert!(matches!(svc.reset_password("nope", STRONG).await, Err(ResetPasswordError::InvalidToken)));
    }

    #[tokio::test]
    async fn a_reset_token_used_concurrently_is_invalid_for_the_loser() {
        let mut repo = MockUserRepository::new();
        repo.expect_find_reset_token_user()
            .returning(|_, _| Box::pin(ready(Ok(Some(user(Role::Authenticated, true, false))))));
        repo.expect_reset_password().times(1).returning(|_, _, _, _| Box::pin(ready(Ok(false))));
        let svc = service(repo, hasher_hashing(), MockTokenCodec::new());
        assert!(matches!(svc.reset_password("t", STRONG).await, Err(ResetPasswordError::InvalidToken)));
    }

    fn principal() -> Principal {
        let owner = user(Role::Authenticated, true, false);
        let session_id = session_of(&owner, false).id;
        Principal { user: owner, session_id }
    }

    fn hasher_checking(matches: bool) -> MockPasswordHasher {
        let mut hasher = MockPasswordHasher::new();
        allow_judging(&mut hasher);
        hasher
            .expect_verify()
            .times(1)
            .withf(|_, hash| hash.is_some())
            .returning(move |_, _| Box::pin(ready(Ok(matches))));
        hasher
    }

    #[tokio::test]
    async fn changing_the_password_needs_the_current_one_and_keeps_only_this_session() {
        let svc = service(throttled_repo(), hasher_checking(false), MockTokenCodec::new());
        assert!(matches!(
            svc.change_password(&principal(), "wrong", STRONG).await,
            Err(SelfServiceError::InvalidCurrentPassword)
        ));

        let me = principal();
        let keep = me.session_id;
        let mut repo = throttled_repo();
        repo.expect_change_password()
            .times(1)
            .withf(move |_, _, kept, mail, _| *kept == keep && mail.subject == "Your password was changed")
            .returning(|_, _, _, _, _| Box::pin(ready(Ok(()))));
        let mut hasher = hasher_checking(true);
        hasher.expect_hash().times(1).returning(|_| Box::pin(ready(Ok(crate::PasswordHash::new("h".to_owned())))));
        let svc = service(repo, hasher, MockTokenCodec::new());
        svc.change_password(&me, STRONG, "amber-lantern-quiet-31").await.unwrap();
    }

    #[tokio::test]
    async fn an_email_change_needs_the_password_and_a_free_address_and_mails_both_addresses() {
        let new_email = EmailAddress::parse("new@example.com").unwrap();
        let update = MeUpdate { email: Some(new_email.clone()), ..MeUpdate::default() };
        let svc = service(throttled_repo(), judging_hasher(), MockTokenCodec::new());
        assert!(matches!(
            svc.update_me(&principal(), update.clone()).await,
            Err(SelfServiceError::CurrentPasswordRequired)
        ));

        let with_password = MeUpdate { current_password: Some(STRONG.to_owned()), ..update };
        let mut repo = throttled_repo();
        repo.expect_find_user_by_email()
            .returning(|_| Box::pin(ready(Ok(Some(user(Role::Authenticated, true, false))))));
        repo.expect_issue_email_token().never();
        let svc = service(repo, hasher_checking(true), MockTokenCodec::new());
        assert!(matches!(svc.update_me(&principal(), with_password.clone()).await, Err(SelfServiceError::EmailTaken)));

        let me = principal();
        let mut repo = throttled_repo();
        repo.expect_find_user_by_email().returning(|_| Box::pin(ready(Ok(None))));
        let mut pending = me.user.clone();
        pending.pending_email = Some(new_email);
        repo.expect_update_me()
            .times(1)
            .withf(|_, profile, change, _| {
                let Some(EmailChangeRequest { token, mails }) = change else { return false };
                profile.is_empty()
                    && token.purpose == EmailTokenPurpose::EmailChange
                    && token.new_email.as_ref().is_some_and(|e| e.as_str() == "new@example.com")
                    && mails.len() == 2
                    && mails[0].to.as_str() == "new@example.com"
                    && mails[0].text.contains("/verify-email/")
                    && mails[1].to.as_str() == "ada@example.com"
                    && !mails[1].text.contains("/verify-email/")
            })
            .returning(move |_, _, _, _| Box::pin(ready(Ok(pending.clone()))));
        let svc = service(repo, hasher_checking(true), MockTokenCodec::new());
        let updated = svc.update_me(&me, with_password).await.unwrap();
        assert_eq!(updated.email.as_str(), "ada@example.com", "the old address keeps working until confirmed");
        assert_eq!(updated.pending_email.unwrap().as_str(), "new@example.com");
    }

    #[tokio::test]
    async fn deleting_oneself_needs_the_current_password() {
        let mut repo = throttled_repo();
        repo.expect_admin_delete_user().never();
        let svc = service(repo, hasher_checking(false), MockTokenCodec::new());
        assert!(matches!(svc.delete_me(&principal(), "wrong").await, Err(SelfServiceError::InvalidCurrentPassword)));
    }

    #[tokio::test]
    async fn forgot_and_resend_do_the_same_work_for_every_address_and_leave_the_rest_to_the_worker() {
        for (kind, address) in [
            (AccountRequestKind::PasswordReset, "ada@example.com"),
            (AccountRequestKind::PasswordReset, "nobody@example.com"),
            (AccountRequestKind::Verification, "ada@example.com"),
            (AccountRequestKind::Verification, "nobody@example.com"),
        ] {
            // Only the queueing is expected: any lookup, token or mail in the request would make the mock panic.
            let mut repo = MockUserRepository::new();
            repo.expect_queue_account_request()
                .times(1)
                .withf(move |queued, email, at| *queued == kind && email.as_str() == address && *at == NOW)
                .returning(|_, _, _| Box::pin(ready(Ok(()))));
            let svc = service(repo, MockPasswordHasher::new(), MockTokenCodec::new());
            let email = EmailAddress::parse(address).unwrap();
            match kind {
                AccountRequestKind::PasswordReset => svc.forgot_password(email).await.unwrap(),
                AccountRequestKind::Verification => svc.resend_verification(email).await.unwrap(),
            }
        }
    }

    #[tokio::test]
    async fn the_worker_mails_a_reset_link_for_an_account_and_nothing_for_an_unknown_address_then_finishes_both() {
        let known = AccountRequest {
            id: uuid::Uuid::now_v7(),
            kind: AccountRequestKind::PasswordReset,
            email: EmailAddress::parse("ada@example.com").unwrap(),
        };
        let unknown = AccountRequest {
            id: uuid::Uuid::now_v7(),
            kind: AccountRequestKind::PasswordReset,
            email: EmailAddress::parse("nobody@example.com").unwrap(),
        };
        let claimed = vec![known.clone(), unknown.clone()];
        let mut repo = MockUserRepository::new();
        repo.expect_claim_account_requests().times(1).returning(move |_, _, _| Box::pin(ready(Ok(claimed.clone()))));
        repo.expect_find_user_by_email().returning(|email| {
            let found = (email.as_str() == "ada@example.com").then(|| user(Role::Authenticated, true, false));
            Box::pin(ready(Ok(found)))
        });
        repo.expect_issue_email_token()
            .times(1)
            .withf(|token, mails| token.purpose == EmailTokenPurpose::PasswordReset && mails.len() == 1)
            .returning(|_, _| Box::pin(ready(Ok(()))));
        let finished = Arc::new(Mutex::new(Vec::new()));
        let finished_in_mock = Arc::clone(&finished);
        repo.expect_finish_account_request().times(2).returning(move |id| {
            finished_in_mock.lock().unwrap().push(id);
            Box::pin(ready(Ok(())))
        });
        let svc = service(repo, MockPasswordHasher::new(), MockTokenCodec::new());
        assert_eq!(svc.handle_account_requests(20).await.unwrap(), 2);
        assert_eq!(*finished.lock().unwrap(), vec![known.id, unknown.id]);
    }

    #[tokio::test]
    async fn registering_an_unconfirmed_address_takes_the_account_back_from_whoever_registered_it_first() {
        let mut repo = MockUserRepository::new();
        let first = user(Role::Anonymous, false, false);
        repo.expect_find_user_by_email().returning(move |_| Box::pin(ready(Ok(Some(first.clone())))));
        repo.expect_register().never();
        repo.expect_issue_email_token()
            .times(1)
            .withf(|token, mails| {
                token.purpose == EmailTokenPurpose::PasswordReset
                    && token.drops.contains(&EmailTokenPurpose::Verify)
                    && token.drops.contains(&EmailTokenPurpose::EmailChange)
                    && token.replaces_password == Some(PasswordHash::new("$argon2id$unusable".to_owned()))
                    && mails.len() == 1
            })
            .returning(|_, _| Box::pin(ready(Ok(()))));
        let mut hasher = hasher_hashing();
        hasher.expect_unusable().times(1).returning(|| PasswordHash::new("$argon2id$unusable".to_owned()));
        let svc = service(repo, hasher, MockTokenCodec::new());
        svc.register(registration("ada@example.com")).await.unwrap();
    }
}
