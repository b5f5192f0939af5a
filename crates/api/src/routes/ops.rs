//! Operations endpoints: liveness, readiness, metrics and the public signing keys.
//!
//! All but [`metrics`] are public routes; [`metrics`] is served only on the metrics listener
//! (`METRICS_BIND_ADDR`), so it is not part of the public API or its OpenAPI document.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use crate::dto::StatusResponse;
use crate::error::ApiError;
use crate::openapi::{Unavailable, document_json};
use crate::state::AppState;
use crate::telemetry::metrics_handle;
use users_domain::ports::Ports;

/// How long a readiness probe waits for each dependency.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = StatusResponse)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(StatusResponse { status: "ok" })
}

/// The instance takes traffic: 200 when the database and picture storage are reachable, 503 when one is not or
/// the instance is stopping.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, body = StatusResponse),
        Unavailable,
    )
)]
pub async fn readyz<P: Ports>(state: web::Data<AppState<P>>) -> Result<HttpResponse, ApiError> {
    if state.stopping.is_set() {
        return Err(ApiError::unavailable(anyhow::anyhow!("readiness: the instance is stopping")));
    }
    let (database, storage) = tokio::join!(
        tokio::time::timeout(READY_TIMEOUT, state.service.database_ready()),
        tokio::time::timeout(READY_TIMEOUT, state.service.storage_ready()),
    );
    for (name, outcome) in [("database", database), ("storage", storage)] {
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(ApiError::unavailable(anyhow::Error::new(error).context(format!("readiness: {name}"))));
            }
            Err(_) => return Err(ApiError::unavailable(anyhow::anyhow!("readiness: {name} did not answer in time"))),
        }
    }
    Ok(HttpResponse::Ok().json(StatusResponse { status: "ok" }))
}

/// `GET /openapi.json`: the document, serialised once for every worker. Not part of the document itself, like
/// `/docs`.
///
/// # Errors
/// 500 when the document cannot be generated (a bug).
pub async fn openapi_document() -> Result<HttpResponse, ApiError> {
    // The first call generates the document (tens of milliseconds), off the worker's thread.
    let document = web::block(document_json).await.map_err(|error| ApiError::internal(anyhow::anyhow!("{error}")))?;
    let document = document.map_err(|error| ApiError::internal(anyhow::anyhow!(error)))?;
    Ok(HttpResponse::Ok().content_type("application/json").body(document))
}

/// Prometheus metrics in the text exposition format; mounted on the metrics listener only.
pub async fn metrics() -> HttpResponse {
    HttpResponse::build(StatusCode::OK).content_type("text/plain; version=0.0.4").body(metrics_handle().render())
}

/// The public keys that verify access tokens (JWKS).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "operations", responses((status = 200, content_type = "application/json", body = Object)))]
pub async fn jwks<P: Ports>(state: web::Data<AppState<P>>) -> HttpResponse {
    HttpResponse::Ok().insert_header(("Cache-Control", "public, max-age=300")).json(state.jwks.document())
}
