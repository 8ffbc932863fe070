//! Webhook notifications end to end: real HTTP receivers on loopback (std
//! threads, no mock of our own server) check signatures, retries and
//! idempotency keys; every event kind reaches its audience with the request's
//! context; a crash between enqueue and delivery loses nothing; a hanging
//! receiver holds up nobody. Slack's side is in `slack.rs`.

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
use crate::harness::{Gateway, GatewayOptions};
use crate::metrics::{metrics, sample};

const HOOK_SECRET: &str = "whsec_e2e_hook_secret";

/// One request a receiver got, and the status it answered.
#[derive(Clone, Debug)]
pub(crate) struct Hit {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub status: u16,
}

impl Hit {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A real HTTP/1.1 server on 127.0.0.1 that records every request.
pub(crate) struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    /// Listens on `port`; `answer(path, earlier requests on that path)` gives each status.
    pub fn start(port: u16, answer: fn(&str, usize) -> u16) -> Receiver {
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

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("lock").clone()
    }

    /// Waits (at most `within`) until `done` holds for the hits so far.
    pub fn wait(&self, within: Duration, what: &str, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
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
pub(crate) fn hmac_hex(key: &str, parts: &[&[u8]]) -> String {
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

pub(crate) fn now_s() -> i64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    i64::try_from(d.as_secs()).expect("seconds")
}

/// A file in `dir` holding `secret` (with a newline, as editors leave it).
pub(crate) fn secret_file(dir: &tempfile::TempDir, name: &str, secret: &str) -> String {
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
    wait_metric(gw, name, label, within, |v| v >= want);
}

/// Waits until the metric's value satisfies `done`; panics with all metrics after `within`.
fn wait_metric(gw: &Gateway, name: &str, label: &str, within: Duration, done: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + within;
    while !done(counter(gw, name, label)) {
        assert!(
            Instant::now() < deadline,
            "{name}{{{label}}} never reached the value awaited:\n{}",
            metrics(gw)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn state_of(gw: &Gateway, token: &str, id: &str) -> Value {
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
    // The depth gauge follows at the sender's next pass over the outbox.
    wait_metric(
        &gw,
        "portcullis_notification_outbox_depth",
        "",
        Duration::from_secs(10),
        |v| v == 0.0,
    );
    // Each decision is counted by outcome, with its time from the request.
    let m = metrics(&gw);
    for outcome in ["approved", "denied", "cancelled"] {
        let decision = format!("decision=\"{outcome}\"");
        assert_eq!(
            sample(&m, "portcullis_request_decisions_total", &[&decision]),
            Some(1.0),
            "{outcome}:\n{m}"
        );
        let label = format!("outcome=\"{outcome}\"");
        assert_eq!(
            sample(&m, "portcullis_request_time_to_decision_seconds_count", &[&label]),
            Some(1.0),
            "{outcome}:\n{m}"
        );
    }
    assert_eq!(sample(&m, "portcullis_requests_pending", &[]), Some(0.0), "{m}");
    assert!(!gw.log().contains(HOOK_SECRET), "the secret reached the log");
    drop(hang);
}

/// The delivered documents on `path` (status 200), by (event, request id).
fn delivered_docs(hits: &[Hit], path: &str) -> BTreeMap<(String, String), Vec<Value>> {
    let mut out: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for h in hits.iter().filter(|h| h.path == path && h.status == 200) {
        let doc = h.json();
        let key = (
            doc["event"].as_str().unwrap_or("").to_owned(),
            doc["request"]["id"].as_str().unwrap_or("").to_owned(),
        );
        out.entry(key).or_default().push(doc);
    }
    out
}

fn users_of(doc: &Value) -> Vec<&str> {
    doc["notify"]["users"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn escalation_expiry_extension_expiring_soon_and_break_glass_are_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_file(&dir, "hook.secret", HOOK_SECRET);
    let port = free_port();
    let receiver = Receiver::start(port, |_, _| 200);
    // `orders` escalates after 1s and expires after 5s (well apart, for a
    // late pass of the clock); `bench` neither.
    let gw = Gateway::start(GatewayOptions {
        policy_extra:
            "      pending_ttl: 5s\n      escalation: [ { after: 1s, approvers: { users: [dave] } } ]\n      \
                       break_glass: { users: [olga], max_duration: 15m }\n"
                .to_owned(),
        extra_yaml: format!(
            "notifications:\n  backoff: 200ms\n  webhooks:\n\
             \x20   - url: http://127.0.0.1:{port}/hook\n      secret_file: {secret}\n"
        ),
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.add_user("dave", &[], false);
    let olga = gw.add_user("olga", &[], false);

    // Left unanswered: escalated to dave, then expired.
    let unanswered = gw.request(&alice, "orders", None, "10m");
    // Approved, then extended.
    let extended = gw.cli_ok(&alice, &["request", "bench", "--for", "30m", "--reason", "INC-7 look"]);
    assert_eq!(gw.cli_ok(&carol, &["approve", &extended]), "approved");
    let grant = state_of(&gw, &alice, &extended)["grant_id"]
        .as_str()
        .expect("grant")
        .to_owned();
    gw.cli_ok(&carol, &["extend", &grant, "--by", "15m"]);
    // Under five minutes long: expiring soon as soon as it is granted.
    let short = gw.cli_ok(&alice, &["request", "bench", "--for", "2m", "--reason", "INC-8 quick"]);
    assert_eq!(gw.cli_ok(&carol, &["approve", &short]), "approved");
    let glass = gw.cli_ok(
        &olga,
        &[
            "request",
            "orders",
            "--break-glass",
            "--for",
            "10m",
            "--reason",
            "INC-9 db down",
        ],
    );

    let expected: BTreeSet<(String, String)> = [
        ("requested", &unanswered),
        ("escalated", &unanswered),
        ("expired", &unanswered),
        ("requested", &extended),
        ("approved", &extended),
        ("extended", &extended),
        ("requested", &short),
        ("approved", &short),
        ("expiring_soon", &short),
        ("break_glass", &glass),
    ]
    .into_iter()
    .map(|(e, id)| (e.to_owned(), id.clone()))
    .collect();
    let hits = receiver.wait(Duration::from_secs(30), "every event", |h| {
        expected.iter().all(|k| delivered_docs(h, "/hook").contains_key(k))
    });
    for h in &hits {
        assert!(signed_by(h, HOOK_SECRET), "bad signature on {h:#?}");
    }
    let docs = delivered_docs(&hits, "/hook");
    let delivered: BTreeSet<_> = docs.keys().cloned().collect();
    assert_eq!(delivered, expected);
    let one = |event: &str, id: &str| -> &Value {
        let all = &docs[&(event.to_owned(), id.to_owned())];
        assert_eq!(all.len(), 1, "{event} of {id} delivered once: {all:#?}");
        &all[0]
    };

    // The next approvers are told, and may act: the commands are there.
    let escalated = one("escalated", &unanswered);
    assert_eq!(escalated["notify"]["audience"], "approvers");
    assert_eq!(users_of(escalated), ["carol", "dave"]);
    assert_eq!(escalated["notify"]["groups"], json!(["dba"]));
    assert_eq!(escalated["detail"]["step"], 1);
    assert_eq!(escalated["request"]["escalation_level"], 1);
    assert_eq!(escalated["request"]["approvals_needed"], 1);
    assert_eq!(
        escalated["commands"]["approve"],
        format!("portcullis approve {unanswered}").as_str()
    );
    assert_eq!(
        escalated["commands"]["deny"],
        format!("portcullis deny {unanswered} --reason TEXT").as_str()
    );
    // Before the step only the policy's approvers heard of it.
    assert_eq!(users_of(one("requested", &unanswered)), ["carol"]);

    // The requester hears every outcome.
    let expired = one("expired", &unanswered);
    assert_eq!(expired["notify"]["audience"], "requester");
    assert_eq!(users_of(expired), ["alice"]);
    assert_eq!(expired["request"]["state"], "expired");
    assert_eq!(expired["request"]["approvals_needed"], 0);
    assert!(expired["commands"].get("approve").is_none(), "{expired}");

    let approved = one("approved", &extended);
    assert_eq!(users_of(approved), ["alice"]);
    assert_eq!(approved["actor"], "carol");
    let ext = one("extended", &extended);
    assert_eq!(ext["notify"]["audience"], "requester");
    assert_eq!(users_of(ext), ["alice"]);
    assert_eq!(ext["actor"], "carol");
    assert_eq!(ext["detail"]["by"], "15m");
    assert_eq!(ext["grant"]["id"], grant.as_str());
    assert_eq!(ext["grant"]["expires_at"], ext["detail"]["to"]);
    assert_ne!(ext["detail"]["from"], ext["detail"]["to"]);
    assert!(ext["commands"]["revoke"].as_str().is_some_and(|c| c.contains(&grant)));

    let soon = one("expiring_soon", &short);
    assert_eq!(soon["notify"]["audience"], "requester");
    assert_eq!(users_of(soon), ["alice"]);
    assert_eq!(soon["grant"]["expires_at"], soon["detail"]["expires_at"]);
    assert!(soon["commands"]["extend"].as_str().is_some(), "{soon}");

    // Break-glass is loud: every approver, escalation steps included, never the user.
    let bg = one("break_glass", &glass);
    assert_eq!(bg["notify"]["audience"], "approvers");
    assert_eq!(users_of(bg), ["carol", "dave"]);
    assert_eq!(bg["notify"]["groups"], json!(["dba"]));
    assert_eq!(bg["request"]["break_glass"], true);
    assert_eq!(bg["request"]["reason"], "INC-9 db down");
    assert_eq!(bg["grant"]["break_glass"], true);
    assert_eq!(bg["actor"], "olga");
    assert!(
        bg["summary"].as_str().is_some_and(|s| s.starts_with("BREAK-GLASS")),
        "{bg}"
    );
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
