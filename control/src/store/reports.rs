//! The `proxy_sessions` table: on a shared (PostgreSQL) store, the latest
//! session report of each remote proxy, whichever replica it reports to,
//! so `sessions` and `kill` on any replica see every proxy's sessions.

use portcullis_protocol::feed::UnixMillis;
use portcullis_protocol::sessions::SessionInfo;

use crate::store::{DbError, Sql, args};

/// Replaces what `proxy` reported last with `sessions`, made at `at`.
pub(crate) fn save(db: &mut dyn Sql, proxy: &str, at: UnixMillis, sessions: &[SessionInfo]) -> Result<(), DbError> {
    let text = serde_json::to_string(sessions).map_err(|e| DbError::Invalid(format!("session report: {e}")))?;
    db.execute(
        "INSERT INTO proxy_sessions (proxy, reported_at, sessions) VALUES (?1, ?2, ?3)
         ON CONFLICT (proxy) DO UPDATE SET reported_at = excluded.reported_at, sessions = excluded.sessions",
        args![proxy, at, text],
    )?;
    Ok(())
}

/// Every report made at `since` or later: proxy, when, sessions.
pub(crate) fn since(
    db: &mut dyn Sql,
    since: UnixMillis,
) -> Result<Vec<(String, UnixMillis, Vec<SessionInfo>)>, DbError> {
    db.query(
        "SELECT proxy, reported_at, sessions FROM proxy_sessions WHERE reported_at >= ?1 ORDER BY proxy",
        args![since],
    )?
    .iter()
    .map(|r| {
        let text: String = r.get(2)?;
        let sessions = serde_json::from_str(&text).map_err(|e| DbError::Invalid(format!("session report: {e}")))?;
        Ok((r.get(0)?, r.get(1)?, sessions))
    })
    .collect()
}
