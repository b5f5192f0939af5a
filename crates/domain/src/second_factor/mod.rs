//! The second factor: TOTP (RFC 6238) with single-use recovery codes, and the second step of a login.
//!
//! Setting it up takes the current password and gives a new secret, which stays unconfirmed until a code from it is
//! shown; confirming turns it on and hands out ten recovery codes, shown once and stored hashed. With it on, a right
//! password at login starts no session: it answers with an `mfa_token` (single use, bound to the user, five
//! minutes, five codes at most), which [`Service::login_second_step`] exchanges with a code for a session.
//!
//! The rules that keep codes from being guessed or replayed:
//! - every code check (at login, confirm, regenerate, turn off) counts on the same per-account backoff as
//!   passwords, and a right password does not clear that count while the code is still to come;
//! - a TOTP code is accepted for its own step or one step either side, and only for a step later than the last one
//!   accepted, compare-and-set in storage, so of two logins racing with one code exactly one succeeds;
//! - a recovery code is consumed compare-and-set too, and its use is mailed to the owner.

mod codes;

use time::Duration;

use codes::CodeInput;
pub use codes::RecoveryCode;

use crate::audit::{AuditEvent, EventType};
use crate::permissions::Action;
use crate::ports::{
    NewMfaChallenge, OneTimePasswords as _, PortError, Ports, SecondFactorAction, SecondFactorChange,
    SecondFactorError, SecondFactorProof, SecondFactorStore as _, UserStore as _,
};
use crate::service::Service;
use crate::session::{RefreshToken, SessionId, TokenHash, TokenPair};
use crate::sessions::{ClientInfo, MfaToken, Principal, Throttled};
use crate::throttle::Checked;
use crate::user::User;

/// Codes that may be tried on one `mfa_token` before it dies.
pub const MFA_MAX_ATTEMPTS: u32 = 5;

/// A new, unconfirmed TOTP secret, shown once to its owner.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSetup {
    /// The secret in base32, for typing into an authenticator app.
    pub secret: String,
    /// The `otpauth://totp/...` URI, for a QR code.
    pub otpauth_uri: String,
}

impl std::fmt::Debug for TotpSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSetup(<redacted>)")
    }
}

/// Why a second-factor operation of the account's owner was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MfaError {
    /// The current password given is wrong.
    #[error("invalid current password")]
    InvalidCurrentPassword,
    /// The code given is wrong, or was already used.
    #[error("invalid code")]
    InvalidCode,
    /// Too many wrong passwords or codes for this account.
    #[error("too many attempts")]
    RateLimited {
        /// How long until the next attempt is accepted.
        retry_after: Duration,
    },
    /// The second factor is on already (setup, confirm).
    #[error("second factor already enabled")]
    AlreadyEnabled,
    /// The second factor is off (regenerating codes, turning it off), or was never set up (confirm).
    #[error("second factor not enabled")]
    NotEnabled,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Why the second step of a login failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MfaLoginError {
    /// Unknown, expired, used or used-up `mfa_token` (or its user is gone or no longer has a second factor).
    #[error("invalid token")]
    InvalidToken,
    /// Wrong or replayed code; the token survives until its attempts are used up.
    #[error("invalid code")]
    InvalidCode,
    /// Too many wrong passwords or codes for this account.
    #[error("too many attempts")]
    RateLimited {
        /// How long until the next attempt is accepted.
        retry_after: Duration,
    },
    /// An administrator locked the account meanwhile.
    #[error("account locked")]
    AccountLocked,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Why an administrator could not turn a user's second factor off.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResetMfaError {
    /// The caller may not do this to this user (or to themself: they use their own route, which asks for a code).
    #[error("forbidden")]
    Forbidden,
    /// No such user, or one the caller may not see.
    #[error("not found")]
    NotFound,
    /// The user has no second factor on.
    #[error("second factor not enabled")]
    NotEnabled,
    /// A dependency failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// A proof that checked out, as the store will consume it.
enum Proven {
    /// A TOTP code of this step.
    Step(i64),
    /// A recovery code with this hash.
    Recovery(TokenHash),
}

impl From<Proven> for SecondFactorProof {
    fn from(proven: Proven) -> Self {
        match proven {
            Proven::Step(step) => Self::Step(step),
            Proven::Recovery(hash) => Self::RecoveryCode(hash),
        }
    }
}

impl<P: Ports> Service<P> {
    /// Starts setting up TOTP: checks the current password, stores a new unconfirmed secret (replacing an
    /// unconfirmed one) and returns it. Nothing changes for logins until [`Service::confirm_totp`].
    ///
    /// # Errors
    /// [`MfaError::InvalidCurrentPassword`], [`MfaError::RateLimited`], [`MfaError::AlreadyEnabled`],
    /// [`MfaError::Port`].
    pub async fn setup_totp(&self, principal: &Principal, current_password: &str) -> Result<TotpSetup, MfaError> {
        let user = &principal.user;
        self.require_password(principal, current_password).await?;
        if user.mfa_enabled {
            return Err(MfaError::AlreadyEnabled);
        }
        let secret = self.ports.otp().generate(&self.config.totp_issuer, user.email.as_str())?;
        let mut change = SecondFactorChange::new(user.id, self.now());
        change.action = SecondFactorAction::Stage { secret: secret.sealed };
        match self.ports.second_factors().apply_second_factor(change).await {
            Ok(_) => Ok(TotpSetup { secret: secret.base32, otpauth_uri: secret.otpauth_uri }),
            Err(SecondFactorError::StateChanged) => Err(MfaError::AlreadyEnabled),
            Err(error) => Err(port_error(error).into()),
        }
    }

    /// Confirms the unconfirmed secret with a code from it: the second factor is on, and the ten recovery codes
    /// returned (shown only now) replace any earlier ones. The owner is mailed.
    ///
    /// # Errors
    /// [`MfaError::InvalidCode`], [`MfaError::RateLimited`], [`MfaError::AlreadyEnabled`], [`MfaError::NotEnabled`]
    /// when nothing was set up, [`MfaError::Port`].
    pub async fn confirm_totp(&self, principal: &Principal, code: &str) -> Result<Vec<RecoveryCode>, MfaError> {
        let user = &principal.user;
        let record = self.ports.second_factors().find_totp(user.id).await?.ok_or(MfaError::NotEnabled)?;
        if record.enabled {
            return Err(MfaError::AlreadyEnabled);
        }
        let now = self.now();
        // Only a TOTP code confirms (there are no recovery codes yet).
        let check = async {
            match CodeInput::parse(code) {
                CodeInput::Totp(digits) => self.ports.otp().matching_step(&record.secret, &digits, now),
                CodeInput::Recovery(_) | CodeInput::Malformed => Ok(None),
            }
        };
        // The count is cleared by the change that consumes the code, not by the check: a code that turns out to be
        // replayed or checked against a replaced setup must clear nothing.
        let failed = self.event_by(EventType::LoginFailed, principal, user.id).detail("factor", "code");
        let step = match self.check_throttled(user.email.canonical(), false, check, failed).await? {
            Throttled::Passed(step) => step,
            Throttled::Wrong => return Err(MfaError::InvalidCode),
            Throttled::Blocked { retry_after } => return Err(MfaError::RateLimited { retry_after }),
        };
        let codes = RecoveryCode::generate_set();
        let mut change = SecondFactorChange::new(user.id, now);
        change.proof = Some(SecondFactorProof::Step(step));
        change.action = SecondFactorAction::Enable {
            secret: record.secret,
            recovery_codes: codes.iter().map(RecoveryCode::hash).collect(),
        };
        change.mails = vec![self.mails.mfa_enabled(&user.email)];
        change.events = vec![self.event_by(EventType::MfaEnabled, principal, user.id)];
        change.clear_failures = Some(user.email.canonical());
        match self.ports.second_factors().apply_second_factor(change).await {
            Ok(_) => Ok(codes),
            Err(SecondFactorError::ProofRejected) => Err(MfaError::InvalidCode),
            // Confirmed or set up again meanwhile: the code was checked against a secret that is no longer the
            // one waiting.
            Err(SecondFactorError::StateChanged) => {
                let enabled = self.ports.second_factors().find_totp(user.id).await?.is_some_and(|r| r.enabled);
                Err(if enabled { MfaError::AlreadyEnabled } else { MfaError::InvalidCode })
            }
            Err(error) => Err(port_error(error).into()),
        }
    }

    /// Replaces the recovery codes, after the current password and a code (TOTP or recovery); the old codes stop
    /// working.
    ///
    /// # Errors
    /// As [`Service::disable_totp`].
    pub async fn regenerate_recovery_codes(
        &self,
        principal: &Principal,
        current_password: &str,
        code: &str,
    ) -> Result<Vec<RecoveryCode>, MfaError> {
        let codes = RecoveryCode::generate_set();
        let hashes = codes.iter().map(RecoveryCode::hash).collect();
        self.owner_change(principal, current_password, code, SecondFactorAction::ReplaceRecoveryCodes(hashes)).await?;
        Ok(codes)
    }

    /// Turns the second factor off, after the current password and a code (TOTP or recovery). The owner is mailed.
    ///
    /// # Errors
    /// [`MfaError::InvalidCurrentPassword`], [`MfaError::InvalidCode`], [`MfaError::RateLimited`],
    /// [`MfaError::NotEnabled`], [`MfaError::Port`].
    pub async fn disable_totp(
        &self,
        principal: &Principal,
        current_password: &str,
        code: &str,
    ) -> Result<(), MfaError> {
        self.owner_change(principal, current_password, code, SecondFactorAction::Disable).await
    }

    /// A change of an enabled second factor by its owner: password, then code, then the change with the code
    /// consumed in the same transaction.
    async fn owner_change(
        &self,
        principal: &Principal,
        current_password: &str,
        code: &str,
        action: SecondFactorAction,
    ) -> Result<(), MfaError> {
        let user = &principal.user;
        if !user.mfa_enabled {
            return Err(MfaError::NotEnabled);
        }
        self.require_password(principal, current_password).await?;
        let disabling = action == SecondFactorAction::Disable;
        let attempt = |proof: SecondFactorProof| {
            let mut change = SecondFactorChange::new(user.id, self.now());
            let mut mails = Vec::new();
            if disabling {
                mails.push(self.mails.mfa_disabled(&user.email));
            }
            change.proof = Some(proof);
            change.action = action.clone();
            change.mails = mails;
            if disabling {
                change.events = vec![self.event_by(EventType::MfaDisabled, principal, user.id)];
            }
            change
        };
        let failed = self.event_by(EventType::LoginFailed, principal, user.id).detail("factor", "code");
        match self.check_code(user, code, failed, attempt).await? {
            Throttled::Passed(Ok(())) => Ok(()),
            Throttled::Passed(Err(_)) => Err(MfaError::NotEnabled),
            Throttled::Wrong => Err(MfaError::InvalidCode),
            Throttled::Blocked { retry_after } => Err(MfaError::RateLimited { retry_after }),
        }
    }

    /// Checks the current password for a second-factor change, on the backoff.
    async fn require_password(&self, principal: &Principal, current_password: &str) -> Result<(), MfaError> {
        match self.check_current_password(principal, current_password).await? {
            Checked::Matches => Ok(()),
            Checked::Wrong => Err(MfaError::InvalidCurrentPassword),
            Checked::Blocked { retry_after } => Err(MfaError::RateLimited { retry_after }),
        }
    }

    /// Checks a TOTP or recovery code of `user` on the backoff and, when it is right, applies the change `build`
    /// makes with its proof, consuming it; a proof the store rejects (a replayed step, a used recovery code) counts
    /// as a wrong code. A used recovery code mails the owner. The inner `Err` is a change whose other
    /// preconditions failed (the second factor turned off meanwhile, the login step gone), nothing stored.
    async fn check_code(
        &self,
        user: &User,
        code: &str,
        failed: AuditEvent,
        build: impl Fn(SecondFactorProof) -> SecondFactorChange,
    ) -> Result<Throttled<Result<(), SecondFactorError>>, PortError> {
        self.check_code_session(user, code, failed, |proof| (build(proof), None)).await.map(|outcome| match outcome {
            Throttled::Passed(result) => Throttled::Passed(result.map(|_| ())),
            Throttled::Wrong => Throttled::Wrong,
            Throttled::Blocked { retry_after } => Throttled::Blocked { retry_after },
        })
    }

    /// [`Service::check_code`] for a change that may start a session: `build` returns the change and the refresh
    /// token of the session it starts, handed back with the started session's id. `failed` is the event of a wrong
    /// code; a recovery code that passes records `mfa.recovery_code_used` with the same actor.
    async fn check_code_session(
        &self,
        user: &User,
        code: &str,
        failed: AuditEvent,
        build: impl Fn(SecondFactorProof) -> (SecondFactorChange, Option<RefreshToken>),
    ) -> Result<Throttled<Result<Option<(SessionId, RefreshToken)>, SecondFactorError>>, PortError> {
        let store = self.ports.second_factors();
        let check = async {
            let proven = match CodeInput::parse(code) {
                CodeInput::Totp(digits) => {
                    let Some(record) = store.find_totp(user.id).await?.filter(|record| record.enabled) else {
                        return Ok(Some(Err(SecondFactorError::StateChanged)));
                    };
                    match self.ports.otp().matching_step(&record.secret, &digits, self.now())? {
                        Some(step) => Proven::Step(step),
                        None => return Ok(None),
                    }
                }
                CodeInput::Recovery(hash) => Proven::Recovery(hash),
                CodeInput::Malformed => return Ok(None),
            };
            let recovery = matches!(proven, Proven::Recovery(_));
            let (mut change, refresh) = build(proven.into());
            if recovery {
                change.events.insert(0, failed.retyped(EventType::MfaRecoveryCodeUsed));
            }
            // Only a change that consumes the code clears the count, in its own transaction: an outcome that
            // verified nothing (an expired login step, a factor turned off meanwhile) leaves the count as it is.
            change.clear_failures = Some(user.email.canonical());
            // A recovery code used to log in is news to the owner; one used to replace the codes or turn the
            // second factor off comes with that change's own notice.
            if recovery && change.action == SecondFactorAction::Keep {
                // The count after this use: read before the change commits, so it may be one too high under a
                // concurrent use of another code, which only makes the mail more cautious.
                let left = store.recovery_codes_left(user.id).await?.saturating_sub(1);
                change.mails.push(self.mails.recovery_code_used(&user.email, left));
            }
            match store.apply_second_factor(change).await {
                Ok(session) => Ok(Some(Ok(session.map(|session| session.id).zip(refresh)))),
                Err(SecondFactorError::ProofRejected) => Ok(None),
                Err(SecondFactorError::Port(error)) => Err(error),
                Err(other) => Ok(Some(Err(other))),
            }
        };
        self.check_throttled(user.email.canonical(), false, check, failed.clone()).await
    }

    /// The answer to a right password of an account with a second factor: a new pending login step.
    pub(crate) async fn second_factor_required(&self, user: &User) -> Result<crate::sessions::LoginError, PortError> {
        let token = RefreshToken::generate();
        let ttl = self.config.mfa_token_ttl;
        let challenge = NewMfaChallenge { token_hash: token.hash(), user_id: user.id, expires_at: self.now() + ttl };
        self.ports.second_factors().create_mfa_challenge(challenge).await?;
        Ok(crate::sessions::LoginError::SecondFactorRequired(MfaToken {
            token: token.expose().to_owned(),
            expires_in: ttl.whole_seconds(),
        }))
    }

    /// The second step of a login: exchanges the `mfa_token` of a right password and a TOTP or recovery code for
    /// a session. Each try uses one of the token's five attempts; a right code consumes the token.
    ///
    /// # Errors
    /// [`MfaLoginError`] as described on its variants.
    pub async fn login_second_step(
        &self,
        mfa_token: &str,
        code: &str,
        client: ClientInfo,
    ) -> Result<TokenPair, MfaLoginError> {
        let token_hash = TokenHash::of(mfa_token);
        let store = self.ports.second_factors();
        let challenge = store
            .take_mfa_attempt(token_hash.clone(), self.now(), MFA_MAX_ATTEMPTS)
            .await?
            .ok_or(MfaLoginError::InvalidToken)?;
        let user = self.ports.users().find_user(challenge.user_id).await?.ok_or(MfaLoginError::InvalidToken)?;
        if user.is_locked {
            return Err(MfaLoginError::AccountLocked);
        }
        if !user.mfa_enabled {
            return Err(MfaLoginError::InvalidToken);
        }
        let build = |proof: SecondFactorProof| {
            let now = self.now();
            let refresh = RefreshToken::generate();
            let session = self.new_session(&user, client.clone(), &refresh, now);
            let mut change = SecondFactorChange::new(user.id, now);
            change.consume_challenge = Some(token_hash.clone());
            change.proof = Some(proof);
            change.events = vec![
                self.event(EventType::LoginSucceeded, &client)
                    .by_subject(user.id, Some(session.id))
                    .detail("second_factor", true),
            ];
            change.start_session = Some(session);
            (change, Some(refresh))
        };
        let failed = self.event(EventType::LoginFailed, &client).subject(user.id).detail("factor", "code");
        match self.check_code_session(&user, code, failed, build).await? {
            Throttled::Passed(Ok(Some((session_id, refresh)))) => {
                Ok(self.token_pair(user.id, session_id, refresh, self.now())?)
            }
            Throttled::Passed(Ok(None) | Err(_)) => Err(MfaLoginError::InvalidToken),
            Throttled::Wrong => Err(MfaLoginError::InvalidCode),
            Throttled::Blocked { retry_after } => Err(MfaLoginError::RateLimited { retry_after }),
        }
    }

    /// Turns a user's second factor off, as an ADMIN (or a MANAGER for users below MANAGER); the user is mailed.
    /// Nobody resets their own this way: their route asks for a code.
    ///
    /// # Errors
    /// [`ResetMfaError`] as described on its variants.
    pub async fn reset_second_factor(&self, actor: &Principal, id: crate::user::UserId) -> Result<(), ResetMfaError> {
        let target = self.target(actor, id, Action::ResetSecondFactor).await.map_err(|error| match error {
            crate::admin::GetUserError::Forbidden => ResetMfaError::Forbidden,
            crate::admin::GetUserError::NotFound => ResetMfaError::NotFound,
            crate::admin::GetUserError::Port(error) => ResetMfaError::Port(error),
        })?;
        if !target.mfa_enabled {
            return Err(ResetMfaError::NotEnabled);
        }
        let mut change = SecondFactorChange::new(target.id, self.now());
        change.action = SecondFactorAction::Disable;
        change.mails = vec![self.mails.mfa_reset_by_admin(&target.email)];
        change.events =
            vec![self.event_by(EventType::MfaDisabled, actor, target.id).detail("reason", "reset_by_staff")];
        match self.ports.second_factors().apply_second_factor(change).await {
            Ok(_) => Ok(()),
            Err(SecondFactorError::StateChanged) => Err(ResetMfaError::NotEnabled),
            Err(error) => Err(port_error(error).into()),
        }
    }
}

/// A store error that the calling operation does not expect, as a port error.
fn port_error(error: SecondFactorError) -> PortError {
    match error {
        SecondFactorError::Port(error) => error,
        other => PortError::Unknown(anyhow::Error::new(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::codes::*;

    #[test]
    fn codes_are_told_apart_by_their_shape() {
        assert!(matches!(CodeInput::parse(" 123 456 "), CodeInput::Totp(digits) if digits == "123456"));
        assert!(matches!(CodeInput::parse("abcd-efgh-ijkl-mnop"), CodeInput::Recovery(_)));
        assert!(matches!(CodeInput::parse("ABCDEFGHIJKLMNOP"), CodeInput::Recovery(_)));
        assert!(matches!(CodeInput::parse("12345"), CodeInput::Malformed));
        assert!(matches!(CodeInput::parse("abcd-efgh-ijkl-mno1"), CodeInput::Malformed), "1 is not base32");
        assert!(matches!(CodeInput::parse(""), CodeInput::Malformed));
    }
}
