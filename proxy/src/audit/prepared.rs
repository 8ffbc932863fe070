//! SQL-level prepared statements: `PREPARE name AS ...` keeps a statement
//! in the session by name, and `EXECUTE name(...)` runs it, so an EXECUTE's
//! text alone says nothing of what ran. The server keeps them in one
//! namespace with the extended protocol's Parse and Close, and so does the
//! session's tracker: what a `PREPARE`, `DEALLOCATE` or `DISCARD ALL` did
//! is told to it here, once it ran, and an EXECUTE's event names the text
//! its name held (`prepared`), with that statement's class and tables
//! (`prepared_class`, `prepared_tables`). Values given to an EXECUTE where
//! its statement takes a password are redacted with the rest of its text.

use std::sync::Arc;

use pg_query::protobuf::{DiscardMode, Token};
use pg_query::{NodeEnum, NodeRef};
use portcullis_protocol::audit::detail::Detail;
use portcullis_protocol::pg::statements::{Outcome, StatementTracker, Text};

use super::classify::Classifier;
use super::redact::{Redaction, redact};

/// What a statement's EXECUTEs ran.
#[derive(Debug, Default)]
pub struct Executed {
    /// The texts their names held, in order, with the passwords found in each.
    texts: Vec<(Arc<Text>, Redaction)>,
    /// One of them takes a password among its parameters, and the EXECUTE
    /// gave values: its text is to be stored with every value redacted.
    pub secret: bool,
}

/// Follows `sql`, a statement that holds a SQL PREPARE, EXECUTE,
/// DEALLOCATE or DISCARD (see `Class::prepared`) and ended with `outcome`:
/// the commands of it that ran are told to `tracker`, in order, and what
/// its EXECUTEs ran is answered.
pub fn follow(sql: &str, outcome: &Outcome, tracker: &mut StatementTracker) -> Executed {
    let mut executed = Executed::default();
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        return executed;
    };
    let ran = statements_that_ran(outcome);
    for (i, raw) in parsed.protobuf.stmts.iter().enumerate() {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        // `EXPLAIN EXECUTE`, `CREATE TABLE ... AS EXECUTE` run one too.
        for (n, ..) in node.nodes() {
            if let NodeRef::ExecuteStmt(e) = n
                && let Some(text) = tracker.prepared_text(&e.name)
            {
                let found = redact(&text.text);
                executed.secret |= !e.params.is_empty() && !found.params.is_empty();
                executed.texts.push((text, found));
            }
        }
        if i >= ran {
            continue;
        }
        match node {
            NodeEnum::PrepareStmt(p) => {
                let start = usize::try_from(raw.stmt_location).unwrap_or(0);
                let end = match usize::try_from(raw.stmt_len) {
                    Ok(0) | Err(_) => sql.len(),
                    Ok(len) => start.saturating_add(len),
                };
                match sql.get(start..end).and_then(prepared_statement) {
                    Some(statement) => tracker.sql_prepared(&p.name, statement),
                    None => tracker.sql_deallocated(Some(&p.name)),
                }
            }
            NodeEnum::DeallocateStmt(x) if x.isall || x.name.is_empty() => tracker.sql_deallocated(None),
            NodeEnum::DeallocateStmt(x) => tracker.sql_deallocated(Some(&x.name)),
            NodeEnum::DiscardStmt(x) if x.target == DiscardMode::DiscardAll as i32 => tracker.discarded_all(),
            _ => {}
        }
    }
    executed
}

impl Executed {
    /// Writes what ran into `d`: the texts (passwords redacted), and their
    /// classes and tables.
    pub fn write(&self, classifier: &mut Classifier, d: &mut impl Detail) {
        if self.texts.is_empty() {
            return;
        }
        let mut texts = Vec::with_capacity(self.texts.len());
        let (mut classes, mut tables) = (Vec::new(), Vec::new());
        for (text, found) in &self.texts {
            texts.push(found.text.as_deref().unwrap_or(&text.text));
            let class = classifier.classify(&text.text);
            classes.extend(class.class.split(',').map(str::to_owned));
            tables.extend(class.tables.split(',').filter(|t| !t.is_empty()).map(str::to_owned));
        }
        for list in [&mut classes, &mut tables] {
            list.sort_unstable();
            list.dedup();
        }
        d.put("prepared", &texts.join("; "));
        d.put("prepared_class", &classes.join(","));
        if !tables.is_empty() {
            d.put("prepared_tables", &tables.join(","));
        }
    }
}

/// The statement a `PREPARE name [(types)] AS statement` prepares: what
/// follows its first AS (no type name holds one).
fn prepared_statement(prepare: &str) -> Option<&str> {
    let tokens = pg_query::scan_tokens(prepare).ok()?;
    let as_ = tokens.iter().find(|t| t.token == Token::As as i32)?;
    Some(prepare.get(usize::try_from(as_.end).ok()?..)?.trim())
}

/// How many of a statement's commands ran, from the first: all of one that
/// completed, those before the error of one that failed, none of one the
/// server skipped or whose outcome is not known.
fn statements_that_ran(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Done(_) | Outcome::Suspended => usize::MAX,
        Outcome::Failed { done, .. } => done.len(),
        Outcome::NotRun | Outcome::Interrupted | Outcome::NotFollowed => 0,
    }
}

#[cfg(test)]
mod tests {
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
}
