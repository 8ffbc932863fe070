//! The audit log end to end: the proxy's events (every refused connection
//! with why, every session's start and end with bytes, duration and how it
//! ended), chained so `audit verify` holds until the file is edited,
//! searchable and exportable through the CLI and the API, and never a
//! secret. The workflow's actions are in `audit_workflow`.

use std::time::{Duration, Instant};

use portcullis_control::audit::{AuditLog, Search};
use portcullis_protocol::audit::AuditEvent;
use serde_json::{Value, json};

use crate::harness::pg::pg;
use crate::harness::{Gateway, GatewayOptions, Role, connect, now, ok, running_upstream, stderr, stdout};

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
    // Refused again, now naming the revoked grant.
    assert!(connect(&config).await.is_err());
    // Refused while a new request waits, naming it.
    let pending = gw.request(&alice, "orders", None, "1h");
    assert!(connect(&config).await.is_err());

    let all = events(&gw, 7).await;
    let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "connect.denied",
            "session.start",
            "session.end",
            "session.start",
            "session.end",
            "connect.denied",
            "connect.denied"
        ],
        "{all:#?}"
    );
    // A refusal about a grant or request carries the request's id, reason
    // and approvers, as the grant's sessions do.
    let revoked = &all[5];
    assert_eq!(revoked.detail["outcome"], "revoked");
    assert_eq!(revoked.grant_id.as_deref(), Some(gid.as_str()), "{revoked:?}");
    for e in [revoked, &all[1]] {
        assert_eq!(e.request_id, all[1].request_id, "{e:?}");
        assert_eq!(
            (e.reason.as_deref(), e.approvers.as_slice()),
            (Some("e2e test"), &["carol".to_owned()][..]),
            "{e:?}"
        );
    }
    let waiting = &all[6];
    assert_eq!(waiting.detail["outcome"], "pending");
    assert_eq!(
        (
            waiting.request_id.as_deref(),
            waiting.reason.as_deref(),
            waiting.grant_id.as_deref()
        ),
        (Some(pending.as_str()), Some("e2e test"), None),
        "{waiting:?}"
    );
    assert!(waiting.approvers.is_empty(), "{waiting:?}");
    let denied = &all[0];
    assert_eq!(
        (denied.user.as_str(), denied.resource.as_deref()),
        ("alice", Some("orders"))
    );
    assert_eq!(denied.detail.get("outcome").map(String::as_str), Some("no_grant"));
    assert_eq!(denied.grant_id, None, "no grant to name");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_expired_and_scheduled_refusals_are_recorded_with_why() {
    let gw = Gateway::start(GatewayOptions {
        warn_before: vec![],
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let wrong = format!("{alice}x");
    assert!(connect(&gw.pg_config("alice", &wrong, "orders")).await.is_err());

    let config = gw.pg_config("alice", &alice, "orders");
    let (short_request, short) = gw.grant(&alice, &carol, "orders", None, "2s");
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.grant_json(&alice, &short)["state"] != "expired" {
        assert!(Instant::now() < deadline, "the grant never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(connect(&config).await.is_err());

    let start = (now() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let later_request = gw.cli_ok(
        &alice,
        &[
            "request", "orders", "--for", "10m", "--reason", "tonight", "--start", &start,
        ],
    );
    assert_eq!(gw.cli_ok(&carol, &["approve", &later_request]), "approved");
    let later = gw.api_json(&alice, &format!("/v1/requests/{later_request}"))["grant_id"]
        .as_str()
        .expect("grant_id")
        .to_owned();
    assert!(connect(&config).await.is_err());

    let all = events(&gw, 3).await;
    let refusals: Vec<_> = all
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.detail.get("outcome").map_or("", String::as_str),
                e.grant_id.as_deref(),
                e.request_id.as_deref(),
                e.reason.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        refusals,
        [
            ("connect.denied", "bad_credentials", None, None, None),
            (
                "connect.denied",
                "expired",
                Some(short.as_str()),
                Some(short_request.as_str()),
                Some("e2e test")
            ),
            (
                "connect.denied",
                "scheduled",
                Some(later.as_str()),
                Some(later_request.as_str()),
                Some("tonight")
            ),
        ],
        "{all:#?}"
    );
    for e in &all {
        assert_eq!(
            (e.user.as_str(), e.resource.as_deref()),
            ("alice", Some("orders")),
            "{e:?}"
        );
        assert!(!e.detail.get("why").map_or("", String::as_str).is_empty(), "{e:?}");
    }
    assert_eq!(all[1].approvers, ["carol"], "{:?}", all[1]);
    let text = format!("{all:?}");
    assert!(!text.contains(&alice), "a token reached the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_names_the_role_asked_for_and_none_when_none_was() {
    let gw = Gateway::start(GatewayOptions {
        roles: vec![Role::Read, Role::Admin],
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    assert!(connect(&gw.pg_config("alice", &alice, "orders")).await.is_err());
    assert!(connect(&gw.pg_config("alice", &alice, "orders@admin")).await.is_err());
    let denied = events(&gw, 2).await;
    let roles: Vec<Option<&str>> = denied.iter().map(|e| e.role.as_deref()).collect();
    // Not `read`, the role the suggested request command names.
    assert_eq!(roles, [None, Some("admin")], "{denied:#?}");
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
    let all = gw.audit_until(&[], |e| e.len() >= 6);
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
/// The id of a live session but `ended` (a session leaves the list a
/// little after its client saw it close).
async fn live_session(gw: &Gateway, token: &str, ended: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = gw.api_json(token, "/v1/sessions");
        let ids = list.as_array().into_iter().flatten().filter_map(|s| s["id"].as_str());
        if let Some(id) = ids.into_iter().find(|id| !ended.contains(id)) {
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
    let killed_id = live_session(&gw, &alice, &[]).await;
    gw.cli_ok(&carol, &["kill", &killed_id]);
    assert!(killed.until_closed(Duration::from_secs(10)).await.1.is_some());

    // The upstream server ends it: its backend is terminated mid-statement.
    let mut dropped = connect(&config).await.expect("connect");
    let dropped_id = live_session(&gw, &alice, &[&killed_id]).await;
    let pid: i32 = dropped
        .client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let client = std::sync::Arc::clone(&dropped.client);
    let query = format!("SELECT pg_sleep(30) AS terminated_{}", crate::harness::pg::random_hex());
    let sent = query.clone();
    let running = tokio::spawn(async move { client.simple_query(&sent).await });
    running_upstream(&query, 1).await;
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
    // With why the server closed it; a cut is no error.
    let error_of = |id: &str| {
        all.iter()
            .find(|e| e.action == "session.end" && e.session_id.as_deref() == Some(id))
            .and_then(|e| e.detail.get("error"))
            .map(String::as_str)
    };
    assert_eq!(
        error_of(&dropped_id),
        Some("FATAL 57P01"),
        "its statement has the message"
    );
    assert_eq!(error_of(&killed_id), None);
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
    let kills = gw.audit_until(&["--action", "session.kill"], |e| !e.is_empty());
    assert_eq!(kills.len(), 1, "{kills:#?}");
    assert_eq!(
        (&kills[0]["user"], &kills[0]["session_id"]),
        (&json!("carol"), &json!(killed_id))
    );
    // The statement the server cut short carries the server's SQLSTATE.
    let cut = gw.audit_until(&["--session", &dropped_id, "--action", "statement"], |e| e.len() >= 2);
    let sleep = cut
        .iter()
        .find(|e| e["detail"]["text"] == query.as_str())
        .unwrap_or_else(|| panic!("{cut:#?}"));
    assert_eq!(
        (&sleep["detail"]["outcome"], &sleep["detail"]["sqlstate"]),
        (&json!("error"), &json!("57P01")),
        "{sleep}"
    );
}
