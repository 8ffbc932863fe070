//! COPY: direction and bytes, and the Syncs a client sends within a COPY IN,
//! which the server ignores only while the COPY lasts.

use super::*;

#[test]
fn copy_records_direction_and_bytes() {
    let out = run(&[
        (true, b'Q', cstr("COPY t FROM STDIN")),
        (false, b'G', vec![0, 0, 0]),
        (true, b'd', vec![b'x'; 10]),
        (true, b'd', vec![b'y'; 5]),
        (true, b'c', Vec::new()),
        (false, b'C', cstr("COPY 2")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(
        out[0].copy,
        Some(Copy {
            inbound: true,
            bytes: 15
        })
    );
    assert_eq!(out[0].outcome, done(&[("COPY 2", Some(2))]));
}

#[test]
fn an_extended_copy_in_keeps_the_records_aligned() {
    let out = run(&[
        (true, b'P', parse("", "COPY t FROM STDIN")),
        (true, b'B', bind("", "", &[], &[])),
        (true, b'E', execute("")),
        // libpq's Sync right after Execute: the server ignores it in copy-in.
        (true, b'S', Vec::new()),
        (false, b'1', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b'G', vec![0, 0, 0]),
        (true, b'd', vec![b'x'; 7]),
        (true, b'c', Vec::new()),
        (true, b'S', Vec::new()),
        (false, b'C', cstr("COPY 1")),
        (false, b'Z', vec![b'I']),
        (true, b'Q', cstr("SELECT 2")),
        (false, b'C', cstr("SELECT 1")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0].copy,
        Some(Copy {
            inbound: true,
            bytes: 7
        })
    );
    assert_eq!(
        (out[1].text.text.as_str(), &out[1].outcome),
        ("SELECT 2", &done(&[("SELECT 1", Some(1))]))
    );
}

#[test]
fn a_sync_sent_during_a_simple_copy_in_is_ignored_as_the_server_does() {
    let out = run(&[
        (true, b'Q', cstr("COPY t FROM STDIN")),
        (false, b'G', vec![0, 0, 0]),
        (true, b'S', Vec::new()),
        (true, b'd', vec![b'x'; 3]),
        (true, b'c', Vec::new()),
        (false, b'C', cstr("COPY 1")),
        (false, b'Z', vec![b'I']),
        (true, b'Q', cstr("DELETE FROM t")),
        (false, b'C', cstr("DELETE 1")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].outcome, done(&[("COPY 1", Some(1))]));
    assert_eq!(out[1].outcome, done(&[("DELETE 1", Some(1))]));
}

#[test]
fn copy_data_ahead_of_the_server_and_several_copies_all_count() {
    let out = run(&[
        (true, b'Q', cstr("COPY a FROM STDIN; COPY b FROM STDIN")),
        // Sent before the server's CopyInResponse.
        (true, b'd', vec![b'x'; 4]),
        (true, b'c', Vec::new()),
        (false, b'G', vec![0, 0, 0]),
        (false, b'C', cstr("COPY 1")),
        (false, b'G', vec![0, 0, 0]),
        (true, b'd', vec![b'y'; 6]),
        (true, b'c', Vec::new()),
        (false, b'C', cstr("COPY 1")),
        (false, b'Z', vec![b'I']),
        (true, b'Q', cstr("SELECT 1")),
        (false, b'C', cstr("SELECT 1")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0].copy,
        Some(Copy {
            inbound: true,
            bytes: 10
        })
    );
    assert_eq!(
        out[1].outcome,
        done(&[("SELECT 1", Some(1))]),
        "the next tag is its own"
    );
}

#[test]
fn a_copy_that_failed_before_it_began_leaves_the_next_statement_its_tag() {
    let out = run(&[
        (true, b'Q', cstr("COPY nowhere FROM STDIN")),
        (true, b'd', vec![b'x'; 4]),
        (true, b'c', Vec::new()),
        (false, b'E', error("42P01")),
        (false, b'Z', vec![b'I']),
        (true, b'Q', cstr("DELETE FROM t")),
        (false, b'C', cstr("DELETE 2")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 2);
    assert!(matches!(&out[0].outcome, Outcome::Failed { sqlstate, .. } if sqlstate == "42P01"));
    assert_eq!(out[1].outcome, done(&[("DELETE 2", Some(2))]));
}

#[test]
fn a_copy_that_fails_on_its_data_leaves_the_syncs_after_it_answered() {
    // One write: the server fails on the row, answers the second Sync and
    // runs the DELETE.
    let out = run(&[
        (true, b'P', parse("", "COPY t (id) FROM STDIN")),
        (true, b'B', bind("", "", &[], &[])),
        (true, b'E', execute("")),
        (true, b'S', Vec::new()),
        (true, b'd', b"x\n".to_vec()),
        (true, b'S', Vec::new()),
        (true, b'Q', cstr("DELETE FROM accounts")),
        (false, b'1', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b'G', vec![0, 0, 0]),
        (false, b'E', error("22P02")),
        (false, b'Z', vec![b'I']),
        (false, b'C', cstr("DELETE 3")),
        (false, b'Z', vec![b'I']),
        (true, b'Q', cstr("SELECT 1")),
        (false, b'C', cstr("SELECT 1")),
        (false, b'Z', vec![b'I']),
    ]);
    let got = outcomes(&out);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        matches!(got[0], ("COPY t (id) FROM STDIN", Outcome::Failed { .. })),
        "{got:?}"
    );
    assert_eq!(got[1], ("DELETE FROM accounts", &done(&[("DELETE 3", Some(3))])));
    assert_eq!(got[2], ("SELECT 1", &done(&[("SELECT 1", Some(1))])));
}

#[test]
fn syncs_among_the_data_of_a_copy_that_completes_are_ignored() {
    let out = run(&[
        (true, b'P', parse("", "COPY t FROM STDIN")),
        (true, b'B', bind("", "", &[], &[])),
        (true, b'E', execute("")),
        (true, b'S', Vec::new()),
        (true, b'd', b"1\n".to_vec()),
        (true, b'S', Vec::new()),
        (true, b'd', b"2\n".to_vec()),
        (true, b'c', Vec::new()),
        (true, b'S', Vec::new()),
        (false, b'1', Vec::new()),
        (false, b'2', Vec::new()),
        (false, b'G', vec![0, 0, 0]),
        (false, b'C', cstr("COPY 2")),
        (false, b'Z', vec![b'I']),
        (true, b'Q', cstr("DELETE FROM t")),
        (false, b'C', cstr("DELETE 2")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].outcome, done(&[("COPY 2", Some(2))]));
    assert_eq!(out[1].outcome, done(&[("DELETE 2", Some(2))]));
}

#[test]
fn copy_data_after_a_statement_that_is_no_copy_marks_nothing() {
    let out = run(&[
        (true, b'Q', cstr("DELETE FROM t")),
        (true, b'd', b"x".to_vec()),
        (false, b'C', cstr("DELETE 1")),
        (false, b'Z', vec![b'I']),
    ]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].copy, None);
    assert_eq!(out[0].outcome, done(&[("DELETE 1", Some(1))]));
}
