//! One audit event per statement, through real clients: psql's simple
//! protocol, tokio-postgres's Parse/Bind/Execute, COPY, errors, a statement
//! far over the kept size, and passwords redacted before anything is stored.

use std::time::{Duration, Instant};

use portcullis_control::audit::{AuditLog, Search};
use portcullis_protocol::audit::AuditEvent;

use crate::harness::{Gateway, GatewayOptions, connect, ok};

/// The statement events so far, oldest first, once at least `min` are there.
async fn statements(gw: &Gateway, min: usize) -> Vec<AuditEvent> {
    let log = AuditLog::open_blocking(&gw.data_dir).expect("open the gateway's audit log");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let search = Search {
            action: Some("statement".into()),
            limit: 10_000,
            ..Search::default()
        };
        let found: Vec<AuditEvent> = log
            .search(search)
            .await
            .expect("search")
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        if found.len() >= min || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn detail<'a>(e: &'a AuditEvent, key: &str) -> &'a str {
    e.detail.get(key).map_or("", String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_is_one_event_with_its_outcome() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let (_, gid) = gw.grant(&alice, &carol, "orders", None, "1h");

    // psql, simple protocol: a statement, a COPY out, an error, a password.
    let gw_ref = &gw;
    let psql = |sql: &str| tokio::task::block_in_place(|| gw_ref.psql("alice", &alice, "orders", "disable", sql));
    assert_eq!(
        ok(
            &psql("SELECT count(*) FROM pg_class WHERE relname = 'pg_class'"),
            "psql"
        ),
        "1"
    );
    ok(&psql("COPY (SELECT generate_series(1, 100)) TO STDOUT"), "psql copy");
    assert!(!psql("SELECT 1/0").status.success());
    assert!(!psql("ALTER ROLE no_such_role PASSWORD 'hunter2'").status.success());

    // tokio-postgres, extended protocol: Parse, Bind, Execute with a value.
    let s = connect(&gw.pg_config("alice", &alice, "orders"))
        .await
        .expect("connect");
    let rows = s
        .client
        .query("SELECT $1::int + 1 AS n", &[&41i32])
        .await
        .expect("query");
    assert_eq!(rows[0].get::<_, i32>(0), 42);
    let err = s
        .client
        .query("SELECT 1 / $1::int", &[&0i32])
        .await
        .expect_err("division by zero");
    assert_eq!(err.code().map(|c| c.code()), Some("22012"));
    // A statement far over what is kept: recorded cut, with length and hash.
    let huge = format!("SELECT length('{}')", "x".repeat(1 << 20));
    let rows = s.client.simple_query(&huge).await.expect("huge");
    assert!(!rows.is_empty());
    drop(s);

    let all = statements(&gw, 7).await;
    let texts: Vec<&str> = all.iter().map(|e| detail(e, "text")).collect();
    assert_eq!(all.len(), 7, "{texts:#?}");
    for e in &all {
        assert_eq!((e.user.as_str(), e.grant_id.as_deref()), ("alice", Some(gid.as_str())));
        assert_eq!(e.reason.as_deref(), Some("e2e test"), "{e:?}");
        assert_eq!(e.approvers, ["carol"], "{e:?}");
        assert!(e.session_id.as_deref().is_some_and(|id| id.starts_with("ses_")));
        assert!(detail(e, "duration_us").parse::<u64>().is_ok());
    }

    let select = &all[0];
    assert_eq!(
        (
            detail(select, "flow"),
            detail(select, "class"),
            detail(select, "tables")
        ),
        ("simple", "SELECT", "pg_class")
    );
    assert_eq!(
        (detail(select, "outcome"), detail(select, "tag"), detail(select, "rows")),
        ("ok", "SELECT 1", "1")
    );

    let copy = &all[1];
    assert_eq!((detail(copy, "class"), detail(copy, "copy")), ("COPY", "to_stdout"));
    assert!(detail(copy, "copy_bytes").parse::<u64>().expect("bytes") >= 292);

    let failed = &all[2];
    assert_eq!(
        (detail(failed, "outcome"), detail(failed, "sqlstate")),
        ("error", "22012")
    );

    let password = &all[3];
    assert_eq!(
        detail(password, "text"),
        "ALTER ROLE no_such_role PASSWORD '[redacted]'"
    );
    assert_eq!(
        (detail(password, "redacted"), detail(password, "class")),
        ("true", "DCL")
    );

    let bound = &all[4];
    assert_eq!(
        (
            detail(bound, "flow"),
            detail(bound, "text"),
            detail(bound, "param_count")
        ),
        ("extended", "SELECT $1::int + 1 AS n", "1")
    );
    assert_eq!((detail(bound, "outcome"), detail(bound, "rows")), ("ok", "1"));
    assert_eq!(detail(bound, "params"), r#"["<binary, 4 bytes>"]"#);
    assert_eq!(
        (detail(&all[5], "outcome"), detail(&all[5], "sqlstate")),
        ("error", "22012")
    );

    let cut = &all[6];
    assert_eq!(detail(cut, "text_len"), huge.len().to_string());
    assert_eq!(detail(cut, "text_sha256").len(), 64);
    assert!(detail(cut, "text").len() <= 64 * 1024 && huge.starts_with(detail(cut, "text")));

    let everything = format!("{all:?}");
    assert!(!everything.contains("hunter2"), "a password reached the audit log");
    let log = AuditLog::open_blocking(&gw.data_dir).expect("open");
    assert_eq!(log.verify().await.expect("verify").broken, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_session_records_the_statement_it_interrupted() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let (_, gid) = gw.grant(&alice, &carol, "orders", None, "1h");
    let s = connect(&gw.pg_config("alice", &alice, "orders"))
        .await
        .expect("connect");
    let client = std::sync::Arc::clone(&s.client);
    let running = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.cli_ok(&carol, &["revoke", &gid, "--reason", "stop"]);
    assert!(running.await.expect("join").is_err());
    let all = statements(&gw, 1).await;
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(
        (detail(&all[0], "text"), detail(&all[0], "outcome")),
        ("SELECT pg_sleep(30)", "interrupted")
    );
}
