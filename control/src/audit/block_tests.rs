//! Blocks of statements in the log: stored as one row each, read back as
//! the statements they hold, with their own numbers, in every search.

use std::collections::BTreeMap;
use std::sync::Arc;

use portcullis_protocol::audit::block::BlockBuilder;
use portcullis_protocol::audit::detail::{Detail, Fields};
use portcullis_protocol::audit::{AuditEvent, ChainBreak};

use super::{AuditLog, Search, Verdict};
use crate::store::testing::{TestStore, tamper};

const T0: i64 = 1_700_000_000_000;

fn session_event(id: &str, action: &str, at: i64) -> AuditEvent {
    let mut e = AuditEvent::new(id.into(), at, action, "alice");
    e.resource = Some("orders".into());
    e.session_id = Some("ses_1".into());
    e.reason = Some("INC-7".into());
    e.approvers = vec!["carol".into()];
    e.detail.insert("protocol".into(), "postgres".into());
    e
}

/// A block of `texts`, the first at `at`, one a millisecond.
fn block(id: &str, at: i64, texts: &[&str]) -> AuditEvent {
    let mut b = BlockBuilder::new(session_event(id, "statements", at));
    for (i, text) in texts.iter().enumerate() {
        let detail = BTreeMap::from([("text".to_owned(), (*text).to_owned())]);
        b.push(&format!("{id}_{i}"), at + i as i64, detail);
    }
    b.finish()
}

/// start, 5 statements, a plain event, 3 statements, end: 11 events in 5 rows.
async fn mixed() -> Vec<(TestStore, AuditLog)> {
    let mut logs = Vec::new();
    for at in crate::store::testing::stores() {
        let log = crate::store::testing::audit_log(&at).await;
        fill(&log).await;
        logs.push((at, log));
    }
    logs
}

async fn fill(log: &AuditLog) {
    let rows = vec![
        session_event("evt_start", "session.start", T0),
        block(
            "evt_b1",
            T0 + 10,
            &["SELECT 1", "SELECT 2", "SELECT 'it''s \"x\"'", "SELECT 4", "SELECT 5"],
        ),
        {
            let mut warn = session_event("evt_notice", "session.warn", T0 + 100);
            warn.detail.insert("message".into(), "grant \"g1\" ends in 5m".into());
            warn
        },
        block("evt_b2", T0 + 200, &["UPDATE t SET a = 1", "SELECT 7", "SELECT 8"]),
        session_event("evt_end", "session.end", T0 + 300),
    ];
    assert_eq!(log.append(rows.clone()).await.expect("append"), 11);
    // Sent again (at least once): nothing new.
    assert_eq!(log.append(rows).await.expect("append"), 0);
}

fn ids(found: &[(u64, AuditEvent)]) -> Vec<(u64, String)> {
    found.iter().map(|(s, e)| (*s, e.id.clone())).collect()
}

#[tokio::test]
async fn statements_read_apart_with_their_own_numbers_and_the_session_fields() {
    for (_at, log) in mixed().await {
        assert_eq!(
            log.verify().await.expect("verify"),
            Verdict {
                events: 11,
                checked: 11,
                broken: None
            }
        );
        let all = log
            .search(Search {
                limit: 100,
                ..Search::default()
            })
            .await
            .expect("search");
        let seqs: Vec<u64> = all.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
        let (_, third) = &all[3];
        assert_eq!(
            (
                third.id.as_str(),
                third.action.as_str(),
                third.at,
                third.detail["text"].as_str()
            ),
            ("evt_b1_2", "statement", T0 + 12, "SELECT 'it''s \"x\"'")
        );
        assert_eq!(
            (
                third.session_id.as_deref(),
                third.reason.as_deref(),
                third.detail["protocol"].as_str()
            ),
            (Some("ses_1"), Some("INC-7"), "postgres")
        );

        let statements = log
            .search(Search {
                action: Some("statement".into()),
                newest_first: true,
                limit: 100,
                ..Search::default()
            })
            .await
            .expect("search");
        let seqs: Vec<u64> = statements.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [10, 9, 8, 6, 5, 4, 3, 2]);
        assert!(statements.iter().all(|(_, e)| e.action == "statement"));
    }
}

#[tokio::test]
async fn paging_walks_into_and_out_of_blocks_in_both_orders() {
    for (_at, log) in mixed().await {
        for newest_first in [false, true] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = log
                    .search(Search {
                        newest_first,
                        after,
                        limit: 3,
                        ..Search::default()
                    })
                    .await
                    .expect("search");
                seen.extend(ids(&page));
                match page.last() {
                    Some((seq, _)) if page.len() == 3 => after = Some(*seq),
                    _ => break,
                }
            }
            let mut expected: Vec<u64> = (1..=11).collect();
            if newest_first {
                expected.reverse();
            }
            assert_eq!(
                seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                expected,
                "newest first: {newest_first}"
            );
        }
    }
}

#[tokio::test]
async fn text_and_time_find_single_statements_inside_blocks() {
    for (_at, log) in mixed().await {
        let texts = [
            "SELECT * FROM orders WHERE id = 11",
            "SELECT * FROM orders WHERE id = 22",
        ];
        log.append(vec![block("evt_b3", T0 + 400, &texts)])
            .await
            .expect("append");
        let grep = |text: &str| Search {
            grep: Some(text.into()),
            limit: 100,
            ..Search::default()
        };
        let found = log.search(grep("update T")).await.expect("search");
        assert_eq!(ids(&found), [(8, "evt_b2_0".to_owned())]);
        // Quotes are escaped twice in a block's row: still found, once.
        let found = log.search(grep("'it''s \"x\"'")).await.expect("search");
        assert_eq!(ids(&found), [(4, "evt_b1_2".to_owned())]);
        // And in any other event's detail.
        let found = log.search(grep("GRANT \"g1\"")).await.expect("search");
        assert_eq!(ids(&found), [(7, "evt_notice".to_owned())]);
        // A text that repeats an earlier one, which compression writes as a
        // reference to it, is found too.
        let found = log.search(grep("FROM orders WHERE id = 22")).await.expect("search");
        assert_eq!(ids(&found), [(13, "evt_b3_1".to_owned())]);

        let found = log
            .search(Search {
                since: Some(T0 + 11),
                until: Some(T0 + 13),
                limit: 100,
                ..Search::default()
            })
            .await
            .expect("search");
        assert_eq!(ids(&found), [(3, "evt_b1_1".to_owned()), (4, "evt_b1_2".to_owned())]);
    }
}

#[tokio::test]
async fn statements_that_share_a_text_stored_once_are_each_found_by_it() {
    for at in crate::store::testing::stores() {
        let log = crate::store::testing::audit_log(&at).await;
        let mut text = Fields::default();
        text.put("text", "SELECT \"abalance\" FROM accounts WHERE aid = $1");
        let text = Arc::new(text);
        let mut b = BlockBuilder::new(session_event("evt_s", "statements", T0));
        for i in 0..3u64 {
            b.push_with(&format!("evt_s_{i}"), T0, |d| {
                if i == 1 {
                    d.put("text", "SELECT 1");
                } else {
                    d.put_shared(&text);
                }
                d.put_number("rows", i);
            });
        }
        let block = b.finish();
        assert_eq!(block.detail["statements"].matches("abalance").count(), 1);
        assert_eq!(log.append(vec![block]).await.expect("append"), 3);
        let found = log
            .search(Search {
                grep: Some("\"ABALANCE\" from".into()),
                limit: 100,
                ..Search::default()
            })
            .await
            .expect("search");
        assert_eq!(ids(&found), [(1, "evt_s_0".to_owned()), (3, "evt_s_2".to_owned())]);
        assert_eq!(found[1].1.detail["rows"], "2");
    }
}

#[tokio::test]
async fn a_bound_value_with_quotes_or_backslashes_is_found_as_typed() {
    for (_at, log) in mixed().await {
        let typed = r#"say "hi" \ bye"#;
        let mut b = BlockBuilder::new(session_event("evt_b3", "statements", T0 + 400));
        let detail = BTreeMap::from([
            ("text".to_owned(), "SELECT $1".to_owned()),
            ("params".to_owned(), serde_json::to_string(&[typed]).unwrap_or_default()),
        ]);
        b.push("evt_b3_0", T0 + 400, detail);
        log.append(vec![b.finish()]).await.expect("append");
        let found = log
            .search(Search {
                grep: Some(typed.to_uppercase()),
                limit: 10,
                ..Search::default()
            })
            .await
            .expect("search");
        assert_eq!(ids(&found), [(12, "evt_b3_0".to_owned())]);
        // An id, as `verify` names one, finds its event, in a block or not.
        for id in ["evt_b3_0", "EVT_B3"] {
            let found = log
                .search(Search {
                    grep: Some(id.into()),
                    limit: 10,
                    ..Search::default()
                })
                .await
                .expect("search");
            assert_eq!(ids(&found), [(12, "evt_b3_0".to_owned())], "{id}");
        }
    }
}

#[tokio::test]
async fn an_edited_statement_or_a_deleted_block_breaks_the_chain() {
    for (at, log) in mixed().await {
        // Decompressed, edited and stored as text, which reads as a body too.
        let body = if at.postgres().is_some() {
            "body"
        } else {
            "audit_body(body)"
        };
        tamper(
            &at,
            &format!("UPDATE events SET body = replace({body}, 'SELECT 7', 'SELECT 0') WHERE seq = 8"),
        );
        assert!(
            matches!(
                log.verify().await.expect("verify").broken,
                Some(ChainBreak::Edited { seq: 8, .. })
            ),
            "{at:?}"
        );
    }
    for (at, log) in mixed().await {
        tamper(&at, "DELETE FROM events WHERE seq = 2");
        assert_eq!(
            log.verify().await.expect("verify").broken,
            Some(ChainBreak::Missing { expected: 2, found: 7 }),
            "{at:?}"
        );
    }
}

#[tokio::test]
async fn a_forged_span_or_an_unreadable_row_is_a_break_and_never_a_count() {
    // The newest event deleted, and its place added to a block's span: the
    // count would stay 11 though an event is gone.
    for (at, log) in mixed().await {
        tamper(
            &at,
            "DELETE FROM events WHERE seq = 11; UPDATE events SET span = 4 WHERE seq = 8",
        );
        let verdict = log.verify().await.expect("verify");
        assert!(
            matches!(&verdict.broken, Some(ChainBreak::Edited { seq: 8, id }) if id == "evt_b2"),
            "{at:?}: {verdict:?}"
        );
    }
    // A link cut short no longer reads as one: a break, not an error.
    for (at, log) in mixed().await {
        tamper(&at, "UPDATE events SET hash = substr(hash, 1, 1) WHERE seq = 7");
        assert!(
            matches!(
                log.verify().await.expect("verify").broken,
                Some(ChainBreak::Edited { seq: 7, .. })
            ),
            "{at:?}"
        );
    }
}

#[tokio::test]
async fn the_sqlite_file_keeps_blocks_compressed_and_reads_a_text_body_too() {
    let at = crate::store::testing::sqlite();
    let log = crate::store::testing::audit_log(&at).await;
    fill(&log).await;
    let everything = || Search {
        limit: 100,
        ..Search::default()
    };
    // Each block's body: how it is stored, and its size in bytes.
    let stored = || -> Vec<(String, i64)> {
        let file = rusqlite::Connection::open(at.dir.path().join(super::FILE)).expect("open");
        let mut q = file
            .prepare(
                "SELECT typeof(body), length(CAST(body AS BLOB)) FROM events WHERE action = 'statements' ORDER BY seq",
            )
            .expect("prepare");
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect)
            .expect("bodies")
    };
    let compressed = stored();
    assert!(compressed.iter().all(|(kind, _)| kind == "blob"), "{compressed:?}");
    let before = log.search(everything()).await.expect("search");
    assert_eq!(before.len(), 11);

    // A file written before blocks were compressed holds their JSON as text.
    tamper(
        &at,
        "UPDATE events SET body = audit_body(body) WHERE action = 'statements'",
    );
    let text = stored();
    assert!(text.iter().all(|(kind, _)| kind == "text"), "{text:?}");
    assert!(compressed[0].1 < text[0].1, "{compressed:?} against {text:?}");
    assert_eq!(log.search(everything()).await.expect("search"), before);
    assert_eq!(log.verify().await.expect("verify").broken, None);

    // A blob that does not unpack is an edit.
    tamper(&at, "UPDATE events SET body = x'ff00000001' WHERE seq = 8");
    assert!(
        matches!(
            log.verify().await.expect("verify").broken,
            Some(ChainBreak::Edited { seq: 8, .. })
        ),
        "an unreadable block"
    );
}

#[tokio::test]
async fn a_reader_on_its_own_connection_sees_what_is_written_later() {
    // As a test or a tool reading audit.db beside a running gateway: it
    // polls, and every poll must see what was committed since.
    for (at, writer) in mixed().await {
        let reader = crate::store::testing::audit_log(&at).await;
        let statements = || Search {
            action: Some("statement".into()),
            limit: 100,
            ..Search::default()
        };
        assert_eq!(reader.search(statements()).await.expect("search").len(), 8);
        writer
            .append(vec![block("evt_b3", T0 + 400, &["SELECT 9"])])
            .await
            .expect("append");
        assert_eq!(reader.search(statements()).await.expect("search").len(), 9);
    }
}
