//! The staff pages: the user table (MANAGER and ADMIN), a user's page, and the audit trail (ADMIN). The service
//! applies the permission matrix as for the API; these pages only decide what to show.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use users_domain::audit::EventType;
use users_domain::ports::Ports;
use users_domain::{Role, UserId};

use super::account::{HistoryRow, history_rows, when};
use super::{Ctx, Form, Layout, PageError, done_of};
use crate::dto::{AdminUpdateRequest, UserResponse};
use crate::error::ApiError;
use crate::routes::users::{encode_cursor, page_link, parse_list_query};
use crate::state::AppState;

/// The role names, for the select boxes.
const ROLES: [&str; 4] = ["ANONYMOUS", "AUTHENTICATED", "MANAGER", "ADMIN"];

/// The parameters of the user table's form and links.
const USER_PARAMETERS: [&str; 8] =
    ["q", "role", "email_verified", "is_locked", "is_professional", "sort", "cursor", "limit"];

/// The parameters of the audit page's form and links.
const EVENT_PARAMETERS: [&str; 4] = ["cursor", "type", "actor_id", "subject_id"];

/// A query string with only the page's own parameters, and without the empty ones (a filter left at "any" is sent
/// empty by the form). Other names are dropped, never reported: a link could otherwise put words of its choosing
/// into an alert on a staff page.
fn filled(query: &str, known: &[&str]) -> String {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let kept: Vec<(String, String)> =
        pairs.into_iter().filter(|(name, value)| !value.is_empty() && known.contains(&name.as_str())).collect();
    serde_urlencoded::to_string(kept).unwrap_or_default()
}

/// One row of the user table.
struct UserRow {
    id: String,
    email: String,
    nickname: String,
    name: String,
    role: String,
    verified: bool,
    locked: bool,
    professional: bool,
    created: String,
}

/// `/ui/users`.
#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    layout: Layout,
    filters: Form,
    roles: [&'static str; 4],
    rows: Vec<UserRow>,
    next: Option<String>,
}

pub async fn users<P: Ports>(state: web::Data<AppState<P>>, req: HttpRequest) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::load(&state, &req).await?;
    let principal = ctx.viewer()?;
    if !principal.user.role.administers_users() {
        return Err(ApiError::forbidden().into());
    }
    let query = filled(req.query_string(), &USER_PARAMETERS);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&query).unwrap_or_default();
    let mut filters = Form::with_values(pairs.iter().map(|(name, value)| (name.as_str(), value.clone())));
    let listed = async {
        let request = parse_list_query(&query)?;
        Ok::<_, ApiError>(state.service.list_users(principal, request).await?)
    };
    let (status, rows, next) = match listed.await {
        Ok(page) => {
            let rows = page.users.iter().map(row).collect();
            let next = page.next.map(|cursor| page_link("", "/ui/users", &query, Some(&encode_cursor(&cursor))));
            (StatusCode::OK, rows, next)
        }
        Err(error) => {
            let status = error.status();
            filters = ctx.failed(filters, &error);
            (status, Vec::new(), None)
        }
    };
    ctx.html(status, &UsersPage { layout: ctx.layout("Users"), filters, roles: ROLES, rows, next })
}

fn row(user: &users_domain::User) -> UserRow {
    let name = [user.first_name.as_ref().map(|n| n.as_str()), user.last_name.as_ref().map(|n| n.as_str())]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    UserRow {
        id: user.id.as_uuid().to_string(),
        email: user.email.as_str().to_owned(),
        nickname: user.nickname.as_str().to_owned(),
        name,
        role: user.role.as_str().to_owned(),
        verified: user.email_verified,
        locked: user.is_locked,
        professional: user.is_professional,
        created: when(user.created_at),
    }
}

/// The forms of a user's page.
#[derive(Default)]
pub(super) struct UserForms {
    fields: Form,
    picture: Form,
}

impl UserForms {
    /// The forms after a failed picture post.
    pub(super) fn picture_failed(ctx: &Ctx, error: &ApiError) -> Self {
        Self { picture: ctx.failed(Form::default(), error), ..Self::default() }
    }
}

/// `/ui/users/{id}`.
#[derive(Template)]
#[template(path = "user.html")]
struct UserPage {
    layout: Layout,
    notice: Option<&'static str>,
    user: UserResponse,
    picture_url: Option<String>,
    history: Vec<HistoryRow>,
    roles: [&'static str; 4],
    forms: UserForms,
}

/// The stored values of a user, as the fields form shows them.
fn fields_of(user: &UserResponse) -> Form {
    let optional = |value: &Option<String>| value.clone().unwrap_or_default();
    let mut values = vec![
        ("email", user.email.clone()),
        ("nickname", user.nickname.clone()),
        ("first_name", optional(&user.first_name)),
        ("last_name", optional(&user.last_name)),
        ("bio", optional(&user.bio)),
        ("linkedin_profile_url", optional(&user.linkedin_profile_url)),
        ("github_profile_url", optional(&user.github_profile_url)),
        ("role", user.role.clone()),
    ];
    for (flag, set) in [
        ("is_professional", user.is_professional),
        ("is_locked", user.is_locked),
        ("email_verified", user.email_verified),
    ] {
        if set {
            values.push((flag, "on".to_owned()));
        }
    }
    Form::with_values(values)
}

/// Renders the page of user `id` as the signed-in staff member may see it.
pub(super) async fn render_user<P: Ports>(
    state: &AppState<P>,
    req: &HttpRequest,
    ctx: &Ctx,
    id: UserId,
    status: StatusCode,
    mut forms: UserForms,
) -> Result<HttpResponse, PageError> {
    let principal = ctx.viewer()?;
    if !principal.user.role.administers_users() {
        return Err(ApiError::forbidden().into());
    }
    let user = state.service.get_user(principal, id).await.map_err(ApiError::from)?;
    let history = history_rows(state, principal, id).await?;
    let view = UserResponse::new(&user, "");
    if !forms.fields.failed_at_all() {
        forms.fields = fields_of(&view);
    }
    let picture_url = view.profile_picture_url.as_ref().map(|url| format!("{url}?size=medium"));
    let page = UserPage {
        layout: ctx.layout(&format!("User {}", view.nickname)),
        notice: done_of(req),
        user: view,
        picture_url,
        history,
        roles: ROLES,
        forms,
    };
    ctx.html(status, &page)
}

pub async fn user_page<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::load(&state, &req).await?;
    ctx.viewer()?;
    let id = crate::routes::pictures::parse_user(&path)?;
    render_user(&state, &req, &ctx, id, StatusCode::OK, UserForms::default()).await
}

/// Saves a user's page: only what differs from the stored user is sent to the service, so a MANAGER saving a page
/// whose role they may not change does not ask to change it.
pub async fn update_user<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (ctx, fields) = Ctx::post(&state, &req, payload).await?;
    let principal = ctx.viewer()?;
    if !principal.user.role.administers_users() {
        return Err(ApiError::forbidden().into());
    }
    let id = crate::routes::pictures::parse_user(&path)?;
    let stored = state.service.get_user(principal, id).await.map_err(ApiError::from)?;
    let stored = UserResponse::new(&stored, "");
    let text = |name: &str, now: &Option<String>| {
        let value = fields.get(name).trim();
        (value != now.as_deref().unwrap_or_default()).then(|| Some(value.to_owned()).filter(|value| !value.is_empty()))
    };
    let flag = |name: &str, now: bool| (fields.checked(name) != now).then_some(fields.checked(name));
    let email = fields.get("email").trim();
    let role = fields.get("role");
    let request = AdminUpdateRequest {
        nickname: text("nickname", &Some(stored.nickname.clone())),
        first_name: text("first_name", &stored.first_name),
        last_name: text("last_name", &stored.last_name),
        bio: text("bio", &stored.bio),
        linkedin_profile_url: text("linkedin_profile_url", &stored.linkedin_profile_url),
        github_profile_url: text("github_profile_url", &stored.github_profile_url),
        role: (role != stored.role).then(|| role.to_owned()),
        is_professional: flag("is_professional", stored.is_professional),
        is_locked: flag("is_locked", stored.is_locked),
        email_verified: flag("email_verified", stored.email_verified),
        email: (!email.eq_ignore_ascii_case(&stored.email)).then(|| Some(email.to_owned())),
    };
    let result =
        async { Ok::<_, ApiError>(state.service.update_user(principal, id, request.try_into_domain()?).await?) };
    match result.await {
        Ok(_) => Ok(ctx.redirect(&format!("/ui/users/{}?done=saved", id.as_uuid()))),
        Err(error) => {
            let forms = UserForms { fields: ctx.failed(Form::from_fields(&fields), &error), ..UserForms::default() };
            render_user(&state, &req, &ctx, id, error.status(), forms).await
        }
    }
}

/// One row of the audit table.
struct EventRow {
    at: String,
    kind: &'static str,
    actor: String,
    subject: String,
    ip: String,
    details: String,
}

/// `/ui/audit`.
#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    layout: Layout,
    filters: Form,
    types: Vec<&'static str>,
    rows: Vec<EventRow>,
    next: Option<String>,
}

pub async fn audit<P: Ports>(state: web::Data<AppState<P>>, req: HttpRequest) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::load(&state, &req).await?;
    let principal = ctx.viewer()?;
    if principal.user.role != Role::Admin {
        return Err(ApiError::forbidden().into());
    }
    let query = filled(req.query_string(), &EVENT_PARAMETERS);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&query).unwrap_or_default();
    let mut filters = Form::with_values(pairs.iter().map(|(name, value)| (name.as_str(), value.clone())));
    let listed = async {
        let request = crate::routes::audit::parse_event_query(&query, &EVENT_PARAMETERS)?;
        Ok::<_, ApiError>(state.service.audit_events(principal, request).await?)
    };
    let user = |id: Option<UserId>| id.map(|id| id.as_uuid().to_string()).unwrap_or_default();
    let (status, rows, next) = match listed.await {
        Ok(page) => {
            let rows = page
                .events
                .iter()
                .map(|event| EventRow {
                    at: when(event.at),
                    kind: event.kind.as_str(),
                    actor: user(event.actor_id),
                    subject: user(event.subject_id),
                    ip: event.ip.clone().unwrap_or_default(),
                    details: if event.details.is_empty() {
                        String::new()
                    } else {
                        serde_json::Value::Object(event.details.clone()).to_string()
                    },
                })
                .collect();
            let next = page
                .next
                .map(|cursor| page_link("", "/ui/audit", &query, Some(&crate::routes::audit::encode_cursor(cursor))));
            (StatusCode::OK, rows, next)
        }
        Err(error) => {
            let status = error.status();
            filters = ctx.failed(filters, &error);
            (status, Vec::new(), None)
        }
    };
    let types = EventType::ALL.iter().map(|kind| kind.as_str()).collect();
    ctx.html(status, &AuditPage { layout: ctx.layout("Audit trail"), filters, types, rows, next })
}

#[cfg(test)]
mod tests {
    use super::{USER_PARAMETERS, filled};

    #[test]
    fn only_the_pages_own_filled_in_parameters_are_kept() {
        let query = "q=ada&role=&Call%20IT%20and%20read%20them%20your%20password=1&done=saved&sort=email";
        assert_eq!(filled(query, &USER_PARAMETERS), "q=ada&sort=email");
    }
}
