//! The audit log's queries: appending to the chain, verifying it, the
//! searches the API and CLI offer, and the shippers' cursors. The tables
//! and how a log is opened are in `schema.rs`.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use portcullis_protocol::audit::block::{self, BLOCK, LIST, STATEMENT, expand_lazily, span};
use portcullis_protocol::audit::{AuditEvent, ChainBreak, ChainCheck, GENESIS, link};
use portcullis_protocol::feed::UnixMillis;

use super::body::{self, Body};
use super::schema::AUDIT_LOCK;
use super::{AuditError, Verdict};
use crate::store::db::{Conn, Engine, Value};
use crate::store::{Row, Sql, args};

const COLUMNS: &str = "seq, id, at, action, user_name, resource, role, session_id, grant_id, request_id, reason, approvers, detail, prev, hash, span, body";

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

/// How far a shipper got: the position of the last entry it shipped, and
/// that entry's event id (so a replaced source is noticed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The source's position (e.g. a history row's sequence number).
    pub position: i64,
    /// The id of the event made from it.
    pub last_id: String,
}

/// Where `source`'s shipper stands; `None` before its first shipment.
pub(super) fn cursor(db: &mut dyn Sql, source: &str) -> Result<Option<Cursor>, AuditError> {
    let Some(r) = db.query_opt("SELECT position, last_id FROM shipped WHERE source = ?1", args![source])? else {
        return Ok(None);
    };
    Ok(Some(Cursor {
        position: r.get(0)?,
        last_id: r.get(1)?,
    }))
}

/// Appends the events not stored yet (by id) to the chain and, in the same
/// transaction, moves `source`'s cursor: both are kept, or neither. Answers,
/// for each event that was new, its time and how many events it holds (a
/// block of statements more than one).
pub(super) fn append(
    conn: &mut Conn,
    key: &[u8; 32],
    events: &[AuditEvent],
    shipped: Option<(&str, &Cursor)>,
) -> Result<Vec<(UnixMillis, u64)>, AuditError> {
    let mut tx = conn.transaction_locked(AUDIT_LOCK)?;
    let engine = tx.engine();
    let last: Option<(i64, i64, Vec<u8>)> = tx
        .query_opt("SELECT seq, span, hash FROM events ORDER BY seq DESC LIMIT 1", &[])?
        .map(|r| Ok::<_, crate::store::DbError>((r.get(0)?, r.get(1)?, r.get(2)?)))
        .transpose()?;
    // `next` is the number the next event takes: a block takes one per statement.
    let (mut next, mut prev) = match last {
        Some((seq, span, hash)) => (seq_of(seq) + seq_of(span).max(1), to_hash(seq_of(seq), &hash)?),
        None => (1u64, GENESIS),
    };
    let mut new = Vec::new();
    // At least once from the sender, exactly once here: a known id is
    // not inserted (and then takes no place in the chain). One probe of
    // the id index, not a lookup and then an insert.
    let insert = format!(
        "INSERT INTO events ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
         ON CONFLICT (id) DO NOTHING"
    );
    for e in events {
        let e = &*without_nul(e);
        let hash = link(key, next, &prev, e);
        let approvers = serde_json::to_string(&e.approvers).unwrap_or_else(|_| "[]".into());
        let (detail, body) = split_body(e);
        let body = match (body, engine) {
            (Some(json), Engine::Sqlite) => body::pack(json),
            (body, _) => body.into(),
        };
        let inserted = tx.execute(
            &insert,
            args![
                next,
                &e.id,
                e.at,
                &e.action,
                &e.user,
                &e.resource,
                &e.role,
                &e.session_id,
                &e.grant_id,
                &e.request_id,
                &e.reason,
                approvers,
                detail,
                &prev[..],
                &hash[..],
                span(e),
                body,
            ],
        )?;
        if inserted == 1 {
            next += span(e);
            prev = hash;
            new.push((e.at, span(e)));
        }
    }
    if let Some((source, cursor)) = shipped {
        tx.execute(
            "INSERT INTO shipped (source, position, last_id) VALUES (?1, ?2, ?3)
             ON CONFLICT (source) DO UPDATE SET position = excluded.position, last_id = excluded.last_id",
            args![source, cursor.position, &cursor.last_id],
        )?;
    }
    tx.commit()?;
    Ok(new)
}

/// `e` with every NUL in its plain text columns as U+FFFD. PostgreSQL's
/// text holds no NUL, and a client can send one (an SSH login name is any
/// UTF-8): the insert would fail, and the writer retry it forever while
/// every session waits. Both stores keep the same, so the chain is the
/// same; `approvers`, `detail` and `body` are JSON, which escapes it.
fn without_nul(e: &AuditEvent) -> std::borrow::Cow<'_, AuditEvent> {
    let plain = [
        Some(&e.id),
        Some(&e.action),
        Some(&e.user),
        e.resource.as_ref(),
        e.role.as_ref(),
    ];
    let ids = [
        e.session_id.as_ref(),
        e.grant_id.as_ref(),
        e.request_id.as_ref(),
        e.reason.as_ref(),
    ];
    if !plain.into_iter().chain(ids).flatten().any(|f| f.contains('\0')) {
        return std::borrow::Cow::Borrowed(e);
    }
    let mut e = e.clone();
    let plain = [
        Some(&mut e.id),
        Some(&mut e.action),
        Some(&mut e.user),
        e.resource.as_mut(),
        e.role.as_mut(),
    ];
    let ids = [
        e.session_id.as_mut(),
        e.grant_id.as_mut(),
        e.request_id.as_mut(),
        e.reason.as_mut(),
    ];
    for f in plain.into_iter().chain(ids).flatten() {
        *f = f.replace('\0', "\u{fffd}");
    }
    std::borrow::Cow::Owned(e)
}

/// A row's `detail` and `body` columns: a block's statements go to `body`
/// as they are, the rest of its detail (and any other event's) to `detail`.
fn split_body(e: &AuditEvent) -> (String, Option<&str>) {
    let body = if e.action == BLOCK { e.detail.get(LIST) } else { None };
    let detail = match body {
        Some(_) => serde_json::to_string(&e.detail.iter().filter(|(k, _)| *k != LIST).collect::<BTreeMap<_, _>>()),
        None => serde_json::to_string(&e.detail),
    };
    (detail.unwrap_or_else(|_| "{}".into()), body.map(String::as_str))
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

fn row(r: &Row) -> Result<Stored, crate::store::DbError> {
    row_at(r, 0)
}

/// The row whose `COLUMNS` start at column `base` (a join puts two side by side).
fn row_at(r: &Row, base: usize) -> Result<Stored, crate::store::DbError> {
    let seq = seq_of(r.get(base)?);
    let json = |i: usize| -> Result<String, crate::store::DbError> { r.get(base + i) };
    let approvers: Vec<String> = serde_json::from_str(&json(11)?).unwrap_or_default();
    let mut detail: BTreeMap<String, String> = serde_json::from_str(&json(12)?).unwrap_or_default();
    if let Some(Body(json)) = r.get::<Option<Body>>(base + 16)? {
        detail.insert(LIST.to_owned(), json);
    }
    let event = AuditEvent {
        id: r.get(base + 1)?,
        at: r.get(base + 2)?,
        action: r.get(base + 3)?,
        user: r.get(base + 4)?,
        resource: r.get(base + 5)?,
        role: r.get(base + 6)?,
        session_id: r.get(base + 7)?,
        grant_id: r.get(base + 8)?,
        request_id: r.get(base + 9)?,
        reason: r.get(base + 10)?,
        approvers,
        detail,
    };
    Ok((seq, event, r.get(base + 13)?, r.get(base + 14)?))
}

/// `COLUMNS` of the table aliased `alias`.
fn columns_of(alias: &str) -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn verify(conn: &mut Conn, key: &[u8; 32]) -> Result<Verdict, AuditError> {
    // One snapshot: the count and the walk see the same events, and
    // appends go on meanwhile (a walk of a long log takes a while).
    let mut tx = conn.snapshot()?;
    let events: i64 = tx
        .query_one("SELECT CAST(COALESCE(SUM(span), 0) AS BIGINT) FROM events", &[])?
        .get(0)?;
    let events = u64::try_from(events).unwrap_or(0);
    let mut check = ChainCheck::new(key);
    let mut broken = None;
    tx.each(&format!("SELECT {COLUMNS} FROM events ORDER BY seq"), &[], &mut |r| {
        // A row that no longer reads as an event (a value of the wrong type
        // or size) was edited as surely as one whose link does not match.
        let next = check.checked() + 1;
        let edited = || ChainBreak::Edited {
            seq: r.get::<i64>(0).map_or(next, seq_of),
            id: r.get::<String>(1).unwrap_or_default(),
        };
        let read = row(&r).ok().and_then(|(seq, event, prev, hash)| {
            let span = seq_of(r.get::<i64>(15).ok()?);
            Some((seq, event, to_hash(seq, &prev).ok()?, to_hash(seq, &hash).ok()?, span))
        });
        let Some((seq, event, prev, hash, span)) = read else {
            broken = Some(edited());
            return Ok(ControlFlow::Break(()));
        };
        let step = check.next(seq, &event, &prev, &hash).and_then(|()| {
            // The count of events is the sum of the stored spans: one not
            // matching its block (itself linked) would hide deleted events.
            if span == block::span(&event) {
                Ok(())
            } else {
                Err(edited())
            }
        });
        match step {
            Ok(()) => Ok(ControlFlow::Continue(())),
            Err(b) => {
                broken = Some(b);
                Ok(ControlFlow::Break(()))
            }
        }
    })?;
    Ok(Verdict {
        events,
        checked: check.checked(),
        broken,
    })
}

/// What `grep` looks in: every text of an event, `body` being the SQL that
/// reads its statements' JSON.
fn grepped_sql(body: &str) -> String {
    format!(
        "id || ' ' || detail || ' ' || coalesce({body}, '') || ' ' || coalesce(reason, '') || ' ' || action || ' ' || \
         user_name || ' ' || coalesce(resource, '') || ' ' || coalesce(role, '') || ' ' || coalesce(session_id, '') || ' ' || \
         coalesce(grant_id, '') || ' ' || coalesce(request_id, '') || ' ' || approvers"
    )
}

/// Rows a search reads per query, at most.
const ROWS_AT_ONCE: usize = 64;

pub(super) fn search(conn: &mut dyn Sql, s: &Search) -> Result<Vec<(u64, AuditEvent)>, AuditError> {
    // Where `needle` is in `haystack`, 0 if nowhere; and the statements'
    // JSON, compressed in the SQLite file.
    let (position, grepped) = match conn.engine() {
        Engine::Sqlite => ("instr", grepped_sql(&format!("{}(body)", body::SQL_FUNCTION))),
        Engine::Postgres => ("strpos", grepped_sql("body")),
    };
    let mut clauses: Vec<String> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    let mut filter = |clause: &str, value: Value| {
        values.push(value);
        clauses.push(clause.replace('?', &format!("?{}", values.len())));
    };
    for (column, value) in [
        ("user_name", &s.user),
        ("resource", &s.resource),
        ("session_id", &s.session_id),
    ] {
        if let Some(v) = value {
            filter(&format!("{column} = ?"), v.clone().into());
        }
    }
    // The rows that may hold a match; blocks of statements are then read
    // apart and each statement tested (`Search::admits`).
    if let Some(action) = &s.action {
        if action == STATEMENT {
            filter(&format!("action IN (?, '{BLOCK}')"), action.clone().into());
        } else {
            filter("action = ?", action.clone().into());
        }
    }
    if let Some(t) = s.since {
        filter("at >= ?", t.saturating_sub(block::MAX_SPAN_MS).into());
    }
    if let Some(t) = s.until {
        filter("at < ?", t.into());
    }
    // Worked out once: every event read from a block is tested with them too.
    let grep = s.grep.as_deref().map(grep_forms);
    if let Some(forms) = &grep {
        let mut any = Vec::new();
        for form in forms {
            values.push(form.clone().into());
            any.push(format!("{position}(lower({grepped}), lower(?{})) > 0", values.len()));
        }
        clauses.push(format!("({})", any.join(" OR ")));
    }
    // A page of rows at a time, until the page of events is full: a row
    // can hold many events, or none that match.
    let mut rows_after = s.after.map(|after| match s.newest_first {
        true => after,
        // The block holding `after + 1` starts at most this far back.
        false => after.saturating_sub(block::MAX_STATEMENTS),
    });
    let limit = s.limit.max(1);
    // Rows read at once: a row can be a block of hundreds of statements.
    let batch = limit.min(ROWS_AT_ONCE);
    let mut found = Vec::new();
    loop {
        let mut page_clauses = clauses.clone();
        let mut page_values = values.clone();
        if let Some(after) = rows_after {
            page_values.push((after as i64).into());
            let op = if s.newest_first { "<" } else { ">" };
            page_clauses.push(format!("seq {op} ?{}", page_values.len()));
        }
        let mut sql = format!("SELECT {COLUMNS} FROM events");
        if !page_clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&page_clauses.join(" AND "));
        }
        sql.push_str(if s.newest_first {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq"
        });
        sql.push_str(&format!(" LIMIT {batch}"));
        let rows = conn
            .query(&sql, &page_values)?
            .iter()
            .map(|r| row(r).map(|(seq, e, _, _)| (seq, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let full = rows.len() == batch;
        rows_after = rows.last().map(|(seq, _)| *seq).or(rows_after);
        for (seq, event) in rows {
            // Statements are written out one at a time, and only until the page is full.
            let mut events = expand_lazily(seq, event);
            let mut take = |(seq, e): (u64, AuditEvent)| {
                if s.admits(seq, &e, grep.as_deref()) {
                    found.push((seq, e));
                }
                found.len() >= limit
            };
            let page_full = match s.newest_first {
                true => events.rev().any(&mut take),
                false => events.any(&mut take),
            };
            if page_full {
                return Ok(found);
            }
        }
        if !full {
            return Ok(found);
        }
    }
}

impl Search {
    /// Whether an event read from a row the SQL selected matches: exact for
    /// each statement of a block, where the row's own time, action and text
    /// only said it may hold one. `grep` is `grep_forms` of `self.grep`.
    fn admits(&self, seq: u64, e: &AuditEvent, grep: Option<&[String]>) -> bool {
        let after = match (self.after, self.newest_first) {
            (None, _) => true,
            (Some(after), false) => seq > after,
            (Some(after), true) => seq < after,
        };
        after
            && self.action.as_ref().is_none_or(|a| *a == e.action)
            && self.since.is_none_or(|t| e.at >= t)
            && self.until.is_none_or(|t| e.at < t)
            && grep.is_none_or(|forms| {
                let texts = grepped(e);
                forms.iter().any(|form| texts.contains(form.as_str()))
            })
    }
}

/// `text` lowercased as it may be stored: as typed (the plain columns),
/// JSON-escaped (`detail`, a block's `body`, a bound value read from a
/// block) or escaped twice (a bound value inside a block's `body`, being a
/// JSON list in a JSON string).
fn grep_forms(text: &str) -> Vec<String> {
    let typed = text.to_ascii_lowercase();
    let once = escaped(&typed);
    let twice = escaped(&once);
    let mut forms = vec![typed];
    for form in [once, twice] {
        if !forms.contains(&form) {
            forms.push(form);
        }
    }
    forms
}

/// `text` as it reads inside a JSON string.
fn escaped(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_owned()
}

/// Every text of an event read out of a block, as the person wrote it,
/// lowercased as `lower` in SQLite does (ASCII only).
fn grepped(e: &AuditEvent) -> String {
    let mut texts: Vec<&str> = e.detail.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]).collect();
    texts.extend([&e.id, e.reason.as_deref().unwrap_or_default(), &e.action, &e.user]);
    for field in [&e.resource, &e.role, &e.session_id, &e.grant_id, &e.request_id] {
        texts.push(field.as_deref().unwrap_or_default());
    }
    texts.extend(e.approvers.iter().map(String::as_str));
    texts.join(" ").to_ascii_lowercase()
}

/// Which sessions to list (from their `session.start` events); every field narrows.
#[derive(Clone, Debug, Default)]
pub struct SessionSearch {
    /// This session only.
    pub id: Option<String>,
    /// Sessions of this user.
    pub user: Option<String>,
    /// On this resource.
    pub resource: Option<String>,
    /// Started at or after.
    pub since: Option<UnixMillis>,
    /// Started before.
    pub until: Option<UnixMillis>,
    /// Only what this caller may see; `None`: everything.
    pub visible_to: Option<Scope>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
    /// Continue after this sequence number (of a `session.start`, in the chosen order).
    pub after: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

/// Sessions of `user`, or on one of `resources`.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// The caller.
    pub user: String,
    /// Resources whose sessions the caller oversees.
    pub resources: Vec<String>,
}

/// One session as its events tell it: the start and, once it ended, the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Sequence number of the `session.start` event (the paging cursor).
    pub seq: u64,
    /// `session.start`.
    pub start: AuditEvent,
    /// The first `session.end` of the same session, if any.
    pub end: Option<AuditEvent>,
}

pub(super) fn sessions(conn: &mut dyn Sql, s: &SessionSearch) -> Result<Vec<SessionRecord>, AuditError> {
    let mut clauses: Vec<String> = vec!["s.action = 'session.start'".to_owned()];
    let mut values: Vec<Value> = Vec::new();
    let mut param = |value: Value| {
        values.push(value);
        format!("?{}", values.len())
    };
    for (column, value) in [
        ("s.session_id", &s.id),
        ("s.user_name", &s.user),
        ("s.resource", &s.resource),
    ] {
        if let Some(v) = value {
            clauses.push(format!("{column} = {}", param(v.clone().into())));
        }
    }
    if let Some(t) = s.since {
        clauses.push(format!("s.at >= {}", param(t.into())));
    }
    if let Some(t) = s.until {
        clauses.push(format!("s.at < {}", param(t.into())));
    }
    if let Some(scope) = &s.visible_to {
        let mut any = vec![format!("s.user_name = {}", param(scope.user.clone().into()))];
        if !scope.resources.is_empty() {
            let list: Vec<String> = scope.resources.iter().map(|r| param(r.clone().into())).collect();
            any.push(format!("s.resource IN ({})", list.join(", ")));
        }
        clauses.push(format!("({})", any.join(" OR ")));
    }
    if let Some(after) = s.after {
        let op = if s.newest_first { "<" } else { ">" };
        clauses.push(format!("s.seq {op} {}", param((after as i64).into())));
    }
    let sql = format!(
        "SELECT {start}, {end} FROM events s
         LEFT JOIN events e ON e.seq = (
             SELECT MIN(x.seq) FROM events x WHERE x.session_id = s.session_id AND x.action = 'session.end')
         WHERE {clauses}
         ORDER BY s.seq {order} LIMIT {limit}",
        start = columns_of("s"),
        end = columns_of("e"),
        clauses = clauses.join(" AND "),
        order = if s.newest_first { "DESC" } else { "ASC" },
        limit = s.limit.max(1),
    );
    let width = COLUMNS.split(", ").count();
    let found = conn
        .query(&sql, &values)?
        .iter()
        .map(|r| {
            let (seq, start, _, _) = row_at(r, 0)?;
            let ended: Option<i64> = r.get(width)?;
            let end = match ended {
                Some(_) => Some(row_at(r, width)?.1),
                None => None,
            };
            Ok(SessionRecord { seq, start, end })
        })
        .collect::<Result<Vec<_>, crate::store::DbError>>()?;
    Ok(found)
}
