//! `ApiError`: the one error type of the HTTP edge, rendered as RFC 9457 `application/problem+json`.
//!
//! Every error response of the service goes through here, including unknown routes and bodies that do not parse.
//! Each carries a stable snake_case `code`. Server errors (5xx) expose nothing but a correlation id, the request's
//! id, while their full cause chain goes to the log under the same id.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use users_domain::accounts::{
    ChangePasswordError, DeleteMeError, RegisterError, ResetPasswordError, UpdateMeError, VerifyEmailError,
};
use users_domain::admin::{CreateUserError, DeleteUserError, GetUserError, ListUsersError, UpdateUserError};
use users_domain::pictures::{PictureError, UploadError};
use users_domain::ports::{ImageError, PortError};
use users_domain::second_factor::{MfaError, MfaLoginError, ResetMfaError};
use users_domain::sessions::{AuthError, LoginError, RefreshError};

use crate::telemetry::current_request_id;

/// How long clients are asked to wait before retrying after a 503.
const RETRY_AFTER_SECONDS: u64 = 5;

/// One entry of a validation problem's `errors` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The request field at fault.
    pub field: String,
    /// What rule it breaks.
    pub message: String,
}

impl FieldError {
    /// A field error from anything displayable.
    pub fn new(field: impl Into<String>, message: impl fmt::Display) -> Self {
        Self { field: field.into(), message: message.to_string() }
    }
}

/// An RFC 9457 problem document, as sent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: `code` identifies the problem.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The HTTP status phrase.
    pub title: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// A human-readable explanation (absent on server errors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A stable machine-readable code such as `invalid_credentials`.
    pub code: &'static str,
    /// The fields at fault, for `validation_failed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The request id to quote when reporting a server error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// For `mfa_required`: the token to send with a code to `POST /login/mfa` (single use, bound to the user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfa_token: Option<String>,
    /// For `mfa_required`: seconds until `mfa_token` expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<i64>,
}

/// An error answered to the client.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: Option<String>,
    errors: Vec<FieldError>,
    retry_after: Option<u64>,
    bearer_challenge: bool,
    /// The pending second step of an `mfa_required` answer (boxed: it is rare, and keeps every `Result` small).
    mfa: Option<Box<users_domain::sessions::MfaToken>>,
    source: Option<anyhow::Error>,
}

impl ApiError {
    /// An error with a status, a code and a detail message.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: Some(detail.into()),
            errors: Vec::new(),
            retry_after: None,
            bearer_challenge: false,
            mfa: None,
            source: None,
        }
    }

    /// 400 `malformed_body`: the body could not be read into the request's shape.
    pub fn malformed_body(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_body", detail)
    }

    /// 422 `validation_failed` with the fields at fault.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "one or more fields break a rule; see errors",
        );
        error.errors = errors;
        error
    }

    /// 401 `invalid_token` with a `WWW-Authenticate: Bearer` challenge.
    pub fn invalid_token() -> Self {
        let mut error = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "a valid access token is required in the Authorization: Bearer header",
        );
        error.bearer_challenge = true;
        error
    }

    /// 403 `account_locked`.
    pub fn account_locked() -> Self {
        Self::new(StatusCode::FORBIDDEN, "account_locked", "this account has been locked by an administrator")
    }

    /// 404 `not_found`.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    /// 415 `unsupported_media_type`.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", detail)
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", detail)
    }

    /// 503 `service_unavailable` with `Retry-After`; the cause is logged.
    pub fn unavailable(source: anyhow::Error) -> Self {
        let mut error = Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "");
        error.detail = None;
        error.retry_after = Some(RETRY_AFTER_SECONDS);
        error.source = Some(source);
        error
    }

    /// 500 `internal_error`; the cause is logged, the client sees only the correlation id.
    pub fn internal(source: anyhow::Error) -> Self {
        let mut error = Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "");
        error.detail = None;
        error.source = Some(source);
        error
    }

    /// The stable code.
    pub const fn code(&self) -> &'static str {
        self.code
    }

    /// The HTTP status.
    pub const fn status(&self) -> StatusCode {
        self.status
    }

    /// What a person may read about it: the detail, never that of a server error (which stays in the log).
    pub fn public_detail(&self) -> Option<&str> {
        if self.status.is_server_error() { None } else { self.detail.as_deref() }
    }

    /// The fields at fault, for `validation_failed`.
    pub fn field_errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// Seconds the client is asked to wait, for 429 and 503.
    pub const fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// The pending second step of an `mfa_required` error.
    pub fn into_mfa_token(self) -> Option<users_domain::sessions::MfaToken> {
        self.mfa.map(|mfa| *mfa)
    }

    /// Logs the cause of a server error, as answering it as a problem would; the pages render their own answer.
    pub fn log_cause(&self) {
        if let Some(source) = &self.source {
            tracing::error!(status = self.status.as_u16(), code = self.code, error = %format!("{source:#}"), "request failed");
        }
    }

    fn problem(&self) -> Problem {
        let server_error = self.status.is_server_error();
        Problem {
            kind: "about:blank",
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: if server_error { None } else { self.detail.clone() },
            code: self.code,
            errors: self.errors.clone(),
            correlation_id: if server_error { current_request_id() } else { None },
            mfa_token: self.mfa.as_ref().map(|mfa| mfa.token.clone()),
            expires_in: self.mfa.as_ref().map(|mfa| mfa.expires_in),
        }
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiError")
            .field("status", &self.status.as_u16())
            .field("code", &self.code)
            .field("detail", &self.detail)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        // `{:#}` prints the whole cause chain on one line.
        self.log_cause();
        let mut response = HttpResponse::build(self.status);
        response.content_type("application/problem+json");
        if let Some(seconds) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        if self.bearer_challenge {
            response
                .insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\"")));
        }
        response.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        response.json(self.problem())
    }
}

impl From<PortError> for ApiError {
    fn from(error: PortError) -> Self {
        match error {
            PortError::Unavailable(source) => Self::unavailable(source),
            PortError::Unknown(source) => Self::internal(source),
        }
    }
}

impl From<LoginError> for ApiError {
    fn from(error: LoginError) -> Self {
        match error {
            LoginError::InvalidCredentials => {
                Self::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "the email or password is wrong")
            }
            LoginError::EmailNotVerified => Self::new(
                StatusCode::FORBIDDEN,
                "email_not_verified",
                "verify your email address with the link we sent before logging in",
            ),
            LoginError::AccountLocked => Self::account_locked(),
            LoginError::RateLimited { retry_after } => Self::rate_limited(retry_after.unsigned_abs()),
            LoginError::SecondFactorRequired(token) => {
                let mut error = Self::new(
                    StatusCode::UNAUTHORIZED,
                    "mfa_required",
                    "the password is right; send a code from the authenticator app with mfa_token to /login/mfa",
                );
                error.mfa = Some(Box::new(token));
                error
            }
            LoginError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::InvalidToken => Self::invalid_token(),
            AuthError::AccountLocked => Self::account_locked(),
            AuthError::Port(error) => error.into(),
        }
    }
}

impl ApiError {
    /// 503 `service_unavailable` with `Retry-After`, for work shed on purpose because a configured bound is
    /// reached. Nothing failed, so unlike [`Self::unavailable`] no error is logged; the caller says what was full.
    pub fn busy() -> Self {
        let mut error = Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "");
        error.detail = None;
        error.retry_after = Some(RETRY_AFTER_SECONDS);
        error
    }

    /// 429 `rate_limited` with `Retry-After` in whole seconds (at least 1).
    pub fn rate_limited(retry_after: std::time::Duration) -> Self {
        let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many attempts; try again later");
        // Whole seconds, rounded up (never 0): a block of 0.4 s advertises 1, a block of exactly 2 s advertises 2.
        error.retry_after = Some((retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1));
        error
    }

    /// 400 `invalid_or_expired_token`, for email and reset links.
    pub fn invalid_link() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_or_expired_token",
            "this link is invalid, expired or already used; ask for a new one",
        )
    }

    /// 409 `email_taken`.
    pub fn email_taken() -> Self {
        Self::new(StatusCode::CONFLICT, "email_taken", "another account uses this email address")
    }

    /// 409 `nickname_taken`.
    pub fn nickname_taken() -> Self {
        Self::new(StatusCode::CONFLICT, "nickname_taken", "another account uses this nickname")
    }

    /// 409 `last_admin`.
    pub fn last_admin() -> Self {
        Self::new(StatusCode::CONFLICT, "last_admin", "this would leave no unlocked ADMIN; promote another ADMIN first")
    }

    /// 403 `invalid_current_password`.
    pub fn invalid_current_password() -> Self {
        Self::new(StatusCode::FORBIDDEN, "invalid_current_password", "the current password is wrong")
    }

    /// 422 `validation_failed` for one field.
    pub fn invalid_field(field: &str, message: impl fmt::Display) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }
}

/// Collects the field errors of one request, so a client learns about every bad field at once.
#[derive(Debug, Default)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    /// Keeps the value of a successful parse, or records the error under `field`.
    pub fn check<T, E: fmt::Display>(&mut self, field: &str, result: Result<T, E>) -> Option<T> {
        result.map_err(|error| self.0.push(FieldError::new(field, error))).ok()
    }

    /// Records an error under `field`.
    pub fn add(&mut self, field: &str, message: impl fmt::Display) {
        self.0.push(FieldError::new(field, message));
    }

    /// `Ok` when nothing was recorded, else a 422 listing every error.
    ///
    /// # Errors
    /// The 422 `validation_failed` problem.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() { Ok(()) } else { Err(ApiError::validation(self.0)) }
    }
}

impl From<RegisterError> for ApiError {
    fn from(error: RegisterError) -> Self {
        match error {
            RegisterError::WeakPassword(error) => Self::invalid_field("password", error),
            RegisterError::NicknameTaken => Self::nickname_taken(),
            RegisterError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl From<VerifyEmailError> for ApiError {
    fn from(error: VerifyEmailError) -> Self {
        match error {
            VerifyEmailError::InvalidToken => Self::invalid_link(),
            VerifyEmailError::EmailTaken => Self::email_taken(),
            VerifyEmailError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl From<RefreshError> for ApiError {
    fn from(error: RefreshError) -> Self {
        match error {
            RefreshError::InvalidToken => Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the refresh token is unknown, expired, revoked or already used",
            ),
            RefreshError::AccountLocked => Self::account_locked(),
            RefreshError::Port(error) => error.into(),
        }
    }
}

impl From<ResetPasswordError> for ApiError {
    fn from(error: ResetPasswordError) -> Self {
        match error {
            ResetPasswordError::InvalidToken => Self::invalid_link(),
            ResetPasswordError::WeakPassword(error) => Self::invalid_field("new_password", error),
            ResetPasswordError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl From<ChangePasswordError> for ApiError {
    fn from(error: ChangePasswordError) -> Self {
        match error {
            ChangePasswordError::InvalidCurrentPassword => Self::invalid_current_password(),
            ChangePasswordError::WeakPassword(error) => Self::invalid_field("new_password", error),
            ChangePasswordError::RateLimited { retry_after } => Self::rate_limited(retry_after.unsigned_abs()),
            // The caller's own account vanished under them: answer as for a revoked token.
            ChangePasswordError::NotFound => Self::invalid_token(),
            ChangePasswordError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl From<UpdateMeError> for ApiError {
    fn from(error: UpdateMeError) -> Self {
        match error {
            UpdateMeError::CurrentPasswordRequired => {
                Self::invalid_field("current_password", "is required to change the email address")
            }
            UpdateMeError::InvalidCurrentPassword => Self::invalid_current_password(),
            UpdateMeError::RateLimited { retry_after } => Self::rate_limited(retry_after.unsigned_abs()),
            UpdateMeError::EmailTaken => Self::email_taken(),
            UpdateMeError::NicknameTaken => Self::nickname_taken(),
            UpdateMeError::NotFound => Self::invalid_token(),
            UpdateMeError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl From<DeleteMeError> for ApiError {
    fn from(error: DeleteMeError) -> Self {
        match error {
            DeleteMeError::InvalidCurrentPassword => Self::invalid_current_password(),
            DeleteMeError::RateLimited { retry_after } => Self::rate_limited(retry_after.unsigned_abs()),
            DeleteMeError::LastAdmin => Self::last_admin(),
            DeleteMeError::NotFound => Self::invalid_token(),
            DeleteMeError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl ApiError {
    /// 403 `forbidden`: the caller's role does not allow the request.
    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "your role does not allow this request")
    }

    /// 500 for an error variant this edge does not know yet (the domain's error enums may grow).
    fn unexpected(error: &dyn std::error::Error) -> Self {
        Self::internal(anyhow::anyhow!("unmapped domain error: {error}"))
    }
}

impl From<users_domain::trail::AuditError> for ApiError {
    fn from(error: users_domain::trail::AuditError) -> Self {
        match error {
            users_domain::trail::AuditError::Forbidden => Self::forbidden(),
            users_domain::trail::AuditError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl From<ListUsersError> for ApiError {
    fn from(error: ListUsersError) -> Self {
        match error {
            ListUsersError::Forbidden => Self::forbidden(),
            ListUsersError::CursorMismatch => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", "cursor: belongs to another sort order")
            }
            ListUsersError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl From<GetUserError> for ApiError {
    fn from(error: GetUserError) -> Self {
        match error {
            GetUserError::Forbidden => Self::forbidden(),
            GetUserError::NotFound => Self::not_found(),
            GetUserError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl From<CreateUserError> for ApiError {
    fn from(error: CreateUserError) -> Self {
        match error {
            CreateUserError::Forbidden => Self::forbidden(),
            CreateUserError::EmailTaken => Self::email_taken(),
            CreateUserError::NicknameTaken => Self::nickname_taken(),
            CreateUserError::WeakPassword(error) => Self::invalid_field("password", error),
            CreateUserError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl From<UpdateUserError> for ApiError {
    fn from(error: UpdateUserError) -> Self {
        match error {
            UpdateUserError::Forbidden => Self::forbidden(),
            UpdateUserError::NotFound => Self::not_found(),
            UpdateUserError::EmailTaken => Self::email_taken(),
            UpdateUserError::NicknameTaken => Self::nickname_taken(),
            UpdateUserError::LastAdmin => Self::last_admin(),
            UpdateUserError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl From<DeleteUserError> for ApiError {
    fn from(error: DeleteUserError) -> Self {
        match error {
            DeleteUserError::Forbidden => Self::forbidden(),
            DeleteUserError::NotFound => Self::not_found(),
            DeleteUserError::LastAdmin => Self::last_admin(),
            DeleteUserError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl From<PictureError> for ApiError {
    fn from(error: PictureError) -> Self {
        match error {
            PictureError::NotFound => Self::not_found(),
            PictureError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl From<UploadError> for ApiError {
    fn from(error: UploadError) -> Self {
        match error {
            UploadError::NotFound => Self::not_found(),
            UploadError::Image(ImageError::UnsupportedType) => {
                Self::unsupported_media_type("only JPEG, PNG, GIF and WebP images are accepted (judged by content)")
            }
            UploadError::Image(ImageError::Invalid(detail)) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_image", detail)
            }
            UploadError::Image(ImageError::Busy) => {
                Self::unavailable(anyhow::anyhow!("image processing saturated or stopping"))
            }
            UploadError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl ApiError {
    /// 409 `mfa_already_enabled`.
    pub fn mfa_already_enabled() -> Self {
        Self::new(StatusCode::CONFLICT, "mfa_already_enabled", "the second factor is already on; turn it off first")
    }

    /// 409 `mfa_not_enabled`.
    pub fn mfa_not_enabled() -> Self {
        Self::new(StatusCode::CONFLICT, "mfa_not_enabled", "the second factor is not on")
    }
}

impl From<MfaError> for ApiError {
    fn from(error: MfaError) -> Self {
        match error {
            MfaError::InvalidCurrentPassword => Self::invalid_current_password(),
            MfaError::InvalidCode => {
                Self::new(StatusCode::FORBIDDEN, "invalid_mfa_code", "the code is wrong or was already used")
            }
            MfaError::RateLimited { retry_after } => Self::rate_limited(retry_after.unsigned_abs()),
            MfaError::AlreadyEnabled => Self::mfa_already_enabled(),
            MfaError::NotEnabled => Self::mfa_not_enabled(),
            MfaError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl From<MfaLoginError> for ApiError {
    fn from(error: MfaLoginError) -> Self {
        match error {
            MfaLoginError::InvalidToken => Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the mfa_token is invalid, expired, used, or out of attempts; log in again",
            ),
            MfaLoginError::InvalidCode => {
                Self::new(StatusCode::UNAUTHORIZED, "invalid_mfa_code", "the code is wrong or was already used")
            }
            MfaLoginError::RateLimited { retry_after } => Self::rate_limited(retry_after.unsigned_abs()),
            MfaLoginError::AccountLocked => Self::account_locked(),
            MfaLoginError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}

impl From<ResetMfaError> for ApiError {
    fn from(error: ResetMfaError) -> Self {
        match error {
            ResetMfaError::Forbidden => Self::forbidden(),
            ResetMfaError::NotFound => Self::not_found(),
            ResetMfaError::NotEnabled => Self::mfa_not_enabled(),
            ResetMfaError::Port(error) => error.into(),
            other => Self::unexpected(&other),
        }
    }
}
