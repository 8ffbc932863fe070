use std::collections::BTreeMap;

use portcullis_protocol::audit::{AuditEvent, ChainBreak};
use tokio::sync::mpsc;

use super::{AuditLog, Search, Verdict, key, spawn_writer};
use crate::store::testing::{TestStore, tamper};

fn event(i: u64, user: &str, action: &str) -> AuditEvent {
    AuditEvent {
        id: format!("evt_{i:016x}"),
        at: 1_700_000_000_000 + i as i64 * 1000,
        action: action.into(),
        user: user.into(),
        resource: Some("orders".into()),
        role: Some("read".into()),
        session_id: Some(format!("ses_{}", i % 2)),
        grant_id: Some("grt_1".into()),
        request_id: Some("req_1".into()),
        reason: Some("INC-42 checking orders".into()),
        approvers: vec!["carol".into()],
        detail: BTreeMap::from([("text".to_owned(), format!("SELECT {i} FROM items"))]),
    }
}

/// A log of `n` events on each engine.
async fn logs_with(n: u64) -> Vec<(TestStore, AuditLog)> {
    let mut logs = Vec::new();
    for at in crate::store::testing::stores() {
        let log = crate::store::testing::audit_log(&at).await;
        let events = (1..=n)
            .map(|i| event(i, if i % 3 == 0 { "bob" } else { "alice" }, "statement"))
            .collect();
        assert_eq!(log.append(events).await.expect("append"), n as usize);
        logs.push((at, log));
    }
    logs
}

#[tokio::test]
async fn an_untouched_log_verifies_and_duplicates_are_stored_once() {
    for (_at, log) in logs_with(10).await {
        // The sender retried: the same events again, and one new.
        let again = vec![event(3, "bob", "statement"), event(11, "alice", "session.end")];
        assert_eq!(log.append(again).await.expect("append"), 1);
        assert_eq!(
            log.verify().await.expect("verify"),
            Verdict {
                events: 11,
                checked: 11,
                broken: None
            }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_read_holds_no_append_back() {
    for (at, log) in logs_with(3).await {
        // A verify or a search in the middle of its walk: a snapshot open on
        // the readers' connection.
        let reader = log.clone();
        let (opened, open) = std::sync::mpsc::channel();
        let (done, finish) = std::sync::mpsc::channel::<()>();
        let walk = tokio::task::spawn_blocking(move || {
            reader.with(false, |conn, _| {
                let mut tx = conn.snapshot()?;
                let count = |tx: &mut crate::store::db::Tx<'_>| -> Result<i64, super::AuditError> {
                    use crate::store::Sql;
                    Ok(tx.query_one("SELECT COUNT(*) FROM events", &[])?.get(0)?)
                };
                let before = count(&mut tx)?;
                let _ = opened.send(());
                let _ = finish.recv();
                Ok((before, count(&mut tx)?))
            })
        });
        open.recv().expect("the walk started");
        let appended = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            log.append(vec![event(4, "alice", "statement")]),
        )
        .await;
        assert_eq!(
            appended.map(|r| r.ok()),
            Ok(Some(1)),
            "{at:?}: the append waited for the read"
        );
        let _ = done.send(());
        let seen = walk.await.expect("join").expect("walk");
        assert_eq!(seen, (3, 3), "{at:?}: the walk reads one snapshot");
        assert_eq!(log.verify().await.expect("verify").events, 4);
    }
}

#[tokio::test]
async fn a_proxy_s_batch_is_synced_to_disk_and_the_writer_goes_back_to_wal_syncing() {
    use crate::store::Sql;
    let at = crate::store::testing::sqlite();
    let log = crate::store::testing::audit_log(&at).await;
    let level = |log: &AuditLog| {
        log.with(true, |conn, _| {
            Ok(conn.query_one("PRAGMA synchronous", &[])?.get::<i64>(0)?)
        })
        .expect("PRAGMA synchronous")
    };
    assert_eq!(level(&log), 1, "NORMAL: the WAL syncs at checkpoints");
    log.with(true, |conn, _| Ok(conn.sync_every_commit(true)?))
        .expect("FULL");
    assert_eq!(level(&log), 2, "FULL: every commit syncs");
    log.with(true, |conn, _| Ok(conn.sync_every_commit(false)?))
        .expect("NORMAL");
    assert_eq!(
        log.append(vec![event(1, "alice", "statement")]).await.expect("append"),
        1
    );
    assert_eq!(level(&log), 1, "back to NORMAL after a synced append");
}

#[tokio::test]
async fn verify_names_the_first_edit_deletion_or_reordering() {
    for (at, log) in logs_with(6).await {
        tamper(
            &at,
            "UPDATE events SET detail = '{\"text\":\"SELECT 1\"}' WHERE seq = 4",
        );
        assert!(
            matches!(
                log.verify().await.expect("verify").broken,
                Some(ChainBreak::Edited { seq: 4, .. })
            ),
            "{at:?}"
        );
    }
    for (at, log) in logs_with(6).await {
        tamper(&at, "DELETE FROM events WHERE seq = 2");
        assert_eq!(
            log.verify().await.expect("verify").broken,
            Some(ChainBreak::Missing { expected: 2, found: 3 }),
            "{at:?}"
        );
    }
    for (at, log) in logs_with(6).await {
        tamper(
            &at,
            "UPDATE events SET seq = -1 WHERE seq = 2; UPDATE events SET seq = 2 WHERE seq = 3; \
             UPDATE events SET seq = 3 WHERE seq = -1;",
        );
        let verdict = log.verify().await.expect("verify");
        assert!(
            matches!(verdict.broken, Some(ChainBreak::Relinked { seq: 2, .. })),
            "{verdict:?}"
        );
        assert_eq!(verdict.checked, 1);
    }
}

#[tokio::test]
async fn search_filters_orders_and_pages() {
    for (_at, log) in logs_with(9).await {
        let bob = log
            .search(Search {
                user: Some("bob".into()),
                limit: 100,
                ..Search::default()
            })
            .await
            .expect("search");
        assert_eq!(bob.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [3, 6, 9]);

        let newest = log
            .search(Search {
                newest_first: true,
                limit: 2,
                ..Search::default()
            })
            .await
            .expect("search");
        assert_eq!(newest.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [9, 8]);
        let next = log
            .search(Search {
                newest_first: true,
                after: Some(8),
                limit: 2,
                ..Search::default()
            })
            .await
            .expect("search");
        assert_eq!(next.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [7, 6]);

        let text = log
            .search(Search {
                grep: Some("select 7 from".into()),
                since: Some(1_700_000_000_000),
                until: Some(1_700_000_000_000 + 8_000),
                limit: 100,
                ..Search::default()
            })
            .await
            .expect("search");
        assert_eq!(text.len(), 1);
        assert_eq!(text[0].1, event(7, "alice", "statement"));
    }
}

#[tokio::test]
async fn the_writer_drains_the_queue_and_survives_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::open_blocking(dir.path()).expect("open");
    let (tx, rx) = mpsc::channel(4);
    let writer = spawn_writer(log.clone(), rx).expect("writer thread");
    for i in 1..=20 {
        tx.send(event(i, "alice", "statement")).await.expect("queue");
    }
    tx.send(event(5, "alice", "statement")).await.expect("a resend");
    drop(tx);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .expect("join")
        .expect("writer");
    drop(log);

    // A restart reopens the same chain with the same key and extends it.
    let log = AuditLog::open_blocking(dir.path()).expect("reopen");
    log.append(vec![event(21, "alice", "session.end")])
        .await
        .expect("append");
    assert_eq!(
        log.verify().await.expect("verify"),
        Verdict {
            events: 21,
            checked: 21,
            broken: None
        }
    );
}

#[test]
fn the_key_is_made_once_owner_only_and_never_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(key::FILE);
    let (first, made) = key::load_or_create(&path).expect("create");
    assert!(made);
    assert_eq!(key::load_or_create(&path).expect("load"), (first, false));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    std::fs::write(&path, b"short").expect("damage");
    assert!(key::load_or_create(&path).is_err(), "a damaged key is an error");
    assert_eq!(std::fs::read(&path).expect("read"), b"short", "and is left alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_replaced_key_is_told_at_start_not_taken_for_edits() {
    for at in crate::store::testing::stores() {
        let log = crate::store::testing::audit_log(&at).await;
        let e = AuditEvent::new("evt_1".into(), 1000, "session.start", "alice");
        assert_eq!(log.append(vec![e]).await.expect("append"), 1);
        drop(log);
        let key = at.dir.path().join(key::FILE);
        let kept = std::fs::read(&key).expect("the key");
        let open = || {
            let (dir, postgres) = (at.dir.path().to_path_buf(), at.postgres());
            AuditLog::open_in(&dir, postgres.as_ref())
        };
        // Lost: a new one is not made in its place.
        std::fs::remove_file(&key).expect("lose the key");
        let err = tokio::task::block_in_place(open).err().expect("refused");
        assert!(err.to_string().contains("restore that key"), "{err}");
        assert!(!key.exists(), "no new key left where the old one must go back");
        // Replaced: refused too.
        std::fs::write(&key, [7u8; 32]).expect("another key");
        assert!(tokio::task::block_in_place(open).is_err());
        // Restored: the chain is whole.
        std::fs::write(&key, &kept).expect("restore");
        let log = tokio::task::block_in_place(open).expect("open");
        assert_eq!(log.verify().await.expect("verify").broken, None);
    }
}

// The shipper: workflow history into the log, each entry once, resuming
// from a cursor committed with the events.

use std::sync::Arc;

use serde_json::json;

use super::ship::{self, Shipper};
use crate::ControlError;
use crate::store::Store;
use crate::store::history::{self, Entry};

/// A store and an audit log side by side, as `Control::open` lays them out.
async fn store_and_log(at: &TestStore) -> (Store, AuditLog) {
    let location = at.location.clone();
    let store = tokio::task::spawn_blocking(move || Store::open_blocking(&location))
        .await
        .expect("task")
        .expect("store");
    let log = crate::store::testing::audit_log(at).await;
    (store, log)
}

fn shipper(store: &Store, log: &AuditLog) -> Shipper {
    Shipper::new(store.clone(), log.clone(), Arc::new(tokio::sync::Notify::new()))
}

async fn record(store: &Store, at: i64, actor: &str, action: &'static str, subject: &str, detail: serde_json::Value) {
    let entry = Entry {
        at,
        actor: actor.to_owned(),
        action,
        subject: subject.to_owned(),
        detail,
    };
    store
        .call(move |conn| {
            let mut tx = conn.transaction()?;
            history::record(&mut tx, &entry)?;
            tx.commit().map_err(ControlError::from)
        })
        .await
        .expect("record");
}

/// Every event in the log, oldest first.
/// The workflow shipper's cursor, read off the runtime's threads.
async fn cursor(log: &AuditLog) -> Option<super::Cursor> {
    let log = log.clone();
    tokio::task::spawn_blocking(move || log.cursor_blocking(ship::SOURCE))
        .await
        .expect("task")
        .expect("cursor")
}

async fn all(log: &AuditLog) -> Vec<AuditEvent> {
    let found = log
        .search(Search {
            limit: 10_000,
            ..Search::default()
        })
        .await
        .expect("search");
    found.into_iter().map(|(_, e)| e).collect()
}

#[tokio::test]
async fn the_shipper_ships_each_entry_once_and_resumes_from_its_cursor() {
    for at in crate::store::testing::stores() {
        let (store, log) = store_and_log(&at).await;
        for (i, name) in ["alice", "bob", "carol"].into_iter().enumerate() {
            record(
                &store,
                1000 + i as i64,
                "admin",
                "user.create",
                name,
                json!({ "admin": false }),
            )
            .await;
        }
        let s = shipper(&store, &log);
        assert_eq!(s.catch_up().await.expect("ship"), 3);
        let first = cursor(&log).await.expect("a cursor");
        assert_eq!((first.position, first.last_id.as_str()), (3, "wf_3_1002"));
        // Nothing new: nothing written, the cursor stays.
        assert_eq!(s.catch_up().await.expect("ship"), 0);

        record(&store, 2000, "admin", "user.create", "dave", json!({})).await;
        record(&store, 2001, "admin", "user.create", "erin", json!({})).await;
        // A new shipper (a restart) starts where the last one stopped.
        assert_eq!(shipper(&store, &log).catch_up().await.expect("ship"), 2);
        let events = all(&log).await;
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["wf_1_1000", "wf_2_1001", "wf_3_1002", "wf_4_2000", "wf_5_2001"]);
        assert_eq!(events[3].detail.get("subject").map(String::as_str), Some("dave"));
        assert_eq!(events[3].user, "admin");

        // A lost cursor means a replay from the start: deduplicated by id.
        tamper(&at, "DELETE FROM shipped");
        assert_eq!(s.catch_up().await.expect("replay"), 0);
        assert_eq!(cursor(&log).await.map(|c| c.position), Some(5));
        let verdict = log.verify().await.expect("verify");
        assert_eq!((verdict.events, verdict.broken), (5, None));
    }
}

#[tokio::test]
async fn the_cursor_moves_only_with_the_events() {
    for at in crate::store::testing::stores() {
        let (store, log) = store_and_log(&at).await;
        record(&store, 1000, "admin", "user.create", "alice", json!({})).await;
        // A failed write (here: the events table refuses inserts) keeps neither the events nor the cursor.
        let (refuse, allow) = match at.location {
            crate::store::Location::Sqlite(_) => (
                "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
                "DROP TRIGGER refuse",
            ),
            crate::store::Location::Postgres(_) => (
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;
                 CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse();",
                "DROP TRIGGER refuse ON events",
            ),
        };
        tamper(&at, refuse);
        assert!(shipper(&store, &log).catch_up().await.is_err());
        assert_eq!(cursor(&log).await, None);
        tamper(&at, allow);
        assert_eq!(shipper(&store, &log).catch_up().await.expect("ship"), 1);
        assert_eq!(all(&log).await.len(), 1);
    }
}

#[tokio::test]
async fn a_replaced_store_is_shipped_from_its_start() {
    for at in crate::store::testing::stores() {
        let (store, log) = store_and_log(&at).await;
        record(&store, 1000, "admin", "user.create", "alice", json!({})).await;
        record(&store, 1001, "admin", "user.create", "bob", json!({})).await;
        assert_eq!(shipper(&store, &log).catch_up().await.expect("ship"), 2);

        // Same audit log, a fresh store: its entry 1 is not the entry 1 already shipped.
        let other = match at.location {
            crate::store::Location::Sqlite(_) => crate::store::testing::sqlite(),
            crate::store::Location::Postgres(_) => crate::store::testing::postgres(),
        };
        let (fresh, _) = store_and_log(&other).await;
        record(&fresh, 5000, "admin", "user.create", "carol", json!({})).await;
        assert_eq!(shipper(&fresh, &log).catch_up().await.expect("ship"), 1);
        let ids: Vec<String> = all(&log).await.into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["wf_1_1000", "wf_2_1001", "wf_1_5000"]);
    }
}

#[tokio::test]
async fn shipped_events_carry_the_request_reason_and_approvers_as_they_stood() {
    for at in crate::store::testing::stores() {
        let (store, log) = store_and_log(&at).await;
        store
            .call(|conn| {
            conn.batch(
                "INSERT INTO users (name, token_hash, scram_verifier, created_at) VALUES ('alice', 'h1', 'v', 0);
                 INSERT INTO requests (id, user_name, resource, role, state, reason, duration_ms, created_at,
                                       decided_at, decided_by, approvals_required)
                     VALUES ('req_1', 'alice', 'orders', 'read', 'approved', 'INC-7 slow orders', 3600000, 1000,
                             3000, 'dave', 2);
                 INSERT INTO approvals (request_id, approver, at) VALUES ('req_1', 'carol', 2000), ('req_1', 'dave', 3000);
                 INSERT INTO grants (id, request_id, user_name, resource, role, starts_at, expires_at)
                     VALUES ('grt_1', 'req_1', 'alice', 'orders', 'read', 3000, 3603000);",
            )
            .map_err(ControlError::from)
        })
            .await
            .expect("rows");
        let requested = json!({ "user": "alice", "resource": "orders", "role": "read", "reason": "INC-7 slow orders" });
        record(&store, 1000, "alice", "request.create", "req_1", requested).await;
        record(
            &store,
            2000,
            "carol",
            "request.approve",
            "req_1",
            json!({ "granted": false }),
        )
        .await;
        record(
            &store,
            3000,
            "dave",
            "request.approve",
            "req_1",
            json!({ "granted": true }),
        )
        .await;
        record(
            &store,
            3000,
            "dave",
            "grant.create",
            "grt_1",
            json!({ "user": "alice", "request_id": "req_1" }),
        )
        .await;
        record(
            &store,
            4000,
            "carol",
            "grant.revoke",
            "grt_1",
            json!({ "reason": "done" }),
        )
        .await;
        let kill = json!({ "user": "alice", "resource": "orders", "role": "read", "grant_id": "grt_1" });
        record(&store, 5000, "admin", "session.kill", "ses_1", kill).await;
        assert_eq!(shipper(&store, &log).catch_up().await.expect("ship"), 6);

        let events = all(&log).await;
        let summary: Vec<(&str, &str, Vec<&str>, Option<&str>)> = events
            .iter()
            .map(|e| {
                (
                    e.action.as_str(),
                    e.user.as_str(),
                    e.approvers.iter().map(String::as_str).collect(),
                    e.grant_id.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("request.create", "alice", vec![], None),
                ("request.approve", "carol", vec!["carol"], None),
                ("request.approve", "dave", vec!["carol", "dave"], Some("grt_1")),
                ("grant.create", "dave", vec!["carol", "dave"], Some("grt_1")),
                ("grant.revoke", "carol", vec!["carol", "dave"], Some("grt_1")),
                ("session.kill", "admin", vec!["carol", "dave"], Some("grt_1")),
            ]
        );
        for e in &events {
            assert_eq!(e.request_id.as_deref(), Some("req_1"), "{e:?}");
            assert_eq!(e.reason.as_deref(), Some("INC-7 slow orders"), "{e:?}");
            assert_eq!(
                (e.resource.as_deref(), e.role.as_deref()),
                (Some("orders"), Some("read"))
            );
        }
        // The request's own reason is not repeated in detail; an action's own reason is kept there.
        assert!(!events[0].detail.contains_key("reason"));
        assert_eq!(events[0].detail.get("requester").map(String::as_str), Some("alice"));
        assert_eq!(events[4].detail.get("reason").map(String::as_str), Some("done"));
        assert_eq!(events[5].session_id.as_deref(), Some("ses_1"));
        assert_eq!(events[5].detail.get("session_user").map(String::as_str), Some("alice"));
    }
}

#[tokio::test]
async fn writes_are_counted_and_their_lag_observed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = prometheus::Registry::new();
    let metrics = crate::metrics::Metrics::register(&registry).expect("metrics");
    let log = AuditLog::open_blocking(dir.path())
        .expect("open")
        .with_metrics(metrics.audit.clone());
    let mut old = event(1, "alice", "statement");
    old.at = crate::time::now() - 2_000;
    log.append(vec![old.clone(), event(2, "alice", "statement")])
        .await
        .expect("append");
    log.append(vec![old]).await.expect("a resend");
    let written = metrics.audit.written.with_label_values(&["proxy"]).get();
    assert_eq!(written, 2, "duplicates are not counted");
    let lag = metrics.audit.lag.with_label_values(&["proxy"]);
    assert_eq!(lag.get_sample_count(), 2);
    assert!(
        lag.get_sample_sum() >= 2.0,
        "the old event waited 2 s: {}",
        lag.get_sample_sum()
    );
}

#[tokio::test]
async fn a_nul_in_a_name_is_stored_in_every_store_and_the_chain_holds() {
    for at in crate::store::testing::stores() {
        let (_, log) = store_and_log(&at).await;
        let mut e = AuditEvent::new("evt_nul".into(), 1000, "connect.denied", "a\0b");
        e.role = Some("r\0".into());
        e.detail.insert("why".into(), "x\0y".into());
        let mut after = AuditEvent::new("evt_after".into(), 1001, "connect.denied", "carol");
        after.session_id = Some("ses_1".into());
        // On PostgreSQL the NUL failed the insert, and with it every later event.
        assert_eq!(log.append(vec![e, after]).await.expect("append"), 2);
        let events = all(&log).await;
        assert_eq!(events[0].user, "a\u{fffd}b");
        assert_eq!(events[0].role.as_deref(), Some("r\u{fffd}"));
        assert_eq!(
            events[0].detail.get("why").map(String::as_str),
            Some("x\0y"),
            "JSON keeps it"
        );
        assert_eq!(events[1].id, "evt_after");
        let verdict = log.verify().await.expect("verify");
        assert_eq!((verdict.events, verdict.broken), (2, None));
    }
}
