//! `GET /v1/whoami`, `POST /v1/users` (admins; the token is answered once),
//! `GET /v1/users` (admins; never a token, hash or verifier).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api::AppState;
use crate::api::extract::{Caller, JsonBody};
use crate::api::views::{NewUserView, UserView};
use crate::error::ApiError;
use crate::workflow::users::UserAsk;

/// The caller.
pub(crate) async fn whoami(Caller(me): Caller) -> Json<UserView> {
    Json(UserView::from(me))
}

/// Body of `POST /v1/users`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    ssh_keys: Vec<String>,
}

/// Creates a user; 201 with the user and their token.
pub(crate) async fn create(
    State(state): State<AppState>,
    Caller(me): Caller,
    JsonBody(body): JsonBody<NewUser>,
) -> Result<Response, ApiError> {
    let ask = UserAsk {
        name: body.name,
        groups: body.groups,
        admin: body.admin,
        ssh_keys: body.ssh_keys,
    };
    let (user, token) = state.workflow.add_user(me, ask).await?;
    let view = NewUserView {
        user: UserView::from(user),
        token: token.expose().clone(),
    };
    // The one answer that carries a token must not be cached anywhere.
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(view)).into_response())
}

/// Every user.
pub(crate) async fn list(State(state): State<AppState>, Caller(me): Caller) -> Result<Json<Vec<UserView>>, ApiError> {
    let users = state.workflow.list_users(&me).await?;
    Ok(Json(users.into_iter().map(UserView::from).collect()))
}
