//! The audit log: every event the proxy and the workflow report, kept as a
//! keyed chain (`portcullis_protocol::audit`) in its own SQLite file,
//! `DATA_DIR/audit.db`, so the append-heavy audit table never waits behind
//! the workflow's writes. The chain key lives beside it in
//! `DATA_DIR/audit.key` (mode 0600), outside the database.
//!
//! Events reach the log through a bounded queue drained by [`run_writer`]:
//! a full queue slows the sender down; nothing is dropped.

mod key;
mod store;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use portcullis_protocol::audit::{AuditEvent, ChainBreak};
use rusqlite::Connection;
use tokio::sync::mpsc;

pub use store::Search;

/// File name of the audit log inside `data_dir`.
pub const FILE: &str = "audit.db";
/// Events written per transaction at most.
const BATCH: usize = 512;
/// How long the writer waits for more events before writing a batch.
const COALESCE: Duration = Duration::from_millis(10);

/// Why the audit log failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The key file could not be read or created.
    #[error("audit key {path}: {detail}")]
    Key {
        /// The key file.
        path: std::path::PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// SQLite said no.
    #[error("audit log: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored row that does not decode.
    #[error("audit log: event {seq} is unreadable: {detail}")]
    Corrupt {
        /// Sequence number.
        seq: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// The blocking task died.
    #[error("audit log task failed: {0}")]
    Task(String),
}

/// What `verify` found.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Events checked before the end or the first break.
    pub checked: u64,
    /// The first break, if any.
    pub broken: Option<ChainBreak>,
}

/// The audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    conn: Arc<Mutex<Connection>>,
    key: Arc<[u8; 32]>,
}

impl AuditLog {
    /// Opens (creating if needed) the log and its key in `data_dir`. Blocking.
    pub fn open_blocking(data_dir: &Path) -> Result<AuditLog, AuditError> {
        let key = key::load_or_create(&data_dir.join(key::FILE))?;
        let conn = store::open(&data_dir.join(FILE))?;
        Ok(AuditLog {
            conn: Arc::new(Mutex::new(conn)),
            key: Arc::new(key),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection, &[u8; 32]) -> T) -> T {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut conn, &self.key)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &[u8; 32]) -> Result<T, AuditError> + Send + 'static,
    ) -> Result<T, AuditError> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.with(f))
            .await
            .map_err(|e| AuditError::Task(e.to_string()))?
    }

    /// Appends events not stored yet (by id) to the chain; answers how many were new.
    pub async fn append(&self, events: Vec<AuditEvent>) -> Result<usize, AuditError> {
        self.blocking(move |conn, key| store::append(conn, key, &events)).await
    }

    /// Checks the whole chain from the first event.
    pub async fn verify(&self) -> Result<Verdict, AuditError> {
        self.blocking(store::verify).await
    }

    /// Events matching `search`, in its order.
    pub async fn search(&self, search: Search) -> Result<Vec<(u64, AuditEvent)>, AuditError> {
        self.blocking(move |conn, _| store::search(conn, &search)).await
    }
}

/// Starts the writer: a thread of its own that drains `queue` into `log` in
/// batches until every sender is gone. A thread rather than a task: each
/// event then costs one wakeup of one thread, and each batch one SQLite
/// transaction, with no hand-off through the async runtime. A write that
/// fails is retried (with backoff) rather than dropped: the queue then
/// fills and senders slow down, which is the point.
pub fn spawn_writer(
    log: AuditLog,
    mut queue: mpsc::Receiver<AuditEvent>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("portcullis-audit".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            while let Some(first) = queue.blocking_recv() {
                batch.push(first);
                // What arrives within a few milliseconds shares the transaction:
                // a commit per event costs more than the events themselves.
                std::thread::sleep(COALESCE);
                while batch.len() < BATCH {
                    match queue.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                let mut wait = Duration::from_millis(50);
                while let Err(e) = log.with(|conn, key| store::append(conn, key, &batch)) {
                    tracing::error!(error = %e, events = batch.len(), "cannot write audit events; retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                batch.clear();
            }
        })
}

#[cfg(test)]
mod tests;
