//! Versioned schema migrations: numbered, applied in order, each once, each
//! in its own transaction, recorded in `schema_migrations`. Each step is
//! spelled for both engines; they must leave the same tables and columns
//! (PostgreSQL's tables carry an explicit `rowid` where SQLite has its own).

use super::args;
use super::db::{Conn, Sql};
use super::{Location, describe};
use crate::error::ControlError;

/// One schema step.
pub(crate) struct Migration {
    /// Its number; strictly increasing.
    pub version: i64,
    /// What it does.
    pub name: &'static str,
    /// The statements, for SQLite.
    pub sql: &'static str,
    /// The same step for PostgreSQL.
    pub postgres: &'static str,
}

/// Every migration, oldest first. Append only: never edit one that shipped.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "users, requests, approvals, grants, history",
        sql: r#"
CREATE TABLE users (
    name            TEXT PRIMARY KEY,
    groups          TEXT NOT NULL DEFAULT '[]',
    admin           INTEGER NOT NULL DEFAULT 0,
    token_hash      TEXT NOT NULL UNIQUE,
    scram_verifier  TEXT NOT NULL,
    ssh_keys        TEXT NOT NULL DEFAULT '[]',
    created_at      INTEGER NOT NULL
);

CREATE TABLE requests (
    id                  TEXT PRIMARY KEY,
    user_name           TEXT NOT NULL REFERENCES users(name),
    resource            TEXT NOT NULL,
    role                TEXT NOT NULL,
    state               TEXT NOT NULL,
    reason              TEXT,
    duration_ms         INTEGER NOT NULL,
    start_at            INTEGER,
    created_at          INTEGER NOT NULL,
    decided_at          INTEGER,
    decided_by          TEXT,
    decision_reason     TEXT,
    approvals_required  INTEGER NOT NULL,
    auto_approved       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX requests_by_state ON requests(state, created_at);

CREATE TABLE approvals (
    request_id  TEXT NOT NULL REFERENCES requests(id),
    approver    TEXT NOT NULL,
    comment     TEXT,
    at          INTEGER NOT NULL,
    PRIMARY KEY (request_id, approver)
);

CREATE TABLE grants (
    id             TEXT PRIMARY KEY,
    request_id     TEXT NOT NULL UNIQUE REFERENCES requests(id),
    user_name      TEXT NOT NULL REFERENCES users(name),
    resource       TEXT NOT NULL,
    role           TEXT NOT NULL,
    starts_at      INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoked_by     TEXT,
    revoke_reason  TEXT
);
CREATE INDEX grants_by_expiry ON grants(expires_at);

CREATE TABLE history (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    detail   TEXT
);
CREATE INDEX history_by_subject ON history(subject, seq);
CREATE TRIGGER history_is_kept_forever_update BEFORE UPDATE ON history
    BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;
CREATE TRIGGER history_is_kept_forever_delete BEFORE DELETE ON history
    BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;
"#,
        postgres: r#"
CREATE TABLE users (
    name            TEXT PRIMARY KEY,
    groups          TEXT NOT NULL DEFAULT '[]',
    admin           BIGINT NOT NULL DEFAULT 0,
    token_hash      TEXT NOT NULL UNIQUE,
    scram_verifier  TEXT NOT NULL,
    ssh_keys        TEXT NOT NULL DEFAULT '[]',
    created_at      BIGINT NOT NULL
);

CREATE TABLE requests (
    rowid               BIGINT GENERATED ALWAYS AS IDENTITY,
    id                  TEXT PRIMARY KEY,
    user_name           TEXT NOT NULL REFERENCES users(name),
    resource            TEXT NOT NULL,
    role                TEXT NOT NULL,
    state               TEXT NOT NULL,
    reason              TEXT,
    duration_ms         BIGINT NOT NULL,
    start_at            BIGINT,
    created_at          BIGINT NOT NULL,
    decided_at          BIGINT,
    decided_by          TEXT,
    decision_reason     TEXT,
    approvals_required  BIGINT NOT NULL,
    auto_approved       BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX requests_by_state ON requests(state, created_at);

CREATE TABLE approvals (
    rowid       BIGINT GENERATED ALWAYS AS IDENTITY,
    request_id  TEXT NOT NULL REFERENCES requests(id),
    approver    TEXT NOT NULL,
    comment     TEXT,
    at          BIGINT NOT NULL,
    PRIMARY KEY (request_id, approver)
);

CREATE TABLE grants (
    rowid          BIGINT GENERATED ALWAYS AS IDENTITY,
    id             TEXT PRIMARY KEY,
    request_id     TEXT NOT NULL UNIQUE REFERENCES requests(id),
    user_name      TEXT NOT NULL REFERENCES users(name),
    resource       TEXT NOT NULL,
    role           TEXT NOT NULL,
    starts_at      BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoked_by     TEXT,
    revoke_reason  TEXT
);
CREATE INDEX grants_by_expiry ON grants(expires_at);

CREATE TABLE history (
    seq      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    detail   TEXT
);
CREATE INDEX history_by_subject ON history(subject, seq);
CREATE FUNCTION history_is_kept_forever() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'history is append-only'; END $$;
CREATE TRIGGER history_is_kept_forever BEFORE UPDATE OR DELETE ON history
    FOR EACH ROW EXECUTE FUNCTION history_is_kept_forever();
"#,
    },
    Migration {
        version: 2,
        name: "break-glass, escalation and pending TTL of requests; grant expiry notes",
        sql: r#"
ALTER TABLE requests ADD COLUMN break_glass INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN escalation_level INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN pending_until INTEGER;
-- Requests already pending get the default TTL (24h) from when they were made.
UPDATE requests SET pending_until = created_at + 86400000 WHERE state = 'pending';
-- The deadline an "expiring soon" event was recorded for, whether the
-- grant's expiry was recorded, and whether its scheduled start was; grants that ended before this migration count as recorded.
ALTER TABLE grants ADD COLUMN expiring_noted_for INTEGER;
ALTER TABLE grants ADD COLUMN expiry_noted INTEGER NOT NULL DEFAULT 0;
-- 0 while a scheduled grant's start is not yet in history.
ALTER TABLE grants ADD COLUMN start_noted INTEGER NOT NULL DEFAULT 1;
UPDATE grants SET expiry_noted = 1
    WHERE revoked_at IS NOT NULL OR expires_at <= CAST(strftime('%s', 'now') AS INTEGER) * 1000;
"#,
        postgres: r#"
ALTER TABLE requests ADD COLUMN break_glass BIGINT NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN escalation_level BIGINT NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN pending_until BIGINT;
UPDATE requests SET pending_until = created_at + 86400000 WHERE state = 'pending';
ALTER TABLE grants ADD COLUMN expiring_noted_for BIGINT;
ALTER TABLE grants ADD COLUMN expiry_noted BIGINT NOT NULL DEFAULT 0;
ALTER TABLE grants ADD COLUMN start_noted BIGINT NOT NULL DEFAULT 1;
UPDATE grants SET expiry_noted = 1
    WHERE revoked_at IS NOT NULL OR expires_at <= CAST(extract(epoch FROM now()) * 1000 AS BIGINT);
"#,
    },
    Migration {
        version: 3,
        name: "notification outbox",
        sql: r#"
-- One row per notification and destination, written in the transaction of
-- the change it reports; the sender delivers it and keeps its retry state here.
CREATE TABLE outbox (
    id               TEXT PRIMARY KEY,            -- ntf_..., the Idempotency-Key
    destination      TEXT NOT NULL,               -- webhook:HASH or slack:HASH (of the URL)
    event            TEXT NOT NULL,               -- requested, approved, ...
    subject          TEXT NOT NULL,               -- the request or grant id
    body             TEXT NOT NULL,               -- the JSON document, as built at the event
    created_at       INTEGER NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending',  -- pending | sent | failed
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,
    done_at          INTEGER
);
CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
"#,
        postgres: r#"
CREATE TABLE outbox (
    rowid            BIGINT GENERATED ALWAYS AS IDENTITY,
    id               TEXT PRIMARY KEY,
    destination      TEXT NOT NULL,
    event            TEXT NOT NULL,
    subject          TEXT NOT NULL,
    body             TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending',
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    last_error       TEXT,
    done_at          BIGINT
);
CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
"#,
    },
    Migration {
        version: 4,
        name: "the shared feed, store facts and outbox claims",
        sql: r#"
-- Changes proxies follow, by revision (written on a PostgreSQL store, which
-- several replicas share; the embedded store publishes directly).
CREATE TABLE feed (
    revision  INTEGER PRIMARY KEY,
    event     TEXT NOT NULL,     -- the FeedEvent as JSON
    at        INTEGER NOT NULL
);
-- Facts about the store itself, e.g. the name of its feed history.
CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
-- A notification being delivered is claimed until then, so that of several
-- replicas only one delivers it (another takes over if that one dies).
ALTER TABLE outbox ADD COLUMN claimed_until INTEGER;
"#,
        postgres: r#"
CREATE TABLE feed (
    revision  BIGINT PRIMARY KEY,
    event     TEXT NOT NULL,
    at        BIGINT NOT NULL
);
CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
ALTER TABLE outbox ADD COLUMN claimed_until BIGINT;
"#,
    },
    Migration {
        version: 5,
        name: "remote proxies' session reports",
        sql: r#"
-- The latest report of each remote proxy (written on a shared store, so
-- that every replica lists and kills every proxy's sessions).
CREATE TABLE proxy_sessions (
    proxy        TEXT PRIMARY KEY,
    reported_at  INTEGER NOT NULL,
    sessions     TEXT NOT NULL      -- JSON array of SessionInfo
);
"#,
        postgres: r#"
CREATE TABLE proxy_sessions (
    proxy        TEXT PRIMARY KEY,
    reported_at  BIGINT NOT NULL,
    sessions     TEXT NOT NULL
);
"#,
    },
];

/// Applies every migration the store lacks; answers the versions applied now.
/// Each step reads the current version inside its own (on PostgreSQL,
/// write-locked) transaction, so replicas starting together apply it once.
pub(crate) fn migrate(conn: &mut Conn, location: &Location) -> Result<Vec<i64>, ControlError> {
    conn.batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version     BIGINT PRIMARY KEY,
            name        TEXT NOT NULL,
            applied_at  BIGINT NOT NULL
        )",
    )?;
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    let mut applied = Vec::new();
    loop {
        let mut tx = conn.transaction()?;
        let current: i64 = tx
            .query_one(
                "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM schema_migrations",
                &[],
            )?
            .get(0)?;
        if current > known {
            return Err(ControlError::SchemaTooNew {
                path: describe(location),
                found: current,
                known,
            });
        }
        let Some(m) = MIGRATIONS.iter().find(|m| m.version > current) else {
            return Ok(applied);
        };
        let fail = |source| ControlError::Migration {
            version: m.version,
            name: m.name,
            source,
        };
        let sql = match tx.engine() {
            super::db::Engine::Sqlite => m.sql,
            super::db::Engine::Postgres => m.postgres,
        };
        tx.batch(sql).map_err(fail)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            args![m.version, m.name, crate::time::now()],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(version = m.version, name = m.name, "applied store migration");
        applied.push(m.version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        let mut last = 0;
        for m in MIGRATIONS {
            assert!(m.version > last, "migration {} out of order", m.version);
            last = m.version;
        }
    }

    #[test]
    fn applied_once_on_reopen() {
        for store in crate::store::testing::stores() {
            let mut conn = store.connect();
            let first = migrate(&mut conn, &store.location).expect("migrate");
            assert_eq!(first, MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>());
            drop(conn);

            let mut conn = store.connect();
            assert!(migrate(&mut conn, &store.location).expect("migrate again").is_empty());
            let rows: i64 = conn
                .query_one("SELECT COUNT(*) FROM schema_migrations", &[])
                .and_then(|r| r.get(0))
                .expect("count");
            assert_eq!(rows, i64::try_from(MIGRATIONS.len()).expect("small"), "{store:?}");
        }
    }

    #[test]
    fn refuses_a_newer_store() {
        for store in crate::store::testing::stores() {
            let mut conn = store.connect();
            migrate(&mut conn, &store.location).expect("migrate");
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 0)",
                &[],
            )
            .expect("insert");
            let err = migrate(&mut conn, &store.location).expect_err("newer schema");
            assert!(err.to_string().contains("999"), "{err}");
        }
    }

    #[test]
    fn history_is_append_only() {
        for store in crate::store::testing::stores() {
            let mut conn = store.connect();
            migrate(&mut conn, &store.location).expect("migrate");
            conn.execute(
                "INSERT INTO history (at, actor, action, subject) VALUES (1, 'a', 'x', 'req_1')",
                &[],
            )
            .expect("insert");
            assert!(
                conn.execute("UPDATE history SET actor = 'b'", &[]).is_err(),
                "{store:?}"
            );
            assert!(conn.execute("DELETE FROM history", &[]).is_err(), "{store:?}");
        }
    }
}
