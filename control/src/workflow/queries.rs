//! What each caller may see: admins see everything; others see their own
//! requests and grants and those on resources they approve.

use std::collections::HashSet;

use crate::error::ApiError;
use crate::model::{Grant, Request, User};
use crate::store::history::{self, Recorded};
use crate::store::{grants, requests};
use crate::time;
use crate::workflow::Workflow;
use crate::workflow::policy::{may_oversee, may_see_request};

impl Workflow {
    fn may_see(&self, resource: &str, owner: &str, caller: &User) -> bool {
        may_oversee(self.catalog.get(resource), owner, caller)
    }

    /// Pending requests (or all) the caller may see, oldest first.
    pub(crate) async fn list_requests(&self, caller: User, all: bool) -> Result<Vec<Request>, ApiError> {
        let this = self.clone();
        self.store
            .call(move |conn| {
                let mut list = requests::list(conn, all)?;
                list.retain(|r| may_see_request(this.catalog.get(&r.resource), r, &caller));
                Ok(list)
            })
            .await
    }

    /// One request, if the caller may see it.
    pub(crate) async fn get_request(&self, caller: User, id: String) -> Result<Request, ApiError> {
        let this = self.clone();
        self.store
            .call(move |conn| {
                let req = requests::get(conn, &id)?.ok_or_else(|| ApiError::UnknownRequest { id: id.clone() })?;
                if may_see_request(this.catalog.get(&req.resource), &req, &caller) {
                    Ok(req)
                } else {
                    Err(ApiError::HiddenRequest { id })
                }
            })
            .await
    }

    /// Active and scheduled grants (or all) the caller may see.
    pub(crate) async fn list_grants(&self, caller: User, all: bool) -> Result<Vec<Grant>, ApiError> {
        let this = self.clone();
        self.store
            .call(move |conn| {
                let mut list = if all {
                    grants::list(conn)?
                } else {
                    grants::live(conn, time::now())?
                };
                list.retain(|g| this.may_see(&g.resource, &g.user, &caller));
                Ok(list)
            })
            .await
    }

    /// One grant, if the caller may see it.
    pub(crate) async fn get_grant(&self, caller: User, id: String) -> Result<Grant, ApiError> {
        let this = self.clone();
        self.store
            .call(move |conn| {
                let grant = grants::get(conn, &id)?.ok_or_else(|| ApiError::UnknownGrant { id: id.clone() })?;
                if this.may_see(&grant.resource, &grant.user, &caller) {
                    Ok(grant)
                } else {
                    Err(ApiError::HiddenGrant { id })
                }
            })
            .await
    }

    /// Every history entry about these requests and grants, oldest first.
    /// Callers check visibility first (they fetched the request or grant).
    pub(crate) async fn history(&self, subjects: Vec<String>) -> Result<Vec<Recorded>, ApiError> {
        self.store
            .call(move |conn| {
                let refs: Vec<&str> = subjects.iter().map(String::as_str).collect();
                Ok(history::of(conn, &refs)?)
            })
            .await
    }

    /// Ids of the grants break-glass created (few: it is for emergencies).
    pub(crate) async fn break_glass_grants(&self) -> Result<HashSet<String>, ApiError> {
        self.store.call(|conn| Ok(grants::break_glass_ids(conn)?)).await
    }
}
