//! A portal run in pieces, each Execute stopping at its row limit, is one
//! record: its first Execute's start, every piece's rows, the last outcome.

use std::time::Duration;

use super::*;

fn execute_rows(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = cstr(portal);
    b.extend(max_rows.to_be_bytes());
    b
}

/// Feeds `steps` a millisecond apart, then ends the session; answers every
/// record, those the end made last.
fn run_and_end(steps: &[(bool, u8, Vec<u8>)]) -> (Vec<Statement>, Instant) {
    let mut t = StatementTracker::new();
    let mut out = Vec::new();
    let start = Instant::now();
    let mut now = start;
    for (client, tag, body) in steps {
        now += Duration::from_millis(1);
        if *client {
            t.client(*tag, body, now);
        } else {
            t.server(*tag, body, now, &mut out);
        }
    }
    t.interrupt(now, &mut out);
    (out, start)
}

fn bound_in_a_transaction(portal: &str) -> Vec<(bool, u8, Vec<u8>)> {
    vec![
        (true, b'Q', cstr("BEGIN")),
        (false, b'C', cstr("BEGIN")),
        (false, b'Z', vec![b'T']),
        (true, b'P', parse("s1", "SELECT generate_series(1, 5)")),
        (true, b'B', bind(portal, "s1", &[], &[])),
        (true, b'S', Vec::new()),
        (false, b'1', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b'Z', vec![b'T']),
    ]
}

fn piece(portal: &str, last: bool) -> Vec<(bool, u8, Vec<u8>)> {
    let end = if last {
        (false, b'C', cstr("SELECT 1"))
    } else {
        (false, b's', Vec::new())
    };
    vec![
        (true, b'E', execute_rows(portal, 2)),
        (true, b'S', Vec::new()),
        (false, b'D', vec![0, 0]),
        (false, b'D', vec![0, 0]),
        end,
        (false, b'Z', vec![b'T']),
    ]
}

fn extended(out: &[Statement]) -> Vec<&Statement> {
    out.iter().filter(|s| s.flow == Flow::Extended).collect()
}

#[test]
fn a_portal_read_in_pieces_is_one_record() {
    let mut steps = bound_in_a_transaction("c1");
    let first = steps.len() + 1;
    steps.extend(piece("c1", false));
    steps.extend(piece("c1", false));
    steps.extend(piece("c1", true));
    steps.extend([
        (true, b'Q', cstr("COMMIT")),
        (false, b'C', cstr("COMMIT")),
        (false, b'Z', vec![b'I']),
    ]);
    let (out, start) = run_and_end(&steps);
    let runs = extended(&out);
    assert_eq!(runs.len(), 1, "{out:#?}");
    let run = runs[0];
    assert_eq!(run.outcome, done(&[("SELECT 1", Some(1))]));
    assert_eq!((run.executes, run.fetched, run.portal.as_str()), (3, 4, "c1"));
    assert_eq!(run.started, start + Duration::from_millis(first as u64));
    assert_eq!(out.len(), 3, "BEGIN, the run, COMMIT");
}

#[test]
fn pieces_sent_at_once_are_one_record() {
    let mut steps = bound_in_a_transaction("");
    steps.extend([
        (true, b'E', execute_rows("", 2)),
        (true, b'E', execute_rows("", 2)),
        (true, b'S', Vec::new()),
        (false, b's', Vec::new()),
        (false, b'C', cstr("SELECT 2")),
        (false, b'Z', vec![b'T']),
    ]);
    let (out, _) = run_and_end(&steps);
    let runs = extended(&out);
    assert_eq!(runs.len(), 1, "{out:#?}");
    assert_eq!((runs[0].executes, runs[0].fetched), (2, 2));
}

#[test]
fn a_portal_closed_before_its_end_is_recorded_at_its_close() {
    let mut t = StatementTracker::new();
    let mut steps = bound_in_a_transaction("c1");
    steps.extend(piece("c1", false));
    steps.extend(piece("c1", false));
    let out = feed(&mut t, &steps);
    assert!(extended(&out).is_empty(), "still open: {out:#?}");
    let out = feed(
        &mut t,
        &[
            (true, b'C', vec![b'P', b'c', b'1', 0]),
            (true, b'S', Vec::new()),
            (false, b'3', Vec::new()),
            (false, b'Z', vec![b'T']),
        ],
    );
    let runs = extended(&out);
    assert_eq!(runs.len(), 1, "{out:#?}");
    assert_eq!(runs[0].outcome, Outcome::Suspended);
    assert_eq!((runs[0].executes, runs[0].fetched), (2, 4));
}

#[test]
fn a_portal_left_open_is_recorded_when_its_transaction_ends() {
    let mut t = StatementTracker::new();
    let mut steps = bound_in_a_transaction("c1");
    steps.extend(piece("c1", false));
    let out = feed(&mut t, &steps);
    assert!(extended(&out).is_empty(), "still in its transaction: {out:#?}");
    let out = feed(
        &mut t,
        &[
            (true, b'Q', cstr("COMMIT")),
            (false, b'C', cstr("COMMIT")),
            (false, b'Z', vec![b'I']),
        ],
    );
    let runs = extended(&out);
    assert_eq!(runs.len(), 1, "{out:#?}");
    assert_eq!((&runs[0].outcome, runs[0].fetched), (&Outcome::Suspended, 2));
}

#[test]
fn a_portal_read_on_after_rollback_to_a_savepoint_is_still_one_record() {
    let mut t = StatementTracker::new();
    let mut steps = bound_in_a_transaction("c1");
    steps.extend(piece("c1", false));
    steps.extend([
        (true, b'Q', cstr("SAVEPOINT s; SELECT 1/0")),
        (false, b'C', cstr("SAVEPOINT")),
        (false, b'E', error("22012")),
        (false, b'Z', vec![b'E']),
        (true, b'Q', cstr("ROLLBACK TO SAVEPOINT s")),
        (false, b'C', cstr("ROLLBACK")),
        (false, b'Z', vec![b'T']),
    ]);
    steps.extend(piece("c1", true));
    let out = feed(&mut t, &steps);
    let runs = extended(&out);
    assert_eq!(runs.len(), 1, "{out:#?}");
    assert_eq!((runs[0].executes, runs[0].fetched), (2, 2));
    assert_eq!(runs[0].outcome, done(&[("SELECT 1", Some(1))]));
}

#[test]
fn a_piece_under_way_when_the_session_ends_joins_its_run() {
    let mut t = StatementTracker::new();
    let mut steps = bound_in_a_transaction("c1");
    steps.extend(piece("c1", false));
    steps.push((true, b'E', execute_rows("c1", 2)));
    let mut out = feed(&mut t, &steps);
    t.interrupt(Instant::now(), &mut out);
    let runs = extended(&out);
    assert_eq!(runs.len(), 1, "{out:#?}");
    assert_eq!(
        (&runs[0].outcome, runs[0].executes, runs[0].fetched),
        (&Outcome::Interrupted, 2, 2)
    );
}

#[test]
fn out_of_a_transaction_block_a_stopped_portal_is_recorded_at_once() {
    let (out, _) = run_and_end(&[
        (true, b'P', parse("", "SELECT generate_series(1, 5)")),
        (true, b'B', bind("", "", &[], &[])),
        (true, b'E', execute_rows("", 2)),
        (true, b'S', Vec::new()),
        (false, b'1', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b's', Vec::new()),
        (false, b'Z', vec![b'I']),
        // The implicit transaction ended: this Execute finds no portal.
        (true, b'E', execute_rows("", 2)),
        (true, b'S', Vec::new()),
        (false, b'E', error("34000")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!(
        (&out[0].outcome, out[0].fetched, out[0].executes),
        (&Outcome::Suspended, 2, 1)
    );
    assert!(matches!(&out[1].outcome, Outcome::Failed { sqlstate, .. } if sqlstate == "34000"));
    assert_eq!((out[1].fetched, out[1].executes), (0, 1));
}

#[test]
fn a_portal_bound_again_starts_another_record() {
    let mut steps = bound_in_a_transaction("");
    steps.extend(piece("", false));
    steps.extend([
        (true, b'B', bind("", "s1", &[], &[])),
        (true, b'E', execute_rows("", 0)),
        (true, b'S', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b'C', cstr("SELECT 5")),
        (false, b'Z', vec![b'T']),
    ]);
    let (out, _) = run_and_end(&steps);
    let runs = extended(&out);
    assert_eq!(runs.len(), 2, "{out:#?}");
    assert_eq!((&runs[0].outcome, runs[0].fetched), (&Outcome::Suspended, 2));
    assert_eq!((runs[1].executes, runs[1].fetched), (1, 0));
    assert_eq!(runs[1].outcome, done(&[("SELECT 5", Some(5))]));
}

#[test]
fn an_error_in_a_later_piece_fails_the_whole_run() {
    let mut steps = bound_in_a_transaction("c1");
    steps.extend(piece("c1", false));
    steps.extend([
        (true, b'E', execute_rows("c1", 2)),
        (true, b'S', Vec::new()),
        (false, b'E', error("22012")),
        (false, b'Z', vec![b'E']),
    ]);
    let (out, _) = run_and_end(&steps);
    let runs = extended(&out);
    assert_eq!(runs.len(), 1, "{out:#?}");
    assert!(matches!(&runs[0].outcome, Outcome::Failed { sqlstate, .. } if sqlstate == "22012"));
    assert_eq!((runs[0].executes, runs[0].fetched), (2, 2));
}

#[test]
fn a_session_that_ends_mid_read_records_the_run() {
    let mut steps = bound_in_a_transaction("c1");
    steps.extend(piece("c1", false));
    let (out, _) = run_and_end(&steps);
    let runs = extended(&out);
    assert_eq!(runs.len(), 1, "{out:#?}");
    assert_eq!((&runs[0].outcome, runs[0].fetched), (&Outcome::Suspended, 2));
}

#[test]
fn runs_kept_waiting_are_bounded() {
    let mut steps = vec![
        (true, b'Q', cstr("BEGIN")),
        (false, b'C', cstr("BEGIN")),
        (false, b'Z', vec![b'T']),
        (true, b'P', parse("s1", "SELECT generate_series(1, 5)")),
        (false, b'1', Vec::new()),
    ];
    let portals = super::super::suspended::MAX_SUSPENDED + 4;
    for i in 0..portals {
        let name = format!("c{i}");
        steps.extend([(true, b'B', bind(&name, "s1", &[], &[])), (false, b'2', Vec::new())]);
        steps.extend(piece(&name, false));
    }
    let mut t = StatementTracker::new();
    let mut out = feed(&mut t, &steps);
    assert_eq!(t.suspended.len(), super::super::suspended::MAX_SUSPENDED);
    let evicted: Vec<&str> = extended(&out).iter().map(|s| s.portal.as_str()).collect();
    assert_eq!(evicted, ["c0", "c1", "c2", "c3"], "the runs that waited longest");
    t.interrupt(Instant::now(), &mut out);
    assert_eq!(extended(&out).len(), portals);
}
