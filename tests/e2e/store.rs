//! The gateway on a PostgreSQL store (`store: { postgres_env }`): the same
//! workflow and sessions, its data in the server, kept across restarts, and
//! the URL's password in no log line or error.

use std::process::Command;
use std::time::Duration;

use crate::harness::clients::run_bounded;
use crate::harness::gateway::{Gateway, GatewayOptions};
use crate::harness::pg::{pg, random_hex};
use crate::harness::{ok, stderr};

#[test]
fn the_gateway_keeps_its_data_in_postgres() {
    let (db, url) = pg().new_database();
    let mut gw = Gateway::start(GatewayOptions {
        extra_yaml: "store: { postgres_env: PORTCULLIS_STORE }\n".to_owned(),
        env: vec![("PORTCULLIS_STORE".to_owned(), url)],
        ..GatewayOptions::default()
    });
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    let (_, gid) = gw.grant(&alice, &carol, "orders", None, "1h");
    let psql = |gw: &Gateway| ok(&gw.psql("alice", &alice, "orders", "disable", "SELECT 41 + 1"), "psql");
    assert_eq!(psql(&gw), "42");

    // The rows are in the server, not in data_dir.
    assert_eq!(
        pg().sql(
            &db,
            &format!("SELECT user_name, resource FROM grants WHERE id = '{gid}'")
        ),
        "alice|orders"
    );
    assert_eq!(pg().sql(&db, "SELECT count(*) FROM users"), "3");
    assert!(!gw.data_dir.join("portcullis.db").exists(), "no embedded store");

    // A restart reads users and grants back from the server.
    gw.crash_and_restart();
    assert_eq!(psql(&gw), "42");
    let history = pg().sql(&db, "SELECT count(*) FROM history WHERE action = 'grant.create'");
    assert_eq!(history, "1");
    assert!(
        !gw.log().contains(&pg().superuser_password),
        "the store URL's password is in the log"
    );
}

#[test]
fn an_unreachable_store_is_named_without_its_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = format!("pw-{}", random_hex());
    // Port 9 (discard) on loopback: nothing listens there.
    let config = format!(
        "data_dir: {}\napi: {{ listen: 127.0.0.1:0 }}\npostgres: {{ listen: 127.0.0.1:0 }}\n\
         store: {{ postgres: \"postgres://keeper:{secret}@127.0.0.1:9/portcullis\" }}\n",
        dir.path().join("data").display()
    );
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("serve").arg("-c").arg(&path);
    let out = run_bounded(&mut cmd, Duration::from_secs(30));
    let err = stderr(&out);
    assert!(!out.status.success(), "serve must fail: {err}");
    assert!(
        err.contains("cannot open the store at postgres://keeper@127.0.0.1/portcullis"),
        "names the store: {err}"
    );
    assert!(!err.contains(&secret), "the password is printed: {err}");
}
