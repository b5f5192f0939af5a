//! The state the routes share: the domain service over an adapter set, and the edge's own settings; and the
//! production adapter set itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::{HttpRequest, web};
use tokio::sync::Semaphore;
use users_crypto::{Argon2Hasher, JwtCodec, TotpCodec};
use users_domain::Service;
use users_domain::ports::{Clock as _, Ports, SystemClock};
use users_domain::sessions::{AuthError, Principal};
use users_images::ImagePipeline;
use users_postgres::PgRepository;

use crate::config::Config;
use crate::error::ApiError;
use crate::rate_limit::RateLimiter;
use crate::storage::AppStore;

/// What the `Caller` extractor needs of the service, without naming its adapters: the routes are generic over
/// them, the extractor is not. [`crate::routes::mount`] registers the state as `Data<dyn Authenticate>`.
pub trait Authenticate: 'static {
    /// Turns a bearer token into the caller (the domain's `Service::authenticate`).
    fn authenticate<'a>(&'a self, token: &'a str) -> Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + 'a>>;

    /// Where the request comes from, as the caller's events record it.
    fn client(&self, req: &actix_web::HttpRequest) -> users_domain::sessions::ClientInfo;
}

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
    /// One-time passwords of the second factor, sealing secrets with the data key when one is configured.
    pub otp: TotpCodec,
}

impl Ports for AppPorts {
    type Users = PgRepository;
    type Sessions = PgRepository;
    type EmailTokens = PgRepository;
    type Throttle = PgRepository;
    type Outbox = PgRepository;
    type Requests = PgRepository;
    type SecondFactors = PgRepository;
    type Pictures = PgRepository;
    type RequestCounts = PgRepository;
    type Audit = PgRepository;
    type Objects = AppStore;
    type Images = ImagePipeline;
    type Hasher = Argon2Hasher;
    type Tokens = JwtCodec;
    type Otp = TotpCodec;
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
    fn second_factors(&self) -> &PgRepository {
        &self.db
    }
    fn pictures(&self) -> &PgRepository {
        &self.db
    }
    fn request_counts(&self) -> &PgRepository {
        &self.db
    }

    fn audit(&self) -> &PgRepository {
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
    fn otp(&self) -> &TotpCodec {
        &self.otp
    }
    fn clock(&self) -> &SystemClock {
        &SystemClock
    }
}

/// The domain service with the production adapters plugged in.
pub type AppService = Service<AppPorts>;

/// Where `/.well-known/jwks.json` gets its document: a fixed one, or the codec's key ring at each request, because
/// keys rotate and retire while the server runs.
#[derive(Debug, Clone)]
pub enum Jwks {
    /// The same document every time.
    Fixed(serde_json::Value),
    /// The keys of this codec that verify at the time of the request.
    Live(JwtCodec),
}

impl Jwks {
    /// The document to serve now.
    #[must_use]
    pub fn document(&self) -> serde_json::Value {
        match self {
            Self::Fixed(document) => document.clone(),
            Self::Live(codec) => codec.jwks(),
        }
    }
}

impl From<serde_json::Value> for Jwks {
    fn from(document: serde_json::Value) -> Self {
        Self::Fixed(document)
    }
}

impl From<JwtCodec> for Jwks {
    fn from(codec: JwtCodec) -> Self {
        Self::Live(codec)
    }
}

/// What every handler can reach: the domain service over any adapter set, and the edge's own settings.
pub struct AppState<P> {
    /// The domain service.
    pub service: Service<P>,
    /// `PUBLIC_BASE_URL`, for links and picture URLs.
    pub public_base_url: String,
    /// The JWKS document served at `/.well-known/jwks.json`.
    pub jwks: Jwks,
    /// Per-client-IP limits on the routes attackers hammer.
    pub rate_limiter: RateLimiter,
    /// Who the client is, behind the trusted proxies (`TRUSTED_PROXIES`).
    pub clients: crate::edge::ClientAddresses,
    /// `PICTURE_MAX_BYTES`.
    pub picture_max_bytes: u64,
    /// One permit per picture upload being read or processed (`PICTURE_MAX_CONCURRENT`).
    pub picture_uploads: Arc<Semaphore>,
    /// Set once the instance was asked to stop; `/readyz` answers 503 from then on.
    pub stopping: Stopping,
}

/// Whether the instance is stopping: set when it is asked to stop, before it finishes its background work and
/// drains its requests, so that `/readyz` tells a load balancer to send new traffic elsewhere meanwhile.
#[derive(Debug, Clone, Default)]
pub struct Stopping(Arc<AtomicBool>);

impl Stopping {
    /// Marks the instance as stopping; there is no way back.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// True once [`Self::set`] was called.
    #[must_use]
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl<P: Ports> Authenticate for AppState<P> {
    fn authenticate<'a>(&'a self, token: &'a str) -> Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + 'a>> {
        Box::pin(self.service.authenticate(token))
    }

    fn client(&self, req: &actix_web::HttpRequest) -> users_domain::sessions::ClientInfo {
        crate::routes::client_info(req, &self.clients)
    }
}

impl<P: Ports> AppState<P> {
    /// Counts a request to `route` against its client address's per-IP limit (see [`RateLimiter::check`]).
    ///
    /// # Errors
    /// 429 `rate_limited` past the limit, 503 when the count cannot be taken.
    pub async fn limit(&self, route: &'static str, req: &HttpRequest) -> Result<(), ApiError> {
        let ports = self.service.ports();
        self.rate_limiter.check(ports.request_counts(), ports.clock().now(), route, self.clients.of(req)).await
    }

    /// The state of the routes: the service and the edge settings from `config` (base URL, per-IP limits, upload
    /// bounds), with `jwks` as the key set to publish (a fixed document or one read from the rotating key ring).
    pub fn new(service: Service<P>, config: &Config, jwks: impl Into<Jwks>) -> web::Data<Self> {
        web::Data::new(Self {
            service,
            public_base_url: config.service.public_base_url.clone(),
            jwks: jwks.into(),
            rate_limiter: RateLimiter::new(config.rate_limits, config.rate_limit_per_minute),
            clients: crate::edge::ClientAddresses::new(config.trusted_proxies.clone()),
            picture_max_bytes: config.picture_max_bytes,
            picture_uploads: Arc::new(Semaphore::new(config.picture_max_concurrent)),
            stopping: Stopping::default(),
        })
    }
}
