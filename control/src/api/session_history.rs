//! `/v1/sessions/history` and `/v1/sessions/{id}/events`: sessions past and
//! live as the audit log tells them (their `session.start` and `session.end`
//! events), and the events of one session (its statements). The same people
//! see them as see live sessions: admins, approvers of the resource, and the
//! session's own user.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Serialize;

use crate::api::AppState;
use crate::api::audit::search_of;
use crate::api::extract::{Caller, Id};
use crate::api::filters::{self, Filters};
use crate::api::views::{AuditEventView, PastSessionView};
use crate::audit::{Scope, SessionSearch};
use crate::error::ApiError;
use crate::model::User;
use crate::time;
use crate::workflow::policy::{approves_any, may_oversee};

/// Parameters of `GET /v1/sessions/history`.
const HISTORY_KEYS: &[&str] = &["user", "resource", "since", "until", "order", "after", "limit"];
/// Parameters of `GET /v1/sessions/{id}/events`.
const EVENT_KEYS: &[&str] = &["action", "grep", "since", "until", "order", "after", "limit"];

/// A page of sessions and the cursor of the next one.
#[derive(Serialize)]
pub(crate) struct SessionPage {
    sessions: Vec<PastSessionView>,
    next: Option<u64>,
}

/// What `me` may see: everything for an admin, else their own sessions and
/// those on resources they approve.
fn scope(state: &AppState, me: &User) -> Option<Scope> {
    if me.admin {
        return None;
    }
    Some(Scope {
        user: me.name.clone(),
        resources: state
            .workflow
            .catalog
            .iter()
            .filter(|r| approves_any(r, me))
            .map(|r| r.name().to_owned())
            .collect(),
    })
}

/// `GET /v1/sessions/history`: sessions that started, oldest first unless
/// `order=newest`, each with how and when it ended (or `state: live`).
pub(crate) async fn history(
    State(state): State<AppState>,
    Caller(me): Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<SessionPage>, ApiError> {
    let f = filters::parse(query.as_deref().unwrap_or_default(), HISTORY_KEYS, time::now())?;
    let limit = f.page()?;
    let search = SessionSearch {
        id: None,
        user: f.user,
        resource: f.resource,
        since: f.since,
        until: f.until,
        visible_to: scope(&state, &me),
        newest_first: f.newest_first,
        after: f.after,
        limit: limit + 1,
    };
    let mut found = state.audit.sessions(search).await?;
    let more = found.len() > limit;
    found.truncate(limit);
    let next = found.last().map(|r| r.seq).filter(|_| more);
    let live: HashMap<String, _> = state.sessions.list().into_iter().map(|s| (s.id.clone(), s)).collect();
    let sessions = found
        .into_iter()
        .map(|r| {
            let info = r.start.session_id.as_ref().and_then(|id| live.get(id));
            PastSessionView::new(r, info)
        })
        .collect();
    Ok(Json(SessionPage { sessions, next }))
}

/// One session and a page of its events.
#[derive(Serialize)]
pub(crate) struct SessionEvents {
    session: PastSessionView,
    events: Vec<AuditEventView>,
    next: Option<u64>,
}

/// `GET /v1/sessions/{id}/events`: the session, and its events oldest first
/// (`action=statement` for its statements only).
pub(crate) async fn events(
    State(state): State<AppState>,
    Caller(me): Caller,
    Id(id): Id,
    RawQuery(query): RawQuery,
) -> Result<Json<SessionEvents>, ApiError> {
    let f = filters::parse(query.as_deref().unwrap_or_default(), EVENT_KEYS, time::now())?;
    let limit = f.page()?;
    let unknown = || ApiError::UnknownSession { id: id.clone() };
    let record = state
        .audit
        .sessions(SessionSearch {
            id: Some(id.clone()),
            limit: 1,
            ..SessionSearch::default()
        })
        .await?
        .into_iter()
        .next()
        .ok_or_else(unknown)?;
    let resource = record.start.resource.as_deref().unwrap_or_default();
    if !may_oversee(state.workflow.catalog.get(resource), &record.start.user, &me) {
        return Err(ApiError::HiddenSession { id });
    }
    let search = search_of(
        Filters {
            session_id: Some(id.clone()),
            ..f
        },
        limit + 1,
    );
    let mut found = state.audit.search(search).await?;
    let more = found.len() > limit;
    found.truncate(limit);
    let next = found.last().map(|(seq, _)| *seq).filter(|_| more);
    let live = state.sessions.list().into_iter().find(|s| s.id == id);
    Ok(Json(SessionEvents {
        session: PastSessionView::new(record, live.as_ref()),
        events: found.into_iter().map(AuditEventView::from).collect(),
        next,
    }))
}
