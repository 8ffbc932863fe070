//! SSH policy features and bad input through the real OpenSSH client: the
//! env allow-list, a garbage version line, a stalled key exchange, a login
//! flood, unknown targets, key management and `portcullis connect`.
//! Port forwarding has its own file, ssh_forwarding.rs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::clients::run_bounded;
use crate::harness::sshd::{SshSetup, keygen, ssh, ssh_prompted, ssh_with};
use crate::harness::{stderr, stdout};

/// Bound on one client run.
const BOUND: Duration = Duration::from_secs(30);

#[test]
fn env_passes_only_the_names_the_policy_allows() {
    let s = SshSetup::with_policy("      env: [LANG, \"LC_*\"]\n", "AcceptEnv LANG LC_* E2E_*\n", "");
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let mut cmd = ssh_with(
        s.gw.ssh_port,
        &s.alice_key,
        &["-o", "SetEnv=LANG=C.e2e LC_E2E=yes E2E_SECRET=leaked"],
        "alice+web1",
        Some("echo \"[$LANG|$LC_E2E|$E2E_SECRET]\""),
    );
    let out = run_bounded(&mut cmd, BOUND);
    assert_eq!(stdout(&out), "[C.e2e|yes|]\n", "stderr: {}", stderr(&out));

    // SendEnv from the client's own environment goes the same way.
    let mut cmd = ssh_with(
        s.gw.ssh_port,
        &s.alice_key,
        &["-o", "SendEnv=LC_SEND E2E_SEND"],
        "alice+web1",
        Some("echo \"[$LC_SEND|$E2E_SEND]\""),
    );
    cmd.env("LC_SEND", "sent").env("E2E_SEND", "kept");
    let out = run_bounded(&mut cmd, BOUND);
    assert_eq!(stdout(&out), "[sent|]\n", "stderr: {}", stderr(&out));
}

#[test]
fn a_garbage_version_line_is_told_and_closed_and_others_still_get_in() {
    let s = SshSetup::with_policy("", "", "");
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let mut c = TcpStream::connect(("127.0.0.1", s.gw.ssh_port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut got = Vec::new();
    c.read_to_end(&mut got)
        .expect("the gateway should close the connection");
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("SSH-2.0-Portcullis\r\n"),
        "the gateway's version line first: {got:?}"
    );
    assert!(
        got.contains("portcullis: this is an SSH gateway and the client did not send an SSH-2.0 version line"),
        "then why: {got:?}"
    );
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo still-serving");
    assert_eq!(stdout(&out), "still-serving\n", "stderr: {}", stderr(&out));
}

#[test]
fn a_stalled_handshake_is_dropped_after_the_timeout() {
    let s = SshSetup::with_policy("", "", ", handshake_timeout: 1s");
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    for (what, hello) in [
        ("no version line", &b""[..]),
        ("version line, then nothing", &b"SSH-2.0-OpenSSH_9.2p1 stalled\r\n"[..]),
    ] {
        let mut c = TcpStream::connect(("127.0.0.1", s.gw.ssh_port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
        let started = Instant::now();
        c.write_all(hello).expect("write");
        let mut got = Vec::new();
        let ended = c.read_to_end(&mut got);
        let took = started.elapsed();
        assert!(
            ended.is_ok()
                || ended
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{what}: the gateway should close the connection: {ended:?}"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(6),
            "{what}: closed after {took:?}, expected about 1 s"
        );
    }
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo still-serving");
    assert_eq!(stdout(&out), "still-serving\n", "stderr: {}", stderr(&out));
}

#[test]
fn a_token_flood_backs_off_while_a_registered_key_still_logs_in() {
    let s = SshSetup::with_policy("", "", "");
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let stray = s.keys.path().join("stray_ed25519");
    keygen(&stray);
    let mut told = None;
    for attempt in 1..=8 {
        let out = ssh_prompted(s.gw.ssh_port, &stray, "mallory+web1", "echo hi", "wrong-token");
        assert!(!out.status.success(), "attempt {attempt} must fail");
        if stderr(&out).contains("too many failed logins for this user or address; try again in") {
            told = Some(attempt);
            break;
        }
    }
    let told = told.expect("the flood should be told to back off within 8 attempts");
    assert!(told >= 5, "the first few failures are free (told at attempt {told})");
    // Each refused token, and the backoff, is a decision in the audit log.
    let deadline = Instant::now() + Duration::from_secs(30);
    let outcomes = loop {
        let out = s.gw.cli_ok(
            &s.gw.admin_token,
            &["audit", "--user", "mallory", "--action", "connect.denied", "--json"],
        );
        let events: Vec<serde_json::Value> = serde_json::from_str(&out).expect("audit --json");
        let outcomes: Vec<String> = events
            .iter()
            .filter(|e| e["detail"]["protocol"] == "ssh" && e["resource"] == "web1")
            .map(|e| e["detail"]["outcome"].as_str().unwrap_or_default().to_owned())
            .collect();
        if outcomes.iter().any(|o| o == "backoff") || Instant::now() > deadline {
            break outcomes;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        outcomes.iter().filter(|o| *o == "bad_credentials").count() >= 4,
        "{outcomes:?}"
    );
    assert!(outcomes.iter().any(|o| o == "backoff"), "{outcomes:?}");

    // A registered key is not a guess: it is never held back by the flood.
    let started = Instant::now();
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo key-login");
    assert_eq!(stdout(&out), "key-login\n", "stderr: {}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn unknown_targets_say_how_to_name_one() {
    let s = SshSetup::with_policy("", "", "");
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    for (login, want) in [
        (
            "alice+nosuch",
            "portcullis: \"nosuch\" is not a resource of this gateway; log in as USER+RESOURCE or USER+RESOURCE+ROLE",
        ),
        ("alice", "portcullis: name the server in the login name: USER+RESOURCE"),
        (
            "alice+web1+nosuch",
            "portcullis: resource \"web1\" has no role \"nosuch\"; its roles are: deploy",
        ),
        ("alice+orders", "portcullis: resource \"orders\" is not an SSH server"),
    ] {
        let out = ssh(s.gw.ssh_port, &s.alice_key, login, "echo ran");
        assert!(stdout(&out).is_empty(), "{login}: nothing may run: {}", stdout(&out));
        assert_eq!(out.status.code(), Some(1), "{login}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{login}: {}", stderr(&out));
    }
}

/// `ssh-keygen -l`'s fingerprint of the public key next to `key`.
fn keygen_fingerprint(key: &std::path::Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub"))
        .output()
        .expect("ssh-keygen -l");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint")
        .to_owned()
}

/// Runs `ssh ... echo LOGIN` as `login` with `key` until it succeeds (or
/// fails, with `want_ok` false) within 10 s; answers the last output.
fn ssh_until(s: &SshSetup, key: &std::path::Path, login: &str, want_ok: bool) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ssh(s.gw.ssh_port, key, login, "echo logged-in");
        if out.status.success() == want_ok || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn keys_added_and_removed_later_take_effect_without_a_restart() {
    let s = SshSetup::with_policy("", "", "");
    let bob = s.gw.add_user("bob", &[], false);
    s.gw.grant(&bob, &s.carol, "web1", None, "30m");
    let key = s.keys.path().join("bob_ed25519");
    keygen(&key);
    let second = s.keys.path().join("bob2_ed25519");
    keygen(&second);
    let pub_file = key.with_extension("pub").display().to_string();
    let second_pub = second.with_extension("pub").display().to_string();
    let admin = s.gw.admin_token.clone();

    let out = ssh(s.gw.ssh_port, &key, "bob+web1", "echo logged-in");
    assert!(!out.status.success(), "no key registered yet: {}", stdout(&out));

    let fp = s.gw.cli_ok(&admin, &["user", "key", "add", "bob", &pub_file]);
    assert_eq!(fp, keygen_fingerprint(&key), "add prints the key's fingerprint");
    let out = ssh_until(&s, &key, "bob+web1", true);
    assert_eq!(stdout(&out), "logged-in\n", "the new key logs in: {}", stderr(&out));

    let again = s.gw.cli(&admin, &["user", "key", "add", "bob", &pub_file]);
    assert!(!again.status.success(), "a key twice is refused");
    assert!(
        stderr(&again).contains(&format!("user bob already has the ssh key {fp}")),
        "{}",
        stderr(&again)
    );
    s.gw.cli_ok(&admin, &["user", "key", "add", "bob", &second_pub]);
    let listed: Value =
        serde_json::from_str(&s.gw.cli_ok(&admin, &["user", "key", "list", "bob", "--json"])).expect("json");
    let fps: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|k| k["fingerprint"].as_str().expect("fingerprint"))
        .collect();
    assert_eq!(fps, [fp.as_str(), keygen_fingerprint(&second).as_str()], "{listed}");
    assert_eq!(listed[0]["type"], "ssh-ed25519", "{listed}");
    assert_eq!(listed[0]["comment"], "e2e", "{listed}");
    let table = s.gw.cli_ok(&admin, &["user", "key", "list", "bob"]);
    assert!(table.starts_with("FINGERPRINT") && table.contains(&fp), "{table}");

    let denied = s.gw.cli(&bob, &["user", "key", "list", "bob"]);
    assert!(!denied.status.success(), "keys are admin business");
    let unknown = s.gw.cli(&admin, &["user", "key", "list", "nobody"]);
    assert!(stderr(&unknown).contains("unknown user nobody"), "{}", stderr(&unknown));

    // By fingerprint: that key is refused, the other still works.
    assert_eq!(s.gw.cli_ok(&admin, &["user", "key", "remove", "bob", &fp]), fp);
    let out = ssh_until(&s, &key, "bob+web1", false);
    assert!(!out.status.success(), "a removed key must not log in: {}", stdout(&out));
    let out = ssh(s.gw.ssh_port, &second, "bob+web1", "echo logged-in");
    assert_eq!(
        stdout(&out),
        "logged-in\n",
        "the other key still works: {}",
        stderr(&out)
    );
    // By file.
    s.gw.cli_ok(&admin, &["user", "key", "remove", "bob", &second_pub]);
    let out = ssh_until(&s, &second, "bob+web1", false);
    assert!(!out.status.success(), "a removed key must not log in: {}", stdout(&out));
    let gone = s.gw.cli(&admin, &["user", "key", "remove", "bob", &fp]);
    assert!(
        stderr(&gone).contains(&format!("user bob has no ssh key {fp}")),
        "{}",
        stderr(&gone)
    );
    let actions: Vec<Value> = s.gw.audit_seen("user.ssh_key.remove");
    assert_eq!(actions.len(), 2, "{actions:?}");
}

/// A directory with an `ssh` that runs the real one with the test's
/// options and key, and notes its arguments in `args`.
fn ssh_wrapper(dir: &std::path::Path, key: &std::path::Path) -> String {
    let real = String::from_utf8_lossy(
        &Command::new("sh")
            .args(["-c", "command -v ssh"])
            .output()
            .expect("sh")
            .stdout,
    )
    .trim()
    .to_owned();
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > {args}\nexec {real} -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
         -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=ERROR -i {key} \"$@\"\n",
        args = dir.join("args").display(),
        key = key.display()
    );
    let path = dir.join("ssh");
    std::fs::write(&path, script).expect("write wrapper");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default())
}

#[test]
fn connect_runs_ssh_with_the_login_and_passes_the_command() {
    let s = SshSetup::with_policy("", "", "");
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let bin = tempfile::tempdir().expect("tempdir");
    let path = ssh_wrapper(bin.path(), &s.alice_key);
    let connect = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.arg("connect")
            .args(args)
            .env("PORTCULLIS_URL", s.gw.url())
            .env("PORTCULLIS_TOKEN", &s.alice)
            .env("PATH", &path)
            .env_remove("SSH_AUTH_SOCK");
        run_bounded(&mut cmd, BOUND)
    };
    let out = connect(&["web1", "--", "echo", "hi"]);
    assert_eq!(stdout(&out), "hi\n", "stderr: {}", stderr(&out));
    assert!(out.status.success());
    let args = std::fs::read_to_string(bin.path().join("args")).expect("args");
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        [
            "-p",
            &s.gw.ssh_port.to_string(),
            "-l",
            "alice+web1",
            "127.0.0.1",
            "echo",
            "hi"
        ],
        "what connect passed to ssh"
    );

    let out = connect(&["web1", "--role", "deploy", "--", "exit 3"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "ssh's exit status is connect's: {}",
        stderr(&out)
    );
    let args = std::fs::read_to_string(bin.path().join("args")).expect("args");
    assert!(args.contains("alice+web1+deploy\n"), "{args}");

    let out = connect(&["web1", "--role", "nosuch", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("resource \"web1\" has no role \"nosuch\"; its roles are: deploy"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn clients_are_offered_aes_gcm_unless_the_config_names_other_ciphers() {
    // By default: AES-GCM, whatever OpenSSH would pick first otherwise.
    let s = SshSetup::with_policy("", "", "");
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let mut cmd = ssh_with(s.gw.ssh_port, &s.alice_key, &["-v"], "alice+web1", Some("echo hi"));
    let out = run_bounded(&mut cmd, BOUND);
    assert_eq!(stdout(&out), "hi\n", "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("cipher: aes128-gcm@openssh.com"),
        "negotiated: {}",
        stderr(&out)
    );
    // A client without AES-GCM is told which ciphers it lacks.
    let mut cmd = ssh_with(
        s.gw.ssh_port,
        &s.alice_key,
        &["-c", "chacha20-poly1305@openssh.com"],
        "alice+web1",
        Some("echo hi"),
    );
    let out = run_bounded(&mut cmd, BOUND);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no matching cipher") && stderr(&out).contains("aes256-gcm@openssh.com"),
        "{}",
        stderr(&out)
    );

    // ssh.ciphers lets it in.
    let s = SshSetup::with_policy(
        "",
        "",
        ", ciphers: [aes256-gcm@openssh.com, chacha20-poly1305@openssh.com]",
    );
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let mut cmd = ssh_with(
        s.gw.ssh_port,
        &s.alice_key,
        &["-v", "-c", "chacha20-poly1305@openssh.com"],
        "alice+web1",
        Some("echo hi"),
    );
    let out = run_bounded(&mut cmd, BOUND);
    assert_eq!(stdout(&out), "hi\n", "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("cipher: chacha20-poly1305@openssh.com"),
        "{}",
        stderr(&out)
    );
}
