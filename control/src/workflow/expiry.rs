//! The background task that expires unanswered requests (the policy's
//! `pending_ttl`), escalates them (its `escalation` steps), and records the
//! clock's own grant events (started, expiring soon, expired). It sleeps until the
//! next such deadline, or until a change may bring one closer.

use std::time::Duration;

use crate::store::Conn;
use crate::store::db::Tx;
use portcullis_protocol::duration;
use portcullis_protocol::feed::{FeedEvent, UnixMillis};

use crate::error::ApiError;
use crate::model::{Request, RequestState};
use crate::store::history::SYSTEM_ACTOR;
use crate::store::{grants, requests};
use crate::time;
use crate::workflow::Workflow;
use crate::workflow::events::Event;

/// Longest sleep between passes when no deadline is near (a safety net, not a tick).
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// How long to wait before retrying after a store error.
const RETRY: Duration = Duration::from_secs(5);

/// How long before its deadline a grant is "expiring soon".
pub(crate) const EXPIRING_SOON: Duration = Duration::from_secs(5 * 60);

/// The earliest of the deadlines seen so far.
#[derive(Default)]
struct Soonest(Option<UnixMillis>);

impl Soonest {
    fn at(&mut self, t: UnixMillis) {
        self.0 = Some(self.0.map_or(t, |n| n.min(t)));
    }
}

impl Workflow {
    /// Runs forever: one pass at each deadline, and after each new request.
    pub(crate) async fn run_expiry(self) {
        let longest = crate::replicas::longest_sleep(&self.store, MAX_WAIT);
        loop {
            let wait = match self.expiry_pass().await {
                Ok(Some(next)) => time::duration(next.saturating_sub(time::now())).min(longest),
                Ok(None) => longest,
                Err(e) => {
                    tracing::warn!(error = %e, "expiring pending requests failed; retrying");
                    RETRY
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.expiry.notified() => {}
            }
        }
    }

    /// Expires and escalates what is due; answers the next deadline.
    async fn expiry_pass(&self) -> Result<Option<UnixMillis>, ApiError> {
        let this = self.clone();
        self.store.call(move |conn| this.expiry_blocking(conn)).await
    }

    fn expiry_blocking(&self, conn: &mut Conn) -> Result<Option<UnixMillis>, ApiError> {
        let now = time::now();
        let mut tx = conn.transaction()?;
        let mut events = Vec::new();
        let mut expired = Vec::new();
        let mut next = Soonest::default();
        for req in requests::pending(&mut tx)? {
            if req.pending_until.is_some_and(|until| until <= now) {
                self.expire(&mut tx, &req, now)?;
                events.push(FeedEvent::PendingClosed {
                    request_id: req.id.clone(),
                });
                expired.push(req);
                continue;
            }
            if let Some(until) = req.pending_until {
                next.at(until);
            }
            if let Some(step_at) = self.escalate(&mut tx, &req, now)? {
                next.at(step_at);
            }
        }
        self.note_grants(&mut tx, now, &mut next)?;
        self.commit(tx, events)?;
        for req in expired {
            self.metrics.decided("expired", req.created_at, now);
            tracing::info!(request = %req.id, user = %req.user, resource = %req.resource, "request expired unanswered");
        }
        Ok(next.0)
    }

    /// Records the escalation steps `req` reached by `now`; answers when the next one is due.
    fn escalate(&self, conn: &mut Tx<'_>, req: &Request, now: UnixMillis) -> Result<Option<UnixMillis>, ApiError> {
        // A request whose resource or role left the config escalates no further.
        let Some(policy) = self.catalog.get(&req.resource).map(|r| r.policy(&req.role)) else {
            return Ok(None);
        };
        let due = |after: Duration| req.created_at.saturating_add(time::millis(after));
        let done = usize::try_from(req.escalation_level).unwrap_or(usize::MAX);
        let mut level = done;
        for (i, step) in policy.escalation.iter().enumerate().skip(done) {
            if due(step.after) > now {
                break;
            }
            self.emit(
                conn,
                now,
                SYSTEM_ACTOR,
                &req.id,
                &Event::Escalated {
                    step: i + 1,
                    approvers: &step.approvers,
                },
            )?;
            self.metrics.escalations.inc();
            tracing::info!(request = %req.id, step = i + 1, "request escalated");
            level = i + 1;
        }
        if level > done {
            requests::set_escalation(conn, &req.id, u32::try_from(level).unwrap_or(u32::MAX))?;
        }
        Ok(policy.escalation.get(level).map(|s| due(s.after)))
    }

    /// Moves `req` to `expired`, said to be by Portcullis itself.
    fn expire(&self, conn: &mut Tx<'_>, req: &Request, now: UnixMillis) -> Result<(), ApiError> {
        let waited = duration::format(time::duration(now.saturating_sub(req.created_at)));
        let why = format!("no answer within the policy's pending_ttl (waited {waited})");
        requests::decide(
            conn,
            &req.id,
            RequestState::Expired,
            now,
            Some(SYSTEM_ACTOR),
            Some(&why),
        )?;
        self.emit(
            conn,
            now,
            SYSTEM_ACTOR,
            &req.id,
            &Event::ExpiredUnanswered {
                created_at: req.created_at,
            },
        )?;
        Ok(())
    }

    /// Records a scheduled grant's start once it came, "expiring soon" once per
    /// deadline of each active grant, and its expiry once it passed (both start
    /// and expiry at the time they happened, not when noticed).
    fn note_grants(&self, conn: &mut Tx<'_>, now: UnixMillis, next: &mut Soonest) -> Result<(), ApiError> {
        for grants::Unnoted {
            grant,
            expiring_noted_for: noted_for,
            start_noted,
        } in grants::unnoted(conn)?
        {
            let expires_at = grant.expires_at;
            if !start_noted {
                if grant.starts_at <= now {
                    let starts_at = grant.starts_at;
                    self.emit(conn, starts_at, SYSTEM_ACTOR, &grant.id, &Event::Started { starts_at })?;
                    grants::note_started(conn, &grant.id)?;
                } else {
                    next.at(grant.starts_at);
                }
            }
            if expires_at <= now {
                self.emit(
                    conn,
                    expires_at,
                    SYSTEM_ACTOR,
                    &grant.id,
                    &Event::Expired { expires_at },
                )?;
                grants::note_expired(conn, &grant.id)?;
                continue;
            }
            next.at(expires_at);
            if noted_for == Some(expires_at) {
                continue;
            }
            // A scheduled grant is not "expiring" before it starts.
            let soon_at = expires_at
                .saturating_sub(time::millis(EXPIRING_SOON))
                .max(grant.starts_at);
            if soon_at <= now {
                self.emit(conn, now, SYSTEM_ACTOR, &grant.id, &Event::ExpiringSoon { expires_at })?;
                grants::note_expiring(conn, &grant.id, expires_at)?;
            } else {
                next.at(soon_at);
            }
        }
        Ok(())
    }
}
