//! Stores for tests: every store test runs against both engines, an
//! embedded file in a temp dir and a fresh database in the throwaway
//! PostgreSQL cluster the end-to-end tests also use (started on first use).

use super::{Conn, Location, connect};
use portcullis_protocol::secret::Secret;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../tests/e2e/harness/pg.rs"]
mod cluster;

/// A store location for one test, removed with it (the database stays in
/// the cluster, which is removed when the test process ends).
#[derive(Debug)]
pub(crate) struct TestStore {
    /// Where.
    pub location: Location,
    /// The data dir beside it (the embedded store's home).
    pub dir: tempfile::TempDir,
}

impl TestStore {
    /// A new connection to it.
    pub fn connect(&self) -> Conn {
        connect(&self.location).expect("connect to the test store")
    }

    /// The PostgreSQL URL, for `ControlSettings::store_postgres`.
    pub fn postgres(&self) -> Option<Secret<String>> {
        match &self.location {
            Location::Postgres(url) => Some(url.clone()),
            Location::Sqlite(_) => None,
        }
    }
}

/// One empty store of each engine.
pub(crate) fn stores() -> Vec<TestStore> {
    vec![sqlite(), postgres()]
}

/// An empty embedded store.
pub(crate) fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().expect("tempdir");
    TestStore {
        location: Location::Sqlite(dir.path().join(super::FILE)),
        dir,
    }
}

/// An empty database in the test cluster.
pub(crate) fn postgres() -> TestStore {
    let (_, url) = cluster::pg().new_database();
    TestStore {
        location: Location::Postgres(Secret::new(url)),
        dir: tempfile::tempdir().expect("tempdir"),
    }
}

/// A data dir for another control replica of the store `first_data_dir`'s
/// replica uses: it holds the same audit chain key, as every replica must.
pub(crate) fn replica_dir(first_data_dir: &std::path::Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::copy(first_data_dir.join("audit.key"), data.join("audit.key")).expect("copy audit.key");
    dir
}

/// The audit log of `at`'s engine: in its data dir's file, or in its
/// PostgreSQL database.
pub(crate) async fn audit_log(at: &TestStore) -> crate::audit::AuditLog {
    let (dir, postgres) = (at.dir.path().to_path_buf(), at.postgres());
    tokio::task::spawn_blocking(move || crate::audit::AuditLog::open_in(&dir, postgres.as_ref()))
        .await
        .expect("task")
        .expect("open the audit log")
}

/// Runs `sql` on `at`'s audit log behind the gateway's back, as someone with
/// write access to the file or the database could.
pub(crate) fn tamper(at: &TestStore, sql: &str) {
    let sql = sql.to_owned();
    match &at.location {
        // With the log's own SQL function, as such a person could write one.
        Location::Sqlite(_) => rusqlite::Connection::open(at.dir.path().join(crate::audit::FILE))
            .and_then(|c| crate::audit::body::register(&c).and_then(|()| c.execute_batch(&sql)))
            .expect("tamper with the file"),
        // A thread of its own: the connection must not run inside the test's runtime.
        Location::Postgres(url) => {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::Postgres(super::db::PgConn::connect(url.expose()).expect("connect"));
                conn.batch(&sql).expect("tamper with the database");
            })
            .join()
            .expect("tamper thread");
        }
    }
}
