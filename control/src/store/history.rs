//! The `history` table: every transition with who, when, what and why. It is
//! append-only (triggers refuse updates and deletes) and kept forever.

use portcullis_protocol::feed::UnixMillis;
use rusqlite::{Connection, params};
use serde_json::Value;

/// Actor of transitions no person made (auto-approval). Not a valid user
/// name, so it cannot be mistaken for one.
pub(crate) const POLICY_ACTOR: &str = "(policy)";

/// Actor of what Portcullis does on its own (creating `admin` on first start).
pub(crate) const SYSTEM_ACTOR: &str = "(portcullis)";

/// One recorded transition.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    /// When.
    pub at: UnixMillis,
    /// Who: a user name, or `POLICY_ACTOR`.
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
