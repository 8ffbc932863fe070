//! Live sessions are cut at expiry and on revoke (warned first), outlive
//! their first deadline when extended, and can be killed one by one; the
//! sessions list shows them.

use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;

use crate::harness::pg::pg;
use crate::harness::{Event, Gateway, GatewayOptions, Session, connect, now, parse_time, secs_between};

type QueryResult = (OffsetDateTime, Result<(), tokio_postgres::Error>);

/// Starts `sql` on its own task; answers when and how it ended.
fn spawn_query(s: &Session, sql: String) -> tokio::task::JoinHandle<QueryResult> {
    let client = s.client.clone();
    tokio::spawn(async move {
        let r = client.simple_query(&sql).await.map(drop);
        (now(), r)
    })
}

/// Whether the upstream backend running a statement containing `marker` is gone.
fn wait_upstream_gone(marker: &str, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        let n = pg().sql(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()"),
        );
        if n == "0" {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn notices(events: &[(OffsetDateTime, Event)]) -> Vec<(OffsetDateTime, String)> {
    events
        .iter()
        .filter_map(|(at, e)| match e {
            Event::Notice(n) => Some((*at, n.message().to_owned())),
            _ => None,
        })
        .collect()
}

fn expires_at(gw: &Gateway, token: &str, gid: &str) -> OffsetDateTime {
    parse_time(gw.grant_json(token, gid)["expires_at"].as_str().expect("expires_at"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_warns_then_cuts_a_running_query() {
    let gw = Gateway::start(GatewayOptions {
        warn_before: vec!["2s".into()],
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let (_, gid) = gw.grant(&alice, &carol, "orders", None, "4s");
    let expires = expires_at(&gw, &alice, &gid);
    let mut s = connect(&gw.pg_config("alice", &alice, "orders"))
        .await
        .expect("connect");
    let marker = format!("expiry_{}", gid.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
    let query = spawn_query(&s, format!("SELECT pg_sleep(30) /* {marker} */"));

    let (events, closed) = s.until_closed(Duration::from_secs(30)).await;
    let (ended, result) = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .expect("the query should end with the session")
        .expect("join");

    let warned = notices(&events);
    assert!(
        !warned.is_empty(),
        "no warning notice before the cut; events: {events:?}"
    );
    let (warned_at, text) = &warned[0];
    let lead = secs_between(*warned_at, expires);
    assert!(
        (0.5..=3.5).contains(&lead),
        "the 2s warning came {lead:.2}s before expires_at ({text})"
    );
    assert!(
        text.contains(&gid) || text.to_lowercase().contains("expire"),
        "the warning should say what will happen: {text}"
    );

    let err = result.expect_err("pg_sleep(30) must not survive the grant");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("the cut should be an ErrorResponse, got {err:?}"));
    assert_eq!(db.severity(), "FATAL", "{db:?}");
    assert!(
        db.message().contains(&gid),
        "the FATAL should name grant {gid}: {}",
        db.message()
    );
    let late = secs_between(expires, ended);
    assert!(late > -0.2, "cut {:.2}s before expires_at", -late);
    assert!(late < 3.0, "cut {late:.2}s after expires_at");
    let closed = closed.expect("the connection should close after the cut");
    assert!(
        secs_between(expires, closed) < 5.0,
        "closed {:.2}s after expires_at",
        secs_between(expires, closed)
    );
    assert!(
        wait_upstream_gone(&marker, Duration::from_secs(5)),
        "the upstream backend still runs the query"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_cuts_a_running_query() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let (_, gid) = gw.grant(&alice, &carol, "orders", None, "1h");
    let mut s = connect(&gw.pg_config("alice", &alice, "orders"))
        .await
        .expect("connect");
    let marker = format!("revoke_{}", gid.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
    let query = spawn_query(&s, format!("SELECT pg_sleep(30) /* {marker} */"));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let out = gw.cli_ok(&carol, &["revoke", &gid, "--reason", "e2e says stop"]);
    let revoked = now();
    assert!(out.starts_with("revoked "), "{out}");

    let (ended, result) = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the query should end soon after the revoke")
        .expect("join");
    let err = result.expect_err("pg_sleep(30) must not survive the revoke");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("the cut should be an ErrorResponse, got {err:?}"));
    assert_eq!(db.severity(), "FATAL");
    assert!(db.message().contains(&gid), "{}", db.message());
    assert!(db.message().contains("revoked"), "{}", db.message());
    assert!(
        secs_between(revoked, ended) < 3.0,
        "cut {:.2}s after the revoke",
        secs_between(revoked, ended)
    );
    let (_, closed) = s.until_closed(Duration::from_secs(5)).await;
    assert!(closed.is_some(), "the connection should close after the cut");
    assert!(
        wait_upstream_gone(&marker, Duration::from_secs(5)),
        "the upstream backend still runs the query"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_lets_a_session_outlive_its_first_deadline() {
    let gw = Gateway::start(GatewayOptions {
        warn_before: vec!["2s".into()],
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let (_, gid) = gw.grant(&alice, &carol, "orders", None, "5s");
    let first = expires_at(&gw, &alice, &gid);
    let mut s = connect(&gw.pg_config("alice", &alice, "orders"))
        .await
        .expect("connect");
    let query = spawn_query(&s, "SELECT pg_sleep(7)".into());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let out = gw.cli_ok(&carol, &["extend", &gid, "--by", "1m"]);
    let (state, deadline) = out.split_once(' ').unwrap_or_else(|| panic!("extend printed {out:?}"));
    assert_eq!(state, "active");
    let second = parse_time(deadline);
    assert!((secs_between(first, second) - 60.0).abs() < 1.0);

    let (ended, result) = tokio::time::timeout(Duration::from_secs(20), query)
        .await
        .expect("pg_sleep(7) should finish")
        .expect("join");
    result.expect("pg_sleep(7) should outlive the first deadline");
    assert!(
        secs_between(first, ended) > 0.0,
        "the query ended before the first deadline anyway"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let row = s
        .client
        .query_one("SELECT 1", &[])
        .await
        .expect("a query after the first deadline");
    assert_eq!(row.get::<_, i32>(0), 1);

    let mut seen = Vec::new();
    while let Some(ev) = s.next_event(Duration::from_millis(200)).await {
        seen.push(ev);
    }
    assert!(
        !seen.iter().any(|(_, e)| matches!(e, Event::Closed(_))),
        "the session closed: {seen:?}"
    );
    let shown = &deadline[..19];
    let told = notices(&seen);
    assert!(
        told.iter()
            .any(|(_, m)| m.contains(shown) || m.contains(&shown.replace('T', " "))),
        "a notice should give the new deadline ({deadline}); notices: {told:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_one_session_and_spares_another() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    let mut doomed = connect(&gw.pg_config("alice", &alice, "orders"))
        .await
        .expect("connect");
    let first = live_sessions(&gw, &alice);
    assert_eq!(first.len(), 1, "{first:?}");
    let doomed_id = first[0]["id"].as_str().expect("session id").to_owned();
    let spared = connect(&gw.pg_config("alice", &alice, "orders"))
        .await
        .expect("connect");
    assert_eq!(live_sessions(&gw, &alice).len(), 2);

    assert_eq!(gw.cli_ok(&carol, &["kill", &doomed_id]), "killed");
    let (events, closed) = doomed.until_closed(Duration::from_secs(5)).await;
    assert!(closed.is_some(), "the killed session is still open; events: {events:?}");
    assert!(doomed.client.query_one("SELECT 1", &[]).await.is_err());
    let row = spared
        .client
        .query_one("SELECT 2", &[])
        .await
        .expect("the other session");
    assert_eq!(row.get::<_, i32>(0), 2);
    // The killed session leaves the list once its end is recorded.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut left = live_sessions(&gw, &alice);
    while left.len() > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = live_sessions(&gw, &alice);
    }
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0]["id"], doomed_id.as_str());
}

fn live_sessions(gw: &Gateway, token: &str) -> Vec<Value> {
    let out = gw.cli_ok(token, &["sessions", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("sessions --json ({e}): {out}"));
    v.as_array().cloned().unwrap_or_else(|| panic!("not an array: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_lists_live_sessions() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let bob = gw.add_user("bob", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let (_, gid) = gw.grant(&alice, &carol, "orders", None, "1h");
    let before = now();
    let s = connect(&gw.pg_config("alice", &alice, "orders"))
        .await
        .expect("connect");
    let rows = s.client.query("SELECT name FROM items", &[]).await.expect("query");
    assert_eq!(rows.len(), 1000);

    let listed = live_sessions(&gw, &alice);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let x = &listed[0];
    for key in [
        "id",
        "user",
        "resource",
        "role",
        "protocol",
        "grant_id",
        "started_at",
        "bytes_in",
        "bytes_out",
    ] {
        assert!(x.get(key).is_some(), "session JSON lacks {key}: {x}");
    }
    assert_eq!(x["user"], "alice");
    assert_eq!(x["resource"], "orders");
    assert_eq!(x["role"], "read");
    assert_eq!(x["protocol"], "postgres");
    assert_eq!(x["grant_id"], gid.as_str());
    let started = parse_time(x["started_at"].as_str().expect("started_at"));
    assert!(
        secs_between(before, started) > -1.0,
        "started_at {started} is before the test connected"
    );
    assert!(x["bytes_in"].as_u64().is_some_and(|n| n > 0), "{x}");
    assert!(
        x["bytes_out"].as_u64().is_some_and(|n| n > 10_000),
        "1000 rows went out: {x}"
    );

    // The approver sees it; an unrelated user does not.
    assert_eq!(live_sessions(&gw, &carol).len(), 1);
    assert!(live_sessions(&gw, &bob).is_empty());
    let table = gw.cli_ok(&alice, &["sessions"]);
    assert!(table.lines().next().is_some_and(|h| h.contains("ID")), "{table}");
    assert!(table.contains(x["id"].as_str().expect("id")), "{table}");

    drop(s);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !live_sessions(&gw, &alice).is_empty() {
        assert!(std::time::Instant::now() < deadline, "a closed session is still listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_client_that_vanishes_mid_query_leaves_nothing_running() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    let marker = format!("vanish_{}", crate::harness::pg::random_hex());
    let conninfo = format!(
        "host=127.0.0.1 port={} user=alice dbname=orders sslmode=disable",
        gw.pg_port
    );
    let mut psql = std::process::Command::new("psql")
        .args(["-X", "-d", &conninfo, "-c", &format!("SELECT pg_sleep(60) AS {marker}")])
        .env("PGPASSWORD", &alice)
        .env("PGPASSFILE", "/dev/null")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn psql");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pg().sql(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()"),
    ) != "1"
    {
        assert!(std::time::Instant::now() < deadline, "the query never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Gone without a Terminate: the socket just closes.
    psql.kill().expect("kill psql");
    let _ = psql.wait();
    assert!(
        wait_upstream_gone(&marker, Duration::from_secs(5)),
        "the query of a vanished client must not keep running upstream"
    );
}
