//! SSH in the audit log, through the real OpenSSH clients and a real sshd:
//! refusals as `connect.denied`, `session.start`/`session.end` with bytes and
//! how the session ended, one `exec` event per command (secrets redacted)
//! with its exit status, and a pinned host key that does not match. Files
//! (`ssh_file_audit`) and recordings (`ssh_recording`) have their own.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::sshd::{SshSetup, Sshd, keygen, public_line, spawn_bounded, ssh, ssh_command};
use crate::harness::{GatewayOptions, stderr, stdout};

pub(crate) type Setup = SshSetup;

/// A gateway in front of `sshd`, with `resource` as its `web1` entry.
fn setup_with(sshd: Sshd, resource: String) -> Setup {
    SshSetup::start(
        sshd,
        GatewayOptions {
            ssh_resources: Some(resource),
            ..GatewayOptions::default()
        },
    )
}

pub(crate) fn setup() -> Setup {
    SshSetup::start(Sshd::start(), GatewayOptions::default())
}

/// `detail.KEY` of `e`, or "" when absent.
pub(crate) fn d<'a>(e: &'a Value, key: &str) -> &'a str {
    e["detail"][key].as_str().unwrap_or_default()
}

/// The one event of `action` among `events`.
pub(crate) fn one<'a>(events: &'a [Value], action: &str) -> &'a Value {
    let found: Vec<&Value> = events.iter().filter(|e| e["action"] == action).collect();
    assert_eq!(found.len(), 1, "expected one {action}: {events:#?}");
    found[0]
}

#[test]
fn refusals_sessions_and_exec_commands_are_audited() {
    let s = setup();
    // Refused first: no grant yet.
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo hi");
    assert!(!out.status.success(), "{}", stderr(&out));
    let denied = s.gw.audit_until(&["--action", "connect.denied"], |e| !e.is_empty());
    let x = one(&denied, "connect.denied");
    assert_eq!(
        (
            x["user"].as_str(),
            x["resource"].as_str(),
            d(x, "protocol"),
            d(x, "outcome")
        ),
        (Some("alice"), Some("web1"), "ssh", "no_grant"),
        "{x}"
    );
    assert!(d(x, "why").contains("no grant for alice on \"web1\""), "{x}");
    assert_eq!(d(x, "peer"), "127.0.0.1", "{x}");

    // Keys alone, none registered (BatchMode never reaches the token prompt):
    // one refusal for the connection, not one a key.
    let stray = s.keys.path().join("stray_ed25519");
    keygen(&stray);
    let out = ssh(s.gw.ssh_port, &stray, "alice+web1", "echo hi");
    assert!(!out.status.success(), "{}", stderr(&out));
    let denied = s.gw.audit_until(&["--action", "connect.denied"], |e| e.len() >= 2);
    assert_eq!(denied.len(), 2, "{denied:#?}");
    let x = &denied[1];
    assert_eq!(
        (x["user"].as_str(), x["resource"].as_str(), d(x, "outcome")),
        (Some("alice"), Some("web1"), "bad_credentials"),
        "{x}"
    );
    assert!(
        d(x, "why").contains("none of the offered SSH keys is registered"),
        "{x}"
    );

    let (_, gid) = s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo hello; exit 3");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let secret = "PGPASSWORD=hunter2 sh -c 'exit 0' --password=hunter2";
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", secret);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let execs = s.gw.audit_until(&["--action", "exec"], |e| e.len() >= 2);
    assert_eq!(execs.len(), 2, "{execs:#?}");
    let first = &execs[0];
    for (k, v) in [
        ("command", "echo hello; exit 3"),
        ("outcome", "exited"),
        ("exit_status", "3"),
        ("protocol", "ssh"),
    ] {
        assert_eq!(d(first, k), v, "{k}: {first}");
    }
    assert!(first["detail"].get("redacted").is_none(), "{first}");
    assert_eq!(
        (
            first["user"].as_str(),
            first["resource"].as_str(),
            first["role"].as_str(),
            first["grant_id"].as_str()
        ),
        (Some("alice"), Some("web1"), Some("deploy"), Some(gid.as_str())),
        "{first}"
    );
    let second = &execs[1];
    assert_eq!(
        d(second, "command"),
        "PGPASSWORD='[redacted]' sh -c 'exit 0' --password='[redacted]'",
        "{second}"
    );
    assert_eq!(
        (d(second, "redacted"), d(second, "exit_status")),
        ("true", "0"),
        "{second}"
    );

    // The first command's session: started, then ended by the client, with its bytes.
    let sid = first["session_id"].as_str().expect("session id").to_owned();
    assert!(sid.starts_with("ses_"), "{first}");
    let session =
        s.gw.audit_until(&["--session", &sid], |e| e.iter().any(|e| e["action"] == "session.end"));
    let start = one(&session, "session.start");
    assert_eq!(
        (d(start, "protocol"), d(start, "peer")),
        ("ssh", "127.0.0.1"),
        "{start}"
    );
    assert_eq!(start["grant_id"].as_str(), Some(gid.as_str()), "{start}");
    let end = one(&session, "session.end");
    for (k, v) in [
        ("protocol", "ssh"),
        ("ended", "client_quit"),
        ("bytes_out", "6"),
        ("bytes_in", "0"),
    ] {
        assert_eq!(d(end, k), v, "{k}: {end}");
    }
    assert!(d(end, "duration_ms").parse::<u64>().is_ok(), "{end}");
    let actions: Vec<&str> = session.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["session.start", "exec", "session.end"], "in order");
    // `sessions show` lists what an SSH session did, not its statements.
    let shown = s.gw.cli_ok(&s.alice, &["sessions", "show", &sid]);
    assert!(shown.contains("\nACTIVITY\n"), "{shown}");
    let lines: Vec<&str> = shown.lines().filter(|l| l.contains(" exec ")).collect();
    assert_eq!(lines.len(), 1, "{shown}");
    assert!(lines[0].contains("echo hello; exit 3"), "{shown}");
    let as_json: Value = serde_json::from_str(&s.gw.cli_ok(&s.alice, &["sessions", "show", &sid, "--json"]))
        .expect("sessions show --json");
    let listed: Vec<&str> = as_json["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(listed, ["exec"], "{as_json}");

    let everything = s.gw.cli_ok(&s.gw.admin_token, &["audit", "--jsonl"]);
    assert!(!everything.contains("hunter2"), "a password reached the audit log");
}

#[test]
fn a_revoke_ends_the_session_and_interrupts_the_command() {
    let s = setup();
    let (_, gid) = s.gw.grant(&s.alice, &s.carol, "web1", None, "1h");
    let running = spawn_bounded(ssh_command(s.gw.ssh_port, &s.alice_key, "alice+web1", "sleep 300"));
    let started = s.gw.audit_until(&["--action", "session.start"], |e| !e.is_empty());
    let sid = one(&started, "session.start")["session_id"]
        .as_str()
        .expect("session id")
        .to_owned();
    // The command is under way once the session has output nothing but is live; give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    s.gw.cli_ok(&s.carol, &["revoke", &gid, "--reason", "audit says stop"]);
    let out = running.join().expect("ssh thread");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let session =
        s.gw.audit_until(&["--session", &sid], |e| e.iter().any(|e| e["action"] == "session.end"));
    let end = one(&session, "session.end");
    assert_eq!(d(end, "ended"), "revoked", "{end}");
    let exec = one(&session, "exec");
    assert_eq!(
        (d(exec, "command"), d(exec, "outcome"), d(exec, "ended")),
        ("sleep 300", "interrupted", "revoked"),
        "{exec}"
    );
}

#[test]
fn a_host_key_mismatch_is_refused_on_stderr_and_audited() {
    let sshd = Sshd::start();
    let wrong = tempfile::tempdir().expect("tempdir");
    let wrong_key = wrong.path().join("wrong_host");
    keygen(&wrong_key);
    let resource = sshd.resource_yaml().replace(&sshd.host_key, &public_line(&wrong_key));
    assert_ne!(resource, sshd.resource_yaml(), "the pinned key should have changed");
    let s = setup_with(sshd, resource);
    let (_, gid) = s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo must-not-run");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(stdout(&out).is_empty(), "nothing ran: {}", stdout(&out));
    assert!(
        err.lines().any(|l| l.starts_with(
            "portcullis: the gateway could not open a session on \"web1\": the server's host key SHA256:"
        ) && l.contains("does not match the host_key pinned in the gateway's config")),
        "stderr should say the host key does not match: {err}"
    );
    let denied = s.gw.audit_until(&["--action", "connect.denied"], |e| !e.is_empty());
    let x = one(&denied, "connect.denied");
    for (k, v) in [
        ("outcome", "host_key_mismatch"),
        ("protocol", "ssh"),
        ("peer", "127.0.0.1"),
    ] {
        assert_eq!(d(x, k), v, "{k}: {x}");
    }
    assert_eq!(
        (
            x["user"].as_str(),
            x["resource"].as_str(),
            x["role"].as_str(),
            x["grant_id"].as_str()
        ),
        (Some("alice"), Some("web1"), Some("deploy"), Some(gid.as_str())),
        "{x}"
    );
    // The grant's context, as on every event of an admitted session.
    assert!(x["reason"].as_str().is_some_and(|r| !r.is_empty()), "{x}");
    assert_eq!(x["approvers"], serde_json::json!(["carol"]), "{x}");
    assert!(d(x, "why").contains("does not match the host_key pinned"), "{x}");
    let all = s.gw.audit_json(&["--user", "alice"]);
    assert!(
        all.iter()
            .all(|e| e["action"] != "session.start" && e["action"] != "exec"),
        "a refused session neither starts nor runs anything: {all:#?}"
    );
}

#[test]
fn a_client_gone_during_the_upstream_login_still_leaves_the_decision_on_record() {
    // An upstream that accepts and says nothing until the client has left.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let sshd = Sshd::start();
    let resource = sshd.resource_yaml().replace(
        &format!("port: {}", sshd.port),
        &format!("port: {}", hole.local_addr().expect("addr").port()),
    );
    let s = setup_with(sshd, resource);
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let mut client = ssh_command(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo must-not-run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn ssh");
    hole.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(30);
    let upstream = loop {
        match hole.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("the gateway never began its upstream login: {e}"),
        }
    };
    let _ = client.kill();
    let _ = client.wait();
    // Let the gateway see the client go before the login fails.
    std::thread::sleep(Duration::from_millis(300));
    drop(upstream);
    let denied = s.gw.audit_until(&["--action", "connect.denied"], |e| !e.is_empty());
    let x = one(&denied, "connect.denied");
    assert_eq!(
        (x["user"].as_str(), x["resource"].as_str()),
        (Some("alice"), Some("web1")),
        "{x}"
    );
    assert!(d(x, "outcome").starts_with("upstream"), "{x}");
}
