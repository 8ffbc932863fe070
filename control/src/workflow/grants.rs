//! Revoking and extending grants. Both publish the whole grant to the feed;
//! proxies move or end the grant's live sessions when it arrives.

use std::time::Duration;

use portcullis_protocol::duration;
use portcullis_protocol::feed::{FeedEvent, Revocation};
use serde_json::json;

use crate::error::ApiError;
use crate::model::{Grant, User};
use crate::store::grants;
use crate::time;
use crate::workflow::Workflow;
use crate::workflow::policy;
use crate::workflow::requests::record;

impl Workflow {
    /// Ends a grant now; its live sessions are cut when proxies hear of it.
    pub(crate) async fn revoke(&self, caller: User, id: String, reason: Option<String>) -> Result<Grant, ApiError> {
        let this = self.clone();
        self.store
            .call(move |conn| {
                let reason = reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
                policy::check_text("reason", reason.as_deref())?;
                let now = time::now();
                let tx = conn.transaction()?;
                let mut grant = grants::get(&tx, &id)?.ok_or_else(|| unknown(&id))?;
                // A grant whose resource left the config may still be revoked.
                policy::check_revoke(this.catalog.get(&grant.resource), &grant, &caller, now)?;
                let revocation = Revocation {
                    by: caller.name.clone(),
                    reason,
                    at: now,
                };
                grants::revoke(&tx, &id, &revocation)?;
                record(
                    &tx,
                    now,
                    &caller.name,
                    "grant.revoke",
                    &id,
                    json!({ "reason": revocation.reason }),
                )?;
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
                let tx = conn.transaction()?;
                let mut grant = grants::get(&tx, &id)?.ok_or_else(|| unknown(&id))?;
                let resource = this.catalog.existing(&grant.resource)?;
                let expires_at = policy::check_extend(resource, &grant, &caller, by, now)?;
                grants::set_expires(&tx, &id, expires_at)?;
                record(
                    &tx,
                    now,
                    &caller.name,
                    "grant.extend",
                    &id,
                    json!({
                        "by": duration::format(by),
                        "from": time::rfc3339(grant.expires_at),
                        "to": time::rfc3339(expires_at),
                    }),
                )?;
                grant.expires_at = expires_at;
                this.commit(tx, vec![FeedEvent::Grant(grant.clone())])?;
                this.metrics.grant_changes.with_label_values(&["extended"]).inc();
                tracing::info!(grant = %id, by = %caller.name, extension = %duration::format(by), "grant extended");
                Ok(grant)
            })
            .await
    }
}

fn unknown(id: &str) -> ApiError {
    ApiError::UnknownGrant { id: id.to_owned() }
}
