//! HTTP handlers, thin by rule: read the request, call the service once, shape the answer.
//!
//! Also the pieces every handler shares: the `Caller` extractor (bearer token -> current user), the `Staff`
//! extractor (a caller who may use the `/users` routes at all), bounded body reading, and the client information
//! recorded on sessions.
//!
//! Handlers that take a body or a path id receive them raw (`web::Payload`, `web::Path<String>`) and read them in
//! their own code, after `Caller` or `Staff` has resolved. Extractors would not do: actix polls all of a handler's
//! extractors together, so a body or id extractor could answer 400 or 404 before the caller is known.

pub mod accounts;
pub mod audit;
pub mod auth;
pub mod me;
pub mod mfa;
mod negotiate;
pub mod ops;
pub mod pictures;
pub mod users;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::{self, Bytes, BytesMut, Data};
use actix_web::{FromRequest, HttpRequest, dev::Payload};
use futures_util::StreamExt as _;
use users_domain::sessions::{ClientInfo, Principal};

use crate::error::ApiError;
use crate::state::{AppState, Authenticate};
use users_domain::ports::Ports;

/// The largest JSON or form body accepted on the auth and profile routes (see the README's "Security" section).
pub const SMALL_BODY_LIMIT: usize = 16 * 1024;

/// How long a client may take to send a small body, so slow clients cannot hold workers.
const BODY_READ_DEADLINE: Duration = Duration::from_secs(10);

/// Reads a request body of at most `limit` bytes, refusing as soon as the limit is passed (413) and giving up on
/// clients that send too slowly (408).
///
/// # Errors
/// 413 `payload_too_large`, 408 `request_timeout`, or 400 `malformed_body` when the connection breaks.
pub async fn read_body(mut payload: actix_web::web::Payload, limit: usize) -> Result<Bytes, ApiError> {
    let read = async {
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|_| ApiError::malformed_body("the request body could not be read"))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::payload_too_large(format!("the body must be at most {limit} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(BODY_READ_DEADLINE, read).await.unwrap_or_else(|_| {
        Err(ApiError::new(
            actix_web::http::StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body was not received in time",
        ))
    })
}

/// The request's media type, without parameters, lower-cased.
pub fn media_type(req: &HttpRequest) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Parses a JSON body into a request DTO: 415 unless the body is declared JSON, 400 `malformed_body` when it does
/// not deserialize (bad syntax, wrong type, unknown or duplicate field, nesting too deep).
///
/// # Errors
/// As above.
pub fn parse_json<T: serde::de::DeserializeOwned>(req: &HttpRequest, body: &[u8]) -> Result<T, ApiError> {
    if media_type(req) != "application/json" {
        return Err(ApiError::unsupported_media_type("send the body as application/json"));
    }
    serde_json::from_slice(body).map_err(|error| ApiError::malformed_body(format!("invalid JSON body: {error}")))
}

/// Who is calling, as recorded on a new session: the `User-Agent`, and the client address as `clients` sees it
/// (the TCP peer, or the forwarded address behind a trusted proxy).
pub fn client_info(req: &HttpRequest, clients: &crate::edge::ClientAddresses) -> ClientInfo {
    ClientInfo {
        user_agent: req.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned),
        ip: clients.of(req).map(|ip| ip.to_string()),
    }
}

/// An authenticated caller, extracted from `Authorization: Bearer <token>` and checked against the current rows.
pub struct Caller(pub Principal);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let token = bearer_token(req);
        let service = req.app_data::<Data<dyn Authenticate>>().cloned();
        let client = service.as_ref().map(|service| service.client(req));
        Box::pin(async move {
            let token = token.ok_or_else(ApiError::invalid_token)?;
            let service = service.ok_or_else(|| ApiError::internal(anyhow::anyhow!("authenticator missing")))?;
            let mut principal = service.authenticate(&token).await?;
            principal.client = client.unwrap_or_default();
            Ok(Self(principal))
        })
    }
}

/// A caller whose role may use the user-administration routes under `/users` at all (MANAGER or ADMIN, as the
/// domain's [`Role::administers_users`](users_domain::permissions::Role::administers_users) decides).
///
/// Anyone else gets 403 `forbidden` from the extractor itself, before the handler looks at the path id, the query
/// or the body; no token is 401 as with [`Caller`]. The service still applies the full permission matrix.
pub struct Staff(pub Principal);

impl FromRequest for Staff {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let caller = Caller::from_request(req, payload);
        Box::pin(async move {
            let Caller(principal) = caller.await?;
            if !principal.user.role.administers_users() {
                return Err(ApiError::forbidden());
            }
            Ok(Self(principal))
        })
    }
}

/// The token of an `Authorization: Bearer` header (scheme matched case-insensitively), if there is one.
fn bearer_token(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// Mounts every route of the service, over any adapter set, into an actix-web application or scope: what the
/// binary serves, and what an application embedding the service calls from its own `App::configure`. Each path is
/// a resource, so a known path with the wrong method answers 405 (with `Allow`) rather than 404.
pub fn mount<P: Ports>(cfg: &mut web::ServiceConfig, state: &web::Data<AppState<P>>) {
    let authenticator: std::sync::Arc<dyn Authenticate> = state.clone().into_inner();
    cfg.app_data(state.clone()).app_data(web::Data::from(authenticator));
    // The router tries resources in this order, and a pattern with a path parameter is a regular expression to run,
    // so the busiest route comes first: `GET /me` is then found (and labelled for the metrics, which walks the
    // routes again) without running any. No two patterns here match the same path, so the order changes nothing
    // else.
    cfg.service(
        web::resource("/me")
            .route(web::get().to(me::get_me::<P>))
            .route(web::patch().to(accounts::update_me::<P>))
            .route(web::delete().to(accounts::delete_me::<P>)),
    )
    .service(web::resource("/login").route(web::post().to(auth::login::<P>)))
    .service(web::resource("/login/mfa").route(web::post().to(mfa::login_mfa::<P>)))
    .service(web::resource("/me/mfa/totp/setup").route(web::post().to(mfa::setup::<P>)))
    .service(web::resource("/me/mfa/totp/confirm").route(web::post().to(mfa::confirm::<P>)))
    .service(web::resource("/me/mfa/recovery-codes").route(web::post().to(mfa::recovery_codes::<P>)))
    .service(web::resource("/me/mfa").route(web::delete().to(mfa::disable::<P>)))
    .service(web::resource("/users/{id}/mfa").route(web::delete().to(mfa::reset::<P>)))
    .service(web::resource("/register").route(web::post().to(accounts::register::<P>)))
    .service(web::resource("/verify-email/resend").route(web::post().to(accounts::resend_verification::<P>)))
    .service(web::resource("/verify-email/{user_id}/{token}").route(web::get().to(accounts::verify_email::<P>)))
    .service(web::resource("/token/refresh").route(web::post().to(accounts::refresh::<P>)))
    .service(web::resource("/logout").route(web::post().to(accounts::logout::<P>)))
    .service(web::resource("/logout/all").route(web::post().to(accounts::logout_all::<P>)))
    .service(web::resource("/me/sessions").route(web::get().to(accounts::list_sessions::<P>)))
    .service(web::resource("/me/activity").route(web::get().to(audit::activity::<P>)))
    .service(web::resource("/audit").route(web::get().to(audit::audit::<P>)))
    .service(web::resource("/me/sessions/{id}").route(web::delete().to(accounts::revoke_session::<P>)))
    .service(web::resource("/me/password").route(web::post().to(accounts::change_password::<P>)))
    .service(web::resource("/password/forgot").route(web::post().to(accounts::forgot_password::<P>)))
    .service(
        web::resource("/password/reset")
            .route(web::get().to(accounts::reset_page::<P>))
            .route(web::post().to(accounts::reset_password::<P>)),
    )
    .service(
        web::resource("/users")
            .route(web::get().to(users::list_users::<P>))
            .route(web::post().to(users::create_user::<P>)),
    )
    .service(
        web::resource("/users/{id}")
            .route(web::get().to(users::get_user::<P>))
            .route(web::patch().to(users::update_user::<P>))
            .route(web::put().to(users::update_user::<P>))
            .route(web::delete().to(users::delete_user::<P>)),
    )
    .service(
        web::resource("/users/{id}/profile-picture")
            .route(web::post().to(pictures::upload::<P>))
            .route(web::delete().to(pictures::delete::<P>)),
    )
    .service(web::resource("/users/{id}/profile-picture/history").route(web::get().to(pictures::history::<P>)))
    .service(
        web::resource("/users/{id}/profile-picture/history/{version_id}")
            .route(web::get().to(pictures::serve_version::<P>)),
    )
    .service(
        web::resource("/users/{id}/profile-picture/history/{version_id}/restore")
            .route(web::post().to(pictures::restore::<P>)),
    )
    .service(web::resource("/profiles/{id}/picture").route(web::get().to(pictures::serve::<P>)))
    .service(web::resource("/healthz").route(web::get().to(ops::healthz)))
    .service(web::resource("/readyz").route(web::get().to(ops::readyz::<P>)))
    .service(web::resource("/.well-known/jwks.json").route(web::get().to(ops::jwks::<P>)));
    crate::pages::mount::<P>(cfg);
}
