//! The audit log's tables and how a log is opened: in a SQLite file of its
//! own beside the embedded store (numbered steps, `PRAGMA user_version`), or
//! in the PostgreSQL store's database, which every control replica appends
//! to, one batch at a time.

use std::path::Path;
use std::time::Duration;

use rusqlite::OptionalExtension;

use super::AuditError;
use crate::store::db::{Conn, PgConn};
use crate::store::{Sql, args};

/// The PostgreSQL advisory lock appends hold: the chain grows one batch at a time.
pub(super) const AUDIT_LOCK: i64 = 0x6175_6469_745f_6c6f; // "audit_lo"

/// Bytes a page of a new SQLite log file.
const PAGE_SIZE: i64 = 16 * 1024;

/// The schema, one step per version; a file gets the steps it lacks.
const SCHEMA: &[&str] = &[
    // 1: the chain.
    "
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
",
    // 2: how far each shipper got (committed with the events it shipped),
    // and the indexes the session history walks: sessions by their start,
    // a session's end or statements without reading all its events.
    "
CREATE TABLE shipped (
    source   TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    last_id  TEXT NOT NULL
);
CREATE INDEX events_action ON events (action, seq);
CREATE INDEX events_session_action ON events (session_id, action, seq);
",
    // 3: `events_session_action` serves every lookup by session, so the
    // index on the session alone only cost each insert another B-tree.
    "DROP INDEX IF EXISTS events_session;",
    // 4: a block of statements (protocol's `audit::block`) takes a number
    // per statement, and keeps its statements' JSON out of `detail`, where
    // it would be escaped a second time, in a column of its own.
    "ALTER TABLE events ADD COLUMN span INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE events ADD COLUMN body TEXT;",
    // 5: which key the chain is linked with (`key_check`, which does not
    // tell the key), as the PostgreSQL log keeps it: a lost or replaced
    // audit.key is told at start, not taken for an edit of every event.
    "CREATE TABLE chain_key (key_check TEXT NOT NULL);",
    // 6: a block's `body` may be a BLOB, its JSON LZ4-compressed
    // (`body.rs`), which a gateway of an older version would read as an
    // edit: it is told by the version and refused, not reported edited.
    "/* no table changes */",
];

/// The same schema for PostgreSQL, as it stands after every step above:
/// the audit log's first version there.
const POSTGRES: &str = "
CREATE TABLE events (
    seq        BIGINT PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    at         BIGINT NOT NULL,
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
    prev       BYTEA NOT NULL,
    hash       BYTEA NOT NULL,
    span       BIGINT NOT NULL DEFAULT 1,
    body       TEXT
);
CREATE INDEX events_at ON events (at);
CREATE INDEX events_user ON events (user_name, at);
CREATE INDEX events_resource ON events (resource, at);
CREATE INDEX events_action ON events (action, seq);
CREATE INDEX events_session_action ON events (session_id, action, seq);
CREATE TABLE shipped (
    source   TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    last_id  TEXT NOT NULL
);
";

/// Opens (creating or upgrading) the log in the SQLite file at `path`,
/// chained with the key `key_check` tells of (the first key it sees, for
/// a file made before it kept one).
pub(super) fn open(path: &Path, key_check: &str) -> Result<Conn, AuditError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // A new file gets 16 KiB pages (SQLite's default is 4 KiB): blocks of
    // statements are tens of KiB, and SQLite writes each page twice (to the
    // WAL, then back at the checkpoint) in two and one system calls. With
    // pgbench -S -M prepared the writer thread took 1.2 -> 0.94 µs a
    // transaction, for 485 -> 623 bytes written (the B-tree pages each
    // commit rewrites are larger); 64 KiB pages saved 0.05 µs more for
    // twice the bytes. A file made before keeps its page size.
    conn.execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE};"))?;
    // A 32 MiB page cache (SQLite's default is 2 MiB): with statement audit
    // the writer inserts tens of thousands of rows a second, and benches/
    // audit_write.rs measured it 35% cheaper per event than with 8 MiB.
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -32768;")?;
    super::body::register(&conn)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = i64::try_from(SCHEMA.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(AuditError::Newer { found: version, known });
    }
    for (done, step) in SCHEMA
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(usize::MAX))
    {
        let next = done + 1;
        conn.execute_batch(&format!("BEGIN; {step} PRAGMA user_version = {next}; COMMIT;"))?;
    }
    let kept: Option<String> = conn
        .query_row("SELECT key_check FROM chain_key", [], |r| r.get(0))
        .optional()?;
    match kept {
        None => {
            conn.execute("INSERT INTO chain_key (key_check) VALUES (?1)", [key_check])?;
        }
        Some(kept) if kept != key_check => return Err(AuditError::OtherKey),
        Some(_) => {}
    }
    Ok(Conn::Sqlite(conn))
}

/// Opens (creating if needed) the log in the PostgreSQL database at `url`.
/// Replicas starting together create it once, and each must hold the key
/// its chain was started with (`key_check` tells, without telling the key).
pub(super) fn open_postgres(url: &str, key_check: &str) -> Result<Conn, AuditError> {
    let mut conn = Conn::Postgres(PgConn::connect(url)?);
    let mut tx = conn.transaction_locked(AUDIT_LOCK)?;
    tx.batch("CREATE TABLE IF NOT EXISTS audit_schema (version BIGINT NOT NULL, key_check TEXT NOT NULL)")?;
    let found = tx.query_opt("SELECT version, key_check FROM audit_schema", &[])?;
    match found {
        None => {
            tx.batch(POSTGRES)?;
            tx.execute(
                "INSERT INTO audit_schema (version, key_check) VALUES (1, ?1)",
                args![key_check],
            )?;
        }
        Some(r) if r.get::<String>(1)? != key_check => return Err(AuditError::OtherKey),
        Some(_) => {}
    }
    tx.commit()?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_an_older_version_gets_the_later_steps_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.db");
        let first = SCHEMA.first().expect("a first step");
        rusqlite::Connection::open(&path)
            .and_then(|c| c.execute_batch(&format!("{first} PRAGMA user_version = 1;")))
            .expect("a version 1 file");
        for _ in 0..2 {
            let mut conn = open(&path, "k").expect("open and upgrade");
            let version: i64 = conn
                .query_one("PRAGMA user_version", &[])
                .and_then(|r| r.get(0))
                .expect("version");
            assert_eq!(version, i64::try_from(SCHEMA.len()).expect("small"));
            assert_eq!(
                crate::audit::store::cursor(&mut conn, "workflow").expect("the shipped table"),
                None
            );
            assert_eq!(page_size(&mut conn), 4096, "an existing file keeps its pages");
        }
    }

    #[test]
    fn a_file_of_a_later_version_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.db");
        let later = SCHEMA.len() + 1;
        rusqlite::Connection::open(&path)
            .and_then(|c| c.execute_batch(&format!("PRAGMA user_version = {later};")))
            .expect("a later file");
        let refused = open(&path, "k").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("newer Portcullis"), "{refused}");
        let version: i64 = rusqlite::Connection::open(&path)
            .and_then(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
            .expect("version");
        assert_eq!(version, i64::try_from(later).expect("small"));
    }

    #[test]
    fn a_new_file_gets_large_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.db");
        drop(open(&path, "k").expect("create"));
        let mut conn = open(&path, "k").expect("reopen");
        assert_eq!(page_size(&mut conn), PAGE_SIZE);
    }

    fn page_size(conn: &mut Conn) -> i64 {
        conn.query_one("PRAGMA page_size", &[])
            .and_then(|r| r.get(0))
            .expect("page size")
    }
}
