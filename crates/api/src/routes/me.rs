//! The caller's own profile.

use actix_web::{HttpResponse, web};

use super::Caller;
use crate::dto::UserResponse;
use crate::error::{ApiError, Problem};
use crate::openapi::{BearerErrors, Unavailable};
use crate::state::AppState;
use users_domain::ports::Ports;

/// The caller's profile, read from the current database row.
#[utoipa::path(
    get, path = "/me", tag = "profile", security(("oauth2" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = UserResponse),
        BearerErrors,
        (status = 403, description = "`account_locked`", body = Problem, content_type = "application/problem+json"),
        Unavailable,
    )
)]
pub async fn get_me<P: Ports>(state: web::Data<AppState<P>>, caller: Caller) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(UserResponse::new(&caller.0.user, &state.public_base_url)))
}
