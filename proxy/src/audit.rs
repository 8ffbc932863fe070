//! The proxy's audit events (connections refused, sessions started and
//! ended) on their way to the audit log, through a bounded queue: when it is
//! full the reporting session waits, and the wait is counted; nothing is
//! dropped.

use std::collections::BTreeMap;

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
    let mut raw = [0u8; 8];
    let _ = getrandom::fill(&mut raw);
    AuditEvent {
        id: format!("evt_{}", raw.iter().map(|b| format!("{b:02x}")).collect::<String>()),
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
