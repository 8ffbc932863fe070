//! The audit log: every event the proxy and the workflow report, kept as a
//! keyed chain (`portcullis_protocol::audit`) in its own SQLite file,
//! `DATA_DIR/audit.db`, so the append-heavy audit table never waits behind
//! the workflow's writes; or, on a PostgreSQL store, in the store's
//! database, which every control replica appends to. The chain key lives in
//! `DATA_DIR/audit.key` (mode 0600), outside the database; every replica of
//! a shared store must be given the same one.
//!
//! The proxy's events reach the log through a bounded queue drained by
//! [`spawn_writer`]: a full queue slows the sender down; nothing is dropped.
//! Workflow actions reach it from the history table through the shipper
//! (`ship.rs`), whose cursor is committed with the events it ships.

pub mod body;
mod key;
mod schema;
pub(crate) mod ship;
mod store;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use portcullis_protocol::audit::{AuditEvent, ChainBreak};
use portcullis_protocol::secret::Secret;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::metrics::AuditMetrics;
use crate::store::{Conn, DbError};

pub(crate) use store::Cursor;
pub use store::{Scope, Search, SessionRecord, SessionSearch};

/// File name of the audit log inside `data_dir`.
pub const FILE: &str = "audit.db";
/// Events written per transaction at most.
const BATCH: usize = 512;
/// How long the writer waits for more events before writing a batch: each
/// commit rewrites every page it touched (the table's and five indexes'),
/// so under load 40 ms cost less CPU per event than 10 ms did (audit
/// threads 3.3 -> 2.9 µs a pgbench `-S` transaction), for up to 30 ms more
/// audit lag.
const COALESCE: Duration = Duration::from_millis(40);

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
    /// The database said no.
    #[error("audit log: {0}")]
    Sql(#[from] DbError),
    /// This replica's chain key is not the one the shared log was started with.
    #[error(
        "audit log: DATA_DIR/audit.key is not the key this audit log is chained with: restore that key (every control replica holds the same one), or move the log aside to start a new chain"
    )]
    OtherKey,
    /// The SQLite file was written by a later version, whose rows this
    /// one may not read (e.g. compressed blocks, read as edits).
    #[error(
        "audit log: audit.db was written by a newer Portcullis (its schema is version {found}, this one knows up to {known}): run that version or a later one"
    )]
    Newer {
        /// The file's version.
        found: i64,
        /// The last this build knows.
        known: i64,
    },
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

impl From<rusqlite::Error> for AuditError {
    fn from(e: rusqlite::Error) -> Self {
        AuditError::Sql(e.into())
    }
}

/// What `verify` found.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Events in the log.
    pub events: u64,
    /// Events checked before the end or the first break.
    pub checked: u64,
    /// The first break, if any.
    pub broken: Option<ChainBreak>,
}

/// The audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    /// Appends and shippers' cursors: the writer's own connection.
    writer: Arc<Mutex<Conn>>,
    /// Searches, exports and `verify`: a connection of their own, so that
    /// a long one never holds the writer (and through it every session) back.
    reader: Arc<Mutex<Conn>>,
    key: Arc<[u8; 32]>,
    /// The PostgreSQL store's URL, to connect again when the connection broke.
    postgres: Option<Arc<Secret<String>>>,
    metrics: Option<AuditMetrics>,
}

/// Where a batch of events comes from, as the metrics label it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source {
    /// The proxy's queue.
    Proxy,
    /// The workflow's history, shipped.
    Workflow,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Proxy => "proxy",
            Source::Workflow => "workflow",
        }
    }
}

impl AuditLog {
    /// Opens (creating if needed) the log in `data_dir` and its key there. Blocking.
    pub fn open_blocking(data_dir: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open_in(data_dir, None)
    }

    /// Opens (creating if needed) the log in the PostgreSQL store at
    /// `postgres`, or else in `data_dir`; its key is in `data_dir`. Blocking.
    pub(crate) fn open_in(data_dir: &Path, postgres: Option<&Secret<String>>) -> Result<AuditLog, AuditError> {
        let key_path = data_dir.join(key::FILE);
        let (key, made) = key::load_or_create(&key_path)?;
        let check = key_check(&key);
        let open = || match postgres {
            Some(url) => schema::open_postgres(url.expose(), &check),
            None => schema::open(&data_dir.join(FILE), &check),
        };
        let writer = match open() {
            Err(AuditError::OtherKey) if made => {
                // Made just now, for a log chained with another: left in
                // place it would only stand where the old one must go back.
                let _ = std::fs::remove_file(&key_path);
                return Err(AuditError::OtherKey);
            }
            opened => opened?,
        };
        Ok(AuditLog {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(open()?)),
            key: Arc::new(key),
            postgres: postgres.map(|u| Arc::new(u.clone())),
            metrics: None,
        })
    }

    /// The same log, counting what it writes and observing its lag in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: AuditMetrics) -> AuditLog {
        self.metrics = Some(metrics);
        self
    }

    /// Runs `f` on the writer's connection, or the readers' one when not
    /// `write`; a PostgreSQL connection that broke is made again first.
    fn with<T>(
        &self,
        write: bool,
        f: impl FnOnce(&mut Conn, &[u8; 32]) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        let conn = if write { &self.writer } else { &self.reader };
        let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
        if let (Conn::Postgres(pg), Some(url)) = (&*conn, &self.postgres)
            && pg.is_closed()
        {
            *conn = schema::open_postgres(url.expose(), &key_check(&self.key))?;
        }
        f(&mut conn, &self.key)
    }

    /// Runs `f` on the readers' connection, off the async runtime.
    async fn reading<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn, &[u8; 32]) -> Result<T, AuditError> + Send + 'static,
    ) -> Result<T, AuditError> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.with(false, f))
            .await
            .map_err(|e| AuditError::Task(e.to_string()))?
    }

    /// Appends events not stored yet (by id) to the chain; answers how many
    /// were new once the commit is on disk: a remote proxy then forgets them
    /// (its spool), so they must outlive a power cut here.
    pub async fn append(&self, events: Vec<AuditEvent>) -> Result<usize, AuditError> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.write(&events, Source::Proxy, None, true))
            .await
            .map_err(|e| AuditError::Task(e.to_string()))?
    }

    /// Appends `events` and moves `source`'s shipping cursor in one
    /// transaction; counts and observes what was new. Blocking.
    pub(crate) fn write_blocking(
        &self,
        events: &[AuditEvent],
        source: Source,
        shipped: Option<(&str, &Cursor)>,
    ) -> Result<usize, AuditError> {
        self.write(events, source, shipped, false)
    }

    /// `write_blocking`, the commit synced to disk before it returns when `synced`.
    fn write(
        &self,
        events: &[AuditEvent],
        source: Source,
        shipped: Option<(&str, &Cursor)>,
        synced: bool,
    ) -> Result<usize, AuditError> {
        let new = self.with(true, |conn, key| {
            if !synced {
                return store::append(conn, key, events, shipped);
            }
            conn.sync_every_commit(true)?;
            let new = store::append(conn, key, events, shipped);
            conn.sync_every_commit(false)?;
            new
        })?;
        // A block of statements counts as the statements it holds.
        let count: u64 = new.iter().map(|(_, n)| n).sum();
        if let Some(m) = &self.metrics {
            let committed = crate::time::now();
            let lag = m.lag.with_label_values(&[source.label()]);
            for (at, _) in &new {
                lag.observe(crate::time::duration(committed.saturating_sub(*at)).as_secs_f64());
            }
            m.written.with_label_values(&[source.label()]).inc_by(count);
        }
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// Where `source`'s shipper stands. Blocking.
    pub(crate) fn cursor_blocking(&self, source: &str) -> Result<Option<Cursor>, AuditError> {
        self.with(true, |conn, _| store::cursor(conn, source))
    }

    /// Checks the whole chain from the first event.
    pub async fn verify(&self) -> Result<Verdict, AuditError> {
        self.reading(store::verify).await
    }

    /// Events matching `search`, in its order.
    pub async fn search(&self, search: Search) -> Result<Vec<(u64, AuditEvent)>, AuditError> {
        self.reading(move |conn, _| store::search(conn, &search)).await
    }

    /// Sessions matching `search` (from their start and end events), in its order.
    pub async fn sessions(&self, search: SessionSearch) -> Result<Vec<SessionRecord>, AuditError> {
        self.reading(move |conn, _| store::sessions(conn, &search)).await
    }
}

/// A digest that tells whether two replicas hold the same chain key, and
/// nothing about the key.
fn key_check(key: &[u8; 32]) -> String {
    let digest = Sha256::new()
        .chain_update(b"portcullis audit key check\0")
        .chain_update(key)
        .finalize();
    crate::ids::hex(&digest[..16])
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
            // Below the sessions, as the proxy's audit thread (see there): the
            // relay first; a full queue still slows sessions, nothing is lost.
            let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 5);
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
                if let Some(m) = &log.metrics {
                    m.queue_depth.set(i64::try_from(queue.len()).unwrap_or(i64::MAX));
                }
                let mut wait = Duration::from_millis(50);
                while let Err(e) = log.write_blocking(&batch, Source::Proxy, None) {
                    tracing::error!(error = %e, events = batch.len(), "cannot write audit events; retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                batch.clear();
            }
        })
}

#[cfg(test)]
mod block_tests;
#[cfg(test)]
mod tests;
