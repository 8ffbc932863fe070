//! Tells the control plane which sessions this proxy holds, so `portcullis
//! sessions` and `kill` work across the split: the whole list every
//! `EVERY`, and soon after a session starts or ends.

use std::sync::Arc;
use std::time::Duration;

use portcullis_protocol::sessions::SessionDirectory;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::client::ControlClient;
use crate::sessions::SessionRegistry;

/// Report interval when nothing changes (the control plane drops a proxy silent for ~3 of them).
pub const EVERY: Duration = Duration::from_secs(2);
/// Changes within this window share one report.
const SETTLE: Duration = Duration::from_millis(100);

/// Reports the live sessions until `shutdown`.
pub async fn run(client: Arc<ControlClient>, sessions: Arc<SessionRegistry>, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        let body = json!({ "sessions": sessions.list() });
        match client.post_json("/v1/proxies/sessions", &body).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                // Logged once per outage: the feed's own warnings say the rest.
                tracing::warn!(error = %e, "cannot report live sessions to the control plane");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
            _ = sessions.changed() => tokio::time::sleep(SETTLE).await,
        }
    }
}
