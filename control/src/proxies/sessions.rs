//! Live sessions of remote proxies: each proxy reports its whole list every
//! few seconds (and soon after a change); a proxy not heard from for about
//! three reports is dropped. On a shared store, reports are also written to
//! it and those made to other replicas read back every second, so every
//! replica knows every proxy's sessions. A kill travels to the proxy
//! holding the session as a `KillSession` feed event. `Sessions` joins these with the sessions of
//! the proxy in this process (`serve`) behind the one `SessionDirectory`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use portcullis_protocol::feed::{FeedEvent, UnixMillis};
use portcullis_protocol::sessions::{SessionDirectory, SessionInfo};
use tokio::time::Instant;

use crate::error::ControlError;
use crate::feed::FeedHub;
use crate::store::{Store, reports};
use crate::time;

/// A proxy's report older than this is ignored (three missed 2 s reports, and some slack).
pub const REPORT_TTL: Duration = Duration::from_secs(7);

/// The latest session report of each remote proxy.
pub(crate) struct RemoteSessions {
    reports: Mutex<BTreeMap<String, (Instant, Vec<SessionInfo>)>>,
    store: Store,
    feed: Arc<FeedHub>,
}

impl RemoteSessions {
    /// No reports yet; kills are published on `feed` (through `store` when it is shared).
    pub(crate) fn new(store: Store, feed: Arc<FeedHub>) -> RemoteSessions {
        RemoteSessions {
            reports: Mutex::new(BTreeMap::new()),
            store,
            feed,
        }
    }

    /// Replaces what `proxy` holds with `sessions` (and, on a shared store,
    /// tells the other replicas).
    pub(crate) fn report(&self, proxy: &str, sessions: Vec<SessionInfo>) {
        if self.store.shared() {
            let (store, proxy, sessions, at) = (self.store.clone(), proxy.to_owned(), sessions.clone(), time::now());
            tokio::spawn(async move {
                let saved = store
                    .call(move |conn| -> Result<(), ControlError> { Ok(reports::save(conn, &proxy, at, &sessions)?) })
                    .await;
                if let Err(e) = saved {
                    tracing::warn!(error = %e, "cannot share a proxy's session report with the other replicas");
                }
            });
        }
        let mut r = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        r.insert(proxy.to_owned(), (Instant::now(), sessions));
    }

    /// Takes the reports other replicas received (from the shared store)
    /// where they are newer than this replica's own.
    fn absorb(&self, found: Vec<(String, UnixMillis, Vec<SessionInfo>)>) {
        let (now, wall) = (Instant::now(), time::now());
        let mut r = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        for (proxy, at, sessions) in found {
            let age = time::duration(wall.saturating_sub(at));
            let Some(made) = now.checked_sub(age) else { continue };
            if r.get(&proxy).is_none_or(|(mine, _)| *mine < made) {
                r.insert(proxy, (made, sessions));
            }
        }
    }

    /// On a shared store: reads every proxy's latest report every second.
    pub(crate) fn spawn_sync(self: &Arc<Self>) {
        if !self.store.shared() {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::replicas::POLL).await;
                let since = time::now().saturating_sub(time::millis(REPORT_TTL));
                let found = this
                    .store
                    .call(move |conn| -> Result<_, ControlError> { Ok(reports::since(conn, since)?) })
                    .await;
                match found {
                    Ok(found) => this.absorb(found),
                    Err(e) => tracing::warn!(error = %e, "cannot read the other replicas' session reports"),
                }
            }
        });
    }

    fn fresh(&self) -> Vec<SessionInfo> {
        let mut r = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        r.retain(|_, (at, _)| at.elapsed() < REPORT_TTL);
        r.values().flat_map(|(_, s)| s.iter().cloned()).collect()
    }
}

impl SessionDirectory for RemoteSessions {
    fn list(&self) -> Vec<SessionInfo> {
        self.fresh()
    }

    fn kill(&self, id: &str, by: &str) -> bool {
        if !self.fresh().iter().any(|s| s.id == id) {
            return false;
        }
        // Every proxy sees it; only the one holding the session acts on it.
        let kill = FeedEvent::KillSession {
            id: id.to_owned(),
            by: by.to_owned(),
        };
        crate::replicas::announce(&self.store, &self.feed, vec![kill]);
        true
    }
}

/// This process's sessions (if it runs a proxy) and those remote proxies report.
pub(crate) struct Sessions {
    /// The in-process proxy's registry (`serve`), or nothing (`control`).
    pub local: Arc<dyn SessionDirectory>,
    /// Reports of remote proxies.
    pub remote: Arc<RemoteSessions>,
}

impl SessionDirectory for Sessions {
    fn list(&self) -> Vec<SessionInfo> {
        let mut all = self.local.list();
        all.extend(self.remote.list());
        all.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        all
    }

    fn kill(&self, id: &str, by: &str) -> bool {
        self.local.kill(id, by) || self.remote.kill(id, by)
    }
}

/// A directory with no sessions: the control plane alone, without a proxy in process.
#[derive(Debug, Default)]
pub struct NoSessions;

impl SessionDirectory for NoSessions {
    fn list(&self) -> Vec<SessionInfo> {
        Vec::new()
    }

    fn kill(&self, _id: &str, _by: &str) -> bool {
        false
    }
}
