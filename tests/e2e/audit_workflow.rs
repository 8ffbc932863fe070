//! The workflow's actions in the audit log: every request, approval,
//! denial, extension, revocation, cancel, break-glass, expiry and
//! escalation, shipped from history with the request's reason and
//! approvers, once each even across a crash.

use serde_json::{Value, json};

use crate::harness::{Gateway, GatewayOptions, stderr};

/// The events about one request (its own and its grant's), oldest first.
fn of_request<'a>(events: &'a [Value], request: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["request_id"] == request).collect()
}

fn actions(events: &[&Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

#[test]
fn workflow_actions_are_audited_with_reason_and_approvers() {
    let gw = Gateway::start(GatewayOptions {
        policy_extra: "      auto_approve: [ { groups: [oncall], max_duration: 30m } ]\n      \
                       break_glass: { groups: [sre], max_duration: 15m }\n"
            .to_owned(),
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &["eng"], false);
    let carol = gw.add_user("carol", &[], false);
    let olga = gw.add_user("olga", &["sre"], false);
    let otto = gw.add_user("otto", &["oncall"], false);

    let asked = |token: &str, args: &[&str]| {
        let mut all = vec!["request", "orders"];
        all.extend_from_slice(args);
        gw.cli_ok(token, &all)
    };
    // Approved, extended, revoked.
    let r1 = asked(&alice, &["--for", "30m", "--reason", "INC-42 slow orders"]);
    gw.cli_ok(&carol, &["approve", &r1, "--comment", "go ahead"]);
    let g1 = gw.api_json(&alice, &format!("/v1/requests/{r1}"))["grant_id"]
        .as_str()
        .expect("grant")
        .to_owned();
    gw.cli_ok(&carol, &["extend", &g1, "--by", "10m"]);
    gw.cli_ok(&carol, &["revoke", &g1, "--reason", "done here"]);
    // Denied; cancelled; break-glass; auto-approved.
    let r2 = asked(&alice, &["--for", "10m", "--reason", "INC-50 curious"]);
    gw.cli_ok(&carol, &["deny", &r2, "--reason", "not now"]);
    let r3 = asked(&alice, &["--for", "10m", "--reason", "INC-51 never mind"]);
    gw.cli_ok(&alice, &["cancel", &r3]);
    // 10m: a shorter grant would also get its `grant.expiring_soon` at once.
    let r4 = asked(&olga, &["--break-glass", "--for", "10m", "--reason", "INC-43 db down"]);
    let r5 = asked(&otto, &["--for", "10m", "--reason", "INC-44 on call"]);

    // 5 users (admin included) + r1: 5, r2: 2, r3: 2, r4: 3, r5: 3.
    let all = gw.audit_until(&[], |e| e.len() >= 20);
    assert_eq!(all.len(), 20, "{all:#?}");
    let ids: std::collections::HashSet<&str> = all.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), all.len(), "every action once");

    let e1 = of_request(&all, &r1);
    assert_eq!(
        actions(&e1),
        [
            "request.create",
            "request.approve",
            "grant.create",
            "grant.extend",
            "grant.revoke"
        ]
    );
    for e in &e1 {
        assert_eq!(e["reason"], "INC-42 slow orders", "{e}");
        assert_eq!((&e["resource"], &e["role"]), (&json!("orders"), &json!("read")), "{e}");
        assert_eq!(e["detail"]["requester"], "alice", "{e}");
    }
    assert_eq!(
        (&e1[0]["user"], strings(&e1[0]["approvers"]).len()),
        (&json!("alice"), 0)
    );
    assert_eq!(e1[1]["user"], "carol");
    assert_eq!(strings(&e1[1]["approvers"]), ["carol"]);
    assert_eq!(e1[1]["detail"]["comment"], "go ahead");
    assert_eq!(e1[1]["grant_id"], g1.as_str());
    assert_eq!(e1[3]["detail"]["by"], "10m");
    assert_eq!(
        (&e1[4]["user"], &e1[4]["detail"]["reason"]),
        (&json!("carol"), &json!("done here"))
    );
    assert_eq!(strings(&e1[4]["approvers"]), ["carol"]);

    let e2 = of_request(&all, &r2);
    assert_eq!(actions(&e2), ["request.create", "request.deny"]);
    assert_eq!(
        (&e2[1]["user"], &e2[1]["detail"]["reason"]),
        (&json!("carol"), &json!("not now"))
    );
    assert_eq!(e2[1]["reason"], "INC-50 curious");
    let e3 = of_request(&all, &r3);
    assert_eq!(actions(&e3), ["request.create", "request.cancel"]);
    assert_eq!(e3[1]["user"], "alice");
    let e4 = of_request(&all, &r4);
    assert_eq!(actions(&e4), ["request.create", "request.break_glass", "grant.create"]);
    assert_eq!(
        (&e4[1]["user"], &e4[1]["reason"]),
        (&json!("olga"), &json!("INC-43 db down"))
    );
    let e5 = of_request(&all, &r5);
    assert_eq!(actions(&e5), ["request.create", "request.auto_approve", "grant.create"]);
    assert_eq!(e5[1]["user"], "auto-approve rule 1");
    assert_eq!(strings(&e5[2]["approvers"]), ["auto-approve rule 1"]);

    // Filters through the CLI: who acted, what, text, time; newest first and a limit.
    let by_carol = gw.audit_json(&["--user", "carol"]);
    assert_eq!(
        by_carol.len(),
        5,
        "approve, grant.create, extend, revoke, deny: {by_carol:#?}"
    );
    assert!(by_carol.iter().all(|e| e["user"] == "carol"));
    let denials = gw.audit_json(&["--action", "request.deny", "--resource", "orders"]);
    assert_eq!(denials.len(), 1);
    let on_orders = all.iter().filter(|e| e["resource"] == "orders").count();
    assert_eq!(gw.audit_json(&["--resource", "orders"]).len(), on_orders);
    assert!(on_orders < all.len(), "user.create names no resource");
    assert!(
        gw.audit_json(&["--resource", "bench"]).is_empty(),
        "nothing on bench yet"
    );
    let down = gw.audit_json(&["--grep", "DB DOWN"]);
    assert_eq!(actions(&down.iter().collect::<Vec<_>>()), actions(&e4));
    assert_eq!(gw.audit_json(&["--since", "1h"]).len(), all.len());
    assert!(gw.audit_json(&["--until", "2000-01-01T00:00:00Z"]).is_empty());
    // A time in the middle splits the log in two: at or after, and before.
    let mid = all[all.len() / 2]["at"].as_str().expect("at");
    let (after, before): (Vec<&Value>, Vec<&Value>) = all.iter().partition(|e| e["at"].as_str() >= Some(mid));
    assert!(!before.is_empty(), "events before {mid}");
    assert_eq!(gw.audit_json(&["--since", mid]).iter().collect::<Vec<_>>(), after);
    assert_eq!(gw.audit_json(&["--until", mid]).iter().collect::<Vec<_>>(), before);
    let first = all[0]["at"].as_str().expect("at");
    let later = gw.audit_json(&["--since", first, "--action", "user.create"]);
    assert_eq!(later.len(), 5);
    let newest = gw.audit_json(&["--newest", "--limit", "3"]);
    let tail: Vec<&Value> = all.iter().rev().take(3).collect();
    assert_eq!(newest.iter().collect::<Vec<_>>(), tail);

    // JSON lines: one object per line, the same events.
    let lines = gw.cli_ok(&gw.admin_token, &["audit", "--jsonl"]);
    let parsed: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l}")))
        .collect();
    assert!(parsed.iter().all(Value::is_object));
    assert_eq!(parsed, all);

    // The readable form: a header, then one line per event.
    let text = gw.cli_ok(&gw.admin_token, &["audit", "--action", "request.deny"]);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows[0].starts_with("TIME"), "{text}");
    assert!(rows[1].contains("request.deny") && rows[1].contains("carol") && rows[1].contains("\"not now\""));

    // The API pages through the same events, in both orders.
    let mut paged = Vec::new();
    let mut path = "/v1/audit?limit=6".to_owned();
    loop {
        let page = gw.api_json(&gw.admin_token, &path);
        paged.extend(page["events"].as_array().cloned().unwrap_or_default());
        match page["next"].as_u64() {
            Some(next) => path = format!("/v1/audit?limit=6&after={next}"),
            None => break,
        }
    }
    assert_eq!(paged, all);
    let newest_page = gw.api_json(&gw.admin_token, "/v1/audit?order=newest&limit=3&action=grant.create");
    let grants: Vec<&str> = newest_page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["request_id"].as_str())
        .collect();
    assert_eq!(grants, [r5.as_str(), r4.as_str(), r1.as_str()]);

    // Refusals: one line on stderr, non-zero.
    let not_admin = gw.cli(&alice, &["audit"]);
    assert!(!not_admin.status.success());
    assert!(
        stderr(&not_admin).contains("only an admin may read the audit log"),
        "{}",
        stderr(&not_admin)
    );
    let bad = gw.cli(&gw.admin_token, &["audit", "--since", "yesterday"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("since"), "{}", stderr(&bad));
    assert_eq!(stderr(&bad).trim().lines().count(), 1, "{}", stderr(&bad));

    // No token anywhere in the log.
    for secret in [&alice, &carol, &olga, &otto, &gw.admin_token] {
        assert!(!lines.contains(secret.as_str()), "a token reached the audit log");
    }
}

#[test]
fn expiry_and_escalation_are_audited_and_a_crash_loses_nothing() {
    let mut gw = Gateway::start(GatewayOptions {
        // Expiry well after the escalation: a late pass of the clock must not skip it.
        policy_extra: "      pending_ttl: 4s\n      escalation: [ { after: 1s, approvers: { users: [dave] } } ]\n"
            .to_owned(),
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    // Left unanswered: escalated, then expired by the clock.
    let r1 = gw.request(&alice, "orders", None, "10m");
    let expired = gw.audit_until(&["--action", "request.expire"], |e| !e.is_empty());
    assert_eq!(expired.len(), 1, "{expired:#?}");
    assert_eq!(
        (&expired[0]["request_id"], &expired[0]["user"]),
        (&json!(r1), &json!("(portcullis)"))
    );
    assert_eq!(expired[0]["reason"], "e2e test");
    let escalated = gw.audit_json(&["--action", "request.escalate"]);
    assert_eq!(escalated.len(), 1, "{escalated:#?}");
    assert_eq!(escalated[0]["detail"]["users"], "[\"dave\"]");
    // A grant that runs out (on `bench`, with no pending TTL to race).
    let r2 = gw.cli_ok(&alice, &["request", "bench", "--for", "2s", "--reason", "quick look"]);
    gw.cli_ok(&carol, &["approve", &r2]);
    let ran_out = gw.audit_until(&["--action", "grant.expire"], |e| !e.is_empty());
    assert_eq!(ran_out.len(), 1);
    assert_eq!(
        (
            &ran_out[0]["request_id"],
            &ran_out[0]["user"],
            strings(&ran_out[0]["approvers"])
        ),
        (&json!(r2), &json!("(portcullis)"), vec!["carol".to_owned()])
    );

    // Killed right after a workflow action, then started again on the same data dir.
    let r3 = gw.cli_ok(
        &alice,
        &["request", "bench", "--for", "1h", "--reason", "after the crash"],
    );
    gw.cli_ok(&carol, &["approve", &r3]);
    let before = gw.audit_json(&[]).len();
    gw.crash_and_restart();
    let r4 = gw.cli_ok(
        &alice,
        &["request", "bench", "--for", "1h", "--reason", "after the restart"],
    );
    let all = gw.audit_until(&[], |e| e.iter().any(|e| e["request_id"] == r4.as_str()));
    let e3 = of_request(&all, &r3);
    assert_eq!(
        actions(&e3),
        ["request.create", "request.approve", "grant.create"],
        "{all:#?}"
    );
    assert_eq!(actions(&of_request(&all, &r4)), ["request.create"]);
    let ids: std::collections::HashSet<&str> = all.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), all.len(), "nothing twice");
    assert!(all.len() > before, "{before} then {}", all.len());
    let verified = gw.cli_ok(&gw.admin_token, &["audit", "verify"]);
    assert!(verified.starts_with("intact"), "{verified}");
}
