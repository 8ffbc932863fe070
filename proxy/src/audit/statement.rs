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
            Some(sql_names::follow(&text.text, outcome, tracker))
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
pub(crate) mod tests {
    use std::time::Duration;

    use portcullis_protocol::audit::block::{BlockBuilder, expand};
    use portcullis_protocol::pg::statements::Completion;

    use super::*;

    /// A session of alice's (`ses_1`), for the audit's tests.
    pub(crate) fn session(redact_parameters: bool) -> SessionAudit {
        SessionAudit {
            user: "alice".into(),
            resource: "orders".into(),
            role: "read".into(),
            session_id: "ses_1".into(),
            protocol: "postgres",
            grant_id: "grt_1".into(),
            request_id: "req_1".into(),
            reason: Some("INC-1".into()),
            approvers: vec!["carol".into()],
            break_glass: true,
            redact_parameters,
            wall: 1_000,
            since: Instant::now(),
            handle: None,
        }
    }

    fn bound(params: Vec<Param>, since: Instant) -> Statement {
        Statement {
            flow: Flow::Extended,
            text: Arc::new(Text::new(b"SELECT dblink($1, $2)")),
            statement: "s1".into(),
            portal: String::new(),
            param_count: params.len(),
            params: params.into(),
            copy: None,
            outcome: Outcome::Done(vec![Completion {
                tag: "SELECT 2".into(),
                rows: Some(2),
            }]),
            started: since + Duration::from_millis(5),
            duration: Duration::from_micros(250),
            max_rows: 0,
            binding: 1,
            executes: 1,
            fetched: 0,
        }
    }

    #[test]
    fn a_bound_statement_becomes_one_event_with_its_values() {
        let s = session(false);
        let params = vec![
            Param::Text("host=db password=hunter2".into()),
            Param::Null,
            Param::Binary(4),
            Param::Omitted(9000),
            Param::Unseen,
        ];
        let e = statement_event(&s, &bound(params, s.since), &mut Classifier::default());
        assert_eq!(
            (e.action.as_str(), e.at, e.user.as_str()),
            ("statement", 1_005, "alice")
        );
        assert_eq!(
            (e.reason.as_deref(), e.approvers.as_slice()),
            (Some("INC-1"), &["carol".to_owned()][..])
        );
        let d = &e.detail;
        assert_eq!(
            d["params"],
            r#"["'[redacted]'",null,"<binary, 4 bytes>","<not kept, 9000 bytes>","<not seen>"]"#
        );
        for (k, v) in [
            ("flow", "extended"),
            ("statement", "s1"),
            ("param_count", "5"),
            ("outcome", "ok"),
            ("tag", "SELECT 2"),
            ("rows", "2"),
            ("duration_us", "250"),
            ("class", "SELECT"),
            ("break_glass", "true"),
        ] {
            assert_eq!(d.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert!(!d.contains_key("portal"));
    }

    #[test]
    fn a_portal_run_in_pieces_counts_every_piece_s_rows() {
        let s = session(false);
        let mut st = bound(Vec::new(), s.since);
        (st.executes, st.fetched) = (3, 4);
        let e = statement_event(&s, &st, &mut Classifier::default());
        assert_eq!((&*e.detail["rows"], &*e.detail["executes"]), ("6", "3"));
        st.outcome = Outcome::Suspended;
        let e = statement_event(&s, &st, &mut Classifier::default());
        assert_eq!((&*e.detail["outcome"], &*e.detail["rows"]), ("suspended", "4"));
        // Failed in a later piece: the rows the earlier ones returned.
        st.outcome = Outcome::Failed {
            sqlstate: "22012".into(),
            message: "division by zero".into(),
            done: Vec::new(),
        };
        let e = statement_event(&s, &st, &mut Classifier::default());
        assert_eq!((&*e.detail["outcome"], &*e.detail["rows"]), ("error", "4"));
        st.executes = 1;
        let e = statement_event(&s, &st, &mut Classifier::default());
        assert!(!e.detail.contains_key("executes"), "{:?}", e.detail);
    }

    #[test]
    fn an_error_about_a_statement_with_a_password_keeps_only_its_sqlstate() {
        let s = session(false);
        let mut st = bound(Vec::new(), s.since);
        st.flow = Flow::Simple;
        st.text = Arc::new(Text::new(b"ALTER ROLE bob PASSWORD hunter2"));
        st.outcome = Outcome::Failed {
            sqlstate: "42601".into(),
            message: "syntax error at or near \"hunter2\"".into(),
            done: Vec::new(),
        };
        let e = statement_event(&s, &st, &mut Classifier::default());
        assert_eq!(e.detail["text"], "ALTER ROLE bob PASSWORD '[redacted]'");
        assert_eq!(e.detail["sqlstate"], "42601");
        assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
    }

    #[test]
    fn a_value_bound_where_a_password_goes_is_redacted_and_the_error_withheld() {
        let s = session(false);
        let mut st = bound(vec![Param::Text("bob".into()), Param::Text("hunter2".into())], s.since);
        st.text = Arc::new(Text::new(b"CREATE USER MAPPING FOR $1 SERVER s OPTIONS (password $2)"));
        st.outcome = Outcome::Failed {
            sqlstate: "42601".into(),
            message: "syntax error at or near \"$1\"".into(),
            done: Vec::new(),
        };
        let e = statement_event(&s, &st, &mut Classifier::default());
        assert_eq!(e.detail["params"], r#"["bob","'[redacted]'"]"#);
        assert_eq!(e.detail["redacted"], "true");
        assert_eq!(e.detail["error"], WITHHELD);
        assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
    }

    #[test]
    fn a_policy_can_keep_values_out() {
        let s = session(true);
        let e = statement_event(
            &s,
            &bound(vec![Param::Text("4111 1111 1111 1111".into())], s.since),
            &mut Classifier::default(),
        );
        assert_eq!(e.detail["params"], "[redacted by policy]");
        assert_eq!(e.detail["param_count"], "1");
        // Nor does the server's error bring them back.
        let mut st = bound(vec![Param::Text("123-45-6789".into())], s.since);
        st.outcome = Outcome::Failed {
            sqlstate: "22P02".into(),
            message: "invalid input syntax for type integer: \"123-45-6789\"".into(),
            done: Vec::new(),
        };
        let e = statement_event(&s, &st, &mut Classifier::default());
        assert_eq!(
            (e.detail["sqlstate"].as_str(), e.detail["error"].as_str()),
            ("22P02", WITHHELD)
        );
        // A connection string bound as a value: redacted, and so is the error.
        let s = session(false);
        let mut st = bound(vec![Param::Text("host=db password=hunter2".into())], s.since);
        st.outcome = Outcome::Failed {
            sqlstate: "08001".into(),
            message: "could not connect: host=db password=hunter2".into(),
            done: Vec::new(),
        };
        let e = statement_event(&s, &st, &mut Classifier::default());
        assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
    }

    #[test]
    fn values_past_the_session_s_budget_show_their_count_only() {
        let s = session(false);
        let mut st = bound(Vec::new(), s.since);
        st.param_count = 30_000;
        let e = statement_event(&s, &st, &mut Classifier::default());
        assert_eq!(e.detail["param_count"], "30000");
        assert_eq!(e.detail["params"], "[not kept: past the session's audit budget]");
    }

    #[test]
    fn values_are_written_as_serde_json_writes_them_with_secrets_redacted() {
        let plain = [
            "42",
            "a=b",
            "http://example.com/x",
            "tab\there \"q\" \\ caf\u{e9}",
            "",
            "\u{1}",
        ];
        let secret = [
            "postgres://bob:hunter2@db/x",
            "host=db PASSWORD = hunter2",
            "HTTPS://U:P@H",
        ];
        let params: Vec<Param> = plain.iter().chain(&secret).map(|t| Param::Text((*t).into())).collect();
        let want: Vec<&str> = plain.iter().copied().chain(secret.iter().map(|_| REDACTED)).collect();
        let s = session(false);
        let mut block = BlockBuilder::new(s.event("statements"));
        let st = bound(params, s.since);
        block.push_with("evt_1", 1, |d| {
            statement_detail(&s, &st, &mut Classifier::default(), None, d);
        });
        let statements = expand(1, block.finish());
        let detail = &statements[0].1.detail;
        assert_eq!(detail["params"], serde_json::to_string(&want).unwrap_or_default());
        assert_eq!(detail, &statement_event(&s, &st, &mut Classifier::default()).detail);
    }

    #[test]
    fn a_function_call_shows_its_arguments_as_a_bind_does() {
        let s = session(false);
        let mut st = bound(vec![Param::Text("x".into()), Param::Binary(4)], s.since);
        st.flow = Flow::Function;
        st.text = Arc::new(Text::new(b"<function call, oid 1234>"));
        let e = statement_event(&s, &st, &mut Classifier::default());
        assert_eq!(e.detail["flow"], "function");
        assert_eq!(e.detail["param_count"], "2");
        assert_eq!(e.detail["params"], r#"["x","<binary, 4 bytes>"]"#, "{e:?}");
        let e = statement_event(&session(true), &st, &mut Classifier::default());
        assert_eq!(e.detail["params"], "[redacted by policy]");
    }
}
