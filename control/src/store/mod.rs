//! The embedded store: one SQLite file, `DATA_DIR/portcullis.db`, behind a
//! mutex that is only ever taken on a blocking thread, never across an `.await`.

pub(crate) mod grants;
pub(crate) mod history;
pub(crate) mod migrations;
pub(crate) mod requests;
pub(crate) mod users;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::Connection;

use crate::error::ControlError;

/// File name of the store inside `data_dir`.
pub(crate) const FILE: &str = "portcullis.db";

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The store; cheap to clone.
#[derive(Clone)]
pub(crate) struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema up
    /// to date. Blocking: call from a blocking thread.
    pub fn open_blocking(path: &Path) -> Result<Store, ControlError> {
        let open_err = |source| ControlError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(open_err)?;
        migrations::migrate(&mut conn, path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection on a blocking thread. Whatever `f` does
    /// (commit, then publish to the feed) happens whole even if the caller
    /// stops waiting, and in the order the store serialized it.
    pub async fn call<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<ControlError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let task = tokio::task::spawn_blocking(move || {
            // A panic mid-call rolled its transaction back on unwind; the connection is fine.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        });
        match task.await {
            Ok(result) => result,
            Err(e) => Err(E::from(ControlError::Task(e))),
        }
    }

    /// Runs `f` on the connection on the current thread (for blocking contexts).
    pub fn with_blocking<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut conn)
    }
}

/// Where the store of `data_dir` lives.
pub(crate) fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Reads a JSON array of strings stored in a TEXT column.
pub(crate) fn string_list(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Vec<String>> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e)))
}

/// Spells a list of strings as the JSON array stored in a TEXT column.
pub(crate) fn list_text(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}
