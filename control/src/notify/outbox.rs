//! The `outbox` table: one row per notification and destination, inserted in
//! the transaction of the change it reports, so a notification exists exactly
//! when its change does and survives restarts until it is delivered.

use std::ops::ControlFlow;

use portcullis_protocol::feed::UnixMillis;

use crate::store::{DbError, Sql, args};

/// A row waiting for (another) delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Row {
    /// `ntf_...`, sent as the `Idempotency-Key`.
    pub id: String,
    /// Key of the destination (`webhook:HASH`, `slack:HASH`).
    pub destination: String,
    /// The event's spelling, e.g. `approved`.
    pub event: String,
    /// The JSON document.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
}

/// Queues one notification for `destination`, due at once.
pub(crate) fn insert(db: &mut dyn Sql, row: &Row, subject: &str, created_at: UnixMillis) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO outbox (id, destination, event, subject, body, created_at, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        args![&row.id, &row.destination, &row.event, subject, &row.body, created_at],
    )?;
    Ok(())
}

/// Up to `limit` pending rows due by `now`, oldest due first, among those
/// `take` accepts (it leaves out rows in flight and destinations without room).
pub(crate) fn due(
    db: &mut dyn Sql,
    now: UnixMillis,
    limit: usize,
    mut take: impl FnMut(&Row) -> bool,
) -> Result<Vec<Row>, DbError> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    // No LIMIT: rows are stepped through lazily, along the `outbox_due` index.
    db.each(
        "SELECT id, destination, event, body, attempts FROM outbox
         WHERE state = 'pending' AND next_attempt_at <= ?1 AND (claimed_until IS NULL OR claimed_until <= ?1)
         ORDER BY next_attempt_at, rowid",
        args![now],
        &mut |r| {
            let row = Row {
                id: r.get(0)?,
                destination: r.get(1)?,
                event: r.get(2)?,
                body: r.get(3)?,
                attempts: r.get(4)?,
            };
            if take(&row) {
                out.push(row);
                if out.len() >= limit {
                    return Ok(ControlFlow::Break(()));
                }
            }
            Ok(ControlFlow::Continue(()))
        },
    )?;
    Ok(out)
}

/// When the next pending row that `wanted(id, destination)` accepts is due, if any.
pub(crate) fn next_due(
    db: &mut dyn Sql,
    mut wanted: impl FnMut(&str, &str) -> bool,
) -> Result<Option<UnixMillis>, DbError> {
    let mut next = None;
    db.each(
        "SELECT id, destination, due FROM
             (SELECT id, destination, rowid,
                     CASE WHEN claimed_until > next_attempt_at THEN claimed_until ELSE next_attempt_at END AS due
                FROM outbox WHERE state = 'pending') o
         ORDER BY due, rowid",
        &[],
        &mut |r| {
            if wanted(&r.get::<String>(0)?, &r.get::<String>(1)?) {
                next = Some(r.get(2)?);
                return Ok(ControlFlow::Break(()));
            }
            Ok(ControlFlow::Continue(()))
        },
    )?;
    Ok(next)
}

/// Pending rows: the outbox depth.
pub(crate) fn depth(db: &mut dyn Sql) -> Result<i64, DbError> {
    db.query_one("SELECT COUNT(*) FROM outbox WHERE state = 'pending'", &[])?
        .get(0)
}

/// Records a delivery.
pub(crate) fn mark_sent(db: &mut dyn Sql, id: &str, attempts: u32, now: UnixMillis) -> Result<(), DbError> {
    db.execute(
        "UPDATE outbox SET state = 'sent', attempts = ?2, done_at = ?3, last_error = NULL, claimed_until = NULL
         WHERE id = ?1 AND state = 'pending'",
        args![id, attempts, now],
    )?;
    Ok(())
}

/// Records a failed attempt and when to try again.
pub(crate) fn mark_retry(
    db: &mut dyn Sql,
    id: &str,
    attempts: u32,
    next_attempt_at: UnixMillis,
    error: &str,
) -> Result<(), DbError> {
    db.execute(
        "UPDATE outbox SET attempts = ?2, next_attempt_at = ?3, last_error = ?4, claimed_until = NULL
         WHERE id = ?1 AND state = 'pending'",
        args![id, attempts, next_attempt_at, error],
    )?;
    Ok(())
}

/// Gives up on a row: its attempts ran out or its destination left the config.
pub(crate) fn mark_failed(
    db: &mut dyn Sql,
    id: &str,
    attempts: u32,
    error: &str,
    now: UnixMillis,
) -> Result<(), DbError> {
    db.execute(
        "UPDATE outbox SET state = 'failed', attempts = ?2, last_error = ?3, done_at = ?4, claimed_until = NULL
         WHERE id = ?1 AND state = 'pending'",
        args![id, attempts, error, now],
    )?;
    Ok(())
}

/// Deletes delivered rows finished before `sent_before` and failed ones before
/// `failed_before` (history keeps the events themselves forever).
/// Claims row `id` for a delivery until `until`: no other replica takes it
/// before then (unless the delivery's outcome is marked first).
pub(crate) fn claim(db: &mut dyn Sql, id: &str, until: UnixMillis) -> Result<(), DbError> {
    db.execute("UPDATE outbox SET claimed_until = ?2 WHERE id = ?1", args![id, until])?;
    Ok(())
}

/// Drops every claim: on the embedded store, claims left by a process that
/// stopped mid-delivery (no other process can hold one).
pub(crate) fn release_all(db: &mut dyn Sql) -> Result<(), DbError> {
    db.execute(
        "UPDATE outbox SET claimed_until = NULL WHERE claimed_until IS NOT NULL",
        &[],
    )?;
    Ok(())
}

pub(crate) fn purge(db: &mut dyn Sql, sent_before: UnixMillis, failed_before: UnixMillis) -> Result<u64, DbError> {
    db.execute(
        "DELETE FROM outbox WHERE (state = 'sent' AND done_at < ?1) OR (state = 'failed' AND done_at < ?2)",
        args![sent_before, failed_before],
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn row(id: &str) -> Row {
        Row {
            id: id.to_owned(),
            destination: "webhook:1".to_owned(),
            event: "requested".to_owned(),
            body: "{}".to_owned(),
            attempts: 0,
        }
    }

    #[test]
    fn due_rows_skip_busy_ones_and_follow_backoff() {
        for store in crate::store::testing::stores() {
            due_rows_on(&store);
        }
    }

    fn due_rows_on(store: &crate::store::testing::TestStore) {
        let mut conn = store.connect();
        crate::store::migrations::migrate(&mut conn, &store.location).expect("migrate");
        let conn = &mut conn;
        insert(conn, &row("ntf_a"), "req_1", 100).expect("insert a");
        insert(conn, &row("ntf_b"), "req_1", 200).expect("insert b");
        let all = |_: &Row| true;
        let free = |_: &str, _: &str| true;
        assert_eq!(due(conn, 150, 10, all).expect("due").len(), 1);
        assert_eq!(due(conn, 300, 1, all).expect("due").len(), 1, "at most the limit");
        let busy: HashSet<String> = ["ntf_a".to_owned()].into();
        let ids: Vec<_> = due(conn, 300, 10, |r| !busy.contains(&r.id))
            .expect("due")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["ntf_b"]);
        assert_eq!(next_due(conn, |id, _| !busy.contains(id)).expect("next"), Some(200));
        // A destination without room is skipped, so the next due time is not its row's.
        assert_eq!(next_due(conn, |_, d| d != "webhook:1").expect("next"), None);

        mark_retry(conn, "ntf_a", 1, 1_000, "HTTP 500").expect("retry");
        assert_eq!(due(conn, 300, 10, all).expect("due")[0].id, "ntf_b");
        mark_sent(conn, "ntf_b", 1, 300).expect("sent");
        assert_eq!(next_due(conn, free).expect("next"), Some(1_000));
        assert_eq!(depth(conn).expect("depth"), 1);
        let again = due(conn, 1_000, 10, all).expect("due");
        assert_eq!((again[0].id.as_str(), again[0].attempts), ("ntf_a", 1));

        mark_failed(conn, "ntf_a", 2, "HTTP 500", 1_100).expect("failed");
        assert_eq!(depth(conn).expect("depth"), 0);
        assert_eq!(next_due(conn, free).expect("next"), None);
        // A finished row is never picked up again, even by a late retry mark.
        mark_retry(conn, "ntf_a", 3, 0, "late").expect("late retry");
        assert!(due(conn, i64::MAX, 10, all).expect("due").is_empty());
        assert_eq!(purge(conn, 301, 1_000).expect("purge"), 1);
        assert_eq!(purge(conn, 301, 1_101).expect("purge"), 1);
    }

    #[test]
    fn a_claimed_row_waits_for_its_claim_to_lapse() {
        for store in crate::store::testing::stores() {
            let mut conn = store.connect();
            crate::store::migrations::migrate(&mut conn, &store.location).expect("migrate");
            let conn = &mut conn;
            let all = |_: &Row| true;
            let free = |_: &str, _: &str| true;
            insert(conn, &row("ntf_a"), "req_1", 100).expect("insert");
            claim(conn, "ntf_a", 5_000).expect("claim");
            assert!(due(conn, 4_999, 10, all).expect("due").is_empty(), "{store:?}");
            assert_eq!(
                next_due(conn, free).expect("next"),
                Some(5_000),
                "due when the claim lapses"
            );
            assert_eq!(due(conn, 5_000, 10, all).expect("due").len(), 1, "a lapsed claim");
            // An outcome ends the claim: a retry is due at its own time.
            mark_retry(conn, "ntf_a", 1, 200, "HTTP 500").expect("retry");
            assert_eq!(next_due(conn, free).expect("next"), Some(200));
            claim(conn, "ntf_a", 9_000).expect("claim again");
            release_all(conn).expect("release");
            assert_eq!(due(conn, 300, 10, all).expect("due").len(), 1, "released");
        }
    }
}
