//! The `FeedHub`: what proxies follow. It keeps a mirror of everything a proxy
//! holds (users, recent grants, pending requests) and a broadcast of changes.
//! Each change gets the next revision and is applied to the mirror and sent
//! under one lock, so a subscriber that subscribes first and then takes a
//! snapshot can skip every change at or below the snapshot's revision.
//! The last `RING` changes are also kept, so a proxy following over the
//! network resumes from its cursor after a disconnect (`follow`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use portcullis_protocol::feed::{
    FeedChange, FeedEvent, FeedSnapshot, GrantEntry, Heartbeat, PendingEntry, UnixMillis, UserEntry,
};
use tokio::sync::broadcast;

/// How many changes a slow subscriber may fall behind before it must resync.
const CAPACITY: usize = 4096;

/// How long ended grants stay in snapshots, so a proxy that starts later can
/// still say "expired" or "revoked" rather than "no grant".
pub(crate) const RECENT_MS: i64 = 24 * 3600 * 1000;

/// How often `publish` drops long-ended grants from the mirror; snapshots are
/// rare (start, lagging subscriber), so they alone would let it grow for ever.
const PRUNE_EVERY_MS: i64 = 60 * 1000;

/// Recent changes kept for proxies that resume from a cursor; an older cursor resyncs.
pub(crate) const RING: usize = 10_000;

/// A cursor the feed cannot resume from: too old, or from another history.
#[derive(Debug)]
pub(crate) struct CursorGone {
    /// The oldest revision a cursor may name (one below the oldest kept change).
    pub oldest: u64,
    /// The latest revision.
    pub latest: u64,
}

/// The grant feed: a snapshot and a stream of changes, in commit order.
pub struct FeedHub {
    mirror: Mutex<Mirror>,
    changes: broadcast::Sender<FeedChange>,
    /// This history's name: random per start, since revisions restart at 0.
    epoch: String,
}

#[derive(Default)]
struct Mirror {
    revision: u64,
    users: BTreeMap<String, UserEntry>,
    grants: BTreeMap<String, GrantEntry>,
    pending: BTreeMap<String, PendingEntry>,
    /// Clock reading before which `publish` skips pruning.
    next_prune: UnixMillis,
    /// The last `RING` changes, oldest first.
    recent: VecDeque<FeedChange>,
}

impl Mirror {
    fn holding(revision: u64, users: Vec<UserEntry>, grants: Vec<GrantEntry>, pending: Vec<PendingEntry>) -> Mirror {
        Mirror {
            revision,
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            grants: grants.into_iter().map(|g| (g.id.clone(), g)).collect(),
            pending: pending.into_iter().map(|p| (p.request_id.clone(), p)).collect(),
            next_prune: 0,
            recent: VecDeque::new(),
        }
    }

    /// Applies `change` (the next revision), keeps it in the ring and sends it.
    fn push(&mut self, change: FeedChange, out: &broadcast::Sender<FeedChange>) {
        self.revision = change.revision;
        self.apply(&change.event);
        if self.recent.len() >= RING {
            self.recent.pop_front();
        }
        self.recent.push_back(change.clone());
        // No subscriber is fine: the mirror still has the change for the next snapshot.
        let _ = out.send(change);
    }

    /// Drops grants that ended more than `RECENT_MS` before `now`.
    fn prune(&mut self, now: UnixMillis) {
        let horizon = now.saturating_sub(RECENT_MS);
        self.grants.retain(|_, g| ended_at(g) >= horizon);
        self.next_prune = now.saturating_add(PRUNE_EVERY_MS);
    }

    fn apply(&mut self, event: &FeedEvent) {
        match event {
            FeedEvent::User(u) => {
                self.users.insert(u.name.clone(), u.clone());
            }
            FeedEvent::UserRemoved { name } => {
                self.users.remove(name);
            }
            FeedEvent::Grant(g) => {
                self.grants.insert(g.id.clone(), g.clone());
            }
            FeedEvent::Pending(p) => {
                self.pending.insert(p.request_id.clone(), p.clone());
            }
            FeedEvent::PendingClosed { request_id } => {
                self.pending.remove(request_id);
            }
            // Instructions, not state: nothing to keep for snapshots.
            FeedEvent::KillSession { .. } | FeedEvent::Unknown => {}
        }
    }
}

/// When a grant stopped (or will stop) admitting sessions.
fn ended_at(g: &GrantEntry) -> UnixMillis {
    g.revoked.as_ref().map_or(g.expires_at, |r| r.at.min(g.expires_at))
}

impl FeedHub {
    /// A hub at revision 0 holding what the store holds now, in a history
    /// of its own (the embedded store: one process publishes).
    pub(crate) fn new(users: Vec<UserEntry>, grants: Vec<GrantEntry>, pending: Vec<PendingEntry>) -> FeedHub {
        FeedHub::at(0, new_epoch(), users, grants, pending)
    }

    /// A hub holding what the store held at `revision` of the shared history
    /// `epoch` (a PostgreSQL store, which every replica follows).
    pub(crate) fn at(
        revision: u64,
        epoch: String,
        users: Vec<UserEntry>,
        grants: Vec<GrantEntry>,
        pending: Vec<PendingEntry>,
    ) -> FeedHub {
        let (changes, _) = broadcast::channel(CAPACITY);
        FeedHub {
            mirror: Mutex::new(Mirror::holding(revision, users, grants, pending)),
            changes,
            epoch,
        }
    }

    /// Replaces what the hub holds with the store as of `revision`, after
    /// it fell behind what the store keeps; followers then resync.
    pub(crate) fn reset(
        &self,
        revision: u64,
        users: Vec<UserEntry>,
        grants: Vec<GrantEntry>,
        pending: Vec<PendingEntry>,
    ) {
        *self.mirror.lock().unwrap_or_else(PoisonError::into_inner) = Mirror::holding(revision, users, grants, pending);
    }

    /// The name of this feed's history (see `FeedSnapshot::epoch`).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The changes after `after` that the ring still holds, and a receiver
    /// of every later one, taken under the publish lock so none falls
    /// between. A cursor of another epoch, ahead of the feed, or older than
    /// the ring is `CursorGone`: the follower must resync from a snapshot.
    pub(crate) fn follow(
        &self,
        after: u64,
        epoch: Option<&str>,
    ) -> Result<(Vec<FeedChange>, broadcast::Receiver<FeedChange>), CursorGone> {
        let m = self.mirror.lock().unwrap_or_else(PoisonError::into_inner);
        let oldest = m.recent.front().map_or(m.revision, |c| c.revision.saturating_sub(1));
        let foreign = epoch.is_some_and(|e| e != self.epoch);
        if foreign || after < oldest || after > m.revision {
            return Err(CursorGone {
                oldest,
                latest: m.revision,
            });
        }
        let rx = self.changes.subscribe();
        let backlog = m.recent.iter().filter(|c| c.revision > after).cloned().collect();
        Ok((backlog, rx))
    }

    /// The feed's position and clock, for the stream's heartbeat lines.
    pub(crate) fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            revision: self.revision(),
            now: crate::time::now(),
            epoch: self.epoch.clone(),
        }
    }

    /// Everything a proxy needs, as of the returned revision. Ended grants are
    /// kept for a day, then dropped.
    pub fn snapshot(&self) -> FeedSnapshot {
        let mut m = self.mirror.lock().unwrap_or_else(PoisonError::into_inner);
        m.prune(crate::time::now());
        FeedSnapshot {
            revision: m.revision,
            epoch: self.epoch.clone(),
            users: m.users.values().cloned().collect(),
            grants: m.grants.values().cloned().collect(),
            pending: m.pending.values().cloned().collect(),
        }
    }

    /// Changes from now on. Subscribe before taking a snapshot, then skip
    /// changes whose revision is at or below the snapshot's.
    pub fn subscribe(&self) -> broadcast::Receiver<FeedChange> {
        self.changes.subscribe()
    }

    /// How many requests are pending, as of the last change published.
    pub(crate) fn pending_count(&self) -> usize {
        self.mirror.lock().unwrap_or_else(PoisonError::into_inner).pending.len()
    }

    /// The revision of the last change published.
    pub fn revision(&self) -> u64 {
        self.mirror.lock().unwrap_or_else(PoisonError::into_inner).revision
    }

    /// Publishes changes that were just committed, in order. Callers publish
    /// while still holding the store, so revisions follow commit order.
    pub(crate) fn publish(&self, events: Vec<FeedEvent>) {
        if events.is_empty() {
            return;
        }
        let now = crate::time::now();
        let mut m = self.mirror.lock().unwrap_or_else(PoisonError::into_inner);
        // Pruning as changes arrive keeps the mirror bounded without a background task.
        if now >= m.next_prune {
            m.prune(now);
        }
        for event in events {
            let change = FeedChange {
                revision: m.revision + 1,
                event,
                at: Some(now),
            };
            m.push(change, &self.changes);
        }
    }

    /// Publishes changes read from the store's `feed` table, with their own
    /// revisions, skipping those already published. False when one is
    /// missing: the hub fell behind what the store keeps and needs `reset`.
    pub(crate) fn publish_stored(&self, changes: Vec<FeedChange>) -> bool {
        let now = crate::time::now();
        let mut m = self.mirror.lock().unwrap_or_else(PoisonError::into_inner);
        if now >= m.next_prune {
            m.prune(now);
        }
        for change in changes {
            if change.revision <= m.revision {
                continue;
            }
            if change.revision != m.revision + 1 {
                return false;
            }
            m.push(change, &self.changes);
        }
        true
    }
}

/// 16 random hex digits; the clock if the random source fails (still unique per start).
pub(crate) fn new_epoch() -> String {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => crate::ids::hex(&bytes),
        Err(_) => format!("t{:x}", crate::time::now()),
    }
}

impl std::fmt::Debug for FeedHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedHub").field("revision", &self.revision()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str) -> FeedEvent {
        FeedEvent::Pending(PendingEntry {
            request_id: id.to_owned(),
            user: "alice".to_owned(),
            resource: "orders".to_owned(),
            role: "read".to_owned(),
            reason: None,
        })
    }

    #[test]
    fn revisions_increase_in_publish_order_and_snapshots_line_up() {
        let hub = FeedHub::new(Vec::new(), Vec::new(), Vec::new());
        let mut rx = hub.subscribe();
        hub.publish(vec![pending("req_1"), pending("req_2")]);
        let snap = hub.snapshot();
        hub.publish(vec![FeedEvent::PendingClosed {
            request_id: "req_1".to_owned(),
        }]);
        assert_eq!(snap.revision, 2);
        assert_eq!(snap.pending.len(), 2);
        let got: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok()).map(|c| c.revision).collect();
        assert_eq!(got, vec![1, 2, 3]);
        // A follower skips what its snapshot already holds.
        assert_eq!(got.iter().filter(|r| **r > snap.revision).count(), 1);
        assert_eq!(hub.snapshot().pending.len(), 1);
    }

    #[test]
    fn follow_resumes_from_the_ring_and_refuses_foreign_or_old_cursors() {
        let hub = FeedHub::new(Vec::new(), Vec::new(), Vec::new());
        hub.publish(vec![pending("req_1"), pending("req_2"), pending("req_3")]);
        let (backlog, mut rx) = hub.follow(1, Some(hub.epoch())).expect("resume");
        assert_eq!(backlog.iter().map(|c| c.revision).collect::<Vec<_>>(), vec![2, 3]);
        hub.publish(vec![pending("req_4")]);
        assert_eq!(rx.try_recv().map(|c| c.revision).ok(), Some(4));
        assert!(hub.follow(1, Some("another")).is_err(), "another history");
        assert!(hub.follow(9, None).is_err(), "ahead of the feed");
        hub.publish((0..RING).map(|i| pending(&format!("req_x{i}"))).collect());
        let gone = hub.follow(1, None).expect_err("older than the ring");
        assert_eq!(gone.oldest, 4);
        assert!(hub.follow(4, None).is_ok());
    }

    fn grant(id: &str, expires_at: UnixMillis) -> GrantEntry {
        GrantEntry {
            id: id.to_owned(),
            request_id: format!("req_{id}"),
            user: "alice".to_owned(),
            resource: "orders".to_owned(),
            role: "read".to_owned(),
            starts_at: 0,
            expires_at,
            revoked: None,
            reason: None,
            approvers: Vec::new(),
            break_glass: false,
        }
    }

    fn mirrored(hub: &FeedHub) -> Vec<String> {
        let m = hub.mirror.lock().unwrap_or_else(PoisonError::into_inner);
        m.grants.keys().cloned().collect()
    }

    #[test]
    fn long_ended_grants_leave_the_mirror_without_a_snapshot() {
        let now = crate::time::now();
        let hub = FeedHub::new(
            Vec::new(),
            vec![grant("old", now - RECENT_MS - 1000), grant("live", now + 60_000)],
            Vec::new(),
        );
        hub.publish(vec![pending("req_1")]);
        assert_eq!(mirrored(&hub), vec!["live".to_owned()]);
        // Grants that end later go too, once the next prune is due.
        hub.publish(vec![FeedEvent::Grant(grant("ended", now - RECENT_MS - 1000))]);
        hub.mirror.lock().unwrap_or_else(PoisonError::into_inner).next_prune = 0;
        hub.publish(vec![pending("req_2")]);
        assert_eq!(mirrored(&hub), vec!["live".to_owned()]);
    }

    #[test]
    fn long_ended_grants_leave_the_snapshot() {
        let now = crate::time::now();
        let hub = FeedHub::new(
            Vec::new(),
            vec![grant("old", now - RECENT_MS - 1000), grant("live", now + 60_000)],
            Vec::new(),
        );
        let ids: Vec<String> = hub.snapshot().grants.into_iter().map(|g| g.id).collect();
        assert_eq!(ids, vec!["live".to_owned()]);
    }
}
