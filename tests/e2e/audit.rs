//! The proxy's audit events reach the audit log: every refused connection
//! with why, every session's start and end with bytes, duration and how it
//! ended, chained so `verify` holds, and never a secret.

use std::time::{Duration, Instant};

use portcullis_control::audit::{AuditLog, Search};
use portcullis_protocol::audit::AuditEvent;

use crate::harness::pg::pg;
use crate::harness::{Gateway, GatewayOptions, connect, ok};

/// Every event so far but statements (tests/e2e/statements.rs has those),
/// oldest first, once at least `min` are there.
async fn events(gw: &Gateway, min: usize) -> Vec<AuditEvent> {
    let log = AuditLog::open_blocking(&gw.data_dir).expect("open the gateway's audit log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = log
            .search(Search {
                limit: 10_000,
                ..Search::default()
            })
            .await
            .expect("search");
        let all: Vec<AuditEvent> = all
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.action != "statement")
            .collect();
        if all.len() >= min || Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_sessions_are_recorded_and_chained() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let config = gw.pg_config("alice", &alice, "orders");

    // Refused: no grant yet.
    assert!(connect(&config).await.is_err());
    let (_, gid) = gw.grant(&alice, &carol, "orders", None, "1h");
    // A session that quits.
    let gw_ref = &gw;
    let out = tokio::task::block_in_place(|| gw_ref.psql("alice", &alice, "orders", "disable", "SELECT 42"));
    assert_eq!(ok(&out, "psql"), "42");
    // A session cut by revoke.
    let mut s = connect(&config).await.expect("connect");
    gw.cli_ok(&carol, &["revoke", &gid, "--reason", "audit test"]);
    assert!(s.until_closed(Duration::from_secs(10)).await.1.is_some());

    let all = events(&gw, 5).await;
    let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "connect.denied",
            "session.start",
            "session.end",
            "session.start",
            "session.end"
        ],
        "{all:#?}"
    );
    let denied = &all[0];
    assert_eq!(
        (denied.user.as_str(), denied.resource.as_deref()),
        ("alice", Some("orders"))
    );
    assert_eq!(denied.detail.get("outcome").map(String::as_str), Some("no_grant"));
    assert!(denied.detail["why"].contains("portcullis request"), "{denied:?}");

    let (start, quit, cut) = (&all[1], &all[2], &all[4]);
    assert_eq!(start.grant_id.as_deref(), Some(gid.as_str()));
    assert!(
        start.request_id.as_deref().is_some_and(|r| r.starts_with("req_")),
        "{start:?}"
    );
    assert_eq!(start.session_id, quit.session_id);
    assert_eq!(quit.detail["ended"], "client_quit");
    for key in ["bytes_in", "bytes_out", "duration_ms"] {
        let n: u64 = quit.detail[key].parse().expect("a number");
        assert!(key == "duration_ms" || n > 0, "{key} = {n}");
    }
    assert_eq!(cut.detail["ended"], "revoked");

    // The chain holds, and no secret is in any event.
    let log = AuditLog::open_blocking(&gw.data_dir).expect("open");
    let verdict = log.verify().await.expect("verify");
    assert_eq!(
        (verdict.checked, verdict.broken),
        (6, None),
        "five events and psql's statement"
    );
    let text = format!("{all:?}");
    for secret in [alice.as_str(), carol.as_str()].into_iter().chain(pg().secrets()) {
        assert!(!text.contains(secret), "a secret reached the audit log");
    }
}
