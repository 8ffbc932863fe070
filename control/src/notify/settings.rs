//! What notifications are configured with: webhook and Slack destinations,
//! the events each wants, retry timing, and the Slack users who may act from chat.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use portcullis_protocol::secret::Secret;
use serde::Deserialize;

/// A workflow event that notifications carry, spelt as in the config's
/// `events:` filters and in the webhook body's `event` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// A request waits for approvers.
    Requested,
    /// A request was approved (by its last approver or an auto-approve rule); a grant exists.
    Approved,
    /// An approver denied a request.
    Denied,
    /// A request expired unanswered (the policy's `pending_ttl`).
    Expired,
    /// The requester withdrew a pending request.
    Cancelled,
    /// A request waited long enough for the next approvers to be asked.
    Escalated,
    /// Someone granted themselves access with break-glass.
    BreakGlass,
    /// A grant was ended early.
    Revoked,
    /// A grant's deadline moved.
    Extended,
    /// A grant ends within five minutes.
    ExpiringSoon,
}

/// Who a notification is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Those who may approve the request.
    Approvers,
    /// The user who asked for access.
    Requester,
}

impl NotifyEvent {
    /// Every event, in the order of the docs.
    pub const ALL: [NotifyEvent; 10] = [
        NotifyEvent::Requested,
        NotifyEvent::Approved,
        NotifyEvent::Denied,
        NotifyEvent::Expired,
        NotifyEvent::Cancelled,
        NotifyEvent::Escalated,
        NotifyEvent::BreakGlass,
        NotifyEvent::Revoked,
        NotifyEvent::Extended,
        NotifyEvent::ExpiringSoon,
    ];

    /// The spelling in config and in webhook bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Requested => "requested",
            NotifyEvent::Approved => "approved",
            NotifyEvent::Denied => "denied",
            NotifyEvent::Expired => "expired",
            NotifyEvent::Cancelled => "cancelled",
            NotifyEvent::Escalated => "escalated",
            NotifyEvent::BreakGlass => "break_glass",
            NotifyEvent::Revoked => "revoked",
            NotifyEvent::Extended => "extended",
            NotifyEvent::ExpiringSoon => "expiring_soon",
        }
    }

    /// Who should hear of it: approvers act on requests (and watch
    /// break-glass); the requester hears every outcome.
    pub fn audience(self) -> Audience {
        match self {
            NotifyEvent::Requested | NotifyEvent::Escalated | NotifyEvent::BreakGlass | NotifyEvent::Cancelled => {
                Audience::Approvers
            }
            NotifyEvent::Approved
            | NotifyEvent::Denied
            | NotifyEvent::Expired
            | NotifyEvent::Revoked
            | NotifyEvent::Extended
            | NotifyEvent::ExpiringSoon => Audience::Requester,
        }
    }
}

/// `notifications:` of the config, as the control plane uses it.
#[derive(Clone, Debug)]
pub struct NotifySettings {
    /// Signed JSON webhooks.
    pub webhooks: Vec<WebhookSettings>,
    /// The Slack destination and the chat approvals it allows.
    pub slack: Option<SlackSettings>,
    /// Longest a delivery attempt may take, connecting included.
    pub timeout: Duration,
    /// Attempts before a notification is given up on (marked failed).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled after each failed attempt.
    pub backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            webhooks: Vec::new(),
            slack: None,
            timeout: Duration::from_secs(10),
            max_attempts: 12,
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(600),
        }
    }
}

/// One webhook: where, with which signing secret, for which events.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// `http://` or `https://` URL; kept secret since URLs often carry tokens.
    pub url: Secret<String>,
    /// Key of the `X-Portcullis-Signature` HMAC.
    pub secret: Secret<String>,
    /// Events sent; `None`: all.
    pub events: Option<BTreeSet<NotifyEvent>>,
}

/// `notifications.slack:`.
#[derive(Clone, Debug, Default)]
pub struct SlackSettings {
    /// Incoming-webhook URL messages are posted to; `None`: no messages, callbacks only.
    pub url: Option<Secret<String>>,
    /// Slack's signing secret; `None`: interactivity callbacks are refused.
    pub signing_secret: Option<Secret<String>>,
    /// Slack user id (e.g. `U012ABC`) to Portcullis user name.
    pub users: BTreeMap<String, String>,
    /// Events posted; `None`: all.
    pub events: Option<BTreeSet<NotifyEvent>>,
    /// `(resource, role)` pairs never approved from chat, besides every role named `admin`.
    pub cli_only_roles: BTreeSet<(String, String)>,
}
