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
