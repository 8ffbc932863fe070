//! Where staleness is decided: when the proxy last heard from its control
//! plane (a snapshot, a change or a heartbeat) and whether that is too long
//! ago to admit new sessions. Live sessions never consult it: they keep
//! their grants' deadlines by the proxy's own clock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Contact with the control plane. In `serve` the feed is in-process and
/// staleness is off: `refusal` never refuses.
pub struct Contact {
    /// Time zero for `last_ms`.
    base: Instant,
    /// Milliseconds after `base` of the last line from the control plane.
    last_ms: AtomicU64,
    /// Past this silence new sessions are refused; 0 = never.
    staleness_ms: AtomicU64,
    /// Whether a snapshot has been applied since start.
    synced: AtomicBool,
}

impl Default for Contact {
    fn default() -> Self {
        Contact {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            staleness_ms: AtomicU64::new(0),
            synced: AtomicBool::new(false),
        }
    }
}

impl Contact {
    /// Refuse new sessions once the control plane has been silent for longer than `after`.
    pub fn set_staleness(&self, after: Duration) {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
        self.staleness_ms.store(ms, Ordering::Relaxed);
    }

    /// The control plane was heard from just now.
    pub fn heard(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// A snapshot was applied (and the control plane heard from).
    pub fn synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
        self.heard();
    }

    /// Whether a snapshot has been applied since start.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// How long since the last line from the control plane (since start, before any).
    pub fn silent_for(&self) -> Duration {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    /// `Some(silence)` when new sessions must be refused: staleness is on and
    /// the control plane has been silent longer than it, or has never sent
    /// a snapshot (an empty table would only say "no grant").
    pub fn refusal(&self) -> Option<Duration> {
        let limit = self.staleness_ms.load(Ordering::Relaxed);
        if limit == 0 {
            return None;
        }
        let silent = self.silent_for();
        (!self.is_synced() || silent > Duration::from_millis(limit)).then_some(silent)
    }

    /// Why `/readyz` says not ready, if it does.
    pub fn not_ready(&self) -> Option<String> {
        if !self.is_synced() {
            return Some("no snapshot of the grant feed yet: the control plane has not answered".to_owned());
        }
        self.refusal().map(stale_text)
    }
}

/// The sentence a refused client reads (after `portcullis: ` on SSH).
pub fn stale_text(silent: Duration) -> String {
    format!(
        "this gateway has not heard from its control plane for {}s; new sessions are refused until it is back (sessions already open continue until their deadline)",
        silent.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_only_past_the_staleness() {
        let c = Contact::default();
        assert_eq!(c.refusal(), None, "off by default");
        c.set_staleness(Duration::from_millis(500));
        assert!(c.refusal().is_some(), "nothing admitted before the first snapshot");
        c.synced();
        assert_eq!(c.refusal(), None);
        assert_eq!(c.not_ready(), None);
        std::thread::sleep(Duration::from_millis(600));
        let silent = c.refusal().expect("stale");
        assert!(silent >= Duration::from_millis(500), "{silent:?}");
        assert!(
            stale_text(silent).contains(&format!("control plane for {}s;", silent.as_secs())),
            "{}",
            stale_text(silent)
        );
        assert!(c.not_ready().is_some());
        c.heard();
        assert_eq!(c.refusal(), None);
    }
}
