//! `/v1/sessions`: live sessions, held by the proxy behind `SessionDirectory`.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::{Caller, Id};
use crate::api::views::SessionView;
use crate::error::ApiError;

/// Live sessions the caller may see.
pub(crate) async fn list(State(state): State<AppState>, Caller(me): Caller) -> Json<Vec<SessionView>> {
    let sessions = state.workflow.visible_sessions(state.sessions.as_ref(), &me);
    Json(sessions.into_iter().map(SessionView::from).collect())
}

/// Ends one live session: `{"killed":true}`.
pub(crate) async fn kill(
    State(state): State<AppState>,
    Caller(me): Caller,
    Id(id): Id,
) -> Result<Json<Value>, ApiError> {
    state.workflow.kill_session(state.sessions.as_ref(), me, id).await?;
    Ok(Json(json!({ "killed": true })))
}
