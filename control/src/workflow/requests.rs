//! Filing, approving, denying and cancelling requests. A grant is created by
//! the approval that completes a request (or at once by an auto-approve rule);
//! its clock starts then, not when the request was made.

use portcullis_protocol::feed::FeedEvent;
use rusqlite::Connection;
use serde_json::json;

use crate::error::ApiError;
use crate::ids::{self, new_id};
use crate::model::{Approval, Grant, Request, RequestState, User};
use crate::store::history::{self, Entry, POLICY_ACTOR};
use crate::store::{grants, requests};
use crate::time::{self, millis};
use crate::workflow::Workflow;
use crate::workflow::policy::{self, Ask};

impl Workflow {
    /// Files a request for `resource`; approved at once when an auto-approve rule matches.
    pub(crate) async fn create_request(&self, caller: User, resource: String, ask: Ask) -> Result<Request, ApiError> {
        let this = self.clone();
        let result = self
            .store
            .call(move |conn| this.create_blocking(conn, &caller, &resource, &ask))
            .await;
        let outcome = match &result {
            Ok(r) if r.auto_approved => "auto_approved",
            Ok(_) => "pending",
            Err(_) => "refused",
        };
        self.metrics.requests.with_label_values(&[outcome]).inc();
        result
    }

    fn create_blocking(
        &self,
        conn: &mut Connection,
        caller: &User,
        resource: &str,
        ask: &Ask,
    ) -> Result<Request, ApiError> {
        let now = time::now();
        let resource = self.catalog.lookup(resource)?;
        let plan = policy::plan_request(resource, caller, ask, now)?;
        let mut req = Request {
            id: new_id(ids::REQUEST)?,
            user: caller.name.clone(),
            resource: resource.name().to_owned(),
            role: plan.role,
            state: RequestState::Pending,
            reason: plan.reason,
            duration_ms: millis(plan.duration),
            start_at: plan.start_at,
            created_at: now,
            decided_at: None,
            decided_by: None,
            decision_reason: None,
            approvals: Vec::new(),
            approvals_required: resource.settings.policy.approvals_required,
            grant_id: None,
            auto_approved: plan.auto_approved,
        };
        let tx = conn.transaction()?;
        let mut events = Vec::new();
        if plan.auto_approved {
            req.state = RequestState::Approved;
            req.decided_at = Some(now);
            req.decision_reason = Some(format!("auto-approved by a rule of {}'s policy", req.resource));
            requests::insert(&tx, &req)?;
            record(&tx, now, &caller.name, "request.create", &req.id, request_detail(&req))?;
            let grant = new_grant(&req, now)?;
            grants::insert(&tx, &grant)?;
            record(
                &tx,
                now,
                POLICY_ACTOR,
                "request.auto_approve",
                &req.id,
                json!({ "grant_id": grant.id }),
            )?;
            record(&tx, now, POLICY_ACTOR, "grant.create", &grant.id, grant_detail(&grant))?;
            events.push(FeedEvent::Grant(grant.clone()));
            req.grant_id = Some(grant.id);
            self.metrics.grant_changes.with_label_values(&["created"]).inc();
        } else {
            requests::insert(&tx, &req)?;
            record(&tx, now, &caller.name, "request.create", &req.id, request_detail(&req))?;
            events.push(FeedEvent::Pending(req.pending_entry()));
        }
        self.commit(tx, events)?;
        tracing::info!(
            request = %req.id, user = %req.user, resource = %req.resource, role = %req.role,
            auto_approved = req.auto_approved, "request filed"
        );
        Ok(req)
    }

    /// One approval; the last one needed creates the grant.
    pub(crate) async fn approve(&self, caller: User, id: String, comment: Option<String>) -> Result<Request, ApiError> {
        let this = self.clone();
        self.store
            .call(move |conn| this.approve_blocking(conn, &caller, &id, comment))
            .await
    }

    fn approve_blocking(
        &self,
        conn: &mut Connection,
        caller: &User,
        id: &str,
        comment: Option<String>,
    ) -> Result<Request, ApiError> {
        let comment = comment.map(|c| c.trim().to_owned()).filter(|c| !c.is_empty());
        policy::check_text("comment", comment.as_deref())?;
        let now = time::now();
        let tx = conn.transaction()?;
        let req = requests::get(&tx, id)?.ok_or_else(|| unknown(id))?;
        let resource = self.catalog.existing(&req.resource)?;
        let last = policy::check_approve(resource, &req, caller)?;
        let approval = Approval {
            by: caller.name.clone(),
            comment: comment.clone(),
            at: now,
        };
        requests::add_approval(&tx, id, &approval)?;
        record(
            &tx,
            now,
            &caller.name,
            "request.approve",
            id,
            json!({ "comment": comment }),
        )?;
        let mut events = Vec::new();
        if last {
            let grant = new_grant(&req, now)?;
            grants::insert(&tx, &grant)?;
            requests::decide(
                &tx,
                id,
                RequestState::Approved,
                now,
                Some(&caller.name),
                comment.as_deref(),
            )?;
            record(&tx, now, &caller.name, "grant.create", &grant.id, grant_detail(&grant))?;
            events.push(FeedEvent::PendingClosed {
                request_id: id.to_owned(),
            });
            events.push(FeedEvent::Grant(grant.clone()));
        }
        self.commit(tx, events)?;
        if last {
            self.metrics.decisions.with_label_values(&["approved"]).inc();
            self.metrics.grant_changes.with_label_values(&["created"]).inc();
            let waited = time::duration(now.saturating_sub(req.created_at));
            self.metrics.time_to_approve.observe(waited.as_secs_f64());
        }
        tracing::info!(request = %id, approver = %caller.name, granted = last, "request approved");
        requests::get(conn, id)?.ok_or_else(|| unknown(id))
    }

    /// Denies a pending request, with a reason.
    pub(crate) async fn deny(&self, caller: User, id: String, reason: Option<String>) -> Result<Request, ApiError> {
        let this = self.clone();
        self.store
            .call(move |conn| {
                let now = time::now();
                let tx = conn.transaction()?;
                let req = requests::get(&tx, &id)?.ok_or_else(|| unknown(&id))?;
                let resource = this.catalog.existing(&req.resource)?;
                let reason = policy::check_deny(resource, &req, &caller, reason.as_deref())?;
                requests::decide(&tx, &id, RequestState::Denied, now, Some(&caller.name), Some(&reason))?;
                record(&tx, now, &caller.name, "request.deny", &id, json!({ "reason": reason }))?;
                this.commit(tx, vec![FeedEvent::PendingClosed { request_id: id.clone() }])?;
                this.metrics.decisions.with_label_values(&["denied"]).inc();
                tracing::info!(request = %id, approver = %caller.name, "request denied");
                requests::get(conn, &id)?.ok_or_else(|| unknown(&id))
            })
            .await
    }

    /// Withdraws one's own pending request.
    pub(crate) async fn cancel(&self, caller: User, id: String) -> Result<Request, ApiError> {
        let this = self.clone();
        self.store
            .call(move |conn| {
                let now = time::now();
                let tx = conn.transaction()?;
                let req = requests::get(&tx, &id)?.ok_or_else(|| unknown(&id))?;
                policy::check_cancel(&req, &caller)?;
                requests::decide(&tx, &id, RequestState::Cancelled, now, Some(&caller.name), None)?;
                record(&tx, now, &caller.name, "request.cancel", &id, serde_json::Value::Null)?;
                this.commit(tx, vec![FeedEvent::PendingClosed { request_id: id.clone() }])?;
                this.metrics.decisions.with_label_values(&["cancelled"]).inc();
                tracing::info!(request = %id, user = %caller.name, "request cancelled");
                requests::get(conn, &id)?.ok_or_else(|| unknown(&id))
            })
            .await
    }
}

fn unknown(id: &str) -> ApiError {
    ApiError::UnknownRequest { id: id.to_owned() }
}

/// The grant an approval at `now` creates for `req`.
fn new_grant(req: &Request, now: i64) -> Result<Grant, ApiError> {
    let (starts_at, expires_at) = policy::grant_window(now, req.start_at, req.duration_ms);
    Ok(Grant {
        id: new_id(ids::GRANT)?,
        request_id: req.id.clone(),
        user: req.user.clone(),
        resource: req.resource.clone(),
        role: req.role.clone(),
        starts_at,
        expires_at,
        revoked: None,
    })
}

fn request_detail(req: &Request) -> serde_json::Value {
    json!({
        "user": req.user,
        "resource": req.resource,
        "role": req.role,
        "reason": req.reason,
        "duration_s": req.duration_ms / 1000,
        "start_at": req.start_at.map(time::rfc3339),
    })
}

/// What history keeps about a grant.
pub(crate) fn grant_detail(g: &Grant) -> serde_json::Value {
    json!({
        "request_id": g.request_id,
        "user": g.user,
        "resource": g.resource,
        "role": g.role,
        "starts_at": time::rfc3339(g.starts_at),
        "expires_at": time::rfc3339(g.expires_at),
    })
}

/// Appends one history entry.
pub(crate) fn record(
    conn: &Connection,
    at: i64,
    actor: &str,
    action: &'static str,
    subject: &str,
    detail: serde_json::Value,
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
