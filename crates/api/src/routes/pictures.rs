//! Profile pictures: upload (multipart, size enforced while streaming), public serving with caching, delete,
//! history and restore.
//!
//! Every route under `/users/{id}/profile-picture` decides who may touch the target from the caller and the path
//! before it looks at the query or the body, so a caller without the right learns nothing more from a bad request.

use std::sync::Arc;

use actix_multipart::Multipart;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt as _;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::OwnedSemaphorePermit;
use users_domain::UserId;
use users_domain::pictures::UploadPermit;
use users_domain::ports::PictureSize;
use users_domain::sessions::Principal;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Caller, media_type};
use crate::dto::UserResponse;
use crate::error::{ApiError, Problem};
use crate::openapi::{BearerErrors, ImageBytes, NotFound, PictureUpload, Unavailable};
use crate::state::AppState;
use users_domain::ports::Ports;

/// One archived picture.
#[derive(Debug, Serialize, ToSchema)]
pub struct PictureVersion {
    /// The version id, for restore.
    pub id: Uuid,
    /// When it was uploaded.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Width of the `original` size.
    pub width: u32,
    /// Height of the `original` size.
    pub height: u32,
    /// Bytes of the `original` size.
    pub bytes: u64,
    /// Type of the `original` size.
    pub content_type: String,
    /// Where an authorised caller can fetch it: archived pictures are not public.
    pub url: String,
}

/// `GET /users/{id}/profile-picture/history`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PictureHistory {
    /// Archived pictures, newest first.
    pub items: Vec<PictureVersion>,
}

pub(crate) fn parse_user(raw: &str) -> Result<UserId, ApiError> {
    Uuid::parse_str(raw).map(UserId::from_uuid).map_err(|_| ApiError::not_found())
}

/// How long a client may take to send a picture.
const UPLOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// What multipart framing and other small fields may add to the picture itself.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;

/// What an upload form sends: the picture, and the CSRF field of the pages' form (ignored by the API).
pub(crate) struct Upload {
    /// The bytes of the field `file`.
    pub file: Vec<u8>,
    /// The field `csrf`, when sent (at most 64 bytes are kept).
    pub csrf: Option<String>,
}

/// The longest `csrf` field kept.
const CSRF_FIELD_MAX: usize = 64;

/// Reads the multipart fields `file` and `csrf`, refusing (413) as soon as the picture passes `limit` or the whole
/// body passes `limit` plus a small overhead, before the rest is read; a client that sends too slowly gets 408.
async fn read_upload(multipart: Multipart, limit: u64) -> Result<Upload, ApiError> {
    tokio::time::timeout(UPLOAD_DEADLINE, read_fields(multipart, limit)).await.unwrap_or_else(|_| {
        Err(ApiError::new(
            actix_web::http::StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the picture was not received in time",
        ))
    })
}

async fn read_fields(mut multipart: Multipart, limit: u64) -> Result<Upload, ApiError> {
    let too_large = || ApiError::payload_too_large(format!("the picture must be at most {limit} bytes"));
    let malformed =
        |error: actix_multipart::MultipartError| ApiError::malformed_body(format!("invalid multipart body: {error}"));
    let mut total: u64 = 0;
    let mut file = None;
    let mut csrf = None;
    while let Some(field) = multipart.next().await {
        let mut field = field.map_err(malformed)?;
        let is_file = field.name() == Some("file") && file.is_none();
        let is_csrf = field.name() == Some("csrf") && csrf.is_none();
        let mut bytes = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(malformed)?;
            total += chunk.len() as u64;
            if total > limit + MULTIPART_OVERHEAD || (is_file && (bytes.len() + chunk.len()) as u64 > limit) {
                return Err(too_large());
            }
            // Other fields are read to move past them (browsers may add some) but never kept.
            if is_file || (is_csrf && bytes.len() + chunk.len() <= CSRF_FIELD_MAX) {
                bytes.extend_from_slice(&chunk);
            }
        }
        if is_file {
            file = Some(bytes);
        } else if is_csrf {
            csrf = Some(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    let file = file.ok_or_else(|| {
        ApiError::invalid_field("file", "is required: send the picture as the multipart field `file`")
    })?;
    Ok(Upload { file, csrf })
}

/// Receives an upload for `user`: whether `actor` may upload for them is decided first, from the request head
/// alone, then a processing slot is taken (`PICTURE_MAX_CONCURRENT`; none free is 503 at once), then the body is
/// read. The slot is to be held until the picture is stored, so memory stays bounded however many uploads arrive.
///
/// # Errors
/// As the route documents.
pub(crate) async fn receive_upload<P: Ports>(
    state: &AppState<P>,
    actor: &Principal,
    user: UserId,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<(UploadPermit, Upload, OwnedSemaphorePermit), ApiError> {
    let permit = state.service.authorize_upload(actor, user).await?;
    check_upload_head(req, state.picture_max_bytes)?;
    let slot = Arc::clone(&state.picture_uploads).try_acquire_owned().map_err(|_| {
        tracing::warn!("picture upload refused: PICTURE_MAX_CONCURRENT uploads are already in progress");
        ApiError::busy()
    })?;
    let upload = read_upload(Multipart::new(req.headers(), payload.into_inner()), state.picture_max_bytes).await?;
    Ok((permit, upload, slot))
}

/// Upload a profile picture (the user themself, or a MANAGER/ADMIN within their rights).
///
/// The type is judged from the content (JPEG, PNG, GIF or WebP), never the name or declared type; the image is
/// decoded, re-encoded without metadata, and stored in three sizes. The previous picture goes to the archive.
/// Whether the caller may upload for this user is decided before any of the body is read, and at most
/// `PICTURE_MAX_CONCURRENT` uploads are read and processed at once: beyond that the answer is 503 at once.
#[utoipa::path(
    post, path = "/users/{id}/profile-picture", tag = "pictures", security(("oauth2" = []), ("bearer" = [])),
    params(("id" = Uuid, Path)),
    request_body(content = inline(PictureUpload), content_type = "multipart/form-data", description = "Field `file`: the image"),
    responses(
        (status = 200, body = UserResponse),
        (status = 400, description = "`malformed_body`: not a readable multipart body", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        (status = 403, description = "`account_locked`", body = Problem, content_type = "application/problem+json"),
        NotFound,
        (status = 408, description = "`request_timeout`: the picture was not received within 60 seconds", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`: over `PICTURE_MAX_BYTES`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`: not `multipart/form-data`, or a file that is not JPEG, PNG, GIF or WebP", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_image`: does not decode, or dimensions outside 10..=5000 px or the pixel budget; `validation_failed`: no `file` field", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`service_unavailable`: storage unreachable, or too many pictures in processing; nothing changed", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn upload<P: Ports>(
    state: web::Data<AppState<P>>,
    caller: Caller,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (permit, upload, _slot) = receive_upload(&state, &caller.0, parse_user(&path)?, &req, payload).await?;
    let user = state.service.upload(permit, upload.file).await?;
    Ok(HttpResponse::Ok().json(UserResponse::new(&user, &state.public_base_url)))
}

/// Refuses, from the headers alone, an upload that is not multipart (415) or declares a length far beyond the
/// limit (413); multipart framing adds a few hundred bytes, so only a length past the overhead is refused unread.
fn check_upload_head(req: &HttpRequest, limit: u64) -> Result<(), ApiError> {
    if media_type(req) != "multipart/form-data" {
        return Err(ApiError::unsupported_media_type("send the picture as multipart/form-data, field `file`"));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit + MULTIPART_OVERHEAD) {
        return Err(ApiError::payload_too_large(format!("the picture must be at most {limit} bytes")));
    }
    Ok(())
}

/// The `size` query parameter.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeQuery {
    pub(crate) size: Option<String>,
}

pub(crate) fn parse_size(query: &SizeQuery) -> Result<PictureSize, ApiError> {
    match query.size.as_deref() {
        None => Ok(PictureSize::Original),
        Some(raw) => PictureSize::parse(raw).ok_or_else(|| {
            ApiError::new(
                actix_web::http::StatusCode::BAD_REQUEST,
                "invalid_parameter",
                "size: must be original, medium or thumb",
            )
        }),
    }
}

fn etag_matches(req: &HttpRequest, etag: &str) -> bool {
    req.headers().get_all(header::IF_NONE_MATCH).filter_map(|value| value.to_str().ok()).any(|value| {
        value.split(',').map(str::trim).any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == etag)
    })
}

/// A user's active profile picture (public).
#[utoipa::path(
    get, path = "/profiles/{id}/picture", tag = "pictures",
    params(("id" = Uuid, Path), ("size" = Option<String>, Query, pattern = "^(original|medium|thumb)$", description = "`original` (default), `medium` or `thumb`")),
    responses(
        (status = 200, description = "The image, with a strong ETag",
            content((ImageBytes = "image/jpeg"), (ImageBytes = "image/png"), (ImageBytes = "image/gif"), (ImageBytes = "image/webp"))),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 400, description = "`invalid_parameter` or `bad_request`: a bad `size`, or another query parameter", body = Problem, content_type = "application/problem+json"),
        NotFound,
        Unavailable,
    )
)]
pub async fn serve<P: Ports>(
    state: web::Data<AppState<P>>,
    path: web::Path<String>,
    query: web::Query<SizeQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let user_id = parse_user(&path)?;
    let size = parse_size(&query)?;
    let etag = format!("\"{}\"", state.service.etag(user_id, size).await?);
    if etag_matches(&req, &etag) {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .insert_header((header::CACHE_CONTROL, "public, max-age=300, must-revalidate"))
            .finish());
    }
    let picture = state.service.serve(user_id, size).await?;
    Ok(HttpResponse::Ok()
        .content_type(picture.content_type.as_str())
        .insert_header((header::ETAG, format!("\"{}\"", picture.sha256)))
        .insert_header((header::CACHE_CONTROL, "public, max-age=300, must-revalidate"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .insert_header((header::CONTENT_DISPOSITION, format!("inline; filename=\"picture.{}\"", picture.extension)))
        .body(picture.bytes))
}

/// Archive the active picture; `profile_picture_url` becomes null.
#[utoipa::path(
    delete, path = "/users/{id}/profile-picture", tag = "pictures", security(("oauth2" = []), ("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Archived"),
        BearerErrors,
        (status = 403, description = "`account_locked`", body = Problem, content_type = "application/problem+json"),
        NotFound,
        Unavailable,
    )
)]
pub async fn delete<P: Ports>(
    state: web::Data<AppState<P>>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.service.delete(&caller.0, parse_user(&path)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The archived pictures, newest first (not the active one).
#[utoipa::path(
    get, path = "/users/{id}/profile-picture/history", tag = "pictures", security(("oauth2" = []), ("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = PictureHistory),
        BearerErrors,
        (status = 403, description = "`account_locked`", body = Problem, content_type = "application/problem+json"),
        NotFound,
        Unavailable,
    )
)]
pub async fn history<P: Ports>(
    state: web::Data<AppState<P>>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user_id = parse_user(&path)?;
    let pictures = state.service.history(&caller.0, user_id).await?;
    let items = pictures
        .iter()
        .filter_map(|picture| {
            let original = picture.variant(PictureSize::Original)?;
            Some(PictureVersion {
                id: picture.id,
                created_at: picture.created_at,
                width: original.width,
                height: original.height,
                bytes: original.bytes,
                content_type: original.content_type.clone(),
                url: format!("{}/users/{user_id}/profile-picture/history/{}", state.public_base_url, picture.id),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(PictureHistory { items }))
}

/// An archived picture, for those who may manage the user's pictures (archived pictures are not public).
#[utoipa::path(
    get, path = "/users/{id}/profile-picture/history/{version_id}", tag = "pictures", security(("oauth2" = []), ("bearer" = [])),
    params(("id" = Uuid, Path), ("version_id" = Uuid, Path), ("size" = Option<String>, Query, pattern = "^(original|medium|thumb)$", description = "`original` (default), `medium` or `thumb`")),
    responses(
        (status = 200, description = "The image", content((ImageBytes = "image/jpeg"), (ImageBytes = "image/png"), (ImageBytes = "image/gif"), (ImageBytes = "image/webp"))),
        (status = 400, description = "`invalid_parameter` or `bad_request`: a bad `size`, or another query parameter", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        (status = 403, description = "`account_locked`", body = Problem, content_type = "application/problem+json"),
        NotFound,
        Unavailable,
    )
)]
pub async fn serve_version<P: Ports>(
    state: web::Data<AppState<P>>,
    caller: Caller,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (user, version) = path.into_inner();
    let version = Uuid::parse_str(&version).map_err(|_| ApiError::not_found())?;
    // Read by hand rather than by an extractor, which actix would run alongside `Caller`: a bad query must not
    // answer 400 to a caller without a valid token.
    let query = serde_urlencoded::from_str::<SizeQuery>(req.query_string()).map_err(|_| {
        ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "query: the only parameter is size, given once",
        )
    })?;
    let size = parse_size(&query)?;
    let picture = state.service.serve_version(&caller.0, parse_user(&user)?, version, size).await?;
    Ok(HttpResponse::Ok()
        .content_type(picture.content_type.as_str())
        .insert_header((header::ETAG, format!("\"{}\"", picture.sha256)))
        .insert_header((header::CACHE_CONTROL, "private, no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .insert_header((header::CONTENT_DISPOSITION, format!("inline; filename=\"picture.{}\"", picture.extension)))
        .body(picture.bytes))
}

/// Make an archived picture active again; the active one goes to the archive.
#[utoipa::path(
    post, path = "/users/{id}/profile-picture/history/{version_id}/restore", tag = "pictures", security(("oauth2" = []), ("bearer" = [])),
    params(("id" = Uuid, Path), ("version_id" = Uuid, Path)),
    responses(
        (status = 200, body = UserResponse),
        BearerErrors,
        (status = 403, description = "`account_locked`", body = Problem, content_type = "application/problem+json"),
        NotFound,
        Unavailable,
    )
)]
pub async fn restore<P: Ports>(
    state: web::Data<AppState<P>>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (user, version) = path.into_inner();
    let version = Uuid::parse_str(&version).map_err(|_| ApiError::not_found())?;
    let user = state.service.restore(&caller.0, parse_user(&user)?, version).await?;
    Ok(HttpResponse::Ok().json(UserResponse::new(&user, &state.public_base_url)))
}
