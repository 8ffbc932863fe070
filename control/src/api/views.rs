//! The JSON shapes of docs/API.md. Times are RFC 3339 UTC with milliseconds;
//! durations in answers are whole seconds. No shape carries a secret.

use portcullis_protocol::audit::AuditEvent;
use portcullis_protocol::feed::UnixMillis;
use portcullis_protocol::sessions::SessionInfo;
use serde::Serialize;

use std::collections::HashSet;

use crate::audit::SessionRecord;
use crate::model::{Approval, Grant, GrantClock, Request, User};
use crate::store::history::Recorded;
use crate::time::rfc3339;

/// `User`.
#[derive(Serialize)]
pub(crate) struct UserView {
    name: String,
    groups: Vec<String>,
    admin: bool,
    created_at: String,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            name: u.name,
            groups: u.groups,
            admin: u.admin,
            created_at: rfc3339(u.created_at),
        }
    }
}

/// `User` plus `token`: the answer of `POST /v1/users`, the only one with a token.
#[derive(Serialize)]
pub(crate) struct NewUserView {
    #[serde(flatten)]
    pub user: UserView,
    pub token: String,
}

/// One approval of a request.
#[derive(Serialize)]
struct ApprovalView {
    by: String,
    comment: Option<String>,
    at: String,
}

impl From<Approval> for ApprovalView {
    fn from(a: Approval) -> Self {
        ApprovalView {
            by: a.by,
            comment: a.comment,
            at: rfc3339(a.at),
        }
    }
}

/// `Request`.
#[derive(Serialize)]
pub(crate) struct RequestView {
    id: String,
    user: String,
    resource: String,
    role: String,
    state: &'static str,
    reason: Option<String>,
    duration_s: i64,
    created_at: String,
    start_at: Option<String>,
    decided_at: Option<String>,
    decided_by: Option<String>,
    decision_reason: Option<String>,
    approvals: Vec<ApprovalView>,
    approvals_required: u32,
    grant_id: Option<String>,
    auto_approved: bool,
    break_glass: bool,
    escalation_level: u32,
    pending_until: Option<String>,
    /// Only on `GET /v1/requests/{id}`: every transition of the request and its grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<HistoryView>>,
}

impl RequestView {
    /// The view with its history, as one request is shown.
    pub(crate) fn with_history(mut self, history: Vec<Recorded>) -> RequestView {
        self.history = Some(history.into_iter().map(HistoryView::from).collect());
        self
    }
}

/// One history entry: who did what, when and why.
#[derive(Serialize)]
pub(crate) struct HistoryView {
    at: String,
    actor: String,
    action: String,
    subject: String,
    detail: serde_json::Value,
}

impl From<Recorded> for HistoryView {
    fn from(e: Recorded) -> Self {
        HistoryView {
            at: rfc3339(e.at),
            actor: e.actor,
            action: e.action,
            subject: e.subject,
            detail: e.detail,
        }
    }
}

impl From<Request> for RequestView {
    fn from(r: Request) -> Self {
        RequestView {
            id: r.id,
            user: r.user,
            resource: r.resource,
            role: r.role,
            state: r.state.as_str(),
            reason: r.reason,
            duration_s: r.duration_ms / 1000,
            created_at: rfc3339(r.created_at),
            start_at: r.start_at.map(rfc3339),
            decided_at: r.decided_at.map(rfc3339),
            decided_by: r.decided_by,
            decision_reason: r.decision_reason,
            approvals: r.approvals.into_iter().map(ApprovalView::from).collect(),
            approvals_required: r.approvals_required,
            grant_id: r.grant_id,
            auto_approved: r.auto_approved,
            break_glass: r.break_glass,
            escalation_level: r.escalation_level,
            pending_until: r.pending_until.map(rfc3339),
            history: None,
        }
    }
}

/// `Grant`, its state as of `now`.
#[derive(Serialize)]
pub(crate) struct GrantView {
    id: String,
    request_id: String,
    user: String,
    resource: String,
    role: String,
    starts_at: String,
    expires_at: String,
    duration_s: i64,
    state: &'static str,
    revoked_at: Option<String>,
    revoked_by: Option<String>,
    revoke_reason: Option<String>,
    break_glass: bool,
    /// Only on `GET /v1/grants/{id}`: every transition of the grant and its request.
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<HistoryView>>,
}

impl GrantView {
    /// The view of `g` at `now`; `break_glass` holds the ids of break-glass grants.
    pub(crate) fn at(g: Grant, now: UnixMillis, break_glass: &HashSet<String>) -> GrantView {
        let flagged = break_glass.contains(&g.id);
        let state = g.state(now).as_str();
        let (revoked_at, revoked_by, revoke_reason) = match g.revoked {
            Some(r) => (Some(rfc3339(r.at)), Some(r.by), r.reason),
            None => (None, None, None),
        };
        GrantView {
            id: g.id,
            request_id: g.request_id,
            user: g.user,
            resource: g.resource,
            role: g.role,
            starts_at: rfc3339(g.starts_at),
            expires_at: rfc3339(g.expires_at),
            duration_s: g.expires_at.saturating_sub(g.starts_at) / 1000,
            state,
            revoked_at,
            revoked_by,
            revoke_reason,
            break_glass: flagged,
            history: None,
        }
    }

    /// The view with its history, as one grant is shown.
    pub(crate) fn with_history(mut self, history: Vec<Recorded>) -> GrantView {
        self.history = Some(history.into_iter().map(HistoryView::from).collect());
        self
    }
}

/// `Session`.
#[derive(Serialize)]
pub(crate) struct SessionView {
    id: String,
    user: String,
    resource: String,
    role: String,
    protocol: String,
    grant_id: String,
    started_at: String,
    bytes_in: u64,
    bytes_out: u64,
}

impl From<SessionInfo> for SessionView {
    fn from(s: SessionInfo) -> Self {
        SessionView {
            id: s.id,
            user: s.user,
            resource: s.resource,
            role: s.role,
            protocol: s.protocol,
            grant_id: s.grant_id,
            started_at: rfc3339(s.started_at),
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
        }
    }
}

/// `AuditEvent`: one event of the audit log, with its place in the chain.
#[derive(Serialize)]
pub(crate) struct AuditEventView {
    seq: u64,
    id: String,
    at: String,
    action: String,
    user: String,
    resource: Option<String>,
    role: Option<String>,
    session_id: Option<String>,
    grant_id: Option<String>,
    request_id: Option<String>,
    reason: Option<String>,
    approvers: Vec<String>,
    detail: std::collections::BTreeMap<String, String>,
}

impl From<(u64, AuditEvent)> for AuditEventView {
    fn from((seq, e): (u64, AuditEvent)) -> Self {
        AuditEventView {
            seq,
            id: e.id,
            at: rfc3339(e.at),
            action: e.action,
            user: e.user,
            resource: e.resource,
            role: e.role,
            session_id: e.session_id,
            grant_id: e.grant_id,
            request_id: e.request_id,
            reason: e.reason,
            approvers: e.approvers,
            detail: e.detail,
        }
    }
}

/// `PastSession`: a session as the audit log tells it, live or ended.
#[derive(Serialize)]
pub(crate) struct PastSessionView {
    id: String,
    user: String,
    resource: Option<String>,
    role: Option<String>,
    protocol: Option<String>,
    grant_id: Option<String>,
    request_id: Option<String>,
    peer: Option<String>,
    started_at: String,
    ended_at: Option<String>,
    state: &'static str,
    ended: Option<String>,
    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
    duration_ms: Option<u64>,
}

impl PastSessionView {
    /// The view of `record`; `live` is the proxy's entry when the session is still live.
    pub(crate) fn new(record: SessionRecord, live: Option<&SessionInfo>) -> PastSessionView {
        let SessionRecord { start, end, .. } = record;
        let number = |key: &str| {
            end.as_ref()
                .and_then(|e| e.detail.get(key))
                .and_then(|v| v.parse().ok())
        };
        let state = match (&end, live) {
            (Some(_), _) => "ended",
            (None, Some(_)) => "live",
            // No end recorded and not live: the gateway stopped before it could record one.
            (None, None) => "unknown",
        };
        PastSessionView {
            bytes_in: number("bytes_in").or(live.map(|s| s.bytes_in)),
            bytes_out: number("bytes_out").or(live.map(|s| s.bytes_out)),
            duration_ms: number("duration_ms"),
            ended: end.as_ref().and_then(|e| e.detail.get("ended").cloned()),
            ended_at: end.as_ref().map(|e| rfc3339(e.at)),
            state,
            id: start.session_id.unwrap_or_default(),
            user: start.user,
            resource: start.resource,
            role: start.role,
            protocol: start.detail.get("protocol").cloned(),
            grant_id: start.grant_id,
            request_id: start.request_id,
            peer: start.detail.get("peer").cloned(),
            started_at: rfc3339(start.at),
        }
    }
}
