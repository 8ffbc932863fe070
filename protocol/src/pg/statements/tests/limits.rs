//! What a session can make the tracker hold is bounded: past the text
//! budget a prepared statement keeps its head, length and hash; past the
//! names or messages it follows, tracking stops and says why.

use super::*;

/// Prepares `name` as `sql`, as the server answers it.
fn prepare(t: &mut StatementTracker, name: &str, sql: &str) {
    t.client(b'P', &parse(name, sql), Instant::now());
    t.server(b'1', &[], Instant::now(), &mut Vec::new());
}

#[test]
fn past_the_budget_a_prepared_statement_keeps_its_head_length_and_hash() {
    let mut t = StatementTracker::new();
    let filler = format!("SELECT '{}'", "x".repeat(MAX_TEXT - 10));
    for i in 0..MAX_KEPT / filler.len() {
        prepare(&mut t, &format!("s{i}"), &filler);
    }
    // Past the budget, in characters of two bytes: cut on a boundary.
    let sql = format!("UPDATE accounts SET note = '{}'", "é".repeat(1000));
    prepare(&mut t, "late", &sql);
    let text = &t.prepared.get("late").expect("remembered").text;
    assert!(sql.starts_with(&text.text) && text.text.len() <= KEPT_PAST_BUDGET);
    assert!(text.text.len() > KEPT_PAST_BUDGET - 2, "{}", text.text.len());
    assert_eq!(text.len, sql.len());
    let sha: String = Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(text.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(t.lost(), None);
}

#[test]
fn past_the_names_it_keeps_tracking_stops_and_says_why() {
    let mut t = StatementTracker::new();
    for i in 0..MAX_NAMES {
        prepare(&mut t, &format!("s{i}"), "SELECT 1");
    }
    // A name already kept, or the unnamed statement, needs no room.
    prepare(&mut t, "s0", "SELECT 2");
    prepare(&mut t, "", "SELECT 3");
    assert_eq!(t.lost(), None);
    t.client(b'Q', &cstr("SELECT pg_sleep(1)"), Instant::now());
    t.client(b'P', &parse("one_too_many", "SELECT 4"), Instant::now());
    assert_eq!(t.lost(), Some(Lost::Names));
    assert_eq!(t.unfollowed(), 1, "the query still waiting for its answer");
    assert!(t.expect.is_empty());
    // What the relay sends until the cut is recorded by its text all the same.
    t.client(b'Q', &cstr("DELETE FROM accounts"), Instant::now());
    t.client(b'B', &bind("", "s0", &[], &[]), Instant::now());
    t.client(b'E', &execute(""), Instant::now());
    t.client(b'S', &[], Instant::now());
    t.server(b'Z', b"I", Instant::now(), &mut Vec::new());
    let mut out = Vec::new();
    t.abandoned(&mut out);
    let got = outcomes(&out);
    assert_eq!(
        got,
        [
            ("SELECT pg_sleep(1)", &Outcome::NotFollowed),
            ("SELECT 4", &Outcome::NotFollowed),
            ("DELETE FROM accounts", &Outcome::NotFollowed),
            ("SELECT 2", &Outcome::NotFollowed),
        ],
        "the waiting query, the Parse that stopped tracking, a Query, and the Bind of a statement prepared before"
    );

    // Portals as well.
    let mut t = StatementTracker::new();
    prepare(&mut t, "", "SELECT 1");
    for i in 0..=MAX_NAMES {
        t.client(b'B', &bind(&format!("p{i}"), "", &[], &[]), Instant::now());
    }
    assert_eq!(t.lost(), Some(Lost::Names));
    assert!(Lost::Names.why().contains(&MAX_NAMES.to_string()));
    // A portal bound before: its Execute is recorded with its text.
    t.client(b'E', &execute("p0"), Instant::now());
    let mut out = Vec::new();
    t.interrupt(Instant::now(), &mut out);
    let texts: Vec<&str> = out.iter().map(|s| s.text.text.as_str()).collect();
    assert_eq!(
        texts,
        ["SELECT 1", "SELECT 1"],
        "the Bind that stopped tracking, then the Execute"
    );
}

#[test]
fn portals_end_with_their_transaction_and_free_their_names() {
    // A driver that binds a new named portal in each transaction and
    // never closes it (the server drops it at the end): no bound is hit.
    let mut t = StatementTracker::new();
    prepare(&mut t, "", "SELECT 1");
    let now = Instant::now();
    for i in 0..=MAX_NAMES {
        let name = format!("C_{i}");
        t.client(b'B', &bind(&name, "", &[], &[]), now);
        t.client(b'E', &execute(&name), now);
        t.client(b'S', &[], now);
        let mut out = Vec::new();
        for (tag, body) in [(b'2', &b""[..]), (b'C', b"SELECT 1\0"), (b'Z', b"I")] {
            t.server(tag, body, now, &mut out);
        }
        assert_eq!(out.len(), 1);
    }
    assert_eq!(t.lost(), None);
    // Within a transaction block they stay.
    t.client(b'B', &bind("kept", "", &[], &[]), now);
    t.server(b'2', b"", now, &mut Vec::new());
    t.server(b'Z', b"T", now, &mut Vec::new());
    t.client(b'E', &execute("kept"), now);
    let mut out = Vec::new();
    t.server(b'C', b"SELECT 1\0", now, &mut out);
    assert_eq!(out[0].text.text, "SELECT 1");

    // A Bind sent ahead of the last transaction's end is the next one's.
    let mut t = StatementTracker::new();
    prepare(&mut t, "", "SELECT 1");
    t.client(b'S', &[], now);
    t.client(b'B', &bind("next", "", &[], &[]), now);
    t.server(b'Z', b"I", now, &mut Vec::new());
    t.client(b'E', &execute("next"), now);
    t.client(b'S', &[], now);
    let mut out = Vec::new();
    for (tag, body) in [(b'2', &b""[..]), (b'C', b"SELECT 1\0"), (b'Z', b"I")] {
        t.server(tag, body, now, &mut out);
    }
    assert_eq!(out[0].text.text, "SELECT 1");
}
