//! The `grants` table. A grant's state is not stored: it follows from its
//! window, its revocation and the clock (`model::Grant::state`).

use portcullis_protocol::feed::{Revocation, UnixMillis};
use rusqlite::{Connection, OptionalExtension, params};

use crate::model::Grant;

/// A grant's columns, with its request's reason, break-glass flag and
/// approvers (an auto-approve rule, which leaves no approval row, is its decider).
const COLUMNS: &str = "g.id, g.request_id, g.user_name, g.resource, g.role, g.starts_at, g.expires_at,
        g.revoked_at, g.revoked_by, g.revoke_reason, r.reason, r.break_glass,
        CASE WHEN r.auto_approved = 1 THEN json_array(r.decided_by)
             ELSE (SELECT json_group_array(approver) FROM
                     (SELECT approver FROM approvals a WHERE a.request_id = g.request_id ORDER BY a.at, a.rowid))
        END";
/// Where `COLUMNS` come from.
const FROM: &str = "FROM grants g JOIN requests r ON r.id = g.request_id";
fn row_to_grant(row: &rusqlite::Row<'_>) -> rusqlite::Result<Grant> {
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
        approvers: serde_json::from_str(&row.get::<_, Option<String>>(12)?.unwrap_or_default()).unwrap_or_default(),
    })
}

/// Inserts a new grant made at `now` (a later start is recorded when it comes).
pub(crate) fn insert(conn: &Connection, g: &Grant, now: UnixMillis) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO grants (id, request_id, user_name, resource, role, starts_at, expires_at,
                             revoked_at, revoked_by, revoke_reason, start_noted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            g.id,
            g.request_id,
            g.user,
            g.resource,
            g.role,
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
pub(crate) fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<Grant>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} {FROM} WHERE g.id = ?1"))?
        .query_row([id], row_to_grant)
        .optional()
}

/// Every grant, oldest start first.
pub(crate) fn list(conn: &Connection) -> rusqlite::Result<Vec<Grant>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} {FROM} ORDER BY g.starts_at, g.rowid"))?;
    let rows = stmt.query_map([], row_to_grant)?;
    rows.collect()
}

/// Grants not revoked whose deadline is after `now`: active and scheduled ones.
pub(crate) fn live(conn: &Connection, now: UnixMillis) -> rusqlite::Result<Vec<Grant>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} {FROM} WHERE g.revoked_at IS NULL AND g.expires_at > ?1 ORDER BY g.starts_at, g.rowid"
    ))?;
    let rows = stmt.query_map([now], row_to_grant)?;
    rows.collect()
}

/// Grants that were still admitting sessions at `since` or later.
pub(crate) fn ended_after(conn: &Connection, since: UnixMillis) -> rusqlite::Result<Vec<Grant>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} {FROM} WHERE g.expires_at >= ?1 AND (g.revoked_at IS NULL OR g.revoked_at >= ?1) ORDER BY g.starts_at, g.rowid"
    ))?;
    let rows = stmt.query_map([since], row_to_grant)?;
    rows.collect()
}

/// Moves a grant's deadline.
pub(crate) fn set_expires(conn: &Connection, id: &str, expires_at: UnixMillis) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE grants SET expires_at = ?2 WHERE id = ?1",
        params![id, expires_at],
    )?;
    Ok(())
}

/// Marks a grant revoked.
pub(crate) fn revoke(conn: &Connection, id: &str, r: &Revocation) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE grants SET revoked_at = ?2, revoked_by = ?3, revoke_reason = ?4 WHERE id = ?1 AND revoked_at IS NULL",
        params![id, r.at, r.by, r.reason],
    )?;
    Ok(())
}

/// Ids of the grants whose request was a break-glass self-grant.
pub(crate) fn break_glass_ids(conn: &Connection) -> rusqlite::Result<std::collections::HashSet<String>> {
    let mut stmt = conn
        .prepare_cached("SELECT g.id FROM grants g JOIN requests r ON r.id = g.request_id WHERE r.break_glass = 1")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
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
pub(crate) fn unnoted(conn: &Connection) -> rusqlite::Result<Vec<Unnoted>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS}, g.expiring_noted_for, g.start_noted {FROM}
             WHERE g.revoked_at IS NULL AND g.expiry_noted = 0 ORDER BY g.expires_at, g.rowid"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok(Unnoted {
            grant: row_to_grant(r)?,
            expiring_noted_for: r.get(13)?,
            start_noted: r.get(14)?,
        })
    })?;
    rows.collect()
}

/// Records that a scheduled grant's start is in history.
pub(crate) fn note_started(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("UPDATE grants SET start_noted = 1 WHERE id = ?1", [id])?;
    Ok(())
}

/// Records that "expiring soon" was noted for the deadline `expires_at`.
pub(crate) fn note_expiring(conn: &Connection, id: &str, expires_at: UnixMillis) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE grants SET expiring_noted_for = ?2 WHERE id = ?1",
        params![id, expires_at],
    )?;
    Ok(())
}

/// Records that the grant's expiry is in history.
pub(crate) fn note_expired(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("UPDATE grants SET expiry_noted = 1 WHERE id = ?1", [id])?;
    Ok(())
}
