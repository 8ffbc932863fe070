//! The session registry: every live session, its byte counters and the token
//! that ends it. Implements the control plane's `SessionDirectory` seam.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use dashmap::DashMap;
use portcullis_protocol::sessions::{SessionDirectory, SessionInfo};
use tokio_util::sync::CancellationToken;

use crate::metrics::ProxyMetrics;

/// Shared state of one live session.
#[derive(Debug)]
pub struct SessionHandle {
    /// Static description (bytes fields are filled from the counters on read).
    pub info: SessionInfo,
    /// Bytes from the client so far.
    pub bytes_in: AtomicU64,
    /// Bytes to the client so far.
    pub bytes_out: AtomicU64,
    /// Cancelled by `kill`.
    pub kill: CancellationToken,
    /// Who killed it, for the FATAL text.
    pub killed_by: Mutex<Option<String>>,
    /// Why the statement audit stopped following it, when it did.
    pub audit_lost: OnceLock<String>,
}

impl SessionHandle {
    /// Who asked for the kill, once `kill` is cancelled.
    pub fn killed_by(&self) -> String {
        self.killed_by
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_else(|| "an operator".to_owned())
    }

    /// Cuts the session because its audit stopped following it (`why`):
    /// it must not go on unrecorded.
    pub fn cut_for_audit(&self, why: String) {
        let _ = self.audit_lost.set(why);
        self.kill.cancel();
    }
}

/// All live sessions of this proxy.
pub struct SessionRegistry {
    live: DashMap<String, Arc<SessionHandle>>,
    metrics: ProxyMetrics,
    /// Signalled when a session starts or ends (the split proxy reports its list then).
    changed: tokio::sync::Notify,
}

/// Removes the session from the registry when dropped, however the session ends.
pub struct Registration {
    registry: Arc<SessionRegistry>,
    /// The session's shared state.
    pub handle: Arc<SessionHandle>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let info = &self.handle.info;
        self.registry.live.remove(&info.id);
        self.registry.changed.notify_one();
        let m = &self.registry.metrics;
        m.sessions_active.with_label_values(&[&info.protocol]).dec();
        m.bytes
            .with_label_values(&[&info.protocol, "in"])
            .inc_by(self.handle.bytes_in.load(Ordering::Relaxed));
        m.bytes
            .with_label_values(&[&info.protocol, "out"])
            .inc_by(self.handle.bytes_out.load(Ordering::Relaxed));
    }
}

impl SessionRegistry {
    /// An empty registry.
    pub fn new(metrics: ProxyMetrics) -> Self {
        SessionRegistry {
            live: DashMap::new(),
            metrics,
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Adds a session; it leaves the registry when the returned guard drops.
    pub fn register(self: &Arc<Self>, info: SessionInfo, parent: &CancellationToken) -> Registration {
        self.metrics.sessions_active.with_label_values(&[&info.protocol]).inc();
        let handle = Arc::new(SessionHandle {
            info,
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            kill: parent.child_token(),
            killed_by: Mutex::new(None),
            audit_lost: OnceLock::new(),
        });
        self.live.insert(handle.info.id.clone(), Arc::clone(&handle));
        self.changed.notify_one();
        Registration {
            registry: Arc::clone(self),
            handle,
        }
    }

    /// Completes after a session started or ended (a permit is kept if nobody waits).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

impl SessionDirectory for SessionRegistry {
    fn list(&self) -> Vec<SessionInfo> {
        let mut all: Vec<SessionInfo> = self
            .live
            .iter()
            .map(|h| {
                let mut info = h.info.clone();
                info.bytes_in = h.bytes_in.load(Ordering::Relaxed);
                info.bytes_out = h.bytes_out.load(Ordering::Relaxed);
                info
            })
            .collect();
        all.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        all
    }

    fn kill(&self, id: &str, by: &str) -> bool {
        let Some(handle) = self.live.get(id).map(|h| Arc::clone(&h)) else {
            return false;
        };
        if let Ok(mut who) = handle.killed_by.lock() {
            *who = Some(by.to_owned());
        }
        handle.kill.cancel();
        true
    }
}
