//! Accounts and sessions: login.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use users_domain::session::TokenPair;

use super::{SMALL_BODY_LIMIT, client_info, media_type, read_body};
use crate::dto::{LoginForm, LoginJson, TokenResponse};
use crate::error::{ApiError, Problem};
use crate::openapi::{BodyErrors, RateLimited, Unavailable};
use crate::state::AppState;
use users_domain::ports::Ports;

/// Email and password, from whichever body form the client sent.
struct Credentials {
    email: String,
    password: String,
}

impl Credentials {
    fn from_body(req: &HttpRequest, body: &[u8]) -> Result<Self, ApiError> {
        match media_type(req).as_str() {
            "application/json" => {
                let json: LoginJson = super::parse_json(req, body)?;
                Ok(Self { email: json.email, password: json.password })
            }
            "application/x-www-form-urlencoded" => {
                let form: LoginForm = serde_urlencoded::from_bytes(body)
                    .map_err(|error| ApiError::malformed_body(format!("invalid form body: {error}")))?;
                if form.grant_type.as_deref().is_some_and(|grant| grant != "password") {
                    return Err(ApiError::malformed_body("grant_type must be \"password\""));
                }
                Ok(Self { email: form.username, password: form.password })
            }
            _ => Err(ApiError::unsupported_media_type("send application/json or application/x-www-form-urlencoded")),
        }
    }
}

/// A token answer, never cached.
pub fn token_response(pair: TokenPair) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .insert_header((header::PRAGMA, HeaderValue::from_static("no-cache")))
        .json(TokenResponse::from(pair))
}

/// Log in with email and password.
///
/// Accepts JSON `{email, password}` or the OAuth2 password-flow form (`username`, `password`), which is what the
/// Authorize button of these docs sends. An unknown email and a wrong password get the same 401 body, and take
/// comparable time.
#[utoipa::path(
    post,
    path = "/login",
    tag = "accounts",
    request_body(content(
        (LoginJson = "application/json"),
        (LoginForm = "application/x-www-form-urlencoded"),
    )),
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        BodyErrors,
        (status = 401, description = "`invalid_credentials`: wrong email or password; or `mfa_required`: the password is right and the account has a second factor, so no session started yet: the problem carries `mfa_token` (single use, 5 minutes) and `expires_in`, to send with a code to `POST /login/mfa`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`email_not_verified` or `account_locked`", body = Problem, content_type = "application/problem+json"),
        RateLimited,
        Unavailable,
    )
)]
pub async fn login<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    state.limit("login", &req).await?;
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    let credentials = Credentials::from_body(&req, &body)?;
    let pair =
        state.service.login(&credentials.email, &credentials.password, client_info(&req, &state.clients)).await?;
    Ok(token_response(pair))
}
