//! Filing, approving, denying and cancelling requests. A grant is created by
//! the approval that completes a request (or at once by an auto-approve rule);
//! its clock starts then, not when the request was made.

use crate::store::Conn;
use portcullis_protocol::feed::FeedEvent;

use crate::error::ApiError;
use crate::ids::{self, new_id};
use crate::model::{Approval, Grant, Request, RequestState, User};
use crate::store::{grants, history, requests};
use crate::time::{self, millis};
use crate::workflow::Workflow;
use crate::workflow::events::Event;
use crate::workflow::policy::{self, Ask};

impl Workflow {
    /// Files a request for `resource`; approved at once when an auto-approve
    /// rule matches or the requester breaks the glass.
    pub(crate) async fn create_request(&self, caller: User, resource: String, ask: Ask) -> Result<Request, ApiError> {
        let this = self.clone();
        let result = self
            .store
            .call(move |conn| this.create_blocking(conn, &caller, &resource, &ask))
            .await;
        let outcome = match &result {
            Ok(r) if r.break_glass => "break_glass",
            Ok(r) if r.auto_approved => "auto_approved",
            Ok(_) => "pending",
            Err(_) => "refused",
        };
        self.metrics.requests.with_label_values(&[outcome]).inc();
        result
    }

    fn create_blocking(&self, conn: &mut Conn, caller: &User, resource: &str, ask: &Ask) -> Result<Request, ApiError> {
        let now = time::now();
        let resource = self.catalog.lookup(resource)?;
        let plan = policy::plan_request(resource, caller, ask, now)?;
        let policy = resource.policy(&plan.role);
        let at_once = plan.auto_rule.is_some() || plan.break_glass;
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
            approvals_required: policy.approvals_required,
            grant_id: None,
            auto_approved: plan.auto_rule.is_some(),
            break_glass: plan.break_glass,
            escalation_level: 0,
            pending_until: policy
                .pending_ttl
                .filter(|_| !at_once)
                .map(|ttl| now.saturating_add(millis(ttl))),
        };
        let mut tx = conn.transaction()?;
        let mut events = Vec::new();
        if at_once {
            let (actor, note) = match plan.auto_rule {
                Some(rule) => (
                    history::auto_rule_actor(rule),
                    format!("auto-approved by rule {rule} of {}'s policy", req.resource),
                ),
                None => (caller.name.clone(), "break-glass: granted by the requester".to_owned()),
            };
            req.state = RequestState::Approved;
            req.decided_at = Some(now);
            req.decided_by = Some(actor.clone());
            req.decision_reason = Some(note);
            requests::insert(&mut tx, &req)?;
            self.emit(&mut tx, now, &caller.name, &req.id, &Event::Requested(&req))?;
            match plan.auto_rule {
                Some(rule) => self.emit(&mut tx, now, &actor, &req.id, &Event::AutoApproved { rule })?,
                None => self.emit(&mut tx, now, &actor, &req.id, &Event::BreakGlassUsed(&req))?,
            }
            // Break-glass has no approver; a rule is named as one.
            let approvers = plan.auto_rule.map(|_| vec![actor.clone()]).unwrap_or_default();
            let grant = new_grant(&req, now, approvers)?;
            grants::insert(&mut tx, &grant, now)?;
            self.emit(&mut tx, now, &actor, &grant.id, &Event::GrantCreated(&grant))?;
            events.push(FeedEvent::Grant(grant.clone()));
            req.grant_id = Some(grant.id);
            self.metrics.grant_changes.with_label_values(&["created"]).inc();
        } else {
            requests::insert(&mut tx, &req)?;
            self.emit(&mut tx, now, &caller.name, &req.id, &Event::Requested(&req))?;
            events.push(FeedEvent::Pending(req.pending_entry()));
        }
        self.commit(tx, events)?;
        if req.break_glass {
            // Loud on purpose: break-glass skips every approver.
            tracing::warn!(
                request = %req.id, user = %req.user, resource = %req.resource, role = %req.role,
                "break-glass: access self-granted"
            );
        }
        tracing::info!(
            request = %req.id, user = %req.user, resource = %req.resource, role = %req.role,
            auto_approved = req.auto_approved, break_glass = req.break_glass, "request filed"
        );
        self.expiry.notify_one();
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
        conn: &mut Conn,
        caller: &User,
        id: &str,
        comment: Option<String>,
    ) -> Result<Request, ApiError> {
        let comment = comment.map(|c| c.trim().to_owned()).filter(|c| !c.is_empty());
        policy::check_text("comment", comment.as_deref())?;
        let now = time::now();
        let mut tx = conn.transaction()?;
        let req = requests::get(&mut tx, id)?.ok_or_else(|| unknown(id))?;
        let resource = self.catalog.existing(&req.resource)?;
        let last = policy::check_approve(resource, &req, caller)?;
        let approval = Approval {
            by: caller.name.clone(),
            comment: comment.clone(),
            at: now,
        };
        requests::add_approval(&mut tx, id, &approval)?;
        let event = Event::Approved {
            comment: comment.as_deref(),
            approvals: req.approvals.len() + 1,
            required: req.approvals_required,
            last,
        };
        self.emit(&mut tx, now, &caller.name, id, &event)?;
        let mut events = Vec::new();
        if last {
            let approvers = req.approvals.iter().map(|a| a.by.clone()).chain([caller.name.clone()]);
            let grant = new_grant(&req, now, approvers.collect())?;
            grants::insert(&mut tx, &grant, now)?;
            requests::decide(
                &mut tx,
                id,
                RequestState::Approved,
                now,
                Some(&caller.name),
                comment.as_deref(),
            )?;
            self.emit(&mut tx, now, &caller.name, &grant.id, &Event::GrantCreated(&grant))?;
            events.push(FeedEvent::PendingClosed {
                request_id: id.to_owned(),
            });
            events.push(FeedEvent::Grant(grant.clone()));
        }
        self.commit(tx, events)?;
        if last {
            // A new grant: its "expiring soon" and expiry are the expiry task's to record.
            self.expiry.notify_one();
            self.metrics.decided("approved", req.created_at, now);
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
                let mut tx = conn.transaction()?;
                let req = requests::get(&mut tx, &id)?.ok_or_else(|| unknown(&id))?;
                let resource = this.catalog.existing(&req.resource)?;
                let reason = policy::check_deny(resource, &req, &caller, reason.as_deref())?;
                requests::decide(
                    &mut tx,
                    &id,
                    RequestState::Denied,
                    now,
                    Some(&caller.name),
                    Some(&reason),
                )?;
                this.emit(&mut tx, now, &caller.name, &id, &Event::Denied { reason: &reason })?;
                this.commit(tx, vec![FeedEvent::PendingClosed { request_id: id.clone() }])?;
                this.metrics.decided("denied", req.created_at, now);
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
                let mut tx = conn.transaction()?;
                let req = requests::get(&mut tx, &id)?.ok_or_else(|| unknown(&id))?;
                policy::check_cancel(&req, &caller)?;
                requests::decide(&mut tx, &id, RequestState::Cancelled, now, Some(&caller.name), None)?;
                this.emit(&mut tx, now, &caller.name, &id, &Event::Cancelled)?;
                this.commit(tx, vec![FeedEvent::PendingClosed { request_id: id.clone() }])?;
                this.metrics.decided("cancelled", req.created_at, now);
                tracing::info!(request = %id, user = %caller.name, "request cancelled");
                requests::get(conn, &id)?.ok_or_else(|| unknown(&id))
            })
            .await
    }
}

fn unknown(id: &str) -> ApiError {
    ApiError::UnknownRequest { id: id.to_owned() }
}

/// The grant an approval at `now` creates for `req`; `approvers` approved it.
fn new_grant(req: &Request, now: i64, approvers: Vec<String>) -> Result<Grant, ApiError> {
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
        reason: req.reason.clone(),
        approvers,
        break_glass: req.break_glass,
    })
}
