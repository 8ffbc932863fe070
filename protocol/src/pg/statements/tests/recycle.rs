//! Statements handed back (`StatementTracker::recycle`): their room goes to
//! the next statements, which must read exactly as if it were new.

use super::*;

/// A tracker that saw `parse` answered.
fn prepared(parse: &[u8]) -> StatementTracker {
    let mut t = StatementTracker::new();
    t.client(b'P', parse, Instant::now());
    t.server(b'1', &[], Instant::now(), &mut Vec::new());
    t
}

/// Binds the unnamed portal of `s1` to `values` and runs it.
fn bind_and_run(t: &mut StatementTracker, values: &[Option<&[u8]>]) -> Statement {
    let now = Instant::now();
    let mut out = Vec::new();
    t.client(b'B', &bind("", "s1", &[0, 1], values), now);
    t.client(b'E', &execute(""), now);
    t.client(b'S', &[], now);
    for (tag, body) in [(b'2', Vec::new()), (b'C', cstr("SELECT 1")), (b'Z', vec![b'I'])] {
        t.server(tag, &body, now, &mut out);
    }
    let s = out.pop().expect("the statement");
    assert_eq!(s.outcome, done(&[("SELECT 1", Some(1))]));
    s
}

#[test]
fn a_rebound_portal_reuses_the_room_of_its_last_values_once_they_are_handed_back() {
    let mut t = prepared(&parse_typed("s1", "SELECT $1, $2", &[25, 23]));
    let first = bind_and_run(&mut t, &[Some(b"alice"), Some(&7i32.to_be_bytes())]);
    assert_eq!(&*first.params, [Param::Text("alice".into()), Param::Text("7".into())]);
    let room = first.params.as_ptr();
    t.recycle(first);
    // Handed back: the next values go where these were, and read as themselves.
    let second = bind_and_run(&mut t, &[None, Some(&42i32.to_be_bytes())]);
    assert_eq!(&*second.params, [Param::Null, Param::Text("42".into())]);
    assert_eq!(second.params.as_ptr(), room, "the same room");
    // Still held by the caller: the next values get room of their own.
    let long = "x".repeat(200);
    let third = bind_and_run(&mut t, &[Some(long.as_bytes()), Some(&[0, 0, 0, 1])]);
    assert_eq!(&*third.params, [Param::Text(long.clone()), Param::Text("1".into())]);
    assert_ne!(third.params.as_ptr(), room, "new room while the last values are held");
    drop(second);
    t.recycle(third);
    // A binary value not read, or another count: right all the same.
    let fourth = bind_and_run(&mut t, &[Some(b"bob"), Some(&[1, 2])]);
    assert_eq!(&*fourth.params, [Param::Text("bob".into()), Param::Binary(2)]);
    t.recycle(fourth);
    let now = Instant::now();
    t.client(b'B', &bind("", "s1", &[], &[Some(b"1"), Some(b"2"), Some(b"3")]), now);
    let mut out = Vec::new();
    t.client(b'E', &execute(""), now);
    t.server(b'2', &[], now, &mut out);
    t.server(b'C', &cstr("SELECT 1"), now, &mut out);
    assert_eq!(
        &*out[0].params,
        [
            Param::Text("1".into()),
            Param::Text("2".into()),
            Param::Text("3".into())
        ]
    );
}
#[test]
fn completions_share_the_tags_a_session_repeats() {
    let mut t = StatementTracker::new();
    let now = Instant::now();
    let mut out = Vec::new();
    // A transaction's tags, twice.
    for _ in 0..2 {
        for (sql, tag) in [
            ("BEGIN", "BEGIN"),
            ("UPDATE t SET a = 1", "UPDATE 1"),
            ("COMMIT", "COMMIT"),
        ] {
            t.client(b'Q', &cstr(sql), now);
            t.server(b'C', &cstr(tag), now, &mut out);
            t.server(b'Z', b"I", now, &mut out);
        }
    }
    let tags: Vec<&Arc<str>> = out
        .iter()
        .map(|s| match &s.outcome {
            Outcome::Done(list) => &list[0].tag,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        tags.iter().map(|t| &***t).collect::<Vec<_>>(),
        ["BEGIN", "UPDATE 1", "COMMIT"].repeat(2)
    );
    for i in 0..3 {
        assert!(Arc::ptr_eq(tags[i], tags[i + 3]), "{}", tags[i]);
    }
}

#[test]
fn a_query_takes_the_room_of_the_last_one_handed_back() {
    let mut t = StatementTracker::new();
    let now = Instant::now();
    let run = |t: &mut StatementTracker, sql: &str| {
        let mut out = Vec::new();
        t.client(b'Q', &cstr(sql), now);
        t.server(b'C', &cstr("SELECT 1"), now, &mut out);
        t.server(b'Z', b"I", now, &mut out);
        out.pop().expect("the statement")
    };
    let first = run(&mut t, "SELECT 'a long first statement'");
    let room = first.text.text.as_ptr();
    t.recycle(first);
    let second = run(&mut t, "SELECT 2");
    assert_eq!(*second.text, Text::new(b"SELECT 2"));
    assert_eq!(second.text.text.as_ptr(), room, "the same room");
    // Still held: the next one gets its own.
    let third = run(&mut t, "SELECT 3");
    assert_eq!(third.text.text, "SELECT 3");
    assert_ne!(third.text.text.as_ptr(), room);
    drop(second);
    t.recycle(third);
    // Past what is kept, a text is cut as ever, with its length and hash.
    let long = format!("SELECT '{}'", "x".repeat(MAX_TEXT));
    let cut = run(&mut t, &long);
    assert_eq!(*cut.text, Text::new(long.as_bytes()));
    assert!(cut.text.sha256.is_some());
}
