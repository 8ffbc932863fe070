//! Refused connections explain themselves in the person's own client: psql's
//! stderr shows the gateway's FATAL, drivers get the SQLSTATE.

use crate::harness::{Gateway, GatewayOptions, connect, db_error, now, parse_time, secs_between, stderr};

/// psql's stderr for a refused connection (asserting it was refused with a FATAL).
fn psql_refusal(gw: &Gateway, user: &str, token: &str, dbname: &str, sslmode: &str) -> String {
    let out = gw.psql(user, token, dbname, sslmode, "SELECT 1");
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "{user}@{dbname} should be refused; stdout: {}",
        crate::harness::stdout(&out)
    );
    assert!(
        err.contains("FATAL"),
        "expected the gateway's FATAL on psql's stderr, got: {err}"
    );
    err
}

/// SQLSTATE and message tokio-postgres gets for a refused connection.
async fn driver_refusal(gw: &Gateway, user: &str, token: &str, dbname: &str) -> (String, String) {
    match connect(&gw.pg_config(user, token, dbname)).await {
        Ok(_) => panic!("{user}@{dbname} should be refused"),
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("a bare error instead of an ErrorResponse: {e:?}"));
            assert_eq!(db.severity(), "FATAL", "{db:?}");
            db_error(&e)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_without_a_grant() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    for sslmode in ["require", "disable"] {
        let err = psql_refusal(&gw, "alice", &alice, "orders", sslmode);
        assert!(
            err.contains("portcullis request orders"),
            "the refusal should say how to ask: {err}"
        );
    }
    let (code, msg) = driver_refusal(&gw, "alice", &alice, "orders").await;
    assert!(code.starts_with("28"), "SQLSTATE {code} for {msg}");
    assert!(msg.contains("portcullis request orders"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_while_pending() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let id = gw.request(&alice, "orders", None, "1h");
    let err = psql_refusal(&gw, "alice", &alice, "orders", "disable");
    assert!(err.contains("pending"), "{err}");
    assert!(err.contains(&id), "the refusal should name request {id}: {err}");
    let (code, _) = driver_refusal(&gw, "alice", &alice, "orders").await;
    assert!(code.starts_with("28"), "SQLSTATE {code}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_after_expiry() {
    let gw = Gateway::start(GatewayOptions {
        warn_before: vec![],
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let (_, gid) = gw.grant(&alice, &carol, "orders", None, "3s");
    let expires = parse_time(gw.grant_json(&alice, &gid)["expires_at"].as_str().expect("expires_at"));
    // Still good before the deadline...
    let out = gw.psql("alice", &alice, "orders", "disable", "SELECT 1");
    assert!(
        out.status.success() || secs_between(now(), expires) < 0.5,
        "{}",
        stderr(&out)
    );
    // ...refused after it.
    let wait = secs_between(now(), expires) + 0.5;
    if wait > 0.0 {
        tokio::time::sleep(std::time::Duration::from_secs_f64(wait)).await;
    }
    let err = psql_refusal(&gw, "alice", &alice, "orders", "disable");
    assert!(err.contains("expired"), "{err}");
    assert!(err.contains(&gid), "the refusal should name grant {gid}: {err}");
    assert!(err.contains("portcullis request orders"), "{err}");
    let (code, _) = driver_refusal(&gw, "alice", &alice, "orders").await;
    assert!(code.starts_with("28"), "SQLSTATE {code}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_after_revoke() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let (_, gid) = gw.grant(&alice, &carol, "orders", None, "1h");
    gw.cli_ok(&carol, &["revoke", &gid, "--reason", "incident over"]);
    let err = psql_refusal(&gw, "alice", &alice, "orders", "disable");
    assert!(err.contains("revoked"), "{err}");
    assert!(err.contains(&gid), "the refusal should name grant {gid}: {err}");
    let (code, _) = driver_refusal(&gw, "alice", &alice, "orders").await;
    assert!(code.starts_with("28"), "SQLSTATE {code}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_password_and_unknown_user_read_the_same() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    let wrong = format!("{alice}x");

    let err = psql_refusal(&gw, "alice", &wrong, "orders", "disable");
    assert!(err.contains("password authentication failed"), "{err}");
    let (code, bad_pw) = driver_refusal(&gw, "alice", &wrong, "orders").await;
    assert_eq!(code, "28P01", "{bad_pw}");

    // Another user's valid token is a bad password too.
    let (code, _) = driver_refusal(&gw, "alice", &carol, "orders").await;
    assert_eq!(code, "28P01");

    let (code, unknown) = driver_refusal(&gw, "nobody", &wrong, "orders").await;
    assert_eq!(code, "28P01", "{unknown}");
    assert_eq!(
        unknown.replace("nobody", "USER"),
        bad_pw.replace("alice", "USER"),
        "an unknown user must read exactly like a bad password"
    );
    // The right token still works afterwards (four failures are below any lockout).
    let out = gw.psql("alice", &alice, "orders", "disable", "SELECT 1");
    assert_eq!(crate::harness::ok(&out, "psql after failed logins"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_resource() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let err = psql_refusal(&gw, "alice", &alice, "nosuch", "disable");
    assert!(err.contains("nosuch"), "{err}");
    let (code, msg) = driver_refusal(&gw, "alice", &alice, "nosuch").await;
    assert!(code == "3D000" || code.starts_with("28"), "SQLSTATE {code}: {msg}");
}
