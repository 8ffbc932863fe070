use std::collections::BTreeMap;

use portcullis_protocol::audit::{AuditEvent, ChainBreak};
use rusqlite::Connection;
use tokio::sync::mpsc;

use super::{AuditLog, FILE, Search, Verdict, key, spawn_writer};

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

async fn log_with(n: u64) -> (tempfile::TempDir, AuditLog) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::open_blocking(dir.path()).expect("open");
    let events = (1..=n)
        .map(|i| event(i, if i % 3 == 0 { "bob" } else { "alice" }, "statement"))
        .collect();
    assert_eq!(log.append(events).await.expect("append"), n as usize);
    (dir, log)
}

/// Edits the SQLite file directly, as someone with write access to it could.
fn tamper(dir: &tempfile::TempDir, sql: &str) {
    let conn = Connection::open(dir.path().join(FILE)).expect("open the file");
    conn.execute_batch(sql).expect("tamper");
}

#[tokio::test]
async fn an_untouched_log_verifies_and_duplicates_are_stored_once() {
    let (_dir, log) = log_with(10).await;
    // The sender retried: the same events again, and one new.
    let again = vec![event(3, "bob", "statement"), event(11, "alice", "session.end")];
    assert_eq!(log.append(again).await.expect("append"), 1);
    assert_eq!(
        log.verify().await.expect("verify"),
        Verdict {
            checked: 11,
            broken: None
        }
    );
}

#[tokio::test]
async fn verify_names_the_first_edit_deletion_or_reordering() {
    let (dir, log) = log_with(6).await;
    tamper(
        &dir,
        "UPDATE events SET detail = '{\"text\":\"SELECT 1\"}' WHERE seq = 4",
    );
    assert!(matches!(
        log.verify().await.expect("verify").broken,
        Some(ChainBreak::Edited { seq: 4, .. })
    ));

    let (dir, log) = log_with(6).await;
    tamper(&dir, "DELETE FROM events WHERE seq = 2");
    assert_eq!(
        log.verify().await.expect("verify").broken,
        Some(ChainBreak::Missing { expected: 2, found: 3 })
    );

    let (dir, log) = log_with(6).await;
    tamper(
        &dir,
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

#[tokio::test]
async fn search_filters_orders_and_pages() {
    let (_dir, log) = log_with(9).await;
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
            checked: 21,
            broken: None
        }
    );
}

#[test]
fn the_key_is_made_once_owner_only_and_never_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(key::FILE);
    let first = key::load_or_create(&path).expect("create");
    assert_eq!(key::load_or_create(&path).expect("load"), first);
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
