//! Split deployment: `portcullis control` and two `portcullis proxy`
//! processes on one PostgreSQL upstream. The feed reaches both proxies,
//! revoke and kill travel to them, proxy and user tokens keep to their own
//! routes, and with the control plane gone the proxies still cut at expiry,
//! refuse new sessions past the staleness, keep the audit events, and
//! resume when it is back.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::split::Split;
use crate::harness::{
    Gateway, GatewayOptions, Session, connect, now, parse_time, running_upstream, secs_between, stderr,
};

/// psql `SELECT 1` through `proxy` until it admits, bounded by `within`.
fn admits_within(proxy: &Gateway, user: &str, token: &str, db: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let out = proxy.psql(user, token, db, "disable", "SELECT 1");
        if out.status.success() {
            return true;
        }
        if Instant::now() > deadline {
            eprintln!("psql through the proxy still refused: {}", stderr(&out));
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn live_sessions(control: &Gateway, token: &str) -> Vec<Value> {
    let out = control.cli_ok(token, &["sessions", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("sessions --json ({e}): {out}"));
    v.as_array().cloned().unwrap_or_else(|| panic!("not an array: {out}"))
}

/// `sessions --json` again until it lists `n` sessions, bounded.
fn sessions_until(control: &Gateway, token: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = live_sessions(control, token);
        if list.len() == n || Instant::now() > deadline {
            return list;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `proxy` refuses alice's new session on `db`, saying it has not heard
/// from its control plane, and its `/readyz` answers 503; answers that body.
fn refuses_for_silence(proxy: &Gateway, alice: &str, db: &str) -> String {
    let out = proxy.psql("alice", alice, db, "disable", "SELECT 1");
    assert!(!out.status.success(), "a new session was admitted");
    assert!(
        stderr(&out).contains("has not heard from its control plane"),
        "psql should say why: {}",
        stderr(&out)
    );
    let (status, body) = proxy.http("GET", "/readyz", None, None);
    assert_eq!(status, 503, "{body}");
    body
}

/// The FATAL a session was cut with, within `within`.
async fn cut_message(s: &mut Session, within: Duration) -> String {
    let err = tokio::time::timeout(within, s.client.simple_query("SELECT pg_sleep(30)"))
        .await
        .expect("the session should be cut in time")
        .expect_err("pg_sleep(30) must not survive the cut");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("the cut should be an ErrorResponse, got {err:?}"));
    assert_eq!(db.severity(), "FATAL", "{db:?}");
    db.message().to_owned()
}

/// Runs `revoke` while each of `sessions` waits in a query, and checks that
/// every one is cut within 5 s with a FATAL naming grant `gid` and the revoke.
async fn cut_by_revoke(sessions: &[&Session], gid: &str, revoke: impl FnOnce()) {
    // Each runs a query when the revoke lands, so the FATAL is its answer.
    let query = format!("SELECT pg_sleep(30) AS revoked_{}", crate::harness::pg::random_hex());
    let cuts: Vec<_> = sessions
        .iter()
        .map(|s| {
            let client = s.client.clone();
            let sent = query.clone();
            tokio::spawn(async move { client.simple_query(&sent).await.map(drop) })
        })
        .collect();
    running_upstream(&query, sessions.len()).await;
    let revoked = now();
    revoke();
    for cut in cuts {
        let err = tokio::time::timeout(Duration::from_secs(5), cut)
            .await
            .expect("the revoke should cut the session within 5 s")
            .expect("join")
            .expect_err("pg_sleep(30) must not survive the revoke");
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("expected a FATAL, got {err:?}"));
        assert_eq!(db.severity(), "FATAL");
        assert!(
            db.message().contains(gid) && db.message().contains("revoked"),
            "{}",
            db.message()
        );
    }
    assert!(secs_between(revoked, now()) < 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_revoke_kill_and_tokens_across_two_proxies() {
    let split = Split::start(2, GatewayOptions::default(), "60s");
    let control = &split.control;
    let alice = control.add_user("alice", &[], false);
    let carol = control.add_user("carol", &[], false);
    let (_, gid) = control.grant(&alice, &carol, "orders", None, "1h");
    for p in &split.proxies {
        assert!(
            admits_within(p, "alice", &alice, "orders", Duration::from_secs(5)),
            "a grant approved on the control plane should admit on every proxy"
        );
    }

    // Live sessions of both proxies are listed by the control plane; a kill reaches the holder.
    let on0 = connect(&split.proxies[0].pg_config("alice", &alice, "orders"))
        .await
        .expect("connect through p0");
    let on1 = connect(&split.proxies[1].pg_config("alice", &alice, "orders"))
        .await
        .expect("connect through p1");
    let listed = sessions_until(control, &carol, 2);
    assert_eq!(
        listed.len(),
        2,
        "sessions should list both proxies' sessions: {listed:?}"
    );
    let mut doomed = connect(&split.proxies[1].pg_config("alice", &alice, "orders"))
        .await
        .expect("connect through p1 again");
    let listed = sessions_until(control, &carol, 3);
    assert_eq!(listed.len(), 3, "{listed:?}");
    let known: Vec<&str> = listed.iter().filter_map(|s| s["id"].as_str()).collect();
    // The newest session is the one to kill (sessions are listed in start order).
    let doomed_id = known.last().expect("an id").to_string();
    assert_eq!(control.cli_ok(&carol, &["kill", &doomed_id]), "killed");
    let (events, closed) = doomed.until_closed(Duration::from_secs(5)).await;
    assert!(closed.is_some(), "the killed session on p1 is still open: {events:?}");
    on1.client
        .query_one("SELECT 1", &[])
        .await
        .expect("the other session on p1 lives");
    on0.client
        .query_one("SELECT 1", &[])
        .await
        .expect("the session on p0 lives");

    // Tokens keep to their routes.
    let proxy_token = &split.tokens[0];
    let (status, body) = control.http("GET", "/v1/users", Some(proxy_token), None);
    assert_eq!(status, 403, "a proxy token on an admin route: {body}");
    let (status, body) = control.http("POST", "/v1/grants/x/revoke", Some(proxy_token), Some("{}"));
    assert_eq!(status, 403, "a proxy token cannot revoke: {body}");
    let (status, body) = control.http("GET", "/v1/feed/snapshot", Some(&alice), None);
    assert_eq!(status, 403, "a user token on the feed: {body}");
    let (status, body) = control.http("GET", "/v1/feed/snapshot", Some(&control.admin_token), None);
    assert_eq!(status, 403, "an admin token on the feed: {body}");
    let (status, _) = control.http("GET", "/v1/feed/snapshot", Some("nope"), None);
    assert_eq!(status, 401);
    let (status, body) = control.http("GET", "/v1/feed/snapshot", Some(proxy_token), None);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(proxy_token.as_str()) && !body.contains(alice.as_str()));
    let (status, body) = control.http("GET", "/v1/feed/changes?after=0&epoch=nope", Some(proxy_token), None);
    assert_eq!(status, 410, "a cursor from another history: {body}");
    // A proxy ships events of its own ids only: a workflow id is refused.
    let forged = serde_json::json!([{
        "id": "wf_999999_0", "at": 0, "action": "request.approve", "user": "carol",
        "approvers": [], "detail": {}
    }]);
    let (status, body) = control.http("POST", "/v1/audit/events", Some(proxy_token), Some(&forged.to_string()));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("start with evt_"), "{body}");
    // Nor a workflow action under an id of its own form.
    let forged = serde_json::json!([{
        "id": "evt_forged", "at": 0, "action": "request.approve", "user": "carol",
        "request_id": "req_1", "approvers": ["carol"], "detail": {}
    }]);
    let (status, body) = control.http("POST", "/v1/audit/events", Some(proxy_token), Some(&forged.to_string()));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not an action a proxy records"), "{body}");

    // Revoke on the control plane cuts the sessions on both proxies.
    cut_by_revoke(&[&on0, &on1], &gid, || {
        control.cli_ok(&carol, &["revoke", &gid, "--reason", "split e2e"]);
    })
    .await;
    for p in &split.proxies {
        let out = p.psql("alice", &alice, "orders", "disable", "SELECT 1");
        assert!(!out.status.success(), "a revoked grant admitted on a proxy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_outlive_the_control_plane_and_resume() {
    outage(Split::start(2, GatewayOptions::default(), "2s")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_outlive_both_replicas_of_a_shared_store_and_resume() {
    outage(Split::start_replicated(2, GatewayOptions::default(), "2s")).await;
}

/// The control plane (every replica of it) stops: proxies keep enforcing,
/// refuse new sessions past the staleness, spool audit; it comes back: they
/// resume (resync only where its feed is a new history), and the audit of
/// the outage arrives once.
async fn outage(mut split: Split) {
    let shared = !split.replicas.is_empty();
    let alice = split.control.add_user("alice", &[], false);
    let carol = split.control.add_user("carol", &[], false);
    let (_, short) = split.control.grant(&alice, &carol, "orders", None, "15s");
    let (_, long) = split.control.grant(&alice, &carol, "bench", None, "1h");
    let expires = parse_time(
        split.control.grant_json(&alice, &short)["expires_at"]
            .as_str()
            .expect("expires_at"),
    );
    assert!(admits_within(
        &split.proxies[0],
        "alice",
        &alice,
        "orders",
        Duration::from_secs(5)
    ));
    assert!(admits_within(
        &split.proxies[1],
        "alice",
        &alice,
        "bench",
        Duration::from_secs(5)
    ));
    let mut short_s = connect(&split.proxies[0].pg_config("alice", &alice, "orders"))
        .await
        .expect("connect on the short grant");
    let long_s = connect(&split.proxies[1].pg_config("alice", &alice, "bench"))
        .await
        .expect("connect on the long grant");
    short_s
        .client
        .simple_query("SELECT 'before the outage'")
        .await
        .expect("query");

    split.control.stop();
    for r in &mut split.replicas {
        r.stop();
    }
    let stopped = Instant::now();

    // Statements made meanwhile are audited later.
    long_s
        .client
        .simple_query("SELECT 'during the outage'")
        .await
        .expect("query while the control plane is down");

    // Past the staleness: new sessions refused with the reason, /readyz 503, live sessions run on.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(stopped.elapsed()));
    let body = refuses_for_silence(&split.proxies[1], &alice, "bench");
    assert!(body.contains("control plane"), "{body}");
    let (_, metrics) = split.proxies[1].http("GET", "/metrics", None, None);
    for name in [
        "portcullis_feed_staleness_seconds",
        "portcullis_feed_revision",
        "portcullis_feed_lag_seconds",
        "portcullis_feed_reconnects_total",
        "portcullis_audit_spool_depth",
    ] {
        assert!(metrics.contains(name), "{name} missing: {metrics}");
    }
    assert!(
        !metrics.contains(split.tokens[1].as_str()),
        "a proxy token reached the metrics"
    );
    long_s
        .client
        .simple_query("SELECT 'still running'")
        .await
        .expect("a live session keeps running");

    // Expiry still cuts, by the proxy's own clock.
    let msg = cut_message(&mut short_s, Duration::from_secs(30)).await;
    let late = secs_between(expires, now());
    assert!(msg.contains(&short), "{msg}");
    assert!((-0.2..3.0).contains(&late), "cut {late:.2}s after expires_at");

    // The control plane comes back: the proxies resync, a new grant admits on both.
    split.control.restart();
    for r in &mut split.replicas {
        r.restart();
    }
    for p in &split.proxies {
        let deadline = Instant::now() + Duration::from_secs(15);
        while p.http("GET", "/readyz", None, None).0 != 200 {
            assert!(Instant::now() < deadline, "a proxy did not become ready again");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The embedded store's feed is a new history after a restart (revisions
    // restart): each proxy took a new snapshot. A shared store's history
    // goes on: each proxy resumed from its cursor.
    for p in &split.proxies {
        let (_, metrics) = p.http("GET", "/metrics", None, None);
        let resynced = metrics
            .lines()
            .any(|l| l.starts_with("portcullis_feed_resyncs_total ") && !l.ends_with(" 0"));
        assert_eq!(resynced, !shared, "resyncs after the restart: {metrics}");
    }
    let (_, again) = split.control.grant(&alice, &carol, "orders", None, "1h");
    for p in &split.proxies {
        assert!(
            admits_within(p, "alice", &alice, "orders", Duration::from_secs(5)),
            "grant {again}, approved after the restart, should admit on every proxy"
        );
    }
    let _ = long;

    // The audit events of the outage reached the control plane, once each.
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let out = split.control.cli_ok(&split.control.admin_token, &["audit", "--json"]);
        let v: Value = serde_json::from_str(&out).expect("audit JSON");
        let events = v.as_array().cloned().unwrap_or_default();
        let text = out.as_str();
        let done = text.contains("during the outage")
            && text.contains("still running")
            && events.iter().any(|e| {
                e["action"] == "session.end" && e["grant_id"] == short.as_str() && e["detail"]["ended"] == "expired"
            });
        if done || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let text = serde_json::to_string(&events).expect("JSON");
    assert!(
        text.contains("during the outage"),
        "statement made during the outage not audited"
    );
    assert!(
        text.contains("still running"),
        "statement made past the staleness not audited"
    );
    // The store keeps one event per id; what could repeat is an event sent
    // again under a new id (a spool replayed after a restart).
    for text in ["SELECT 'during the outage'", "SELECT 'still running'"] {
        let copies: Vec<&Value> = events
            .iter()
            .filter(|e| e["action"] == "statement" && e["detail"]["text"] == text)
            .collect();
        assert_eq!(copies.len(), 1, "{text} recorded {} times", copies.len());
        assert_eq!(copies[0]["detail"]["proxy"], "p1", "the proxy that sent it");
    }
    let ends = events
        .iter()
        .filter(|e| {
            e["action"] == "session.end" && e["grant_id"] == short.as_str() && e["detail"]["ended"] == "expired"
        })
        .count();
    assert_eq!(
        ends,
        1,
        "the end of the session cut during the outage recorded {ends} times: {:#?}",
        events
            .iter()
            .filter(|e| e["action"] == "session.end")
            .collect::<Vec<_>>()
    );
    for t in &split.tokens {
        assert!(!text.contains(t.as_str()), "a proxy token reached the audit log");
    }
    // Every spooled event was delivered: the spools are empty, the chain whole.
    for p in &split.proxies {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, metrics) = p.http("GET", "/metrics", None, None);
            if metrics.lines().any(|l| l == "portcullis_audit_spool_depth 0") {
                break;
            }
            assert!(Instant::now() < deadline, "a spool still holds events: {metrics}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let verdict = split.control.cli_ok(&split.control.admin_token, &["audit", "verify"]);
    assert!(verdict.contains("intact"), "{verdict}");
}

#[test]
fn a_proxy_started_while_the_control_plane_is_down_says_why() {
    let mut split = Split::start(1, GatewayOptions::default(), "2s");
    let alice = split.control.add_user("alice", &[], false);
    split.control.stop();
    // It holds no users or grants yet: the reason comes before any password check.
    split.proxies[0].restart_listening();
    let body = refuses_for_silence(&split.proxies[0], &alice, "bench");
    assert!(body.contains("no snapshot"), "{body}");
}

/// Two control replicas on one PostgreSQL store, proxy 0 following replica
/// A first and proxy 1 replica B: a grant approved through B admits on both
/// proxies, a revoke through A cuts the sessions on both, and with A gone
/// approvals go on through B and reach both proxies (proxy 0 moves to B).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_store_serve_every_proxy_and_survive_losing_one() {
    let mut split = Split::start_replicated(2, GatewayOptions::default(), "60s");
    let (a, b) = (&split.control, &split.replicas[0]);
    let alice = a.add_user("alice", &[], false);
    let carol = b.add_user("carol", &[], false);
    let (_, gid) = b.grant(&alice, &carol, "orders", None, "1h");
    for p in &split.proxies {
        assert!(
            admits_within(p, "alice", &alice, "orders", Duration::from_secs(5)),
            "a grant approved through replica B should admit on every proxy"
        );
    }

    // Every replica lists every proxy's sessions, and a kill through B
    // reaches a session on the proxy that follows A.
    let mut sessions = Vec::new();
    for p in &split.proxies {
        sessions.push(connect(&p.pg_config("alice", &alice, "orders")).await.expect("connect"));
    }
    let mut doomed = connect(&split.proxies[0].pg_config("alice", &alice, "orders"))
        .await
        .expect("connect through p0 again");
    for replica in [a, b] {
        let listed = sessions_until(replica, &carol, 3);
        assert_eq!(listed.len(), 3, "each replica lists both proxies' sessions: {listed:?}");
    }
    let listed = live_sessions(b, &carol);
    let doomed_id = listed.last().and_then(|s| s["id"].as_str()).expect("an id").to_owned();
    assert_eq!(b.cli_ok(&carol, &["kill", &doomed_id]), "killed");
    let (events, closed) = doomed.until_closed(Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "the session killed through B is still open on p0: {events:?}"
    );

    // A revoke through A ends the sessions on both proxies.
    cut_by_revoke(&[&sessions[0], &sessions[1]], &gid, || {
        a.cli_ok(&carol, &["revoke", &gid, "--reason", "replicas e2e"]);
    })
    .await;

    // Each proxy shipped its sessions' events to the replica it follows;
    // both land in the one log of the store, which B reads and verifies.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ended = loop {
        let out = b.cli_ok(&b.admin_token, &["audit", "--action", "session.end", "--json"]);
        let events: Vec<Value> = serde_json::from_str(&out).expect("audit JSON");
        let cut: Vec<Value> = events
            .into_iter()
            .filter(|e| e["grant_id"] == gid.as_str() && e["detail"]["ended"] == "revoked")
            .collect();
        if cut.len() >= 2 || Instant::now() > deadline {
            break cut;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(
        ended.len(),
        2,
        "one session.end per proxy, through either replica: {ended:?}"
    );
    let verdict = b.cli_ok(&b.admin_token, &["audit", "verify"]);
    assert!(verdict.contains("intact"), "{verdict}");

    // Replica A is lost: requests and approvals go on through B, and the
    // proxy that followed A moves to B and hears of them.
    split.control.stop();
    let b = &split.replicas[0];
    let (_, again) = b.grant(&alice, &carol, "orders", None, "1h");
    for p in &split.proxies {
        assert!(
            admits_within(p, "alice", &alice, "orders", Duration::from_secs(15)),
            "a grant approved through B after A's loss should admit on every proxy"
        );
    }
    let listed = b.cli_ok(&carol, &["grants", "--json"]);
    assert!(listed.contains(&again), "{listed}");
}

/// An event the control plane refuses (here one no proxy may write, put in
/// a stopped proxy's spool as a proxy newer than its control plane would)
/// is set aside, and holds up none of the events after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_control_plane_refuses_is_set_aside_and_the_rest_delivered() {
    use portcullis_protocol::audit::AuditEvent;
    use portcullis_proxy::audit::spool::{Limits, REFUSED, Spool};

    let mut split = Split::start(1, GatewayOptions::default(), "60s");
    let alice = split.control.add_user("alice", &[], false);
    let carol = split.control.add_user("carol", &[], false);
    split.control.grant(&alice, &carol, "orders", None, "1h");
    let spool_dir = split.proxies[0].data_dir.join("spool");
    split.proxies[0].stop();
    {
        let mut spool = Spool::open(&spool_dir, Limits::default()).expect("the stopped proxy's spool");
        let forged = AuditEvent::new(
            "evt_from_the_future".into(),
            1_700_000_000_000,
            "request.approve",
            "carol",
        );
        spool.append(&[forged]).expect("append");
    }
    split.proxies[0].restart();
    let proxy = &split.proxies[0];
    assert!(admits_within(proxy, "alice", &alice, "orders", Duration::from_secs(5)));
    let s = connect(&proxy.pg_config("alice", &alice, "orders"))
        .await
        .expect("connect");
    s.client
        .simple_query("SELECT 'behind the refused one'")
        .await
        .expect("query");
    drop(s);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = split.control.cli_ok(&split.control.admin_token, &["audit", "--json"]);
        if out.contains("behind the refused one") {
            assert!(!out.contains("evt_from_the_future"), "a forged event was stored");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events after a refused one were not delivered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, metrics) = proxy.http("GET", "/metrics", None, None);
    assert!(
        metrics.lines().any(|l| l == "portcullis_audit_refused_events_total 1"),
        "{metrics}"
    );
    let aside = std::fs::read_to_string(spool_dir.join(REFUSED)).expect("refused.jsonl");
    assert!(aside.contains("evt_from_the_future"), "{aside}");
    let log = proxy.log();
    assert!(
        log.contains("the audit log refused an audit event") && log.contains("not an action a proxy records"),
        "{log}"
    );
}

/// An SSH login to a proxy that has no snapshot of the grant feed yet (its
/// control plane down since it started) is told why on stderr, without a
/// token prompt, and the refusal reaches the audit log once the control
/// plane is back: once, as `control_plane_stale`.
#[test]
fn an_ssh_login_to_a_proxy_without_its_first_snapshot_is_refused_and_audited() {
    use crate::harness::sshd::{Sshd, keygen, ssh_prompted};

    let sshd = Sshd::start();
    let opts = GatewayOptions {
        ssh_resources: Some(sshd.resource_yaml()),
        ..GatewayOptions::default()
    };
    let mut split = Split::start(1, opts, "2s");
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("alice_ed25519");
    keygen(&key);
    let public = keys.path().join("alice_ed25519.pub").display().to_string();
    let control = &split.control;
    control.cli_ok(&control.admin_token, &["user", "add", "alice", "--ssh-key", &public]);
    split.control.stop();
    split.proxies[0].restart_listening();

    let out = ssh_prompted(split.proxies[0].ssh_port, &key, "alice+web1", "echo hi", "not-a-token");
    assert!(!out.status.success(), "admitted: {}", stderr(&out));
    assert!(
        stderr(&out).contains("has not heard from its control plane"),
        "ssh should say why: {}",
        stderr(&out)
    );

    split.control.restart();
    let denied = split
        .control
        .audit_until(&["--action", "connect.denied"], |e| !e.is_empty());
    let ssh: Vec<&Value> = denied.iter().filter(|e| e["detail"]["protocol"] == "ssh").collect();
    assert_eq!(ssh.len(), 1, "one refusal for the connection: {denied:#?}");
    assert_eq!(ssh[0]["detail"]["outcome"], "control_plane_stale", "{:#?}", ssh[0]);
    assert_eq!(ssh[0]["user"], "alice", "{:#?}", ssh[0]);
}
