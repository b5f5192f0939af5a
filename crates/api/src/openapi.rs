//! The OpenAPI document, generated from the handlers and DTOs (never written by hand).
//!
//! Where API.md is ambiguous, the reading taken is stated here so that it shows in `/docs`.

use utoipa::openapi::security::{Flow, HttpAuthScheme, HttpBuilder, OAuth2, Password, Scopes, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::dto::{
    ChangePasswordRequest, DeleteMeRequest, EmailRequest, LoginForm, LoginJson, MessageResponse, RefreshRequest,
    RegisterRequest, ResetPasswordRequest, SessionResponse, SessionsResponse, StatusResponse, TokenResponse,
    UpdateMeRequest, UserResponse,
};
use crate::error::{FieldError, Problem};
use crate::routes::{accounts, auth, me, ops};

/// The service's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "user-management",
        description = "Registration with email verification, JWT login with rotating refresh tokens, roles, \
profiles and profile pictures.\n\n\
Conventions: errors are RFC 9457 `application/problem+json` with a stable `code`; request bodies reject unknown \
fields (400 `malformed_body`); rule violations are 422 `validation_failed`. Authorization is decided on the current \
database row on every request.\n\n\
Readings of the contract: nicknames are ASCII letters, digits, `_` and `-` only (the safest reading of \
\"letters/digits\": no look-alike or invisible characters); the client address recorded on sessions is the TCP \
peer, never `X-Forwarded-For`."
    ),
    paths(
        auth::login,
        accounts::register,
        accounts::verify_email,
        accounts::resend_verification,
        accounts::refresh,
        accounts::logout,
        accounts::logout_all,
        accounts::list_sessions,
        accounts::revoke_session,
        accounts::forgot_password,
        accounts::reset_page,
        accounts::reset_password,
        accounts::change_password,
        me::get_me,
        accounts::update_me,
        accounts::delete_me,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::jwks
    ),
    components(schemas(
        LoginJson,
        LoginForm,
        TokenResponse,
        UserResponse,
        StatusResponse,
        Problem,
        FieldError,
        RegisterRequest,
        EmailRequest,
        RefreshRequest,
        ResetPasswordRequest,
        ChangePasswordRequest,
        UpdateMeRequest,
        DeleteMeRequest,
        MessageResponse,
        SessionResponse,
        SessionsResponse
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "accounts", description = "Registration, login and sessions"),
        (name = "profile", description = "The caller's own profile"),
        (name = "operations", description = "Health, readiness, metrics and keys"),
    )
)]
pub struct ApiDoc;

/// Adds the two ways of presenting a token: the OAuth2 password flow (Swagger's Authorize button) and a plain
/// bearer token.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "oauth2",
            SecurityScheme::OAuth2(OAuth2::new([Flow::Password(Password::new("/login", Scopes::new()))])),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}
