//! Delivers the proxy's audit events to the control plane
//! (`POST /v1/audit/events`, a JSON array; 2xx only once they are durable,
//! and the control plane skips ids it already has, so a resend is harmless).
//! `deliver` is the blocking closure the audit spool's shipper thread
//! (`audit::spool`) calls per batch. A 400, 413 or 422 refuses the events
//! themselves; any other failure (unreachable, 5xx, this proxy's token
//! refused) is worth trying again as it is.

use std::sync::Arc;

use portcullis_protocol::audit::AuditEvent;
use tokio::runtime::Handle;

use super::client::{CallError, ControlClient};
use crate::audit::spool::Undelivered;

/// Events per POST.
pub const BATCH: usize = 500;

/// A blocking delivery of one batch through `client`, for a shipper thread
/// (not a runtime thread) to call.
pub fn deliver(
    client: Arc<ControlClient>,
    runtime: Handle,
) -> impl FnMut(&[AuditEvent]) -> Result<(), Undelivered> + Send {
    move |events: &[AuditEvent]| {
        runtime
            .block_on(client.post_json("/v1/audit/events", events))
            .map_err(|e| match e {
                CallError::Status {
                    status: 400 | 413 | 422,
                    ..
                } => Undelivered::Refused(e.to_string()),
                e => Undelivered::Retry(e.to_string()),
            })
    }
}
