//! The HTTP API of docs/API.md (axum). `/healthz`, `/readyz` and `/metrics`
//! are open; every `/v1` route needs a bearer token. Every refusal is JSON
//! `{"error": ...}` with the status docs/API.md gives.

mod audit;
mod error;
mod extract;
mod feed;
mod filters;
mod grants;
mod health;
pub use health::metrics_response;
mod proxies;
mod recordings;
mod requests;
mod resources;
mod session_history;
mod sessions;
mod slack;
mod ssh_keys;
mod users;
pub(crate) mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::middleware;
use axum::response::Response;
use axum::routing::{MethodRouter, get, post};
use portcullis_protocol::sessions::SessionDirectory;

use crate::audit::AuditLog;
use crate::error::ApiError;
use crate::proxies::ProxyAccess;
use crate::proxies::sessions::RemoteSessions;
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
    /// Live sessions: the in-process proxy's and those remote proxies report.
    pub sessions: Arc<dyn SessionDirectory>,
    /// Credentials of remote proxies.
    pub proxies: Arc<ProxyAccess>,
    /// What remote proxies last reported.
    pub remote: Arc<RemoteSessions>,
    /// Cancelled at shutdown: ends the feed's long-lived streams.
    pub streams: tokio_util::sync::CancellationToken,
    /// Served on `/metrics`.
    pub registry: prometheus::Registry,
    /// Listener addresses for `/v1/resources`.
    pub gateways: Arc<Gateways>,
    /// The audit log, for `/v1/audit` and the session history.
    pub audit: AuditLog,
    /// `DATA_DIR/recordings`, for `/v1/recordings`.
    pub recordings: Arc<std::path::PathBuf>,
}

/// One route: its method and path as docs/openapi.yaml spells them, and its handler.
pub(crate) struct Route {
    /// `get` or `post`, lower case as in OpenAPI.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "read by the OpenAPI test; the handler carries the method")
    )]
    pub method: &'static str,
    /// The path, with `{id}` for ids.
    pub path: &'static str,
    /// What answers it.
    pub handler: MethodRouter<AppState>,
}

/// Every route of docs/API.md, in one table: the router is built from it, and
/// a test checks that docs/openapi.yaml describes each entry.
pub(crate) fn routes() -> Vec<Route> {
    let r = |method, path, handler| Route { method, path, handler };
    vec![
        r("get", "/healthz", get(health::healthz)),
        r("get", "/readyz", get(health::readyz)),
        r("get", "/metrics", get(health::metrics)),
        r("get", "/v1/whoami", get(users::whoami)),
        r("get", "/v1/users", get(users::list)),
        r("post", "/v1/users", post(users::create)),
        r("get", "/v1/users/{name}/ssh-keys", get(ssh_keys::list)),
        r("post", "/v1/users/{name}/ssh-keys", post(ssh_keys::add)),
        r("post", "/v1/users/{name}/ssh-keys/remove", post(ssh_keys::remove)),
        r("get", "/v1/resources", get(resources::list)),
        r("get", "/v1/requests", get(requests::list)),
        r("post", "/v1/requests", post(requests::create)),
        r("get", "/v1/requests/{id}", get(requests::get)),
        r("post", "/v1/requests/{id}/approve", post(requests::approve)),
        r("post", "/v1/requests/{id}/deny", post(requests::deny)),
        r("post", "/v1/requests/{id}/cancel", post(requests::cancel)),
        r("get", "/v1/grants", get(grants::list)),
        r("get", "/v1/grants/{id}", get(grants::get)),
        r("post", "/v1/grants/{id}/revoke", post(grants::revoke)),
        r("post", "/v1/grants/{id}/extend", post(grants::extend)),
        r("get", "/v1/sessions", get(sessions::list)),
        r("post", "/v1/sessions/{id}/kill", post(sessions::kill)),
        r("post", "/v1/slack/interactions", post(slack::interactions)),
        r("get", "/v1/sessions/history", get(session_history::history)),
        r("get", "/v1/sessions/{id}/events", get(session_history::events)),
        r("get", "/v1/audit", get(audit::search)),
        r("get", "/v1/audit/export", get(audit::export)),
        r("get", "/v1/audit/verify", get(audit::verify)),
        r("get", "/v1/recordings", get(recordings::list)),
        r("get", "/v1/recordings/{id}", get(recordings::get)),
        r("get", "/v1/feed/snapshot", get(feed::snapshot)),
        r("get", "/v1/feed/changes", get(feed::changes)),
        r("post", "/v1/proxies/sessions", post(proxies::report)),
        r(
            "post",
            "/v1/audit/events",
            post(proxies::audit_events).layer(DefaultBodyLimit::max(proxies::AUDIT_BODY)),
        ),
    ]
}

/// Every route of docs/API.md.
pub(crate) fn router(state: AppState) -> Router {
    let refusals = state.workflow.metrics.api_refusals.clone();
    // Routing a path twice merges its methods (axum panics only on a method routed twice).
    let table = routes()
        .into_iter()
        .fold(Router::new(), |router, route| router.route(route.path, route.handler));
    table
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

#[cfg(test)]
mod openapi_test;
