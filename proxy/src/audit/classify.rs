//! What a statement is (SELECT, INSERT, DDL, ...) and which tables it
//! touches, from PostgreSQL's own parser (pg_query). Runs on the audit
//! thread, never on the relay path.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use portcullis_protocol::audit::detail::{Detail, Fields};

use super::comments::block_comment_end;
use super::sql_names::{self, Step};

/// Statement shapes remembered; past it the cache starts over.
const CACHE: usize = 4096;
/// Bytes of shapes remembered, at most: a shape is as long as its text (up
/// to 64 KiB, a bulk INSERT's), and 4,096 of those would hold 256 MiB.
const CACHE_BYTES: usize = 4 << 20;

/// A statement's class and tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Class {
    /// e.g. `SELECT`, `INSERT`, `DDL`, `DCL`; several commands give `DDL,SELECT`.
    pub class: String,
    /// Tables touched, sorted, comma-separated (empty when none or unknown).
    pub tables: String,
    /// `class` and `tables` (when any) as detail fields, rendered once.
    pub fields: Arc<Fields>,
    /// Makes, uses or drops a prepared statement or cursor by name in SQL
    /// (PREPARE, EXECUTE, DEALLOCATE, DISCARD, DECLARE, FETCH, MOVE,
    /// CLOSE): the session's names follow it (`sql_names`).
    pub names: bool,
    /// Holds transaction control (BEGIN, COMMIT, ROLLBACK, ...): a COMMIT
    /// or ROLLBACK ends the session's cursors, so it is followed when the
    /// session has any.
    pub transaction: bool,
    /// What each command does to the transaction (`sql_names::Step`),
    /// found the first time a statement of this shape is followed.
    steps: OnceLock<Option<Box<[Step]>>>,
}

impl Class {
    fn new(class: String, tables: String, names: bool, transaction: bool) -> Class {
        let mut fields = Fields::default();
        fields.put("class", &class);
        if !tables.is_empty() {
            fields.put("tables", &tables);
        }
        Class {
            class,
            tables,
            fields: Arc::new(fields),
            names,
            transaction,
            steps: OnceLock::new(),
        }
    }

    /// What following `sql`, a statement of this class, tells the
    /// session's tracker, when it holds transaction control and uses no
    /// SQL name: parsed once for every statement of its shape, as a shape
    /// keeps names (savepoints' too). `None` otherwise: `sql_names::follow`
    /// then parses it.
    pub fn steps(&self, sql: &str) -> Option<&[Step]> {
        if !self.transaction || self.names {
            return None;
        }
        self.steps.get_or_init(|| sql_names::steps(sql)).as_deref()
    }
}

/// Classifies statements, remembering each shape (the text with its
/// literals blanked) so a workload that repeats itself is parsed once.
#[derive(Default)]
pub struct Classifier {
    cache: HashMap<Vec<u8>, Arc<Class>, foldhash::fast::RandomState>,
    /// The shape of the statement at hand, in a buffer kept for the next.
    key: Vec<u8>,
    /// What the cache's shapes hold, in bytes.
    bytes: usize,
}

impl Classifier {
    /// The class and tables of `sql` (one statement or several).
    pub fn classify(&mut self, sql: &str) -> Arc<Class> {
        if shape(sql, &mut self.key).is_none() {
            return Arc::new(parse(sql));
        }
        if let Some(c) = self.cache.get(self.key.as_slice()) {
            return Arc::clone(c);
        }
        // Only what the parser took as it is: a text it refused can share a
        // shape with one that runs (`LIMIT 1, 2` and `LIMIT 1`), and must
        // not give that one its class without tables.
        let Some(class) = parse_as_is(sql) else {
            return Arc::new(parse_refused(sql));
        };
        if self.cache.len() >= CACHE || self.bytes + self.key.len() > CACHE_BYTES {
            self.cache.clear();
            self.bytes = 0;
        }
        let class = Arc::new(class);
        self.bytes += self.key.len();
        self.cache.insert(self.key.clone(), Arc::clone(&class));
        class
    }
}

fn parse(sql: &str) -> Class {
    parse_as_is(sql).unwrap_or_else(|| parse_refused(sql))
}

/// The class of a text the parser refused as it is.
fn parse_refused(sql: &str) -> Class {
    // Strings with backslash escapes (`standard_conforming_strings` off),
    // which the parser reads as on: the statement without its values
    // parses as the server ran it.
    super::redact::without_values(sql)
        .and_then(|plain| parse_as_is(&plain))
        .unwrap_or_else(|| first_word(sql))
}

fn parse_as_is(sql: &str) -> Option<Class> {
    match pg_query::summary(sql, 0, -1) {
        Ok(s) => {
            let mut classes: Vec<&str> = s.statement_types.iter().map(|t| class_of(t)).collect();
            classes.sort_unstable();
            classes.dedup();
            let mut tables: Vec<&str> = s.tables.iter().map(|t| t.name.as_str()).collect();
            tables.sort_unstable();
            tables.dedup();
            let class = if classes.is_empty() {
                "EMPTY".into()
            } else {
                classes.join(",")
            };
            let names = s.statement_types.iter().any(|t| {
                matches!(
                    t.as_str(),
                    "PrepareStmt"
                        | "ExecuteStmt"
                        | "DeallocateStmt"
                        | "DiscardStmt"
                        | "DeclareCursorStmt"
                        | "FetchStmt"
                        | "ClosePortalStmt"
                )
            });
            let transaction = s.statement_types.iter().any(|t| t == "TransactionStmt");
            Some(Class::new(class, tables.join(","), names, transaction))
        }
        Err(_) => None,
    }
}

/// Not valid SQL (the server will have said so), or cut short: the first
/// word that is not in a comment.
fn first_word(sql: &str) -> Class {
    Class::new(
        past_comments(sql)
            .split(|c: char| !c.is_ascii_alphabetic())
            .find(|w| !w.is_empty())
            .map_or_else(|| "UNKNOWN".to_owned(), str::to_ascii_uppercase),
        String::new(),
        false,
        false,
    )
}

/// `sql` from its first character that is not blank or in a comment
/// (block comments nest, as in PostgreSQL); empty when a comment never ends.
fn past_comments(mut sql: &str) -> &str {
    loop {
        sql = sql.trim_start();
        if let Some(rest) = sql.strip_prefix("--") {
            sql = rest.find(['\n', '\r']).map_or("", |n| &rest[n..]);
        } else if sql.starts_with("/*") {
            sql = block_comment_end(sql.as_bytes(), 0).map_or("", |e| &sql[e..]);
        } else {
            return sql;
        }
    }
}

/// The class of one parse node type, e.g. `SelectStmt` -> `SELECT`.
fn class_of(stmt: &str) -> &'static str {
    let name = stmt.strip_suffix("Stmt").unwrap_or(stmt);
    match name {
        "Select" => "SELECT",
        "Insert" => "INSERT",
        "Update" => "UPDATE",
        "Delete" => "DELETE",
        "Merge" => "MERGE",
        "Copy" => "COPY",
        "Truncate" => "TRUNCATE",
        "Transaction" => "TRANSACTION",
        "Explain" => "EXPLAIN",
        "Call" => "CALL",
        "Do" => "DO",
        "Prepare" | "Execute" | "Deallocate" => "PREPARED",
        "VariableSet" | "VariableShow" | "Discard" | "Listen" | "Unlisten" | "Notify" | "Lock" | "Checkpoint"
        | "Vacuum" | "Cluster" | "Reindex" | "Load" | "DeclareCursor" | "Fetch" | "ClosePortal" | "ConstraintsSet" => {
            "UTILITY"
        }
        "Grant"
        | "GrantRole"
        | "CreateRole"
        | "AlterRole"
        | "AlterRoleSet"
        | "DropRole"
        | "DropOwned"
        | "ReassignOwned"
        | "AlterDefaultPrivileges"
        | "CreateUserMapping"
        | "AlterUserMapping"
        | "DropUserMapping"
        | "CreatePolicy"
        | "AlterPolicy"
        | "SecLabel" => "DCL",
        n if [
            "Create",
            "Alter",
            "Drop",
            "Rename",
            "Comment",
            "Define",
            "Index",
            "View",
            "Composite",
            "Import",
        ]
        .iter()
        .any(|p| n.starts_with(p)) =>
        {
            "DDL"
        }
        _ => "OTHER",
    }
}

/// Writes into `out` the text with its literals (quoted strings and
/// numbers) blanked and each comment made one blank, as a cache key;
/// `None` when the text has quoting this cannot follow safely (dollar
/// quotes, escape strings, a comment that never ends), and is then parsed
/// every time. Two texts of one shape must differ in literals and comments
/// only: quoted identifiers and parameters (`$1`) are kept as written, and
/// comments end exactly where PostgreSQL's lexer ends them, so a quote
/// inside either cannot hide a table behind a cached shape. Comments go
/// because tools put one on every query (sqlcommenter, Rails' query log
/// tags), each with its own trace id: kept, every one was a parse.
fn shape(sql: &str, out: &mut Vec<u8>) -> Option<()> {
    let b = sql.as_bytes();
    out.clear();
    let mut i = 0;
    let word = |at: usize| at > 0 && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_' || b[at - 1] >= 0x80);
    while i < b.len() {
        let c = b[i];
        match c {
            // A parameter, or a `$` inside a name; anything else may open a dollar quote.
            b'$' if word(i) || b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let end = i + 1 + b[i + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
                out.extend_from_slice(&b[i..end]);
                i = end;
                continue;
            }
            b'$' => return None,
            // `U&"..." UESCAPE 'c'`: what the name is depends on a literal.
            b'"' if i > 0 && b[i - 1] == b'&' => return None,
            b'"' => {
                let end = i + 1 + b[i + 1..].iter().position(|&q| q == b'"')? + 1;
                out.extend_from_slice(&b[i..end]);
                i = end;
                continue;
            }
            // To the end of the line, which is a CR as well as a LF (scan.l's `non_newline`).
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&n| n == b'\n' || n == b'\r')
                    .map_or(b.len(), |n| i + n);
                out.push(b' ');
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = block_comment_end(b, i)?;
                out.push(b' ');
                continue;
            }
            b'\'' => {
                if i > 0 && matches!(b[i - 1], b'e' | b'E' | b'u' | b'U' | b'&' | b'b' | b'B' | b'x' | b'X') {
                    return None;
                }
                i += 1;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => break,
                        Some(_) => i += 1,
                    }
                }
                literal(out);
            }
            b'0'..=b'9' if !word(i) => {
                while i + 1 < b.len() && (b[i + 1].is_ascii_alphanumeric() || b[i + 1] == b'.') {
                    i += 1;
                }
                literal(out);
            }
            // Up to the next byte that may start a literal, a quote or a
            // comment, copied at once. Bytes of a multi-byte character are
            // all >= 0x80: copied as they are.
            _ => {
                let end = b[i + 1..]
                    .iter()
                    .position(|&n| SPECIAL[usize::from(n)])
                    .map_or(b.len(), |n| i + 1 + n);
                out.extend_from_slice(&b[i..end]);
                i = end;
                continue;
            }
        }
        i += 1;
    }
    Some(())
}

/// Blanks a literal in a shape: `?`, and a list of them one `?`, so an
/// `IN (...)` list does not make a shape per length. Only literals, commas
/// and blanks go: no name, so no table, is lost.
fn literal(out: &mut Vec<u8>) {
    let kept = out.trim_ascii_end();
    if let Some(before) = kept.strip_suffix(b",")
        && before.trim_ascii_end().ends_with(b"?")
    {
        out.truncate(before.trim_ascii_end().len());
    } else {
        out.push(b'?');
    }
}

/// The bytes `shape` looks at: any other is copied as it is.
const SPECIAL: [bool; 256] = {
    let mut special = [false; 256];
    let mut c = 0;
    while c < 256 {
        special[c] = matches!(c as u8, b'$' | b'"' | b'-' | b'/' | b'\'' | b'0'..=b'9');
        c += 1;
    }
    special
};

#[cfg(test)]
mod tests {
    use super::*;

    /// `shape` into a fresh buffer.
    fn shape(sql: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        super::shape(sql, &mut out).map(|()| out)
    }

    #[test]
    fn classes_and_tables_come_from_the_parser() {
        let mut c = Classifier::default();
        let s = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 5");
        assert_eq!((s.class.as_str(), s.tables.as_str()), ("SELECT", "pgbench_accounts"));
        let s = c.classify("CREATE TABLE t (x int); SELECT 1 FROM a JOIN b.c ON true");
        assert_eq!((s.class.as_str(), s.tables.as_str()), ("DDL,SELECT", "a,b.c,t"));
        assert_eq!(c.classify("ALTER ROLE x PASSWORD 'p'").class, "DCL");
        assert_eq!(c.classify("UPDATE t SET x = 1").class, "UPDATE");
        assert_eq!(c.classify("begin").class, "TRANSACTION");
        assert_eq!(c.classify("selec 1").class, "SELEC");
        // Statements inside others count: what EXPLAIN ANALYZE runs, a DELETE in a WITH.
        assert_eq!(c.classify("EXPLAIN ANALYZE DELETE FROM t").class, "DELETE,EXPLAIN");
        let cte = c.classify("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d");
        assert_eq!(cte.class, "DELETE,SELECT");
        // Text too long to parse is named by its first word outside comments.
        assert_eq!(
            c.classify("/* SELECT /* nested */ */ -- SELECT\n DELETE FROM t WHERE")
                .class,
            "DELETE"
        );
        assert_eq!(c.classify("/* never ends SELECT").class, "UNKNOWN");
        // Strings with backslash escapes (standard_conforming_strings off)
        // do not parse as they are; without their values they do.
        let escaped = c.classify(r"WITH d AS (DELETE FROM accounts RETURNING 1) SELECT 1 FROM d WHERE 'x\'' <> ''");
        assert_eq!(escaped.class, "DELETE,SELECT");
        assert!(escaped.tables.split(',').any(|t| t == "accounts"), "{}", escaped.tables);
    }

    #[test]
    fn literals_do_not_split_the_cache_but_do_not_merge_different_statements() {
        assert_eq!(
            shape("SELECT 1 FROM t WHERE a = 'x''y'"),
            shape("SELECT 22 FROM t WHERE a = 'z'")
        );
        assert_ne!(shape("SELECT 1 FROM t1"), shape("SELECT 1 FROM t2"));
        assert_eq!(shape("SELECT $$x$$"), None);
        assert_eq!(
            shape("SELECT a$1 FROM t WHERE b = $12"),
            Some("SELECT a$1 FROM t WHERE b = $12".into())
        );
        // A quote in a comment or a quoted name opens no literal: these differ in tables.
        assert_ne!(
            shape("SELECT 1 -- '\nFROM secret --'"),
            shape("SELECT 1 -- '\nFROM other --'")
        );
        // A line comment ends at a CR too; block comments nest.
        assert_ne!(shape("SELECT 1 -- x\rFROM secret"), shape("SELECT 1 -- x\rFROM other"));
        assert_ne!(
            shape("SELECT 1 /* /* */ ' */ FROM secret"),
            shape("SELECT 1 /* /* */ ' */ FROM other")
        );
        assert_ne!(
            shape("SELECT 1 /*/ */ FROM secret */"),
            shape("SELECT 1 /*/ */ FROM other */")
        );
        assert_ne!(
            shape("SELECT \"a'b\" FROM secret WHERE c = 'x'"),
            shape("SELECT \"a'b\" FROM other WHERE c = 'x'")
        );
        // Comments, each with its own trace id, share a shape.
        assert_eq!(
            shape("SELECT 1 FROM t /*traceparent='00-4bf92f35-01'*/"),
            shape("SELECT 2 FROM t /*traceparent='00-a3ce929d-01'*/")
        );
        assert_eq!(shape("SELECT 1 -- retry 1\n"), shape("SELECT 1 -- retry 22\n"));
        assert_eq!(shape("SELECT 1 /* never ends"), None);
        assert_eq!(shape("SELECT \"unclosed"), None);
        assert_eq!(shape("SELECT E'\\''"), None);
        assert_eq!(shape("SELECT 'é', 1"), Some(b"SELECT ?".to_vec()));
        // Lists of literals are one, whatever their length; rows stay rows.
        assert_eq!(
            shape("SELECT 1 FROM t WHERE a IN (1, 2,3 , 'x')"),
            shape("SELECT 1 FROM t WHERE a IN (4)")
        );
        assert_eq!(
            shape("INSERT INTO t VALUES (1, 2), (3, 4)"),
            Some("INSERT INTO t VALUES (?), (?)".into())
        );
        assert_ne!(shape("SELECT 1, a FROM t"), shape("SELECT 1 FROM t"));
        assert_eq!(shape("SELECT é1, 2"), Some("SELECT é1, ?".into()));
        let mut c = Classifier::default();
        c.classify("SELECT 1 FROM t WHERE a = 1");
        c.classify("SELECT 1 FROM t WHERE a = 2");
        assert_eq!(c.cache.len(), 1);
    }

    #[test]
    fn a_text_the_parser_refuses_gives_its_shape_no_class() {
        // Each pair shares a shape; the first of each fails at the server.
        for (refused, runs) in [
            ("SELECT * FROM secret LIMIT 1, 2", "SELECT * FROM secret LIMIT 1"),
            (
                "SELECT * FROM secret WHERE id = 1x",
                "SELECT * FROM secret WHERE id = 1",
            ),
            // Strings join across a newline after a line comment, never a block comment.
            (
                "SELECT 'a' /* x */\n'b' FROM secret",
                "SELECT 'a' -- x\n'b' FROM secret",
            ),
        ] {
            let mut c = Classifier::default();
            assert_eq!(c.classify(refused).tables, "", "{refused}");
            assert_eq!(c.classify(runs).tables, "secret", "{runs}");
        }
        // What a `U&` name says depends on its UESCAPE literal.
        assert_eq!(shape("SELECT * FROM U&\"secr!0065t\" UESCAPE '#'"), None);
        assert_eq!(
            Classifier::default().classify("-- x\rSELECT 1 FROM").class,
            "SELECT",
            "a line comment ends at a CR"
        );
    }

    #[test]
    fn the_cache_holds_a_bounded_number_of_bytes() {
        let mut c = Classifier::default();
        let columns = "x, ".repeat(10_000);
        for i in 0..160 {
            let class = c.classify(&format!("SELECT {columns}x FROM t{i}"));
            assert_eq!(class.tables, format!("t{i}"));
            assert!(c.bytes <= CACHE_BYTES, "{} bytes after {i}", c.bytes);
        }
        assert!(c.cache.len() < 160, "30 KB shapes: {} kept", c.cache.len());
        assert_eq!(c.bytes, c.cache.keys().map(Vec::len).sum::<usize>());
    }
}
