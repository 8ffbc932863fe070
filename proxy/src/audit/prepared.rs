//! SQL-level prepared statements: `PREPARE name AS ...` keeps a statement
//! in the session by name, and `EXECUTE name(...)` runs it, so an EXECUTE's
//! text alone says nothing of what ran. Each session's are followed here,
//! and an EXECUTE's event names the PREPARE it ran (`prepared`), with that
//! statement's class and tables (`prepared_class`, `prepared_tables`). The
//! extended protocol's Parse, Bind and Execute are the tracker's.

use std::collections::HashMap;
use std::sync::Arc;

use pg_query::protobuf::DiscardMode;
use pg_query::{NodeEnum, NodeRef};
use portcullis_protocol::audit::detail::Detail;
use portcullis_protocol::pg::statements::{Outcome, Statement};

use super::classify::Classifier;
use super::redact::redact;

/// Names followed per session; a PREPARE past it is not, and its EXECUTEs
/// say no more than their own text.
const MAX_NAMES: usize = 1000;
/// Bytes of PREPARE text kept per session, likewise.
const MAX_BYTES: usize = 1 << 20;

/// A PREPARE that took effect, as an EXECUTE of it reports it.
#[derive(Debug)]
struct Prepared {
    /// The PREPARE statement, passwords redacted.
    text: String,
    /// The class of what it prepares (`DELETE`), and its tables.
    class: String,
    tables: String,
}

/// One session's SQL prepared statements, by name.
#[derive(Debug, Default)]
pub struct SqlPrepared {
    by_name: HashMap<String, Arc<Prepared>>,
    bytes: usize,
}

impl SqlPrepared {
    /// Follows `s`, a statement that holds a PREPARE, EXECUTE, DEALLOCATE
    /// or DISCARD (see `Class::prepared`): the statements of it that ran
    /// change the session's names, and what its EXECUTEs ran goes to `d`.
    pub fn follow(&mut self, s: &Statement, classifier: &mut Classifier, d: &mut impl Detail) {
        let sql = &s.text.text;
        // A cut text is no whole statement.
        if s.text.sha256.is_some() {
            return;
        }
        let Ok(parsed) = pg_query::parse(sql, 0) else {
            return;
        };
        let ran = statements_that_ran(&s.outcome);
        let mut executed: Vec<Arc<Prepared>> = Vec::new();
        for (i, raw) in parsed.protobuf.stmts.iter().enumerate() {
            let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
                continue;
            };
            // `EXPLAIN EXECUTE`, `CREATE TABLE ... AS EXECUTE` run one too.
            for (n, ..) in node.nodes() {
                if let NodeRef::ExecuteStmt(e) = n
                    && let Some(p) = self.by_name.get(&e.name)
                {
                    executed.push(Arc::clone(p));
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
                    if let Some(text) = sql.get(start..end) {
                        self.prepare(&p.name, text.trim(), classifier);
                    }
                }
                NodeEnum::DeallocateStmt(x) if x.isall || x.name.is_empty() => self.clear(),
                NodeEnum::DeallocateStmt(x) => self.remove(&x.name),
                NodeEnum::DiscardStmt(x) if x.target == DiscardMode::DiscardAll as i32 => self.clear(),
                _ => {}
            }
        }
        match executed.as_slice() {
            [] => {}
            [one] => {
                d.put("prepared", &one.text);
                d.put("prepared_class", &one.class);
                if !one.tables.is_empty() {
                    d.put("prepared_tables", &one.tables);
                }
            }
            many => {
                let join = |f: fn(&Prepared) -> &str| {
                    let mut parts: Vec<&str> = many
                        .iter()
                        .flat_map(|p| f(p).split(','))
                        .filter(|t| !t.is_empty())
                        .collect();
                    parts.sort_unstable();
                    parts.dedup();
                    parts.join(",")
                };
                let texts: Vec<&str> = many.iter().map(|p| p.text.as_str()).collect();
                d.put("prepared", &texts.join("; "));
                d.put("prepared_class", &join(|p| &p.class));
                let tables = join(|p| &p.tables);
                if !tables.is_empty() {
                    d.put("prepared_tables", &tables);
                }
            }
        }
    }

    /// `name` now holds the statement `text` (a whole PREPARE).
    fn prepare(&mut self, name: &str, text: &str, classifier: &mut Classifier) {
        self.remove(name);
        if self.by_name.len() >= MAX_NAMES || self.bytes + text.len() > MAX_BYTES {
            return;
        }
        let class = classifier.classify(text);
        let inner: Vec<&str> = class.class.split(',').filter(|c| *c != "PREPARED").collect();
        let text = redact(text).text.unwrap_or_else(|| text.to_owned());
        self.bytes += text.len();
        let prepared = Prepared {
            text,
            class: inner.join(","),
            tables: class.tables.clone(),
        };
        self.by_name.insert(name.to_owned(), Arc::new(prepared));
    }

    fn remove(&mut self, name: &str) {
        if let Some(old) = self.by_name.remove(name) {
            self.bytes -= old.text.len();
        }
    }

    fn clear(&mut self) {
        self.by_name.clear();
        self.bytes = 0;
    }
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

    use portcullis_protocol::pg::statements::{Completion, Flow, Text};

    use super::*;

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

    /// Follows `s` as the pipeline does (only what its class says holds a
    /// PREPARE, EXECUTE, DEALLOCATE or DISCARD); answers what it added.
    fn follow(p: &mut SqlPrepared, c: &mut Classifier, s: &Statement) -> BTreeMap<String, String> {
        let mut d = BTreeMap::new();
        if c.classify(&s.text.text).prepared {
            p.follow(s, c, &mut d);
        }
        d
    }

    #[test]
    fn an_execute_names_the_statement_it_ran_with_its_class_and_tables() {
        let (mut p, mut c) = (SqlPrepared::default(), Classifier::default());
        let prepare = "PREPARE del (int) AS DELETE FROM orders WHERE id = $1";
        assert!(follow(&mut p, &mut c, &ok(prepare)).is_empty());
        let d = follow(&mut p, &mut c, &ok("EXECUTE del(5)"));
        assert_eq!(d["prepared"], prepare);
        assert_eq!((&*d["prepared_class"], &*d["prepared_tables"]), ("DELETE", "orders"));
        // EXPLAIN runs it too; a name never prepared says nothing.
        let d = follow(&mut p, &mut c, &ok("EXPLAIN ANALYZE EXECUTE del(6)"));
        assert_eq!(d["prepared"], prepare);
        assert!(follow(&mut p, &mut c, &ok("EXECUTE other")).is_empty());
        assert!(!c.classify("SELECT 1").prepared);
    }

    #[test]
    fn names_follow_the_statements_that_ran_in_order() {
        let (mut p, mut c) = (SqlPrepared::default(), Classifier::default());
        let d = follow(
            &mut p,
            &mut c,
            &ok("PREPARE a AS SELECT * FROM t1; EXECUTE a; DEALLOCATE a; PREPARE b AS UPDATE t2 SET x = 1"),
        );
        assert_eq!(d["prepared"], "PREPARE a AS SELECT * FROM t1");
        assert!(follow(&mut p, &mut c, &ok("EXECUTE a")).is_empty(), "deallocated");
        assert_eq!(follow(&mut p, &mut c, &ok("EXECUTE b"))["prepared_tables"], "t2");
        // Prepared again under the same name: the new statement.
        follow(&mut p, &mut c, &ok("PREPARE b AS INSERT INTO t3 VALUES (1)"));
        let d = follow(&mut p, &mut c, &ok("EXECUTE b; EXECUTE b"));
        assert_eq!(d["prepared_class"], c.classify("INSERT INTO t3 VALUES (1)").class);
        for all in ["DEALLOCATE ALL", "DISCARD ALL"] {
            follow(&mut p, &mut c, &ok("PREPARE b AS SELECT 1"));
            follow(&mut p, &mut c, &ok(all));
            assert!(follow(&mut p, &mut c, &ok("EXECUTE b")).is_empty(), "{all}");
        }
    }

    #[test]
    fn only_what_ran_takes_effect() {
        let (mut p, mut c) = (SqlPrepared::default(), Classifier::default());
        let failed = |done: Vec<Completion>| Outcome::Failed {
            sqlstate: "42P05".into(),
            message: "prepared statement \"a\" already exists".into(),
            done,
        };
        follow(&mut p, &mut c, &ok("PREPARE a AS SELECT 1"));
        // The second PREPARE failed: `a` is still the first.
        follow(&mut p, &mut c, &ran("PREPARE a AS DELETE FROM t", failed(Vec::new())));
        assert_eq!(
            follow(&mut p, &mut c, &ok("EXECUTE a"))["prepared"],
            "PREPARE a AS SELECT 1"
        );
        // Of a Query that failed in its second command, the first ran.
        let first = vec![Completion {
            tag: "DEALLOCATE".into(),
            rows: None,
        }];
        follow(
            &mut p,
            &mut c,
            &ran("DEALLOCATE a; PREPARE a AS DELETE FROM t", failed(first)),
        );
        assert!(follow(&mut p, &mut c, &ok("EXECUTE a")).is_empty());
        follow(&mut p, &mut c, &ran("PREPARE z AS SELECT 1", Outcome::NotRun));
        assert!(follow(&mut p, &mut c, &ok("EXECUTE z")).is_empty());
    }

    #[test]
    fn a_password_in_a_prepared_statement_is_redacted() {
        let (mut p, mut c) = (SqlPrepared::default(), Classifier::default());
        follow(&mut p, &mut c, &ok("PREPARE mk AS CREATE ROLE x PASSWORD 'hunter2'"));
        follow(
            &mut p,
            &mut c,
            &ok("PREPARE link AS SELECT dblink_connect('host=db password=hunter2')"),
        );
        let d = follow(&mut p, &mut c, &ok("EXECUTE link"));
        assert!(!d["prepared"].contains("hunter2"), "{d:?}");
        assert!(d["prepared"].contains("[redacted]"), "{d:?}");
    }

    #[test]
    fn what_a_session_keeps_is_bounded() {
        let (mut p, mut c) = (SqlPrepared::default(), Classifier::default());
        for i in 0..MAX_NAMES + 10 {
            follow(&mut p, &mut c, &ok(&format!("PREPARE p{i} AS SELECT {i}")));
        }
        assert_eq!(p.by_name.len(), MAX_NAMES);
        let long = format!("PREPARE big AS SELECT '{}'", "x".repeat(MAX_BYTES));
        follow(&mut p, &mut c, &ok("DEALLOCATE ALL"));
        follow(&mut p, &mut c, &ok(&long));
        assert!(p.by_name.is_empty() && p.bytes == 0);
    }
}
