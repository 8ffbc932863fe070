//! The approval workflow: requests, approvals, grants and users, each change
//! made in one store transaction that also records history, then published to
//! the feed before the store is released (so revisions follow commit order).

pub(crate) mod events;
pub(crate) mod expiry;
pub(crate) mod grants;
pub(crate) mod policy;
pub(crate) mod queries;
pub(crate) mod requests;
pub(crate) mod sessions;
pub(crate) mod ssh_keys;
pub(crate) mod users;

use std::sync::Arc;

use crate::store::Tx;
use portcullis_protocol::feed::FeedEvent;
use tokio::sync::Notify;

use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::feed::FeedHub;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::store::Store;

/// The store, the configured resources, the feed and the metrics: all a
/// workflow step needs. Cheap to clone into a blocking store call.
#[derive(Clone)]
pub(crate) struct Workflow {
    /// Where the truth is kept.
    pub store: Store,
    /// Resources and policies.
    pub catalog: Arc<Catalog>,
    /// Where committed changes go.
    pub feed: Arc<FeedHub>,
    /// Counters.
    pub metrics: Metrics,
    /// Wakes the expiry task when a new request may bring its next deadline closer.
    pub expiry: Arc<Notify>,
    /// Wakes the audit shipper when history grew.
    pub audit_wake: Arc<Notify>,
    /// Notification destinations; `emit` queues rows for them.
    pub notify: Arc<Notifier>,
}

impl Workflow {
    /// Commits `tx`, then publishes its feed events while the caller still
    /// holds the store.
    pub(crate) fn commit(&self, tx: Tx<'_>, events: Vec<FeedEvent>) -> Result<(), ApiError> {
        crate::replicas::commit(tx, events, &self.feed)?;
        self.audit_wake.notify_one();
        // The commit may have queued notifications (cheap when it did not).
        self.notify.wake.notify_one();
        self.metrics
            .feed_revision
            .set(i64::try_from(self.feed.revision()).unwrap_or(i64::MAX));
        // The feed mirrors every pending request, so it counts them for free.
        self.metrics
            .pending
            .set(i64::try_from(self.feed.pending_count()).unwrap_or(i64::MAX));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
