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
