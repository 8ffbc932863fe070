//! The `history` table: every transition with who, when, what and why. It is
//! append-only (triggers refuse updates and deletes) and kept forever.

use portcullis_protocol::feed::UnixMillis;
use rusqlite::{Connection, Row, params};
use serde_json::Value;

/// Actor of what Portcullis does on its own (creating `admin` on first
/// start, expiring and escalating requests). Not a valid user name, so it
/// cannot be mistaken for one.
pub(crate) const SYSTEM_ACTOR: &str = "(portcullis)";

/// Actor of an auto-approval: `auto-approve rule N` (N from 1). The space
/// makes it no valid user name either.
pub(crate) fn auto_rule_actor(rule: usize) -> String {
    format!("auto-approve rule {rule}")
}

/// One recorded transition.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    /// When.
    pub at: UnixMillis,
    /// Who: a user name, `SYSTEM_ACTOR` or an auto-approve rule.
    pub actor: String,
    /// What, e.g. `request.approve`.
    pub action: &'static str,
    /// The id or name it concerns.
    pub subject: String,
    /// Why and the details (reason, comment, durations), as JSON.
    pub detail: Value,
}

/// Appends one entry.
pub(crate) fn record(conn: &Connection, e: &Entry) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT INTO history (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![e.at, e.actor, e.action, e.subject, e.detail.to_string()])?;
    Ok(())
}

/// A recorded entry as read back.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Recorded {
    /// When.
    pub at: UnixMillis,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// The id it concerns.
    pub subject: String,
    /// Why and the details.
    pub detail: Value,
}

/// The columns both readers select, `seq, at, actor, action, subject,
/// COALESCE(detail, 'null')`, as a sequence number and an entry.
fn row(r: &Row<'_>) -> rusqlite::Result<(i64, Recorded)> {
    let detail: String = r.get(5)?;
    Ok((
        r.get(0)?,
        Recorded {
            at: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            subject: r.get(4)?,
            detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
        },
    ))
}

/// Every entry about any of `subjects`, in the order they were recorded.
pub(crate) fn of(conn: &Connection, subjects: &[&str]) -> rusqlite::Result<Vec<Recorded>> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at, actor, action, subject, COALESCE(detail, 'null') FROM history WHERE subject = ?1 ORDER BY seq",
    )?;
    for subject in subjects {
        let rows = stmt.query_map([subject], row)?;
        for row in rows {
            out.push(row?);
        }
    }
    out.sort_by_key(|(seq, _)| *seq);
    Ok(out.into_iter().map(|(_, e)| e).collect())
}

/// Up to `limit` entries recorded after sequence number `seq`, in order,
/// each with its own sequence number (the audit shipper's position).
pub(crate) fn after(conn: &Connection, seq: i64, limit: usize) -> rusqlite::Result<Vec<(i64, Recorded)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at, actor, action, subject, COALESCE(detail, 'null') FROM history WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![seq, i64::try_from(limit).unwrap_or(i64::MAX)], row)?;
    rows.collect()
}

/// When entry `seq` was recorded, if there is one.
pub(crate) fn at_of(conn: &Connection, seq: i64) -> rusqlite::Result<Option<UnixMillis>> {
    use rusqlite::OptionalExtension;
    conn.query_row("SELECT at FROM history WHERE seq = ?1", [seq], |r| r.get(0))
        .optional()
}

/// The entries about one subject, oldest first: (actor, action, detail).
#[cfg(test)]
pub(crate) fn about(conn: &Connection, subject: &str) -> rusqlite::Result<Vec<(String, String, Value)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT actor, action, COALESCE(detail, 'null') FROM history WHERE subject = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([subject], |r| {
        let detail: String = r.get(2)?;
        Ok((
            r.get(0)?,
            r.get(1)?,
            serde_json::from_str(&detail).unwrap_or(Value::Null),
        ))
    })?;
    rows.collect()
}
