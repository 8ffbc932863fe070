//! Live sessions, reached through the `SessionDirectory` seam: who may see
//! them and who may end them (admins, approvers of the resource, the
//! session's own user). Kills are recorded in history.

use portcullis_protocol::sessions::{SessionDirectory, SessionInfo};
use serde_json::json;

use crate::error::ApiError;
use crate::model::User;
use crate::time;
use crate::workflow::Workflow;
use crate::workflow::events::record;
use crate::workflow::policy::may_oversee;

impl Workflow {
    /// The live sessions `caller` may see, in start order.
    pub(crate) fn visible_sessions(&self, dir: &dyn SessionDirectory, caller: &User) -> Vec<SessionInfo> {
        let mut list = dir.list();
        list.retain(|s| may_oversee(self.catalog.get(&s.resource), &s.user, caller));
        list
    }

    /// Ends one live session and records who did.
    pub(crate) async fn kill_session(
        &self,
        dir: &dyn SessionDirectory,
        caller: User,
        id: String,
    ) -> Result<SessionInfo, ApiError> {
        let unknown = || ApiError::UnknownSession { id: id.clone() };
        let session = dir.list().into_iter().find(|s| s.id == id).ok_or_else(unknown)?;
        if !may_oversee(self.catalog.get(&session.resource), &session.user, &caller) {
            return Err(ApiError::NotSessionKiller {
                id,
                resource: session.resource,
            });
        }
        // It may have ended between the listing and now.
        if !dir.kill(&id, &caller.name) {
            return Err(unknown());
        }
        tracing::info!(session = %id, user = %session.user, by = %caller.name, "session killed");
        let detail = json!({
            "user": session.user,
            "resource": session.resource,
            "role": session.role,
            "grant_id": session.grant_id,
        });
        // Under the write lock, as every history write: the audit shipper
        // takes history in number order, and an entry numbered after one
        // another replica has not committed yet would make it skip that one.
        self.store
            .call(move |conn| {
                let mut tx = conn.transaction()?;
                record(&mut tx, time::now(), &caller.name, "session.kill", &id, detail)?;
                tx.commit().map_err(ApiError::from)
            })
            .await?;
        self.audit_wake.notify_one();
        Ok(session)
    }
}
