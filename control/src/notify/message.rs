//! The notification document: built once, at the event, inside its
//! transaction, from the event and the request (and grant) as they stand
//! then. Webhooks receive it as it is; Slack messages are drawn from it.

use std::collections::{BTreeSet, HashSet};

use crate::store::Sql;
use portcullis_protocol::duration;
use portcullis_protocol::feed::UnixMillis;
use serde_json::{Value, json};

use crate::api::views::{GrantView, RequestView};
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::model::{Grant, Request, RequestState};
use crate::notify::settings::{Audience, NotifyEvent};
use crate::settings::Principals;
use crate::store::{grants, requests};
use crate::time::{self, rfc3339};
use crate::workflow::events::Event;

/// What a workflow event becomes as a notification, if anything: its kind
/// and its document (without `id`, which is per destination).
pub(crate) fn build(
    conn: &mut dyn Sql,
    catalog: &Catalog,
    at: UnixMillis,
    actor: &str,
    subject: &str,
    event: &Event<'_>,
) -> Result<Option<(NotifyEvent, Value)>, ApiError> {
    let Some((kind, mut req, grant)) = context(conn, subject, event)? else {
        return Ok(None);
    };
    if let Event::Escalated { step, .. } = event {
        // The step is recorded after this event; the document shows it reached.
        req.escalation_level = u32::try_from(*step).unwrap_or(u32::MAX);
    }
    let needed = if req.state == RequestState::Pending {
        usize::try_from(req.approvals_required)
            .unwrap_or(usize::MAX)
            .saturating_sub(req.approvals.len())
    } else {
        0
    };
    let mut commands = serde_json::Map::new();
    if req.state == RequestState::Pending {
        commands.insert("approve".into(), format!("portcullis approve {}", req.id).into());
        commands.insert(
            "deny".into(),
            format!("portcullis deny {} --reason TEXT", req.id).into(),
        );
    }
    if let Some(g) = grant.as_ref().filter(|g| g.revoked.is_none() && g.expires_at > at) {
        commands.insert(
            "revoke".into(),
            format!("portcullis revoke {} --reason TEXT", g.id).into(),
        );
        commands.insert("extend".into(), format!("portcullis extend {} --by 15m", g.id).into());
    }
    commands.insert("history".into(), format!("portcullis history {}", req.id).into());

    let detail = event.detail();
    let notify = recipients(catalog, kind, &req);
    let summary = summary(kind, actor, &req, grant.as_ref(), &detail);
    let grant_view = grant.map(|g| {
        let flagged: HashSet<String> = if req.break_glass {
            HashSet::from([g.id.clone()])
        } else {
            HashSet::new()
        };
        GrantView::at(g, at, &flagged)
    });
    let mut request = serde_json::to_value(RequestView::from(req)).unwrap_or(Value::Null);
    if let Some(obj) = request.as_object_mut() {
        obj.insert("approvals_needed".into(), needed.into());
    }
    let doc = json!({
        "event": kind.as_str(),
        "at": rfc3339(at),
        "actor": actor,
        "summary": summary,
        "notify": notify,
        "request": request,
        "grant": grant_view,
        "detail": detail,
        "commands": commands,
    });
    Ok(Some((kind, doc)))
}

/// The notification kind of `event`, with the request and grant it concerns.
fn context(
    conn: &mut dyn Sql,
    subject: &str,
    event: &Event<'_>,
) -> Result<Option<(NotifyEvent, Request, Option<Grant>)>, ApiError> {
    type Found = Option<(NotifyEvent, Request, Option<Grant>)>;
    fn with_grant(conn: &mut dyn Sql, subject: &str, kind: NotifyEvent) -> Result<Found, ApiError> {
        let Some(g) = grants::get(conn, subject)? else {
            return Ok(None);
        };
        Ok(requests::get(conn, &g.request_id)?.map(|r| (kind, r, Some(g))))
    }
    fn of_request(conn: &mut dyn Sql, subject: &str, kind: NotifyEvent) -> Result<Found, ApiError> {
        Ok(requests::get(conn, subject)?.map(|r| (kind, r, None)))
    }
    match event {
        // Auto-approved and break-glass requests are told when their grant exists.
        Event::Requested(r) if r.state == RequestState::Pending => {
            Ok(Some((NotifyEvent::Requested, (*r).clone(), None)))
        }
        Event::GrantCreated(g) => {
            let Some(r) = requests::get(conn, &g.request_id)? else {
                return Ok(None);
            };
            let kind = if r.break_glass {
                NotifyEvent::BreakGlass
            } else {
                NotifyEvent::Approved
            };
            Ok(Some((kind, r, Some((*g).clone()))))
        }
        Event::Denied { .. } => of_request(conn, subject, NotifyEvent::Denied),
        Event::Cancelled => of_request(conn, subject, NotifyEvent::Cancelled),
        Event::ExpiredUnanswered { .. } => of_request(conn, subject, NotifyEvent::Expired),
        Event::Escalated { .. } => of_request(conn, subject, NotifyEvent::Escalated),
        Event::Revoked { .. } => with_grant(conn, subject, NotifyEvent::Revoked),
        Event::Extended { .. } => with_grant(conn, subject, NotifyEvent::Extended),
        Event::ExpiringSoon { .. } => with_grant(conn, subject, NotifyEvent::ExpiringSoon),
        Event::Requested(_)
        | Event::Approved { .. }
        | Event::AutoApproved { .. }
        | Event::BreakGlassUsed(_)
        | Event::Started { .. }
        | Event::Expired { .. } => Ok(None),
    }
}

/// Who should hear of it: `{"audience", "users", "groups"}`. Approvers are the
/// policy's and those of the escalation steps reached (all steps for break-glass).
fn recipients(catalog: &Catalog, kind: NotifyEvent, req: &Request) -> Value {
    match kind.audience() {
        Audience::Requester => json!({ "audience": "requester", "users": [req.user], "groups": [] }),
        Audience::Approvers => {
            let mut users = BTreeSet::new();
            let mut groups = BTreeSet::new();
            let mut add = |p: &Principals| {
                users.extend(p.users.iter().cloned());
                groups.extend(p.groups.iter().cloned());
            };
            if let Some(policy) = catalog.get(&req.resource).map(|r| r.policy(&req.role)) {
                if let Some(p) = &policy.approvers {
                    add(p);
                }
                let reached = if kind == NotifyEvent::BreakGlass {
                    usize::MAX
                } else {
                    usize::try_from(req.escalation_level).unwrap_or(usize::MAX)
                };
                policy.escalation.iter().take(reached).for_each(|e| add(&e.approvers));
            }
            // The requester is never their own approver.
            users.remove(&req.user);
            json!({ "audience": "approvers", "users": users, "groups": groups })
        }
    }
}

/// One sentence a person reads first.
fn summary(kind: NotifyEvent, actor: &str, req: &Request, grant: Option<&Grant>, detail: &Value) -> String {
    let what = format!("{} on {}", req.role, req.resource);
    let length = duration::format(time::duration(req.duration_ms));
    let reason = req.reason.as_deref().unwrap_or("no reason given");
    let text = |key: &str| detail.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    let until = grant.map(|g| rfc3339(g.expires_at)).unwrap_or_default();
    match kind {
        NotifyEvent::Requested => {
            let n = req.approvals_required;
            let approvals = if n == 1 {
                "1 approval".to_owned()
            } else {
                format!("{n} approvals")
            };
            format!(
                "{} requests {what} for {length} ({approvals} needed): {reason}",
                req.user
            )
        }
        NotifyEvent::Approved if req.auto_approved => {
            format!(
                "{}'s request for {what} was auto-approved ({actor}); access until {until}",
                req.user
            )
        }
        NotifyEvent::Approved => format!(
            "{actor} approved {}'s request for {what}; access until {until}",
            req.user
        ),
        NotifyEvent::Denied => format!("{actor} denied {}'s request for {what}: {}", req.user, text("reason")),
        NotifyEvent::Expired => format!("{}'s request for {what} expired unanswered", req.user),
        NotifyEvent::Cancelled => format!("{} cancelled their request for {what}", req.user),
        NotifyEvent::Escalated => format!(
            "{}'s request for {what} is still unanswered; escalation step {} may approve it now",
            req.user, req.escalation_level
        ),
        NotifyEvent::BreakGlass => {
            format!(
                "BREAK-GLASS: {} granted themselves {what} for {length}: {reason}",
                req.user
            )
        }
        NotifyEvent::Revoked => {
            let why = detail
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            format!("{actor} revoked {}'s grant of {what}: {why}", req.user)
        }
        NotifyEvent::Extended => format!(
            "{actor} extended {}'s grant of {what} by {}, until {}",
            req.user,
            text("by"),
            text("to")
        ),
        NotifyEvent::ExpiringSoon => format!("{}'s grant of {what} ends at {until}", req.user),
    }
}
