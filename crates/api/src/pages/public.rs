//! The pages anyone may open: sign up, sign in and its second step, sign out, forgot and reset password.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use users_domain::ports::Ports;

use super::{Ctx, Fields, Form, Layout, MessagePage, PageError, done_of};
use crate::dto::RegisterRequest;
use crate::error::ApiError;
use crate::routes::client_info;
use crate::state::AppState;

/// `/ui/sign-up`.
#[derive(Template)]
#[template(path = "sign_up.html")]
struct SignUpPage {
    layout: Layout,
    form: Form,
}

/// `/ui/sign-in`.
#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    layout: Layout,
    form: Form,
    notice: Option<&'static str>,
}

/// The second step of a sign-in.
#[derive(Template)]
#[template(path = "code.html")]
struct CodePage {
    layout: Layout,
    form: Form,
    mfa_token: String,
}

/// `/ui/password/forgot`.
#[derive(Template)]
#[template(path = "forgot.html")]
struct ForgotPage {
    layout: Layout,
    form: Form,
}

/// `/ui/password/reset?token=`.
#[derive(Template)]
#[template(path = "reset.html")]
struct ResetPage {
    layout: Layout,
    form: Form,
    token: String,
}

/// `/ui/`: the account when signed in, else the sign-in page.
pub async fn home<P: Ports>(state: web::Data<AppState<P>>, req: HttpRequest) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::load(&state, &req).await?;
    Ok(ctx.redirect(if ctx.viewer.is_some() { "/ui/account" } else { "/ui/sign-in" }))
}

pub async fn sign_up_page<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::load(&state, &req).await?;
    if ctx.viewer.is_some() {
        return Ok(ctx.redirect("/ui/account"));
    }
    ctx.html(StatusCode::OK, &SignUpPage { layout: ctx.layout("Sign up"), form: Form::default() })
}

pub async fn sign_up<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (ctx, fields) = Ctx::post(&state, &req, payload).await?;
    match register(&state, &req, &fields).await {
        Ok(()) => ctx.html(
            StatusCode::OK,
            &MessagePage::new(
                ctx.layout("Check your inbox"),
                "Check your inbox",
                "If this address can be registered, we have sent it a link. Follow the link to confirm your \
                       address, then sign in.",
                ("/ui/sign-in", "Sign in"),
            ),
        ),
        Err(error) => ctx.html(
            error.status(),
            &SignUpPage { layout: ctx.layout("Sign up"), form: ctx.failed(Form::from_fields(&fields), &error) },
        ),
    }
}

/// A registration from the form, checked as `POST /register` checks its body, on the same per-IP limit.
async fn register<P: Ports>(state: &AppState<P>, req: &HttpRequest, fields: &Fields) -> Result<(), ApiError> {
    state.limit("register", req).await?;
    let registration = RegisterRequest {
        email: fields.get("email").to_owned(),
        password: fields.get("password").to_owned(),
        nickname: fields.non_empty("nickname"),
        first_name: fields.non_empty("first_name"),
        last_name: fields.non_empty("last_name"),
        bio: fields.non_empty("bio"),
        linkedin_profile_url: fields.non_empty("linkedin_profile_url"),
        github_profile_url: fields.non_empty("github_profile_url"),
    }
    .try_into_domain()?;
    state.service.register(registration, client_info(req, &state.clients)).await?;
    Ok(())
}

pub async fn sign_in_page<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::load(&state, &req).await?;
    if ctx.viewer.is_some() {
        return Ok(ctx.redirect("/ui/account"));
    }
    ctx.html(
        StatusCode::OK,
        &SignInPage { layout: ctx.layout("Sign in"), form: Form::default(), notice: done_of(&req) },
    )
}

pub async fn sign_in<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (mut ctx, fields) = Ctx::post(&state, &req, payload).await?;
    let attempt = async {
        state.limit("login", &req).await?;
        let client = client_info(&req, &state.clients);
        Ok::<_, ApiError>(state.service.login(fields.get("email"), fields.get("password"), client).await?)
    };
    match attempt.await {
        Ok(pair) => {
            end_previous_session(&state, &mut ctx).await?;
            ctx.sign_in(pair.access_token.expose());
            Ok(ctx.redirect("/ui/account"))
        }
        Err(error) if error.code() == "mfa_required" => {
            let mfa_token = error.into_mfa_token().map(|token| token.token).unwrap_or_default();
            let page = CodePage { layout: ctx.layout("Enter your code"), form: Form::default(), mfa_token };
            ctx.html(StatusCode::OK, &page)
        }
        Err(error) => {
            let form = ctx.failed(Form::from_fields(&fields), &error);
            ctx.html(error.status(), &SignInPage { layout: ctx.layout("Sign in"), form, notice: None })
        }
    }
}

pub async fn sign_in_code<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (mut ctx, fields) = Ctx::post(&state, &req, payload).await?;
    // The same per-IP limit as `POST /login/mfa`.
    let attempt = async {
        state.limit("login-mfa", &req).await?;
        let client = client_info(&req, &state.clients);
        Ok::<_, ApiError>(state.service.login_second_step(fields.get("mfa_token"), fields.get("code"), client).await?)
    };
    match attempt.await {
        Ok(pair) => {
            end_previous_session(&state, &mut ctx).await?;
            ctx.sign_in(pair.access_token.expose());
            Ok(ctx.redirect("/ui/account"))
        }
        Err(error) => {
            if error.code() == "invalid_token" {
                // The pending sign-in is over (expired, used, or out of tries): start again.
                let form = Form::alert("The sign-in has expired or had too many wrong codes. Sign in again.");
                return ctx.html(error.status(), &SignInPage { layout: ctx.layout("Sign in"), form, notice: None });
            }
            let page = CodePage {
                layout: ctx.layout("Enter your code"),
                form: ctx.failed(Form::default(), &error),
                mfa_token: fields.get("mfa_token").to_owned(),
            };
            ctx.html(error.status(), &page)
        }
    }
}

/// Revokes the session this browser was signed in with, if any, before a new sign-in replaces its cookie: it would
/// otherwise live on, out of sight, until it expires.
async fn end_previous_session<P: Ports>(state: &AppState<P>, ctx: &mut Ctx) -> Result<(), PageError> {
    if let Some(previous) = ctx.viewer.take() {
        state.service.revoke_session(&previous, previous.session_id).await.map_err(ApiError::from)?;
    }
    Ok(())
}

/// Ends this browser's session (the row is revoked, not just the cookie dropped).
pub async fn sign_out<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (mut ctx, _) = Ctx::post(&state, &req, payload).await?;
    if let Some(principal) = ctx.viewer.take() {
        state.service.revoke_session(&principal, principal.session_id).await.map_err(ApiError::from)?;
    }
    ctx.sign_out();
    Ok(ctx.redirect("/ui/sign-in?done=signed-out"))
}

pub async fn forgot_page<P: Ports>(state: web::Data<AppState<P>>, req: HttpRequest) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::load(&state, &req).await?;
    ctx.html(StatusCode::OK, &ForgotPage { layout: ctx.layout("Forgot your password?"), form: Form::default() })
}

pub async fn forgot<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (ctx, fields) = Ctx::post(&state, &req, payload).await?;
    let request = async {
        state.limit("forgot", &req).await?;
        let email = users_domain::EmailAddress::parse(fields.get("email"))
            .map_err(|error| ApiError::invalid_field("email", error))?;
        Ok::<_, ApiError>(state.service.forgot_password(email).await?)
    };
    match request.await {
        Ok(()) => ctx.html(
            StatusCode::OK,
            &MessagePage::new(
                ctx.layout("Check your inbox"),
                "Check your inbox",
                "If this address has an account, we have sent it a link to choose a new password. The link \
                       works once, for a short while.",
                ("/ui/sign-in", "Back to sign in"),
            ),
        ),
        Err(error) => {
            let form = ctx.failed(Form::from_fields(&fields), &error);
            ctx.html(error.status(), &ForgotPage { layout: ctx.layout("Forgot your password?"), form })
        }
    }
}

/// The `token` parameter of the reset link.
#[derive(serde::Deserialize)]
pub struct TokenQuery {
    #[serde(default)]
    token: String,
}

pub async fn reset_page<P: Ports>(state: web::Data<AppState<P>>, req: HttpRequest) -> Result<HttpResponse, PageError> {
    let ctx = Ctx::load(&state, &req).await?;
    let token =
        serde_urlencoded::from_str::<TokenQuery>(req.query_string()).map(|query| query.token).unwrap_or_default();
    ctx.html(StatusCode::OK, &ResetPage { layout: ctx.layout("Choose a new password"), form: Form::default(), token })
}

pub async fn reset<P: Ports>(
    state: web::Data<AppState<P>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PageError> {
    let (ctx, fields) = Ctx::post(&state, &req, payload).await?;
    let client = client_info(&req, &state.clients);
    match state.service.reset_password(fields.get("token"), fields.get("new_password"), client).await {
        Ok(()) => ctx.html(
            StatusCode::OK,
            &MessagePage::new(
                ctx.layout("Password changed"),
                "Your password is changed",
                "Every session of the account was signed out. Sign in with the new password.",
                ("/ui/sign-in", "Sign in"),
            ),
        ),
        Err(error) => {
            let error = ApiError::from(error);
            let page = ResetPage {
                layout: ctx.layout("Choose a new password"),
                form: ctx.failed(Form::default(), &error),
                token: fields.get("token").to_owned(),
            };
            ctx.html(error.status(), &page)
        }
    }
}
