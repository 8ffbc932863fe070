use sha2::{Digest, Sha256};

use super::*;
use crate::pg::backend::{Severity, error_response};

mod copy;
mod errors;
mod limits;
mod recycle;
mod suspended;

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = cstr(name);
    b.extend(cstr(sql));
    b.extend(0i16.to_be_bytes());
    b
}

fn bind(portal: &str, stmt: &str, formats: &[i16], params: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = cstr(portal);
    b.extend(cstr(stmt));
    b.extend((formats.len() as i16).to_be_bytes());
    for f in formats {
        b.extend(f.to_be_bytes());
    }
    b.extend((params.len() as i16).to_be_bytes());
    for p in params {
        match p {
            None => b.extend((-1i32).to_be_bytes()),
            Some(v) => {
                b.extend((v.len() as i32).to_be_bytes());
                b.extend(*v);
            }
        }
    }
    b.extend(0i16.to_be_bytes());
    b
}

fn execute(portal: &str) -> Vec<u8> {
    let mut b = cstr(portal);
    b.extend(0i32.to_be_bytes());
    b
}

fn close_statement(name: &str) -> Vec<u8> {
    [&b"S"[..], &cstr(name)].concat()
}

fn close_portal(name: &str) -> Vec<u8> {
    [&b"P"[..], &cstr(name)].concat()
}

fn error(code: &str) -> Vec<u8> {
    error_response(Severity::Error, code, "boom", None, None)[5..].to_vec()
}

/// Feeds `(from_client, tag, body)` to `t` in order, at one time;
/// answers what completed.
fn feed(t: &mut StatementTracker, steps: &[(bool, u8, Vec<u8>)]) -> Vec<Statement> {
    let mut out = Vec::new();
    let now = Instant::now();
    for (client, tag, body) in steps {
        if *client {
            t.client(*tag, body, now);
        } else {
            t.server(*tag, body, now, &mut out);
        }
    }
    out
}

/// `feed` to a new tracker, which must owe nothing after.
fn run(steps: &[(bool, u8, Vec<u8>)]) -> Vec<Statement> {
    let mut t = StatementTracker::new();
    let out = feed(&mut t, steps);
    assert!(t.expect.is_empty(), "everything answered");
    out
}

/// Each record's text and outcome, in order.
fn outcomes(out: &[Statement]) -> Vec<(&str, &Outcome)> {
    out.iter().map(|s| (s.text.text.as_str(), &s.outcome)).collect()
}

fn done(tags: &[(&str, Option<u64>)]) -> Outcome {
    Outcome::Done(
        tags.iter()
            .map(|(t, r)| Completion {
                tag: (*t).into(),
                rows: *r,
            })
            .collect(),
    )
}

#[test]
fn a_simple_query_with_two_commands_is_one_record() {
    let out = run(&[
        (true, b'Q', cstr("CREATE TABLE t (x int); SELECT 1")),
        (false, b'C', cstr("CREATE TABLE")),
        (false, b'T', vec![0, 0]),
        (false, b'D', vec![0, 0]),
        (false, b'C', cstr("SELECT 1")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].flow, Flow::Simple);
    assert_eq!(out[0].text.text, "CREATE TABLE t (x int); SELECT 1");
    assert_eq!(out[0].outcome, done(&[("CREATE TABLE", None), ("SELECT 1", Some(1))]));
}

#[test]
fn a_simple_query_error_carries_the_sqlstate() {
    let out = run(&[
        (true, b'Q', cstr("SELEC 1")),
        (false, b'E', error("42601")),
        (false, b'Z', vec![b'I']),
    ]);
    assert!(matches!(&out[0].outcome, Outcome::Failed { sqlstate, .. } if sqlstate == "42601"));
}

#[test]
fn parse_bind_execute_are_tied_together() {
    let out = run(&[
        (true, b'P', parse("s1", "SELECT $1::int, $2, $3")),
        (
            true,
            b'B',
            bind("", "s1", &[0, 0, 1], &[Some(b"42"), None, Some(&[1, 2, 3])]),
        ),
        (true, b'D', vec![b'P', 0]),
        (true, b'E', execute("")),
        (true, b'S', Vec::new()),
        (false, b'1', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b'T', vec![0, 0]),
        (false, b'D', vec![0, 0]),
        (false, b'C', cstr("SELECT 1")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 1);
    let s = &out[0];
    assert_eq!(
        (s.flow, &*s.statement, s.text.text.as_str()),
        (Flow::Extended, "s1", "SELECT $1::int, $2, $3")
    );
    assert_eq!(
        &*s.params,
        &[Param::Text("42".into()), Param::Null, Param::Binary(3)][..]
    );
    assert_eq!(s.outcome, done(&[("SELECT 1", Some(1))]));
}

#[test]
fn the_same_text_parsed_again_is_shared_and_counted_once() {
    let mut t = StatementTracker::new();
    let text = |t: &StatementTracker, name: &str| Arc::clone(&t.prepared.get(name).expect("prepared").text);
    t.client(b'P', &parse("", "SELECT $1"), Instant::now());
    let first = text(&t, "");
    let kept = t.kept;
    t.client(b'P', &parse("", "SELECT $1"), Instant::now());
    assert!(Arc::ptr_eq(&first, &text(&t, "")), "the unnamed statement parsed again");
    assert_eq!(t.kept, kept);
    t.client(b'P', &parse("", "SELECT $2"), Instant::now());
    assert_eq!(text(&t, "").text, "SELECT $2");
    // A prefix of the text, or another statement's name, is not the same text.
    t.client(b'P', &parse("", "SELECT $"), Instant::now());
    assert_eq!(text(&t, "").text, "SELECT $");
    t.client(b'P', &parse("s1", "SELECT $"), Instant::now());
    assert!(!Arc::ptr_eq(&text(&t, ""), &text(&t, "s1")));
    assert_eq!(t.kept, 2 * "SELECT $".len());
}

#[test]
fn memory_is_bounded() {
    // Parameters past the per-Bind budget keep only their length.
    let big = vec![b'v'; MAX_PARAM];
    let values: Vec<Option<&[u8]>> = (0..100).map(|_| Some(&big[..])).collect();
    let mut t = StatementTracker::new();
    t.client(b'P', &parse("", "SELECT"), Instant::now());
    t.client(b'B', &bind("", "", &[], &values), Instant::now());
    let params = &t.portals.get("").expect("the unnamed portal").params;
    assert!(matches!(params[0], Param::Text(_)));
    assert_eq!(params[99], Param::Omitted(MAX_PARAM));
    // The values' slots count as well: portals of thousands of NULLs each
    // keep only their count once the session's budget is spent.
    let nulls: Vec<Option<&[u8]>> = vec![None; 10_000];
    let portals = 2 * MAX_KEPT / (nulls.len() * std::mem::size_of::<Param>());
    for i in 0..portals {
        t.client(b'B', &bind(&format!("p{i}"), "", &[], &nulls), Instant::now());
    }
    let held: usize = (0..portals)
        .filter_map(|i| t.portals.get(&format!("p{i}")))
        .map(|p| p.params.len() * std::mem::size_of::<Param>())
        .sum();
    assert!(held <= MAX_KEPT && t.kept <= MAX_KEPT, "{held} bytes of slots held");
    let last = t.portals.get(&format!("p{}", portals - 1)).expect("the last portal");
    assert_eq!((last.params.len(), last.param_count), (0, nulls.len()));
    // Closing portals gives their room back.
    for i in 0..portals {
        let mut close = vec![b'P'];
        close.extend(cstr(&format!("p{i}")));
        t.client(b'C', &close, Instant::now());
    }
    t.client(b'B', &bind("p0", "", &[], &nulls), Instant::now());
    assert_eq!(t.portals.get("p0").expect("rebound").params.len(), nulls.len());
    // Too many messages in flight: tracking stops instead of growing.
    for _ in 0..=MAX_EXPECT {
        t.client(b'S', &[], Instant::now());
    }
    assert_eq!(t.lost(), Some(Lost::InFlight));
    assert!(t.expect.is_empty(), "the queue is let go");
    t.client(b'B', &bind("after", "", &[], &nulls), Instant::now());
    t.client(b'P', &parse("new", "SELECT 2"), Instant::now());
    assert!(
        t.portals.get("after").is_none() && t.prepared.get("new").is_none(),
        "the names grow no more"
    );
}

#[test]
fn huge_text_is_cut_with_its_length_and_hash() {
    let sql = format!("SELECT '{}'", "é".repeat(MAX_TEXT));
    let out = run(&[
        (true, b'Q', cstr(&sql)),
        (false, b'I', Vec::new()),
        (false, b'Z', vec![b'I']),
    ]);
    let t = &out[0].text;
    assert_eq!(t.len, sql.len());
    assert!(t.text.len() <= MAX_TEXT && sql.starts_with(&t.text));
    assert_eq!(t.sha256.as_deref().map(str::len), Some(64));
    // Not UTF-8 at all: cut at the limit all the same, at once.
    let garbage = vec![0xffu8; MAX_TEXT * 2];
    let t = Text::new(&garbage);
    assert_eq!((t.len, t.text.chars().count()), (MAX_TEXT * 2, MAX_TEXT));
}

/// Feeds client messages through a `Capture` in 8 KiB chunks, as the relay does.
fn captured(t: &mut StatementTracker, messages: &[(u8, Vec<u8>)]) {
    use crate::pg::capture::{Capture, Keep};
    let mut stream = Vec::new();
    for (tag, body) in messages {
        stream.push(*tag);
        stream.extend((body.len() as u32 + 4).to_be_bytes());
        stream.extend(body);
    }
    let mut capture = Capture::new();
    let keep = |tag| match tag {
        b'Q' => Keep::Text(0),
        b'P' => Keep::Text(1),
        b'B' | b'E' => Keep::Body,
        _ => Keep::Length,
    };
    for chunk in stream.chunks(8192) {
        capture
            .feed(chunk, keep, |m| t.client_message(&m, Instant::now()))
            .expect("well-formed");
    }
}

#[test]
fn statements_longer_than_what_is_kept_stream_through_with_length_and_hash() {
    use crate::pg::capture::MAX_BODY;
    let sql = format!("SELECT '{}'", "x".repeat(MAX_BODY * 2));
    let hash = |s: &str| {
        Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let mut t = StatementTracker::new();
    captured(&mut t, &[(b'Q', cstr(&sql))]);
    let mut out = Vec::new();
    t.server(b'C', &cstr("SELECT 1"), Instant::now(), &mut out);
    t.server(b'Z', b"I", Instant::now(), &mut out);
    assert_eq!((out[0].text.len, out[0].text.text.len()), (sql.len(), MAX_TEXT));
    assert_eq!(out[0].text.sha256.as_deref(), Some(hash(&sql).as_str()));

    // A Parse as long, then a Bind whose values run past what is kept.
    let big = vec![b'v'; 1000];
    let values: Vec<Option<&[u8]>> = (0..400).map(|_| Some(&big[..])).collect();
    captured(
        &mut t,
        &[
            (b'P', parse("s", &sql)),
            (b'B', bind("", "s", &[], &values)),
            (b'E', execute("")),
        ],
    );
    for (tag, body) in [(b'1', vec![]), (b'2', vec![]), (b'C', cstr("SELECT 1"))] {
        t.server(tag, &body, Instant::now(), &mut out);
    }
    let s = &out[1];
    assert_eq!(
        (s.text.len, s.text.sha256.as_deref()),
        (sql.len(), Some(hash(&sql).as_str()))
    );
    assert_eq!(s.params.len(), 400);
    assert!(matches!(s.params[0], Param::Text(_)));
    assert_eq!(s.params[399], Param::Unseen);
}

#[test]
fn a_session_that_ends_mid_statement_records_it_interrupted_or_failed() {
    let mut t = StatementTracker::new();
    let mut out = Vec::new();
    let now = Instant::now();
    // Cut with no answer at all.
    t.client(b'Q', &cstr("SELECT pg_sleep(30)"), now);
    t.interrupt(now, &mut out);
    assert_eq!(out[0].outcome, Outcome::Interrupted);
    // The server said why (its backend was terminated), then closed: no ReadyForQuery.
    t.client(b'Q', &cstr("SELECT pg_sleep(30)"), now);
    t.server(b'E', &error("57P01"), now, &mut out);
    t.interrupt(now, &mut out);
    assert_eq!(out.len(), 2);
    assert!(
        matches!(&out[1].outcome, Outcome::Failed { sqlstate, .. } if sqlstate == "57P01"),
        "{:?}",
        out[1].outcome
    );
}

/// A Parse that declares its parameter types.
fn parse_typed(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut b = cstr(name);
    b.extend(cstr(sql));
    b.extend((types.len() as i16).to_be_bytes());
    for t in types {
        b.extend(t.to_be_bytes());
    }
    b
}

/// A ParameterDescription naming `types`.
fn parameter_description(types: &[u32]) -> Vec<u8> {
    let mut b = (types.len() as i16).to_be_bytes().to_vec();
    for t in types {
        b.extend(t.to_be_bytes());
    }
    b
}

#[test]
fn binary_values_of_known_types_read_as_text() {
    // Types declared in the Parse (int4, bool, an unknown one).
    let out = run(&[
        (true, b'P', parse_typed("", "SELECT $1, $2, $3", &[23, 16, 1700])),
        (
            true,
            b'B',
            bind("", "", &[1], &[Some(&42i32.to_be_bytes()), Some(&[1]), Some(&[0; 8])]),
        ),
        (true, b'E', execute("")),
        (true, b'S', Vec::new()),
        (false, b'1', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b'C', cstr("SELECT 1")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(
        &*out[0].params,
        &[Param::Text("42".into()), Param::Text("t".into()), Param::Binary(8)][..]
    );

    // Types left to the server (tokio-postgres's prepare): its ParameterDescription
    // answers the Describe, and the next Bind of that statement reads them.
    let out = run(&[
        (true, b'P', parse("s0", "SELECT $1::int8 + 1")),
        (true, b'D', vec![b'S', b's', b'0', 0]),
        (true, b'S', Vec::new()),
        (false, b'1', Vec::new()),
        (false, b't', parameter_description(&[20])),
        (false, b'T', vec![0, 0]),
        (false, b'Z', vec![b'I']),
        (true, b'B', bind("", "s0", &[1], &[Some(&7i64.to_be_bytes())])),
        (true, b'E', execute("")),
        (true, b'S', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b'C', cstr("SELECT 1")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 1);
    assert_eq!(&*out[0].params, &[Param::Text("7".into())][..]);
}

#[test]
fn a_parameter_description_types_only_the_statement_it_describes() {
    let out = run(&[
        (true, b'P', parse("s0", "SELECT $1::int4")),
        (true, b'D', vec![b'S', b's', b'0', 0]),
        // Closed and parsed again before the answer came.
        (true, b'C', close_statement("s0")),
        (true, b'P', parse("s0", "SELECT $1::float4")),
        (true, b'S', Vec::new()),
        (false, b'1', Vec::new()),
        (false, b't', parameter_description(&[23])),
        (false, b'T', vec![0, 0]),
        (false, b'3', Vec::new()),
        (false, b'1', Vec::new()),
        (false, b'Z', vec![b'I']),
        (true, b'B', bind("", "s0", &[1], &[Some(&1.5f32.to_be_bytes())])),
        (true, b'E', execute("")),
        (true, b'S', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b'C', cstr("SELECT 1")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 1);
    assert_eq!(
        &*out[0].params,
        &[Param::Binary(4)][..],
        "not read as the int4 the first statement took"
    );
}

#[test]
fn a_function_call_carries_its_arguments() {
    let mut body = 1234i32.to_be_bytes().to_vec();
    // Formats: text, binary; three arguments: text, binary, NULL; then the result's format.
    body.extend(2i16.to_be_bytes());
    body.extend(0i16.to_be_bytes());
    body.extend(1i16.to_be_bytes());
    body.extend(3i16.to_be_bytes());
    body.extend(8i32.to_be_bytes());
    body.extend(b"DROP t;\n");
    body.extend(4i32.to_be_bytes());
    body.extend(7i32.to_be_bytes());
    body.extend((-1i32).to_be_bytes());
    body.extend(1i16.to_be_bytes());
    let out = run(&[
        (true, b'F', body),
        (false, b'V', vec![0, 0, 0, 0]),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].flow, out[0].text.text.as_str()),
        (Flow::Function, "<function call, oid 1234>")
    );
    assert_eq!(out[0].param_count, 3);
    assert_eq!(
        &*out[0].params,
        &[Param::Text("DROP t;\n".into()), Param::Binary(4), Param::Null][..]
    );
}

#[test]
fn a_pipelined_statement_s_duration_counts_from_when_the_one_before_ended() {
    let mut t = StatementTracker::new();
    let mut out = Vec::new();
    let sent = Instant::now();
    let at = |ms: u64| sent + std::time::Duration::from_millis(ms);
    // Two extended-protocol statements and a simple Query, sent together.
    for (sql, portal) in [("SELECT pg_sleep(1)", "a"), ("SELECT 2", "b")] {
        t.client(b'P', &parse("", sql), sent);
        t.client(b'B', &bind(portal, "", &[], &[]), sent);
        t.client(b'E', &execute(portal), sent);
    }
    t.client(b'S', b"", sent);
    t.client(b'Q', &cstr("SELECT 3"), sent);
    let answers = [
        (0, b'1', vec![]),
        (0, b'2', vec![]),
        (1000, b'C', cstr("SELECT 1")),
        (1000, b'1', vec![]),
        (1000, b'2', vec![]),
        (1003, b'C', cstr("SELECT 1")),
        (1003, b'Z', vec![b'I']),
        (1003, b'C', cstr("SELECT 1")),
        (1010, b'Z', vec![b'I']),
    ];
    for (ms, tag, body) in answers {
        t.server(tag, &body, at(ms), &mut out);
    }
    let took: Vec<(&str, u128)> = out
        .iter()
        .map(|s| (s.text.text.as_str(), s.duration.as_millis()))
        .collect();
    assert_eq!(took, [("SELECT pg_sleep(1)", 1000), ("SELECT 2", 3), ("SELECT 3", 7)]);
    assert_eq!(out[1].started, at(1000), "it started at the server then");
}

#[test]
fn an_execute_runs_a_cursor_declared_again_ahead_of_it() {
    let mut t = StatementTracker::new();
    t.sql_declared("c", "SELECT 1", false);
    let out = feed(
        &mut t,
        &[
            (true, b'Q', cstr("CLOSE c; DECLARE c CURSOR FOR SELECT * FROM salaries")),
            (true, b'E', execute("c")),
            (true, b'S', vec![]),
            (false, b'C', cstr("CLOSE CURSOR")),
            (false, b'C', cstr("DECLARE CURSOR")),
            (false, b'Z', vec![b'T']),
        ],
    );
    assert_eq!(out.len(), 1);
    // What the audit tells the tracker once the Query ran.
    t.sql_closed(Some("c"));
    t.sql_declared("c", "SELECT * FROM salaries", false);
    let out = feed(&mut t, &[(false, b'C', cstr("FETCH 3")), (false, b'Z', vec![b'T'])]);
    assert_eq!(
        outcomes(&out),
        [("SELECT * FROM salaries", &done(&[("FETCH 3", Some(3))]))]
    );
}

#[test]
fn an_execute_the_server_skipped_names_the_cursor_declared_ahead_of_it() {
    let mut t = StatementTracker::new();
    let out = feed(
        &mut t,
        &[
            (
                true,
                b'Q',
                cstr("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM salaries"),
            ),
            (true, b'P', parse("", "SELEC 1")),
            (true, b'B', bind("", "", &[], &[])),
            (true, b'E', execute("")),
            (true, b'E', execute("c")),
            (true, b'S', vec![]),
            (false, b'C', cstr("DECLARE CURSOR")),
            (false, b'Z', vec![b'I']),
        ],
    );
    assert_eq!(out.len(), 1);
    t.sql_declared("c", "SELECT * FROM salaries", true);
    let out = feed(&mut t, &[(false, b'E', error("42601")), (false, b'Z', vec![b'I'])]);
    assert_eq!(outcomes(&out)[1], ("SELECT * FROM salaries", &Outcome::NotRun));
}
