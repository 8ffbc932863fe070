//! SQL's names through real clients: an `EXECUTE` names the statement its
//! name held, and a `FETCH` the query of its cursor (psql's `FETCH_COUNT`
//! mode, tokio-postgres in SQL and over the extended protocol), as
//! `proxy/src/audit/sql_names.rs` follows them.

use portcullis_protocol::audit::AuditEvent;

use crate::harness::{Gateway, GatewayOptions, ok};
use crate::statements::{client, detail, statements, statements_of_ended, with_text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_names_the_prepared_statement_it_ran() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    let c = client(&gw, &alice).await;
    c.batch_execute("CREATE TEMP TABLE doomed (id int); INSERT INTO doomed VALUES (1), (2)")
        .await
        .expect("table");
    let prepare = "PREPARE del (int) AS DELETE FROM doomed WHERE id = $1";
    c.simple_query(prepare).await.expect("prepare");
    c.simple_query("EXECUTE del(1)").await.expect("execute");
    c.simple_query("DEALLOCATE del").await.expect("deallocate");
    let err = c.simple_query("EXECUTE del(2)").await.expect_err("deallocated");
    assert_eq!(err.code().map(|c| c.code()), Some("26000"));
    // A value given where the statement takes a password.
    c.batch_execute(
        "CREATE TEMP TABLE creds (password text); PREPARE chk (text) AS SELECT count(*) FROM creds WHERE password = $1",
    )
    .await
    .expect("prepare chk");
    c.simple_query("EXECUTE chk('hunter2')").await.expect("execute chk");
    drop(c);
    // psql: prepared and run in one Query.
    let sql = "PREPARE q AS SELECT relname FROM pg_class LIMIT 1; EXECUTE q";
    let out = tokio::task::block_in_place(|| gw.psql("alice", &alice, "orders", "disable", sql));
    ok(&out, "psql prepare and execute");

    let all = statements(&gw, 8).await;
    let ran = with_text(&all, "EXECUTE del(1)");
    assert_eq!(
        (
            detail(ran, "prepared"),
            detail(ran, "prepared_class"),
            detail(ran, "prepared_tables"),
            detail(ran, "tag")
        ),
        ("DELETE FROM doomed WHERE id = $1", "DELETE", "doomed", "DELETE 1")
    );
    let gone = with_text(&all, "EXECUTE del(2)");
    assert_eq!(detail(gone, "outcome"), "error");
    assert!(!gone.detail.contains_key("prepared"), "{gone:?}");
    let both = with_text(&all, sql);
    assert_eq!(
        (detail(both, "prepared"), detail(both, "prepared_tables")),
        ("SELECT relname FROM pg_class LIMIT 1", "pg_class")
    );
    let chk = with_text(&all, "EXECUTE chk('[redacted]')");
    assert_eq!(detail(chk, "redacted"), "true");
    assert!(
        !format!("{all:?}").contains("hunter2"),
        "a password reached the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_names_the_query_of_its_cursor() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    // psql with FETCH_COUNT reads every SELECT through a cursor, 2 rows at a time.
    let sql = "SELECT relname FROM pg_class ORDER BY relname LIMIT 5";
    let out = tokio::task::block_in_place(|| gw.psql_with("alice", &alice, "orders", &["-v", "FETCH_COUNT=2"], sql));
    assert_eq!(ok(&out, "psql with FETCH_COUNT").lines().count(), 5);
    // The same through tokio-postgres, in SQL: declared, read, closed.
    let mut c = client(&gw, &alice).await;
    let tx = c.transaction().await.expect("begin");
    tx.batch_execute("DECLARE c1 CURSOR FOR SELECT 7 AS seven FROM generate_series(1, 3)")
        .await
        .expect("declare");
    let rows = tx.query("FETCH 2 FROM c1", &[]).await.expect("fetch");
    assert_eq!(rows.len(), 2);
    tx.batch_execute("CLOSE c1").await.expect("close");
    let err = tx.batch_execute("FETCH 2 FROM c1").await.expect_err("closed");
    assert_eq!(err.code().map(|c| c.code()), Some("34000"));
    drop(tx);
    drop(c);

    let all = statements_of_ended(&gw, 2).await;
    let fetches: Vec<&AuditEvent> = all
        .iter()
        .filter(|e| detail(e, "text").starts_with("FETCH FORWARD 2 FROM _psql_cursor"))
        .collect();
    assert!(fetches.len() >= 3, "{all:#?}");
    for f in &fetches {
        assert_eq!(
            (
                detail(f, "cursor"),
                detail(f, "cursor_class"),
                detail(f, "cursor_tables")
            ),
            (sql, "SELECT", "pg_class"),
            "{f:?}"
        );
    }
    let fetched: u64 = fetches
        .iter()
        .map(|f| detail(f, "rows").parse::<u64>().expect("rows"))
        .sum();
    assert_eq!(fetched, 5);
    // The extended protocol's FETCH (tokio-postgres prepares it) names it too.
    let read = all
        .iter()
        .find(|e| detail(e, "text") == "FETCH 2 FROM c1" && detail(e, "outcome") == "ok")
        .expect("the FETCH");
    assert_eq!(
        detail(read, "cursor"),
        "SELECT 7 AS seven FROM generate_series(1, 3)",
        "{read:?}"
    );
    let failed = all
        .iter()
        .find(|e| detail(e, "text") == "FETCH 2 FROM c1" && detail(e, "outcome") == "error")
        .expect("the FETCH after CLOSE");
    assert!(!failed.detail.contains_key("cursor"), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_ends_where_its_transaction_or_savepoint_ends() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    // Each -c is one Query: the first rolls its cursor back before its
    // last command, the third commits its cursor before a command fails.
    // Then a rollback to a savepoint taken before its cursor was declared.
    let args = [
        "-v",
        "ON_ERROR_STOP=0",
        "-c",
        "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; ROLLBACK; SELECT 1",
        "-c",
        "FETCH 1 FROM c",
        "-c",
        "BEGIN; DECLARE k CURSOR WITH HOLD FOR SELECT 2 AS two; COMMIT; SELECT 1/0",
        "-c",
        "BEGIN",
        "-c",
        "SAVEPOINT before_s",
        "-c",
        "DECLARE s CURSOR FOR SELECT 3",
        "-c",
        "ROLLBACK TO before_s",
        "-c",
        "FETCH 1 FROM s",
        "-c",
        "ROLLBACK",
    ];
    let out = tokio::task::block_in_place(|| gw.psql_with("alice", &alice, "orders", &args, "FETCH 1 FROM k"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().last(), Some("2"));

    let all = statements_of_ended(&gw, 1).await;
    for fetch in ["FETCH 1 FROM c", "FETCH 1 FROM s"] {
        let gone = with_text(&all, fetch);
        assert_eq!(detail(gone, "sqlstate"), "34000", "{gone:?}");
        assert!(!gone.detail.contains_key("cursor"), "{gone:?}");
    }
    let kept = with_text(&all, "FETCH 1 FROM k");
    assert_eq!(
        (detail(kept, "outcome"), detail(kept, "cursor")),
        ("ok", "SELECT 2 AS two"),
        "{kept:?}"
    );
}
