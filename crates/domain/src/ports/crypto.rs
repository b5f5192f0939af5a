//! Capabilities the domain uses but does not implement: password hashing, access-token signing and the clock.

use std::future::Future;

use time::OffsetDateTime;

use super::PortError;
use crate::session::{AccessClaims, AccessToken};
use crate::user::{Password, PasswordCandidate, PasswordError, PasswordHash};

/// Password hashing (argon2id in production).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait PasswordHasher: Send + Sync + 'static {
    /// Hashes a new password with a fresh salt.
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when the hasher is saturated and sheds load, [`PortError::Unknown`] otherwise.
    fn hash(&self, password: Password) -> impl Future<Output = Result<PasswordHash, PortError>> + Send;

    /// Runs the strength half of the password policy, [`PasswordCandidate::judge`], where CPU-bound work belongs
    /// (off the async workers, behind the same limit as hashing): the estimator can take hundreds of milliseconds on
    /// adversarial input, which must never stall the async workers.
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when the hasher is saturated, [`PortError::Unknown`] when the work cannot run.
    /// A weak password is the inner `Err`.
    fn judge(
        &self,
        candidate: PasswordCandidate,
        clues: Vec<String>,
    ) -> impl Future<Output = Result<Result<Password, PasswordError>, PortError>> + Send;

    /// A hash in the current format that no password matches (a random output), cheap to make: what an account
    /// gets when the password someone set on it must stop working before anyone has chosen a new one.
    fn unusable(&self) -> PasswordHash;

    /// Checks a candidate (already NFKC-normalised) against a stored hash. With `None` it verifies against a fixed
    /// dummy hash and answers `false`, so that an unknown account costs the same time as a wrong password.
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when the hasher is saturated, [`PortError::Unknown`] for a malformed stored hash.
    fn verify(
        &self,
        candidate: String,
        hash: Option<PasswordHash>,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;
}

/// Why an access token was refused. One variant on purpose: callers learn nothing about which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid access token")]
pub struct InvalidToken;

/// Signing and checking access tokens (ES256 JWTs in production).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait TokenCodec: Send + Sync + 'static {
    /// Signs the claims into a compact token.
    ///
    /// # Errors
    /// [`PortError`] when signing fails.
    fn issue(&self, claims: &AccessClaims) -> Result<AccessToken, PortError>;

    /// Checks the signature first, then the registered claims (`exp`, `iss`, `aud`, `typ`), and returns the
    /// domain's claims. Expiry is judged against `now`.
    ///
    /// # Errors
    /// [`InvalidToken`] for anything but a valid, unexpired token of this deployment.
    fn verify(&self, token: &str, now: OffsetDateTime) -> Result<AccessClaims, InvalidToken>;
}

/// The source of the current time.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait Clock: Send + Sync + 'static {
    /// Now, in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}
