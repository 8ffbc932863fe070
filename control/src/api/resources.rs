//! `GET /v1/resources`: the configured resources, their roles, where to
//! connect, the resource policy's limits, and what the caller may do there
//! (on any role: a role's policy may differ).

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use crate::api::AppState;
use crate::api::extract::Caller;
use crate::settings::{ReasonRule, ResourceKind};
use crate::workflow::policy::{approves_any, is_in, may_request};

/// One resource as callers see it; credentials never leave the proxy.
#[derive(Serialize)]
pub(crate) struct ResourceView {
    name: String,
    kind: &'static str,
    roles: Vec<String>,
    gateway: Option<String>,
    max_duration_s: u64,
    default_duration_s: u64,
    min_duration_s: Option<u64>,
    approvals_required: u32,
    reason: &'static str,
    reason_pattern: Option<String>,
    pending_ttl_s: Option<u64>,
    may_request: bool,
    may_approve: bool,
    may_break_glass: bool,
}

/// Every resource, in config order.
pub(crate) async fn list(State(state): State<AppState>, Caller(me): Caller) -> Json<Vec<ResourceView>> {
    let views = state
        .workflow
        .catalog
        .iter()
        .map(|r| {
            let s = &r.settings;
            let p = &s.policy;
            let (reason, reason_pattern) = match &p.reason {
                ReasonRule::Optional => ("optional", None),
                ReasonRule::Required => ("required", None),
                ReasonRule::Pattern(pattern) => ("pattern", Some(pattern.clone())),
            };
            ResourceView {
                name: s.name.clone(),
                kind: s.kind.as_str(),
                roles: s.roles.clone(),
                gateway: match s.kind {
                    ResourceKind::Postgres => state.gateways.postgres.clone(),
                    ResourceKind::Ssh => state.gateways.ssh.clone(),
                },
                max_duration_s: p.max_duration.as_secs(),
                default_duration_s: p.default_duration.as_secs(),
                min_duration_s: p.min_duration.map(|d| d.as_secs()),
                approvals_required: p.approvals_required,
                reason,
                reason_pattern,
                pending_ttl_s: p.pending_ttl.map(|d| d.as_secs()),
                may_request: may_request(p, &me),
                may_approve: approves_any(r, &me),
                may_break_glass: r
                    .policies()
                    .any(|p| p.break_glass.as_ref().is_some_and(|bg| is_in(&bg.who, &me))),
            }
        })
        .collect();
    Json(views)
}
