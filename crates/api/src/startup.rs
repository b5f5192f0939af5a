//! Wiring: the one place that names concrete adapters, builds the domain service from them and serves it.

use std::net::{SocketAddr, TcpListener};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpServer, ResponseError, web};
use anyhow::Context as _;
use users_crypto::{Argon2Hasher, HasherConfig, JwtCodec, JwtConfig};
use users_domain::ports::{Ports, SystemClock};
use users_domain::sessions::{AuthError, Principal};
use users_domain::Service;
use users_images::ImagePipeline;
use users_postgres::PgRepository;
use utoipa::OpenApi as _;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::Config;
use crate::error::ApiError;
use crate::mailer::{AppMailer, OutboxWorker};
use crate::openapi::ApiDoc;
use crate::rate_limit::RateLimiter;
use crate::routes::{Authenticate, accounts, auth, me, ops, pictures, users};
use crate::storage::AppStore;
use crate::telemetry::observe;

/// The production adapters: Postgres for every storage port, the configured picture store, the image pipeline,
/// argon2id, ES256 JWTs and the system clock.
#[derive(Debug, Clone)]
pub struct AppPorts {
    /// Postgres, implementing every storage port.
    pub db: PgRepository,
    /// Picture objects (S3 or the local disk).
    pub objects: AppStore,
    /// Upload processing.
    pub images: ImagePipeline,
    /// Password hashing.
    pub hasher: Argon2Hasher,
    /// Access tokens.
    pub tokens: JwtCodec,
}

impl Ports for AppPorts {
    type Users = PgRepository;
    type Sessions = PgRepository;
    type EmailTokens = PgRepository;
    type Throttle = PgRepository;
    type Outbox = PgRepository;
    type Requests = PgRepository;
    type Pictures = PgRepository;
    type Objects = AppStore;
    type Images = ImagePipeline;
    type Hasher = Argon2Hasher;
    type Tokens = JwtCodec;
    type Clock = SystemClock;

    fn users(&self) -> &PgRepository {
        &self.db
    }
    fn sessions(&self) -> &PgRepository {
        &self.db
    }
    fn email_tokens(&self) -> &PgRepository {
        &self.db
    }
    fn throttle(&self) -> &PgRepository {
        &self.db
    }
    fn outbox(&self) -> &PgRepository {
        &self.db
    }
    fn requests(&self) -> &PgRepository {
        &self.db
    }
    fn pictures(&self) -> &PgRepository {
        &self.db
    }
    fn objects(&self) -> &AppStore {
        &self.objects
    }
    fn images(&self) -> &ImagePipeline {
        &self.images
    }
    fn hasher(&self) -> &Argon2Hasher {
        &self.hasher
    }
    fn tokens(&self) -> &JwtCodec {
        &self.tokens
    }
    fn clock(&self) -> &SystemClock {
        &SystemClock
    }
}

/// The domain service with the production adapters plugged in.
pub type AppService = Service<AppPorts>;

/// What every handler can reach: the domain service over any adapter set, and the edge's own settings.
pub struct AppState<P> {
    /// The domain service.
    pub service: Service<P>,
    /// `PUBLIC_BASE_URL`, for links and picture URLs.
    pub public_base_url: String,
    /// The JWKS document served at `/.well-known/jwks.json`.
    pub jwks: serde_json::Value,
    /// Per-client-IP limits on the routes attackers hammer.
    pub rate_limiter: RateLimiter,
    /// `PICTURE_MAX_BYTES`.
    pub picture_max_bytes: u64,
    /// One permit per picture upload being read or processed (`PICTURE_MAX_CONCURRENT`).
    pub picture_uploads: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Runs the embedded migrations against `DATABASE_URL`.
///
/// # Errors
/// When the database cannot be reached or a migration fails.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    users_postgres::run_migrations(&config.database.url)
        .await
        .with_context(|| format!("running migrations on DATABASE_URL ({})", redact_url(&config.database.url)))
}

/// Builds the domain service with the production adapters, creating `DATA_DIR` and the signing key if needed.
///
/// # Errors
/// When the data directory, the key, the database pool or the picture store cannot be set up.
pub async fn build_service(config: &Config) -> anyhow::Result<AppService> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating DATA_DIR {}", config.data_dir.display()))?;
    let db = PgRepository::connect(&config.database)
        .await
        .context("connecting to DATABASE_URL")?;
    let hasher = Argon2Hasher::new(HasherConfig::default()).context("setting up password hashing")?;
    let tokens = JwtCodec::load_or_generate(&JwtConfig {
        algorithm: config.jwt_algorithm.clone(),
        private_key_file: config.jwt_private_key_file.clone(),
        data_dir: config.data_dir.clone(),
        issuer: config.service.public_base_url.clone(),
        audience: "user-management".to_owned(),
    })?;
    let objects = AppStore::from_config(config).await?;
    let ports = AppPorts { db, objects, images: ImagePipeline::default(), hasher, tokens };
    Ok(Service::new(ports, config.service.clone()))
}

/// A built, bound server, ready to run, with its metrics listener and outbox worker.
pub struct Application {
    server: Server,
    port: u16,
    metrics: Option<MetricsListener>,
    outbox: OutboxWorker,
}

/// The second HTTP server, serving only `GET /metrics` on `METRICS_BIND_ADDR`, so that metrics never reach the
/// public listener (they describe traffic and routes) and a scraper needs no route through the public edge.
struct MetricsListener {
    server: Server,
    addr: SocketAddr,
}

impl MetricsListener {
    /// Binds `METRICS_BIND_ADDR`, before anything starts serving, so a taken port fails start-up cleanly.
    fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
        TcpListener::bind(addr).with_context(|| format!("cannot listen on METRICS_BIND_ADDR {addr}"))
    }

    /// Starts the server on the bound listener: one worker, no signal handling of its own (the public server's
    /// shutdown stops it), and problem documents for every other path.
    fn start(listener: TcpListener) -> anyhow::Result<Self> {
        let addr = listener.local_addr().context("reading the bound metrics address")?;
        let server = HttpServer::new(|| {
            App::new()
                .wrap(from_fn(problem_fallback))
                .service(web::resource("/metrics").route(web::get().to(ops::metrics)))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)
        .context("starting the metrics server")?
        .run();
        Ok(Self { server, addr })
    }
}

impl Application {
    /// Migrates the database, wires the service, makes sure of the bootstrap admin and binds `BIND_ADDR`.
    ///
    /// # Errors
    /// When any of those steps fails; the message names what failed.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Install the metrics recorder before the first request, so that request is counted too.
        let _ = crate::telemetry::metrics_handle();
        migrate(&config).await?;
        let service = build_service(&config).await?;
        let mailer = AppMailer::from_config(&config)?;
        if let Some(admin) = &config.bootstrap_admin {
            let user = service
                .ensure_admin(admin.email.clone(), &admin.password)
                .await
                .context("making sure of the BOOTSTRAP_ADMIN_EMAIL account")?;
            tracing::info!(user_id = %user.id, "bootstrap admin is present");
        }
        let requests = service.clone();
        let jwks = service.ports().tokens.jwks();
        let state = AppState::new(service, &config, jwks);
        let metrics_listener = config.metrics_bind_addr.map(MetricsListener::bind).transpose()?;
        let listener = TcpListener::bind(config.bind_addr)
            .with_context(|| format!("cannot listen on BIND_ADDR {}", config.bind_addr))?;
        let port = listener.local_addr().context("reading the bound address")?.port();
        let openapi = ApiDoc::openapi();
        let server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(problem_fallback))
                .wrap(from_fn(observe))
                .configure(|cfg| mount(cfg, &state))
                .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", openapi.clone()))
                .service(web::redirect("/docs", "/docs/"))
        })
        .shutdown_timeout(10)
        .listen(listener)
        .context("starting the HTTP server")?
        .run();
        let metrics = metrics_listener.map(MetricsListener::start).transpose()?;
        let outbox = OutboxWorker::start(mailer, requests);
        Ok(Self { server, port, metrics, outbox })
    }

    /// The port actually bound (useful with `BIND_ADDR=...:0`).
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// The address the metrics listener actually bound, `None` when `METRICS_BIND_ADDR` is empty.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|metrics| metrics.addr)
    }

    /// Serves until the process is asked to stop (SIGINT/SIGTERM), letting in-flight requests finish.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let metrics_server = self.metrics.map(|metrics| metrics.server);
        let metrics_handle = metrics_server.as_ref().map(Server::handle);
        let public = async {
            let served = self.server.await;
            // The public server handles the signals; once it has stopped, so does the metrics listener.
            if let Some(handle) = metrics_handle {
                handle.stop(true).await;
            }
            served
        };
        let metrics = async {
            if let Some(server) = metrics_server
                && let Err(error) = server.await
            {
                tracing::error!(%error, "the metrics listener failed");
            }
        };
        let (served, ()) = tokio::join!(public, metrics);
        // The server has drained its requests; now let the mail in flight finish. Queued mail stays in the
        // outbox for the next start.
        self.outbox.stop().await;
        served
    }
}

impl<P: Ports> Authenticate for AppState<P> {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Principal, AuthError>> + 'a>> {
        Box::pin(self.service.authenticate(token))
    }
}

impl<P: Ports> AppState<P> {
    /// The state of the routes: the service and the edge settings from `config` (base URL, per-IP limits, upload
    /// bounds), with `jwks` as the key set to publish.
    pub fn new(service: Service<P>, config: &Config, jwks: serde_json::Value) -> web::Data<Self> {
        web::Data::new(Self {
            service,
            public_base_url: config.service.public_base_url.clone(),
            jwks,
            rate_limiter: RateLimiter::new(config.rate_limits, config.rate_limit_per_minute),
            picture_max_bytes: config.picture_max_bytes,
            picture_uploads: std::sync::Arc::new(tokio::sync::Semaphore::new(config.picture_max_concurrent)),
        })
    }
}

/// Mounts every route of the service, over any adapter set, into an actix-web application or scope: what the
/// binary serves, and what an application embedding the service calls from its own `App::configure`. Each path is
/// a resource, so a known path with the wrong method answers 405 (with `Allow`) rather than 404.
pub fn mount<P: Ports>(cfg: &mut web::ServiceConfig, state: &web::Data<AppState<P>>) {
    let authenticator: std::sync::Arc<dyn Authenticate> = state.clone().into_inner();
    cfg.app_data(state.clone()).app_data(web::Data::from(authenticator));
    cfg.service(web::resource("/login").route(web::post().to(auth::login::<P>)))
        .service(web::resource("/register").route(web::post().to(accounts::register::<P>)))
        .service(web::resource("/verify-email/resend").route(web::post().to(accounts::resend_verification::<P>)))
        .service(web::resource("/verify-email/{user_id}/{token}").route(web::get().to(accounts::verify_email::<P>)))
        .service(web::resource("/token/refresh").route(web::post().to(accounts::refresh::<P>)))
        .service(web::resource("/logout").route(web::post().to(accounts::logout::<P>)))
        .service(web::resource("/logout/all").route(web::post().to(accounts::logout_all::<P>)))
        .service(web::resource("/me/sessions").route(web::get().to(accounts::list_sessions::<P>)))
        .service(web::resource("/me/sessions/{id}").route(web::delete().to(accounts::revoke_session::<P>)))
        .service(web::resource("/me/password").route(web::post().to(accounts::change_password::<P>)))
        .service(web::resource("/password/forgot").route(web::post().to(accounts::forgot_password::<P>)))
        .service(
            web::resource("/password/reset")
                .route(web::get().to(accounts::reset_page::<P>))
                .route(web::post().to(accounts::reset_password::<P>)),
        )
        .service(
            web::resource("/users").route(web::get().to(users::list_users::<P>)).route(web::post().to(users::create_user::<P>)),
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
        .service(
            web::resource("/me")
                .route(web::get().to(me::get_me::<P>))
                .route(web::patch().to(accounts::update_me::<P>))
                .route(web::delete().to(accounts::delete_me::<P>)),
        )
        .service(web::resource("/healthz").route(web::get().to(ops::healthz)))
        .service(web::resource("/readyz").route(web::get().to(ops::readyz::<P>)))
        .service(web::resource("/.well-known/jwks.json").route(web::get().to(ops::jwks::<P>)));
}

/// Turns every error response that is not already a problem document (405 from the router, errors raised by
/// actix itself) into one, so clients see a single error format.
async fn problem_fallback(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // Errors that come back as `Err` were raised by our own middleware or handlers and are problems already; the
    // request cannot be cloned up front to re-render them, because routing needs it unshared.
    let response = next.call(req).await?.map_into_boxed_body();
    let status = response.status();
    let is_problem = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return Ok(response);
    }
    let error = match status {
        StatusCode::NOT_FOUND => ApiError::not_found(),
        StatusCode::METHOD_NOT_ALLOWED => {
            ApiError::new(status, "method_not_allowed", "this route does not take that method")
        }
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large("the request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::unsupported_media_type("this content type is not accepted here")
        }
        status if status.is_server_error() => ApiError::internal(anyhow::anyhow!("unhandled {status} response")),
        status => ApiError::new(status, "bad_request", "the request could not be processed"),
    };
    let allow = response.headers().get(actix_web::http::header::ALLOW).cloned();
    let (request, _) = response.into_parts();
    let mut problem = error.error_response();
    if let Some(allow) = allow {
        problem.headers_mut().insert(actix_web::http::header::ALLOW, allow);
    }
    Ok(ServiceResponse::new(request, problem))
}

/// A database URL with its password hidden, for error messages.
fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            // libpq also takes the password as a query parameter (`?password=...`); it is a secret there too.
            if url.query_pairs().any(|(key, _)| key == "password") {
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(key, value)| {
                        let value = if key == "password" { "***".to_owned() } else { value.into_owned() };
                        (key.into_owned(), value)
                    })
                    .collect();
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            url.to_string()
        }
        Err(_) => "<unparseable>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_passwords_never_survive_redaction_in_the_user_info_or_the_query() {
        let redacted = redact_url("postgres://app:s3cret@db:5432/users?sslmode=require&password=other-s3cret");
        assert!(!redacted.contains("s3cret"), "{redacted}");
        assert!(redacted.contains("sslmode=require"), "{redacted}");
        assert_eq!(redact_url("not a url"), "<unparseable>");
    }
}
