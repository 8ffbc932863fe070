//! `/healthz` (the process answers), `/readyz` (the store answers) and
//! `/metrics` (Prometheus text).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, TextEncoder};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::error::ApiError;
use crate::store::Sql;

/// `{"status":"ok"}`.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `{"status":"ready"}` once the store answers; 503 otherwise.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let probe = state
        .workflow
        .store
        .call(|conn| -> Result<i64, ApiError> { Ok(conn.query_one("SELECT 1", &[])?.get(0)?) })
        .await;
    match probe {
        Ok(_) => Json(json!({ "status": "ready" })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the store does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not ready", "error": "the store does not answer; see the log" })),
            )
                .into_response()
        }
    }
}

/// Every metric of the registry in the text exposition format.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    metrics_response(&state.registry)
}

/// `/metrics` of `registry`: also what a split proxy answers on its own listener.
pub fn metrics_response(registry: &prometheus::Registry) -> Response {
    let mut text = String::new();
    match TextEncoder::new().encode_utf8(&registry.gather(), &mut text) {
        Ok(()) => (
            [(header::CONTENT_TYPE, TextEncoder::new().format_type().to_owned())],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}
