//! The `requests` and `approvals` tables. A request's grant id is not stored
//! twice: it is read from `grants.request_id`.

use portcullis_protocol::feed::{PendingEntry, UnixMillis};

use crate::model::{Approval, Request, RequestState};
use crate::store::{DbError, Row, Sql, args};

/// The request columns, with the grant id joined in.
const SELECT: &str = "SELECT r.id, r.user_name, r.resource, r.role, r.state, r.reason, r.duration_ms, r.start_at,
        r.created_at, r.decided_at, r.decided_by, r.decision_reason, r.approvals_required, r.auto_approved, g.id,
        r.break_glass, r.escalation_level, r.pending_until
     FROM requests r LEFT JOIN grants g ON g.request_id = r.id";

fn row_to_request(row: &Row) -> Result<Request, DbError> {
    let state: String = row.get(4)?;
    let state =
        RequestState::parse(&state).ok_or_else(|| DbError::Invalid(format!("unknown request state {state:?}")))?;
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

fn approvals(db: &mut dyn Sql, id: &str) -> Result<Vec<Approval>, DbError> {
    db.query(
        "SELECT approver, comment, at FROM approvals WHERE request_id = ?1 ORDER BY at, rowid",
        args![id],
    )?
    .iter()
    .map(|r| {
        Ok(Approval {
            by: r.get(0)?,
            comment: r.get(1)?,
            at: r.get(2)?,
        })
    })
    .collect()
}

fn with_approvals(db: &mut dyn Sql, mut req: Request) -> Result<Request, DbError> {
    req.approvals = approvals(db, &req.id)?;
    Ok(req)
}

/// Inserts a new request (its approvals, if any, go in with `add_approval`).
pub(crate) fn insert(db: &mut dyn Sql, r: &Request) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO requests (id, user_name, resource, role, state, reason, duration_ms, start_at, created_at,
                               decided_at, decided_by, decision_reason, approvals_required, auto_approved,
                               break_glass, pending_until)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        args![
            &r.id,
            &r.user,
            &r.resource,
            &r.role,
            r.state.as_str(),
            &r.reason,
            r.duration_ms,
            r.start_at,
            r.created_at,
            r.decided_at,
            &r.decided_by,
            &r.decision_reason,
            r.approvals_required,
            r.auto_approved,
            r.break_glass,
            r.pending_until
        ],
    )?;
    Ok(())
}

/// The request with this id, approvals included.
pub(crate) fn get(db: &mut dyn Sql, id: &str) -> Result<Option<Request>, DbError> {
    let req = db
        .query_opt(&format!("{SELECT} WHERE r.id = ?1"), args![id])?
        .map(|r| row_to_request(&r))
        .transpose()?;
    req.map(|r| with_approvals(db, r)).transpose()
}

/// Pending requests, or all with `all`, oldest first.
pub(crate) fn list(db: &mut dyn Sql, all: bool) -> Result<Vec<Request>, DbError> {
    let sql = if all {
        format!("{SELECT} ORDER BY r.created_at, r.rowid")
    } else {
        format!("{SELECT} WHERE r.state = 'pending' ORDER BY r.created_at, r.rowid")
    };
    let reqs = db
        .query(&sql, &[])?
        .iter()
        .map(row_to_request)
        .collect::<Result<Vec<_>, _>>()?;
    reqs.into_iter().map(|r| with_approvals(db, r)).collect()
}

/// Records one approver's approval.
pub(crate) fn add_approval(db: &mut dyn Sql, id: &str, a: &Approval) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO approvals (request_id, approver, comment, at) VALUES (?1, ?2, ?3, ?4)",
        args![id, &a.by, &a.comment, a.at],
    )?;
    Ok(())
}

/// Pending requests, oldest first.
pub(crate) fn pending(db: &mut dyn Sql) -> Result<Vec<Request>, DbError> {
    list(db, false)
}

/// Records that a pending request reached escalation step `level`.
pub(crate) fn set_escalation(db: &mut dyn Sql, id: &str, level: u32) -> Result<(), DbError> {
    db.execute(
        "UPDATE requests SET escalation_level = ?2 WHERE id = ?1 AND state = 'pending'",
        args![id, level],
    )?;
    Ok(())
}

/// Moves a pending request to its final state.
pub(crate) fn decide(
    db: &mut dyn Sql,
    id: &str,
    state: RequestState,
    at: UnixMillis,
    by: Option<&str>,
    reason: Option<&str>,
) -> Result<(), DbError> {
    db.execute(
        "UPDATE requests SET state = ?2, decided_at = ?3, decided_by = ?4, decision_reason = ?5
         WHERE id = ?1 AND state = 'pending'",
        args![id, state.as_str(), at, by, reason],
    )?;
    Ok(())
}

/// Every pending request as proxies need it.
pub(crate) fn pending_entries(db: &mut dyn Sql) -> Result<Vec<PendingEntry>, DbError> {
    db.query(
        "SELECT id, user_name, resource, role, reason FROM requests WHERE state = 'pending' ORDER BY created_at, rowid",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok(PendingEntry {
            request_id: r.get(0)?,
            user: r.get(1)?,
            resource: r.get(2)?,
            role: r.get(3)?,
            reason: r.get(4)?,
        })
    })
    .collect()
}
