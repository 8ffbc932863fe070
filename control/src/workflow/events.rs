//! Every event of the workflow, in one enum, recorded in one place: `emit`
//! appends it to the history table inside the caller's store transaction,
//! and queues its notifications in the outbox in that same transaction
//! (`notify/`); nothing else writes either.

use std::time::Duration;

use crate::store::db::Tx;
use portcullis_protocol::duration;
use portcullis_protocol::feed::UnixMillis;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::model::{Grant, Request};
use crate::settings::Principals;
use crate::store::history::{self, Entry};
use crate::time;
use crate::workflow::Workflow;

/// What happened. Each variant carries what a notification would show.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// A request was filed and waits for approvers.
    Requested(&'a Request),
    /// One approver approved; `last` when it completed the request.
    Approved {
        /// Their comment.
        comment: Option<&'a str>,
        /// Approvals so far, this one included.
        approvals: usize,
        /// Approvals needed.
        required: u32,
        /// This approval granted access.
        last: bool,
    },
    /// An auto-approve rule approved the request at once.
    AutoApproved {
        /// The rule, counted from 1.
        rule: usize,
    },
    /// A user granted themselves access with break-glass.
    BreakGlassUsed(&'a Request),
    /// An approver denied the request.
    Denied {
        /// Why.
        reason: &'a str,
    },
    /// The requester withdrew the request.
    Cancelled,
    /// Nobody answered within the pending TTL.
    ExpiredUnanswered {
        /// When the request was made.
        created_at: UnixMillis,
    },
    /// The request waited long enough for the next approvers to join.
    Escalated {
        /// The step reached, counted from 1.
        step: usize,
        /// Who may approve now as well.
        approvers: &'a Principals,
    },
    /// A grant was created (by the approval, rule or break-glass before it).
    GrantCreated(&'a Grant),
    /// A grant was ended early.
    Revoked {
        /// Why, if given.
        reason: Option<&'a str>,
    },
    /// A grant's deadline moved.
    Extended {
        /// By how much.
        by: Duration,
        /// The old deadline.
        from: UnixMillis,
        /// The new deadline.
        to: UnixMillis,
    },
    /// A scheduled grant reached its start (recorded after the fact).
    Started {
        /// Its start.
        starts_at: UnixMillis,
    },
    /// A grant ends soon (for notifications; nothing changes in the grant).
    ExpiringSoon {
        /// Its deadline.
        expires_at: UnixMillis,
    },
    /// A grant reached its deadline (the clock ended it; recorded after the fact).
    Expired {
        /// Its deadline.
        expires_at: UnixMillis,
    },
}

impl Event<'_> {
    /// The history's `action` spelling.
    pub(crate) fn action(&self) -> &'static str {
        match self {
            Event::Requested(_) => "request.create",
            Event::Approved { .. } => "request.approve",
            Event::AutoApproved { .. } => "request.auto_approve",
            Event::BreakGlassUsed(_) => "request.break_glass",
            Event::Denied { .. } => "request.deny",
            Event::Cancelled => "request.cancel",
            Event::ExpiredUnanswered { .. } => "request.expire",
            Event::Escalated { .. } => "request.escalate",
            Event::GrantCreated(_) => "grant.create",
            Event::Revoked { .. } => "grant.revoke",
            Event::Extended { .. } => "grant.extend",
            Event::ExpiringSoon { .. } => "grant.expiring_soon",
            Event::Expired { .. } => "grant.expire",
            Event::Started { .. } => "grant.start",
        }
    }

    /// Why and the details, as history keeps them.
    pub(crate) fn detail(&self) -> Value {
        match self {
            Event::Requested(r) | Event::BreakGlassUsed(r) => json!({
                "user": r.user,
                "resource": r.resource,
                "role": r.role,
                "reason": r.reason,
                "duration_s": r.duration_ms / 1000,
                "start_at": r.start_at.map(time::rfc3339),
                "break_glass": r.break_glass,
            }),
            Event::Approved {
                comment,
                approvals,
                required,
                last,
            } => json!({ "comment": comment, "approvals": approvals, "approvals_required": required, "granted": last }),
            Event::AutoApproved { rule } => json!({ "rule": rule }),
            Event::Denied { reason } => json!({ "reason": reason }),
            Event::Cancelled => Value::Null,
            Event::ExpiredUnanswered { created_at } => json!({ "requested_at": time::rfc3339(*created_at) }),
            Event::Escalated { step, approvers } => json!({
                "step": step,
                "users": approvers.users,
                "groups": approvers.groups,
            }),
            Event::GrantCreated(g) => json!({
                "request_id": g.request_id,
                "user": g.user,
                "resource": g.resource,
                "role": g.role,
                "starts_at": time::rfc3339(g.starts_at),
                "expires_at": time::rfc3339(g.expires_at),
            }),
            Event::Revoked { reason } => json!({ "reason": reason }),
            Event::Extended { by, from, to } => json!({
                "by": duration::format(*by),
                "from": time::rfc3339(*from),
                "to": time::rfc3339(*to),
            }),
            Event::Started { starts_at } => json!({ "starts_at": time::rfc3339(*starts_at) }),
            Event::ExpiringSoon { expires_at } | Event::Expired { expires_at } => {
                json!({ "expires_at": time::rfc3339(*expires_at) })
            }
        }
    }
}

impl Workflow {
    /// Records `event` about `subject` (a request or grant id), by `actor`,
    /// and queues its notifications, in the caller's transaction: both are
    /// kept exactly when the change is.
    pub(crate) fn emit(
        &self,
        conn: &mut Tx<'_>,
        at: UnixMillis,
        actor: &str,
        subject: &str,
        event: &Event<'_>,
    ) -> Result<(), ApiError> {
        record(conn, at, actor, event.action(), subject, event.detail())?;
        self.notify.enqueue(conn, &self.catalog, at, actor, subject, event)
    }
}

/// Appends an entry that is no request or grant event (users, sessions).
pub(crate) fn record(
    conn: &mut Tx<'_>,
    at: UnixMillis,
    actor: &str,
    action: &'static str,
    subject: &str,
    detail: Value,
) -> Result<(), ApiError> {
    history::record(
        conn,
        &Entry {
            at,
            actor: actor.to_owned(),
            action,
            subject: subject.to_owned(),
            detail,
        },
    )?;
    Ok(())
}
