//! Wiring: the one place that names concrete adapters, builds the domain service from them and serves it.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpServer, ResponseError, web};
use anyhow::Context as _;
use futures_util::{Stream, StreamExt as _};
use users_crypto::{Argon2Hasher, DataKey, HasherConfig, JwtCodec, JwtConfig, Sealer, TotpCodec, check_algorithm};
use users_domain::Service;
use users_images::ImagePipeline;
use users_postgres::{ConnectionPlacement, PgRepository};
use utoipa_swagger_ui::{Config as SwaggerConfig, SwaggerUi};

use crate::config::Config;
use crate::error::ApiError;
use crate::housekeeping::HousekeepingWorker;
use crate::mailer::{AppMailer, OutboxWorker};
use crate::picture_mover::PictureMover;
use crate::routes::{mount, ops};
use crate::signing_keys::{KeyReloader, SharedKeys};
use crate::state::{AppPorts, AppService, AppState, Jwks, Stopping};
use crate::storage::AppStore;
use crate::telemetry::observe;
use crate::webhooks::WebhookWorker;

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
    build_service_and_keys(config, ConnectionPlacement::new()).await.map(|(service, _)| service)
}

/// As [`build_service`], with the pool's connections opened where `placement` says, and the signing keys in the
/// database to reload, unless `JWT_PRIVATE_KEY_FILE` is set.
async fn build_service_and_keys(
    config: &Config,
    placement: ConnectionPlacement,
) -> anyhow::Result<(AppService, Option<SharedKeys>)> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating DATA_DIR {}", config.data_dir.display()))?;
    let db = PgRepository::connect_placed(&config.database, placement).await.context("connecting to DATABASE_URL")?;
    let hasher = Argon2Hasher::new(HasherConfig::default()).context("setting up password hashing")?;
    let sealer = sealer(config)?;
    let (tokens, shared_keys) = signing_keys(config, &db, &sealer).await?;
    let objects = AppStore::from_config(config).await?;
    let otp = TotpCodec::new(sealer);
    let ports = AppPorts { db, objects, images: ImagePipeline::default(), hasher, tokens, otp };
    Ok((Service::new(ports, config.service.clone()), shared_keys))
}

/// The sealer of stored secrets, with the data key of `DATA_ENCRYPTION_KEY_FILE` when it is set.
fn sealer(config: &Config) -> anyhow::Result<Sealer> {
    let data_key = config.data_encryption_key_file.as_deref().map(DataKey::from_file).transpose()?;
    Ok(Sealer::new(data_key))
}

/// The token codec: the one key of `JWT_PRIVATE_KEY_FILE`, or the keys in the database (the first one created if
/// there is none yet), with those keys to reload.
async fn signing_keys(
    config: &Config,
    db: &PgRepository,
    sealer: &Sealer,
) -> anyhow::Result<(JwtCodec, Option<SharedKeys>)> {
    let issuer = config.service.public_base_url.clone();
    let audience = "user-management".to_owned();
    if config.jwt_private_key_file.is_some() {
        let codec = JwtCodec::load_or_generate(&JwtConfig {
            algorithm: config.jwt_algorithm.clone(),
            private_key_file: config.jwt_private_key_file.clone(),
            data_dir: config.data_dir.clone(),
            issuer,
            audience,
        })?;
        return Ok((codec, None));
    }
    check_algorithm(&config.jwt_algorithm)?;
    let keys = shared_keys(config, db.clone(), sealer.clone());
    keys.ensure_first().await?;
    let ring = keys.load(None).await.context("loading the signing keys from the database")?;
    Ok((JwtCodec::with_ring(ring, issuer, audience), Some(keys)))
}

/// The signing keys stored in the database (`keys rotate`, `keys list`, and the reloading in `serve`).
#[must_use]
pub fn shared_keys(config: &Config, db: PgRepository, sealer: Sealer) -> SharedKeys {
    SharedKeys::new(db, sealer, config.service.access_token_ttl, config.data_dir.clone())
}

/// The key id of the key in `JWT_PRIVATE_KEY_FILE`, when that is set (for `keys list`).
///
/// # Errors
/// When the file cannot be read or holds no P-256 key.
pub fn file_key_id(config: &Config) -> anyhow::Result<Option<String>> {
    let Some(file) = &config.jwt_private_key_file else {
        return Ok(None);
    };
    let codec = JwtCodec::load_or_generate(&JwtConfig {
        algorithm: config.jwt_algorithm.clone(),
        private_key_file: Some(file.clone()),
        data_dir: config.data_dir.clone(),
        issuer: config.service.public_base_url.clone(),
        audience: "user-management".to_owned(),
    })?;
    Ok(Some(codec.key_id()))
}

/// The signing keys stored in the database, for the `keys` subcommands: refused when `JWT_PRIVATE_KEY_FILE` is
/// set, since the key then comes from that file.
///
/// # Errors
/// When `JWT_PRIVATE_KEY_FILE` is set, or the database, the migrations or the data key fail.
pub async fn stored_keys(config: &Config) -> anyhow::Result<SharedKeys> {
    if let Some(file) = &config.jwt_private_key_file {
        anyhow::bail!(
            "JWT_PRIVATE_KEY_FILE is set ({}): the signing key comes from that file, not from the database; to change \
             it, replace the file and restart every instance",
            file.display()
        );
    }
    check_algorithm(&config.jwt_algorithm)?;
    migrate(config).await?;
    let db = PgRepository::connect(&config.database).await.context("connecting to DATABASE_URL")?;
    Ok(shared_keys(config, db, sealer(config)?))
}

/// A built, bound server, ready to run, with its metrics listener, outbox worker and housekeeping loop.
pub struct Application {
    server: Server,
    port: u16,
    metrics: Option<MetricsListener>,
    outbox: OutboxWorker,
    webhooks: Option<WebhookWorker>,
    housekeeping: HousekeepingWorker,
    key_reloader: Option<KeyReloader>,
    picture_mover: PictureMover,
    stopping: Stopping,
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

    /// Starts the server on the bound listener: one worker, no signal handling of its own (`run_until` stops it
    /// last), and problem documents for every other path.
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
        // The HTTP workers register with the placement as they start, and from then on the pool's connections are
        // opened and driven on them, next to the requests that use them (see `ConnectionPlacement`).
        let placement = ConnectionPlacement::new();
        let (service, shared_keys) = build_service_and_keys(&config, placement.clone()).await?;
        // A pooler that drops start-up options would leave every user listing answering 503 while the rest works;
        // found now, with the reason, instead of on the first `GET /users`.
        service.ports().db.check_listing_connection().await.with_context(|| {
            format!(
                "opening a user-listing connection to DATABASE_URL ({}), whose sessions must keep the start-up \
                 option plan_cache_mode=force_custom_plan",
                redact_url(&config.database.url)
            )
        })?;
        let mailer = AppMailer::from_config(&config)?;
        // The endpoints first, so that even the first events (the bootstrap admin's) are queued for them. Without
        // WEBHOOK_URLS nothing is delivered: every endpoint stops taking events.
        let (urls, events) =
            config.webhooks.as_ref().map_or((&[][..], &[][..]), |hooks| (&hooks.urls[..], &hooks.events[..]));
        service.ports().db.sync_webhook_endpoints(urls, events).await.context("writing the WEBHOOK_URLS endpoints")?;
        if let Some(admin) = &config.bootstrap_admin {
            let user = service
                .ensure_admin(admin.email.clone(), &admin.password)
                .await
                .context("making sure of the BOOTSTRAP_ADMIN_EMAIL account")?;
            tracing::info!(user_id = %user.id, "bootstrap admin is present");
        }
        let (service, picture_mover) = PictureMover::start(service);
        let requests = service.clone();
        let db = service.ports().db.clone();
        let tokens = service.ports().tokens.clone();
        let state = AppState::new(service, &config, Jwks::Live(tokens.clone()));
        let stopping = state.stopping.clone();
        let cors_policy = web::Data::new(crate::edge::CorsPolicy::new(config.cors_allowed_origins.clone()));
        let metrics_listener = config.metrics_bind_addr.map(MetricsListener::bind).transpose()?;
        let listener = TcpListener::bind(config.bind_addr)
            .with_context(|| format!("cannot listen on BIND_ADDR {}", config.bind_addr))?;
        let port = listener.local_addr().context("reading the bound address")?.port();
        let server = HttpServer::new(move || {
            // The app factory runs once on each worker thread; the placement learns the worker's runtime at its
            // first checkout.
            placement.register_current_thread();
            App::new()
                .app_data(cors_policy.clone())
                .wrap(from_fn(problem_fallback))
                .wrap(from_fn(crate::edge::cors))
                .wrap(from_fn(observe))
                .configure(|cfg| mount(cfg, &state))
                .service(web::resource("/openapi.json").route(web::get().to(ops::openapi_document)))
                .service(SwaggerUi::new("/docs/{_:.*}").config(SwaggerConfig::new(["/openapi.json"])))
                .service(web::redirect("/docs", "/docs/"))
        })
        // `run_until` handles the signals, to stop the background tasks before the HTTP workers.
        .disable_signals()
        .shutdown_timeout(WORKER_STOP_LIMIT.as_secs())
        // Counted for as long as the connection lives, so a stopping server knows when every one has closed.
        .on_connect(|_, extensions| {
            extensions.insert(crate::telemetry::OpenConnection::start());
        })
        .listen(listener)
        .context("starting the HTTP server")?
        .run();
        let metrics = metrics_listener.map(MetricsListener::start).transpose()?;
        let outbox = OutboxWorker::start(mailer, requests, config.mail_lease);
        let webhooks = config.webhooks.clone().map(|hooks| WebhookWorker::start(db.clone(), hooks)).transpose()?;
        let housekeeping = HousekeepingWorker::start(db, config.purge_settings(), config.purge_interval);
        let key_reloader = shared_keys.map(|keys| KeyReloader::start(keys, tokens));
        Ok(Self { server, port, metrics, outbox, webhooks, housekeeping, key_reloader, picture_mover, stopping })
    }

    /// The port actually bound (useful with `BIND_ADDR=...:0`).
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// The address the metrics listener actually bound, `None` when `METRICS_BIND_ADDR` is empty.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|metrics| metrics.addr)
    }

    /// Serves until the process gets SIGINT or SIGTERM, then stops as [`Self::run_until`] says; a second signal
    /// stops it at once.
    ///
    /// # Errors
    /// When the server fails, or a second signal cut the stop short.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(stop_signals()).await
    }

    /// Serves until `stops` yields or the HTTP server fails, then stops without losing work:
    ///
    /// 1. `/readyz` answers 503, so a load balancer sends new traffic elsewhere; requests are still served.
    /// 2. The background tasks (mail, webhook deliveries, picture moves) finish the item in flight and stop, within
    ///    [`crate::background::STOP_LIMIT`] (then they are cut off; leases hand their items to the next taker); the
    ///    housekeeping round is cut off (each of its batches commits on its own). They stop before the HTTP server
    ///    because the database connections they use are driven on the HTTP workers' runtimes, which end with it.
    /// 3. The HTTP connections are drained: every answer from now on closes its connection, and the server waits
    ///    (up to [`DRAIN_LIMIT`]) until none is open, still serving new ones; at the limit it stops accepting and
    ///    waits (up to [`WORKER_STOP_LIMIT`]) until no request is in flight. Only then are the workers stopped (a
    ///    connection still open gets [`WORKER_STOP_LIMIT`] more): a worker's database connections may serve
    ///    another worker's request, so no worker should stop while another serves.
    /// 4. The key reloader and the metrics listener stop.
    ///
    /// When `stops` yields again a second or more after the first (or at all, once the server failed by itself),
    /// the HTTP server is told to stop at once, its task is dropped, and an error returned. A `stops` that ends
    /// asks nothing. Queued mail, deliveries and moves stay recorded for the next start or another instance.
    ///
    /// # Errors
    /// When the HTTP server fails, or a second stop cut the first short.
    pub async fn run_until(self, mut stops: impl Stream<Item = ()> + Unpin) -> std::io::Result<()> {
        let public_handle = self.server.handle();
        // Both servers are driven by tasks of their own, so they keep serving (and restarting a failed worker)
        // while the background tasks stop.
        let mut public = tokio::spawn(self.server);
        let metrics = self.metrics.map(|metrics| {
            let handle = metrics.server.handle();
            let task = tokio::spawn(async move {
                if let Err(error) = metrics.server.await {
                    tracing::error!(%error, "the metrics listener failed");
                }
            });
            (handle, task)
        });
        let ended = tokio::select! {
            served = &mut public => Some(served),
            Some(()) = stops.next() => None,
        };
        let first_stop = tokio::time::Instant::now();
        let server_failed = ended.is_some();
        self.stopping.set();
        tracing::info!("stopping: background work in flight first, then the requests in flight");
        let orderly = async {
            self.housekeeping.stop();
            let webhooks = async {
                if let Some(webhooks) = self.webhooks {
                    webhooks.stop().await;
                }
            };
            // All are told to stop at once and waited for together, so none starts new work while another finishes.
            tokio::join!(self.outbox.stop(), self.picture_mover.stop(), webhooks);
            match ended {
                Some(served) => served,
                None => {
                    drain_connections(&public_handle).await;
                    public_handle.stop(true).await;
                    (&mut public).await
                }
            }
        };
        // A second request to stop, not the same one delivered twice (a terminal's Ctrl-C and a supervisor's
        // SIGTERM in the same instant). After the server failed by itself, the first request is the one that forces.
        let second_stop = async {
            while let Some(()) = stops.next().await {
                if server_failed || first_stop.elapsed() >= REPEAT_WINDOW {
                    return;
                }
                tracing::info!("a repeated stop request within a second of the first is taken as the same one");
            }
            std::future::pending().await
        };
        let served = tokio::select! {
            served = orderly => served.unwrap_or_else(|error| Err(std::io::Error::other(error))),
            () = second_stop => {
                tracing::warn!("asked to stop again: stopping at once, without finishing the work in flight");
                // A forced stop returns at once, unless the server is busy with the graceful one, which it would
                // wait behind: then its task is dropped and the process's exit ends the rest.
                let _ = tokio::time::timeout(FORCED_STOP_WAIT, public_handle.stop(false)).await;
                public.abort();
                if let Some((handle, task)) = metrics {
                    let _ = tokio::time::timeout(FORCED_STOP_WAIT, handle.stop(false)).await;
                    task.abort();
                }
                if let Some(reloader) = self.key_reloader {
                    reloader.stop().await;
                }
                return Err(std::io::Error::other("stopped at once by a second stop request"));
            }
        };
        if let Some(reloader) = self.key_reloader {
            reloader.stop().await;
        }
        if let Some((handle, task)) = metrics {
            handle.stop(true).await;
            let _ = task.await;
        }
        tracing::info!("stopped");
        served
    }
}

/// How long a stopping instance waits for its HTTP connections to close before it stops its workers.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How long a worker being stopped gives a connection still open (after [`DRAIN_LIMIT`]) to finish.
pub const WORKER_STOP_LIMIT: Duration = Duration::from_secs(3);

/// How long a forced stop may take before the server's task is dropped.
const FORCED_STOP_WAIT: Duration = Duration::from_secs(1);

/// Stop requests this close to the first one are the same request delivered twice.
const REPEAT_WINDOW: Duration = Duration::from_secs(1);

/// Makes every answer close its connection, then waits until no HTTP connection is open, or [`DRAIN_LIMIT`] has
/// passed (idle keep-alive connections close by themselves within the keep-alive timeout, 5 s). At the limit, the
/// server stops accepting and waits (up to [`WORKER_STOP_LIMIT`]) until no request is in flight, so that no worker
/// stops, taking its database connections along, while another still handles a request.
async fn drain_connections(server: &actix_web::dev::ServerHandle) {
    crate::telemetry::start_draining();
    if wait_until(DRAIN_LIMIT, || crate::telemetry::open_connections() == 0).await {
        return;
    }
    tracing::warn!(
        open = crate::telemetry::open_connections(),
        limit_s = DRAIN_LIMIT.as_secs(),
        "HTTP connections still open after the drain limit; waiting only for the requests in flight"
    );
    server.pause().await;
    if !wait_until(WORKER_STOP_LIMIT, || crate::telemetry::requests_in_flight() == 0).await {
        tracing::warn!(
            in_flight = crate::telemetry::requests_in_flight(),
            "requests still in flight; stopping the workers anyway"
        );
    }
}

/// Waits until `done` holds, looking every 10 ms, for at most `limit`; whether it held.
async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// The process's SIGINT and SIGTERM, each one an item. A signal that cannot be listened for is logged and keeps
/// its default effect (ending the process at once).
fn stop_signals() -> impl Stream<Item = ()> + Unpin {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(listener) => Some(listener),
        Err(error) => {
            tracing::error!(%error, signal = name, "cannot listen for the signal; it will end the process at once");
            None
        }
    };
    async fn next(listener: &mut Option<Signal>) {
        if let Some(signal) = listener
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending().await
    }
    let listeners = (listen(SignalKind::interrupt(), "SIGINT"), listen(SignalKind::terminate(), "SIGTERM"));
    Box::pin(futures_util::stream::unfold(listeners, |(mut interrupt, mut terminate)| async move {
        let name = tokio::select! {
            () = next(&mut interrupt) => "SIGINT",
            () = next(&mut terminate) => "SIGTERM",
        };
        tracing::info!(signal = name, "asked to stop");
        Some(((), (interrupt, terminate)))
    }))
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
    // Problems are rendered already, and so are the HTML pages handlers answer to people (the reset form's errors).
    let is_rendered = response.headers().get(CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value.starts_with(b"application/problem+json") || value.starts_with(b"text/html")
    });
    if !(status.is_client_error() || status.is_server_error()) || is_rendered {
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
