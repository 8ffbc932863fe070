//! Notifications: every workflow event that people should hear of becomes one
//! outbox row per configured destination, written by `Workflow::emit` in the
//! event's own transaction (`outbox.rs`); a sender task (`sender.rs`) delivers
//! the rows as signed JSON webhooks (`webhook.rs`) or Slack Block Kit
//! messages (`slack.rs`), retrying with backoff; Slack's buttons come back
//! through the interactivity endpoint and `chat.rs`.

pub(crate) mod chat;
pub(crate) mod message;
pub(crate) mod outbox;
pub(crate) mod sender;
pub(crate) mod settings;
pub(crate) mod slack;
pub(crate) mod webhook;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use crate::store::Sql;
use portcullis_protocol::feed::UnixMillis;
use portcullis_protocol::secret::Secret;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::catalog::Catalog;
use crate::error::{ApiError, ControlError};
use crate::ids::{self, hex};
use crate::notify::settings::{NotifyEvent, NotifySettings};
use crate::notify::slack::ReplayGuard;
use crate::workflow::events::Event;

/// How a destination is spoken to.
pub(crate) enum Target {
    /// A signed JSON webhook.
    Webhook {
        /// The HMAC key.
        secret: Secret<String>,
    },
    /// A Slack incoming webhook.
    Slack,
}

/// One place notifications go.
pub(crate) struct Destination {
    /// `webhook:HASH` or `slack:HASH`, HASH from the URL: stable across
    /// restarts and reordering, and no secret in the store or the logs.
    pub key: String,
    /// `webhook` or `slack`: the metric label.
    pub kind: &'static str,
    /// Where to POST.
    pub url: Secret<String>,
    /// Events it takes; `None`: all.
    pub events: Option<BTreeSet<NotifyEvent>>,
    /// How to speak to it.
    pub target: Target,
}

impl Destination {
    fn new(kind: &'static str, url: &Secret<String>, events: Option<BTreeSet<NotifyEvent>>, target: Target) -> Self {
        let digest = Sha256::digest(url.expose().as_bytes());
        Destination {
            key: format!("{kind}:{}", hex(digest.get(..8).unwrap_or_default())),
            kind,
            url: url.clone(),
            events,
            target,
        }
    }

    fn wants(&self, event: NotifyEvent) -> bool {
        self.events.as_ref().is_none_or(|e| e.contains(&event))
    }
}

/// What chat callbacks need: the signing secret, the user map and the roles chat may not approve.
pub(crate) struct Chat {
    /// Slack's signing secret.
    pub signing_secret: Secret<String>,
    /// Slack user id to Portcullis user name.
    pub users: BTreeMap<String, String>,
    /// `(resource, role)` pairs besides roles named `admin` that chat never approves.
    pub cli_only_roles: BTreeSet<(String, String)>,
    /// Callbacks already accepted.
    pub replays: ReplayGuard,
}

impl Chat {
    /// Whether chat may approve a request for `role` of `resource`: never a
    /// role named `admin`, nor one marked `chat_approval: false`.
    pub(crate) fn may_approve_role(&self, resource: &str, role: &str) -> bool {
        role != "admin" && !self.cli_only_roles.contains(&(resource.to_owned(), role.to_owned()))
    }
}

/// Destinations, retry timing, chat settings, and the sender's wake-up.
pub(crate) struct Notifier {
    /// Where notifications go.
    pub destinations: Vec<Destination>,
    /// Slack interactivity, when a signing secret is configured.
    pub chat: Option<Chat>,
    /// Longest delivery attempt.
    pub timeout: Duration,
    /// Attempts before giving up.
    pub max_attempts: u32,
    /// First retry delay, doubled per failed attempt.
    pub backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Portcullis user name to Slack user id (from `notifications.slack.users`):
    /// who Slack messages mention, so the people concerned are pinged.
    pub slack_mentions: BTreeMap<String, String>,
    /// Wakes the sender after a commit that may have queued rows.
    pub wake: Notify,
    /// Shared by deliveries and chat follow-ups.
    pub http: reqwest::Client,
}

impl Notifier {
    /// Sets destinations up from the settings; refuses two with the same URL.
    pub(crate) fn new(s: NotifySettings) -> Result<Notifier, ControlError> {
        let mut destinations: Vec<Destination> = s
            .webhooks
            .into_iter()
            .map(|w| Destination::new("webhook", &w.url, w.events, Target::Webhook { secret: w.secret }))
            .collect();
        let mut chat = None;
        let mut slack_mentions = BTreeMap::new();
        if let Some(slack) = s.slack {
            for (slack_id, name) in &slack.users {
                // Several Slack ids for one user: the first (by id) is mentioned.
                slack_mentions.entry(name.clone()).or_insert_with(|| slack_id.clone());
            }
            if let Some(url) = &slack.url {
                destinations.push(Destination::new("slack", url, slack.events, Target::Slack));
            }
            chat = slack.signing_secret.map(|signing_secret| Chat {
                signing_secret,
                users: slack.users,
                cli_only_roles: slack.cli_only_roles,
                replays: ReplayGuard::default(),
            });
        }
        let mut keys = HashSet::new();
        for d in &destinations {
            if !keys.insert(d.key.clone()) {
                return Err(ControlError::DuplicateDestination { kind: d.kind });
            }
        }
        // Redirects are not followed: a signed body goes only where the config says.
        let http = reqwest::Client::builder()
            .timeout(s.timeout)
            .connect_timeout(s.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ControlError::HttpClient)?;
        Ok(Notifier {
            destinations,
            chat,
            timeout: s.timeout,
            max_attempts: s.max_attempts.max(1),
            backoff: s.backoff,
            max_backoff: s.max_backoff.max(s.backoff),
            slack_mentions,
            wake: Notify::new(),
            http,
        })
    }

    /// Queues the notifications of `event` in the caller's transaction: one
    /// row per destination that takes its kind.
    pub(crate) fn enqueue(
        &self,
        conn: &mut dyn Sql,
        catalog: &Catalog,
        at: UnixMillis,
        actor: &str,
        subject: &str,
        event: &Event<'_>,
    ) -> Result<(), ApiError> {
        if self.destinations.is_empty() {
            return Ok(());
        }
        let Some((kind, doc)) = message::build(conn, catalog, at, actor, subject, event)? else {
            return Ok(());
        };
        for d in self.destinations.iter().filter(|d| d.wants(kind)) {
            let id = ids::new_long_id(ids::NOTIFICATION)?;
            let mut doc = doc.clone();
            if let Some(obj) = doc.as_object_mut() {
                obj.insert("id".into(), id.clone().into());
            }
            let row = outbox::Row {
                id,
                destination: d.key.clone(),
                event: kind.as_str().to_owned(),
                body: doc.to_string(),
                attempts: 0,
            };
            outbox::insert(conn, &row, subject, at)?;
        }
        Ok(())
    }

    /// The wait after failed attempt number `attempt` (from 1): `backoff`
    /// doubled each time, at most `max_backoff`.
    pub(crate) fn retry_after(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// The destination with this key.
    pub(crate) fn destination(&self, key: &str) -> Option<&Destination> {
        self.destinations.iter().find(|d| d.key == key)
    }
}

#[cfg(test)]
mod tests;
