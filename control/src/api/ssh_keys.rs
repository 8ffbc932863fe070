//! `GET /v1/users/{name}/ssh-keys`, `POST /v1/users/{name}/ssh-keys` and
//! `POST /v1/users/{name}/ssh-keys/remove` (admins): a user's registered SSH
//! public keys, managed after `user add`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use crate::api::AppState;
use crate::api::extract::{Caller, Id, JsonBody};
use crate::error::ApiError;
use crate::workflow::ssh_keys::{KeyRef, SshKey};

/// The user's keys.
pub(crate) async fn list(
    State(state): State<AppState>,
    Caller(me): Caller,
    Id(name): Id,
) -> Result<Json<Vec<SshKey>>, ApiError> {
    Ok(Json(state.workflow.ssh_keys(&me, name).await?))
}

/// Body of `POST /v1/users/{name}/ssh-keys`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKey {
    key: String,
}

/// Registers a key; 201 with it.
pub(crate) async fn add(
    State(state): State<AppState>,
    Caller(me): Caller,
    Id(name): Id,
    JsonBody(body): JsonBody<NewKey>,
) -> Result<(StatusCode, Json<SshKey>), ApiError> {
    let key = state.workflow.add_ssh_key(me, name, body.key).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

/// Body of `POST /v1/users/{name}/ssh-keys/remove`: one of the two.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WhichKey {
    fingerprint: Option<String>,
    key: Option<String>,
}

/// Removes a key; answers it.
pub(crate) async fn remove(
    State(state): State<AppState>,
    Caller(me): Caller,
    Id(name): Id,
    JsonBody(body): JsonBody<WhichKey>,
) -> Result<Json<SshKey>, ApiError> {
    let which = match (body.fingerprint, body.key) {
        (Some(f), None) => KeyRef::Fingerprint(f),
        (None, Some(k)) => KeyRef::Line(k),
        _ => {
            return Err(ApiError::BadBody {
                detail: "give either fingerprint or key".to_owned(),
            });
        }
    };
    Ok(Json(state.workflow.remove_ssh_key(me, name, which).await?))
}
