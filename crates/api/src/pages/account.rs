//! The account page and its forms (profile, email, password, picture, sessions, second factor, delete), and the
//! picture forms a staff member also uses on a user's page.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use time::OffsetDateTime;
use time::macros::format_description;
use users_domain::UserId;
use users_domain::ports::Ports;
use users_domain::sessions::Principal;
use users_domain::{SessionId, User};
use uuid::Uuid;

use super::{Ctx, Fields, Form, Layout, MessagePage, PageError, check_origin, done_of};
use crate::dto::{UpdateMeRequest, UserResponse};
use crate::error::ApiError;
use crate::routes::pictures::{SizeQuery, parse_size, parse_user, receive_upload};
use crate::state::AppState;

/// How times are shown.
pub(super) fn when(at: OffsetDateTime) -> String {
    at.format(format_description!("[year]-[month]-[day] [hour]:[minute] UTC")).unwrap_or_default()
}

/// One of the person's sessions.
pub(super) struct SessionRow {
    id: Uuid,
    created: String,
    last_used: String,
    user_agent: String,
    ip: String,
    current: bool,
}

/// One archived picture, with the page route that shows it.
pub(super) struct HistoryRow {
    pub id: Uuid,
    pub created: String,
    pub thumb_url: String,
}

/// The archived pictures of `user`, as `actor` may see them.
pub(super) async fn history_rows<P: Ports>(
    state: &AppState<P>,
    actor: &Principal,
    user: UserId,
) -> Result<Vec<HistoryRow>, ApiError> {
    let archived = state.service.history(actor, user).await?;
    Ok(archived
        .into_iter()
        .map(|picture| HistoryRow {
            id: picture.id,
            created: when(picture.created_at),
            thumb_url: format!("/ui/users/{}/picture/history/{}?size=thumb", user.as_uuid(), picture.id),
        })
        .collect())
}

/// The parts of the account, each a page of its own (so each page has one form of each kind, and its labels and
/// buttons are unambiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Profile fields and picture: `/ui/account`.
    Profile,
    /// `/ui/account/email`.
    Email,
    /// `/ui/account/password`.
    Password,
    /// `/ui/account/mfa`.
    SecondFactor,
    /// `/ui/account/sessions`.
    Sessions,
    /// `/ui/account/delete`.
    Delete,
}

impl Section {
    /// Every section, in the order of the account's menu.
    const ALL: [Self; 6] =
        [Self::Profile, Self::Email, Self::Password, Self::SecondFactor, Self::Sessions, Self::Delete];

    /// Its page.
    pub const fn path(self) -> &'static str {
        match self {
            Self::Profile => "/ui/account",
            Self::Email => "/ui/account/email",
            Self::Password => "/ui/account/password",
            Self::SecondFactor => "/ui/account/mfa",
            Self::Sessions => "/ui/account/sessions",
            Self::Delete => "/ui/account/delete",
        }
    }

    /// Its name in the menu and its page's title.
    pub const fn title(self) -> &'static str {
        match self {
            Self::Profile => "Profile",
            Self::Email => "Email address",
            Self::Password => "Password",
            Self::SecondFactor => "Second factor",
            Self::Sessions => "Sessions",
            Self::Delete => "Delete account",
        }
    }

    /// The menu.
    pub fn menu(self) -> Vec<(Self, bool)> {
        Self::ALL.iter().map(|section| (*section, *section == self)).collect()
    }
}

/// The forms of the account pages, each with what it shows after a post.
#[derive(Default)]
pub(super) struct AccountForms {
    profile: Form,
    email: Form,
    password: Form,
    picture: Form,
    mfa: Form,
    delete: Form,
    /// A second factor being set up: the secret, its `otpauth://` URI, and that URI as a QR code (SVG markup).
    mfa_setup: Option<(String, String, String)>,
    /// Recovery codes just made, shown once.
    recovery_codes: Vec<String>,
}

/// `/ui/account`.
#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    layout: Layout,
    section: Section,
    notice: Option<&'static str>,
    user: UserResponse,
    picture_url: Option<String>,
    sessions: Vec<SessionRow>,
    history: Vec<HistoryRow>,
    forms: AccountForms,
}

impl AccountForms {
    /// The profile form filled with the stored values.
    fn profile_of(user: &User) -> Form {
        let optional = |value: Option<&str>| value.unwrap_or_default().to_owned();
        Form::with_values([
            ("nickname", user.nickname.as_str().to_owned()),
            ("first_name", optional(user.first_name.as_ref().map(|name| name.as_str()))),
            ("last_name", optional(user.last_name.as_ref().map(|name| name.as_str()))),
            ("bio", optional(user.bio.as_ref().map(|bio| bio.as_str()))),
            ("linkedin_profile_url", optional(user.linkedin_profile_url.as_ref().map(|url| url.as_str()))),
            ("github_profile_url", optional(user.github_profile_url.as_ref().map(|url| url.as_str()))),
        ])
    }
}

/// Renders `section` of the signed-in person's account with `forms`.
async fn render<P: Ports>(
    state: &AppState<P>,
    req: &HttpRequest,
    ctx: &Ctx,
    status: StatusCode,
    section: Section,
    mut forms: AccountForms,
) -> Result<HttpResponse, PageError> {
    let principal = ctx.viewer()?;
    let user = &principal.user;
    if !forms.profile.failed_at_all() {
        forms.profile = AccountForms::profile_of(user);
    }
    let mut sessions = Vec::new();
    if section == Section::Sessions {
        let summaries = state.service.sessions(principal).await.map_err(ApiError::from)?;
        sessions = summaries
            .iter()
            .map(|summary| SessionRow {
                id: summary.session.id.as_uuid(),
                created: when(summary.session.created_at),
                last_used: when(summary.session.last_used_at),
                user_agent: summary.session.user_agent.clone().unwrap_or_default(),
                ip: summary.session.ip.clone().unwrap_or_default(),
                current: summary.current,
            })
            .collect();
    }
    let history = if section == Section::Profile { history_rows(state, principal, user.id).await? } else { Vec::new() };
    let view = UserResponse::new(user, "");
    let picture_url = view.profile_picture_url.as_ref().map(|url| format!("{url}?size=medium"));
    let page = AccountPage {
        layout: ctx.layout(section.title()),
        section,
        notice: done_of(req),
        user: view,
        picture_url,
        sessions,
        history,
        forms,
    };
    ctx.html(status, &page)
}

/// The `GET` route of one section of the account.
pub fn section_route<P: Ports>(section: Section) -> actix_web::Route {
    web::get().to(move |state: web::Data<AppState<P>>, req: HttpRequest| async move {
        section_page(&state, &req, section).await
    })
}

async fn section_page<P: Ports>(
    state: &AppState<P>,
    req: &HttpRequest,
    section: Section,
) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::load(state, req).await?;
    render(state, req, &ctx, StatusCode::OK, section, AccountForms::default()).await
}

/// Renders the account page after a failed post, the error shown on the form `place` picks.
async fn failed<P: Ports>(
    state: &AppState<P>,
    req: &HttpRequest,
    ctx: &Ctx,
    error: &ApiError,
    fields: Option<&Fields>,
    section: Section,
    place: impl FnOnce(&mut AccountForms) -> &mut Form,
) -> Result<HttpResponse, PageError> {
    let mut forms = AccountForms::default();
    let form = place(&mut forms);
    *form = ctx.failed(fields.map(Form::from_fields).unwrap_or_default(), error);
    render(state, req, ctx, error.status(), section, forms).await
}

pub async fn profile<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (ctx, fields) = Ctx::post(&state, &req, payload).await?;
    let principal = ctx.viewer()?;
    // Only what differs from the stored profile is sent, so the trail records the fields really changed; an
    // emptied optional field clears it, as `null` does in the API (an emptied nickname is refused by its parser).
    let stored = AccountForms::profile_of(&principal.user);
    let changed = |name: &str| {
        let value = fields.get(name).trim();
        (value != stored.value(name)).then(|| Some(value.to_owned()).filter(|value| !value.is_empty()))
    };
    let request = UpdateMeRequest {
        nickname: (fields.get("nickname").trim() != stored.value("nickname"))
            .then(|| Some(fields.get("nickname").trim().to_owned())),
        first_name: changed("first_name"),
        last_name: changed("last_name"),
        bio: changed("bio"),
        linkedin_profile_url: changed("linkedin_profile_url"),
        github_profile_url: changed("github_profile_url"),
        email: None,
        current_password: None,
    };
    let nothing_changed = [
        &request.nickname,
        &request.first_name,
        &request.last_name,
        &request.bio,
        &request.linkedin_profile_url,
        &request.github_profile_url,
    ]
    .iter()
    .all(|change| change.is_none());
    if nothing_changed {
        return Ok(ctx.redirect("/ui/account?done=profile"));
    }
    let result = async { Ok::<_, ApiError>(state.service.update_me(principal, request.try_into_domain()?).await?) };
    match result.await {
        Ok(_) => Ok(ctx.redirect("/ui/account?done=profile")),
        Err(error) => {
            failed(&state, &req, &ctx, &error, Some(&fields), Section::Profile, |forms| &mut forms.profile).await
        }
    }
}

pub async fn email<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (ctx, fields) = Ctx::post(&state, &req, payload).await?;
    let principal = ctx.viewer()?;
    let request = UpdateMeRequest {
        nickname: None,
        first_name: None,
        last_name: None,
        bio: None,
        linkedin_profile_url: None,
        github_profile_url: None,
        email: Some(Some(fields.get("email").trim().to_owned())),
        current_password: Some(fields.get("current_password").to_owned()),
    };
    let result = async { Ok::<_, ApiError>(state.service.update_me(principal, request.try_into_domain()?).await?) };
    match result.await {
        Ok(_) => Ok(ctx.redirect("/ui/account/email?done=email")),
        Err(error) => failed(&state, &req, &ctx, &error, Some(&fields), Section::Email, |forms| &mut forms.email).await,
    }
}

pub async fn password<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (ctx, fields) = Ctx::post(&state, &req, payload).await?;
    let principal = ctx.viewer()?;
    match state.service.change_password(principal, fields.get("current_password"), fields.get("new_password")).await {
        Ok(()) => Ok(ctx.redirect("/ui/account/password?done=password")),
        Err(error) => {
            failed(&state, &req, &ctx, &ApiError::from(error), Some(&fields), Section::Password, |forms| {
                &mut forms.password
            })
            .await
        }
    }
}

pub async fn revoke_session<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (mut ctx, fields) = Ctx::post(&state, &req, payload).await?;
    let principal = ctx.viewer()?.clone();
    let id = Uuid::parse_str(fields.get("session")).map_err(|_| ApiError::not_found())?;
    let revoked = state.service.revoke_session(&principal, SessionId::from_uuid(id)).await.map_err(ApiError::from)?;
    if !revoked {
        return Err(ApiError::not_found().into());
    }
    if principal.session_id.as_uuid() == id {
        ctx.sign_out();
        return Ok(ctx.redirect("/ui/sign-in?done=signed-out"));
    }
    Ok(ctx.redirect("/ui/account/sessions?done=session"))
}

/// Ends every session of the person, this browser's too.
pub async fn revoke_all<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (mut ctx, _) = Ctx::post(&state, &req, payload).await?;
    let principal = ctx.viewer()?.clone();
    state.service.logout_all(&principal).await.map_err(ApiError::from)?;
    ctx.sign_out();
    Ok(ctx.redirect("/ui/sign-in?done=signed-out"))
}

pub async fn delete<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (mut ctx, fields) = Ctx::post(&state, &req, payload).await?;
    let principal = ctx.viewer()?.clone();
    match state.service.delete_me(&principal, fields.get("current_password")).await {
        Ok(()) => {
            ctx.sign_out();
            let page = MessagePage::new(
                ctx.layout("Account deleted"),
                "Your account is deleted",
                "Its sessions and pictures are gone too.",
                ("/ui/sign-up", "Sign up again"),
            );
            ctx.html(StatusCode::OK, &page)
        }
        Err(error) => {
            failed(&state, &req, &ctx, &ApiError::from(error), None, Section::Delete, |forms| &mut forms.delete).await
        }
    }
}

pub async fn mfa_setup<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (ctx, fields) = Ctx::post(&state, &req, payload).await?;
    let principal = ctx.viewer()?;
    match state.service.setup_totp(principal, fields.get("current_password")).await {
        Ok(setup) => {
            let qr = qr_svg(&setup.otpauth_uri);
            let forms =
                AccountForms { mfa_setup: Some((setup.secret, setup.otpauth_uri, qr)), ..AccountForms::default() };
            render(&state, &req, &ctx, StatusCode::OK, Section::SecondFactor, forms).await
        }
        Err(error) => {
            failed(&state, &req, &ctx, &ApiError::from(error), None, Section::SecondFactor, |forms| &mut forms.mfa)
                .await
        }
    }
}

pub async fn mfa_confirm<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (ctx, fields) = Ctx::post(&state, &req, payload).await?;
    let principal = ctx.viewer()?;
    match state.service.confirm_totp(principal, fields.get("code")).await {
        Ok(codes) => {
            let recovery_codes = codes.iter().map(users_domain::second_factor::RecoveryCode::display).collect();
            let forms = AccountForms { recovery_codes, ..AccountForms::default() };
            render(&state, &req, &ctx, StatusCode::OK, Section::SecondFactor, forms).await
        }
        Err(error) => {
            failed(&state, &req, &ctx, &ApiError::from(error), None, Section::SecondFactor, |forms| &mut forms.mfa)
                .await
        }
    }
}

pub async fn mfa_disable<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (ctx, fields) = Ctx::post(&state, &req, payload).await?;
    let principal = ctx.viewer()?;
    match state.service.disable_totp(principal, fields.get("current_password"), fields.get("code")).await {
        Ok(()) => Ok(ctx.redirect("/ui/account/mfa?done=mfa-off")),
        Err(error) => {
            failed(&state, &req, &ctx, &ApiError::from(error), None, Section::SecondFactor, |forms| &mut forms.mfa)
                .await
        }
    }
}

/// `uri` as a QR code, as inline SVG markup for the page: only rectangles in two fixed colours (nothing of the URI
/// appears as text), labelled for screen readers. Empty when the URI does not fit a QR code.
fn qr_svg(uri: &str) -> String {
    let Ok(code) = qrcode::QrCode::new(uri.as_bytes()) else {
        return String::new();
    };
    let svg = code.render::<qrcode::render::svg::Color<'_>>().min_dimensions(200, 200).quiet_zone(true).build();
    // The renderer writes a standalone document; the page needs the element alone.
    svg.find("<svg").map_or_else(String::new, |start| {
        svg[start..].replacen("<svg ", "<svg class=\"qr\" role=\"img\" aria-label=\"QR code of the key\" ", 1)
    })
}

/// Where a picture form sends the person back to: their account, or the user's page.
fn picture_return(viewer: &Principal, user: UserId, done: &str) -> String {
    if viewer.user.id == user {
        format!("/ui/account?done={done}")
    } else {
        format!("/ui/users/{}?done={done}", user.as_uuid())
    }
}

/// Shows a failed picture form on the page it came from.
async fn picture_failed<P: Ports>(
    state: &AppState<P>,
    req: &HttpRequest,
    ctx: &Ctx,
    user: UserId,
    error: &ApiError,
) -> Result<HttpResponse, PageError> {
    if ctx.viewer()?.user.id == user {
        failed(state, req, ctx, error, None, Section::Profile, |forms| &mut forms.picture).await
    } else {
        super::staff::render_user(
            state,
            req,
            ctx,
            user,
            error.status(),
            super::staff::UserForms::picture_failed(ctx, error),
        )
        .await
    }
}

/// A picture upload, for oneself or (staff) for a user, as multipart with the CSRF field before the file.
pub async fn upload<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    check_origin(&state, &req)?;
    let ctx = Ctx::load(&state, &req).await?;
    let principal = ctx.viewer()?;
    let user = parse_user(&path)?;
    let (permit, upload, _slot) = match receive_upload(&state, principal, user, &req, payload).await {
        Ok(received) => received,
        Err(error) => return picture_failed(&state, &req, &ctx, user, &error).await,
    };
    ctx.check_csrf(upload.csrf.as_deref().unwrap_or_default())?;
    match state.service.upload(permit, upload.file).await {
        Ok(_) => Ok(ctx.redirect(&picture_return(principal, user, "picture"))),
        Err(error) => picture_failed(&state, &req, &ctx, user, &ApiError::from(error)).await,
    }
}

pub async fn delete_picture<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (ctx, _) = Ctx::post(&state, &req, payload).await?;
    let principal = ctx.viewer()?;
    let user = parse_user(&path)?;
    match state.service.delete(principal, user).await {
        Ok(()) => Ok(ctx.redirect(&picture_return(principal, user, "picture-deleted"))),
        Err(error) => picture_failed(&state, &req, &ctx, user, &ApiError::from(error)).await,
    }
}

pub async fn restore_picture<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (ctx, fields) = Ctx::post(&state, &req, payload).await?;
    let principal = ctx.viewer()?;
    let user = parse_user(&path)?;
    let version = Uuid::parse_str(fields.get("version")).map_err(|_| ApiError::not_found())?;
    match state.service.restore(principal, user, version).await {
        Ok(_) => Ok(ctx.redirect(&picture_return(principal, user, "restored"))),
        Err(error) => picture_failed(&state, &req, &ctx, user, &ApiError::from(error)).await,
    }
}

/// An archived picture, for whoever may see the user's history (archived pictures are not public).
pub async fn archived_picture<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::load(&state, &req).await?;
    let principal = ctx.viewer()?;
    let (user, version) = path.into_inner();
    let version = Uuid::parse_str(&version).map_err(|_| ApiError::not_found())?;
    let query = serde_urlencoded::from_str::<SizeQuery>(req.query_string()).unwrap_or(SizeQuery { size: None });
    let size = parse_size(&query)?;
    let picture =
        state.service.serve_version(principal, parse_user(&user)?, version, size).await.map_err(ApiError::from)?;
    Ok(HttpResponse::Ok()
        .content_type(picture.content_type.as_str())
        .insert_header((header::CACHE_CONTROL, "private, no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .body(picture.bytes))
}

#[cfg(test)]
mod tests {
    use super::qr_svg;

    #[test]
    fn the_qr_code_is_an_svg_element_with_a_label_and_none_of_the_uri_as_text() {
        let uri = "otpauth://totp/user-management:ada%40example.com?secret=JBSWY3DPEHPK3PXP&issuer=user-management";
        let svg = qr_svg(uri);
        assert!(svg.starts_with("<svg class=\"qr\" role=\"img\" aria-label=\"QR code of the key\" "), "{svg}");
        assert!(svg.ends_with("</svg>"));
        for part in ["otpauth", "ada", "JBSWY3DPEHPK3PXP", "<?xml", "<script"] {
            assert!(!svg.contains(part), "{part} in {svg}");
        }
    }
}
