//! `bench-baseline`: the ceiling `cargo xtask bench baseline` measures `GET /me` against.
//!
//! It answers `GET /me` with the same actix-web server on the same runtime as the service, reading the session and
//! its user in one primary-key query joined on the user (the columns the service reads) over the service's own
//! pool ([`users_postgres::connection_pool`], with the adapter's default size and timeouts), and writing the user
//! as JSON. Nothing else: no token to verify (the bearer token is the session id itself, so finding it costs a
//! UUID parse), no middleware, no metrics, no logging. The difference between the two rates is what the service
//! spends on top of the database read: verifying the access token, the domain's checks, its middleware.
//!
//! Configured by `DATABASE_URL` and `BIND_ADDR`; `GET /healthz` answers 200 once it listens. Not part of the product.

use std::net::SocketAddr;
use std::process::ExitCode;

use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use diesel::prelude::{
    ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, Queryable, Selectable, SelectableHelper as _,
};
use diesel_async::RunQueryDsl as _;
use serde::Serialize;
use time::OffsetDateTime;
use users_postgres::{ConnectionPool, PgConfig, connection_pool};
use uuid::Uuid;

/// The two tables the read touches, as `migrations/` defines them (the service's schema module is private to its
/// adapter).
#[allow(missing_docs, reason = "diesel's macros generate public items")]
mod schema {
    diesel::table! {
        users (id) {
            id -> Uuid,
            email -> Text,
            nickname -> Text,
            first_name -> Nullable<Text>,
            last_name -> Nullable<Text>,
            bio -> Nullable<Text>,
            profile_picture_id -> Nullable<Uuid>,
            linkedin_profile_url -> Nullable<Text>,
            github_profile_url -> Nullable<Text>,
            role -> Text,
            is_professional -> Bool,
            professional_status_updated_at -> Nullable<Timestamptz>,
            email_verified -> Bool,
            pending_email -> Nullable<Text>,
            is_locked -> Bool,
            password_hash -> Text,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
            last_login_at -> Nullable<Timestamptz>,
            mfa_enabled -> Bool,
        }
    }

    diesel::table! {
        sessions (id) {
            id -> Uuid,
            user_id -> Uuid,
            created_at -> Timestamptz,
            last_used_at -> Timestamptz,
            expires_at -> Timestamptz,
            revoked_at -> Nullable<Timestamptz>,
            user_agent -> Nullable<Text>,
            ip -> Nullable<Text>,
        }
    }

    diesel::joinable!(sessions -> users (user_id));
    diesel::allow_tables_to_appear_in_same_query!(sessions, users);
}

use schema::{sessions, users};

/// The session columns the service reads.
#[derive(Queryable, Selectable)]
#[diesel(table_name = sessions)]
#[diesel(check_for_backend(diesel::pg::Pg))]
#[allow(dead_code, reason = "read as the service reads them; only some are looked at")]
struct SessionRow {
    id: Uuid,
    user_id: Uuid,
    created_at: OffsetDateTime,
    last_used_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
    user_agent: Option<String>,
    ip: Option<String>,
}

/// The user columns the service reads.
#[derive(Queryable, Selectable)]
#[diesel(table_name = users)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct UserRow {
    id: Uuid,
    email: String,
    nickname: String,
    first_name: Option<String>,
    last_name: Option<String>,
    bio: Option<String>,
    profile_picture_id: Option<Uuid>,
    linkedin_profile_url: Option<String>,
    github_profile_url: Option<String>,
    role: String,
    is_professional: bool,
    professional_status_updated_at: Option<OffsetDateTime>,
    email_verified: bool,
    pending_email: Option<String>,
    is_locked: bool,
    #[allow(dead_code, reason = "read because the service reads it; never shown")]
    password_hash: String,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    last_login_at: Option<OffsetDateTime>,
    mfa_enabled: bool,
}

/// The user as `GET /me` shows it: the service's fields, in its order and formats.
#[derive(Serialize)]
struct UserJson {
    id: Uuid,
    email: String,
    nickname: String,
    first_name: Option<String>,
    last_name: Option<String>,
    bio: Option<String>,
    profile_picture_url: Option<String>,
    linkedin_profile_url: Option<String>,
    github_profile_url: Option<String>,
    role: String,
    is_professional: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    professional_status_updated_at: Option<OffsetDateTime>,
    email_verified: bool,
    pending_email: Option<String>,
    is_locked: bool,
    mfa_enabled: bool,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    last_login_at: Option<OffsetDateTime>,
}

impl UserJson {
    /// The row as the service shows it, the picture URL built from `base_url`.
    fn new(user: UserRow, base_url: &str) -> Self {
        Self {
            profile_picture_url: user.profile_picture_id.map(|_| format!("{base_url}/profiles/{}/picture", user.id)),
            id: user.id,
            email: user.email,
            nickname: user.nickname,
            first_name: user.first_name,
            last_name: user.last_name,
            bio: user.bio,
            linkedin_profile_url: user.linkedin_profile_url,
            github_profile_url: user.github_profile_url,
            role: user.role,
            is_professional: user.is_professional,
            professional_status_updated_at: user.professional_status_updated_at,
            email_verified: user.email_verified,
            pending_email: user.pending_email,
            is_locked: user.is_locked,
            mfa_enabled: user.mfa_enabled,
            created_at: user.created_at,
            updated_at: user.updated_at,
            last_login_at: user.last_login_at,
        }
    }
}

/// What every request shares: the pool, how long a checkout may take, and the base URL of picture links.
struct State {
    pool: ConnectionPool,
    acquire_timeout: std::time::Duration,
    base_url: String,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the two variables, builds the pool and serves until stopped, on a runtime built as the service's is.
fn run() -> Result<(), String> {
    let database_url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set".to_owned())?;
    let bind_addr: SocketAddr = std::env::var("BIND_ADDR")
        .map_err(|_| "BIND_ADDR is not set".to_owned())?
        .parse()
        .map_err(|error| format!("BIND_ADDR is not an address: {error}"))?;
    let config = PgConfig { url: database_url, ..PgConfig::default() };
    let pool = connection_pool(&config).map_err(|error| format!("DATABASE_URL: {error}"))?;
    let state = web::Data::new(State {
        pool,
        acquire_timeout: config.acquire_timeout,
        base_url: format!("http://{bind_addr}"),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("starting the async runtime: {error}"))?;
    runtime.block_on(async move {
        HttpServer::new(move || {
            App::new().app_data(state.clone()).route("/me", web::get().to(me)).route("/healthz", web::get().to(healthz))
        })
        .shutdown_timeout(10)
        .bind(bind_addr)
        .map_err(|error| format!("cannot listen on BIND_ADDR {bind_addr}: {error}"))?
        .run()
        .await
        .map_err(|error| format!("serving HTTP: {error}"))
    })
}

/// `GET /healthz`: listening.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().finish()
}

/// `GET /me` with `Authorization: Bearer <session id>`: the session's user, if the session is active.
async fn me(state: web::Data<State>, request: HttpRequest) -> HttpResponse {
    let Some(session_id) = bearer_session(&request) else {
        return HttpResponse::Unauthorized().finish();
    };
    let Ok(Ok(mut connection)) = tokio::time::timeout(state.acquire_timeout, state.pool.get()).await else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    let found = sessions::table
        .inner_join(users::table)
        .filter(sessions::id.eq(session_id))
        .select((SessionRow::as_select(), UserRow::as_select()))
        .get_result::<(SessionRow, UserRow)>(&mut connection)
        .await
        .optional();
    match found {
        // The service's own checks on the rows, which cost nothing next to the read.
        Ok(Some((session, user)))
            if session.user_id == user.id
                && session.revoked_at.is_none()
                && session.expires_at > OffsetDateTime::now_utc()
                && !user.is_locked =>
        {
            HttpResponse::Ok().json(UserJson::new(user, &state.base_url))
        }
        Ok(_) => HttpResponse::Unauthorized().finish(),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

/// The session id the bearer token names: the token is the id itself.
fn bearer_session(request: &HttpRequest) -> Option<Uuid> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ")?.trim().parse().ok()
}
