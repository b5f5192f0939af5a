//! The audit trail over HTTP: `GET /audit` (ADMIN) and `GET /me/activity` (anyone signed in, about themself).

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use users_domain::UserId;
use users_domain::audit::{EventQuery, EventType};
use users_domain::ports::Ports;
use users_domain::trail::{EventPage, MAX_EVENT_PAGE};
use uuid::Uuid;

use super::Caller;
use super::users::{bad_parameter, current_cursor, page_link};
use crate::dto::{EventPageResponse, EventResponse, PageLinks};
use crate::error::{ApiError, Problem};
use crate::openapi::{BearerErrors, Unavailable};
use crate::state::AppState;

/// The default page size.
const DEFAULT_PAGE: u32 = 50;

/// A cursor: where a page ended, as the last event's time in Unix microseconds and its id. Every string of the
/// documented shape (`CURSOR_PATTERN` in the tests) is a position in the trail (the next page starts strictly before
/// it), so any value the pattern allows is accepted (the empty string too: the first page); it reveals nothing the
/// page did not show.
pub(crate) fn encode_cursor((at, id): (OffsetDateTime, Uuid)) -> String {
    format!("{}-{}", at.unix_timestamp_nanos() / 1_000, id.hyphenated())
}

fn decode_cursor(raw: &str) -> Option<(OffsetDateTime, Uuid)> {
    let (micros, id) = raw.split_once('-')?;
    if micros.is_empty() || micros.len() > 16 || !micros.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    if id.len() != 36 || id.bytes().any(|byte| byte.is_ascii_uppercase()) {
        return None;
    }
    let at = OffsetDateTime::from_unix_timestamp_nanos(micros.parse::<i128>().ok()?.checked_mul(1_000)?).ok()?;
    Some((at, Uuid::parse_str(id).ok()?))
}

fn parse_time(name: &str, raw: &str) -> Result<OffsetDateTime, ApiError> {
    OffsetDateTime::parse(raw, &Rfc3339).map_err(|_| bad_parameter(name, "must be an RFC 3339 date-time"))
}

fn parse_user(name: &str, raw: &str) -> Result<UserId, ApiError> {
    Uuid::parse_str(raw).map(UserId::from_uuid).map_err(|_| bad_parameter(name, "must be a UUID"))
}

/// Parses the query of a trail listing: every parameter from `allowed`, each at most once.
pub(crate) fn parse_event_query(query: &str, allowed: &[&str]) -> Result<EventQuery, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|_| bad_parameter("query", "is not a valid query string"))?;
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (name, value) in &pairs {
        if !allowed.contains(&name.as_str()) {
            return Err(bad_parameter(name, "is not a known parameter"));
        }
        if seen.insert(name.as_str(), value.as_str()).is_some() {
            return Err(bad_parameter(name, "may be given only once"));
        }
    }
    let mut request = EventQuery { limit: DEFAULT_PAGE, ..EventQuery::default() };
    for (name, value) in seen {
        match name {
            "limit" => {
                request.limit = value
                    .parse()
                    .ok()
                    .filter(|limit| (1..=MAX_EVENT_PAGE).contains(limit))
                    .ok_or_else(|| bad_parameter("limit", "must be a whole number from 1 to 100"))?;
            }
            // An empty cursor is the first page, as if none were given.
            "cursor" if value.is_empty() => {}
            "cursor" => {
                request.after = Some(decode_cursor(value).ok_or_else(|| bad_parameter("cursor", "is not valid"))?);
            }
            "type" => {
                let kinds = value
                    .split(',')
                    .map(|kind| EventType::parse(kind.trim()))
                    .collect::<Option<Vec<_>>>()
                    .filter(|kinds| !kinds.is_empty())
                    .ok_or_else(|| bad_parameter("type", "must be a comma list of event types"))?;
                request.kinds = kinds;
            }
            "actor_id" => request.actor_id = Some(parse_user(name, value)?),
            "subject_id" => request.subject_id = Some(parse_user(name, value)?),
            "since" => request.since = Some(parse_time(name, value)?),
            "until" => request.until = Some(parse_time(name, value)?),
            other => return Err(bad_parameter(other, "is not a known parameter")),
        }
    }
    // `since` after `until` is an empty window, answered with an empty page like any other window with no event.
    Ok(request)
}

/// The JSON answer for a page of events at `path`.
fn page_response(page: &EventPage, base: &str, path: &str, query: &str) -> HttpResponse {
    let next_cursor = page.next.map(encode_cursor);
    HttpResponse::Ok().json(EventPageResponse {
        items: page.events.iter().map(EventResponse::from).collect(),
        links: PageLinks {
            this: page_link(base, path, query, current_cursor(query).as_deref()),
            next: next_cursor.as_deref().map(|cursor| page_link(base, path, query, Some(cursor))),
        },
        next_cursor,
    })
}

/// The paging and filters both listings take, for the OpenAPI document only: the handlers read the query string
/// themselves, so that every parameter is checked against an allow-list.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "describes the query for the document; the handlers parse it")]
struct EventListParams {
    /// Events per page, 1-100, default 50
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page: where it ended (empty: the first page)
    #[param(pattern = "^([0-9]{1,16}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?$")]
    cursor: Option<String>,
    /// Only events of these types (a comma list, such as `login.failed,login.throttled`)
    #[serde(rename = "type")]
    #[param(
        pattern = "^(user\\.registered|user\\.email_verified|user\\.email_changed|user\\.created|user\\.updated|user\\.locked|user\\.unlocked|user\\.deleted|login\\.succeeded|login\\.failed|login\\.throttled|session\\.revoked|session\\.reuse_detected|password\\.changed|password\\.reset_requested|password\\.reset|mfa\\.enabled|mfa\\.disabled|mfa\\.recovery_code_used|picture\\.uploaded|picture\\.deleted|picture\\.restored)(,(user\\.registered|user\\.email_verified|user\\.email_changed|user\\.created|user\\.updated|user\\.locked|user\\.unlocked|user\\.deleted|login\\.succeeded|login\\.failed|login\\.throttled|session\\.revoked|session\\.reuse_detected|password\\.changed|password\\.reset_requested|password\\.reset|mfa\\.enabled|mfa\\.disabled|mfa\\.recovery_code_used|picture\\.uploaded|picture\\.deleted|picture\\.restored))*$"
    )]
    kind: Option<String>,
    /// Only events at or after this time (RFC 3339)
    #[param(format = DateTime)]
    since: Option<String>,
    /// Only events before this time (RFC 3339)
    #[param(format = DateTime)]
    until: Option<String>,
}

/// The audit trail, newest first (ADMIN only).
#[utoipa::path(
    get, path = "/audit", tag = "audit", security(("oauth2" = []), ("bearer" = [])),
    params(
        EventListParams,
        ("actor_id" = Option<Uuid>, Query, description = "Only events by this user"),
        ("subject_id" = Option<Uuid>, Query, description = "Only events concerning this user"),
    ),
    responses(
        (status = 200, body = EventPageResponse),
        (status = 400, description = "`invalid_parameter`: a parameter malformed, out of range, unknown or given twice", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        (status = 403, description = "`forbidden`: the caller is not an ADMIN; or `account_locked`", body = Problem, content_type = "application/problem+json"),
        Unavailable,
    )
)]
pub async fn audit<P: Ports>(
    state: web::Data<AppState<P>>,
    caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    // Refused before the query is looked at, so a caller without the right learns nothing from its errors.
    if caller.0.user.role != users_domain::Role::Admin {
        return Err(ApiError::forbidden());
    }
    let allowed = ["limit", "cursor", "type", "actor_id", "subject_id", "since", "until"];
    let query = parse_event_query(req.query_string(), &allowed)?;
    let page = state.service.audit_events(&caller.0, query).await?;
    Ok(page_response(&page, &state.public_base_url, "/audit", req.query_string()))
}

/// What was done to the caller's account (events whose subject they are), newest first.
#[utoipa::path(
    get, path = "/me/activity", tag = "accounts", security(("oauth2" = []), ("bearer" = [])),
    params(
        EventListParams,
    ),
    responses(
        (status = 200, body = EventPageResponse),
        (status = 400, description = "`invalid_parameter`: a parameter malformed, out of range, unknown or given twice", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        (status = 403, description = "`account_locked`", body = Problem, content_type = "application/problem+json"),
        Unavailable,
    )
)]
pub async fn activity<P: Ports>(
    state: web::Data<AppState<P>>,
    caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = parse_event_query(req.query_string(), &["limit", "cursor", "type", "since", "until"])?;
    let page = state.service.my_activity(&caller.0, query).await?;
    Ok(page_response(&page, &state.public_base_url, "/me/activity", req.query_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cursor's shape as the OpenAPI document gives it.
    const CURSOR_PATTERN: &str = "^([0-9]{1,16}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?$";

    #[test]
    fn a_cursor_round_trips_matches_its_pattern_and_anything_else_is_refused() {
        let at = OffsetDateTime::parse("2026-12-04T10:00:00.123456Z", &Rfc3339).unwrap();
        let id = Uuid::now_v7();
        let cursor = encode_cursor((at, id));
        assert_eq!(decode_cursor(&cursor), Some((at, id)));
        // The pattern the document gives is the one this decoder accepts.
        let document = serde_json::to_string(&<crate::openapi::ApiDoc as utoipa::OpenApi>::openapi()).unwrap();
        let documented = serde_json::to_string(CURSOR_PATTERN).unwrap();
        assert_eq!(document.matches(documented.as_str()).count(), 2, "both listings document the cursor pattern");
        let spec: serde_json::Value = serde_json::from_str(&document).unwrap();
        for (path, expected) in [
            ("/audit", vec!["limit", "cursor", "type", "since", "until", "actor_id", "subject_id"]),
            ("/me/activity", vec!["limit", "cursor", "type", "since", "until"]),
        ] {
            let names: Vec<&str> = spec["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|parameter| parameter["name"].as_str().unwrap())
                .collect();
            assert_eq!(names.len(), expected.len(), "{path}: {names:?}");
            assert!(expected.iter().all(|name| names.contains(name)), "{path}: {names:?}");
        }
        for bad in [
            "",
            "not-a-cursor",
            "12345678901234567-0191e1a0-0000-7000-8000-000000000000",
            "-0191e1a0-0000-7000-8000-000000000000",
            "1-0191E1A0-0000-7000-8000-000000000000",
            "1-zz",
            "1",
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
        // The largest and smallest positions the pattern allows are positions, not errors.
        assert!(decode_cursor("9999999999999999-0191e1a0-0000-7000-8000-000000000000").is_some());
        assert!(decode_cursor("0-00000000-0000-0000-0000-000000000000").is_some());
    }

    #[test]
    fn filters_parse_and_bad_values_are_refused() {
        let all = ["limit", "cursor", "type", "actor_id", "subject_id", "since", "until"];
        let query = parse_event_query("type=login.failed,login.throttled&limit=10", &all).unwrap();
        assert_eq!(query.kinds, vec![EventType::LoginFailed, EventType::LoginThrottled]);
        assert_eq!(query.limit, 10);
        for bad in [
            "type=nope",
            "type=",
            "limit=0",
            "limit=101",
            "since=yesterday",
            "actor_id=42",
            "limit=1&limit=2",
            "color=red",
        ] {
            assert!(parse_event_query(bad, &all).is_err(), "{bad} was accepted");
        }
        assert!(parse_event_query("subject_id=0191e1a0-0000-7000-8000-000000000000", &["limit"]).is_err());
    }
}
