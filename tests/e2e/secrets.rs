//! After a run that exercises every path, no token, no upstream password
//! and no password written into a statement appears in the gateway's log,
//! any API answer, /metrics, or the audit log (as read and as stored).

use std::time::Duration;

use crate::harness::pg::pg;
use crate::harness::{Gateway, GatewayOptions, Role, connect, ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_api_or_metrics() {
    let roles = [Role::Read, Role::Admin, Role::Md5, Role::Trust];
    let gw = Gateway::start(GatewayOptions {
        roles: roles.to_vec(),
        warn_before: vec!["2s".into()],
        log_filter: Some("debug".into()),
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &["eng"], false);
    let bob = gw.add_user("bob", &[], false);
    let carol = gw.add_user("carol", &["dba"], true);

    // Grants for every upstream auth kind, used by psql over TLS and plain.
    for role in roles {
        gw.grant(&alice, &carol, "orders", Some(role.name()), "1h");
        let db = format!("orders@{}", role.name());
        for sslmode in ["require", "disable"] {
            let out = gw.psql("alice", &alice, &db, sslmode, "SELECT current_user");
            assert_eq!(ok(&out, &db), role.upstream_user());
        }
    }
    // The driver with both protocols, a cancel, and a killed session.
    let s = connect(&gw.pg_config("alice", &alice, "orders@read"))
        .await
        .expect("connect");
    s.client
        .simple_query("SELECT count(*) FROM items")
        .await
        .expect("simple");
    s.client
        .query("SELECT name FROM items WHERE id = $1", &[&5i32])
        .await
        .expect("extended");
    // Passwords written into statements, both protocols: refused upstream
    // (no such role, no right to create one), recorded redacted.
    // One typed without quotes is a syntax error whose message quotes it.
    let written = format!("pw-{}", crate::harness::pg::random_hex());
    let unquoted = format!("pw_{}", crate::harness::pg::random_hex());
    // A comment after the keyword, and a DO block's body, hide nothing.
    for sql in [
        format!("ALTER ROLE no_such_role PASSWORD '{written}'"),
        format!("CREATE USER nobody_here WITH LOGIN PASSWORD '{written}'"),
        format!("ALTER ROLE no_such_role PASSWORD {unquoted}"),
        format!("ALTER ROLE no_such_role PASSWORD /* new */ '{written}'"),
        format!("DO $$BEGIN ALTER ROLE no_such_role PASSWORD '{written}'; END$$"),
    ] {
        assert!(
            !gw.psql("alice", &alice, "orders@read", "disable", &sql)
                .status
                .success()
        );
        assert!(s.client.execute(sql.as_str(), &[]).await.is_err());
    }
    // A password bound as a value: the driver sends Parse, Bind and
    // Execute at once, so the value goes out though the Parse fails.
    let bound = format!("pw-{}", crate::harness::pg::random_hex());
    assert!(
        s.client
            .query_typed(
                "ALTER ROLE no_such_role PASSWORD $1",
                &[(&bound, tokio_postgres::types::Type::TEXT)]
            )
            .await
            .is_err()
    );
    s.client
        .cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel");
    // The driver's session is the newest one (psql's may still be closing).
    let sessions = gw.api_json(&alice, "/v1/sessions");
    let id = sessions
        .as_array()
        .and_then(|a| {
            a.iter()
                .max_by_key(|x| x["started_at"].as_str().unwrap_or("").to_owned())
        })
        .and_then(|x| x["id"].as_str())
        .expect("a live session")
        .to_owned();

    // Refusals: bad token, another user's token, unknown user, no grant, pending, denied.
    for (user, token) in [
        ("alice", format!("{alice}x")),
        ("alice", bob.clone()),
        ("nobody", carol.clone()),
    ] {
        assert!(connect(&gw.pg_config(user, &token, "orders@read")).await.is_err());
    }
    let _ = gw.psql("bob", &bob, "orders", "disable", "SELECT 1");
    let pending = gw.request(&bob, "orders", Some("read"), "30m");
    let _ = gw.psql("bob", &bob, "orders@read", "disable", "SELECT 1");
    gw.cli_ok(&carol, &["deny", &pending, "--reason", "no"]);
    let (_, gid) = gw.grant(&bob, &carol, "orders", Some("md5"), "3s");
    let _ = gw.psql("bob", &bob, "orders@md5", "disable", "SELECT 1");
    let (_, gid2) = gw.grant(&bob, &carol, "orders", Some("trust"), "1h");
    gw.cli_ok(&carol, &["extend", &gid2, "--by", "10m"]);
    gw.cli_ok(&carol, &["revoke", &gid2, "--reason", "done"]);
    let _ = gw.psql("bob", &bob, "orders@trust", "disable", "SELECT 1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = gw.psql("bob", &bob, "orders@md5", "disable", "SELECT 1");
    let _ = gid;
    gw.cli_ok(&carol, &["kill", &id]);
    let _ = gw.cli(&format!("{alice}x"), &["whoami"]);

    // Every answer a person or a scraper can get.
    let mut answers = Vec::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        answers.push((path.to_owned(), gw.http("GET", path, None, None).1));
    }
    for (who, token) in [
        ("admin", &gw.admin_token),
        ("alice", &alice),
        ("bob", &bob),
        ("carol", &carol),
    ] {
        for path in [
            "/v1/whoami",
            "/v1/users",
            "/v1/resources",
            "/v1/requests?all=true",
            "/v1/requests",
            "/v1/grants?all=true",
            "/v1/grants",
            "/v1/sessions",
        ] {
            answers.push((format!("{who} GET {path}"), gw.http("GET", path, Some(token), None).1));
        }
        for args in [
            &["user", "list", "--json"][..],
            &["requests", "--all", "--json"],
            &["grants", "--all", "--json"],
            &["sessions", "--json"],
            &["requests", "--all"],
            &["grants", "--all"],
            &["whoami"],
        ] {
            let out = gw.cli(token, args);
            answers.push((
                format!("{who} portcullis {}", args.join(" ")),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ));
            answers.push((
                format!("{who} portcullis {} (stderr)", args.join(" ")),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
    }
    // The audit log as its readers get it, and as it lies on disk.
    for path in [
        "/v1/audit?limit=1000",
        "/v1/audit/export",
        "/v1/sessions/history",
        &format!("/v1/sessions/{id}/events"),
    ] {
        answers.push((
            format!("admin GET {path}"),
            gw.http("GET", path, Some(&gw.admin_token), None).1,
        ));
    }
    let export = gw.cli_ok(&gw.admin_token, &["audit", "--jsonl"]);
    assert!(
        export.contains("ALTER ROLE no_such_role PASSWORD '[redacted]'")
            && export.contains("CREATE USER nobody_here WITH LOGIN PASSWORD '[redacted]'")
            && export.contains("\"sqlstate\":\"42601\"")
            && export.contains("ALTER ROLE no_such_role PASSWORD /* new */ '[redacted]'")
            && export.contains("DO $$BEGIN ALTER ROLE no_such_role PASSWORD '[redacted]'; END$$")
            && export.contains("ALTER ROLE no_such_role PASSWORD $1"),
        "the statements should be recorded, redacted: {export}"
    );
    answers.push(("portcullis audit --jsonl".into(), export));
    answers.extend(gw.audit_files_text());
    answers.push((
        "401 answer".into(),
        gw.http("GET", "/v1/whoami", Some(&format!("{alice}x")), None).1,
    ));
    let metrics = &answers[2].1;
    assert!(
        metrics.contains("# TYPE"),
        "/metrics should be Prometheus text: {metrics}"
    );
    answers.push(("gateway log".into(), gw.log()));

    let mut secrets: Vec<(&str, &str)> = vec![
        ("admin's token", gw.admin_token.as_str()),
        ("alice's token", alice.as_str()),
        ("bob's token", bob.as_str()),
        ("carol's token", carol.as_str()),
    ];
    secrets.extend(pg().secrets().into_iter().map(|s| ("an upstream password", s)));
    secrets.push(("a password written into a statement", written.as_str()));
    secrets.push(("a password typed without quotes", unquoted.as_str()));
    secrets.push(("a password bound as a value", bound.as_str()));
    let mut leaks = Vec::new();
    for (where_, text) in &answers {
        for (what, secret) in &secrets {
            if text.contains(secret) {
                leaks.push(format!("{what} appears in {where_}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    assert!(gw.log().len() > 1000, "the debug log should have something to check");
}
