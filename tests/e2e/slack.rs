//! Slack end to end: Block Kit messages posted to a real receiver on
//! loopback, and interactivity callbacks signed with a test secret: a valid
//! click approves as the API would; forged, tampered, stale, replayed,
//! malformed, unmapped, self-approving, break-glass and admin-role ones are
//! refused, each with its answer and metric.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::pg::free_port;
use crate::harness::{Gateway, GatewayOptions, Role};
use crate::metrics::{metrics, sample};
use crate::notifications::{Hit, Receiver, hmac_hex, now_s, secret_file, state_of};

const SLACK_SECRET: &str = "slack_e2e_signing_secret";

/// `payload=` and the JSON, form-encoded as Slack sends it.
fn form(payload: &Value) -> String {
    let mut out = String::from("payload=");
    for b in payload.to_string().bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn click(slack_user: &str, action: &str, request_id: &str) -> String {
    form(&json!({
        "type": "block_actions",
        "user": { "id": slack_user, "username": "someone", "team_id": "T0TEST" },
        "actions": [{ "action_id": action, "block_id": "b", "value": request_id, "type": "button" }],
        "team": { "id": "T0TEST" },
    }))
}

/// POSTs a Slack callback signed with `secret` at `ts`: (status, JSON answer).
fn callback(gw: &Gateway, secret: &str, ts: i64, body: &str) -> (u16, Value) {
    let ts = ts.to_string();
    let sig = format!(
        "v0={}",
        hmac_hex(secret, &[b"v0:", ts.as_bytes(), b":", body.as_bytes()])
    );
    post_signed(gw, &ts, &sig, body)
}

fn post_signed(gw: &Gateway, ts: &str, sig: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", gw.api_port)).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let req = format!(
        "POST /v1/slack/interactions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nX-Slack-Request-Timestamp: {ts}\r\n\
         X-Slack-Signature: {sig}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, rest) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let answer = serde_json::from_str(rest).unwrap_or_else(|e| panic!("answer not JSON ({e}): {raw}"));
    (status, answer)
}

/// The Slack messages posted for `id`: (header, buttons as `action_id=value`).
fn slack_messages(hits: &[Hit], id: &str) -> Vec<(String, Vec<String>)> {
    hits.iter()
        .filter(|h| h.body.contains(id))
        .map(|h| {
            let m = h.json();
            let blocks = m["blocks"].as_array().cloned().unwrap_or_default();
            let header = blocks
                .first()
                .and_then(|b| b["text"]["text"].as_str())
                .unwrap_or("")
                .to_owned();
            let buttons = blocks
                .iter()
                .filter(|b| b["type"] == "actions")
                .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
                .map(|e| {
                    format!(
                        "{}={}",
                        e["action_id"].as_str().unwrap_or(""),
                        e["value"].as_str().unwrap_or("")
                    )
                })
                .collect();
            (header, buttons)
        })
        .collect()
}

#[test]
fn slack_buttons_approve_only_what_the_api_would_and_forgeries_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let signing = secret_file(&dir, "slack.secret", SLACK_SECRET);
    let port = free_port();
    let slack = Receiver::start(port, |_, _| 200);
    let gw = Gateway::start(GatewayOptions {
        roles: vec![Role::Read, Role::Admin],
        policy_extra: "      break_glass: { users: [olga], max_duration: 15m }\n".into(),
        extra_yaml: format!(
            "notifications:\n  backoff: 200ms\n  slack:\n    url: http://127.0.0.1:{port}/slack\n\
             \x20   signing_secret_file: {signing}\n    users: {{ U0CAROL: carol, U0ALICE: alice, U0DAVE: dave }}\n"
        ),
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    // carol acts through Slack only (U0CAROL); dave is mapped but no user.
    gw.add_user("carol", &[], false);
    let olga = gw.add_user("olga", &[], false);

    let id = gw.request(&alice, "orders", Some("read"), "30m");
    let hits = slack.wait(Duration::from_secs(20), "the request's message", |h| {
        !slack_messages(h, &id).is_empty()
    });
    let (header, buttons) = slack_messages(&hits, &id).remove(0);
    assert_eq!(header, "Access requested");
    assert_eq!(
        buttons,
        [format!("portcullis.approve={id}"), format!("portcullis.deny={id}")]
    );
    let message = hits
        .iter()
        .find(|h| h.body.contains(&id))
        .expect("message")
        .body
        .clone();
    assert!(
        message.contains("e2e test") && message.contains(&format!("portcullis approve {id}")),
        "{message}"
    );
    // The approver is mentioned by their Slack id, so Slack pings them.
    assert!(message.contains("<@U0CAROL>"), "{message}");

    let approve = click("U0CAROL", "portcullis.approve", &id);
    let pending = |gw: &Gateway| state_of(gw, &alice, &id)["state"] == "pending";

    // Forged: signed with another secret.
    let (status, answer) = callback(&gw, "not the secret", now_s(), &approve);
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("X-Slack-Signature")),
        "{answer}"
    );
    // Tampered: a valid signature over another body.
    let ts = now_s().to_string();
    let sig = format!(
        "v0={}",
        hmac_hex(SLACK_SECRET, &[b"v0:", ts.as_bytes(), b":", b"payload=x"])
    );
    assert_eq!(post_signed(&gw, &ts, &sig, &approve).0, 401);
    // Stale: correctly signed ten minutes ago.
    let (status, answer) = callback(&gw, SLACK_SECRET, now_s() - 600, &approve);
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| e.contains("stale")),
        "{answer}"
    );
    // Malformed, though signed: the field at fault is named.
    let (status, answer) = callback(&gw, SLACK_SECRET, now_s(), "payload=%7Bnot-json");
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| e.starts_with("payload")),
        "{answer}"
    );
    let no_value = form(&json!({ "type": "block_actions", "user": { "id": "U0CAROL" },
        "actions": [{ "action_id": "portcullis.approve" }] }));
    let (status, answer) = callback(&gw, SLACK_SECRET, now_s(), &no_value);
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("payload.actions[0].value")),
        "{answer}"
    );
    // Signed, but by Slack users Portcullis does not know, or who may not approve.
    let (status, answer) = callback(
        &gw,
        SLACK_SECRET,
        now_s(),
        &click("U0NOBODY", "portcullis.approve", &id),
    );
    assert_eq!(status, 200);
    assert!(
        answer["text"].as_str().is_some_and(|t| t.contains("not mapped")),
        "{answer}"
    );
    let (_, answer) = callback(&gw, SLACK_SECRET, now_s(), &click("U0DAVE", "portcullis.approve", &id));
    assert!(
        answer["text"]
            .as_str()
            .is_some_and(|t| t.contains("not a Portcullis user")),
        "{answer}"
    );
    let (status, answer) = callback(&gw, SLACK_SECRET, now_s(), &click("U0ALICE", "portcullis.approve", &id));
    assert_eq!(status, 200);
    assert!(
        answer["text"].as_str().is_some_and(|t| t.contains("your own request")),
        "{answer}"
    );
    assert!(pending(&gw), "nothing so far may change the request");

    // Carol, correctly signed: approved, as by the API.
    let ts = now_s();
    let (status, answer) = callback(&gw, SLACK_SECRET, ts, &approve);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response_type"], "ephemeral");
    assert!(
        answer["text"].as_str().is_some_and(|t| t.contains("carol approved")),
        "{answer}"
    );
    let req = state_of(&gw, &alice, &id);
    assert_eq!(req["state"], "approved");
    assert_eq!(req["approvals"][0]["by"], "carol");
    assert_eq!(req["approvals"][0]["comment"], "approved from Slack (U0CAROL)");
    // The same callback again is a replay.
    let (status, answer) = callback(&gw, SLACK_SECRET, ts, &approve);
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| e.contains("replay")),
        "{answer}"
    );
    // The requester hears of the outcome, mentioned by their Slack id.
    let hits = slack.wait(Duration::from_secs(20), "the approval's message", |h| {
        slack_messages(h, &id)
            .iter()
            .any(|(header, _)| header == "Access approved")
    });
    let outcome = hits
        .iter()
        .find(|h| h.body.contains(&id) && h.body.contains("Access approved"))
        .expect("the approval's message");
    assert!(outcome.body.contains("For <@U0ALICE>"), "{}", outcome.body);

    // An admin-like role: chat may deny it but never approve it.
    let admin_req = gw.request(&alice, "orders", Some("admin"), "30m");
    let hits = slack.wait(Duration::from_secs(20), "the admin request's message", |h| {
        !slack_messages(h, &admin_req).is_empty()
    });
    assert_eq!(
        slack_messages(&hits, &admin_req)[0].1,
        [format!("portcullis.deny={admin_req}")]
    );
    let (_, answer) = callback(
        &gw,
        SLACK_SECRET,
        now_s(),
        &click("U0CAROL", "portcullis.approve", &admin_req),
    );
    assert!(
        answer["text"].as_str().is_some_and(|t| t.contains("CLI or API")),
        "{answer}"
    );
    assert_eq!(state_of(&gw, &alice, &admin_req)["state"], "pending");
    let (_, answer) = callback(
        &gw,
        SLACK_SECRET,
        now_s(),
        &click("U0CAROL", "portcullis.deny", &admin_req),
    );
    assert!(
        answer["text"].as_str().is_some_and(|t| t.contains("carol denied")),
        "{answer}"
    );
    assert_eq!(state_of(&gw, &alice, &admin_req)["state"], "denied");

    // Break-glass: announced loudly, never approved from chat.
    let bg = gw.cli_ok(
        &olga,
        &[
            "request",
            "orders",
            "--role",
            "read",
            "--break-glass",
            "--for",
            "10m",
            "--reason",
            "INC-9 db down",
        ],
    );
    let hits = slack.wait(Duration::from_secs(20), "the break-glass message", |h| {
        !slack_messages(h, &bg).is_empty()
    });
    let (header, buttons) = slack_messages(&hits, &bg).remove(0);
    assert_eq!(header, "BREAK-GLASS access");
    assert!(buttons.is_empty(), "{buttons:?}");
    let (_, answer) = callback(&gw, SLACK_SECRET, now_s(), &click("U0CAROL", "portcullis.approve", &bg));
    assert!(
        answer["text"].as_str().is_some_and(|t| t.contains("break-glass")),
        "{answer}"
    );
    assert_eq!(state_of(&gw, &olga, &bg)["approvals"], json!([]));

    let m = metrics(&gw);
    for (outcome, n) in [
        ("bad_signature", 2.0),
        ("stale", 1.0),
        ("malformed", 2.0),
        ("replayed", 1.0),
        ("unmapped", 2.0),
        ("refused", 1.0),
        ("approved", 1.0),
        ("denied", 1.0),
        ("cli_only", 2.0),
    ] {
        let label = format!("outcome=\"{outcome}\"");
        assert_eq!(
            sample(&m, "portcullis_chat_actions_total", &[&label]),
            Some(n),
            "{outcome}:\n{m}"
        );
    }
    assert!(!gw.log().contains(SLACK_SECRET), "the signing secret reached the log");
}
