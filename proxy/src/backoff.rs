//! Backoff for failed logins, per (user name, source address) and per source
//! address: after a few failures a key is locked for a time that doubles with
//! each further failure, so a flood costs the attacker time and everyone else
//! nothing. A user's key is scoped to the address the failures came from, so
//! failing logins as someone locks them out of that address only, never out
//! of every address.

use std::sync::{Mutex, PoisonError};
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
/// Hard bound on tracked keys.
const MAX_KEYS: usize = 100_000;

/// Prefix of the per-user keys callers pass.
const USER_PREFIX: &str = "user:";
/// Prefix of the per-address keys callers pass.
const ADDR_PREFIX: &str = "addr:";

#[derive(Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

impl Record {
    fn locked_at(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }

    /// Counts one more failure at `now`, locking past the free ones.
    fn fail(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last) >= FORGET_AFTER {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.last = now;
        if self.failures >= FREE_FAILURES {
            let doublings = (self.failures - FREE_FAILURES).min(16);
            let lock = BASE_LOCK.saturating_mul(1 << doublings).min(MAX_LOCK);
            self.locked_until = Some(now + lock);
        }
    }
}

/// Failed-login counters. Callers pass `user:NAME` and `addr:IP`; a `user:`
/// key is tracked per address given alongside it (`addr:IP/user:NAME`).
pub struct LoginBackoff {
    keys: DashMap<String, Record>,
    /// Most keys ever tracked at once.
    capacity: usize,
    /// Serialises the insertion of new keys so `capacity` holds exactly.
    admit: Mutex<()>,
}

impl Default for LoginBackoff {
    fn default() -> Self {
        LoginBackoff::with_capacity(MAX_KEYS)
    }
}

impl LoginBackoff {
    /// A backoff tracking at most `capacity` keys.
    pub fn with_capacity(capacity: usize) -> Self {
        LoginBackoff {
            keys: DashMap::new(),
            capacity: capacity.max(1),
            admit: Mutex::new(()),
        }
    }

    /// How many keys are tracked now.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// `Err(wait)` when any of `keys` is locked at `now`.
    pub fn check(&self, keys: &[String], now: Instant) -> Result<(), Duration> {
        let wait = scoped(keys)
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
        for key in scoped(keys) {
            if let Some(mut rec) = self.keys.get_mut(&key) {
                rec.fail(now);
                continue;
            }
            self.track(key, now);
        }
    }

    /// Clears the counters of `keys` after a successful login.
    pub fn success(&self, keys: &[String]) {
        for key in scoped(keys) {
            self.keys.remove(&key);
        }
    }

    /// Starts tracking `key` with one failure, making room first: stale
    /// records go, then the oldest unlocked ones. When every tracked key is
    /// locked, `key` goes untracked rather than evicting a lock an attacker
    /// has earned.
    fn track(&self, key: String, now: Instant) {
        let _admit = self.admit.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut rec) = self.keys.get_mut(&key) {
            rec.fail(now);
            return;
        }
        if self.keys.len() >= self.capacity {
            self.keys
                .retain(|_, r| r.locked_at(now) || now.saturating_duration_since(r.last) < FORGET_AFTER);
        }
        if self.keys.len() >= self.capacity {
            // Evict down to 90% so the sort is paid once per many insertions.
            let target = self.capacity - self.capacity.div_ceil(10);
            let mut unlocked: Vec<(Instant, String)> = self
                .keys
                .iter()
                .filter(|e| !e.value().locked_at(now))
                .map(|e| (e.value().last, e.key().clone()))
                .collect();
            unlocked.sort_unstable();
            let excess = self.keys.len().saturating_sub(target);
            for (_, k) in unlocked.into_iter().take(excess) {
                self.keys.remove(&k);
            }
        }
        if self.keys.len() >= self.capacity {
            return;
        }
        let mut rec = Record {
            failures: 0,
            last: now,
            locked_until: None,
        };
        rec.fail(now);
        self.keys.insert(key, rec);
    }
}

/// The keys tracked for `keys`: every `user:` key is scoped to each `addr:`
/// key beside it, so one address's failures never lock a user elsewhere.
fn scoped(keys: &[String]) -> Vec<String> {
    let addrs: Vec<&String> = keys.iter().filter(|k| k.starts_with(ADDR_PREFIX)).collect();
    let mut out = Vec::with_capacity(keys.len() * addrs.len().max(1));
    for key in keys {
        if key.starts_with(USER_PREFIX) && !addrs.is_empty() {
            // Addresses hold no '/', so the first one splits the pair unambiguously.
            out.extend(addrs.iter().map(|a| format!("{a}/{key}")));
        } else {
            out.push(key.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(user: &str, addr: &str) -> Vec<String> {
        vec![format!("user:{user}"), format!("addr:{addr}")]
    }

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

    #[test]
    fn failing_as_a_user_does_not_lock_them_out_of_other_addresses() {
        let b = LoginBackoff::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            b.failure(&login("alice", "203.0.113.9"), t0);
        }
        assert!(b.check(&login("alice", "203.0.113.9"), t0).is_err());
        assert_eq!(b.check(&login("alice", "10.0.0.7"), t0), Ok(()));
        // Alice logging in from her own address leaves the lock at the attacker's in place.
        b.success(&login("alice", "10.0.0.7"));
        assert!(b.check(&login("alice", "203.0.113.9"), t0).is_err());
    }

    #[test]
    fn many_names_from_one_address_are_still_slowed() {
        let b = LoginBackoff::default();
        let t0 = Instant::now();
        for i in 0..FREE_FAILURES {
            b.failure(&login(&format!("user{i}"), "203.0.113.9"), t0);
        }
        // Each name failed once, but the address is locked for every name.
        assert_eq!(b.check(&login("fresh", "203.0.113.9"), t0), Err(BASE_LOCK));
        assert_eq!(b.check(&login("fresh", "198.51.100.1"), t0), Ok(()));
    }

    #[test]
    fn keys_stay_bounded_and_locks_survive_eviction() {
        let b = LoginBackoff::with_capacity(10);
        let t0 = Instant::now();
        let locked = vec!["addr:203.0.113.9".to_owned()];
        for _ in 0..FREE_FAILURES {
            b.failure(&locked, t0);
        }
        // Fresh (not stale) keys from many addresses, all within FORGET_AFTER.
        for i in 0..1000u32 {
            let t = t0 + Duration::from_millis(u64::from(i));
            b.failure(&login(&format!("u{i}"), &format!("10.0.{}.{}", i / 256, i % 256)), t);
            assert!(b.len() <= 10, "{} keys tracked", b.len());
        }
        assert!(b.check(&locked, t0).is_err(), "an earned lock was evicted");
        // The newest key is tracked: room was made by dropping the oldest.
        assert!(b.keys.contains_key("addr:10.0.3.231"));
    }

    #[test]
    fn full_of_locks_refuses_new_keys_but_keeps_counting_old_ones() {
        let b = LoginBackoff::with_capacity(4);
        let t0 = Instant::now();
        let addrs: Vec<Vec<String>> = (0..4).map(|i| vec![format!("addr:10.0.0.{i}")]).collect();
        for keys in &addrs {
            for _ in 0..FREE_FAILURES {
                b.failure(keys, t0);
            }
        }
        let newcomer = vec!["addr:10.9.9.9".to_owned()];
        for _ in 0..FREE_FAILURES {
            b.failure(&newcomer, t0);
        }
        assert_eq!(b.len(), 4);
        assert!(addrs.iter().all(|k| b.check(k, t0).is_err()));
        b.failure(&addrs[0], t0);
        assert_eq!(b.check(&addrs[0], t0), Err(BASE_LOCK * 2));
        // Once the locks lapse and age out, there is room again.
        let later = t0 + FORGET_AFTER;
        b.failure(&newcomer, later);
        assert!(b.keys.contains_key("addr:10.9.9.9"));
        assert!(b.len() <= 4);
    }
}
