//! Logs, request ids and metrics.
//!
//! Every request gets an id (`X-Request-Id`, echoed in the response and quoted in 5xx bodies), a tracing span that
//! carries it, one log line when it ends, and a count and latency in the Prometheus metrics. Logged paths are
//! redacted: the token segment of `/verify-email/{user_id}/{token}` and any `token` query parameter never reach a
//! log, and neither does any header.
//!
//! The metrics recorder keeps its memory bounded whether or not anyone scrapes it: latencies go into fixed
//! histogram buckets, and a background thread runs the exporter's upkeep, which moves the samples recorded since
//! the last pass into those buckets. Without upkeep every sample would wait in memory for the next scrape.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled on this task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Installs the global log subscriber. `RUST_LOG` refines the level (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second initialisation (tests start several apps in one process) is harmless, so its error is ignored.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}

/// The upper bounds, in seconds, of the buckets of every histogram (`http_request_duration_seconds`): from 1 ms,
/// where a cached `GET /me` answers, to 10 s, beyond which a request has failed anyway.
const HISTOGRAM_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0];

/// How often the upkeep thread drains recorded samples into the histograms: at 15,000 requests a second that is
/// at most 75,000 samples (about 1.8 MiB) waiting at any time.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process-wide Prometheus recorder, installed on first use, with its upkeep thread.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Fixed buckets rather than the default summary: recording is a counter increment instead of a sketch
        // insert, and histograms from several instances can be summed, where quantiles cannot.
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets(&HISTOGRAM_BUCKETS) {
            Ok(builder) => builder,
            // Only an empty bucket list is refused, and ours is not empty.
            Err(error) => {
                tracing::warn!(%error, "metrics: fixed histogram buckets refused; latencies are summaries");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first, in which case ours simply records nothing.
        let _ = metrics::set_global_recorder(recorder);
        let upkeep = handle.clone();
        // A plain thread rather than a task: the recorder is process-wide and outlives any one runtime.
        let spawned = std::thread::Builder::new().name("metrics-upkeep".to_owned()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        });
        if let Err(error) = spawned {
            tracing::error!(%error, "metrics: cannot start the upkeep thread; memory grows until /metrics is scraped");
        }
        handle
    })
}

/// A path fit for logs: secret-bearing segments and query values replaced.
pub fn redact_path(path: &str, query: &str) -> String {
    let mut redacted = match path.strip_prefix("/verify-email/") {
        Some(rest) if rest.contains('/') && rest != "resend" => {
            let user = rest.split('/').next().unwrap_or_default();
            format!("/verify-email/{user}/[redacted]")
        }
        _ => path.to_owned(),
    };
    if !query.is_empty() {
        let parts: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("token") => format!("{key}=[redacted]"),
                _ => pair.to_owned(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&parts.join("&"));
    }
    redacted
}

/// The method as logged and as the metrics' `method` label: one of the standard methods, or `OTHER` for any
/// extension method a client made up, so that inventing methods cannot add metric series without bound.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    const STANDARD: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    STANDARD.iter().find(|(standard, _)| standard == method).map_or("OTHER", |(_, label)| label)
}

/// A client-supplied request id is kept only when it is short and plain, so it cannot forge log lines.
fn incoming_request_id(req: &ServiceRequest) -> Option<String> {
    let value = req.headers().get("x-request-id")?.to_str().ok()?;
    let plain = !value.is_empty()
        && value.len() <= 64
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    plain.then(|| value.to_owned())
}

/// HTTP connections open in this process (every server it runs together).
static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// Set when the server drains its connections: every answer from then on closes its connection.
static DRAINING: AtomicBool = AtomicBool::new(false);

/// Requests between the start of [`observe`] and its end, in this process.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// How many requests are being handled now in this process, for a stopping server to wait until none is.
#[must_use]
pub fn requests_in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Relaxed)
}

/// Counts one request in flight for as long as it lives, a request dropped half-way included.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many HTTP connections are open in this process, for a stopping server to wait until none is.
#[must_use]
pub fn open_connections() -> usize {
    OPEN_CONNECTIONS.load(Ordering::Relaxed)
}

/// From now on every answer carries `Connection: close`, so keep-alive connections end after their request in
/// flight (for the whole process: every server it runs is stopping together).
pub fn start_draining() {
    DRAINING.store(true, Ordering::Relaxed);
}

/// One open HTTP connection, counted from the server's `on_connect` until the connection's data is dropped (the
/// connection closed and its last request done).
#[derive(Debug)]
pub struct OpenConnection(());

impl OpenConnection {
    /// Counts a connection that has just been accepted.
    #[must_use]
    pub fn start() -> Self {
        OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Middleware: request id, span, access log line and metrics for every request.
///
/// # Errors
/// Passes on the inner service's errors untouched.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let _in_flight = InFlight::start();
    let request_id = incoming_request_id(&req).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = method_label(req.method());
    let path = redact_path(req.path(), req.query_string());
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, path = %path);
    let started = Instant::now();
    let result = REQUEST_ID.scope(request_id.clone(), next.call(req)).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    // The route pattern (not the raw path) labels the metrics, so ids in paths cannot explode their cardinality.
    let (status, route) = match &result {
        Ok(response) => (response.status().as_u16(), response.request().match_pattern()),
        Err(error) => (error.as_response_error().status_code().as_u16(), None),
    };
    let route = route.unwrap_or_else(|| "unmatched".to_owned());
    span.in_scope(|| {
        tracing::info!(status, latency_ms = elapsed.as_secs_f64() * 1000.0, "request finished");
    });
    let labels = [("method", method.to_owned()), ("route", route), ("status", status.to_string())];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
    result.map(|mut response| {
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(HeaderName::from_static("x-request-id"), value);
        }
        if DRAINING.load(Ordering::Relaxed) {
            response.response_mut().head_mut().set_connection_type(ConnectionType::Close);
        }
        response
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        use actix_web::http::Method;
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let invented = Method::from_bytes(b"AAAA1").unwrap();
        assert_eq!(method_label(&invented), "OTHER");
        assert_eq!(method_label(&Method::from_bytes(b"get").unwrap()), "OTHER", "methods are case-sensitive");
    }

    #[test]
    fn verification_tokens_and_token_parameters_are_redacted() {
        assert_eq!(redact_path("/verify-email/abc/s3cr3t", ""), "/verify-email/abc/[redacted]");
        assert_eq!(redact_path("/verify-email/resend", ""), "/verify-email/resend");
        assert_eq!(redact_path("/password/reset", "token=s3cr3t&x=1"), "/password/reset?token=[redacted]&x=1");
        assert_eq!(redact_path("/password/reset", "TOKEN=s3cr3t"), "/password/reset?TOKEN=[redacted]");
        assert_eq!(redact_path("/users", "q=ada&limit=5"), "/users?q=ada&limit=5");
    }
}
