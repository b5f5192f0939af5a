//! Request and response shapes of the HTTP contract (the generated OpenAPI document), with their schemas.
//!
//! Request DTOs deny unknown fields, so a field a caller may not set is refused instead of silently ignored.
//! Response DTOs are built from domain values and never carry a hash, token or counter.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use users_domain::accounts::{MeUpdate, Registration};
use users_domain::admin::{AdminChanges, AdminCreate};
use users_domain::permissions::Role;
use users_domain::ports::ProfileChanges;
use users_domain::session::TokenPair;
use users_domain::sessions::SessionSummary;
use users_domain::{Bio, EmailAddress, Nickname, PersonName, ProfileUrl, ProfileUrlKind, User};

use crate::error::{ApiError, FieldErrors};
use crate::openapi;

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
    #[schema(value_type = String, required = false, pattern = "^password$")]
    pub grant_type: Option<String>,
    /// Accepted and ignored: access is decided by role, not scopes.
    #[schema(value_type = String, required = false)]
    pub scope: Option<String>,
    /// Accepted and ignored: this is a first-party login.
    #[schema(value_type = String, required = false)]
    pub client_id: Option<String>,
    /// Accepted and ignored.
    #[schema(value_type = String, required = false)]
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
    /// Whether a second factor (TOTP) is on.
    pub mfa_enabled: bool,
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
            mfa_enabled: user.mfa_enabled,
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

/// Reads a field that may be absent (`None`), `null` (`Some(None)`) or a value (`Some(Some(v))`).
fn double_option<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// `POST /register`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The address to verify; it becomes the login.
    #[schema(schema_with = openapi::email)]
    pub email: String,
    /// 15 to 128 characters (counted after NFKC), not common, not built from your own details.
    #[schema(schema_with = openapi::new_password)]
    pub password: String,
    /// 3-32 ASCII letters, digits, `_` or `-`; generated as `adjective_animal_NNN` when absent.
    #[schema(schema_with = openapi::optional_nickname)]
    pub nickname: Option<String>,
    /// At most 100 characters.
    #[schema(schema_with = openapi::person_name)]
    pub first_name: Option<String>,
    /// At most 100 characters.
    #[schema(schema_with = openapi::person_name)]
    pub last_name: Option<String>,
    /// At most 500 characters.
    #[schema(schema_with = openapi::bio)]
    pub bio: Option<String>,
    /// An `https://` URL on linkedin.com.
    #[schema(schema_with = openapi::linkedin_url)]
    pub linkedin_profile_url: Option<String>,
    /// An `https://` URL on github.com.
    #[schema(schema_with = openapi::github_url)]
    pub github_profile_url: Option<String>,
}

/// A request naming only an email address (`/verify-email/resend`, `/password/forgot`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailRequest {
    /// The account's address.
    #[schema(schema_with = openapi::email)]
    pub email: String,
}

/// A request carrying a refresh token (`/token/refresh`, `/logout`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The opaque refresh token from the last login or refresh.
    pub refresh_token: String,
}

/// `POST /password/reset`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetPasswordRequest {
    /// The token from the reset link.
    pub token: String,
    /// The new password.
    #[schema(schema_with = openapi::new_password)]
    pub new_password: String,
}

/// `POST /me/password`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    /// The password in use now.
    #[schema(format = Password)]
    pub current_password: String,
    /// The new password.
    #[schema(schema_with = openapi::new_password)]
    pub new_password: String,
}

/// `PATCH /me`: only the fields present change; `null` clears an optional field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeRequest {
    /// A new nickname (cannot be cleared).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, schema_with = openapi::new_nickname)]
    pub nickname: Option<Option<String>>,
    /// A new first name, or `null` to clear it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, schema_with = openapi::person_name)]
    pub first_name: Option<Option<String>>,
    /// A new last name, or `null` to clear it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, schema_with = openapi::person_name)]
    pub last_name: Option<Option<String>>,
    /// A new biography, or `null` to clear it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, schema_with = openapi::bio)]
    pub bio: Option<Option<String>>,
    /// A new LinkedIn URL, or `null` to clear it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, schema_with = openapi::linkedin_url)]
    pub linkedin_profile_url: Option<Option<String>>,
    /// A new GitHub URL, or `null` to clear it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, schema_with = openapi::github_url)]
    pub github_profile_url: Option<Option<String>>,
    /// A new email address: shown as `pending_email` until the link mailed to it is followed.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, schema_with = openapi::email)]
    pub email: Option<Option<String>>,
    /// Required with `email`.
    #[schema(format = Password)]
    pub current_password: Option<String>,
}

/// `DELETE /me`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteMeRequest {
    /// The password in use now.
    #[schema(format = Password)]
    pub current_password: String,
}

/// `POST /me/mfa/totp/setup`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpSetupRequest {
    /// The password in use now.
    #[schema(format = Password)]
    pub current_password: String,
}

/// A new, unconfirmed TOTP secret: shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct TotpSetupResponse {
    /// The secret in base32, for typing into an authenticator app.
    #[schema(example = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")]
    pub secret: String,
    /// The `otpauth://totp/...` URI (issuer and email named), for a QR code.
    pub otpauth_uri: String,
}

/// `POST /me/mfa/totp/confirm`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpConfirmRequest {
    /// The current six-digit code of the new secret.
    #[schema(example = "123456")]
    pub code: String,
}

/// `POST /me/mfa/recovery-codes` and `DELETE /me/mfa`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaCodeRequest {
    /// The password in use now.
    #[schema(format = Password)]
    pub current_password: String,
    /// A current TOTP code, or an unused recovery code.
    pub code: String,
}

/// `POST /login/mfa`: the second step of a login.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaLoginRequest {
    /// The `mfa_token` of the `mfa_required` answer to the password.
    pub mfa_token: String,
    /// A current TOTP code, or an unused recovery code.
    pub code: String,
}

/// Single-use recovery codes: shown only in this answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodesResponse {
    /// Ten codes, each of the form `abcd-efgh-ijkl-mnop`, each working once in place of a TOTP code.
    pub recovery_codes: Vec<String>,
}

/// A plain confirmation.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageResponse {
    /// What happened, for humans.
    pub message: &'static str,
}

/// One of the caller's sessions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionResponse {
    /// The session's id (the `sid` of its access tokens).
    pub id: Uuid,
    /// When the user logged in.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When the session was last refreshed.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_used_at: OffsetDateTime,
    /// The `User-Agent` at login.
    pub user_agent: Option<String>,
    /// The client address at login.
    pub ip: Option<String>,
    /// Whether this is the session of the request.
    pub current: bool,
}

/// The caller's sessions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionsResponse {
    /// Active sessions, newest first.
    pub items: Vec<SessionResponse>,
}

/// Parses an optional text field, treating an empty string like an absent one.
fn optional<T, E>(
    errors: &mut FieldErrors,
    field: &str,
    raw: Option<&str>,
    parse: impl FnOnce(&str) -> Result<Option<T>, E>,
) -> Option<T>
where
    E: std::fmt::Display,
{
    raw.and_then(|raw| errors.check(field, parse(raw)).flatten())
}

/// Parses a field of a partial update: absent stays absent, `null` (or an empty string) clears, a value is parsed.
#[expect(clippy::option_option, reason = "absent, cleared and set are three different requests")]
fn change<T, E>(
    errors: &mut FieldErrors,
    field: &str,
    raw: Option<Option<String>>,
    parse: impl FnOnce(&str) -> Result<Option<T>, E>,
) -> Option<Option<T>>
where
    E: std::fmt::Display,
{
    match raw {
        None => None,
        Some(None) => Some(None),
        Some(Some(raw)) => errors.check(field, parse(&raw)),
    }
}

impl RegisterRequest {
    /// Parses every field, reporting all bad ones at once (422).
    ///
    /// # Errors
    /// 422 `validation_failed`.
    pub fn try_into_domain(self) -> Result<Registration, ApiError> {
        let mut errors = FieldErrors::default();
        let email = errors.check("email", EmailAddress::parse(&self.email));
        let nickname = self.nickname.as_deref().and_then(|raw| errors.check("nickname", Nickname::parse(raw)));
        let first_name = optional(&mut errors, "first_name", self.first_name.as_deref(), PersonName::parse);
        let last_name = optional(&mut errors, "last_name", self.last_name.as_deref(), PersonName::parse);
        let bio = optional(&mut errors, "bio", self.bio.as_deref(), Bio::parse);
        let linkedin_profile_url =
            optional(&mut errors, "linkedin_profile_url", self.linkedin_profile_url.as_deref(), |raw| {
                ProfileUrl::parse(raw, ProfileUrlKind::LinkedIn)
            });
        let github_profile_url =
            optional(&mut errors, "github_profile_url", self.github_profile_url.as_deref(), |raw| {
                ProfileUrl::parse(raw, ProfileUrlKind::GitHub)
            });
        errors.finish()?;
        let email = email.ok_or_else(|| ApiError::invalid_field("email", "is required"))?;
        Ok(Registration {
            email,
            password: self.password,
            nickname,
            first_name,
            last_name,
            bio,
            linkedin_profile_url,
            github_profile_url,
        })
    }
}

impl UpdateMeRequest {
    /// Parses the fields present, reporting all bad ones at once (422).
    ///
    /// # Errors
    /// 422 `validation_failed`.
    pub fn try_into_domain(self) -> Result<MeUpdate, ApiError> {
        let mut errors = FieldErrors::default();
        let email = new_email(&mut errors, self.email);
        let profile = profile_changes(
            &mut errors,
            [
                self.nickname,
                self.first_name,
                self.last_name,
                self.bio,
                self.linkedin_profile_url,
                self.github_profile_url,
            ],
        );
        errors.finish()?;
        Ok(MeUpdate { profile, email, current_password: self.current_password })
    }
}

impl SessionResponse {
    /// Shows one of the caller's sessions.
    pub fn new(summary: &SessionSummary) -> Self {
        let session = &summary.session;
        Self {
            id: session.id.as_uuid(),
            created_at: session.created_at,
            last_used_at: session.last_used_at,
            user_agent: session.user_agent.clone(),
            ip: session.ip.clone(),
            current: summary.current,
        }
    }
}

/// `POST /users`: a registration plus the role and verification state, within the caller's rights.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminCreateRequest {
    /// The login address.
    #[schema(schema_with = openapi::email)]
    pub email: String,
    /// The initial password (same policy as registration).
    #[schema(schema_with = openapi::new_password)]
    pub password: String,
    /// Generated when absent.
    #[schema(schema_with = openapi::optional_nickname)]
    pub nickname: Option<String>,
    /// First name.
    #[schema(schema_with = openapi::person_name)]
    pub first_name: Option<String>,
    /// Last name.
    #[schema(schema_with = openapi::person_name)]
    pub last_name: Option<String>,
    /// Biography.
    #[schema(schema_with = openapi::bio)]
    pub bio: Option<String>,
    /// LinkedIn profile.
    #[schema(schema_with = openapi::linkedin_url)]
    pub linkedin_profile_url: Option<String>,
    /// GitHub profile.
    #[schema(schema_with = openapi::github_url)]
    pub github_profile_url: Option<String>,
    /// `ANONYMOUS`, `AUTHENTICATED`, `MANAGER` or `ADMIN` (a MANAGER may give at most `AUTHENTICATED`).
    #[schema(schema_with = openapi::role)]
    pub role: Option<String>,
    /// Whether the address counts as verified; when false (the default) a verification mail is sent.
    pub email_verified: Option<bool>,
}

/// `PATCH /users/{id}` (and `PUT`): profile fields plus the administrative flags, each checked against the
/// caller's rights. Only the fields present change; `null` clears an optional profile field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminUpdateRequest {
    /// A new nickname.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, schema_with = openapi::new_nickname)]
    pub nickname: Option<Option<String>>,
    /// A new first name, or `null`.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, schema_with = openapi::person_name)]
    pub first_name: Option<Option<String>>,
    /// A new last name, or `null`.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, schema_with = openapi::person_name)]
    pub last_name: Option<Option<String>>,
    /// A new biography, or `null`.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, schema_with = openapi::bio)]
    pub bio: Option<Option<String>>,
    /// A new LinkedIn URL, or `null`.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, schema_with = openapi::linkedin_url)]
    pub linkedin_profile_url: Option<Option<String>>,
    /// A new GitHub URL, or `null`.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, schema_with = openapi::github_url)]
    pub github_profile_url: Option<Option<String>>,
    /// A new role.
    #[schema(schema_with = openapi::role)]
    pub role: Option<String>,
    /// Grant or withdraw professional status (granting mails the user).
    pub is_professional: Option<bool>,
    /// Lock or unlock (locking mails the user; it does not end sessions, but every request answers 403).
    pub is_locked: Option<bool>,
    /// Mark the address verified or not.
    pub email_verified: Option<bool>,
    /// A new login address, effective at once (409 `email_taken` when another account has it). It counts as
    /// unverified, and gets a verification link, unless the same request sets `email_verified: true`; the old
    /// address is told. It cannot be cleared (`null` is refused), and not set on oneself (403: one's own address
    /// changes through `PATCH /me`, with the current password).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, schema_with = openapi::email)]
    pub email: Option<Option<String>>,
}

/// Links of a page of users.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PageLinks {
    /// This page.
    #[serde(rename = "self")]
    pub this: String,
    /// The next page, when there is one.
    pub next: Option<String>,
}

/// `GET /users`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserPageResponse {
    /// The users of this page.
    pub items: Vec<UserResponse>,
    /// The opaque cursor of the next page, when there is one.
    pub next_cursor: Option<String>,
    /// Links to this page and the next.
    pub links: PageLinks,
}

/// The raw profile fields of a partial update, in the order of [`ProfileChanges`].
type RawProfile = [Option<Option<String>>; 6];

/// Parses the profile fields of a partial update (`PATCH /me`, `PATCH /users/{id}`).
/// A new address in a partial update: absent is no change, `null` is refused (an account always has one).
fn new_email(errors: &mut FieldErrors, raw: Option<Option<String>>) -> Option<EmailAddress> {
    match raw {
        None => None,
        Some(None) => {
            errors.add("email", "cannot be cleared");
            None
        }
        Some(Some(raw)) => errors.check("email", EmailAddress::parse(&raw)),
    }
}

fn profile_changes(errors: &mut FieldErrors, raw: RawProfile) -> ProfileChanges {
    let [nickname, first, last, bio, linkedin, github] = raw;
    let nickname = match nickname {
        None => None,
        Some(None) => {
            errors.add("nickname", "cannot be cleared");
            None
        }
        Some(Some(raw)) => errors.check("nickname", Nickname::parse(&raw)),
    };
    ProfileChanges {
        nickname,
        first_name: change(errors, "first_name", first, PersonName::parse),
        last_name: change(errors, "last_name", last, PersonName::parse),
        bio: change(errors, "bio", bio, Bio::parse),
        linkedin_profile_url: change(errors, "linkedin_profile_url", linkedin, |raw| {
            ProfileUrl::parse(raw, ProfileUrlKind::LinkedIn)
        }),
        github_profile_url: change(errors, "github_profile_url", github, |raw| {
            ProfileUrl::parse(raw, ProfileUrlKind::GitHub)
        }),
    }
}

impl AdminCreateRequest {
    /// Parses every field, reporting all bad ones at once (422).
    ///
    /// # Errors
    /// 422 `validation_failed`.
    pub fn try_into_domain(self) -> Result<AdminCreate, ApiError> {
        let role = match self.role.as_deref().map(Role::parse) {
            None => None,
            Some(Ok(role)) => Some(role),
            Some(Err(error)) => return Err(ApiError::invalid_field("role", error)),
        };
        let registration = RegisterRequest {
            email: self.email,
            password: self.password,
            nickname: self.nickname,
            first_name: self.first_name,
            last_name: self.last_name,
            bio: self.bio,
            linkedin_profile_url: self.linkedin_profile_url,
            github_profile_url: self.github_profile_url,
        }
        .try_into_domain()?;
        Ok(AdminCreate { registration, role, email_verified: self.email_verified.unwrap_or(false) })
    }
}

impl AdminUpdateRequest {
    /// Parses the fields present, reporting all bad ones at once (422).
    ///
    /// # Errors
    /// 422 `validation_failed`.
    pub fn try_into_domain(self) -> Result<AdminChanges, ApiError> {
        let mut errors = FieldErrors::default();
        let role = self.role.as_deref().and_then(|raw| errors.check("role", Role::parse(raw)));
        let profile = profile_changes(
            &mut errors,
            [
                self.nickname,
                self.first_name,
                self.last_name,
                self.bio,
                self.linkedin_profile_url,
                self.github_profile_url,
            ],
        );
        let email = new_email(&mut errors, self.email);
        errors.finish()?;
        Ok(AdminChanges {
            profile,
            role,
            is_professional: self.is_professional,
            is_locked: self.is_locked,
            email_verified: self.email_verified,
            email,
        })
    }
}

/// An event of the audit trail, as `GET /audit`, `GET /me/activity` and webhook deliveries (`data`) show it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventResponse {
    /// The event's id (time-ordered); also the `webhook-id` of its deliveries.
    pub id: Uuid,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// What happened, such as `user.registered` or `login.failed`.
    #[serde(rename = "type")]
    #[schema(example = "login.succeeded")]
    pub kind: String,
    /// Who acted, when known.
    pub actor_id: Option<Uuid>,
    /// Whom it concerns, when anyone.
    pub subject_id: Option<Uuid>,
    /// The session the actor acted through.
    pub session_id: Option<Uuid>,
    /// The client's address.
    pub ip: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
    /// What else is worth knowing (changed field names, a role's `from`/`to`, ...); never a secret.
    #[schema(value_type = Object)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl From<&users_domain::audit::AuditEvent> for EventResponse {
    fn from(event: &users_domain::audit::AuditEvent) -> Self {
        Self {
            id: event.id,
            at: event.at,
            kind: event.kind.as_str().to_owned(),
            actor_id: event.actor_id.map(|id| id.as_uuid()),
            subject_id: event.subject_id.map(|id| id.as_uuid()),
            session_id: event.session_id.map(|id| id.as_uuid()),
            ip: event.ip.clone(),
            user_agent: event.user_agent.clone(),
            details: event.details.clone(),
        }
    }
}

/// `GET /audit` and `GET /me/activity`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPageResponse {
    /// The events of this page, newest first.
    pub items: Vec<EventResponse>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
    /// This page and the next.
    pub links: PageLinks,
}
