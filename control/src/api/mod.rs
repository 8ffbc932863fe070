//! The HTTP API of docs/API.md (axum). `/healthz`, `/readyz` and `/metrics`
//! are open; every `/v1` route needs a bearer token. Every refusal is JSON
//! `{"error": ...}` with the status docs/API.md gives.

mod error;
mod extract;
mod grants;
mod health;
mod requests;
mod resources;
mod sessions;
mod users;
mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use portcullis_protocol::sessions::SessionDirectory;

use crate::error::ApiError;
use crate::workflow::Workflow;

/// Largest request body accepted.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// Where engineers reach the gateway's listeners, as the config advertises them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Gateways {
    /// `host:port` of the Postgres listener.
    pub postgres: Option<String>,
    /// `host:port` of the SSH listener.
    pub ssh: Option<String>,
}

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    /// Store, policies, feed, metrics.
    pub workflow: Workflow,
    /// Live sessions, held by the proxy.
    pub sessions: Arc<dyn SessionDirectory>,
    /// Served on `/metrics`.
    pub registry: prometheus::Registry,
    /// Listener addresses for `/v1/resources`.
    pub gateways: Arc<Gateways>,
}

/// Every route of docs/API.md.
pub(crate) fn router(state: AppState) -> Router {
    let refusals = state.workflow.metrics.api_refusals.clone();
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/v1/whoami", get(users::whoami))
        .route("/v1/users", get(users::list).post(users::create))
        .route("/v1/resources", get(resources::list))
        .route("/v1/requests", get(requests::list).post(requests::create))
        .route("/v1/requests/{id}", get(requests::get))
        .route("/v1/requests/{id}/approve", post(requests::approve))
        .route("/v1/requests/{id}/deny", post(requests::deny))
        .route("/v1/requests/{id}/cancel", post(requests::cancel))
        .route("/v1/grants", get(grants::list))
        .route("/v1/grants/{id}", get(grants::get))
        .route("/v1/grants/{id}/revoke", post(grants::revoke))
        .route("/v1/grants/{id}/extend", post(grants::extend))
        .route("/v1/sessions", get(sessions::list))
        .route("/v1/sessions/{id}/kill", post(sessions::kill))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::map_response(move |res: Response| {
            let refusals = refusals.clone();
            async move {
                let status = res.status();
                if status.is_client_error() || status.is_server_error() {
                    refusals.with_label_values(&[status.as_str()]).inc();
                }
                res
            }
        }))
        .with_state(state)
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}
