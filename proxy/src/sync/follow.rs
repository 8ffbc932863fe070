//! Where the feed is followed over the network: take a snapshot, then read
//! the change stream after its revision and apply each line to the grant
//! table; on a lost connection reconnect (capped backoff, next URL) and
//! resume from the cursor; on 410 (cursor too old, or the control plane
//! restarted) resync from a new snapshot. Every line counts as contact.

use std::sync::Arc;
use std::time::Duration;

use portcullis_protocol::feed::{FeedEvent, FeedLine, FeedSnapshot};
use portcullis_protocol::sessions::SessionDirectory;
use tokio_util::sync::CancellationToken;

use super::client::{CallError, ControlClient, refused};
use super::contact::Contact;
use super::metrics::FeedMetrics;
use crate::clock::now_millis;
use crate::grants::table::GrantTable;
use crate::sessions::SessionRegistry;

/// First wait after a failure; doubled up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A stream silent this long (heartbeats come every second) is dead.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest line accepted from the stream.
const MAX_LINE: usize = 4 * 1024 * 1024;

/// Where the follower stands: the feed's history and the last revision applied.
#[derive(Clone, Debug)]
struct Cursor {
    epoch: String,
    revision: u64,
}

/// Why one pass of following ended.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("{0}")]
    Stream(String),
}

/// Follows the feed until `shutdown`.
pub struct Follower {
    /// The control plane.
    pub client: Arc<ControlClient>,
    /// Filled from the feed.
    pub table: Arc<GrantTable>,
    /// Where `KillSession` events are carried out.
    pub sessions: Arc<SessionRegistry>,
    /// Marked on every line.
    pub contact: Arc<Contact>,
    /// Revision, lag, reconnects.
    pub metrics: FeedMetrics,
}

impl Follower {
    /// Runs until `shutdown`: snapshot, stream, reconnect, resume.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut cursor: Option<Cursor> = None;
        let mut backoff = MIN_BACKOFF;
        let mut snapshots = 0u64;
        loop {
            let pass = tokio::select! {
                _ = shutdown.cancelled() => return,
                pass = self.pass(&mut cursor, &mut snapshots) => pass,
            };
            match pass {
                // A clean end (the control plane ended the stream, or asked for a resync): at once.
                Ok(()) => backoff = MIN_BACKOFF,
                Err(e) => {
                    self.metrics.reconnects.inc();
                    tracing::warn!(control = %self.client.current_url(), error = %e, retry_in = ?backoff, "grant feed connection lost; keeping what we hold");
                    self.client.rotate();
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One connection: a snapshot when there is no cursor, then the stream.
    async fn pass(&self, cursor: &mut Option<Cursor>, snapshots: &mut u64) -> Result<(), FollowError> {
        let at = match cursor.clone() {
            Some(c) => c,
            None => {
                let snap = self.snapshot().await?;
                *snapshots += 1;
                if *snapshots > 1 {
                    self.metrics.resyncs.inc();
                }
                let c = Cursor {
                    epoch: snap.epoch.clone(),
                    revision: snap.revision,
                };
                tracing::info!(control = %self.client.current_url(), revision = snap.revision, grants = snap.grants.len(), "grant feed snapshot applied");
                self.table.apply_snapshot(snap);
                self.metrics.revision.set(i64::try_from(c.revision).unwrap_or(i64::MAX));
                self.contact.synced();
                *cursor = Some(c.clone());
                c
            }
        };
        let path = format!("/v1/feed/changes?after={}&epoch={}", at.revision, at.epoch);
        let mut resp = self.client.get(&path).await?;
        let status = resp.status().as_u16();
        if status == 410 {
            tracing::info!(
                revision = at.revision,
                "the control plane cannot resume our cursor; resyncing from a snapshot"
            );
            *cursor = None;
            return Ok(());
        }
        if !resp.status().is_success() {
            return Err(refused(self.client.current_url().to_owned(), resp).await.into());
        }
        self.contact.heard();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(READ_TIMEOUT, resp.chunk()).await {
                Err(_) => return Err(FollowError::Stream(format!("no line for {READ_TIMEOUT:?}"))),
                Ok(Err(e)) => return Err(FollowError::Stream(format!("reading the stream: {e}"))),
                Ok(Ok(None)) => return Err(FollowError::Stream("the control plane ended the stream".into())),
                Ok(Ok(Some(c))) => c,
            };
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                if !self.line(&line, cursor)? {
                    return Ok(());
                }
            }
            if buf.len() > MAX_LINE {
                return Err(FollowError::Stream(format!("a line longer than {MAX_LINE} bytes")));
            }
        }
    }

    /// Applies one NDJSON line; `false` asks for a resync.
    fn line(&self, line: &[u8], cursor: &mut Option<Cursor>) -> Result<bool, FollowError> {
        let text = line.trim_ascii();
        if text.is_empty() {
            return Ok(true);
        }
        let parsed: FeedLine =
            serde_json::from_slice(text).map_err(|e| FollowError::Stream(format!("unreadable feed line: {e}")))?;
        self.contact.heard();
        let Some(c) = cursor.as_mut() else {
            return Ok(false);
        };
        match parsed {
            FeedLine::Heartbeat { heartbeat } => {
                if !heartbeat.epoch.is_empty() && heartbeat.epoch != c.epoch {
                    *cursor = None;
                    return Ok(false);
                }
            }
            FeedLine::Change(change) => {
                if change.revision != c.revision + 1 {
                    // A gap means a missed change: never guess, resync.
                    tracing::warn!(
                        expected = c.revision + 1,
                        got = change.revision,
                        "gap in the grant feed; resyncing"
                    );
                    *cursor = None;
                    return Ok(false);
                }
                if let FeedEvent::KillSession { id, by } = &change.event
                    && self.sessions.kill(id, by)
                {
                    tracing::info!(session = %id, by = %by, "session killed by the control plane");
                }
                if let Some(at) = change.at {
                    let lag = now_millis().saturating_sub(at).max(0);
                    self.metrics.lag.observe(lag as f64 / 1000.0);
                }
                c.revision = change.revision;
                self.table.apply(change);
                self.metrics.revision.set(i64::try_from(c.revision).unwrap_or(i64::MAX));
            }
        }
        Ok(true)
    }

    async fn snapshot(&self) -> Result<FeedSnapshot, FollowError> {
        let resp = self.client.get("/v1/feed/snapshot").await?;
        if !resp.status().is_success() {
            return Err(refused(self.client.current_url().to_owned(), resp).await.into());
        }
        resp.json::<FeedSnapshot>()
            .await
            .map_err(|e| FollowError::Stream(format!("unreadable snapshot: {e}")))
    }
}

/// Sets the staleness gauge every second until `shutdown`.
pub async fn watch_staleness(contact: Arc<Contact>, metrics: FeedMetrics, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => metrics.staleness.set(contact.silent_for().as_secs_f64()),
        }
    }
}
