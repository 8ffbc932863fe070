//! One audit event per statement, through real clients: psql's simple
//! protocol, tokio-postgres's Parse/Bind/Execute, COPY, errors, a statement
//! far over the kept size, and passwords redacted before anything is stored.

use std::time::{Duration, Instant};

use portcullis_control::audit::{AuditLog, Search};
use portcullis_protocol::audit::AuditEvent;

use crate::harness::{Gateway, GatewayOptions, connect, ok, running_upstream};

/// The statement events so far, oldest first, once at least `min` are there.
pub(crate) async fn statements(gw: &Gateway, min: usize) -> Vec<AuditEvent> {
    events(gw, "statement", min).await
}

/// Every statement event of `sessions` sessions, once their ends are in
/// the log: a session's statements reach the log before its end does.
pub(crate) async fn statements_of_ended(gw: &Gateway, sessions: usize) -> Vec<AuditEvent> {
    let ends = events(gw, "session.end", sessions).await;
    assert!(ends.len() >= sessions, "{} of {sessions} sessions ended", ends.len());
    statements(gw, 0).await
}

/// The events of `action` so far, oldest first, once at least `min` are
/// there (or 30 s have passed).
async fn events(gw: &Gateway, action: &str, min: usize) -> Vec<AuditEvent> {
    let log = AuditLog::open_blocking(&gw.data_dir).expect("open the gateway's audit log");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let search = Search {
            action: Some(action.into()),
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

pub(crate) fn detail<'a>(e: &'a AuditEvent, key: &str) -> &'a str {
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
    // One Query of two commands, the second failing: the first's tag stays.
    assert!(!psql("SELECT 1; SELECT 1/0").status.success());
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
        (
            detail(failed, "outcome"),
            detail(failed, "sqlstate"),
            detail(failed, "tag")
        ),
        ("error", "22012", "SELECT 1")
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
    // Sent in binary with no declared type: the server's ParameterDescription
    // (answering the driver's Describe) tells the audit it is an int4.
    assert_eq!(detail(bound, "params"), r#"["41"]"#);
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
    let query = format!("SELECT pg_sleep(30) AS revoked_{}", crate::harness::pg::random_hex());
    let sent = query.clone();
    let running = tokio::spawn(async move { client.simple_query(&sent).await });
    running_upstream(&query, 1).await;
    gw.cli_ok(&carol, &["revoke", &gid, "--reason", "stop"]);
    assert!(running.await.expect("join").is_err());
    let all = statements(&gw, 1).await;
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(
        (detail(&all[0], "text"), detail(&all[0], "outcome")),
        (query.as_str(), "interrupted")
    );
}

/// A value tokio-postgres sends in text format (its own types go as binary),
/// as psql's `\bind`, JDBC and many other drivers send theirs.
#[derive(Debug)]
struct AsText(&'static str);

impl tokio_postgres::types::ToSql for AsText {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    fn encode_format(&self, _: &tokio_postgres::types::Type) -> tokio_postgres::types::Format {
        tokio_postgres::types::Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A plain tokio-postgres client through the gateway (one that can open transactions).
pub(crate) async fn client(gw: &Gateway, token: &str) -> tokio_postgres::Client {
    let (client, conn) = gw
        .pg_config("alice", token, "orders")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

/// The statement event whose text is `text`.
pub(crate) fn with_text<'a>(all: &'a [AuditEvent], text: &str) -> &'a AuditEvent {
    all.iter()
        .find(|e| detail(e, "text") == text)
        .unwrap_or_else(|| panic!("no statement {text:?} in {all:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_statements_carry_names_values_portals_and_copy_in() {
    use futures_util::SinkExt;

    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    let mut c = client(&gw, &alice).await;

    // A named statement with a text-format value, then a NULL.
    let named = c.prepare("SELECT $1::text AS t").await.expect("prepare");
    let row = c.query_one(&named, &[&AsText("hello audit")]).await.expect("query");
    assert_eq!(row.get::<_, &str>(0), "hello audit");
    c.query_one(&named, &[&None::<&str>]).await.expect("NULL");
    // Binary values of types the Parse declares read as their text form.
    let typed = c
        .prepare_typed(
            "SELECT $1 + 1, $2, $3",
            &[
                tokio_postgres::types::Type::INT4,
                tokio_postgres::types::Type::BOOL,
                tokio_postgres::types::Type::TEXT,
            ],
        )
        .await
        .expect("prepare typed");
    c.query_one(&typed, &[&41i32, &true, &"binary text"])
        .await
        .expect("typed");
    // A named portal read two rows at a time, to its end: one statement.
    let tx = c.transaction().await.expect("begin");
    let portal = tx
        .bind("SELECT generate_series(1, $1::int)", &[&5i32])
        .await
        .expect("bind");
    for rows in [2, 2, 1] {
        assert_eq!(tx.query_portal(&portal, 2).await.expect("portal").len(), rows);
    }
    // Another read one row, then closed.
    let early = tx
        .bind("SELECT generate_series(1, $1::int) AS early", &[&3i32])
        .await
        .expect("bind");
    assert_eq!(tx.query_portal(&early, 1).await.expect("portal").len(), 1);
    drop(early);
    tx.commit().await.expect("commit");
    // COPY FROM STDIN through the extended protocol.
    c.batch_execute("CREATE TEMP TABLE audited (x int)")
        .await
        .expect("temp table");
    let sink = c.copy_in("COPY audited FROM STDIN").await.expect("copy in");
    let mut sink = std::pin::pin!(sink);
    sink.send(bytes::Bytes::from_static(b"1\n2\n3\n"))
        .await
        .expect("copy data");
    assert_eq!(sink.finish().await.expect("copy done"), 3);
    // The driver's Sync sent within the COPY gets no answer: the session,
    // still open, owes none, so its statements reach the log as they run.
    c.execute("SELECT 'after the copy'", &[]).await.expect("after");
    let all = statements(&gw, 10).await;
    with_text(&all, "SELECT 'after the copy'");
    drop(c);
    let texts: Vec<&str> = all.iter().map(|e| detail(e, "text")).collect();
    let named_runs: Vec<&AuditEvent> = all
        .iter()
        .filter(|e| detail(e, "text") == "SELECT $1::text AS t")
        .collect();
    assert_eq!(named_runs.len(), 2, "{texts:#?}");
    let (first, null) = (named_runs[0], named_runs[1]);
    assert!(!detail(first, "statement").is_empty(), "a named statement: {first:?}");
    assert_eq!(detail(first, "statement"), detail(null, "statement"));
    assert_eq!(
        (
            detail(first, "flow"),
            detail(first, "param_count"),
            detail(first, "params")
        ),
        ("extended", "1", r#"["hello audit"]"#)
    );
    assert_eq!((detail(first, "tag"), detail(first, "rows")), ("SELECT 1", "1"));
    assert_eq!(detail(null, "params"), "[null]");

    let typed = with_text(&all, "SELECT $1 + 1, $2, $3");
    assert_eq!(detail(typed, "params"), r#"["41","t","binary text"]"#);

    let pieces: Vec<&AuditEvent> = all
        .iter()
        .filter(|e| detail(e, "text").starts_with("SELECT generate_series"))
        .collect();
    assert_eq!(pieces.len(), 2, "one event a portal: {texts:#?}");
    let read = with_text(&all, "SELECT generate_series(1, $1::int)");
    assert!(!detail(read, "portal").is_empty(), "a named portal: {read:?}");
    assert_eq!(
        (
            detail(read, "outcome"),
            detail(read, "tag"),
            detail(read, "rows"),
            detail(read, "executes"),
            detail(read, "params")
        ),
        ("ok", "SELECT 1", "5", "3", r#"["5"]"#)
    );
    let early = with_text(&all, "SELECT generate_series(1, $1::int) AS early");
    assert_eq!(
        (
            detail(early, "outcome"),
            detail(early, "rows"),
            detail(early, "param_count")
        ),
        ("suspended", "1", "1")
    );
    assert_eq!(detail(with_text(&all, "START TRANSACTION"), "class"), "TRANSACTION");

    let copy = with_text(&all, "COPY audited FROM STDIN");
    assert_eq!(
        (detail(copy, "flow"), detail(copy, "copy"), detail(copy, "copy_bytes")),
        ("extended", "from_stdin", "6")
    );
    assert_eq!((detail(copy, "tag"), detail(copy, "rows")), ("COPY 3", "3"));
}

/// SQL-level PREPARE and EXECUTE: an EXECUTE's event names the statement
/// it ran, with its class and tables, as long as the name holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_with_redact_parameters_keeps_values_out() {
    let gw = Gateway::start(GatewayOptions {
        policy_extra: "      redact_parameters: true\n".to_owned(),
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    let c = client(&gw, &alice).await;
    let card = "4111 1111 1111 1111";
    let row = c
        .query_one("SELECT length($1::text) AS n", &[&AsText(card)])
        .await
        .expect("query");
    assert_eq!(row.get::<_, i32>(0), 19);
    c.query_one("SELECT $1::int + 1", &[&7i32]).await.expect("binary");
    drop(c);

    let all = statements(&gw, 2).await;
    let text = with_text(&all, "SELECT length($1::text) AS n");
    assert_eq!(
        (detail(text, "params"), detail(text, "param_count")),
        ("[redacted by policy]", "1")
    );
    assert_eq!((detail(text, "outcome"), detail(text, "rows")), ("ok", "1"));
    let binary = with_text(&all, "SELECT $1::int + 1");
    assert_eq!(detail(binary, "params"), "[redacted by policy]");

    // Nowhere: not in any event, nor in the audit log's files.
    assert!(!format!("{all:?}").contains(card));
    let log = AuditLog::open_blocking(&gw.data_dir).expect("open");
    assert_eq!(log.verify().await.expect("verify").broken, None);
    let files = gw.audit_files_text();
    let blocks = files.last().map(|(_, text)| text.as_str()).unwrap_or_default();
    assert!(
        blocks.contains("SELECT $1::int + 1"),
        "the scan reads the blocks: {blocks}"
    );
    for (file, text) in files {
        assert!(!text.contains(card), "the value reached {file}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_audit_cannot_follow_is_cut_and_says_why() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    let (c, conn) = gw
        .pg_config("alice", &alice, "orders")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    let conn = tokio::spawn(conn);
    c.query_one("SELECT 1", &[]).await.expect("a first statement");
    // More prepared statements alive at once than the audit follows (10,000).
    let mut held = Vec::new();
    let err = loop {
        match c.prepare("SELECT 2").await {
            Ok(statement) => held.push(statement),
            Err(e) => break e,
        }
        assert!(held.len() < 20_000, "the session was never cut");
    };
    assert!(held.len() >= 10_000, "cut after {} statements: {err}", held.len());
    // The FATAL answers the request in flight, or when none was, ends the connection.
    let db = match err.as_db_error() {
        Some(db) => db.clone(),
        None => conn
            .await
            .expect("join")
            .err()
            .and_then(|e| e.as_db_error().cloned())
            .unwrap_or_else(|| panic!("no FATAL from the gateway: {err:?}")),
    };
    assert_eq!(db.code().code(), "54000");
    assert!(
        db.message()
            .contains("the audit cannot follow it (more than 10000 prepared statements"),
        "{}",
        db.message()
    );

    let all = statements(&gw, 2).await;
    let lost: Vec<_> = all.iter().filter(|e| detail(e, "outcome") == "not_followed").collect();
    let marker: Vec<_> = lost.iter().filter(|e| !detail(e, "why").is_empty()).collect();
    assert_eq!(marker.len(), 1, "{lost:#?}");
    assert!(detail(marker[0], "why").starts_with("more than 10000 prepared statements"));
    assert!(
        lost.iter().any(|e| detail(e, "text") == "SELECT 2"),
        "the Parse that stopped it, by its text: {lost:#?}"
    );
    assert_eq!(detail(&all[0], "text"), "SELECT 1", "statements before it are recorded");
    let ends = events(&gw, "session.end", 1).await;
    let end = ends.first().expect("no session.end");
    assert_eq!(detail(end, "ended"), "audit_lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_statement_is_recorded_cut_and_never_held_whole() {
    use sha2::{Digest, Sha256};

    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    let c = client(&gw, &alice).await;
    c.simple_query("SELECT 1").await.expect("warm up");
    let before = gw.peak_rss_kib();
    // 100 MB, most of it a comment: the server reads it all, cheaply.
    let huge = format!("SELECT 7 AS n -- {}", "x".repeat(100 << 20));
    let rows = c.simple_query(&huge).await.expect("the huge statement");
    assert!(
        rows.iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("7"))),
        "{rows:?}"
    );
    let grown = gw.peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 48 * 1024,
        "the gateway grew by {grown} KiB for a 100 MB statement"
    );

    let all = statements(&gw, 2).await;
    let cut = all
        .iter()
        .find(|e| detail(e, "text_len") == huge.len().to_string())
        .unwrap_or_else(|| panic!("no cut statement in {all:#?}"));
    let sha: String = Sha256::digest(huge.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(detail(cut, "text_sha256"), sha);
    let kept = detail(cut, "text");
    assert!(kept.len() <= 64 * 1024 && kept.len() > 60 * 1024 && huge.starts_with(kept));
    assert_eq!((detail(cut, "outcome"), detail(cut, "rows")), ("ok", "1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_large_object_calls_are_function_events_with_their_arguments() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("body.txt");
    let body = b"a large object's body";
    std::fs::write(&file, body).expect("write");
    // libpq's large-object calls take the fast path (FunctionCall).
    let out = tokio::task::block_in_place(|| {
        gw.psql(
            "alice",
            &alice,
            "orders",
            "disable",
            &format!("\\lo_import {}", file.display()),
        )
    });
    assert!(ok(&out, "psql \\lo_import").starts_with("lo_import "));

    let want = format!("<binary, {} bytes>", body.len());
    let deadline = Instant::now() + Duration::from_secs(30);
    let calls = loop {
        let all = statements(&gw, 1).await;
        let calls: Vec<AuditEvent> = all.into_iter().filter(|e| detail(e, "flow") == "function").collect();
        if calls.iter().any(|e| detail(e, "params").contains(&want)) || Instant::now() > deadline {
            break calls;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        calls.iter().any(|e| detail(e, "params").contains(&want)),
        "the write, with its data's length: {calls:#?}"
    );
    for e in &calls {
        assert!(detail(e, "text").starts_with("<function call, oid "), "{e:?}");
        assert_eq!(detail(e, "outcome"), "ok", "{e:?}");
    }
}
