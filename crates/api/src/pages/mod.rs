//! Pages for people, under `/ui/`: sign up, sign in (with the second step), forgot and reset password, the account,
//! and for staff the user table, a user's page and (ADMIN) the audit trail.
//!
//! The pages are server-rendered askama templates (HTML auto-escaped) over the same service calls as the API, never
//! HTTP calls to ourselves; they need no JavaScript and the `Content-Security-Policy` allows none. Validation is the
//! API's own: each form is read into the API's request type and parsed by it, and an [`ApiError`] becomes messages
//! beside the fields it names.
//!
//! **Cookie session.** Signing in starts a session like `POST /login` does (a row of the sessions table); the
//! browser gets only its access token, in an `HttpOnly`, `SameSite=Lax` cookie (`Secure`, and named with the
//! `__Host-` prefix, when `PUBLIC_BASE_URL` is https). Every page checks it against the current rows, so
//! `POST /logout/all`, revoking the session or locking the account ends it at the next request. A token past half
//! its lifetime is replaced by a fresh one for the same session: the pages stay signed in while used, and sign out
//! after an access-token lifetime (`ACCESS_TOKEN_TTL`) without a request.
//!
//! **CSRF.** Every form carries the value of a random cookie of its own (double submit); a POST whose field does not
//! match, or whose `Origin` is not `PUBLIC_BASE_URL`'s or whose `Sec-Fetch-Site` says cross-site, changes nothing
//! and gets 403. With the `__Host-` prefix a sibling subdomain cannot plant that cookie.

mod account;
mod public;
mod staff;

use account::{Section, section_route};

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError, web};
use askama::Template;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use users_domain::ports::Ports;
use users_domain::sessions::{AuthError, Principal};

use crate::error::ApiError;
use crate::routes::{SMALL_BODY_LIMIT, client_info, media_type, read_body};
use crate::state::AppState;

/// The policy of every page: our stylesheet and images only, forms posting to ourselves, no script, no frames.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                                       frame-ancestors 'none'; base-uri 'none'";

/// The one stylesheet.
const STYLESHEET: &str = include_str!("../../static/style.css");

/// Mounts the pages: `/` and `/ui` redirect to `/ui/`.
pub fn mount<P: Ports>(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/").route(web::get().to(redirect_home)))
        .service(web::resource("/ui").route(web::get().to(redirect_home)))
        .service(web::resource("/ui/").route(web::get().to(public::home::<P>)))
        .service(web::resource("/ui/static/style.css").route(web::get().to(stylesheet)))
        .service(
            web::resource("/ui/sign-up")
                .route(web::get().to(public::sign_up_page::<P>))
                .route(web::post().to(public::sign_up::<P>)),
        )
        .service(
            web::resource("/ui/sign-in")
                .route(web::get().to(public::sign_in_page::<P>))
                .route(web::post().to(public::sign_in::<P>)),
        )
        .service(web::resource("/ui/sign-in/code").route(web::post().to(public::sign_in_code::<P>)))
        .service(web::resource("/ui/sign-out").route(web::post().to(public::sign_out::<P>)))
        .service(
            web::resource("/ui/password/forgot")
                .route(web::get().to(public::forgot_page::<P>))
                .route(web::post().to(public::forgot::<P>)),
        )
        .service(
            web::resource("/ui/password/reset")
                .route(web::get().to(public::reset_page::<P>))
                .route(web::post().to(public::reset::<P>)),
        )
        .service(
            web::resource("/ui/account")
                .route(section_route::<P>(Section::Profile))
                .route(web::post().to(account::profile::<P>)),
        )
        .service(
            web::resource("/ui/account/email")
                .route(section_route::<P>(Section::Email))
                .route(web::post().to(account::email::<P>)),
        )
        .service(
            web::resource("/ui/account/password")
                .route(section_route::<P>(Section::Password))
                .route(web::post().to(account::password::<P>)),
        )
        .service(web::resource("/ui/account/sessions").route(section_route::<P>(Section::Sessions)))
        .service(web::resource("/ui/account/sessions/revoke").route(web::post().to(account::revoke_session::<P>)))
        .service(web::resource("/ui/account/sessions/revoke-all").route(web::post().to(account::revoke_all::<P>)))
        .service(
            web::resource("/ui/account/delete")
                .route(section_route::<P>(Section::Delete))
                .route(web::post().to(account::delete::<P>)),
        )
        .service(web::resource("/ui/account/mfa").route(section_route::<P>(Section::SecondFactor)))
        .service(web::resource("/ui/account/mfa/setup").route(web::post().to(account::mfa_setup::<P>)))
        .service(web::resource("/ui/account/mfa/confirm").route(web::post().to(account::mfa_confirm::<P>)))
        .service(web::resource("/ui/account/mfa/disable").route(web::post().to(account::mfa_disable::<P>)))
        .service(web::resource("/ui/users").route(web::get().to(staff::users::<P>)))
        .service(
            web::resource("/ui/users/{id}")
                .route(web::get().to(staff::user_page::<P>))
                .route(web::post().to(staff::update_user::<P>)),
        )
        .service(web::resource("/ui/users/{id}/picture").route(web::post().to(account::upload::<P>)))
        .service(web::resource("/ui/users/{id}/picture/delete").route(web::post().to(account::delete_picture::<P>)))
        .service(web::resource("/ui/users/{id}/picture/restore").route(web::post().to(account::restore_picture::<P>)))
        .service(
            web::resource("/ui/users/{id}/picture/history/{version}")
                .route(web::get().to(account::archived_picture::<P>)),
        )
        .service(web::resource("/ui/audit").route(web::get().to(staff::audit::<P>)));
}

async fn redirect_home() -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, "/ui/")).finish()
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .body(STYLESHEET)
}

/// The two cookies' names: with the `__Host-` prefix over https (the browser then insists on `Secure`, `Path=/`
/// and no `Domain`, so no other host can set them).
struct CookieNames {
    session: &'static str,
    csrf: &'static str,
}

impl CookieNames {
    const fn new(secure: bool) -> Self {
        if secure {
            Self { session: "__Host-um_session", csrf: "__Host-um_csrf" }
        } else {
            Self { session: "um_session", csrf: "um_csrf" }
        }
    }
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Lax`, `Path=/`, `Secure` over https; a browser-session cookie.
fn set_cookie(name: &str, value: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax{secure}")
}

/// A `Set-Cookie` value that removes the cookie.
fn clear_cookie(name: &str, secure: bool) -> String {
    format!("{}; Max-Age=0", set_cookie(name, "", secure))
}

/// The value of the request's cookie `name`, if sent once or more (the first wins).
fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// A fresh CSRF secret: 32 random bytes from the operating system, base64url.
fn new_csrf() -> String {
    let mut bytes = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether two secrets are equal, in time that depends only on their lengths.
fn same_secret(left: &str, right: &str) -> bool {
    left.len() == right.len() && left.bytes().zip(right.bytes()).fold(0_u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The request as the pages see it: who is signed in, the CSRF secret, and the cookies to set on the answer.
pub(crate) struct Ctx {
    secure: bool,
    csrf: String,
    /// Whether `csrf` was made for this request (no form can hold it yet).
    csrf_is_new: bool,
    cookies: Vec<String>,
    viewer: Option<Principal>,
    /// Seconds to send as `Retry-After`, when a form failed on a limit or an unavailable dependency.
    retry_after: std::cell::Cell<Option<u64>>,
}

impl Ctx {
    /// Reads the cookies: the CSRF secret (a new one when there is none) and the session, renewed when due.
    async fn load<P: Ports>(state: &AppState<P>, req: &HttpRequest) -> Result<Self, PageError> {
        let secure = state.public_base_url.starts_with("https://");
        let names = CookieNames::new(secure);
        let mut cookies = Vec::new();
        let existing = cookie(req, names.csrf).filter(|value| value.len() == 43);
        let csrf_is_new = existing.is_none();
        let csrf = existing.unwrap_or_else(|| {
            let value = new_csrf();
            cookies.push(set_cookie(names.csrf, &value, secure));
            value
        });
        let mut viewer = None;
        if let Some(token) = cookie(req, names.session).filter(|token| !token.is_empty()) {
            match state.service.authenticate_renewing(&token).await {
                Ok((mut principal, renewed)) => {
                    principal.client = client_info(req, &state.clients);
                    if let Some(renewed) = renewed {
                        cookies.push(set_cookie(names.session, renewed.expose(), secure));
                    }
                    viewer = Some(principal);
                }
                Err(AuthError::InvalidToken | AuthError::AccountLocked) => {
                    cookies.push(clear_cookie(names.session, secure));
                }
                Err(AuthError::Port(error)) => return Err(ApiError::from(error).into()),
            }
        }
        Ok(Self { secure, csrf, csrf_is_new, cookies, viewer, retry_after: std::cell::Cell::new(None) })
    }

    /// [`Self::load`] for a form post: also reads the urlencoded body and checks its CSRF field and the origin.
    async fn post<P: Ports>(
        state: &AppState<P>,
        req: &HttpRequest,
        payload: web::Payload,
    ) -> Result<(Self, Fields), PageError> {
        check_origin(state, req)?;
        let ctx = Self::load(state, req).await?;
        if media_type(req) != "application/x-www-form-urlencoded" {
            return Err(ApiError::unsupported_media_type("send the form as application/x-www-form-urlencoded").into());
        }
        let body = read_body(payload, SMALL_BODY_LIMIT).await?;
        let fields = Fields::parse(&body)?;
        ctx.check_csrf(fields.get("csrf"))?;
        Ok((ctx, fields))
    }

    /// Refuses a form whose CSRF field is not this browser's secret.
    fn check_csrf(&self, presented: &str) -> Result<(), PageError> {
        // A secret just made for this request was never in a form: nothing presented can match it.
        if self.csrf_is_new || !same_secret(presented, &self.csrf) {
            return Err(PageError::Csrf);
        }
        Ok(())
    }

    /// The signed-in person, or a redirect to the sign-in page.
    fn viewer(&self) -> Result<&Principal, PageError> {
        self.viewer.as_ref().ok_or_else(|| PageError::SignIn(self.cookies.clone()))
    }

    /// Starts the cookie session of a new sign-in, with a fresh CSRF secret (one planted before cannot outlive it).
    fn sign_in(&mut self, access_token: &str) {
        let names = CookieNames::new(self.secure);
        self.cookies.clear();
        self.csrf = new_csrf();
        self.cookies.push(set_cookie(names.csrf, &self.csrf, self.secure));
        self.cookies.push(set_cookie(names.session, access_token, self.secure));
    }

    /// Ends the cookie session in this browser.
    fn sign_out(&mut self) {
        let names = CookieNames::new(self.secure);
        self.cookies.push(clear_cookie(names.session, self.secure));
        self.viewer = None;
    }

    /// `form` showing the failure `error`; its answer will carry the error's `Retry-After`, if any.
    fn failed(&self, form: Form, error: &ApiError) -> Form {
        if let Some(seconds) = error.retry_after() {
            self.retry_after.set(Some(seconds));
        }
        form.failed(error)
    }

    /// What every page's frame shows.
    fn layout(&self, title: &str) -> Layout {
        Layout {
            title: title.to_owned(),
            csrf: self.csrf.clone(),
            user: self.viewer.as_ref().map(|principal| NavUser {
                nickname: principal.user.nickname.as_str().to_owned(),
                staff: principal.user.role.administers_users(),
                admin: principal.user.role == users_domain::Role::Admin,
            }),
        }
    }

    /// An HTML answer with the pages' headers and the cookies to set.
    fn html(&self, status: StatusCode, template: &impl Template) -> Result<HttpResponse, PageError> {
        let body = template.render().map_err(|error| ApiError::internal(anyhow::Error::new(error)))?;
        let mut response = HttpResponse::build(status);
        self.headers(&mut response);
        Ok(response.content_type("text/html; charset=utf-8").body(body))
    }

    /// A 303 to `location` (a path of ours), with the cookies to set.
    fn redirect(&self, location: &str) -> HttpResponse {
        let mut response = HttpResponse::SeeOther();
        self.headers(&mut response);
        response.insert_header((header::LOCATION, location.to_owned())).finish()
    }

    fn headers(&self, response: &mut HttpResponseBuilder) {
        page_headers(response);
        if let Some(seconds) = self.retry_after.get() {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        for cookie in &self.cookies {
            response.append_header((header::SET_COOKIE, cookie.clone()));
        }
    }
}

/// The headers of every page: the policy, no caching (pages show personal data and forms carry secrets), no
/// framing, no sniffing, and a referrer for our own requests only (a reset page's URL holds its token). Not
/// `no-referrer`: under it browsers send `Origin: null` with form posts, which the origin check must refuse.
fn page_headers(response: &mut HttpResponseBuilder) {
    response
        .insert_header((header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .insert_header((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .insert_header((header::REFERRER_POLICY, HeaderValue::from_static("same-origin")));
}

/// Refuses a form post another site made the browser send: an `Origin` other than `PUBLIC_BASE_URL`'s, or
/// `Sec-Fetch-Site: cross-site`. (Browsers send one or both with every form post; the CSRF field is checked too.)
fn check_origin<P: Ports>(state: &AppState<P>, req: &HttpRequest) -> Result<(), PageError> {
    let header_value = |name: header::HeaderName| req.headers().get(name).and_then(|value| value.to_str().ok());
    if header_value(header::HeaderName::from_static("sec-fetch-site")) == Some("cross-site") {
        return Err(PageError::Csrf);
    }
    if let Some(origin) = header_value(header::ORIGIN) {
        let ours = url::Url::parse(&state.public_base_url).map(|url| url.origin().ascii_serialization());
        if ours.map_or(true, |ours| ours != origin) {
            return Err(PageError::Csrf);
        }
    }
    Ok(())
}

/// The fields of a posted form; the first of a repeated name counts.
pub(crate) struct Fields(HashMap<String, String>);

impl Fields {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|error| ApiError::malformed_body(format!("invalid form body: {error}")))?;
        let mut fields = HashMap::new();
        for (name, value) in pairs {
            fields.entry(name).or_insert(value);
        }
        Ok(Self(fields))
    }

    /// The field's value, empty when absent.
    fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }

    /// The field's value, `None` when absent or empty.
    fn non_empty(&self, name: &str) -> Option<String> {
        Some(self.get(name).trim()).filter(|value| !value.is_empty()).map(str::to_owned)
    }

    /// Whether a checkbox was ticked.
    fn checked(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// What a form shows again after a failed post: the values entered (never a password or a code), the errors beside
/// their fields, and a message about the whole form.
#[derive(Debug, Default)]
pub(crate) struct Form {
    values: HashMap<String, String>,
    errors: HashMap<String, String>,
    /// A message about the whole form.
    alert: Option<String>,
}

impl Form {
    /// The entered values, without secrets.
    fn from_fields(fields: &Fields) -> Self {
        let values = fields
            .0
            .iter()
            .filter(|(name, _)| !is_secret_field(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        Self { values, ..Self::default() }
    }

    /// A form filled with `values`.
    fn with_values<'a>(values: impl IntoIterator<Item = (&'a str, String)>) -> Self {
        Self { values: values.into_iter().map(|(name, value)| (name.to_owned(), value)).collect(), ..Self::default() }
    }

    /// The failure `error`, shown on this form.
    fn failed(mut self, error: &ApiError) -> Self {
        error.log_cause();
        for field in error.field_errors() {
            self.errors.entry(field.field.clone()).or_insert_with(|| sentence(&field.message));
        }
        if error.field_errors().is_empty() {
            self.alert = Some(explain(error));
        } else {
            self.alert = Some("Please correct the fields marked below.".to_owned());
        }
        self
    }

    /// An empty form with a message about it.
    fn alert(message: &str) -> Self {
        Self { alert: Some(message.to_owned()), ..Self::default() }
    }

    /// Whether the form holds an error.
    pub const fn failed_at_all(&self) -> bool {
        self.alert.is_some()
    }

    /// The message about the whole form.
    pub fn message(&self) -> Option<&str> {
        self.alert.as_deref()
    }

    /// Whether `name` holds `value` (a select box's option).
    pub fn selected(&self, name: &str, value: &str) -> bool {
        self.value(name) == value
    }

    /// The value entered in `name`, empty when none.
    pub fn value(&self, name: &str) -> &str {
        self.values.get(name).map_or("", String::as_str)
    }

    /// Whether the checkbox `name` is ticked.
    pub fn checked(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// The error beside `name`.
    pub fn error(&self, name: &str) -> Option<&str> {
        self.errors.get(name).map(String::as_str)
    }
}

/// Fields whose values never go back into a page.
fn is_secret_field(name: &str) -> bool {
    name.contains("password") || name == "code" || name == "csrf" || name == "mfa_token" || name == "token"
}

/// A validation message as a sentence: capitalised, with a full stop.
fn sentence(message: &str) -> String {
    let mut chars = message.chars();
    let mut text: String = chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default();
    if !text.ends_with('.') {
        text.push('.');
    }
    text
}

/// What a person is told about a failure that names no field.
fn explain(error: &ApiError) -> String {
    match error.code() {
        "invalid_credentials" => "The email or password is wrong.".to_owned(),
        "email_not_verified" => "Confirm your email address first: follow the link in the mail we sent you.".to_owned(),
        "account_locked" => "This account is locked. An administrator can unlock it.".to_owned(),
        "invalid_current_password" => "The current password is wrong.".to_owned(),
        "rate_limited" => match error.retry_after() {
            Some(seconds) => format!("Too many attempts. Try again in {seconds} seconds."),
            None => "Too many attempts. Try again later.".to_owned(),
        },
        "service_unavailable" => {
            "The service cannot do this right now. Nothing was changed; try again in a moment.".to_owned()
        }
        "internal_error" => "Something went wrong on our side. Nothing was changed; try again in a moment.".to_owned(),
        _ => error.public_detail().map_or_else(|| "The request failed.".to_owned(), sentence),
    }
}

/// The frame of every page.
pub(crate) struct Layout {
    /// The page's title.
    pub title: String,
    /// The CSRF secret, for the forms.
    pub csrf: String,
    /// Who is signed in.
    pub user: Option<NavUser>,
}

/// The signed-in person, as the navigation shows them.
pub(crate) struct NavUser {
    /// Their nickname.
    pub nickname: String,
    /// Whether they may use the user table.
    pub staff: bool,
    /// Whether they may read the audit trail.
    pub admin: bool,
}

/// A page that only says something, with an optional link onwards.
#[derive(Template)]
#[template(path = "message.html")]
pub(crate) struct MessagePage {
    layout: Layout,
    heading: String,
    text: String,
    link: Option<(String, String)>,
}

impl MessagePage {
    /// A message with a link onwards.
    fn new(layout: Layout, heading: &str, text: &str, link: (&str, &str)) -> Self {
        Self {
            layout,
            heading: heading.to_owned(),
            text: text.to_owned(),
            link: Some((link.0.to_owned(), link.1.to_owned())),
        }
    }
}

/// Why a page could not be served; answered as a page, never as JSON.
#[derive(Debug)]
pub(crate) enum PageError {
    /// Nobody is signed in: go to the sign-in page, with these cookies set (a dead session's is dropped).
    SignIn(Vec<String>),
    /// A form post without the browser's CSRF secret, or from another site.
    Csrf,
    /// An error of the API's kind.
    Api(ApiError),
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        Self::Api(error)
    }
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SignIn(_) => f.write_str("not signed in"),
            Self::Csrf => f.write_str("form without a valid CSRF token"),
            Self::Api(error) => error.fmt(f),
        }
    }
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::SignIn(_) => StatusCode::SEE_OTHER,
            Self::Csrf => StatusCode::FORBIDDEN,
            Self::Api(error) => error.status(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (heading, text) = match self {
            Self::SignIn(cookies) => {
                let mut response = HttpResponse::SeeOther();
                page_headers(&mut response);
                for cookie in cookies {
                    response.append_header((header::SET_COOKIE, cookie.clone()));
                }
                return response.insert_header((header::LOCATION, "/ui/sign-in")).finish();
            }
            Self::Csrf => (
                "This form has expired".to_owned(),
                "It was not sent from this site's current page. Nothing was changed: go back, reload the page and try again."
                    .to_owned(),
            ),
            Self::Api(error) if error.status() == StatusCode::NOT_FOUND => {
                ("Not found".to_owned(), "There is nothing here, or you may not see it.".to_owned())
            }
            Self::Api(error) if error.status() == StatusCode::FORBIDDEN => {
                ("Not allowed".to_owned(), explain(error).replace("The request failed.", "You may not do this."))
            }
            Self::Api(error) => {
                error.log_cause();
                ("Something went wrong".to_owned(), explain(error))
            }
        };
        let layout = Layout { title: heading.clone(), csrf: String::new(), user: None };
        let page = MessagePage::new(layout, &heading, &text, ("/ui/", "Back to the start"));
        let body = page.render().unwrap_or_else(|_| "error".to_owned());
        let mut response = HttpResponse::build(self.status_code());
        page_headers(&mut response);
        if let Self::Api(error) = self
            && let Some(seconds) = error.retry_after()
        {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.content_type("text/html; charset=utf-8").body(body)
    }
}

/// The short notices a redirect after a successful post asks its page to show (`?done=`): a fixed list, so no
/// text is ever reflected from the URL.
fn notice(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "profile" => "Your profile is saved.",
        "email" => "Almost done: follow the link we sent to the new address to make it your email.",
        "password" => "Your password is changed. Your other sessions were signed out.",
        "picture" => "Your picture is updated.",
        "picture-deleted" => "The picture is removed.",
        "restored" => "The picture is restored.",
        "session" => "The session is ended.",
        "mfa-off" => "The second factor is turned off.",
        "saved" => "The changes are saved.",
        "signed-out" => "You are signed out.",
        _ => return None,
    })
}

/// The `done` parameter of a query string.
fn done_of(req: &HttpRequest) -> Option<&'static str> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    notice(pairs.iter().find(|(name, _)| name == "done").map(|(_, value)| value.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_only_when_equal() {
        let secret = new_csrf();
        assert_eq!(secret.len(), 43);
        assert!(same_secret(&secret, &secret.clone()));
        assert!(!same_secret(&secret, &new_csrf()));
        assert!(!same_secret(&secret, ""));
        assert!(!same_secret("", &secret));
    }

    #[test]
    fn passwords_and_codes_never_go_back_into_a_form() {
        let fields = Fields::parse(
            b"email=a%40b.c&password=p&current_password=q&new_password=r&code=1&csrf=x&mfa_token=t&token=u",
        )
        .unwrap();
        let form = Form::from_fields(&fields);
        assert_eq!(form.value("email"), "a@b.c");
        for secret in ["password", "current_password", "new_password", "code", "csrf", "mfa_token", "token"] {
            assert_eq!(form.value(secret), "", "{secret}");
        }
    }

    #[test]
    fn cookies_are_http_only_lax_and_secure_over_https() {
        assert_eq!(set_cookie("um_session", "v", false), "um_session=v; Path=/; HttpOnly; SameSite=Lax");
        assert_eq!(
            set_cookie("__Host-um_session", "v", true),
            "__Host-um_session=v; Path=/; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(clear_cookie("um_session", false).ends_with("Max-Age=0"));
    }

    #[test]
    fn only_known_notices_are_shown() {
        assert_eq!(notice(Some("profile")), Some("Your profile is saved."));
        assert_eq!(notice(Some("<script>")), None);
        assert_eq!(notice(None), None);
    }
}
