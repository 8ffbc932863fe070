//! Errors: the statement an error fails, what the server skips after it
//! up to the Sync, and the Parse, Bind and Close it refused or skipped.

use super::*;

#[test]
fn after_an_error_the_rest_of_the_pipeline_did_not_run() {
    let out = run(&[
        (true, b'P', parse("", "SELECT 1/$1")),
        (true, b'B', bind("", "", &[], &[Some(b"0")])),
        (true, b'E', execute("")),
        (true, b'B', bind("", "", &[], &[Some(b"1")])),
        (true, b'E', execute("")),
        (true, b'S', Vec::new()),
        (false, b'1', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b'E', error("22012")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 2);
    assert!(matches!(&out[0].outcome, Outcome::Failed { sqlstate, .. } if sqlstate == "22012"));
    assert_eq!(&*out[0].params, &[Param::Text("0".into())][..]);
    assert_eq!(out[1].outcome, Outcome::NotRun);
}

#[test]
fn a_failed_parse_is_recorded_with_its_text() {
    let out = run(&[
        (true, b'P', parse("bad", "SELEC 1")),
        (true, b'S', Vec::new()),
        (false, b'E', error("42601")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 1);
    assert_eq!((&*out[0].statement, out[0].text.text.as_str()), ("bad", "SELEC 1"));
}

#[test]
fn after_an_error_nothing_is_queued_until_sync() {
    let mut steps = vec![
        (true, b'P', parse("", "SELECT 1/0")),
        (true, b'B', bind("", "", &[], &[])),
        (true, b'E', execute("")),
        (false, b'1', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b'E', error("22012")),
    ];
    // The server discards these without a word; the tracker must not keep them.
    steps.extend((0..1000).map(|_| (true, b'E', execute(""))));
    steps.push((true, b'S', Vec::new()));
    steps.push((false, b'Z', vec![b'I']));
    let out = run(&steps);
    assert_eq!(out.len(), 1);
}

#[test]
fn what_the_client_sent_after_the_failed_batch_s_sync_is_not_discarded() {
    // tokio-postgres after a failed Bind: Close and Sync, then a simple
    // query, all sent before the server's ReadyForQuery for the failed
    // batch arrives (it comes late when the machine is busy).
    let out = run(&[
        (true, b'B', bind("", "s1", &[], &[Some(b"0")])),
        (true, b'E', execute("")),
        (true, b'S', Vec::new()),
        (false, b'E', error("22012")),
        (true, b'C', [&b"S"[..], &cstr("s1")].concat()),
        (true, b'S', Vec::new()),
        (true, b'Q', cstr("SELECT 42")),
        (false, b'Z', vec![b'I']),
        (false, b'3', Vec::new()),
        (false, b'Z', vec![b'I']),
        (false, b'T', Vec::new()),
        (false, b'D', Vec::new()),
        (false, b'C', cstr("SELECT 1")),
        (false, b'Z', vec![b'I']),
    ]);
    let texts: Vec<&str> = out.iter().map(|s| s.text.text.as_str()).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(matches!(&out[0].outcome, Outcome::Failed { sqlstate, .. } if sqlstate == "22012"));
    assert_eq!(texts[1], "SELECT 42");
    assert_eq!(out[1].outcome, done(&[("SELECT 1", Some(1))]));
}

#[test]
fn an_error_at_sync_is_recorded_as_a_failed_commit() {
    let out = run(&[
        (true, b'P', parse("", "INSERT INTO t VALUES (1)")),
        (true, b'B', bind("", "", &[], &[])),
        (true, b'E', execute("")),
        (true, b'S', Vec::new()),
        (false, b'1', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b'C', cstr("INSERT 0 1")),
        (false, b'E', error("23503")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 2);
    assert!(matches!(&out[1].outcome, Outcome::Failed { sqlstate, .. } if sqlstate == "23503"));
    assert!(out[1].text.text.contains("COMMIT"));
}

#[test]
fn a_query_the_server_skipped_after_an_extended_error_did_not_run() {
    let out = run(&[
        (true, b'P', parse("", "SELECT 1/0")),
        (true, b'B', bind("", "", &[], &[])),
        (true, b'E', execute("")),
        // Sent with the batch: the server skips it on the way to the Sync.
        (true, b'Q', cstr("DELETE FROM t")),
        (true, b'S', Vec::new()),
        (false, b'1', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b'E', error("22012")),
        (false, b'Z', vec![b'I']),
        // Then a DELETE that runs, and a query that fails: each its own outcome.
        (true, b'Q', cstr("DELETE FROM t")),
        (false, b'C', cstr("DELETE 5")),
        (false, b'Z', vec![b'I']),
        (true, b'Q', cstr("SELECT 1/0")),
        (false, b'E', error("22012")),
        (false, b'Z', vec![b'I']),
    ]);
    let got = outcomes(&out);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(matches!(got[0], ("SELECT 1/0", Outcome::Failed { .. })), "{got:?}");
    assert_eq!(got[1], ("DELETE FROM t", &Outcome::NotRun));
    assert_eq!(got[2], ("DELETE FROM t", &done(&[("DELETE 5", Some(5))])));
    assert!(matches!(got[3], ("SELECT 1/0", Outcome::Failed { .. })), "{got:?}");
}

#[test]
fn an_error_in_a_query_of_several_commands_keeps_those_that_completed() {
    let out = run(&[
        (true, b'Q', cstr("BEGIN; DELETE FROM t; COMMIT; SELECT 1/0")),
        (false, b'C', cstr("BEGIN")),
        (false, b'C', cstr("DELETE 5")),
        (false, b'C', cstr("COMMIT")),
        (false, b'E', error("22012")),
        (false, b'Z', vec![b'I']),
    ]);
    match &out[0].outcome {
        Outcome::Failed { sqlstate, done, .. } => {
            assert_eq!(sqlstate, "22012");
            let tags: Vec<&str> = done.iter().map(|c| &*c.tag).collect();
            assert_eq!(tags, ["BEGIN", "DELETE 5", "COMMIT"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_parse_or_close_the_server_refused_or_skipped_changes_no_name() {
    let out = run(&[
        (true, b'P', parse("s1", "DELETE FROM t")),
        (true, b'S', Vec::new()),
        (false, b'1', Vec::new()),
        (false, b'Z', vec![b'I']),
        // The name exists: the server refuses the Parse (42P05) and skips the rest.
        (true, b'P', parse("s1", "SELECT 1")),
        (true, b'B', bind("", "s1", &[], &[])),
        (true, b'E', execute("")),
        (true, b'S', Vec::new()),
        (false, b'E', error("42P05")),
        (false, b'Z', vec![b'I']),
        // A Close skipped after a failed Parse keeps the name too.
        (true, b'P', parse("x", "SELEC")),
        (true, b'C', close_statement("s1")),
        (true, b'S', Vec::new()),
        (false, b'E', error("42601")),
        (false, b'Z', vec![b'I']),
        // So the DELETE runs under its own text.
        (true, b'B', bind("", "s1", &[], &[])),
        (true, b'E', execute("")),
        (true, b'S', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b'C', cstr("DELETE 3")),
        (false, b'Z', vec![b'I']),
    ]);
    let got = outcomes(&out);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(matches!(got[0], ("SELECT 1", Outcome::Failed { .. })), "{got:?}");
    assert!(matches!(got[1], ("SELEC", Outcome::Failed { .. })), "{got:?}");
    assert_eq!(got[2], ("DELETE FROM t", &done(&[("DELETE 3", Some(3))])));
}

#[test]
fn a_close_and_parse_again_that_succeed_take_effect() {
    let out = run(&[
        (true, b'P', parse("s1", "SELECT 1")),
        (true, b'C', close_statement("s1")),
        (true, b'P', parse("s1", "DELETE FROM t")),
        (true, b'B', bind("", "s1", &[], &[])),
        (true, b'E', execute("")),
        (true, b'S', Vec::new()),
        (false, b'1', Vec::new()),
        (false, b'3', Vec::new()),
        (false, b'1', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b'C', cstr("DELETE 1")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].text.text, "DELETE FROM t");
}

#[test]
fn a_failed_parse_keeps_its_error_and_the_query_after_it_did_not_run() {
    let out = run(&[
        (true, b'P', parse("", "SELEC 1")),
        (true, b'Q', cstr("DELETE FROM t")),
        (true, b'S', Vec::new()),
        (false, b'E', error("42601")),
        (false, b'Z', vec![b'I']),
    ]);
    let got = outcomes(&out);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(matches!(got[0], ("SELEC 1", Outcome::Failed { .. })), "{got:?}");
    assert_eq!(got[1], ("DELETE FROM t", &Outcome::NotRun));
}

#[test]
fn a_failed_parse_of_the_unnamed_statement_leaves_none() {
    let mut t = StatementTracker::new();
    let now = Instant::now();
    let mut out = Vec::new();
    t.client(b'P', &parse("", "DELETE FROM t"), now);
    t.client(b'S', &[], now);
    t.server(b'1', &[], now, &mut out);
    t.server(b'Z', b"I", now, &mut out);
    t.client(b'P', &parse("", "SELEC"), now);
    t.client(b'S', &[], now);
    t.server(b'E', &error("42601"), now, &mut out);
    t.server(b'Z', b"I", now, &mut out);
    assert!(t.prepared.get("").is_none(), "the server dropped it before parsing");
}

#[test]
fn a_bind_the_server_refused_leaves_the_portal_it_named_as_it_was() {
    let mut t = StatementTracker::new();
    t.sql_declared("c", "SELECT * FROM salaries", true);
    // Binding a name a cursor holds fails (42P03); the cursor reads on.
    feed(
        &mut t,
        &[
            (true, b'P', parse("", "SELECT 1")),
            (true, b'B', bind("c", "", &[], &[])),
            (true, b'B', bind("new", "", &[], &[])),
            (true, b'S', vec![]),
            (false, b'1', vec![]),
            (false, b'E', error("42P03")),
            (false, b'Z', vec![b'I']),
        ],
    );
    let text = |t: &StatementTracker, name: &str| t.cursor_text(name).map(|x| x.text.clone());
    assert_eq!(text(&t, "c").as_deref(), Some("SELECT * FROM salaries"));
    assert_eq!(text(&t, "new"), None, "skipped: never made");
    // One the server took replaces it.
    feed(
        &mut t,
        &[
            (true, b'B', bind("p", "", &[], &[])),
            (true, b'S', vec![]),
            (false, b'2', vec![]),
            (false, b'Z', vec![b'T']),
        ],
    );
    assert_eq!(text(&t, "p").as_deref(), Some("SELECT 1"));
}

#[test]
fn an_execute_sent_behind_a_refused_bind_runs_the_portal_the_name_held() {
    let mut t = StatementTracker::new();
    t.sql_declared("c", "SELECT * FROM salaries", true);
    // Pipelined: the Execute of the next batch runs the cursor, not the refused Bind.
    let out = feed(
        &mut t,
        &[
            (true, b'P', parse("", "SELECT 1")),
            (true, b'B', bind("c", "", &[], &[])),
            (true, b'S', vec![]),
            (true, b'E', execute("c")),
            (true, b'S', vec![]),
            (false, b'1', vec![]),
            (false, b'E', error("42P03")),
            (false, b'Z', vec![b'I']),
            (false, b'C', cstr("SELECT 3")),
            (false, b'Z', vec![b'I']),
        ],
    );
    assert_eq!(
        outcomes(&out),
        [("SELECT * FROM salaries", &done(&[("SELECT 3", Some(3))]))]
    );
}

#[test]
fn a_refused_bind_leaves_a_cursor_declared_since_under_its_name() {
    let mut t = StatementTracker::new();
    feed(
        &mut t,
        &[
            (true, b'P', parse("", "SELECT 1")),
            (true, b'B', bind("p", "", &[], &[])),
            (true, b'S', vec![]),
        ],
    );
    // A DECLARE of the same name, pipelined ahead of the Bind, ran first.
    t.sql_declared("p", "SELECT * FROM salaries", true);
    feed(
        &mut t,
        &[
            (false, b'1', vec![]),
            (false, b'E', error("42P03")),
            (false, b'Z', vec![b'I']),
        ],
    );
    let cursor = t.cursor_text("p").map(|x| x.text.clone());
    assert_eq!(cursor.as_deref(), Some("SELECT * FROM salaries"));
}

/// A tracker in a transaction whose portal `name` reads salaries.
fn portal_in_a_transaction(name: &str) -> StatementTracker {
    let mut t = StatementTracker::new();
    feed(
        &mut t,
        &[
            (true, b'P', parse("", "SELECT * FROM salaries")),
            (true, b'B', bind(name, "", &[], &[])),
            (true, b'S', vec![]),
            (false, b'1', vec![]),
            (false, b'2', vec![]),
            (false, b'Z', vec![b'T']),
        ],
    );
    t
}

/// A batch that fails before its Close of `name`, which the server skips,
/// then back to a savepoint where the portal runs on; `then`, sent after,
/// is answered by `answers`.
fn skipped_close(
    name: &str,
    then: &[(bool, u8, Vec<u8>)],
    answers: &[(bool, u8, Vec<u8>)],
) -> Vec<(bool, u8, Vec<u8>)> {
    let asks = [
        (true, b'Q', cstr("SAVEPOINT s")),
        (true, b'P', parse("", "SELEC 1")),
        (true, b'C', close_portal(name)),
        (true, b'S', vec![]),
        (true, b'Q', cstr("ROLLBACK TO SAVEPOINT s")),
    ];
    let answered = [
        (false, b'C', cstr("SAVEPOINT")),
        (false, b'Z', vec![b'T']),
        (false, b'E', error("42601")),
        (false, b'Z', vec![b'E']),
        (false, b'C', cstr("ROLLBACK")),
        (false, b'Z', vec![b'T']),
    ];
    [&asks[..], then, &answered[..], answers].concat()
}

#[test]
fn a_close_the_server_skipped_leaves_the_portal_open() {
    let mut t = portal_in_a_transaction("p");
    let steps = skipped_close(
        "p",
        &[(true, b'E', execute("p")), (true, b'S', vec![])],
        &[(false, b'C', cstr("SELECT 3")), (false, b'Z', vec![b'T'])],
    );
    let out = feed(&mut t, &steps);
    let texts: Vec<&str> = out.iter().map(|s| s.text.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "SAVEPOINT s",
            "SELEC 1",
            "ROLLBACK TO SAVEPOINT s",
            "SELECT * FROM salaries"
        ]
    );
    assert_eq!(
        t.cursor_text("p").map(|x| x.text.clone()).as_deref(),
        Some("SELECT * FROM salaries")
    );
}

#[test]
fn a_skipped_close_of_the_unnamed_portal_leaves_queries_their_own_text() {
    let mut t = StatementTracker::new();
    let out = feed(
        &mut t,
        &[
            (true, b'P', parse("", "SELECT 1")),
            (true, b'B', bind("", "", &[], &[])),
            (true, b'E', execute("")),
            (true, b'S', vec![]),
            (true, b'P', parse("", "SELEC 1")),
            (true, b'C', close_portal("")),
            (true, b'S', vec![]),
            (true, b'Q', cstr("DROP TABLE accounts")),
            (true, b'F', [&7u32.to_be_bytes()[..], &[0, 0, 0, 0, 0, 0]].concat()),
            (false, b'1', vec![]),
            (false, b'2', vec![]),
            (false, b'C', cstr("SELECT 1")),
            (false, b'Z', vec![b'I']),
            (false, b'E', error("42601")),
            (false, b'Z', vec![b'I']),
            (false, b'C', cstr("DROP TABLE")),
            (false, b'Z', vec![b'I']),
            (false, b'V', vec![0, 0, 0, 0]),
            (false, b'Z', vec![b'I']),
        ],
    );
    let texts: Vec<&str> = out.iter().map(|s| s.text.text.as_str()).collect();
    assert_eq!(
        texts,
        ["SELECT 1", "SELEC 1", "DROP TABLE accounts", "<function call, oid 7>"]
    );
}

#[test]
fn a_bind_and_a_close_of_a_new_name_both_skipped_leave_nothing_under_it() {
    let mut t = StatementTracker::new();
    let out = feed(
        &mut t,
        &[
            (true, b'P', parse("", "SELEC 1")),
            (true, b'P', parse("q", "SELECT * FROM salaries")),
            (true, b'B', bind("x", "q", &[], &[])),
            (true, b'C', close_portal("x")),
            (true, b'S', vec![]),
            (true, b'E', execute("x")),
            (true, b'S', vec![]),
            (false, b'E', error("42601")),
            (false, b'Z', vec![b'I']),
            (false, b'E', error("34000")),
            (false, b'Z', vec![b'I']),
        ],
    );
    let texts: Vec<&str> = out.iter().map(|s| s.text.text.as_str()).collect();
    assert_eq!(texts, ["SELEC 1", ""], "the Execute ran no portal the audit knows");

    // Where the Bind replaced a portal, the server runs that one.
    let mut t = portal_in_a_transaction("x");
    let steps = [
        (true, b'P', parse("", "SELEC 1")),
        (true, b'B', bind("x", "", &[], &[])),
        (true, b'C', close_portal("x")),
        (true, b'S', vec![]),
        (true, b'E', execute("x")),
        (true, b'S', vec![]),
        (false, b'E', error("42601")),
        (false, b'Z', vec![b'E']),
        (false, b'E', error("25P02")),
        (false, b'Z', vec![b'E']),
    ];
    let out = feed(&mut t, &steps);
    let texts: Vec<&str> = out.iter().map(|s| s.text.text.as_str()).collect();
    assert_eq!(texts, ["SELEC 1", "SELECT * FROM salaries"]);
}

#[test]
fn a_portal_a_skipped_close_left_open_is_back_once_a_later_bind_of_it_is_refused() {
    let mut t = portal_in_a_transaction("c");
    feed(
        &mut t,
        &[
            (true, b'P', parse("q", "SELECT 2")),
            (true, b'S', vec![]),
            (false, b'1', vec![]),
            (false, b'Z', vec![b'T']),
        ],
    );
    // The Bind of the same name behind the skipped Close is refused,
    // since `c` is still there.
    let steps = skipped_close(
        "c",
        &[
            (true, b'B', bind("c", "q", &[], &[])),
            (true, b'E', execute("c")),
            (true, b'S', vec![]),
        ],
        &[(false, b'E', error("42P03")), (false, b'Z', vec![b'E'])],
    );
    let out = feed(&mut t, &steps);
    let refused = out.last().map(|s| &s.outcome);
    assert!(
        matches!(refused, Some(Outcome::Failed { sqlstate, .. }) if sqlstate == "42P03"),
        "{refused:?}"
    );
    assert_eq!(
        t.cursor_text("c").map(|x| x.text.clone()).as_deref(),
        Some("SELECT * FROM salaries")
    );
}
