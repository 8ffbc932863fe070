//! Where a session is cut: it waits on its grant's deadline, the grant's
//! change signal (extend, revoke) and its kill token, never on a polling
//! tick. Warnings go out at the `warn_before` offsets; the one decision to
//! end the session is returned as a `Cut`. Shared by the Postgres and SSH
//! sessions; each renders a `Notice` and a `Cut` its own way (the Postgres
//! renderings, NoticeResponse and FATAL, live here too).

use std::time::Duration;

use bytes::Bytes;
use portcullis_protocol::duration;
use portcullis_protocol::feed::{GrantEntry, UnixMillis};
use portcullis_protocol::pg::backend::{Severity, error_response, notice_response};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::clock::{instant_at, now_millis, rfc3339};
use crate::sessions::SessionHandle;

/// Why the gateway ends a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The grant's deadline passed.
    Expired {
        /// Grant id.
        grant_id: String,
        /// The deadline.
        at: UnixMillis,
    },
    /// The grant was revoked.
    Revoked {
        /// Grant id.
        grant_id: String,
        /// Who.
        by: String,
        /// Why, if given.
        reason: Option<String>,
    },
    /// `portcullis kill`.
    Killed {
        /// Who.
        by: String,
    },
    /// The grant disappeared from the feed.
    GrantGone {
        /// Grant id.
        grant_id: String,
    },
    /// The audit stopped following the session: its statements (see
    /// `portcullis_protocol::pg::statements::Lost`) or an sftp stream.
    AuditLost {
        /// Why.
        why: String,
    },
    /// The gateway is shutting down.
    Shutdown,
}

impl Cut {
    /// Label for `portcullis_session_cuts_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Cut::Expired { .. } => "expired",
            Cut::Revoked { .. } => "revoked",
            Cut::Killed { .. } => "killed",
            Cut::GrantGone { .. } => "grant_gone",
            Cut::AuditLost { .. } => "audit_lost",
            Cut::Shutdown => "shutdown",
        }
    }

    /// The sentence the engineer reads.
    pub fn text(&self, resource: &str, session_id: &str) -> String {
        match self {
            Cut::Expired { grant_id, at } => {
                format!(
                    "grant {grant_id} on \"{resource}\" expired at {}; the session is closed",
                    rfc3339(*at)
                )
            }
            Cut::Revoked { grant_id, by, reason } => format!(
                "grant {grant_id} on \"{resource}\" was revoked by {by}{}; the session is closed",
                reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
            ),
            Cut::Killed { by } => format!("session {session_id} on \"{resource}\" was killed by {by}"),
            Cut::GrantGone { grant_id } => {
                format!("grant {grant_id} on \"{resource}\" is no longer known to the gateway; the session is closed")
            }
            Cut::AuditLost { why } => {
                format!("session {session_id} on \"{resource}\" is closed: the audit cannot follow it ({why})")
            }
            Cut::Shutdown => "the Portcullis gateway is shutting down".to_owned(),
        }
    }

    /// The FATAL ErrorResponse sent before closing: SQLSTATE 57P01
    /// (admin_shutdown), or 54000 (program_limit_exceeded) when the audit
    /// could not follow.
    pub fn message(&self, resource: &str, session_id: &str) -> Bytes {
        let code = match self {
            Cut::AuditLost { .. } => "54000",
            _ => "57P01",
        };
        error_response(Severity::Fatal, code, &self.text(resource, session_id), None, None)
    }
}

/// A warning for the person in the session, before the cut or when the
/// deadline moves; each protocol renders it its own way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The sentence.
    pub text: String,
    /// What can be done about it, if anything.
    pub hint: Option<String>,
    /// A warning of the coming cut, rather than news of a moved deadline.
    pub warning: bool,
}

impl From<Notice> for Bytes {
    /// The Postgres NoticeResponse.
    fn from(n: Notice) -> Bytes {
        let severity = if n.warning { Severity::Warning } else { Severity::Notice };
        notice_response(severity, "01000", &n.text, None, n.hint.as_deref())
    }
}

/// Longest single sleep: deadlines are wall-clock times, sleeps are
/// monotonic, so a stepped system clock is noticed within this.
const RECHECK: Duration = Duration::from_secs(10);

/// Waits until the session must end, sending warnings on `notices` on the way.
pub async fn enforce<N: From<Notice>>(
    mut grant: watch::Receiver<GrantEntry>,
    warn_before: &[Duration],
    handle: &SessionHandle,
    notices: mpsc::Sender<N>,
) -> Cut {
    let resource = handle.info.resource.clone();
    let mut deadline: Option<UnixMillis> = None;
    // Offsets (ms before the deadline) not yet warned about for the current deadline.
    let mut unwarned: Vec<i64> = Vec::new();
    loop {
        let g = grant.borrow_and_update().clone();
        if let Some(r) = &g.revoked {
            return Cut::Revoked {
                grant_id: g.id,
                by: r.by.clone(),
                reason: r.reason.clone(),
            };
        }
        let now = now_millis();
        if now >= g.expires_at {
            return Cut::Expired {
                grant_id: g.id,
                at: g.expires_at,
            };
        }
        if deadline != Some(g.expires_at) {
            if let Some(old) = deadline {
                let text = format!(
                    "grant {} on \"{resource}\" was {}; the session now ends at {} (in {})",
                    g.id,
                    if g.expires_at > old { "extended" } else { "shortened" },
                    rfc3339(g.expires_at),
                    human(g.expires_at - now)
                );
                let _ = notices.try_send(
                    Notice {
                        text,
                        hint: None,
                        warning: false,
                    }
                    .into(),
                );
            }
            deadline = Some(g.expires_at);
            unwarned = warn_before.iter().map(|w| w.as_millis() as i64).collect();
            // Offsets already inside the window collapse into one warning now.
            let before = unwarned.len();
            unwarned.retain(|w| g.expires_at - w > now);
            if unwarned.len() < before {
                let _ = notices.try_send(warning(&g, &resource, now).into());
            }
        }
        let next_warning = unwarned.iter().map(|w| g.expires_at - w).min();
        let wake = next_warning.unwrap_or(g.expires_at);
        tokio::select! {
            biased;
            _ = handle.kill.cancelled() => {
                return match handle.killed_by.lock().ok().and_then(|g| g.clone()) {
                    Some(by) => Cut::Killed { by },
                    None => match handle.audit_lost.get() {
                        Some(why) => Cut::AuditLost { why: why.clone() },
                        None => Cut::Shutdown,
                    },
                };
            }
            changed = grant.changed() => {
                if changed.is_err() {
                    return Cut::GrantGone { grant_id: g.id };
                }
            }
            _ = tokio::time::sleep_until(instant_at(wake, now).min(Instant::now() + RECHECK)) => {
                // Warn only when an offset was really crossed, not when the recheck woke us.
                let now = now_millis();
                let before = unwarned.len();
                unwarned.retain(|w| g.expires_at - w > now);
                if unwarned.len() < before {
                    let _ = notices.try_send(warning(&g, &resource, now).into());
                }
            }
        }
    }
}

fn warning(g: &GrantEntry, resource: &str, now: UnixMillis) -> Notice {
    let text = format!(
        "grant {} on \"{resource}\" expires in {} (at {}); the session will be closed then",
        g.id,
        human(g.expires_at - now),
        rfc3339(g.expires_at)
    );
    let hint = format!("an approver can extend it: portcullis extend {} --by 30m", g.id);
    Notice {
        text,
        hint: Some(hint),
        warning: true,
    }
}

/// Whole seconds, rounded up, in the config's spelling.
fn human(ms: i64) -> String {
    let secs = (ms.max(0) as u64).div_ceil(1000);
    duration::format(Duration::from_secs(secs))
}
