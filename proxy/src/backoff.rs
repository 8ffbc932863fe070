//! Backoff for failed logins, per user name and per source address: after a
//! few failures a key is locked for a time that doubles with each further
//! failure, so a flood costs the attacker time and everyone else nothing.

use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

/// Failures allowed before a key is locked.
const FREE_FAILURES: u32 = 5;
/// First lock; doubles per further failure.
const BASE_LOCK: Duration = Duration::from_secs(1);
/// Longest lock.
const MAX_LOCK: Duration = Duration::from_secs(60);
/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Bound on tracked keys; stale ones are swept past it.
const MAX_KEYS: usize = 100_000;

#[derive(Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Failed-login counters keyed by `user:NAME` and `addr:IP`.
#[derive(Default)]
pub struct LoginBackoff {
    keys: DashMap<String, Record>,
}

impl LoginBackoff {
    /// `Err(wait)` when any of `keys` is locked at `now`.
    pub fn check(&self, keys: &[String], now: Instant) -> Result<(), Duration> {
        let wait = keys
            .iter()
            .filter_map(|k| self.keys.get(k).and_then(|r| r.locked_until))
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        match wait {
            Some(w) => Err(w),
            None => Ok(()),
        }
    }

    /// Records a failed login for each of `keys`.
    pub fn failure(&self, keys: &[String], now: Instant) {
        if self.keys.len() >= MAX_KEYS {
            self.keys.retain(|_, r| now.duration_since(r.last) < FORGET_AFTER);
        }
        for key in keys {
            let mut rec = self.keys.entry(key.clone()).or_insert(Record {
                failures: 0,
                last: now,
                locked_until: None,
            });
            if now.duration_since(rec.last) >= FORGET_AFTER {
                rec.failures = 0;
            }
            rec.failures += 1;
            rec.last = now;
            if rec.failures >= FREE_FAILURES {
                let doublings = (rec.failures - FREE_FAILURES).min(16);
                let lock = BASE_LOCK.saturating_mul(1 << doublings).min(MAX_LOCK);
                rec.locked_until = Some(now + lock);
            }
        }
    }

    /// Clears the counters of `keys` after a successful login.
    pub fn success(&self, keys: &[String]) {
        for key in keys {
            self.keys.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_free_failures_and_doubles() {
        let b = LoginBackoff::default();
        let keys = vec!["user:alice".to_owned()];
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            b.failure(&keys, t0);
        }
        assert!(b.check(&keys, t0).is_ok());
        b.failure(&keys, t0);
        assert_eq!(b.check(&keys, t0), Err(BASE_LOCK));
        b.failure(&keys, t0);
        assert_eq!(b.check(&keys, t0), Err(BASE_LOCK * 2));
        assert!(b.check(&keys, t0 + BASE_LOCK * 2).is_ok());
        b.success(&keys);
        assert!(b.check(&keys, t0).is_ok());
    }

    #[test]
    fn other_keys_are_untouched() {
        let b = LoginBackoff::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            b.failure(&["addr:10.0.0.1".to_owned()], t0);
        }
        assert!(
            b.check(&["addr:127.0.0.1".to_owned(), "user:bob".to_owned()], t0)
                .is_ok()
        );
    }
}
