//! The in-memory grant table: users, grants and pending requests as the feed
//! reports them. Each grant carries a `watch` so live sessions learn of an
//! extension or revocation the moment the feed delivers it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use portcullis_protocol::feed::{FeedChange, FeedEvent, FeedSnapshot, GrantEntry, PendingEntry, UserEntry};
use portcullis_protocol::scram::ServerSecret;
use tokio::sync::watch;

/// Users, grants and pending requests, indexed for the admission check.
#[derive(Default)]
pub struct GrantTable {
    users: DashMap<String, Arc<ServerSecret>>,
    grants: DashMap<String, watch::Sender<GrantEntry>>,
    by_subject: DashMap<(String, String), Vec<String>>,
    pending: DashMap<String, PendingEntry>,
    revision: AtomicU64,
}

impl GrantTable {
    /// The feed revision applied last.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Replaces the whole table with `snapshot`; live sessions of grants that
    /// still exist see their new state, the others see their grant vanish.
    pub fn apply_snapshot(&self, snapshot: FeedSnapshot) {
        self.users.clear();
        for user in snapshot.users {
            self.put_user(user);
        }
        self.pending.clear();
        for p in snapshot.pending {
            self.pending.insert(p.request_id.clone(), p);
        }
        let keep: std::collections::HashSet<&str> = snapshot.grants.iter().map(|g| g.id.as_str()).collect();
        self.grants.retain(|id, _| keep.contains(id.as_str()));
        self.by_subject.clear();
        for g in snapshot.grants {
            self.put_grant(g);
        }
        self.revision.store(snapshot.revision, Ordering::Release);
    }

    /// Applies one change; changes at or below the current revision are ignored.
    pub fn apply(&self, change: FeedChange) {
        if change.revision <= self.revision() {
            return;
        }
        match change.event {
            FeedEvent::User(user) => self.put_user(user),
            FeedEvent::UserRemoved { name } => {
                self.users.remove(&name);
            }
            FeedEvent::Grant(grant) => self.put_grant(grant),
            FeedEvent::Pending(p) => {
                self.pending.insert(p.request_id.clone(), p);
            }
            FeedEvent::PendingClosed { request_id } => {
                self.pending.remove(&request_id);
            }
        }
        self.revision.store(change.revision, Ordering::Release);
    }

    fn put_user(&self, user: UserEntry) {
        match ServerSecret::parse(&user.scram_verifier) {
            Ok(secret) => {
                self.users.insert(user.name, Arc::new(secret));
            }
            Err(e) => {
                tracing::warn!(user = %user.name, error = %e, "ignoring a user with an unreadable SCRAM verifier");
                self.users.remove(&user.name);
            }
        }
    }

    fn put_grant(&self, grant: GrantEntry) {
        let subject = (grant.user.clone(), grant.resource.clone());
        let id = grant.id.clone();
        match self.grants.get(&id) {
            Some(tx) => {
                tx.send_replace(grant);
            }
            None => {
                self.grants.insert(id.clone(), watch::channel(grant).0);
            }
        }
        let mut ids = self.by_subject.entry(subject).or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }

    /// The SCRAM secret of `user`, if the feed knows them.
    pub fn user_secret(&self, user: &str) -> Option<Arc<ServerSecret>> {
        self.users.get(user).map(|s| Arc::clone(&s))
    }

    /// The grants and pending requests of `user` on `resource`.
    pub fn lookup(&self, user: &str, resource: &str) -> (Vec<GrantEntry>, Vec<PendingEntry>) {
        let ids = self
            .by_subject
            .get(&(user.to_owned(), resource.to_owned()))
            .map(|ids| ids.clone())
            .unwrap_or_default();
        let grants = ids
            .iter()
            .filter_map(|id| self.grants.get(id).map(|tx| tx.borrow().clone()))
            .collect();
        let pending = self
            .pending
            .iter()
            .filter(|p| p.user == user && p.resource == resource)
            .map(|p| p.value().clone())
            .collect();
        (grants, pending)
    }

    /// A receiver that sees every later change of grant `id`.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<GrantEntry>> {
        self.grants.get(id).map(|tx| tx.subscribe())
    }
}
