//! SSH port forwarding through the real OpenSSH client: `ssh -W` and `-L`
//! reach only the destinations the policy names, each is audited, bytes
//! count in the session and a revoke closes the tunnel; remote and agent
//! forwarding never work.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::clients::{run_bounded, run_bounded_input};
use crate::harness::sshd::{SshSetup, ssh_with};
use crate::harness::{stderr, stdout};

/// Bound on one client run.
const BOUND: Duration = Duration::from_secs(30);

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

/// A loopback port nobody listens on, below the ephemeral range: another
/// test's outgoing connection cannot take it before `ssh -L` binds it.
fn closed_port() -> u16 {
    crate::harness::pg::free_port()
}

/// `ssh -W HOST:PORT` (a direct-tcpip channel on stdin/stdout) with `input`.
fn ssh_stdio_forward(s: &SshSetup, dest: &str, input: &[u8]) -> std::process::Output {
    let mut cmd = ssh_with(s.gw.ssh_port, &s.alice_key, &["-W", dest], "alice+web1", None);
    run_bounded_input(&mut cmd, Some(input), BOUND)
}

#[test]
fn stdio_forwarding_reaches_an_allowed_destination_and_is_audited() {
    let echo = echo_server();
    let dead = closed_port();
    let s = SshSetup::with_policy(
        &format!("      port_forwarding: [\"127.0.0.1:{echo}\", \"127.0.0.1:{dead}\"]\n"),
        "",
        "",
    );
    let (rid, gid) = s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let ping = b"ping through the gateway\n";
    let out = ssh_stdio_forward(&s, &format!("127.0.0.1:{echo}"), ping);
    assert_eq!(
        stdout(&out),
        "ping through the gateway\n",
        "the echo should come back: {}",
        stderr(&out)
    );
    let events = s.gw.audit_seen("forward.open");
    let e = &events[0];
    assert_eq!(e["detail"]["destination"], format!("127.0.0.1:{echo}"), "{e}");
    assert_eq!(e["detail"]["protocol"], "ssh", "{e}");
    assert_eq!(e["user"], "alice", "{e}");
    assert!(e["detail"]["originator"].as_str().is_some_and(|o| !o.is_empty()), "{e}");
    // The same who, where and why as every event of the session.
    assert_eq!(
        (
            &e["resource"],
            &e["role"],
            &e["grant_id"],
            &e["request_id"],
            &e["reason"],
            &e["approvers"]
        ),
        (
            &json!("web1"),
            &json!("deploy"),
            &json!(gid),
            &json!(rid),
            &json!("e2e test"),
            &json!(["carol"])
        ),
        "{e}"
    );
    assert!(e["session_id"].as_str().is_some_and(|id| id.starts_with("ses_")), "{e}");
    let closed = s.gw.audit_seen("forward.close");
    let c = &closed[0];
    assert_eq!(c["session_id"], e["session_id"], "{c}");
    assert_eq!(c["detail"]["destination"], format!("127.0.0.1:{echo}"), "{c}");
    let len = ping.len().to_string();
    assert_eq!(
        (&c["detail"]["bytes_in"], &c["detail"]["bytes_out"]),
        (&json!(len), &json!(len)),
        "{c}"
    );

    // Allowed, but nobody listens there: the server's failure is audited.
    let out = ssh_stdio_forward(&s, &format!("127.0.0.1:{dead}"), b"x");
    assert!(!out.status.success(), "{}", stderr(&out));
    let failed = s.gw.audit_seen("forward.failed");
    assert_eq!(
        failed[0]["detail"]["destination"],
        format!("127.0.0.1:{dead}"),
        "{}",
        failed[0]
    );
    assert!(
        failed[0]["detail"]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        failed[0]
    );

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
    let refused = s.gw.audit_seen("forward.refused");
    assert_eq!(refused[0]["detail"]["direction"], "local", "{}", refused[0]);
    assert_eq!(
        refused[0]["detail"]["why"],
        format!("port forwarding to 127.0.0.1:{other} is not allowed by the policy of web1"),
        "{}",
        refused[0]
    );
}

#[test]
fn forwarding_is_refused_by_default_and_remote_and_agent_forwarding_never_work() {
    let echo = echo_server();
    let s = SshSetup::with_policy("", "", "");
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
    let remote = s.gw.audit_until(&["--action", "forward.refused"], |v| {
        v.iter().any(|e| e["detail"]["direction"] == "remote")
    });
    let remote = remote
        .iter()
        .find(|e| e["detail"]["direction"] == "remote")
        .expect("the -R refusal should be audited");
    assert_eq!(remote["user"], "alice", "{remote}");
    // OpenSSH asks for `localhost` when no bind address is given.
    assert_eq!(remote["detail"]["listen"], "localhost:0", "{remote}");
    assert_eq!(
        remote["detail"]["why"], "remote forwarding is never allowed",
        "{remote}"
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
    let s = SshSetup::with_policy("      port_forwarding: [\"127.0.0.1:*\"]\n", "", "");
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
