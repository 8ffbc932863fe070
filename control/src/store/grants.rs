//! The `grants` table. A grant's state is not stored: it follows from its
//! window, its revocation and the clock (`model::Grant::state`).

use portcullis_protocol::feed::{Revocation, UnixMillis};
use rusqlite::{Connection, OptionalExtension, params};

use crate::model::Grant;

const SELECT: &str = "SELECT id, request_id, user_name, resource, role, starts_at, expires_at,
        revoked_at, revoked_by, revoke_reason FROM grants";

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
    })
}

/// Inserts a new grant.
pub(crate) fn insert(conn: &Connection, g: &Grant) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO grants (id, request_id, user_name, resource, role, starts_at, expires_at,
                             revoked_at, revoked_by, revoke_reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
            g.revoked.as_ref().and_then(|r| r.reason.as_deref())
        ],
    )?;
    Ok(())
}

/// The grant with this id.
pub(crate) fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<Grant>> {
    conn.prepare_cached(&format!("{SELECT} WHERE id = ?1"))?
        .query_row([id], row_to_grant)
        .optional()
}

/// Every grant, oldest start first.
pub(crate) fn list(conn: &Connection) -> rusqlite::Result<Vec<Grant>> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT} ORDER BY starts_at, rowid"))?;
    let rows = stmt.query_map([], row_to_grant)?;
    rows.collect()
}

/// Grants not revoked whose deadline is after `now`: active and scheduled ones.
pub(crate) fn live(conn: &Connection, now: UnixMillis) -> rusqlite::Result<Vec<Grant>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{SELECT} WHERE revoked_at IS NULL AND expires_at > ?1 ORDER BY starts_at, rowid"
    ))?;
    let rows = stmt.query_map([now], row_to_grant)?;
    rows.collect()
}

/// Grants that were still admitting sessions at `since` or later.
pub(crate) fn ended_after(conn: &Connection, since: UnixMillis) -> rusqlite::Result<Vec<Grant>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{SELECT} WHERE expires_at >= ?1 AND (revoked_at IS NULL OR revoked_at >= ?1) ORDER BY starts_at, rowid"
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
