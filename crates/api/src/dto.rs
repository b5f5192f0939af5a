//! Request and response shapes of the HTTP contract (API.md), with their OpenAPI schemas.
//!
//! Request DTOs deny unknown fields, so a field a caller may not set is refused instead of silently ignored.
//! Response DTOs are built from domain values and never carry a hash, token or counter that API.md does not list.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use users_domain::User;
use users_domain::session::TokenPair;

/// `POST /login` as JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginJson {
    /// The account's email address.
    #[schema(example = "ada@example.com")]
    pub email: String,
    /// The password.
    #[schema(example = "violet-kettle-orbit-97", format = Password)]
    pub password: String,
}

/// `POST /login` as an OAuth2 password-flow form (what Swagger UI's Authorize button sends).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginForm {
    /// The account's email address.
    pub username: String,
    /// The password.
    #[schema(format = Password)]
    pub password: String,
    /// Must be `password` when sent.
    pub grant_type: Option<String>,
    /// Accepted and ignored: access is decided by role, not scopes.
    pub scope: Option<String>,
    /// Accepted and ignored: this is a first-party login.
    pub client_id: Option<String>,
    /// Accepted and ignored.
    pub client_secret: Option<String>,
}

/// A successful login or refresh.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// The signed access token, for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `bearer`.
    #[schema(example = "bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    #[schema(example = 900)]
    pub expires_in: i64,
    /// The opaque refresh token; single use, rotated on every refresh.
    pub refresh_token: String,
}

impl From<TokenPair> for TokenResponse {
    fn from(pair: TokenPair) -> Self {
        Self {
            access_token: pair.access_token.expose().to_owned(),
            token_type: "bearer",
            expires_in: pair.expires_in,
            refresh_token: pair.refresh_token.expose().to_owned(),
        }
    }
}

/// A user as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserResponse {
    /// The user's id.
    pub id: Uuid,
    /// The login address.
    pub email: String,
    /// The public nickname.
    pub nickname: String,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Biography.
    pub bio: Option<String>,
    /// `{PUBLIC_BASE_URL}/profiles/{id}/picture` when a picture exists.
    pub profile_picture_url: Option<String>,
    /// LinkedIn profile.
    pub linkedin_profile_url: Option<String>,
    /// GitHub profile.
    pub github_profile_url: Option<String>,
    /// `ANONYMOUS`, `AUTHENTICATED`, `MANAGER` or `ADMIN`.
    #[schema(example = "AUTHENTICATED")]
    pub role: String,
    /// Professional status.
    pub is_professional: bool,
    /// When professional status last changed.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub professional_status_updated_at: Option<OffsetDateTime>,
    /// Whether the email address is verified.
    pub email_verified: bool,
    /// A new address waiting for confirmation.
    pub pending_email: Option<String>,
    /// Locked by an administrator.
    pub is_locked: bool,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    /// Last successful login.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_login_at: Option<OffsetDateTime>,
}

impl UserResponse {
    /// Shows a user; picture URLs are built from `PUBLIC_BASE_URL`, never from request headers.
    pub fn new(user: &User, public_base_url: &str) -> Self {
        Self {
            id: user.id.as_uuid(),
            email: user.email.as_str().to_owned(),
            nickname: user.nickname.as_str().to_owned(),
            first_name: user.first_name.as_ref().map(|n| n.as_str().to_owned()),
            last_name: user.last_name.as_ref().map(|n| n.as_str().to_owned()),
            bio: user.bio.as_ref().map(|b| b.as_str().to_owned()),
            profile_picture_url: user
                .profile_picture_id
                .map(|_| format!("{public_base_url}/profiles/{}/picture", user.id)),
            linkedin_profile_url: user.linkedin_profile_url.as_ref().map(|u| u.as_str().to_owned()),
            github_profile_url: user.github_profile_url.as_ref().map(|u| u.as_str().to_owned()),
            role: user.role.as_str().to_owned(),
            is_professional: user.is_professional,
            professional_status_updated_at: user.professional_status_updated_at,
            email_verified: user.email_verified,
            pending_email: user.pending_email.as_ref().map(|e| e.as_str().to_owned()),
            is_locked: user.is_locked,
            created_at: user.created_at,
            updated_at: user.updated_at,
            last_login_at: user.last_login_at,
        }
    }
}

/// A simple status answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    /// `ok`, or what is wrong.
    pub status: &'static str,
}
