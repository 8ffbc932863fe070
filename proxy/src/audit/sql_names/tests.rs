use std::collections::BTreeMap;
use std::time::Instant;

use portcullis_protocol::pg::statements::{Completion, Flow, Statement};

use super::*;
use crate::audit::statement::statement_detail;
use crate::audit::statement::tests::session;

fn ran(sql: &str, outcome: Outcome) -> Statement {
    Statement {
        flow: Flow::Simple,
        text: Arc::new(Text::new(sql.as_bytes())),
        statement: "".into(),
        portal: String::new(),
        params: Arc::from([]),
        param_count: 0,
        copy: None,
        outcome,
        started: Instant::now(),
        duration: std::time::Duration::ZERO,
        max_rows: 0,
        binding: 0,
        executes: 1,
        fetched: 0,
    }
}

fn ok(sql: &str) -> Statement {
    let tag = Completion {
        tag: "OK".into(),
        rows: None,
    };
    ran(sql, Outcome::Done(vec![tag]))
}

/// A session's tracker and classifier, and the events its statements make.
#[derive(Default)]
struct Session {
    tracker: StatementTracker,
    classifier: Classifier,
}

impl Session {
    fn event(&mut self, s: &Statement) -> BTreeMap<String, String> {
        let mut d = BTreeMap::new();
        statement_detail(
            &session(false),
            s,
            &mut self.classifier,
            Some(&mut self.tracker),
            &mut d,
        );
        d
    }

    /// What `EXECUTE name` reports ran.
    fn ran(&mut self, name: &str) -> Option<String> {
        self.event(&ok(&format!("EXECUTE {name}"))).remove("prepared")
    }

    /// What `FETCH ... FROM name` reports it read.
    fn read(&mut self, name: &str) -> Option<String> {
        self.event(&ok(&format!("FETCH FORWARD 100 FROM {name}")))
            .remove("cursor")
    }

    /// The server says the transaction ended: `rolled_back` by a
    /// ROLLBACK. What it held goes at the next message.
    fn transaction_ends(&mut self, rolled_back: bool) {
        if rolled_back {
            self.tracker
                .server(b'C', b"ROLLBACK\0", Instant::now(), &mut Vec::new());
        }
        self.tracker.server(b'Z', b"I", Instant::now(), &mut Vec::new());
        self.next_message();
    }

    /// `sql`, a Query whose first command completed with `tag` and
    /// whose second divided by zero.
    fn fails_after(&mut self, sql: &str, tag: &str) {
        let error = b"SERROR\0C22012\0Mdivision by zero\0\0";
        self.tracker.server(b'E', error, Instant::now(), &mut Vec::new());
        let failed = Outcome::Failed {
            sqlstate: "22012".into(),
            message: "division by zero".into(),
            done: vec![Completion {
                tag: tag.into(),
                rows: None,
            }],
        };
        self.event(&ran(sql, failed));
    }

    /// The session's next message: a ParameterStatus.
    fn next_message(&mut self) {
        self.tracker
            .server(b'S', b"TimeZone\0UTC\0", Instant::now(), &mut Vec::new());
    }
}

#[test]
fn an_execute_names_the_statement_it_ran_with_its_class_and_tables() {
    let mut s = Session::default();
    s.event(&ok("PREPARE del (int) AS DELETE FROM orders WHERE id = $1"));
    let d = s.event(&ok("EXECUTE del(5)"));
    assert_eq!(d["prepared"], "DELETE FROM orders WHERE id = $1");
    assert_eq!((&*d["prepared_class"], &*d["prepared_tables"]), ("DELETE", "orders"));
    assert_eq!(d["text"], "EXECUTE del(5)");
    // EXPLAIN runs it too; a name never prepared says nothing.
    let d = s.event(&ok("EXPLAIN ANALYZE EXECUTE del(6)"));
    assert_eq!(d["prepared"], "DELETE FROM orders WHERE id = $1");
    assert_eq!(s.ran("other"), None);
    assert!(!s.event(&ok("SELECT 1")).contains_key("prepared"));
}

#[test]
fn names_follow_the_statements_that_ran_in_order() {
    let mut s = Session::default();
    let d = s.event(&ok(
        "PREPARE a AS SELECT * FROM t1; EXECUTE a; DEALLOCATE a; PREPARE b AS UPDATE t2 SET x = 1",
    ));
    assert_eq!(d["prepared"], "SELECT * FROM t1");
    assert_eq!(s.ran("a"), None, "deallocated");
    assert_eq!(s.event(&ok("EXECUTE b"))["prepared_tables"], "t2");
    // Prepared again under the same name: the new statement.
    s.event(&ok("PREPARE b AS INSERT INTO t3 VALUES (1)"));
    let d = s.event(&ok("EXECUTE b; EXECUTE b"));
    assert_eq!(d["prepared"], "INSERT INTO t3 VALUES (1); INSERT INTO t3 VALUES (1)");
    for all in ["DEALLOCATE ALL", "DISCARD ALL", "DEALLOCATE PREPARE b"] {
        s.event(&ok("PREPARE b AS SELECT 1"));
        s.event(&ok(all));
        assert_eq!(s.ran("b"), None, "{all}");
    }
}

#[test]
fn only_what_ran_takes_effect() {
    let mut s = Session::default();
    let failed = |done: Vec<Completion>| Outcome::Failed {
        sqlstate: "42P05".into(),
        message: "prepared statement \"a\" already exists".into(),
        done,
    };
    s.event(&ok("PREPARE a AS SELECT 1"));
    // The second PREPARE failed: `a` is still the first.
    s.event(&ran("PREPARE a AS DELETE FROM t", failed(Vec::new())));
    assert_eq!(s.ran("a").as_deref(), Some("SELECT 1"));
    // Of a Query that failed in its second command, the first ran.
    let first = vec![Completion {
        tag: "DEALLOCATE".into(),
        rows: None,
    }];
    s.event(&ran("DEALLOCATE a; PREPARE a AS DELETE FROM t", failed(first)));
    assert_eq!(s.ran("a"), None);
    s.event(&ran("PREPARE z AS SELECT 1", Outcome::NotRun));
    assert_eq!(s.ran("z"), None);
}

#[test]
fn sql_and_the_extended_protocol_share_one_namespace() {
    let mut s = Session::default();
    // A Parse made `s1`; a SQL EXECUTE runs it.
    s.tracker.client(b'P', b"s1\0DELETE FROM orders\0\0\0", Instant::now());
    s.tracker.server(b'1', b"", Instant::now(), &mut Vec::new());
    assert_eq!(s.ran("s1").as_deref(), Some("DELETE FROM orders"));
    // A SQL PREPARE made `p1`; a Bind and Execute run it, recorded by its text.
    s.event(&ok("PREPARE p1 AS UPDATE orders SET x = 1"));
    let now = Instant::now();
    s.tracker.client(b'B', b"\0p1\0\0\0\0\0\0\0", now);
    s.tracker.client(b'E', b"\0\0\0\0\0", now);
    s.tracker.client(b'S', b"", now);
    let mut out = Vec::new();
    for tag in [b'2', b'C', b'Z'] {
        let body: &[u8] = match tag {
            b'C' => b"UPDATE 1\0",
            b'Z' => b"I",
            _ => b"",
        };
        s.tracker.server(tag, body, now, &mut out);
    }
    assert_eq!(out[0].text.text, "UPDATE orders SET x = 1");
    // DEALLOCATE ALL drops what a Parse named too.
    s.event(&ok("DEALLOCATE ALL"));
    assert_eq!(s.ran("s1"), None);
}

#[test]
fn a_fetch_names_the_query_its_cursor_runs_until_the_cursor_is_closed() {
    let mut s = Session::default();
    // psql with FETCH_COUNT set.
    s.event(&ok("BEGIN"));
    let declare = s.event(&ok(
        "DECLARE _psql_cursor NO SCROLL CURSOR FOR\nSELECT * FROM orders WHERE total > 10",
    ));
    assert!(!declare.contains_key("cursor"), "{declare:?}");
    let d = s.event(&ok("FETCH FORWARD 100 FROM _psql_cursor"));
    assert_eq!(d["cursor"], "SELECT * FROM orders WHERE total > 10");
    assert_eq!((&*d["cursor_class"], &*d["cursor_tables"]), ("SELECT", "orders"));
    assert_eq!(d["text"], "FETCH FORWARD 100 FROM _psql_cursor");
    let moved = s.event(&ok("MOVE BACKWARD ALL IN _psql_cursor"));
    assert_eq!(moved["cursor_tables"], "orders");
    assert_eq!(s.read("other"), None);
    s.event(&ok("CLOSE _psql_cursor"));
    assert_eq!(s.read("_psql_cursor"), None, "closed");
    // Declared and read in one Query; CLOSE ALL closes it.
    let d = s.event(&ok("DECLARE c CURSOR FOR SELECT * FROM t; FETCH 1 FROM c"));
    assert_eq!(d["cursor"], "SELECT * FROM t");
    s.event(&ok("CLOSE ALL"));
    assert_eq!(s.read("c"), None);
    // A DECLARE that failed declared nothing.
    let failed = Outcome::Failed {
        sqlstate: "25P01".into(),
        message: "DECLARE CURSOR can only be used in transaction blocks".into(),
        done: Vec::new(),
    };
    s.event(&ran("DECLARE d CURSOR FOR SELECT 1", failed));
    assert_eq!(s.read("d"), None);
}

#[test]
fn cursors_end_with_their_transaction_unless_declared_with_hold() {
    let mut s = Session::default();
    s.event(&ok("DECLARE kept CURSOR WITH HOLD FOR SELECT * FROM t1"));
    s.event(&ok("DECLARE gone BINARY CURSOR WITHOUT HOLD FOR SELECT * FROM t2"));
    s.transaction_ends(false);
    assert_eq!(s.read("gone"), None);
    assert_eq!(s.read("kept").as_deref(), Some("SELECT * FROM t1"));
    // Rolled back: a cursor WITH HOLD goes with its transaction, one
    // that committed before stays.
    s.event(&ok("DECLARE undone CURSOR WITH HOLD FOR SELECT * FROM t3"));
    s.transaction_ends(true);
    assert_eq!(s.read("undone"), None);
    assert_eq!(s.read("kept").as_deref(), Some("SELECT * FROM t1"));
    // Declared in a Query that failed after it: rolled back too.
    s.fails_after(
        "DECLARE lost CURSOR WITH HOLD FOR SELECT 1; SELECT 1/0",
        "DECLARE CURSOR",
    );
    s.transaction_ends(false);
    assert_eq!(s.read("lost"), None);
    // A Query that declares and commits: its ReadyForQuery is read
    // before the audit follows the DECLARE; the cursor goes all the same.
    s.tracker.server(b'Z', b"I", Instant::now(), &mut Vec::new());
    s.event(&ok("BEGIN; DECLARE brief CURSOR FOR SELECT 1; COMMIT"));
    s.next_message();
    assert_eq!(s.read("brief"), None);
    s.event(&ok("DISCARD ALL"));
    assert_eq!(s.read("kept"), None);
}

/// A Query's outcome: these commands completed, in order.
fn done(tags: &[&str]) -> Outcome {
    Outcome::Done(
        tags.iter()
            .map(|t| Completion {
                tag: (*t).into(),
                rows: None,
            })
            .collect(),
    )
}

#[test]
fn a_transaction_ended_amid_a_query_ends_its_cursors_there() {
    let mut s = Session::default();
    // Rolled back mid-Query: the Query's last tag is not the end's.
    let sql = "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t1; ROLLBACK; SELECT 1";
    s.event(&ran(sql, done(&["BEGIN", "DECLARE CURSOR", "ROLLBACK", "SELECT 1"])));
    s.transaction_ends(false);
    assert_eq!(s.read("c"), None, "rolled back with its transaction");
    // Committed, then a command that failed: the cursor WITH HOLD stays.
    s.event(&ok("BEGIN"));
    s.event(&ok("DECLARE kept CURSOR WITH HOLD FOR SELECT * FROM t2"));
    s.fails_after("COMMIT; SELECT 1/0", "COMMIT");
    s.transaction_ends(false);
    assert_eq!(s.read("kept").as_deref(), Some("SELECT * FROM t2"));
    // AND CHAIN: still in a block at the ReadyForQuery, and yet ended.
    s.event(&ok("DECLARE chained CURSOR FOR SELECT * FROM t3"));
    s.event(&ran("COMMIT AND CHAIN", done(&["COMMIT"])));
    s.tracker.server(b'Z', b"T", Instant::now(), &mut Vec::new());
    s.next_message();
    assert_eq!(s.read("chained"), None);
    assert_eq!(s.read("kept").as_deref(), Some("SELECT * FROM t2"));
    // A COMMIT of a failed block rolls back (its tag says so).
    s.event(&ok("DECLARE doomed CURSOR WITH HOLD FOR SELECT * FROM t4"));
    s.event(&ran("COMMIT; SELECT 2", done(&["ROLLBACK", "SELECT 1"])));
    s.transaction_ends(false);
    assert_eq!(s.read("doomed"), None);
    // With the next Query sent ahead: a cursor goes all the same.
    let now = Instant::now();
    let sql = "BEGIN; DECLARE brief CURSOR FOR SELECT * FROM t5; COMMIT";
    s.tracker.client(b'Q', format!("{sql}\0").as_bytes(), now);
    s.tracker.client(b'Q', b"FETCH 1 FROM brief\0", now);
    let mut out = Vec::new();
    for tag in ["BEGIN", "DECLARE CURSOR", "COMMIT"] {
        s.tracker.server(b'C', format!("{tag}\0").as_bytes(), now, &mut out);
    }
    s.tracker.server(b'Z', b"I", now, &mut out);
    s.event(&out[0]);
    s.next_message();
    assert_eq!(s.read("brief"), None);
}

#[test]
fn a_rollback_to_a_savepoint_closes_the_cursors_declared_since() {
    let mut s = Session::default();
    s.event(&ok("BEGIN"));
    // Taken before the session holds any cursor.
    s.event(&ran("SAVEPOINT a", done(&["SAVEPOINT"])));
    s.event(&ok("DECLARE inner_a CURSOR WITH HOLD FOR SELECT * FROM t1"));
    s.event(&ran("SAVEPOINT b", done(&["SAVEPOINT"])));
    s.event(&ok("DECLARE inner_b CURSOR WITH HOLD FOR SELECT * FROM t2"));
    s.event(&ran("ROLLBACK TO SAVEPOINT b", done(&["ROLLBACK"])));
    assert_eq!(s.read("inner_b"), None);
    assert_eq!(s.read("inner_a").as_deref(), Some("SELECT * FROM t1"));
    // Released, b's cursors are a's: a rollback to a closes them.
    s.event(&ok("DECLARE after_b CURSOR FOR SELECT * FROM t3"));
    s.event(&ran("RELEASE b", done(&["RELEASE"])));
    s.event(&ran("ROLLBACK TO a", done(&["ROLLBACK"])));
    assert_eq!(s.read("inner_a"), None);
    assert_eq!(s.read("after_b"), None);
    // a stays; within one Query, in order.
    let sql = "DECLARE c CURSOR FOR SELECT * FROM t4; ROLLBACK TO a; DECLARE d CURSOR FOR SELECT * FROM t5";
    s.event(&ran(sql, done(&["DECLARE CURSOR", "ROLLBACK", "DECLARE CURSOR"])));
    assert_eq!(s.read("c"), None);
    assert_eq!(s.read("d").as_deref(), Some("SELECT * FROM t5"));
    // A rollback to it that did not run (a command before it failed) closes nothing.
    s.fails_after("SELECT 1; ROLLBACK TO a", "SELECT 1");
    assert_eq!(s.read("d").as_deref(), Some("SELECT * FROM t5"));
    assert!(s.tracker.has_savepoints());
    s.transaction_ends(true);
    assert!(!s.tracker.has_savepoints(), "savepoints end with their transaction");
}

#[test]
fn the_extended_protocol_s_savepoints_and_chained_commits_are_followed_too() {
    // As JDBC sends them: Parse, Bind, Execute of the unnamed statement.
    let extended = |sql: &str, tags: &[&str]| {
        let mut st = ran(sql, done(tags));
        st.flow = Flow::Extended;
        st
    };
    let mut s = Session::default();
    s.event(&extended("BEGIN", &["BEGIN"]));
    s.event(&extended("SAVEPOINT a", &["SAVEPOINT"]));
    s.event(&ok("DECLARE c CURSOR FOR SELECT * FROM t1"));
    s.event(&extended("ROLLBACK TO SAVEPOINT a", &["ROLLBACK"]));
    assert_eq!(s.read("c"), None);
    s.event(&ok("DECLARE chained CURSOR FOR SELECT * FROM t2"));
    s.event(&extended("COMMIT AND CHAIN", &["COMMIT"]));
    s.tracker.server(b'Z', b"T", Instant::now(), &mut Vec::new());
    s.next_message();
    assert_eq!(s.read("chained"), None);
}

#[test]
fn a_cursor_is_a_portal_the_extended_protocol_can_run_and_close() {
    let mut s = Session::default();
    s.event(&ok("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM accounts"));
    let now = Instant::now();
    s.tracker.client(b'E', b"c\0\0\0\0\x05", now);
    s.tracker.client(b'S', b"", now);
    let mut out = Vec::new();
    for (tag, body) in [(b'C', &b"FETCH 5\0"[..]), (b'Z', b"T")] {
        s.tracker.server(tag, body, now, &mut out);
    }
    assert_eq!(out[0].text.text, "SELECT * FROM accounts");
    assert_eq!(out[0].portal, "c");
    s.tracker.client(b'C', b"Pc\0", now);
    s.tracker.server(b'3', b"", now, &mut out);
    assert_eq!(s.read("c"), None, "closed by the protocol's Close");
}

#[test]
fn an_execute_pipelined_behind_its_cursors_declare_runs_the_cursors_query() {
    let mut s = Session::default();
    let now = Instant::now();
    s.tracker
        .client(b'Q', b"DECLARE c CURSOR WITH HOLD FOR SELECT * FROM accounts\0", now);
    // Sent before the DECLARE ran, with a Bind of another name after it.
    s.tracker.client(b'E', b"c\0\0\0\0\x05", now);
    s.tracker.client(b'S', b"", now);
    s.tracker.client(b'P', b"\0SELECT 2\0\0\0", now);
    s.tracker.client(b'B', b"d\0\0\0\0\0\0\0\0", now);
    s.tracker.client(b'E', b"d\0\0\0\0\0", now);
    s.tracker.client(b'S', b"", now);
    let (mut out, mut texts) = (Vec::new(), Vec::new());
    let answers = [
        (b'C', &b"DECLARE CURSOR\0"[..]),
        (b'Z', b"I"),
        (b'C', b"FETCH 5\0"),
        (b'Z', b"I"),
        (b'1', b""),
        (b'2', b""),
        (b'C', b"SELECT 1\0"),
        (b'Z', b"I"),
    ];
    for (tag, body) in answers {
        s.tracker.server(tag, body, now, &mut out);
        for done in out.drain(..) {
            let text = s.event(&done).remove("text").unwrap_or_default();
            texts.push((done.portal, text));
        }
    }
    let texts: Vec<(&str, &str)> = texts.iter().map(|(p, t)| (&**p, &**t)).collect();
    assert_eq!(
        texts,
        [
            ("", "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM accounts"),
            ("c", "SELECT * FROM accounts"),
            ("d", "SELECT 2"),
        ]
    );
}

#[test]
fn an_execute_of_a_portal_bound_after_it_does_not_run_what_was_bound() {
    let mut s = Session::default();
    let now = Instant::now();
    // No portal `d` yet: the server refuses the first Execute.
    s.tracker.client(b'E', b"d\0\0\0\0\0", now);
    s.tracker.client(b'S', b"", now);
    s.tracker.client(b'P', b"\0SELECT 2\0\0\0", now);
    s.tracker.client(b'B', b"d\0\0\0\0\0\0\0\0", now);
    let mut out = Vec::new();
    let missing = b"SERROR\0VERROR\0C34000\0Mportal \"d\" does not exist\0\0";
    s.tracker.server(b'E', missing, now, &mut out);
    assert_eq!((out[0].portal.as_str(), out[0].text.text.as_str()), ("d", ""));
}

#[test]
fn a_password_in_a_cursors_query_is_redacted_where_it_is_named() {
    let mut s = Session::default();
    s.event(&ok(
        "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM dblink('host=db password=hunter2', 'SELECT 1') AS t(x int)",
    ));
    let d = s.read("c").expect("named");
    assert!(!d.contains("hunter2") && d.contains("[redacted]"), "{d}");
}

#[test]
fn values_given_where_a_password_goes_are_redacted() {
    let mut s = Session::default();
    s.event(&ok(
        "PREPARE chk (text) AS SELECT id FROM users WHERE password = crypt($1, password)",
    ));
    let d = s.event(&ok("EXECUTE chk('hunter2')"));
    assert_eq!(d["text"], "EXECUTE chk('[redacted]')");
    assert_eq!(d["redacted"], "true");
    let failed = s.event(&ran(
        "EXECUTE chk('hunter2')",
        Outcome::Failed {
            sqlstate: "22023".into(),
            message: "invalid value \"hunter2\"".into(),
            done: Vec::new(),
        },
    ));
    assert!(!format!("{failed:?}").contains("hunter2"), "{failed:?}");
    // A password written into the prepared statement is redacted where it is named.
    s.event(&ok("PREPARE link AS SELECT dblink_connect('host=db password=hunter2')"));
    let d = s.event(&ok("EXECUTE link"));
    assert!(
        !d["prepared"].contains("hunter2") && d["prepared"].contains("[redacted]"),
        "{d:?}"
    );
}

#[test]
fn transaction_control_is_followed_by_the_steps_its_shape_was_parsed_into() {
    let sql =
        "SAVEPOINT a; RELEASE SAVEPOINT \"B\"; ROLLBACK WORK TO X; COMMIT AND CHAIN; SELECT 1; PREPARE TRANSACTION 'g'";
    let want = [
        Step::Savepoint("a".into()),
        Step::Release("B".into()),
        Step::RollbackTo("x".into()),
        Step::Ends,
        Step::Other,
        Step::Ends,
    ];
    assert_eq!(steps(sql).as_deref(), Some(&want[..]));
    let mut classifier = Classifier::default();
    let release = "RELEASE pg_psql_temporary_savepoint";
    assert_eq!(
        classifier.classify(release).steps(release),
        Some(&[Step::Release("pg_psql_temporary_savepoint".into())][..])
    );
    // Where a SQL name is used too, or no transaction control, the statement is parsed as before.
    let declare = "DECLARE c CURSOR FOR SELECT 1; COMMIT";
    assert_eq!(classifier.classify(declare).steps(declare), None);
    assert_eq!(classifier.classify("SELECT 1").steps("SELECT 1"), None);
}

#[test]
fn savepoints_around_every_statement_are_followed_each_time() {
    // psql's ON_ERROR_ROLLBACK, twice: the second time with no parse.
    let mut s = Session::default();
    s.event(&ok("BEGIN"));
    for round in 0..2 {
        s.event(&ran("SAVEPOINT pg_psql_temporary_savepoint", done(&["SAVEPOINT"])));
        s.event(&ok("DECLARE doomed CURSOR WITH HOLD FOR SELECT * FROM t1"));
        s.event(&ran("ROLLBACK TO pg_psql_temporary_savepoint", done(&["ROLLBACK"])));
        assert_eq!(s.read("doomed"), None, "round {round}");
        s.event(&ran("RELEASE pg_psql_temporary_savepoint", done(&["RELEASE"])));
        assert!(!s.tracker.has_savepoints(), "round {round}");
    }
    // Names fold case as the server folds them; a savepoint that failed to be taken is none.
    s.event(&ran("SAVEPOINT Mixed", done(&["SAVEPOINT"])));
    s.event(&ok("DECLARE kept CURSOR WITH HOLD FOR SELECT * FROM t2"));
    s.fails_after("SELECT 1; SAVEPOINT inner_one", "SELECT 1");
    s.event(&ok("DECLARE later CURSOR WITH HOLD FOR SELECT * FROM t3"));
    s.event(&ran("ROLLBACK TO inner_one", done(&["ROLLBACK"])));
    assert_eq!(s.read("later").as_deref(), Some("SELECT * FROM t3"));
    s.event(&ran("ROLLBACK TO mixed", done(&["ROLLBACK"])));
    assert_eq!(s.read("kept"), None);
    assert_eq!(s.read("later"), None);
}
