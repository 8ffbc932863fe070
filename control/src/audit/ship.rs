//! The workflow's actions on their way to the audit log: a shipper tails the
//! store's `history` table (every request, approval, denial, grant change,
//! expiry, escalation, break-glass, kill, user) by its sequence number and
//! appends one audit event per entry.
//!
//! Never lost, never twice: the cursor (the last entry shipped) lives in the
//! audit log's own file and moves in the same transaction as the events, so
//! a crash leaves both before or both after a batch; each event's id is
//! derived from its entry (`wf_<seq>_<at>`), so a replay is deduplicated
//! anyway. At start the shipper catches up from the cursor; afterwards a
//! commit wakes it, and a short poll covers writers that do not.
//!
//! History rows commit in sequence order because the store has a single
//! writer connection; a store with concurrent writers would need a gap check.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{DbError, Sql};
use portcullis_protocol::audit::AuditEvent;
use portcullis_protocol::feed::UnixMillis;
use serde_json::Value;
use tokio::sync::Notify;

use super::{AuditLog, Cursor, Source};
use crate::error::ControlError;
use crate::model::{Grant, Request};
use crate::store::history::{self, Recorded};
use crate::store::{Store, grants, requests};

/// The cursor's name in the audit log.
pub(crate) const SOURCE: &str = "workflow";
/// History entries shipped per transaction at most.
const BATCH: usize = 500;
/// How often the shipper looks without being woken.
const POLL: Duration = Duration::from_secs(1);
/// The longest wait between retries after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The id of the audit event made from history entry `seq` recorded at `at`.
/// The time is part of it so a replaced store's entries never pass for
/// ones already shipped.
pub(crate) fn event_id(seq: i64, at: UnixMillis) -> String {
    format!("wf_{seq}_{at}")
}

/// Ships history to the audit log; cheap to clone.
#[derive(Clone)]
pub(crate) struct Shipper {
    store: Store,
    log: AuditLog,
    wake: Arc<Notify>,
    /// One shipment at a time (the loop and a final flush may overlap).
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl Shipper {
    /// A shipper from `store` to `log`, woken by `wake`.
    pub(crate) fn new(store: Store, log: AuditLog, wake: Arc<Notify>) -> Shipper {
        Shipper {
            store,
            log,
            wake,
            turn: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Ships every entry not shipped yet; answers how many events were new.
    pub(crate) async fn catch_up(&self) -> Result<usize, ControlError> {
        let _turn = self.turn.lock().await;
        let mut new = 0;
        loop {
            let (read, written) = self.ship_batch().await?;
            new += written;
            if read < BATCH {
                return Ok(new);
            }
        }
    }

    /// Ships until the process ends: at once, then whenever woken or polled.
    pub(crate) async fn run(self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.catch_up().await {
                Ok(_) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::error!(error = %e, "cannot ship workflow history to the audit log; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// One batch: answers (entries read, events new to the log).
    async fn ship_batch(&self) -> Result<(usize, usize), ControlError> {
        let log = self.log.clone();
        let cursor = tokio::task::spawn_blocking(move || log.cursor_blocking(SOURCE)).await??;
        let batch = self.store.call(move |conn| read_batch(conn, cursor.as_ref())).await?;
        let Some(next) = batch.next else {
            return Ok((0, 0));
        };
        let read = batch.events.len();
        let log = self.log.clone();
        let written = tokio::task::spawn_blocking(move || {
            log.write_blocking(&batch.events, Source::Workflow, Some((SOURCE, &next)))
        })
        .await??;
        Ok((read, written))
    }
}

/// Events made from history entries, and the cursor after them.
pub(crate) struct Batch {
    /// One per entry, in order.
    pub events: Vec<AuditEvent>,
    /// Where the cursor goes; `None`: nothing to write.
    pub next: Option<Cursor>,
}

/// Reads the entries after `cursor` and turns them into events.
pub(crate) fn read_batch(conn: &mut dyn Sql, cursor: Option<&Cursor>) -> Result<Batch, ControlError> {
    let mut from = cursor.map_or(0, |c| c.position);
    let mut restarted = false;
    if let Some(c) = cursor.filter(|c| c.position > 0) {
        let still = history::at_of(conn, c.position)?.map(|at| event_id(c.position, at));
        if still.as_deref() != Some(c.last_id.as_str()) {
            tracing::warn!(
                position = c.position,
                "the store's history does not hold the last entry shipped to the audit log \
                 (was the store replaced or restored?); shipping its history from the start"
            );
            from = 0;
            restarted = true;
        }
    }
    let rows = history::after(conn, from, BATCH)?;
    let events = rows
        .iter()
        .map(|(seq, entry)| to_event(conn, *seq, entry))
        .collect::<Result<Vec<_>, DbError>>()?;
    let next = match rows.last() {
        Some((seq, entry)) => Some(Cursor {
            position: *seq,
            last_id: event_id(*seq, entry.at),
        }),
        // An empty replaced store: remember that it was seen, so the warning is said once.
        None if restarted => Some(Cursor {
            position: 0,
            last_id: String::new(),
        }),
        None => None,
    };
    Ok(Batch { events, next })
}

/// The audit event of history entry `seq`: its actor as `user`, and the
/// resource, role, grant, request, reason and approvers of what it concerns,
/// as they stood when it was recorded (so a late shipment says the same).
pub(crate) fn to_event(conn: &mut dyn Sql, seq: i64, entry: &Recorded) -> Result<AuditEvent, DbError> {
    let mut detail = flatten(&entry.detail);
    let mut event = AuditEvent::new(event_id(seq, entry.at), entry.at, &entry.action, &entry.actor);
    let kind = entry.action.split_once('.').map_or(entry.action.as_str(), |(k, _)| k);
    let (request, grant) = match kind {
        "request" => {
            let req = requests::get(conn, &entry.subject)?;
            // The grant belongs to events from its approval on, not before.
            let grant_id = req
                .as_ref()
                .filter(|r| r.decided_at.is_some_and(|d| d <= entry.at))
                .and_then(|r| r.grant_id.clone());
            event.grant_id = grant_id;
            (req, None)
        }
        "grant" => grant_and_request(conn, Some(&entry.subject))?,
        "session" => {
            event.session_id = Some(entry.subject.clone());
            grant_and_request(conn, detail.get("grant_id").map(String::as_str))?
        }
        _ => (None, None),
    };
    let requester = request.as_ref().map(|r| r.user.clone());
    if let Some(g) = &grant {
        event.grant_id = Some(g.id.clone());
        event.resource = Some(g.resource.clone());
        event.role = Some(g.role.clone());
        event.request_id = Some(g.request_id.clone());
    }
    if let Some(r) = &request {
        event.request_id = Some(r.id.clone());
        event.resource = Some(r.resource.clone());
        event.role = Some(r.role.clone());
        event.reason = r.reason.clone();
        event.approvers = approvers_at(r, entry.at);
    }
    // What the entry itself names fills what no lookup did, and is not repeated.
    for (key, field) in [
        ("resource", &mut event.resource),
        ("role", &mut event.role),
        ("grant_id", &mut event.grant_id),
        ("request_id", &mut event.request_id),
    ] {
        if let Some(v) = detail.remove(key) {
            field.get_or_insert(v);
        }
    }
    if detail.get("reason").is_some_and(|r| Some(r) == event.reason.as_ref()) {
        detail.remove("reason");
    }
    // `user` in history details is whom the action concerns; `user` here is who acted.
    if let Some(whom) = detail.remove("user") {
        let key = if kind == "session" { "session_user" } else { "requester" };
        detail.insert(key.to_owned(), whom);
    }
    if let Some(requester) = requester {
        detail.entry("requester".to_owned()).or_insert(requester);
    }
    detail.insert("subject".to_owned(), entry.subject.clone());
    event.detail = detail;
    Ok(event)
}

/// The grant with this id (if any) and its request.
fn grant_and_request(conn: &mut dyn Sql, id: Option<&str>) -> Result<(Option<Request>, Option<Grant>), DbError> {
    let Some(grant) = id.map(|id| grants::get(conn, id)).transpose()?.flatten() else {
        return Ok((None, None));
    };
    let request = requests::get(conn, &grant.request_id)?;
    Ok((request, Some(grant)))
}

/// Who had approved `req` at `at`: its approvers, and the auto-approve rule
/// that approved it (a rule is no user, but it is who said yes).
fn approvers_at(req: &Request, at: UnixMillis) -> Vec<String> {
    let mut who: Vec<String> = req
        .approvals
        .iter()
        .filter(|a| a.at <= at)
        .map(|a| a.by.clone())
        .collect();
    if req.auto_approved
        && req.decided_at.is_some_and(|d| d <= at)
        && let Some(rule) = &req.decided_by
    {
        who.push(rule.clone());
    }
    who
}

/// A history detail object as audit detail: strings as they are, other
/// values as JSON text, nulls left out.
fn flatten(detail: &Value) -> BTreeMap<String, String> {
    let Value::Object(map) = detail else {
        return BTreeMap::new();
    };
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}
