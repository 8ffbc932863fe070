//! Warm upstream connections, kept as PgBouncer's session mode keeps them.
//! When an engineer's session ends cleanly (Terminate, every query answered)
//! its server connection is reset with `DISCARD ALL` and kept for the next
//! session of the same resource, role and startup parameters, which then
//! skips the server's fork and the SCRAM exchange. That session still sees
//! the real backend's BackendKeyData, so cancel and `pg_backend_pid()` stay
//! true; a session that was cut never gives its connection back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::upstream::{Upstream, reset, terminate};

/// How many idle connections to keep, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// Idle connections kept per resource, role and parameters; 0 turns pooling off.
    pub max_idle: usize,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_idle: 10,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// What makes two sessions' server connections interchangeable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The session thread: a connection stays on the reactor it was made on.
    pub worker: usize,
    /// Resource name.
    pub resource: String,
    /// Role name.
    pub role: String,
    /// The client's forwarded startup parameters, sorted: `DISCARD ALL`
    /// resets settings to these, so only equal ones may share.
    pub params: Vec<(String, String)>,
}

struct Idle {
    upstream: Upstream,
    since: Instant,
}

/// Idle server connections by key.
pub struct Pool {
    settings: PoolSettings,
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
}

impl Pool {
    /// An empty pool.
    pub fn new(settings: PoolSettings) -> Pool {
        Pool {
            settings,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// The most recently used live connection for `key`, if any.
    pub fn take(&self, key: &PoolKey) -> Option<Upstream> {
        loop {
            let idle = self.idle.lock().ok()?.get_mut(key)?.pop()?;
            let mut upstream = idle.upstream;
            // A server that closed or spoke while idle (FATAL on shutdown) is dropped.
            if idle.since.elapsed() < self.settings.idle_timeout && upstream.stream.is_quiet() {
                return Some(upstream);
            }
        }
    }

    /// Resets `upstream` and keeps it for the next session of `key`; closes
    /// it instead when the reset fails or the pool for `key` is full.
    pub async fn put(&self, key: PoolKey, mut upstream: Upstream) {
        if self.settings.max_idle == 0 || self.full(&key) {
            terminate(&mut upstream.stream).await;
            return;
        }
        if let Err(e) = reset(&mut upstream.stream).await {
            tracing::debug!(resource = %key.resource, error = %e, "server connection not reused");
            return;
        }
        let rejected = match self.idle.lock() {
            Ok(mut idle) => {
                let list = idle.entry(key).or_default();
                if list.len() < self.settings.max_idle {
                    list.push(Idle {
                        upstream,
                        since: Instant::now(),
                    });
                    None
                } else {
                    Some(upstream)
                }
            }
            Err(_) => Some(upstream),
        };
        if let Some(mut upstream) = rejected {
            terminate(&mut upstream.stream).await;
        }
    }

    fn full(&self, key: &PoolKey) -> bool {
        self.idle
            .lock()
            .map(|idle| idle.get(key).is_some_and(|l| l.len() >= self.settings.max_idle))
            .unwrap_or(true)
    }

    /// How many connections are idle.
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .map(|idle| idle.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Closes `worker`'s connections idle past the timeout; run now and then
    /// on that worker, whose reactor the connections belong to.
    pub async fn sweep(&self, worker: usize) {
        let expired: Vec<Idle> = match self.idle.lock() {
            Ok(mut idle) => {
                let mut expired = Vec::new();
                for (_, list) in idle.iter_mut().filter(|(k, _)| k.worker == worker) {
                    // Oldest first: the expired ones form a prefix.
                    let keep = list
                        .iter()
                        .position(|i| i.since.elapsed() < self.settings.idle_timeout)
                        .unwrap_or(list.len());
                    expired.extend(list.drain(..keep));
                }
                idle.retain(|_, list| !list.is_empty());
                expired
            }
            Err(_) => return,
        };
        for mut idle in expired {
            terminate(&mut idle.upstream.stream).await;
        }
    }
}
