//! `/v1/requests`: file, list, show, approve, deny, cancel.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use portcullis_protocol::duration;
use serde::Deserialize;

use crate::api::AppState;
use crate::api::extract::{All, Caller, Id, JsonBody};
use crate::api::views::RequestView;
use crate::error::ApiError;
use crate::time::parse_rfc3339;
use crate::workflow::policy::Ask;

/// Body of `POST /v1/requests`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewRequest {
    resource: String,
    role: Option<String>,
    duration: Option<String>,
    reason: Option<String>,
    start: Option<String>,
    #[serde(default)]
    break_glass: bool,
}

/// Files a request; 201, already `approved` when an auto-approve rule matched.
pub(crate) async fn create(
    State(state): State<AppState>,
    Caller(me): Caller,
    JsonBody(body): JsonBody<NewRequest>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    let duration = body
        .duration
        .map(|d| {
            duration::parse(&d).map_err(|_| ApiError::BadDuration {
                field: "duration",
                value: d.clone(),
            })
        })
        .transpose()?;
    let start_at = body
        .start
        .map(|s| {
            parse_rfc3339(&s).ok_or(ApiError::BadTime {
                field: "start",
                value: s,
            })
        })
        .transpose()?;
    let ask = Ask {
        role: body.role.filter(|r| !r.trim().is_empty()),
        duration,
        reason: body.reason,
        start_at,
        break_glass: body.break_glass,
    };
    let req = state.workflow.create_request(me, body.resource, ask).await?;
    Ok((StatusCode::CREATED, Json(req.into())))
}

/// Pending requests the caller may see, or all of them with `?all=true`.
pub(crate) async fn list(
    State(state): State<AppState>,
    Caller(me): Caller,
    All(all): All,
) -> Result<Json<Vec<RequestView>>, ApiError> {
    let reqs = state.workflow.list_requests(me, all).await?;
    Ok(Json(reqs.into_iter().map(RequestView::from).collect()))
}

/// One request, with its history and its grant's.
pub(crate) async fn get(
    State(state): State<AppState>,
    Caller(me): Caller,
    Id(id): Id,
) -> Result<Json<RequestView>, ApiError> {
    let req = state.workflow.get_request(me, id).await?;
    let subjects = std::iter::once(req.id.clone()).chain(req.grant_id.clone()).collect();
    let history = state.workflow.history(subjects).await?;
    Ok(Json(RequestView::from(req).with_history(history)))
}

/// Body of `approve`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApproveBody {
    comment: Option<String>,
}

/// One approval; the request stays `pending` until enough distinct approvers agree.
pub(crate) async fn approve(
    State(state): State<AppState>,
    Caller(me): Caller,
    Id(id): Id,
    JsonBody(body): JsonBody<ApproveBody>,
) -> Result<Json<RequestView>, ApiError> {
    Ok(Json(state.workflow.approve(me, id, body.comment).await?.into()))
}

/// Body of `deny`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DenyBody {
    reason: Option<String>,
}

/// Denies a pending request; a reason is required.
pub(crate) async fn deny(
    State(state): State<AppState>,
    Caller(me): Caller,
    Id(id): Id,
    JsonBody(body): JsonBody<DenyBody>,
) -> Result<Json<RequestView>, ApiError> {
    Ok(Json(state.workflow.deny(me, id, body.reason).await?.into()))
}

/// Cancels one's own pending request (any body is ignored).
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Caller(me): Caller,
    Id(id): Id,
) -> Result<Json<RequestView>, ApiError> {
    Ok(Json(state.workflow.cancel(me, id).await?.into()))
}
