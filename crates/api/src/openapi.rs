//! The OpenAPI document, generated from the handlers and DTOs (never written by hand).
//!
//! Where API.md is ambiguous, the reading taken is stated here so that it shows in `/docs`.

use utoipa::openapi::security::{Flow, HttpAuthScheme, HttpBuilder, OAuth2, Password, Scopes, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::dto::{
    AdminCreateRequest, AdminUpdateRequest, ChangePasswordRequest, DeleteMeRequest, EmailRequest, LoginForm, LoginJson,
    MessageResponse, PageLinks, RefreshRequest, RegisterRequest, ResetPasswordRequest, SessionResponse,
    SessionsResponse, StatusResponse, TokenResponse, UpdateMeRequest, UserPageResponse, UserResponse,
};
use crate::error::{FieldError, Problem};
use crate::routes::{accounts, auth, me, ops, pictures, users};

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
Readings of the contract (where API.md is silent or ambiguous, the safest reading):\n\n\
- Nicknames are ASCII letters, digits, `_` and `-` only: no look-alike or invisible characters.\n\
- The client address recorded on sessions and used for per-IP limits is the TCP peer, never `X-Forwarded-For`.\n\
- \"The last ADMIN\" means the last *unlocked* ADMIN: a locked admin cannot administer anything. Demoting, locking \
or deleting it answers 409 `last_admin`, also through `DELETE /me`.\n\
- Nobody changes their own role, lock, verification or professional status, or deletes themself, through \
`/users/{id}` (403; 409 `last_admin` when the caller is the last unlocked ADMIN); `DELETE /me` with the current \
password is the way to leave. A MANAGER may read and edit their \
own profile there; other MANAGER and ADMIN users answer 404.\n\
- A password reset confirms the address (the link proves control of the mailbox). Registering an address whose \
account was never confirmed mails its owner a link to choose the password instead of \"already registered\", so an \
account someone else created first is taken back by the mailbox owner (account pre-hijacking).\n\
- `POST /password/reset` also accepts the form of the reset page (`application/x-www-form-urlencoded`) and then \
answers a short HTML page instead of 204, since a browser form cannot send JSON.\n\
- Archived pictures are not public: their `url` in the history points to an authenticated route.\n\
- An unknown or malformed email at `/login` costs a full (dummy) password check and counts toward the per-email \
backoff like a known one."
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
        users::list_users,
        users::create_user,
        users::get_user,
        users::update_user,
        users::delete_user,
        pictures::upload,
        pictures::serve,
        pictures::delete,
        pictures::history,
        pictures::serve_version,
        pictures::restore,
        ops::healthz,
        ops::readyz,
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
        SessionsResponse,
        AdminCreateRequest,
        AdminUpdateRequest,
        UserPageResponse,
        PageLinks,
        pictures::PictureVersion,
        pictures::PictureHistory
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "accounts", description = "Registration, login and sessions"),
        (name = "profile", description = "The caller's own profile"),
        (name = "users", description = "User administration for MANAGER and ADMIN"),
        (name = "pictures", description = "Profile pictures"),
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
