//! `POST /v1/slack/interactions`: Slack's interactivity callbacks (the
//! Approve and Deny buttons). Authenticated by Slack's signature, not a
//! bearer token. Forged, stale or replayed callbacks get 401, malformed ones
//! 400, each with `{"error": ...}`; a verified click gets 200 and a Slack
//! message saying what happened (including refusals by the workflow's rules).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::{AppState, MAX_BODY};
use crate::error::ApiError;
use crate::notify::slack::{self, Refusal};
use crate::time;

/// Only Slack's own host gets follow-up messages: the URL comes from the payload.
const RESPONSE_URL_PREFIX: &str = "https://hooks.slack.com/";

/// Verifies and applies one button click.
pub(crate) async fn interactions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let metrics = state.workflow.metrics.chat_actions.clone();
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return ApiError::BodyTooLarge {
                max_kib: MAX_BODY / 1024,
            }
            .into_response();
        }
        Err(e) => return ApiError::BadBody { detail: e.body_text() }.into_response(),
    };
    let notify = &state.workflow.notify;
    let action = notify.chat.as_ref().ok_or(Refusal::NotConfigured).and_then(|chat| {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let signature = header("x-slack-signature");
        let now_s = time::now() / 1000;
        slack::verify(
            chat.signing_secret.expose().as_bytes(),
            header("x-slack-request-timestamp"),
            signature,
            &body,
            now_s,
        )?;
        // Remembered only once verified, so forgeries cannot fill the guard;
        // lower case, since upper-case hex verifies as well.
        let seen = signature.unwrap_or_default().to_ascii_lowercase();
        if !chat.replays.first_time(&seen, now_s) {
            return Err(Refusal::Replayed);
        }
        slack::parse_action(&body)
    });
    let action = match action {
        Ok(a) => a,
        Err(refusal) => {
            metrics.with_label_values(&[refusal.kind()]).inc();
            let status = match refusal {
                Refusal::NotConfigured => StatusCode::NOT_FOUND,
                Refusal::BadPayload { .. } => StatusCode::BAD_REQUEST,
                _ => StatusCode::UNAUTHORIZED,
            };
            tracing::info!(status = status.as_u16(), error = %refusal, "Slack callback refused");
            return (status, Json(json!({ "error": refusal.to_string() }))).into_response();
        }
    };
    let response_url = action
        .response_url
        .clone()
        .filter(|u| u.starts_with(RESPONSE_URL_PREFIX));
    let slack_user = action.slack_user.clone();
    let reply = match state.workflow.chat_action(action).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    metrics.with_label_values(&[reply.outcome]).inc();
    tracing::info!(slack_user = %slack_user, outcome = reply.outcome, "Slack action");
    let answer = slack::answer(&reply.text);
    if let Some(url) = response_url {
        // Slack shows block_actions answers posted to response_url; the HTTP answer serves other clients.
        let http = notify.http.clone();
        let message = answer.clone();
        tokio::spawn(async move {
            if let Err(e) = http.post(url).json(&message).send().await {
                tracing::info!(error = %e.without_url(), "posting the Slack answer to response_url failed");
            }
        });
    }
    (StatusCode::OK, Json(answer)).into_response()
}
