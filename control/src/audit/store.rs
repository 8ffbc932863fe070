//! The audit log's SQLite file: one table of chained events, indexes for
//! the searches the API and CLI offer.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use portcullis_protocol::audit::{AuditEvent, ChainCheck, GENESIS, link};
use portcullis_protocol::feed::UnixMillis;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{AuditError, Verdict};

const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = "
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    at         INTEGER NOT NULL,
    action     TEXT NOT NULL,
    user_name  TEXT NOT NULL,
    resource   TEXT,
    role       TEXT,
    session_id TEXT,
    grant_id   TEXT,
    request_id TEXT,
    reason     TEXT,
    approvers  TEXT NOT NULL,
    detail     TEXT NOT NULL,
    prev       BLOB NOT NULL,
    hash       BLOB NOT NULL
);
CREATE INDEX events_at ON events (at);
CREATE INDEX events_user ON events (user_name, at);
CREATE INDEX events_resource ON events (resource, at);
CREATE INDEX events_session ON events (session_id);
";

const COLUMNS: &str = "seq, id, at, action, user_name, resource, role, session_id, grant_id, request_id, reason, approvers, detail, prev, hash";

/// What to look for; every field narrows the search.
#[derive(Clone, Debug, Default)]
pub struct Search {
    /// Events of this user.
    pub user: Option<String>,
    /// On this resource.
    pub resource: Option<String>,
    /// Of this action (`statement`, `session.end`, ...).
    pub action: Option<String>,
    /// Of this session.
    pub session_id: Option<String>,
    /// At or after.
    pub since: Option<UnixMillis>,
    /// Before.
    pub until: Option<UnixMillis>,
    /// Text in the details or the reason, case-insensitive.
    pub grep: Option<String>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
    /// Continue after this sequence number (in the chosen order).
    pub after: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

pub(super) fn open(path: &Path) -> Result<Connection, AuditError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == 0 {
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))?;
    }
    Ok(conn)
}

pub(super) fn append(conn: &mut Connection, key: &[u8; 32], events: &[AuditEvent]) -> Result<usize, AuditError> {
    let tx = conn.transaction()?;
    let last: Option<(i64, Vec<u8>)> = tx
        .query_row("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let (mut seq, mut prev) = match last {
        Some((seq, hash)) => (seq_of(seq), to_hash(seq_of(seq), &hash)?),
        None => (0u64, GENESIS),
    };
    let mut new = 0;
    {
        let mut exists = tx.prepare_cached("SELECT 1 FROM events WHERE id = ?1")?;
        let mut insert = tx.prepare_cached(&format!(
            "INSERT INTO events ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
        ))?;
        for e in events {
            // At least once from the sender, exactly once here.
            if exists.exists([&e.id])? {
                continue;
            }
            seq += 1;
            let hash = link(key, seq, &prev, e);
            let approvers = serde_json::to_string(&e.approvers).unwrap_or_else(|_| "[]".into());
            let detail = serde_json::to_string(&e.detail).unwrap_or_else(|_| "{}".into());
            insert.execute(params![
                seq as i64,
                e.id,
                e.at,
                e.action,
                e.user,
                e.resource,
                e.role,
                e.session_id,
                e.grant_id,
                e.request_id,
                e.reason,
                approvers,
                detail,
                &prev[..],
                &hash[..],
            ])?;
            prev = hash;
            new += 1;
        }
    }
    tx.commit()?;
    Ok(new)
}

/// SQLite integers are signed; a negative sequence number (only ever made
/// by hand) reads as 0, which no chain accepts.
fn seq_of(stored: i64) -> u64 {
    u64::try_from(stored).unwrap_or(0)
}

fn to_hash(seq: u64, bytes: &[u8]) -> Result<[u8; 32], AuditError> {
    bytes.try_into().map_err(|_| AuditError::Corrupt {
        seq,
        detail: format!("a link of {} bytes", bytes.len()),
    })
}

/// A stored row: sequence number, event, previous link, own link.
type Stored = (u64, AuditEvent, Vec<u8>, Vec<u8>);

fn row(r: &Row<'_>) -> rusqlite::Result<Stored> {
    let seq = seq_of(r.get(0)?);
    let json = |i: usize| -> rusqlite::Result<String> { r.get(i) };
    let approvers: Vec<String> = serde_json::from_str(&json(11)?).unwrap_or_default();
    let detail: BTreeMap<String, String> = serde_json::from_str(&json(12)?).unwrap_or_default();
    let event = AuditEvent {
        id: r.get(1)?,
        at: r.get(2)?,
        action: r.get(3)?,
        user: r.get(4)?,
        resource: r.get(5)?,
        role: r.get(6)?,
        session_id: r.get(7)?,
        grant_id: r.get(8)?,
        request_id: r.get(9)?,
        reason: r.get(10)?,
        approvers,
        detail,
    };
    Ok((seq, event, r.get(13)?, r.get(14)?))
}

pub(super) fn verify(conn: &mut Connection, key: &[u8; 32]) -> Result<Verdict, AuditError> {
    let mut check = ChainCheck::new(key);
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM events ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (seq, event, prev, hash) = row(r)?;
        let checked = check.next(seq, &event, &to_hash(seq, &prev)?, &to_hash(seq, &hash)?);
        if let Err(broken) = checked {
            return Ok(Verdict {
                checked: check.checked(),
                broken: Some(broken),
            });
        }
    }
    Ok(Verdict {
        checked: check.checked(),
        broken: None,
    })
}

pub(super) fn search(conn: &mut Connection, s: &Search) -> Result<Vec<(u64, AuditEvent)>, AuditError> {
    let mut clauses: Vec<String> = Vec::new();
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    let mut filter = |clause: &str, value: rusqlite::types::Value| {
        values.push(value);
        clauses.push(clause.replace('?', &format!("?{}", values.len())));
    };
    for (column, value) in [
        ("user_name", &s.user),
        ("resource", &s.resource),
        ("action", &s.action),
        ("session_id", &s.session_id),
    ] {
        if let Some(v) = value {
            filter(&format!("{column} = ?"), v.clone().into());
        }
    }
    if let Some(t) = s.since {
        filter("at >= ?", t.into());
    }
    if let Some(t) = s.until {
        filter("at < ?", t.into());
    }
    if let Some(text) = &s.grep {
        filter(
            "instr(lower(detail || ' ' || coalesce(reason, '') || ' ' || action), lower(?)) > 0",
            text.clone().into(),
        );
    }
    if let Some(after) = s.after {
        let clause = if s.newest_first { "seq < ?" } else { "seq > ?" };
        filter(clause, (after as i64).into());
    }
    let mut sql = format!("SELECT {COLUMNS} FROM events");
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    sql.push_str(if s.newest_first {
        " ORDER BY seq DESC"
    } else {
        " ORDER BY seq"
    });
    sql.push_str(&format!(" LIMIT {}", s.limit.max(1)));
    let mut stmt = conn.prepare(&sql)?;
    let found = stmt
        .query_map(rusqlite::params_from_iter(values), row)?
        .map(|r| r.map(|(seq, e, _, _)| (seq, e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(found)
}
