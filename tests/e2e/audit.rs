//! The audit log end to end: the proxy's events (every refused connection
//! with why, every session's start and end with bytes, duration and how it
//! ended) and the workflow's actions (shipped from history, with the
//! request's reason and approvers, once each even across a crash), chained
//! so `audit verify` holds until the file is edited, searchable and
//! exportable through the CLI and the API, and never a secret.

use std::time::{Duration, Instant};

use portcullis_control::audit::{AuditLog, Search};
use portcullis_protocol::audit::AuditEvent;
use serde_json::{Value, json};

use crate::harness::pg::pg;
use crate::harness::{Gateway, GatewayOptions, connect, ok, stderr, stdout};

/// Every event of the proxy so far but statements (tests/e2e/statements.rs
/// has those) and workflow actions (`wf_...`),
/// oldest first, once at least `min` are there.
async fn events(gw: &Gateway, min: usize) -> Vec<AuditEvent> {
    let log = AuditLog::open_blocking(&gw.data_dir).expect("open the gateway's audit log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = log
            .search(Search {
                limit: 10_000,
                ..Search::default()
            })
            .await
            .expect("search");
        let proxy: Vec<AuditEvent> = all
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| !e.id.starts_with("wf_") && e.action != "statement")
            .collect();
        if proxy.len() >= min || Instant::now() > deadline {
            return proxy;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_sessions_are_recorded_and_chained() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let config = gw.pg_config("alice", &alice, "orders");

    // Refused: no grant yet.
    assert!(connect(&config).await.is_err());
    let (_, gid) = gw.grant(&alice, &carol, "orders", None, "1h");
    // A session that quits.
    let gw_ref = &gw;
    let out = tokio::task::block_in_place(|| gw_ref.psql("alice", &alice, "orders", "disable", "SELECT 42"));
    assert_eq!(ok(&out, "psql"), "42");
    // A session cut by revoke.
    let mut s = connect(&config).await.expect("connect");
    gw.cli_ok(&carol, &["revoke", &gid, "--reason", "audit test"]);
    assert!(s.until_closed(Duration::from_secs(10)).await.1.is_some());

    let all = events(&gw, 5).await;
    let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "connect.denied",
            "session.start",
            "session.end",
            "session.start",
            "session.end"
        ],
        "{all:#?}"
    );
    let denied = &all[0];
    assert_eq!(
        (denied.user.as_str(), denied.resource.as_deref()),
        ("alice", Some("orders"))
    );
    assert_eq!(denied.detail.get("outcome").map(String::as_str), Some("no_grant"));
    assert!(denied.detail["why"].contains("portcullis request"), "{denied:?}");

    let (start, quit, cut) = (&all[1], &all[2], &all[4]);
    assert_eq!(start.grant_id.as_deref(), Some(gid.as_str()));
    assert!(
        start.request_id.as_deref().is_some_and(|r| r.starts_with("req_")),
        "{start:?}"
    );
    assert_eq!(start.session_id, quit.session_id);
    assert_eq!(quit.detail["ended"], "client_quit");
    for key in ["bytes_in", "bytes_out", "duration_ms"] {
        let n: u64 = quit.detail[key].parse().expect("a number");
        assert!(key == "duration_ms" || n > 0, "{key} = {n}");
    }
    assert_eq!(cut.detail["ended"], "revoked");

    // The chain holds, and no secret is in any event.
    let log = AuditLog::open_blocking(&gw.data_dir).expect("open");
    let verdict = log.verify().await.expect("verify");
    assert_eq!((verdict.checked, verdict.broken), (verdict.events, None));
    let text = format!("{all:?}");
    for secret in [alice.as_str(), carol.as_str()].into_iter().chain(pg().secrets()) {
        assert!(!text.contains(secret), "a secret reached the audit log");
    }
}

/// `portcullis audit ARGS --json` as admin: the array it printed.
fn audit_json(gw: &Gateway, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = gw.cli_ok(&gw.admin_token, &all);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{all:?} printed no JSON ({e}): {out}"));
    v.as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{all:?}: not an array: {out}"))
}

/// `audit_json` again until `done` holds (the shipper runs beside the CLI), bounded.
fn audit_until(gw: &Gateway, args: &[&str], done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = audit_json(gw, args);
        if done(&events) || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

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
    let all = audit_until(&gw, &[], |e| e.len() >= 20);
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
    let by_carol = audit_json(&gw, &["--user", "carol"]);
    assert_eq!(
        by_carol.len(),
        5,
        "approve, grant.create, extend, revoke, deny: {by_carol:#?}"
    );
    assert!(by_carol.iter().all(|e| e["user"] == "carol"));
    let denials = audit_json(&gw, &["--action", "request.deny", "--resource", "orders"]);
    assert_eq!(denials.len(), 1);
    let down = audit_json(&gw, &["--grep", "DB DOWN"]);
    assert_eq!(actions(&down.iter().collect::<Vec<_>>()), actions(&e4));
    assert_eq!(audit_json(&gw, &["--since", "1h"]).len(), all.len());
    assert!(audit_json(&gw, &["--until", "2000-01-01T00:00:00Z"]).is_empty());
    let first = all[0]["at"].as_str().expect("at");
    let later = audit_json(&gw, &["--since", first, "--action", "user.create"]);
    assert_eq!(later.len(), 5);
    let newest = audit_json(&gw, &["--newest", "--limit", "3"]);
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
        policy_extra: "      pending_ttl: 2s\n      escalation: [ { after: 1s, approvers: { users: [dave] } } ]\n"
            .to_owned(),
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    // Left unanswered: escalated, then expired by the clock.
    let r1 = gw.request(&alice, "orders", None, "10m");
    let expired = audit_until(&gw, &["--action", "request.expire"], |e| !e.is_empty());
    assert_eq!(expired.len(), 1, "{expired:#?}");
    assert_eq!(
        (&expired[0]["request_id"], &expired[0]["user"]),
        (&json!(r1), &json!("(portcullis)"))
    );
    assert_eq!(expired[0]["reason"], "e2e test");
    let escalated = audit_json(&gw, &["--action", "request.escalate"]);
    assert_eq!(escalated.len(), 1, "{escalated:#?}");
    assert_eq!(escalated[0]["detail"]["users"], "[\"dave\"]");
    // A grant that runs out (on `bench`, with no pending TTL to race).
    let r2 = gw.cli_ok(&alice, &["request", "bench", "--for", "2s", "--reason", "quick look"]);
    gw.cli_ok(&carol, &["approve", &r2]);
    let ran_out = audit_until(&gw, &["--action", "grant.expire"], |e| !e.is_empty());
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
    let before = audit_json(&gw, &[]).len();
    gw.crash_and_restart();
    let r4 = gw.cli_ok(
        &alice,
        &["request", "bench", "--for", "1h", "--reason", "after the restart"],
    );
    let all = audit_until(&gw, &[], |e| e.iter().any(|e| e["request_id"] == r4.as_str()));
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

/// Runs SQL on the gateway's audit log, as someone with write access to the file could.
fn tamper(gw: &Gateway, sql: &str) {
    let conn = rusqlite::Connection::open(gw.data_dir.join("audit.db")).expect("open audit.db");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    conn.execute_batch(sql).expect("tamper");
}

#[test]
fn verify_names_the_first_edited_deleted_or_reordered_event() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    let all = audit_until(&gw, &[], |e| e.len() >= 6);
    assert_eq!(all.len(), 6, "{all:#?}");
    let out = gw.cli_ok(&gw.admin_token, &["audit", "verify"]);
    assert_eq!(out, "intact: 6 events, every link verified");
    let id_of = |seq: u64| {
        all.iter()
            .find(|e| e["seq"] == seq)
            .and_then(|e| e["id"].as_str())
            .expect("an event with that seq")
            .to_owned()
    };
    // Each change is made on the live file, checked, then undone from a copy.
    tamper(&gw, "CREATE TABLE pristine AS SELECT * FROM events");
    let restore = "DELETE FROM events; INSERT INTO events SELECT * FROM pristine;";
    // (change, kind, the first event that fails, where that event was written)
    for (change, kind, seq, written_at) in [
        (
            "UPDATE events SET reason = 'nothing to see' WHERE seq = 4",
            "edited",
            4,
            4,
        ),
        ("DELETE FROM events WHERE seq = 3", "missing", 4, 4),
        (
            "UPDATE events SET seq = -1 WHERE seq = 2; UPDATE events SET seq = 2 WHERE seq = 5; \
             UPDATE events SET seq = 5 WHERE seq = -1;",
            "relinked",
            2,
            5,
        ),
    ] {
        tamper(&gw, change);
        let out = gw.cli(&gw.admin_token, &["audit", "verify"]);
        assert!(!out.status.success(), "{change}: verify passed");
        let text = stdout(&out);
        let id = id_of(written_at);
        assert!(text.starts_with("broken: "), "{change}: {text}");
        assert!(
            text.contains(&format!("first broken event: seq {seq}, id {id} ({kind})")),
            "{change}: {text}"
        );
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("broken at event {seq}")),
            "{}",
            stderr(&out)
        );
        let v: Value = serde_json::from_str(&stdout(&gw.cli(&gw.admin_token, &["audit", "verify", "--json"])))
            .expect("verify --json");
        assert_eq!(
            (&v["intact"], &v["break"]["kind"], &v["break"]["seq"]),
            (&json!(false), &json!(kind), &json!(seq))
        );
        tamper(&gw, restore);
        assert!(
            gw.cli(&gw.admin_token, &["audit", "verify"]).status.success(),
            "restored after {change}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_history_and_one_session_with_its_statements() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let bob = gw.add_user("bob", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    let gw_ref = &gw;
    let out = tokio::task::block_in_place(|| gw_ref.psql("alice", &alice, "orders", "disable", "SELECT 42"));
    assert_eq!(ok(&out, "psql"), "42");
    // One still open.
    let live = connect(&gw.pg_config("alice", &alice, "orders"))
        .await
        .expect("connect");
    live.client.simple_query("SELECT 1").await.expect("query");

    let cli = |token: &str, args: &[&str]| tokio::task::block_in_place(|| gw_ref.cli_ok(token, args));
    let deadline = Instant::now() + Duration::from_secs(20);
    let sessions = loop {
        let v: Value = serde_json::from_str(&cli(&alice, &["sessions", "--all", "--json"])).expect("JSON");
        let list = v.as_array().cloned().expect("an array");
        if list.len() >= 2 && list.iter().any(|s| s["state"] == "ended") || Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    let (past, now) = (&sessions[0], &sessions[1]);
    assert_eq!(
        (&past["user"], &past["resource"], &past["role"]),
        (&json!("alice"), &json!("orders"), &json!("read"))
    );
    assert_eq!(
        (&past["state"], &past["ended"]),
        (&json!("ended"), &json!("client_quit"))
    );
    assert!(past["bytes_in"].as_u64().is_some_and(|n| n > 0), "{past}");
    assert!(past["bytes_out"].as_u64().is_some_and(|n| n > 0), "{past}");
    assert!(past["ended_at"].is_string() && past["started_at"].is_string());
    assert_eq!(now["state"], "live");
    let id = past["id"].as_str().expect("id").to_owned();

    // The live list is unchanged: live sessions only, in its own columns.
    let live_list = cli(&alice, &["sessions"]);
    assert!(live_list.starts_with("ID  "), "{live_list}");
    assert!(
        live_list.contains("PROTOCOL") && !live_list.contains(&id),
        "{live_list}"
    );
    let table = cli(&alice, &["sessions", "--all"]);
    assert!(
        table.contains(&id) && table.contains("client_quit") && table.contains("live"),
        "{table}"
    );
    // Bob sees neither (not his, not an approver); carol approves orders and sees both.
    let bobs: Value = serde_json::from_str(&cli(&bob, &["sessions", "--all", "--json"])).expect("JSON");
    assert_eq!(bobs, json!([]));
    let carols: Value = serde_json::from_str(&cli(&carol, &["sessions", "--all", "--json"])).expect("JSON");
    assert_eq!(carols.as_array().map(Vec::len), Some(2));

    // One session: its record, then its statements (queued before its end, so there by now).
    let shown = cli(&alice, &["sessions", "show", &id]);
    assert!(shown.starts_with(&format!("session   {id}")), "{shown}");
    assert!(shown.contains("client_quit") && shown.contains("alice"), "{shown}");
    let as_json: Value = serde_json::from_str(&cli(&alice, &["sessions", "show", &id, "--json"])).expect("JSON");
    assert_eq!(as_json["session"]["id"], id.as_str());
    let statements = as_json["statements"].as_array().expect("statements");
    assert!(
        statements
            .iter()
            .all(|s| s["action"] == "statement" && s["session_id"] == id.as_str())
    );
    let texts: Vec<&str> = statements.iter().filter_map(|s| s["detail"]["text"].as_str()).collect();
    assert_eq!(texts, ["SELECT 42"], "{as_json:#}");
    assert_eq!(statements[0]["detail"]["tag"], "SELECT 1");
    assert!(shown.contains("STATEMENTS") && shown.contains("SELECT 42"), "{shown}");
    let hidden = tokio::task::block_in_place(|| gw_ref.cli(&bob, &["sessions", "show", &id]));
    assert!(!hidden.status.success());
    assert!(stderr(&hidden).contains("may not see session"), "{}", stderr(&hidden));
    drop(live);
}

/// The id of `token`'s only live session, once the API lists one.
async fn live_session(gw: &Gateway, token: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = gw.api_json(token, "/v1/sessions");
        if let Some(id) = list.as_array().and_then(|a| a.first()).and_then(|s| s["id"].as_str()) {
            return id.to_owned();
        }
        assert!(Instant::now() < deadline, "no live session: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_a_session_can_end_is_recorded() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    let config = gw.pg_config("alice", &alice, "orders");

    // Killed by hand.
    let mut killed = connect(&config).await.expect("connect");
    let killed_id = live_session(&gw, &alice).await;
    gw.cli_ok(&carol, &["kill", &killed_id]);
    assert!(killed.until_closed(Duration::from_secs(10)).await.1.is_some());

    // The upstream server ends it: its backend is terminated mid-statement.
    let mut dropped = connect(&config).await.expect("connect");
    let dropped_id = live_session(&gw, &alice).await;
    let pid: i32 = dropped
        .client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let client = std::sync::Arc::clone(&dropped.client);
    let running = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg().sql("orders", &format!("SELECT pg_terminate_backend({pid})"));
    assert!(running.await.expect("join").is_err());
    assert!(dropped.until_closed(Duration::from_secs(10)).await.1.is_some());

    // Expired: a grant of two seconds on `bench` runs out under it.
    gw.grant(&alice, &carol, "bench", None, "2s");
    let mut expired = connect(&gw.pg_config("alice", &alice, "bench")).await.expect("connect");
    assert!(expired.until_closed(Duration::from_secs(15)).await.1.is_some());

    let all = events(&gw, 6).await;
    let ends: Vec<(&str, &str)> = all
        .iter()
        .filter(|e| e.action == "session.end")
        .map(|e| {
            (
                e.session_id.as_deref().unwrap_or_default(),
                e.detail.get("ended").map_or("", String::as_str),
            )
        })
        .collect();
    assert_eq!(ends.len(), 3, "{all:#?}");
    assert_eq!(ends[0], (killed_id.as_str(), "killed"));
    assert_eq!(ends[1], (dropped_id.as_str(), "server_closed"));
    assert_eq!(
        (ends[2].1, all.last().and_then(|e| e.resource.as_deref())),
        ("expired", Some("bench"))
    );
    for end in all.iter().filter(|e| e.action == "session.end") {
        for key in ["bytes_in", "bytes_out", "duration_ms"] {
            assert!(
                end.detail.get(key).is_some_and(|n| n.parse::<u64>().is_ok()),
                "{key}: {end:?}"
            );
        }
    }

    // Who killed it, as a workflow action on the same session.
    let kills = audit_until(&gw, &["--action", "session.kill"], |e| !e.is_empty());
    assert_eq!(kills.len(), 1, "{kills:#?}");
    assert_eq!(
        (&kills[0]["user"], &kills[0]["session_id"]),
        (&json!("carol"), &json!(killed_id))
    );
    // The statement the server cut short carries the server's SQLSTATE.
    let cut = audit_until(&gw, &["--session", &dropped_id, "--action", "statement"], |e| {
        e.len() >= 2
    });
    let sleep = cut
        .iter()
        .find(|e| e["detail"]["text"] == "SELECT pg_sleep(30)")
        .unwrap_or_else(|| panic!("{cut:#?}"));
    assert_eq!(
        (&sleep["detail"]["outcome"], &sleep["detail"]["sqlstate"]),
        (&json!("error"), &json!("57P01")),
        "{sleep}"
    );
}
