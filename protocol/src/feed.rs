//! The grant feed: what the control plane tells proxies about users, grants
//! and pending requests. In `serve` it travels in-process; the same types
//! will travel over the network to remote proxies.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch: the feed's one clock unit.
pub type UnixMillis = i64;

/// An engineer as a proxy needs to know them: a name and a SCRAM verifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    /// Login name, as typed in `user=`.
    pub name: String,
    /// `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`, as PostgreSQL stores it.
    pub scram_verifier: String,
    /// Registered SSH public keys, one OpenSSH line each (absent from older peers: none).
    #[serde(default)]
    pub ssh_keys: Vec<String>,
}

/// Why a grant stopped early.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Who revoked it.
    pub by: String,
    /// Their reason, if any.
    pub reason: Option<String>,
    /// When.
    pub at: UnixMillis,
}

/// One grant: `user` may use `role` on `resource` from `starts_at` until `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantEntry {
    /// Grant id, e.g. `grt_3f9a1c2b7d4e`.
    pub id: String,
    /// The request it came from.
    pub request_id: String,
    /// Engineer.
    pub user: String,
    /// Resource name from the config.
    pub resource: String,
    /// Role name from the resource's `roles`.
    pub role: String,
    /// Start of validity (approval time or the scheduled start).
    pub starts_at: UnixMillis,
    /// The deadline.
    pub expires_at: UnixMillis,
    /// Set once the grant is revoked.
    pub revoked: Option<Revocation>,
    /// The request's reason, for the audit of its sessions.
    #[serde(default)]
    pub reason: Option<String>,
    /// Who approved the request (an auto-approve rule names itself).
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Self-granted with break-glass: its sessions' audit events say so.
    #[serde(default)]
    pub break_glass: bool,
}

/// A request still waiting for approval, so a proxy can say "pending" instead of "no grant".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEntry {
    /// Request id, e.g. `req_3f9a1c2b7d4e`.
    pub request_id: String,
    /// Engineer.
    pub user: String,
    /// Resource name.
    pub resource: String,
    /// Requested role.
    pub role: String,
    /// The request's reason, for the audit of the refusals it explains.
    #[serde(default)]
    pub reason: Option<String>,
}

/// One change to what proxies hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeedEvent {
    /// A user was added or their verifier changed.
    User(UserEntry),
    /// A user was removed; their sessions may no longer start.
    UserRemoved {
        /// Login name.
        name: String,
    },
    /// A grant was created, extended or revoked (an upsert by id).
    Grant(GrantEntry),
    /// A request was made and awaits approval.
    Pending(PendingEntry),
    /// A pending request was decided, cancelled or expired.
    PendingClosed {
        /// Request id.
        request_id: String,
    },
    /// End this live session, on whichever proxy holds it (`portcullis kill` in split mode).
    KillSession {
        /// Session id.
        id: String,
        /// Who killed it, for the client's FATAL text.
        by: String,
    },
    /// A kind this build does not know (sent by a newer control plane): skipped.
    #[serde(other)]
    Unknown,
}

/// A change with its position in the feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedChange {
    /// Strictly increasing per control plane.
    pub revision: u64,
    /// What changed.
    pub event: FeedEvent,
    /// When the control plane published it (absent from older peers), for sync lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<UnixMillis>,
}

/// Everything a proxy needs to start enforcing, as of `revision`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedSnapshot {
    /// Changes with a revision at or below this are already included.
    pub revision: u64,
    /// Which history `revision` counts in: a control plane that restarts starts a
    /// new one, and a cursor from another history is never resumed (absent: unknown).
    #[serde(default)]
    pub epoch: String,
    /// All users.
    pub users: Vec<UserEntry>,
    /// Live and scheduled grants, and recently ended ones (so refusals can say "expired"/"revoked").
    pub grants: Vec<GrantEntry>,
    /// Pending requests.
    pub pending: Vec<PendingEntry>,
}

/// A line of the network feed's change stream (NDJSON): a change, or a
/// heartbeat sent about once a second so a proxy knows it is in contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[allow(
    clippy::large_enum_variant,
    reason = "one line lives at a time, and a change is the common line"
)]
pub enum FeedLine {
    /// `{"heartbeat": {...}}`.
    Heartbeat {
        /// The control plane's position and clock.
        heartbeat: Heartbeat,
    },
    /// A `FeedChange` object.
    Change(FeedChange),
}

/// The control plane's position and clock, sent when nothing changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The latest revision published.
    pub revision: u64,
    /// The control plane's clock.
    pub now: UnixMillis,
    /// The feed's history (see `FeedSnapshot::epoch`).
    #[serde(default)]
    pub epoch: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_event_kinds_and_heartbeats_parse() {
        let line = r#"{"revision":7,"event":{"kind":"from_the_future","x":1}}"#;
        let parsed: FeedLine = serde_json::from_str(line).expect("unknown kind");
        assert!(matches!(
            parsed,
            FeedLine::Change(FeedChange {
                revision: 7,
                event: FeedEvent::Unknown,
                at: None
            })
        ));
        let hb: FeedLine = serde_json::from_str(r#"{"heartbeat":{"revision":3,"now":5}}"#).expect("heartbeat");
        assert!(matches!(
            hb,
            FeedLine::Heartbeat {
                heartbeat: Heartbeat { revision: 3, .. }
            }
        ));
        let kill = serde_json::to_string(&FeedEvent::KillSession {
            id: "ses_1".into(),
            by: "carol".into(),
        })
        .expect("kill");
        assert_eq!(kill, r#"{"kind":"kill_session","id":"ses_1","by":"carol"}"#);
    }
}
