//! The second factor: TOTP setup and confirmation, recovery codes, turning it off (by its owner or an
//! administrator), and the second step of a login.

use actix_web::{HttpRequest, HttpResponse, web};
use users_domain::ports::Ports;
use users_domain::second_factor::RecoveryCode;

use super::auth::token_response;
use super::users::parse_id;
use super::{Caller, SMALL_BODY_LIMIT, Staff, client_info, parse_json, read_body};
use crate::dto::{
    MfaCodeRequest, MfaLoginRequest, RecoveryCodesResponse, TokenResponse, TotpConfirmRequest, TotpSetupRequest,
    TotpSetupResponse,
};
use crate::error::{ApiError, Problem};
use crate::openapi::{BearerErrors, BodyErrors, NotFound, RateLimited, Unavailable};
use crate::state::AppState;

/// A secret-bearing answer: never cached.
fn no_store(body: impl serde::Serialize) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .insert_header((actix_web::http::header::PRAGMA, "no-cache"))
        .json(body)
}

fn codes_response(codes: &[RecoveryCode]) -> HttpResponse {
    no_store(RecoveryCodesResponse { recovery_codes: codes.iter().map(RecoveryCode::display).collect() })
}

/// Start setting up TOTP: a new secret, not active until confirmed with a code (a new setup replaces an
/// unconfirmed one).
#[utoipa::path(
    post, path = "/me/mfa/totp/setup", tag = "second factor", request_body = TotpSetupRequest,
    security(("oauth2" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The secret, shown once", body = TotpSetupResponse),
        BodyErrors,
        BearerErrors,
        (status = 403, description = "`invalid_current_password` or `account_locked`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`mfa_already_enabled`", body = Problem, content_type = "application/problem+json"),
        RateLimited,
        Unavailable,
    )
)]
pub async fn setup<P: Ports>(
    state: web::Data<AppState<P>>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    let request: TotpSetupRequest = parse_json(&req, &body)?;
    let setup = state.service.setup_totp(&caller.0, &request.current_password).await?;
    Ok(no_store(TotpSetupResponse { secret: setup.secret, otpauth_uri: setup.otpauth_uri }))
}

/// Confirm the TOTP setup with a current code: the second factor is on, and ten recovery codes are returned (shown
/// only here). Mails a notice.
#[utoipa::path(
    post, path = "/me/mfa/totp/confirm", tag = "second factor", request_body = TotpConfirmRequest,
    security(("oauth2" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "On; the recovery codes, shown once", body = RecoveryCodesResponse),
        BodyErrors,
        BearerErrors,
        (status = 403, description = "`invalid_mfa_code` (wrong or already used) or `account_locked`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`mfa_already_enabled`, or `mfa_not_enabled` when no setup is waiting", body = Problem, content_type = "application/problem+json"),
        RateLimited,
        Unavailable,
    )
)]
pub async fn confirm<P: Ports>(
    state: web::Data<AppState<P>>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    let request: TotpConfirmRequest = parse_json(&req, &body)?;
    let codes = state.service.confirm_totp(&caller.0, &request.code).await?;
    Ok(codes_response(&codes))
}

/// Replace the recovery codes (the old ones stop working), with the current password and a TOTP or recovery code.
#[utoipa::path(
    post, path = "/me/mfa/recovery-codes", tag = "second factor", request_body = MfaCodeRequest,
    security(("oauth2" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The new recovery codes, shown once", body = RecoveryCodesResponse),
        BodyErrors,
        BearerErrors,
        (status = 403, description = "`invalid_current_password`, `invalid_mfa_code` or `account_locked`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`mfa_not_enabled`", body = Problem, content_type = "application/problem+json"),
        RateLimited,
        Unavailable,
    )
)]
pub async fn recovery_codes<P: Ports>(
    state: web::Data<AppState<P>>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    let request: MfaCodeRequest = parse_json(&req, &body)?;
    let codes = state.service.regenerate_recovery_codes(&caller.0, &request.current_password, &request.code).await?;
    Ok(codes_response(&codes))
}

/// Turn the second factor off, with the current password and a TOTP or recovery code. Mails a notice.
#[utoipa::path(
    delete, path = "/me/mfa", tag = "second factor", request_body = MfaCodeRequest,
    security(("oauth2" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Off"),
        BodyErrors,
        BearerErrors,
        (status = 403, description = "`invalid_current_password`, `invalid_mfa_code` or `account_locked`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`mfa_not_enabled`", body = Problem, content_type = "application/problem+json"),
        RateLimited,
        Unavailable,
    )
)]
pub async fn disable<P: Ports>(
    state: web::Data<AppState<P>>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    let request: MfaCodeRequest = parse_json(&req, &body)?;
    state.service.disable_totp(&caller.0, &request.current_password, &request.code).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The second step of a login: the `mfa_token` of the `mfa_required` answer with a TOTP or recovery code. Each
/// try uses one of the token's 5 attempts; a used recovery code mails a notice.
#[utoipa::path(
    post, path = "/login/mfa", tag = "accounts", request_body = MfaLoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        BodyErrors,
        (status = 401, description = "`invalid_mfa_code` (wrong or replayed code; the token lives on), or `invalid_token` (unknown, expired, used or out of attempts: log in again)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`account_locked`", body = Problem, content_type = "application/problem+json"),
        RateLimited,
        Unavailable,
    )
)]
pub async fn login_mfa<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    state.limit("login-mfa", &req).await?;
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    let request: MfaLoginRequest = parse_json(&req, &body)?;
    let pair =
        state.service.login_second_step(&request.mfa_token, &request.code, client_info(&req, &state.clients)).await?;
    Ok(token_response(pair))
}

/// Turn a user's second factor off (ADMIN, or MANAGER for users below MANAGER; not oneself). Mails the user.
#[utoipa::path(
    delete, path = "/users/{id}/mfa", tag = "users", security(("oauth2" = []), ("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Off"),
        BearerErrors,
        (status = 403, description = "`forbidden`: the caller is not a MANAGER or ADMIN, may not do this to that user, or names themself (they use `DELETE /me/mfa`); or `account_locked`", body = Problem, content_type = "application/problem+json"),
        NotFound,
        (status = 409, description = "`mfa_not_enabled`", body = Problem, content_type = "application/problem+json"),
        Unavailable,
    )
)]
pub async fn reset<P: Ports>(
    state: web::Data<AppState<P>>,
    staff: Staff,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    state.service.reset_second_factor(&staff.0, id).await?;
    Ok(HttpResponse::NoContent().finish())
}
