//! Slack: the Block Kit message posted for each notification (with Approve
//! and Deny buttons while a request is pending), and the checks on Slack's
//! interactivity callbacks: the signing secret over `v0:TIMESTAMP:BODY`
//! (<https://api.slack.com/authentication/verifying-requests-from-slack>),
//! a five-minute timestamp window, a refusal of exact replays, and the
//! `block_actions` payload.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use hmac::Mac;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::notify::Chat;
use crate::notify::webhook::mac;

/// Oldest (or furthest in the future) callback timestamp accepted, in seconds.
pub(crate) const WINDOW_S: i64 = 5 * 60;
/// `action_id` of the Approve button.
pub(crate) const APPROVE: &str = "portcullis.approve";
/// `action_id` of the Deny button.
pub(crate) const DENY: &str = "portcullis.deny";
/// Signatures remembered to refuse replays; older ones fall out of the window anyway.
const REPLAY_CAPACITY: usize = 10_000;
/// Longest free text put in one message field (Slack caps a field at 2000).
const MAX_FIELD: usize = 1000;

/// Why a callback was refused before any workflow rule was applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// No signing secret is configured.
    #[error("Slack interactivity is not configured: set notifications.slack.signing_secret_env or signing_secret_file")]
    NotConfigured,
    /// A signing header is missing.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// The timestamp header is not a number.
    #[error("X-Slack-Request-Timestamp is not a Unix time in seconds")]
    BadTimestamp,
    /// The timestamp is outside the window: a replay, or a clock far off.
    #[error("X-Slack-Request-Timestamp is {age_s}s away from now (more than {WINDOW_S}s): stale callback refused")]
    Stale {
        /// Seconds between the timestamp and now.
        age_s: i64,
    },
    /// The signature does not match the body and the signing secret.
    #[error("X-Slack-Signature does not match the body and the signing secret")]
    BadSignature,
    /// The same signed callback came before.
    #[error("this callback was already received: replay refused")]
    Replayed,
    /// The body is not the payload expected; names the field.
    #[error("{field}: {why}")]
    BadPayload {
        /// The field at fault, e.g. `payload.actions[0].value`.
        field: String,
        /// What is wrong.
        why: String,
    },
}

impl Refusal {
    /// A short label for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Refusal::NotConfigured => "not_configured",
            Refusal::MissingHeader(_) | Refusal::BadTimestamp | Refusal::BadSignature => "bad_signature",
            Refusal::Stale { .. } => "stale",
            Refusal::Replayed => "replayed",
            Refusal::BadPayload { .. } => "malformed",
        }
    }
}

/// Checks `X-Slack-Signature: v0=HEX` over `v0:{timestamp}:{body}` keyed with
/// `secret`, and that `timestamp` is within the window of `now_s`.
pub(crate) fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_s: i64,
) -> Result<(), Refusal> {
    let timestamp = timestamp.ok_or(Refusal::MissingHeader("X-Slack-Request-Timestamp"))?;
    let signature = signature.ok_or(Refusal::MissingHeader("X-Slack-Signature"))?;
    let ts: i64 = timestamp.trim().parse().map_err(|_| Refusal::BadTimestamp)?;
    let age_s = now_s.saturating_sub(ts).saturating_abs();
    if age_s > WINDOW_S {
        return Err(Refusal::Stale { age_s });
    }
    let tag = signature
        .strip_prefix("v0=")
        .and_then(unhex)
        .ok_or(Refusal::BadSignature)?;
    let mut m = mac(secret);
    m.update(b"v0:");
    m.update(timestamp.as_bytes());
    m.update(b":");
    m.update(body);
    // Constant-time comparison.
    m.verify_slice(&tag).map_err(|_| Refusal::BadSignature)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    s.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some((digit(*hi)? << 4) | digit(*lo)?),
            _ => None,
        })
        .collect()
}

/// Signatures of callbacks accepted within the window: the same signed body
/// twice is a replay.
#[derive(Default)]
pub(crate) struct ReplayGuard {
    seen: Mutex<HashMap<String, i64>>,
}

impl ReplayGuard {
    /// Remembers `signature` seen at `now_s`; false when it was seen already.
    pub(crate) fn first_time(&self, signature: &str, now_s: i64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains_key(signature) {
            return false;
        }
        if seen.len() >= REPLAY_CAPACITY {
            // Entries past the window cannot be replayed: the timestamp check refuses them.
            seen.retain(|_, at| now_s.saturating_sub(*at) <= 2 * WINDOW_S);
            if seen.len() >= REPLAY_CAPACITY
                && let Some(oldest) = seen.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone())
            {
                seen.remove(&oldest);
            }
        }
        seen.insert(signature.to_owned(), now_s);
        true
    }
}

/// What the clicker asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The Approve button.
    Approve,
    /// The Deny button.
    Deny,
}

/// One button click, as Slack sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Action {
    /// Slack user id of the clicker.
    pub slack_user: String,
    /// Approve or deny.
    pub decision: Decision,
    /// The request id the button carries.
    pub request_id: String,
    /// Where Slack takes a follow-up message, if given.
    pub response_url: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    user: SlackUser,
    #[serde(default)]
    actions: Vec<SlackAction>,
    response_url: Option<String>,
}

#[derive(Deserialize)]
struct SlackUser {
    id: String,
}

#[derive(Deserialize)]
struct SlackAction {
    action_id: String,
    value: Option<String>,
}

fn bad(field: &str, why: impl Into<String>) -> Refusal {
    Refusal::BadPayload {
        field: field.to_owned(),
        why: why.into(),
    }
}

/// Reads the form-encoded `payload=JSON` of a `block_actions` callback.
pub(crate) fn parse_action(body: &[u8]) -> Result<Action, Refusal> {
    let payload = form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| bad("payload", "missing: expected a form field payload=JSON"))?;
    let mut de = serde_json::Deserializer::from_str(&payload);
    let p: Payload = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        // `?` is where serde_path_to_error stands before the syntax gives a field.
        let field = if matches!(path.as_str(), "." | "?" | "") {
            "payload".to_owned()
        } else {
            format!("payload.{path}")
        };
        bad(&field, e.into_inner().to_string())
    })?;
    if p.kind != "block_actions" {
        return Err(bad(
            "payload.type",
            format!("expected block_actions, got \"{}\"", p.kind),
        ));
    }
    if p.user.id.trim().is_empty() {
        return Err(bad("payload.user.id", "empty"));
    }
    let [action] = p.actions.as_slice() else {
        return Err(bad("payload.actions", "expected exactly one action"));
    };
    let decision = match action.action_id.as_str() {
        APPROVE => Decision::Approve,
        DENY => Decision::Deny,
        other => {
            return Err(bad(
                "payload.actions[0].action_id",
                format!("expected {APPROVE} or {DENY}, got \"{other}\""),
            ));
        }
    };
    let request_id = action
        .value
        .as_deref()
        .map(str::trim)
        .filter(|v| v.starts_with("req_") && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .ok_or_else(|| {
            bad(
                "payload.actions[0].value",
                "expected a request id such as req_0123456789ab",
            )
        })?;
    Ok(Action {
        slack_user: p.user.id,
        decision,
        request_id: request_id.to_owned(),
        response_url: p.response_url,
    })
}

/// The answer the clicker sees (only them: ephemeral).
pub(crate) fn answer(text: &str) -> Value {
    json!({ "response_type": "ephemeral", "replace_original": false, "text": text })
}

/// Escapes text for Slack's mrkdwn, so user input cannot mention `@channel`
/// or forge links; cut to `MAX_FIELD` characters, escapes included.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_FIELD));
    let mut len = 0;
    for c in text.chars() {
        let piece = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            _ => "",
        };
        let width = if piece.is_empty() { 1 } else { piece.len() };
        if len + width > MAX_FIELD {
            out.push('…');
            break;
        }
        len += width;
        if piece.is_empty() {
            out.push(c);
        } else {
            out.push_str(piece);
        }
    }
    out
}

/// The Block Kit message of a notification document. Buttons only while the
/// request is pending and chat callbacks are configured (`chat`), and
/// Approve only when chat may approve the request. The people it is for are
/// mentioned by their Slack id where `mentions` (user name to id) has one,
/// so Slack pings them: approvers of a request, the requester of an outcome.
pub(crate) fn message(doc: &Value, chat: Option<&Chat>, mentions: &BTreeMap<String, String>) -> Value {
    let s = |ptr: &str| doc.pointer(ptr).and_then(Value::as_str).unwrap_or("");
    let event = s("/event");
    let request_id = s("/request/id");
    let header = match event {
        "requested" => "Access requested",
        "approved" => "Access approved",
        "denied" => "Request denied",
        "expired" => "Request expired unanswered",
        "cancelled" => "Request cancelled",
        "escalated" => "Request escalated",
        "break_glass" => "BREAK-GLASS access",
        "revoked" => "Grant revoked",
        "extended" => "Grant extended",
        "expiring_soon" => "Grant expiring soon",
        _ => "Portcullis",
    };
    let duration = doc
        .pointer("/request/duration_s")
        .and_then(Value::as_i64)
        .map(|s| portcullis_protocol::duration::format(std::time::Duration::from_secs(s.unsigned_abs())))
        .unwrap_or_default();
    let mut fields = vec![
        field("User", s("/request/user")),
        field("Resource", s("/request/resource")),
        field("Role", s("/request/role")),
        field("Duration", &duration),
        field("Reason", s("/request/reason")),
        field("Requested", s("/request/created_at")),
    ];
    if s("/request/state") == "pending" {
        let needed = doc
            .pointer("/request/approvals_needed")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        fields.push(field("Approvals still needed", &needed.to_string()));
    }
    if !s("/grant/expires_at").is_empty() {
        fields.push(field("Access until", s("/grant/expires_at")));
    }
    let person = |name: &str| match mentions.get(name).filter(|id| is_slack_id(id)) {
        Some(id) => format!("<@{id}>"),
        None => escape(name),
    };
    let audience = match s("/notify/audience") {
        "requester" => format!("For {}", person(s("/request/user"))),
        _ => {
            let list = |ptr: &str, show: &dyn Fn(&str) -> String| {
                doc.pointer(ptr)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(show)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            format!(
                "For the approvers: users {}; groups {}",
                list("/notify/users", &person),
                list("/notify/groups", &escape)
            )
        }
    };
    let commands: Vec<String> = doc
        .pointer("/commands")
        .and_then(Value::as_object)
        .map(|c| {
            c.values()
                .filter_map(Value::as_str)
                .map(|c| format!("`{}`", escape(c)))
                .collect()
        })
        .unwrap_or_default();
    let mut blocks = vec![
        json!({ "type": "header", "text": { "type": "plain_text", "text": header } }),
        json!({ "type": "section", "text": { "type": "mrkdwn", "text": escape(s("/summary")) }, "fields": fields }),
        json!({ "type": "context", "elements": [
            { "type": "mrkdwn", "text": audience },
            { "type": "mrkdwn", "text": commands.join("  ") },
        ] }),
    ];
    let pending = s("/request/state") == "pending" && matches!(event, "requested" | "escalated");
    if let Some(chat) = chat.filter(|_| pending) {
        let break_glass = doc.pointer("/request/break_glass").and_then(Value::as_bool) != Some(false);
        let mut buttons = Vec::new();
        if !break_glass && chat.may_approve_role(s("/request/resource"), s("/request/role")) {
            buttons.push(json!({
                "type": "button", "action_id": APPROVE, "style": "primary", "value": request_id,
                "text": { "type": "plain_text", "text": "Approve" },
            }));
        } else {
            blocks.push(json!({ "type": "context", "elements": [{ "type": "mrkdwn",
                "text": format!("Chat cannot approve this role: use `portcullis approve {}` or the API", escape(request_id)) }] }));
        }
        buttons.push(json!({
            "type": "button", "action_id": DENY, "style": "danger", "value": request_id,
            "text": { "type": "plain_text", "text": "Deny" },
        }));
        blocks.push(json!({ "type": "actions", "block_id": format!("portcullis:{request_id}"), "elements": buttons }));
    }
    // The fallback text is mrkdwn too (and shows in notifications): escaped as well.
    json!({ "text": escape(s("/summary")), "blocks": blocks })
}

/// Whether `id` looks like a Slack user id (`U012ABC`), safe inside `<@...>`.
fn is_slack_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn field(label: &str, value: &str) -> Value {
    let value = if value.is_empty() {
        "-".to_owned()
    } else {
        escape(value)
    };
    json!({ "type": "mrkdwn", "text": format!("*{label}*\n{value}") })
}

#[cfg(test)]
mod tests;
