//! The sender: delivers due outbox rows, several at once, each attempt
//! bounded by the configured timeout, and a few at most per destination, so
//! a receiver that hangs holds only its own slots, for that long, and other
//! destinations keep theirs. A failed attempt is retried after a
//! doubling wait kept in the row (`attempts`, `next_attempt_at`); after
//! `max_attempts` the row is marked failed, logged and counted. Rows stay in
//! the store until delivered, so a restart loses none (and may repeat one
//! whose success was not yet recorded: receivers dedupe by `Idempotency-Key`).
//! Each row taken is claimed in the store for as long as its attempt may
//! last, so of several control replicas sharing a store only one delivers
//! it; should that one die, another takes the row once the claim lapses.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use portcullis_protocol::feed::UnixMillis;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::ControlError;
use crate::notify::outbox::{self, Row};
use crate::notify::{Notifier, Target, slack, webhook};
use crate::time;
use crate::workflow::Workflow;

/// Deliveries in flight at once.
const MAX_IN_FLIGHT: usize = 16;
/// Deliveries in flight at once to one destination: a hanging one cannot take every slot.
const PER_DESTINATION: usize = 4;
/// Longest sleep when nothing is due (a safety net, not a tick).
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Wait before trying the store again after an error.
const STORE_RETRY: Duration = Duration::from_secs(5);
/// How often delivered and failed rows are purged.
const PURGE_EVERY: i64 = 3_600_000;
/// Delivered rows are kept this long (for operators' inspection), failed ones longer.
const KEEP_SENT: i64 = 7 * 86_400_000;
const KEEP_FAILED: i64 = 30 * 86_400_000;

/// What one store pass found.
struct Pass {
    rows: Vec<Row>,
    next: Option<UnixMillis>,
    depth: i64,
}

impl Workflow {
    /// Delivers the outbox until `shutdown`; rows in flight then stay pending.
    pub(crate) async fn run_sender(self, shutdown: CancellationToken) {
        let notify = Arc::clone(&self.notify);
        let mut in_flight: JoinSet<()> = JoinSet::new();
        // Deliveries in flight: their row id and destination.
        let mut busy: HashMap<tokio::task::Id, (String, String)> = HashMap::new();
        let mut last_purge = 0;
        let longest = crate::replicas::longest_sleep(&self.store, MAX_WAIT);
        loop {
            let now = time::now();
            let wait = match self.claim(now, &busy).await {
                Ok(pass) => {
                    self.metrics.outbox_depth.set(pass.depth);
                    for row in pass.rows {
                        let key = (row.id.clone(), row.destination.clone());
                        let handle = in_flight.spawn(self.clone().deliver(row));
                        busy.insert(handle.id(), key);
                    }
                    if busy.len() >= MAX_IN_FLIGHT {
                        longest
                    } else {
                        pass.next
                            .map_or(longest, |t| time::duration(t.saturating_sub(time::now())))
                            .min(longest)
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the notification outbox failed; retrying");
                    STORE_RETRY
                }
            };
            if now.saturating_sub(last_purge) >= PURGE_EVERY {
                last_purge = now;
                self.purge(now).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(done) = in_flight.join_next_with_id() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => e.id(),
                    };
                    busy.remove(&id);
                }
                () = tokio::time::sleep(wait) => {}
                () = notify.wake.notified() => {}
            }
        }
    }

    /// Due rows not in flight (as many as there is room for, overall and per
    /// destination), when the next one there is room for is due, and the depth.
    async fn claim(
        &self,
        now: UnixMillis,
        busy: &HashMap<tokio::task::Id, (String, String)>,
    ) -> Result<Pass, ControlError> {
        let room = MAX_IN_FLIGHT.saturating_sub(busy.len());
        let mut taken: HashSet<String> = HashSet::new();
        let mut load: HashMap<String, usize> = HashMap::new();
        for (id, destination) in busy.values() {
            taken.insert(id.clone());
            *load.entry(destination.clone()).or_default() += 1;
        }
        // However long an attempt may take, and some: the claim outlives it.
        let claim = time::millis(self.notify.timeout * 2 + Duration::from_secs(5));
        self.store
            .call(move |conn| -> Result<Pass, ControlError> {
                let has_room =
                    |load: &HashMap<String, usize>, d: &str| load.get(d).copied().unwrap_or(0) < PER_DESTINATION;
                let mut tx = conn.transaction()?;
                let rows = outbox::due(&mut tx, now, room, |r| {
                    if taken.contains(&r.id) || !has_room(&load, &r.destination) {
                        return false;
                    }
                    *load.entry(r.destination.clone()).or_default() += 1;
                    true
                })?;
                for row in &rows {
                    outbox::claim(&mut tx, &row.id, now.saturating_add(claim))?;
                }
                taken.extend(rows.iter().map(|r| r.id.clone()));
                // A destination without room wakes the loop when one of its deliveries ends.
                let next = outbox::next_due(&mut tx, |id, d| !taken.contains(id) && has_room(&load, d))?;
                let depth = outbox::depth(&mut tx)?;
                tx.commit()?;
                Ok(Pass { rows, next, depth })
            })
            .await
    }

    async fn purge(&self, now: UnixMillis) {
        let purged = self
            .store
            .call(move |conn| -> Result<u64, ControlError> {
                Ok(outbox::purge(conn, now - KEEP_SENT, now - KEEP_FAILED)?)
            })
            .await;
        match purged {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "purged finished notifications"),
            Err(e) => tracing::warn!(error = %e, "purging the notification outbox failed"),
        }
    }

    /// One attempt at one row, and its outcome recorded.
    async fn deliver(self, row: Row) {
        let notify = &self.notify;
        let attempt = row.attempts.saturating_add(1);
        let kind = row.destination.split(':').next().unwrap_or("unknown").to_owned();
        let result = match notify.destination(&row.destination) {
            None => Err(Failure::Permanent("its destination is no longer configured".to_owned())),
            // The whole attempt is bounded, whatever reqwest's own timeouts do.
            Some(_) => {
                match tokio::time::timeout(notify.timeout + Duration::from_secs(1), attempt_once(notify, &row)).await {
                    Ok(r) => r,
                    Err(_) => Err(Failure::Retry(format!("timed out after {:?}", notify.timeout))),
                }
            }
        };
        let now = time::now();
        let id = row.id.clone();
        let (label, recorded) = match result {
            Ok(()) => {
                self.metrics.notifications_sent.with_label_values(&[&kind]).inc();
                tracing::debug!(notification = %row.id, destination = %row.destination, event = %row.event, attempt, "notification delivered");
                (
                    "sent",
                    self.store
                        .call(move |c| outbox::mark_sent(c, &id, attempt, now).map_err(ControlError::from))
                        .await,
                )
            }
            Err(Failure::Retry(why)) if attempt < notify.max_attempts => {
                let next = now.saturating_add(time::millis(notify.retry_after(attempt)));
                self.metrics.notifications_retried.with_label_values(&[&kind]).inc();
                tracing::info!(
                    notification = %row.id, destination = %row.destination, event = %row.event, attempt,
                    retry_in_ms = next - now, error = %why, "notification not delivered; will retry"
                );
                (
                    "retry",
                    self.store
                        .call(move |c| outbox::mark_retry(c, &id, attempt, next, &why).map_err(ControlError::from))
                        .await,
                )
            }
            Err(Failure::Retry(why) | Failure::Permanent(why)) => {
                self.metrics.notifications_failed.with_label_values(&[&kind]).inc();
                tracing::warn!(
                    notification = %row.id, destination = %row.destination, event = %row.event, attempts = attempt,
                    error = %why, "notification given up"
                );
                (
                    "failed",
                    self.store
                        .call(move |c| outbox::mark_failed(c, &id, attempt, &why, now).map_err(ControlError::from))
                        .await,
                )
            }
        };
        if let Err(e) = recorded {
            // The row stays pending as it was: it is tried again, with the same idempotency key.
            tracing::warn!(notification = %row.id, outcome = label, error = %e, "recording a notification attempt failed");
        }
    }
}

/// Why an attempt failed.
enum Failure {
    /// Worth another attempt (a timeout, a refused connection, an HTTP error).
    Retry(String),
    /// Never going to work.
    Permanent(String),
}

/// POSTs the row to its destination; `Ok` on a 2xx answer. Error texts name
/// no URL (Slack's carry a secret) and never the body.
async fn attempt_once(notify: &Notifier, row: &Row) -> Result<(), Failure> {
    let Some(dest) = notify.destination(&row.destination) else {
        return Err(Failure::Permanent("its destination is no longer configured".to_owned()));
    };
    let request = match &dest.target {
        Target::Webhook { secret } => {
            let timestamp = time::now() / 1000;
            webhook::request(
                &notify.http,
                dest.url.expose(),
                secret.expose().as_bytes(),
                &row.id,
                &row.event,
                row.body.clone(),
                timestamp,
            )
        }
        Target::Slack => {
            let doc: Value = serde_json::from_str(&row.body)
                .map_err(|e| Failure::Permanent(format!("the stored document is not JSON: {e}")))?;
            notify.http.post(dest.url.expose()).json(&slack::message(
                &doc,
                notify.chat.as_ref(),
                &notify.slack_mentions,
            ))
        }
    };
    let response = request.send().await.map_err(|e| {
        let e = e.without_url();
        Failure::Retry(if e.is_timeout() {
            format!("timed out after {:?}", notify.timeout)
        } else if e.is_connect() {
            format!("cannot connect: {e}")
        } else {
            e.to_string()
        })
    })?;
    let status = response.status();
    // The answer's body is never read: a receiver cannot make us buffer it.
    drop(response);
    if status.is_success() {
        Ok(())
    } else {
        Err(Failure::Retry(format!(
            "the receiver answered HTTP {}",
            status.as_u16()
        )))
    }
}
