//! Notifications against a real store and real HTTP receivers on loopback:
//! rows queued in the event's transaction, per destination and filter; the
//! sender's retries, signatures, idempotency key, timeout and give-up.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_protocol::secret::Secret;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::model::User;
use crate::notify::settings::{NotifyEvent, NotifySettings, SlackSettings, WebhookSettings};
use crate::notify::{Notifier, webhook};
use crate::settings::{ControlSettings, Policy, Principals, ResourceKind, ResourceSettings};
use crate::store::Sql;
use crate::store::testing::TestStore;
use crate::workflow::policy::Ask;
use crate::workflow::users::UserAsk;
use crate::{Control, ControlError};

fn settings(store: &TestStore, notifications: NotifySettings) -> ControlSettings {
    ControlSettings {
        data_dir: store.dir.path().join("data"),
        store_postgres: store.postgres(),
        resources: vec![ResourceSettings {
            name: "orders".to_owned(),
            kind: ResourceKind::Postgres,
            roles: vec!["read".to_owned()],
            policy: Policy {
                approvers: Some(Principals {
                    users: vec!["carol".to_owned()],
                    groups: vec!["dba".to_owned()],
                }),
                ..Policy::default()
            },
            role_policies: Default::default(),
        }],
        gateway_postgres: None,
        gateway_ssh: None,
        notifications,
        proxies: Vec::new(),
    }
}

fn hook(url: String, events: Option<&[NotifyEvent]>) -> WebhookSettings {
    WebhookSettings {
        url: Secret::new(url),
        secret: Secret::new("s3cret".to_owned()),
        events: events.map(|e| e.iter().copied().collect::<BTreeSet<_>>()),
    }
}

async fn add(c: &Control, name: &str) -> User {
    let token = std::fs::read_to_string(c.admin_token_path()).expect("admin.token");
    let admin = c.workflow.authenticate(token.trim()).await.expect("admin");
    let ask = UserAsk {
        name: name.to_owned(),
        ..UserAsk::default()
    };
    c.workflow.add_user(admin, ask).await.expect("add user").0
}

fn ask() -> Ask {
    Ask {
        duration: Some(Duration::from_secs(3600)),
        reason: Some("INC-1 look".to_owned()),
        ..Ask::default()
    }
}

/// (destination kind, event, body) of every outbox row, oldest first.
async fn rows(c: &Control) -> Vec<(String, String, Value)> {
    c.workflow
        .store
        .call(|conn| -> Result<_, ControlError> {
            let rows = conn.query("SELECT destination, event, body, state FROM outbox ORDER BY rowid", &[])?;
            let row = |r: &crate::store::Row| -> Result<_, crate::store::DbError> {
                let dest: String = r.get(0)?;
                let body: String = r.get(2)?;
                let kind = dest.split(':').next().unwrap_or_default().to_owned();
                Ok((kind, r.get(1)?, serde_json::from_str(&body).unwrap_or(Value::Null)))
            };
            Ok(rows.iter().map(row).collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .expect("outbox")
}

#[tokio::test]
async fn events_queue_one_row_per_destination_that_wants_them() {
    for store in crate::store::testing::stores() {
        let notifications = NotifySettings {
            webhooks: vec![
                hook("http://127.0.0.1:9/all".to_owned(), None),
                hook("http://127.0.0.1:9/denied".to_owned(), Some(&[NotifyEvent::Denied])),
            ],
            slack: Some(SlackSettings {
                url: Some(Secret::new("http://127.0.0.1:9/slack".to_owned())),
                ..SlackSettings::default()
            }),
            ..NotifySettings::default()
        };
        let c = Control::open(settings(&store, notifications), &prometheus::Registry::new())
            .await
            .expect("open");
        let alice = add(&c, "alice").await;
        let carol = add(&c, "carol").await;
        let w = &c.workflow;

        let first = w
            .create_request(alice.clone(), "orders".into(), ask())
            .await
            .expect("request");
        w.approve(carol.clone(), first.id.clone(), None).await.expect("approve");
        let second = w
            .create_request(alice.clone(), "orders".into(), ask())
            .await
            .expect("request");
        // Refused calls change nothing, so they queue nothing.
        assert!(w.approve(alice.clone(), second.id.clone(), None).await.is_err());
        w.deny(carol.clone(), second.id.clone(), Some("not now".into()))
            .await
            .expect("deny");

        let got = rows(&c).await;
        let kinds: Vec<(&str, &str)> = got.iter().map(|(k, e, _)| (k.as_str(), e.as_str())).collect();
        assert_eq!(
            kinds,
            [
                ("webhook", "requested"),
                ("slack", "requested"),
                ("webhook", "approved"),
                ("slack", "approved"),
                ("webhook", "requested"),
                ("slack", "requested"),
                ("webhook", "denied"),
                ("webhook", "denied"),
                ("slack", "denied"),
            ]
        );
        let requested = &got[0].2;
        assert!(
            requested["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("ntf_") && id.len() == 36)
        );
        assert_ne!(
            requested["id"], got[1].2["id"],
            "each destination has its own idempotency key"
        );
        assert_eq!(requested["request"]["id"], first.id.as_str());
        assert_eq!(requested["request"]["reason"], "INC-1 look");
        assert_eq!(requested["request"]["duration_s"], 3600);
        assert_eq!(requested["request"]["approvals_needed"], 1);
        assert_eq!(requested["notify"]["audience"], "approvers");
        assert_eq!(requested["notify"]["users"], serde_json::json!(["carol"]));
        assert_eq!(requested["notify"]["groups"], serde_json::json!(["dba"]));
        assert_eq!(
            requested["commands"]["approve"],
            format!("portcullis approve {}", first.id).as_str()
        );
        let approved = &got[2].2;
        assert_eq!(approved["actor"], "carol");
        assert_eq!(approved["notify"]["audience"], "requester");
        assert_eq!(approved["notify"]["users"], serde_json::json!(["alice"]));
        assert_eq!(approved["grant"]["state"], "active");
        assert!(
            approved["commands"]["revoke"]
                .as_str()
                .is_some_and(|c| c.starts_with("portcullis revoke grt_"))
        );
        assert!(approved["commands"].get("approve").is_none());
        assert_eq!(got[6].2["detail"]["reason"], "not now");
    }
}

/// What a receiver got: the headers (names lower case) and the body.
#[derive(Clone, Debug)]
struct Received {
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// An HTTP receiver on loopback answering `statuses` in turn, then 200.
async fn receiver(statuses: Vec<u16>) -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&got);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    break (head, buf[end + 4..].to_vec());
                }
            };
            let headers: Vec<(String, String)> = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = body;
            while body.len() < len {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            let status = {
                let mut got = seen.lock().expect("lock");
                let status = statuses.get(got.len()).copied().unwrap_or(200);
                got.push(Received {
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                status
            };
            let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    (addr, got)
}

/// Waits at most 10 s for `done` to hold; the caller asserts afterwards.
async fn until(done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (at most 10 s) until `got` holds `n` entries.
async fn wait_for(got: &Arc<Mutex<Vec<Received>>>, n: usize) -> Vec<Received> {
    for _ in 0..200 {
        let now = got.lock().expect("lock").clone();
        if now.len() >= n {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the receiver got {} deliveries, expected {n}",
        got.lock().expect("lock").len()
    );
}

#[tokio::test]
async fn retries_keep_the_key_and_sign_each_attempt() {
    for store in crate::store::testing::stores() {
        let (addr, got) = receiver(vec![500, 503]).await;
        let notifications = NotifySettings {
            webhooks: vec![hook(format!("http://{addr}/hook"), None)],
            backoff: Duration::from_millis(20),
            ..NotifySettings::default()
        };
        let c = Control::open(settings(&store, notifications), &prometheus::Registry::new())
            .await
            .expect("open");
        let shutdown = CancellationToken::new();
        let sender = c.spawn_notifier(shutdown.clone());
        let alice = add(&c, "alice").await;
        let req = c
            .workflow
            .create_request(alice, "orders".into(), ask())
            .await
            .expect("request");

        let seen = wait_for(&got, 3).await;
        let key = seen[0].header("idempotency-key").to_owned();
        assert!(key.starts_with("ntf_"), "{key}");
        for r in &seen {
            assert_eq!(r.header("idempotency-key"), key, "one key across retries");
            assert_eq!(r.header("x-portcullis-event"), "requested");
            let ts: i64 = r.header("x-portcullis-timestamp").parse().expect("timestamp");
            assert_eq!(
                r.header("x-portcullis-signature"),
                webhook::signature(b"s3cret", ts, r.body.as_bytes())
            );
            let doc: Value = serde_json::from_str(&r.body).expect("JSON body");
            assert_eq!(doc["request"]["id"], req.id.as_str());
            assert_eq!(doc["id"], key.as_str());
        }
        // The row is marked sent after the receiver answered (and after
        // the count); then nothing more comes.
        let (attempts, _, state) = wait_state(&c, "sent").await;
        assert_eq!((attempts, state.as_str()), (3, "sent"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(got.lock().expect("lock").len(), 3);
        let m = &c.workflow.metrics;
        assert_eq!(m.notifications_sent.with_label_values(&["webhook"]).get(), 1);
        assert_eq!(m.notifications_retried.with_label_values(&["webhook"]).get(), 2);
        assert_eq!(m.notifications_failed.with_label_values(&["webhook"]).get(), 0);
        shutdown.cancel();
        sender.await.expect("sender ends");
    }
}

#[tokio::test]
async fn a_hanging_receiver_times_out_and_others_still_get_theirs() {
    for store in crate::store::testing::stores() {
        let (hang_addr, held) = hanging_receiver();
        let (addr, got) = receiver(Vec::new()).await;
        let notifications = NotifySettings {
            // The hanging destination comes first in the outbox.
            webhooks: vec![
                hook(format!("http://{hang_addr}/hang"), None),
                hook(format!("http://{addr}/ok"), None),
            ],
            // Long enough that the good delivery is seen before the first
            // hanging attempt ends, even on a loaded machine.
            timeout: Duration::from_secs(3),
            max_attempts: 2,
            backoff: Duration::from_millis(50),
            ..NotifySettings::default()
        };
        let c = Control::open(settings(&store, notifications), &prometheus::Registry::new())
            .await
            .expect("open");
        let shutdown = CancellationToken::new();
        let _sender = c.spawn_notifier(shutdown.clone());
        let alice = add(&c, "alice").await;
        c.workflow
            .create_request(alice, "orders".into(), ask())
            .await
            .expect("request");
        wait_for(&got, 1).await;
        // Delivered while the first attempt at the hanging receiver was still
        // open: no attempt of it had ended, failed or otherwise.
        let m = &c.workflow.metrics;
        assert_eq!(
            m.notifications_retried.with_label_values(&["webhook"]).get(),
            0,
            "the good receiver waited for the hanging one"
        );
        // The timeout ends each hanging attempt; after two the row is given up.
        let failed = &m.notifications_failed;
        until(|| failed.with_label_values(&["webhook"]).get() == 1).await;
        assert_eq!(
            failed.with_label_values(&["webhook"]).get(),
            1,
            "given up after 2 attempts"
        );
        assert_eq!(m.notifications_retried.with_label_values(&["webhook"]).get(), 1);
        assert_eq!(held.lock().expect("lock").len(), 2, "one connection per attempt");
        assert_eq!(m.notifications_sent.with_label_values(&["webhook"]).get(), 1);
        // The gauge follows at the sender's next pass, after the row is marked failed.
        until(|| m.outbox_depth.get() == 0).await;
        assert_eq!(m.outbox_depth.get(), 0, "the given-up row left the outbox's depth");
        shutdown.cancel();
    }
}

/// A listener that accepts connections and holds them open without a word;
/// answers how many it accepted so far.
fn hanging_receiver() -> (SocketAddr, Arc<Mutex<Vec<std::net::TcpStream>>>) {
    let hang = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = hang.local_addr().expect("addr");
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = Arc::clone(&held);
    std::thread::spawn(move || {
        for conn in hang.incoming().flatten() {
            holder.lock().expect("lock").push(conn);
        }
    });
    (addr, held)
}

#[tokio::test]
async fn a_hanging_receiver_cannot_take_every_delivery_slot() {
    for store in crate::store::testing::stores() {
        let (hang_addr, held) = hanging_receiver();
        let (addr, got) = receiver(Vec::new()).await;
        let notifications = NotifySettings {
            webhooks: vec![
                hook(format!("http://{hang_addr}/hang"), None),
                hook(format!("http://{addr}/ok"), None),
            ],
            // No hanging attempt ends within the test.
            timeout: Duration::from_secs(120),
            ..NotifySettings::default()
        };
        let c = Control::open(settings(&store, notifications), &prometheus::Registry::new())
            .await
            .expect("open");
        let shutdown = CancellationToken::new();
        let _sender = c.spawn_notifier(shutdown.clone());
        let alice = add(&c, "alice").await;
        // More notifications for the hanging receiver than there are slots in all.
        for _ in 0..20 {
            c.workflow
                .create_request(alice.clone(), "orders".into(), ask())
                .await
                .expect("request");
        }
        let seen = wait_for(&got, 20).await;
        assert_eq!(seen.len(), 20);
        let m = &c.workflow.metrics;
        // The receiver keeps a delivery before it answers; the sender counts
        // it once the answer is read.
        let sent = &m.notifications_sent;
        until(|| sent.with_label_values(&["webhook"]).get() == 20).await;
        assert_eq!(m.notifications_retried.with_label_values(&["webhook"]).get(), 0);
        assert_eq!(sent.with_label_values(&["webhook"]).get(), 20);
        let hanging = held.lock().expect("lock").len();
        assert!(
            hanging <= 4,
            "{hanging} deliveries in flight to one destination (at most 4)"
        );
        shutdown.cancel();
    }
}

#[test]
fn each_retry_waits_twice_as_long_up_to_the_cap() {
    let n = Notifier::new(NotifySettings {
        backoff: Duration::from_secs(2),
        max_backoff: Duration::from_secs(60),
        ..NotifySettings::default()
    })
    .expect("notifier");
    let waits: Vec<u64> = (1..=7).map(|attempt| n.retry_after(attempt).as_secs()).collect();
    assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60]);
    assert_eq!(n.retry_after(u32::MAX), Duration::from_secs(60));
}

/// (attempts, next_attempt_at, state) of the one outbox row.
async fn the_row(c: &Control) -> (u32, i64, String) {
    c.workflow
        .store
        .call(|conn| -> Result<_, ControlError> {
            Ok(conn
                .query_one("SELECT attempts, next_attempt_at, state FROM outbox", &[])
                .and_then(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?)
        })
        .await
        .expect("the outbox row")
}

/// Waits (at most 10 s) until the row has `attempts` attempts recorded.
async fn wait_attempts(c: &Control, attempts: u32) -> (u32, i64, String) {
    for _ in 0..200 {
        let row = the_row(c).await;
        if row.0 >= attempts {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the row never reached {attempts} attempts: {:?}", the_row(c).await);
}

/// Waits (at most 10 s) until the row is in `state`.
async fn wait_state(c: &Control, state: &str) -> (u32, i64, String) {
    for _ in 0..200 {
        let row = the_row(c).await;
        if row.2 == state {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the row never reached {state}: {:?}", the_row(c).await);
}

#[tokio::test]
async fn the_sender_schedules_each_retry_twice_as_far_off() {
    for store in crate::store::testing::stores() {
        const HOUR: i64 = 3_600_000;
        let (addr, got) = receiver(vec![500, 500]).await;
        let notifications = NotifySettings {
            webhooks: vec![hook(format!("http://{addr}/hook"), None)],
            backoff: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(86_400),
            ..NotifySettings::default()
        };
        let c = Control::open(settings(&store, notifications), &prometheus::Registry::new())
            .await
            .expect("open");
        let shutdown = CancellationToken::new();
        let sender = c.spawn_notifier(shutdown.clone());
        let alice = add(&c, "alice").await;
        let before = crate::time::now();
        c.workflow
            .create_request(alice, "orders".into(), ask())
            .await
            .expect("request");
        let (_, next, state) = wait_attempts(&c, 1).await;
        let after = crate::time::now();
        assert_eq!(state, "pending");
        assert!(
            (before + HOUR..=after + HOUR).contains(&next),
            "first retry an hour after the attempt: {next} not in {before}+1h..={after}+1h"
        );

        // As if the hour had passed: due now; the sender is woken as a commit would.
        let before = crate::time::now();
        c.workflow
            .store
            .call(move |conn| -> Result<_, ControlError> {
                Ok(conn.execute("UPDATE outbox SET next_attempt_at = ?1", crate::store::args![before])?)
            })
            .await
            .expect("make the retry due");
        c.workflow.notify.wake.notify_one();
        let (_, next, state) = wait_attempts(&c, 2).await;
        let after = crate::time::now();
        assert_eq!(state, "pending");
        assert!(
            (before + 2 * HOUR..=after + 2 * HOUR).contains(&next),
            "second retry two hours after the attempt: {next} not in {before}+2h..={after}+2h"
        );
        assert_eq!(got.lock().expect("lock").len(), 2, "no attempt before its time");
        shutdown.cancel();
        sender.await.expect("sender ends");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_replicas_on_one_store_only_one_delivers_each_notification() {
    let store = crate::store::testing::postgres();
    let (addr, got) = receiver(Vec::new()).await;
    let notifications = || NotifySettings {
        webhooks: vec![hook(format!("http://{addr}/hook"), None)],
        ..NotifySettings::default()
    };
    let a = Control::open(settings(&store, notifications()), &prometheus::Registry::new())
        .await
        .expect("open a");
    let b_dir = crate::store::testing::replica_dir(&a.data_dir);
    let mut b_settings = settings(&store, notifications());
    b_settings.data_dir = b_dir.path().join("data");
    let b = Control::open(b_settings, &prometheus::Registry::new())
        .await
        .expect("open b");
    let shutdown = CancellationToken::new();
    let _senders = (a.spawn_notifier(shutdown.clone()), b.spawn_notifier(shutdown.clone()));
    let alice = add(&a, "alice").await;
    // Requests through both replicas; each wakes its own sender, and the
    // other's polls the shared outbox too.
    for i in 0..6 {
        let via = if i % 2 == 0 { &a } else { &b };
        via.workflow
            .create_request(alice.clone(), "orders".into(), ask())
            .await
            .expect("request");
    }
    wait_for(&got, 6).await;
    // Both senders have looked at the outbox again since (they poll every 2 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let keys: Vec<String> = got
        .lock()
        .expect("lock")
        .iter()
        .map(|r| r.header("idempotency-key").to_owned())
        .collect();
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!((keys.len(), unique.len()), (6, 6), "each delivered once: {keys:?}");
    shutdown.cancel();
}
