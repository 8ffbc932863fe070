//! The real `psql` (and `pgbench`) through the gateway: TLS and plain, every
//! upstream auth kind, and choosing a role in the connection string.

use crate::harness::{Gateway, GatewayOptions, Role, connect, ok, stderr};

#[test]
fn psql_with_sslmode_require_and_disable() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");

    for sslmode in ["require", "disable"] {
        let out = gw.psql(
            "alice",
            &alice,
            "orders",
            sslmode,
            "SELECT count(*), max(name) FROM items",
        );
        assert_eq!(ok(&out, &format!("psql sslmode={sslmode}")), "1000|item 999");
        let info = ok(&gw.psql("alice", &alice, "orders", sslmode, "\\conninfo"), "\\conninfo");
        assert!(info.contains("database \"orders\""), "{info}");
        assert_eq!(
            info.contains("SSL connection"),
            sslmode == "require",
            "sslmode={sslmode} but \\conninfo says: {info}"
        );
    }
}

#[test]
fn require_tls_refuses_plain_clients() {
    let gw = Gateway::start(GatewayOptions {
        require_tls: true,
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");

    let out = gw.psql("alice", &alice, "orders", "disable", "SELECT 1");
    assert!(!out.status.success(), "sslmode=disable must be refused");
    let err = stderr(&out);
    assert!(
        err.contains("FATAL"),
        "a FATAL from the gateway, not a bare disconnect: {err}"
    );
    assert!(
        err.contains("TLS") || err.contains("SSL"),
        "the refusal should say TLS is required: {err}"
    );

    let out = gw.psql("alice", &alice, "orders", "require", "SELECT current_user");
    assert_eq!(ok(&out, "psql sslmode=require"), "orders_ro");
}

#[test]
fn each_upstream_auth_kind() {
    let roles = [Role::Read, Role::Admin, Role::Md5, Role::Trust];
    let gw = Gateway::start(GatewayOptions {
        roles: roles.to_vec(),
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    for role in roles {
        gw.grant(&alice, &carol, "orders", Some(role.name()), "1h");
    }
    for role in roles {
        let db = format!("orders@{}", role.name());
        let out = gw.psql(
            "alice",
            &alice,
            &db,
            "disable",
            "SELECT current_user, count(*) FROM items",
        );
        assert_eq!(
            ok(&out, &format!("psql dbname={db}")),
            format!("{}|1000", role.upstream_user()),
            "role {} ({:?} upstream auth)",
            role.name(),
            role
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_choice_in_the_connection_string() {
    let gw = Gateway::start(GatewayOptions {
        roles: vec![Role::Read, Role::Admin],
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let bob = gw.add_user("bob", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", Some("read"), "1h");
    gw.grant(&alice, &carol, "orders", Some("admin"), "1h");
    gw.grant(&bob, &carol, "orders", Some("admin"), "1h");

    // Two roles granted and none chosen: a refusal that names them.
    let out = gw.psql("alice", &alice, "orders", "disable", "SELECT 1");
    assert!(
        !out.status.success(),
        "a connection without a role choice should be refused"
    );
    let err = stderr(&out);
    assert!(err.contains("FATAL"), "{err}");
    assert!(
        err.contains("read") && err.contains("admin"),
        "the refusal should name the roles: {err}"
    );
    assert!(err.contains("orders@"), "the refusal should show how to choose: {err}");

    // A keyword string, a URL and tokio-postgres all choose the same way.
    let out = gw.psql("alice", &alice, "orders@read", "disable", "SELECT current_user");
    assert_eq!(ok(&out, "dbname=orders@read"), "orders_ro");
    let url = format!(
        "postgresql://alice@127.0.0.1:{}/orders%40admin?sslmode=require",
        gw.pg_port
    );
    assert_eq!(
        ok(
            &gw.psql_conn(&url, &alice, "SELECT current_user"),
            "a postgresql:// URL"
        ),
        "orders_admin"
    );
    let s = connect(&gw.pg_config("alice", &alice, "orders@read"))
        .await
        .expect("tokio-postgres orders@read");
    let row = s
        .client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), "orders_ro");

    // A role the resource does not have.
    let out = gw.psql("alice", &alice, "orders@root", "disable", "SELECT 1");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("root") && err.contains("read") && err.contains("admin"),
        "{err}"
    );

    // One role granted: no choice needed.
    let out = gw.psql("bob", &bob, "orders", "disable", "SELECT current_user");
    assert_eq!(ok(&out, "bob with one grant"), "orders_admin");
    // ...and a role without a grant is refused even though another is granted.
    let out = gw.psql("bob", &bob, "orders@read", "disable", "SELECT 1");
    assert!(!out.status.success(), "bob has no grant for read");
}

#[test]
fn pgbench_through_the_gateway() {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "bench", None, "1h");
    let mut cmd = std::process::Command::new("pgbench");
    cmd.args(["-n", "-S", "-T", "3", "-c", "2", "-j", "2"])
        .args(["-h", "127.0.0.1", "-p", &gw.pg_port.to_string(), "-U", "alice", "bench"])
        .env("PGPASSWORD", &alice)
        .env("PGCONNECT_TIMEOUT", "10");
    let out = crate::harness::clients::run_bounded(&mut cmd, std::time::Duration::from_secs(60));
    let report = ok(&out, "pgbench");
    let done: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in pgbench's report:\n{report}\n{}", stderr(&out)));
    assert!(done > 0, "pgbench processed no transactions:\n{report}");
    if let Some(failed) = report.lines().find(|l| l.starts_with("number of failed transactions:")) {
        assert!(failed.contains(": 0 "), "{failed}");
    }
}

#[test]
fn connect_runs_psql_with_the_token() {
    let gw = Gateway::start(GatewayOptions {
        roles: vec![Role::Read, Role::Admin],
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", Some("read"), "1h");
    let sql = "SELECT 'as:' || current_user;\n";
    let out = gw.cli_input(&alice, &["connect", "orders"], sql);
    assert!(ok(&out, "portcullis connect orders").contains("as:orders_ro"));
    // With two roles granted, --role picks one.
    gw.grant(&alice, &carol, "orders", Some("admin"), "1h");
    let out = gw.cli_input(&alice, &["connect", "orders", "--role", "admin"], sql);
    assert!(ok(&out, "portcullis connect orders --role admin").contains("as:orders_admin"));
    // psql's own failure is the verb's exit status.
    let out = gw.cli_input(&alice, &["connect", "orders"], sql);
    assert!(!out.status.success(), "no role chosen among two: psql should fail");
    assert!(stderr(&out).contains("orders@"), "{}", stderr(&out));
    let out = gw.cli_input(&alice, &["connect", "nosuch"], sql);
    assert!(!out.status.success());
    assert!(
        stderr(&out).starts_with("portcullis: ") && stderr(&out).contains("nosuch"),
        "{}",
        stderr(&out)
    );
}

/// Whether the upstream backend serving this session runs over TLS.
const BACKEND_SSL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[test]
fn upstream_tls_follows_the_resource_setting() {
    let ca = crate::harness::pg::pg().ca_file.clone();
    for (mode, ca_file, want) in [
        ("disable", None, "f"),
        ("prefer", None, "t"),
        ("require", None, "t"),
        ("verify-full", Some(ca), "t"),
    ] {
        let gw = Gateway::start(GatewayOptions {
            upstream_tls: mode,
            upstream_ca: ca_file,
            ..GatewayOptions::default()
        });
        let alice = gw.add_user("alice", &[], false);
        let carol = gw.add_user("carol", &[], false);
        gw.grant(&alice, &carol, "orders", None, "1h");
        let out = gw.psql("alice", &alice, "orders", "disable", BACKEND_SSL);
        assert_eq!(
            ok(&out, &format!("psql with upstream tls: {mode}")),
            want,
            "tls: {mode}"
        );
    }
}

#[test]
fn a_cleartext_password_goes_upstream_only_over_verified_tls() {
    let ca = crate::harness::pg::pg().ca_file.clone();
    for (mode, ca_file) in [("disable", None), ("require", None), ("verify-full", Some(ca))] {
        let gw = Gateway::start(GatewayOptions {
            roles: vec![Role::Cleartext],
            upstream_tls: mode,
            upstream_ca: ca_file,
            ..GatewayOptions::default()
        });
        let alice = gw.add_user("alice", &[], false);
        let carol = gw.add_user("carol", &[], false);
        gw.grant(&alice, &carol, "orders", None, "1h");
        let out = gw.psql("alice", &alice, "orders", "disable", "SELECT current_user");
        if mode == "verify-full" {
            assert_eq!(ok(&out, "cleartext over verify-full"), "pwuser");
            continue;
        }
        assert!(!out.status.success(), "tls: {mode} must not carry a cleartext password");
        let err = stderr(&out);
        assert!(
            err.contains("FATAL") && err.contains("cleartext") && err.contains("verify-full"),
            "tls: {mode}: the refusal should say why and what to change: {err}"
        );
    }
}

#[test]
fn verify_full_refuses_an_upstream_it_cannot_verify() {
    // A CA that did not sign the server's certificate: the gateway's own.
    let other_ca = tempfile::NamedTempFile::new().expect("temp file");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .and_then(|p| p.self_signed(&key))
        .expect("certificate");
    std::fs::write(other_ca.path(), cert.pem()).expect("write CA");
    let gw = Gateway::start(GatewayOptions {
        upstream_tls: "verify-full",
        upstream_ca: Some(other_ca.path().to_path_buf()),
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    let out = gw.psql("alice", &alice, "orders", "disable", "SELECT 1");
    assert!(!out.status.success(), "an unverifiable upstream must be refused");
    let err = stderr(&out);
    assert!(err.contains("FATAL") && err.contains("orders"), "{err}");
    assert!(
        err.to_lowercase().contains("certificate"),
        "the refusal should say why: {err}"
    );
}
