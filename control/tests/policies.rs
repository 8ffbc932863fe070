//! The policy rules of the approval workflow over HTTP: approvers must be
//! named, per-role policies, auto-approve, break-glass, pending TTL,
//! escalation, history and the workflow's metrics. Short timings, and
//! polling with a generous bound instead of timing assertions.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Api, resources, start, start_with};
use portcullis_control::{AutoApprove, BreakGlass, Escalation, Policy, Principals, ResourceKind, ResourceSettings};
use serde_json::{Value, json};

fn people(users: &[&str], groups: &[&str]) -> Principals {
    Principals {
        users: users.iter().map(|u| (*u).to_owned()).collect(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

/// `vault`: carol approves; `read` escalates to managers after 3s; `admin`
/// needs two approvals and expires unanswered after 1s; oncall may break the
/// glass for up to 15m and is auto-approved up to 30m on `read`.
fn vault() -> ResourceSettings {
    let base = Policy {
        approvers: Some(people(&["carol", "dave"], &[])),
        max_duration: Duration::from_secs(4 * 3600),
        escalation: vec![Escalation {
            after: Duration::from_secs(3),
            approvers: people(&[], &["managers"]),
        }],
        break_glass: Some(BreakGlass {
            who: people(&[], &["oncall"]),
            max_duration: Duration::from_secs(900),
        }),
        auto_approve: vec![AutoApprove {
            users: vec!["zed".to_owned()],
            groups: Vec::new(),
            max_duration: Duration::from_secs(1800),
        }],
        ..Policy::default()
    };
    let admin = Policy {
        approvals_required: 2,
        pending_ttl: Some(Duration::from_secs(1)),
        escalation: Vec::new(),
        auto_approve: Vec::new(),
        ..base.clone()
    };
    ResourceSettings {
        name: "vault".to_owned(),
        kind: ResourceKind::Postgres,
        roles: vec!["read".to_owned(), "admin".to_owned()],
        policy: base,
        role_policies: BTreeMap::from([("admin".to_owned(), admin)]),
    }
}

async fn with_vault() -> Api {
    let mut list = resources();
    list.push(vault());
    start_with(list).await
}

async fn file(api: &Api, token: &str, body: Value) -> Value {
    let (status, v) = api.call("POST", "/v1/requests", token, Some(body)).await;
    assert_eq!(status, 201, "{v}");
    v
}

/// Polls a request until `done` holds, for at most 30s.
async fn wait_for(api: &Api, token: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..300 {
        let v = api.ok("GET", &format!("/v1/requests/{id}"), token, None).await;
        if done(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("request {id} never reached the expected state");
}

fn actions(req: &Value) -> Vec<(String, String)> {
    req["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or_default().to_owned(),
                e["action"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
}

#[tokio::test]
async fn the_admin_right_alone_approves_nothing_and_the_refusal_says_why() {
    let api = start().await;
    let alice = api.user("alice", &[], false).await;
    let boss = api.user("boss", &[], true).await;
    let req = file(
        &api,
        &alice,
        json!({"resource": "orders", "role": "read", "reason": "INC-1"}),
    )
    .await;
    let id = req["id"].as_str().expect("id");
    let msg = api
        .refused("POST", &format!("/v1/requests/{id}/approve"), &boss, None, 403)
        .await;
    assert!(msg.contains("the admin right alone does not approve"), "{msg}");
    // web1 names no approvers: nobody approves, admins included.
    let req = file(&api, &alice, json!({"resource": "web1"})).await;
    let id = req["id"].as_str().expect("id");
    let msg = api
        .refused("POST", &format!("/v1/requests/{id}/approve"), &api.admin, None, 403)
        .await;
    assert!(msg.contains("names no approvers"), "{msg}");
    let resources = api.ok("GET", "/v1/resources", &boss, None).await;
    assert_eq!(resources[1]["may_approve"], false);
}

#[tokio::test]
async fn a_role_policy_overrides_the_resource_policy() {
    let api = with_vault().await;
    let alice = api.user("alice", &[], false).await;
    let carol = api.user("carol", &[], false).await;
    let read = file(&api, &alice, json!({"resource": "vault", "role": "read"})).await;
    assert_eq!(read["approvals_required"], 1);
    let admin = file(&api, &alice, json!({"resource": "vault", "role": "admin"})).await;
    assert_eq!(admin["approvals_required"], 2);
    let id = admin["id"].as_str().expect("id");
    let one = api
        .call("POST", &format!("/v1/requests/{id}/approve"), &carol, None)
        .await;
    // One approval of two, unless the 1s TTL won the race: either way not approved.
    assert!(one.0 == 409 || one.1["state"] == "pending", "{one:?}");
}

#[tokio::test]
async fn auto_approve_is_recorded_as_the_rule() {
    let api = with_vault().await;
    let zed = api.user("zed", &[], false).await;
    let req = file(
        &api,
        &zed,
        json!({"resource": "vault", "role": "read", "duration": "30m"}),
    )
    .await;
    assert_eq!(req["state"], "approved");
    assert_eq!(req["auto_approved"], true);
    assert_eq!(req["decided_by"], "auto-approve rule 1");
    let shown = api
        .ok(
            "GET",
            &format!("/v1/requests/{}", req["id"].as_str().expect("id")),
            &zed,
            None,
        )
        .await;
    assert_eq!(
        actions(&shown),
        pairs(&[
            ("zed", "request.create"),
            ("auto-approve rule 1", "request.auto_approve"),
            ("auto-approve rule 1", "grant.create"),
        ])
    );
    // Over the rule's cap it waits for an approver.
    let longer = file(
        &api,
        &zed,
        json!({"resource": "vault", "role": "read", "duration": "31m"}),
    )
    .await;
    assert_eq!(longer["state"], "pending");
}

#[tokio::test]
async fn break_glass_is_a_capped_self_grant_with_a_reason_and_a_flag() {
    let api = with_vault().await;
    let olga = api.user("olga", &["oncall"], false).await;
    let bob = api.user("bob", &[], false).await;
    let bg = |reason: &str, d: &str| json!({"resource": "vault", "role": "admin", "break_glass": true, "reason": reason, "duration": d});
    let msg = api
        .refused("POST", "/v1/requests", &bob, Some(bg("db down", "10m")), 403)
        .await;
    assert!(msg.contains("break-glass"), "{msg}");
    let msg = api
        .refused("POST", "/v1/requests", &olga, Some(bg(" ", "10m")), 400)
        .await;
    assert!(msg.starts_with("reason"), "{msg}");
    let msg = api
        .refused("POST", "/v1/requests", &olga, Some(bg("db down", "16m")), 400)
        .await;
    assert!(msg.contains("15m"), "{msg}");

    let req = file(&api, &olga, bg("db down", "10m")).await;
    assert_eq!(req["state"], "approved");
    assert_eq!(req["break_glass"], true);
    assert_eq!(req["decided_by"], "olga");
    let gid = req["grant_id"].as_str().expect("grant");
    let grant = api.ok("GET", &format!("/v1/grants/{gid}"), &olga, None).await;
    assert_eq!(grant["break_glass"], true);
    assert_eq!(grant["state"], "active");
    let history: Vec<String> = actions(&grant).into_iter().map(|(_, a)| a).collect();
    assert_eq!(history, ["request.create", "request.break_glass", "grant.create"]);
    let listed = api.ok("GET", "/v1/grants", &olga, None).await;
    assert_eq!(listed[0]["break_glass"], true);
}

#[tokio::test]
async fn unanswered_requests_expire_and_the_requester_sees_it() {
    let api = with_vault().await;
    let alice = api.user("alice", &[], false).await;
    let carol = api.user("carol", &[], false).await;
    let req = file(&api, &alice, json!({"resource": "vault", "role": "admin"})).await;
    assert!(req["pending_until"].is_string(), "{req}");
    let id = req["id"].as_str().expect("id");
    let expired = wait_for(&api, &alice, id, |v| v["state"] != "pending").await;
    assert_eq!(expired["state"], "expired");
    assert_eq!(expired["decided_by"], "(portcullis)");
    assert!(
        actions(&expired).contains(&("(portcullis)".to_owned(), "request.expire".to_owned())),
        "{expired}"
    );
    let all = api.ok("GET", "/v1/requests?all=true", &alice, None).await;
    assert_eq!(all[0]["state"], "expired");
    let msg = api
        .refused("POST", &format!("/v1/requests/{id}/approve"), &carol, None, 409)
        .await;
    assert!(msg.contains("expired, not pending"), "{msg}");
    // The metrics follow the expiry's commit.
    let counted = |m: &str| {
        m.contains("portcullis_request_decisions_total{decision=\"expired\"} 1")
            && m.contains("portcullis_requests_pending 0")
    };
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = api.raw("GET", "/metrics", None, None).await.1;
        if counted(&metrics) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted(&metrics), "{metrics}");
}

#[tokio::test]
async fn escalation_lets_the_next_approvers_approve() {
    let api = with_vault().await;
    let alice = api.user("alice", &[], false).await;
    let mia = api.user("mia", &["managers"], false).await;
    let req = file(&api, &alice, json!({"resource": "vault", "role": "read"})).await;
    let id = req["id"].as_str().expect("id");
    assert_eq!(req["escalation_level"], 0);
    let seen = api.ok("GET", "/v1/requests", &mia, None).await;
    // Before the step mia neither sees nor approves it (unless the 3s passed already).
    if seen.as_array().is_some_and(Vec::is_empty) {
        api.refused("POST", &format!("/v1/requests/{id}/approve"), &mia, None, 403)
            .await;
    }
    let escalated = wait_for(&api, &alice, id, |v| v["escalation_level"] == 1).await;
    assert!(
        actions(&escalated).contains(&("(portcullis)".to_owned(), "request.escalate".to_owned())),
        "{escalated}"
    );
    // Once escalated, mia finds it among the pending requests and may approve it.
    let seen = api.ok("GET", "/v1/requests", &mia, None).await;
    assert_eq!(seen[0]["id"], id, "{seen}");
    api.ok("GET", &format!("/v1/requests/{id}"), &mia, None).await;
    let approved = api.ok("POST", &format!("/v1/requests/{id}/approve"), &mia, None).await;
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["decided_by"], "mia");
}

#[tokio::test]
async fn history_and_decision_metrics() {
    let api = start().await;
    let alice = api.user("alice", &[], false).await;
    let carol = api.user("carol", &[], false).await;
    let req = file(
        &api,
        &alice,
        json!({"resource": "orders", "role": "read", "reason": "INC-9 why"}),
    )
    .await;
    let id = req["id"].as_str().expect("id");
    let metrics = api.raw("GET", "/metrics", None, None).await.1;
    assert!(metrics.contains("portcullis_requests_pending 1"), "{metrics}");
    api.ok(
        "POST",
        &format!("/v1/requests/{id}/approve"),
        &carol,
        Some(json!({"comment": "go"})),
    )
    .await;
    let gid = api.ok("GET", &format!("/v1/requests/{id}"), &alice, None).await["grant_id"]
        .as_str()
        .expect("grant")
        .to_owned();
    api.ok(
        "POST",
        &format!("/v1/grants/{gid}/extend"),
        &carol,
        Some(json!({"by": "15m"})),
    )
    .await;
    api.ok(
        "POST",
        &format!("/v1/grants/{gid}/revoke"),
        &alice,
        Some(json!({"reason": "done"})),
    )
    .await;
    let shown = api.ok("GET", &format!("/v1/requests/{id}"), &alice, None).await;
    assert_eq!(
        actions(&shown),
        pairs(&[
            ("alice", "request.create"),
            ("carol", "request.approve"),
            ("carol", "grant.create"),
            ("carol", "grant.extend"),
            ("alice", "grant.revoke"),
        ])
    );
    let history = shown["history"].as_array().expect("history");
    assert_eq!(history[0]["detail"]["reason"], "INC-9 why");
    assert_eq!(history[1]["detail"]["comment"], "go");
    assert_eq!(history[3]["detail"]["by"], "15m");
    assert_eq!(history[4]["detail"]["reason"], "done");
    assert!(common::is_api_time(&history[0]["at"]));
    // Lists stay lean: history only on the one-request answer.
    let all = api.ok("GET", "/v1/requests?all=true", &alice, None).await;
    assert!(all[0].get("history").is_none());

    let metrics = api.raw("GET", "/metrics", None, None).await.1;
    for line in [
        "portcullis_requests_pending 0",
        "portcullis_request_decisions_total{decision=\"approved\"} 1",
        "portcullis_request_time_to_decision_seconds_count{outcome=\"approved\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn the_clock_records_expiring_soon_and_expiry() {
    let api = with_vault().await;
    let zed = api.user("zed", &[], false).await;
    // Under five minutes long: expiring soon from the start.
    let req = file(
        &api,
        &zed,
        json!({"resource": "vault", "role": "read", "duration": "2s"}),
    )
    .await;
    let id = req["id"].as_str().expect("id");
    let done = wait_for(&api, &zed, id, |v| actions(v).iter().any(|(_, a)| a == "grant.expire")).await;
    let clock: Vec<(String, String)> = actions(&done)
        .into_iter()
        .filter(|(actor, _)| actor == "(portcullis)")
        .collect();
    assert_eq!(
        clock,
        pairs(&[
            ("(portcullis)", "grant.expiring_soon"),
            ("(portcullis)", "grant.expire")
        ])
    );

    // A scheduled grant: its start is recorded too, when it came.
    let start = (time::OffsetDateTime::now_utc() + time::Duration::seconds(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let req = file(
        &api,
        &zed,
        json!({"resource": "vault", "role": "read", "duration": "2s", "start": start}),
    )
    .await;
    let id = req["id"].as_str().expect("id");
    let done = wait_for(&api, &zed, id, |v| actions(v).iter().any(|(_, a)| a == "grant.expire")).await;
    let clock: Vec<String> = actions(&done)
        .into_iter()
        .filter(|(actor, _)| actor == "(portcullis)")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(clock, ["grant.start", "grant.expiring_soon", "grant.expire"]);
}

#[tokio::test]
async fn resources_say_who_may_break_the_glass() {
    let api = with_vault().await;
    let olga = api.user("olga", &["oncall"], false).await;
    let list = api.ok("GET", "/v1/resources", &olga, None).await;
    let vault = list
        .as_array()
        .and_then(|l| l.iter().find(|r| r["name"] == "vault"))
        .expect("vault")
        .clone();
    assert_eq!(vault["may_break_glass"], true);
    assert_eq!(vault["may_approve"], false);
    assert_eq!(vault["pending_ttl_s"], 86_400);
    assert_eq!(list[0]["may_break_glass"], false);
}
