//! The HTTP API of docs/API.md, served on loopback and called with plain
//! HTTP/1.1: statuses, JSON shapes, refusals and who may do what.

mod common;

use common::{is_api_time, start};
use portcullis_protocol::sessions::{SessionDirectory, SessionInfo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[tokio::test]
async fn open_routes_and_authentication() {
    let api = start().await;
    assert_eq!(
        api.raw("GET", "/healthz", None, None).await,
        (200, r#"{"status":"ok"}"#.to_owned())
    );
    assert_eq!(
        api.raw("GET", "/readyz", None, None).await,
        (200, r#"{"status":"ready"}"#.to_owned())
    );
    let (status, metrics) = api.raw("GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE portcullis_requests_total counter"),
        "{metrics}"
    );

    let (status, body) = api.raw("GET", "/v1/whoami", None, None).await;
    assert_eq!(status, 401);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["error"],
        "missing token: send Authorization: Bearer TOKEN"
    );
    let msg = api.refused("GET", "/v1/whoami", "pc_nope", None, 401).await;
    assert_eq!(msg, "unknown token");

    let me = api.ok("GET", "/v1/whoami", &api.admin, None).await;
    assert_eq!(me["name"], "admin");
    assert_eq!(me["admin"], true);
    assert_eq!(me["groups"], json!([]));
    assert!(is_api_time(&me["created_at"]), "{me}");

    api.refused("GET", "/v1/nothing", &api.admin, None, 404).await;
    api.refused("DELETE", "/v1/users", &api.admin, None, 405).await;
    // Refusals are counted by status, never by who.
    let (_, metrics) = api.raw("GET", "/metrics", None, None).await;
    assert!(
        metrics.contains("portcullis_api_refusals_total{status=\"401\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_bodies_get_a_json_400() {
    let api = start().await;
    let (status, body) = api
        .raw("POST", "/v1/requests", Some(&api.admin), Some("{not json"))
        .await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .starts_with("the request body is not valid"),
        "{v}"
    );

    let msg = api
        .refused("POST", "/v1/requests", &api.admin, Some(json!({"role": "read"})), 400)
        .await;
    assert!(msg.contains("missing field `resource`"), "{msg}");
    let msg = api
        .refused(
            "POST",
            "/v1/requests",
            &api.admin,
            Some(json!({"resource": "orders", "reasn": "x"})),
            400,
        )
        .await;
    assert!(msg.contains("reasn"), "{msg}");
    let msg = api
        .refused(
            "POST",
            "/v1/requests",
            &api.admin,
            Some(json!({"resource": "orders", "duration": "soon"})),
            400,
        )
        .await;
    assert!(msg.contains("\"soon\" is not a duration"), "{msg}");
    let msg = api
        .refused(
            "POST",
            "/v1/requests",
            &api.admin,
            Some(json!({"resource": "nosuch"})),
            400,
        )
        .await;
    assert!(msg.contains("nosuch") && msg.contains("orders, web1"), "{msg}");
    api.refused("GET", "/v1/requests?all=maybe", &api.admin, None, 400)
        .await;

    let huge = json!({"resource": "orders", "reason": "x".repeat(70 * 1024)});
    api.refused("POST", "/v1/requests", &api.admin, Some(huge), 413).await;
    let msg = api
        .refused("POST", "/v1/users", &api.admin, Some(json!({"name": "bad name"})), 400)
        .await;
    assert!(msg.contains("not a valid user name"), "{msg}");
}

#[tokio::test]
async fn users_are_admin_only_and_never_show_secrets() {
    let api = start().await;
    let (status, v) = api
        .call(
            "POST",
            "/v1/users",
            &api.admin,
            Some(json!({"name": "alice", "groups": ["eng", "web"]})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let alice = v["token"].as_str().expect("token").to_owned();
    assert_eq!(v["name"], "alice");
    assert_eq!(v["groups"], json!(["eng", "web"]));
    assert_eq!(v["admin"], false);

    let msg = api
        .refused("POST", "/v1/users", &api.admin, Some(json!({"name": "alice"})), 409)
        .await;
    assert_eq!(msg, "user alice already exists");
    let msg = api
        .refused("POST", "/v1/users", &alice, Some(json!({"name": "mallory"})), 403)
        .await;
    assert_eq!(msg, "only an admin may add users");
    api.refused("GET", "/v1/users", &alice, None, 403).await;

    let (_, listing) = api.raw("GET", "/v1/users", Some(&api.admin), None).await;
    for secret in [alice.as_str(), api.admin.as_str(), "SCRAM-SHA-256", "token"] {
        assert!(!listing.contains(secret), "{secret} in {listing}");
    }
    let users: Value = serde_json::from_str(&listing).expect("json");
    let names: Vec<&str> = users
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["admin", "alice"]);

    let resources = api.ok("GET", "/v1/resources", &alice, None).await;
    assert_eq!(resources[0]["name"], "orders");
    assert_eq!(resources[0]["kind"], "postgres");
    assert_eq!(resources[0]["roles"], json!(["read", "admin"]));
    assert_eq!(resources[0]["gateway"], "127.0.0.1:6432");
    assert_eq!(resources[0]["may_approve"], false);
    assert_eq!(resources[1]["kind"], "ssh");
}

#[tokio::test]
async fn the_request_workflow_over_http() {
    let api = start().await;
    let alice = api.user("alice", &["eng"], false).await;
    let carol = api.user("carol", &[], true).await;
    let dave = api.user("dave", &["dba"], false).await;
    let bob = api.user("bob", &[], false).await;

    // Policy refusals name what is wrong.
    let body = |d: &str, r: &str| Some(json!({"resource": "orders", "role": "read", "duration": d, "reason": r}));
    let msg = api
        .refused("POST", "/v1/requests", &alice, body("5h", "INC-1 x"), 400)
        .await;
    assert!(msg.contains("4h"), "{msg}");
    let msg = api
        .refused("POST", "/v1/requests", &alice, body("1h", "because"), 400)
        .await;
    assert!(msg.contains("\"^[A-Z]+-[0-9]+\""), "{msg}");
    let msg = api
        .refused(
            "POST",
            "/v1/requests",
            &alice,
            Some(json!({"resource": "orders", "reason": "INC-1"})),
            400,
        )
        .await;
    assert!(msg.contains("read, admin"), "{msg}");

    let (status, req) = api
        .call("POST", "/v1/requests", &alice, body("30m", "INC-7 slow orders"))
        .await;
    assert_eq!(status, 201, "{req}");
    let id = req["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("req_"));
    assert_eq!(req["state"], "pending");
    assert_eq!(req["duration_s"], 1800);
    assert_eq!(req["approvals_required"], 1);
    assert_eq!(req["auto_approved"], false);
    assert!(req["grant_id"].is_null() && req["decided_at"].is_null() && req["start_at"].is_null());
    assert!(is_api_time(&req["created_at"]), "{req}");

    // Visibility: alice and the approvers, not bob.
    assert_eq!(
        api.ok("GET", "/v1/requests", &dave, None)
            .await
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(api.ok("GET", "/v1/requests", &bob, None).await, json!([]));
    api.refused("GET", &format!("/v1/requests/{id}"), &bob, None, 403).await;
    api.refused("GET", "/v1/requests/req_000000000000", &alice, None, 404)
        .await;

    // carol, admin and approver, may not approve her own request.
    let (_, own) = api.call("POST", "/v1/requests", &carol, body("1h", "INC-8 own")).await;
    let own_id = own["id"].as_str().expect("id").to_owned();
    let msg = api
        .refused("POST", &format!("/v1/requests/{own_id}/approve"), &carol, None, 403)
        .await;
    assert_eq!(msg, "you cannot approve your own request");
    // bob is no approver; alice may cancel only her own.
    api.refused("POST", &format!("/v1/requests/{id}/approve"), &bob, None, 403)
        .await;
    api.refused("POST", &format!("/v1/requests/{own_id}/cancel"), &alice, None, 403)
        .await;
    let cancelled = api
        .ok("POST", &format!("/v1/requests/{own_id}/cancel"), &carol, None)
        .await;
    assert_eq!(cancelled["state"], "cancelled");

    let approved = api
        .ok(
            "POST",
            &format!("/v1/requests/{id}/approve"),
            &dave,
            Some(json!({"comment": "ok"})),
        )
        .await;
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["decided_by"], "dave");
    assert_eq!(approved["approvals"][0]["by"], "dave");
    assert_eq!(approved["approvals"][0]["comment"], "ok");
    assert!(is_api_time(&approved["approvals"][0]["at"]));
    let gid = approved["grant_id"].as_str().expect("grant_id").to_owned();
    let msg = api
        .refused(
            "POST",
            &format!("/v1/requests/{id}/deny"),
            &dave,
            Some(json!({"reason": "x"})),
            409,
        )
        .await;
    assert!(msg.contains("approved, not pending"), "{msg}");

    let grants = api.ok("GET", "/v1/grants", &alice, None).await;
    let g = &grants[0];
    assert_eq!(g["id"], gid.as_str());
    assert_eq!(g["state"], "active");
    assert_eq!(g["request_id"], id.as_str());
    assert!(is_api_time(&g["starts_at"]) && is_api_time(&g["expires_at"]), "{g}");
    assert!(g["revoked_at"].is_null());

    // Extend: approvers only, never past max_duration in total.
    api.refused(
        "POST",
        &format!("/v1/grants/{gid}/extend"),
        &alice,
        Some(json!({"by": "15m"})),
        403,
    )
    .await;
    let msg = api
        .refused(
            "POST",
            &format!("/v1/grants/{gid}/extend"),
            &dave,
            Some(json!({"by": "4h"})),
            400,
        )
        .await;
    assert!(msg.contains("the longest allowed for orders is 4h"), "{msg}");
    let extended = api
        .ok(
            "POST",
            &format!("/v1/grants/{gid}/extend"),
            &dave,
            Some(json!({"by": "15m"})),
        )
        .await;
    assert_eq!(extended["duration_s"], 2700);

    // Revoke: not bob; the owner may.
    api.refused("POST", &format!("/v1/grants/{gid}/revoke"), &bob, None, 403)
        .await;
    let revoked = api
        .ok(
            "POST",
            &format!("/v1/grants/{gid}/revoke"),
            &alice,
            Some(json!({"reason": "done early"})),
        )
        .await;
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["revoked_by"], "alice");
    assert_eq!(revoked["revoke_reason"], "done early");
    api.refused("POST", &format!("/v1/grants/{gid}/revoke"), &dave, None, 409)
        .await;
    assert_eq!(api.ok("GET", "/v1/grants", &alice, None).await, json!([]));
    assert_eq!(
        api.ok("GET", "/v1/grants?all=true", &alice, None)
            .await
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // The feed carried it all, and the snapshot agrees.
    let snap = api.control.feed().snapshot();
    assert!(snap.pending.is_empty());
    assert!(snap.grants.iter().any(|g| g.id == gid && g.revoked.is_some()));
}

#[tokio::test]
async fn sessions_are_listed_and_killed_by_the_right_people() {
    let api = start().await;
    let alice = api.user("alice", &[], false).await;
    let bob = api.user("bob", &[], false).await;
    let carol = api.user("carol", &[], false).await;
    api.sessions.0.lock().expect("lock").push(SessionInfo {
        id: "ses_000000000001".to_owned(),
        user: "alice".to_owned(),
        resource: "orders".to_owned(),
        role: "read".to_owned(),
        protocol: "postgres".to_owned(),
        grant_id: "grt_000000000001".to_owned(),
        started_at: 1_795_429_700_123,
        bytes_in: 10,
        bytes_out: 20,
    });
    let mine = api.ok("GET", "/v1/sessions", &alice, None).await;
    assert_eq!(mine[0]["started_at"], "2026-11-23T10:28:20.123Z");
    assert_eq!(mine[0]["bytes_out"], 20);
    assert_eq!(api.ok("GET", "/v1/sessions", &bob, None).await, json!([]));
    assert_eq!(
        api.ok("GET", "/v1/sessions", &carol, None)
            .await
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    api.refused("POST", "/v1/sessions/ses_000000000001/kill", &bob, None, 403)
        .await;
    api.refused("POST", "/v1/sessions/ses_nope/kill", &carol, None, 404)
        .await;
    assert_eq!(
        api.ok("POST", "/v1/sessions/ses_000000000001/kill", &carol, None).await,
        json!({"killed": true})
    );
    assert!(api.sessions.list().is_empty());
}

/// The way `src/serve.rs` wires the control plane: its error converts into a
/// boxed error, the router serves with graceful shutdown, and a follower
/// subscribes before it takes the snapshot.
#[tokio::test]
async fn wiring_as_serve_does() {
    fn boxed(e: portcullis_control::ControlError) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        Box::new(e)
    }
    let api = start().await;
    let mut changes = api.control.feed().subscribe();
    let snapshot = api.control.feed().snapshot();
    assert_eq!(snapshot.users.len(), 1, "admin is in the first snapshot");
    api.user("alice", &[], false).await;
    let change = changes.recv().await.expect("a change");
    assert!(change.revision > snapshot.revision);

    let registry = prometheus::Registry::new();
    let router = api.control.router(api.sessions.clone(), registry);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let stop = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn({
        let stop = stop.clone();
        async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    });
    stop.cancel();
    served.await.expect("join").expect("serve");
    let _ = boxed;
}

/// Each bad field gets a 4xx whose sentence names the field, and the server
/// goes on serving.
#[tokio::test]
async fn bad_fields_are_named_in_the_refusal() {
    let api = start().await;
    let alice = api.user("alice", &["eng"], false).await;
    let ask = |extra: Value| {
        let mut body = json!({"resource": "orders", "role": "read", "reason": "INC-1 x"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        Some(body)
    };
    for (extra, field) in [
        (json!({"duration": "-5m"}), "duration"),
        (json!({"duration": "99999h"}), "duration"),
        (json!({"duration": "0s"}), "duration"),
        (json!({"duration": 30}), "duration"),
        (json!({"reason": "INC-1 ".repeat(400)}), "reason"),
        (json!({"start": "tomorrow"}), "start"),
        (json!({"break_glass": "yes"}), "break_glass"),
        (json!({"colour": "blue"}), "colour"),
    ] {
        let msg = api
            .refused("POST", "/v1/requests", &alice, ask(extra.clone()), 400)
            .await;
        assert!(msg.contains(field), "{extra}: {msg}");
    }
    let (status, body) = api
        .raw("POST", "/v1/requests", Some(&alice), Some(r#"{"resource": "orders",""#))
        .await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("EOF")), "{v}");
    let (status, body) = api.raw("POST", "/v1/requests", Some(&alice), Some("[1, 2]")).await;
    assert_eq!(status, 400, "{body}");

    // Bodies of the other verbs too.
    let (_, req) = api.call("POST", "/v1/requests", &alice, ask(json!({}))).await;
    let id = req["id"].as_str().expect("id").to_owned();
    let carol = api.user("carol", &[], false).await;
    let msg = api
        .refused(
            "POST",
            &format!("/v1/requests/{id}/approve"),
            &carol,
            Some(json!({"comment": "x".repeat(2001)})),
            400,
        )
        .await;
    assert!(msg.starts_with("comment"), "{msg}");
    let msg = api
        .refused(
            "POST",
            &format!("/v1/requests/{id}/deny"),
            &carol,
            Some(json!({"reason": "no", "why": "x"})),
            400,
        )
        .await;
    assert!(msg.contains("why"), "{msg}");
    let granted = api
        .ok("POST", &format!("/v1/requests/{id}/approve"), &carol, None)
        .await;
    let gid = granted["grant_id"].as_str().expect("grant").to_owned();
    for by in ["-5m", "99999h", "soon"] {
        let (status, v) = api
            .call(
                "POST",
                &format!("/v1/grants/{gid}/extend"),
                &carol,
                Some(json!({"by": by})),
            )
            .await;
        assert_eq!(status, 400, "{by}: {v}");
        let msg = v["error"].as_str().expect("error");
        assert!(msg.contains("by") || msg.contains("extending"), "{by}: {msg}");
    }
    // Nothing else was affected: the grant is as it was, the server answers.
    let g = api.ok("GET", &format!("/v1/grants/{gid}"), &alice, None).await;
    assert_eq!(g["duration_s"], 3600);
    assert_eq!(g["state"], "active");
}
