//! `/v1/feed/...`: the grant feed over the network, for proxies only. A
//! snapshot, then a long-lived NDJSON stream of the changes after a cursor,
//! with a heartbeat line every second so the proxy knows it is in contact.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use portcullis_protocol::feed::{FeedChange, FeedLine, FeedSnapshot};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::api::extract::ProxyCaller;
use crate::error::ApiError;
use crate::feed::FeedHub;

/// How often a quiet stream sends a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Everything a proxy needs to start enforcing.
pub(crate) async fn snapshot(State(state): State<AppState>, ProxyCaller(proxy): ProxyCaller) -> Json<FeedSnapshot> {
    let snap = state.workflow.feed.snapshot();
    tracing::info!(proxy = %proxy, revision = snap.revision, "proxy took a feed snapshot");
    Json(snap)
}

/// `?after=REV[&epoch=E]`: the changes after REV, then every later one as it
/// is published; 410 when the cursor cannot be resumed.
pub(crate) async fn changes(
    State(state): State<AppState>,
    ProxyCaller(proxy): ProxyCaller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (after, epoch) = cursor(query.as_deref().unwrap_or_default())?;
    let feed = std::sync::Arc::clone(&state.workflow.feed);
    let (backlog, rx) = feed.follow(after, epoch.as_deref()).map_err(|g| {
        tracing::info!(proxy = %proxy, after, oldest = g.oldest, "feed cursor cannot be resumed; the proxy will resync");
        ApiError::CursorGone {
            after,
            oldest: g.oldest,
            latest: g.latest,
        }
    })?;
    tracing::info!(proxy = %proxy, after, backlog = backlog.len(), "proxy follows the feed");
    let stream = Stream {
        feed,
        backlog: backlog.into_iter(),
        rx,
        last: after,
        tick: tokio::time::interval(HEARTBEAT),
        stop: state.streams.clone(),
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, Stream::next_line));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// Parses `after=REV` (required) and `epoch=E` (optional).
fn cursor(query: &str) -> Result<(u64, Option<String>), ApiError> {
    let mut after = None;
    let mut epoch = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "after" => {
                after = Some(value.parse::<u64>().map_err(|_| ApiError::BadQuery {
                    detail: format!("after={value}: expected a revision number"),
                })?);
            }
            "epoch" if value.bytes().all(|b| b.is_ascii_alphanumeric()) && value.len() <= 64 => {
                epoch = Some(value.to_owned());
            }
            "epoch" => {
                return Err(ApiError::BadQuery {
                    detail: "epoch: expected the epoch of a snapshot".into(),
                });
            }
            other => {
                return Err(ApiError::BadQuery {
                    detail: format!("unknown parameter \"{other}\"; expected after=REV and optionally epoch=E"),
                });
            }
        }
    }
    let after = after.ok_or_else(|| ApiError::BadQuery {
        detail: "after=REV is required (the revision of the snapshot or of the last change applied)".into(),
    })?;
    Ok((after, epoch))
}

/// The state of one proxy's stream.
struct Stream {
    feed: std::sync::Arc<FeedHub>,
    backlog: std::vec::IntoIter<FeedChange>,
    rx: broadcast::Receiver<FeedChange>,
    /// The last revision sent, so nothing is sent twice.
    last: u64,
    tick: tokio::time::Interval,
    stop: CancellationToken,
}

impl Stream {
    /// The next NDJSON line; `None` ends the response (shutdown, or this
    /// follower fell too far behind: it reconnects and resumes from its cursor).
    async fn next_line(mut self) -> Option<(Result<Bytes, std::io::Error>, Stream)> {
        if let Some(change) = self.backlog.next() {
            self.last = change.revision;
            return Some((Ok(line(&FeedLine::Change(change))), self));
        }
        loop {
            let next = tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = self.tick.tick() => {
                    let beat = FeedLine::Heartbeat { heartbeat: self.feed.heartbeat() };
                    return Some((Ok(line(&beat)), self));
                }
                next = self.rx.recv() => next,
            };
            match next {
                Ok(change) if change.revision <= self.last => continue,
                Ok(change) => {
                    self.last = change.revision;
                    return Some((Ok(line(&FeedLine::Change(change))), self));
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "a proxy's feed stream fell behind; ending it so it resumes");
                    return None;
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

fn line(l: &FeedLine) -> Bytes {
    // Feed types always serialize; an empty line would only be skipped by the reader.
    let mut out = serde_json::to_vec(l).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::cursor;

    #[test]
    fn cursor_query() {
        assert_eq!(cursor("after=5").expect("after").0, 5);
        assert_eq!(cursor("after=0&epoch=ab12").expect("epoch").1.as_deref(), Some("ab12"));
        assert!(cursor("").is_err());
        assert!(cursor("after=-1").is_err());
        assert!(cursor("after=1&since=2").is_err());
    }
}
