//! `/v1/grants`: list, show, revoke, extend. States follow the clock.

use axum::Json;
use axum::extract::State;
use portcullis_protocol::duration;
use serde::Deserialize;

use crate::api::AppState;
use crate::api::extract::{All, Caller, Id, JsonBody};
use crate::api::views::GrantView;
use crate::error::ApiError;
use crate::time;

/// Active and scheduled grants the caller may see, or all with `?all=true`.
pub(crate) async fn list(
    State(state): State<AppState>,
    Caller(me): Caller,
    All(all): All,
) -> Result<Json<Vec<GrantView>>, ApiError> {
    let grants = state.workflow.list_grants(me, all).await?;
    let flagged = state.workflow.break_glass_grants().await?;
    let now = time::now();
    Ok(Json(
        grants.into_iter().map(|g| GrantView::at(g, now, &flagged)).collect(),
    ))
}

/// One grant, with its history and its request's.
pub(crate) async fn get(
    State(state): State<AppState>,
    Caller(me): Caller,
    Id(id): Id,
) -> Result<Json<GrantView>, ApiError> {
    let grant = state.workflow.get_grant(me, id).await?;
    let history = state
        .workflow
        .history(vec![grant.request_id.clone(), grant.id.clone()])
        .await?;
    let flagged = state.workflow.break_glass_grants().await?;
    Ok(Json(GrantView::at(grant, time::now(), &flagged).with_history(history)))
}

/// Body of `revoke`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeBody {
    reason: Option<String>,
}

/// Ends a grant now.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    Caller(me): Caller,
    Id(id): Id,
    JsonBody(body): JsonBody<RevokeBody>,
) -> Result<Json<GrantView>, ApiError> {
    let grant = state.workflow.revoke(me, id, body.reason).await?;
    let flagged = state.workflow.break_glass_grants().await?;
    Ok(Json(GrantView::at(grant, time::now(), &flagged)))
}

/// Body of `extend`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtendBody {
    by: String,
}

/// Moves a grant's deadline.
pub(crate) async fn extend(
    State(state): State<AppState>,
    Caller(me): Caller,
    Id(id): Id,
    JsonBody(body): JsonBody<ExtendBody>,
) -> Result<Json<GrantView>, ApiError> {
    let by = duration::parse(&body.by).map_err(|_| ApiError::BadDuration {
        field: "by",
        value: body.by.clone(),
    })?;
    let grant = state.workflow.extend(me, id, by).await?;
    let flagged = state.workflow.break_glass_grants().await?;
    Ok(Json(GrantView::at(grant, time::now(), &flagged)))
}
