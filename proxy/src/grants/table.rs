//! The in-memory grant table: users, grants and pending requests as the feed
//! reports them. Each grant that can still admit or hold a session carries a
//! `watch` so live sessions learn of an extension or revocation the moment the
//! feed delivers it. Ended grants lose their channel (after sending it their
//! final state) and only the latest per user, resource and role is kept, for
//! a day, so refusals can still say "expired" or "revoked" without the table
//! growing forever.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use portcullis_protocol::feed::{FeedChange, FeedEvent, FeedSnapshot, GrantEntry, PendingEntry, UnixMillis, UserEntry};
use portcullis_protocol::scram::ServerSecret;
use russh::keys::PublicKey;
use tokio::sync::watch;

use crate::clock::now_millis;

/// How long after its deadline a grant that simply ran out keeps its channel.
/// Its sessions cut themselves at the deadline by their own timer; the grace
/// keeps a late timer from seeing a closed channel instead.
const EXPIRY_GRACE_MS: i64 = 5 * 60 * 1000;
/// How long an ended grant is remembered for refusals, as the feed's snapshot does.
const ENDED_RETENTION_MS: i64 = 24 * 3600 * 1000;
/// How often `apply` sweeps out grants that ended without a change saying so.
const SWEEP_EVERY_MS: i64 = 60 * 1000;

/// Users, grants and pending requests, indexed for the admission check.
#[derive(Default)]
pub struct GrantTable {
    users: DashMap<String, Arc<ServerSecret>>,
    /// Registered SSH public keys per user, parsed once when the feed delivers them.
    ssh_keys: DashMap<String, Arc<[PublicKey]>>,
    /// Grants that may still admit or hold sessions, with the channel sessions follow.
    grants: DashMap<String, watch::Sender<GrantEntry>>,
    /// Ended grants without a channel: at most one per user, resource and role.
    ended: DashMap<String, GrantEntry>,
    /// Ids in `grants` or `ended`, per (user, resource).
    by_subject: DashMap<(String, String), Vec<String>>,
    /// Pending requests per (user, resource): admission reads one subject's, never all.
    pending: DashMap<(String, String), Vec<PendingEntry>>,
    /// The subject of each pending request id, to close it by id.
    pending_ids: DashMap<String, (String, String)>,
    revision: AtomicU64,
    /// Wall-clock millis before which `apply` skips the sweep.
    next_sweep: AtomicI64,
}

/// When a grant stopped admitting, as the admission check ranks ended grants.
fn ended_at(g: &GrantEntry) -> UnixMillis {
    g.revoked.as_ref().map_or(g.expires_at, |r| r.at)
}

/// Whether `g` can no longer admit a session at `now` nor at any later time.
fn is_ended(g: &GrantEntry, now: UnixMillis) -> bool {
    g.revoked.is_some() || g.expires_at <= now
}

impl GrantTable {
    /// The feed revision applied last.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Replaces the whole table with `snapshot`; live sessions of grants that
    /// still exist see their new state, the others see their grant vanish.
    pub fn apply_snapshot(&self, snapshot: FeedSnapshot) {
        self.apply_snapshot_at(snapshot, now_millis());
    }

    /// `apply_snapshot` by the clock reading `now`. Entries are upserted before
    /// what the snapshot lacks is removed, so a concurrent admission check never
    /// sees a user or grant that exists on both sides of the snapshot go missing.
    fn apply_snapshot_at(&self, snapshot: FeedSnapshot, now: UnixMillis) {
        let user_names: HashSet<String> = snapshot.users.iter().map(|u| u.name.clone()).collect();
        for user in snapshot.users {
            self.put_user(user);
        }
        self.users.retain(|name, _| user_names.contains(name));
        self.ssh_keys.retain(|name, _| user_names.contains(name));

        let request_ids: HashSet<String> = snapshot.pending.iter().map(|p| p.request_id.clone()).collect();
        for p in snapshot.pending {
            self.put_pending(p);
        }
        let closed: Vec<String> = self
            .pending_ids
            .iter()
            .filter(|e| !request_ids.contains(e.key()))
            .map(|e| e.key().clone())
            .collect();
        for id in closed {
            self.remove_pending(&id);
        }

        let grant_ids: HashSet<String> = snapshot.grants.iter().map(|g| g.id.clone()).collect();
        for g in snapshot.grants {
            self.put_grant(g, now);
        }
        // Dropping a Sender here closes the channel: those sessions are cut as "grant gone".
        self.grants.retain(|id, _| grant_ids.contains(id));
        self.ended.retain(|id, _| grant_ids.contains(id));
        self.by_subject.retain(|_, ids| {
            ids.retain(|id| grant_ids.contains(id));
            !ids.is_empty()
        });
        self.prune(now);
        self.revision.store(snapshot.revision, Ordering::Release);
    }

    /// Applies one change; changes at or below the current revision are ignored.
    pub fn apply(&self, change: FeedChange) {
        self.apply_at(change, now_millis());
    }

    /// `apply` by the clock reading `now`.
    fn apply_at(&self, change: FeedChange, now: UnixMillis) {
        if change.revision <= self.revision() {
            return;
        }
        match change.event {
            FeedEvent::User(user) => self.put_user(user),
            FeedEvent::UserRemoved { name } => {
                self.users.remove(&name);
                self.ssh_keys.remove(&name);
            }
            FeedEvent::Grant(grant) => self.put_grant(grant, now),
            FeedEvent::Pending(p) => self.put_pending(p),
            FeedEvent::PendingClosed { request_id } => self.remove_pending(&request_id),
            // Kills are acted on by whoever follows the feed (`sync`); unknown kinds are skipped.
            FeedEvent::KillSession { .. } | FeedEvent::Unknown => {}
        }
        if now >= self.next_sweep.load(Ordering::Relaxed) {
            self.prune(now);
        }
        self.revision.store(change.revision, Ordering::Release);
    }

    /// Retires grants that ran out more than `EXPIRY_GRACE_MS` ago and forgets
    /// ended grants older than a day. `apply` calls it at most once a minute;
    /// the table only grows when the feed delivers, so that bounds it.
    pub fn prune(&self, now: UnixMillis) {
        self.next_sweep
            .store(now.saturating_add(SWEEP_EVERY_MS), Ordering::Relaxed);
        let ran_out: Vec<GrantEntry> = self
            .grants
            .iter()
            .filter(|tx| tx.borrow().expires_at.saturating_add(EXPIRY_GRACE_MS) <= now)
            .map(|tx| tx.borrow().clone())
            .collect();
        for g in ran_out {
            self.retire(g);
        }
        let horizon = now.saturating_sub(ENDED_RETENTION_MS);
        let forgotten: Vec<GrantEntry> = self
            .ended
            .iter()
            .filter(|g| ended_at(g) < horizon)
            .map(|g| g.value().clone())
            .collect();
        for g in forgotten {
            self.ended.remove(&g.id);
            self.unindex(&g);
        }
    }

    fn put_user(&self, user: UserEntry) {
        // A key line the proxy cannot read is skipped, not fatal: the user's other keys still work.
        let keys: Vec<PublicKey> = user
            .ssh_keys
            .iter()
            .filter_map(|line| match PublicKey::from_openssh(line) {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::warn!(user = %user.name, error = %e, "ignoring an unreadable SSH key");
                    None
                }
            })
            .collect();
        self.ssh_keys.insert(user.name.clone(), keys.into());
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

    fn put_grant(&self, grant: GrantEntry, now: UnixMillis) {
        let subject = (grant.user.clone(), grant.resource.clone());
        let id = grant.id.clone();
        {
            let mut ids = self.by_subject.entry(subject).or_default();
            if !ids.contains(&id) {
                ids.push(id.clone());
            }
        }
        if is_ended(&grant, now) {
            self.retire(grant);
            return;
        }
        match self.grants.entry(id.clone()) {
            Entry::Occupied(tx) => {
                tx.get().send_replace(grant);
            }
            Entry::Vacant(slot) => {
                slot.insert(watch::channel(grant).0);
            }
        }
        // Extended past its end: live again, so no longer a tombstone.
        self.ended.remove(&id);
    }

    /// Moves an ended grant out of `grants`: its sessions get the final state,
    /// then the channel closes. A receiver still reads a value sent before the
    /// sender dropped, and `changed()` reports it before reporting the close,
    /// so `enforce` cuts with the grant's own reason (revoked or expired).
    fn retire(&self, grant: GrantEntry) {
        let id = grant.id.clone();
        if let Some(tx) = self.grants.get(&id) {
            tx.send_replace(grant.clone());
        }
        let rivals = self.ended_rivals(&grant);
        if rivals.iter().any(|r| ended_at(r) > ended_at(&grant)) {
            // A later end of the same role is what refusals report; this one adds nothing.
            self.ended.remove(&id);
            self.grants.remove(&id);
            self.unindex(&grant);
            return;
        }
        self.ended.insert(id.clone(), grant);
        self.grants.remove(&id);
        for rival in rivals {
            self.ended.remove(&rival.id);
            self.unindex(&rival);
        }
    }

    /// Other ended grants of the same user, resource and role.
    fn ended_rivals(&self, grant: &GrantEntry) -> Vec<GrantEntry> {
        let ids = self
            .by_subject
            .get(&(grant.user.clone(), grant.resource.clone()))
            .map(|ids| ids.clone())
            .unwrap_or_default();
        ids.iter()
            .filter(|id| **id != grant.id)
            .filter_map(|id| self.ended.get(id).map(|g| g.value().clone()))
            .filter(|g| g.role == grant.role)
            .collect()
    }

    fn unindex(&self, grant: &GrantEntry) {
        let subject = (grant.user.clone(), grant.resource.clone());
        if let Some(mut ids) = self.by_subject.get_mut(&subject) {
            ids.retain(|id| *id != grant.id);
        }
        self.by_subject.remove_if(&subject, |_, ids| ids.is_empty());
    }

    /// Inserts or replaces a pending request in place (never absent in between).
    fn put_pending(&self, p: PendingEntry) {
        let subject = (p.user.clone(), p.resource.clone());
        if let Some(old) = self.pending_ids.insert(p.request_id.clone(), subject.clone())
            && old != subject
        {
            self.drop_pending_from(&old, &p.request_id);
        }
        let mut list = self.pending.entry(subject).or_default();
        match list.iter_mut().find(|q| q.request_id == p.request_id) {
            Some(q) => *q = p,
            None => list.push(p),
        }
    }

    fn remove_pending(&self, id: &str) {
        if let Some((_, subject)) = self.pending_ids.remove(id) {
            self.drop_pending_from(&subject, id);
        }
    }

    fn drop_pending_from(&self, subject: &(String, String), id: &str) {
        if let dashmap::Entry::Occupied(mut e) = self.pending.entry(subject.clone()) {
            e.get_mut().retain(|p| p.request_id != id);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    /// The SCRAM secret of `user`, if the feed knows them.
    pub fn user_secret(&self, user: &str) -> Option<Arc<ServerSecret>> {
        self.users.get(user).map(|s| Arc::clone(&s))
    }

    /// The registered SSH public keys of `user` (empty if unknown).
    pub fn ssh_keys(&self, user: &str) -> Arc<[PublicKey]> {
        self.ssh_keys
            .get(user)
            .map(|k| Arc::clone(&k))
            .unwrap_or_else(|| Arc::from(Vec::new()))
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
            .filter_map(|id| {
                let live = self.grants.get(id).map(|tx| tx.borrow().clone());
                live.or_else(|| self.ended.get(id).map(|g| g.value().clone()))
            })
            .collect();
        let pending = self
            .pending
            .get(&(user.to_owned(), resource.to_owned()))
            .map(|list| list.clone())
            .unwrap_or_default();
        (grants, pending)
    }

    /// A receiver that sees every later change of grant `id`. For a grant that
    /// already ended it holds the final state on a closed channel, so a session
    /// admitted just before the end is still cut with the right reason.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<GrantEntry>> {
        if let Some(tx) = self.grants.get(id) {
            return Some(tx.subscribe());
        }
        let last = self.ended.get(id).map(|g| g.value().clone())?;
        Some(watch::channel(last).1)
    }
}

#[cfg(test)]
mod tests;
