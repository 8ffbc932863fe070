//! SSH policy features and bad input through the real OpenSSH client: port
//! forwarding only where the policy names the destination, the env
//! allow-list, remote and agent forwarding refused, a garbage version line,
//! a stalled key exchange, a login flood, unknown targets, key management
//! and `portcullis connect`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::clients::{run_bounded, run_bounded_input};
use crate::harness::sshd::{SshSetup, Sshd, keygen, ssh, ssh_prompted, ssh_with};
use crate::harness::{Gateway, GatewayOptions, stderr, stdout};

type Setup = SshSetup;

/// `policy` lines go under web1's policy (six spaces in); `sshd_extra` into sshd_config.
fn setup(policy: &str, sshd_extra: &str, ssh_extra: &str) -> Setup {
    let sshd = Sshd::start_with(sshd_extra);
    let resource = sshd.resource_yaml_with(policy);
    SshSetup::start(
        sshd,
        GatewayOptions {
            ssh_resources: Some(resource),
            ssh_extra: ssh_extra.to_owned(),
            ..GatewayOptions::default()
        },
    )
}

/// A TCP echo server on a loopback port; each connection echoes until EOF.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A loopback port nobody listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `ssh -W HOST:PORT` (a direct-tcpip channel on stdin/stdout) with `input`.
fn ssh_stdio_forward(s: &Setup, dest: &str, input: &[u8]) -> std::process::Output {
    let mut cmd = ssh_with(s.gw.ssh_port, &s.alice_key, &["-W", dest], "alice+web1", None);
    run_bounded_input(&mut cmd, Some(input), BOUND)
}

/// Bound on one client run.
const BOUND: Duration = Duration::from_secs(30);

/// Polls the audit log (as admin) until an event of `action` shows; answers them.
fn wait_audit(gw: &Gateway, action: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = gw.cli_ok(&gw.admin_token, &["audit", "--action", action, "--json"]);
        let v: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("audit --json ({e}): {out}"));
        if !v.is_empty() {
            return v;
        }
        assert!(Instant::now() < deadline, "no {action} audit event within 10 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn stdio_forwarding_reaches_an_allowed_destination_and_is_audited() {
    let echo = echo_server();
    let s = setup(&format!("      port_forwarding: [\"127.0.0.1:{echo}\"]\n"), "", "");
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let out = ssh_stdio_forward(&s, &format!("127.0.0.1:{echo}"), b"ping through the gateway\n");
    assert_eq!(
        stdout(&out),
        "ping through the gateway\n",
        "the echo should come back: {}",
        stderr(&out)
    );
    let events = wait_audit(&s.gw, "forward.open");
    let e = &events[0];
    assert_eq!(e["detail"]["destination"], format!("127.0.0.1:{echo}"), "{e}");
    assert_eq!(e["detail"]["protocol"], "ssh", "{e}");
    assert_eq!(e["user"], "alice", "{e}");
    assert!(e["detail"]["originator"].as_str().is_some_and(|o| !o.is_empty()), "{e}");

    // Another port of the same host is not named by the policy.
    let other = closed_port();
    let out = ssh_stdio_forward(&s, &format!("127.0.0.1:{other}"), b"x");
    let err = stderr(&out);
    assert!(!out.status.success(), "should be refused: {err}");
    assert!(
        err.contains(&format!(
            "portcullis: port forwarding to 127.0.0.1:{other} is not allowed by the policy of web1"
        )),
        "the client should print why: {err}"
    );
    wait_audit(&s.gw, "forward.refused");
}

#[test]
fn forwarding_is_refused_by_default_and_remote_and_agent_forwarding_never_work() {
    let echo = echo_server();
    let s = setup("", "", "");
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let out = ssh_stdio_forward(&s, &format!("127.0.0.1:{echo}"), b"ping\n");
    let err = stderr(&out);
    assert!(stdout(&out).is_empty(), "nothing may pass: {}", stdout(&out));
    assert!(
        err.contains(&format!(
            "administratively prohibited: portcullis: port forwarding to 127.0.0.1:{echo} is not allowed by the policy of web1"
        )),
        "{err}"
    );

    // -R: the server never listens for the engineer.
    let remote = format!("0:127.0.0.1:{echo}");
    let mut cmd = ssh_with(
        s.gw.ssh_port,
        &s.alice_key,
        &["-o", "ExitOnForwardFailure=yes", "-R", &remote],
        "alice+web1",
        Some("echo ran"),
    );
    let out = run_bounded(&mut cmd, BOUND);
    assert!(!out.status.success(), "-R must fail: {}", stdout(&out));
    assert!(
        stderr(&out).contains("remote port forwarding failed"),
        "{}",
        stderr(&out)
    );

    // -A: a running agent on this side, and still none on the server.
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let sock = agent_dir.path().join("agent.sock");
    let mut agent = KillOnDrop(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent"),
    );
    wait_for(|| sock.exists(), "the agent socket");
    let mut cmd = ssh_with(
        s.gw.ssh_port,
        &s.alice_key,
        &["-A"],
        "alice+web1",
        Some("echo \"agent=[$SSH_AUTH_SOCK]\""),
    );
    cmd.env("SSH_AUTH_SOCK", &sock);
    let out = run_bounded(&mut cmd, BOUND);
    assert_eq!(
        stdout(&out),
        "agent=[]\n",
        "no agent may reach the server: {}",
        stderr(&out)
    );
    let _ = agent.0.kill();
}

#[test]
fn local_forwarding_counts_bytes_and_closes_at_revoke() {
    let echo = echo_server();
    let s = setup("      port_forwarding: [\"127.0.0.1:*\"]\n", "", "");
    let (_, gid) = s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let local = closed_port();
    let spec = format!("{local}:127.0.0.1:{echo}");
    let mut cmd = ssh_with(
        s.gw.ssh_port,
        &s.alice_key,
        &["-N", "-o", "ExitOnForwardFailure=yes", "-L", &spec],
        "alice+web1",
        None,
    );
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut tunnel = KillOnDrop(cmd.spawn().expect("ssh -L"));
    wait_for(|| TcpStream::connect(("127.0.0.1", local)).is_ok(), "the -L port");
    let mut conn = TcpStream::connect(("127.0.0.1", local)).expect("connect -L");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let payload = vec![b'z'; 100_000];
    let mut writer = conn.try_clone().expect("clone");
    let sent = payload.clone();
    std::thread::spawn(move || writer.write_all(&sent));
    let mut back = vec![0u8; payload.len()];
    conn.read_exact(&mut back).expect("echo through -L");
    assert_eq!(back, payload, "the echo changed the bytes");
    let sessions: Value = serde_json::from_str(&s.gw.cli_ok(&s.alice, &["sessions", "--json"])).expect("sessions json");
    let x = &sessions[0];
    assert!(
        x["bytes_in"].as_u64().is_some_and(|n| n >= 100_000) && x["bytes_out"].as_u64().is_some_and(|n| n >= 100_000),
        "forwarded bytes count in the session: {x}"
    );

    s.gw.cli_ok(&s.carol, &["revoke", &gid, "--reason", "done"]);
    let started = Instant::now();
    let mut rest = Vec::new();
    let ended = conn.read_to_end(&mut rest);
    assert!(
        ended.is_ok() && started.elapsed() < Duration::from_secs(8),
        "the forwarded connection should close at the revoke: {ended:?} after {:?}",
        started.elapsed()
    );
    let status = wait_exit(&mut tunnel.0, Duration::from_secs(10));
    assert!(status.is_some(), "ssh -N should end with the session");
}

#[test]
fn env_passes_only_the_names_the_policy_allows() {
    let s = setup("      env: [LANG, \"LC_*\"]\n", "AcceptEnv LANG LC_* E2E_*\n", "");
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
    let s = setup("", "", "");
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
    let s = setup("", "", ", handshake_timeout: 1s");
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
    let s = setup("", "", "");
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
    let s = setup("", "", "");
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

/// Kills the child when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} not ready within 15 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
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
fn ssh_until(s: &Setup, key: &std::path::Path, login: &str, want_ok: bool) -> std::process::Output {
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
    let s = setup("", "", "");
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
    let actions: Vec<Value> = wait_audit(&s.gw, "user.ssh_key.remove");
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
    let s = setup("", "", "");
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
    let s = setup("", "", "");
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
    let s = setup(
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
