//! The `grants` table. A grant's state is not stored: it follows from its
//! window, its revocation and the clock (`model::Grant::state`).

use portcullis_protocol::feed::{Revocation, UnixMillis};

use crate::model::Grant;
use crate::store::db::{Engine, Value};
use crate::store::{DbError, Row, Sql, args};

/// A grant's columns, with its request's reason, break-glass flag and
/// approvers as a JSON array (an auto-approve rule, which leaves no approval
/// row, is its decider).
fn columns(db: &dyn Sql) -> String {
    let (one, all) = match db.engine() {
        Engine::Sqlite => (
            "json_array(r.decided_by)",
            "(SELECT json_group_array(approver) FROM
                 (SELECT approver FROM approvals a WHERE a.request_id = g.request_id ORDER BY a.at, a.rowid))",
        ),
        Engine::Postgres => (
            "json_build_array(r.decided_by)::text",
            "(SELECT json_agg(a.approver ORDER BY a.at, a.rowid)::text FROM approvals a WHERE a.request_id = g.request_id)",
        ),
    };
    format!(
        "g.id, g.request_id, g.user_name, g.resource, g.role, g.starts_at, g.expires_at,
        g.revoked_at, g.revoked_by, g.revoke_reason, r.reason, r.break_glass,
        CASE WHEN r.auto_approved = 1 THEN {one} ELSE {all} END"
    )
}

/// Where `columns` come from.
const FROM: &str = "FROM grants g JOIN requests r ON r.id = g.request_id";

fn row_to_grant(row: &Row) -> Result<Grant, DbError> {
    let revoked_at: Option<UnixMillis> = row.get(7)?;
    let revoked_by: Option<String> = row.get(8)?;
    let revoked = match (revoked_at, revoked_by) {
        (Some(at), Some(by)) => Some(Revocation {
            by,
            reason: row.get(9)?,
            at,
        }),
        _ => None,
    };
    Ok(Grant {
        id: row.get(0)?,
        request_id: row.get(1)?,
        user: row.get(2)?,
        resource: row.get(3)?,
        role: row.get(4)?,
        starts_at: row.get(5)?,
        expires_at: row.get(6)?,
        revoked,
        reason: row.get(10)?,
        break_glass: row.get(11)?,
        approvers: serde_json::from_str(&row.get::<Option<String>>(12)?.unwrap_or_default()).unwrap_or_default(),
    })
}

/// Grants selected by `rest` (a WHERE and ORDER BY over `g` and `r`).
fn select(db: &mut dyn Sql, rest: &str, args: &[Value]) -> Result<Vec<Grant>, DbError> {
    let sql = format!("SELECT {} {FROM} {rest}", columns(db));
    db.query(&sql, args)?.iter().map(row_to_grant).collect()
}

/// Inserts a new grant made at `now` (a later start is recorded when it comes).
pub(crate) fn insert(db: &mut dyn Sql, g: &Grant, now: UnixMillis) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO grants (id, request_id, user_name, resource, role, starts_at, expires_at,
                             revoked_at, revoked_by, revoke_reason, start_noted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        args![
            &g.id,
            &g.request_id,
            &g.user,
            &g.resource,
            &g.role,
            g.starts_at,
            g.expires_at,
            g.revoked.as_ref().map(|r| r.at),
            g.revoked.as_ref().map(|r| r.by.as_str()),
            g.revoked.as_ref().and_then(|r| r.reason.as_deref()),
            g.starts_at <= now
        ],
    )?;
    Ok(())
}

/// The grant with this id.
pub(crate) fn get(db: &mut dyn Sql, id: &str) -> Result<Option<Grant>, DbError> {
    Ok(select(db, "WHERE g.id = ?1", args![id])?.into_iter().next())
}

/// Every grant, oldest start first.
pub(crate) fn list(db: &mut dyn Sql) -> Result<Vec<Grant>, DbError> {
    select(db, "ORDER BY g.starts_at, g.rowid", &[])
}

/// Grants not revoked whose deadline is after `now`: active and scheduled ones.
pub(crate) fn live(db: &mut dyn Sql, now: UnixMillis) -> Result<Vec<Grant>, DbError> {
    select(
        db,
        "WHERE g.revoked_at IS NULL AND g.expires_at > ?1 ORDER BY g.starts_at, g.rowid",
        args![now],
    )
}

/// Grants that were still admitting sessions at `since` or later.
pub(crate) fn ended_after(db: &mut dyn Sql, since: UnixMillis) -> Result<Vec<Grant>, DbError> {
    select(
        db,
        "WHERE g.expires_at >= ?1 AND (g.revoked_at IS NULL OR g.revoked_at >= ?1) ORDER BY g.starts_at, g.rowid",
        args![since],
    )
}

/// Moves a grant's deadline.
pub(crate) fn set_expires(db: &mut dyn Sql, id: &str, expires_at: UnixMillis) -> Result<(), DbError> {
    db.execute("UPDATE grants SET expires_at = ?2 WHERE id = ?1", args![id, expires_at])?;
    Ok(())
}

/// Marks a grant revoked.
pub(crate) fn revoke(db: &mut dyn Sql, id: &str, r: &Revocation) -> Result<(), DbError> {
    db.execute(
        "UPDATE grants SET revoked_at = ?2, revoked_by = ?3, revoke_reason = ?4 WHERE id = ?1 AND revoked_at IS NULL",
        args![id, r.at, &r.by, &r.reason],
    )?;
    Ok(())
}

/// Ids of the grants whose request was a break-glass self-grant.
pub(crate) fn break_glass_ids(db: &mut dyn Sql) -> Result<std::collections::HashSet<String>, DbError> {
    db.query(
        "SELECT g.id FROM grants g JOIN requests r ON r.id = g.request_id WHERE r.break_glass = 1",
        &[],
    )?
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// A grant whose clock events are not all in history yet.
pub(crate) struct Unnoted {
    /// The grant.
    pub grant: Grant,
    /// The deadline an "expiring soon" event was recorded for, if any.
    pub expiring_noted_for: Option<UnixMillis>,
    /// Its start is in history (or it started when it was made).
    pub start_noted: bool,
}

/// Live or just-ended grants whose expiry is not yet in history.
pub(crate) fn unnoted(db: &mut dyn Sql) -> Result<Vec<Unnoted>, DbError> {
    let sql = format!(
        "SELECT {}, g.expiring_noted_for, g.start_noted {FROM}
             WHERE g.revoked_at IS NULL AND g.expiry_noted = 0 ORDER BY g.expires_at, g.rowid",
        columns(db)
    );
    db.query(&sql, &[])?
        .iter()
        .map(|r| {
            Ok(Unnoted {
                grant: row_to_grant(r)?,
                expiring_noted_for: r.get(13)?,
                start_noted: r.get(14)?,
            })
        })
        .collect()
}

/// Records that a scheduled grant's start is in history.
pub(crate) fn note_started(db: &mut dyn Sql, id: &str) -> Result<(), DbError> {
    db.execute("UPDATE grants SET start_noted = 1 WHERE id = ?1", args![id])?;
    Ok(())
}

/// Records that "expiring soon" was noted for the deadline `expires_at`.
pub(crate) fn note_expiring(db: &mut dyn Sql, id: &str, expires_at: UnixMillis) -> Result<(), DbError> {
    db.execute(
        "UPDATE grants SET expiring_noted_for = ?2 WHERE id = ?1",
        args![id, expires_at],
    )?;
    Ok(())
}

/// Records that the grant's expiry is in history.
pub(crate) fn note_expired(db: &mut dyn Sql, id: &str) -> Result<(), DbError> {
    db.execute("UPDATE grants SET expiry_noted = 1 WHERE id = ?1", args![id])?;
    Ok(())
}
