//! The audit routes over HTTP: workflow actions shipped into the log,
//! search with filters and paging, the JSON-lines export, verify, the
//! session history, and refusals that name the parameter at fault.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use portcullis_protocol::audit::AuditEvent;
use portcullis_protocol::sessions::SessionInfo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::Api;

/// `GET path` until `done` holds for the answer (the shipper runs beside the API).
async fn eventually(api: &Api, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = api.ok("GET", path, &api.admin, None).await;
        if done(&v) || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn actions(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A request by alice approved by carol: answers (request id, grant id).
async fn approved(api: &Api, alice: &str, carol: &str) -> (String, String) {
    let body = json!({"resource": "orders", "role": "read", "duration": "30m", "reason": "INC-42 slow orders"});
    let req = api.ok("POST", "/v1/requests", alice, Some(body)).await;
    let id = req["id"].as_str().expect("id").to_owned();
    let req = api
        .ok(
            "POST",
            &format!("/v1/requests/{id}/approve"),
            carol,
            Some(json!({"comment": "go"})),
        )
        .await;
    (id, req["grant_id"].as_str().expect("grant").to_owned())
}

#[tokio::test]
async fn workflow_actions_reach_the_log_with_reason_and_approvers() {
    let api = common::start().await;
    let alice = api.user("alice", &["eng"], false).await;
    let carol = api.user("carol", &[], false).await;
    let (rid, gid) = approved(&api, &alice, &carol).await;
    api.ok(
        "POST",
        &format!("/v1/grants/{gid}/revoke"),
        &carol,
        Some(json!({"reason": "done"})),
    )
    .await;

    let page = eventually(&api, &format!("/v1/audit?grep={rid}"), |v| actions(v).len() >= 4).await;
    assert_eq!(
        actions(&page),
        ["request.create", "request.approve", "grant.create", "grant.revoke"]
    );
    for e in page["events"].as_array().expect("events") {
        assert_eq!(e["request_id"], rid, "{e}");
        assert_eq!(e["reason"], "INC-42 slow orders", "{e}");
        assert_eq!(e["resource"], "orders");
        assert_eq!(e["role"], "read");
        assert!(common::is_api_time(&e["at"]), "{e}");
    }
    let [create, approve, grant, revoke] = page["events"].as_array().expect("events").as_slice() else {
        panic!("four events")
    };
    assert_eq!((&create["user"], &create["approvers"]), (&json!("alice"), &json!([])));
    assert_eq!(
        (&approve["user"], &approve["approvers"]),
        (&json!("carol"), &json!(["carol"]))
    );
    assert_eq!(approve["detail"]["comment"], "go");
    assert_eq!(grant["grant_id"], gid);
    assert_eq!(
        (&revoke["user"], &revoke["detail"]["reason"]),
        (&json!("carol"), &json!("done"))
    );
    assert_eq!(revoke["approvers"], json!(["carol"]));

    // Filters: by the actor, by action, by time.
    let carols = api.ok("GET", "/v1/audit?user=carol", &api.admin, None).await;
    assert_eq!(actions(&carols), ["request.approve", "grant.create", "grant.revoke"]);
    let revokes = api.ok("GET", "/v1/audit?action=grant.revoke", &api.admin, None).await;
    assert_eq!(actions(&revokes), ["grant.revoke"]);
    let future = api
        .ok("GET", "/v1/audit?since=2100-01-01T00:00:00Z", &api.admin, None)
        .await;
    assert_eq!(actions(&future), Vec::<String>::new());
    let recent = api
        .ok("GET", "/v1/audit?since=1h&action=request.create", &api.admin, None)
        .await;
    assert_eq!(actions(&recent), ["request.create"]);

    let verdict = api.ok("GET", "/v1/audit/verify", &api.admin, None).await;
    assert_eq!(verdict["intact"], true, "{verdict}");
    assert_eq!(verdict["break"], Value::Null);
    assert_eq!(verdict["events"], verdict["checked"]);
}

#[tokio::test]
async fn pages_follow_the_cursor_both_ways() {
    let api = common::start().await;
    let alice = api.user("alice", &["eng"], false).await;
    let carol = api.user("carol", &[], false).await;
    approved(&api, &alice, &carol).await;
    approved(&api, &alice, &carol).await;
    // admin, alice, carol created; two requests, approvals and grants.
    let all = eventually(&api, "/v1/audit?limit=1000", |v| actions(v).len() >= 9).await;
    let seqs: Vec<u64> = all["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs.len(), 9);
    assert_eq!(all["next"], Value::Null);

    let mut paged = Vec::new();
    let mut path = "/v1/audit?limit=4".to_owned();
    loop {
        let page = api.ok("GET", &path, &api.admin, None).await;
        paged.extend(
            page["events"]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| e["seq"].as_u64().expect("seq")),
        );
        match page["next"].as_u64() {
            Some(next) => path = format!("/v1/audit?limit=4&after={next}"),
            None => break,
        }
    }
    assert_eq!(paged, seqs, "pages of 4 add up to the whole, in order");

    let newest = api.ok("GET", "/v1/audit?order=newest&limit=2", &api.admin, None).await;
    let newest_seqs: Vec<u64> = newest["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(newest_seqs, [seqs[8], seqs[7]]);
    let next = newest["next"].as_u64().expect("more pages");
    let older = api
        .ok(
            "GET",
            &format!("/v1/audit?order=newest&limit=2&after={next}"),
            &api.admin,
            None,
        )
        .await;
    assert_eq!(older["events"][0]["seq"].as_u64(), Some(seqs[6]));
}

#[tokio::test]
async fn bad_parameters_and_non_admins_are_refused() {
    let api = common::start().await;
    let alice = api.user("alice", &["eng"], false).await;
    for (query, field) in [
        ("since=yesterday", "since"),
        ("until=2026-13-40", "until"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("order=sideways", "order"),
        ("after=x", "after"),
        ("grep=%ZZ", "grep"),
    ] {
        let msg = api
            .refused("GET", &format!("/v1/audit?{query}"), &api.admin, None, 400)
            .await;
        assert!(msg.contains(&format!("{field}:")), "{query}: {msg}");
    }
    let msg = api.refused("GET", "/v1/audit?usr=alice", &api.admin, None, 400).await;
    assert!(msg.contains("unknown parameter \"usr\""), "{msg}");
    let msg = api
        .refused("GET", "/v1/sessions/history?limit=-1", &api.admin, None, 400)
        .await;
    assert!(msg.contains("limit:"), "{msg}");
    for path in ["/v1/audit", "/v1/audit/verify", "/v1/audit/export"] {
        let msg = api.refused("GET", path, &alice, None, 403).await;
        assert!(msg.contains("only an admin may read the audit log"), "{msg}");
    }
}

/// `GET path` read whole, the chunked body joined: (status, content type, body).
async fn get_chunked(api: &Api, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(api.addr).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n",
        api.admin
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, mut rest) = text.split_once("\r\n\r\n").expect("header");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        body.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    (status, ctype, body)
}

fn session_event(id: &str, seq: u64, action: &str, session: &str, user: &str) -> AuditEvent {
    AuditEvent {
        id: format!("evt_{id}_{seq}"),
        at: 1_700_000_000_000 + seq as i64,
        action: action.to_owned(),
        user: user.to_owned(),
        resource: Some("orders".to_owned()),
        role: Some("read".to_owned()),
        session_id: Some(session.to_owned()),
        grant_id: Some("grt_1".to_owned()),
        request_id: Some("req_1".to_owned()),
        reason: None,
        approvers: Vec::new(),
        detail: BTreeMap::new(),
    }
}

#[tokio::test]
async fn the_export_streams_every_match_as_json_lines() {
    let api = common::start().await;
    let many: Vec<AuditEvent> = (0..1200)
        .map(|i| {
            let mut e = session_event("x", i, "statement", "ses_1", "alice");
            e.detail.insert("text".into(), format!("SELECT {i}"));
            e
        })
        .collect();
    api.control.audit_log().append(many).await.expect("append");
    let (status, ctype, body) = get_chunked(&api, "/v1/audit/export?action=statement").await;
    assert_eq!((status, ctype.as_str()), (200, "application/x-ndjson"));
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 1200, "more than one page of the store");
    assert_eq!(lines[0]["detail"]["text"], "SELECT 0");
    assert_eq!(lines[1199]["detail"]["text"], "SELECT 1199");
    let (_, _, body) = get_chunked(&api, "/v1/audit/export?action=statement&order=newest&limit=3").await;
    let texts: Vec<String> = body
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("JSON")["detail"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(texts, ["SELECT 1199", "SELECT 1198", "SELECT 1197"]);
}

#[tokio::test]
async fn session_history_shows_past_and_live_sessions_to_whom_may_see_them() {
    let api = common::start().await;
    let alice = api.user("alice", &["eng"], false).await;
    let bob = api.user("bob", &["eng"], false).await;
    let carol = api.user("carol", &[], false).await;
    let mut end = session_event("a", 3, "session.end", "ses_a", "alice");
    end.detail.extend([
        ("ended".to_owned(), "client_quit".to_owned()),
        ("bytes_in".to_owned(), "120".to_owned()),
        ("bytes_out".to_owned(), "480".to_owned()),
        ("duration_ms".to_owned(), "1500".to_owned()),
    ]);
    let mut statement = session_event("a", 2, "statement", "ses_a", "alice");
    statement.detail.insert("text".into(), "SELECT 42".into());
    let events = vec![
        session_event("a", 1, "session.start", "ses_a", "alice"),
        statement,
        end,
        session_event("b", 4, "session.start", "ses_b", "bob"),
    ];
    api.control.audit_log().append(events).await.expect("append");
    api.sessions.0.lock().expect("lock").push(SessionInfo {
        id: "ses_b".into(),
        user: "bob".into(),
        resource: "orders".into(),
        role: "read".into(),
        protocol: "postgres".into(),
        grant_id: "grt_2".into(),
        started_at: 1_700_000_000_004,
        bytes_in: 7,
        bytes_out: 9,
    });

    let all = api.ok("GET", "/v1/sessions/history", &api.admin, None).await;
    let sessions = all["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 2, "{all}");
    assert_eq!(sessions[0]["id"], "ses_a");
    assert_eq!(sessions[0]["state"], "ended");
    assert_eq!(sessions[0]["ended"], "client_quit");
    assert_eq!(
        (sessions[0]["bytes_in"].as_u64(), sessions[0]["bytes_out"].as_u64()),
        (Some(120), Some(480))
    );
    assert!(common::is_api_time(&sessions[0]["ended_at"]));
    assert_eq!(
        (&sessions[1]["state"], &sessions[1]["bytes_in"]),
        (&json!("live"), &json!(7))
    );

    // Alice sees her own; carol approves orders and sees both.
    let mine = api.ok("GET", "/v1/sessions/history", &alice, None).await;
    assert_eq!(mine["sessions"].as_array().map(Vec::len), Some(1));
    let overseen = api.ok("GET", "/v1/sessions/history", &carol, None).await;
    assert_eq!(overseen["sessions"].as_array().map(Vec::len), Some(2));

    let shown = api
        .ok("GET", "/v1/sessions/ses_a/events?action=statement", &alice, None)
        .await;
    assert_eq!(shown["session"]["id"], "ses_a");
    assert_eq!(actions(&shown), ["statement"]);
    assert_eq!(shown["events"][0]["detail"]["text"], "SELECT 42");
    let msg = api.refused("GET", "/v1/sessions/ses_a/events", &bob, None, 403).await;
    assert!(msg.contains("ses_a"), "{msg}");
    api.refused("GET", "/v1/sessions/ses_nope/events", &api.admin, None, 404)
        .await;
}
