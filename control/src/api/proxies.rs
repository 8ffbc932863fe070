//! Routes remote proxies call besides the feed: their live-session reports
//! and the audit events they ship. Proxy tokens only.

use axum::Json;
use axum::extract::State;
use portcullis_protocol::audit::{AuditEvent, PROXY_ACTIONS, block};
use portcullis_protocol::sessions::SessionInfo;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::{JsonBody, ProxyCaller};
use crate::error::ApiError;

/// Largest audit batch body a proxy may POST.
pub(crate) const AUDIT_BODY: usize = 8 * 1024 * 1024;

/// `POST /v1/proxies/sessions` body: every live session of the calling proxy.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Report {
    sessions: Vec<SessionInfo>,
}

/// Replaces what the calling proxy holds: `{"sessions": N}`.
pub(crate) async fn report(
    State(state): State<AppState>,
    ProxyCaller(proxy): ProxyCaller,
    JsonBody(report): JsonBody<Report>,
) -> Json<Value> {
    let n = report.sessions.len();
    state.remote.report(&proxy, report.sessions);
    Json(json!({ "sessions": n }))
}

/// Appends a batch of the proxy's audit events (a JSON array); answers once
/// they are durable. Events already stored (same id) are skipped, so a batch
/// sent again after a lost answer is harmless: `{"received": N, "new": M}`.
/// Each event is marked with the proxy that sent it (`detail.proxy`); a
/// proxy's ids start with `evt_`, so that none can take the place of the
/// workflow's own (`wf_...`) before it is shipped, and its actions are a
/// proxy's (`PROXY_ACTIONS`), never the workflow's; a block of statements
/// must pass `block::check` (a true count, since it decides their sequence
/// numbers; ids and times of its own; no statement naming a proxy).
pub(crate) async fn audit_events(
    State(state): State<AppState>,
    ProxyCaller(proxy): ProxyCaller,
    JsonBody(mut events): JsonBody<Vec<AuditEvent>>,
) -> Result<Json<Value>, ApiError> {
    if let Some(e) = events.iter().find(|e| !e.id.starts_with("evt_")) {
        return Err(ApiError::BadBody {
            detail: format!("audit event id {:?}: a proxy's event ids start with evt_", e.id),
        });
    }
    if let Some(e) = events.iter().find(|e| !PROXY_ACTIONS.contains(&e.action.as_str())) {
        return Err(ApiError::BadBody {
            detail: format!("audit event {}: {:?} is not an action a proxy records", e.id, e.action),
        });
    }
    if let Some(why) = events.iter().find_map(|e| block::check(e).err()) {
        return Err(ApiError::BadBody { detail: why });
    }
    for e in &mut events {
        e.detail.insert("proxy".into(), proxy.clone());
    }
    let received = events.len();
    let new = state.audit.append(events).await?;
    tracing::debug!(proxy = %proxy, received, new, "audit events from a proxy");
    Ok(Json(json!({ "received": received, "new": new })))
}
