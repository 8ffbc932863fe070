//! Delivers the proxy's audit events to the control plane
//! (`POST /v1/audit/events`, a JSON array; 2xx only once they are durable,
//! and the control plane skips ids it already has, so a resend is harmless).
//! `deliver` is the blocking closure the audit spool's shipper thread
//! (`audit::spool`) calls per batch.

use std::sync::Arc;

use portcullis_protocol::audit::AuditEvent;
use tokio::runtime::Handle;

use super::client::ControlClient;

/// Events per POST.
pub const BATCH: usize = 500;

/// A blocking delivery of one batch through `client`, for a shipper thread
/// (not a runtime thread) to call.
pub fn deliver(client: Arc<ControlClient>, runtime: Handle) -> impl FnMut(&[AuditEvent]) -> Result<(), String> + Send {
    move |events: &[AuditEvent]| {
        runtime
            .block_on(client.post_json("/v1/audit/events", events))
            .map_err(|e| e.to_string())
    }
}
