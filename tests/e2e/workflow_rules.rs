//! The policy rules of issue 5 end to end, through the CLI and psql against
//! the running gateway: scheduled starts, ticket patterns, pending TTL with `--wait`,
//! break-glass, approvers who must be named, and history. Short timings;
//! waits poll with a bound and never assert how long something took.

use std::time::{Duration, Instant};

use serde_json::Value;
use time::format_description::well_known::Rfc3339;

use crate::harness::{Gateway, GatewayOptions, now, stderr, stdout};

/// How long a poll waits for a state the gateway reaches on its own.
const BOUND: Duration = Duration::from_secs(30);

fn json(gw: &Gateway, token: &str, args: &[&str]) -> Vec<Value> {
    let out = gw.cli_ok(token, args);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"));
    v.as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{args:?}: no array: {out}"))
}

fn gateway(policy_extra: &str) -> Gateway {
    Gateway::start(GatewayOptions {
        policy_extra: policy_extra.to_owned(),
        ..GatewayOptions::default()
    })
}

#[test]
fn scheduled_start_is_refused_before_and_admitted_after() {
    let gw = gateway("");
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let start = (now() + time::Duration::seconds(8)).format(&Rfc3339).expect("format");
    let id = gw.cli_ok(
        &alice,
        &[
            "request", "orders", "--for", "10m", "--reason", "later", "--start", &start,
        ],
    );
    assert_eq!(gw.cli_ok(&carol, &["approve", &id]), "approved");
    let req = gw.api_json(&alice, &format!("/v1/requests/{id}"));
    let gid = req["grant_id"].as_str().expect("grant_id").to_owned();
    assert_eq!(gw.grant_json(&alice, &gid)["state"], "scheduled");

    let before = gw.psql("alice", &alice, "orders", "disable", "select 1");
    assert!(!before.status.success(), "admitted before the start");
    let err = stderr(&before);
    assert!(err.contains("starts at"), "{err}");

    let deadline = Instant::now() + BOUND;
    while gw.grant_json(&alice, &gid)["state"] == "scheduled" {
        assert!(Instant::now() < deadline, "the grant never became active");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(gw.grant_json(&alice, &gid)["state"], "active");
    let after = gw.psql("alice", &alice, "orders", "disable", "select 1");
    assert!(after.status.success(), "refused after the start: {}", stderr(&after));
    assert_eq!(stdout(&after).trim(), "1");
}

#[test]
fn a_reason_must_match_the_ticket_pattern_and_the_refusal_quotes_it() {
    let gw = Gateway::start(GatewayOptions {
        reason_required: false,
        policy_extra: "      reason: { pattern: \"^[A-Z]+-[0-9]+\" }\n".to_owned(),
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let out = gw.cli(
        &alice,
        &["request", "orders", "--for", "10m", "--reason", "fixing things"],
    );
    assert!(!out.status.success(), "a reason without a ticket was accepted");
    assert!(stderr(&out).contains("^[A-Z]+-[0-9]+"), "{}", stderr(&out));
    let id = gw.cli_ok(
        &alice,
        &["request", "orders", "--for", "10m", "--reason", "INC-42 slow orders"],
    );
    let req = gw.api_json(&alice, &format!("/v1/requests/{id}"));
    assert_eq!(req["reason"], "INC-42 slow orders");
    assert_eq!(req["state"], "pending");
}

#[test]
fn an_unanswered_request_expires_and_wait_says_so() {
    let gw = gateway("      pending_ttl: 1s\n");
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let out = gw.cli(&alice, &["request", "orders", "--reason", "nobody home", "--wait"]);
    assert!(!out.status.success(), "an expired request is no success");
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let id = lines.first().expect("id").clone();
    assert_eq!(lines.get(1).map(String::as_str), Some("expired"));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));

    let all = json(&gw, &alice, &["requests", "--all", "--json"]);
    let req = all.iter().find(|r| r["id"] == id.as_str()).expect("listed");
    assert_eq!(req["state"], "expired");
    assert_eq!(req["decided_by"], "(portcullis)");
    let late = gw.cli(&carol, &["approve", &id]);
    assert!(!late.status.success());
    assert!(stderr(&late).contains("expired, not pending"), "{}", stderr(&late));
    let history = gw.cli_ok(&alice, &["history", &id]);
    assert!(history.contains("request.expire"), "{history}");
}

#[test]
fn break_glass_from_the_cli() {
    let gw = gateway("      break_glass: { groups: [oncall], max_duration: 15m }\n");
    let olga = gw.add_user("olga", &["oncall"], false);
    let bob = gw.add_user("bob", &[], false);
    let refused = gw.cli(
        &bob,
        &["request", "orders", "--break-glass", "--reason", "x", "--for", "5m"],
    );
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("break-glass"), "{}", stderr(&refused));
    let capped = gw.cli(
        &olga,
        &["request", "orders", "--break-glass", "--reason", "x", "--for", "1h"],
    );
    assert!(!capped.status.success());
    assert!(stderr(&capped).contains("15m"), "{}", stderr(&capped));

    let id = gw.cli_ok(
        &olga,
        &[
            "request",
            "orders",
            "--break-glass",
            "--reason",
            "INC-1 db down",
            "--for",
            "10m",
        ],
    );
    let grants = json(&gw, &olga, &["grants", "--json"]);
    let grant = grants.iter().find(|g| g["request_id"] == id.as_str()).expect("grant");
    assert_eq!(grant["break_glass"], true);
    assert_eq!(grant["state"], "active");
    let ok = gw.psql("olga", &olga, "orders", "disable", "select 1");
    assert!(ok.status.success(), "{}", stderr(&ok));
    let history = json(&gw, &olga, &["history", &id, "--json"]);
    let actions: Vec<&str> = history.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["request.create", "request.break_glass", "grant.create"]);
}

#[test]
fn approvers_must_be_named_and_history_shows_every_step() {
    let gw = gateway("");
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let id = gw.request(&alice, "orders", None, "10m");
    let by_admin = gw.cli(&gw.admin_token, &["approve", &id]);
    assert!(!by_admin.status.success());
    assert!(
        stderr(&by_admin).contains("the admin right alone does not approve"),
        "{}",
        stderr(&by_admin)
    );
    assert_eq!(gw.cli_ok(&carol, &["approve", &id, "--comment", "fine"]), "approved");
    let req = gw.api_json(&alice, &format!("/v1/requests/{id}"));
    let gid = req["grant_id"].as_str().expect("grant_id").to_owned();
    gw.cli_ok(&alice, &["revoke", &gid, "--reason", "done"]);
    let table = gw.cli_ok(&alice, &["history", &gid]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines.first().is_some_and(|h| h.starts_with("AT")), "{table}");
    for (line, (actor, action)) in lines.iter().skip(1).zip([
        ("alice", "request.create"),
        ("carol", "request.approve"),
        ("carol", "grant.create"),
        ("alice", "grant.revoke"),
    ]) {
        assert!(line.contains(actor) && line.contains(action), "{line} in {table}");
    }
    assert_eq!(lines.len(), 5, "{table}");
}
