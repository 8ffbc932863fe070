//! One audit event per statement: what the session's tracker made of the
//! messages its relay copied, with the session's who/where/why, turned into
//! an `AuditEvent` on the audit thread.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use portcullis_protocol::audit::AuditEvent;
use portcullis_protocol::audit::detail::{Detail, Fields};
use portcullis_protocol::feed::UnixMillis;
use portcullis_protocol::pg::statements::{
    Completion, Flow, Outcome, Param, Rendered, Statement, StatementTracker, Text,
};

use super::classify::Classifier;
use super::redact::{REDACTED, every_value, redact, value_holds_secret};
use super::sql_names;
use crate::sessions::SessionHandle;

/// What every event of one session carries.
#[derive(Debug)]
pub struct SessionAudit {
    /// The engineer.
    pub user: String,
    /// Resource name.
    pub resource: String,
    /// Role name.
    pub role: String,
    /// Session id.
    pub session_id: String,
    /// `postgres` or `ssh`, in every event's `detail.protocol`.
    pub protocol: &'static str,
    /// Grant id.
    pub grant_id: String,
    /// The grant's request.
    pub request_id: String,
    /// The request's reason.
    pub reason: Option<String>,
    /// Who approved it.
    pub approvers: Vec<String>,
    /// Granted by break-glass: every event says so.
    pub break_glass: bool,
    /// Bound parameter values are not recorded (the resource's policy).
    pub redact_parameters: bool,
    /// The wall clock at `since`, to date statements timed by `Instant`.
    pub wall: UnixMillis,
    /// See `wall`.
    pub since: Instant,
    /// The live session, which the audit cuts when it cannot follow it
    /// (`None` where nothing is followed statement by statement).
    pub handle: Option<Arc<SessionHandle>>,
}

impl SessionAudit {
    /// A new event of `action` in this session, now, with its fields filled.
    pub fn event(&self, action: &str) -> AuditEvent {
        let mut e = super::event(action, &self.user);
        e.resource = Some(self.resource.clone());
        e.role = Some(self.role.clone());
        e.session_id = Some(self.session_id.clone());
        e.grant_id = Some(self.grant_id.clone());
        e.request_id = Some(self.request_id.clone());
        e.reason.clone_from(&self.reason);
        e.approvers.clone_from(&self.approvers);
        e.detail.insert("protocol".into(), self.protocol.into());
        if self.break_glass {
            e.detail.insert("break_glass".into(), "true".into());
        }
        e
    }

    /// When `s` started, on the wall clock.
    pub fn at(&self, s: &Statement) -> UnixMillis {
        self.wall_at(s.started)
    }

    /// `at` on the wall clock.
    pub fn wall_at(&self, at: Instant) -> UnixMillis {
        let offset = at.saturating_duration_since(self.since).as_millis();
        self.wall.saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
    }

    /// Cuts the session: what it does can no longer be followed (`why`).
    pub fn cut_for_audit(&self, why: String) {
        if let Some(handle) = &self.handle {
            handle.cut_for_audit(why);
        }
    }
}

/// A burst of one session's messages for the statement tracker (see
/// `records`), in the order the relay saw them.
pub struct Batch {
    /// Whose.
    pub session: Arc<SessionAudit>,
    /// The messages, encoded by `records::push`.
    pub records: Vec<u8>,
    /// The session ended at this time: what still waits for an answer is
    /// recorded as interrupted, and the tracker is let go.
    pub end: Option<Instant>,
}

impl Batch {
    /// An empty batch for `session`, filling `records`.
    pub fn new(session: Arc<SessionAudit>, records: Vec<u8>) -> Batch {
        Batch {
            session,
            records,
            end: None,
        }
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.end.is_none()
    }

    /// What is here so far, as a batch of its own; this one is left
    /// empty, to fill `fresh` next.
    pub fn take(&mut self, fresh: Vec<u8>) -> Batch {
        Batch {
            session: Arc::clone(&self.session),
            records: std::mem::replace(&mut self.records, fresh),
            end: self.end.take(),
        }
    }

    /// Drops what is here (the log is gone).
    pub fn clear(&mut self) {
        self.records.clear();
        self.end = None;
    }
}

/// The audit event of `s`, classified and with passwords redacted.
pub fn statement_event(session: &SessionAudit, s: &Statement, classifier: &mut Classifier) -> AuditEvent {
    let mut e = session.event("statement");
    e.at = session.at(s);
    statement_detail(session, s, classifier, None, &mut e.detail);
    e
}

/// Writes what one statement's event says beyond its session's fields into
/// `d`: class, tables, text (passwords redacted), parameters, outcome and
/// duration. A statement that makes, uses or drops a prepared statement
/// or cursor by name in SQL is followed in the session's `tracker` (see
/// `sql_names`).
pub fn statement_detail(
    session: &SessionAudit,
    s: &Statement,
    classifier: &mut Classifier,
    tracker: Option<&mut StatementTracker>,
    d: &mut impl Detail,
) {
    let follow = tracker.map(|t| (&s.outcome, t));
    let redacted = if s.flow == Flow::Extended {
        // Shared by every run of a prepared statement: worked out once, and
        // stored once per block.
        let text = s.text.rendered.get_or_init(|| {
            let mut fields = Fields::default();
            fields.put_plain("flow", "extended");
            let facts = text_detail(&s.text, classifier, None, &mut fields);
            Rendered {
                fields: Arc::new(fields),
                redacted: facts.redacted,
                secret_params: facts.secret_params.into(),
                names: facts.names,
                transaction: facts.transaction,
            }
        });
        let follows = text.names
            || follow
                .as_ref()
                .is_some_and(|(outcome, tracker)| sql_names::wanted(false, text.transaction, outcome, tracker));
        let (redacted, secret) = if follows {
            // What it runs depends on the session's names at the time.
            d.put_plain("flow", "extended");
            let facts = text_detail(&s.text, classifier, follow, d);
            (facts.redacted, Cow::Owned(facts.secret_params))
        } else {
            d.put_shared(&text.fields);
            (text.redacted, Cow::Borrowed(&*text.secret_params))
        };
        if !s.statement.is_empty() {
            d.put("statement", &s.statement);
        }
        if !s.portal.is_empty() {
            d.put("portal", &s.portal);
        }
        let hidden = params_detail(session, s, &secret, d);
        redacted || hidden
    } else {
        d.put_plain("flow", if s.flow == Flow::Simple { "simple" } else { "function" });
        let facts = text_detail(&s.text, classifier, follow, d);
        // A function call's arguments, as a Bind's values.
        let hidden = s.flow == Flow::Function && params_detail(session, s, &[], d);
        facts.redacted || hidden
    };
    if let Some(copy) = s.copy {
        d.put_plain("copy", if copy.inbound { "from_stdin" } else { "to_stdout" });
        d.put_number("copy_bytes", copy.bytes);
    }
    match &s.outcome {
        Outcome::Done(list) => {
            d.put_plain("outcome", "ok");
            completions(list, s.fetched, d);
        }
        Outcome::Failed {
            sqlstate,
            message,
            done,
        } => {
            d.put_plain("outcome", "error");
            d.put("sqlstate", sqlstate);
            // The server quotes the statement or a value in some errors
            // (`syntax error at or near "hunter2"`): for one that held a
            // password or a hidden value, its SQLSTATE only.
            d.put("error", if redacted { WITHHELD } else { message });
            completions(done, s.fetched, d);
        }
        Outcome::Suspended => {
            d.put_plain("outcome", "suspended");
            d.put_number("rows", s.fetched);
        }
        Outcome::NotRun => d.put_plain("outcome", "not_run"),
        Outcome::Interrupted => d.put_plain("outcome", "interrupted"),
        Outcome::NotFollowed => d.put_plain("outcome", "not_followed"),
    }
    if s.executes > 1 {
        d.put_number("executes", u64::from(s.executes));
    }
    d.put_number("duration_us", u64::try_from(s.duration.as_micros()).unwrap_or(u64::MAX));
}

/// Writes `param_count` and the values of `s` (`params`), those at
/// `secret` (from 1) and all under a `redact_parameters` policy redacted;
/// answers whether any value was hidden, which must not come back in the
/// server's error (`invalid input syntax for type integer: "..."`).
fn params_detail(session: &SessionAudit, s: &Statement, secret: &[usize], d: &mut impl Detail) -> bool {
    d.put_number("param_count", s.param_count as u64);
    if s.param_count == 0 {
        return false;
    }
    if session.redact_parameters {
        d.put_plain("params", "[redacted by policy]");
        return true;
    }
    if s.params.is_empty() {
        d.put_plain("params", "[not kept: past the session's audit budget]");
        return false;
    }
    let hidden = Cell::new(false);
    d.put_list(
        "params",
        s.params.iter().enumerate().map(|(i, p)| {
            let value = if secret.contains(&(i + 1)) {
                Some(Cow::Borrowed(REDACTED))
            } else {
                param_value(p)
            };
            if value.as_deref() == Some(REDACTED) {
                hidden.set(true);
            }
            value
        }),
    );
    hidden.get()
}

/// Writes the command tags of `list` (`tag`, joined by "; ") and the rows
/// they name in all (`rows`), with those a portal run in pieces `fetched`
/// before its last piece.
fn completions(list: &[Completion], fetched: u64, d: &mut impl Detail) {
    match list {
        [] => {}
        [one] => d.put("tag", &one.tag),
        many => d.put("tag", &many.iter().map(|c| &*c.tag).collect::<Vec<_>>().join("; ")),
    }
    let rows: Option<u64> = list.iter().filter_map(|c| c.rows).reduce(|a, b| a.saturating_add(b));
    // A portal read in pieces returned its rows even if its end (an
    // error, a tag with no count) names none.
    match rows {
        Some(rows) => d.put_number("rows", rows.saturating_add(fetched)),
        None if fetched > 0 => d.put_number("rows", fetched),
        None => {}
    }
}

/// What writing a statement's text found.
struct TextFacts {
    /// A password was redacted.
    redacted: bool,
    /// The parameters bound where a password goes.
    secret_params: Vec<usize>,
    /// See `Class::names`.
    names: bool,
    /// See `Class::transaction`.
    transaction: bool,
}

/// Writes a statement's class, tables and text (passwords redacted; a cut
/// text's whole length and hash). With `follow`, its outcome and the
/// session's tracker, SQL prepared statements and cursors in it are
/// followed, and what its EXECUTEs ran and its FETCHes read is written too.
fn text_detail(
    text: &Text,
    classifier: &mut Classifier,
    follow: Option<(&Outcome, &mut StatementTracker)>,
    d: &mut impl Detail,
) -> TextFacts {
    let class = classifier.classify(&text.text);
    let executed = match follow {
        // A cut text is no whole statement.
        Some((outcome, tracker))
            if sql_names::wanted(class.names, class.transaction, outcome, tracker) && text.sha256.is_none() =>
        {
            match class.steps(&text.text) {
                Some(steps) => {
                    sql_names::follow_steps(steps, outcome, tracker);
                    None
                }
                None => Some(sql_names::follow(&text.text, outcome, tracker)),
            }
        }
        _ => None,
    };
    d.put_shared(&class.fields);
    let mut found = redact(&text.text);
    if executed.as_ref().is_some_and(|e| e.secret) {
        found.text = Some(every_value(&text.text));
    }
    d.put("text", found.text.as_deref().unwrap_or(&text.text));
    if let Some(executed) = &executed {
        executed.write(classifier, d);
    }
    let redacted = !found.is_empty();
    if redacted {
        d.put_plain("redacted", "true");
    }
    if let Some(sha) = &text.sha256 {
        // Cut: the whole text's length and hash, never the rest of it. Not
        // the hash of one that held a password: it would let one guess it.
        d.put_number("text_len", text.len as u64);
        if !redacted {
            d.put_plain("text_sha256", sha);
        }
    }
    TextFacts {
        redacted,
        secret_params: found.params,
        names: class.names,
        transaction: class.transaction,
    }
}

/// The error message of a statement that held a password or a hidden value.
const WITHHELD: &str = "[withheld: it may quote a redacted value]";

/// A bound value as the event lists it (`None`: SQL NULL); one that holds a
/// password (a connection string or URL) is redacted.
fn param_value(p: &Param) -> Option<Cow<'_, str>> {
    Some(match p {
        Param::Null => return None,
        Param::Text(t) if value_holds_secret(t) => Cow::Borrowed(REDACTED),
        Param::Text(t) => Cow::Borrowed(t.as_str()),
        Param::Binary(n) => Cow::Owned(format!("<binary, {n} bytes>")),
        Param::Omitted(n) => Cow::Owned(format!("<not kept, {n} bytes>")),
        Param::Unseen => Cow::Borrowed("<not seen>"),
    })
}

#[cfg(test)]
pub(crate) mod tests;
