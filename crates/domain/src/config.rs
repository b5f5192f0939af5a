//! The settings of the domain, with their defaults: the one place each default is written. The binary's
//! configuration starts from [`ServiceConfig::default`] and overrides what the environment sets.

use time::Duration;

use crate::ports::BackoffPolicy;
use crate::user::PasswordPolicy;

/// The settings the service works with, read from configuration by the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Lifetime of access tokens.
    pub access_token_ttl: Duration,
    /// Absolute lifetime of a session and its refresh tokens.
    pub refresh_token_ttl: Duration,
    /// A session unused for this long can no longer be refreshed.
    pub refresh_token_idle_ttl: Duration,
    /// How long after its exchange a refresh token may be presented again to get a fresh pair for its session
    /// (a retry whose answer was lost), while the token it was exchanged for is unused; zero makes every reuse
    /// revoke the family.
    pub refresh_reuse_grace: Duration,
    /// Lifetime of verification links (registration and email change).
    pub verify_token_ttl: Duration,
    /// Lifetime of password reset links.
    pub reset_token_ttl: Duration,
    /// The password policy.
    pub password_policy: PasswordPolicy,
    /// Backoff after repeated login failures for one email.
    pub login_backoff: BackoffPolicy,
    /// `PUBLIC_BASE_URL`, where the service is reached (picture URLs, the issuer of tokens).
    pub public_base_url: String,
    /// `APP_BASE_URL`, the start of every link in mails (the same paths), so a frontend on another origin can serve
    /// them; `None` uses `public_base_url`.
    pub app_base_url: Option<String>,
    /// The issuer an authenticator app shows beside a TOTP account.
    pub totp_issuer: String,
    /// How long a login waits for its second step.
    pub mfa_token_ttl: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            access_token_ttl: Duration::minutes(15),
            refresh_token_ttl: Duration::days(30),
            refresh_token_idle_ttl: Duration::days(7),
            refresh_reuse_grace: Duration::ZERO,
            verify_token_ttl: Duration::hours(24),
            reset_token_ttl: Duration::minutes(15),
            password_policy: PasswordPolicy::default(),
            login_backoff: BackoffPolicy::default(),
            public_base_url: "http://localhost:8080".to_owned(),
            app_base_url: None,
            totp_issuer: "user-management".to_owned(),
            mfa_token_ttl: Duration::minutes(5),
        }
    }
}

impl ServiceConfig {
    /// The base of the links in mails: `app_base_url`, else `public_base_url`.
    #[must_use]
    pub fn mail_base_url(&self) -> &str {
        self.app_base_url.as_deref().unwrap_or(&self.public_base_url)
    }
}
