//! Names SQL keeps in the session: `PREPARE name AS ...` keeps a statement
//! by name and `EXECUTE name(...)` runs it; `DECLARE name CURSOR FOR ...`
//! keeps a query and `FETCH ... FROM name` reads it (psql's `FETCH_COUNT`
//! mode does this for every query). An EXECUTE's or a FETCH's text alone
//! says nothing of what ran. The server keeps these names in one namespace
//! each with the extended protocol's statements and portals, and so does
//! the session's tracker: what a `PREPARE`, `DEALLOCATE`, `DECLARE`,
//! `CLOSE` or `DISCARD ALL` did is told to it here, once it ran. An
//! EXECUTE's event names the text its name held (`prepared`), a FETCH's or
//! MOVE's the cursor's query (`cursor`), each with its class and tables
//! (`prepared_class`, `prepared_tables`, `cursor_class`, `cursor_tables`).
//! Values given to an EXECUTE where its statement takes a password are
//! redacted with the rest of its text.

use std::sync::Arc;

use pg_query::protobuf::{DiscardMode, Token, TransactionStmtKind};
use pg_query::{NodeEnum, NodeRef};
use portcullis_protocol::audit::detail::Detail;
use portcullis_protocol::pg::statements::{Completion, Outcome, StatementTracker, Text};

use super::classify::Classifier;
use super::redact::{Redaction, redact};

/// What a statement's EXECUTEs ran and its FETCHes read.
#[derive(Debug, Default)]
pub struct Executed {
    /// The texts their names held, in order, with the passwords found in each.
    texts: Vec<(Arc<Text>, Redaction)>,
    /// The queries of the cursors FETCH or MOVE read, likewise.
    cursors: Vec<(Arc<Text>, Redaction)>,
    /// One of them takes a password among its parameters, and the EXECUTE
    /// gave values: its text is to be stored with every value redacted.
    pub secret: bool,
}

/// Whether a statement that ended with `outcome` is to be followed: it
/// uses SQL's `names` (`Class::names`), or it controls the `transaction`
/// of a session whose cursors and portals its end or a savepoint's
/// rollback may close. A `SAVEPOINT` is followed even before any cursor
/// is declared in it; a `BEGIN` or `COMMIT` alone costs no parse.
pub fn wanted(names: bool, transaction: bool, outcome: &Outcome, tracker: &StatementTracker) -> bool {
    names || (transaction && (tracker.has_cursors() || tracker.has_savepoints() || has_tag(outcome, "SAVEPOINT")))
}

/// Follows `sql`, a statement that uses SQL's names (see `Class::names`)
/// and ended with `outcome`: the commands of it that ran are told to
/// `tracker`, in order, and what its EXECUTEs ran and FETCHes read is
/// answered.
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
            match n {
                NodeRef::ExecuteStmt(e) => {
                    if let Some(text) = tracker.prepared_text(&e.name) {
                        let found = redact(&text.text);
                        executed.secret |= !e.params.is_empty() && !found.params.is_empty();
                        executed.texts.push((text, found));
                    }
                }
                NodeRef::FetchStmt(f) => {
                    if let Some(text) = tracker.cursor_text(&f.portalname) {
                        let found = redact(&text.text);
                        executed.cursors.push((text, found));
                    }
                }
                _ => {}
            }
        }
        if i >= ran {
            continue;
        }
        let start = usize::try_from(raw.stmt_location).unwrap_or(0);
        let end = match usize::try_from(raw.stmt_len) {
            Ok(0) | Err(_) => sql.len(),
            Ok(len) => start.saturating_add(len),
        };
        let written = sql.get(start..end);
        match node {
            NodeEnum::PrepareStmt(p) => match written.and_then(|w| after_first(w, Token::As)) {
                Some(statement) => tracker.sql_prepared(&p.name, statement),
                None => tracker.sql_deallocated(Some(&p.name)),
            },
            NodeEnum::DeallocateStmt(x) if x.isall || x.name.is_empty() => tracker.sql_deallocated(None),
            NodeEnum::DeallocateStmt(x) => tracker.sql_deallocated(Some(&x.name)),
            NodeEnum::DiscardStmt(x) if x.target == DiscardMode::DiscardAll as i32 => tracker.discarded_all(),
            NodeEnum::DeclareCursorStmt(d) => match written.and_then(|w| after_first(w, Token::For)) {
                Some(query) => tracker.sql_declared(&d.portalname, query, d.options & CURSOR_OPT_HOLD != 0),
                None => tracker.sql_closed(Some(&d.portalname)),
            },
            NodeEnum::ClosePortalStmt(c) if c.portalname.is_empty() => tracker.sql_closed(None),
            NodeEnum::ClosePortalStmt(c) => tracker.sql_closed(Some(&c.portalname)),
            NodeEnum::TransactionStmt(_) => step_of(node).take(i, outcome, tracker),
            _ => {}
        }
    }
    executed
}

/// What one command of a statement does to the session's transaction, as
/// its tracker follows it. A statement of transaction control alone (no
/// SQL name in it) is followed by its steps, kept with the class of its
/// shape (`Class::steps`): JDBC's `autosave` and psql's `ON_ERROR_ROLLBACK`
/// wrap every statement in a SAVEPOINT and a RELEASE, and a parse of each
/// cost the audit thread more than the statement they wrap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing the tracker follows.
    Other,
    /// Ends the transaction: COMMIT, ROLLBACK (with or without `AND
    /// CHAIN`) or PREPARE TRANSACTION.
    Ends,
    /// `SAVEPOINT name`.
    Savepoint(Box<str>),
    /// `ROLLBACK TO [SAVEPOINT] name`.
    RollbackTo(Box<str>),
    /// `RELEASE [SAVEPOINT] name`.
    Release(Box<str>),
}

impl Step {
    /// Tells `tracker` what command `i` of a statement that ended with
    /// `outcome` did, as this step.
    fn take(&self, i: usize, outcome: &Outcome, tracker: &mut StatementTracker) {
        match self {
            // Where a Query holds more than its transaction's end (or the
            // end is `AND CHAIN`), the ReadyForQuery after it says too
            // little: what ended goes here. The tag tells a COMMIT of a
            // failed block, a rollback, from one that committed.
            Step::Ends => tracker.sql_transaction_ended(tag_of(outcome, i) == Some("ROLLBACK")),
            Step::Savepoint(name) => tracker.sql_savepoint(name),
            Step::RollbackTo(name) => tracker.sql_rolled_back_to(name),
            Step::Release(name) => tracker.sql_released(name),
            Step::Other => {}
        }
    }
}

/// The steps of `sql`'s commands, in order; `None` when it does not parse.
pub fn steps(sql: &str) -> Option<Box<[Step]>> {
    let parsed = pg_query::parse(sql, 0).ok()?;
    let stmts = parsed.protobuf.stmts.iter();
    Some(
        stmts
            .map(|raw| {
                raw.stmt
                    .as_ref()
                    .and_then(|n| n.node.as_ref())
                    .map_or(Step::Other, step_of)
            })
            .collect(),
    )
}

/// Follows, by its `steps`, a statement of transaction control that uses
/// no SQL name and ended with `outcome`: as `follow` does, with no parse.
pub fn follow_steps(steps: &[Step], outcome: &Outcome, tracker: &mut StatementTracker) {
    for (i, step) in steps.iter().enumerate().take(statements_that_ran(outcome)) {
        step.take(i, outcome, tracker);
    }
}

fn step_of(node: &NodeEnum) -> Step {
    let NodeEnum::TransactionStmt(t) = node else {
        return Step::Other;
    };
    let name = || t.savepoint_name.as_str().into();
    match t.kind {
        kind if ends_transaction(kind) => Step::Ends,
        kind if kind == TransactionStmtKind::TransStmtSavepoint as i32 => Step::Savepoint(name()),
        kind if kind == TransactionStmtKind::TransStmtRollbackTo as i32 => Step::RollbackTo(name()),
        kind if kind == TransactionStmtKind::TransStmtRelease as i32 => Step::Release(name()),
        _ => Step::Other,
    }
}

impl Executed {
    /// Writes what ran into `d`: the texts (passwords redacted), and their
    /// classes and tables.
    pub fn write(&self, classifier: &mut Classifier, d: &mut impl Detail) {
        const PREPARED: [&str; 3] = ["prepared", "prepared_class", "prepared_tables"];
        const CURSOR: [&str; 3] = ["cursor", "cursor_class", "cursor_tables"];
        write_texts(&self.texts, PREPARED, classifier, d);
        write_texts(&self.cursors, CURSOR, classifier, d);
    }
}

/// Writes `list`'s texts (passwords redacted), their classes and tables,
/// under `keys`; nothing when it is empty.
fn write_texts(
    list: &[(Arc<Text>, Redaction)],
    keys: [&'static str; 3],
    classifier: &mut Classifier,
    d: &mut impl Detail,
) {
    if list.is_empty() {
        return;
    }
    let mut texts = Vec::with_capacity(list.len());
    let (mut classes, mut tables) = (Vec::new(), Vec::new());
    for (text, found) in list {
        texts.push(found.text.as_deref().unwrap_or(&text.text));
        let class = classifier.classify(&text.text);
        classes.extend(class.class.split(',').map(str::to_owned));
        tables.extend(class.tables.split(',').filter(|t| !t.is_empty()).map(str::to_owned));
    }
    for list in [&mut classes, &mut tables] {
        list.sort_unstable();
        list.dedup();
    }
    let [text_key, class_key, tables_key] = keys;
    d.put(text_key, &texts.join("; "));
    d.put(class_key, &classes.join(","));
    if !tables.is_empty() {
        d.put(tables_key, &tables.join(","));
    }
}

/// COMMIT, ROLLBACK (with or without `AND CHAIN`) and PREPARE TRANSACTION
/// end the session's transaction; savepoints and BEGIN do not.
fn ends_transaction(kind: i32) -> bool {
    [
        TransactionStmtKind::TransStmtCommit,
        TransactionStmtKind::TransStmtRollback,
        TransactionStmtKind::TransStmtPrepare,
    ]
    .iter()
    .any(|k| *k as i32 == kind)
}

/// The commands of a statement that completed, in order.
fn completed(outcome: &Outcome) -> &[Completion] {
    match outcome {
        Outcome::Done(list) | Outcome::Failed { done: list, .. } => list,
        _ => &[],
    }
}

/// Whether one of a statement's commands completed with `tag`.
fn has_tag(outcome: &Outcome, tag: &str) -> bool {
    completed(outcome).iter().any(|c| *c.tag == *tag)
}

/// The command tag of a statement's command `i`, if it completed.
fn tag_of(outcome: &Outcome, i: usize) -> Option<&str> {
    completed(outcome).get(i).map(|c| &*c.tag)
}

/// PostgreSQL's `CURSOR_OPT_HOLD` (parsenodes.h): declared `WITH HOLD`.
const CURSOR_OPT_HOLD: i32 = 0x0020;

/// What follows the first `keyword` of `sql`: the statement a `PREPARE
/// name [(types)] AS statement` prepares (no type name holds an AS), the
/// query of a `DECLARE name [options] CURSOR FOR query` (no option holds a
/// FOR).
fn after_first(sql: &str, keyword: Token) -> Option<&str> {
    let tokens = pg_query::scan_tokens(sql).ok()?;
    let found = tokens.iter().find(|t| t.token == keyword as i32)?;
    Some(sql.get(usize::try_from(found.end).ok()?..)?.trim())
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
mod tests;
