//! Accounts and sessions: registration and verification, refresh and logout, sessions, password reset and
//! change, and the caller's own profile.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use users_domain::accounts::EmailConfirmation;
use users_domain::session::SessionId;
use users_domain::{EmailAddress, UserId};
use uuid::Uuid;

use super::auth::token_response;
use super::{Caller, SMALL_BODY_LIMIT, client_info, media_type, parse_json, read_body};
use crate::dto::{
    ChangePasswordRequest, DeleteMeRequest, EmailRequest, MessageResponse, RefreshRequest, RegisterRequest,
    ResetPasswordRequest, SessionResponse, SessionsResponse, TokenResponse, UpdateMeRequest, UserResponse,
};
use crate::error::{ApiError, Problem};
use crate::openapi::{BearerErrors, BodyErrors, NotFound, RateLimited, Unavailable};
use crate::state::AppState;
use users_domain::ports::Ports;

/// The longest email or reset token accepted in a link; ours are 43 characters.
const LINK_TOKEN_MAX: usize = 128;

/// The one answer of the enumeration-safe routes.
fn accepted(message: &'static str) -> HttpResponse {
    HttpResponse::Accepted().json(MessageResponse { message })
}

fn parse_email(raw: &str) -> Result<EmailAddress, ApiError> {
    EmailAddress::parse(raw).map_err(|error| ApiError::invalid_field("email", error))
}

/// The email of an enumeration-safe request (`{email}`), after the per-IP limit of its route.
async fn limited_email_request<P: Ports>(
    state: &AppState<P>,
    req: &HttpRequest,
    payload: web::Payload,
    route: &'static str,
) -> Result<EmailAddress, ApiError> {
    state.limit(route, req).await?;
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    parse_email(&parse_json::<EmailRequest>(req, &body)?.email)
}

/// Register a new account.
///
/// Answers 202 with the same body whether or not the address already has an account; a new account gets a
/// verification mail, an existing one's owner gets an "already registered" mail.
#[utoipa::path(
    post, path = "/register", tag = "accounts", request_body = RegisterRequest,
    responses(
        (status = 202, description = "Accepted; check your mail", body = MessageResponse),
        BodyErrors,
        (status = 409, description = "`nickname_taken` (nicknames are public)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, including a weak password", body = Problem, content_type = "application/problem+json"),
        RateLimited,
        Unavailable,
    )
)]
pub async fn register<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    state.limit("register", &req).await?;
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    let registration = parse_json::<RegisterRequest>(&req, &body)?.try_into_domain()?;
    state.service.register(registration, client_info(&req, &state.clients)).await?;
    Ok(accepted("If this address can be registered, a verification link is on its way."))
}

/// Follow the link of a verification mail (registration or email change).
///
/// A browser (an `Accept` header that prefers `text/html` to `application/json`) gets the 200 and 400 answers as a
/// short HTML page for the person who clicked the link; everything else gets JSON.
#[utoipa::path(
    get, path = "/verify-email/{user_id}/{token}", tag = "accounts",
    params(
        ("user_id" = Uuid, Path, description = "The account"),
        ("token" = String, Path, max_length = 128, description = "The token from the mail"),
    ),
    responses(
        (status = 200, description = "Verified. A browser gets an HTML page",
            content((MessageResponse = "application/json"), (String = "text/html"))),
        (status = 400, description = "`invalid_or_expired_token`: an unknown, expired or used token, or a `user_id` that is not a UUID. A browser gets an HTML page",
            content((Problem = "application/problem+json"), (String = "text/html"))),
        (status = 409, description = "`email_taken`: the new address was taken meanwhile", body = Problem, content_type = "application/problem+json"),
        Unavailable,
    )
)]
pub async fn verify_email<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, token) = path.into_inner();
    let confirmed = confirm_email(&state, &req, &user_id, &token).await;
    if !super::negotiate::prefers_html(&req) {
        let message = confirmation_message(&confirmed?);
        return Ok(vary_accept(HttpResponse::Ok().json(MessageResponse { message })));
    }
    let sign_in = sign_in_hint(state.service.config().app_base_url.as_deref());
    let page = match confirmed {
        Ok(confirmation) => {
            let body = format!("<p>{}</p>{sign_in}", escape(confirmation_message(&confirmation)));
            html_page(StatusCode::OK, page("Your email address is confirmed", &body))
        }
        Err(error) if actix_web::ResponseError::status_code(&error) == StatusCode::BAD_REQUEST => {
            let body = format!(
                "<p>This link is invalid or has expired: it may have been used already, or a newer mail replaced \
                 it.</p><p>To get a new link, ask the app you signed up with to send the verification mail again \
                 (for a new email address, change it once more in your profile).</p>{sign_in}"
            );
            html_page(StatusCode::BAD_REQUEST, page("This link is invalid or has expired", &body))
        }
        // 409 and 503 stay problems: the contract lists an HTML page for 200 and 400 only.
        Err(error) => return Err(error),
    };
    Ok(vary_accept(page))
}

/// Checks a verification link's parts and confirms the address.
async fn confirm_email<P: Ports>(
    state: &AppState<P>,
    req: &HttpRequest,
    user_id: &str,
    token: &str,
) -> Result<EmailConfirmation, ApiError> {
    let user_id = Uuid::parse_str(user_id).map_err(|_| ApiError::invalid_link())?;
    if token.len() > LINK_TOKEN_MAX {
        return Err(ApiError::invalid_link());
    }
    Ok(state.service.verify_email(UserId::from_uuid(user_id), token, client_info(req, &state.clients)).await?)
}

/// What a confirmed link says, in JSON and on the page alike.
const fn confirmation_message(confirmation: &EmailConfirmation) -> &'static str {
    match confirmation {
        EmailConfirmation::Verified(_) => "Your email address is verified; you can log in now.",
        EmailConfirmation::EmailChanged(_) => "Your new email address is confirmed and is now your login.",
    }
}

/// Where to sign in: the frontend of `APP_BASE_URL` when there is one (this service's own base URL has no page to
/// sign in on).
fn sign_in_hint(app_base_url: Option<&str>) -> String {
    match app_base_url {
        Some(url) => {
            format!("<p>Sign in with your email address and password at <a href=\"{0}\">{0}</a>.</p>", escape(url))
        }
        None => "<p>Sign in with your email address and password in the app.</p>".to_owned(),
    }
}

/// Adds `Vary: Accept` to an answer of a route that negotiates, so no cache hands the page to an API client or
/// the JSON to a browser.
fn vary_accept(mut response: HttpResponse) -> HttpResponse {
    response.headers_mut().insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// Ask for a fresh verification link. Always 202.
#[utoipa::path(
    post, path = "/verify-email/resend", tag = "accounts", request_body = EmailRequest,
    responses(
        (status = 202, body = MessageResponse),
        BodyErrors,
        (status = 422, description = "`validation_failed`: not an email address", body = Problem, content_type = "application/problem+json"),
        RateLimited,
        Unavailable,
    )
)]
pub async fn resend_verification<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let email = limited_email_request(&state, &req, payload, "resend").await?;
    state.service.resend_verification(email).await?;
    Ok(accepted("If this address has an unverified account, a new link is on its way."))
}

/// Exchange a refresh token for a new token pair. The refresh token is single use: presenting a used one
/// revokes its whole session.
#[utoipa::path(
    post, path = "/token/refresh", tag = "accounts", request_body = RefreshRequest,
    responses(
        (status = 200, body = TokenResponse),
        BodyErrors,
        (status = 401, description = "`invalid_token`: an unknown, expired, revoked or already used refresh token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`account_locked`", body = Problem, content_type = "application/problem+json"),
        Unavailable,
    )
)]
pub async fn refresh<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    let request: RefreshRequest = parse_json(&req, &body)?;
    Ok(token_response(state.service.refresh(&request.refresh_token, client_info(&req, &state.clients)).await?))
}

/// End the session of a refresh token.
#[utoipa::path(
    post, path = "/logout", tag = "accounts", request_body = RefreshRequest,
    responses(
        (status = 204, description = "The session of that refresh token, if any, is over"),
        BodyErrors,
        Unavailable,
    )
)]
pub async fn logout<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    let request: RefreshRequest = parse_json(&req, &body)?;
    state.service.logout(&request.refresh_token, client_info(&req, &state.clients)).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// End every session of the caller; access tokens issued before stop working at once.
#[utoipa::path(
    post, path = "/logout/all", tag = "accounts", security(("oauth2" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Every session of the caller is over"),
        BearerErrors,
        (status = 403, description = "`account_locked`", body = Problem, content_type = "application/problem+json"),
        Unavailable,
    )
)]
pub async fn logout_all<P: Ports>(state: web::Data<AppState<P>>, caller: Caller) -> Result<HttpResponse, ApiError> {
    state.service.logout_all(&caller.0).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The caller's active sessions.
#[utoipa::path(
    get, path = "/me/sessions", tag = "accounts", security(("oauth2" = []), ("bearer" = [])),
    responses(
        (status = 200, body = SessionsResponse),
        BearerErrors,
        (status = 403, description = "`account_locked`", body = Problem, content_type = "application/problem+json"),
        Unavailable,
    )
)]
pub async fn list_sessions<P: Ports>(state: web::Data<AppState<P>>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let sessions = state.service.sessions(&caller.0).await?;
    Ok(HttpResponse::Ok().json(SessionsResponse { items: sessions.iter().map(SessionResponse::new).collect() }))
}

/// End one of the caller's sessions.
#[utoipa::path(
    delete, path = "/me/sessions/{id}", tag = "accounts", security(("oauth2" = []), ("bearer" = [])),
    params(("id" = Uuid, Path, description = "The session")),
    responses(
        (status = 204, description = "The session is over"),
        BearerErrors,
        (status = 403, description = "`account_locked`", body = Problem, content_type = "application/problem+json"),
        NotFound,
        Unavailable,
    )
)]
pub async fn revoke_session<P: Ports>(
    state: web::Data<AppState<P>>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = Uuid::parse_str(&path.into_inner()).map_err(|_| ApiError::not_found())?;
    if state.service.revoke_session(&caller.0, SessionId::from_uuid(id)).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::not_found())
    }
}

/// Ask for a password reset link. Always 202.
#[utoipa::path(
    post, path = "/password/forgot", tag = "accounts", request_body = EmailRequest,
    responses(
        (status = 202, body = MessageResponse),
        BodyErrors,
        (status = 422, description = "`validation_failed`: not an email address", body = Problem, content_type = "application/problem+json"),
        RateLimited,
        Unavailable,
    )
)]
pub async fn forgot_password<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let email = limited_email_request(&state, &req, payload, "forgot").await?;
    state.service.forgot_password(email).await?;
    Ok(accepted("If this address has an account, a reset link is on its way."))
}

/// The token query parameter of the reset page.
#[derive(Debug, serde::Deserialize)]
pub struct ResetQuery {
    token: Option<String>,
}

/// Headers for the HTML pages: never cached, never framed, no scripts, no referrer (the URL holds a token).
fn html_page(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .insert_header((header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .insert_header((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
            ),
        ))
        .body(body)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn page(title: &str, inner: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width\"><title>{title}</title></head><body style=\"font-family:sans-serif;max-width:30em;\
         margin:3em auto\"><h1>{title}</h1>{inner}</body></html>"
    )
}

/// The page of the reset link: a form that posts the new password to `POST /password/reset`.
#[utoipa::path(
    get, path = "/password/reset", tag = "accounts",
    params(("token" = Option<String>, Query, description = "The token from the mail; the form carries it along")),
    responses(
        (status = 200, description = "An HTML form", content_type = "text/html", body = String),
        (status = 400, description = "`bad_request`: a query string that does not parse (such as `token` given twice)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn reset_page<P: Ports>(state: web::Data<AppState<P>>, query: web::Query<ResetQuery>) -> HttpResponse {
    let token = query.into_inner().token.unwrap_or_default();
    // The hint and the browser's own check both come from the configured policy.
    let min = state.service.config().password_policy.min_length;
    let max = users_domain::user::PASSWORD_MAX_LENGTH;
    let form = format!(
        "<form method=\"post\" action=\"/password/reset\"><input type=\"hidden\" name=\"token\" value=\"{}\">\
         <p><label for=\"new_password\">New password</label><br><span id=\"new_password-hint\">At least {min} \
         characters; every session of the account will be signed out.</span><br><input type=\"password\" \
         id=\"new_password\" name=\"new_password\" aria-describedby=\"new_password-hint\" \
         autocomplete=\"new-password\" required minlength=\"{min}\" maxlength=\"{max}\"></p>\
         <p><button type=\"submit\">Save</button></p></form>",
        escape(&token)
    );
    html_page(StatusCode::OK, page("Choose a new password", &form))
}

/// Set a new password with the token of a reset link: every session ends, the login backoff is cleared, and
/// nobody is logged in. JSON gets 204; the form of the reset page gets a short HTML answer instead.
#[utoipa::path(
    post, path = "/password/reset", tag = "accounts",
    request_body(content((ResetPasswordRequest = "application/json"), (ResetPasswordRequest = "application/x-www-form-urlencoded"))),
    responses(
        (status = 204, description = "Password changed (JSON request)"),
        (status = 200, description = "Password changed (form request)", content_type = "text/html", body = String),
        (status = 400, description = "`invalid_or_expired_token`, or `malformed_body`: the body does not have the request's shape. A form request gets the first as an HTML page",
            content((Problem = "application/problem+json"), (String = "text/html"))),
        (status = 408, description = "`request_timeout`: the body was not received within 10 seconds", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`: neither JSON nor a form", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a weak password. A form request gets an HTML page",
            content((Problem = "application/problem+json"), (String = "text/html"))),
        Unavailable,
    )
)]
pub async fn reset_password<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    if media_type(&req) == "application/x-www-form-urlencoded" {
        let request: ResetPasswordRequest = serde_urlencoded::from_bytes(&body)
            .map_err(|error| ApiError::malformed_body(format!("invalid form body: {error}")))?;
        return Ok(
            match state
                .service
                .reset_password(&request.token, &request.new_password, client_info(&req, &state.clients))
                .await
            {
                Ok(()) => {
                    html_page(StatusCode::OK, page("Password changed", "<p>You can log in with your new password.</p>"))
                }
                Err(error) => {
                    let error = ApiError::from(error);
                    let status = actix_web::ResponseError::status_code(&error);
                    if status.is_server_error() {
                        return Err(error);
                    }
                    let detail = escape(&error.to_string());
                    html_page(status, page("Password not changed", &format!("<p>{detail}</p>")))
                }
            },
        );
    }
    let request: ResetPasswordRequest = parse_json(&req, &body)?;
    state.service.reset_password(&request.token, &request.new_password, client_info(&req, &state.clients)).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Change the caller's password; their other sessions end.
#[utoipa::path(
    post, path = "/me/password", tag = "profile", request_body = ChangePasswordRequest,
    security(("oauth2" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Changed; the caller's other sessions are over"),
        BodyErrors,
        BearerErrors,
        (status = 403, description = "`invalid_current_password` or `account_locked`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a weak new password", body = Problem, content_type = "application/problem+json"),
        RateLimited,
        Unavailable,
    )
)]
pub async fn change_password<P: Ports>(
    state: web::Data<AppState<P>>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    let request: ChangePasswordRequest = parse_json(&req, &body)?;
    state.service.change_password(&caller.0, &request.current_password, &request.new_password).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Change the caller's profile. A new `email` (with `current_password`) is confirmed by mail first and shows as
/// `pending_email` until then.
#[utoipa::path(
    patch, path = "/me", tag = "profile", request_body = UpdateMeRequest,
    security(("oauth2" = []), ("bearer" = [])),
    responses(
        (status = 200, body = UserResponse),
        BodyErrors,
        BearerErrors,
        (status = 403, description = "`invalid_current_password` or `account_locked`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`email_taken` or `nickname_taken`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, including `email` without `current_password`", body = Problem, content_type = "application/problem+json"),
        RateLimited,
        Unavailable,
    )
)]
pub async fn update_me<P: Ports>(
    state: web::Data<AppState<P>>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    let update = parse_json::<UpdateMeRequest>(&req, &body)?.try_into_domain()?;
    let user = state.service.update_me(&caller.0, update).await?;
    Ok(HttpResponse::Ok().json(UserResponse::new(&user, &state.public_base_url)))
}

/// Delete the caller's account, its sessions and its pictures.
#[utoipa::path(
    delete, path = "/me", tag = "profile", request_body = DeleteMeRequest,
    security(("oauth2" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "The account, its sessions and its pictures are gone"),
        BodyErrors,
        BearerErrors,
        (status = 403, description = "`invalid_current_password` or `account_locked`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`last_admin`: the caller is the last unlocked ADMIN", body = Problem, content_type = "application/problem+json"),
        RateLimited,
        Unavailable,
    )
)]
pub async fn delete_me<P: Ports>(
    state: web::Data<AppState<P>>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    let request: DeleteMeRequest = parse_json(&req, &body)?;
    state.service.delete_me(&caller.0, &request.current_password).await?;
    Ok(HttpResponse::NoContent().finish())
}
