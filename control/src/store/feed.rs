//! The `feed` table: on a PostgreSQL store, every change proxies follow is
//! stored with its revision in the transaction that made it, and NOTIFY
//! tells every control replica to read it. Writers hold the store's write
//! lock, so revisions are given and committed in one order, which every
//! replica's feed then publishes: a proxy's cursor means the same on any
//! replica. (The embedded store has one process and publishes directly.)

use portcullis_protocol::feed::{FeedChange, FeedEvent, UnixMillis};

use crate::store::db::Engine;
use crate::store::{DbError, Sql, args};

/// The channel replicas LISTEN on.
pub(crate) const CHANNEL: &str = "portcullis_feed";

/// Changes kept for replicas and proxies that catch up (as the feed's ring).
const KEEP: u64 = crate::feed::RING as u64;

/// Stores `events` as the next revisions and notifies the replicas when the
/// transaction commits; call inside a write transaction.
pub(crate) fn append(tx: &mut dyn Sql, events: &[FeedEvent], at: UnixMillis) -> Result<(), DbError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut revision = latest(tx)?;
    for event in events {
        revision += 1;
        let text = serde_json::to_string(event).map_err(|e| DbError::Invalid(format!("feed event: {e}")))?;
        tx.execute(
            "INSERT INTO feed (revision, event, at) VALUES (?1, ?2, ?3)",
            args![revision, text, at],
        )?;
    }
    // Old changes go now and then; the newest `KEEP` always stay.
    if revision % 1024 < events.len() as u64 {
        tx.execute(
            "DELETE FROM feed WHERE revision <= ?1",
            args![revision.saturating_sub(KEEP)],
        )?;
    }
    if tx.engine() == Engine::Postgres {
        tx.execute(&format!("SELECT pg_notify('{CHANNEL}', '')"), &[])?;
    }
    Ok(())
}

/// The latest stored revision (0 for none).
pub(crate) fn latest(db: &mut dyn Sql) -> Result<u64, DbError> {
    db.query_one("SELECT CAST(COALESCE(MAX(revision), 0) AS BIGINT) FROM feed", &[])?
        .get(0)
}

/// Up to `limit` changes after `revision`, in order.
pub(crate) fn after(db: &mut dyn Sql, revision: u64, limit: usize) -> Result<Vec<FeedChange>, DbError> {
    db.query(
        "SELECT revision, event, at FROM feed WHERE revision > ?1 ORDER BY revision LIMIT ?2",
        args![revision, limit],
    )?
    .iter()
    .map(|r| {
        let text: String = r.get(1)?;
        Ok(FeedChange {
            revision: r.get(0)?,
            // A kind this build does not know reads as `Unknown`, which changes nothing.
            event: serde_json::from_str(&text).unwrap_or(FeedEvent::Unknown),
            at: r.get(2)?,
        })
    })
    .collect()
}

/// The name of the store's feed history, made once by the first replica.
pub(crate) fn epoch(db: &mut dyn Sql, fresh: &str) -> Result<String, DbError> {
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('feed_epoch', ?1) ON CONFLICT (key) DO NOTHING",
        args![fresh],
    )?;
    db.query_one("SELECT value FROM meta WHERE key = 'feed_epoch'", &[])?
        .get(0)
}
