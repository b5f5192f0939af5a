//! User administration for MANAGER and ADMIN: list and search, create, read, change and delete.
//!
//! Every handler takes [`Staff`] first and reads its path id, query and body only after it: a role that may not
//! use these routes gets 403 whatever it sends.

use std::collections::HashMap;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use users_domain::UserId;
use users_domain::admin::{ListUsers, MAX_PAGE};
use users_domain::permissions::Role;
use users_domain::ports::{UserCursor, UserSort};
use uuid::Uuid;

use super::{SMALL_BODY_LIMIT, Staff, parse_json, read_body};
use crate::dto::{AdminCreateRequest, AdminUpdateRequest, PageLinks, UserPageResponse, UserResponse};
use crate::error::{ApiError, Problem};
use crate::openapi::{BearerErrors, BodyErrors, NotFound, Unavailable, ValidationFailed};
use crate::state::AppState;
use users_domain::ports::Ports;

/// The longest search prefix accepted.
const PREFIX_MAX: usize = 100;

/// 400 `invalid_parameter` naming the query parameter.
pub(crate) fn bad_parameter(name: &str, message: &str) -> ApiError {
    ApiError::new(actix_web::http::StatusCode::BAD_REQUEST, "invalid_parameter", format!("{name}: {message}"))
}

/// Encodes a cursor as an opaque string: the kind, the tie-breaking id, then the sort value (last, because an
/// email may contain any separator).
pub(crate) fn encode_cursor(cursor: &UserCursor) -> String {
    let plain = match cursor {
        UserCursor::CreatedAt(at, id) => format!("c:{id}:{}", at.format(&Rfc3339).unwrap_or_default()),
        UserCursor::Email(email, id) => format!("e:{id}:{email}"),
        UserCursor::Nickname(nickname, id) => format!("n:{id}:{nickname}"),
    };
    URL_SAFE_NO_PAD.encode(plain)
}

fn decode_cursor(raw: &str) -> Option<UserCursor> {
    let plain = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
    let mut parts = plain.splitn(3, ':');
    let (kind, id, value) = (parts.next()?, parts.next()?, parts.next()?);
    let id = UserId::from_uuid(Uuid::parse_str(id).ok()?);
    // A forged cursor must not smuggle values storage refuses (NUL) or that no email or nickname could be.
    if value.len() > 254 || value.chars().any(char::is_control) {
        return None;
    }
    match kind {
        "c" => Some(UserCursor::CreatedAt(OffsetDateTime::parse(value, &Rfc3339).ok()?, id)),
        "e" => Some(UserCursor::Email(value.to_owned(), id)),
        "n" => Some(UserCursor::Nickname(value.to_owned(), id)),
        _ => None,
    }
}

fn parse_bool(name: &str, raw: &str) -> Result<bool, ApiError> {
    match raw {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad_parameter(name, "must be true or false")),
    }
}

/// Parses the query string of `GET /users`: every parameter from an allow-list, each at most once.
pub(crate) fn parse_list_query(query: &str) -> Result<ListUsers, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|_| bad_parameter("query", "is not a valid query string"))?;
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (name, value) in &pairs {
        if seen.insert(name.as_str(), value.as_str()).is_some() {
            return Err(bad_parameter(name, "may be given only once"));
        }
    }
    let mut request = ListUsers {
        limit: 20,
        sort: UserSort::CreatedAt,
        after: None,
        prefix: None,
        role: None,
        email_verified: None,
        is_locked: None,
        is_professional: None,
    };
    for (name, value) in seen {
        match name {
            "limit" => {
                request.limit = value
                    .parse()
                    .ok()
                    .filter(|limit| (1..=MAX_PAGE).contains(limit))
                    .ok_or_else(|| bad_parameter("limit", "must be a whole number from 1 to 100"))?;
            }
            "sort" => {
                request.sort = UserSort::parse(value)
                    .ok_or_else(|| bad_parameter("sort", "must be created_at, -created_at, email or nickname"))?;
            }
            // An empty cursor is the first page, as if none were given.
            "cursor" if value.is_empty() => {}
            "cursor" => {
                request.after = Some(decode_cursor(value).ok_or_else(|| bad_parameter("cursor", "is not valid"))?)
            }
            "q" => {
                if value.is_empty() || value.chars().count() > PREFIX_MAX || value.chars().any(char::is_control) {
                    return Err(bad_parameter("q", "must be 1 to 100 printable characters"));
                }
                request.prefix = Some(value.to_owned());
            }
            "role" => {
                request.role = Some(
                    Role::parse(value)
                        .map_err(|_| bad_parameter("role", "must be ANONYMOUS, AUTHENTICATED, MANAGER or ADMIN"))?,
                );
            }
            "email_verified" => request.email_verified = Some(parse_bool(name, value)?),
            "is_locked" => request.is_locked = Some(parse_bool(name, value)?),
            "is_professional" => request.is_professional = Some(parse_bool(name, value)?),
            other => return Err(bad_parameter(other, "is not a known parameter")),
        }
    }
    Ok(request)
}

/// The URL of a page of the listing at `path`: the query string with the cursor replaced.
pub(crate) fn page_link(base: &str, path: &str, query: &str, cursor: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != "cursor")
        .collect();
    if let Some(cursor) = cursor {
        pairs.push(("cursor".to_owned(), cursor.to_owned()));
    }
    let encoded = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    if encoded.is_empty() { format!("{base}{path}") } else { format!("{base}{path}?{encoded}") }
}

/// The `cursor` parameter of a query string, as given.
pub(crate) fn current_cursor(query: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find_map(|(name, value)| (name == "cursor").then_some(value))
}

pub(crate) fn parse_id(raw: &str) -> Result<UserId, ApiError> {
    Uuid::parse_str(raw).map(UserId::from_uuid).map_err(|_| ApiError::not_found())
}

/// List and search users (MANAGER and ADMIN). A MANAGER sees only users below MANAGER.
#[utoipa::path(
    get, path = "/users", tag = "users", security(("oauth2" = []), ("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Users per page, 1-100, default 20"),
        ("cursor" = Option<String>, Query, description = "The opaque `next_cursor` of the previous page, as given (empty: the first page); any other value is refused"),
        ("q" = Option<String>, Query, pattern = r"^[^\x00-\x1F\x7F-\x9F]{1,100}$", description = "A literal, case-insensitive prefix of email, nickname, first or last name: 1 to 100 characters, no control characters"),
        ("role" = Option<String>, Query, pattern = "^(ANONYMOUS|AUTHENTICATED|MANAGER|ADMIN)$", description = "Only users with this role"),
        ("email_verified" = Option<bool>, Query), ("is_locked" = Option<bool>, Query), ("is_professional" = Option<bool>, Query),
        ("sort" = Option<String>, Query, pattern = "^(created_at|-created_at|email|nickname)$", description = "`created_at` (default), `-created_at`, `email` or `nickname`"),
    ),
    responses(
        (status = 200, body = UserPageResponse),
        (status = 400, description = "`invalid_parameter`: a parameter out of range, unknown, given twice, or a cursor this sort did not issue", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        (status = 403, description = "`forbidden`: the caller is not a MANAGER or ADMIN, or may not do this to that user (decided before the body is read); or `account_locked`", body = Problem, content_type = "application/problem+json"),
        Unavailable,
    )
)]
pub async fn list_users<P: Ports>(
    state: web::Data<AppState<P>>,
    staff: Staff,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let request = parse_list_query(req.query_string())?;
    let page = state.service.list_users(&staff.0, request).await?;
    let next_cursor = page.next.as_ref().map(encode_cursor);
    let base = &state.public_base_url;
    Ok(HttpResponse::Ok().json(UserPageResponse {
        items: page.users.iter().map(|user| UserResponse::new(user, base)).collect(),
        links: PageLinks {
            this: page_link(base, "/users", req.query_string(), current_cursor(req.query_string()).as_deref()),
            next: next_cursor.as_deref().map(|cursor| page_link(base, "/users", req.query_string(), Some(cursor))),
        },
        next_cursor,
    }))
}

/// Create a user (MANAGER: roles up to AUTHENTICATED; ADMIN: any).
#[utoipa::path(
    post, path = "/users", tag = "users", request_body = AdminCreateRequest, security(("oauth2" = []), ("bearer" = [])),
    responses(
        (status = 201, body = UserResponse, headers(("Location" = String, description = "The new user's URL"))),
        BodyErrors,
        BearerErrors,
        (status = 403, description = "`forbidden`: the caller is not a MANAGER or ADMIN, or may not do this to that user (decided before the body is read); or `account_locked`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`email_taken` or `nickname_taken`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, including a weak password or an unknown role", body = Problem, content_type = "application/problem+json"),
        Unavailable,
    )
)]
pub async fn create_user<P: Ports>(
    state: web::Data<AppState<P>>,
    staff: Staff,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    let request = parse_json::<AdminCreateRequest>(&req, &body)?.try_into_domain()?;
    let user = state.service.create_user(&staff.0, request).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("{}/users/{}", state.public_base_url, user.id)))
        .json(UserResponse::new(&user, &state.public_base_url)))
}

/// Read one user. An id the caller may not see answers the same 404 as an unknown one.
#[utoipa::path(
    get, path = "/users/{id}", tag = "users", security(("oauth2" = []), ("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = UserResponse),
        BearerErrors,
        (status = 403, description = "`forbidden`: the caller is not a MANAGER or ADMIN, or may not do this to that user (decided before the body is read); or `account_locked`", body = Problem, content_type = "application/problem+json"),
        NotFound,
        Unavailable,
    )
)]
pub async fn get_user<P: Ports>(
    state: web::Data<AppState<P>>,
    staff: Staff,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let user = state.service.get_user(&staff.0, id).await?;
    Ok(HttpResponse::Ok().json(UserResponse::new(&user, &state.public_base_url)))
}

/// Change a user (`PUT` is accepted as a synonym). Each field is checked against the caller's rights; the last
/// unlocked ADMIN cannot be demoted or locked (409 `last_admin`).
#[utoipa::path(
    patch, path = "/users/{id}", tag = "users", request_body = AdminUpdateRequest, security(("oauth2" = []), ("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = UserResponse),
        BodyErrors,
        BearerErrors,
        (status = 403, description = "`forbidden`: the caller is not a MANAGER or ADMIN, or may not do this to that user (decided before the body is read); or `account_locked`", body = Problem, content_type = "application/problem+json"),
        NotFound,
        (status = 409, description = "`last_admin`, `email_taken` or `nickname_taken`", body = Problem, content_type = "application/problem+json"),
        ValidationFailed,
        Unavailable,
    )
)]
pub async fn update_user<P: Ports>(
    state: web::Data<AppState<P>>,
    staff: Staff,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    let changes = parse_json::<AdminUpdateRequest>(&req, &body)?.try_into_domain()?;
    let user = state.service.update_user(&staff.0, id, changes).await?;
    Ok(HttpResponse::Ok().json(UserResponse::new(&user, &state.public_base_url)))
}

/// Delete a user with their sessions and pictures. The last unlocked ADMIN cannot be deleted.
#[utoipa::path(
    delete, path = "/users/{id}", tag = "users", security(("oauth2" = []), ("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "The user, their sessions and pictures are gone"),
        BearerErrors,
        (status = 403, description = "`forbidden`: the caller is not a MANAGER or ADMIN, or may not do this to that user (decided before the body is read); or `account_locked`", body = Problem, content_type = "application/problem+json"),
        NotFound,
        (status = 409, description = "`last_admin`", body = Problem, content_type = "application/problem+json"),
        Unavailable,
    )
)]
pub async fn delete_user<P: Ports>(
    state: web::Data<AppState<P>>,
    staff: Staff,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    state.service.delete_user(&staff.0, id).await?;
    // The picture rows went with the user (cascade); their objects go once the deletion has committed.
    Ok(HttpResponse::NoContent().finish())
}
