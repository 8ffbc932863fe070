//! The proxy's audit events (connections refused, sessions started and
//! ended) on their way to the audit log, through a bounded queue: when it is
//! full the reporting session waits, and the wait is counted; nothing is
//! dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use portcullis_protocol::audit::AuditEvent;
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::clock::now_millis;

/// Where the proxy's audit events go.
pub struct AuditQueue {
    tx: Option<mpsc::Sender<AuditEvent>>,
    waits: IntCounter,
}

impl AuditQueue {
    /// A queue into `tx`; `None` records nothing (a proxy without an audit log).
    pub fn new(tx: Option<mpsc::Sender<AuditEvent>>, waits: IntCounter) -> AuditQueue {
        AuditQueue { tx, waits }
    }

    /// Queues `event`, waiting for room when the queue is full.
    pub async fn record(&self, event: AuditEvent) {
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                self.waits.inc();
                let _ = tx.send(event).await;
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }
}

/// A new event of `action` by `user`, now, with a fresh id.
pub fn event(action: &str, user: &str) -> AuditEvent {
    // Ids must never repeat (the log keeps one event per id): without
    // randomness, fall back to the clock and a counter.
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let id = crate::random::hex(8)
        .unwrap_or_else(|_| format!("{:x}-{:x}", now_millis(), FALLBACK.fetch_add(1, Ordering::Relaxed)));
    AuditEvent {
        id: format!("evt_{id}"),
        at: now_millis(),
        action: action.to_owned(),
        user: user.to_owned(),
        resource: None,
        role: None,
        session_id: None,
        grant_id: None,
        request_id: None,
        reason: None,
        approvers: Vec::new(),
        detail: BTreeMap::new(),
    }
}
