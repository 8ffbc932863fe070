//! Revoking and extending grants. Both publish the whole grant to the feed;
//! proxies move or end the grant's live sessions when it arrives.

use std::time::Duration;

use portcullis_protocol::duration;
use portcullis_protocol::feed::{FeedEvent, Revocation};

use crate::error::ApiError;
use crate::model::{Grant, User};
use crate::store::{grants, requests};
use crate::time;
use crate::workflow::Workflow;
use crate::workflow::events::Event;
use crate::workflow::policy;

impl Workflow {
    /// Ends a grant now; its live sessions are cut when proxies hear of it.
    pub(crate) async fn revoke(&self, caller: User, id: String, reason: Option<String>) -> Result<Grant, ApiError> {
        let this = self.clone();
        self.store
            .call(move |conn| {
                let reason = reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
                policy::check_text("reason", reason.as_deref())?;
                let now = time::now();
                let mut tx = conn.transaction()?;
                let mut grant = grants::get(&mut tx, &id)?.ok_or_else(|| unknown(&id))?;
                // A grant whose resource left the config may still be revoked.
                policy::check_revoke(this.catalog.get(&grant.resource), &grant, &caller, now)?;
                let revocation = Revocation {
                    by: caller.name.clone(),
                    reason,
                    at: now,
                };
                grants::revoke(&mut tx, &id, &revocation)?;
                let event = Event::Revoked {
                    reason: revocation.reason.as_deref(),
                };
                this.emit(&mut tx, now, &caller.name, &id, &event)?;
                grant.revoked = Some(revocation);
                this.commit(tx, vec![FeedEvent::Grant(grant.clone())])?;
                this.metrics.grant_changes.with_label_values(&["revoked"]).inc();
                tracing::info!(grant = %id, by = %caller.name, "grant revoked");
                Ok(grant)
            })
            .await
    }

    /// Moves a grant's deadline by `by`, within the policy's `max_duration` in total.
    pub(crate) async fn extend(&self, caller: User, id: String, by: Duration) -> Result<Grant, ApiError> {
        let this = self.clone();
        self.store
            .call(move |conn| {
                let now = time::now();
                let mut tx = conn.transaction()?;
                let mut grant = grants::get(&mut tx, &id)?.ok_or_else(|| unknown(&id))?;
                let resource = this.catalog.existing(&grant.resource)?;
                let req = requests::get(&mut tx, &grant.request_id)?.ok_or_else(|| unknown(&id))?;
                let expires_at = policy::check_extend(resource, &req, &grant, &caller, by, now)?;
                grants::set_expires(&mut tx, &id, expires_at)?;
                let event = Event::Extended {
                    by,
                    from: grant.expires_at,
                    to: expires_at,
                };
                this.emit(&mut tx, now, &caller.name, &id, &event)?;
                grant.expires_at = expires_at;
                this.commit(tx, vec![FeedEvent::Grant(grant.clone())])?;
                this.metrics.grant_changes.with_label_values(&["extended"]).inc();
                // The deadline moved, and with it the expiry task's next one.
                this.expiry.notify_one();
                tracing::info!(grant = %id, by = %caller.name, extension = %duration::format(by), "grant extended");
                Ok(grant)
            })
            .await
    }
}

fn unknown(id: &str) -> ApiError {
    ApiError::UnknownGrant { id: id.to_owned() }
}
