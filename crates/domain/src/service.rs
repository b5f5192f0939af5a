//! The domain's entry point: [`Service`], generic over its ports.
//!
//! Business rules live here: what a login checks and in which order, how sessions and tokens are issued, how an
//! access token is turned into a principal against the current database row, and how the first admin is made.
//! Handlers call one method each; adapters never decide anything.

use std::sync::Arc;

use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::accounts::BackoffPolicy;
use crate::mail::MailTemplates;
use crate::permissions::Role;
use crate::ports::{Clock, InsertUserError, PasswordHasher, PortError, TokenCodec, UserRepository};
use crate::session::{AccessClaims, NewSession, RefreshToken, SessionId, TokenPair};
use crate::throttle::{AttemptGate, Checked};
use crate::user::{EmailAddress, NewUser, Nickname, Password, PasswordError, PasswordPolicy, User, UserId, clues};

/// The settings the service works with, read from configuration by the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Lifetime of access tokens.
    pub access_token_ttl: Duration,
    /// Absolute lifetime of a session and its refresh tokens.
    pub refresh_token_ttl: Duration,
    /// A session unused for this long can no longer be refreshed.
    pub refresh_token_idle_ttl: Duration,
    /// Lifetime of verification links (registration and email change).
    pub verify_token_ttl: Duration,
    /// Lifetime of password reset links.
    pub reset_token_ttl: Duration,
    /// The password policy.
    pub password_policy: PasswordPolicy,
    /// Backoff after repeated login failures for one email.
    pub login_backoff: BackoffPolicy,
    /// `PUBLIC_BASE_URL`, the start of every link in mails.
    pub public_base_url: String,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            access_token_ttl: Duration::minutes(15),
            refresh_token_ttl: Duration::days(30),
            refresh_token_idle_ttl: Duration::days(7),
            verify_token_ttl: Duration::hours(24),
            reset_token_ttl: Duration::minutes(15),
            password_policy: PasswordPolicy::default(),
            login_backoff: BackoffPolicy::default(),
            public_base_url: "http://localhost:8080".to_owned(),
        }
    }
}

/// Where a login comes from, as recorded on the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The client's address.
    pub ip: Option<String>,
}

/// The backoff key of an email that does not parse: a hash of its trimmed, lower-cased form, so any input (however
/// long, whatever its bytes) makes a bounded key that storage accepts, and the same input always meets the same block.
fn unparsed_key(raw: &str) -> String {
    use sha2::Digest as _;
    format!("unparsed:{}", hex::encode(sha2::Sha256::digest(raw.trim().to_lowercase().as_bytes())))
}

/// The longest `User-Agent` kept on a session.
const USER_AGENT_MAX: usize = 256;

/// An authenticated caller: the current row of the user and the session their token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user as stored right now.
    pub user: User,
    /// The session the access token belongs to.
    pub session_id: SessionId,
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Unknown email or wrong password; deliberately indistinguishable.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The password is right but the email address is not verified yet.
    #[error("email not verified")]
    EmailNotVerified,
    /// The password is right but an administrator locked the account.
    #[error("account locked")]
    AccountLocked,
    /// Too many consecutive failures for this email: try again after the given time.
    #[error("too many attempts")]
    RateLimited {
        /// How long until the next attempt is accepted.
        retry_after: Duration,
    },
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Why an access token did not authenticate a request.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Bad, expired or revoked token, or a user that no longer exists.
    #[error("invalid token")]
    InvalidToken,
    /// The user is locked by an administrator.
    #[error("account locked")]
    AccountLocked,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Why `create-admin` failed.
#[derive(Debug, thiserror::Error)]
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

/// The domain service, generic over its ports.
#[derive(Debug, Clone)]
pub struct Service<R, H, T, C> {
    pub(crate) repo: R,
    pub(crate) hasher: H,
    pub(crate) tokens: T,
    pub(crate) clock: C,
    pub(crate) config: ServiceConfig,
    pub(crate) mails: MailTemplates,
    /// Per-account limit on concurrent password checks in this process, shared by clones.
    pub(crate) attempts: Arc<AttemptGate>,
}

impl<R, H, T, C> Service<R, H, T, C>
where
    R: UserRepository,
    H: PasswordHasher,
    T: TokenCodec,
    C: Clock,
{
    /// Wires the service to its ports.
    pub fn new(repo: R, hasher: H, tokens: T, clock: C, config: ServiceConfig) -> Self {
        let mails = MailTemplates::new(&config.public_base_url);
        let attempts = Arc::new(AttemptGate::new(config.login_backoff.after));
        Self { repo, hasher, tokens, clock, config, mails, attempts }
    }

    /// The service's settings.
    pub const fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Checks that the database answers.
    ///
    /// # Errors
    /// [`PortError`] when it does not.
    pub async fn database_ready(&self) -> Result<(), PortError> {
        self.repo.ping().await
    }

    /// Creates a verified ADMIN with this email and password, or makes the existing user with this email one.
    ///
    /// # Errors
    /// [`CreateAdminError::WeakPassword`] when the password breaks the policy (nothing is changed),
    /// [`CreateAdminError::Port`] when a dependency fails.
    pub async fn create_admin(&self, email: EmailAddress, raw_password: &str) -> Result<User, CreateAdminError> {
        let password = self.new_password(raw_password, &[email.as_str()]).await??;
        let password_hash = self.hasher.hash(password).await?;
        if let Some(existing) = self.repo.find_user_by_email(email.clone()).await? {
            let promoted = self.repo.promote_to_admin(existing.id, password_hash).await?;
            return promoted.ok_or_else(|| PortError::Unknown(anyhow::anyhow!("user vanished while promoting")).into());
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let new_user = NewUser {
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
            match self.repo.insert_user(new_user).await {
                Ok(user) => return Ok(user),
                Err(InsertUserError::NicknameTaken) if attempts < NICKNAME_ATTEMPTS => {}
                Err(InsertUserError::NicknameTaken) => {
                    return Err(PortError::Unknown(anyhow::anyhow!("no free generated nickname found")).into());
                }
                // Someone registered the address between the lookup and the insert: promote that account instead.
                Err(InsertUserError::EmailTaken) => {
                    let existing = self.repo.find_user_by_email(email.clone()).await?;
                    let id = existing
                        .map(|user| user.id)
                        .ok_or_else(|| PortError::Unknown(anyhow::anyhow!("email reported taken but no user found")))?;
                    let promoted = self.repo.promote_to_admin(id, password_hash.clone()).await?;
                    return promoted
                        .ok_or_else(|| PortError::Unknown(anyhow::anyhow!("user vanished while promoting")).into());
                }
                Err(InsertUserError::Port(error)) => return Err(error.into()),
            }
        }
    }

    /// Makes sure a verified ADMIN with this email exists (the `BOOTSTRAP_ADMIN_*` variables): an existing ADMIN is
    /// left untouched, so restarting never resets a password changed since; anyone else goes through
    /// [`Self::create_admin`].
    ///
    /// # Errors
    /// As [`Self::create_admin`].
    pub async fn ensure_admin(&self, email: EmailAddress, raw_password: &str) -> Result<User, CreateAdminError> {
        if let Some(existing) = self.repo.find_user_by_email(email.clone()).await?
            && existing.role == Role::Admin
        {
            return Ok(existing);
        }
        self.create_admin(email, raw_password).await
    }

    /// Logs a user in with email and password and starts a session.
    ///
    /// The password is checked before anything about the account is revealed, and an unknown or malformed email
    /// still costs one (dummy) hash verification, so neither the answer nor its timing tells whether an account
    /// exists.
    ///
    /// # Errors
    /// [`LoginError`] as described on its variants.
    pub async fn login(&self, email: &str, password: &str, client: ClientInfo) -> Result<TokenPair, LoginError> {
        let parsed = EmailAddress::parse(email).ok();
        // Unknown and malformed addresses are throttled like real ones, under the same kind of key, so the
        // backoff itself does not reveal which accounts exist.
        let key = parsed.as_ref().map_or_else(|| unparsed_key(email), EmailAddress::canonical);
        let user = match parsed {
            Some(email) => self.repo.find_user_by_email(email).await?,
            None => None,
        };
        let candidate = Password::normalize(password);
        let hash = user.as_ref().map(|user| user.password_hash.clone());
        let user = match self.check_password_throttled(key, candidate, hash).await? {
            Checked::Blocked { retry_after } => return Err(LoginError::RateLimited { retry_after }),
            Checked::Wrong => return Err(LoginError::InvalidCredentials),
            Checked::Matches => user.ok_or(LoginError::InvalidCredentials)?,
        };
        if user.is_locked {
            return Err(LoginError::AccountLocked);
        }
        if !user.email_verified {
            return Err(LoginError::EmailNotVerified);
        }
        Ok(self.start_session(&user, client, self.clock.now()).await?)
    }

    /// Checks a new password against the whole policy, with `context` (the user's own details) as clues: the
    /// length here, the strength estimate on the hasher's blocking pool. A weak password is the inner `Err`.
    pub(crate) async fn new_password(
        &self,
        raw: &str,
        context: &[&str],
    ) -> Result<Result<Password, PasswordError>, PortError> {
        match Password::check_length(raw, self.config.password_policy) {
            Ok(candidate) => self.hasher.judge(candidate, clues(context)).await,
            Err(error) => Ok(Err(error)),
        }
    }

    /// Starts a session for a user whose credentials were just checked, and issues its first tokens.
    async fn start_session(
        &self,
        user: &User,
        client: ClientInfo,
        now: OffsetDateTime,
    ) -> Result<TokenPair, PortError> {
        let refresh_token = RefreshToken::generate();
        let session = NewSession {
            id: SessionId::generate(),
            user_id: user.id,
            expires_at: now + self.config.refresh_token_ttl,
            refresh_token_hash: refresh_token.hash(),
            user_agent: client.user_agent.map(|ua| ua.chars().take(USER_AGENT_MAX).collect()),
            ip: client.ip,
        };
        let session = self.repo.start_session(session, now).await?;
        self.token_pair(user.id, session.id, refresh_token, now)
    }

    /// Signs an access token for a session and pairs it with the session's current refresh token.
    pub(crate) fn token_pair(
        &self,
        user_id: UserId,
        session_id: SessionId,
        refresh_token: RefreshToken,
        now: OffsetDateTime,
    ) -> Result<TokenPair, PortError> {
        let claims = AccessClaims {
            user_id,
            session_id,
            issued_at: now,
            expires_at: now + self.config.access_token_ttl,
            token_id: Uuid::new_v4(),
        };
        let access_token = self.tokens.issue(&claims)?;
        Ok(TokenPair { access_token, expires_in: self.config.access_token_ttl.whole_seconds(), refresh_token })
    }

    /// Turns a bearer token into the caller, judged on the current database rows: the session must be active and
    /// belong to the token's user, and the user must exist and not be locked.
    ///
    /// # Errors
    /// [`AuthError`] as described on its variants.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let now = self.clock.now();
        let claims = self.tokens.verify(token, now).map_err(|_| AuthError::InvalidToken)?;
        let (session, user) =
            self.repo.find_session_with_user(claims.session_id).await?.ok_or(AuthError::InvalidToken)?;
        if session.user_id != claims.user_id || user.id != claims.user_id || !session.is_active(now) {
            return Err(AuthError::InvalidToken);
        }
        if user.is_locked {
            return Err(AuthError::AccountLocked);
        }
        Ok(Principal { user, session_id: session.id })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::future::ready;

    use mockall::predicate::eq;
    use time::macros::datetime;

    use super::*;
    use crate::accounts::FailureCount;
    use crate::ports::{InvalidToken, MockClock, MockPasswordHasher, MockTokenCodec, MockUserRepository};
    use crate::session::{AccessToken, Session};
    use crate::user::PasswordHash;

    pub(crate) const NOW: OffsetDateTime = datetime!(2026-11-25 12:00 UTC);
    pub(crate) const STRONG: &str = "violet-kettle-orbit-97";

    pub(crate) fn user(role: Role, verified: bool, locked: bool) -> User {
        User {
            id: UserId::generate(),
            email: EmailAddress::parse("ada@example.com").unwrap(),
            nickname: Nickname::parse("ada").unwrap(),
            first_name: None,
            last_name: None,
            bio: None,
            profile_picture_id: None,
            linkedin_profile_url: None,
            github_profile_url: None,
            role,
            is_professional: false,
            professional_status_updated_at: None,
            email_verified: verified,
            pending_email: None,
            is_locked: locked,
            password_hash: PasswordHash::new("$argon2id$stored".to_owned()),
            created_at: NOW,
            updated_at: NOW,
            last_login_at: None,
        }
    }

    pub(crate) fn session_of(user: &User, revoked: bool) -> Session {
        Session {
            id: SessionId::generate(),
            user_id: user.id,
            created_at: NOW,
            last_used_at: NOW,
            expires_at: NOW + Duration::days(30),
            revoked_at: revoked.then_some(NOW),
            user_agent: None,
            ip: None,
        }
    }

    pub(crate) fn clock() -> MockClock {
        let mut clock = MockClock::new();
        clock.expect_now().return_const(NOW);
        clock
    }

    pub(crate) fn service(
        repo: MockUserRepository,
        hasher: MockPasswordHasher,
        tokens: MockTokenCodec,
    ) -> Service<MockUserRepository, MockPasswordHasher, MockTokenCodec, MockClock> {
        Service::new(repo, hasher, tokens, clock(), ServiceConfig::default())
    }

    pub(crate) fn repo_finding(found: Option<User>) -> MockUserRepository {
        let mut repo = MockUserRepository::new();
        repo.expect_find_user_by_email().returning(move |_| Box::pin(ready(Ok(found.clone()))));
        allow_throttle(&mut repo);
        repo
    }

    /// Lets the login backoff bookkeeping through: nothing blocked, failures and clears accepted.
    pub(crate) fn allow_throttle(repo: &mut MockUserRepository) {
        repo.expect_login_failures().returning(|_| Box::pin(ready(Ok(None))));
        repo.expect_record_login_failure().returning(|_, _, _| Box::pin(ready(Ok(None))));
        repo.expect_clear_login_failures().returning(|_| Box::pin(ready(Ok(()))));
    }

    pub(crate) fn hasher_answering(matches: bool, expect_dummy: bool) -> MockPasswordHasher {
        let mut hasher = MockPasswordHasher::new();
        hasher
            .expect_verify()
            .times(1)
            .withf(move |_, hash| hash.is_none() == expect_dummy)
            .returning(move |_, _| Box::pin(ready(Ok(matches))));
        hasher
    }

    #[tokio::test]
    async fn unknown_email_still_runs_a_dummy_verify_and_is_invalid_credentials() {
        let svc = service(repo_finding(None), hasher_answering(false, true), MockTokenCodec::new());
        let result = svc.login("nobody@example.com", STRONG, ClientInfo::default()).await;
        assert!(matches!(result, Err(LoginError::InvalidCredentials)));
    }

    #[tokio::test]
    async fn malformed_email_runs_a_dummy_verify_without_a_lookup() {
        let mut repo = MockUserRepository::new();
        allow_throttle(&mut repo);
        let svc = service(repo, hasher_answering(false, true), MockTokenCodec::new());
        let result = svc.login("not an email", STRONG, ClientInfo::default()).await;
        assert!(matches!(result, Err(LoginError::InvalidCredentials)));
    }

    #[tokio::test]
    async fn wrong_password_is_invalid_credentials_even_for_locked_or_unverified_users() {
        for (verified, locked) in [(true, false), (false, false), (true, true)] {
            let found = user(Role::Authenticated, verified, locked);
            let svc = service(repo_finding(Some(found)), hasher_answering(false, false), MockTokenCodec::new());
            let result = svc.login("ada@example.com", "wrong", ClientInfo::default()).await;
            assert!(matches!(result, Err(LoginError::InvalidCredentials)), "verified={verified} locked={locked}");
        }
    }

    #[tokio::test]
    async fn right_password_reveals_lock_before_verification() {
        let svc = service(
            repo_finding(Some(user(Role::Anonymous, false, true))),
            hasher_answering(true, false),
            MockTokenCodec::new(),
        );
        let result = svc.login("ada@example.com", STRONG, ClientInfo::default()).await;
        assert!(matches!(result, Err(LoginError::AccountLocked)));

        let svc = service(
            repo_finding(Some(user(Role::Anonymous, false, false))),
            hasher_answering(true, false),
            MockTokenCodec::new(),
        );
        let result = svc.login("ada@example.com", STRONG, ClientInfo::default()).await;
        assert!(matches!(result, Err(LoginError::EmailNotVerified)));
    }

    #[tokio::test]
    async fn successful_login_starts_a_session_and_signs_a_token_naming_it() {
        let found = user(Role::Authenticated, true, false);
        let user_id = found.id;
        let mut repo = repo_finding(Some(found.clone()));
        let long_agent = "x".repeat(1000);
        repo.expect_start_session()
            .times(1)
            .withf(move |session, at| {
                session.user_id == user_id
                    && *at == NOW
                    && session.expires_at == NOW + Duration::days(30)
                    && session.user_agent.as_ref().is_some_and(|ua| ua.len() == USER_AGENT_MAX)
            })
            .returning(move |new, _| {
                let mut session = session_of(&found, false);
                session.id = new.id;
                Box::pin(ready(Ok(session)))
            });
        let mut tokens = MockTokenCodec::new();
        tokens
            .expect_issue()
            .times(1)
            .withf(move |claims| {
                claims.user_id == user_id && claims.issued_at == NOW && claims.expires_at == NOW + Duration::minutes(15)
            })
            .returning(|_| Ok(AccessToken::new("signed".to_owned())));
        let svc = service(repo, hasher_answering(true, false), tokens);
        let client = ClientInfo { user_agent: Some(long_agent), ip: Some("127.0.0.1".to_owned()) };
        let pair = svc.login("ADA@EXAMPLE.COM", STRONG, client).await.unwrap();
        assert_eq!(pair.access_token.expose(), "signed");
        assert_eq!(pair.expires_in, 900);
        assert_eq!(pair.refresh_token.expose().len(), 43);
    }

    #[test]
    fn keys_of_unparsable_emails_are_bounded_hashes_of_their_normalised_form() {
        let key = unparsed_key(" NUL\u{0}byte ");
        assert_eq!(key, unparsed_key("nul\u{0}BYTE"));
        assert!(key.starts_with("unparsed:") && key.len() == 9 + 64);
        assert!(key.chars().all(|c| !c.is_control()));
    }

    #[tokio::test]
    async fn a_blocked_email_is_rate_limited_before_any_password_check() {
        let mut repo = MockUserRepository::new();
        repo.expect_login_failures().withf(|key| key == "ada@example.com").returning(|_| {
            Box::pin(ready(Ok(Some(FailureCount { failures: 6, blocked_until: Some(NOW + Duration::seconds(8)) }))))
        });
        repo.expect_find_user_by_email().returning(|_| Box::pin(ready(Ok(None))));
        repo.expect_record_login_failure().never();
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_verify().never();
        let svc = service(repo, hasher, MockTokenCodec::new());
        let result = svc.login("Ada@Example.com", STRONG, ClientInfo::default()).await;
        assert!(matches!(result, Err(LoginError::RateLimited { retry_after }) if retry_after == Duration::seconds(8)));
    }

    #[tokio::test]
    async fn a_block_that_has_ended_lets_the_next_attempt_be_checked() {
        let mut repo = MockUserRepository::new();
        repo.expect_find_user_by_email().returning(|_| Box::pin(ready(Ok(None))));
        repo.expect_login_failures().returning(|_| {
            Box::pin(ready(Ok(Some(FailureCount { failures: 6, blocked_until: Some(NOW - Duration::seconds(1)) }))))
        });
        repo.expect_record_login_failure().times(1).returning(|_, _, _| Box::pin(ready(Ok(None))));
        let svc = service(repo, hasher_answering(false, true), MockTokenCodec::new());
        let result = svc.login("ada@example.com", STRONG, ClientInfo::default()).await;
        assert!(matches!(result, Err(LoginError::InvalidCredentials)));
    }

    #[tokio::test]
    async fn only_wrong_passwords_count_as_failures_for_known_and_unknown_emails_alike_and_success_clears_them() {
        for found in [Some(user(Role::Authenticated, true, false)), None] {
            let expect_dummy = found.is_none();
            let mut repo = MockUserRepository::new();
            repo.expect_find_user_by_email().returning(move |_| Box::pin(ready(Ok(found.clone()))));
            repo.expect_login_failures().returning(|_| Box::pin(ready(Ok(None))));
            repo.expect_record_login_failure()
                .times(1)
                .withf(|key, at, policy| key == "ada@example.com" && *at == NOW && policy.after == 5)
                .returning(|_, _, _| Box::pin(ready(Ok(None))));
            repo.expect_clear_login_failures().never();
            let svc = service(repo, hasher_answering(false, expect_dummy), MockTokenCodec::new());
            let result = svc.login("ada@example.com", "wrong", ClientInfo::default()).await;
            assert!(matches!(result, Err(LoginError::InvalidCredentials)));
        }
        // A right password for a locked account clears earlier failures too: the password was proven. It is not
        // a failure itself.
        let mut repo = MockUserRepository::new();
        let locked = user(Role::Authenticated, true, true);
        repo.expect_find_user_by_email().returning(move |_| Box::pin(ready(Ok(Some(locked.clone())))));
        repo.expect_login_failures()
            .returning(|_| Box::pin(ready(Ok(Some(FailureCount { failures: 2, blocked_until: None })))));
        repo.expect_record_login_failure().never();
        repo.expect_clear_login_failures().times(1).returning(|_| Box::pin(ready(Ok(()))));
        let svc = service(repo, hasher_answering(true, false), MockTokenCodec::new());
        assert!(matches!(
            svc.login("ada@example.com", STRONG, ClientInfo::default()).await,
            Err(LoginError::AccountLocked)
        ));
    }

    #[tokio::test]
    async fn database_outage_during_login_is_reported_as_unavailable() {
        let mut repo = MockUserRepository::new();
        allow_throttle(&mut repo);
        repo.expect_find_user_by_email()
            .returning(|_| Box::pin(ready(Err(PortError::Unavailable(anyhow::anyhow!("connection refused"))))));
        let svc = service(repo, MockPasswordHasher::new(), MockTokenCodec::new());
        let result = svc.login("ada@example.com", STRONG, ClientInfo::default()).await;
        assert!(matches!(result, Err(LoginError::Port(PortError::Unavailable(_)))));
    }

    fn tokens_verifying(claims: Result<AccessClaims, InvalidToken>) -> MockTokenCodec {
        let mut tokens = MockTokenCodec::new();
        tokens.expect_verify().with(eq("token"), eq(NOW)).returning(move |_, _| claims.clone());
        tokens
    }

    fn claims_for(user: &User, session: &Session) -> AccessClaims {
        AccessClaims {
            user_id: user.id,
            session_id: session.id,
            issued_at: NOW,
            expires_at: NOW + Duration::minutes(15),
            token_id: Uuid::new_v4(),
        }
    }

    fn repo_with_session(found: Option<(Session, User)>) -> MockUserRepository {
        let mut repo = MockUserRepository::new();
        repo.expect_find_session_with_user().returning(move |_| Box::pin(ready(Ok(found.clone()))));
        repo
    }

    #[tokio::test]
    async fn a_valid_token_of_an_active_session_authenticates_the_current_row() {
        let current = user(Role::Manager, true, false);
        let session = session_of(&current, false);
        let claims = claims_for(&current, &session);
        let svc = service(
            repo_with_session(Some((session.clone(), current.clone()))),
            MockPasswordHasher::new(),
            tokens_verifying(Ok(claims)),
        );
        let principal = svc.authenticate("token").await.unwrap();
        assert_eq!(principal.user, current);
        assert_eq!(principal.session_id, session.id);
    }

    #[tokio::test]
    async fn revoked_expired_foreign_or_missing_sessions_are_invalid_tokens() {
        let current = user(Role::Authenticated, true, false);
        let active = session_of(&current, false);
        let revoked = session_of(&current, true);
        let mut expired = session_of(&current, false);
        expired.expires_at = NOW;
        let other = user(Role::Authenticated, true, false);
        let foreign = session_of(&other, false);
        let cases = [
            (Some((revoked.clone(), current.clone())), claims_for(&current, &revoked)),
            (Some((expired.clone(), current.clone())), claims_for(&current, &expired)),
            (Some((foreign.clone(), other.clone())), claims_for(&current, &foreign)),
            (None, claims_for(&current, &active)),
        ];
        for (found, claims) in cases {
            let svc = service(repo_with_session(found), MockPasswordHasher::new(), tokens_verifying(Ok(claims)));
            assert!(matches!(svc.authenticate("token").await, Err(AuthError::InvalidToken)));
        }
    }

    #[tokio::test]
    async fn a_locked_user_is_refused_with_their_old_token() {
        let current = user(Role::Admin, true, true);
        let session = session_of(&current, false);
        let claims = claims_for(&current, &session);
        let svc = service(
            repo_with_session(Some((session, current))),
            MockPasswordHasher::new(),
            tokens_verifying(Ok(claims)),
        );
        assert!(matches!(svc.authenticate("token").await, Err(AuthError::AccountLocked)));
    }

    #[tokio::test]
    async fn a_bad_token_never_reaches_the_database() {
        let svc = service(MockUserRepository::new(), MockPasswordHasher::new(), tokens_verifying(Err(InvalidToken)));
        assert!(matches!(svc.authenticate("token").await, Err(AuthError::InvalidToken)));
    }

    #[tokio::test]
    async fn create_admin_refuses_a_weak_password_before_hashing_or_storing() {
        let svc = service(MockUserRepository::new(), judging_hasher(), MockTokenCodec::new());
        let email = EmailAddress::parse("root@example.com").unwrap();
        let result = svc.create_admin(email, "root@example.com1").await;
        assert!(matches!(result, Err(CreateAdminError::WeakPassword(_))));
    }

    /// A repository mock whose backoff bookkeeping lets everything through.
    pub(crate) fn throttled_repo() -> MockUserRepository {
        let mut repo = MockUserRepository::new();
        allow_throttle(&mut repo);
        repo
    }

    /// A hasher mock that only judges strength (in place).
    pub(crate) fn judging_hasher() -> MockPasswordHasher {
        let mut hasher = MockPasswordHasher::new();
        allow_judging(&mut hasher);
        hasher
    }

    /// Lets the strength estimate run in place, as the real hasher runs it on its blocking pool.
    pub(crate) fn allow_judging(hasher: &mut MockPasswordHasher) {
        hasher.expect_judge().returning(|candidate, clues| Box::pin(ready(Ok(candidate.judge(&clues)))));
    }

    pub(crate) fn hasher_hashing() -> MockPasswordHasher {
        let mut hasher = MockPasswordHasher::new();
        allow_judging(&mut hasher);
        hasher.expect_hash().times(1).returning(|_| Box::pin(ready(Ok(PasswordHash::new("$argon2id$new".to_owned())))));
        hasher
    }

    #[tokio::test]
    async fn create_admin_inserts_a_verified_admin_with_a_generated_nickname() {
        let mut repo = repo_finding(None);
        repo.expect_insert_user()
            .times(1)
            .withf(|new| new.role == Role::Admin && new.email_verified && new.password_hash.as_str() == "$argon2id$new")
            .returning(|new| {
                let mut created = user(Role::Admin, true, false);
                created.id = new.id;
                created.nickname = new.nickname;
                Box::pin(ready(Ok(created)))
            });
        let svc = service(repo, hasher_hashing(), MockTokenCodec::new());
        let created = svc.create_admin(EmailAddress::parse("ada@example.com").unwrap(), STRONG).await.unwrap();
        assert_eq!(created.role, Role::Admin);
        assert_eq!(created.nickname.as_str().split('_').count(), 3);
    }

    #[tokio::test]
    async fn create_admin_promotes_an_existing_user_instead_of_inserting() {
        let existing = user(Role::Authenticated, false, true);
        let existing_id = existing.id;
        let mut repo = repo_finding(Some(existing));
        repo.expect_insert_user().never();
        repo.expect_promote_to_admin()
            .with(eq(existing_id), mockall::predicate::always())
            .times(1)
            .returning(|_, _| Box::pin(ready(Ok(Some(user(Role::Admin, true, false))))));
        let svc = service(repo, hasher_hashing(), MockTokenCodec::new());
        let promoted = svc.create_admin(EmailAddress::parse("ada@example.com").unwrap(), STRONG).await.unwrap();
        assert_eq!(promoted.role, Role::Admin);
        assert!(promoted.email_verified && !promoted.is_locked);
    }

    #[tokio::test]
    async fn ensure_admin_leaves_an_existing_admin_untouched() {
        let mut repo = repo_finding(Some(user(Role::Admin, true, false)));
        repo.expect_insert_user().never();
        repo.expect_promote_to_admin().never();
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_hash().never();
        let svc = service(repo, hasher, MockTokenCodec::new());
        let admin = svc.ensure_admin(EmailAddress::parse("ada@example.com").unwrap(), STRONG).await.unwrap();
        assert_eq!(admin.role, Role::Admin);
    }

    #[tokio::test]
    async fn ensure_admin_promotes_a_non_admin() {
        let mut repo = repo_finding(Some(user(Role::Manager, true, false)));
        repo.expect_promote_to_admin()
            .times(1)
            .returning(|_, _| Box::pin(ready(Ok(Some(user(Role::Admin, true, false))))));
        let svc = service(repo, hasher_hashing(), MockTokenCodec::new());
        let admin = svc.ensure_admin(EmailAddress::parse("ada@example.com").unwrap(), STRONG).await.unwrap();
        assert_eq!(admin.role, Role::Admin);
    }

    #[tokio::test]
    async fn create_admin_retries_a_generated_nickname_that_is_taken() {
        let mut repo = repo_finding(None);
        let mut calls = 0;
        repo.expect_insert_user().times(2).returning(move |new| {
            calls += 1;
            if calls == 1 {
                return Box::pin(ready(Err(InsertUserError::NicknameTaken)));
            }
            let mut created = user(Role::Admin, true, false);
            created.id = new.id;
            Box::pin(ready(Ok(created)))
        });
        let svc = service(repo, hasher_hashing(), MockTokenCodec::new());
        assert!(svc.create_admin(EmailAddress::parse("ada@example.com").unwrap(), STRONG).await.is_ok());
    }
}
