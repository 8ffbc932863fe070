//! The request workflow through the `portcullis` CLI, as scripts use it:
//! output spellings and JSON fields from DESIGN.md, and the policy rules.

use serde_json::Value;

use crate::harness::{Gateway, GatewayOptions, parse_time, secs_between, stderr, stdout};

fn json(gw: &Gateway, token: &str, args: &[&str]) -> Vec<Value> {
    let out = gw.cli_ok(token, args);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"));
    v.as_array()
        .unwrap_or_else(|| panic!("{args:?} printed no JSON array: {out}"))
        .clone()
}

fn find<'a>(items: &'a [Value], id: &str) -> &'a Value {
    items
        .iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {items:?}"))
}

/// A failed CLI call: non-zero exit, nothing on stdout, one line on stderr.
fn refused(out: &std::process::Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} should fail; stdout: {}", stdout(out));
    let err = stderr(out);
    assert_eq!(
        err.trim().lines().count(),
        1,
        "{what}: expected one line on stderr, got {err:?}"
    );
    assert!(
        stdout(out).trim().is_empty(),
        "{what}: nothing on stdout expected, got {:?}",
        stdout(out)
    );
    err
}

#[test]
fn user_add_prints_only_the_token() {
    let gw = Gateway::start(GatewayOptions::default());
    let out = gw.cli(
        &gw.admin_token,
        &["user", "add", "alice", "--group", "eng", "--group", "web"],
    );
    let printed = stdout(&out);
    assert!(out.status.success(), "user add failed: {}", stderr(&out));
    assert_eq!(printed.lines().count(), 1, "one line expected: {printed:?}");
    let token = printed.trim();
    assert!(
        token.len() >= 16 && !token.contains(char::is_whitespace),
        "token {token:?}"
    );

    let me = gw.cli_ok(token, &["whoami"]);
    assert_eq!(me.lines().next(), Some("alice"), "whoami: {me}");

    let users = json(&gw, &gw.admin_token, &["user", "list", "--json"]);
    let alice = users.iter().find(|u| u["name"] == "alice").expect("alice listed");
    assert_eq!(alice["groups"], serde_json::json!(["eng", "web"]));
    assert_eq!(alice["admin"], false);
    assert!(alice["created_at"].is_string());
    assert!(
        users.iter().any(|u| u["name"] == "admin" && u["admin"] == true),
        "{users:?}"
    );
    let listing = serde_json::to_string(&users).expect("json");
    assert!(!listing.contains(token), "user list shows a token");

    let table = gw.cli_ok(&gw.admin_token, &["user", "list"]);
    let header = table.lines().next().expect("a header line");
    assert!(header.contains("NAME"), "table header: {header}");
    assert!(table.lines().any(|l| l.starts_with("alice")), "{table}");

    // Adding users is an admin right.
    let out = gw.cli(token, &["user", "add", "mallory"]);
    refused(&out, "user add by a non-admin");
}

#[test]
fn request_approve_and_list_as_json() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &["eng"], false);
    let carol = gw.add_user("carol", &[], false);

    let out = gw.cli(
        &alice,
        &[
            "request",
            "orders",
            "--role",
            "read",
            "--for",
            "30m",
            "--reason",
            "JIRA-1 look at orders",
        ],
    );
    let printed = stdout(&out);
    assert!(out.status.success(), "request failed: {}", stderr(&out));
    assert_eq!(printed.lines().count(), 1, "the id alone: {printed:?}");
    let id = printed.trim().to_owned();
    assert!(!id.is_empty() && !id.contains(char::is_whitespace));

    let pending = json(&gw, &alice, &["requests", "--json"]);
    let r = find(&pending, &id);
    for key in [
        "id",
        "user",
        "resource",
        "role",
        "state",
        "reason",
        "duration_s",
        "created_at",
    ] {
        assert!(r.get(key).is_some(), "request JSON lacks {key}: {r}");
    }
    assert_eq!(r["user"], "alice");
    assert_eq!(r["resource"], "orders");
    assert_eq!(r["role"], "read");
    assert_eq!(r["state"], "pending");
    assert_eq!(r["reason"], "JIRA-1 look at orders");
    assert_eq!(r["duration_s"], 1800);
    parse_time(r["created_at"].as_str().expect("created_at"));

    // The approver sees it in the text table.
    let table = gw.cli_ok(&carol, &["requests"]);
    assert!(table.lines().next().is_some_and(|h| h.contains("ID")), "{table}");
    assert!(table.contains(&id), "carol should see {id}: {table}");

    assert_eq!(gw.cli_ok(&carol, &["approve", &id, "--comment", "ok"]), "approved");

    let grants = json(&gw, &alice, &["grants", "--json"]);
    assert_eq!(grants.len(), 1, "{grants:?}");
    let g = &grants[0];
    for key in [
        "id",
        "request_id",
        "user",
        "resource",
        "role",
        "starts_at",
        "expires_at",
        "state",
    ] {
        assert!(g.get(key).is_some(), "grant JSON lacks {key}: {g}");
    }
    assert_eq!(g["request_id"], id.as_str());
    assert_eq!(g["user"], "alice");
    assert_eq!(g["resource"], "orders");
    assert_eq!(g["role"], "read");
    assert_eq!(g["state"], "active");
    let starts = g["starts_at"].as_str().expect("starts_at");
    let expires = g["expires_at"].as_str().expect("expires_at");
    assert!(expires.contains('.'), "expires_at should carry a fraction: {expires}");
    let span = secs_between(parse_time(starts), parse_time(expires));
    assert!((span - 1800.0).abs() < 1.0, "grant lasts {span}s, expected 1800");

    let all = json(&gw, &alice, &["requests", "--all", "--json"]);
    let r = find(&all, &id);
    assert_eq!(r["state"], "approved");
    assert_eq!(r["grant_id"], g["id"]);
    // A decided request is not pending any more.
    let pending = json(&gw, &alice, &["requests", "--json"]);
    assert!(pending.iter().all(|r| r["id"] != id.as_str()), "{pending:?}");
    // Deciding twice is refused.
    refused(
        &gw.cli(&carol, &["approve", &id]),
        "a second approval of a decided request",
    );
}

#[test]
fn grant_clock_starts_at_approval() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let id = gw.request(&alice, "orders", None, "10m");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(gw.cli_ok(&carol, &["approve", &id]), "approved");
    let req = gw.api_json(&alice, &format!("/v1/requests/{id}"));
    let grant = gw.grant_json(&alice, req["grant_id"].as_str().expect("grant_id"));
    let created = parse_time(req["created_at"].as_str().expect("created_at"));
    let starts = parse_time(grant["starts_at"].as_str().expect("starts_at"));
    assert!(
        secs_between(created, starts) >= 2.5,
        "the grant started at {starts}, request created at {created}: the clock should start at approval"
    );
}

#[test]
fn deny_prints_denied() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let dave = gw.add_user("dave", &["dba"], false);
    let id = gw.request(&alice, "orders", None, "1h");
    refused(&gw.cli(&dave, &["deny", &id]), "deny without --reason");
    assert_eq!(
        gw.cli_ok(&dave, &["deny", &id, "--reason", "not during the freeze"]),
        "denied"
    );
    let all = json(&gw, &alice, &["requests", "--all", "--json"]);
    assert_eq!(find(&all, &id)["state"], "denied");
    assert!(json(&gw, &alice, &["grants", "--all", "--json"]).is_empty());
    refused(&gw.cli(&dave, &["approve", &id]), "approving a denied request");
}

#[test]
fn self_approval_is_refused_even_for_an_admin() {
    let gw = Gateway::start(GatewayOptions::default());
    // carol is both an admin and a named approver of orders.
    let carol = gw.add_user("carol", &["dba"], true);
    let dave = gw.add_user("dave", &["dba"], false);
    let id = gw.request(&carol, "orders", None, "1h");
    let err = refused(&gw.cli(&carol, &["approve", &id]), "self-approval");
    assert!(err.starts_with("portcullis: "), "{err}");
    let r = gw.api_json(&carol, &format!("/v1/requests/{id}"));
    assert_eq!(r["state"], "pending", "after a refused self-approval: {r}");
    assert!(r["approvals"].as_array().is_some_and(Vec::is_empty), "{r}");
    // The built-in admin is not an approver of orders either.
    refused(
        &gw.cli(&gw.admin_token, &["approve", &id]),
        "approval by an admin who is not an approver",
    );
    assert_eq!(gw.cli_ok(&dave, &["approve", &id]), "approved");
}

#[test]
fn request_over_max_is_refused_naming_the_max() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let err = refused(
        &gw.cli(&alice, &["request", "orders", "--for", "5h", "--reason", "x"]),
        "a request over max_duration",
    );
    assert!(err.contains("4h"), "the refusal should name the max (4h): {err}");
    for bad in ["-5m", "99999h"] {
        let err = refused(
            &gw.cli(&alice, &["request", "orders", "--for", bad, "--reason", "x"]),
            bad,
        );
        assert!(
            err.contains("duration"),
            "{bad}: the refusal should name the field: {err}"
        );
    }
    assert!(json(&gw, &alice, &["requests", "--all", "--json"]).is_empty());
}

#[test]
fn request_under_min_is_refused() {
    let gw = Gateway::start(GatewayOptions {
        min_duration: Some("10m".into()),
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let err = refused(
        &gw.cli(&alice, &["request", "orders", "--for", "5m", "--reason", "x"]),
        "a request under min_duration",
    );
    assert!(err.contains("10m"), "the refusal should name the min (10m): {err}");
    gw.request(&alice, "orders", None, "10m");
}

#[test]
fn reason_is_required() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let err = refused(
        &gw.cli(&alice, &["request", "orders", "--for", "1h"]),
        "a request without a reason",
    );
    assert!(err.to_lowercase().contains("reason"), "{err}");
    assert!(json(&gw, &alice, &["requests", "--all", "--json"]).is_empty());
    // Unknown resources and roles are refused too.
    let err = refused(
        &gw.cli(&alice, &["request", "nosuch", "--reason", "x"]),
        "a request for an unknown resource",
    );
    assert!(err.contains("nosuch"), "{err}");
    refused(
        &gw.cli(&alice, &["request", "orders", "--role", "root", "--reason", "x"]),
        "a request for an unknown role",
    );
}

#[test]
fn two_approvals_required() {
    let gw = Gateway::start(GatewayOptions {
        approvals_required: 2,
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let dave = gw.add_user("dave", &["dba"], false);
    let id = gw.request(&alice, "orders", None, "1h");
    assert_eq!(gw.cli_ok(&carol, &["approve", &id]), "pending");
    assert!(
        json(&gw, &alice, &["grants", "--json"]).is_empty(),
        "one approval of two must not grant"
    );
    // The same approver twice does not count twice.
    let again = gw.cli(&carol, &["approve", &id]);
    assert!(
        !again.status.success() || stdout(&again).trim() == "pending",
        "a second approval by carol: {}{}",
        stdout(&again),
        stderr(&again)
    );
    assert!(json(&gw, &alice, &["grants", "--json"]).is_empty());
    assert_eq!(gw.cli_ok(&dave, &["approve", &id]), "approved");
    let r = gw.api_json(&alice, &format!("/v1/requests/{id}"));
    assert_eq!(r["approvals"].as_array().map(Vec::len), Some(2), "{r}");
    assert_eq!(json(&gw, &alice, &["grants", "--json"]).len(), 1);
}

#[test]
fn request_wait_prints_the_final_state() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| gw.cli(&alice, &["request", "orders", "--for", "1h", "--reason", "x", "--wait"]));
        let id = wait_for_pending(&gw, &carol);
        assert_eq!(gw.cli_ok(&carol, &["approve", &id]), "approved");
        let out = waiter.join().expect("waiter");
        assert!(out.status.success(), "request --wait: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("{id}\napproved\n"));

        let waiter = s.spawn(|| gw.cli(&alice, &["request", "orders", "--for", "1h", "--reason", "y", "--wait"]));
        let id = wait_for_pending(&gw, &carol);
        assert_eq!(gw.cli_ok(&carol, &["deny", &id, "--reason", "no"]), "denied");
        let out = waiter.join().expect("waiter");
        assert!(!out.status.success(), "request --wait must fail when denied");
        assert_eq!(stdout(&out), format!("{id}\ndenied\n"));
    });
}

fn wait_for_pending(gw: &Gateway, approver: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let pending = json(gw, approver, &["requests", "--json"]);
        if let Some(id) = pending.first().and_then(|r| r["id"].as_str()) {
            return id.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no pending request appeared");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn revoke_and_extend_print_state_and_deadline() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let (_, gid) = gw.grant(&alice, &carol, "orders", None, "30m");
    let before = parse_time(gw.grant_json(&alice, &gid)["expires_at"].as_str().expect("expires_at"));
    let out = gw.cli_ok(&carol, &["extend", &gid, "--by", "15m"]);
    let (state, deadline) = out.split_once(' ').unwrap_or_else(|| panic!("extend printed {out:?}"));
    assert_eq!(state, "active");
    let moved = secs_between(before, parse_time(deadline));
    assert!(
        (moved - 900.0).abs() < 1.0,
        "extend --by 15m moved the deadline by {moved}s"
    );
    // A negative extension reaches the API and is refused there.
    refused(&gw.cli(&carol, &["extend", &gid, "--by", "-5m"]), "extend --by -5m");
    // Past max_duration (4h) in total is refused.
    refused(
        &gw.cli(&carol, &["extend", &gid, "--by", "4h"]),
        "an extension past max_duration",
    );

    let out = gw.cli_ok(&carol, &["revoke", &gid, "--reason", "done"]);
    let (state, deadline) = out.split_once(' ').unwrap_or_else(|| panic!("revoke printed {out:?}"));
    assert_eq!(state, "revoked");
    parse_time(deadline);
    let g = gw.grant_json(&alice, &gid);
    assert_eq!(g["state"], "revoked");
    assert_eq!(g["revoked_by"], "carol");
    assert_eq!(g["revoke_reason"], "done");
    assert!(
        json(&gw, &alice, &["grants", "--json"]).is_empty(),
        "revoked grants are not listed without --all"
    );
    // History keeps it: --all lists it with its end.
    let all = json(&gw, &alice, &["grants", "--all", "--json"]);
    let kept = find(&all, &gid);
    assert_eq!(kept["state"], "revoked");
    assert_eq!(kept["revoked_by"], "carol");
}

#[test]
fn cli_errors_are_one_line() {
    let gw = Gateway::start(GatewayOptions::default());
    let err = refused(&gw.cli_with(None, &["requests"]), "a call without a token");
    assert_eq!(err.trim(), "portcullis: no token: pass --token or set PORTCULLIS_TOKEN");

    let err = refused(
        &gw.cli(&gw.admin_token, &["--url", "http://127.0.0.1:1", "requests"]),
        "an unreachable API",
    );
    assert!(
        err.starts_with("portcullis: cannot reach the Portcullis API at http://127.0.0.1:1"),
        "{err}"
    );

    let err = refused(&gw.cli("not-a-token", &["requests"]), "an unknown token");
    assert!(
        err.starts_with("portcullis: ") && err.len() > "portcullis: ".len() + 3,
        "{err}"
    );

    let err = refused(
        &gw.cli(&gw.admin_token, &["approve", "no-such-request"]),
        "an unknown request id",
    );
    assert!(!err.contains("{"), "the API's sentence, not its JSON: {err}");

    // --token beats the environment.
    let out = gw.cli("not-a-token", &["--token", &gw.admin_token, "whoami"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().next(), Some("admin"));
}
