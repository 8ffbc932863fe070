//! SSH through the gateway with the real OpenSSH client against a real sshd:
//! the login name `USER+RESOURCE`, the engineer's registered key, the role's
//! key upstream with the pinned host key, and refusals told on stderr.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::sshd::{
    SshSetup, Sshd, keygen, rsync, scp, sftp_batch, spawn_bounded, ssh, ssh_command, ssh_prompted,
};
use crate::harness::{Gateway, GatewayOptions, stderr, stdout};

type Setup = SshSetup;

fn setup() -> Setup {
    setup_with(GatewayOptions::default())
}

fn setup_with(opts: GatewayOptions) -> Setup {
    SshSetup::start(Sshd::start(), opts)
}

#[test]
fn exec_with_a_grant_prints_and_keeps_the_exit_status() {
    let s = setup();
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo hello; exit 3");
    assert_eq!(stdout(&out), "hello\n", "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
}

#[test]
fn without_a_grant_stderr_names_the_request_command() {
    let s = setup();
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo hello");
    let err = stderr(&out);
    assert!(!out.status.success(), "should be refused; stdout: {}", stdout(&out));
    assert!(stdout(&out).is_empty(), "nothing ran upstream: {}", stdout(&out));
    assert!(
        err.contains("no grant for alice on \"web1\"") && err.contains("portcullis request web1 --reason"),
        "stderr should say why and how to ask: {err}"
    );
}

/// A command that outlives any test unless the gateway ends it.
const LONG_SLEEP: &str = "sleep 300";

/// Whether `err` has `text` on a line of the gateway's own (on the channel's
/// stderr), not only in OpenSSH's "Received disconnect" report.
fn said(err: &str, text: &str) -> bool {
    err.lines().any(|l| l.starts_with("portcullis: ") && l.contains(text))
}

/// Live sessions as `token` sees them.
fn live_sessions(gw: &Gateway, token: &str) -> Vec<Value> {
    let out = gw.cli_ok(token, &["sessions", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("sessions --json ({e}): {out}"));
    v.as_array().cloned().unwrap_or_else(|| panic!("not an array: {out}"))
}

/// Waits (bounded) until exactly `n` sessions are listed; answers them.
fn wait_sessions(gw: &Gateway, token: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listed = live_sessions(gw, token);
        if listed.len() == n {
            return listed;
        }
        assert!(Instant::now() < deadline, "expected {n} live sessions, have {listed:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn expiry_warns_then_cuts_a_running_command() {
    let s = setup_with(GatewayOptions {
        warn_before: vec!["3s".into()],
        ..GatewayOptions::default()
    });
    let (_, gid) = s.gw.grant(&s.alice, &s.carol, "web1", None, "7s");
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", LONG_SLEEP);
    let err = stderr(&out);
    assert!(!out.status.success(), "a cut session must not exit 0; stderr: {err}");
    assert!(
        said(&err, "warning:") && said(&err, "expires in") && said(&err, &gid),
        "a warning naming grant {gid} should come before the cut: {err}"
    );
    assert!(
        said(&err, &format!("grant {gid} on \"web1\" expired")),
        "the cut line should name grant {gid}: {err}"
    );
    assert_eq!(out.status.code(), Some(1), "the cut's exit status: {err}");
    let warned = err.find("expires in");
    let cut = err.find("expired at");
    assert!(warned < cut, "the warning should come first: {err}");
    wait_sessions(&s.gw, &s.alice, 0);
}

#[test]
fn revoke_cuts_a_running_command_listed_in_sessions() {
    let s = setup();
    let (_, gid) = s.gw.grant(&s.alice, &s.carol, "web1", None, "1h");
    let running = spawn_bounded(ssh_command(s.gw.ssh_port, &s.alice_key, "alice+web1", LONG_SLEEP));
    let listed = wait_sessions(&s.gw, &s.alice, 1);
    let x = &listed[0];
    assert_eq!(x["user"], "alice", "{x}");
    assert_eq!(x["resource"], "web1", "{x}");
    assert_eq!(x["role"], "deploy", "{x}");
    assert_eq!(x["protocol"], "ssh", "{x}");
    assert_eq!(x["grant_id"], gid.as_str(), "{x}");
    assert_eq!(live_sessions(&s.gw, &s.carol).len(), 1, "the approver sees it too");

    let state = s.gw.cli_ok(&s.carol, &["revoke", &gid, "--reason", "e2e says stop"]);
    assert!(state.starts_with("revoked "), "{state}");
    let out = running.join().expect("ssh thread");
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "a revoked session must not exit 0; stderr: {err}"
    );
    assert!(
        said(
            &err,
            &format!("grant {gid} on \"web1\" was revoked by carol (e2e says stop)")
        ),
        "the cut line should name the grant and the reason: {err}"
    );
    assert_eq!(out.status.code(), Some(1), "the cut's exit status: {err}");
    wait_sessions(&s.gw, &s.alice, 0);
}

#[test]
fn kill_ends_one_ssh_session() {
    let s = setup();
    s.gw.grant(&s.alice, &s.carol, "web1", None, "1h");
    let running = spawn_bounded(ssh_command(s.gw.ssh_port, &s.alice_key, "alice+web1", LONG_SLEEP));
    let listed = wait_sessions(&s.gw, &s.alice, 1);
    let id = listed[0]["id"].as_str().expect("session id").to_owned();
    assert_eq!(s.gw.cli_ok(&s.carol, &["kill", &id]), "killed");
    let out = running.join().expect("ssh thread");
    let err = stderr(&out);
    assert!(!out.status.success(), "a killed session must not exit 0; stderr: {err}");
    assert!(
        said(&err, &format!("session {id} on \"web1\" was killed by carol")),
        "the cut line should say who killed it: {err}"
    );
    assert_eq!(out.status.code(), Some(1), "the cut's exit status: {err}");
    wait_sessions(&s.gw, &s.alice, 0);
    // The grant still stands: a new session works.
    let again = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo again");
    assert_eq!(stdout(&again), "again\n", "stderr: {}", stderr(&again));
}

/// A small file with every byte value and no trailing newline, so any
/// translation or truncation on the way shows.
fn sample(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, Vec<u8>) {
    let body: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let path = dir.join(name);
    std::fs::write(&path, &body).expect("write sample");
    (path, body)
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The upstream sshd runs on this machine as this user, so the "remote"
/// side of a copy is a local temp dir the test can read.
fn remote(dir: &std::path::Path, name: &str) -> String {
    format!("alice+web1@127.0.0.1:{}", dir.join(name).display())
}

#[test]
fn scp_both_modes_both_ways_keeps_the_content() {
    let s = setup();
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let local = tempfile::tempdir().expect("tempdir");
    let far = tempfile::tempdir().expect("tempdir");
    let (src, body) = sample(local.path(), "src.bin");
    for (mode, extra) in [("sftp", None), ("legacy", Some("-O"))] {
        let up = format!("up-{mode}.bin");
        let mut args: Vec<String> = extra.into_iter().map(str::to_owned).collect();
        args.extend([src.display().to_string(), remote(far.path(), &up)]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = scp(s.gw.ssh_port, &s.alice_key, &refs);
        assert!(out.status.success(), "scp {mode} upload: {}", stderr(&out));
        assert_eq!(read(&far.path().join(&up)), body, "scp {mode} upload changed the file");

        let down = local.path().join(format!("down-{mode}.bin"));
        let mut args: Vec<String> = extra.into_iter().map(str::to_owned).collect();
        args.extend([remote(far.path(), &up), down.display().to_string()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = scp(s.gw.ssh_port, &s.alice_key, &refs);
        assert!(out.status.success(), "scp {mode} download: {}", stderr(&out));
        assert_eq!(read(&down), body, "scp {mode} download changed the file");
    }
}

#[test]
fn sftp_batch_puts_lists_and_gets() {
    let s = setup();
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let local = tempfile::tempdir().expect("tempdir");
    let far = tempfile::tempdir().expect("tempdir");
    let (src, body) = sample(local.path(), "src.bin");
    let back = local.path().join("back.bin");
    let batch = local.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "cd {far}\nput {src} put.bin\nls -l\nmkdir sub\nrename put.bin sub/moved.bin\nget sub/moved.bin {back}\n",
            far = far.path().display(),
            src = src.display(),
            back = back.display()
        ),
    )
    .expect("write batch");
    let out = sftp_batch(s.gw.ssh_port, &s.alice_key, "alice+web1", &batch);
    assert!(out.status.success(), "sftp -b: {}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("put.bin"),
        "ls should list the upload: {}",
        stdout(&out)
    );
    assert_eq!(
        read(&far.path().join("sub/moved.bin")),
        body,
        "the upload changed the file"
    );
    assert_eq!(read(&back), body, "the download changed the file");
}

#[test]
fn rsync_over_the_gateway_keeps_the_content() {
    let s = setup();
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let local = tempfile::tempdir().expect("tempdir");
    let far = tempfile::tempdir().expect("tempdir");
    let (src, body) = sample(local.path(), "src.bin");
    let out = rsync(
        s.gw.ssh_port,
        &s.alice_key,
        &[&src.display().to_string(), &remote(far.path(), "up.bin")],
    );
    assert!(out.status.success(), "rsync upload: {}", stderr(&out));
    assert_eq!(read(&far.path().join("up.bin")), body, "rsync upload changed the file");
    let down = local.path().join("down.bin");
    let out = rsync(
        s.gw.ssh_port,
        &s.alice_key,
        &[&remote(far.path(), "up.bin"), &down.display().to_string()],
    );
    assert!(out.status.success(), "rsync download: {}", stderr(&out));
    assert_eq!(read(&down), body, "rsync download changed the file");
}

/// The gateway's lines in `err`.
fn reason_lines(err: &str) -> Vec<&str> {
    err.lines().filter(|l| l.contains("portcullis:")).collect()
}

#[test]
fn an_unknown_key_or_user_reads_the_same_reason_and_may_use_the_token() {
    let s = setup();
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let stray = s.keys.path().join("stray_ed25519");
    keygen(&stray);

    let wrong_key = ssh_prompted(s.gw.ssh_port, &stray, "alice+web1", "echo hi", "not-a-token");
    let nobody = ssh_prompted(s.gw.ssh_port, &stray, "nobody+web1", "echo hi", "not-a-token");
    for (what, out) in [("unregistered key", &wrong_key), ("unknown user", &nobody)] {
        let err = stderr(out);
        assert!(
            !out.status.success(),
            "{what}: should be refused; stdout: {}",
            stdout(out)
        );
        assert!(stdout(out).is_empty(), "{what}: nothing ran: {}", stdout(out));
        assert!(
            err.contains("none of the offered SSH keys is registered for this login"),
            "{what}: stderr should say why: {err}"
        );
    }
    assert_eq!(
        reason_lines(&stderr(&wrong_key)),
        reason_lines(&stderr(&nobody)),
        "the reason must not tell an unknown user from an unknown key"
    );

    let out = ssh_prompted(s.gw.ssh_port, &stray, "alice+web1", "echo via-token", &s.alice);
    assert_eq!(stdout(&out), "via-token\n", "the token should log in: {}", stderr(&out));
}

#[test]
fn pending_expired_and_revoked_are_told_on_stderr() {
    let s = setup();
    let pending = s.gw.request(&s.alice, "web1", None, "30m");
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo hi");
    let err = stderr(&out);
    assert!(
        !out.status.success() && stdout(&out).is_empty(),
        "pending must not run: {err}"
    );
    assert!(
        err.contains(&format!("request {pending} for \"web1\" is still pending approval")),
        "{err}"
    );
    s.gw.cli_ok(&s.alice, &["cancel", &pending]);

    let (_, gid) = s.gw.grant(&s.alice, &s.carol, "web1", None, "1s");
    std::thread::sleep(Duration::from_millis(1500));
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo hi");
    let err = stderr(&out);
    assert!(
        !out.status.success() && stdout(&out).is_empty(),
        "expired must not run: {err}"
    );
    assert!(err.contains(&format!("grant {gid} on \"web1\" expired at")), "{err}");
    assert!(err.contains("portcullis request web1"), "and how to ask again: {err}");

    let (_, gid) = s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    s.gw.cli_ok(&s.carol, &["revoke", &gid, "--reason", "rotation"]);
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo hi");
    let err = stderr(&out);
    assert!(
        !out.status.success() && stdout(&out).is_empty(),
        "revoked must not run: {err}"
    );
    assert!(
        err.contains(&format!("grant {gid} on \"web1\" was revoked by carol")) && err.contains("(rotation)"),
        "{err}"
    );
}
