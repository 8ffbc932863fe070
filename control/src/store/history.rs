//! The `history` table: every transition with who, when, what and why. It is
//! append-only (triggers refuse updates and deletes) and kept forever.

use portcullis_protocol::feed::UnixMillis;
use serde_json::Value;

use crate::store::db::Tx;
use crate::store::{DbError, Row, Sql, args};

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

/// Appends one entry, in a write transaction (`Conn::transaction`): the
/// audit shipper reads history in number order, and an entry numbered
/// after one a writer has not committed yet would make it skip that one.
pub(crate) fn record(db: &mut Tx<'_>, e: &Entry) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO history (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![e.at, &e.actor, e.action, &e.subject, e.detail.to_string()],
    )?;
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
fn row(r: &Row) -> Result<(i64, Recorded), DbError> {
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
pub(crate) fn of(db: &mut dyn Sql, subjects: &[&str]) -> Result<Vec<Recorded>, DbError> {
    let mut out = Vec::new();
    for subject in subjects {
        let rows = db.query(
            "SELECT seq, at, actor, action, subject, COALESCE(detail, 'null') FROM history WHERE subject = ?1 ORDER BY seq",
            args![*subject],
        )?;
        for r in &rows {
            out.push(row(r)?);
        }
    }
    out.sort_by_key(|(seq, _)| *seq);
    Ok(out.into_iter().map(|(_, e)| e).collect())
}

/// Up to `limit` entries recorded after sequence number `seq`, in order,
/// each with its own sequence number (the audit shipper's position).
pub(crate) fn after(db: &mut dyn Sql, seq: i64, limit: usize) -> Result<Vec<(i64, Recorded)>, DbError> {
    db.query(
        "SELECT seq, at, actor, action, subject, COALESCE(detail, 'null') FROM history WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        args![seq, limit],
    )?
    .iter()
    .map(row)
    .collect()
}

/// When entry `seq` was recorded, if there is one.
pub(crate) fn at_of(db: &mut dyn Sql, seq: i64) -> Result<Option<UnixMillis>, DbError> {
    db.query_opt("SELECT at FROM history WHERE seq = ?1", args![seq])?
        .map(|r| r.get(0))
        .transpose()
}

/// The entries about one subject, oldest first: (actor, action, detail).
#[cfg(test)]
pub(crate) fn about(db: &mut dyn Sql, subject: &str) -> Result<Vec<(String, String, Value)>, DbError> {
    db.query(
        "SELECT actor, action, COALESCE(detail, 'null') FROM history WHERE subject = ?1 ORDER BY seq",
        args![subject],
    )?
    .iter()
    .map(|r| {
        let detail: String = r.get(2)?;
        Ok((
            r.get(0)?,
            r.get(1)?,
            serde_json::from_str(&detail).unwrap_or(Value::Null),
        ))
    })
    .collect()
}
