//! Warm server connections: a session that ends cleanly leaves its server
//! connection, reset with DISCARD ALL, to the next session of the same
//! resource, role and parameters; a session that ends mid-transaction or is
//! cut never does; cancel and pg_backend_pid stay true on a reused one.

use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::harness::pg::pg;
use crate::harness::{Gateway, GatewayOptions, cancel_long_query, connect, ok};
use crate::metrics::{metrics, sample};

/// Waits until the pool holds `n` idle connections (the reset runs after the client left).
fn wait_idle(gw: &Gateway, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(gw);
        if sample(&m, "portcullis_upstream_idle_connections", &[]) == Some(n) {
            return;
        }
        assert!(Instant::now() < deadline, "the pool never held {n} connections:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or_default().to_owned()
}

#[test]
fn the_next_session_gets_the_same_backend_reset() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");

    let dirty = "SET work_mem = '7MB'; CREATE TEMP TABLE scratch(x int); PREPARE p AS SELECT 1; \
                 LISTEN somewhere; SELECT pg_backend_pid()";
    let first = last_line(&ok(
        &gw.psql("alice", &alice, "orders", "disable", dirty),
        "dirty session",
    ));
    wait_idle(&gw, 1.0);

    let probe = "SELECT pg_backend_pid(), current_setting('work_mem'), \
                 (SELECT count(*) FROM pg_prepared_statements), \
                 (SELECT count(*) FROM pg_class WHERE relname = 'scratch'), \
                 (SELECT count(*) FROM pg_listening_channels())";
    let second = ok(&gw.psql("alice", &alice, "orders", "disable", probe), "second session");
    assert_eq!(second, format!("{first}|4MB|0|0|0"), "same backend, nothing left over");
    let m = metrics(&gw);
    assert_eq!(
        sample(&m, "portcullis_upstream_connections_total", &[r#"source="pool""#]),
        Some(1.0),
        "{m}"
    );

    // Other startup parameters: DISCARD ALL would reset to the wrong ones, so no sharing.
    wait_idle(&gw, 1.0);
    let conninfo = format!(
        "host=127.0.0.1 port={} user=alice dbname=orders sslmode=disable application_name=other",
        gw.pg_port
    );
    let third = ok(
        &gw.psql_conn(&conninfo, &alice, "SELECT pg_backend_pid()"),
        "other params",
    );
    assert_ne!(
        third, first,
        "a session with other parameters must not get the pooled backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_left_in_a_transaction_or_cut_is_not_reused() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let (_, gid) = gw.grant(&alice, &carol, "orders", None, "1h");
    let config = gw.pg_config("alice", &alice, "orders");
    let pid = |s: &crate::harness::Session| {
        let c = s.client.clone();
        async move {
            let row = c.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid");
            row.get::<_, i32>(0)
        }
    };

    // Quits with a transaction open: the reset fails and the backend is closed.
    let s = connect(&config).await.expect("connect");
    s.client.batch_execute("BEGIN").await.expect("begin");
    let in_tx = pid(&s).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = connect(&config).await.expect("connect");
    let next = pid(&s).await;
    assert_ne!(next, in_tx, "a backend left in a transaction must not be reused");

    // Cut by revoke: the connection is never given back.
    gw.cli_ok(&carol, &["revoke", &gid, "--reason", "pool test"]);
    let mut s = s;
    let (_, closed) = s.until_closed(Duration::from_secs(10)).await;
    assert!(closed.is_some(), "revoke should end the session");
    // An idle session's backend gets Terminate (no cancel needed) and exits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg().sql(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {next}"),
    ) != "0"
    {
        assert!(
            Instant::now() < deadline,
            "the cut session's backend {next} is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.grant(&alice, &carol, "orders", None, "1h");
    let s = connect(&config).await.expect("connect after a new grant");
    assert_ne!(pid(&s).await, next, "a cut session's backend must not be reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_backend_pid_hold_on_a_reused_connection() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    let config = gw.pg_config("alice", &alice, "orders");

    let s = connect(&config).await.expect("connect");
    let row = s.client.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid");
    let first: i32 = row.get(0);
    let old_token = s.client.cancel_token();
    drop(s);
    let gw_ref = &gw;
    tokio::task::block_in_place(|| wait_idle(gw_ref, 1.0));

    let s = connect(&config).await.expect("reconnect");
    let row = s.client.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid");
    assert_eq!(row.get::<_, i32>(0), first, "the warm backend is reused");
    // The backend's last user kept its cancel key: it must not reach the new session.
    let client = s.client.clone();
    let napper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(1)").await.map(drop) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    old_token.cancel_query(NoTls).await.expect("send the old CancelRequest");
    let nap = tokio::time::timeout(Duration::from_secs(10), napper)
        .await
        .expect("nap ends")
        .expect("join");
    assert!(nap.is_ok(), "the previous user cancelled this session's query: {nap:?}");
    assert_eq!(cancel_long_query(&s).await, "57014");
}
