//! Notifications end to end: real HTTP receivers on loopback (std threads,
//! no mock of our own server) check webhook signatures, retries and
//! idempotency keys; a crash between enqueue and delivery loses nothing; a
//! hanging receiver holds up nobody; Slack callbacks signed with a test
//! secret approve, and forged, stale, replayed, self-approving, break-glass
//! and admin-role ones are refused.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::pg::free_port;
use crate::harness::{Gateway, GatewayOptions, Role};
use crate::metrics::{metrics, sample};

const HOOK_SECRET: &str = "whsec_e2e_hook_secret";
const SLACK_SECRET: &str = "slack_e2e_signing_secret";

/// One request a receiver got, and the status it answered.
#[derive(Clone, Debug)]
struct Hit {
    path: String,
    headers: HashMap<String, String>,
    body: String,
    status: u16,
}

impl Hit {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A real HTTP/1.1 server on 127.0.0.1 that records every request.
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    /// Listens on `port`; `answer(path, earlier requests on that path)` gives each status.
    fn start(port: u16, answer: fn(&str, usize) -> u16) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&hits);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(stream) = conn else { continue };
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || serve_one(stream, &seen, answer));
            }
        });
        Receiver { hits }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("lock").clone()
    }

    /// Waits (at most `within`) until `done` holds for the hits so far.
    fn wait(&self, within: Duration, what: &str, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let hits = self.hits();
            if done(&hits) {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "receiver: {what} not seen within {within:?}; got:\n{hits:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve_one(mut s: TcpStream, hits: &Mutex<Vec<Hit>>, answer: fn(&str, usize) -> u16) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match s.read(&mut chunk) {
            Ok(n) if n > 0 && buf.len() < 1 << 20 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut body = buf[end + 4..].to_vec();
    let mut lines = head.lines();
    let path = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or("").to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while body.len() < len.min(1 << 20) {
        match s.read(&mut chunk) {
            Ok(n) if n > 0 => body.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let status = {
        let mut hits = hits.lock().expect("lock");
        let before = hits.iter().filter(|h| h.path == path).count();
        let status = answer(&path, before);
        hits.push(Hit {
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            status,
        });
        status
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    );
}

/// Lowercase hex HMAC-SHA256 of the concatenated parts.
fn hmac_hex(key: &str, parts: &[&[u8]]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Checks `X-Portcullis-Signature` the way the README tells receivers to.
fn signed_by(hit: &Hit, secret: &str) -> bool {
    let ts = hit.header("x-portcullis-timestamp");
    let want = format!(
        "sha256={}",
        hmac_hex(secret, &[ts.as_bytes(), b".", hit.body.as_bytes()])
    );
    !ts.is_empty() && hit.header("x-portcullis-signature") == want
}

fn now_s() -> i64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    i64::try_from(d.as_secs()).expect("seconds")
}

/// A file in `dir` holding `secret` (with a newline, as editors leave it).
fn secret_file(dir: &tempfile::TempDir, name: &str, secret: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{secret}\n")).expect("write secret");
    path.display().to_string()
}

fn counter(gw: &Gateway, name: &str, label: &str) -> f64 {
    let m = metrics(gw);
    sample(&m, name, &[label]).unwrap_or_else(|| panic!("{name}{{{label}}} missing:\n{m}"))
}

/// Waits (at most `within`) until the counter reaches `want`.
fn wait_counter(gw: &Gateway, name: &str, label: &str, want: f64, within: Duration) {
    let deadline = Instant::now() + within;
    while counter(gw, name, label) < want {
        assert!(
            Instant::now() < deadline,
            "{name}{{{label}}} stayed below {want}:\n{}",
            metrics(gw)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn state_of(gw: &Gateway, token: &str, id: &str) -> Value {
    gw.api_json(token, &format!("/v1/requests/{id}"))
}

#[test]
fn webhooks_are_signed_retried_and_delivered_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_file(&dir, "hook.secret", HOOK_SECRET);
    let port = free_port();
    // /hook fails its first two requests, then takes everything.
    let receiver = Receiver::start(
        port,
        |path, before| if path == "/hook" && before < 2 { 500 } else { 200 },
    );
    // Accepts connections (the kernel does) and never answers.
    let hang = TcpListener::bind(("127.0.0.1", 0)).expect("bind the hanging receiver");
    let hang_port = hang.local_addr().expect("addr").port();
    let gw = Gateway::start(GatewayOptions {
        extra_yaml: format!(
            "notifications:\n  timeout: 1s\n  backoff: 200ms\n  max_attempts: 4\n  webhooks:\n\
             \x20   - url: http://127.0.0.1:{port}/hook\n      secret_file: {secret}\n\
             \x20   - url: http://127.0.0.1:{port}/denied-only\n      secret_file: {secret}\n      events: [denied]\n\
             \x20   - url: http://127.0.0.1:{hang_port}/hang\n      secret_file: {secret}\n"
        ),
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &["eng"], false);
    let carol = gw.add_user("carol", &[], false);

    let first = gw.request(&alice, "orders", None, "30m");
    // The approver runs the very command the notification carries.
    let hits = receiver.wait(Duration::from_secs(20), "requested", |h| {
        h.iter().any(|h| h.status == 200 && h.body.contains(&first))
    });
    let requested = hits
        .iter()
        .find(|h| h.status == 200 && h.body.contains(&first))
        .expect("requested")
        .json();
    assert_eq!(requested["event"], "requested");
    assert_eq!(requested["request"]["user"], "alice");
    assert_eq!(requested["request"]["resource"], "orders");
    assert_eq!(requested["request"]["role"], "read");
    assert_eq!(requested["request"]["duration_s"], 1800);
    assert_eq!(requested["request"]["reason"], "e2e test");
    assert_eq!(requested["request"]["approvals_needed"], 1);
    assert!(requested["request"]["created_at"].as_str().is_some());
    assert_eq!(requested["notify"]["audience"], "approvers");
    assert_eq!(requested["notify"]["users"], json!(["carol"]));
    let approve = requested["commands"]["approve"].as_str().expect("an approve command");
    assert_eq!(approve, format!("portcullis approve {first}"));
    let args: Vec<&str> = approve.split_whitespace().skip(1).collect();
    assert_eq!(gw.cli_ok(&carol, &args), "approved");

    let grant = state_of(&gw, &alice, &first)["grant_id"]
        .as_str()
        .expect("grant")
        .to_owned();
    gw.cli_ok(&carol, &["revoke", &grant, "--reason", "done"]);
    let second = gw.request(&alice, "orders", None, "30m");
    gw.cli_ok(&carol, &["deny", &second, "--reason", "not today"]);
    let third = gw.request(&alice, "orders", None, "30m");
    let (status, body) = gw.http("POST", &format!("/v1/requests/{third}/cancel"), Some(&alice), None);
    assert_eq!(status, 200, "{body}");

    let expected: BTreeSet<(String, String)> = [
        ("requested", &first),
        ("approved", &first),
        ("revoked", &first),
        ("requested", &second),
        ("denied", &second),
        ("requested", &third),
        ("cancelled", &third),
    ]
    .into_iter()
    .map(|(e, id)| (e.to_owned(), id.clone()))
    .collect();
    let delivered = |hits: &[Hit]| -> BTreeSet<(String, String)> {
        hits.iter()
            .filter(|h| h.path == "/hook" && h.status == 200)
            .map(|h| {
                let doc = h.json();
                (
                    doc["event"].as_str().unwrap_or("").to_owned(),
                    doc["request"]["id"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let hits = receiver.wait(Duration::from_secs(30), "every event on /hook", |h| {
        delivered(h).len() >= expected.len() && h.iter().any(|h| h.path == "/denied-only")
    });
    // Other destinations did not wait for the hanging one: its rows are still
    // being tried (4 attempts of 1s each) while /hook has everything.
    let given_up = counter(&gw, "portcullis_notifications_failed_total", r#"destination="webhook""#);
    assert!(
        given_up < 7.0,
        "the hanging receiver held up the others ({given_up} already given up)"
    );

    assert_eq!(delivered(&hits), expected);
    // Every attempt is signed; the key is the body's id and stays the same across retries.
    let mut by_key: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for h in hits.iter().filter(|h| h.path == "/hook") {
        assert!(signed_by(h, HOOK_SECRET), "bad signature on {h:#?}");
        assert!(!signed_by(h, "another secret"));
        let key = h.header("idempotency-key").to_owned();
        assert_eq!(h.json()["id"], key.as_str());
        assert_eq!(h.header("x-portcullis-event"), h.json()["event"]);
        by_key.entry(key).or_default().push(h.status);
    }
    assert_eq!(by_key.len(), expected.len(), "one key per event: {by_key:?}");
    let statuses: Vec<u16> = by_key.values().flatten().copied().collect();
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 2, "{by_key:?}");
    for (key, tries) in &by_key {
        assert_eq!(tries.last(), Some(&200), "{key} ends delivered: {tries:?}");
        assert_eq!(
            tries.iter().filter(|s| **s == 200).count(),
            1,
            "{key} delivered once: {tries:?}"
        );
    }
    // The filtered webhook got its one event, and nothing else.
    std::thread::sleep(Duration::from_millis(500));
    let filtered: Vec<Value> = receiver
        .hits()
        .iter()
        .filter(|h| h.path == "/denied-only")
        .map(Hit::json)
        .collect();
    assert_eq!(filtered.len(), 1, "{filtered:#?}");
    assert_eq!(filtered[0]["event"], "denied");
    assert_eq!(filtered[0]["request"]["id"], second.as_str());
    assert_eq!(filtered[0]["detail"]["reason"], "not today");
    assert_eq!(
        filtered[0]["notify"]["users"],
        json!(["alice"]),
        "requesters hear the outcome"
    );

    // The hanging receiver's 7 rows are given up after 4 attempts each; the
    // counters then add up exactly: 2 retries on /hook, 3 per hanging row.
    let webhook = r#"destination="webhook""#;
    wait_counter(
        &gw,
        "portcullis_notifications_failed_total",
        webhook,
        7.0,
        Duration::from_secs(60),
    );
    assert_eq!(counter(&gw, "portcullis_notifications_sent_total", webhook), 8.0);
    assert_eq!(
        counter(&gw, "portcullis_notifications_retried_total", webhook),
        2.0 + 3.0 * 7.0
    );
    assert_eq!(counter(&gw, "portcullis_notification_outbox_depth", ""), 0.0);
    assert!(!gw.log().contains(HOOK_SECRET), "the secret reached the log");
    drop(hang);
}

#[test]
fn a_crash_between_enqueue_and_delivery_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_file(&dir, "hook.secret", HOOK_SECRET);
    // Nothing listens here yet: every attempt is refused.
    let port = free_port();
    let mut gw = Gateway::start(GatewayOptions {
        extra_yaml: format!(
            "notifications:\n  backoff: 100ms\n  max_backoff: 500ms\n  max_attempts: 1000\n  webhooks:\n\
             \x20   - url: http://127.0.0.1:{port}/hook\n      secret_file: {secret}\n      events: [requested]\n"
        ),
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let id = gw.request(&alice, "orders", None, "30m");
    wait_counter(
        &gw,
        "portcullis_notifications_retried_total",
        r#"destination="webhook""#,
        1.0,
        Duration::from_secs(20),
    );
    assert_eq!(counter(&gw, "portcullis_notification_outbox_depth", ""), 1.0);

    gw.crash_and_restart();
    let receiver = Receiver::start(port, |_, _| 200);
    let hits = receiver.wait(Duration::from_secs(20), "the queued event", |h| !h.is_empty());
    std::thread::sleep(Duration::from_millis(700));
    let hits = if receiver.hits().len() > hits.len() {
        receiver.hits()
    } else {
        hits
    };
    assert_eq!(hits.len(), 1, "delivered exactly once: {hits:#?}");
    let doc = hits[0].json();
    assert_eq!(doc["event"], "requested");
    assert_eq!(doc["request"]["id"], id.as_str());
    assert!(signed_by(&hits[0], HOOK_SECRET));
    wait_counter(
        &gw,
        "portcullis_notifications_sent_total",
        r#"destination="webhook""#,
        1.0,
        Duration::from_secs(10),
    );
}

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
    // The requester hears of the outcome.
    slack.wait(Duration::from_secs(20), "the approval's message", |h| {
        slack_messages(h, &id)
            .iter()
            .any(|(header, _)| header == "Access approved")
    });

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
