//! One SQL interface over both store engines: the embedded SQLite file and a
//! shared PostgreSQL. Store modules write SQL both engines read the same way
//! (`?1` placeholders, integers for times and flags, TEXT holding JSON) and
//! read rows by column index; the few spots where the dialects differ ask
//! [`Sql::engine`]. The engines' own clients do the work: rusqlite, and
//! tokio-postgres driven from the blocking thread the store call runs on.

use std::collections::HashMap;
use std::ops::ControlFlow;

use futures_util::TryStreamExt;
use rusqlite::types::ValueRef;
use tokio_postgres::types::ToSql;

pub(crate) use super::value::{Row, Value};

/// Which engine a connection talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    /// The embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// A store query failed, or a row did not read as expected.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// From SQLite.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// From PostgreSQL.
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A column did not hold what its reader expects.
    #[error("column {index}: expected {expected}, found {found}")]
    Column {
        /// Its index.
        index: usize,
        /// What the reader wanted.
        expected: &'static str,
        /// What was there.
        found: String,
    },
    /// A stored value that makes no sense (e.g. an unknown state).
    #[error("{0}")]
    Invalid(String),
}

/// What store modules run their SQL on: a connection or a transaction, of
/// either engine.
pub(crate) trait Sql {
    /// The engine, for the few statements spelled differently.
    fn engine(&self) -> Engine;
    /// Runs a statement; answers the rows it changed.
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError>;
    /// Runs a query and hands its rows to `each` in order, lazily, until it
    /// answers `Break`.
    fn each(
        &mut self,
        sql: &str,
        args: &[Value],
        each: &mut dyn FnMut(Row) -> Result<ControlFlow<()>, DbError>,
    ) -> Result<(), DbError>;

    /// Every row of a query.
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError> {
        let mut rows = Vec::new();
        self.each(sql, args, &mut |r| {
            rows.push(r);
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(rows)
    }

    /// The first row of a query, if any.
    fn query_opt(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, DbError> {
        let mut first = None;
        self.each(sql, args, &mut |r| {
            first = Some(r);
            Ok(ControlFlow::Break(()))
        })?;
        Ok(first)
    }

    /// The first row of a query that always answers one (e.g. `COUNT(*)`).
    fn query_one(&mut self, sql: &str, args: &[Value]) -> Result<Row, DbError> {
        self.query_opt(sql, args)?
            .ok_or_else(|| DbError::Invalid(format!("no row from {sql}")))
    }
}

/// One connection to the store.
pub(crate) enum Conn {
    /// The embedded file.
    Sqlite(rusqlite::Connection),
    /// A PostgreSQL server.
    Postgres(PgConn),
}

/// A PostgreSQL connection with its prepared statements.
pub(crate) struct PgConn {
    client: tokio_postgres::Client,
    prepared: HashMap<String, tokio_postgres::Statement>,
    driver: Driver,
}

/// What runs the client's futures to completion on the calling (blocking)
/// thread: the process's runtime, or, where there is none (a plain test),
/// one of its own.
pub(crate) enum Driver {
    Shared(tokio::runtime::Handle),
    Own(tokio::runtime::Runtime),
}

impl Driver {
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match self {
            Driver::Shared(h) => h.block_on(f),
            Driver::Own(rt) => rt.block_on(f),
        }
    }
}

impl PgConn {
    /// Connects to `url` (a libpq URL or keyword string). Call from a
    /// blocking thread, never from a task.
    pub fn connect(url: &str) -> Result<PgConn, DbError> {
        let config: tokio_postgres::Config = url.parse()?;
        let driver = match tokio::runtime::Handle::try_current() {
            Ok(h) => Driver::Shared(h),
            Err(_) => Driver::Own(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| DbError::Invalid(format!("cannot start a runtime for the store: {e}")))?,
            ),
        };
        let (client, connection) = driver.block_on(config.connect(tokio_postgres::NoTls))?;
        let task = async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "the connection to the PostgreSQL store broke");
            }
        };
        match &driver {
            Driver::Shared(h) => drop(h.spawn(task)),
            Driver::Own(rt) => drop(rt.spawn(task)),
        }
        Ok(PgConn {
            client,
            prepared: HashMap::new(),
            driver,
        })
    }

    /// Whether the server closed the connection (or it broke).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// An open transaction; dropped without `commit` it rolls back.
pub(crate) enum Tx<'c> {
    /// On SQLite.
    Sqlite(rusqlite::Transaction<'c>),
    /// On PostgreSQL.
    Postgres {
        /// The transaction.
        tx: tokio_postgres::Transaction<'c>,
        /// The connection's prepared statements.
        prepared: &'c mut HashMap<String, tokio_postgres::Statement>,
        /// What runs its futures.
        driver: &'c Driver,
    },
}

/// Transactions that write the store take this PostgreSQL advisory lock
/// first, so writes by every replica are serialized as SQLite's are: a
/// change's checks read what the previous change committed.
pub(crate) const WRITE_LOCK: i64 = 0x706f_7274_6375_6c6c; // "portcull"

/// Prepared statements kept per PostgreSQL connection; searches spell many.
const PREPARED: usize = 256;

impl Conn {
    /// Starts a transaction that may write the store.
    pub fn transaction(&mut self) -> Result<Tx<'_>, DbError> {
        self.transaction_locked(WRITE_LOCK)
    }

    /// Starts a transaction that first takes PostgreSQL's advisory lock
    /// `lock` (writers of one table family share one; SQLite has one writer).
    pub fn transaction_locked(&mut self, lock: i64) -> Result<Tx<'_>, DbError> {
        match self {
            Conn::Sqlite(c) => Ok(Tx::Sqlite(c.transaction()?)),
            Conn::Postgres(pg) => {
                let driver = &pg.driver;
                let tx = driver.block_on(async {
                    let tx = pg.client.transaction().await?;
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock]).await?;
                    Ok::<_, DbError>(tx)
                })?;
                Ok(Tx::Postgres {
                    tx,
                    prepared: &mut pg.prepared,
                    driver,
                })
            }
        }
    }

    /// Makes each commit from now on durable before it returns (`on`), or
    /// lets SQLite's WAL sync only at checkpoints, its setting for the logs
    /// (`PRAGMA synchronous`). PostgreSQL syncs every commit already.
    pub fn sync_every_commit(&mut self, on: bool) -> Result<(), DbError> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch(if on {
                "PRAGMA synchronous = FULL"
            } else {
                "PRAGMA synchronous = NORMAL"
            })?),
            Conn::Postgres(_) => Ok(()),
        }
    }

    /// Starts a transaction that only reads, from one snapshot of the
    /// store, holding no writer off (SQLite's WAL keeps the snapshot;
    /// PostgreSQL's repeatable read does).
    pub fn snapshot(&mut self) -> Result<Tx<'_>, DbError> {
        match self {
            Conn::Sqlite(c) => Ok(Tx::Sqlite(c.transaction()?)),
            Conn::Postgres(pg) => {
                let driver = &pg.driver;
                let tx = driver.block_on(
                    pg.client
                        .build_transaction()
                        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                        .read_only(true)
                        .start(),
                )?;
                Ok(Tx::Postgres {
                    tx,
                    prepared: &mut pg.prepared,
                    driver,
                })
            }
        }
    }

    /// Runs several statements separated by semicolons, without arguments.
    pub fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres(pg) => Ok(pg.driver.block_on(pg.client.batch_execute(sql))?),
        }
    }
}

impl Tx<'_> {
    /// Makes the transaction's changes durable.
    pub fn commit(self) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(tx) => Ok(tx.commit()?),
            Tx::Postgres { tx, driver, .. } => Ok(driver.block_on(tx.commit())?),
        }
    }

    /// Runs several statements separated by semicolons, without arguments.
    pub fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(tx) => Ok(tx.execute_batch(sql)?),
            Tx::Postgres { tx, driver, .. } => Ok(driver.block_on(tx.batch_execute(sql))?),
        }
    }
}

impl Sql for Conn {
    fn engine(&self) -> Engine {
        match self {
            Conn::Sqlite(_) => Engine::Sqlite,
            Conn::Postgres(_) => Engine::Postgres,
        }
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        match self {
            Conn::Sqlite(c) => sqlite_execute(c, sql, args),
            Conn::Postgres(pg) => pg.driver.block_on(pg_execute(&pg.client, &mut pg.prepared, sql, args)),
        }
    }

    fn each(
        &mut self,
        sql: &str,
        args: &[Value],
        each: &mut dyn FnMut(Row) -> Result<ControlFlow<()>, DbError>,
    ) -> Result<(), DbError> {
        match self {
            Conn::Sqlite(c) => sqlite_each(c, sql, args, each),
            Conn::Postgres(pg) => pg
                .driver
                .block_on(pg_each(&pg.client, &mut pg.prepared, sql, args, each)),
        }
    }
}

impl Sql for Tx<'_> {
    fn engine(&self) -> Engine {
        match self {
            Tx::Sqlite(_) => Engine::Sqlite,
            Tx::Postgres { .. } => Engine::Postgres,
        }
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        match self {
            Tx::Sqlite(tx) => sqlite_execute(tx, sql, args),
            Tx::Postgres { tx, prepared, driver } => driver.block_on(pg_execute(tx, prepared, sql, args)),
        }
    }

    fn each(
        &mut self,
        sql: &str,
        args: &[Value],
        each: &mut dyn FnMut(Row) -> Result<ControlFlow<()>, DbError>,
    ) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(tx) => sqlite_each(tx, sql, args, each),
            Tx::Postgres { tx, prepared, driver } => driver.block_on(pg_each(tx, prepared, sql, args, each)),
        }
    }
}

fn sqlite_execute(c: &rusqlite::Connection, sql: &str, args: &[Value]) -> Result<u64, DbError> {
    let n = c.prepare_cached(sql)?.execute(rusqlite::params_from_iter(args))?;
    Ok(n as u64)
}

fn sqlite_each(
    c: &rusqlite::Connection,
    sql: &str,
    args: &[Value],
    each: &mut dyn FnMut(Row) -> Result<ControlFlow<()>, DbError>,
) -> Result<(), DbError> {
    let mut stmt = c.prepare_cached(sql)?;
    let width = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    while let Some(r) = rows.next()? {
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(match r.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(n) => Value::Int(n),
                // No column is REAL; a stray one reads as its text.
                ValueRef::Real(f) => Value::Text(f.to_string()),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
            });
        }
        if each(Row(values))?.is_break() {
            break;
        }
    }
    Ok(())
}

async fn pg_execute(
    c: &impl tokio_postgres::GenericClient,
    prepared: &mut HashMap<String, tokio_postgres::Statement>,
    sql: &str,
    args: &[Value],
) -> Result<u64, DbError> {
    let stmt = prepare(c, prepared, sql).await?;
    let args: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
    Ok(c.execute(&stmt, &args).await?)
}

async fn pg_each(
    c: &impl tokio_postgres::GenericClient,
    prepared: &mut HashMap<String, tokio_postgres::Statement>,
    sql: &str,
    args: &[Value],
    each: &mut dyn FnMut(Row) -> Result<ControlFlow<()>, DbError>,
) -> Result<(), DbError> {
    let stmt = prepare(c, prepared, sql).await?;
    let rows = c.query_raw(&stmt, args.iter()).await?;
    let mut rows = std::pin::pin!(rows);
    while let Some(r) = rows.try_next().await? {
        let mut values = Vec::with_capacity(r.len());
        for i in 0..r.len() {
            values.push(r.try_get::<_, Value>(i)?);
        }
        if each(Row(values))?.is_break() {
            break;
        }
    }
    Ok(())
}

/// The statement for `sql`, prepared once per connection. Placeholders are
/// written `?N` (SQLite's spelling) and become `$N` here.
async fn prepare(
    c: &impl tokio_postgres::GenericClient,
    prepared: &mut HashMap<String, tokio_postgres::Statement>,
    sql: &str,
) -> Result<tokio_postgres::Statement, DbError> {
    if let Some(stmt) = prepared.get(sql) {
        return Ok(stmt.clone());
    }
    let stmt = c.prepare(&dollar_placeholders(sql)).await?;
    if prepared.len() >= PREPARED {
        prepared.clear();
    }
    prepared.insert(sql.to_owned(), stmt.clone());
    Ok(stmt)
}

/// `?N` and bare `?` placeholders (outside quotes) spelled `$N`.
fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let (mut quoted, mut next) = (false, 1);
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    digits = next.to_string();
                    next += 1;
                }
                out.push('$');
                out.push_str(&digits);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::args;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE b = ?2 AND c = ?1 AND d = '?3' AND e IN (?, ?)"),
            "SELECT a FROM t WHERE b = $2 AND c = $1 AND d = '?3' AND e IN ($1, $2)"
        );
    }

    #[test]
    fn rows_read_by_index_on_both_engines() {
        for store in crate::store::testing::stores() {
            let mut c = store.connect();
            let (int, bytes) = match c.engine() {
                Engine::Sqlite => ("INTEGER", "BLOB"),
                Engine::Postgres => ("BIGINT", "BYTEA"),
            };
            c.batch(&format!(
                "CREATE TABLE t (i {int}, s TEXT, b {bytes}, n {int}, f BOOLEAN)"
            ))
            .expect("create");
            let changed = c
                .execute(
                    "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)",
                    args![7i64, "x'?", &b"\x01"[..], None::<i64>, true],
                )
                .expect("insert");
            assert_eq!(changed, 1);
            let row = c
                .query_one("SELECT i, s, b, n, f FROM t WHERE s = ?1", args!["x'?"])
                .expect("row");
            assert_eq!(row.get::<i64>(0).expect("i"), 7, "{store:?}");
            assert!(row.get::<bool>(0).expect("an integer as a flag"));
            assert_eq!(row.get::<String>(1).expect("s"), "x'?");
            assert_eq!(row.get::<Vec<u8>>(2).expect("b"), [1]);
            assert_eq!(row.get::<Option<i64>>(3).expect("n"), None);
            assert!(row.get::<bool>(4).expect("f"));
            let wrong = row.get::<String>(0).expect_err("not text");
            assert_eq!(wrong.to_string(), "column 0: expected text, found integer 7");

            // A transaction dropped unfinished leaves nothing behind.
            let mut tx = c.transaction().expect("begin");
            tx.execute("DELETE FROM t", &[]).expect("delete");
            drop(tx);
            let count: i64 = c
                .query_one("SELECT COUNT(*) FROM t", &[])
                .and_then(|r| r.get(0))
                .expect("count");
            assert_eq!(count, 1, "{store:?}");
        }
    }
}
