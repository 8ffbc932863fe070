//! The store: the embedded SQLite file `DATA_DIR/portcullis.db`, or a shared
//! PostgreSQL (`store: { postgres: URL }`) that several control replicas use
//! at once. One connection behind a mutex that is only ever taken on a
//! blocking thread, never across an `.await`. Modules here speak to either
//! through `db::Sql`.

pub(crate) mod db;
pub(crate) mod feed;
pub(crate) mod grants;
pub(crate) mod history;
pub(crate) mod migrations;
pub(crate) mod reports;
pub(crate) mod requests;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod users;
pub(crate) mod value;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use portcullis_protocol::secret::Secret;

pub(crate) use db::{Conn, DbError, Sql, Tx};
pub(crate) use value::{Row, args};

use crate::error::ControlError;

/// File name of the store inside `data_dir`.
pub(crate) const FILE: &str = "portcullis.db";

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the store is.
#[derive(Clone, Debug)]
pub enum Location {
    /// The embedded SQLite file at this path.
    Sqlite(PathBuf),
    /// A PostgreSQL server, by connection URL (it may hold a password).
    Postgres(Secret<String>),
}

/// The store; cheap to clone.
#[derive(Clone)]
pub(crate) struct Store {
    conn: Arc<Mutex<Conn>>,
    location: Arc<Location>,
}

impl Store {
    /// Opens (creating if needed) the store and brings its schema up to date.
    /// Blocking: call from a blocking thread.
    pub fn open_blocking(location: &Location) -> Result<Store, ControlError> {
        let mut conn = connect(location)?;
        migrations::migrate(&mut conn, location)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            location: Arc::new(location.clone()),
        })
    }

    /// Whether several control replicas may share the store (PostgreSQL).
    pub fn shared(&self) -> bool {
        matches!(*self.location, Location::Postgres(_))
    }

    /// The PostgreSQL URL, when the store is one.
    pub fn postgres_url(&self) -> Option<&Secret<String>> {
        match &*self.location {
            Location::Postgres(url) => Some(url),
            Location::Sqlite(_) => None,
        }
    }

    /// Runs `f` on the connection on a blocking thread. Whatever `f` does
    /// (commit, then publish to the feed) happens whole even if the caller
    /// stops waiting, and in the order the store serialized it.
    pub async fn call<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Conn) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<ControlError> + Send + 'static,
    {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || store.with_blocking(f)).await {
            Ok(result) => result,
            Err(e) => Err(E::from(ControlError::Task(e))),
        }
    }

    /// Runs `f` on the connection on the current thread (for blocking
    /// contexts). A PostgreSQL connection that broke is made again first.
    pub fn with_blocking<T, E>(&self, f: impl FnOnce(&mut Conn) -> Result<T, E>) -> Result<T, E>
    where
        E: From<ControlError>,
    {
        // A panic mid-call rolled its transaction back on unwind; the connection is fine.
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if let Conn::Postgres(pg) = &*conn
            && pg.is_closed()
        {
            *conn = connect(&self.location)?;
        }
        f(&mut conn)
    }
}

/// A new connection to the store at `location`.
fn connect(location: &Location) -> Result<Conn, ControlError> {
    match location {
        Location::Sqlite(path) => {
            let open_err = |source: rusqlite::Error| ControlError::Open {
                store: path.display().to_string(),
                source: source.into(),
            };
            let conn = rusqlite::Connection::open(path).map_err(open_err)?;
            conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
            conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
                .map_err(open_err)?;
            Ok(Conn::Sqlite(conn))
        }
        Location::Postgres(url) => {
            db::PgConn::connect(url.expose())
                .map(Conn::Postgres)
                .map_err(|source| ControlError::Open {
                    store: describe(location),
                    source,
                })
        }
    }
}

/// The store's location for messages: a PostgreSQL URL without its password.
pub(crate) fn describe(location: &Location) -> String {
    match location {
        Location::Sqlite(path) => path.display().to_string(),
        Location::Postgres(url) => match url.expose().parse::<tokio_postgres::Config>() {
            Ok(c) => {
                let hosts: Vec<String> = c
                    .get_hosts()
                    .iter()
                    .map(|h| match h {
                        tokio_postgres::config::Host::Tcp(h) => h.clone(),
                        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                    })
                    .collect();
                format!(
                    "postgres://{}@{}/{}",
                    c.get_user().unwrap_or(""),
                    hosts.join(","),
                    c.get_dbname().unwrap_or("")
                )
            }
            Err(_) => "an unreadable postgres URL".to_owned(),
        },
    }
}

/// Where the store of `data_dir` lives.
pub(crate) fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Reads a JSON array of strings stored in a TEXT column.
pub(crate) fn string_list(row: &Row, idx: usize) -> Result<Vec<String>, DbError> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text).map_err(|e| DbError::Invalid(format!("column {idx}: {e}")))
}

/// Spells a list of strings as the JSON array stored in a TEXT column.
pub(crate) fn list_text(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}
