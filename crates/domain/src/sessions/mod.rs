//! Sessions: login, authenticating a request, refresh-token rotation with reuse detection, logout and the list of
//! one's sessions.
//!
//! A login checks the password before anything about the account is revealed, on the per-account backoff. A
//! refresh token is single use: presenting one that was already exchanged is taken as theft and ends its whole
//! session (the token family), and of two concurrent exchanges of one token exactly one wins. The one exception,
//! off by default, is a retry within `refresh_reuse_grace` of the exchange while its successor is unused: the
//! client whose answer got lost gets a fresh pair for the same session instead of being logged out.

mod check;

pub(crate) use check::Throttled;

use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::audit::{AuditEvent, EventType, USER_AGENT_MAX, unknown_login_domain};
use crate::ports::{PortError, Ports, RefreshRecord, SessionEnd, SessionStore as _, TokenCodec as _, UserStore as _};
use crate::service::Service;
use crate::session::{AccessClaims, AccessToken, NewSession, RefreshToken, Session, SessionId, TokenHash, TokenPair};
use crate::throttle::Checked;
use crate::user::{EmailAddress, Password, User, UserId};

pub use crate::audit::ClientInfo;

/// An authenticated caller: the current row of the user and the session their token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user as stored right now.
    pub user: User,
    /// The session the access token belongs to.
    pub session_id: SessionId,
    /// Where the request comes from (the edge fills it in; [`Service::authenticate`] leaves it empty), recorded on
    /// the events the caller causes.
    pub client: ClientInfo,
}

/// A session as listed to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// The session.
    pub session: Session,
    /// Whether it is the session of the request that lists them.
    pub current: bool,
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The password is right and the account has a second factor: no session yet. The login continues with
    /// [`Service::login_second_step`] and this token.
    #[error("second factor required")]
    SecondFactorRequired(MfaToken),
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// The token of a login waiting for its second step: single use, bound to the user, short-lived. Its `Debug` form
/// hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct MfaToken {
    /// The secret handed to the client.
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: i64,
}

impl std::fmt::Debug for MfaToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaToken").field("expires_in", &self.expires_in).finish_non_exhaustive()
    }
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

/// What a presented refresh token gets, as judged on its record.
enum Exchange {
    /// An unused token: exchange it for a successor.
    Rotate,
    /// A retry within the grace: replace the token's unused successor (this one) with a fresh token.
    Retry(TokenHash),
    /// A reuse: the family is revoked.
    Reuse,
}

/// The backoff key of an email that does not parse: a hash of its trimmed, lower-cased form, so any input (however
/// long, whatever its bytes) makes a bounded key that storage accepts, and the same input always meets the same block.
fn unparsed_key(raw: &str) -> String {
    use sha2::Digest as _;
    format!("unparsed:{}", hex::encode(sha2::Sha256::digest(raw.trim().to_lowercase().as_bytes())))
}

impl<P: Ports> Service<P> {
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
            Some(email) => self.ports.users().find_user_by_email(email).await?,
            None => None,
        };
        let candidate = Password::normalize(password);
        let hash = user.as_ref().map(|user| user.password_hash.clone());
        // With a second factor on, a right password alone is not a success: the failures (of passwords and codes)
        // are forgotten only when the code is right too, so alternating logins cannot reset the count of guessed
        // codes.
        let clear = !user.as_ref().is_some_and(|user| user.mfa_enabled);
        let failed = self.login_failure_event(user.as_ref(), email, &client, "password");
        let user = match self.check_password_throttled(key, candidate, hash, clear, failed).await? {
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
        if user.mfa_enabled {
            return Err(self.second_factor_required(&user).await?);
        }
        Ok(self.start_session(&user, client, self.now(), Vec::new()).await?)
    }

    /// The `login.failed` event of an attempt to sign in as `user` (`None`: the address `raw_email` names nobody,
    /// and only its domain is recorded) with a wrong `factor`.
    pub(crate) fn login_failure_event(
        &self,
        user: Option<&User>,
        raw_email: &str,
        client: &ClientInfo,
        factor: &str,
    ) -> AuditEvent {
        let event = self.event(EventType::LoginFailed, client).detail("factor", factor);
        match user {
            Some(user) => event.subject(user.id),
            None => match unknown_login_domain(raw_email) {
                Some(domain) => event.detail("email_domain", domain),
                None => event,
            },
        }
    }

    /// Starts a session for a user whose credentials were just checked, and issues its first tokens; `login.succeeded`
    /// is written with it, after `events`.
    pub(crate) async fn start_session(
        &self,
        user: &User,
        client: ClientInfo,
        now: OffsetDateTime,
        mut events: Vec<AuditEvent>,
    ) -> Result<TokenPair, PortError> {
        let refresh_token = RefreshToken::generate();
        let session = self.new_session(user, client.clone(), &refresh_token, now);
        events.push(self.event(EventType::LoginSucceeded, &client).by_subject(user.id, Some(session.id)));
        let session = self.ports.sessions().start_session(session, now, events).await?;
        self.token_pair(user.id, session.id, refresh_token, now)
    }

    /// A new session of `user` at `now` whose first refresh token is `refresh_token`.
    pub(crate) fn new_session(
        &self,
        user: &User,
        client: ClientInfo,
        refresh_token: &RefreshToken,
        now: OffsetDateTime,
    ) -> NewSession {
        NewSession {
            id: SessionId::generate(),
            user_id: user.id,
            expires_at: now + self.config.refresh_token_ttl,
            refresh_token_hash: refresh_token.hash(),
            user_agent: client.user_agent.map(|ua| ua.chars().take(USER_AGENT_MAX).collect()),
            ip: client.ip,
        }
    }

    /// Signs an access token for a session and pairs it with the session's current refresh token.
    pub(crate) fn token_pair(
        &self,
        user_id: UserId,
        session_id: SessionId,
        refresh_token: RefreshToken,
        now: OffsetDateTime,
    ) -> Result<TokenPair, PortError> {
        let access_token = self.access_token(user_id, session_id, now)?;
        Ok(TokenPair { access_token, expires_in: self.config.access_token_ttl.whole_seconds(), refresh_token })
    }

    /// Signs an access token for a session, valid for `access_token_ttl` from `now`.
    fn access_token(
        &self,
        user_id: UserId,
        session_id: SessionId,
        now: OffsetDateTime,
    ) -> Result<AccessToken, PortError> {
        let claims = AccessClaims {
            user_id,
            session_id,
            issued_at: now,
            expires_at: now + self.config.access_token_ttl,
            token_id: Uuid::new_v4(),
        };
        self.ports.tokens().issue(&claims)
    }

    /// Turns a bearer token into the caller, judged on the current rows: the session must be active and belong to
    /// the token's user, and the user must exist and not be locked.
    ///
    /// # Errors
    /// [`AuthError`] as described on its variants.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        self.check_access(token, self.now()).await.map(|(principal, _)| principal)
    }

    /// [`Self::authenticate`] for a browser's cookie session, which holds an access token and nothing else: once
    /// the token has run half its lifetime, this also signs a fresh one for the same session. A person who keeps
    /// using the pages stays signed in for as long as the session lasts; one who leaves them for a whole token
    /// lifetime is signed out; a revoked session or a locked account ends it at the next request, as with bearers.
    ///
    /// # Errors
    /// [`AuthError`] as described on its variants.
    pub async fn authenticate_renewing(&self, token: &str) -> Result<(Principal, Option<AccessToken>), AuthError> {
        let now = self.now();
        let (principal, claims) = self.check_access(token, now).await?;
        if claims.expires_at - now > self.config.access_token_ttl / 2 {
            return Ok((principal, None));
        }
        let renewed = self.access_token(principal.user.id, principal.session_id, now)?;
        Ok((principal, Some(renewed)))
    }

    /// The caller a token names, with the token's claims, judged on the current rows.
    async fn check_access(&self, token: &str, now: OffsetDateTime) -> Result<(Principal, AccessClaims), AuthError> {
        let claims = self.ports.tokens().verify(token, now).map_err(|_| AuthError::InvalidToken)?;
        let (session, user) =
            self.ports.sessions().find_session_with_user(claims.session_id).await?.ok_or(AuthError::InvalidToken)?;
        if session.user_id != claims.user_id || user.id != claims.user_id || !session.is_active(now) {
            return Err(AuthError::InvalidToken);
        }
        if user.is_locked {
            return Err(AuthError::AccountLocked);
        }
        Ok((Principal { user, session_id: session.id, client: ClientInfo::default() }, claims))
    }

    /// Exchanges a refresh token for a new pair, rotating it.
    ///
    /// The rules, in order: a locked user is refused and nothing changes (an unlock restores the session); a token
    /// already exchanged is a reuse, which revokes its session, except a retry within `refresh_reuse_grace` (see
    /// [`Self::judge`]); a revoked session, one past its absolute end, or one unused for `refresh_token_idle_ttl`
    /// is refused; otherwise the token is exchanged. Losing that exchange to a concurrent one counts as a reuse
    /// too; with a grace the token is judged once more on the rows as they are now, as if it had come a moment
    /// later, so concurrent retries end like the same retries one after the other.
    ///
    /// # Errors
    /// [`RefreshError`] as described on its variants.
    pub async fn refresh(&self, presented: &str, client: ClientInfo) -> Result<TokenPair, RefreshError> {
        let now = self.now();
        let presented = TokenHash::of(presented);
        let Some(record) = self.ports.sessions().find_refresh_token(presented.clone()).await? else {
            return Err(RefreshError::InvalidToken);
        };
        if let Some(pair) = self.exchange(&record, &presented, now, &client).await? {
            return Ok(pair);
        }
        if self.config.refresh_reuse_grace.is_positive() {
            let again = self.ports.sessions().find_refresh_token(presented.clone()).await?;
            if let Some(record) = again
                && let Some(pair) = self.exchange(&record, &presented, now, &client).await?
            {
                return Ok(pair);
            }
        }
        // Someone exchanged the same token a moment ago (or revoked the session): a reuse all the same.
        self.revoke_reused(&record, now, &client).await?;
        Err(RefreshError::InvalidToken)
    }

    /// Revokes the family of a refresh token presented again after its exchange, recording the reuse (once: only
    /// the request that revokes the session writes the event).
    async fn revoke_reused(
        &self,
        record: &RefreshRecord,
        now: OffsetDateTime,
        client: &ClientInfo,
    ) -> Result<(), PortError> {
        let reuse = self.event(EventType::SessionReuseDetected, client).subject(record.user.id);
        let reuse = AuditEvent { session_id: Some(record.session.id), ..reuse };
        self.ports.sessions().revoke_session(record.session.id, None, now, vec![reuse]).await?;
        Ok(())
    }

    /// Applies the judgement of `record` at `now`: the new pair, or `Ok(None)` when its compare-and-set lost to a
    /// concurrent change (nothing changed then).
    async fn exchange(
        &self,
        record: &RefreshRecord,
        presented: &TokenHash,
        now: OffsetDateTime,
        client: &ClientInfo,
    ) -> Result<Option<TokenPair>, RefreshError> {
        let sessions = self.ports.sessions();
        let session_id = record.session.id;
        let next = RefreshToken::generate();
        let exchanged = match self.judge(record, now)? {
            Exchange::Rotate => sessions.rotate_refresh_token(session_id, presented.clone(), next.hash(), now).await?,
            Exchange::Retry(successor) => {
                sessions.replace_refresh_successor(session_id, presented.clone(), successor, next.hash(), now).await?
            }
            Exchange::Reuse => {
                self.revoke_reused(record, now, client).await?;
                return Err(RefreshError::InvalidToken);
            }
        };
        Ok(match exchanged {
            Some(session) => Some(self.token_pair(record.user.id, session.id, next, now)?),
            None => None,
        })
    }

    /// What presenting the token of `record` at `now` does.
    ///
    /// A spent token is a reuse, unless it is a retry: presented within `refresh_reuse_grace` of its exchange,
    /// while the token it was exchanged for is unused (once that one is used, its holder is alive and this
    /// presenter is someone else) and the session may still be refreshed. A retry gets a fresh pair for the same
    /// session, and the successor it replaces stops working.
    fn judge(&self, record: &RefreshRecord, now: OffsetDateTime) -> Result<Exchange, RefreshError> {
        if record.user.is_locked {
            return Err(RefreshError::AccountLocked);
        }
        if record.used {
            // Without a grace there is no retry, whatever the clocks say: of two requests racing with one token, the
            // one that read the clock first may reach the store second, and `now` is then before the exchange.
            let grace = self.config.refresh_reuse_grace;
            let retry = record.rotation.as_ref().filter(|rotation| {
                grace.is_positive()
                    && !rotation.successor_used
                    && rotation.at.checked_add(grace).is_some_and(|end| now < end)
            });
            return Ok(match retry {
                Some(rotation) if self.refreshable(&record.session, now) => Exchange::Retry(rotation.successor.clone()),
                _ => Exchange::Reuse,
            });
        }
        if !self.refreshable(&record.session, now) {
            return Err(RefreshError::InvalidToken);
        }
        Ok(Exchange::Rotate)
    }

    /// Whether a session may still be refreshed at `now`: not revoked, before its absolute end, and used within
    /// the idle lifetime.
    fn refreshable(&self, session: &Session, now: OffsetDateTime) -> bool {
        let idle_expired = session
            .last_used_at
            .checked_add(self.config.refresh_token_idle_ttl)
            .is_some_and(|idle_end| idle_end <= now);
        session.is_active(now) && !idle_expired
    }

    /// Ends the session a refresh token belongs to; an unknown token is accepted silently.
    ///
    /// # Errors
    /// [`PortError`] when a dependency fails.
    pub async fn logout(&self, presented: &str, client: ClientInfo) -> Result<(), PortError> {
        let sessions = self.ports.sessions();
        if let Some(record) = sessions.find_refresh_token(TokenHash::of(presented)).await? {
            let event = self
                .event(EventType::SessionRevoked, &client)
                .by_subject(record.user.id, Some(record.session.id))
                .detail("reason", "logout");
            sessions.revoke_session(record.session.id, None, self.now(), vec![event]).await?;
        }
        Ok(())
    }

    /// Ends every session of the caller; their access tokens stop working at once.
    ///
    /// # Errors
    /// [`PortError`] when a dependency fails.
    pub async fn logout_all(&self, principal: &Principal) -> Result<(), PortError> {
        let event =
            self.event_by(EventType::SessionRevoked, principal, principal.user.id).detail("reason", "logout_all");
        self.ports.sessions().end_sessions(principal.user.id, SessionEnd::All, self.now(), vec![event]).await
    }

    /// The caller's active sessions, newest first, the current one marked.
    ///
    /// # Errors
    /// [`PortError`] when a dependency fails.
    pub async fn sessions(&self, principal: &Principal) -> Result<Vec<SessionSummary>, PortError> {
        let now = self.now();
        let sessions = self.ports.sessions().list_sessions(principal.user.id, now).await?;
        Ok(sessions
            .into_iter()
            .filter(|session| session.is_active(now))
            .map(|session| SessionSummary { current: session.id == principal.session_id, session })
            .collect())
    }

    /// Ends one of the caller's sessions; `Ok(false)` when they have no such active session.
    ///
    /// # Errors
    /// [`PortError`] when a dependency fails.
    pub async fn revoke_session(&self, principal: &Principal, session_id: SessionId) -> Result<bool, PortError> {
        let now = self.now();
        let sessions = self.ports.sessions();
        // A session past its end is over already: there is nothing of the caller's to revoke.
        let active = sessions
            .find_session_with_user(session_id)
            .await?
            .is_some_and(|(session, _)| session.user_id == principal.user.id && session.is_active(now));
        if !active {
            return Ok(false);
        }
        let event = self
            .event_by(EventType::SessionRevoked, principal, principal.user.id)
            .detail("reason", "revoked")
            .detail("revoked_session_id", session_id.to_string());
        sessions.revoke_session(session_id, Some(principal.user.id), now, vec![event]).await
    }
}
