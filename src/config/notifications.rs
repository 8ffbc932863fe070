//! The `notifications:` section: signed webhooks and Slack, which events
//! each receives, and delivery's retry settings.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use portcullis_control as control;

use super::schema::Dur;

/// An event name of an `events:` filter, e.g. `approved`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventName(pub control::NotifyEvent);

impl<'de> Deserialize<'de> for EventName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, as for `Dur`: the error then names the value's own line.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = EventName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EventName, E> {
                let all = control::NotifyEvent::ALL;
                all.iter()
                    .find(|e| e.as_str() == v)
                    .map(|e| EventName(*e))
                    .ok_or_else(|| {
                        let names: Vec<&str> = all.iter().map(|e| e.as_str()).collect();
                        E::custom(format!("unknown event `{v}`, expected one of {}", names.join(", ")))
                    })
            }
        }
        d.deserialize_str(V)
    }
}

/// `notifications:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notifications {
    /// Signed JSON webhooks.
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
    /// Slack messages and interactivity.
    pub slack: Option<Slack>,
    /// Longest one delivery attempt may take (default 10s).
    pub timeout: Option<Dur>,
    /// Attempts before a notification is given up (default 12).
    pub max_attempts: Option<u32>,
    /// Wait before the first retry, doubled after each failure (default 2s).
    pub backoff: Option<Dur>,
    /// Longest wait between attempts (default 10m).
    pub max_backoff: Option<Dur>,
}

/// One entry of `notifications.webhooks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where the JSON is POSTed.
    pub url: String,
    /// Environment variable holding the signing secret.
    pub secret_env: Option<String>,
    /// File holding the signing secret.
    pub secret_file: Option<PathBuf>,
    /// Events sent (default all).
    pub events: Option<Vec<EventName>>,
}

/// `notifications.slack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slack {
    /// Incoming-webhook URL messages are posted to.
    pub url: Option<String>,
    /// Environment variable holding the URL (it carries a secret).
    pub url_env: Option<String>,
    /// Environment variable holding Slack's signing secret.
    pub signing_secret_env: Option<String>,
    /// File holding Slack's signing secret.
    pub signing_secret_file: Option<PathBuf>,
    /// Slack user id to Portcullis user name.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Events posted (default all).
    pub events: Option<Vec<EventName>>,
}

impl Notifications {
    /// Checks what the types alone cannot; the error names the key.
    pub(super) fn validate(&self) -> Result<(), String> {
        let mut urls = std::collections::HashSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let at = format!("notifications.webhooks[{i}]");
            check_url(&format!("{at}.url"), &w.url)?;
            if !urls.insert(w.url.as_str()) {
                return Err(format!("{at}.url: the same URL is listed twice"));
            }
            match (&w.secret_env, &w.secret_file) {
                (Some(_), Some(_)) => return Err(format!("{at}: give secret_env or secret_file, not both")),
                (None, None) => {
                    return Err(format!(
                        "{at}: a signing secret is required: give secret_env or secret_file"
                    ));
                }
                _ => {}
            }
        }
        if let Some(s) = &self.slack {
            if s.url.is_some() && s.url_env.is_some() {
                return Err("notifications.slack: give url or url_env, not both".into());
            }
            if let Some(url) = &s.url {
                check_url("notifications.slack.url", url)?;
            }
            if s.signing_secret_env.is_some() && s.signing_secret_file.is_some() {
                return Err("notifications.slack: give signing_secret_env or signing_secret_file, not both".into());
            }
            if let Some((id, _)) = s
                .users
                .iter()
                .find(|(id, name)| id.trim().is_empty() || name.trim().is_empty())
            {
                return Err(format!(
                    "notifications.slack.users: \"{id}\": expected SLACK_USER_ID: portcullis_user"
                ));
            }
        }
        if self.max_attempts == Some(0) {
            return Err("notifications.max_attempts: expected 1 or more".into());
        }
        if self.timeout.is_some_and(|t| t.0.is_zero()) {
            return Err("notifications.timeout: expected more than 0s".into());
        }
        Ok(())
    }
}

/// Whether `url` is an http(s) URL with a host; the error names `at`.
fn check_url(at: &str, url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(format!("{at}: expected an http:// or https:// URL")),
    }
}
