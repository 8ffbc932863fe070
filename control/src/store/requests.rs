//! The `requests` and `approvals` tables. A request's grant id is not stored
//! twice: it is read from `grants.request_id`.

use portcullis_protocol::feed::{PendingEntry, UnixMillis};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, params};

use crate::model::{Approval, Request, RequestState};

/// The request columns, with the grant id joined in.
const SELECT: &str = "SELECT r.id, r.user_name, r.resource, r.role, r.state, r.reason, r.duration_ms, r.start_at,
        r.created_at, r.decided_at, r.decided_by, r.decision_reason, r.approvals_required, r.auto_approved, g.id,
        r.break_glass, r.escalation_level, r.pending_until
     FROM requests r LEFT JOIN grants g ON g.request_id = r.id";

fn row_to_request(row: &rusqlite::Row<'_>) -> rusqlite::Result<Request> {
    let state: String = row.get(4)?;
    let state = RequestState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(4, Type::Text, format!("unknown request state {state:?}").into())
    })?;
    Ok(Request {
        id: row.get(0)?,
        user: row.get(1)?,
        resource: row.get(2)?,
        role: row.get(3)?,
        state,
        reason: row.get(5)?,
        duration_ms: row.get(6)?,
        start_at: row.get(7)?,
        created_at: row.get(8)?,
        decided_at: row.get(9)?,
        decided_by: row.get(10)?,
        decision_reason: row.get(11)?,
        approvals: Vec::new(),
        approvals_required: row.get(12)?,
        auto_approved: row.get(13)?,
        grant_id: row.get(14)?,
        break_glass: row.get(15)?,
        escalation_level: row.get(16)?,
        pending_until: row.get(17)?,
    })
}

fn approvals(conn: &Connection, id: &str) -> rusqlite::Result<Vec<Approval>> {
    let mut stmt =
        conn.prepare_cached("SELECT approver, comment, at FROM approvals WHERE request_id = ?1 ORDER BY at, rowid")?;
    let rows = stmt.query_map([id], |r| {
        Ok(Approval {
            by: r.get(0)?,
            comment: r.get(1)?,
            at: r.get(2)?,
        })
    })?;
    rows.collect()
}

fn with_approvals(conn: &Connection, mut req: Request) -> rusqlite::Result<Request> {
    req.approvals = approvals(conn, &req.id)?;
    Ok(req)
}

/// Inserts a new request (its approvals, if any, go in with `add_approval`).
pub(crate) fn insert(conn: &Connection, r: &Request) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO requests (id, user_name, resource, role, state, reason, duration_ms, start_at, created_at,
                               decided_at, decided_by, decision_reason, approvals_required, auto_approved,
                               break_glass, pending_until)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
            r.id,
            r.user,
            r.resource,
            r.role,
            r.state.as_str(),
            r.reason,
            r.duration_ms,
            r.start_at,
            r.created_at,
            r.decided_at,
            r.decided_by,
            r.decision_reason,
            r.approvals_required,
            r.auto_approved,
            r.break_glass,
            r.pending_until
        ],
    )?;
    Ok(())
}

/// The request with this id, approvals included.
pub(crate) fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<Request>> {
    let req = conn
        .prepare_cached(&format!("{SELECT} WHERE r.id = ?1"))?
        .query_row([id], row_to_request)
        .optional()?;
    req.map(|r| with_approvals(conn, r)).transpose()
}

/// Pending requests, or all with `all`, oldest first.
pub(crate) fn list(conn: &Connection, all: bool) -> rusqlite::Result<Vec<Request>> {
    let sql = if all {
        format!("{SELECT} ORDER BY r.created_at, r.rowid")
    } else {
        format!("{SELECT} WHERE r.state = 'pending' ORDER BY r.created_at, r.rowid")
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([], row_to_request)?;
    let reqs = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    reqs.into_iter().map(|r| with_approvals(conn, r)).collect()
}

/// Records one approver's approval.
pub(crate) fn add_approval(conn: &Connection, id: &str, a: &Approval) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO approvals (request_id, approver, comment, at) VALUES (?1, ?2, ?3, ?4)",
        params![id, a.by, a.comment, a.at],
    )?;
    Ok(())
}

/// Pending requests, oldest first.
pub(crate) fn pending(conn: &Connection) -> rusqlite::Result<Vec<Request>> {
    list(conn, false)
}

/// Records that a pending request reached escalation step `level`.
pub(crate) fn set_escalation(conn: &Connection, id: &str, level: u32) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE requests SET escalation_level = ?2 WHERE id = ?1 AND state = 'pending'",
        params![id, level],
    )?;
    Ok(())
}

/// Moves a pending request to its final state.
pub(crate) fn decide(
    conn: &Connection,
    id: &str,
    state: RequestState,
    at: UnixMillis,
    by: Option<&str>,
    reason: Option<&str>,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE requests SET state = ?2, decided_at = ?3, decided_by = ?4, decision_reason = ?5
         WHERE id = ?1 AND state = 'pending'",
        params![id, state.as_str(), at, by, reason],
    )?;
    Ok(())
}

/// Every pending request as proxies need it.
pub(crate) fn pending_entries(conn: &Connection) -> rusqlite::Result<Vec<PendingEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, user_name, resource, role FROM requests WHERE state = 'pending' ORDER BY created_at, rowid",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(PendingEntry {
            request_id: r.get(0)?,
            user: r.get(1)?,
            resource: r.get(2)?,
            role: r.get(3)?,
        })
    })?;
    rows.collect()
}
