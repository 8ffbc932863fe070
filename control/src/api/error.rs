//! How a refusal answers: its status and `{"error": "..."}`. Internal faults
//! are logged in full and answered with a pointer to the log.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::ApiError;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = %e, "API call failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "API call refused");
        }
        (status, Json(json!({ "error": self.client_text() }))).into_response()
    }
}
