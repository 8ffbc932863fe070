//! `/v1/audit`: search the audit log a page at a time, export every match
//! as JSON lines, verify the chain. Admins only: the log holds every user's
//! statements and decisions.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use portcullis_protocol::audit::ChainBreak;
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::Caller;
use crate::api::filters::{self, Filters};
use crate::api::views::AuditEventView;
use crate::audit::{AuditLog, Search};
use crate::error::ApiError;
use crate::model::User;
use crate::time;

/// Parameters of `GET /v1/audit` and `GET /v1/audit/export`.
const KEYS: &[&str] = &[
    "user",
    "resource",
    "action",
    "session_id",
    "since",
    "until",
    "grep",
    "order",
    "after",
    "limit",
];
/// Events the export reads from the store at a time: what it holds in memory.
const EXPORT_PAGE: usize = 500;

/// Refuses anyone but an admin.
fn auditor(me: &User) -> Result<(), ApiError> {
    if me.admin {
        Ok(())
    } else {
        Err(ApiError::AdminOnly {
            action: "read the audit log",
        })
    }
}

/// The store search of these filters, `limit` at a time.
pub(crate) fn search_of(f: Filters, limit: usize) -> Search {
    Search {
        user: f.user,
        resource: f.resource,
        action: f.action,
        session_id: f.session_id,
        since: f.since,
        until: f.until,
        grep: f.grep,
        newest_first: f.newest_first,
        after: f.after,
        limit,
    }
}

/// A page of events and the cursor of the next one (`null` after the last).
#[derive(Serialize)]
pub(crate) struct AuditPage {
    events: Vec<AuditEventView>,
    next: Option<u64>,
}

/// `GET /v1/audit`: one page of matching events, oldest first unless `order=newest`.
pub(crate) async fn search(
    State(state): State<AppState>,
    Caller(me): Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditPage>, ApiError> {
    auditor(&me)?;
    let f = filters::parse(query.as_deref().unwrap_or_default(), KEYS, time::now())?;
    let limit = f.page()?;
    // One more than asked says whether there is a next page.
    let mut found = state.audit.search(search_of(f, limit + 1)).await?;
    let more = found.len() > limit;
    found.truncate(limit);
    let next = found.last().map(|(seq, _)| *seq).filter(|_| more);
    Ok(Json(AuditPage {
        events: found.into_iter().map(AuditEventView::from).collect(),
        next,
    }))
}

/// `GET /v1/audit/export`: every matching event, one JSON object per line,
/// read from the store a page at a time while the client keeps up.
pub(crate) async fn export(
    State(state): State<AppState>,
    Caller(me): Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    auditor(&me)?;
    let f = filters::parse(query.as_deref().unwrap_or_default(), KEYS, time::now())?;
    let left = f.limit;
    let export = Export {
        log: state.audit.clone(),
        search: search_of(f, EXPORT_PAGE),
        left,
        done: false,
    };
    let stream = futures_util::stream::unfold(export, Export::next_chunk);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Where an export stands.
struct Export {
    log: AuditLog,
    search: Search,
    /// Events still to send when a `limit` was given.
    left: Option<usize>,
    done: bool,
}

impl Export {
    /// The next page as JSON lines; `None` at the end. A failure ends the
    /// body early, so the client sees a broken transfer, never a short one
    /// that looks whole.
    async fn next_chunk(mut self) -> Option<(Result<Bytes, std::io::Error>, Export)> {
        if self.done || self.left == Some(0) {
            return None;
        }
        let page = self.left.map_or(EXPORT_PAGE, |n| n.min(EXPORT_PAGE));
        self.search.limit = page;
        let found = match self.log.search(self.search.clone()).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "audit export failed");
                self.done = true;
                return Some((Err(std::io::Error::other("the audit log could not be read")), self));
            }
        };
        if found.len() < page {
            self.done = true;
        }
        let (last, _) = found.last()?;
        self.search.after = Some(*last);
        self.left = self.left.map(|n| n.saturating_sub(found.len()));
        let mut lines = Vec::with_capacity(found.len() * 256);
        for event in found {
            // Serializing plain strings and maps cannot fail; a failure would end the body.
            if let Err(e) = serde_json::to_writer(&mut lines, &AuditEventView::from(event)) {
                return Some((Err(std::io::Error::other(e)), self));
            }
            lines.push(b'\n');
        }
        Some((Ok(Bytes::from(lines)), self))
    }
}

/// `GET /v1/audit/verify`: whether the chain is intact, and its first break.
pub(crate) async fn verify(State(state): State<AppState>, Caller(me): Caller) -> Result<Json<Value>, ApiError> {
    auditor(&me)?;
    let verdict = state.audit.verify().await?;
    let broken = match verdict.broken {
        None => Value::Null,
        Some(b) => break_view(&state.audit, b).await?,
    };
    Ok(Json(json!({
        "intact": broken.is_null(),
        "events": verdict.events,
        "checked": verdict.checked,
        "break": broken,
    })))
}

/// The first break: its kind, the sequence number and id of the first event
/// that fails, and the sentence that says what happened.
async fn break_view(log: &AuditLog, b: ChainBreak) -> Result<Value, ApiError> {
    let message = b.to_string();
    Ok(match b {
        ChainBreak::Edited { seq, id } => json!({ "kind": "edited", "seq": seq, "id": id, "message": message }),
        ChainBreak::Relinked { seq, id } => json!({ "kind": "relinked", "seq": seq, "id": id, "message": message }),
        ChainBreak::Missing { expected, found } => {
            // The event after the gap is the first that fails; the missing ones have no id left.
            let after_gap = log
                .search(Search {
                    after: Some(found.saturating_sub(1)),
                    limit: 1,
                    ..Search::default()
                })
                .await?;
            let id = after_gap.into_iter().next().map(|(_, e)| e.id);
            json!({
                "kind": "missing",
                "seq": found,
                "id": id,
                "missing_from": expected,
                "missing_to": found.saturating_sub(1),
                "message": message,
            })
        }
    })
}
