//! Configuration, read once at start-up from the environment (and a `.env` file, loaded by `main`).
//!
//! Every variable (listed in the README and `.env.example`) has a safe local default. A value that does not parse stops start-up with one line that
//! names the variable, so a typo never silently falls back to a default.
//!
//! Secret-bearing variables (`DATABASE_URL`, `S3_ACCESS_KEY`, `S3_SECRET_KEY`, `SMTP_PASSWORD`,
//! `BOOTSTRAP_ADMIN_PASSWORD`, `WEBHOOK_SECRET`) may instead be given as `NAME_FILE`, the path of a file holding the value (as
//! Docker and Kubernetes secrets are mounted), so the secret stays out of the process environment; one trailing
//! newline of the file is dropped. Setting both forms is an error naming both.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use time::Duration;
use url::Url;
use users_domain::mail::DispatcherConfig;
use users_domain::ports::BackoffPolicy;
use users_domain::{EmailAddress, PasswordPolicy, ServiceConfig};
use users_postgres::PgConfig;
use users_s3::S3Config;
use users_smtp::{SmtpConfig, SmtpTlsMode};

/// A configuration value that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn invalid(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { variable, message: message.into() }
}

/// Where profile pictures are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageBackend {
    /// Files under `DATA_DIR/pictures` (the embedded default).
    Fs,
    /// An S3-compatible server such as MinIO or Garage (`S3_*`), in the S3 adapter's own settings.
    S3(S3Config),
}

/// How mail is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailBackend {
    /// Each mail written as `.eml` under `DATA_DIR/mail` (the embedded default).
    File,
    /// An SMTP server (`SMTP_*`, `MAIL_FROM`), in the SMTP adapter's own settings.
    Smtp(SmtpConfig),
}

/// How logs are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The first administrator, made sure of at start-up (`BOOTSTRAP_ADMIN_*`).
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapAdmin {
    /// The admin's email.
    pub email: EmailAddress,
    /// The admin's password (checked against the policy when used).
    pub password: String,
}

impl std::fmt::Debug for BootstrapAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapAdmin").field("email", &self.email).finish_non_exhaustive()
    }
}

/// Webhook delivery (`WEBHOOK_*`): where events go, which ones, signed with what.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// `WEBHOOK_URLS`: the endpoints, each an absolute `http` or `https` URL.
    pub urls: Vec<String>,
    /// `WEBHOOK_EVENTS`: the event types delivered, or `*` for all.
    pub events: Vec<String>,
    /// The signing key: `WEBHOOK_SECRET` (or its file) after `whsec_`, base64-decoded.
    pub key: Vec<u8>,
    /// `WEBHOOK_MAX_ATTEMPTS`: attempts per delivery before it is dead.
    pub max_attempts: u32,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            // A webhook URL may hold a token of the receiver's (in its path or query): only how many there are.
            .field("urls", &self.urls.len())
            .field("events", &self.events)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// The most attempts `WEBHOOK_MAX_ATTEMPTS` may ask for: with the backoff capped at an hour, about two weeks.
const MAX_WEBHOOK_ATTEMPTS: u32 = 30;

/// Reads `WEBHOOK_*`; `None` when no URL is set.
fn webhooks(vars: &Vars<'_>) -> Result<Option<WebhookConfig>, ConfigError> {
    let secret = vars.secret("WEBHOOK_SECRET", "WEBHOOK_SECRET_FILE")?;
    let Some(raw_urls) = vars.get("WEBHOOK_URLS") else {
        return Ok(None);
    };
    let mut urls = Vec::new();
    for raw in raw_urls.split(',').map(str::trim).filter(|raw| !raw.is_empty()) {
        let url = Url::parse(raw).map_err(|_| invalid("WEBHOOK_URLS", format!("{raw:?} is not an absolute URL")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() || raw.len() > 2048 {
            return Err(invalid("WEBHOOK_URLS", format!("{raw:?} is not an http or https URL")));
        }
        if !urls.contains(&url.to_string()) {
            urls.push(url.to_string());
        }
    }
    if urls.is_empty() {
        return Ok(None);
    }
    let secret =
        secret.ok_or_else(|| invalid("WEBHOOK_SECRET", "must be set (or WEBHOOK_SECRET_FILE) with WEBHOOK_URLS"))?;
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|encoded| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(encoded).ok()
        })
        .filter(|key| key.len() >= 24 && key.len() <= 64)
        .ok_or_else(|| invalid("WEBHOOK_SECRET", "must be whsec_ followed by 24 to 64 bytes in base64"))?;
    let mut events = Vec::new();
    for name in vars.string("WEBHOOK_EVENTS", "*").split(',').map(str::trim).filter(|name| !name.is_empty()) {
        if name != "*" && users_domain::audit::EventType::parse(name).is_none() {
            return Err(invalid("WEBHOOK_EVENTS", format!("{name:?} is not an event type (or *)")));
        }
        if !events.iter().any(|known| known == name) {
            events.push(name.to_owned());
        }
    }
    if events.is_empty() {
        return Err(invalid("WEBHOOK_EVENTS", "must name at least one event type, or *"));
    }
    let max_attempts = vars.parsed("WEBHOOK_MAX_ATTEMPTS", 10_u32, "a whole number")?;
    if max_attempts == 0 || max_attempts > MAX_WEBHOOK_ATTEMPTS {
        return Err(invalid("WEBHOOK_MAX_ATTEMPTS", "must be from 1 to 30"));
    }
    Ok(Some(WebhookConfig { urls, events, key, max_attempts }))
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `BIND_ADDR`.
    pub bind_addr: SocketAddr,
    /// The domain's settings: `PUBLIC_BASE_URL` (without a trailing slash), the token lifetimes
    /// (`ACCESS_TOKEN_TTL`, `REFRESH_TOKEN_TTL`, `REFRESH_TOKEN_IDLE_TTL`, `VERIFY_TOKEN_TTL`, `RESET_TOKEN_TTL`),
    /// `PASSWORD_MIN_LENGTH` and `LOGIN_BACKOFF_*`. Their defaults are the domain's own.
    pub service: ServiceConfig,
    /// The Postgres adapter's settings: `DATABASE_URL` (or `DATABASE_URL_FILE`); the default and the pool size are
    /// the adapter's own.
    pub database: PgConfig,
    /// `DATA_DIR`.
    pub data_dir: PathBuf,
    /// `STORAGE_BACKEND` and `S3_*`.
    pub storage: StorageBackend,
    /// `MAIL_BACKEND` and `SMTP_*`.
    pub mail: MailBackend,
    /// `MAIL_FROM`.
    pub mail_from: String,
    /// `MAIL_LEASE`: how long an instance's outbox dispatcher holds the mails it claimed before another instance
    /// may take them over (the wait before a mail claimed by an instance that died goes out from another).
    pub mail_lease: Duration,
    /// `JWT_ALGORITHM`.
    pub jwt_algorithm: String,
    /// `JWT_PRIVATE_KEY_FILE`: the one signing key; without it the keys are kept in the database.
    pub jwt_private_key_file: Option<PathBuf>,
    /// `DATA_ENCRYPTION_KEY_FILE`: 32 random bytes in base64; when set, TOTP secrets and the signing keys kept in the
    /// database are stored encrypted with it.
    /// Checked at start-up (it must read and decode).
    pub data_encryption_key_file: Option<PathBuf>,
    /// `TRUSTED_PROXIES`: when the TCP peer is inside one of these networks, the client address is taken from
    /// `X-Forwarded-For` (the right-most entry outside them); otherwise forwarding headers are ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `CORS_ALLOWED_ORIGINS`: the exact origins a browser app may call the API from; empty, no CORS headers.
    pub cors_allowed_origins: Vec<String>,
    /// `PICTURE_MAX_BYTES`.
    pub picture_max_bytes: u64,
    /// `PICTURE_MAX_CONCURRENT`: picture uploads read and processed at once; more are refused with 503.
    pub picture_max_concurrent: usize,
    /// `BOOTSTRAP_ADMIN_EMAIL` and `BOOTSTRAP_ADMIN_PASSWORD`.
    pub bootstrap_admin: Option<BootstrapAdmin>,
    /// `RATE_LIMITS`.
    pub rate_limits: bool,
    /// `RATE_LIMIT_PER_MINUTE`.
    pub rate_limit_per_minute: u32,
    /// `RETENTION`: how long housekeeping keeps a row after it stopped mattering (at least an hour).
    pub retention: Duration,
    /// `AUDIT_RETENTION`: how long audit events are kept (at least a day).
    pub audit_retention: Duration,
    /// `WEBHOOK_*`: event delivery, when `WEBHOOK_URLS` is set.
    pub webhooks: Option<WebhookConfig>,
    /// `PURGE_INTERVAL`: how often `serve` runs housekeeping.
    pub purge_interval: Duration,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `METRICS_BIND_ADDR`: where `GET /metrics` is served, on a listener of its own; `None` (the variable set
    /// empty) serves no metrics.
    pub metrics_bind_addr: Option<SocketAddr>,
}

/// The shortest `RETENTION` accepted.
const MIN_RETENTION: Duration = Duration::hours(1);

/// The longest `RETENTION` accepted: ten years. A longer one would put the cutoff before anything Postgres can
/// store, and every housekeeping round would fail.
const MAX_RETENTION: Duration = Duration::days(3650);

/// The longest `MAIL_LEASE` accepted. A longer one only delays the mail of a dead instance, and one past the
/// calendar would make every claim fail, so that no mail went out at all.
const MAX_MAIL_LEASE: Duration = Duration::days(1);

/// Parses the configuration's duration forms: a positive whole number followed by `s`, `m`, `h` or `d`.
///
/// # Errors
/// A message describing the accepted forms.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let message = || format!("{raw:?} is not a duration such as 30s, 15m, 24h or 7d");
    let split = raw.len().checked_sub(1).ok_or_else(message)?;
    let (number, unit) = raw.split_at(split);
    let value: i64 = number.parse().map_err(|_| message())?;
    if value <= 0 {
        return Err(message());
    }
    let seconds = match unit {
        "s" => Some(value),
        "m" => value.checked_mul(60),
        "h" => value.checked_mul(3600),
        "d" => value.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(message)?;
    Ok(Duration::seconds(seconds))
}

/// The longest `REFRESH_REUSE_GRACE`: a retry follows a lost answer within seconds, and every second of grace is
/// a second in which a stolen, already exchanged token still works once.
const REUSE_GRACE_MAX: Duration = Duration::minutes(5);

/// `REFRESH_REUSE_GRACE`: a duration like the others, or `0s` (the default) for none, at most [`REUSE_GRACE_MAX`].
fn reuse_grace(vars: &Vars<'_>, default: Duration) -> Result<Duration, ConfigError> {
    const NAME: &str = "REFRESH_REUSE_GRACE";
    let Some(raw) = vars.get(NAME) else { return Ok(default) };
    let grace = match raw.trim() {
        "0" | "0s" => Duration::ZERO,
        other => parse_duration(other).map_err(|message| invalid(NAME, message))?,
    };
    if grace > REUSE_GRACE_MAX {
        return Err(invalid(NAME, "must be at most 5m"));
    }
    Ok(grace)
}

/// Reads variables from a lookup function, so tests can configure without touching the process environment.
struct Vars<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Vars<'_> {
    /// The value, or `None` when unset or empty.
    fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|value| !value.trim().is_empty())
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_owned())
    }

    fn parsed<T: FromStr>(&self, name: &'static str, default: T, what: &str) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|_| invalid(name, format!("{raw:?} is not {what}"))),
        }
    }

    fn duration(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        self.get(name).map_or(Ok(default), |raw| parse_duration(&raw).map_err(|message| invalid(name, message)))
    }

    fn required(&self, name: &'static str, because: &str) -> Result<String, ConfigError> {
        self.get(name).ok_or_else(|| invalid(name, format!("must be set {because}")))
    }

    /// A secret, given either as `name` or as `file_name` (`name` + `_FILE`), the path of a file holding it.
    ///
    /// One trailing newline (`\n` or `\r\n`) of the file is dropped, since editors and `echo` add one; anything
    /// else is kept, because a secret may end in spaces.
    fn secret(&self, name: &'static str, file_name: &'static str) -> Result<Option<String>, ConfigError> {
        match (self.get(name), self.get(file_name)) {
            (Some(_), Some(_)) => {
                Err(invalid(name, format!("{name} and {file_name} are both set; set only one of them")))
            }
            (direct, None) => Ok(direct),
            (None, Some(path)) => {
                let contents = std::fs::read_to_string(&path)
                    .map_err(|error| invalid(file_name, format!("cannot read {path:?}: {error}")))?;
                let value = contents.strip_suffix("\r\n").or_else(|| contents.strip_suffix('\n')).unwrap_or(&contents);
                if value.is_empty() {
                    return Err(invalid(file_name, format!("{path:?} is empty")));
                }
                Ok(Some(value.to_owned()))
            }
        }
    }

    /// A secret that must be given in one of its two forms.
    fn required_secret(
        &self,
        name: &'static str,
        file_name: &'static str,
        because: &str,
    ) -> Result<String, ConfigError> {
        self.secret(name, file_name)?.ok_or_else(|| invalid(name, format!("must be set (or {file_name}) {because}")))
    }

    /// An optional listen address: the default when unset, `None` when set to the empty string.
    fn optional_addr(&self, name: &'static str, default: SocketAddr) -> Result<Option<SocketAddr>, ConfigError> {
        match (self.lookup)(name) {
            None => Ok(Some(default)),
            Some(raw) if raw.trim().is_empty() => Ok(None),
            Some(raw) => raw.trim().parse().map(Some).map_err(|_| {
                invalid(name, format!("{raw:?} is not an address such as 127.0.0.1:9464 (or empty, to disable)"))
            }),
        }
    }
}

impl Config {
    /// What a housekeeping round deletes: `RETENTION` and `AUDIT_RETENTION`, in batches of the default size.
    #[must_use]
    pub const fn purge_settings(&self) -> users_postgres::PurgeSettings {
        users_postgres::PurgeSettings {
            retention: self.retention,
            audit_retention: self.audit_retention,
            batch_size: users_postgres::DEFAULT_BATCH_SIZE,
        }
    }

    /// Reads the configuration from the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable that does not parse.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Reads the configuration from a map, for tests and embedding.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable that does not parse.
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_lookup(&|name| vars.get(name).cloned())
    }

    fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars { lookup };
        let bind_addr =
            vars.parsed("BIND_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)), "an address such as 127.0.0.1:8080")?;
        let defaults = ServiceConfig::default();
        let public_base_url =
            parse_base_url("PUBLIC_BASE_URL", &vars.string("PUBLIC_BASE_URL", &defaults.public_base_url))?;
        let app_base_url = vars.get("APP_BASE_URL").map(|raw| parse_base_url("APP_BASE_URL", &raw)).transpose()?;
        let trusted_proxies = parse_trusted_proxies(&vars.string("TRUSTED_PROXIES", ""))?;
        let cors_allowed_origins = parse_origins(&vars.string("CORS_ALLOWED_ORIGINS", ""))?;
        let database_defaults = PgConfig::default();
        let database_url =
            vars.secret("DATABASE_URL", "DATABASE_URL_FILE")?.unwrap_or_else(|| database_defaults.url.clone());
        match Url::parse(&database_url) {
            Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") && url.has_host() => {}
            _ => return Err(invalid("DATABASE_URL", "must be a URL such as postgres://user@host:5432/database")),
        }
        let data_dir = PathBuf::from(vars.string("DATA_DIR", "./data"));
        let storage = match vars.string("STORAGE_BACKEND", "fs").as_str() {
            "fs" => StorageBackend::Fs,
            "s3" => StorageBackend::S3(s3_settings(&vars)?),
            other => return Err(invalid("STORAGE_BACKEND", format!("{other:?} is not one of fs, s3"))),
        };
        let mail_from = vars.string("MAIL_FROM", "no-reply@localhost");
        // The sender is ours, so a bare host such as `localhost` is fine; what matters is that nothing can break out
        // of the From header.
        let sender_ok = mail_from.len() <= 254
            && mail_from.split_once('@').is_some_and(|(local, host)| !local.is_empty() && !host.is_empty())
            && !mail_from.chars().any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c));
        if !sender_ok {
            return Err(invalid(
                "MAIL_FROM",
                format!("{mail_from:?} is not a plain address such as no-reply@example.com"),
            ));
        }
        let mail = match vars.string("MAIL_BACKEND", "file").as_str() {
            "file" => MailBackend::File,
            "smtp" => MailBackend::Smtp(smtp_settings(&vars, &mail_from)?),
            other => return Err(invalid("MAIL_BACKEND", format!("{other:?} is not one of file, smtp"))),
        };
        let jwt_algorithm = vars.string("JWT_ALGORITHM", "ES256");
        if jwt_algorithm != "ES256" {
            return Err(invalid("JWT_ALGORITHM", format!("{jwt_algorithm:?} is not supported; use ES256")));
        }
        let password_min_length =
            vars.parsed("PASSWORD_MIN_LENGTH", defaults.password_policy.min_length, "a whole number")?;
        if !(8..=128).contains(&password_min_length) {
            return Err(invalid("PASSWORD_MIN_LENGTH", "must be between 8 and 128"));
        }
        let picture_max_bytes = vars.parsed("PICTURE_MAX_BYTES", 5_242_880_u64, "a number of bytes")?;
        if picture_max_bytes == 0 {
            return Err(invalid("PICTURE_MAX_BYTES", "must be greater than 0"));
        }
        // Twice the cores keeps every core busy while some uploads are still arriving, and bounds memory at that
        // many bodies of PICTURE_MAX_BYTES plus their decoding.
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let picture_max_concurrent = vars.parsed("PICTURE_MAX_CONCURRENT", 2 * cores, "a whole number")?;
        if picture_max_concurrent == 0 {
            return Err(invalid("PICTURE_MAX_CONCURRENT", "must be greater than 0"));
        }
        let bootstrap_password = vars.secret("BOOTSTRAP_ADMIN_PASSWORD", "BOOTSTRAP_ADMIN_PASSWORD_FILE")?;
        let bootstrap_admin = match (vars.get("BOOTSTRAP_ADMIN_EMAIL"), bootstrap_password) {
            (None, None) => None,
            (Some(email), Some(password)) => Some(BootstrapAdmin {
                email: EmailAddress::parse(&email).map_err(|e| invalid("BOOTSTRAP_ADMIN_EMAIL", e.to_string()))?,
                password,
            }),
            (Some(_), None) => {
                return Err(invalid(
                    "BOOTSTRAP_ADMIN_PASSWORD",
                    "must be set (or BOOTSTRAP_ADMIN_PASSWORD_FILE) with BOOTSTRAP_ADMIN_EMAIL",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid("BOOTSTRAP_ADMIN_EMAIL", "must be set with BOOTSTRAP_ADMIN_PASSWORD"));
            }
        };
        let rate_limits = match vars.string("RATE_LIMITS", "on").as_str() {
            "on" => true,
            "off" => false,
            other => return Err(invalid("RATE_LIMITS", format!("{other:?} is not one of on, off"))),
        };
        let rate_limit_per_minute = vars.parsed("RATE_LIMIT_PER_MINUTE", 20_u32, "a whole number")?;
        if rate_limit_per_minute == 0 {
            return Err(invalid("RATE_LIMIT_PER_MINUTE", "must be greater than 0 (use RATE_LIMITS=off to disable)"));
        }
        let retention = vars.duration("RETENTION", Duration::days(7))?;
        // Shorter, and a rate-limit window could be deleted while it still counts.
        if retention < MIN_RETENTION {
            return Err(invalid("RETENTION", "must be at least 1h"));
        }
        if retention > MAX_RETENTION {
            return Err(invalid("RETENTION", "must be at most 3650d"));
        }
        let audit_retention = vars.duration("AUDIT_RETENTION", users_postgres::DEFAULT_AUDIT_RETENTION)?;
        // Shorter, and the trail would forget a theft before anyone looked.
        if audit_retention < Duration::days(1) {
            return Err(invalid("AUDIT_RETENTION", "must be at least 1d"));
        }
        if audit_retention > MAX_RETENTION {
            return Err(invalid("AUDIT_RETENTION", "must be at most 3650d"));
        }
        let purge_interval = vars.duration("PURGE_INTERVAL", Duration::hours(1))?;
        let log_format = match vars.string("LOG_FORMAT", "pretty").as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => return Err(invalid("LOG_FORMAT", format!("{other:?} is not one of pretty, json"))),
        };
        let login_backoff_base = vars.duration("LOGIN_BACKOFF_BASE", defaults.login_backoff.base)?;
        let login_backoff_max = vars.duration("LOGIN_BACKOFF_MAX", defaults.login_backoff.max)?;
        if login_backoff_max < login_backoff_base {
            return Err(invalid("LOGIN_BACKOFF_MAX", "must not be shorter than LOGIN_BACKOFF_BASE"));
        }
        let mail_lease = vars.duration("MAIL_LEASE", DispatcherConfig::default().lease)?;
        if mail_lease > MAX_MAIL_LEASE {
            return Err(invalid("MAIL_LEASE", "must be at most 1d"));
        }
        let data_encryption_key_file = vars.get("DATA_ENCRYPTION_KEY_FILE").map(PathBuf::from);
        if let Some(path) = &data_encryption_key_file {
            users_crypto::DataKey::from_file(path)
                .map_err(|error| invalid("DATA_ENCRYPTION_KEY_FILE", error.to_string()))?;
        }
        Ok(Self {
            bind_addr,
            service: ServiceConfig {
                access_token_ttl: vars.duration("ACCESS_TOKEN_TTL", defaults.access_token_ttl)?,
                refresh_token_ttl: vars.duration("REFRESH_TOKEN_TTL", defaults.refresh_token_ttl)?,
                refresh_token_idle_ttl: vars.duration("REFRESH_TOKEN_IDLE_TTL", defaults.refresh_token_idle_ttl)?,
                refresh_reuse_grace: reuse_grace(&vars, defaults.refresh_reuse_grace)?,
                verify_token_ttl: vars.duration("VERIFY_TOKEN_TTL", defaults.verify_token_ttl)?,
                reset_token_ttl: vars.duration("RESET_TOKEN_TTL", defaults.reset_token_ttl)?,
                password_policy: PasswordPolicy { min_length: password_min_length },
                login_backoff: BackoffPolicy {
                    after: vars.parsed("LOGIN_BACKOFF_AFTER", defaults.login_backoff.after, "a whole number")?,
                    base: login_backoff_base,
                    max: login_backoff_max,
                },
                public_base_url,
                app_base_url,
                ..defaults
            },
            database: PgConfig { url: database_url, ..database_defaults },
            data_dir,
            storage,
            mail,
            mail_from,
            mail_lease,
            jwt_algorithm,
            jwt_private_key_file: vars.get("JWT_PRIVATE_KEY_FILE").map(PathBuf::from),
            data_encryption_key_file,
            trusted_proxies,
            cors_allowed_origins,
            picture_max_bytes,
            picture_max_concurrent,
            bootstrap_admin,
            rate_limits,
            rate_limit_per_minute,
            retention,
            audit_retention,
            webhooks: webhooks(&vars)?,
            purge_interval,
            log_format,
            metrics_bind_addr: vars.optional_addr("METRICS_BIND_ADDR", SocketAddr::from(([127, 0, 0, 1], 9464)))?,
        })
    }
}

fn parse_base_url(variable: &'static str, raw: &str) -> Result<String, ConfigError> {
    let url = Url::parse(raw).map_err(|_| invalid(variable, format!("{raw:?} is not an absolute URL")))?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() || url.query().is_some() || url.fragment().is_some()
    {
        return Err(invalid(variable, "must be an http(s) URL without query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// `TRUSTED_PROXIES`: a comma list of CIDRs (`10.0.0.0/8`, `fd00::/8`); a bare address is a single host.
fn parse_trusted_proxies(raw: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| invalid("TRUSTED_PROXIES", format!("{entry:?} is not a CIDR such as 10.0.0.0/8")))
        })
        .collect()
}

/// `CORS_ALLOWED_ORIGINS`: a comma list of exact origins, each `scheme://host[:port]` with no path, as a browser
/// sends it in `Origin` (lower-case, default ports left out).
fn parse_origins(raw: &str) -> Result<Vec<String>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let refuse = |why: &str| invalid("CORS_ALLOWED_ORIGINS", format!("{entry:?} {why}"));
            let url = Url::parse(entry).map_err(|_| refuse("is not an origin such as https://app.example.com"))?;
            if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
                return Err(refuse("must be an http(s) origin"));
            }
            let origin = url.origin().ascii_serialization();
            if origin != entry {
                return Err(refuse(&format!("must be written exactly as browsers send it: {origin}")));
            }
            Ok(origin)
        })
        .collect()
}

fn s3_settings(vars: &Vars<'_>) -> Result<S3Config, ConfigError> {
    let because = "when STORAGE_BACKEND=s3";
    let raw_endpoint = vars.required("S3_ENDPOINT", because)?;
    let endpoint = Url::parse(&raw_endpoint)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
        .ok_or_else(|| invalid("S3_ENDPOINT", format!("{raw_endpoint:?} is not an http(s) URL")))?;
    Ok(S3Config {
        endpoint: endpoint.as_str().trim_end_matches('/').to_owned(),
        region: vars.string("S3_REGION", S3Config::DEFAULT_REGION),
        bucket: vars.string("S3_BUCKET", S3Config::DEFAULT_BUCKET),
        access_key: vars.required_secret("S3_ACCESS_KEY", "S3_ACCESS_KEY_FILE", because)?,
        secret_key: vars.required_secret("S3_SECRET_KEY", "S3_SECRET_KEY_FILE", because)?,
    })
}

fn smtp_settings(vars: &Vars<'_>, from: &str) -> Result<SmtpConfig, ConfigError> {
    let tls = match vars.get("SMTP_TLS") {
        Some(raw) => raw.parse::<SmtpTlsMode>().map_err(|error| invalid("SMTP_TLS", error.to_string()))?,
        None => SmtpConfig::DEFAULT_TLS,
    };
    let port = vars.parsed("SMTP_PORT", SmtpConfig::DEFAULT_PORT, "a port number")?;
    if port == 0 {
        return Err(invalid("SMTP_PORT", "must not be 0"));
    }
    Ok(SmtpConfig {
        host: vars.string("SMTP_HOST", SmtpConfig::DEFAULT_HOST),
        port,
        username: vars.get("SMTP_USERNAME"),
        password: vars.secret("SMTP_PASSWORD", "SMTP_PASSWORD_FILE")?,
        tls,
        from: from.to_owned(),
        timeout: SmtpConfig::DEFAULT_TIMEOUT,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::from_map(&map)
    }

    #[test]
    fn defaults_are_the_embedded_local_setup() {
        let config = config(&[]).unwrap();
        assert_eq!(config.bind_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.service.public_base_url, "http://localhost:8080");
        assert_eq!(config.storage, StorageBackend::Fs);
        assert_eq!(config.mail, MailBackend::File);
        assert_eq!(config.service, ServiceConfig::default());
        assert_eq!(config.service.access_token_ttl, Duration::minutes(15));
        assert_eq!(config.service.refresh_token_ttl, Duration::days(30));
        assert_eq!(config.service.password_policy.min_length, 15);
        assert_eq!(config.picture_max_concurrent, 2 * std::thread::available_parallelism().unwrap().get());
        assert!(config.rate_limits);
        assert_eq!(config.retention, Duration::days(7));
        assert_eq!(config.purge_interval, Duration::hours(1));
        assert_eq!(config.bootstrap_admin, None);
        assert_eq!(config.mail_lease, Duration::minutes(2));
        assert_eq!(self::config(&[("MAIL_LEASE", "5s")]).unwrap().mail_lease, Duration::seconds(5));
    }

    #[test]
    fn proxies_origins_and_the_app_base_url_are_checked_at_start_up() {
        let config = config(&[
            ("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7 ,fd00::/8"),
            ("CORS_ALLOWED_ORIGINS", "https://app.example.com,http://localhost:3000"),
            ("APP_BASE_URL", "https://app.example.com/"),
        ])
        .unwrap();
        assert_eq!(config.trusted_proxies.len(), 3);
        assert!(config.trusted_proxies[1].contains(&"192.168.1.7".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!(config.cors_allowed_origins, ["https://app.example.com", "http://localhost:3000"]);
        assert_eq!(config.service.mail_base_url(), "https://app.example.com");
        assert_eq!(self::config(&[]).unwrap().service.mail_base_url(), "http://localhost:8080");
        for (variable, bad) in [
            ("TRUSTED_PROXIES", "10.0.0.0/33"),
            ("TRUSTED_PROXIES", "proxy.example.com"),
            ("CORS_ALLOWED_ORIGINS", "*"),
            ("CORS_ALLOWED_ORIGINS", "https://app.example.com/"),
            ("CORS_ALLOWED_ORIGINS", "https://app.example.com/path"),
            ("CORS_ALLOWED_ORIGINS", "HTTPS://APP.example.com"),
            ("APP_BASE_URL", "ftp://app.example.com"),
            ("APP_BASE_URL", "https://app.example.com/?x=1"),
        ] {
            let error = self::config(&[(variable, bad)]).unwrap_err();
            assert_eq!(error.variable, variable, "{variable}={bad}");
        }
    }

    #[test]
    fn durations_take_the_four_units_and_nothing_else() {
        assert_eq!(parse_duration("30s"), Ok(Duration::seconds(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::minutes(15)));
        assert_eq!(parse_duration("24h"), Ok(Duration::hours(24)));
        assert_eq!(parse_duration("7d"), Ok(Duration::days(7)));
        for bad in ["", "s", "15", "0m", "-5m", "1.5h", "5w", "99999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_reuse_grace_is_off_by_default_and_takes_zero_or_a_duration() {
        assert_eq!(config(&[]).unwrap().service.refresh_reuse_grace, Duration::ZERO);
        assert_eq!(config(&[("REFRESH_REUSE_GRACE", "0s")]).unwrap().service.refresh_reuse_grace, Duration::ZERO);
        let grace = config(&[("REFRESH_REUSE_GRACE", "30s")]).unwrap().service.refresh_reuse_grace;
        assert_eq!(grace, Duration::seconds(30));
        assert_eq!(config(&[("REFRESH_REUSE_GRACE", "5m")]).unwrap().service.refresh_reuse_grace, Duration::minutes(5));
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let cases = [
            ("BIND_ADDR", "x"),
            ("DATABASE_URL", "nonsense"),
            ("PUBLIC_BASE_URL", "ftp://example.com"),
            ("STORAGE_BACKEND", "tape"),
            ("MAIL_BACKEND", "pigeon"),
            ("ACCESS_TOKEN_TTL", "forever"),
            ("REFRESH_REUSE_GRACE", "soon"),
            ("REFRESH_REUSE_GRACE", "-5s"),
            ("REFRESH_REUSE_GRACE", "6m"),
            ("PASSWORD_MIN_LENGTH", "4"),
            ("PICTURE_MAX_BYTES", "lots"),
            ("PICTURE_MAX_CONCURRENT", "0"),
            ("RATE_LIMITS", "maybe"),
            ("RETENTION", "a week"),
            ("RETENTION", "30m"),
            ("PURGE_INTERVAL", "0h"),
            ("LOG_FORMAT", "xml"),
            ("JWT_ALGORITHM", "HS256"),
            ("MAIL_FROM", "not an address"),
            ("MAIL_LEASE", "0s"),
        ];
        for (variable, value) in cases {
            let error = config(&[(variable, value)]).unwrap_err();
            assert_eq!(error.variable, variable, "{value:?}");
            assert!(error.to_string().starts_with(&format!("invalid configuration: {variable}: ")));
        }
    }

    #[test]
    fn s3_needs_its_endpoint_and_keys() {
        assert_eq!(config(&[("STORAGE_BACKEND", "s3")]).unwrap_err().variable, "S3_ENDPOINT");
        let ok = config(&[
            ("STORAGE_BACKEND", "s3"),
            ("S3_ENDPOINT", "http://127.0.0.1:3900"),
            ("S3_ACCESS_KEY", "key"),
            ("S3_SECRET_KEY", "secret"),
        ])
        .unwrap();
        assert!(matches!(ok.storage, StorageBackend::S3(ref s3) if s3.bucket == "user-profiles"));
        assert!(!format!("{ok:?}").contains("secret\""), "secrets stay out of Debug output");
    }

    /// Secret-bearing variables and their file forms.
    const SECRETS: [(&str, &str); 6] = [
        ("DATABASE_URL", "DATABASE_URL_FILE"),
        ("S3_ACCESS_KEY", "S3_ACCESS_KEY_FILE"),
        ("S3_SECRET_KEY", "S3_SECRET_KEY_FILE"),
        ("SMTP_PASSWORD", "SMTP_PASSWORD_FILE"),
        ("BOOTSTRAP_ADMIN_PASSWORD", "BOOTSTRAP_ADMIN_PASSWORD_FILE"),
        ("WEBHOOK_SECRET", "WEBHOOK_SECRET_FILE"),
    ];

    /// The settings under which every secret of [`SECRETS`] is read.
    const USING_EVERY_SECRET: [(&str, &str); 6] = [
        ("STORAGE_BACKEND", "s3"),
        ("S3_ENDPOINT", "http://127.0.0.1:3900"),
        ("MAIL_BACKEND", "smtp"),
        ("BOOTSTRAP_ADMIN_EMAIL", "admin@example.com"),
        ("BIND_ADDR", "127.0.0.1:0"),
        ("WEBHOOK_URLS", "https://hooks.example.com/users"),
    ];

    /// A file holding `contents`, removed when dropped.
    struct SecretFile(std::path::PathBuf);

    impl SecretFile {
        fn new(contents: &str) -> Self {
            let path = std::env::temp_dir().join(format!("um-config-{}", uuid::Uuid::new_v4().simple()));
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for SecretFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn every_secret_can_come_from_a_file_with_one_trailing_newline_dropped() {
        let url = SecretFile::new("postgres://app:pw@db:5432/users\n");
        let access = SecretFile::new("access-key\r\n");
        let secret = SecretFile::new("secret key with a trailing space \n\n");
        let smtp = SecretFile::new("smtp-password");
        let admin = SecretFile::new("a long admin passphrase\n");
        let hook = SecretFile::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n");
        let mut pairs = USING_EVERY_SECRET.to_vec();
        pairs.extend([
            ("WEBHOOK_SECRET_FILE", hook.path()),
            ("DATABASE_URL_FILE", url.path()),
            ("S3_ACCESS_KEY_FILE", access.path()),
            ("S3_SECRET_KEY_FILE", secret.path()),
            ("SMTP_PASSWORD_FILE", smtp.path()),
            ("BOOTSTRAP_ADMIN_PASSWORD_FILE", admin.path()),
        ]);
        let config = config(&pairs).unwrap();
        assert_eq!(config.database.url, "postgres://app:pw@db:5432/users");
        let StorageBackend::S3(s3) = &config.storage else { panic!("expected S3: {:?}", config.storage) };
        assert_eq!(s3.access_key, "access-key");
        assert_eq!(s3.secret_key, "secret key with a trailing space \n", "only one newline is dropped");
        let MailBackend::Smtp(smtp) = &config.mail else { panic!("expected SMTP: {:?}", config.mail) };
        assert_eq!(smtp.password.as_deref(), Some("smtp-password"));
        assert_eq!(config.bootstrap_admin.unwrap().password, "a long admin passphrase");
        assert_eq!(config.webhooks.unwrap().key.len(), 24);
    }

    #[test]
    fn setting_both_forms_of_a_secret_is_an_error_naming_both() {
        let file = SecretFile::new("value\n");
        for (name, file_name) in SECRETS {
            let mut pairs = USING_EVERY_SECRET.to_vec();
            pairs.extend([
                ("S3_ACCESS_KEY", "a"),
                ("S3_SECRET_KEY", "b"),
                ("BOOTSTRAP_ADMIN_PASSWORD", "c"),
                ("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ]);
            pairs.retain(|(key, _)| *key != name);
            pairs.extend([(name, "direct"), (file_name, file.path())]);
            let error = config(&pairs).unwrap_err();
            assert_eq!(error.variable, name);
            let message = error.to_string();
            assert!(message.contains(name) && message.contains(file_name), "{message}");
        }
    }

    #[test]
    fn webhooks_need_a_secret_known_event_types_and_http_urls() {
        const SECRET: (&str, &str) = ("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(config(&[SECRET]).unwrap().webhooks, None, "no URL, no webhooks");
        let hooks = config(&[
            SECRET,
            ("WEBHOOK_URLS", "https://a.example/hook, http://b.example:8080/x,https://a.example/hook"),
            ("WEBHOOK_EVENTS", "login.failed,session.reuse_detected"),
            ("WEBHOOK_MAX_ATTEMPTS", "3"),
        ])
        .unwrap()
        .webhooks
        .unwrap();
        assert_eq!(hooks.urls, ["https://a.example/hook", "http://b.example:8080/x"]);
        assert_eq!(hooks.events, ["login.failed", "session.reuse_detected"]);
        assert_eq!(hooks.max_attempts, 3);
        assert!(!format!("{hooks:?}").contains("MfKQ"), "the key stays out of Debug output");
        assert!(!format!("{hooks:?}").contains("a.example"), "URLs may hold tokens: they stay out of Debug output");
        let defaults = config(&[SECRET, ("WEBHOOK_URLS", "https://a.example/hook")]).unwrap().webhooks.unwrap();
        assert_eq!((defaults.events, defaults.max_attempts), (vec!["*".to_owned()], 10));
        for (pairs, variable) in [
            (vec![("WEBHOOK_URLS", "https://a.example/hook")], "WEBHOOK_SECRET"),
            (vec![SECRET, ("WEBHOOK_URLS", "ftp://a.example/hook")], "WEBHOOK_URLS"),
            (vec![SECRET, ("WEBHOOK_URLS", "/relative")], "WEBHOOK_URLS"),
            (
                vec![("WEBHOOK_SECRET", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), ("WEBHOOK_URLS", "https://a.example")],
                "WEBHOOK_SECRET",
            ),
            (vec![("WEBHOOK_SECRET", "whsec_c2hvcnQ="), ("WEBHOOK_URLS", "https://a.example")], "WEBHOOK_SECRET"),
            (vec![SECRET, ("WEBHOOK_URLS", "https://a.example"), ("WEBHOOK_EVENTS", "login.nope")], "WEBHOOK_EVENTS"),
            (
                vec![SECRET, ("WEBHOOK_URLS", "https://a.example"), ("WEBHOOK_MAX_ATTEMPTS", "0")],
                "WEBHOOK_MAX_ATTEMPTS",
            ),
            (
                vec![SECRET, ("WEBHOOK_URLS", "https://a.example"), ("WEBHOOK_MAX_ATTEMPTS", "31")],
                "WEBHOOK_MAX_ATTEMPTS",
            ),
        ] {
            assert_eq!(config(&pairs).unwrap_err().variable, variable, "{pairs:?}");
        }
    }

    #[test]
    fn a_missing_or_empty_secret_file_names_the_file_variable() {
        let missing = config(&[("DATABASE_URL_FILE", "/nonexistent/um-database-url")]).unwrap_err();
        assert_eq!(missing.variable, "DATABASE_URL_FILE");
        assert!(missing.message.contains("/nonexistent/um-database-url"), "{missing}");
        let empty = SecretFile::new("\n");
        let error = config(&[("DATABASE_URL_FILE", empty.path())]).unwrap_err();
        assert_eq!(error.variable, "DATABASE_URL_FILE");
        assert!(error.message.contains("empty"), "{error}");
    }

    #[test]
    fn a_secret_file_is_checked_like_the_variable_it_stands_for() {
        let bad = SecretFile::new("mysql://db/users\n");
        assert_eq!(config(&[("DATABASE_URL_FILE", bad.path())]).unwrap_err().variable, "DATABASE_URL");
        assert_eq!(
            config(&[("STORAGE_BACKEND", "s3"), ("S3_ENDPOINT", "http://s3"), ("S3_ACCESS_KEY", "a")])
                .unwrap_err()
                .to_string(),
            "invalid configuration: S3_SECRET_KEY: must be set (or S3_SECRET_KEY_FILE) when STORAGE_BACKEND=s3"
        );
    }

    #[test]
    fn metrics_listen_on_loopback_9464_unless_told_otherwise_and_empty_disables_them() {
        assert_eq!(config(&[]).unwrap().metrics_bind_addr, Some(SocketAddr::from(([127, 0, 0, 1], 9464))));
        assert_eq!(config(&[("METRICS_BIND_ADDR", "")]).unwrap().metrics_bind_addr, None);
        assert_eq!(
            config(&[("METRICS_BIND_ADDR", "0.0.0.0:9100")]).unwrap().metrics_bind_addr,
            Some(SocketAddr::from(([0, 0, 0, 0], 9100)))
        );
        assert_eq!(config(&[("METRICS_BIND_ADDR", "9464")]).unwrap_err().variable, "METRICS_BIND_ADDR");
    }

    #[test]
    fn bootstrap_admin_needs_both_variables() {
        assert_eq!(
            config(&[("BOOTSTRAP_ADMIN_EMAIL", "a@example.com")]).unwrap_err().variable,
            "BOOTSTRAP_ADMIN_PASSWORD"
        );
        assert_eq!(config(&[("BOOTSTRAP_ADMIN_PASSWORD", "x")]).unwrap_err().variable, "BOOTSTRAP_ADMIN_EMAIL");
    }

    #[test]
    fn retention_and_mail_lease_past_what_the_database_can_hold_stop_start_up() {
        // Both parse as durations; both would make every housekeeping round or every mail claim fail for ever.
        for (variable, value) in [("RETENTION", "3651d"), ("RETENTION", "3000000d"), ("MAIL_LEASE", "25h")] {
            let error = config(&[(variable, value)]).unwrap_err();
            assert_eq!(error.variable, variable, "{value}");
            assert!(error.to_string().contains("must be at most"), "{error}");
        }
        assert_eq!(config(&[("RETENTION", "3650d")]).unwrap().retention, Duration::days(3650));
        assert_eq!(config(&[("AUDIT_RETENTION", "30d")]).unwrap().audit_retention, Duration::days(30));
        assert!(config(&[("AUDIT_RETENTION", "1h")]).is_err(), "an audit trail kept an hour");
        assert!(config(&[("AUDIT_RETENTION", "3651d")]).is_err());
        assert_eq!(config(&[("MAIL_LEASE", "24h")]).unwrap().mail_lease, Duration::days(1));
    }
}
